"""Adapter files: the trained tensors as safetensors plus a JSON sidecar.

``run/best.safetensors`` holds only the weights the method trained, keyed by module path
(``image_encoder.layers.1.blocks.0.attn.qkv.lora_A_q.weight``,
``mask_decoder.output_upscaling.0.weight``, ...). ``run/best.json`` next to it records
the adapter config, the base model (registry name and ``weights_id``, which includes the
checkpoint's SHA-256), the structures it was trained on, the intensity window spec, and a
summary of the training data. :func:`load_adapter` refuses a base model other than the
one the adapter was trained on.

Examples
--------
>>> from medsam.models import load_model                                # doctest: +SKIP
>>> model = load_adapter(load_model("litemedsam"), "run/best.safetensors")  # doctest: +SKIP
>>> model.weights_id                                                     # doctest: +SKIP
'litemedsam:79d8c9dca6db4d69+adapter:0a1b2c3d4e5f6789'
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapters.config import AdapterConfig
from adapters.methods import (
    adapter_parameter_names,
    apply_adapter,
    lora_layers,
    merge_lora,
    unload_lora,
)
from medsam.atomic import atomic_write, atomic_write_text
from medsam.errors import InputFileError, MedsamError, MissingInputError

__all__ = [
    "ADAPTER_FORMAT",
    "AdapterMismatchError",
    "load_adapted_model",
    "load_adapter",
    "load_for_inference",
    "read_adapter_meta",
    "save_adapter",
    "sidecar_of",
]

logger = logging.getLogger(__name__)

ADAPTER_FORMAT = "medsam-adapter/1"


class AdapterMismatchError(MedsamError, ValueError):
    """An adapter trained for another base model (name or weights differ)."""


def sidecar_of(path: str | Path) -> Path:
    """``run/best.safetensors`` -> ``run/best.json``."""
    return Path(path).with_suffix(".json")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _base_weights_id(model: nn.Module) -> str | None:
    """The base model's ``weights_id`` (before any adapter was loaded onto it)."""
    return getattr(model, "base_weights_id", None) or model.weights_id


def save_adapter(
    model: nn.Module,
    path: str | Path,
    *,
    labels: Mapping[int, str] | list[str] | None = None,
    window: str | None = None,
    data: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
) -> Path:
    """Write the trained tensors of an adapted model and its sidecar.

    Parameters
    ----------
    model
        A model adapted with :func:`~adapters.methods.apply_adapter` (LoRA not merged).
    path
        ``.safetensors`` file; the sidecar is the same path with ``.json``.
    labels
        Structure names the adapter was trained for (list, or ``{id: name}``).
    window
        The intensity window spec used in training (``"auto"``, a preset, ``"L,W"``...).
    data, training
        JSON-able summaries of the training data and run.

    Returns
    -------
    Path
        The safetensors path.
    """
    from safetensors.torch import save_file

    config: AdapterConfig | None = getattr(model, "adapter_config", None)
    if config is None:
        raise ValueError("model has no adapter; call adapters.apply_adapter(model, config) first")
    if config.uses_lora and any(getattr(m, "merged", False) for _, m in lora_layers(model)):
        raise ValueError("LoRA is merged into the base weights; call unmerge_lora(model) before saving")
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: adapter files end in .safetensors")
    params = dict(model.named_parameters())
    tensors = {n: params[n].detach().to("cpu").contiguous() for n in adapter_parameter_names(model, config)}
    base_id = _base_weights_id(model)
    header = {"format": ADAPTER_FORMAT, "base_model": str(model.name), "base_weights_id": str(base_id)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))
    if isinstance(labels, Mapping):
        label_list = [str(v) for _, v in sorted(labels.items())]
    else:
        label_list = [str(v) for v in (labels or [])]
    meta = {
        "format": ADAPTER_FORMAT,
        "file": path.name,
        "sha256": _sha256(path),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "base_model": {"name": str(model.name), "weights_id": base_id},
        "config": config.to_dict(),
        "labels": label_list,
        "window": window or "auto",
        "n_tensors": len(tensors),
        "n_parameters": int(sum(t.numel() for t in tensors.values())),
        "data": dict(data or {}),
        "training": dict(training or {}),
    }
    side = sidecar_of(path)
    atomic_write_text(side, json.dumps(meta, indent=1))
    logger.info("saved adapter %s (%d tensors) and %s", path, len(tensors), side)
    return path


def read_adapter_meta(path: str | Path) -> dict[str, Any]:
    """The sidecar of an adapter file, checked for format.

    Raises
    ------
    MissingInputError
        The adapter or its sidecar does not exist.
    InputFileError
        The sidecar is not a medsam adapter description.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(path)
    side = sidecar_of(path)
    if not side.is_file():
        raise InputFileError(path, f"adapter sidecar {side.name} is missing (it holds the config)")
    try:
        meta = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(side, f"unreadable adapter sidecar ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise InputFileError(side, f"not a medsam adapter sidecar (expected format {ADAPTER_FORMAT})")
    return meta


def load_adapter(model: nn.Module, path: str | Path, *, merge: bool = False) -> nn.Module:
    """Load an adapter onto ``model`` in place, for inference.

    Parameters
    ----------
    model
        The base :class:`~medsam.models.PromptableSam` the adapter was trained on
        (same registry name and ``weights_id``), without an adapter.
    path
        The adapter's ``.safetensors`` file (its ``.json`` sidecar beside it).
    merge
        Merge LoRA updates into the base weights (slightly faster inference).

    Returns
    -------
    nn.Module
        ``model``, frozen, with ``weights_id`` = ``"<base weights_id>+adapter:<sha256[:16]>"``
        (embedding caches never mix adapted and base embeddings), ``base_weights_id``
        and ``adapter_meta`` (the sidecar) set.

    Raises
    ------
    AdapterMismatchError
        The adapter was trained on another base model or checkpoint.
    InputFileError
        Missing sidecar, or tensors that do not match the recorded config.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_adapter_meta(path)
    base = meta.get("base_model", {})
    want_name, want_id = base.get("name"), base.get("weights_id")
    if want_name != model.name or want_id != model.weights_id:
        raise AdapterMismatchError(
            f"{path.name}: adapter was trained for {want_name} ({want_id}) but the model is "
            f"{model.name} ({model.weights_id}); load that base model (--model/--checkpoint)"
        )
    digest = _sha256(path)
    if meta.get("sha256") not in (None, digest):
        raise InputFileError(path, "SHA-256 differs from its sidecar; the file was changed or damaged")
    with safe_open(str(path), framework="pt") as fh:
        header = fh.metadata() or {}
    if header.get("base_weights_id") not in (None, want_id):
        raise InputFileError(path, "tensor file and sidecar name different base models")
    try:
        config = AdapterConfig.from_dict(meta["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputFileError(sidecar_of(path), f"invalid adapter config ({exc})") from None
    tensors = load_file(str(path), device=str(model.device))
    apply_adapter(model, config)
    expected = set(adapter_parameter_names(model, config))
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise InputFileError(
            path,
            f"tensors do not match the {config.method} adapter config "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]})",
        )
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in tensors.items():
            if params[name].shape != t.shape:
                raise InputFileError(
                    path, f"{name} has shape {tuple(t.shape)}, the model expects {tuple(params[name].shape)}"
                )
            params[name].copy_(t.to(params[name].dtype))
    for p in model.parameters():
        p.requires_grad_(False)
    # Modules that cache derived tensors in eval mode (TinyViT's attention biases) refresh them.
    model.train(model.training)
    if merge:
        merge_lora(model)
    model.base_weights_id = model.weights_id
    model.weights_id = f"{model.weights_id}+adapter:{digest[:16]}"
    model.adapter_meta = meta
    logger.info("loaded %s adapter %s onto %s", config.method, path, model.base_weights_id)
    return model


def load_for_inference(model: nn.Module, path: str | Path) -> nn.Module:
    """:func:`load_adapter`, then LoRA merged and unloaded: plain modules for the fast engines.

    This is the ``medsam.adapter_loaders`` entry point that the core calls for
    ``load_model(..., adapter=)``, ``medsam segment --adapter`` and the other front ends.
    The model computes what the adapted model computes (to float rounding) and exports to
    ONNX like the base model; it can no longer be trained as a LoRA adapter.
    """
    load_adapter(model, path)
    unload_lora(model)
    return model


def load_adapted_model(path: str | Path, *, checkpoint: str | Path | None = None, device=None) -> nn.Module:
    """The base model named in an adapter's sidecar, with the adapter loaded (one call for GUIs).

    Parameters
    ----------
    path
        The adapter's ``.safetensors`` file.
    checkpoint
        Base weights file, for SAM/MedSAM bases (LiteMedSAM's are bundled).
    device
        As :func:`medsam.models.load_model`.
    """
    from medsam.models import load_model

    name = read_adapter_meta(path).get("base_model", {}).get("name")
    if not isinstance(name, str):
        raise InputFileError(sidecar_of(path), "the sidecar names no base model")
    return load_model(name, checkpoint=checkpoint, device=device, adapter=path)
