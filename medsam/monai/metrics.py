"""Per-label Dice and normalised surface Dice (NSD) with MONAI's metrics, and a CSV writer.

Examples
--------
>>> import torch
>>> from monai.data import MetaTensor
>>> ref = torch.zeros(1, 8, 8, 4); ref[0, 2:6, 2:6, 1:3] = 5
>>> rows = LabelMetrics(label_ids=[5], names={5: "liver"})(ref.clone(), ref)
>>> rows[0]["label"], rows[0]["dice"], rows[0]["nsd"]
(5, 1.0, 1.0)
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.metrics import DiceMetric, SurfaceDiceMetric
from monai.transforms import MapTransform, Transform
from monai.utils import ensure_tuple, ensure_tuple_rep

from medsam.atomic import atomic_write
from medsam.monai.geometry import affine_ras_of, spacing_of

__all__ = ["LabelMetrics", "LabelMetricsd", "LabelMetricsD", "LabelMetricsDict", "write_metrics_csv", "CSV_FIELDS"]

logger = logging.getLogger(__name__)

#: Columns of the metrics CSV, one row per case and label.
CSV_FIELDS = ("case", "label", "name", "dice", "nsd", "nsd_tolerance_mm", "reference_voxels", "predicted_voxels")


def _labels(x: Any) -> torch.Tensor:
    t = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(np.asarray(x))
    t = t.detach().cpu()
    if t.ndim == 4:
        if t.shape[0] != 1:
            raise ValueError(f"label maps must have one channel [1, H, W, D], got {tuple(t.shape)}")
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"label maps must be [1, H, W, D] or [H, W, D], got {tuple(t.shape)}")
    return torch.round(t.float()).to(torch.int64) if t.is_floating_point() else t.to(torch.int64)


def _case_name(x: Any) -> str:
    meta = getattr(x, "meta", None)
    src = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if not src:
        return ""
    name = Path(str(src)).name
    for suf in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


class LabelMetrics(Transform):
    """Dice and NSD of each label between a predicted and a reference label map.

    Parameters
    ----------
    label_ids:
        Labels to score (default: every label in the reference).
    names:
        ``{label: name}`` for the rows (keys int or str).
    nsd_tolerance_mm:
        Surface distance tolerance of the NSD, in mm (voxel size from the reference's affine).

    ``__call__(pred, label)`` takes two ``[1, H, W, D]`` label maps on the same grid and returns
    one row per label: ``case`` (from the reference's file name), ``label``, ``name``,
    ``dice`` and ``nsd`` (NaN when the reference lacks the label), the tolerance, and voxel
    counts. Dice is MONAI's ``DiceMetric``, NSD its ``SurfaceDiceMetric`` (euclidean).
    """

    def __init__(
        self,
        label_ids: Sequence[int] | int | None = None,
        names: Mapping[Any, str] | None = None,
        nsd_tolerance_mm: float = 2.0,
    ) -> None:
        if not nsd_tolerance_mm > 0:
            raise ValueError(f"nsd_tolerance_mm must be positive, got {nsd_tolerance_mm}")
        self.label_ids = None if label_ids is None else [int(v) for v in ensure_tuple(label_ids)]
        self.names = {str(k): str(v) for k, v in (names or {}).items()}
        self.tolerance = float(nsd_tolerance_mm)

    def __call__(self, pred: Any, label: Any) -> list[dict[str, Any]]:
        p, r = _labels(pred), _labels(label)
        if p.shape != r.shape:
            raise ValueError(f"prediction {tuple(p.shape)} and reference {tuple(r.shape)} grids differ")
        ids = self.label_ids
        if ids is None:
            ids = [int(v) for v in torch.unique(r).tolist() if v != 0]
        if not ids:
            return []
        idx = torch.tensor(ids).view(-1, 1, 1, 1)
        y_pred = (p[None] == idx)[None].float()  # [1, L, H, W, D]
        y = (r[None] == idx)[None].float()
        try:
            spacing = spacing_of(affine_ras_of(label))
        except TypeError:
            spacing = (1.0, 1.0, 1.0)
            logger.warning("reference has no affine; NSD uses 1 mm voxels")
        dice = DiceMetric(include_background=True, reduction="none", ignore_empty=True)(y_pred, y)[0]
        nsd = SurfaceDiceMetric(
            class_thresholds=[self.tolerance] * len(ids), include_background=True, reduction="none"
        )(y_pred, y, spacing=list(spacing))[0]
        case = _case_name(pred) or _case_name(label)
        rows = []
        for n, lid in enumerate(ids):
            ref_n = int(y[0, n].sum())
            rows.append(
                {
                    "case": case,
                    "label": lid,
                    "name": self.names.get(str(lid), f"label_{lid}"),
                    "dice": float(dice[n]) if ref_n else math.nan,
                    "nsd": float(nsd[n]) if ref_n else math.nan,
                    "nsd_tolerance_mm": self.tolerance,
                    "reference_voxels": ref_n,
                    "predicted_voxels": int(y_pred[0, n].sum()),
                }
            )
        return rows


class LabelMetricsd(MapTransform):
    """Dictionary version of :class:`LabelMetrics`: rows for ``keys`` (predictions) vs ``label_key``.

    Parameters
    ----------
    keys:
        Prediction key(s), e.g. ``"pred"``.
    label_key:
        Reference label key (one, or one per prediction key).
    output_key:
        Where to write each key's list of rows (default ``"metrics"``; one per key).
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: KeysCollection = "label",
        output_key: KeysCollection = "metrics",
        label_ids: Sequence[int] | int | None = None,
        names: Mapping[Any, str] | None = None,
        nsd_tolerance_mm: float = 2.0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_keys = ensure_tuple_rep(label_key, len(self.keys))
        self.output_keys = ensure_tuple_rep(output_key, len(self.keys))
        self.metrics = LabelMetrics(label_ids, names, nsd_tolerance_mm)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, l_key, out_key in self.key_iterator(d, self.label_keys, self.output_keys):
            d[out_key] = self.metrics(d[key], d[l_key])
        return d


def write_metrics_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write metric rows (:data:`CSV_FIELDS`) to ``path`` atomically; logs the mean per label.

    Returns the path written. Extra keys in a row are ignored; NaN is written as ``nan``.
    """
    out = Path(path)
    rows = list(rows)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
            writer.writeheader()
            for row in rows:
                writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) and not math.isnan(v) else v) for k, v in row.items()})

    atomic_write(out, write)
    by_label: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for row in rows:
        by_label.setdefault((row["label"], row["name"]), []).append((row["dice"], row["nsd"]))
    for (lid, name), vals in sorted(by_label.items()):
        arr = np.array(vals, dtype=float)
        logger.info(
            "label %d %s: mean Dice %.4f, mean NSD %.4f over %d case(s)",
            lid, name, np.nanmean(arr[:, 0]) if np.isfinite(arr[:, 0]).any() else math.nan,
            np.nanmean(arr[:, 1]) if np.isfinite(arr[:, 1]).any() else math.nan, len(vals),
        )
    logger.info("wrote %s (%d rows)", out, len(rows))
    return out


LabelMetricsD = LabelMetricsDict = LabelMetricsd
