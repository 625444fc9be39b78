"""Shared fixtures: the real scans in ``sample_data/``."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The repository's ``sample_data`` folder (real CT/MR scans and reference masks)."""
    return Path(__file__).parent.parent / "sample_data"
