"""Core session operations behind the napari widget, and the plugin's layer adapter.

The model tests embed only a few slices of the sample CT (LiteMedSAM on CPU).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medsam import session_ops
from medsam.io import Volume, load_volume
from medsam.prompts import SlicePrompt

LIVER = 5


@pytest.fixture(scope="module")
def ct(sample_data: Path) -> Volume:
    return load_volume(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz")


@pytest.fixture(scope="module")
def ref(sample_data: Path) -> np.ndarray:
    return load_volume(sample_data / "totalsegmentator" / "example_seg.nii.gz").array


def test_window_options(ct: Volume) -> None:
    choices, default = session_ops.window_options(ct)
    assert default == "soft_tissue" and "header" not in choices and "liver" in choices
    dicom_like = Volume(ct.array, modality="CT", meta=type(ct.meta)(window_center=40.0, window_width=300.0))
    choices, default = session_ops.window_options(dicom_like)
    assert default == "header" and choices[0] == "header"
    mr = Volume(ct.array, modality="MR")
    assert session_ops.window_options(mr)[1] == "percentile"


def test_embedding_order() -> None:
    assert session_ops.embedding_order(5, 4) == [4, 3, 2, 1, 0]
    assert session_ops.embedding_order(5, 99) == [4, 3, 2, 1, 0]
    assert session_ops.embedding_order(0, 0) == []


def test_label_history_undo_redo_bounded() -> None:
    target = np.zeros((4, 3, 3), np.uint8)
    h = session_ops.LabelHistory(max_steps=2)
    assert h.apply(target, target.copy()) == []  # nothing changed, nothing recorded
    assert not h.can_undo
    states = [target.copy()]
    for v in (1, 2, 3):
        new = target.copy()
        new[v] = v
        assert h.apply(target, new, slices=[v]) == [v]
        states.append(target.copy())
    assert h.undo(target) == [3]
    np.testing.assert_array_equal(target, states[2])
    assert h.undo(target) == [2]
    np.testing.assert_array_equal(target, states[1])
    assert h.undo(target) == []  # only two steps are kept
    assert h.redo(target) == [2] and h.redo(target) == [3]
    np.testing.assert_array_equal(target, states[3])
    with pytest.raises(ValueError, match="shapes differ"):
        h.apply(target, np.zeros((2, 3, 3), np.uint8))


def test_prompts_from_layers_convention() -> None:
    from napari_plugin._layers import NEGATIVE, POSITIVE, prompts_from_layers

    points = np.array([[3, 10.2, 20.7], [3, 5, 6], [4, 200, 1], [1.4, 0, 0]])
    kinds = [POSITIVE, NEGATIVE, POSITIVE, POSITIVE]
    rect = np.array([[3, 8, 30], [3, 8, 50], [3, 40, 50], [3, 40, 30]], float)
    outside = np.array([[5, -10, -10], [5, -10, 500], [5, 90, 500], [5, 90, -10]], float)
    oblique = np.array([[6, 1, 1], [7, 1, 9], [7, 9, 9], [6, 9, 1]], float)
    got = prompts_from_layers(points, kinds, [rect, outside, oblique], (8, 64, 64))
    assert got[3] == SlicePrompt(3, points=((20.7, 10.2), (6.0, 5.0)), point_labels=(1, 0), box=(30, 8, 50, 40))
    assert got[1] == SlicePrompt(1, points=((0.0, 0.0),), point_labels=(1,))
    assert got[5].box == (0.0, 0.0, 63.0, 63.0)  # clipped to the image
    assert 4 not in got and 6 not in got and 7 not in got  # off-image point, multi-slice shape


def test_oblique_volume_shows_scale_and_translate_only() -> None:
    from napari_plugin._layers import GEOMETRY_KEY, geometry_from_layer_state, image_layer_data

    c, s = np.cos(0.3), np.sin(0.3)
    vol = Volume(np.zeros((3, 4, 5), np.int16), spacing=(0.5, 0.6, 2.0), origin=(1, 2, 3),
                 direction=[[c, -s, 0], [s, c, 0], [0, 0, 1]], modality="CT")
    _, kwargs, _ = image_layer_data(vol)
    np.testing.assert_allclose(kwargs["affine"], np.eye(4))
    assert kwargs["scale"] == (2.0, 0.6, 0.5) and kwargs["translate"] == (3.0, 2.0, 1.0)
    like, source = geometry_from_layer_state({"metadata": {GEOMETRY_KEY: kwargs["metadata"][GEOMETRY_KEY]}}, (3, 4, 5))
    assert source == "metadata" and like.same_geometry(vol)


def test_labels_undo_orders_commits_and_paint() -> None:
    from napari.layers import Labels

    from napari_plugin._undo import LabelsUndo

    layer = Labels(np.zeros((2, 8, 8), np.uint8))
    undo = LabelsUndo(layer)
    new = np.zeros((2, 8, 8), np.uint8)
    new[0, :4, :4] = 3
    assert undo.commit(new) == [0]
    layer.selected_label = 7
    layer.brush_size = 1
    layer.paint((1, 6, 6), 7)  # a paint stroke after the commit
    assert layer.data[1, 6, 6] == 7
    assert undo.undo() == []  # the stroke goes first
    assert layer.data[1, 6, 6] == 0 and layer.data[0, 0, 0] == 3
    assert undo.undo() == [0]
    assert not layer.data.any()
    assert undo.redo() == [0] and undo.redo() == []
    assert layer.data[0, 0, 0] == 3 and layer.data[1, 6, 6] == 7


@pytest.fixture(scope="module")
def predictor(ct: Volume):
    from medsam.volume import VolumePredictor

    vp = VolumePredictor("litemedsam", device="cpu", batch_size=2)
    vp.init_volume(ct, None)
    return vp


def test_embed_slices_first_alone_and_stop(predictor) -> None:
    emb = predictor.session.embedder
    steps = list(session_ops.embed_slices(emb, [20, 19, 21], first_alone=True))
    assert steps == [(1, 3), (3, 3)]
    assert session_ops.missing_embeddings(predictor.session, [19, 20, 21, 22]) == [22]
    assert list(session_ops.embed_slices(emb, [22, 23], should_stop=lambda: True)) == []
    assert list(session_ops.embed_slices(emb, [20])) == [(0, 0)]


def test_sync_object_prompts_and_propagate_from_changed_slices(predictor, ref: np.ndarray) -> None:
    vp = predictor
    k = 20
    rows, cols = np.nonzero(ref[k] == LIVER)
    box = (cols.min(), rows.min(), cols.max(), rows.max())
    assert session_ops.sync_object_prompts(vp, LIVER, {k: SlicePrompt(k, box=box)}, name="liver") == [k]
    mask = vp.session.objects[LIVER].results[k].mask
    assert 2 * (mask & (ref[k] == LIVER)).sum() / (mask.sum() + (ref[k] == LIVER).sum()) > 0.9
    # the same prompts again: nothing to do
    assert session_ops.sync_object_prompts(vp, LIVER, {k: SlicePrompt(k, box=box)}) == []
    # a removed prompt drops its slice
    assert session_ops.sync_object_prompts(vp, LIVER, {}) == [k]
    assert k not in vp.session.objects[LIVER].results
    session_ops.sync_object_prompts(vp, LIVER, {k: SlicePrompt(k, box=box)})
    # nothing changed since the last propagation: nothing to do; a changed prompted slice
    # re-propagates only from there (here limited to a short stretch by a second prompt)
    assert list(session_ops.propagate_object(vp, LIVER, [])) == []
    obj = vp.session.objects[LIVER]
    obj.z_range = (19, 21)
    steps = list(session_ops.propagate_object(vp, LIVER, [k]))
    assert sorted(s.slice for s in steps) == [19, 21]
    assert session_ops.result_summary(obj.results).startswith("3 slices (19-21)")
    assert session_ops.remove_object(vp, LIVER) == [19, 20, 21]
    assert LIVER not in vp.session.objects
