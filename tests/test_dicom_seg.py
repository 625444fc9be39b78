"""DICOM SEG: written with highdicom on the real DICOM series, read back, validated.

Reference answers are independent of the code under test: the dcmqi liver SEG equals
``liver_seg.nrrd`` (stated by the data's README), highdicom's test SEGs are decoded here
frame by frame with plain pydicom, and round trips compare with the label map written.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from medsam.io import load_volume, save_mask
from medsam.io.dicom_seg import (
    FRACTIONAL_THRESHOLD,
    AlgorithmInfo,
    find_source_series,
    load_segmentation,
    write_dicom_seg,
)
from medsam.io.seg_codes import code_segment

#: Every top-level attribute a medsam SEG may carry: highdicom's SEG modules, plus patient and
#: study identity copied from the source, plus the de-identification flags.
ALLOWED_TAGS = {
    # SOP common, general series/equipment, SEG series and image
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "InstanceCreationDate", "InstanceCreationTime",
    "Modality", "SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Manufacturer",
    "ManufacturerModelName", "SoftwareVersions", "DeviceSerialNumber", "ContributingEquipmentSequence",
    "InstanceNumber", "ContentDate", "ContentTime", "ContentLabel", "ContentDescription", "ImageType",
    "SegmentationType", "SegmentSequence", "SegmentsOverlap", "ReferencedSeriesSequence", "SourceImageSequence",
    # frame of reference and multi-frame functional groups
    "FrameOfReferenceUID", "PositionReferenceIndicator", "DimensionIndexSequence", "DimensionOrganizationSequence",
    "DimensionOrganizationType", "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence",
    "NumberOfFrames",
    # image pixel
    "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "SamplesPerPixel",
    "PhotometricInterpretation", "PresentationLUTShape", "LossyImageCompression", "PixelData",
    # identity copied from the source
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
    "StudyID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
    # --anonymize
    "PatientIdentityRemoved", "DeidentificationMethod",
}


def _nrrd(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def ct3(sample_data: Path):
    return load_volume(sample_data / "dcmqi_ct3slice" / "ct-3slice")


@pytest.fixture(scope="module")
def ct2(sample_data: Path):
    with pytest.warns(UserWarning, match="non-uniform slice spacing"):
        return load_volume(sample_data / "highdicom_seg_ct2" / "ct2_series")


def test_real_liver_seg_equals_its_nrrd(sample_data: Path, ct3) -> None:
    seg = load_segmentation(sample_data / "dcmqi_ct3slice" / "dicom_seg" / "liver_seg_pydicom-data.dcm", ct3)
    assert seg.names == ("Liver",) and seg.values == (1,)
    ref = _nrrd(sample_data / "dcmqi_ct3slice" / "liver_seg.nrrd")
    assert ref.sum() > 100_000
    np.testing.assert_array_equal(seg.labels, ref)


def _frames_by_pydicom(path: Path) -> list[tuple[int, str, np.ndarray]]:
    """(segment number, referenced SOP instance, frame pixels) straight from pydicom."""
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    out = []
    for frame, px in zip(ds.PerFrameFunctionalGroupsSequence, pixels, strict=True):
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        out.append((number, uid, px))
    return out


@pytest.mark.parametrize("name", ["binary", "binary_overlap", "true_fractional"])
def test_highdicom_segs_on_the_series_with_a_z_gap(sample_data: Path, ct2, name: str) -> None:
    path = sample_data / "highdicom_seg_ct2" / f"seg_image_ct_{name}.dcm"
    seg = load_segmentation(path, ct2)
    ds = pydicom.dcmread(path)
    expected = np.zeros_like(seg.masks)
    k_of = {u: k for k, u in enumerate(ct2.meta.sop_instance_uids)}
    for number, uid, px in _frames_by_pydicom(path):
        inside = px >= FRACTIONAL_THRESHOLD * int(ds.MaximumFractionalValue) if name == "true_fractional" else px > 0
        expected[number - 1, k_of[uid]] = inside
    np.testing.assert_array_equal(seg.masks, expected)
    assert seg.masks[:, 0].sum() == (16 + 4 if name == "binary_overlap" else 0)  # the slice before the gap
    if name == "binary_overlap":
        assert seg.names == ("first segment", "second segment") and seg.overlapping
        assert (seg.masks[0] & seg.masks[1]).any()
    if name == "true_fractional":
        assert 0 < seg.masks.sum() < (np.stack([px for *_, px in _frames_by_pydicom(path)]) > 0).sum()


def _validate(path: Path) -> pydicom.Dataset:
    """pydicom strict reading (every value checked against its VR) and highdicom's parser."""
    import highdicom as hd

    old = pydicom.config.settings.reading_validation_mode
    pydicom.config.settings.reading_validation_mode = pydicom.config.RAISE
    try:
        ds = pydicom.dcmread(path)
        for elem in ds.iterall():
            _ = elem.value
    finally:
        pydicom.config.settings.reading_validation_mode = old
    hd.seg.segread(path)
    pydicom.dataset.validate_file_meta(ds.file_meta)
    return ds


