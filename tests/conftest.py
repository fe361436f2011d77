"""Shared fixtures: the read-only benchmark data in ../shared/data, skipped with a reason when absent."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PFMH_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_file(name: str) -> Path:
    """Path of a benchmark file in ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"benchmark file {path} not present (only in the team workspace; set PFMH_SHARED_DATA)")
    return path
