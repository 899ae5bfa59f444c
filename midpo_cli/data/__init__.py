"""Data layer (docs/design.md §5): readers → schema → stage filters → template → tokenise + collate.

Modules: `readers` (load_rows, Table), `schema` (canonical columns, field checks), `filters`
(select_pairs, Pair, Selection, select_prompts), `template` (format_prompt), `tokenize` (encode_pairs,
collate_pairs, encode_sft, collate_sft, encode_prompts). Nothing is re-exported here, so importing the
readers does not import torch. `data/` knows no model: tokenizers come in as arguments.
"""
