"""MetaTensor <-> Volume conversion and world-space prompts through MONAI affines (no model needed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation

from medsam.errors import PromptError
from medsam.io import load_volume
from medsam.monai import labels_to_metatensor, resolve_prompts, volume_from_metatensor
from medsam.monai.geometry import axis_order, from_zyx, to_zyx


@pytest.fixture(scope="module")
def loader():
    return LoadImage(image_only=True, ensure_channel_first=True)


@pytest.mark.parametrize("name", ["example_mr_sm", "example_ct_sm"])  # LPS-oriented MR, RAS CT
def test_monai_and_medsam_readers_agree(sample_data, loader, name):
    path = sample_data / "totalsegmentator" / f"{name}.nii.gz"
    img = loader(str(path))
    ref = load_volume(path)
    vol = volume_from_metatensor(img)
    assert vol.shape == ref.shape and vol.modality == ref.modality
    np.testing.assert_array_equal(vol.array, ref.array)  # array[k, j, i] == img[0, i, j, k]
    assert vol.same_geometry(ref, atol=1e-5)
    np.testing.assert_allclose(vol.affine_ras(), img.affine.numpy(), atol=1e-5)
    ijk = np.array([[0, 0, 0], [7, 31, 4], [img.shape[1] - 1, img.shape[2] - 1, img.shape[3] - 1]])
    monai_world = (img.affine.numpy() @ np.c_[ijk, np.ones(3)].T).T[:, :3]
    np.testing.assert_allclose(ref.index_to_world(ijk, "ras"), monai_world, atol=1e-4)
    np.testing.assert_allclose(vol.index_to_world(ijk, "lps"), ref.index_to_world(ijk, "lps"), atol=1e-4)
    # a view, not a copy: MONAI's tensor and the Volume share memory
    assert np.shares_memory(vol.array, img.as_tensor().numpy())


def test_reoriented_image_keeps_world_positions(sample_data, loader):
    """After Orientation('RAS') of the LPS MR, every voxel's world position and value still agree."""
    path = sample_data / "totalsegmentator" / "example_mr_sm.nii.gz"
    ref = load_volume(path)
    ras = Orientation(axcodes="RAS")(loader(str(path)))
    vol = volume_from_metatensor(ras)
    rng = np.random.default_rng(0)
    ijk = np.stack([rng.integers(0, s, 20) for s in ras.shape[1:]], axis=1)
    world = vol.index_to_world(ijk, "lps")
    back = np.rint(ref.world_to_index(world, "lps")).astype(int)  # same point in the file's grid
    np.testing.assert_array_equal(vol.array[ijk[:, 2], ijk[:, 1], ijk[:, 0]], ref.array[back[:, 2], back[:, 1], back[:, 0]])
    assert not np.array_equal(back, ijk)  # the grid really was flipped


@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_slicing_axis_permutes_index_axes_not_world(axis):
    affine = np.array([[0.0, 0.0, 2.5, -10.0], [-0.8, 0.0, 0.0, 40.0], [0.0, 1.2, 0.0, 7.0], [0, 0, 0, 1]])
    data = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    img = MetaTensor(data, affine=torch.as_tensor(affine))
    vol = volume_from_metatensor(img, spatial_axis=axis)
    ai, aj, ak = axis_order(axis)
    assert vol.grid_shape == (data.shape[1 + ak], data.shape[1 + aj], data.shape[1 + ai])
    hwd = np.array([3, 1, 4])  # a voxel in MONAI's (H, W, D) indices
    ijk = hwd[[ai, aj, ak]]  # the same voxel in the Volume's (i', j', k')
    assert vol.array[ijk[2], ijk[1], ijk[0]] == data[0, hwd[0], hwd[1], hwd[2]]
    np.testing.assert_allclose(vol.index_to_world(ijk, "ras"), affine[:3, :3] @ hwd + affine[:3, 3], atol=1e-9)
    labels = (vol.array > 50).astype(np.uint8)
    out = labels_to_metatensor(labels, img, spatial_axis=axis)
    assert out.shape == img.shape and out.dtype == torch.uint8
    np.testing.assert_array_equal(out[0].numpy(), (data[0] > 50).numpy())
    assert torch.equal(out.affine, img.affine) and out.meta.keys() == img.meta.keys()
    np.testing.assert_array_equal(from_zyx(to_zyx(data[0].numpy(), axis), axis), data[0].numpy())


def oblique_image() -> MetaTensor:
    """A [1, 40, 30, 12] image whose voxel axes are rotated in all three world axes, with anisotropic voxels."""
    a, b = np.deg2rad(30.0), np.deg2rad(20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.7, 0.9, 3.0])
    affine[:3, 3] = (-50.0, 20.0, 100.0)
    return MetaTensor(torch.zeros(1, 40, 30, 12), affine=torch.as_tensor(affine))


@pytest.mark.parametrize("space", ["ras", "lps"])
def test_world_prompts_through_an_oblique_affine(space):
    img = oblique_image()
    aff = img.affine.numpy()
    flip = np.array([-1.0, -1.0, 1.0]) if space == "lps" else np.ones(3)

    def world(i, j, k):  # world mm of voxel (i, j, k) = MONAI indices (H, W, D)
        return ((aff[:3, :3] @ np.array([i, j, k], float) + aff[:3, 3]) * flip).tolist()

    prompts = {
        "space": space,
        "objects": [
            {"label": 3, "name": "lesion", "prompts": [
                {"box": [world(5, 4, 7), world(25, 20, 7)]},
                {"points": [world(12.0, 9.0, 7.2), world(30, 2, 6.9), world(1, 1, 2)], "point_labels": [1, 0, 1]},
            ]},
        ],
    }
    pset = resolve_prompts(prompts, img)
    obj = pset.objects[0]
    by_slice = {}
    for p in obj.prompts:
        by_slice.setdefault(p.slice, []).append(p)
    assert sorted(by_slice) == [2, 7]
    box = next(p.box for p in by_slice[7] if p.box is not None)
    assert box == (5.0, 4.0, 25.0, 20.0)  # (x0, y0, x1, y1) = (i0, j0, i1, j1) on slice k=7
    pts = next(p for p in by_slice[7] if p.points)
    np.testing.assert_allclose(pts.points, [(12.0, 9.0), (30.0, 2.0)], atol=1e-3)
    assert pts.point_labels == (1, 0)
    p2 = by_slice[2][0]
    np.testing.assert_allclose(p2.points, [(1.0, 1.0)], atol=1e-3)
    assert p2.point_labels == (1,)


def test_world_prompt_off_the_volume_is_rejected():
    img = oblique_image()
    aff = img.affine.numpy()
    outside = (aff[:3, :3] @ np.array([5, 5, 20.0]) + aff[:3, 3]).tolist()  # k = 20 > 11
    with pytest.raises(PromptError, match="off every slice plane"):
        resolve_prompts({"space": "ras", "objects": [{"label": 1, "prompts": [{"points": [outside]}]}]}, img)
    with pytest.raises(PromptError, match="outside"):
        resolve_prompts({"objects": [{"label": 1, "prompts": [{"slice": 3, "box": [0, 0, 40, 10]}]}]}, img)


def test_import_medsam_does_not_import_monai():
    code = "import sys, medsam; assert 'monai' not in sys.modules and 'medsam.monai' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
