"""One training step's forward pass: prompted prediction, iterative correction, loss.

:class:`PromptedSegLoss` is the ``nn.Module`` the trainer wraps in
``DistributedDataParallel``: its forward takes a list of :class:`TrainSample` and returns
the loss. Per sample it predicts from the simulated prompt, then runs ``n_corrections``
rounds that add a click in the error region (and, at random, the previous low-res logits
as ``mask_input``), as in SAM's interactive training. The loss of every round is MONAI's
``DiceCELoss`` on the original slice grid plus the MSE between the predicted and the real
IoU (so the confidence that stops propagation stays calibrated).

When nothing in the image encoder is trained (``"decoder"``), embeddings are computed
without autograd and cached per slice, so each slice is encoded once per run.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medsam.prompt_sim import Prompt, PromptSimConfig, correction_click

__all__ = ["PromptedSegLoss", "TrainSample"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainSample:
    """A slice, its target and its first prompt.

    Attributes
    ----------
    image
        ``(H, W)`` float32 in [0, 1], windowed with the inference window.
    target
        ``(H, W)`` bool.
    prompt
        The first-round prompt (pixel coordinates on this slice).
    key
        Identifies the slice image for the embedding cache, e.g. ``(case, k)``.
    seed
        Seeds the correction rounds' randomness.
    """

    image: np.ndarray
    target: np.ndarray
    prompt: Prompt
    key: Hashable
    seed: int


def _as_batch(a: np.ndarray, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)[None]


class PromptedSegLoss(nn.Module):
    """Loss of a prompted, iteratively corrected prediction on a batch of slices.

    Parameters
    ----------
    model
        An adapted :class:`~medsam.models.PromptableSam`.
    sim
        Prompt simulation (its ``n_corrections`` and ``mask_prompt_prob`` are used here).
    iou_weight
        Weight of the IoU-prediction MSE term.
    cache_embeddings
        Cache embeddings per ``TrainSample.key`` when the image encoder is frozen.
    max_cached
        Most embeddings kept (each is ``256 x 64 x 64`` float32, 4 MiB).
    bf16
        Use bf16 autocast on CUDA (ignored on other devices).
    """

    def __init__(
        self,
        model: nn.Module,
        sim: PromptSimConfig,
        *,
        iou_weight: float = 1.0,
        cache_embeddings: bool = True,
        max_cached: int = 512,
        bf16: bool = True,
    ) -> None:
        super().__init__()
        from monai.losses import DiceCELoss

        self.model = model
        self.sim = sim
        self.iou_weight = float(iou_weight)
        self.seg_loss = DiceCELoss(sigmoid=True)
        self.bf16 = bool(bf16)
        self.cache_embeddings = bool(cache_embeddings)
        self.max_cached = int(max_cached)
        self._cache: OrderedDict[Hashable, torch.Tensor] = OrderedDict()

    @property
    def encoder_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.model.image_encoder.parameters())

    def _autocast(self, device: torch.device):
        enabled = self.bf16 and device.type == "cuda"
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)

    def _embed(self, samples: Sequence[TrainSample]) -> list[torch.Tensor]:
        """``(1, 256, 64, 64)`` embedding per sample; slices of one size are encoded together."""
        model, device = self.model, self.model.device
        frozen = self.encoder_frozen and self.cache_embeddings
        by_key: dict[Hashable, torch.Tensor] = {}
        groups: dict[tuple[int, int], list[int]] = {}  # image size -> first sample of each slice
        first: dict[Hashable, int] = {}
        for i, s in enumerate(samples):
            if s.key in first or s.key in by_key:
                continue  # samples of one slice share its embedding (and its gradient path)
            if frozen and s.key in self._cache:
                self._cache.move_to_end(s.key)
                by_key[s.key] = self._cache[s.key]
            else:
                first[s.key] = i
                groups.setdefault(tuple(s.image.shape), []).append(i)
        for idx in groups.values():
            x = torch.stack([torch.as_tensor(samples[i].image) for i in idx])[:, None].to(device)
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
                emb = model.encode(model.preprocess(x))
            for j, i in enumerate(idx):
                key = samples[i].key
                by_key[key] = emb[j : j + 1]
                if frozen:
                    self._cache[key] = emb[j : j + 1].detach().float()
                    while len(self._cache) > self.max_cached:
                        self._cache.popitem(last=False)
        return [by_key[s.key] for s in samples]

    def _round(self, emb: torch.Tensor, sample: TrainSample, prompt: Prompt, mask_input):
        model = self.model
        frame = model.frame_transform(sample.target.shape)
        device = emb.device
        pts = lbl = None
        if len(prompt.points):
            pts = _as_batch(frame.points_to_model(prompt.points), device)
            lbl = _as_batch(prompt.labels, device, torch.int64)
        box = None if prompt.box is None else _as_batch(frame.boxes_to_model(prompt.box), device)
        low, iou = model.decode(emb, points=pts, point_labels=lbl, boxes=box, mask_input=mask_input)
        logits = model.postprocess(low, frame.input_hw, frame.original_hw)
        return logits.float(), iou.float(), low

    def forward(self, samples: Sequence[TrainSample]) -> tuple[torch.Tensor, dict[str, float]]:
        """Mean loss over samples and rounds, and ``{"dice_first", "dice_last"}`` (hard Dice)."""
        if not samples:
            raise ValueError("empty batch")
        device = self.model.device
        losses, d_first, d_last = [], [], []
        with self._autocast(device):
            embeddings = self._embed(samples)
            for sample, emb in zip(samples, embeddings, strict=True):
                rng = np.random.default_rng(sample.seed)
                target = _as_batch(sample.target, device)[None]  # (1, 1, H, W)
                prompt, mask_input, total = sample.prompt, None, 0.0
                rounds = 1 + self.sim.n_corrections
                for r in range(rounds):
                    logits, iou, low = self._round(emb, sample, prompt, mask_input)
                    seg = self.seg_loss(logits, target)
                    with torch.no_grad():
                        pred = logits > 0
                        inter = (pred & (target > 0)).sum()
                        union = (pred | (target > 0)).sum()
                        real_iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter, dtype=torch.float32))
                        dice = float(2 * inter / (pred.sum() + (target > 0).sum()).clamp_min(1)) if union > 0 else 1.0
                    total = total + seg + self.iou_weight * (iou[:, 0] - real_iou).pow(2).mean()
                    if r == 0:
                        d_first.append(dice)
                    if r == rounds - 1:
                        d_last.append(dice)
                        break
                    click = correction_click(pred[0, 0].cpu().numpy(), sample.target, rng)
                    if click is not None:
                        prompt = prompt.add_point(*click)
                    use_mask = rng.random() < self.sim.mask_prompt_prob
                    mask_input = low.detach().float() if use_mask else None
                losses.append(total / rounds)
        loss = torch.stack(losses).mean()
        return loss, {"dice_first": float(np.mean(d_first)), "dice_last": float(np.mean(d_last))}
