"""Overlay PNGs: windowed slices with the mask (filled) and a reference (outline).

Slices are shown in radiological orientation (anterior up, patient's left on the right) and stretched
to square millimetres using the in-plane spacing, so anatomy keeps its proportions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medsam.atomic import atomic_write
from medsam.errors import OutputExistsError
from medsam.intensity import Window, apply_window

__all__ = ["overlay_slices", "save_overlay_png", "LABEL_COLOURS"]

#: RGB colours cycled over label ids 1, 2, 3 ...
LABEL_COLOURS = np.array(
    [[230, 60, 60], [60, 140, 230], [250, 200, 40], [170, 90, 220], [40, 200, 160], [240, 130, 40]],
    dtype=np.float32,
)


def _outline(mask: np.ndarray) -> np.ndarray:
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    return mask & ~inner


def overlay_slices(
    volume,
    labels: np.ndarray,
    slices: Sequence[int],
    window: Window,
    reference: np.ndarray | None = None,
    alpha: float = 0.45,
    pixel_mm: float | None = None,
) -> np.ndarray:
    """Side-by-side RGB overlays of ``slices``.

    Parameters
    ----------
    volume:
        The :class:`medsam.io.Volume` (its array gives the grey image).
    labels:
        ``(Z, Y, X)`` label map, drawn filled in :data:`LABEL_COLOURS`.
    slices:
        Slice indices ``k`` to show, left to right.
    window:
        Intensity window for the grey image.
    reference:
        Optional ``(Z, Y, X)`` reference labels, drawn as a white outline.
    pixel_mm:
        Output pixel size in mm (default: the finer in-plane spacing, at least 1.5x up).

    Returns
    -------
    numpy.ndarray
        ``(H, W_total, 3)`` uint8 image.
    """
    sx, sy = volume.spacing[0], volume.spacing[1]
    if pixel_mm is None:
        pixel_mm = min(sx, sy) / max(1.0, 384.0 / max(volume.grid_shape[1:]))
    # Radiological display: patient left (+x in LPS) to the right, posterior (+y) down.
    d = np.asarray(volume.direction)
    flip_cols = d[0, 0] < 0 if abs(d[0, 0]) >= abs(d[1, 0]) else d[1, 0] < 0
    flip_rows = d[1, 1] < 0 if abs(d[1, 1]) >= abs(d[0, 1]) else d[0, 1] < 0
    panels = []
    for k in slices:
        grey = apply_window(volume.array[k], window)
        rgb = grey[..., None].repeat(3, axis=2) * 255.0 if grey.ndim == 2 else grey * 255.0
        lab = labels[k]
        for value in np.unique(lab[lab > 0]):
            colour = LABEL_COLOURS[(int(value) - 1) % len(LABEL_COLOURS)]
            m = lab == value
            rgb[m] = (1 - alpha) * rgb[m] + alpha * colour
            rgb[_outline(m)] = colour
        if reference is not None:
            rgb[_outline(reference[k] > 0)] = 255.0
        if flip_rows:
            rgb = rgb[::-1]
        if flip_cols:
            rgb = rgb[:, ::-1]
        panels.append(_resample(rgb, sy / pixel_mm, sx / pixel_mm))
    h = max(p.shape[0] for p in panels)
    gap = np.zeros((h, 4, 3), np.uint8)
    row = []
    for p in panels:
        pad = np.zeros((h - p.shape[0], p.shape[1], 3), np.uint8)
        row += [np.concatenate([p, pad], axis=0), gap]
    return np.concatenate(row[:-1], axis=1)


def _resample(rgb: np.ndarray, fy: float, fx: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    ys = np.minimum((np.arange(max(1, round(h * fy))) / fy).astype(int), h - 1)
    xs = np.minimum((np.arange(max(1, round(w * fx))) / fx).astype(int), w - 1)
    return np.clip(rgb[ys][:, xs], 0, 255).astype(np.uint8)


def save_overlay_png(image: np.ndarray, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write an RGB uint8 image as PNG atomically; refuses to overwrite unless asked."""
    from PIL import Image

    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    return atomic_write(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
