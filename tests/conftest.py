"""Test-wide settings: never touch the hub, never write to the user's HF cache."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "HF_HOME" not in os.environ:
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="midpo-hf-home-")


def pytest_collection_modifyitems(config, items):
    """`real` tests (a pretrained model, tens of minutes) run only when asked for: `pytest -m real`."""
    import pytest

    if "real" in (config.getoption("markexpr") or ""):
        return
    opt_in = pytest.mark.skip(reason="opt-in: run with `pytest -m real` (a pretrained model folder, ~45 min)")
    for item in items:
        if "real" in item.keywords:
            item.add_marker(opt_in)
