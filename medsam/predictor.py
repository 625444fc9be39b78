"""Promptable 2D segmentation of one slice: ``set_image`` once, then ``predict`` many times.

Prompts use SAM's convention on the ORIGINAL slice: a point is ``(x, y)`` =
``(column, row)`` with label 1 (foreground) or 0 (background); a box is
``(x0, y0, x1, y1)`` in inclusive pixel indices. They are validated here, before any
model work, and mapped into the model frame by the model's
:class:`~medsam.models.frame.FrameTransform` (box corners scale like points, as
``ResizeLongestSide.apply_boxes``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from medsam.click_prompts import ClickConfig, answers_points, translate_clicks
from medsam.errors import PromptError
from medsam.models.accel import Engine, InferenceConfig, prepare
from medsam.models.base import PromptableSam
from medsam.models.device import DeviceLike, select_device
from medsam.models.frame import FrameTransform
from medsam.models.registry import load_model
from medsam.prompts import as_float_array, validate_box, validate_points

__all__ = ["SlicePrediction", "SlicePredictor", "embed_images"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlicePrediction:
    """Masks predicted on one slice, at the slice's original resolution.

    Attributes
    ----------
    mask
        ``(H, W)`` bool, the best mask (highest ``score``).
    score
        The model's predicted IoU of ``mask``.
    low_res_logits
        ``(1, 256, 256)`` float32 logits of ``mask`` in the model frame; pass as
        ``mask_input`` to refine or propagate.
    masks
        ``(M, H, W)`` bool, every mask returned (M = 3 with ``multimask=True``, else 1).
    scores
        ``(M,)`` float32 predicted IoU of each of ``masks``.
    """

    mask: np.ndarray
    score: float
    low_res_logits: np.ndarray
    masks: np.ndarray
    scores: np.ndarray

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.masks.ndim != 3 or self.masks.shape[1:] != self.mask.shape:
            raise ValueError(
                f"mask {self.mask.shape} and masks {self.masks.shape} must be (H, W) and (M, H, W)"
            )
        if self.scores.shape != (self.masks.shape[0],):
            raise ValueError(
                f"scores {self.scores.shape} must have one entry per mask ({self.masks.shape[0]})"
            )
        if self.low_res_logits.ndim != 3 or self.low_res_logits.shape[0] != 1:
            raise ValueError(f"low_res_logits must be (1, h, w), got {self.low_res_logits.shape}")


def embed_images(
    model: PromptableSam, images: torch.Tensor, inference: InferenceConfig | None = None
) -> torch.Tensor:
    """Image embeddings for inference: preprocess and encode without autograd.

    Parameters
    ----------
    model
        Any registry model.
    images
        ``(B, C, H, W)`` float in [0, 1], C = 1 or 3, all slices of one size.
    inference
        How the encoder runs (:class:`~medsam.inference.InferenceConfig`; default: the
        fastest exact backend for the device). :data:`~medsam.inference.REFERENCE` is the
        model's own fp32 ``encode``.

    Returns
    -------
    torch.Tensor
        ``(B, 256, 64, 64)`` on the model's device, in the compute dtype (float32, or
        bfloat16 on the bf16 path).
    """
    with torch.inference_mode():
        x = model.preprocess(images)
        return prepare(model, inference, x.device).encode(x)


def _image_tensor(image: np.ndarray) -> torch.Tensor:
    """``(H, W)`` or ``(H, W, 3)`` array, float in [0, 1] or uint8, to a ``(1, C, H, W)`` float32 tensor."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, not {type(image).__name__}")
    if (
        image.ndim not in (2, 3)
        or (image.ndim == 3 and image.shape[2] != 3)
        or min(image.shape[:2]) < 1
    ):
        raise ValueError(f"image must have shape (H, W) or (H, W, 3), got {image.shape}")
    if image.dtype == np.uint8:
        array = image.astype(np.float32) / 255.0
    elif np.issubdtype(image.dtype, np.floating):
        array = image.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise ValueError("image contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(
                f"float image values span [{lo:g}, {hi:g}] but must lie in [0, 1]; "
                "window it first (medsam.apply_window) or pass uint8"
            )
        array = np.clip(array, 0.0, 1.0)
    else:
        raise TypeError(f"image dtype must be float (values in [0, 1]) or uint8, not {image.dtype}")
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    tensor = tensor[None] if tensor.ndim == 2 else tensor.permute(2, 0, 1)
    return tensor[None]


