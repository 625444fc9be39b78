"""Truncated and fake inputs are refused with one line that says so.

NIfTI: with the byte counts, before any voxel is read (SimpleITK alone zero-fills a cut
file and the run "succeeds"). DICOM: a file cut short says truncated, and an empty or text
file named ``.dcm`` says it is not DICOM (it used to be "an object without pixel data")."""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medsam.errors import InputFileError
from medsam.io import load_volume


@pytest.fixture(scope="module")
def ct_nii(sample_data: Path, tmp_path_factory) -> tuple[Path, bytes]:
    """The sample CT as an uncompressed .nii, and its bytes."""
    raw = gzip.decompress((sample_data / "totalsegmentator" / "example_ct_sm.nii.gz").read_bytes())
    path = tmp_path_factory.mktemp("nii") / "ct.nii"
    path.write_bytes(raw)
    return path, raw


def _expected(raw_path: Path) -> tuple[int, int]:
    """The voxel data's offset in the file (vox_offset) and its declared size in bytes."""
    with open(raw_path, "rb") as f:
        h = nib.Nifti1Header.from_fileobj(f)
    return int(h["vox_offset"]), int(np.prod(h.get_data_shape())) * h.get_data_dtype().itemsize


def test_whole_files_still_load(ct_nii) -> None:
    path, raw = ct_nii
    assert load_volume(path).array.shape == (30, 101, 122)


def test_truncated_nii_and_nii_gz(ct_nii, tmp_path: Path) -> None:
    path, raw = ct_nii
    offset, expected = _expected(path)
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[: int(len(raw) * 0.6)])
    with pytest.raises(InputFileError, match=f"truncated: expected {expected:,} bytes of voxel data, "
                                             f"found {int(len(raw) * 0.6) - offset:,}"):
        load_volume(cut)
    gz = gzip.compress(raw)
    cut_gz = tmp_path / "cut.nii.gz"
    cut_gz.write_bytes(gz[: len(gz) // 2])  # the gzip stream cut at 50%
    with pytest.raises(InputFileError, match=f"truncated: expected {expected:,} bytes"):
        load_volume(cut_gz)


def test_header_with_huge_dimensions_over_a_tiny_file(ct_nii, tmp_path: Path) -> None:
    """A header declaring 100,000^3 voxels over a 1 kB file is refused, never allocated."""
    path, raw = ct_nii
    header = bytearray(raw[:352])
    struct.pack_into("<8h", header, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)  # dim[] (int16 max)
    bogus = tmp_path / "huge.nii"
    bogus.write_bytes(bytes(header) + raw[352:1024])
    with pytest.raises(InputFileError, match="truncated: expected 54,000,000,000,000 bytes"):
        load_volume(bogus)


def test_cli_refuses_a_truncated_file(ct_nii, tmp_path: Path) -> None:
    path, raw = ct_nii
    cut = tmp_path / "cut.nii"
    cut.write_bytes(raw[: int(len(raw) * 0.6)])
    out = tmp_path / "mask.nii.gz"
    res = subprocess.run([sys.executable, "-m", "medsam", "segment", str(cut), "-o", str(out), "--box", "24:44,27,104,81"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2
    [line] = res.stderr.strip().splitlines()
    assert "cut.nii" in line and "truncated" in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cut.nii"]


@pytest.mark.parametrize("frac", [0.1, 0.5, 0.99])
def test_truncated_dicom(sample_data: Path, tmp_path: Path, frac: float) -> None:
    src = sorted((sample_data / "totalsegmentator" / "example_ct_dicom").iterdir())[0]
    data = src.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(InputFileError, match=f"truncated: the file ends \\({int(len(data) * frac):,} bytes\\)"):
        load_volume(cut)
    assert load_volume(src).array.shape[1:] == (512, 512)  # the whole file is fine


def test_empty_and_text_files_named_dcm(tmp_path: Path) -> None:
    empty, text = tmp_path / "empty.dcm", tmp_path / "notes.dcm"
    empty.write_bytes(b"")
    text.write_text("Patient called, will come on Tuesday\n")
    with pytest.raises(InputFileError, match="is empty \\(0 bytes\\), not a DICOM file"):
        load_volume(empty)
    with pytest.raises(InputFileError, match="is not a DICOM file"):
        load_volume(text)


def test_nan_and_inf_voxels(sample_data: Path, tmp_path: Path) -> None:
    """NaN and infinite voxels: a warning with the count, and they are the window's minimum
    (the windowed slices equal those of the image with the window's minimum there)."""
    import SimpleITK as sitk

    from medsam.intensity import Window, apply_window, apply_window_tensor, resolve_window

    src = sitk.ReadImage(str(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"), sitk.sitkFloat32)
    arr = sitk.GetArrayFromImage(src)
    arr[24, :10, :10] = np.nan
    arr[24, 10:12, :10] = np.inf
    arr[24, 12:14, :10] = -np.inf
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(src)
    path = tmp_path / "nan.nii.gz"
    sitk.WriteImage(bad, str(path))
    vol = load_volume(path)
    assert vol.meta.extra["non_finite_voxels"] == 140
    assert (vol.array[24, :14, :10] == np.nanmin(arr[np.isfinite(arr)])).all()  # not 0 HU, as ITK reads them
    win = Window(-160.0, 240.0, "soft_tissue")
    clean = np.where(np.isfinite(vol.array), vol.array, -160.0)
    np.testing.assert_array_equal(apply_window(vol.array[24], win), apply_window(clean[24], win))
    import torch

    np.testing.assert_array_equal(apply_window_tensor(torch.from_numpy(vol.array[24]), win).numpy(),
                                  apply_window(clean[24], win))
    pw = resolve_window(vol.array, "percentile")
    assert np.isfinite(pw.low) and np.isfinite(pw.high)

    out = tmp_path / "liver.nii.gz"
    res = subprocess.run([sys.executable, "-m", "medsam", "segment", str(path), "-o", str(out),
                          "--box", "24:44,27,104,81", "--window", "soft_tissue", "--no-propagate", "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    warned = [line for line in res.stderr.splitlines() if "NaN or infinite" in line]
    assert len(warned) == 1 and "140 of 369,660 voxels" in warned[0]
    assert load_volume(out).array[24].any()
