"""Typed state of a volume segmentation session (SAM2's inference state, as dataclasses).

:class:`VolumeSession` holds the volume, its window, its slice embedder and one
:class:`ObjectState` per object; each object's per-slice masks are :class:`SliceResult`
(bit-packed). :class:`PropagationConfig` says how objects are carried between slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from medsam.embedding import SliceEmbedder
from medsam.intensity import Window
from medsam.predictor import SlicePrediction
from medsam.prompts import SlicePrompt

__all__ = ["PropagationConfig", "SliceResult", "ObjectState", "SessionEvent", "VolumeSession", "PropagationStep"]


@dataclass(frozen=True)
class PropagationConfig:
    """How objects are carried from slice to slice.

    Attributes
    ----------
    score_threshold:
        Stop when the model's predicted IoU falls below this.
    max_score_drop:
        Stop when the predicted IoU drops by more than this from one slice to the next
        (the object ended and the box now frames something the model is unsure of).
    min_area:
        Stop when the mask has fewer pixels than this (the object has vanished).
    min_overlap:
        Stop when the new mask covers less than this fraction of the previous mask's
        area *and* the previous mask covers less than this fraction of the new one's:
        the box has slid onto a neighbouring structure.
    max_growth:
        Stop when the area grows by more than this factor from one slice to the next
        (a leak into an adjacent organ), once the object is larger than ``growth_min_area``.
    growth_min_area:
        Below this area (pixels), growth is not checked (small objects change fast).
    box_margin:
        Pixels added around the previous mask's box, as a fraction of its size
        (at least ``box_margin_min`` pixels).
    box_margin_min:
        Minimum margin in pixels.
    use_mask_input:
        Also pass the previous slice's low-res logits as ``mask_input``.
    """

    score_threshold: float = 0.7
    max_score_drop: float = 0.2
    min_area: int = 5
    min_overlap: float = 0.3
    max_growth: float = 2.5
    growth_min_area: int = 200
    box_margin: float = 0.1
    box_margin_min: float = 2.0
    use_mask_input: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 <= self.min_overlap <= 1.0:
            raise ValueError(f"min_overlap must be in [0, 1], got {self.min_overlap}")
        if self.max_growth <= 1.0:
            raise ValueError(f"max_growth must be > 1, got {self.max_growth}")
        if self.min_area < 1 or self.box_margin < 0 or self.box_margin_min < 0:
            raise ValueError("min_area must be >= 1 and margins >= 0")


@dataclass(frozen=True)
class SliceResult:
    """One object's mask on one slice (bit-packed to keep long volumes small).

    Attributes
    ----------
    packed:
        ``np.packbits`` of the ``(Y, X)`` bool mask.
    hw:
        ``(Y, X)``.
    score:
        Model confidence (predicted IoU).
    source:
        ``"prompt"`` (a user prompt on this slice) or ``"propagated"``.
    area:
        Mask pixels.
    """

    packed: np.ndarray
    hw: tuple[int, int]
    score: float
    source: str
    area: int
    low_res_logits: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_prediction(cls, pred: SlicePrediction, source: str) -> SliceResult:
        mask = np.asarray(pred.mask, dtype=bool)
        return cls(
            packed=np.packbits(mask, axis=None),
            hw=mask.shape,
            score=float(pred.score),
            source=source,
            area=int(mask.sum()),
            low_res_logits=pred.low_res_logits,
        )

    @property
    def mask(self) -> np.ndarray:
        """``(Y, X)`` bool mask."""
        n = self.hw[0] * self.hw[1]
        return np.unpackbits(self.packed, count=n).reshape(self.hw).astype(bool)


@dataclass
class ObjectState:
    """Everything known about one object in a session."""

    label: int
    name: str
    prompts: dict[int, SlicePrompt] = field(default_factory=dict)
    results: dict[int, SliceResult] = field(default_factory=dict)
    propagate: bool = True
    z_range: tuple[int, int] | None = None
    xy_box: tuple[float, float, float, float] | None = None

    @property
    def prompted_slices(self) -> list[int]:
        return sorted(self.prompts)


@dataclass(frozen=True)
class SessionEvent:
    """One user action in a session, in the order it happened (the correction history).

    Attributes
    ----------
    action:
        ``"prompt"`` (object ``label``'s prompt on ``slice`` became ``prompt``: a first
        prompt or a correction), ``"remove_prompt"``, ``"remove_object"``, ``"z_range"``
        (3D-box mode), ``"propagate"`` (``slice`` is the start slice of a re-propagation,
        ``None`` for the whole object) or ``"reset"`` (every object dropped; label 0).
    label:
        The object.
    slice:
        Slice index ``k`` of the action, where it has one.
    prompt:
        The object's whole prompt on that slice after the action (voxel indices of the
        slice: points ``(x, y)``, box ``(x0, y0, x1, y1)``; painted slices as a mask).
    detail:
        ``{"direction": ...}`` for propagation, ``{"z_range": [k0, k1]}`` for 3D boxes.
    """

    action: str
    label: int
    slice: int | None = None
    prompt: SlicePrompt | None = None
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class VolumeSession:
    """The typed state of one volume being segmented (SAM2's inference state, as a dataclass).

    ``history`` lists every prompt, correction, removal and propagation in order.
    """

    volume: Any
    window: Window
    embedder: SliceEmbedder
    objects: dict[int, ObjectState] = field(default_factory=dict)
    history: list[SessionEvent] = field(default_factory=list)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return self.volume.grid_shape

    def confidence(self) -> dict[str, dict[str, Any]]:
        """Per-object, per-slice confidence: ``{label: {"name", "slices": {k: score}}}``."""
        return {
            str(o.label): {
                "name": o.name,
                "slices": {str(k): round(r.score, 4) for k, r in sorted(o.results.items())},
                "prompted_slices": o.prompted_slices,
            }
            for o in self.objects.values()
        }


@dataclass(frozen=True)
class PropagationStep:
    """What one propagation step produced on one slice.

    Attributes
    ----------
    slice:
        Slice index ``k``.
    masks:
        ``{label: (Y, X) bool mask}`` for the objects updated on this slice.
    confidence:
        ``{label: predicted IoU}``.
    """

    slice: int
    masks: dict[int, np.ndarray]
    confidence: dict[int, float]