def _check_mask_input(mask_input: object, mask_hw: tuple[int, int]) -> np.ndarray:
    """``(1, h, w)`` float32 low-res logits."""
    if isinstance(mask_input, torch.Tensor):
        mask_input = mask_input.detach().cpu().numpy()
    mask = as_float_array(mask_input, "mask_input").astype(np.float32)
    if mask.shape not in (mask_hw, (1, *mask_hw), (1, 1, *mask_hw)):
        raise PromptError(
            f"mask_input must be low-res logits of shape (1, {mask_hw[0]}, {mask_hw[1]}), "
            f"got {mask.shape}"
        )
    if not np.isfinite(mask).all():
        raise PromptError("mask_input contains NaN or infinite values")
    return mask.reshape(1, *mask_hw)


def _validate_prompts(
    hw: tuple[int, int],
    points: object,
    point_labels: object,
    box: object,
    mask_input: object,
    mask_hw: tuple[int, int],
) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Check prompts against an ``(H, W)`` slice before any model work.

    Returns points ``(N, 2)``, labels ``(N,)``, box ``(4,)`` and mask ``(1, h, w)``, each
    None when not given; raises :class:`PromptError` with a one-line reason otherwise.
    """
    if points is None and point_labels is None and box is None and mask_input is None:
        raise PromptError("empty prompt: give points (with point_labels), a box or a mask_input")
    pts = labels = None
    if points is not None or point_labels is not None:
        pts, labels = validate_points(points, point_labels, hw)
    bbox = None if box is None else np.asarray(validate_box(box, hw))
    mask = None if mask_input is None else _check_mask_input(mask_input, mask_hw)
    return pts, labels, bbox, mask


def _batch_of_one(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """A numpy array as a tensor with a leading batch axis of 1 (float32 unless integer)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    return tensor.to(device)[None]


