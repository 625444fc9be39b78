"""Slice geometry of DICOM images: axes from ImageOrientationPatient, order along the normal.

Slices are sorted by their position along the slice normal ``n = row x column`` cosines
(``ImagePositionPatient . n``), lowest first, never by file name or InstanceNumber. Steps
that differ from the median step give a :class:`SliceSpacingWarning` naming the gap.

A gantry-tilted CT series has slices that step along the normal *and* drift within their
plane. :func:`correct_tilt` resamples each slice by its drift onto the orthogonal grid of
the first slice, so that every voxel sits where the scanner put it; :func:`retilt` maps a
mask on that grid back onto the source slices' own pixels (for a DICOM SEG).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsam.errors import InputFileError

__all__ = [
    "DicomGeometryWarning",
    "SliceSpacingWarning",
    "correct_tilt",
    "order_slices",
    "retilt",
    "slice_axes",
]


class DicomGeometryWarning(UserWarning):
    """The DICOM geometry is usable but not what a clean scan would have."""


class SliceSpacingWarning(DicomGeometryWarning):
    """Slices are unevenly spaced or missing; the message names the gaps."""


def slice_axes(orientation: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit row cosines, column cosines and slice normal from ImageOrientationPatient."""
    row = np.asarray(orientation[:3], dtype=np.float64)
    col = np.asarray(orientation[3:6], dtype=np.float64)
    row /= np.linalg.norm(row)
    col -= row * (row @ col)  # remove rounding skew
    col /= np.linalg.norm(col)
    normal = np.cross(row, col)
    return row, col, normal / np.linalg.norm(normal)


def order_slices(
    where: Path, positions: np.ndarray, normal: np.ndarray, names: Sequence[str]
) -> tuple[np.ndarray, float | None]:
    """Sort slice positions along the slice normal and check their spacing.

    Parameters
    ----------
    where:
        File or folder named in errors and warnings.
    positions:
        ``(N, 3)`` ImagePositionPatient of each slice, LPS mm.
    normal:
        Unit slice normal (``row x column`` cosines).
    names:
        A name per slice (file name or frame number) for messages.

    Returns
    -------
    order, step:
        Indices that sort the slices lowest-first along ``normal``, and the median step in
        mm (``None`` for a single slice).

    Raises
    ------
    InputFileError
        When two slices share a position.

    Warns
    -----
    SliceSpacingWarning
        For steps that differ from the median (missing slices, uneven spacing).
    """
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    if len(along) < 2:
        return order, None
    steps = np.diff(along)
    dup = np.flatnonzero(steps < 1e-3)
    if dup.size:
        a, b = names[order[dup[0]]], names[order[dup[0] + 1]]
        raise InputFileError(
            where,
            f"{dup.size + 1} slices share a position (several echoes, phases or acquisitions in one series?), "
            f"e.g. {a} and {b} both at {along[dup[0]]:.2f} mm along the slice normal; cannot stack them into one volume",
        )
    step = float(np.median(steps))
    tol = max(0.01, 0.01 * step)
    bad = np.flatnonzero(np.abs(steps - step) > tol)
    if bad.size:
        parts = []
        for g in bad[:3]:
            n_missing = round(steps[g] / step) - 1
            missing = f", about {n_missing} missing slice(s)" if n_missing >= 1 else ""
            parts.append(
                f"between slice {g} ({names[order[g]]} at {along[g]:.2f} mm) and slice {g + 1} "
                f"({names[order[g + 1]]} at {along[g + 1]:.2f} mm) the step is {steps[g]:.2f} mm, "
                f"expected {step:.2f} mm{missing}"
            )
        more = f"; and {bad.size - 3} more" if bad.size > 3 else ""
        warnings.warn(
            SliceSpacingWarning(
                f"{where}: non-uniform slice spacing, {bad.size} gap(s): {'; '.join(parts)}{more}. "
                f"The volume assumes a uniform {step:.2f} mm step, so slices after a gap are misplaced"
            ),
            stacklevel=5,
        )
    return order, step


TILT_KEY = "tilt_shift_px"  # SourceMetadata.extra: per slice (rows, columns) drift in pixels


