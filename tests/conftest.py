"""Shared fixtures. Real-data tests read ../shared/datasets and skip with a reason when absent."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__import__("os").environ.get("VLOC_SHARED_DATASETS", REPO.parent / "shared" / "datasets"))


def shared_dataset(name: str) -> Path:
    """Path of a shared real dataset, or skip the test with a reason."""
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"real dataset {p} is absent (set VLOC_SHARED_DATASETS to its folder)")
    return p