class SlicePredictor:
    """Segment one 2D slice from point, box and mask prompts (segment-anything's small API).

    Parameters
    ----------
    model
        A :class:`~medsam.models.PromptableSam` or a registry name (default LiteMedSAM).
    checkpoint
        Weights file when ``model`` is a name (required for SAM/MedSAM).
    device
        ``None`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"mps"``; with a
        model instance, it is moved there.
    inference
        How ``set_image`` runs the encoder (:class:`~medsam.inference.InferenceConfig`);
        the default is the fast path.
    clicks
        How point prompts are answered. ``"auto"``: by the model when it was trained with
        points, else (LiteMedSAM without a point-trained adapter) as boxes chosen from the
        clicks (:mod:`medsam.click_prompts`). ``"boxes"`` or ``"model"`` force either way.
    click_config
        Settings of the click translation (:class:`~medsam.click_prompts.ClickConfig`).

    Examples
    --------
    >>> import numpy as np
    >>> predictor = SlicePredictor("litemedsam", device="cpu")
    >>> predictor.set_image(np.random.rand(120, 160).astype(np.float32))  # (H, W) in [0, 1]
    >>> result = predictor.predict(box=(20, 30, 90, 100))  # (x0, y0, x1, y1), inclusive
    >>> result.mask.shape, result.low_res_logits.shape
    ((120, 160), (1, 256, 256))
    """

    def __init__(
        self,
        model: PromptableSam | str = "litemedsam",
        *,
        checkpoint: str | Path | None = None,
        device: DeviceLike = None,
        inference: InferenceConfig | None = None,
        clicks: Literal["auto", "boxes", "model"] = "auto",
        click_config: ClickConfig | None = None,
    ) -> None:
        if clicks not in ("auto", "boxes", "model"):
            raise ValueError(f"clicks must be 'auto', 'boxes' or 'model', got {clicks!r}")
        if isinstance(model, str):
            model = load_model(model, checkpoint=checkpoint, device=device)
        elif isinstance(model, PromptableSam):
            if checkpoint is not None:
                raise ValueError(
                    "checkpoint= is only used with a model name; this model already has weights"
                )
            if device is not None:
                model = model.to(select_device(device))
        else:
            raise TypeError(
                f"model must be a PromptableSam or a registry name, not {type(model).__name__}"
            )
        self.model = model
        self.inference = inference or InferenceConfig()
        self.clicks = clicks
        self.click_config = click_config or ClickConfig()
        self.reset_image()

    # ------------------------------------------------------------------ image state
    @property
    def is_image_set(self) -> bool:
        """Whether an image (or its embedding) has been set."""
        return self._embedding is not None

    @property
    def frame(self) -> FrameTransform | None:
        """The frame transform of the current image, or None."""
        return self._frame

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self._embedding: torch.Tensor | None = None
        self._frame: FrameTransform | None = None
        self._engine: Engine | None = None

    def set_image(self, image: np.ndarray) -> None:
        """Compute and keep the embedding of one slice.

        Parameters
        ----------
        image
            ``(H, W)`` float in [0, 1] (already windowed), or ``(H, W, 3)`` RGB, float in
            [0, 1] or uint8 (divided by 255). Rows then columns.
        """
        tensor = _image_tensor(image)
        if self.model.training:
            logger.warning(
                "%s is in training mode; call model.eval() for inference", self.model.name
            )
        embedding = embed_images(self.model, tensor, self.inference).float()
        self._set(embedding, self.model.frame_transform(tensor.shape[-2:]))

    def set_embedding(
        self,
        embedding: torch.Tensor,
        original_hw: tuple[int, int],
        input_hw: tuple[int, int] | None = None,
    ) -> None:
        """Use a precomputed embedding (e.g. from a cache or a batch) instead of encoding.

        Parameters
        ----------
        embedding
            ``(1, 256, 64, 64)`` or ``(256, 64, 64)`` from this model's ``encode``.
        original_hw
            ``(H, W)`` of the slice it was computed from.
        input_hw
            ``(h, w)`` of the resized slice inside the model input; checked against the
            model's frame for ``original_hw`` when given.
        """
        frame = self.model.frame_transform(original_hw)
        if input_hw is not None and tuple(int(v) for v in input_hw) != frame.input_hw:
            raise ValueError(
                f"input_hw {tuple(input_hw)} does not match {self.model.name}'s frame {frame.input_hw} "
                f"for an image of {frame.original_hw}; the embedding comes from another model or size"
            )
        expected = (1, self.model.embed_dim, *self.model.embedding_hw)
        if embedding.ndim == 3:
            embedding = embedding[None]
        if tuple(embedding.shape) != expected:
            raise ValueError(f"embedding must have shape {expected}, got {tuple(embedding.shape)}")
        self._set(embedding.detach().to(self.model.device, torch.float32), frame)

    def _set(self, embedding: torch.Tensor, frame: FrameTransform) -> None:
        self._embedding = embedding
        self._frame = frame
        # Bound per image: the model's weights are checked here, not on every click.
        self._engine = prepare(self.model, self.inference)

    def get_image_embedding(self) -> torch.Tensor:
        """The current ``(1, 256, 64, 64)`` embedding."""
        if self._embedding is None:
            raise RuntimeError("no image is set; call set_image() or set_embedding() first")
        return self._embedding

    # ------------------------------------------------------------------ prediction
    def predict(
        self,
        points: np.ndarray | list | None = None,
        point_labels: np.ndarray | list | None = None,
        box: np.ndarray | list | tuple | None = None,
        mask_input: np.ndarray | torch.Tensor | None = None,
        multimask: bool = False,
    ) -> SlicePrediction:
        """Predict masks on the current slice.

        Parameters
        ----------
        points
            ``(N, 2)`` ``(x, y)`` = (column, row) pixel coordinates on the original slice.
        point_labels
            ``(N,)`` 1 foreground, 0 background.
        box
            ``(x0, y0, x1, y1)`` inclusive pixel indices on the original slice.
        mask_input
            ``(1, 256, 256)`` or ``(256, 256)`` low-res logits of an earlier prediction.
        multimask
            Return SAM's 3 candidate masks; ``mask`` is the one with the highest score.
            Clicks answered as boxes (see ``clicks``) return one mask.

        Raises
        ------
        RuntimeError
            No image is set.
        PromptError
            An empty, malformed or out-of-image prompt.
        """
        if self._embedding is None or self._frame is None or self._engine is None:
            raise RuntimeError(
                "no image is set; call set_image() or set_embedding() before predict()"
            )
        frame = self._frame
        pts, labels, bbox, mask = _validate_prompts(
            frame.original_hw, points, point_labels, box, mask_input, self.model.mask_input_hw
        )
        # The one conversion into the model frame; each prompt gets a batch axis of 1.
        device = self.model.device
        as_batch = functools.partial(_batch_of_one, device=device)
        if pts is not None and self.translates_clicks:
            return self._predict_clicks(pts, labels, bbox, mask, as_batch)
        with torch.inference_mode():
            low_res, iou = self._engine.decode(
                self._embedding,
                points=None if pts is None else as_batch(frame.points_to_model(pts)),
                point_labels=None if labels is None else as_batch(labels),
                boxes=None if bbox is None else as_batch(frame.boxes_to_model(bbox)),
                mask_input=None if mask is None else as_batch(mask),
                multimask=multimask,
            )
            logits = self.model.postprocess(low_res, frame.input_hw, frame.original_hw)
            masks = (logits[0] > 0.0).cpu().numpy()
            scores = iou[0].float().cpu().numpy().astype(np.float32)
            low_res_np = low_res[0].float().cpu().numpy().astype(np.float32)
        best = int(np.argmax(scores))
        return SlicePrediction(
            mask=masks[best],
            score=float(scores[best]),
            low_res_logits=low_res_np[best : best + 1],
            masks=masks,
            scores=scores,
        )

    @property
    def translates_clicks(self) -> bool:
        """Whether point prompts are answered as boxes (see the ``clicks`` parameter)."""
        return self.clicks == "boxes" or (self.clicks == "auto" and not answers_points(self.model))

    def _predict_clicks(self, pts, labels, bbox, mask, as_batch) -> SlicePrediction:
        """Clicks (with an optional box or earlier mask) answered by a box prompt."""
        frame = self._frame

        def decode(box: np.ndarray) -> tuple[np.ndarray, float]:
            low_res, iou = self._engine.decode(self._embedding, boxes=as_batch(box.astype(np.float32)))
            return low_res[0, 0].float().cpu().numpy(), float(iou[0, 0])

        with torch.inference_mode():
            res = translate_clicks(
                decode, self._embedding[0], frame.points_to_model(pts), labels,
                image_size=self.model.image_size, input_hw=frame.input_hw,
                box=None if bbox is None else frame.boxes_to_model(bbox),
                prior=None if mask is None else mask[0], config=self.click_config,
            )
            low_res = torch.from_numpy(res.low_res_logits)[None].to(self.model.device)
            logits = self.model.postprocess(low_res, frame.input_hw, frame.original_hw)
            best = (logits[0, 0] > 0.0).cpu().numpy()
        return SlicePrediction(
            mask=best, score=res.iou, low_res_logits=res.low_res_logits, masks=best[None],
            scores=np.array([res.iou], np.float32),
        )
