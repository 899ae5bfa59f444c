"""One row per preference pair, prompt ‖ chosen ‖ rejected: the prompt is encoded once (docs/design.md §2.1,
"Shared prompt").

Why: chosen and rejected share their prompt, and a causal LM's prompt positions do not depend on what follows,
so two rows per pair encode every prompt twice. In the packed row the rejected answer's tokens attend to the
prompt and to themselves, never to the chosen answer (the block mask `engine.shared_prompt` builds from
`packed_segments`), and their position ids restart where the prompt ends, so each answer sees exactly what it
sees in its own row.

The 2B-row view (`collate_pairs`) stays in the batch — the losses' masks, the gate penalty and the metrics read
it — and `packed_index` maps each of its positions to the packed column whose hidden state it equals: the
first answer token of either answer is scored from the prompt's last column, as in its own row.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

SEGMENT_PAD, SEGMENT_PROMPT, SEGMENT_CHOSEN, SEGMENT_REJECTED = -1, 0, 1, 2


def shared_prompts(features: Sequence[dict[str, Any]]) -> list[tuple[list, list, list]] | None:
    """Each pair's (prompt, chosen answer, rejected answer) token lists, or None when some pair's two rows do
    not begin with the same prompt tokens (then the batch stays two rows per pair)."""
    out = []
    for f in features:
        p = f["chosen_prompt_len"]
        chosen, rejected = list(f["chosen_input_ids"]), list(f["rejected_input_ids"])
        if f["rejected_prompt_len"] != p or chosen[:p] != rejected[:p]:
            return None
        out.append((chosen[:p], chosen[p:], rejected[p:]))
    return out


def pack_pairs(features: Sequence[dict[str, Any]], pad_id: int,
               padding_side: str = "right") -> dict[str, torch.Tensor] | None:
    """The packed layout of `collate_pairs(features, pad_id, padding_side)`'s 2B rows, or None (`shared_prompts`).

    packed_input_ids, packed_segments (SEGMENT_*), packed_position_ids: (B, L), right-padded, L the longest
    prompt + chosen + rejected. packed_index (2B, T): for row r of the 2B view (chosen rows first) and each of
    its real positions t, the column of packed row r mod B holding the same token; 0 on padding.
    """
    split = shared_prompts(features)
    if split is None:
        return None
    n = len(split)
    width = max(len(p) + len(c) + len(r) for p, c, r in split)
    rows_width = max(len(p) + max(len(c), len(r)) for p, c, r in split)
    ids = torch.full((n, width), int(pad_id), dtype=torch.long)
    segments = torch.full((n, width), SEGMENT_PAD, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    index = torch.zeros((2 * n, rows_width), dtype=torch.long)
    for i, (prompt, chosen, rejected) in enumerate(split):
        p, c, r = len(prompt), len(chosen), len(rejected)
        ids[i, :p + c + r] = torch.tensor(prompt + chosen + rejected, dtype=torch.long)
        segments[i, :p], segments[i, p:p + c], segments[i, p + c:p + c + r] = (
            SEGMENT_PROMPT, SEGMENT_CHOSEN, SEGMENT_REJECTED)
        positions[i, :p + c] = torch.arange(p + c)
        positions[i, p + c:p + c + r] = torch.arange(p, p + r)
        for row, first, length in ((i, p, c), (n + i, p + c, r)):
            start = 0 if padding_side == "right" else rows_width - p - length
            index[row, start:start + p] = torch.arange(p)
            index[row, start + p:start + p + length] = torch.arange(first, first + length)
    return {"packed_input_ids": ids, "packed_segments": segments, "packed_position_ids": positions,
            "packed_index": index}
