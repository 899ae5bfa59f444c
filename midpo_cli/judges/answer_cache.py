"""A judge's answers kept on disk, so a re-score or a resumed score asks nothing twice (docs/judges.md).

One JSON-lines file per judge; each line is one judged item: its key (a hash of everything the reply depends on:
the endpoint, the judge model, the rubric, the prompt and the answer) and the reply. Only replies that parsed are
kept: a failure is asked again next time. Lines are appended and flushed one at a time, from several threads
under one lock, so a crash loses at most the line being written; a cut-off last line is skipped when read. Holds
no secret: the key of an API is never part of an item.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any


def item_key(*parts: str) -> str:
    """sha256 of the parts, each length-prefixed so that no two different part lists hash alike."""
    h = hashlib.sha256()
    for part in parts:
        data = part.encode("utf-8")
        h.update(f"{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()


class AnswerCache:
    """`get(key)` / `put(key, value)`; a cache without a path keeps nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._items: dict[str, Any] = {}
        if path is not None and path.is_file():
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    try:
                        item = json.loads(line)
                        self._items[item["key"]] = item["value"]
                    except (json.JSONDecodeError, KeyError, TypeError):
                        continue  # a line cut off by a crash

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Any:
        return self._items.get(key)

    def put(self, key: str, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps({"key": key, "value": value}, sort_keys=True) + "\n")
                fh.flush()
