"""Prompted slice-wise evaluation: Dice and NSD per structure, base model or adapter.

Every slice where a structure covers at least ``min_area`` pixels is segmented from a
deterministic prompt (:func:`~medsam.prompt_sim.fixed_prompt`) through the inference path
(:func:`~medsam.predictor.embed_images` and :class:`~medsam.predictor.SlicePredictor`),
then compared with the reference using MONAI's ``DiceMetric`` and ``SurfaceDiceMetric``
(NSD, in-plane spacing in mm). One row per case and structure, and an ``ALL`` row per
structure pooling all cases' slices.

Examples
--------
>>> rows = evaluate(model, find_cases("data"), "liver,spleen", EvalConfig(prompt="box"))  # doctest: +SKIP
>>> write_metrics_csv(rows, "metrics.csv")                                                  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import logging
import warnings
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adapters.datasets import Case, case_targets, load_case
from medsam.intensity import apply_window, resolve_window
from medsam.prompt_sim import PROMPT_KINDS, fixed_prompt

__all__ = ["EvalConfig", "evaluate", "summarize_rows", "write_metrics_csv"]

logger = logging.getLogger(__name__)

CSV_FIELDS = ("case", "structure", "prompt", "n_points", "n_slices", "dice", "nsd", "dice_pooled")


@dataclass(frozen=True)
class EvalConfig:
    """How structures are prompted and scored.

    Parameters
    ----------
    prompt
        ``"box"`` (tight box), ``"points"`` (``n_points`` positive points, the first at the
        most interior pixel) or ``"box+points"``.
    n_points
        Number of positive points for point prompts.
    window
        Window spec, resolved per case as at inference (None: automatic).
    min_area
        Slices where the structure has fewer pixels are not evaluated.
    max_slices
        Evaluate at most this many evenly spaced slices per case and structure.
    nsd_tolerance_mm
        Boundary tolerance of the normalised surface distance.
    batch_size
        Slices per encoder call.
    seed
        Seeds the extra points of point prompts.
    """

    prompt: str = "box"
    n_points: int = 1
    window: str | None = None
    min_area: int = 10
    max_slices: int | None = None
    nsd_tolerance_mm: float = 2.0
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.prompt not in PROMPT_KINDS:
            raise ValueError(f"prompt must be one of {', '.join(PROMPT_KINDS)}, got {self.prompt!r}")
        if self.n_points < 1 or self.batch_size < 1 or self.min_area < 1:
            raise ValueError("n_points, batch_size and min_area must be >= 1")
        if self.max_slices is not None and self.max_slices < 1:
            raise ValueError(f"max_slices must be >= 1, got {self.max_slices}")
        if not self.nsd_tolerance_mm > 0:
            raise ValueError(f"nsd_tolerance_mm must be positive, got {self.nsd_tolerance_mm}")


def _metrics(pred: np.ndarray, ref: np.ndarray, spacing_yx: tuple[float, float], tol: float):
    from monai.metrics import DiceMetric, SurfaceDiceMetric

    p = torch.from_numpy(pred.astype(np.float32))[None]
    r = torch.from_numpy(ref.astype(np.float32))[None]
    p2, r2 = torch.cat([1 - p, p])[None], torch.cat([1 - r, r])[None]  # (1, 2, H, W) one-hot
    dice = float(DiceMetric(include_background=False)(p2, r2)[0, 0])
    if not pred.any():
        return dice, 0.0
    with warnings.catch_warnings():  # MONAI 1.5+ warns about its own internal argument
        warnings.simplefilter("ignore", FutureWarning)
        nsd = SurfaceDiceMetric([tol], include_background=False)(p2, r2, spacing=list(spacing_yx))
    return dice, float(nsd[0, 0])


def _pick(slices: np.ndarray, max_slices: int | None) -> list[int]:
    if max_slices is None or len(slices) <= max_slices:
        return [int(k) for k in slices]
    idx = np.unique(np.linspace(0, len(slices) - 1, max_slices).round().astype(int))
    return [int(slices[i]) for i in idx]


def evaluate(
    model,
    cases: Sequence[Case],
    labels,
    config: EvalConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
    embeddings: dict | None = None,
) -> list[dict]:
    """Segment every evaluated slice from its prompt and score it.

    Parameters
    ----------
    model
        A :class:`~medsam.models.PromptableSam` (base or with an adapter), in eval mode.
    cases
        The evaluation cases.
    labels
        Structure names or ids (``"liver,spleen"``).
    config
        Prompting and scoring settings.
    progress
        Called as ``progress(done, total)`` after each case.
    embeddings
        Optional dict reused across calls (e.g. one per prompt type) to keep slice
        embeddings; keyed by model weights, case, slice and window.

    Returns
    -------
    list of dict
        Rows with :data:`CSV_FIELDS`: one per (case, structure), then one ``case="ALL"``
        row per structure (mean over all its slices, pooled Dice over all its pixels).
    """
    from medsam.predictor import SlicePredictor, embed_images

    config = config or EvalConfig()
    predictor = SlicePredictor(model)
    per_slice: dict[str, list[tuple[float, float, int, int]]] = {}
    rows: list[dict] = []
    for ci, case in enumerate(cases):
        volume, lab = load_case(case)
        window = resolve_window(volume, config.window)
        sx, sy, _ = volume.spacing
        todo = []
        for t in case_targets(case, labels):
            area = (lab == t.label_id).sum(axis=(1, 2))
            todo += [(t, k) for k in _pick(np.flatnonzero(area >= config.min_area), config.max_slices)]
        store = embeddings if embeddings is not None else {}
        key = (model.weights_id, case.case_id, window.key)
        emb: dict[int, torch.Tensor] = store.setdefault(key, {})
        ks = sorted({k for _, k in todo} - set(emb))
        for start in range(0, len(ks), config.batch_size):
            batch = ks[start : start + config.batch_size]
            x = torch.from_numpy(apply_window(volume.array[batch], window))[:, None]
            for k, e in zip(batch, embed_images(model, x.to(model.device)), strict=True):
                emb[k] = e
        stats: dict[str, list[tuple[float, float, int, int]]] = {}
        hw = tuple(int(s) for s in volume.array.shape[1:3])
        for t, k in todo:
            ref = lab[k] == t.label_id
            seed = zlib.crc32(f"{config.seed}:{case.case_id}:{k}:{t.label_id}".encode())
            prompt = fixed_prompt(ref, config.prompt, config.n_points, seed=seed)
            predictor.set_embedding(emb[k], hw)
            pred = predictor.predict(
                points=prompt.points if len(prompt.points) else None,
                point_labels=prompt.labels if len(prompt.points) else None,
                box=prompt.box,
                multimask=False,
            ).mask
            d, n = _metrics(pred, ref, (sy, sx), config.nsd_tolerance_mm)
            inter, size = int((pred & ref).sum()), int(pred.sum() + ref.sum())
            stats.setdefault(t.name, []).append((d, n, inter, size))
        for name, vals in stats.items():
            rows.append(_row(case.case_id, name, config, vals))
            per_slice.setdefault(name, []).extend(vals)
        if progress is not None:
            progress(ci + 1, len(cases))
        logger.info("evaluated %s: %d slices", case.case_id, len(todo))
    rows += [_row("ALL", name, config, vals) for name, vals in per_slice.items()]
    return rows


def _row(case: str, name: str, config: EvalConfig, vals) -> dict:
    a = np.asarray(vals, dtype=np.float64)
    return {
        "case": case,
        "structure": name,
        "prompt": config.prompt,
        "n_points": config.n_points if config.prompt != "box" else 0,
        "n_slices": len(vals),
        "dice": round(float(a[:, 0].mean()), 4),
        "nsd": round(float(a[:, 1].mean()), 4),
        "dice_pooled": round(float(2 * a[:, 2].sum() / max(a[:, 3].sum(), 1)), 4),
    }


def summarize_rows(rows: Sequence[dict]) -> dict[str, float]:
    """Mean Dice and NSD over the structures' ``ALL`` rows (the validation score)."""
    alls = [r for r in rows if r["case"] == "ALL"]
    if not alls:
        return {"dice": float("nan"), "nsd": float("nan")}
    return {
        "dice": float(np.mean([r["dice"] for r in alls])),
        "nsd": float(np.mean([r["nsd"] for r in alls])),
    }


def write_metrics_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write evaluation rows as CSV (columns :data:`CSV_FIELDS`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(CSV_FIELDS))
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in CSV_FIELDS})
    return path
