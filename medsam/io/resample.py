"""Bring a label map onto another image's grid, in world space (nearest neighbour)."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from medsam.io.volume import Volume

__all__ = ["resample_labels_to"]


def _to_sitk(vol: Volume, array: np.ndarray | None = None) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(vol.array if array is None else array))
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(tuple(float(d) for d in np.asarray(vol.direction).ravel()))
    return img


def resample_labels_to(labels: Volume, like: Volume) -> np.ndarray:
    """Labels of ``labels`` sampled at every voxel centre of ``like`` (world LPS mm).

    Exact (no interpolation) when the grids differ only by axis flips or permutations,
    as a DICOM series and a NIfTI export of it do. Returns ``like.grid_shape`` ``(Z, Y, X)``
    in the labels' dtype; voxels outside ``labels`` are 0.
    """
    if labels.same_geometry(like):
        return np.asarray(labels.array)
    out = sitk.Resample(
        _to_sitk(labels), _to_sitk(like, np.zeros(like.grid_shape, np.uint8)), sitk.Transform(),
        sitk.sitkNearestNeighbor, 0, _pixel_id(labels.array),
    )
    return sitk.GetArrayFromImage(out)


def _pixel_id(array: np.ndarray) -> int:
    return sitk.GetImageFromArray(np.zeros((1, 1, 1), array.dtype)).GetPixelID()
