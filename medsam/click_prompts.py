"""Clicks for box-trained models: the clicks become candidate boxes, and the best mask wins.

LiteMedSAM was trained with boxes only: given a point it returns an empty or tiny mask
(mean 2D Dice 0.07 from one click on the dev scans, against 0.72 with this module;
``benchmarks/clicks.py``). :func:`translate_clicks` answers clicks
with boxes instead, on the slice's cached embedding, so every front end that calls
:meth:`medsam.predictor.SlicePredictor.predict` gets working clicks:

1. **Scale.** The object's size is estimated from the image embedding: the region of
   embedding cells whose feature is close (cosine similarity 0.6 and 0.7) to the
   clicked cells. A log-linear fit on the dev scans maps its size to the object's.
2. **Candidates.** Square boxes of the ``n_candidates`` sizes of ``sizes`` nearest to
   that estimate, centred on the positive clicks and grown to hold all of them, plus,
   when a box or an earlier mask is given, that box grown to hold the positive clicks.
3. **Refinement.** Each candidate's mask (its connected part at the clicks) gives a
   tight box (plus ``margin``) that is decoded again: a box-trained model answers a
   tight box best.
4. **Choice.** The refined mask with the highest score wins: its agreement with the
   first mask (a self-consistent box), the contrast of the embedding inside it against
   the ring just outside, and the share of positive clicks inside minus the share of
   negative clicks inside. The decoder's predicted IoU does not rank these candidates
   (measured), so it is not used here. For a correction, the earlier mask is itself a
   candidate and every candidate's overlap with it counts (``prior_weight``): a click
   changes the mask where it says, or not at all.
5. **Negative clicks.** Where the chosen box still holds a negative click, boxes with
   one side moved past it (keeping every positive click) are tried; a connected part of
   the mask that holds a negative click and no positive one is removed.

Coordinates here are in the model frame (SAM's ``(x, y)`` of the resized image, as
:class:`~medsam.models.frame.FrameTransform` gives them); masks and logits are the
decoder's low-resolution ``(h, w)`` frame, which covers the whole model input. The
settings were chosen by measurement on the dev scans (``benchmarks/clicks.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from medsam.errors import PromptError

__all__ = ["ClickConfig", "ClickResult", "translate_clicks", "answers_points"]

logger = logging.getLogger(__name__)

#: ``decode(boxes (1, 4) model frame) -> (low-res logits (h, w), predicted IoU)``.
DecodeBox = Callable[[np.ndarray], tuple[np.ndarray, float]]


@dataclass(frozen=True)
class ClickConfig:
    """How clicks become boxes (defaults measured on the dev scans).

    Attributes
    ----------
    sizes:
        Candidate box sides as fractions of the model input side (LiteMedSAM: 12 to 256
        pixels of its 256 frame).
    n_candidates:
        How many of ``sizes`` are tried, those nearest to the estimated object size. Each
        costs two decoder calls.
    size_gain:
        The estimate is multiplied by this before choosing the nearest sizes (a box a
        little larger than the object's core is answered better than one too small).
    margin:
        Added on each side of a refined box, as a fraction of the input side.
    contrast_weight, click_weight:
        Weights of the embedding contrast and of the click agreement in the choice.
    prior_weight:
        For a correction (an earlier mask is given), the weight of each candidate's IoU
        with that mask: a correction changes the mask where the clicks say, not all of it.
        The earlier mask itself is a candidate.
    """

    sizes: tuple[float, ...] = (12 / 256, 24 / 256, 48 / 256, 96 / 256, 160 / 256, 1.0)
    n_candidates: int = 3
    size_gain: float = 2.0
    margin: float = 2 / 256
    contrast_weight: float = 1.0
    click_weight: float = 1.0
    prior_weight: float = 4.0

    def __post_init__(self) -> None:
        if not self.sizes or any(not 0 < s <= 1 for s in self.sizes):
            raise ValueError(f"sizes must be fractions in (0, 1], got {self.sizes}")
        if not 1 <= self.n_candidates <= len(self.sizes):
            raise ValueError(f"n_candidates must be 1..{len(self.sizes)}, got {self.n_candidates}")
        if self.size_gain <= 0 or self.margin < 0:
            raise ValueError("size_gain must be positive and margin non-negative")


@dataclass(frozen=True)
class ClickResult:
    """The chosen answer: ``(1, h, w)`` low-res logits, the decoder's IoU, the box used
    ``(x0, y0, x1, y1)`` in the model frame, the choice score and the decoder calls made."""

    low_res_logits: np.ndarray
    iou: float
    box: tuple[float, float, float, float]
    score: float
    n_decodes: int


def answers_points(model) -> bool:
    """Whether ``model`` was trained with point prompts.

    The registry's box-trained models (LiteMedSAM) do not, unless an adapter fine-tuned
    them with points (medsam's fine-tuning samples point prompts by default).
    """
    from medsam.models.registry import MODEL_REGISTRY

    spec = MODEL_REGISTRY.get(getattr(model, "name", ""))
    if spec is None or spec.point_prompts:
        return True
    meta = getattr(model, "adapter_meta", None)
    if not meta:
        return False
    kinds = meta.get("training", {}).get("config", {}).get("prompt", {}).get("kinds")
    return kinds is None or float(kinds[1]) + float(kinds[2]) > 0  # (box, points, box+points)


# ----------------------------------------------------------------------------- helpers
def _bbox(mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=np.float64)


def _part_at(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` that hold ``points`` ((N, 2) x, y), else the nearest part."""
    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    h, w = mask.shape
    ij = np.clip(np.round(points[:, ::-1]).astype(int), 0, [h - 1, w - 1])
    hit = {int(v) for v in lab[ij[:, 0], ij[:, 1]] if v}
    if not hit:
        _, (ny, nx) = ndi.distance_transform_edt(lab == 0, return_indices=True)
        hit = {int(lab[ny[i, j], nx[i, j]]) for i, j in ij}
    return np.isin(lab, list(hit))


def _inside(mask: np.ndarray, points: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    ij = np.clip(np.round(points[:, ::-1]).astype(int), 0, [h - 1, w - 1])
    return mask[ij[:, 0], ij[:, 1]]


def _contrast(embedding: torch.Tensor, mask: np.ndarray) -> float:
    """``1 - cos`` between the mean embedding inside ``mask`` and in the ring around it."""
    eh, ew = embedding.shape[-2:]
    m = F.adaptive_avg_pool2d(torch.from_numpy(mask.astype(np.float32))[None, None], (eh, ew))[0, 0]
    ring = F.max_pool2d(m[None, None], 5, 1, 2)[0, 0] - m
    if float(m.sum()) < 0.5 or float(ring.sum()) < 0.5:
        return 0.0
    e = embedding.float()
    inner = (e * m).sum((1, 2)) / m.sum()
    outer = (e * ring).sum((1, 2)) / ring.sum()
    return 1.0 - float(F.cosine_similarity(inner, outer, dim=0))


def _similarity_map(embedding: torch.Tensor, positives: np.ndarray, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(eh, ew)`` cosine similarity of each embedding cell to the clicked cells, and those cells."""
    eh, ew = embedding.shape[-2:]
    s = eh / image_size
    cells = np.clip(np.floor(positives * s).astype(int), 0, [ew - 1, eh - 1])
    e = embedding.float()
    seed = e[:, cells[:, 1], cells[:, 0]].mean(1)
    return F.cosine_similarity(e, seed[:, None, None], dim=0).cpu().numpy(), cells


def _estimated_side(embedding: torch.Tensor, positives: np.ndarray, image_size: int) -> float:
    """The object's side (sqrt of its area) in model-frame pixels, from embedding similarity."""
    s = embedding.shape[-2] / image_size
    sim, cells = _similarity_map(embedding, positives, image_size)
    sides = []
    for t in (0.6, 0.7):
        region = _part_at(sim > t, cells.astype(np.float64))
        sides.append(max(1.0, float(np.sqrt(region.sum()))) / s * 256 / image_size)  # in 256-frame px
    # log-linear fit on the dev scans (benchmarks/clicks.py): side of the reference mask
    est = np.exp(0.4906 - 0.2555 * np.log(sides[0]) + 1.1953 * np.log(sides[1]))
    return float(est) * image_size / 256


def _clip_box(box: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
    h, w = input_hw
    b = np.clip(box, 0, [w - 1, h - 1, w - 1, h - 1])
    b[2], b[3] = max(b[2], b[0] + 1), max(b[3], b[1] + 1)
    return b


def _cut_variants(box: np.ndarray, negative: np.ndarray, positives: np.ndarray, gap: float) -> list[np.ndarray]:
    """Boxes with one side moved just past ``negative`` that still hold every positive click."""
    x, y = negative
    out = []
    for side, value in ((0, x + gap), (2, x - gap), (1, y + gap), (3, y - gap)):
        b = box.copy()
        b[side] = value
        if b[2] - b[0] < 2 or b[3] - b[1] < 2:
            continue
        if len(positives) and not (
            (positives[:, 0] >= b[0]).all() and (positives[:, 0] <= b[2]).all()
            and (positives[:, 1] >= b[1]).all() and (positives[:, 1] <= b[3]).all()
        ):
            continue
        out.append(b)
    return out


# ------------------------------------------------------------------------------ choice
def translate_clicks(
    decode: DecodeBox,
    embedding: torch.Tensor,
    points: np.ndarray,
    labels: np.ndarray,
    *,
    image_size: int,
    input_hw: tuple[int, int],
    box: np.ndarray | None = None,
    prior: np.ndarray | None = None,
    config: ClickConfig | None = None,
) -> ClickResult:
    """Answer clicks (and optionally a box or an earlier mask) with the best box prompt.

    Parameters
    ----------
    decode:
        Decodes one model-frame box ``(4,)`` on the current embedding and returns the
        low-res logits ``(h, w)`` (covering the ``S x S`` input) and the predicted IoU.
    embedding:
        ``(C, eh, ew)`` image embedding of the slice.
    points, labels:
        ``(N, 2)`` model-frame ``(x, y)`` and ``(N,)`` 1 (object) / 0 (background).
    image_size:
        ``S``, the model input side.
    input_hw:
        ``(h, w)`` of the resized slice inside the input (the rest is padding).
    box:
        ``(4,)`` model-frame box the user drew, or None.
    prior:
        ``(h, w)`` low-res logits of the slice's current mask (a correction), or None.

    Raises
    ------
    PromptError
        Only negative clicks, with neither a box nor an earlier mask to correct.
    """
    cfg = config or ClickConfig()
    points = np.asarray(points, np.float64).reshape(-1, 2)
    labels = np.asarray(labels).reshape(-1).astype(int)
    pos, neg = points[labels == 1], points[labels == 0]
    prior_mask = None if prior is None else np.asarray(prior) > 0
    if prior_mask is not None and not prior_mask.any():
        prior_mask = None
    if not len(pos) and box is None and prior_mask is None:
        raise PromptError("only negative clicks: add a positive click or a box (nothing to remove them from)")
    n_dec = 0
    lr_scale = None

    def run(b: np.ndarray) -> tuple[np.ndarray, float]:
        nonlocal n_dec, lr_scale
        n_dec += 1
        logits, iou = decode(_clip_box(b, input_hw))
        lr_scale = logits.shape[-1] / image_size
        return logits, iou

    margin = cfg.margin * image_size
    emb = embedding[0] if embedding.ndim == 4 else embedding
    # --- candidates (model frame)
    starts: list[np.ndarray] = []
    base = None
    if box is not None:
        base = np.asarray(box, np.float64)
    elif prior_mask is not None:
        scale = prior_mask.shape[-1] / image_size
        base = _bbox(prior_mask) / scale + [-margin, -margin, margin, margin]
    if base is not None:
        starts.append(base)
        if len(pos):
            grown = np.r_[np.minimum(base[:2], pos.min(0) - margin), np.maximum(base[2:], pos.max(0) + margin)]
            if not np.allclose(grown, base):
                starts.append(grown)
    if len(pos) and base is None:
        side = _estimated_side(emb, pos, image_size) * cfg.size_gain
        sizes = np.asarray(cfg.sizes) * image_size
        nearest = sizes[np.argsort(np.abs(np.log(sizes) - np.log(side)), kind="stable")[: cfg.n_candidates]]
        centre = (pos.min(0) + pos.max(0)) / 2
        for s in sorted(nearest):
            b = np.r_[centre - s / 2, centre + s / 2]
            starts.append(np.r_[np.minimum(b[:2], pos.min(0) - margin), np.maximum(b[2:], pos.max(0) + margin)])

    def scored(first_logits: np.ndarray, start: np.ndarray, refine: bool):
        first = first_logits > 0
        anchor = pos if len(pos) else None
        if anchor is not None and first.any():
            first = _part_at(first, anchor * lr_scale)
        if not first.any():
            return None
        logits, iou = first_logits, None
        box_used = start
        if refine:
            box_used = _bbox(first) / lr_scale + [-margin, -margin, margin, margin]
            logits, iou = run(box_used)
        mask = logits > 0
        if not mask.any():
            return None
        fit = float((mask & first).sum() / max(1, (mask | first).sum()))
        share = (_inside(mask, pos * lr_scale).mean() if len(pos) else 0.0) - (
            _inside(mask, neg * lr_scale).mean() if len(neg) else 0.0
        )
        score = fit + cfg.contrast_weight * _contrast(emb, mask) + cfg.click_weight * share
        if prior_mask is not None:
            score += cfg.prior_weight * float((mask & prior_mask).sum() / max(1, (mask | prior_mask).sum()))
        return score, logits, iou, box_used

    best = None
    if prior_mask is not None:  # keeping the mask as it is is one of the answers
        lr_scale = prior_mask.shape[-1] / image_size
        got = scored(np.asarray(prior, np.float32), starts[0], refine=False)
        if got is not None:
            best = (got[0], got[1], None, starts[0])  # its IoU: the decoder's for its box, below
    base_iou = None
    for start in starts:
        first_logits, iou0 = run(start)
        base_iou = iou0 if base_iou is None else base_iou
        refine = base is None or not np.array_equal(start, base)
        got = scored(first_logits, start, refine)
        if got is None:
            continue
        score, logits, iou, used = got
        iou = iou0 if iou is None else iou
        if best is None or score > best[0]:
            best = (score, logits, iou, used)
    if best is None:  # nothing anywhere: answer the first box as the model does
        logits, iou = run(starts[0])
        best = (-1.0, logits, iou, starts[0])

    score, logits, iou, used = best
    iou = base_iou if iou is None else iou

    # --- negative clicks that the chosen mask still holds
    for q in neg:
        if not _inside(logits > 0, q[None] * lr_scale)[0]:
            continue
        for b in _cut_variants(np.asarray(used, np.float64), q, pos, gap=margin):
            cand, ciou = run(b)
            got = scored(cand, b, refine=False)
            if got is not None and got[0] > score:
                score, logits, iou, used = got[0], cand, ciou, b
    logits = np.array(logits, dtype=np.float32, copy=True)
    mask = logits > 0
    if len(neg) and mask.any():  # parts with a negative click and no positive one go
        lab, n = ndi.label(mask)

        def ids(q: np.ndarray) -> set[int]:
            ij = np.clip(np.round(q[:, ::-1] * lr_scale).astype(int), 0, np.array(mask.shape) - 1)
            return {int(v) for v in lab[ij[:, 0], ij[:, 1]] if v}

        keep = ids(pos) if len(pos) else set()
        if not keep:  # negative clicks only (a correction): the object is its largest part
            keep = {1 + int(np.argmax(ndi.sum(mask, lab, range(1, n + 1))))}
        for v in ids(neg) - keep:
            logits[lab == v] = np.minimum(logits[lab == v], -10.0)
    b = _clip_box(np.asarray(used, np.float64), input_hw)
    logger.debug("clicks -> box %s after %d decodes (score %.3f)", np.round(b, 1).tolist(), n_dec, score)
    return ClickResult(logits[None], float(iou), tuple(float(v) for v in b), float(score), n_dec)
