"""Read a dataset spec into plain rows: embedded assets, hub datasets, and local files.

Spec syntax (checked in this order):
- `embedded:NAME/SPLIT`  — a JSONL file shipped in `midpo_cli/assets/` (e.g. `embedded:toy-safety/train`), or a
  balanced slice of one, `embedded:NAME/SPLIT@N` (midpo_cli.assets.balanced);
- an existing local path — `.jsonl`, `.json` (a list of objects, or JSON lines), `.parquet`, `.csv`,
  `.txt` (one prompt per line), `.arrow`, or a `datasets` `save_to_disk` folder; a folder that holds a
  DatasetDict takes its split as `FOLDER:SPLIT` (default `train`);
- otherwise a Hugging Face hub dataset: `org/name[:split]` or `org/name/config[:split]` (default split
  `train`), loaded through `datasets.load_dataset`.

A spec that looks like a file (known suffix, or starts with `.`, `/` or `~`) but does not exist is an
error naming the path, never a hub lookup. JSONL/CSV/TXT/parquet are read without importing `datasets`
(importing it costs seconds; `midpo data show` on a small file should not).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from midpo_cli.errors import InputError
from midpo_cli.io import jsonl_rows

FILE_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".txt", ".arrow")
DEFAULT_SPLIT = "train"


@dataclass
class Table:
    """Rows as dicts with canonical column names (after `columns` mapping); `source` names them in errors.

    `skipped` counts lines the reader itself passed over (empty lines of a .txt/.jsonl file).
    """

    rows: list[dict[str, Any]]
    source: str
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def columns(self) -> list[str]:
        """Every column seen in any row, in first-seen order."""
        seen: dict[str, None] = {}
        for row in self.rows:
            for key in row:
                seen.setdefault(key, None)
        return list(seen)


def is_local_spec(spec: str) -> bool:
    """A spec read from this machine (embedded, a path, a `FOLDER:SPLIT`, or anything that looks like a file):
    what a preflight reads. A missing file that looks like one is local too, so it is reported as missing
    instead of being left to a hub lookup that would fail after earlier stages had run."""
    from midpo_cli.assets import is_embedded

    if is_embedded(spec):
        return True
    head = spec.rpartition(":")[0]
    return Path(spec).expanduser().exists() or (bool(head) and Path(head).expanduser().is_dir()) or \
        spec.lower().endswith(FILE_SUFFIXES) or spec.startswith((".", "/", "~")) or "\\" in spec


def load_rows(spec: str, columns: dict[str, str] | None = None, split: str | None = None) -> Table:
    """Load `spec` (see the module docstring) and rename columns: `columns` maps canonical → source name.

    `split` overrides a split given in the spec. An empty dataset is an error: nothing downstream can
    do anything useful with it, and the message is clearer here than after the filters.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InputError(f"empty dataset spec {spec!r}; give embedded:NAME, org/name[:split] or a file path")
    table = _read(spec.strip(), split)
    if not table.rows:
        raise InputError(f"{table.source}: no rows")
    return rename_columns(table, columns or {})


def rename_columns(table: Table, columns: dict[str, str]) -> Table:
    """Apply a canonical → source mapping; a source column that exists in no row is an error."""
    if not columns:
        return table
    present = set(table.columns)
    for canonical, source_name in columns.items():
        if source_name not in present:
            raise InputError(
                f"{table.source}: data.columns maps {canonical!r} to {source_name!r}, but there is no column "
                f"{source_name!r} (columns: {', '.join(table.columns)})"
            )
    sources = set(columns.values())
    rows = []
    for row in table.rows:
        new = {k: v for k, v in row.items() if k not in sources}
        for canonical, source_name in columns.items():
            if source_name in row:
                new[canonical] = row[source_name]
        rows.append(new)
    return Table(rows=rows, source=table.source, skipped=dict(table.skipped))


def _read(spec: str, split: str | None) -> Table:
    from midpo_cli.assets import balanced, is_embedded, resolve_embedded, split_size

    if is_embedded(spec):
        path = resolve_embedded(spec)
        if path.is_dir():
            raise InputError(f"{spec} is a model, not a dataset")
        rows, source, skipped = _read_jsonl(path, spec)
        size = split_size(spec)[1]
        return Table(rows if size is None else balanced(rows, size, split_size(spec)[0]), source, skipped)
    path = Path(spec).expanduser()
    if path.exists():
        return _read_local(path, spec, split)
    head, sep, tail = spec.rpartition(":")
    if sep and head and Path(head).expanduser().is_dir():  # FOLDER:SPLIT of a saved DatasetDict
        return _read_saved(Path(head).expanduser(), spec, split or tail)
    if spec.lower().endswith(FILE_SUFFIXES) or spec.startswith((".", "/", "~")) or "\\" in spec:
        raise InputError(f"file not found: {path}")
    return _read_hub(spec, split)


