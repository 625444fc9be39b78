"""Dataset readers (MSD, nnU-Net raw, pairs), label selection, slice sampling, prompt simulation.

The datasets are small folders written in tmp_path from the real TotalSegmentator sample
volumes, cropped to a few slices.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adapters.datasets import (
    case_targets,
    check_label_spec,
    detect_format,
    find_cases,
    load_case,
    parse_label_names,
    parse_label_spec,
    split_cases,
)
from adapters.slices import CaseStore, SliceIndex
from medsam.errors import InputFileError
from medsam.prompt_sim import PromptSimConfig, correction_click, fixed_prompt, simulate_prompt

TS = "totalsegmentator"
CROPS = {"ct_a": (8, 12), "ct_b": (18, 21)}


def _write_crops(sample_data: Path, images: Path, labels: Path, image_name, label_name) -> dict:
    import SimpleITK as sitk

    img = sitk.ReadImage(str(sample_data / TS / "example_ct_sm.nii.gz"))
    seg = sitk.ReadImage(str(sample_data / TS / "example_seg.nii.gz"))
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for cid, (a, b) in CROPS.items():
        sitk.WriteImage(img[:, :, a:b], str(images / image_name(cid)))
        sitk.WriteImage(seg[:, :, a:b], str(labels / label_name(cid)))
    return json.loads((sample_data / TS / "label_names_total_and_total_mr.json").read_text())["total"]


@pytest.fixture(scope="module")
def msd(sample_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("Task99_Abdomen")
    names = _write_crops(sample_data, root / "imagesTr", root / "labelsTr", lambda c: f"{c}.nii.gz", lambda c: f"{c}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "name": "abdomen", "modality": {"0": "CT"}, "labels": {"0": "background", **names},
        "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"} for c in CROPS],
    }))
    return root


@pytest.fixture(scope="module")
def nnunet(sample_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("Dataset099_Abdomen")
    names = _write_crops(sample_data, root / "imagesTr", root / "labelsTr", lambda c: f"{c}_0000.nii.gz", lambda c: f"{c}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, **{v: int(k) for k, v in names.items()}},
        "numTraining": 2, "file_ending": ".nii.gz",
    }))
    return root


@pytest.fixture(scope="module")
def pairs(sample_data, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    names = _write_crops(sample_data, root / "images", root / "labels", lambda c: f"{c}.nii.gz", lambda c: f"{c}.nii.gz")
    (root / "labels.json").write_text(json.dumps(names))
    return root


@pytest.mark.parametrize("layout", ["msd", "nnunet", "pairs"])
def test_readers_find_the_same_cases(layout, request, ct_sm):
    root = request.getfixturevalue(layout)
    assert detect_format(root) == layout
    cases = find_cases(root)
    assert [c.case_id for c in cases] == ["ct_a", "ct_b"]
    assert cases[0].label_names[5] == "liver"
    volume, labels = load_case(cases[0])
    assert volume.modality == "CT" and volume.array.shape == (4, 101, 122)
    np.testing.assert_array_equal(labels, ct_sm[1][8:12])  # the real reference, unchanged
    assert [(t.name, t.label_id) for t in case_targets(cases[0], "Liver,spleen")] == [("liver", 5), ("spleen", 1)]
    assert [t.name for t in case_targets(cases[0], "5,1")] == ["liver", "spleen"]


def test_label_errors_and_parsing(pairs):
    cases = find_cases(pairs, "pairs")
    with pytest.raises(ValueError, match="did you mean liver"):
        check_label_spec(cases, "livr")
    with pytest.raises(ValueError, match="known names: adrenal"):
        check_label_spec(cases, "xyzzy")
    assert check_label_spec(cases, "5,spleen") == ["liver", "spleen"]
    assert parse_label_spec("liver, 5") == ["liver", 5]
    assert parse_label_names({"liver": 5, "background": 0, "tumor": [1, 2]}) == {5: "liver"}
    with pytest.raises(ValueError):
        parse_label_spec(" , ")


def test_format_errors(tmp_path, msd):
    with pytest.raises(InputFileError, match="no dataset.json"):
        detect_format(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    data = json.loads((msd / "dataset.json").read_text())
    data["training"][0]["image"] = "./imagesTr/missing.nii.gz"
    (broken / "dataset.json").write_text(json.dumps(data))
    with pytest.raises(InputFileError, match="missing"):
        find_cases(broken, "msd")


def test_split_whole_cases(pairs):
    cases = find_cases(pairs)
    train, val = split_cases(cases, 1)
    assert len(train) == 1 and len(val) == 1 and {train[0].case_id, val[0].case_id} == set(CROPS)
    assert split_cases(cases, 0.5) == (train, val)
    assert split_cases(cases[:1], 0.5) == (cases[:1], [])


def test_slice_index_foreground_empty_and_epochs(pairs):
    store = CaseStore(find_cases(pairs), window=None)
    index = SliceIndex(store, "liver,kidney_right", min_area=10, empty_margin=3)
    assert index.structures == ["liver", "kidney_right"]
    for it in index.foreground:
        assert store.mask(it.case, it.k, it.label_id).sum() >= 10
    assert index.empty and all(it.empty and not store.mask(it.case, it.k, it.label_id).any() for it in index.empty)
    for it in index.empty:  # the prompt comes from the nearest slice holding the structure
        assert store.mask(it.case, it.ref_k, it.label_id).sum() >= 10
    a = index.epoch_items(3, seed=0, empty_fraction=0.2)
    assert a == index.epoch_items(3, seed=0, empty_fraction=0.2)
    assert a != index.epoch_items(4, seed=0, empty_fraction=0.2)
    assert 0 < sum(it.empty for it in a) <= round(0.2 * len(a)) + 1
    assert len(index.epoch_items(0, 0, samples=50)) == 50
    image = store.image(0, 1)
    assert image.dtype == np.float32 and 0 <= image.min() and image.max() <= 1


def test_simulated_prompts_are_valid(ct_sm):
    mask = ct_sm[1][15] == 5  # liver on a real slice
    h, w = mask.shape
    cfg = PromptSimConfig(kinds=(1, 1, 1), max_pos_points=3, max_neg_points=2)
    kinds = set()
    for seed in range(40):
        p = simulate_prompt(mask, np.random.default_rng(seed), cfg)
        if p.box is not None:
            x0, y0, x1, y1 = p.box
            assert 0 <= x0 <= x1 <= w - 1 and 0 <= y0 <= y1 <= h - 1
        for (x, y), lab in zip(p.points, p.labels, strict=True):
            assert mask[int(y), int(x)] == bool(lab)
        kinds.add((p.box is not None, len(p.points) > 0))
    assert kinds == {(True, False), (False, True), (True, True)}
    empty = simulate_prompt(np.zeros_like(mask), np.random.default_rng(0), cfg, ref_mask=mask)
    assert empty.box is not None and len(empty.points) == 0


def test_box_jitter_distributions_share_one_primitive(ct_sm):
    """Training (normal) and MONAI (uniform, RandomState) jitter both come from jitter_box."""
    from medsam.prompt_sim import jitter_box, negative_region, sample_pixels
    from medsam.prompts import box_from_mask

    mask = ct_sm[1][15] == 5
    h, w = mask.shape
    tight = box_from_mask(mask)
    bw, bh = tight[2] - tight[0] + 1, tight[3] - tight[1] + 1
    for seed in range(20):
        b = jitter_box(tight, (h, w), np.random.RandomState(seed), 0.1, distribution="uniform")
        assert abs(b[0] - tight[0]) <= 0.1 * bw + 0.5 and abs(b[3] - tight[3]) <= 0.1 * bh + 0.5
        assert 0 <= b[0] <= b[2] <= w - 1 and 0 <= b[1] <= b[3] <= h - 1
    assert np.array_equal(jitter_box(tight, (h, w), np.random.default_rng(0), 0.0), np.asarray(tight, np.float32))
    with pytest.raises(ValueError, match="distribution must be"):
        jitter_box(tight, (h, w), np.random.default_rng(0), 0.1, distribution="cauchy")
    near = negative_region(mask)
    assert near.any() and not (near & mask).any()
    pts = sample_pixels(near, 5, np.random.RandomState(3))
    assert pts.shape == (5, 2) and all(near[int(y), int(x)] for x, y in pts)
    assert len({tuple(p) for p in pts.tolist()}) == 5  # distinct pixels


def test_correction_clicks_land_in_error_regions(ct_sm):
    target = ct_sm[1][15] == 5
    pred = np.zeros_like(target)
    (x, y), lab = correction_click(pred, target)
    assert lab == 1 and target[int(y), int(x)]
    pred = target.copy()
    pred[:10, :10] = True  # a false-positive blob only
    (x, y), lab = correction_click(pred, target)
    assert lab == 0 and pred[int(y), int(x)] and not target[int(y), int(x)]
    assert correction_click(target, target) is None


def test_fixed_prompts_are_deterministic(ct_sm):
    mask = ct_sm[1][15] == 1
    p3 = fixed_prompt(mask, "points", 3, seed=7)
    assert p3.box is None and len(p3.points) == 3 and p3.labels.tolist() == [1, 1, 1]
    assert np.array_equal(p3.points, fixed_prompt(mask, "points", 3, seed=7).points)
    assert all(mask[int(y), int(x)] for x, y in p3.points)
    bp = fixed_prompt(mask, "box+points", 1)
    ys, xs = np.nonzero(mask)
    assert bp.box.tolist() == [xs.min(), ys.min(), xs.max(), ys.max()] and len(bp.points) == 1
    with pytest.raises(ValueError, match="empty"):
        fixed_prompt(np.zeros_like(mask), "box")