def _dciodvfy_errors(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed; `make test` installs it when run as root")
    res = subprocess.run([exe, str(path)], capture_output=True, text=True)
    return [line for line in (res.stdout + res.stderr).splitlines() if line.startswith("Error")]


def test_round_trip_of_a_real_segmentation(ct3, litemedsam, sample_data: Path, tmp_path: Path) -> None:
    """Segment the sample DICOM CT with the real model, write a SEG, read it back identical."""
    from medsam.pipeline import segment_volume
    from medsam.prompts import ObjectPrompts, PromptSet, SlicePrompt, box_from_mask
    from medsam.volume import VolumePredictor

    liver = _nrrd(sample_data / "dcmqi_ct3slice" / "liver_seg.nrrd")
    heart = _nrrd(sample_data / "dcmqi_ct3slice" / "heart_seg.nrrd")
    prompts = PromptSet((
        ObjectPrompts(1, "liver", (SlicePrompt(1, box=box_from_mask(liver[1] > 0)),)),
        ObjectPrompts(2, "heart", (SlicePrompt(1, box=box_from_mask(heart[1] > 0)),)),
    ))
    vp = VolumePredictor(litemedsam)
    result = segment_volume(ct3, prompts, predictor=vp, propagate=False)
    labels = result.labels
    assert {1, 2} <= set(np.unique(labels).tolist())
    out = save_mask(labels, ct3, tmp_path / "seg.dcm", names={1: "liver", 2: "heart"},
                    algorithm=AlgorithmInfo(model="litemedsam", adapter="liver.safetensors"))
    back = load_segmentation(out, ct3)
    np.testing.assert_array_equal(back.labels, labels)
    assert back.label_names == {1: "liver", 2: "heart"}

    ds = _validate(out)
    assert _dciodvfy_errors(out) == []
    assert ds.SegmentationType == "BINARY"
    assert "SpecificCharacterSet" not in ds  # the source's is empty: the default repertoire
    assert {e.keyword for e in ds} <= ALLOWED_TAGS
    src = pydicom.dcmread(ct3.meta.slice_files[0], stop_before_pixels=True)
    for key in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "AccessionNumber"):
        assert ds[key].value == src[key].value, key
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct3.meta.series_uid
    referenced = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == set(ct3.meta.sop_instance_uids)
    liver_seg, heart_seg = ds.SegmentSequence
    assert liver_seg.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED CT liver
    assert heart_seg.SegmentedPropertyTypeCodeSequence[0].CodeValue == "80891009"  # SNOMED CT heart
    algo = liver_seg.SegmentationAlgorithmIdentificationSequence[0]
    assert algo.AlgorithmName == "medsam" and "model=litemedsam" in algo.AlgorithmParameters
    assert "adapter=liver.safetensors" in algo.AlgorithmParameters
    assert liver_seg.SegmentAlgorithmType == "SEMIAUTOMATIC"
    assert liver_seg.RecommendedDisplayCIELabValue != heart_seg.RecommendedDisplayCIELabValue


def test_overlapping_objects_stay_separate_segments(ct3, sample_data: Path, tmp_path: Path) -> None:
    liver = _nrrd(sample_data / "dcmqi_ct3slice" / "liver_seg.nrrd") > 0
    box = np.zeros_like(liver)
    box[:, 200:300, 200:300] = True  # overlaps the liver
    assert (liver & box).any()
    out = write_dicom_seg(np.stack([liver, box]), ct3, tmp_path / "o.dcm", names=["liver", "Liver tumour"])
    back = load_segmentation(out, ct3)
    np.testing.assert_array_equal(back.masks, np.stack([liver, box]))
    ds = _validate(out)
    assert ds.SegmentsOverlap == "YES"
    assert ds.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeMeaning == "Neoplasm"


