"""Prompt simulation from reference labels (boxes, points, key slices), for evaluation and training.

Works on a ``(Z, Y, X)`` label array (the project's layout) and returns prompts in the
project JSON format, drawn with the primitives of :mod:`medsam.prompt_sim` (the 2D
simulator that training uses), voxel space: a box ``(x0, y0, x1, y1)`` inclusive and points ``(x, y)``
on slice ``k``. The MONAI transform :class:`~medsam.monai.PromptsFromLabel` wraps it.

Examples
--------
>>> import numpy as np
>>> lab = np.zeros((3, 8, 8), np.uint8); lab[1, 2:5, 3:7] = 4
>>> simulate_prompts(lab)["objects"][0]["prompts"]
[{'slice': 1, 'box': [3, 2, 6, 4]}]
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsam.prompt_sim import jitter_box, negative_region, sample_pixels
from medsam.prompts import box_from_mask

__all__ = ["choose_key_slices", "simulate_prompts", "KeySlices"]

logger = logging.getLogger(__name__)

#: ``"largest"`` (largest-area slice), ``"middle"`` (middle of the object's extent) or an
#: integer ``n`` (n slices evenly spaced over the object's extent).
KeySlices = str | int


def choose_key_slices(mask: np.ndarray, key_slices: KeySlices = "largest") -> list[int]:
    """Slices ``k`` of a ``(Z, Y, X)`` bool mask to put prompts on (sorted, each containing the object).

    >>> m = np.zeros((9, 4, 4), bool); m[2:7, 1:3, 1:3] = True; m[4, 0, 0] = True
    >>> choose_key_slices(m), choose_key_slices(m, "middle"), choose_key_slices(m, 3)
    ([4], [4], [2, 4, 6])
    """
    areas = np.asarray(mask).reshape(mask.shape[0], -1).sum(axis=1)
    present = np.nonzero(areas)[0]
    if present.size == 0:
        return []
    if isinstance(key_slices, str):
        how = key_slices.strip().lower()
        if how == "largest":
            return [int(np.argmax(areas))]
        if how == "middle":
            mid = (present[0] + present[-1]) / 2.0
            return [int(present[np.argmin(np.abs(present - mid))])]
        raise ValueError(f"key_slices must be 'largest', 'middle' or a number of slices, got {key_slices!r}")
    if isinstance(key_slices, bool) or not isinstance(key_slices, (int, np.integer)) or key_slices < 1:
        raise ValueError(f"key_slices must be 'largest', 'middle' or a positive integer, got {key_slices!r}")
    targets = np.linspace(present[0], present[-1], int(key_slices))
    chosen = {int(present[np.argmin(np.abs(present - t))]) for t in targets}
    return sorted(chosen)


def _points(
    mask2d: np.ndarray, n_pos: int, n_neg: int, rng: np.random.RandomState
) -> tuple[list[list[int]], list[int]]:
    pos = sample_pixels(mask2d, n_pos, rng)
    neg = np.zeros((0, 2), np.float32)
    if n_neg > 0:
        near = negative_region(mask2d)  # background near the object first, else anywhere
        neg = sample_pixels(near if near.any() else ~mask2d, n_neg, rng)
    points = [[int(x), int(y)] for x, y in np.concatenate([pos, neg])]
    return points, [1] * len(pos) + [0] * len(neg)


def simulate_prompts(
    labels: np.ndarray,
    *,
    label_ids: Sequence[int] | None = None,
    names: Mapping[Any, str] | None = None,
    key_slices: KeySlices = "largest",
    box: bool = True,
    jitter: float = 0.0,
    n_positive: int = 0,
    n_negative: int = 0,
    propagate: bool = True,
    rng: np.random.RandomState | None = None,
) -> dict[str, Any]:
    """Simulated prompts for the objects of a ``(Z, Y, X)`` label map.

    Parameters
    ----------
    labels:
        ``(Z, Y, X)`` integer label map, 0 background.
    label_ids:
        Labels to prompt (default: every label present). Labels absent from the map are
        skipped (logged).
    names:
        ``{label: name}`` (keys int or str) for the objects' names.
    key_slices:
        See :func:`choose_key_slices`.
    box:
        Give each key slice a box (tight, or jittered by ``jitter``).
    jitter:
        Each box side moves by up to this fraction of the box's size (uniformly, 0 = tight).
    n_positive, n_negative:
        Foreground points drawn from the mask, background points drawn near the object.
    propagate:
        The objects' ``propagate`` flag.
    rng:
        Random source for jitter and points (default: a fixed ``RandomState(0)``).

    Returns
    -------
    dict
        ``{"space": "voxel", "objects": [{"label", "name", "propagate", "prompts": [
        {"slice": k, "box": [x0, y0, x1, y1], "points": [[x, y], ...], "point_labels": [...]}]}]}``
        with plain Python ints (JSON-serialisable).
    """
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be (Z, Y, X), got shape {lab.shape}")
    if not box and n_positive <= 0:
        raise ValueError("prompts need a box or at least one positive point (n_positive >= 1)")
    if jitter < 0 or n_positive < 0 or n_negative < 0:
        raise ValueError("jitter, n_positive and n_negative must be >= 0")
    rng = rng if rng is not None else np.random.RandomState(0)
    present = [int(v) for v in np.unique(lab) if v != 0]
    wanted = present if label_ids is None else [int(v) for v in label_ids]
    names = {str(k): str(v) for k, v in (names or {}).items()}
    hw = (int(lab.shape[1]), int(lab.shape[2]))
    objects = []
    for lid in wanted:
        mask = lab == lid
        ks = choose_key_slices(mask, key_slices)
        if not ks:
            logger.info("label %d is absent from the label map; no prompts for it", lid)
            continue
        prompts = []
        for k in ks:
            tight = box_from_mask(mask[k])
            assert tight is not None  # k contains the object
            b = [int(v) for v in jitter_box(tight, hw, rng, jitter, distribution="uniform")]
            p: dict[str, Any] = {"slice": int(k)}
            if box:
                p["box"] = b
            if n_positive > 0 or n_negative > 0:
                pts, pls = _points(mask[k], n_positive, n_negative, rng)
                if pts:
                    p["points"], p["point_labels"] = pts, pls
            prompts.append(p)
        objects.append(
            {"label": lid, "name": names.get(str(lid), f"label_{lid}"), "propagate": bool(propagate), "prompts": prompts}
        )
    return {"space": "voxel", "objects": objects}
