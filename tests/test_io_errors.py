"""Bad input gives one-line errors that name the file and say what is wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from medsam.errors import InputFileError, MissingInputError
from medsam.io import load_volume


def _load_error(path: Path, **kwargs) -> str:
    with pytest.raises(InputFileError) as err:
        load_volume(path, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg, msg
    assert path.name in msg, msg
    return msg


def test_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.nii.gz"
    with pytest.raises(MissingInputError) as err:
        load_volume(path)
    assert isinstance(err.value, FileNotFoundError)
    assert str(err.value) == f"{path}: no such file or folder"


def test_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert "empty folder" in _load_error(tmp_path / "empty")


def test_folder_without_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image\n")
    assert "no DICOM files (1 file(s) checked)" in _load_error(folder)


def test_folder_of_unreadable_dicom(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "x.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 7)
    assert "1 DICOM file(s) that cannot be read, e.g. x.dcm" in _load_error(folder)


def test_folder_with_only_a_seg(tmp_path: Path, sample_data: Path) -> None:
    folder = tmp_path / "segs"
    folder.mkdir()
    shutil.copy(sample_data / "highdicom_seg_ct2" / "seg_image_ct_binary.dcm", folder)
    assert "no image series, only: SEG (Segmentation)" in _load_error(folder)


def test_seg_file_is_not_an_image(sample_data: Path) -> None:
    msg = _load_error(sample_data / "highdicom_seg_ct2" / "seg_image_ct_binary.dcm")
    assert msg.endswith("is a DICOM SEG (Segmentation), not an image")


@pytest.mark.parametrize(
    ("sop_class", "modality", "name"),
    [
        ("1.2.840.10008.5.1.4.1.1.88.11", "SR", "Basic Text SR"),
        ("1.2.840.10008.5.1.4.1.1.481.3", "RTSTRUCT", "RT Structure Set"),
    ],
)
def test_non_image_dicom(tmp_path: Path, sop_class: str, modality: str, name: str) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    path = tmp_path / f"{modality.lower()}.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert _load_error(path).endswith(f"is a DICOM {modality} ({name}), not an image")
    # In a folder it is no image series either.
    assert f"no image series, only: {modality} ({name})" in _load_error(tmp_path)


@pytest.mark.filterwarnings("ignore:End of file reached:UserWarning")
@pytest.mark.parametrize(
    "source",
    [
        "dcmqi_ct3slice/ct-3slice/01.dcm",
        "totalsegmentator/example_ct_dicom/CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573",
    ],
    ids=["uncompressed", "jpeg2000"],
)
def test_truncated_dicom_file(tmp_path: Path, sample_data: Path, source: str) -> None:
    data = (sample_data / source).read_bytes()
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) // 2])
    msg = _load_error(path)
    assert "truncated" in msg


def test_truncated_file_in_series(tmp_path: Path, sample_data: Path) -> None:
    folder = tmp_path / "series"
    shutil.copytree(sample_data / "dcmqi_ct3slice" / "ct-3slice", folder)
    data = (folder / "02.dcm").read_bytes()
    (folder / "02.dcm").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputFileError) as err:
        load_volume(folder)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(str(folder / "02.dcm")) and "truncated" in msg


def test_slice_with_a_damaged_pixel_data_tag_is_skipped_before_gdcm(tmp_path: Path, sample_data: Path, caplog) -> None:
    """A slice whose (7FE0,0010) tag is damaged is skipped at the header scan with its reason;
    GDCM used to decode it and allocate 3.4 GB (a fuzzing find, tests/fuzz/regressions/dcmdir)."""
    folder = tmp_path / "series"
    shutil.copytree(sample_data / "dcmqi_ct3slice" / "ct-3slice", folder)
    data = (folder / "02.dcm").read_bytes()
    tag = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
    assert data.count(tag) == 1
    (folder / "02.dcm").write_bytes(data.replace(tag, b"\xe0\x7f\x11\x00"))
    with caplog.at_level("WARNING", logger="medsam.io.dicom"):
        vol = load_volume(folder)
    assert vol.n_slices == 2
    skipped = [r.getMessage() for r in caplog.records if "02.dcm" in r.getMessage()]
    assert len(skipped) == 1 and "no pixel data element (7FE0,0010), but element (7FE0,0011)" in skipped[0]


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "scan.xyz"
    path.write_text("hello")
    msg = _load_error(path)
    assert "unsupported file type '.xyz'" in msg and ".nii.gz" in msg


def test_corrupt_nifti(tmp_path: Path) -> None:
    path = tmp_path / "broken.nii.gz"
    path.write_bytes(b"\x1f\x8b not really gzip")
    assert "NIfTI" in _load_error(path)


def test_4d_nifti_needs_frame(tmp_path: Path) -> None:
    path = tmp_path / "dyn.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3, 5), np.int16), np.eye(4)), path)
    msg = _load_error(path)
    assert "4D image with 5 frames" in msg and "frame=" in msg
    assert "frame=5 is out of range" in _load_error(path, frame=5)
    assert load_volume(path, frame=2).shape == (3, 4, 4)


def test_frame_on_3d_or_dicom(tmp_path: Path, sample_data: Path) -> None:
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), np.eye(4)), path)
    assert "frame= applies to 4D images" in _load_error(path, frame=1)
    dcm = sample_data / "dcmqi_ct3slice" / "ct-3slice" / "01.dcm"
    assert "frame= applies to 4D" in _load_error(dcm, frame=0)
    with pytest.raises(ValueError, match="non-negative integer"):
        load_volume(path, frame=-1)


def test_unknown_series_uid_lists_available(sample_data: Path) -> None:
    folder = sample_data / "dcmqi_ct3slice" / "ct-3slice"
    uid = pydicom.dcmread(folder / "01.dcm", stop_before_pixels=True).SeriesInstanceUID
    msg = _load_error(folder, series_uid="1.2.3.4")
    assert (
        "no image series with SeriesInstanceUID 1.2.3.4" in msg and f"available: {uid} (CT" in msg
    )


def test_series_uid_on_nifti(sample_data: Path) -> None:
    path = sample_data / "totalsegmentator" / "example_seg.nii.gz"
    assert "series_uid= applies to DICOM" in _load_error(path, series_uid="1.2.3")
