"""``SamSliceInferer``: promptable slice-wise inference over MONAI volumes, driven by ``VolumePredictor``.

Why not MONAI's own ``SliceInferer``? It feeds a 2D network independent batches of slices
cut from a sliding window, and calls ``network(slices)`` with nothing else. A promptable
model needs two things it cannot provide:

* **which slice it is on**: prompts belong to particular slices (a box on slice 57, points
  on slice 60), and ``SliceInferer`` never tells the network the slice index of a window;
* **state between slices**: propagation carries each object's mask from one slice to the
  next (the previous mask gives the next box), in slice order, outwards from the prompted
  slices, stopping at the anatomical end. ``SliceInferer`` runs slices as independent,
  unordered windows and cannot pass masks between them.

So this inferer views each ``[C, H, W, D]`` item as a medsam :class:`~medsam.io.Volume`
(no copy on the CPU, geometry from the ``MetaTensor`` affine converted RAS -> LPS) and drives
the project's one propagation engine, :class:`~medsam.volume.VolumePredictor`, through
:func:`medsam.pipeline.segment_volume`: the same code path as ``medsam segment`` and the
napari widget, hence the same masks.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer

from medsam.intensity import Window, resolve_window
from medsam.models import PromptableSam, select_device
from medsam.monai.geometry import (
    labels_to_metatensor,
    normalize_spatial_axis,
    volume_from_metatensor,
)
from medsam.monai.network import SamNetwork
from medsam.monai.prompts import PromptSource, is_empty, resolve_prompts
from medsam.volume import PropagationConfig, VolumePredictor

__all__ = ["SamSliceInferer", "PREWINDOWED", "as_promptable_sam", "propagation_config"]

logger = logging.getLogger(__name__)

#: ``window`` value meaning "the input is already mapped to [0, 1]" (by ``SamIntensityd``).
PREWINDOWED = "prewindowed"


def as_promptable_sam(network: Any) -> PromptableSam:
    """The :class:`~medsam.models.PromptableSam` inside a :class:`SamNetwork` (or itself)."""
    if isinstance(network, SamNetwork):
        return network.model
    if isinstance(network, PromptableSam):
        return network
    raise TypeError(
        "SamSliceInferer needs a promptable SAM network: a medsam.monai.SamNetwork or a "
        f"medsam.models.PromptableSam, not {type(network).__name__}"
    )


def propagation_config(value: PropagationConfig | Mapping[str, Any] | None) -> PropagationConfig:
    """A :class:`PropagationConfig` from plain values (a dict of its fields) or ``None``."""
    if value is None:
        return PropagationConfig()
    if isinstance(value, PropagationConfig):
        return value
    if isinstance(value, Mapping):
        try:
            return PropagationConfig(**dict(value))
        except TypeError as exc:
            raise ValueError(f"propagation settings {dict(value)}: {exc}") from None
    raise TypeError(f"propagation must be a dict of PropagationConfig fields, not {type(value).__name__}")


class SamSliceInferer(Inferer):
    """Slice-wise promptable segmentation of ``[B, C, H, W, D]`` MetaTensors.

    Parameters
    ----------
    spatial_axis:
        MONAI spatial axis to slice (0 = H, 1 = W, 2 = D, the default; -1 = D). Voxel
        prompts' ``slice`` indexes this axis and ``(x, y)`` the other two in order, so for
        the default, prompts are ``(slice=k, x=i, y=j)`` of the file's ITK grid.
    sw_batch_size:
        Slices per image-encoder call (embedding runs lazily, a batch ahead of propagation).
    propagate:
        Carry objects from their prompted (key) slices through the volume; ``False``
        segments the prompted slices only.
    window:
        ``"prewindowed"`` (default): the input is already in [0, 1], e.g. after
        ``SamIntensityd`` (checked). Otherwise any window spec of
        :func:`medsam.intensity.resolve_window` (``None``/``"auto"``, a preset name,
        ``"L,W"``, ``"percentile"``, ``"header"``) applied to the raw input.
    device:
        Where the network runs; ``None`` keeps the network where it is. A different
        device moves the network there.
    propagation:
        :class:`~medsam.volume.PropagationConfig` fields as a dict (plain values for
        bundle configs), or a ``PropagationConfig``.
    cache_dir:
        Optional on-disk embedding cache folder (as ``medsam segment --cache-dir``).
    channel:
        Input channel to segment (SAM sees one grey channel per slice).

    Examples
    --------
    >>> from monai.transforms import LoadImage
    >>> img = LoadImage(image_only=True, ensure_channel_first=True)(
    ...     "sample_data/totalsegmentator/example_ct_sm.nii.gz")          # doctest: +SKIP
    >>> inferer = SamSliceInferer(window="soft_tissue", sw_batch_size=4)  # doctest: +SKIP
    >>> prompts = {"space": "voxel", "objects": [{"label": 1, "name": "liver",
    ...            "prompts": [{"slice": 25, "box": [20, 30, 70, 80]}]}]}
    >>> labels = inferer(img[None], SamNetwork("litemedsam"), prompts=prompts)  # doctest: +SKIP
    >>> labels.shape, bool((labels.affine == img.affine).all())       # doctest: +SKIP
    (torch.Size([1, 1, 122, 101, 30]), True)
    """

    def __init__(
        self,
        spatial_axis: int = 2,
        sw_batch_size: int = 4,
        propagate: bool = True,
        window: str | Sequence[float] | None = PREWINDOWED,
        device: str | torch.device | None = None,
        propagation: PropagationConfig | Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        channel: int = 0,
    ) -> None:
        super().__init__()
        self.spatial_axis = normalize_spatial_axis(spatial_axis)
        if int(sw_batch_size) < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.sw_batch_size = int(sw_batch_size)
        self.propagate = bool(propagate)
        self.window = window
        if not self._prewindowed:
            from medsam.intensity import parse_window_spec

            parse_window_spec(window)  # fail early on a typo, before any data is loaded
        self.device = None if device is None else select_device(device)
        self.config = propagation_config(propagation)
        self.cache_dir = cache_dir
        self.channel = int(channel)
        #: Per batch item of the last call: ``{label: {"name", "slices": {k: score}, ...}}``.
        self.last_confidence: list[dict[str, Any]] = []

    @property
    def _prewindowed(self) -> bool:
        return isinstance(self.window, str) and self.window.strip().lower() == PREWINDOWED

    def __call__(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        network: SamNetwork | PromptableSam,
        prompts: PromptSource | Sequence[PromptSource] | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Segment every batch item from its prompts.

        Parameters
        ----------
        inputs:
            ``[B, C, H, W, D]`` MetaTensor (batched, e.g. from a DataLoader, or an item with
            a leading batch axis) with its voxel-to-RAS affine.
        network:
            A :class:`~medsam.monai.SamNetwork` or :class:`~medsam.models.PromptableSam`.
        prompts:
            For each batch item: a dict in the project prompt JSON format (voxel, LPS or
            RAS space), a JSON file path, or a :class:`~medsam.prompts.PromptSet`. A list
            of ``B`` of them; a single one is accepted when ``B == 1``.

        Returns
        -------
        MetaTensor
            ``[B, 1, H, W, D]`` label map (uint8, uint16 labels as int32), 0 background,
            with the input's affine, meta and applied operations, on the input's device.
        """
        if args or kwargs:
            raise TypeError(f"unexpected arguments {list(kwargs) or args}; pass prompts=")
        if not isinstance(inputs, torch.Tensor) or inputs.ndim != 5:
            shape = tuple(inputs.shape) if hasattr(inputs, "shape") else type(inputs).__name__
            raise ValueError(f"inputs must be a [B, C, H, W, D] MetaTensor, got {shape}")
        b = int(inputs.shape[0])
        items = self._per_item(prompts, b)
        model = as_promptable_sam(network)
        if self.device is not None and model.device != self.device:
            logger.info("moving %s to %s", model.name, self.device)
            model.to(self.device)
        self.last_confidence = []
        outputs = [self.segment(inputs[n], model, items[n]) for n in range(b)]
        from monai.data import MetaTensor

        out = MetaTensor(torch.stack([o.as_tensor() for o in outputs]))
        out.copy_meta_from(inputs)
        return out

    def segment(self, image: torch.Tensor, network: SamNetwork | PromptableSam, prompts: PromptSource) -> Any:
        """Segment one unbatched ``[C, H, W, D]`` image; returns a ``[1, H, W, D]`` MetaTensor."""
        from medsam.pipeline import segment_volume

        model = as_promptable_sam(network)
        volume = volume_from_metatensor(image, spatial_axis=self.spatial_axis, channel=self.channel)
        if is_empty(prompts):
            logger.warning("no objects to segment in %s; writing an empty label map", volume.name)
            self.last_confidence.append({})
            return labels_to_metatensor(np.zeros(volume.grid_shape, np.uint8), image, spatial_axis=self.spatial_axis)
        pset = resolve_prompts(prompts, volume)
        window = self._resolve_window(volume)
        vp = VolumePredictor(model, batch_size=self.sw_batch_size, cache_dir=self.cache_dir, config=self.config)
        result = segment_volume(volume, pset, predictor=vp, window=window, propagate=self.propagate)
        logger.info(
            "%s: %d object(s), %d slices embedded, %.1f s",
            volume.name, len(pset.objects), vp.session.embedder.n_encoded if vp.session else 0, result.seconds,
        )
        self.last_confidence.append(result.confidence)
        return labels_to_metatensor(result.labels, image, spatial_axis=self.spatial_axis)

    def _resolve_window(self, volume: Any) -> Window:
        if not self._prewindowed:
            return resolve_window(volume, self.window)
        arr = volume.array
        lo, hi = float(np.min(arr)), float(np.max(arr))
        if lo < -1e-3 or hi > 1.0 + 1e-3 or not np.issubdtype(arr.dtype, np.floating):
            raise ValueError(
                f"window='prewindowed' expects intensities in [0, 1] but {volume.name} spans "
                f"[{lo:g}, {hi:g}] ({arr.dtype}); put SamIntensityd before inference or pass "
                "window= (a preset name, 'L,W', 'auto', 'percentile')"
            )
        return Window(0.0, 1.0, PREWINDOWED)

    @staticmethod
    def _per_item(prompts: Any, b: int) -> list[Any]:
        if prompts is None:
            raise ValueError("SamSliceInferer needs prompts=: a prompts dict (or one per batch item)")
        if isinstance(prompts, (list, tuple)):
            if len(prompts) != b:
                raise ValueError(f"got {len(prompts)} prompt sets for a batch of {b}; give one per item")
            return list(prompts)
        if b != 1:
            raise ValueError(f"a batch of {b} images needs a list of {b} prompt sets, one per item")
        return [prompts]
