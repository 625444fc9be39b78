"""save_mask: formats, dtypes, validation, refusal to overwrite, atomic replacement."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import medsam.io.save as save_module
from medsam.errors import InputFileError, OutputExistsError
from medsam.io import Volume, load_volume, save_mask

GRID = (3, 4, 5)


@pytest.fixture()
def like() -> Volume:
    theta = np.deg2rad(30)
    rot = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    return Volume(
        np.zeros(GRID, np.int16),
        spacing=(0.5, 0.75, 2.5),
        origin=(10.0, -20.0, 30.0),
        direction=rot,
    )


def _labels(value: int = 1) -> np.ndarray:
    a = np.zeros(GRID, np.int32)
    a[1, 2, 3] = value
    return a


def test_nifti_geometry_and_codes(tmp_path: Path, like: Volume) -> None:
    out = save_mask(_labels(), like, tmp_path / "m.nii.gz")
    img = nib.load(out)
    np.testing.assert_allclose(img.get_qform(), like.affine_ras(), atol=1e-4)
    np.testing.assert_allclose(img.get_sform(), like.affine_ras(), atol=1e-4)
    assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 1)
    assert np.asarray(img.dataobj)[3, 2, 1] == 1  # nibabel (i, j, k) = array[k, j, i]
    back = load_volume(out)
    assert back.same_geometry(like)


def test_uncompressed_nifti(tmp_path: Path, like: Volume) -> None:
    out = save_mask(_labels(), like, tmp_path / "m.nii")
    assert out.read_bytes()[344:348] == b"n+1\x00"  # plain NIfTI-1, not gzip
    np.testing.assert_array_equal(load_volume(out).array, _labels())
    assert load_volume(out).array.dtype == np.uint8


@pytest.mark.parametrize(
    ("labels", "dtype"),
    [
        (_labels(7).astype(np.int64), np.uint8),
        (_labels(300).astype(np.int32), np.uint16),
        (_labels() > 0, np.uint8),
    ],
)
def test_dtype(tmp_path: Path, like: Volume, labels: np.ndarray, dtype: type) -> None:
    back = load_volume(save_mask(labels, like, tmp_path / "m.mha"))
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, labels.astype(dtype))


def test_bad_labels(tmp_path: Path, like: Volume) -> None:
    with pytest.raises(ValueError, match=r"\(4, 4, 5\).*\(3, 4, 5\)"):
        save_mask(np.zeros((4, 4, 5), np.uint8), like, tmp_path / "m.nrrd")
    with pytest.raises(ValueError, match="-1"):
        save_mask(_labels().astype(np.int8) - 1, like, tmp_path / "m.nrrd")
    with pytest.raises(ValueError, match="65535"):
        save_mask(_labels(70000), like, tmp_path / "m.nrrd")
    with pytest.raises(TypeError, match="float32"):
        save_mask(_labels().astype(np.float32), like, tmp_path / "m.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_unsupported_extension(tmp_path: Path, like: Volume) -> None:
    with pytest.raises(InputFileError, match=r"'\.png'.*\.nii\.gz, \.nii, \.nrrd, \.mha") as err:
        save_mask(_labels(), like, tmp_path / "m.png")
    assert "m.png" in str(err.value) and "\n" not in str(err.value)


def test_creates_parents_and_leaves_no_temp_files(tmp_path: Path, like: Volume) -> None:
    out = save_mask(_labels(), like, tmp_path / "a" / "b" / "m.nii.gz")
    assert out == tmp_path / "a" / "b" / "m.nii.gz" and out.is_file()
    assert [p.name for p in out.parent.iterdir()] == ["m.nii.gz"]


def test_refuses_to_overwrite(tmp_path: Path, like: Volume) -> None:
    out = save_mask(_labels(1), like, tmp_path / "m.nrrd")
    before = out.read_bytes()
    # Refused before any work: even invalid labels give OutputExistsError.
    with pytest.raises(OutputExistsError, match="overwrite=True") as err:
        save_mask(np.zeros((1, 1, 1)), like, out)
    assert str(out) in str(err.value) and "\n" not in str(err.value)
    assert out.read_bytes() == before

    save_mask(_labels(2), like, out, overwrite=True)
    assert load_volume(out).array.max() == 2
    assert [p.name for p in tmp_path.iterdir()] == ["m.nrrd"]


def test_wrong_shape_with_overwrite_leaves_old_file(tmp_path: Path, like: Volume) -> None:
    out = save_mask(_labels(1), like, tmp_path / "m.nii.gz")
    before = out.read_bytes()
    with pytest.raises(ValueError, match="shape"):
        save_mask(np.zeros((2, 2, 2), np.uint8), like, out, overwrite=True)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]


def test_failed_write_leaves_old_file_and_no_temp(
    tmp_path: Path, like: Volume, monkeypatch
) -> None:
    out = save_mask(_labels(1), like, tmp_path / "m.nii.gz")
    before = out.read_bytes()
    seen: list[Path] = []

    def broken_writer(image, path: Path, compress: bool) -> None:
        seen.append(path)
        path.write_bytes(b"half a file")
        raise RuntimeError("Exception thrown in WriteImage\nsitk::ERROR: disk full")

    monkeypatch.setattr(save_module, "_write_image", broken_writer)
    with pytest.raises(OSError, match="disk full") as err:
        save_mask(_labels(2), like, out, overwrite=True)
    assert "\n" not in str(err.value)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.nii.gz"]
    # The temporary file sat beside the target and kept its full extension.
    assert seen[0].parent == tmp_path
    assert seen[0].name.startswith(".tmp-") and seen[0].name.endswith("-m.nii.gz")


def test_mask_on_2d_picture_grid(tmp_path: Path) -> None:
    rgb = Volume(np.zeros((1, 6, 8, 3), np.uint8), modality="RGB")
    labels = np.zeros((1, 6, 8), np.uint8)
    labels[0, 2:4, 3:6] = 1
    back = load_volume(save_mask(labels, rgb, tmp_path / "m.nrrd"))
    np.testing.assert_array_equal(back.array, labels)
