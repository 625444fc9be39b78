"""A gantry-tilted CT series is resampled onto an orthogonal grid, and its DICOM SEG lies on
the tilted source pixels.

The tilted series is made from real slices of the TotalSegmentator CT (DICOM): slice ``k``
is acquired ``2k`` rows further along the column direction (its ImagePositionPatient moves
by ``2k`` row spacings and its pixels show the anatomy ``2k`` rows lower), as a scanner with
a tilted gantry records it. The independent answer is the untilted series itself.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medsam.io import load_volume
from medsam.io.dicom_geometry import DicomGeometryWarning
from medsam.io.dicom_seg import load_segmentation, write_dicom_seg

N, SHIFT = 6, 2  # slices, rows of drift per slice


@pytest.fixture(scope="module")
def series(sample_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """(straight, tilted) folders of the same 6 real CT slices."""
    files = sorted((sample_data / "totalsegmentator" / "example_ct_dicom").iterdir())[:N]
    root = tmp_path_factory.mktemp("tilt")
    straight, tilted = root / "straight", root / "tilted"
    straight.mkdir()
    tilted.mkdir()
    for f in files:
        (straight / f.name).write_bytes(f.read_bytes())
    ordered = sorted(files, key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]))
    for k, f in enumerate(ordered):
        ds = pydicom.dcmread(f)
        ds.decompress()  # the sample series is compressed
        s = SHIFT * k
        col = np.asarray(ds.ImageOrientationPatient[3:], float)
        ds.ImagePositionPatient = list(np.asarray(ds.ImagePositionPatient, float) + col * s * float(ds.PixelSpacing[0]))
        pixels = ds.pixel_array
        moved = np.full_like(pixels, pixels.min())
        moved[: pixels.shape[0] - s] = pixels[s:]  # this slice starts s rows lower in the patient
        ds.PixelData = moved.tobytes()
        ds.save_as(tilted / f.name)
    return straight, tilted


def test_tilted_series_lands_on_the_straight_grid(series) -> None:
    straight, tilted = series
    ref = load_volume(straight)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        vol = load_volume(tilted)
    tilt = [w for w in caught if issubclass(w.category, DicomGeometryWarning)]
    assert len(tilt) == 1, [str(w.message) for w in caught]
    step = ref.spacing[2]
    angle = math.degrees(math.atan(SHIFT * ref.spacing[1] / step))
    assert f"gantry tilt of {angle:.1f} degrees" in str(tilt[0].message)
    assert vol.meta.extra["gantry_tilt_deg"] == pytest.approx(angle, abs=1e-3)

    np.testing.assert_allclose(vol.origin, ref.origin, atol=1e-4)
    np.testing.assert_allclose(vol.direction, ref.direction, atol=1e-6)
    np.testing.assert_allclose(vol.spacing, ref.spacing, atol=1e-6)
    top = SHIFT * (N - 1)  # rows above this were outside some tilted slice
    np.testing.assert_array_equal(vol.array[:, top:], ref.array[:, top:])
    for k in range(1, N):  # what came from outside the scan is the image's minimum
        assert (vol.array[k, : SHIFT * k] == ref.array.min()).all()
    assert vol.world_to_index(ref.index_to_world([100, 300, 4])) == pytest.approx([100, 300, 4], abs=1e-4)


def test_seg_frames_lie_on_the_tilted_source_pixels(series, tmp_path: Path) -> None:
    _, tilted = series
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DicomGeometryWarning)
        vol = load_volume(tilted)
    mask = np.zeros(vol.grid_shape, np.uint8)
    mask[1:5, 200:260, 150:300] = 1
    out = write_dicom_seg(mask, vol, tmp_path / "tilted_seg.dcm", names={1: "liver"})

    seg = pydicom.dcmread(out)
    frames = seg.pixel_array.reshape(-1, *vol.grid_shape[1:]).astype(bool)
    by_uid = {u: k for k, u in enumerate(vol.meta.sop_instance_uids)}
    for frame, pixels in zip(seg.PerFrameFunctionalGroupsSequence, frames, strict=True):
        k = by_uid[frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        s = SHIFT * k
        expected = np.zeros_like(pixels)
        expected[200 - s : 260 - s, 150:300] = True  # the same voxels, s rows up in the tilted slice
        np.testing.assert_array_equal(pixels, expected)

    back = load_segmentation(out, vol)
    np.testing.assert_array_equal(back.masks[0], mask.astype(bool))
