"""Shared test fixtures: one cache dir per test session (source models train once), real-asset paths."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"

# One cache/weights dir per session, set before tta_bench reads the environment: the digits source
# model trains once per session, and tests never touch the user's ~/.cache.
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="tta_bench_test_cache_"))
os.environ.setdefault("TTA_BENCH_CACHE", str(_SESSION_CACHE / "cache"))
os.environ.setdefault("TTA_BENCH_WEIGHTS", str(_SESSION_CACHE / "weights"))
os.environ.setdefault("TTA_BENCH_DATA", str(_SESSION_CACHE / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` (real data and weights); the test is skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real assets not found at {SHARED_DATA} (they exist on the developers' machines and in CI)")
    return SHARED_DATA


@pytest.fixture
def one_thread():
    """One intra-op thread for the test: on a shared, loaded CPU, 2-thread kernels run many times slower."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"
