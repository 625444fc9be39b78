"""3D promptable segmentation: SAM2-style verbs on a typed volume session.

``init_volume`` -> ``add_prompt`` (any slice, any object) -> ``propagate`` (a generator, both
directions) -> correct with ``add_prompt`` on any slice -> ``propagate`` again -> ``to_labels``.

Propagation carries each object slice to slice: the previous slice's mask gives the next
slice's box (with a small margin, clipped to the object's 3D box when one is set).
It stops when the mask vanishes, when the model's confidence falls below a threshold, or
when the new mask jumps away from the previous one (an anatomical end reached: the box
now frames a neighbouring structure). Between two prompted slices each slice is owned by
the nearer prompt, so a correction re-propagates only the slices it owns and keeps every
other slice's prompts and results.

Examples
--------
>>> from medsam.io import load_volume                                   # doctest: +SKIP
>>> vp = VolumePredictor("litemedsam", device="cpu")                    # doctest: +SKIP
>>> session = vp.init_volume(load_volume("ct.nii.gz"), window="soft_tissue")  # doctest: +SKIP
>>> vp.add_prompt(15, obj_id=1, box=(50, 40, 90, 80), name="liver")     # doctest: +SKIP
>>> for step in vp.propagate():                                          # doctest: +SKIP
...     print(step.slice, step.confidence)
>>> labels = vp.to_labels()   # (Z, Y, X) uint8                          # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medsam.embedding import SliceEmbedder
from medsam.errors import PromptError
from medsam.intensity import Window, WindowSpec
from medsam.io.volume import require_segmentable
from medsam.models import PromptableSam, load_model
from medsam.models.accel import InferenceConfig
from medsam.predictor import SlicePrediction, SlicePredictor
from medsam.prompts import (
    ObjectPrompts,
    PromptSet,
    SlicePrompt,
    box_from_mask,
    merge_slice_prompts,
    validate_slice_prompt,
)
from medsam.session import (
    ObjectState,
    PropagationConfig,
    PropagationStep,
    SessionEvent,
    SliceResult,
    VolumeSession,
)

__all__ = [
    "PropagationConfig",
    "SliceResult",
    "ObjectState",
    "VolumeSession",
    "PropagationStep",
    "VolumePredictor",
]

logger = logging.getLogger(__name__)

Direction = Literal["both", "forward", "backward"]


class VolumePredictor:
    """Segment objects through a volume from prompts on a few slices.

    Parameters
    ----------
    model:
        A registry name (default ``"litemedsam"``) or a loaded
        :class:`~medsam.models.PromptableSam`.
    checkpoint:
        Weights file for models that need one.
    device:
        ``None`` picks cuda, then mps, then cpu.
    batch_size:
        Slices per encoder call (default: 1 on CPU, 8 on GPU; see
        :func:`medsam.embedding.default_batch_size`).
    cache_dir:
        Optional on-disk embedding cache.
    config:
        Propagation settings.
    adapter:
        Optional fine-tuned adapter file (``medsam finetune``) loaded onto the model.
    inference:
        How the encoder and decoder run (:class:`~medsam.inference.InferenceConfig`):
        by default the fastest exact backend for the device (ONNX Runtime on the CPU);
        :data:`~medsam.inference.REFERENCE` is the model's own fp32 path.
    """

    def __init__(
        self,
        model: PromptableSam | str = "litemedsam",
        *,
        checkpoint: str | Path | None = None,
        device: Any = None,
        batch_size: int | None = None,
        cache_dir: str | Path | None = None,
        config: PropagationConfig | None = None,
        adapter: str | Path | None = None,
        inference: InferenceConfig | None = None,
    ) -> None:
        if isinstance(model, str):
            model = load_model(model, checkpoint=checkpoint, device=device, adapter=adapter)
        elif adapter is not None:
            from medsam.plugins import apply_adapter_file

            model = apply_adapter_file(model, adapter)
        self.model = model
        self.inference = inference or InferenceConfig()
        self.predictor = SlicePredictor(model, inference=self.inference)
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.config = config or PropagationConfig()
        self.session: VolumeSession | None = None

    # ------------------------------------------------------------------ session
    def init_volume(self, volume, window: WindowSpec | Window = None) -> VolumeSession:
        """Start a session on ``volume`` (any :class:`medsam.io.Volume`); nothing is embedded yet.

        Raises :class:`~medsam.errors.InputFileError` for slices under 8x8 pixels."""
        require_segmentable(volume)
        embedder = SliceEmbedder(
            self.model, volume, window, batch_size=self.batch_size, cache_dir=self.cache_dir,
            inference=self.inference,
        )
        self.session = VolumeSession(volume=volume, window=embedder.window, embedder=embedder)
        return self.session

    def _session(self) -> VolumeSession:
        if self.session is None:
            raise RuntimeError("no volume; call init_volume(volume) first")
        return self.session

    def reset(self) -> None:
        """Drop all objects, prompts and results; keep the volume and its embeddings."""
        s = self._session()
        s.objects.clear()
        s.history.append(SessionEvent("reset", 0))

    def close(self) -> None:
        """End the session: drop the volume, its embeddings and all results (frees their memory)."""
        self.session = None

    def remove_object(self, obj_id: int) -> None:
        """Delete an object with all its prompts and masks."""
        s = self._session()
        if s.objects.pop(int(obj_id), None) is not None:
            s.history.append(SessionEvent("remove_object", int(obj_id)))

    def add_object(self, obj_id: int, name: str | None = None) -> ObjectState:
        """Return object ``obj_id``, creating it without prompts if needed (renaming if ``name``)."""
        s = self._session()
        obj = s.objects.get(int(obj_id))
        if obj is None:
            label = ObjectPrompts(int(obj_id)).label  # validates 1..65535
            obj = ObjectState(label=label, name=name or f"object_{label}")
            s.objects[label] = obj
        elif name:
            obj.name = name
        return obj

    def remove_prompt(self, slice: int, obj_id: int) -> None:
        """Drop object ``obj_id``'s prompt on ``slice`` and that slice's mask (others are kept)."""
        s = self._session()
        obj = s.objects.get(int(obj_id))
        if obj is not None:
            if obj.prompts.pop(int(slice), None) is not None:
                s.history.append(SessionEvent("remove_prompt", obj.label, int(slice)))
            obj.results.pop(int(slice), None)

    # ------------------------------------------------------------------ prompts
    def add_prompt(
        self,
        slice: int,
        obj_id: int = 1,
        *,
        points: Sequence[Sequence[float]] | None = None,
        point_labels: Sequence[int] | None = None,
        box: Sequence[float] | None = None,
        mask: np.ndarray | None = None,
        name: str | None = None,
        clear: bool = False,
    ) -> SliceResult:
        """Add prompts for object ``obj_id`` on slice ``slice`` and segment that slice now.

        Points are ``(x, y)`` = (column, row) voxel indices; ``box`` is ``(x0, y0, x1, y1)``
        inclusive. Points add to the slice's earlier points (unless ``clear``); a box or mask
        replaces the earlier one. A correction is just another ``add_prompt``; call
        :meth:`propagate` with ``start_slice`` to re-propagate from it.

        Clicks without a box on a slice that already has a mask (propagated, painted, or
        the base of earlier clicks) correct that mask: it is kept in the prompt as
        ``mask`` and the clicks refine it (for LiteMedSAM, :mod:`medsam.click_prompts`).
        """
        s = self._session()
        prompt = SlicePrompt(
            slice,
            points=points or (),
            point_labels=point_labels or (),
            box=None if box is None else tuple(box),
            mask=mask,
        )
        obj = s.objects.get(int(obj_id))
        old = None if obj is None else obj.prompts.get(int(slice))
        if old is not None and not clear:
            prompt = merge_slice_prompts([old, prompt])[0]
        elif prompt.points and prompt.box is None and prompt.mask is None and obj is not None:
            # clicks without a box correct the slice's mask: the base they correct is
            # part of the prompt (so a replay starts from the same mask)
            base = old.mask if old is not None else (obj.results[slice].mask if slice in obj.results else None)
            if base is not None and base.any():
                prompt = replace(prompt, mask=base)
        validate_slice_prompt(prompt, s.grid_shape, f"object {name or obj_id}")
        obj = self.add_object(obj_id, name)
        obj.prompts[prompt.slice] = prompt
        s.history.append(SessionEvent("prompt", obj.label, prompt.slice, prompt))
        result = self._segment_prompted(obj, prompt.slice)
        return result

    def add_objects(self, prompts: PromptSet) -> None:
        """Add every object of a validated :class:`~medsam.prompts.PromptSet`."""
        s = self._session()
        for op in prompts.objects:
            obj = s.objects.setdefault(op.label, ObjectState(label=op.label, name=op.name))
            obj.name, obj.propagate, obj.z_range = op.name, op.propagate, op.z_range
            for p in merge_slice_prompts(op.prompts):
                validate_slice_prompt(p, s.grid_shape, f"object {op.name!r}")
                obj.prompts[p.slice] = p
                s.history.append(SessionEvent("prompt", obj.label, p.slice, p))
            if op.z_range is not None:
                s.history.append(SessionEvent("z_range", obj.label, detail={"z_range": list(op.z_range)}))
                boxes = [p.box for p in obj.prompts.values() if p.box is not None]
                if boxes:
                    b = np.array(boxes)
                    obj.xy_box = (b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max())
            for k in obj.prompted_slices:
                self._segment_prompted(obj, k)

    def set_box_3d(
        self, obj_id: int, box: Sequence[float], z_range: tuple[int, int], *, key_slice: int | None = None,
        name: str | None = None,
    ) -> SliceResult:
        """3D-box mode: a box ``(x0, y0, x1, y1)`` plus an inclusive slice range ``(k0, k1)``.

        The box is applied on ``key_slice`` (default: the middle of the range); propagation
        stays inside the range and inside the box's footprint.
        """
        k0, k1 = int(z_range[0]), int(z_range[1])
        z = self._session().grid_shape[0]
        if not (0 <= k0 <= k1 < z):
            raise PromptError(f"z_range {list(z_range)} is out of range or inverted (slices 0..{z - 1})")
        key = (k0 + k1) // 2 if key_slice is None else int(key_slice)
        if not k0 <= key <= k1:
            raise PromptError(f"key slice {key} lies outside z_range {[k0, k1]}")
        result = self.add_prompt(key, obj_id, box=box, name=name, clear=True)
        s = self._session()
        obj = s.objects[int(obj_id)]
        obj.z_range = (k0, k1)
        s.history.append(SessionEvent("z_range", obj.label, key, detail={"z_range": [k0, k1]}))
        obj.xy_box = tuple(float(v) for v in box)
        return result

    def _segment_prompted(self, obj: ObjectState, k: int) -> SliceResult:
        s = self._session()
        p = obj.prompts[k]
        self._set_slice(k)
        mask_input = None
        if p.mask is not None:
            mask_input = self._mask_to_logits(p.mask)
        pred = self.predictor.predict(
            points=list(p.points) or None,
            point_labels=list(p.point_labels) or None,
            box=p.box,
            mask_input=mask_input,
        )
        flat = self._flat_under_prompt(k, p.box)
        if flat is not None:
            logger.warning(
                "slice %d has no contrast under the prompt (every voxel windows to %.3g in %s): "
                "the mask there is a guess, and its confidence is 0", k, flat, s.window.key,
            )
            pred = replace(pred, score=0.0, scores=np.zeros_like(pred.scores))
        if p.mask is not None and p.box is None and not p.points:
            # A painted mask is the user's answer for this slice: keep it as is.
            pred = SlicePrediction(
                mask=p.mask.copy(), score=1.0, low_res_logits=pred.low_res_logits,
                masks=p.mask[None].copy(), scores=np.ones(1, np.float32),
            )
        result = SliceResult.from_prediction(pred, "prompt")
        obj.results[k] = result
        s.objects[obj.label] = obj
        return result

    def _flat_under_prompt(self, k: int, box: Sequence[float] | None) -> float | None:
        """The one windowed value of slice ``k`` under ``box`` (voxel ``(x0, y0, x1, y1)``;
        the whole slice for clicks) when the image has no contrast there, else ``None``."""
        image = self._session().embedder.window_slices([k])[0]
        if box is not None:
            h, w = image.shape[:2]
            x0, y0 = (max(0, int(np.floor(v))) for v in box[:2])
            x1, y1 = min(w, int(np.ceil(box[2])) + 1), min(h, int(np.ceil(box[3])) + 1)
            if x1 > x0 and y1 > y0:
                image = image[y0:y1, x0:x1]
        lo, hi = float(image.min()), float(image.max())
        return lo if hi - lo < 1e-6 else None

    def _mask_to_logits(self, mask: np.ndarray) -> np.ndarray:
        """A ``(Y, X)`` bool mask as ``(1, 256, 256)`` pseudo-logits in the model frame."""
        import torch

        with torch.inference_mode():
            t = self.model.mask_to_logits(torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None])
        return t[0].cpu().numpy()

    def _set_slice(self, k: int, direction: int = 1) -> None:
        s = self._session()
        emb = s.embedder.get(k, direction)
        info = s.embedder.info
        self.predictor.set_embedding(emb, info.original_hw, info.input_hw)

    # --------------------------------------------------------------- propagation
    def _segments(self, obj: ObjectState, start_slice: int | None) -> list[tuple[int, int, int]]:
        """``(seed, stop, step)`` runs: from a prompted slice to the midpoint with the next one."""
        z = self._session().grid_shape[0]
        lo, hi = (0, z - 1) if obj.z_range is None else obj.z_range
        seeds = obj.prompted_slices
        runs: list[tuple[int, int, int]] = []
        for i, sd in enumerate(seeds):
            if start_slice is not None and sd != start_slice:
                continue
            above = seeds[i + 1] if i + 1 < len(seeds) else None
            below = seeds[i - 1] if i > 0 else None
            up_end = hi if above is None else min(hi, (sd + above) // 2)
            down_end = lo if below is None else max(lo, (below + sd) // 2 + 1)
            runs.append((sd, up_end, 1))
            runs.append((sd, down_end, -1))
        return runs

    def _next_box(self, obj: ObjectState, prev: np.ndarray) -> tuple[float, float, float, float] | None:
        b = box_from_mask(prev)
        if b is None:
            return None
        h, w = prev.shape
        x0, y0, x1, y1 = b
        mx = max(self.config.box_margin_min, self.config.box_margin * (x1 - x0 + 1))
        my = max(self.config.box_margin_min, self.config.box_margin * (y1 - y0 + 1))
        x0, y0, x1, y1 = x0 - mx, y0 - my, x1 + mx, y1 + my
        if obj.xy_box is not None:
            bx0, by0, bx1, by1 = obj.xy_box
            x0, y0, x1, y1 = max(x0, bx0), max(y0, by0), min(x1, bx1), min(y1, by1)
        x0, y0 = max(0.0, x0), max(0.0, y0)
        x1, y1 = min(w - 1.0, x1), min(h - 1.0, y1)
        if x1 < x0 or y1 < y0:
            return None
        return (x0, y0, x1, y1)

    def _accept(self, prev: SliceResult, new: SliceResult, new_mask: np.ndarray, prev_mask: np.ndarray) -> str | None:
        """Why propagation should stop at this slice, or None to continue."""
        cfg = self.config
        if new.area < cfg.min_area:
            return "mask vanished"
        if new.score < cfg.score_threshold:
            return f"confidence {new.score:.2f} < {cfg.score_threshold}"
        if new.score < prev.score - cfg.max_score_drop:
            return f"confidence fell from {prev.score:.2f} to {new.score:.2f}"
        inter = float(np.logical_and(new_mask, prev_mask).sum())
        if inter < cfg.min_overlap * new.area and inter < cfg.min_overlap * prev.area:
            return "mask moved off the previous slice's object"
        if prev.area >= cfg.growth_min_area and new.area > cfg.max_growth * prev.area:
            return f"area grew {new.area / max(prev.area, 1):.1f}x (leak)"
        return None

    def _run(self, obj: ObjectState, seed: int, end: int, step: int) -> Iterator[tuple[int, SliceResult]]:
        """Carry ``obj`` from ``seed`` towards ``end`` (inclusive); yields new results."""
        for k in range(seed + step, end + step, step) if seed != end else ():
            if k in obj.prompts:
                return
            obj.results.pop(k, None)
        prev = obj.results.get(seed)
        if prev is None:
            prev = self._segment_prompted(obj, seed)
        prev_mask = prev.mask
        for k in range(seed + step, end + step, step) if seed != end else ():
            box = self._next_box(obj, prev_mask)
            if box is None:
                logger.debug("object %s: stop before slice %d (empty mask)", obj.name, k)
                return
            if self._flat_under_prompt(k, box) is not None:
                logger.info("object %s: stop before slice %d: no contrast under the box", obj.name, k)
                return
            self._set_slice(k, step)
            mask_input = prev.low_res_logits if self.config.use_mask_input else None
            pred = self.predictor.predict(box=box, mask_input=mask_input)
            new = SliceResult.from_prediction(pred, "propagated")
            why = self._accept(prev, new, pred.mask, prev_mask)
            if why is not None:
                logger.debug("object %s: stop at slice %d: %s", obj.name, k, why)
                return
            if not self.config.use_mask_input:
                new = SliceResult(new.packed, new.hw, new.score, new.source, new.area)
            obj.results[k] = new
            yield k, new
            prev, prev_mask = new, pred.mask

    def propagate(
        self,
        direction: Direction = "both",
        *,
        obj_ids: Sequence[int] | None = None,
        start_slice: int | None = None,
    ) -> Iterator[PropagationStep]:
        """Propagate objects through the volume from their prompted slices.

        Parameters
        ----------
        direction:
            ``"both"``, ``"forward"`` (increasing k) or ``"backward"``.
        obj_ids:
            Objects to propagate (default: all with ``propagate=True``).
        start_slice:
            Only re-propagate from this prompted slice (after a correction there); other
            slices keep their results.

        Yields
        ------
        PropagationStep
            One per slice and object as soon as its mask is ready.
        """
        if direction not in ("both", "forward", "backward"):
            raise ValueError(f"direction must be 'both', 'forward' or 'backward', got {direction!r}")
        s = self._session()
        ids = list(s.objects) if obj_ids is None else [int(i) for i in obj_ids]
        for i in ids:
            if i not in s.objects:
                raise PromptError(f"unknown object id {i}; known: {sorted(s.objects)}")
        steps = {"both": (1, -1), "forward": (1,), "backward": (-1,)}[direction]
        for i in ids:
            obj = s.objects[i]
            if not obj.propagate and obj_ids is None:
                continue
            if start_slice is not None and start_slice not in obj.prompts:
                raise PromptError(f"object {obj.name!r} has no prompt on slice {start_slice}")
            s.history.append(SessionEvent("propagate", obj.label, start_slice, detail={"direction": direction}))
            for seed, end, step in self._segments(obj, start_slice):
                if step not in steps:
                    continue
                for k, res in self._run(obj, seed, end, step):
                    yield PropagationStep(slice=k, masks={obj.label: res.mask}, confidence={obj.label: res.score})

    def run(self, direction: Direction = "both") -> VolumeSession:
        """Propagate everything to completion (the non-generator form)."""
        for _ in self.propagate(direction):
            pass
        return self._session()

    # ------------------------------------------------------------------- output
    def to_labels(self, dtype: Any = None, slices: Sequence[int] | None = None) -> np.ndarray:
        """``(Z, Y, X)`` label map; where objects overlap, the more confident one wins.

        With ``slices``, returns ``(len(slices), Y, X)`` for just those slices (cheap
        re-rendering after an edit on a few slices).
        """
        s = self._session()
        max_label = max((o.label for o in s.objects.values()), default=0)
        dtype = dtype or (np.uint8 if max_label <= 255 else np.uint16)
        ks = list(range(s.grid_shape[0])) if slices is None else [int(k) for k in slices]
        labels = np.zeros((len(ks), *s.grid_shape[1:]), dtype=dtype)
        for row, k in enumerate(ks):
            items = [(o.results[k].score, o.label) for o in s.objects.values() if k in o.results]
            for _, label in sorted(items):  # ascending confidence: the most confident paints last
                labels[row][s.objects[label].results[k].mask] = label
        return labels