def test_source_without_uids_and_anonymisation(sample_data: Path, tmp_path: Path, caplog) -> None:
    """The TotalSegmentator DICOM has empty Study/Series/SOP UIDs (SOP UIDs survive in the file meta)."""
    folder = sample_data / "totalsegmentator" / "example_ct_dicom"
    ct = load_volume(folder)
    labels = np.zeros(ct.grid_shape, np.uint8)
    labels[5:8, 200:260, 150:230] = 1
    with caplog.at_level(logging.WARNING):
        out = save_mask(labels, ct, tmp_path / "plain.dcm", names={1: "liver"})
    assert "empty SeriesInstanceUID, StudyInstanceUID" in caplog.text
    np.testing.assert_array_equal(load_segmentation(out, ct).labels, labels)
    ds = _validate(out)
    assert _dciodvfy_errors(out) == []
    assert {e.keyword for e in ds} <= ALLOWED_TAGS  # no station, institution, weight, procedure ...
    src = pydicom.dcmread(ct.meta.slice_files[0], stop_before_pixels=True)
    assert src.StationName and "StationName" not in ds and "PatientWeight" not in ds
    refs = {i.ReferencedSOPInstanceUID for i in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert refs == set(ct.meta.sop_instance_uids) and all(refs)  # recovered from the file meta

    # --anonymize: the same pseudonyms every time, and the originals nowhere in the file
    ct3 = load_volume(sample_data / "dcmqi_ct3slice" / "ct-3slice")
    l3 = np.zeros(ct3.grid_shape, np.uint8)
    l3[:, 100:200, 100:200] = 1
    p1 = save_mask(l3, ct3, tmp_path / "a1.dcm", anonymize=True)
    p2 = save_mask(l3, ct3, tmp_path / "a2.dcm", anonymize=True)
    d1, d2 = _validate(p1), _validate(p2)
    src3 = pydicom.dcmread(ct3.meta.slice_files[0], stop_before_pixels=True)
    assert d1.PatientIdentityRemoved == "YES"
    assert d1.PatientID == d2.PatientID != src3.PatientID
    assert str(d1.PatientName) == str(d2.PatientName) != str(src3.PatientName)
    assert d1.StudyInstanceUID == d2.StudyInstanceUID != src3.StudyInstanceUID
    r1 = [i.ReferencedSOPInstanceUID for i in d1.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    r2 = [i.ReferencedSOPInstanceUID for i in d2.ReferencedSeriesSequence[0].ReferencedInstanceSequence]
    assert r1 == r2 and not set(r1) & set(ct3.meta.sop_instance_uids)
    raw = p1.read_bytes()
    for original in (src3.PatientID, str(src3.PatientName), src3.StudyInstanceUID, ct3.meta.series_uid,
                     *ct3.meta.sop_instance_uids, src3.FrameOfReferenceUID):
        assert original.encode() not in raw, original


def test_find_source_series_and_refusals(sample_data: Path, ct3, tmp_path: Path) -> None:
    seg_path = sample_data / "dcmqi_ct3slice" / "dicom_seg" / "liver_seg_pydicom-data.dcm"
    folder, uid = find_source_series(seg_path)
    assert folder == sample_data / "dcmqi_ct3slice" and uid == ct3.meta.series_uid
    lonely = tmp_path / "a" / "b" / "seg.dcm"
    lonely.parent.mkdir(parents=True)
    shutil.copy(seg_path, lonely)
    with pytest.raises(ValueError, match="is not in"):
        find_source_series(lonely)
    nifti = load_volume(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz")
    with pytest.raises(ValueError, match="needs a DICOM source series"):
        save_mask(np.zeros(nifti.grid_shape, np.uint8), nifti, tmp_path / "x.dcm")
    assert not (tmp_path / "x.dcm").exists()
    other = load_volume(sample_data / "totalsegmentator" / "example_ct_dicom")
    with pytest.raises(ValueError, match="frames are 16x16 but the reference slices are 512x512"):
        load_segmentation(sample_data / "highdicom_seg_ct2" / "seg_image_ct_binary.dcm", other)
    with pytest.raises(ValueError, match="lies on none of its slices"):
        load_segmentation(seg_path, other)
    with pytest.raises(ValueError, match="not a readable DICOM SEG"):
        load_segmentation(ct3.meta.slice_files[0], ct3)


def test_cli_refuses_seg_for_nifti_before_any_work(sample_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.dcm"
    res = subprocess.run(
        [sys.executable, "-m", "medsam", "segment", str(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"),
         "--box", "10:40,40,80,80", "-o", str(out), "--model", "no-such-model"],
        capture_output=True, text=True,
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and "needs a DICOM source series" in res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    res = subprocess.run(
        [sys.executable, "-m", "medsam", "segment", str(sample_data / "dcmqi_ct3slice" / "ct-3slice"),
         "--box", "1:40,40,80,80", "-o", str(tmp_path / "x.nii.gz"), "--anonymize"],
        capture_output=True, text=True,
    )
    assert res.returncode == 2 and "--anonymize applies to DICOM SEG" in res.stderr
    assert list(tmp_path.iterdir()) == []
    seg = sample_data / "dcmqi_ct3slice" / "dicom_seg" / "liver_seg_pydicom-data.dcm"
    res = subprocess.run([sys.executable, "-m", "medsam", "measure", str(seg)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "needs --image" in res.stderr


def test_measure_a_real_seg(sample_data: Path) -> None:
    """`medsam measure` reads the dcmqi liver SEG onto its CT: the volume is the reference's."""
    seg = sample_data / "dcmqi_ct3slice" / "dicom_seg" / "liver_seg_pydicom-data.dcm"
    ct = sample_data / "dcmqi_ct3slice" / "ct-3slice"
    res = subprocess.run([sys.executable, "-m", "medsam", "measure", str(seg), "--image", str(ct)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    liver = _nrrd(sample_data / "dcmqi_ct3slice" / "liver_seg.nrrd")
    ml = liver.sum() * np.prod(load_volume(ct).spacing) / 1000
    assert "Liver" in res.stdout and f"{ml:.2f} mL" in res.stdout


@pytest.mark.parametrize(
    "name, category, type_",
    [
        ("liver", "Anatomical Structure", "Liver"),
        ("kidney_left", "Anatomical Structure", "Kidney"),
        ("adrenal_gland_right", "Anatomical Structure", "Adrenal gland"),
        ("urinary_bladder", "Anatomical Structure", "Bladder"),
        ("vertebrae_L1", "Anatomical Structure", "L1 vertebra"),
        ("Liver lesion 2", "Morphologically abnormal structure", "Neoplasm"),
        ("tumour", "Morphologically abnormal structure", "Neoplasm"),
        ("portal_vein_and_splenic_vein", "Tissue", "Tissue"),
        ("object 3", "Tissue", "Tissue"),
    ],
)
def test_segment_codes(name: str, category: str, type_: str) -> None:
    coding = code_segment(name)
    assert (coding.category.meaning, coding.type.meaning) == (category, type_)
    assert coding.type.scheme_designator == "SCT"


def test_seg_on_a_multiframe_ct(sample_data: Path, tmp_path: Path) -> None:
    """An enhanced (multi-frame) CT whose frames run against z: made from the real 3-slice CT
    by highdicom's legacy converter. The SEG's frames follow the source's frames."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    slices = [pydicom.dcmread(f) for f in sorted((sample_data / "dcmqi_ct3slice" / "ct-3slice").iterdir())]
    for ds in slices:
        ds.SpecificCharacterSet = "ISO_IR 100"
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(
        slices, series_instance_uid=generate_uid(), series_number=9, sop_instance_uid=generate_uid(), instance_number=1
    )
    mf.save_as(tmp_path / "enhanced.dcm")
    ct = load_volume(tmp_path / "enhanced.dcm")
    assert ct.meta.extra["frame_numbers"] == (3, 2, 1)  # frame 1 is the highest slice
    liver = _nrrd(sample_data / "dcmqi_ct3slice" / "liver_seg.nrrd")
    out = save_mask(liver, ct, tmp_path / "seg.dcm", names={1: "liver"})
    np.testing.assert_array_equal(load_segmentation(out, ct).labels, liver)
    ds = _validate(out)
    assert _dciodvfy_errors(out) == []
    for frame, pixels in zip(ds.PerFrameFunctionalGroupsSequence, ds.pixel_array, strict=True):
        number = int(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        k = ct.meta.extra["frame_numbers"].index(number)
        np.testing.assert_array_equal(pixels, liver[k])
