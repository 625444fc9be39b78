"""Prompt parsing, validation and the world (mm) -> voxel conversion."""

from __future__ import annotations

import numpy as np
import pytest

from medsam.errors import PromptError
from medsam.io import Volume
from medsam.prompts import (
    ObjectPrompts,
    PromptSet,
    SlicePrompt,
    merge_slice_prompts,
    parse_box_arg,
    parse_point_arg,
    parse_prompts,
    world_to_voxel,
)


def _oblique_volume() -> Volume:
    """A (12, 40, 50) grid rotated 30 degrees about z and 10 about x, anisotropic spacing."""
    a, b = np.deg2rad(30), np.deg2rad(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Volume(np.zeros((12, 40, 50), np.int16), spacing=(0.7, 0.9, 2.5), origin=(-30.0, 12.0, 80.0),
                  direction=rz @ rx)


def test_world_to_voxel_inverts_index_to_world_on_an_oblique_grid():
    vol = _oblique_volume()
    ijk = np.array([[0, 0, 0], [49, 39, 11], [12.5, 7.25, 3]])
    for space in ("lps", "ras"):
        xyz = vol.index_to_world(ijk, space=space)
        np.testing.assert_allclose(world_to_voxel(xyz, vol, space), ijk, atol=1e-9)
    # LPS and RAS differ by the sign of x and y only
    np.testing.assert_allclose(vol.index_to_world(ijk, "ras")[:, :2], -vol.index_to_world(ijk, "lps")[:, :2])


def test_world_json_prompts_on_an_oblique_grid():
    vol = _oblique_volume()
    corners = vol.index_to_world([[5, 6, 4], [20, 30, 4.3]], space="lps").tolist()
    point = vol.index_to_world([[10, 11, 7]], space="lps").tolist()
    ps = parse_prompts({"space": "lps", "objects": [{"label": 2, "name": "lesion", "prompts": [
        {"box": corners}, {"points": point, "point_labels": [1]}]}]}, vol)
    (obj,) = ps.objects
    assert obj.label == 2 and obj.name == "lesion"
    box, pts = obj.prompts
    assert box.slice == 4 and box.box == (5.0, 6.0, 20.0, 30.0)
    assert pts.slice == 7 and pts.points == ((10.0, 11.0),) and pts.point_labels == (1,)


def test_world_box_across_slices_and_off_plane_points_are_rejected():
    vol = _oblique_volume()
    corners = vol.index_to_world([[5, 6, 4], [20, 30, 6]], space="lps").tolist()
    with pytest.raises(PromptError, match="different slices"):
        parse_prompts({"space": "lps", "objects": [{"label": 1, "prompts": [{"box": corners}]}]}, vol)
    far = vol.index_to_world([[5, 6, 13]], space="ras").tolist()
    with pytest.raises(PromptError, match="off every slice plane"):
        parse_prompts({"space": "ras", "objects": [{"label": 1, "prompts": [{"points": far}]}]}, vol)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"objects": []}, "non-empty 'objects'"),
        ({"space": "mm", "objects": [{"label": 1}]}, "'space' must be voxel, lps or ras"),
        ({"objects": [{"name": "x", "prompts": [{"slice": 0, "box": [1, 1, 2, 2]}]}]}, "missing 'label'"),
        ({"objects": [{"label": 1, "prompts": [{"box": [1, 1, 2, 2]}]}]}, "need an integer 'slice'"),
        ({"objects": [{"label": 1, "prompts": [{"slice": 0}]}]}, "empty prompt"),
        ({"objects": [{"label": 1, "prompts": [{"slice": 2, "points": [[3, 4]], "point_labels": [0]}]}]},
         "only negative clicks on slice 2"),
        ({"objects": [{"label": 1, "z_range": [3, 20], "prompts": [{"slice": 4, "box": [1, 1, 2, 2]}]}]},
         "z_range"),
        ({"objects": [{"label": 1, "prompts": [{"slice": 0, "box": [1, 1, 2, 2]}]},
                      {"label": 1, "prompts": [{"slice": 1, "box": [1, 1, 2, 2]}]}]}, "unique"),
    ],
)
def test_bad_prompt_json(data, message):
    with pytest.raises(PromptError, match=message):
        parse_prompts(data, _oblique_volume())


def test_cli_argument_forms_and_merging():
    assert parse_box_arg("3:1,2,30,40") == SlicePrompt(3, box=(1, 2, 30, 40))
    p = parse_point_arg("3:5,6")
    assert p.points == ((5.0, 6.0),) and p.point_labels == (1,)
    merged = merge_slice_prompts([parse_box_arg("3:1,2,30,40"), p, parse_point_arg("3:7,8,0"), parse_point_arg("1:1,1")])
    assert [m.slice for m in merged] == [1, 3]
    assert merged[1].points == ((5.0, 6.0), (7.0, 8.0)) and merged[1].point_labels == (1, 0)
    assert merged[1].box == (1, 2, 30, 40)
    with pytest.raises(PromptError, match="K:X0,Y0,X1,Y1"):
        parse_box_arg("1,2,3,4")
    with pytest.raises(PromptError, match="unique"):
        PromptSet((ObjectPrompts(1), ObjectPrompts(1)))
