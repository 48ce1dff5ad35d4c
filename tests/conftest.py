"""Shared fixtures. Real-data tests use ``shared_data``: they skip when ../shared/data is absent, and fail
instead when PIANORAY_REQUIRE_DATA=1 (CI sets it, so they always run there)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pianoray.settings import require_real_data, shared_data_dir


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "percepiano").is_dir():
        msg = f"real data not found at {root} (set PIANORAY_SHARED_DATA)"
        if require_real_data():
            pytest.fail(msg + " and PIANORAY_REQUIRE_DATA=1 requires it")
        pytest.skip(msg)
    return root


@pytest.fixture(scope="session")
def percepiano_dir(shared_data: Path) -> Path:
    return shared_data / "percepiano"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tests share 2 cores with Ray workers and each other: one intra-op thread each avoids oversubscription
    (measured: two threads under load ran 5-100x slower)."""
    import torch

    torch.set_num_threads(1)
