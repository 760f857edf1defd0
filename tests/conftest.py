"""Shared fixtures: a tiny BEIR folder and offline, quiet defaults for every test."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def restore_environment() -> Iterator[None]:
    """Undo what a test's code wrote to ``os.environ``: a DDP launch leaves MASTER_PORT (and rank variables)
    behind, and a later DDP test in the same process would rendezvous on that stale port."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
