"""load_volume on the real scans in sample_data/: geometry in world space, order, dtype, metadata."""

from __future__ import annotations

import json
import logging
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image

from medsam.io import Volume, load_volume, save_mask
from medsam.io.dicom import SliceSpacingWarning, list_dicom_series
from medsam.io.formats import guess_modality


@pytest.fixture(scope="module")
def dicom_ct(sample_data: Path) -> Volume:
    return load_volume(sample_data / "totalsegmentator" / "example_ct_dicom")


def _ipp(path: str) -> np.ndarray:
    return np.array(
        pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient, dtype=float
    )


# ------------------------------------------------------------------ DICOM series
def test_dicom_series_dtype_shape_geometry_metadata(dicom_ct: Volume) -> None:
    ct = dicom_ct
    assert ct.array.dtype == np.int16
    assert ct.shape == (20, 512, 512)
    np.testing.assert_allclose(ct.spacing, (0.9765625, 0.9765625, 2.0), atol=1e-6)
    np.testing.assert_allclose(ct.origin, (-249.51171875, -437.51171875, -804.5), atol=1e-6)
    np.testing.assert_allclose(ct.direction, np.eye(3), atol=1e-9)
    assert ct.modality == "CT"
    assert (int(ct.array.min()), int(ct.array.max())) == (-1024, 1839)
    m = ct.meta
    assert m.format == "dicom"
    assert m.sop_class_uid == "1.2.840.10008.5.1.4.1.1.2"
    assert m.frame_of_reference_uid == "1.3.12.2.1107.5.1.4.60064.30000022120807274275100000041"
    assert (m.window_center, m.window_width) == (40.0, 300.0)  # first of [40, 300] / [300, 1500]
    assert m.extra["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.90"  # JPEG 2000 lossless
    assert len(m.slice_files) == len(m.sop_instance_uids) == len(set(m.sop_instance_uids)) == 20
    # Slice k's file lies at the world position of slice k, and its UID is that file's.
    for k in (0, 7, 19):
        np.testing.assert_allclose(_ipp(m.slice_files[k]), ct.index_to_world([0, 0, k]), atol=1e-4)
        fm = pydicom.dcmread(m.slice_files[k], stop_before_pixels=True).file_meta
        assert m.sop_instance_uids[k] == fm.MediaStorageSOPInstanceUID
    assert Path(m.slice_files[0]).name.endswith("16592")  # lowest z (-804.5) is the last file name


def test_dicom_series_lines_up_with_seg_in_world_space(dicom_ct: Volume, sample_data: Path) -> None:
    ct = dicom_ct
    seg = load_volume(sample_data / "totalsegmentator" / "example_seg_dicom.nii.gz")
    assert seg.grid_shape == ct.grid_shape
    assert not np.allclose(seg.direction, ct.direction)  # LAS seg vs LPS CT: rows run opposite ways

    # Corners: seg voxel -> world (LPS mm) -> CT voxel lands on a CT voxel centre at the same point.
    corners = np.array(
        [[i, j, k] for i in (0, 511) for j in (0, 511) for k in (0, 19)], dtype=float
    )
    world = seg.index_to_world(corners)
    ct_idx = ct.world_to_index(world)
    np.testing.assert_allclose(ct_idx, np.rint(ct_idx), atol=1e-3)
    np.testing.assert_allclose(ct.index_to_world(np.rint(ct_idx)), world, atol=0.01)
    np.testing.assert_allclose(ct_idx[:, 1], 511 - corners[:, 1], atol=1e-3)  # the row flip

    names = json.loads(
        (sample_data / "totalsegmentator" / "label_names_total_and_total_mr.json").read_text()
    )
    label = {name: int(k) for k, name in names["total"].items()}
    expected = {"liver": 89.0, "spleen": 80.0, "aorta": 177.0}
    assert (label["liver"], label["spleen"]) == (5, 1)
    for organ, hu in expected.items():
        kji = np.argwhere(seg.array == label[organ])
        assert len(kji) > 1000
        c = np.rint(ct.world_to_index(seg.index_to_world(kji[:, ::-1]))).astype(int)
        assert (c >= 0).all() and (c < np.array([512, 512, 20])).all()
        mean = float(ct.array[c[:, 2], c[:, 1], c[:, 0]].mean())
        assert abs(mean - hu) <= 5, f"{organ}: mean {mean:.1f} HU, expected {hu} +- 5"


def test_ct3slice_sorted_by_position_not_file_name(sample_data: Path) -> None:
    folder = sample_data / "dcmqi_ct3slice" / "ct-3slice"
    ct = load_volume(folder)
    assert ct.shape == (3, 512, 512) and ct.array.dtype == np.int16
    assert [Path(f).name for f in ct.meta.slice_files] == ["03.dcm", "02.dcm", "01.dcm"]
    z = [float(_ipp(f)[2]) for f in ct.meta.slice_files]
    assert z == sorted(z) and z[0] == pytest.approx(-128.69, abs=1e-4)
    for k, f in enumerate(ct.meta.slice_files):
        assert (
            ct.meta.sop_instance_uids[k]
            == pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        )
        np.testing.assert_allclose(ct.index_to_world([0, 0, k]), _ipp(f), atol=1e-4)
    np.testing.assert_allclose(ct.spacing, (0.810547, 0.810547, 1.0), atol=1e-6)
    assert ct.meta.window_center == 40.0

    liver = load_volume(sample_data / "dcmqi_ct3slice" / "liver_seg.nrrd")
    assert ct.same_geometry(liver)
    inside = ct.array[liver.array == 1]
    assert inside.size > 10_000
    assert 0 < float(inside.mean()) < 200
    # Each slice's own pixels: slice 0 holds 03.dcm's data, rescaled to HU.
    ds = pydicom.dcmread(ct.meta.slice_files[0])
    np.testing.assert_array_equal(ct.array[0], ds.pixel_array.astype(np.int32) - 1024)


def test_gap_in_ct2_series_is_named(sample_data: Path) -> None:
    pattern = (
        r"between slice 0 \(17106 at -99\.48 mm\) and slice 1 \(17136 at 103\.02 mm\) "
        r"the step is 202\.50 mm, expected 1\.25 mm"
    )
    with pytest.warns(SliceSpacingWarning, match=pattern):
        ct = load_volume(sample_data / "highdicom_seg_ct2" / "ct2_series")
    assert ct.shape == (4, 16, 16) and ct.array.dtype == np.int16
    assert ct.spacing[2] == pytest.approx(1.25)
    assert ct.origin[2] == pytest.approx(-99.48)


def test_folder_with_two_series(
    tmp_path: Path, sample_data: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mixed = tmp_path / "mixed"
    shutil.copytree(sample_data / "dcmqi_ct3slice" / "ct-3slice", mixed)
    shutil.copytree(
        sample_data / "highdicom_seg_ct2" / "ct2_series", mixed / "sub"
    )  # also: recursion
    uid3 = pydicom.dcmread(mixed / "01.dcm", stop_before_pixels=True).SeriesInstanceUID
    uid4 = pydicom.dcmread(mixed / "sub" / "17106", stop_before_pixels=True).SeriesInstanceUID

    infos = list_dicom_series(mixed)
    assert [(i.series_uid, i.n_files) for i in infos] == [(uid4, 4), (uid3, 3)]

    with caplog.at_level(logging.INFO, logger="medsam.io.dicom"), pytest.warns(SliceSpacingWarning):
        largest = load_volume(mixed)
    assert largest.shape == (4, 16, 16) and largest.meta.series_uid == uid4
    assert uid3 in caplog.text  # the series not read is logged
    assert set(largest.meta.extra["series_in_folder"]) == {uid3, uid4}

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the 3-slice series has no gap
        chosen = load_volume(mixed, series_uid=uid3)
    assert chosen.shape == (3, 512, 512) and chosen.meta.series_uid == uid3


# ------------------------------------------------------------------ single DICOM files
def test_single_dicom_file(sample_data: Path) -> None:
    path = sample_data / "dcmqi_ct3slice" / "ct-3slice" / "01.dcm"
    v = load_volume(path)
    assert v.shape == (1, 512, 512) and v.array.dtype == np.int16
    assert (v.meta.window_center, v.meta.window_width) == (40.0, 400.0)
    np.testing.assert_allclose(v.origin, _ipp(str(path)), atol=1e-6)
    assert v.spacing[2] == pytest.approx(1.25)  # SliceThickness of a lone slice
    assert v.meta.slice_files == (str(path),) and v.source == path
    ds = pydicom.dcmread(path)
    np.testing.assert_array_equal(v.array[0], ds.pixel_array.astype(np.int32) - 1024)


def test_dicom_file_without_extension_or_preamble(tmp_path: Path, sample_data: Path) -> None:
    no_ext = sample_data / "highdicom_seg_ct2" / "ct2_series" / "17136"  # found by its DICM marker
    v = load_volume(no_ext)
    assert v.shape == (1, 16, 16) and v.origin[2] == pytest.approx(103.02)

    src = sample_data / "dcmqi_ct3slice" / "ct-3slice" / "01.dcm"
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(src.read_bytes()[132:])  # no preamble, no DICM marker
    ds = pydicom.dcmread(src)
    np.testing.assert_array_equal(
        load_volume(bare).array[0], ds.pixel_array.astype(np.int32) - 1024
    )


def test_non_integer_rescale_gives_float32(tmp_path: Path, sample_data: Path) -> None:
    folder = tmp_path / "pet"
    folder.mkdir()
    stored = []
    for f in sorted((sample_data / "dcmqi_ct3slice" / "ct-3slice").glob("*.dcm")):
        ds = pydicom.dcmread(f)
        ds.RescaleSlope, ds.RescaleIntercept = "0.5", "0.25"
        ds.save_as(folder / f.name)
        stored.append((float(ds.ImagePositionPatient[2]), ds.pixel_array))
    v = load_volume(folder)
    assert v.array.dtype == np.float32
    for k, (_, pixels) in enumerate(sorted(stored, key=lambda t: t[0])):
        np.testing.assert_allclose(v.array[k], pixels * 0.5 + 0.25)


def _enhanced_ct(
    sample_data: Path, path: Path, per_frame_rescale: bool = False
) -> list[pydicom.Dataset]:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    files = sorted(
        (sample_data / "dcmqi_ct3slice" / "ct-3slice").glob("*.dcm")
    )  # frames 01, 02, 03
    sources = [pydicom.dcmread(f) for f in files]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # highdicom's person-name advice
        mf = LegacyConvertedEnhancedCTImage(
            sources,
            series_instance_uid=pydicom.uid.generate_uid(),
            series_number=9,
            sop_instance_uid=pydicom.uid.generate_uid(),
            instance_number=1,
        )
    if per_frame_rescale:
        del mf.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
        for i, fg in enumerate(mf.PerFrameFunctionalGroupsSequence):
            item = Dataset()
            item.RescaleIntercept, item.RescaleSlope, item.RescaleType = (
                str(-1024 + 100 * i),
                str(1 + i),
                "HU",
            )
            fg.PixelValueTransformationSequence = Sequence([item])
    mf.save_as(path)
    return sources


def test_multiframe_enhanced_ct_equals_series(tmp_path: Path, sample_data: Path) -> None:
    _enhanced_ct(sample_data, tmp_path / "mf.dcm")
    mf = load_volume(tmp_path / "mf.dcm")
    series = load_volume(sample_data / "dcmqi_ct3slice" / "ct-3slice")
    assert mf.same_geometry(series)
    assert mf.array.dtype == np.int16
    np.testing.assert_array_equal(mf.array, series.array)
    assert mf.meta.extra["frame_numbers"] == (3, 2, 1)  # frames stored 01, 02, 03: reversed in z
    assert mf.meta.window_center == 40.0
    assert len(set(mf.meta.sop_instance_uids)) == 1 and len(mf.meta.sop_instance_uids) == 3


def test_multiframe_per_frame_rescale(tmp_path: Path, sample_data: Path) -> None:
    sources = _enhanced_ct(sample_data, tmp_path / "mf.dcm", per_frame_rescale=True)
    mf = load_volume(tmp_path / "mf.dcm")
    for k, frame in enumerate(mf.meta.extra["frame_numbers"]):
        i = frame - 1
        expected = sources[i].pixel_array.astype(np.int64) * (1 + i) + (-1024 + 100 * i)
        np.testing.assert_array_equal(mf.array[k], expected)
    assert mf.array.dtype == np.int16  # the rescaled values still fit
    assert int(mf.array.min()) == 3 * -2000 - 824  # frame 3: slope 3, intercept -824


# ------------------------------------------------------------------ NIfTI / NRRD / MHA
@pytest.mark.parametrize(
    ("image", "labels", "axcodes"),
    [
        ("example_ct_sm", "example_seg", ("R", "A", "S")),
        ("example_mr_sm", "example_seg_mr", ("L", "P", "S")),
    ],
)
def test_nifti_mask_round_trip_keeps_qform_and_sform(
    tmp_path: Path, sample_data: Path, image: str, labels: str, axcodes: tuple[str, ...]
) -> None:
    src_img = sample_data / "totalsegmentator" / f"{image}.nii.gz"
    src_seg = sample_data / "totalsegmentator" / f"{labels}.nii.gz"
    img, seg = load_volume(src_img), load_volume(src_seg)
    assert img.same_geometry(seg)
    assert img.meta.format == "nifti" and img.meta.extra["sform_code"] == 2

    out = save_mask(seg.array, img, tmp_path / "mask.nii.gz")
    ref, got = nib.load(src_seg), nib.load(out)
    assert nib.aff2axcodes(ref.affine) == axcodes
    np.testing.assert_allclose(got.get_qform(), ref.get_qform(), atol=1e-4)
    np.testing.assert_allclose(got.get_sform(), ref.get_sform(), atol=1e-4)
    np.testing.assert_allclose(got.affine, nib.load(src_img).affine, atol=1e-4)
    np.testing.assert_allclose(img.affine_ras(), ref.affine, atol=1e-4)
    assert got.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(ref.dataobj))
    assert load_volume(out).same_geometry(img)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_nrrd_and_mha_round_trip(tmp_path: Path, sample_data: Path, suffix: str) -> None:
    img = load_volume(
        sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"
    )  # direction diag(-1,-1,1)
    seg = load_volume(sample_data / "totalsegmentator" / "example_seg.nii.gz")
    back = load_volume(save_mask(seg.array, img, tmp_path / f"mask{suffix}"))
    assert back.same_geometry(img) and back.meta.format == suffix[1:]
    np.testing.assert_allclose(back.direction, np.diag([-1.0, -1.0, 1.0]), atol=1e-9)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, seg.array)


