"""``SamNetwork``: any registry model as a MONAI-style ``nn.Module`` over images and per-object prompts."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from medsam.inference import InferenceConfig
from medsam.models import PromptableSam, load_model
from medsam.models.accel import prepare

__all__ = ["SamNetwork", "SamNetworkOutput", "adapters_available"]

logger = logging.getLogger(__name__)


def adapters_available() -> bool:
    """Whether an adapter loader (the ``adapters`` package, train extra) is installed."""
    from medsam.plugins import adapter_loader

    try:
        adapter_loader()
    except LookupError:
        return False
    return True


class SamNetworkOutput(NamedTuple):
    """Result of :meth:`SamNetwork.predict`.

    Attributes
    ----------
    logits:
        ``[N, K, H, W]`` mask logits on the input grid (``> 0`` is the mask).
    iou_scores:
        ``[N, K]`` the model's predicted IoU of each mask.
    low_res_logits:
        ``[N, K, 256, 256]`` model-frame logits, usable as ``mask_input``.
    """

    logits: torch.Tensor
    iou_scores: torch.Tensor
    low_res_logits: torch.Tensor


class SamNetwork(nn.Module):
    """A SAM-family registry model as a plain, trainable ``nn.Module`` with per-object prompts.

    Maps images ``[N, C, H, W]`` plus ``K`` prompts per image to ``[N, K, H, W]`` logits.
    Each image is encoded once and its ``K`` objects are decoded together. Nothing in
    :meth:`forward` disables autograd, so it can be fine-tuned like any MONAI network
    (call ``.train()``; the registry returns models in ``eval()`` mode).

    Parameters
    ----------
    model:
        Registry name (``"litemedsam"``, ``"medsam_vit_b"``, ``"sam_vit_b"`` ...) or an
        already loaded :class:`~medsam.models.PromptableSam`.
    checkpoint:
        Weights file, required for the SAM/MedSAM models (LiteMedSAM's are bundled).
    device:
        ``None`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"mps"``.
    adapter:
        Path of fine-tuned adapter weights, applied with ``adapters.load_adapter(model, path)``
        when the ``adapters`` package provides it; ``NotImplementedError`` otherwise.
    backend, precision:
        The :class:`~medsam.inference.InferenceConfig` used when no gradient is recorded
        (``torch.no_grad``/``inference_mode``, as MONAI inferers run); with gradients the
        model's own differentiable path runs.

    Examples
    --------
    >>> import torch
    >>> net = SamNetwork("litemedsam", device="cpu")                 # doctest: +SKIP
    >>> images = torch.rand(2, 1, 96, 128)                           # [N, C, H, W] in [0, 1]
    >>> boxes = torch.tensor([[[10., 20., 60., 70.], [70., 10., 120., 50.]]] * 2)  # [N, K, 4]
    >>> net(images, boxes=boxes).shape                               # doctest: +SKIP
    torch.Size([2, 2, 96, 128])
    """

    def __init__(
        self,
        model: str | PromptableSam = "litemedsam",
        checkpoint: str | Path | None = None,
        device: str | torch.device | None = None,
        adapter: str | Path | None = None,
        backend: str = "auto",
        precision: str = "fp32",
    ) -> None:
        super().__init__()
        self.inference = InferenceConfig(backend=backend, precision=precision)
        self.model_name = model if isinstance(model, str) else model.name
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        self.adapter = None if adapter is None else str(adapter)
        if isinstance(model, str):
            model = load_model(model, checkpoint=checkpoint, device=device)
        elif isinstance(model, PromptableSam):
            if checkpoint is not None:
                raise ValueError("checkpoint= is only used with a model name; this model already has weights")
            if device is not None:
                from medsam.models import select_device

                model = model.to(select_device(device))
        else:
            raise TypeError(f"model must be a registry name or a PromptableSam, not {type(model).__name__}")
        if adapter is not None:
            from medsam.plugins import apply_adapter_file

            model = apply_adapter_file(model, adapter)
            logger.info("applied adapter %s to %s", adapter, self.model_name)
        self.model: PromptableSam = model

    @property
    def device(self) -> torch.device:
        return self.model.device

    def predict(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> SamNetworkOutput:
        """Logits, predicted IoU and low-res logits of ``K`` objects per image.

        Parameters
        ----------
        image:
            ``[N, C, H, W]`` float in [0, 1] (e.g. after ``SamIntensityd``), C = 1 or 3.
        boxes:
            ``[N, K, 4]`` ``(x0, y0, x1, y1)`` inclusive pixel indices, x along W
            (columns), y along H (rows); or ``None``.
        points, point_labels:
            ``[N, K, P, 2]`` ``(x, y)`` pixel coordinates and ``[N, K, P]`` labels
            (1 foreground, 0 background, -1 padding for objects with fewer points); or ``None``.
        mask_input:
            ``[N, K, 256, 256]`` low-res logits from an earlier prediction, or ``None``.

        Returns
        -------
        SamNetworkOutput
            ``logits [N, K, H, W]``, ``iou_scores [N, K]``, ``low_res_logits [N, K, 256, 256]``.
        """
        n, k = self._check(image, boxes, points, point_labels, mask_input)
        if k == 0:
            return SamNetworkOutput(
                image.new_zeros((n, 0, *image.shape[-2:])),
                image.new_zeros((n, 0)),
                image.new_zeros((n, 0, *self.model.mask_input_hw)),
            )
        frame = self.model.frame_transform(tuple(image.shape[-2:]))
        engine = self.model if torch.is_grad_enabled() else prepare(self.model, self.inference)
        embeddings = engine.encode(self.model.preprocess(image)).float()
        device = embeddings.device
        logits, ious, lows = [], [], []
        for b in range(n):
            low, iou = engine.decode(
                embeddings[b : b + 1],
                points=None if points is None else frame.points_to_model(points[b].to(device, torch.float32)),
                point_labels=None if point_labels is None else point_labels[b].to(device),
                boxes=None if boxes is None else frame.boxes_to_model(boxes[b].to(device, torch.float32)),
                mask_input=None if mask_input is None else mask_input[b][:, None].to(device),
                multimask=False,
            )  # low [K, 1, 256, 256], iou [K, 1]
            logits.append(self.model.postprocess(low, frame.input_hw, frame.original_hw)[:, 0])
            ious.append(iou[:, 0])
            lows.append(low[:, 0])
        return SamNetworkOutput(torch.stack(logits), torch.stack(ious), torch.stack(lows))

    def forward(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``[N, K, H, W]`` mask logits; see :meth:`predict` for the inputs."""
        return self.predict(image, boxes, points, point_labels, mask_input).logits

    def _check(
        self,
        image: torch.Tensor,
        boxes: torch.Tensor | None,
        points: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        mask_input: torch.Tensor | None,
    ) -> tuple[int, int]:
        if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[1] not in (1, 3):
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
            raise ValueError(f"image must be a [N, C, H, W] tensor with C = 1 or 3, got {shape}")
        n = image.shape[0]
        if boxes is None and points is None:
            raise ValueError("give boxes [N, K, 4] and/or points [N, K, P, 2] with point_labels [N, K, P]")
        if (points is None) != (point_labels is None):
            raise ValueError("points and point_labels must be given together")
        k = None
        if boxes is not None:
            if boxes.ndim != 3 or boxes.shape[0] != n or boxes.shape[2] != 4:
                raise ValueError(f"boxes must be [N={n}, K, 4] (x0, y0, x1, y1), got {tuple(boxes.shape)}")
            k = boxes.shape[1]
        if points is not None and point_labels is not None:
            if points.ndim != 4 or points.shape[0] != n or points.shape[3] != 2:
                raise ValueError(f"points must be [N={n}, K, P, 2] (x, y), got {tuple(points.shape)}")
            if tuple(point_labels.shape) != tuple(points.shape[:3]):
                raise ValueError(
                    f"point_labels must be [N, K, P] = {tuple(points.shape[:3])}, got {tuple(point_labels.shape)}"
                )
            if k is not None and points.shape[1] != k:
                raise ValueError(f"boxes give K={k} objects per image but points give {points.shape[1]}")
            k = points.shape[1]
        if mask_input is not None and tuple(mask_input.shape) != (n, k, *self.model.mask_input_hw):
            raise ValueError(
                f"mask_input must be [N, K, 256, 256] = {(n, k, *self.model.mask_input_hw)}, got {tuple(mask_input.shape)}"
            )
        return n, int(k or 0)

    def extra_repr(self) -> str:
        return f"model={self.model_name!r}, checkpoint={self.checkpoint!r}, adapter={self.adapter!r}"
