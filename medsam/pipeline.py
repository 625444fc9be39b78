"""The main job as one function: volume + prompts -> label map + per-slice confidence.

The CLI (``medsam segment``), the demo and the front ends call :func:`segment_volume`;
it owns no logic beyond wiring :class:`~medsam.volume.VolumePredictor` together.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsam.intensity import Window, WindowSpec
from medsam.prompts import PromptSet
from medsam.volume import PropagationConfig, VolumePredictor

__all__ = ["SegmentationResult", "segment_volume", "summarize"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentationResult:
    """Output of :func:`segment_volume`.

    Attributes
    ----------
    labels:
        ``(Z, Y, X)`` uint8/uint16 label map on the input grid.
    confidence:
        ``{label: {"name", "slices": {k: score}, "prompted_slices"}}``.
    window:
        The intensity window used.
    seconds:
        Wall time of the segmentation (model loading excluded).
    """

    labels: np.ndarray
    confidence: dict[str, Any]
    window: Window
    seconds: float
    names: dict[int, str] = field(default_factory=dict)


def segment_volume(
    volume,
    prompts: PromptSet,
    *,
    predictor: VolumePredictor | None = None,
    model: str = "litemedsam",
    checkpoint: str | None = None,
    device: Any = None,
    window: WindowSpec = None,
    propagate: bool = True,
    config: PropagationConfig | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> SegmentationResult:
    """Segment the objects of ``prompts`` in ``volume``.

    Parameters
    ----------
    volume:
        A :class:`medsam.io.Volume`.
    prompts:
        Validated prompts (voxel space), e.g. from :func:`medsam.prompts.load_prompts`.
    predictor:
        Reuse a loaded predictor (its model); otherwise one is built from ``model``,
        ``checkpoint`` and ``device``.
    window:
        Intensity window spec; ``None`` chooses from the header/modality.
    propagate:
        ``False`` segments only the prompted slices.
    progress:
        ``progress(stage, done, total)`` with stage ``"propagate"``.
    """
    vp = predictor or VolumePredictor(model, checkpoint=checkpoint, device=device, config=config)
    t0 = time.perf_counter()
    session = vp.init_volume(volume, window)
    vp.add_objects(prompts)
    if propagate:
        total = volume.grid_shape[0] * max(1, len(prompts.objects))
        done = 0
        for step in vp.propagate():
            done += len(step.masks)
            if progress is not None:
                progress("propagate", done, total)
    labels = vp.to_labels()
    seconds = time.perf_counter() - t0
    return SegmentationResult(
        labels=labels,
        confidence=session.confidence(),
        window=session.window,
        seconds=seconds,
        names={o.label: o.name for o in session.objects.values()},
    )


def summarize(result: SegmentationResult, volume) -> list[dict[str, Any]]:
    """Per object: slices covered, voxels and volume in mL."""
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    rows = []
    for label, name in sorted(result.names.items()):
        m = result.labels == label
        per_slice = m.reshape(m.shape[0], -1).any(axis=1)
        ks = np.nonzero(per_slice)[0]
        voxels = int(m.sum())
        rows.append(
            {
                "label": label,
                "name": name,
                "slices": [int(ks[0]), int(ks[-1])] if ks.size else [],
                "n_slices": int(ks.size),
                "voxels": voxels,
                "volume_ml": round(voxels * voxel_ml, 2),
            }
        )
    return rows
