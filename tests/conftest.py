"""Shared fixtures: the real scans in ``sample_data/``."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config):
    """Load triton's LLVM before any napari viewer brings Mesa's (see napari_plugin/_compat.py)."""
    from napari_plugin._compat import import_triton_first

    import_triton_first()


@pytest.fixture(scope="session")
def sample_data() -> Path:
    """The repository's ``sample_data`` folder (real CT/MR scans and reference masks)."""
    return Path(__file__).parent.parent / "sample_data"


@pytest.fixture(scope="session")
def litemedsam():
    """The real bundled LiteMedSAM on the CPU, loaded once per test session."""
    from medsam.models import load_model

    return load_model("litemedsam", device="cpu")


@pytest.fixture(scope="session")
def ct_sm(sample_data):
    """The 3 mm TotalSegmentator CT (30, 101, 122) and its reference labels on the same grid."""
    from medsam.io import load_volume

    ct = load_volume(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz")
    seg = load_volume(sample_data / "totalsegmentator" / "example_seg.nii.gz")
    assert ct.same_geometry(seg)
    return ct, seg.array


def crop_slices(volume, k0: int, k1: int):
    """Slices ``k0..k1-1`` of a volume as a new Volume with the matching origin (a real sub-volume)."""
    from dataclasses import replace

    origin = volume.index_to_world([0, 0, k0])
    return replace(volume, array=volume.array[k0:k1].copy(), origin=tuple(origin))
