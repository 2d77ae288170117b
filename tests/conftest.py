"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real-data folder: ``$COMMONSPACE_SHARED_DATA`` or ``<repo>/../shared/data``; skips if absent."""
    env = os.environ.get("COMMONSPACE_SHARED_DATA")
    path = Path(env).expanduser() if env else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} not found (set COMMONSPACE_SHARED_DATA to use real data)")
    return path


@pytest.fixture
def one_thread():
    """One torch thread for a test of tiny matrices (extra threads only add contention), restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