def test_dicom_like_mask_to_nifti_and_nrrd(tmp_path: Path, sample_data: Path) -> None:
    ct = load_volume(sample_data / "dcmqi_ct3slice" / "ct-3slice")
    liver = load_volume(sample_data / "dcmqi_ct3slice" / "liver_seg.nrrd")
    nii = nib.load(save_mask(liver.array, ct, tmp_path / "liver.nii.gz"))
    np.testing.assert_allclose(nii.affine, ct.affine_ras(), atol=1e-4)
    np.testing.assert_array_equal(np.asarray(nii.dataobj).transpose(2, 1, 0), liver.array)
    back = load_volume(save_mask(liver.array, ct, tmp_path / "liver.nrrd"))
    assert back.same_geometry(liver)
    np.testing.assert_array_equal(back.array, liver.array)


def test_nifti_2d(tmp_path: Path) -> None:
    data = np.arange(24, dtype=np.int16).reshape(6, 4)  # nibabel (i, j) = (x, y)
    affine = np.diag([0.5, 0.7, 2.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 7.0)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "slice.nii.gz")
    v = load_volume(tmp_path / "slice.nii.gz")
    assert v.shape == (1, 4, 6) and v.array.dtype == np.int16
    np.testing.assert_array_equal(v.array[0], data.T)
    np.testing.assert_allclose(v.spacing[:2], (0.5, 0.7))
    np.testing.assert_allclose(v.origin, (-10.0, -20.0, 7.0))  # LPS
    np.testing.assert_allclose(v.index_to_world([3, 2, 0], space="ras"), [11.5, 21.4, 7.0])


