"""Batch dev cases cut from ``sample_data`` (TotalSegmentator CT and MR, CC BY 4.0; see its README).

:func:`write_dev_cases` writes 3-slice crops of the CT and MR with their prompts and a
manifest of six cases: four good ones (a prompts file, inline JSON, ``from-labels:`` with a
reference, an MR) and two broken ones (an unreadable file, a box off the image).
``tests/test_batch.py`` and ``benchmarks/batch.py`` both use it.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
TS = ROOT / "sample_data" / "totalsegmentator"
LIVER, SPLEEN = 5, 1
#: (case output, expected status) of the manifest written by write_dev_cases.
DEV_CASES = (
    ("a_liver.nii.gz", "done"),
    ("b_spleen.nrrd", "done"),
    ("c_liver_from_labels.nii.gz", "done"),
    ("d_mr_liver.nii.gz", "done"),
    ("e_unreadable.nii.gz", "failed"),
    ("f_box_off_image.nii.gz", "failed"),
)


def _crop(src: Path, dst: Path, k0: int, k1: int) -> sitk.Image:
    image = sitk.ReadImage(str(src))[:, :, k0:k1]  # ITK slicing keeps the geometry
    sitk.WriteImage(image, str(dst))
    return image


def _box(labels: np.ndarray, label: int, k: int) -> list[int]:
    ys, xs = np.nonzero(labels[k] == label)
    return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def _prompts(label: int, name: str, k: int, box: list[int]) -> dict:
    return {"space": "voxel", "objects": [{"label": label, "name": name, "prompts": [{"slice": k, "box": box}]}]}


def write_dev_cases(folder: Path, tiles: int = 1, broken: bool = True) -> Path:
    """Write the crops, prompts and ``manifest.csv`` (``tiles`` copies of the four good
    cases, then the two broken ones once unless ``broken`` is false) into ``folder``;
    returns the manifest's path."""
    folder.mkdir(parents=True, exist_ok=True)
    _crop(TS / "example_ct_sm.nii.gz", folder / "ct_a.nii.gz", 15, 18)
    seg_a = sitk.GetArrayFromImage(_crop(TS / "example_seg.nii.gz", folder / "seg_a.nii.gz", 15, 18))
    _crop(TS / "example_ct_sm.nii.gz", folder / "ct_b.nii.gz", 21, 24)
    seg_b = _crop(TS / "example_seg.nii.gz", folder / "seg_b_all.nii.gz", 21, 24)
    liver_b = sitk.Cast(sitk.BinaryThreshold(seg_b, LIVER, LIVER, LIVER, 0), sitk.sitkUInt8)
    sitk.WriteImage(liver_b, str(folder / "seg_b.nii.gz"))  # the liver only
    (folder / "seg_b_all.nii.gz").unlink()
    _crop(TS / "example_mr_sm.nii.gz", folder / "mr.nii.gz", 9, 12)
    seg_mr = sitk.GetArrayFromImage(_crop(TS / "example_seg_mr.nii.gz", folder / "seg_mr.nii.gz", 9, 12))
    (folder / "seg_mr.nii.gz").unlink()
    (folder / "seg_a.nii.gz").unlink()
    (folder / "a.prompts.json").write_text(json.dumps(_prompts(LIVER, "liver", 1, _box(seg_a, LIVER, 1))))
    (folder / "d.prompts.json").write_text(json.dumps(_prompts(LIVER, "liver", 1, _box(seg_mr, LIVER, 1))))
    (folder / "f.prompts.json").write_text(json.dumps(_prompts(LIVER, "liver", 1, [5000, 10, 5100, 40])))
    (folder / "unreadable.nii.gz").write_bytes(b"this is not an image\n" * 20)
    spleen = json.dumps(_prompts(SPLEEN, "spleen", 1, _box(seg_a, SPLEEN, 1)))
    good = [
        {"input": "ct_a.nii.gz", "prompts": "a.prompts.json", "output": "a_liver.nii.gz"},
        {"input": "ct_a.nii.gz", "prompts": spleen, "output": "b_spleen.nrrd", "window": "abdomen"},
        {"input": "ct_b.nii.gz", "prompts": "from-labels:seg_b.nii.gz", "output": "c_liver_from_labels.nii.gz",
         "reference": "seg_b.nii.gz"},
        {"input": "mr.nii.gz", "prompts": "d.prompts.json", "output": "d_mr_liver.nii.gz"},
    ]
    rows = []
    for t in range(tiles):
        for r in good:
            out = r["output"] if tiles == 1 else f"tile{t:02d}/{r['output']}"
            rows.append({**r, "output": out})
    rows += [] if not broken else [
        {"input": "unreadable.nii.gz", "prompts": "a.prompts.json", "output": "e_unreadable.nii.gz"},
        {"input": "ct_a.nii.gz", "prompts": "f.prompts.json", "output": "f_box_off_image.nii.gz"},
    ]
    manifest = folder / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["input", "prompts", "output", "window", "reference"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest
