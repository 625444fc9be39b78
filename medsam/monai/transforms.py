"""MONAI transforms: intensity windows, prompts (read or simulated) and promptable inference.

Each comes as an array transform and a dictionary twin (``...d``, with ``...D`` and
``...Dict`` aliases and ``allow_missing_keys``). Constructors take plain values, so bundle
configs can build them from ``_target_``.

=========================  ======================================================================
``SamIntensity(d)``        the project's windows (:mod:`medsam.intensity`) -> float32 in [0, 1]
``LoadPrompts(d)``         a prompts JSON file (the ``medsam segment`` format) -> dict
``PromptsFromLabel(d)``    simulated box/point prompts on key slices of a reference label
``SamInference(d)``        promptable 3D segmentation with propagation (:class:`SamSliceInferer`)
=========================  ======================================================================

Image tensors are channel-first ``[C, H, W, D]`` (MONAI's layout, spatial axes = the file's
``(i, j, k)``); prompts are in the project JSON format (voxel ``(slice=k, x=i, y=j)`` or
world mm), see :mod:`medsam.monai.prompts`.

Examples
--------
>>> from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged
>>> chain = Compose([
...     LoadImaged("image"), EnsureChannelFirstd("image"),
...     SamIntensityd("image", window="soft_tissue"),
...     LoadPromptsd("prompts"),
...     SamInferenced("image", prompts_key="prompts", output_keys="pred"),
... ])
>>> out = chain({"image": "ct.nii.gz", "prompts": "ct.prompts.json"})  # doctest: +SKIP
>>> out["pred"].shape                                                  # doctest: +SKIP
torch.Size([1, 122, 101, 30])
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable, Transform
from monai.utils import TransformBackends, ensure_tuple, ensure_tuple_rep

from medsam.intensity import Window, apply_window, parse_window_spec, resolve_window
from medsam.models import PromptableSam
from medsam.monai.geometry import normalize_spatial_axis, to_zyx, volume_from_metatensor
from medsam.monai.inferer import PREWINDOWED, SamSliceInferer
from medsam.monai.network import SamNetwork
from medsam.monai.prompts import PromptSource, read_prompts
from medsam.monai.simulate import KeySlices, simulate_prompts

__all__ = [
    "SamIntensity",
    "SamIntensityd",
    "SamIntensityD",
    "SamIntensityDict",
    "LoadPrompts",
    "LoadPromptsd",
    "LoadPromptsD",
    "LoadPromptsDict",
    "PromptsFromLabel",
    "PromptsFromLabeld",
    "PromptsFromLabelD",
    "PromptsFromLabelDict",
    "SamInference",
    "SamInferenced",
    "SamInferenceD",
    "SamInferenceDict",
]

logger = logging.getLogger(__name__)

#: Meta key recording the window :class:`SamIntensity` applied (``Window.key``).
WINDOW_META_KEY = "medsam_window"


def _with_meta(values: torch.Tensor, like: Any) -> Any:
    """``values`` as ``like``'s type (MetaTensor with its meta, tensor, or numpy array)."""
    if isinstance(like, MetaTensor):
        out = MetaTensor(values)
        out.copy_meta_from(like)
        return out
    if isinstance(like, torch.Tensor):
        return values
    return values.cpu().numpy()


# ---------------------------------------------------------------------------- intensity
class SamIntensity(Transform):
    """Window intensities as medsam does everywhere: float32 in [0, 1], what SAM models receive.

    The window is resolved per image by :func:`medsam.intensity.resolve_window`, the same
    function the CLI and the napari widget use, so the automatic choice is identical:
    RGB passes through, CT uses the header window (DICOM tags in the meta) or
    ``soft_tissue``, anything else the 0.5-99.5 percentiles. The modality comes from
    ``modality=``, else the meta (DICOM ``0008|0060``), else is guessed from the data and
    file name like ``medsam.io.load_volume``.

    Parameters
    ----------
    window:
        ``None``/``"auto"``, a preset of :data:`medsam.intensity.WINDOW_PRESETS`
        (``"soft_tissue"``, ``"liver"``, ``"lung"``, ...), ``"L,W"``, ``[level, width]``,
        ``"header"`` or ``"percentile"``.
    modality:
        Overrides the image's modality (``"CT"``, ``"MR"``).

    Input and output: ``[C, H, W, D]`` (or any channel-first shape); the output has the
    input's type and meta, plus ``meta["medsam_window"]`` (the window's key).
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, window: str | Sequence[float] | None = None, modality: str | None = None) -> None:
        parse_window_spec(window)  # fail at construction on a typo
        self.window = window
        self.modality = modality

    def resolve(self, img: Any) -> Window:
        """The concrete :class:`~medsam.intensity.Window` for this ``[C, H, W, D]`` image."""
        if isinstance(parse_window_spec(self.window), Window):
            return resolve_window(None, self.window)
        affine = None if isinstance(img, MetaTensor) else np.eye(4)
        volume = volume_from_metatensor(img, affine=affine, modality=self.modality)
        return resolve_window(volume, self.window)

    def __call__(self, img: Any) -> Any:
        if not hasattr(img, "shape") or len(img.shape) < 2:
            raise ValueError(f"SamIntensity expects a channel-first image [C, H, W, D], got {type(img).__name__}")
        window = self.resolve(img) if len(img.shape) == 4 else resolve_window(
            _numpy(img), self.window, modality=self.modality
        )
        values = torch.from_numpy(apply_window(_numpy(img), window))
        if isinstance(img, torch.Tensor):
            values = values.to(img.device)
        out = _with_meta(values, img)
        if isinstance(out, MetaTensor):
            out.meta[WINDOW_META_KEY] = window.key
        return out


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.as_tensor() if isinstance(x, MetaTensor) else x
        return t.detach().cpu().numpy()
    return np.asarray(x)


class SamIntensityd(MapTransform):
    """Dictionary version of :class:`SamIntensity` (the window is resolved per key)."""

    backend = SamIntensity.backend

    def __init__(
        self,
        keys: KeysCollection,
        window: str | Sequence[float] | None = None,
        modality: str | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = SamIntensity(window=window, modality=modality)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


# ------------------------------------------------------------------------------ prompts
class LoadPrompts(Transform):
    """Read a prompts JSON file (the format of ``medsam segment --prompts``) into a dict.

    Dicts pass through unchanged. The prompts are validated later, against the image, by
    :class:`SamInference` (world-space prompts need the image's affine).
    """

    def __call__(self, source: PromptSource) -> Any:
        return read_prompts(source)


class LoadPromptsd(MapTransform):
    """Dictionary version of :class:`LoadPrompts`: replaces each file path by its prompts dict."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = LoadPrompts()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


class PromptsFromLabel(Randomizable, Transform):
    """Simulate box and point prompts on key slices of a reference label (evaluation, training).

    Parameters
    ----------
    label_ids:
        Labels to prompt, one object each (default: every label present).
    names:
        ``{label: name}`` for the objects' names (keys may be strings, as in JSON).
    key_slices:
        ``"largest"`` (the largest-area slice, default), ``"middle"``, or ``n`` slices
        evenly spaced over the object's extent.
    box:
        Put a box on each key slice.
    jitter:
        Box sides move by up to this fraction of the box size (0 = tight box).
    n_positive, n_negative:
        Foreground points inside the object, background points near it, per key slice.
    propagate:
        The objects' ``propagate`` flag (propagation from the key slices).
    seed:
        Fixed seed: every call draws from ``RandomState(seed)`` afresh, so the same label
        always gives the same prompts. ``None`` uses MONAI's random state
        (``set_random_state``), different at each call.
    spatial_axis:
        MONAI spatial axis the prompts' ``slice`` indexes (default 2, D).

    Input: a ``[1, H, W, D]`` (or ``[H, W, D]``) integer label map. Output: a prompts dict
    in the project JSON format, voxel space ``(slice=k, x=i, y=j)``, plain Python values.
    """

    def __init__(
        self,
        label_ids: Sequence[int] | int | None = None,
        names: Mapping[Any, str] | None = None,
        key_slices: KeySlices = "largest",
        box: bool = True,
        jitter: float = 0.0,
        n_positive: int = 0,
        n_negative: int = 0,
        propagate: bool = True,
        seed: int | None = 0,
        spatial_axis: int = 2,
    ) -> None:
        self.label_ids = None if label_ids is None else [int(v) for v in ensure_tuple(label_ids)]
        self.names = dict(names or {})
        self.key_slices = key_slices
        self.box = bool(box)
        self.jitter = float(jitter)
        self.n_positive = int(n_positive)
        self.n_negative = int(n_negative)
        self.propagate = bool(propagate)
        self.seed = seed
        self.spatial_axis = normalize_spatial_axis(spatial_axis)
        if not self.box and self.n_positive < 1:
            raise ValueError("PromptsFromLabel needs box=True or n_positive >= 1")
        self._rng: np.random.RandomState | None = None

    def randomize(self, data: Any = None) -> None:
        self._rng = np.random.RandomState(self.seed) if self.seed is not None else self.R

    def __call__(self, label: Any) -> dict[str, Any]:
        arr = _numpy(label)
        if arr.ndim == 4:
            if arr.shape[0] != 1:
                raise ValueError(f"label must have one channel [1, H, W, D], got {arr.shape}")
            arr = arr[0]
        if arr.ndim != 3:
            raise ValueError(f"label must be [1, H, W, D] or [H, W, D], got shape {arr.shape}")
        lab = to_zyx(arr, self.spatial_axis)
        if not np.issubdtype(lab.dtype, np.integer):
            lab = np.rint(lab).astype(np.int64)
        self.randomize()
        return simulate_prompts(
            lab,
            label_ids=self.label_ids,
            names=self.names,
            key_slices=self.key_slices,
            box=self.box,
            jitter=self.jitter,
            n_positive=self.n_positive,
            n_negative=self.n_negative,
            propagate=self.propagate,
            rng=self._rng,
        )


class PromptsFromLabeld(Randomizable, MapTransform):
    """Dictionary version of :class:`PromptsFromLabel`: prompts of ``keys`` under ``prompts_keys``.

    Parameters
    ----------
    keys:
        Label key(s).
    prompts_keys:
        Where to write each key's prompts dict (default ``"prompts"``; one per key).
    Other parameters: see :class:`PromptsFromLabel`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prompts_keys: KeysCollection = "prompts",
        label_ids: Sequence[int] | int | None = None,
        names: Mapping[Any, str] | None = None,
        key_slices: KeySlices = "largest",
        box: bool = True,
        jitter: float = 0.0,
        n_positive: int = 0,
        n_negative: int = 0,
        propagate: bool = True,
        seed: int | None = 0,
        spatial_axis: int = 2,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.prompts_keys = ensure_tuple_rep(prompts_keys, len(self.keys))
        self.transform = PromptsFromLabel(
            label_ids, names, key_slices, box, jitter, n_positive, n_negative, propagate, seed, spatial_axis
        )

    def set_random_state(self, seed: int | None = None, state: np.random.RandomState | None = None) -> PromptsFromLabeld:
        super().set_random_state(seed, state)
        self.transform.set_random_state(seed, state)
        return self

    def randomize(self, data: Any = None) -> None:
        self.transform.randomize(data)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, out_key in self.key_iterator(d, self.prompts_keys):
            d[out_key] = self.transform(d[key])
        return d


# ---------------------------------------------------------------------------- inference
class SamInference(Transform):
    """Promptable 3D segmentation of one ``[C, H, W, D]`` image inside a transform chain.

    Builds (lazily, on first use) a :class:`SamNetwork` and runs a :class:`SamSliceInferer`.

    Parameters
    ----------
    model:
        Registry name (default ``"litemedsam"``); a loaded :class:`SamNetwork` or
        :class:`~medsam.models.PromptableSam` is also accepted from Python code.
    checkpoint, device, adapter:
        As :class:`SamNetwork`.
    window:
        ``"prewindowed"`` (default: ``SamIntensityd`` ran before) or a window spec for
        raw input, see :class:`SamSliceInferer`.
    sw_batch_size:
        Slices per encoder call.
    propagate:
        Propagate from the prompted key slices (``False``: prompted slices only).
    spatial_axis:
        MONAI spatial axis to slice (default 2, D).
    propagation:
        :class:`~medsam.volume.PropagationConfig` fields as a dict.
    cache_dir:
        Optional on-disk embedding cache.

    ``__call__(img, prompts)`` returns a ``[1, H, W, D]`` MetaTensor label map with the
    image's affine and meta (uint8; 0 background; object labels from the prompts).
    """

    def __init__(
        self,
        model: str | SamNetwork | PromptableSam = "litemedsam",
        checkpoint: str | Path | None = None,
        device: str | None = None,
        window: str | Sequence[float] | None = PREWINDOWED,
        sw_batch_size: int = 4,
        propagate: bool = True,
        spatial_axis: int = 2,
        propagation: Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        adapter: str | Path | None = None,
    ) -> None:
        self.model = model
        self.checkpoint = checkpoint
        self.device = device
        self.adapter = adapter
        self.inferer = SamSliceInferer(
            spatial_axis=spatial_axis,
            sw_batch_size=sw_batch_size,
            propagate=propagate,
            window=window,
            propagation=propagation,
            cache_dir=cache_dir,
        )
        self._network: SamNetwork | PromptableSam | None = None
        if not isinstance(model, str):
            self._network = model

    @property
    def network(self) -> SamNetwork | PromptableSam:
        """The network, loaded on first use."""
        if self._network is None:
            self._network = SamNetwork(
                str(self.model), checkpoint=self.checkpoint, device=self.device, adapter=self.adapter
            )
        return self._network

    def __call__(self, img: Any, prompts: PromptSource) -> Any:
        if not isinstance(img, torch.Tensor) or img.ndim != 4:
            shape = tuple(img.shape) if hasattr(img, "shape") else type(img).__name__
            raise ValueError(f"SamInference expects a channel-first [C, H, W, D] MetaTensor, got {shape}")
        return self.inferer.segment(img, self.network, prompts)


class SamInferenced(MapTransform):
    """Dictionary version of :class:`SamInference`.

    Parameters
    ----------
    keys:
        Image key(s) to segment.
    prompts_key:
        Key of the prompts (a dict, JSON path or PromptSet), shared by all ``keys``, or
        one per key.
    output_keys:
        Where to write each label map (default ``"pred"``; one per key).
    Other parameters: see :class:`SamInference`.
    """

    def __init__(
        self,
        keys: KeysCollection,
        prompts_key: KeysCollection = "prompts",
        output_keys: KeysCollection = "pred",
        model: str | SamNetwork | PromptableSam = "litemedsam",
        checkpoint: str | Path | None = None,
        device: str | None = None,
        window: str | Sequence[float] | None = PREWINDOWED,
        sw_batch_size: int = 4,
        propagate: bool = True,
        spatial_axis: int = 2,
        propagation: Mapping[str, Any] | None = None,
        cache_dir: str | Path | None = None,
        adapter: str | Path | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.prompts_keys = ensure_tuple_rep(prompts_key, len(self.keys))
        self.output_keys = ensure_tuple_rep(output_keys, len(self.keys))
        self.inference = SamInference(
            model, checkpoint, device, window, sw_batch_size, propagate, spatial_axis, propagation, cache_dir, adapter
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key, p_key, out_key in self.key_iterator(d, self.prompts_keys, self.output_keys):
            if p_key not in d:
                if self.allow_missing_keys:
                    continue
                raise KeyError(f"SamInferenced: no prompts under key {p_key!r} for image {key!r}")
            d[out_key] = self.inference(d[key], d[p_key])
        return d


SamIntensityD = SamIntensityDict = SamIntensityd
LoadPromptsD = LoadPromptsDict = LoadPromptsd
PromptsFromLabelD = PromptsFromLabelDict = PromptsFromLabeld
SamInferenceD = SamInferenceDict = SamInferenced
