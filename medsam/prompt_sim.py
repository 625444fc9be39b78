"""Simulated prompts from reference masks (training, evaluation, MONAI), in SAM's slice convention.

The one place prompts are simulated: :mod:`adapters` trains and evaluates with it, and
:mod:`medsam.monai.simulate` builds its 3D key-slice prompts from the same primitives.

Boxes are ``(x0, y0, x1, y1)`` inclusive pixel indices and points ``(x, y)`` = (column, row)
on the original slice, label 1 foreground and 0 background, exactly what a user gives
``medsam segment`` or :class:`~medsam.predictor.SlicePredictor`.

* :func:`simulate_prompt`: a random training prompt: a jittered box, a few positive and
  negative points, or both.
* :func:`correction_click`: the next click of an interactive session, at the most interior
  pixel of the larger error region (false negatives: positive click; false positives:
  negative click).
* :func:`fixed_prompt`: the deterministic prompts of :mod:`adapters.evaluate`.
* Primitives: :func:`jitter_box`, :func:`sample_pixels`, :func:`negative_region`.

Examples
--------
>>> import numpy as np
>>> mask = np.zeros((20, 30), bool); mask[5:10, 8:20] = True
>>> fixed_prompt(mask, "box").box.tolist()
[8.0, 5.0, 19.0, 9.0]
>>> fixed_prompt(mask, "points", n_points=1).points.tolist()
[[14.0, 7.0]]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

from medsam.prompts import box_from_mask

__all__ = [
    "PROMPT_KINDS",
    "Prompt",
    "PromptSimConfig",
    "correction_click",
    "interior_point",
    "fixed_prompt",
    "jitter_box",
    "negative_region",
    "sample_pixels",
    "simulate_prompt",
]

PROMPT_KINDS = ("box", "points", "box+points")


@dataclass(frozen=True)
class PromptSimConfig:
    """How training prompts are drawn.

    Parameters
    ----------
    kinds
        Probabilities of ``"box"``, ``"points"`` and ``"box+points"`` prompts (normalised).
    box_jitter
        Standard deviation of each box edge's shift, as a fraction of the box side.
    box_shift_px
        Further uniform shift of each edge in ``[-box_shift_px, box_shift_px]`` pixels.
    max_pos_points, max_neg_points
        A points prompt has 1..max_pos positive and 0..max_neg negative points (negatives
        from the background within the object's box grown by half its size).
    n_corrections
        Correction rounds after the first prediction, each adding one click from the
        error regions (0 disables the iterative simulation).
    mask_prompt_prob
        Probability that a correction round also receives the previous round's low-res
        logits as ``mask_input``.
    """

    kinds: tuple[float, float, float] = (0.4, 0.4, 0.2)
    box_jitter: float = 0.05
    box_shift_px: float = 2.0
    max_pos_points: int = 3
    max_neg_points: int = 1
    n_corrections: int = 1
    mask_prompt_prob: float = 0.5

    def __post_init__(self) -> None:
        probs = tuple(float(p) for p in self.kinds)
        if len(probs) != 3 or min(probs) < 0 or sum(probs) <= 0:
            raise ValueError(f"kinds must be 3 non-negative probabilities (box, points, box+points), got {self.kinds}")
        object.__setattr__(self, "kinds", probs)
        if self.box_jitter < 0 or self.box_shift_px < 0:
            raise ValueError("box_jitter and box_shift_px must be >= 0")
        if self.max_pos_points < 1 or self.max_neg_points < 0 or self.n_corrections < 0:
            raise ValueError("need max_pos_points >= 1, max_neg_points >= 0, n_corrections >= 0")
        if not 0.0 <= self.mask_prompt_prob <= 1.0:
            raise ValueError(f"mask_prompt_prob must be in [0, 1], got {self.mask_prompt_prob}")


@dataclass(frozen=True)
class Prompt:
    """One slice prompt: an optional box and ``(N, 2)`` points with ``(N,)`` labels."""

    box: np.ndarray | None = None
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))

    def __post_init__(self) -> None:
        if self.box is None and len(self.points) == 0:
            raise ValueError("a prompt needs a box or at least one point")

    def add_point(self, xy: tuple[float, float], label: int) -> Prompt:
        """A new prompt with one more point."""
        pts = np.concatenate([self.points, np.asarray([xy], np.float32)])
        return Prompt(self.box, pts, np.concatenate([self.labels, [int(label)]]).astype(np.int64))


def interior_point(mask: np.ndarray, rng: np.random.Generator | None = None) -> tuple[float, float]:
    """The pixel farthest from the mask's border (random among ties when ``rng`` is given)."""
    dist = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    best = np.flatnonzero(dist == dist.max())
    idx = best[len(best) // 2] if rng is None else rng.choice(best)
    y, x = np.unravel_index(idx, mask.shape)
    return float(x), float(y)


def jitter_box(
    box: tuple[float, float, float, float],
    hw: tuple[int, int],
    rng: np.random.Generator | np.random.RandomState,
    jitter: float,
    shift_px: float = 0.0,
    distribution: Literal["normal", "uniform"] = "normal",
) -> np.ndarray:
    """Shift each edge of ``box`` randomly, keep it inside the ``(H, W)`` slice and non-empty.

    Parameters
    ----------
    box
        ``(x0, y0, x1, y1)`` inclusive pixel indices.
    hw
        ``(H, W)`` of the slice.
    rng
        A NumPy ``Generator`` or ``RandomState`` (MONAI's randomisable transforms use the latter).
    jitter
        Per-edge shift as a fraction of the box side: the standard deviation
        (``"normal"``), or the largest shift (``"uniform"``, in ``[-jitter, jitter]``).
    shift_px
        Further uniform shift of each edge in ``[-shift_px, shift_px]`` pixels.

    Returns
    -------
    numpy.ndarray
        ``(4,)`` float32 ``(x0, y0, x1, y1)`` with whole-pixel values.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0 + 1, y1 - y0 + 1
    sides = np.array([w, h, w, h])
    b = np.array([x0, y0, x1, y1])
    if jitter > 0:
        if distribution == "normal":
            b = b + rng.normal(0.0, jitter, 4) * sides
        elif distribution == "uniform":
            b = b + rng.uniform(-jitter, jitter, 4) * sides
        else:
            raise ValueError(f"distribution must be 'normal' or 'uniform', got {distribution!r}")
    if shift_px > 0:
        b = b + rng.uniform(-shift_px, shift_px, 4)
    H, W = hw
    b[[0, 2]] = np.clip(b[[0, 2]], 0, W - 1)
    b[[1, 3]] = np.clip(b[[1, 3]], 0, H - 1)
    b = np.rint(b)
    if b[2] < b[0]:
        b[[0, 2]] = b[[2, 0]]
    if b[3] < b[1]:
        b[[1, 3]] = b[[3, 1]]
    return b.astype(np.float32)


def sample_pixels(mask: np.ndarray, n: int, rng: np.random.Generator | np.random.RandomState) -> np.ndarray:
    """Up to ``n`` distinct pixels of a ``(H, W)`` bool mask as ``(N, 2)`` float32 ``(x, y)``."""
    ys, xs = np.nonzero(mask)
    if n <= 0 or ys.size == 0:
        return np.zeros((0, 2), np.float32)
    idx = rng.choice(ys.size, size=min(n, ys.size), replace=False)
    return np.stack([xs[idx], ys[idx]], axis=1).astype(np.float32)


def negative_region(mask: np.ndarray) -> np.ndarray:
    """Background near the object: its box grown by half its size on each side, minus the mask."""
    box = box_from_mask(mask)
    region = np.zeros_like(mask)
    if box is not None:
        x0, y0, x1, y1 = box
        gx, gy = (x1 - x0 + 1) / 2, (y1 - y0 + 1) / 2
        region[max(0, int(y0 - gy)) : int(y1 + gy) + 1, max(0, int(x0 - gx)) : int(x1 + gx) + 1] = True
    return region & ~mask


def simulate_prompt(
    mask: np.ndarray,
    rng: np.random.Generator,
    config: PromptSimConfig,
    *,
    ref_mask: np.ndarray | None = None,
) -> Prompt:
    """A random training prompt for the ``(H, W)`` bool ``mask``.

    Parameters
    ----------
    mask
        The target structure on this slice (may be empty).
    rng
        Source of randomness (seeded per sample for reproducible runs).
    config
        Prompt distribution.
    ref_mask
        For an empty ``mask``: the structure on the nearest slice where it exists. Its
        jittered box is the prompt (what propagation gives past an organ's end), and the
        model must answer with an empty mask.
    """
    mask = np.asarray(mask, bool)
    hw = mask.shape
    if not mask.any():
        ref = ref_mask if ref_mask is not None and np.any(ref_mask) else None
        box = box_from_mask(ref) if ref is not None else (hw[1] * 0.25, hw[0] * 0.25, hw[1] * 0.75, hw[0] * 0.75)
        return Prompt(box=jitter_box(box, hw, rng, config.box_jitter, config.box_shift_px))
    kind = PROMPT_KINDS[rng.choice(3, p=np.asarray(config.kinds) / sum(config.kinds))]
    box = None
    if kind != "points":
        box = jitter_box(box_from_mask(mask), hw, rng, config.box_jitter, config.box_shift_px)
    if kind == "box":
        return Prompt(box=box)
    n_pos = int(rng.integers(1, config.max_pos_points + 1))
    n_neg = int(rng.integers(0, config.max_neg_points + 1))
    pos = sample_pixels(mask, n_pos, rng)
    neg = sample_pixels(negative_region(mask), n_neg, rng)
    pts = np.concatenate([pos, neg]).astype(np.float32)
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.int64)
    return Prompt(box=box, points=pts, labels=labels)


def correction_click(
    pred: np.ndarray, target: np.ndarray, rng: np.random.Generator | None = None
) -> tuple[tuple[float, float], int] | None:
    """The next corrective click: ``((x, y), label)``, or None when ``pred`` equals ``target``.

    The click goes to the most interior pixel of the larger error region: inside missed
    foreground (label 1) or inside false foreground (label 0), as a user would click.
    """
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    fn, fp = target & ~pred, pred & ~target
    n_fn, n_fp = int(fn.sum()), int(fp.sum())
    if n_fn == 0 and n_fp == 0:
        return None
    if n_fn >= n_fp:
        return interior_point(fn, rng), 1
    return interior_point(fp, rng), 0


def fixed_prompt(mask: np.ndarray, kind: str, n_points: int = 1, seed: int = 0) -> Prompt:
    """The deterministic evaluation prompt of a non-empty ``(H, W)`` mask.

    ``"box"``: the tight box. ``"points"``: the most interior pixel, then ``n_points - 1``
    further positive points drawn from the mask with ``seed``. ``"box+points"``: both.
    """
    if kind not in PROMPT_KINDS:
        raise ValueError(f"prompt must be one of {', '.join(PROMPT_KINDS)}, got {kind!r}")
    if n_points < 1:
        raise ValueError(f"n_points must be >= 1, got {n_points}")
    mask = np.asarray(mask, bool)
    box = box_from_mask(mask)
    if box is None:
        raise ValueError("cannot prompt an empty mask")
    box_arr = np.asarray(box, np.float32) if kind != "points" else None
    if kind == "box":
        return Prompt(box=box_arr)
    first = np.asarray([interior_point(mask)], np.float32)
    rest_mask = mask.copy()
    rest_mask[int(first[0, 1]), int(first[0, 0])] = False
    rest = sample_pixels(rest_mask, n_points - 1, np.random.default_rng(seed))
    pts = np.concatenate([first, rest]).astype(np.float32)
    return Prompt(box=box_arr, points=pts, labels=np.ones(len(pts), np.int64))
