"""The bad-input corpus: damaged, odd and hostile inputs made from the real sample scans.

Each :class:`Case` is a file (or folder) plus the exact outcome that every front end must
give: ``load_volume``, ``medsam segment``, MONAI's ``LoadVolume`` and the napari reader.
An outcome is an error (one line, naming the file and the problem), a warning plus a
correct result, or a clean result. Expected facts (shape, spacing, dtype) are known from
how the case was made, not from running medsam.

Run it to look at the files::

    python tests/corpus/generate.py /tmp/corpus     # writes the files and cases.json

The tests (``tests/test_corpus.py``) build it in a temporary folder. Source scans:
``sample_data/`` (TotalSegmentator and highdicom test data; see its README).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import generate_uid

BOX_NIFTI = "15:44,27,104,81"  # the liver of example_ct_sm, slice 15
BOX_DICOM = "2:150,150,350,350"  # the abdomen of the DICOM CT, its third slice


@dataclass(frozen=True)
class Case:
    """One corpus entry.

    Attributes
    ----------
    name, category:
        Identifier, and one of ``dicom``, ``nifti``, ``size``, ``picture``, ``prompts``,
        ``checkpoint``.
    input:
        Path relative to the corpus folder.
    load:
        ``"error"``, ``"warning"`` or ``"ok"`` from ``load_volume``.
    message:
        Text the error line (or one warning) must contain.
    segment:
        What ``medsam segment`` gives: ``"error"``, ``"warning"`` or ``"ok"``; its text is
        ``segment_message`` (default: ``message``).
    args:
        The prompt (and other) arguments of the ``medsam segment`` run.
    expect:
        Facts of the loaded volume: ``shape``, ``spacing``, ``dtype``.
    """

    name: str
    category: str
    input: str
    load: str
    message: str = ""
    segment: str = ""
    segment_message: str = ""
    args: tuple[str, ...] = ()
    expect: dict[str, Any] = field(default_factory=dict)

    @property
    def segment_outcome(self) -> str:
        return self.segment or self.load

    @property
    def segment_text(self) -> str:
        return self.segment_message or self.message


# ---------------------------------------------------------------- helpers
def _dicom_slices(sample: Path, n: int) -> list[Path]:
    """The ``n`` lowest slices of the sample DICOM CT (JPEG 2000 lossless, 512x512)."""
    files = sorted((sample / "totalsegmentator" / "example_ct_dicom").iterdir())
    z = {f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files}
    return sorted(files, key=z.get)[:n]


def _series(out: Path, name: str, sources: list[Path]) -> Path:
    folder = out / name
    folder.mkdir()
    for i, f in enumerate(sources):
        shutil.copy(f, folder / f"{i:02d}.dcm")
    return folder


def _edit(folder: Path, fn, which: slice | None = None) -> None:
    files = sorted(folder.iterdir())
    for i, f in list(enumerate(files))[which or slice(None)]:
        ds = pydicom.dcmread(f)
        fn(i, ds)
        ds.save_as(f)


def _nifti_raw(path: Path, header: nib.Nifti1Header, data: np.ndarray) -> Path:
    """Write ``header`` and ``data`` byte for byte (nibabel's ``save`` would repair the header)."""
    header = header.copy()
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header["vox_offset"] = 352
    with open(path, "wb") as f:
        header.write_to(f)
        f.write(b"\0" * (352 - f.tell()))
        f.write(np.asarray(data).tobytes(order="F"))
    return path


def _downsampled_slice(src: Path, dst: Path, factor: int) -> None:
    """``src`` with its pixels subsampled by ``factor`` (e.g. 512 -> 64), uncompressed."""
    ds = pydicom.dcmread(src)
    ds.decompress()
    arr = ds.pixel_array[::factor, ::factor].copy()
    ds.Rows, ds.Columns = arr.shape
    ds.PixelSpacing = [float(v) * factor for v in ds.PixelSpacing]
    ds.PixelData = arr.tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(dst)


# ---------------------------------------------------------------- builders
def _dicom_cases(sample: Path, out: Path) -> list[Case]:
    five = _dicom_slices(sample, 5)
    cases = []
    shape5 = [5, 512, 512]

    f = _series(out, "dicom_jpeg2000", five)
    cases.append(Case("dicom_jpeg2000", "dicom", f.name, "ok", args=("--box", BOX_DICOM),
                      expect={"shape": shape5, "spacing": [0.977, 0.977, 2.0], "dtype": "int16"}))

    data = five[0].read_bytes()
    (out / "truncated.dcm").write_bytes(data[: len(data) // 2])
    cases.append(Case("dicom_truncated_file", "dicom", "truncated.dcm", "error",
                      f"is truncated: the file ends ({len(data) // 2:,} bytes) inside a DICOM data element"))
    (out / "zero_bytes.dcm").write_bytes(b"")
    cases.append(Case("dicom_zero_bytes", "dicom", "zero_bytes.dcm", "error", "is empty (0 bytes), not a DICOM file"))
    (out / "notes.dcm").write_text("Patient called, will come on Tuesday\n")
    cases.append(Case("dicom_text_file", "dicom", "notes.dcm", "error", "is not a DICOM file"))
    text = out / "dicom_folder_of_text"
    text.mkdir()
    (text / "readme.txt").write_text("not an image\n")
    cases.append(Case("dicom_folder_without_dicom", "dicom", text.name, "error", "holds no DICOM files"))

    f = _series(out, "dicom_two_series", five)
    for i, src in enumerate(_dicom_slices(sample, 3)):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
        ds.SOPInstanceUID = generate_uid()
        ds.save_as(f / f"b{i}.dcm")
    cases.append(Case("dicom_two_series", "dicom", f.name, "warning", "holds 2 image series; reading the largest",
                      args=("--box", BOX_DICOM), expect={"shape": shape5}))

    f = _series(out, "dicom_missing_slice", five)
    sorted(f.iterdir())[2].unlink()
    cases.append(Case("dicom_missing_slice", "dicom", f.name, "warning", "about 1 missing slice(s)",
                      args=("--box", "1:150,150,350,350"), expect={"shape": [4, 512, 512]}))

    f = _series(out, "dicom_duplicate_positions", five)
    first = pydicom.dcmread(sorted(f.iterdir())[0]).ImagePositionPatient
    _edit(f, lambda i, ds: setattr(ds, "ImagePositionPatient", first), slice(1, 2))
    cases.append(Case("dicom_duplicate_positions", "dicom", f.name, "error", "2 slices share a position"))

    f = _series(out, "dicom_mixed_orientation", five)
    _edit(f, lambda i, ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1]), slice(4, 5))
    cases.append(Case("dicom_mixed_orientation", "dicom", f.name, "warning", "mixes 2 slice geometries",
                      args=("--box", BOX_DICOM), expect={"shape": [4, 512, 512]}))

    f = _series(out, "dicom_one_small_slice", five)
    _downsampled_slice(five[4], sorted(f.iterdir())[4], 8)
    cases.append(Case("dicom_one_small_slice", "dicom", f.name, "warning", "ignoring 1",
                      args=("--box", BOX_DICOM), expect={"shape": [4, 512, 512]}))

    def tilt(i: int, ds: pydicom.Dataset) -> None:
        p = [float(v) for v in ds.ImagePositionPatient]
        ds.ImagePositionPatient = [p[0], p[1] + 0.5 * i, p[2]]

    f = _series(out, "dicom_gantry_tilt", five)
    _edit(f, tilt)
    cases.append(Case("dicom_gantry_tilt", "dicom", f.name, "warning", "resampled onto an orthogonal grid",
                      args=("--box", BOX_DICOM), expect={"shape": shape5}))

    f = _series(out, "dicom_non_square_pixels", five)
    _edit(f, lambda i, ds: setattr(ds, "PixelSpacing", [0.5, 1.0]))  # rows 0.5 mm apart, columns 1 mm
    cases.append(Case("dicom_non_square_pixels", "dicom", f.name, "ok", args=("--box", BOX_DICOM),
                      expect={"shape": shape5, "spacing": [1.0, 0.5, 2.0]}))

    def no_rescale(i: int, ds: pydicom.Dataset) -> None:
        del ds.RescaleIntercept
        del ds.RescaleSlope

    f = _series(out, "dicom_missing_rescale", five)
    _edit(f, no_rescale)
    cases.append(Case("dicom_missing_rescale", "dicom", f.name, "warning", "without RescaleIntercept",
                      args=("--box", BOX_DICOM, "--window", "percentile"), expect={"shape": shape5}))

    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    legacy = [pydicom.dcmread(p) for p in five]
    for ds in legacy:
        ds.decompress()
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID  # empty in these files
    enhanced = LegacyConvertedEnhancedCTImage(
        legacy, series_instance_uid=generate_uid(), series_number=99, sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    enhanced.save_as(out / "enhanced_ct.dcm")
    cases.append(Case("dicom_enhanced_multiframe", "dicom", "enhanced_ct.dcm", "ok", args=("--box", BOX_DICOM),
                      expect={"shape": shape5, "spacing": [0.977, 0.977, 2.0]}))

    shutil.copy(sample / "highdicom_seg_ct2" / "seg_image_ct_binary.dcm", out / "a_seg.dcm")
    cases.append(Case("dicom_seg_as_image", "dicom", "a_seg.dcm", "error", "is a DICOM SEG (Segmentation), not an image"))
    return cases


def _nifti_cases(sample: Path, out: Path) -> list[Case]:
    src = sample / "totalsegmentator" / "example_ct_sm.nii.gz"
    img = nib.load(src)
    data = np.asarray(img.dataobj)
    raw = gzip.decompress(src.read_bytes())
    shape = list(data.shape[::-1])  # (Z, Y, X)
    box = ("--box", BOX_NIFTI)
    cases = []

    (out / "truncated.nii").write_bytes(raw[: int(len(raw) * 0.6)])
    found = int(len(raw) * 0.6) - int(img.dataobj.offset)
    expected = data.size * data.dtype.itemsize
    cases.append(Case("nifti_truncated_nii", "nifti", "truncated.nii", "error",
                      f"is truncated: expected {expected:,} bytes of voxel data, found {found:,}"))
    gz = gzip.compress(raw)
    (out / "truncated.nii.gz").write_bytes(gz[: len(gz) // 2])
    cases.append(Case("nifti_truncated_gz", "nifti", "truncated.nii.gz", "error",
                      f"is truncated: expected {expected:,} bytes of voxel data"))
    (out / "text.nii").write_text("not a NIfTI file\n" * 40)
    cases.append(Case("nifti_text_file", "nifti", "text.nii", "error", "cannot read the NIfTI header"))

    bad = data.astype(np.float32)
    bad[:10, :10, 15] = np.nan
    bad[10:12, :10, 15] = np.inf
    nib.save(nib.Nifti1Image(bad, img.affine), out / "nan_inf.nii.gz")
    cases.append(Case("nifti_nan_inf", "nifti", "nan_inf.nii.gz", "warning", "120 of 369,660 voxels are NaN or infinite",
                      args=box, expect={"shape": shape, "dtype": "float32"}))

    h = img.header.copy()
    q = img.affine.copy()
    q[:3, 3] += 20.0
    h.set_qform(q, code=1)
    h.set_sform(img.affine, code=1)
    _nifti_raw(out / "qform_sform.nii", h, data)
    cases.append(Case("nifti_qform_sform_disagree", "nifti", "qform_sform.nii", "warning",
                      "disagree by up to 20.0 mm at the image corners; using the sform", args=box,
                      expect={"shape": shape, "spacing": [3.0, 3.0, 3.0]}))
    h = nib.Nifti1Header()
    h["pixdim"][:] = 0
    h.set_qform(None, code=0)
    h.set_sform(None, code=0)
    _nifti_raw(out / "zero_affine.nii", h, data)
    cases.append(Case("nifti_zero_affine", "nifti", "zero_affine.nii", "warning", "has no valid voxel size", args=box,
                      expect={"shape": shape, "spacing": [1.0, 1.0, 1.0]}))
    h = img.header.copy()
    h.set_sform(None, code=0)
    h.set_qform(img.affine, code=1)
    h["pixdim"][3] = 0
    _nifti_raw(out / "pixdim3_zero.nii", h, data)
    cases.append(Case("nifti_slice_spacing_zero", "nifti", "pixdim3_zero.nii", "warning",
                      "has no valid voxel size (pixdim[3] = 0 along k (slices)); assumed 1 mm", args=box,
                      expect={"shape": shape, "spacing": [3.0, 3.0, 1.0]}))

    nib.save(nib.Nifti1Image(np.stack([data, data], -1), img.affine), out / "four_d.nii.gz")
    cases.append(Case("nifti_4d", "nifti", "four_d.nii.gz", "error", "is a 4D image with 2 frames; choose one with frame="))
    nib.save(nib.Nifti2Image(data, img.affine), out / "nifti2.nii.gz")
    cases.append(Case("nifti2", "nifti", "nifti2.nii.gz", "ok", args=box,
                      expect={"shape": shape, "spacing": [3.0, 3.0, 3.0], "dtype": "int16"}))
    header = bytearray(raw[:352])
    struct.pack_into("<8h", header, 40, 3, 30000, 30000, 30000, 1, 1, 1, 1)
    (out / "huge_header.nii").write_bytes(bytes(header) + raw[352:1024])
    cases.append(Case("nifti_header_30000_cubed", "size", "huge_header.nii", "error",
                      "is truncated: expected 54,000,000,000,000 bytes of voxel data, found 672"))
    two = bytearray(gzip.decompress((out / "nifti2.nii.gz").read_bytes())[:1024])
    struct.pack_into("<8q", two, 16, 3, 100_000, 100_000, 100_000, 1, 1, 1, 1)
    (out / "huge_nifti2.nii").write_bytes(bytes(two))
    cases.append(Case("nifti2_header_100000_cubed", "size", "huge_nifti2.nii", "error",
                      "is truncated: expected 2,000,000,000,000,000 bytes of voxel data, found 480"))

    no_contrast = "has no contrast under the prompt"
    for name, values in (("all_zero", np.zeros_like(data)), ("constant", np.full_like(data, 40)),
                         ("all_nan", np.full(data.shape, np.nan, np.float32))):
        nib.save(nib.Nifti1Image(values, img.affine), out / f"{name}.nii.gz")
        cases.append(Case(f"nifti_{name}", "nifti", f"{name}.nii.gz", "warning" if name == "all_nan" else "ok",
                          "369,660 of 369,660 voxels are NaN" if name == "all_nan" else "",
                          segment="warning", segment_message=no_contrast, args=box, expect={"shape": shape}))
    return cases


def _size_cases(sample: Path, out: Path) -> list[Case]:
    from PIL import Image

    img = nib.load(sample / "totalsegmentator" / "example_ct_sm.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((1, 1, 1), np.int16), np.eye(4)), out / "one_voxel.nii.gz")
    nib.save(img.slicer[:, :, 15:16], out / "one_slice.nii.gz")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(out / "one_pixel.png")
    Image.fromarray(np.zeros((20_000, 20_000), np.uint8)).save(out / "huge.png")
    too_small = "is 1x1 pixels per slice; medsam segments slices of at least 8x8"
    return [
        Case("one_voxel_volume", "size", "one_voxel.nii.gz", "ok", segment="error", segment_message=too_small,
             args=("--point", "0:0,0"), expect={"shape": [1, 1, 1]}),
        Case("one_pixel_picture", "size", "one_pixel.png", "ok", segment="error", segment_message=too_small,
             args=("--point", "0:0,0"), expect={"shape": [1, 1, 1]}),
        Case("one_slice_volume", "size", "one_slice.nii.gz", "ok", args=("--box", "0:44,27,104,81"),
             expect={"shape": [1, 101, 122], "spacing": [3.0, 3.0, 3.0]}),
        Case("picture_20000_square", "size", "huge.png", "error",
             "is 20,000 x 20,000 pixels (400 Mpx); medsam reads pictures of up to 179 Mpx"),
    ]


def _picture_cases(sample: Path, out: Path) -> list[Case]:
    from PIL import Image

    ct = nib.load(sample / "totalsegmentator" / "example_ct_sm.nii.gz")
    grey = np.asarray(ct.dataobj)[:, :, 15].T.astype(np.int32) + 1024  # (Y, X), 0..~3000
    rgba = np.zeros((*grey.shape, 4), np.uint8)
    rgba[..., :3] = np.clip(grey / 12, 0, 255).astype(np.uint8)[..., None]
    rgba[..., 3] = 128
    Image.fromarray(rgba, "RGBA").save(out / "rgba.png")
    Image.fromarray(grey.astype(np.uint16)).save(out / "grey16.png")
    h, w = grey.shape
    return [
        Case("png_rgba", "picture", "rgba.png", "ok", args=("--box", "0:44,27,104,81"),
             expect={"shape": [1, h, w, 3], "dtype": "uint8"}),
        Case("png_16_bit", "picture", "grey16.png", "ok", args=("--box", "0:44,27,104,81"),
             expect={"shape": [1, h, w], "dtype": "uint16"}),
    ]


def _cli_cases(sample: Path, out: Path) -> list[Case]:
    """Bad prompts and bad checkpoints on a clean input: ``medsam segment`` exits 2."""
    import torch

    ct = "ct.nii.gz"
    shutil.copy(sample / "totalsegmentator" / "example_ct_sm.nii.gz", out / ct)

    def prompts(name: str, body: Any) -> tuple[str, str]:
        (out / name).write_text(body if isinstance(body, str) else json.dumps(body))
        return "--prompts", name

    def obj(prompt: dict, **extra: Any) -> dict:
        return {"space": "voxel", "objects": [{"label": 1, "prompts": [prompt], **extra}]}

    torch.save([torch.zeros(3)], out / "list.pth")
    torch.save({"weights": _Payload(str(out / "payload_ran"))}, out / "payload.pth")
    torch.save({"image_encoder.weight": torch.zeros(2, 2)}, out / "other_model.pth")
    adapter = _foreign_adapter(out)
    bad = [
        ("prompt_outside_image", ("--box", "15:44,27,400,81"), "is outside the 122x101 image"),
        ("prompt_inverted_box", ("--box", "15:104,27,44,81"), "inverted"),
        ("prompt_nan_coordinates", prompts("nan.json", obj({"slice": 15, "box": ["NaN", 27, 104, 81]})), "box"),
        ("prompt_nan_point", prompts("nanpt.json", '{"space": "voxel", "objects": [{"label": 1, "prompts": '
                                                   '[{"slice": 15, "points": [[NaN, 40]]}]}]}'), "not finite"),
        ("prompt_wrong_types", prompts("types.json", obj({"slice": "fifteen", "box": [44, 27, 104, 81]})), "slice"),
        ("prompt_unknown_label", prompts("label.json", {"space": "voxel", "objects": [
            {"label": "liver", "prompts": [{"slice": 15, "box": [44, 27, 104, 81]}]}]}), "label"),
        ("prompt_not_json", prompts("broken.json", '{"objects": [ '), "JSON"),
        ("checkpoint_not_a_state_dict", ("--box", BOX_NIFTI, "--checkpoint", "list.pth"),
         "does not hold a state dict (found list)"),
        ("checkpoint_pickle_payload", ("--box", BOX_NIFTI, "--checkpoint", "payload.pth"),
         "holds pickled Python objects besides tensors, which medsam refuses to load"),
        ("checkpoint_of_another_model", ("--box", BOX_NIFTI, "--checkpoint", "other_model.pth"), "other_model.pth"),
        ("adapter_for_another_base_model", ("--box", BOX_NIFTI, "--adapter", adapter), "adapter was trained for litemedsam"),
    ]
    return [Case(name, "checkpoint" if name.startswith(("checkpoint", "adapter")) else "prompts", ct, "ok",
                 segment="error", segment_message=msg, args=tuple(args)) for name, args, msg in bad]


class _Payload:
    """Pickles as a call to ``os.mkdir(marker)``: loading it with ``weights_only=False``
    would create the folder, which the test checks never appears."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (self.marker,)


def _foreign_adapter(out: Path) -> str:
    """A LoRA adapter saved for other LiteMedSAM weights (another weights id)."""
    import copy

    from adapters.config import AdapterConfig
    from adapters.files import save_adapter
    from adapters.methods import apply_adapter
    from medsam.models import load_model

    model = copy.deepcopy(load_model("litemedsam", device="cpu"))
    model.weights_id = "litemedsam:0000000000000000"
    apply_adapter(model, AdapterConfig("lora"))
    save_adapter(model, out / "foreign.safetensors")
    return "foreign.safetensors"


def build_corpus(out: Path, sample: Path) -> list[Case]:
    """Write every case under ``out`` (which must be empty or absent) from ``sample``."""
    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for build in (_dicom_cases, _nifti_cases, _size_cases, _picture_cases, _cli_cases):
        cases += build(sample, out)
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "case names must be unique"
    return cases


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python tests/corpus/generate.py OUTDIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    if out.exists() and any(out.iterdir()):
        print(f"{out}: not empty", file=sys.stderr)
        return 2
    sample = Path(__file__).resolve().parents[2] / "sample_data"
    cases = build_corpus(out, sample)
    (out / "cases.json").write_text(json.dumps([asdict(c) for c in cases], indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {out}\n")
    print(table(cases))
    return 0


def table(cases: list[Case]) -> str:
    """The README's corpus table: cases per category, by what ``medsam segment`` gives."""
    cats = sorted({c.category for c in cases}, key=[c.category for c in cases].index)
    rows = ["| category | cases | error (exit 2) | warning + result | clean result |", "|---|---|---|---|---|"]
    for cat in cats:
        mine = [c for c in cases if c.category == cat]
        n = {o: sum(c.segment_outcome == o for c in mine) for o in ("error", "warning", "ok")}
        rows.append(f"| {cat} | {len(mine)} | {n['error']} | {n['warning']} | {n['ok']} |")
    n = {o: sum(c.segment_outcome == o for c in cases) for o in ("error", "warning", "ok")}
    rows.append(f"| **all** | **{len(cases)}** | {n['error']} | {n['warning']} | {n['ok']} |")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main(sys.argv[1:]))
