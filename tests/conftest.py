"""Shared test settings: wandb is disabled unless a test asks for a mode explicitly."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# also for module-scoped fixtures, which run before the function-scoped one below
os.environ["WANDB_MODE"] = "disabled"
os.environ["WANDB_SILENT"] = "true"
# decoded-dataset caches go to a fresh folder, never the user's ~/.cache/distill, and the
# folder goes when the session ends
os.environ["DISTILL_CACHE_DIR"] = tempfile.mkdtemp(prefix="distill-test-cache-")
atexit.register(shutil.rmtree, os.environ["DISTILL_CACHE_DIR"], ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_network_tracking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_SILENT", "true")


def shared_data_dir() -> Path | None:
    """The real-data folder CI exports as $DISTILL_DATA_DIR, when it exists."""
    value = os.environ.get("DISTILL_DATA_DIR")
    return Path(value) if value and Path(value).is_dir() else None
