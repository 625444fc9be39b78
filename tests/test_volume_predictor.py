"""VolumePredictor on the real CT with the real LiteMedSAM, on sub-volumes of a few slices."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import crop_slices

from medsam.errors import PromptError
from medsam.metrics import dice
from medsam.prompts import box_from_mask
from medsam.volume import PropagationConfig, VolumePredictor

LIVER, SPLEEN, KIDNEY_R = 5, 1, 2


@pytest.fixture(scope="module")
def vp(litemedsam):
    return VolumePredictor(litemedsam, batch_size=4)


@pytest.fixture(scope="module")
def upper(ct_sm):
    """Slices 20..29: liver and spleen at their largest (reference on the same grid)."""
    ct, seg = ct_sm
    return crop_slices(ct, 20, 30), seg[20:30]


def _box(ref, k):
    return box_from_mask(ref[k])


def test_one_box_propagates_liver_and_spleen(vp, upper):
    vol, seg = upper
    vp.init_volume(vol, "soft_tissue")
    liver, spleen = seg == LIVER, seg == SPLEEN
    r = vp.add_prompt(4, 1, box=_box(liver, 4), name="liver")
    assert r.source == "prompt" and r.score > 0.9
    vp.add_prompt(2, 2, box=_box(spleen, 2), name="spleen")
    steps = list(vp.propagate())
    assert {s.slice for s in steps} == set(range(10))  # liver from 4, spleen from 2, both ways
    labels = vp.to_labels()
    assert labels.dtype == np.uint8 and labels.shape == vol.grid_shape
    # measured: liver 0.95, spleen 0.95 on these 10 slices
    assert dice(labels == 1, liver) > 0.9
    assert dice(labels == 2, spleen) > 0.9
    conf = vp.session.confidence()
    assert set(conf) == {"1", "2"} and conf["1"]["name"] == "liver"
    assert len(conf["1"]["slices"]) == 10 and all(0.7 <= v <= 1.01 for v in conf["1"]["slices"].values())
    # only the slices propagation reached were embedded, each once
    assert vp.session.embedder.n_encoded == 10


def test_stops_at_the_anatomical_end(vp, ct_sm):
    """The right kidney ends at slice 18 (reference): propagation must not leak past it."""
    ct, seg = ct_sm
    vol, ref = crop_slices(ct, 12, 24), seg[12:24] == KIDNEY_R  # kidney on local slices 0..6
    vp.init_volume(vol, "soft_tissue")
    vp.add_prompt(2, 1, box=_box(ref, 2))
    vp.run()
    pred = vp.to_labels() == 1
    covered = np.nonzero(pred.reshape(len(pred), -1).any(1))[0]
    assert covered.max() <= 7, f"leaked to slice {covered.max()} (kidney ends at 6)"
    assert dice(pred, ref) > 0.85


def test_correction_repropagates_only_its_slices(vp, upper):
    vol, seg = upper
    liver = seg == LIVER
    vp.init_volume(vol, "soft_tissue")
    vp.add_prompt(1, 1, box=_box(liver, 1))
    vp.add_prompt(8, 1, box=_box(liver, 8))
    vp.run()
    obj = vp.session.objects[1]
    before = {k: r.mask.copy() for k, r in obj.results.items()}
    assert sorted(before) == list(range(10))
    # a (bad) correction on slice 8: a box around only part of the liver
    x0, y0, x1, y1 = _box(liver, 8)
    vp.add_prompt(8, 1, box=(x0, y0, (x0 + x1) / 2, y1), clear=True)
    list(vp.propagate(start_slice=8))
    after = {k: r.mask for k, r in obj.results.items()}
    # slices owned by the slice-1 prompt (0..4) are untouched; the prompt on slice 1 is kept
    for k in range(0, 5):
        np.testing.assert_array_equal(after[k], before[k])
    assert obj.prompts[1].box == _box(liver, 1)
    assert after[8].sum() < before[8].sum() * 0.8


def test_3d_box_mode_stays_in_range(vp, upper):
    vol, seg = upper
    liver = seg == LIVER
    vp.init_volume(vol, "soft_tissue")
    box = _box(liver, 5)
    vp.set_box_3d(1, box, z_range=(3, 7), name="liver")
    vp.run()
    lab = vp.to_labels()
    ks = np.nonzero((lab == 1).reshape(10, -1).any(1))[0]
    assert ks.min() >= 3 and ks.max() <= 7
    ys, xs = np.nonzero((lab == 1).any(0))
    assert xs.min() >= box[0] and xs.max() <= box[2] and ys.min() >= box[1] and ys.max() <= box[3]


def test_no_propagation_and_mask_prompt(vp, upper):
    vol, seg = upper
    liver = seg == LIVER
    vp.init_volume(vol, "soft_tissue")
    vp.add_prompt(4, 3, mask=liver[4], name="painted")
    lab = vp.to_labels()
    assert lab.max() == 3 and (lab[4] == 3).sum() == liver[4].sum()
    assert not (lab[np.arange(10) != 4] > 0).any()


def test_bad_prompts_fail_before_model_work(vp, upper):
    vol, _ = upper
    vp.init_volume(vol, None)
    n = vp.session.embedder.n_encoded
    with pytest.raises(PromptError, match="slice 10 is out of range"):
        vp.add_prompt(10, 1, box=(1, 1, 5, 5))
    with pytest.raises(PromptError, match="outside"):
        vp.add_prompt(0, 1, box=(1, 1, 500, 5))
    with pytest.raises(PromptError, match="empty prompt"):
        vp.add_prompt(0, 1)
    with pytest.raises(PromptError, match="z_range"):
        vp.set_box_3d(1, (1, 1, 5, 5), z_range=(5, 2))
    assert vp.session.embedder.n_encoded == n
    with pytest.raises(ValueError, match="score_threshold"):
        PropagationConfig(score_threshold=2.0)


def test_close_drops_the_volume_and_its_embeddings(litemedsam, upper):
    vol, seg = upper
    vp = VolumePredictor(litemedsam)
    vp.init_volume(vol, "soft_tissue")
    vp.add_prompt(4, 1, box=_box(seg == LIVER, 4))
    assert vp.session.embedder.nbytes > 0
    vp.close()
    assert vp.session is None
    with pytest.raises(RuntimeError, match="no volume"):
        vp.add_prompt(4, 1, box=_box(seg == LIVER, 4))
