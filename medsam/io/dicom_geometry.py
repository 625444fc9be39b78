"""Slice geometry of DICOM images: axes from ImageOrientationPatient, order along the normal.

Slices are sorted by their position along the slice normal ``n = row x column`` cosines
(``ImagePositionPatient . n``), lowest first, never by file name or InstanceNumber. Steps
that differ from the median step give a :class:`SliceSpacingWarning` naming the gap.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsam.errors import InputFileError

__all__ = ["DicomGeometryWarning", "SliceSpacingWarning", "slice_axes", "order_slices"]


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
    DicomGeometryWarning
        When slices are offset within their plane (gantry tilt), which the volume ignores.
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
    offsets = positions[order] - positions[order[0]]
    lateral = offsets - np.outer(offsets @ normal, normal)
    shift = float(np.linalg.norm(lateral, axis=1).max())
    if shift > max(0.01, 0.05 * step):
        warnings.warn(
            DicomGeometryWarning(
                f"{where}: slice positions drift {shift:.2f} mm within the slice plane (gantry tilt?); "
                "the volume ignores the drift"
            ),
            stacklevel=5,
        )
    return order, step