def correct_tilt(
    where: Path,
    array: np.ndarray,
    positions: np.ndarray,
    axes: tuple[np.ndarray, np.ndarray, np.ndarray],
    pixel_spacing: tuple[float, float],
    step: float,
) -> tuple[np.ndarray, dict]:
    """Resample slices that drift within their plane (gantry tilt) onto an orthogonal grid.

    Parameters
    ----------
    where:
        File or folder named in the warning.
    array:
        ``(Z, Y, X)`` slices, sorted lowest-first along the normal.
    positions:
        ``(Z, 3)`` ImagePositionPatient of those slices, in the same order, LPS mm.
    axes:
        Row cosines, column cosines and normal from :func:`slice_axes`.
    pixel_spacing:
        ``(row spacing, column spacing)`` in mm (DICOM PixelSpacing order).
    step:
        Slice step along the normal, mm.

    Returns
    -------
    array, extra:
        The slices on the grid of the first slice with origin at its position (linear
        interpolation; pixels shifted in from outside the scan get the image's minimum),
        and metadata for :attr:`SourceMetadata.extra`: ``tilt_shift_px`` (per slice
        ``(rows, columns)`` drift in pixels) and ``gantry_tilt_deg``. Without drift the
        array is returned unchanged with ``{}``.

    Warns
    -----
    DicomGeometryWarning
        When the slices were resampled, naming the tilt angle.
    """
    row, col, normal = axes
    offsets = positions - positions[0]
    lateral = offsets - np.outer(offsets @ normal, normal)
    drift_mm = float(np.linalg.norm(lateral, axis=1).max()) if len(positions) else 0.0
    if len(positions) < 2 or drift_mm <= max(0.01, 0.05 * step):
        return array, {}
    from scipy import ndimage

    shifts = np.column_stack([lateral @ col / pixel_spacing[0], lateral @ row / pixel_spacing[1]])
    along = offsets[-1] @ normal
    angle = float(np.degrees(np.arctan2(np.linalg.norm(lateral[-1]), abs(along)))) if along else 0.0
    floor = array.min()
    out = np.empty_like(array)
    for k, (dy, dx) in enumerate(shifts):
        if abs(dy) < 1e-6 and abs(dx) < 1e-6:
            out[k] = array[k]
            continue
        # slice k's pixel (i, j) sits at grid pixel (i + dy, j + dx) of the first slice's plane
        moved = ndimage.shift(array[k].astype(np.float32), (dy, dx), order=1, mode="constant", cval=float(floor))
        out[k] = np.rint(moved) if array.dtype.kind in "iu" else moved
    warnings.warn(
        DicomGeometryWarning(
            f"{where}: gantry tilt of {angle:.1f} degrees (slices drift up to {drift_mm:.2f} mm within their "
            "plane); resampled onto an orthogonal grid (linear interpolation), so voxels sit where the "
            "scanner put them"
        ),
        stacklevel=5,
    )
    extra = {TILT_KEY: tuple((round(float(a), 4), round(float(b), 4)) for a, b in shifts),
             "gantry_tilt_deg": round(angle, 3)}
    return out, extra


def retilt(mask: np.ndarray, shifts: Sequence[Sequence[float]], *, inverse: bool = True) -> np.ndarray:
    """Move a mask between the corrected grid and the source slices' own pixels.

    Parameters
    ----------
    mask:
        ``(Z, Y, X)`` or ``(Z, Y, X, N)`` values, slice axis first.
    shifts:
        Per slice ``(rows, columns)`` drift from :func:`correct_tilt` (``tilt_shift_px``).
    inverse:
        ``True``: from the corrected grid onto the source pixels (for a DICOM SEG);
        ``False``: from source pixels onto the corrected grid. Nearest neighbour.
    """
    from scipy import ndimage

    out = np.array(mask, copy=True)
    sign = -1.0 if inverse else 1.0
    for k, (dy, dx) in enumerate(shifts):
        if abs(dy) < 1e-6 and abs(dx) < 1e-6:
            continue
        shift = (sign * dy, sign * dx) + (0,) * (out.ndim - 3)
        out[k] = ndimage.shift(out[k], shift, order=0, mode="constant", cval=0)
    return out
