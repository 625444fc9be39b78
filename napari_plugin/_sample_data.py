"""npe2 sample data: the repository's abdominal CT with its TotalSegmentator labels.

The files live in ``sample_data/`` at the repository root (not inside a package), so the
sample is available from a source checkout or an editable install only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["sample_data_dir", "make_sample_ct", "SAMPLE_CT", "SAMPLE_CT_LABELS"]

SAMPLE_CT = Path("totalsegmentator") / "example_ct_sm.nii.gz"
SAMPLE_CT_LABELS = Path("totalsegmentator") / "example_seg.nii.gz"


def sample_data_dir() -> Path:
    """The repository's ``sample_data`` folder; ``FileNotFoundError`` when it is absent."""
    folder = Path(__file__).resolve().parents[1] / "sample_data"
    if not (folder / SAMPLE_CT).exists():
        raise FileNotFoundError(
            f"{folder / SAMPLE_CT}: the medsam sample data is not there. It ships with the "
            "source repository (sample_data/), not with a wheel; install medsam from a "
            "checkout with `pip install -e .[napari]` to use it."
        )
    return folder


def make_sample_ct() -> list[tuple[Any, dict, str]]:
    """The sample CT (30 x 101 x 122, 3 mm) and its reference labels as napari layers."""
    from medsam.io import load_volume

    from ._layers import image_layer_data, labels_layer_data

    folder = sample_data_dir()
    ct = load_volume(folder / SAMPLE_CT)
    ref = load_volume(folder / SAMPLE_CT_LABELS)
    if not ref.same_geometry(ct):
        raise ValueError(f"{folder / SAMPLE_CT_LABELS}: not on the grid of {SAMPLE_CT}")
    image = image_layer_data(ct, name="sample CT (abdomen)")
    data, kwargs, kind = labels_layer_data(ref.array.astype("uint8"), ct, "reference (TotalSegmentator)")
    kwargs.update(opacity=0.4, visible=False)
    return [image, (data, kwargs, kind)]