def test_nifti_4d_frame(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 1000, (5, 4, 3, 6)).astype(np.int16)
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    affine[:3, 3] = (-5.0, 4.0, 2.0)
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "fmri.nii.gz")
    v = load_volume(tmp_path / "fmri.nii.gz", frame=4)
    assert v.shape == (3, 4, 5)
    np.testing.assert_array_equal(v.array, data[..., 4].transpose(2, 1, 0))
    np.testing.assert_allclose(v.affine_ras(), affine, atol=1e-5)
    assert (v.meta.extra["frame"], v.meta.extra["n_frames"]) == (4, 6)


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr", ".mha"])
def test_detached_headers_and_2d_itk_files(tmp_path: Path, suffix: str) -> None:
    import SimpleITK as sitk

    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    img = sitk.GetImageFromArray(data)
    img.SetSpacing((0.5, 0.6, 1.5))
    img.SetOrigin((1.0, 2.0, 3.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(img, str(tmp_path / f"vol{suffix}"))
    v = load_volume(tmp_path / f"vol{suffix}")
    np.testing.assert_array_equal(v.array, data)
    np.testing.assert_allclose(
        v.affine_lps()[:3, :3], [[0, 0.6, 0], [-0.5, 0, 0], [0, 0, 1.5]], atol=1e-9
    )
    np.testing.assert_allclose(v.origin, (1.0, 2.0, 3.0))

    flat = sitk.GetImageFromArray(data[0])
    flat.SetSpacing((0.5, 0.6))
    flat.SetOrigin((7.0, 8.0))
    sitk.WriteImage(flat, str(tmp_path / f"flat{suffix}"))
    f = load_volume(tmp_path / f"flat{suffix}")
    assert f.shape == (1, 3, 4) and f.spacing == (0.5, 0.6, 1.0) and f.origin == (7.0, 8.0, 0.0)


# ------------------------------------------------------------------ 2D pictures
def test_png_gray_and_16bit(tmp_path: Path) -> None:
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    Image.fromarray(gray).save(tmp_path / "g.png")
    v = load_volume(tmp_path / "g.png")
    assert v.shape == (1, 5, 7) and v.array.dtype == np.uint8 and v.modality == "OT"
    np.testing.assert_array_equal(v.array[0], gray)
    assert v.meta.format == "png" and v.spacing == (1.0, 1.0, 1.0)

    deep = (np.arange(35, dtype=np.uint16) * 1000).reshape(5, 7)
    Image.fromarray(deep).save(tmp_path / "d.png")
    v16 = load_volume(tmp_path / "d.png")
    assert v16.array.dtype == np.uint16
    np.testing.assert_array_equal(v16.array[0], deep)


def test_png_rgb_and_rgba(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    v = load_volume(tmp_path / "c.png")
    assert v.shape == (1, 5, 7, 3) and v.array.dtype == np.uint8 and v.modality == "RGB"
    assert v.is_rgb and v.grid_shape == (1, 5, 7)
    np.testing.assert_array_equal(v.array[0], rgb)

    rgba = np.dstack([rgb, np.full((5, 7), 128, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    va = load_volume(tmp_path / "a.png")
    assert va.shape == (1, 5, 7, 3)
    np.testing.assert_array_equal(va.array[0], rgb)


def test_tiff_and_jpeg(tmp_path: Path) -> None:
    f = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    tifffile.imwrite(tmp_path / "f.tif", f)
    v = load_volume(tmp_path / "f.tif")
    assert v.shape == (1, 3, 4) and v.array.dtype == np.float32
    np.testing.assert_array_equal(v.array[0], f)

    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200
    tifffile.imwrite(tmp_path / "c.tiff", rgb, photometric="rgb")
    np.testing.assert_array_equal(load_volume(tmp_path / "c.tiff").array[0], rgb)
    Image.fromarray(rgb).save(tmp_path / "c.jpg", quality=95)
    j = load_volume(tmp_path / "c.jpg")
    assert j.shape == (1, 16, 16, 3) and j.modality == "RGB"
    assert abs(int(j.array[..., 0].mean()) - 200) <= 3


# ------------------------------------------------------------------ modality guess
def test_guess_modality(sample_data: Path) -> None:
    ts = sample_data / "totalsegmentator"
    assert load_volume(ts / "example_ct_sm.nii.gz").modality == "CT"  # HU-like data
    assert load_volume(ts / "example_mr_sm.nii.gz").modality == "MR"  # "_mr" name hint
    assert load_volume(ts / "example_seg_mr.nii.gz").modality == "OT"  # label map despite "_mr"
    assert guess_modality(np.full((4, 8, 8), -1000, np.int16)) == "CT"
    assert guess_modality(np.zeros((4, 8, 8), np.uint8)) == "OT"
    many = np.arange(4 * 8 * 8, dtype=np.float32).reshape(4, 8, 8)
    assert guess_modality(many) == "MR"
    assert guess_modality(many[:1]) == "OT"  # one slice: no guess
    assert guess_modality(many[:1], "head_ct.png") == "CT"
    assert guess_modality(many - 100, "brain-T1.nrrd") == "MR"
    assert guess_modality(many - 100, "patient_act.nrrd") == "OT"  # "ct" inside a word is no hint
