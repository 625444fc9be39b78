"""One interface for every SAM-family model: preprocess, encode, decode, postprocess.

:class:`PromptableSam` holds a model's image encoder, prompt encoder and mask decoder as
submodules named as in the official checkpoints, so its ``state_dict()`` keys are the
checkpoint keys (fine-tuning and LoRA address modules by those paths). Preprocessing
follows how each model was trained (:class:`Preprocessing`), and the coordinate scaling
that goes with it is :class:`~medsam.models.frame.FrameTransform`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from medsam.models.frame import FrameTransform, ResizeMode

__all__ = ["Preprocessing", "PromptableSam", "SamOutput"]

SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class Preprocessing:
    """How a model's training data were turned into its ``S x S`` input.

    Parameters
    ----------
    image_size
        ``S``, the side of the square encoder input.
    resize
        ``"longest_side"``: keep the aspect ratio, longest side to ``S``, zero-pad the
        bottom/right (SAM, LiteMedSAM). ``"square"``: stretch to ``S x S`` (MedSAM ViT-B).
    intensity
        ``"minmax"``: per-image ``(x - min) / max(max - min, 1e-8)`` after resizing
        (LiteMedSAM, MedSAM). ``"sam"``: scale to 0..255, then ``(x - mean) / std`` with
        SAM's ImageNet statistics.
    """

    image_size: int
    resize: ResizeMode
    intensity: Literal["minmax", "sam"]
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        if self.resize not in ("longest_side", "square"):
            raise ValueError(f"resize must be 'longest_side' or 'square', got {self.resize!r}")
        if self.intensity not in ("minmax", "sam"):
            raise ValueError(f"intensity must be 'minmax' or 'sam', got {self.intensity!r}")


class SamOutput(NamedTuple):
    """Result of :meth:`PromptableSam.forward` (a NamedTuple so DataParallel can gather it).

    Attributes
    ----------
    logits
        ``(B, M, H, W)`` mask logits on the original image grid; ``> 0`` is the mask.
    iou_scores
        ``(B, M)`` predicted IoU of each mask.
    low_res_logits
        ``(B, M, 256, 256)`` logits in the model frame, usable as ``mask_input``.
    """

    logits: torch.Tensor
    iou_scores: torch.Tensor
    low_res_logits: torch.Tensor


class PromptableSam(nn.Module):
    """A SAM-family model behind one interface (a plain, trainable ``nn.Module``).

    Parameters
    ----------
    image_encoder, prompt_encoder, mask_decoder
        The three SAM modules (``segment_anything`` layout).
    name
        Registry name, e.g. ``"litemedsam"``.
    preprocessing
        How images become the model input, see :class:`Preprocessing`.
    weights_id
        Content fingerprint of the weights, ``"<name>:<sha256[:16]>"`` of the checkpoint
        file, for cache keys; ``None`` for weights that came from no file.

    Examples
    --------
    >>> from medsam.models import load_model
    >>> model = load_model("litemedsam", device="cpu")  # doctest: +SKIP
    >>> images = torch.rand(1, 1, 300, 200)  # (B, C, H, W), values in [0, 1]
    >>> out = model(images, boxes=torch.tensor([[40.0, 60.0, 120.0, 200.0]]))  # doctest: +SKIP
    >>> out.logits.shape  # doctest: +SKIP
    torch.Size([1, 1, 300, 200])
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        prompt_encoder: nn.Module,
        mask_decoder: nn.Module,
        *,
        name: str,
        preprocessing: Preprocessing,
        weights_id: str | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.name = name
        self.preprocessing = preprocessing
        self.weights_id = weights_id
        # Not persistent: state_dict() keys stay exactly the checkpoint keys.
        self.register_buffer(
            "pixel_mean", torch.tensor(preprocessing.pixel_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(preprocessing.pixel_std).view(1, 3, 1, 1), persistent=False
        )

    # ------------------------------------------------------------------ properties
    @property
    def image_size(self) -> int:
        """``S``: side of the square encoder input (256 LiteMedSAM, 1024 SAM/MedSAM)."""
        return self.preprocessing.image_size

    @property
    def embed_dim(self) -> int:
        """Channels of the image embedding (256)."""
        return int(self.prompt_encoder.embed_dim)

    @property
    def embedding_hw(self) -> tuple[int, int]:
        """``(h, w)`` of the image embedding grid (64, 64)."""
        h, w = self.prompt_encoder.image_embedding_size
        return int(h), int(w)

    @property
    def mask_input_hw(self) -> tuple[int, int]:
        """``(h, w)`` of low-res logits and ``mask_input`` (256, 256)."""
        h, w = self.prompt_encoder.mask_input_size
        return int(h), int(w)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ geometry
    def frame_transform(self, original_hw: tuple[int, int] | torch.Size) -> FrameTransform:
        """The :class:`FrameTransform` of an ``(H, W)`` image for this model."""
        return FrameTransform.for_image(
            (int(original_hw[0]), int(original_hw[1])), self.image_size, self.preprocessing.resize
        )

    # ------------------------------------------------------------------ stages
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images to encoder input, as the model was trained.

        Parameters
        ----------
        images
            ``(B, C, H, W)`` float in [0, 1], ``C`` = 1 (grey, replicated) or 3 (RGB).

        Returns
        -------
        torch.Tensor
            ``(B, 3, S, S)`` float32 on the model's device; the image occupies the top-left
            ``frame_transform((H, W)).input_hw`` region, the rest is zero.
        """
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must have shape (B, C, H, W) with C = 1 or 3, got {tuple(images.shape)}"
            )
        x = images.to(device=self.pixel_mean.device, dtype=torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h, w = self.frame_transform(x.shape[-2:]).input_hw
        if (h, w) != tuple(x.shape[-2:]):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        if self.preprocessing.intensity == "minmax":
            lo = x.amin(dim=(1, 2, 3), keepdim=True)
            hi = x.amax(dim=(1, 2, 3), keepdim=True)
            x = (x - lo) / (hi - lo).clamp_min(1e-8)
        else:
            x = (x * 255.0 - self.pixel_mean) / self.pixel_std
        size = self.image_size
        return F.pad(x, (0, size - w, 0, size - h))

    def mask_to_logits(self, masks: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
        """Masks on the original grid to model-frame ``mask_input`` pseudo-logits.

        Parameters
        ----------
        masks
            ``(B, 1, H, W)`` bool or float in [0, 1] (e.g. a user-painted mask).
        scale
            Logit magnitude: inside ``+scale/2``, outside ``-scale/2``.

        Returns
        -------
        torch.Tensor
            ``(B, 1, 256, 256)`` float32, laid out like this model's low-res logits
            (resized as :meth:`preprocess` resizes images, padded, then downsampled).
        """
        x = masks.to(device=self.pixel_mean.device, dtype=torch.float32)
        h, w = self.frame_transform(x.shape[-2:]).input_hw
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        size = self.image_size
        x = F.pad(x, (0, size - w, 0, size - h))
        x = F.interpolate(x, size=self.mask_input_hw, mode="bilinear", align_corners=False)
        return (x - 0.5) * scale

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` preprocessed images to ``(B, 256, 64, 64)`` image embeddings."""
        return self.image_encoder(x)

    def encode_prompts(
        self,
        points: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None,
        mask_input: torch.Tensor | None,
        device: torch.device,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Model-frame prompts to SAM's sparse ``(P, N, 256)`` and dense ``(P, 256, 64, 64)`` embeddings.

        Arguments are as in :meth:`decode`; ``P`` is the number of prompt sets.
        """
        if (points is None) != (point_labels is None):
            raise ValueError("points and point_labels must be given together")
        sparse_points = None
        if points is not None and point_labels is not None:
            sparse_points = (points.to(device, torch.float32), point_labels.to(device, torch.int))
        return self.prompt_encoder(
            points=sparse_points,
            boxes=None if boxes is None else boxes.to(device, torch.float32).reshape(-1, 4),
            masks=None if mask_input is None else mask_input.to(device, torch.float32),
        )

    def decode(
        self,
        embeddings: torch.Tensor,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Predict masks from image embeddings and prompts in the model frame.

        Parameters
        ----------
        embeddings
            ``(B, 256, 64, 64)``, or ``(1, 256, 64, 64)`` shared by ``B`` prompt sets.
        points, point_labels
            ``(B, N, 2)`` model-frame ``(x, y)`` and ``(B, N)`` labels (1 fg, 0 bg), or None.
            Without a box, the prompt encoder appends SAM's padding point, as SAM does.
        boxes
            ``(B, 4)`` model-frame ``(x0, y0, x1, y1)``, or None.
        mask_input
            ``(B, 1, 256, 256)`` low-res logits from an earlier prediction, or None.
        multimask
            Return SAM's 3 ambiguity masks instead of its single-mask output.

        Returns
        -------
        low_res_logits, iou_scores
            ``(B, M, 256, 256)`` logits and ``(B, M)`` predicted IoU, M = 3 or 1.
        """
        sparse, dense = self.encode_prompts(points, point_labels, boxes, mask_input, embeddings.device)
        image_pe = self.prompt_encoder.get_dense_pe()
        n_prompts, n_images = sparse.shape[0], embeddings.shape[0]
        if n_images == 1:
            # One image, any number of prompt sets: SAM's decoder broadcasts the image.
            return self.mask_decoder(
                image_embeddings=embeddings,
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask,
            )
        if n_images != n_prompts:
            raise ValueError(
                f"{n_images} image embeddings but {n_prompts} prompt sets; give one per image or one image"
            )
        # Meta's decoder repeats the image per prompt, so pair images and prompts one by one.
        results = [
            self.mask_decoder(
                image_embeddings=embeddings[i : i + 1],
                image_pe=image_pe,
                sparse_prompt_embeddings=sparse[i : i + 1],
                dense_prompt_embeddings=dense[i : i + 1],
                multimask_output=multimask,
            )
            for i in range(n_images)
        ]
        return torch.cat([r[0] for r in results]), torch.cat([r[1] for r in results])

    def postprocess(
        self,
        low_res_logits: torch.Tensor,
        input_hw: tuple[int, int],
        original_hw: tuple[int, int],
    ) -> torch.Tensor:
        """Low-res logits ``(B, M, 256, 256)`` to logits ``(B, M, H, W)`` on the original grid.

        Longest-side models: upsample to ``S x S``, crop the un-padded ``input_hw``
        region, resize to ``original_hw`` (as SAM). Square-resize models: resize straight
        to ``original_hw`` (as MedSAM's inference). Bilinear throughout.
        """
        original_hw = (int(original_hw[0]), int(original_hw[1]))
        x = low_res_logits
        if self.preprocessing.resize == "longest_side":
            size = self.image_size
            if tuple(x.shape[-2:]) != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            x = x[..., : int(input_hw[0]), : int(input_hw[1])]
        if tuple(x.shape[-2:]) != original_hw:
            x = F.interpolate(x, size=original_hw, mode="bilinear", align_corners=False)
        return x

    def forward(
        self,
        images: torch.Tensor,
        boxes: torch.Tensor | None = None,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> SamOutput:
        """Preprocess, encode, decode and postprocess in one differentiable call.

        Parameters
        ----------
        images
            ``(B, C, H, W)`` float in [0, 1], C = 1 or 3.
        boxes
            ``(B, 4)`` ``(x0, y0, x1, y1)`` inclusive pixel indices on the original image.
        points, point_labels
            ``(B, N, 2)`` ``(x, y)`` pixel coordinates on the original image, ``(B, N)``
            labels (1 foreground, 0 background).
        mask_input
            ``(B, 1, 256, 256)`` low-res logits, or None.
        multimask
            Return 3 masks per image instead of 1.
        """
        frame = self.frame_transform(images.shape[-2:])
        embeddings = self.encode(self.preprocess(images))
        low_res, iou = self.decode(
            embeddings,
            points=None if points is None else frame.points_to_model(points),
            point_labels=point_labels,
            boxes=None if boxes is None else frame.boxes_to_model(boxes),
            mask_input=mask_input,
            multimask=multimask,
        )
        logits = self.postprocess(low_res, frame.input_hw, frame.original_hw)
        return SamOutput(logits=logits, iou_scores=iou, low_res_logits=low_res)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, image_size={self.image_size}, weights_id={self.weights_id!r}"