def _read_local(path: Path, spec: str, split: str | None) -> Table:
    """Read a local file; undecodable text or a broken binary file is one InputError naming the file."""
    try:
        return _read_local_file(path, spec, split)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (invalid byte at offset {exc.start}); "
                         "re-save the file as UTF-8") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder but not a `save_to_disk` dataset") from None
    except PermissionError:
        raise InputError(f"{path}: not readable (permission denied)") from None
    except csv.Error as exc:
        raise InputError(f"{path}: malformed CSV ({exc})") from None


def _read_parquet(path: Path) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return Table(pq.read_table(path).to_pylist(), str(path))
    except (pa.ArrowException, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable parquet file ({reason})") from None


def _read_local_file(path: Path, spec: str, split: str | None) -> Table:
    if path.is_dir():
        return _read_saved(path, spec, split)
    if not path.is_file():  # a FIFO or a device: reading it blocked forever
        raise InputError(f"{path}: not a regular file; give a dataset file")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows, source, skipped = _read_jsonl(path, str(path))
        return Table(rows, source, skipped)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as fh:
            return Table([dict(r) for r in csv.DictReader(fh)], str(path))
    if suffix == ".parquet":
        return _read_parquet(path)
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        prompts = [line.strip() for line in lines if line.strip()]
        return Table([{"prompt": p} for p in prompts], str(path), {"empty_lines": len(lines) - len(prompts)})
    if suffix == ".arrow":
        from datasets import Dataset

        return Table(Dataset.from_file(str(path)).to_list(), str(path))
    raise InputError(f"{path}: unsupported file type {suffix!r}; use one of {', '.join(FILE_SUFFIXES)}")


def _read_jsonl(path: Path, source: str) -> tuple[list[dict[str, Any]], str, dict[str, int]]:
    with open(path, encoding="utf-8") as fh:
        numbered = list(jsonl_rows(fh, source, unit="row"))
    rows = [row for _, row in numbered if row is not None]
    empty = len(numbered) - len(rows)
    return rows, source, ({"empty_lines": empty} if empty else {})


def _read_json(path: Path) -> Table:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # `Dataset.to_json` writes JSON lines into a .json file
            rows, source, skipped = _read_jsonl(path, str(path))
            return Table(rows, source, skipped)
        raise InputError(f"{path}: invalid JSON at line {exc.lineno} ({exc.msg})") from None
    if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) == 1:  # column-oriented {"prompt": [...], ...}
            keys = list(data)
            rows = [dict(zip(keys, values, strict=True)) for values in zip(*data.values(), strict=True)]
            return Table(rows, str(path))
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of objects (or JSON lines), got {type(data).__name__}")
    for number, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise InputError(f"{path}: row {number}: expected a JSON object, got {type(row).__name__}")
    return Table(data, str(path))


def _read_saved(path: Path, spec: str, split: str | None) -> Table:
    from datasets import DatasetDict, load_from_disk

    try:
        data = load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(f"{path}: not a `save_to_disk` folder ({exc})") from None
    if isinstance(data, DatasetDict):
        name = split or DEFAULT_SPLIT
        if name not in data:
            raise InputError(f"{spec}: no split {name!r} (splits: {', '.join(data)}); use {path}:SPLIT")
        data = data[name]
    return Table(data.to_list(), spec)


def parse_hub_spec(spec: str) -> tuple[str, str | None, str]:
    """`org/name[/config][:split]` → (repo id, config or None, split)."""
    name, _, split = spec.partition(":")
    parts = name.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise InputError(
            f"{spec!r} is not a file, an embedded: name, or a hub dataset (org/name[/config][:split])"
        )
    return "/".join(parts[:2]), (parts[2] if len(parts) == 3 else None), split or DEFAULT_SPLIT


def _read_hub(spec: str, split: str | None) -> Table:
    repo, config, spec_split = parse_hub_spec(spec)
    split = split or spec_split
    from datasets import load_dataset

    try:
        data = load_dataset(repo, config, split=split)
    except Exception as exc:  # datasets raises many types; the user needs the spec and the reason
        raise InputError(
            f"{spec}: could not load hub dataset {repo!r} (config {config}, split {split!r}): "
            f"{type(exc).__name__}: {exc}. Offline? Set HF_DATASETS_OFFLINE=0 or pass a local file."
        ) from None
    return Table(data.to_list(), spec)
