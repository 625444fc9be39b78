"""Clicks with the default LiteMedSAM: answered as boxes (medsam.click_prompts), on the dev CT.

Reference: the TotalSegmentator labels of the DICOM CT (`example_seg_dicom.nii.gz`,
liver = 5), resampled onto the series.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from medsam.errors import PromptError
from medsam.io import load_volume
from medsam.io.resample import resample_labels_to
from medsam.metrics import dice
from medsam.predictor import SlicePredictor
from medsam.prompt_sim import interior_point
from medsam.prompts import box_from_mask


@pytest.fixture(scope="module")
def ct(sample_data: Path):
    from medsam.volume import VolumePredictor

    folder = sample_data / "totalsegmentator"
    vol = load_volume(folder / "example_ct_dicom")
    ref = np.asarray(resample_labels_to(load_volume(folder / "example_seg_dicom.nii.gz"), vol))
    vp = VolumePredictor(device="cpu")
    vp.init_volume(vol, "soft_tissue")
    liver = ref == 5
    k = int(liver.reshape(liver.shape[0], -1).sum(1).argmax())
    return vol, ref, vp, k


def _predictor(vp, k: int, **kwargs) -> SlicePredictor:
    p = SlicePredictor(vp.model, **kwargs)
    info = vp.session.embedder.info
    p.set_embedding(vp.session.embedder.get(k, 1), info.original_hw, info.input_hw)
    return p


def test_one_click_segments_the_liver(ct) -> None:
    """The default path: one click at the liver's most interior pixel. LiteMedSAM's own point
    path (trained with boxes only) gives almost nothing from the same click."""
    vol, ref, vp, k = ct
    liver = ref[k] == 5
    xy = interior_point(liver)
    res = vp.add_prompt(k, 1, points=[xy], point_labels=[1], name="liver")
    assert dice(res.mask, liver) >= 0.7
    native = _predictor(vp, k, clicks="model")
    assert not native.translates_clicks and _predictor(vp, k).translates_clicks
    assert dice(native.predict(points=[xy], point_labels=[1]).mask, liver) < 0.1


def test_a_box_is_answered_as_before(ct) -> None:
    """Click translation never touches a box without clicks."""
    vol, ref, vp, k = ct
    box = box_from_mask(ref[k] == 5)
    a = _predictor(vp, k).predict(box=box)
    b = _predictor(vp, k, clicks="model").predict(box=box)
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.score == b.score


def test_negative_click_removes_a_false_positive(ct) -> None:
    """A box twice too large around the liver takes in a neighbour; a negative click in the
    largest wrong part removes (nearly all of) it and keeps the liver."""
    vol, ref, vp, k = ct
    liver = ref[k] == 5
    x0, y0, x1, y1 = box_from_mask(liver)
    h, w = liver.shape
    cx, cy, bw, bh = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    big = (max(0, cx - bw), max(0, cy - bh), min(w - 1, cx + bw), min(h - 1, cy + bh))
    p = _predictor(vp, k)
    before = p.predict(box=big)
    lab, n = ndi.label(before.mask & ~liver)
    assert n > 0
    wrong = lab == 1 + int(np.argmax(ndi.sum(np.ones_like(lab), lab, range(1, n + 1))))
    assert wrong.sum() > 500  # the too-large box really leaks
    neg = interior_point(wrong)
    after = p.predict(box=big, points=[neg], point_labels=[0])
    assert (after.mask & wrong).sum() < 0.2 * wrong.sum()
    assert dice(after.mask, liver) > dice(before.mask, liver)
    assert not after.mask[int(neg[1]), int(neg[0])]


def test_click_input_errors(ct) -> None:
    vol, ref, vp, k = ct
    p = _predictor(vp, k)
    with pytest.raises(PromptError, match="outside"):
        p.predict(points=[[5000, 10]], point_labels=[1])
    with pytest.raises(PromptError):
        p.predict(points=[[np.nan, 10]], point_labels=[1])
    with pytest.raises(PromptError, match="only negative clicks"):
        vp.add_prompt(k, 7, points=[[100, 100]], point_labels=[0])
    assert 7 not in vp.session.objects


@pytest.mark.parametrize(
    "point, message",
    [("10:100,100,0", "only negative clicks"), ("10:nan,100", "finite"), ("10:9000,100", "outside")],
)
def test_cli_refuses_bad_clicks(sample_data: Path, tmp_path: Path, point: str, message: str) -> None:
    out = tmp_path / "m.nii.gz"
    res = subprocess.run(
        [sys.executable, "-m", "medsam", "segment", str(sample_data / "totalsegmentator" / "example_ct_dicom"),
         "-o", str(out), "--point", point, "--device", "cpu"],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert list(tmp_path.iterdir()) == []


def test_point_trained_adapters_answer_clicks_themselves(ct) -> None:
    """An adapter fine-tuned with point prompts (medsam's default) answers clicks natively;
    one trained on boxes only keeps the translation."""
    from medsam.click_prompts import answers_points

    vol, ref, vp, k = ct
    model = vp.model
    assert not answers_points(model)
    try:
        model.adapter_meta = {"training": {"config": {"prompt": {"kinds": [0.4, 0.4, 0.2]}}}}
        assert answers_points(model)
        model.adapter_meta = {"training": {"config": {"prompt": {"kinds": [1.0, 0.0, 0.0]}}}}
        assert not answers_points(model)
    finally:
        del model.adapter_meta


def _object_masks(vp, obj: int) -> np.ndarray:
    """``(Z, Y, X)`` one object's masks as the session holds them (no overlap resolution)."""
    z, h, w = vp.session.grid_shape
    out = np.zeros((z, h, w), bool)
    for j, r in vp.session.objects[obj].results.items():
        out[j] = r.mask
    return out


def test_click_correction_in_3d_changes_only_its_stretch(ct) -> None:
    """A box on the liver's largest slice, propagation, then a click on a propagated slice
    where the mask is wrong: the click corrects that slice's mask (kept in the prompt as its
    base) and re-propagation changes only the slices that this prompt owns."""
    from medsam.prompt_sim import correction_click

    vol, ref, vp, k = ct
    liver = ref == 5
    obj = 11
    vp.add_prompt(k, obj, box=box_from_mask(liver[k]), name="liver 3d")
    list(vp.propagate(obj_ids=[obj]))
    before = _object_masks(vp, obj)
    ks = np.nonzero(liver.reshape(liver.shape[0], -1).any(1))[0]
    # the propagated slice farthest from the seed with a wrong part worth a click
    k1 = max((j for j in ks if j != k and correction_click(before[j], liver[j]) is not None), key=lambda j: abs(j - k))
    (xy, label) = correction_click(before[k1], liver[k1])
    res = vp.add_prompt(int(k1), obj, points=[xy], point_labels=[label])
    prompt = vp.session.objects[obj].prompts[int(k1)]
    np.testing.assert_array_equal(prompt.mask, before[k1])  # the base the click corrects
    assert res.mask[int(xy[1]), int(xy[0])] == bool(label)  # the clicked pixel is now right
    # a box-trained model corrects coarsely: no worse than before, up to the mask's resampling
    assert dice(res.mask, liver[k1]) >= dice(before[k1], liver[k1]) - 0.005
    list(vp.propagate(obj_ids=[obj], start_slice=int(k1)))
    after = _object_masks(vp, obj)
    lo, hi = sorted((k, int(k1)))
    owned = np.arange(after.shape[0]) > (lo + hi) // 2 if k1 > k else np.arange(after.shape[0]) <= (lo + hi) // 2
    np.testing.assert_array_equal(after[~owned], before[~owned])
    np.testing.assert_array_equal(after[k1], res.mask)

    # the sidecar holds the click with its base mask: the same prompts, run again from
    # scratch (as `medsam replay` does), give this object's masks voxel for voxel
    from medsam.prompts import PromptSet, parse_prompts
    from medsam.provenance import session_record
    from medsam.volume import VolumePredictor

    record = session_record(vp)
    prompts = parse_prompts(record["prompts"], vol)
    [mine] = [o for o in prompts.objects if o.label == obj]
    assert [p.slice for p in mine.prompts] == sorted([k, int(k1)]) and all(
        (p.mask is not None) == (p.slice == k1) for p in mine.prompts
    )
    again = VolumePredictor(vp.model, inference=vp.inference)
    again.init_volume(vol, "soft_tissue")
    again.add_objects(PromptSet((mine,)))
    again.run()
    np.testing.assert_array_equal(_object_masks(again, obj), after)
