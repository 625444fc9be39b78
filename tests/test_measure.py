"""Measurements against analytic answers: spheres and ellipsoids on anisotropic and oblique
grids, rasterised here from their equations (voxel centres inside the surface)."""

from __future__ import annotations

import csv
import io

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from medsam.io.volume import Volume
from medsam.measure import measure_labels, measurements_csv

_THOMSEN_P = 1.6075  # Knud Thomsen's ellipsoid surface formula, within 1.1% of the exact area


def _ellipsoid_area(a: float, b: float, c: float) -> float:
    p = _THOMSEN_P
    return 4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p)


def _ellipsoid(shape, spacing, centre_ijk, axes, direction, modality="CT"):
    """A volume and the mask of the ellipsoid with semi-axes ``axes`` (mm) along i, j, k."""
    vol = Volume(np.zeros(shape, np.int16), spacing=spacing, origin=(-50.0, 30.0, 100.0),
                 direction=direction, modality=modality)
    k, j, i = np.indices(shape)
    x, y, z = ((idx - c) * s for idx, c, s in zip((i, j, k), centre_ijk, spacing, strict=True))
    a, b, c = axes
    return vol, (x / a) ** 2 + (y / b) ** 2 + (z / c) ** 2 <= 1


CASES = {
    "sphere, isotropic": ((60, 60, 60), (1.0, 1.0, 1.0), (30.4, 29.7, 30), (15, 15, 15), np.eye(3)),
    "sphere, thick slices": ((30, 80, 80), (0.8, 0.8, 2.0), (40.3, 39.6, 15), (15, 15, 15), np.eye(3)),
    "ellipsoid, oblique": (
        (40, 90, 110), (0.7, 0.9, 2.5), (54.3, 44.6, 20), (30, 18, 12),
        Rotation.from_euler("zx", [20, 10], degrees=True).as_matrix(),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_analytic_shapes(case: str) -> None:
    shape, spacing, centre, axes, direction = CASES[case]
    vol, mask = _ellipsoid(shape, spacing, centre, axes, direction)
    [m] = measure_labels(mask.astype(np.uint8), vol, names={1: "lesion"})
    a, b, c = axes
    half = 0.5 * max(spacing)
    assert m.name == "lesion" and m.voxels == int(mask.sum())

    # volume and area: between the surfaces grown and shrunk by half a voxel
    grown, shrunk = (tuple(r + d for r in axes) for d in (half, -half))
    assert 4 / 3 * np.pi * np.prod(shrunk) < m.volume_ml * 1000 < 4 / 3 * np.pi * np.prod(grown)
    assert m.volume_ml * 1000 == pytest.approx(4 / 3 * np.pi * a * b * c, rel=0.01)
    assert m.surface_mm2 == pytest.approx(_ellipsoid_area(a, b, c), rel=0.02)

    # lengths: the largest 3D diameter and the RECIST axes on the central slice (k = centre)
    assert abs(m.max_diameter_mm - 2 * max(axes)) <= half
    assert m.long_axis_slice == centre[2]
    assert abs(m.long_axis_mm - 2 * max(a, b)) <= half
    assert abs(m.short_axis_mm - 2 * min(a, b)) <= half

    # points in LPS mm: centroid, and axis endpoints on the ellipse of the central slice
    c0 = vol.index_to_world(centre)
    np.testing.assert_allclose(m.centroid_lps, c0, atol=half)
    for ends, length in ((m.long_axis_endpoints_lps, m.long_axis_mm), (m.short_axis_endpoints_lps, m.short_axis_mm)):
        p = (np.asarray(ends) - c0) @ direction  # back into the grid frame, mm
        assert np.abs(p[:, 2]).max() < 1e-3  # on the slice
        radius = np.sqrt((p[:, 0] / a) ** 2 + (p[:, 1] / b) ** 2)
        np.testing.assert_allclose(radius, 1.0, atol=half / min(a, b))
        assert np.linalg.norm(p[0] - p[1]) == pytest.approx(length, abs=1e-3)
    long_dir = np.subtract(*m.long_axis_endpoints_lps)
    short_dir = np.subtract(*m.short_axis_endpoints_lps)
    assert abs(long_dir @ short_dir) < 1e-4 * np.linalg.norm(long_dir) * np.linalg.norm(short_dir)  # perpendicular

    # bounding box: the ellipsoid's world extent, plus at most one voxel's own half extent
    extent = np.sqrt(((direction * np.asarray(axes)) ** 2).sum(axis=1))
    voxel_half = 0.5 * np.abs(direction) @ np.asarray(spacing)
    lo, hi = np.asarray(m.bbox_min_lps), np.asarray(m.bbox_max_lps)
    assert (lo <= c0 - extent + voxel_half + 1e-6).all() and (lo >= c0 - extent - voxel_half - half).all()
    assert (hi >= c0 + extent - voxel_half - 1e-6).all() and (hi <= c0 + extent + voxel_half + half).all()


def test_hu_statistics_and_csv() -> None:
    vol, mask = _ellipsoid((30, 80, 80), (0.8, 0.8, 2.0), (40, 40, 15), (15, 15, 15), np.eye(3))
    k, j, i = np.indices(vol.grid_shape)
    hu = np.where((i + j + k) % 2 == 0, -50, 50).astype(np.int16)  # a checkerboard: half -50, half 50
    hu[15, 40, 40] = 300  # one bright voxel inside
    ct = vol.with_array(hu)
    labels = mask.astype(np.uint8) * 3
    [m] = measure_labels(labels, ct)
    assert m.label == 3 and m.name == "object 3"
    assert m.hu["min"] == -50 and m.hu["max"] == 300
    assert m.hu["p5"] == -50 and m.hu["p95"] == 50 and abs(m.hu["mean"]) < 2
    assert 49 < m.hu["std"] < 52
    mr = vol.with_array(hu, modality="MR")
    assert measure_labels(labels, mr)[0].hu == {}  # HU only for CT

    rows = list(csv.DictReader(io.StringIO(measurements_csv([m]))))
    assert len(rows) == 1 and rows[0]["label"] == "3" and rows[0]["hu_max"] == "300.0"
    assert float(rows[0]["volume_ml"]) == pytest.approx(m.volume_ml, abs=1e-3)
    assert {"long_axis_p0_x_lps", "short_axis_p1_z_lps", "bbox_min_y_lps", "centroid_z_lps"} <= set(rows[0])


def test_tiny_objects_and_bad_shapes() -> None:
    vol = Volume(np.zeros((5, 6, 7), np.int16), spacing=(1.0, 2.0, 3.0), modality="CT")
    labels = np.zeros(vol.grid_shape, np.uint8)
    labels[2, 3, 3] = 1  # one voxel
    labels[0, 0, 0:3] = 2  # a line of three voxels
    one, line = measure_labels(labels, vol)
    assert one.voxels == 1 and one.volume_ml == pytest.approx(6 / 1000)
    assert one.long_axis_mm == pytest.approx(1.0, abs=0.5) and one.surface_mm2 > 0
    assert line.long_axis_mm == pytest.approx(3.0, abs=0.5) and line.max_diameter_mm == pytest.approx(3.0, abs=0.5)
    with pytest.raises(ValueError, match="image grid"):
        measure_labels(np.zeros((5, 6, 8), np.uint8), vol)
    assert measure_labels(np.zeros(vol.grid_shape, np.uint8), vol) == []
