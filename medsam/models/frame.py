"""The one conversion between pixel coordinates of a slice and a model's input frame.

A SAM-family model sees a slice resized into its square input of ``S x S`` pixels
(``S`` = 256 for LiteMedSAM, 1024 for SAM and MedSAM). Prompts given on the original
slice must be scaled the same way as the image. :class:`FrameTransform` does that, for
both resize modes, and nothing else in medsam converts coordinates into the model frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeVar

import numpy as np
import torch

__all__ = ["FrameTransform", "ResizeMode"]

ResizeMode = Literal["longest_side", "square"]
ArrayT = TypeVar("ArrayT", np.ndarray, torch.Tensor)


def _scale_xy(coords: ArrayT, fx: float, fy: float) -> ArrayT:
    """Return ``coords`` (shape ``(..., 2)``, ``(x, y)`` order) with x scaled by fx, y by fy."""
    if isinstance(coords, torch.Tensor):
        out = coords.clone() if coords.is_floating_point() else coords.to(torch.float32)
    else:
        out = np.array(coords, dtype=np.float64, copy=True)
    if tuple(out.shape[-1:]) != (2,):
        raise ValueError(
            f"coordinates must have shape (..., 2) in (x, y) order, got {tuple(out.shape)}"
        )
    if isinstance(out, torch.Tensor):
        out[..., 0] = out[..., 0] * fx
        out[..., 1] = out[..., 1] * fy
        return out
    out[..., 0] *= fx
    out[..., 1] *= fy
    return out


@dataclass(frozen=True)
class FrameTransform:
    """Map ``(x, y)`` pixel coordinates between an ``H x W`` slice and the ``S x S`` model frame.

    The image is resized to ``input_hw`` (then zero-padded at the bottom/right to
    ``S x S``). A coordinate is scaled by ``input_w / W`` along x and ``input_h / H``
    along y, exactly as ``segment_anything.utils.transforms.ResizeLongestSide.apply_coords``
    does. For the longest-side resize this is ``S / max(H, W)`` up to the rounding of the
    shorter side; for the square resize of MedSAM it is ``S / W`` and ``S / H``.

    Boxes ``(x0, y0, x1, y1)`` in inclusive pixel indices map corner by corner with the
    same scale factors (as ``ResizeLongestSide.apply_boxes``); the model's prompt encoder
    then adds 0.5 to reach the pixel centre, as SAM was trained.

    Parameters
    ----------
    original_hw
        ``(H, W)`` of the slice, rows then columns.
    input_hw
        ``(h, w)`` of the resized image before padding, at most ``(S, S)``.
    image_size
        ``S``, the side of the square model input.

    Examples
    --------
    >>> frame = FrameTransform.for_image((512, 256), image_size=256, resize="longest_side")
    >>> frame.input_hw
    (256, 128)
    >>> frame.points_to_model(np.array([[100.0, 500.0]])).tolist()
    [[50.0, 250.0]]
    """

    original_hw: tuple[int, int]
    input_hw: tuple[int, int]
    image_size: int

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "original_hw", (int(self.original_hw[0]), int(self.original_hw[1]))
        )
        object.__setattr__(self, "input_hw", (int(self.input_hw[0]), int(self.input_hw[1])))
        if min(self.original_hw) < 1:
            raise ValueError(
                f"original_hw must be positive (rows, columns), got {self.original_hw}"
            )
        if min(self.input_hw) < 1 or max(self.input_hw) > self.image_size:
            raise ValueError(
                f"input_hw {self.input_hw} must be positive and fit in the {self.image_size}x{self.image_size} model input"
            )

    @classmethod
    def for_image(
        cls, original_hw: tuple[int, int], image_size: int, resize: ResizeMode
    ) -> FrameTransform:
        """Frame of an ``(H, W)`` slice for a model with input side ``image_size``.

        ``resize="longest_side"`` keeps the aspect ratio (SAM, LiteMedSAM) and rounds the
        shorter side like ``ResizeLongestSide.get_preprocess_shape``; ``resize="square"``
        stretches to ``S x S`` (MedSAM ViT-B).
        """
        h, w = int(original_hw[0]), int(original_hw[1])
        if h < 1 or w < 1:
            raise ValueError(f"image shape must be positive (rows, columns), got {(h, w)}")
        if resize == "square":
            return cls((h, w), (image_size, image_size), image_size)
        if resize != "longest_side":
            raise ValueError(f"resize must be 'longest_side' or 'square', got {resize!r}")
        scale = image_size / max(h, w)
        return cls((h, w), (int(h * scale + 0.5), int(w * scale + 0.5)), image_size)

    @property
    def scale_xy(self) -> tuple[float, float]:
        """``(fx, fy)``: model-frame units per original pixel along x (columns) and y (rows)."""
        return self.input_hw[1] / self.original_hw[1], self.input_hw[0] / self.original_hw[0]

    def points_to_model(self, points: ArrayT) -> ArrayT:
        """Original ``(x, y)`` pixel coordinates, shape ``(..., 2)``, to the model frame."""
        fx, fy = self.scale_xy
        return _scale_xy(points, fx, fy)

    def points_from_model(self, points: ArrayT) -> ArrayT:
        """Model-frame ``(x, y)`` coordinates, shape ``(..., 2)``, back to original pixels."""
        fx, fy = self.scale_xy
        return _scale_xy(points, 1.0 / fx, 1.0 / fy)

    def boxes_to_model(self, boxes: ArrayT) -> ArrayT:
        """Original boxes ``(x0, y0, x1, y1)``, shape ``(..., 4)``, to the model frame."""
        corners = _box_corners(boxes)
        return self.points_to_model(corners).reshape(tuple(corners.shape[:-2]) + (4,))

    def boxes_from_model(self, boxes: ArrayT) -> ArrayT:
        """Model-frame boxes ``(x0, y0, x1, y1)``, shape ``(..., 4)``, back to original pixels."""
        corners = _box_corners(boxes)
        return self.points_from_model(corners).reshape(tuple(corners.shape[:-2]) + (4,))


def _box_corners(boxes: ArrayT) -> ArrayT:
    """``(..., 4)`` boxes as ``(..., 2, 2)`` corners ``[[x0, y0], [x1, y1]]``."""
    if not isinstance(boxes, torch.Tensor):
        boxes = np.asarray(boxes, dtype=np.float64)
    if tuple(boxes.shape[-1:]) != (4,):
        raise ValueError(
            f"boxes must have shape (..., 4) as (x0, y0, x1, y1), got {tuple(boxes.shape)}"
        )
    return boxes.reshape(tuple(boxes.shape[:-1]) + (2, 2))
