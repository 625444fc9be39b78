"""Put a fine-tuning method onto a registry model: LoRA, mask decoder, full, or combinations.

:func:`apply_adapter` changes a :class:`~medsam.models.PromptableSam` in place: it freezes
every weight, injects the LoRA layers (PEFT's ``LoraLayer`` for plain linears,
:class:`~adapters.qkv_lora.QkvLoRA` for the q and v rows of fused ``qkv`` linears) and
unfreezes what the method trains. Module paths stay the checkpoint paths; an adapted linear
keeps its original weights under ``<path>.base_layer`` as in PEFT. Until trained, the
adapted model computes exactly what the base model computes.

Examples
--------
>>> from medsam.models import load_model                            # doctest: +SKIP
>>> model = load_model("litemedsam", device="cpu")                   # doctest: +SKIP
>>> names = apply_adapter(model, AdapterConfig("lora+decoder"))      # doctest: +SKIP
>>> merge_lora(model); unmerge_lora(model)                           # doctest: +SKIP
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from adapters.config import AdapterConfig
from adapters.qkv_lora import QkvLoRA, qkv_rows

__all__ = [
    "adapter_parameter_names",
    "apply_adapter",
    "count_parameters",
    "lora_layers",
    "merge_lora",
    "set_train_mode",
    "unload_lora",
    "unmerge_lora",
]

logger = logging.getLogger(__name__)


def _attention_modules(encoder: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules of ``encoder`` with a fused ``qkv`` linear child: the attention blocks."""
    return [
        (name, m)
        for name, m in encoder.named_modules()
        if isinstance(getattr(m, "qkv", None), nn.Linear)
    ]


def _peft_targets(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Full module paths of the plain linears that PEFT adapts."""
    wanted = list(config.lora.targets) + (["qkv"] if config.lora.qkv == "qkv" else [])
    out = []
    for attn_name, attn in _attention_modules(model.image_encoder):
        for t in wanted:
            child = getattr(attn, t, None)
            if child is None:
                continue
            if not isinstance(child, nn.Linear):
                raise ValueError(f"LoRA target image_encoder.{attn_name}.{t} is not an nn.Linear")
            out.append(f"image_encoder.{attn_name}.{t}")
    missing = [t for t in wanted if not any(n.endswith("." + t) for n in out)]
    if missing:
        raise ValueError(
            f"LoRA targets {missing} match no attention sub-module of the {model.name} image encoder"
        )
    return out


def _inject_lora(model: nn.Module, config: AdapterConfig) -> None:
    settings = config.lora
    targets = _peft_targets(model, config)
    if targets:
        from peft import LoraConfig, inject_adapter_in_model

        peft_config = LoraConfig(
            r=settings.r,
            lora_alpha=settings.alpha,
            lora_dropout=settings.dropout,
            target_modules=targets,
            bias="none",
        )
        inject_adapter_in_model(peft_config, model)
    n_qkv = 0
    if settings.qkv == "qv":
        for _, attn in _attention_modules(model.image_encoder):
            q_rows, v_rows = qkv_rows(attn, attn.qkv)
            attn.qkv = QkvLoRA(
                attn.qkv, q_rows, v_rows, r=settings.r, alpha=settings.alpha, dropout=settings.dropout
            )
            n_qkv += 1
        if n_qkv == 0:
            raise ValueError(f"the {model.name} image encoder has no fused qkv attention layers")
    logger.info("LoRA: %d fused qkv layers (q, v) and %d linears via PEFT", n_qkv, len(targets))


def adapter_parameter_names(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Names (``model.named_parameters()`` paths) of the weights ``config`` trains.

    These are exactly the tensors an adapter file holds.
    """
    parts = config.parts
    names = []
    for name, _ in model.named_parameters():
        if "full" in parts:
            keep = True
        else:
            keep = ("lora" in parts and "lora_" in name) or (
                "decoder" in parts
                and (
                    name.startswith("mask_decoder.")
                    or (config.train_prompt_encoder and name.startswith("prompt_encoder."))
                )
            )
        if keep:
            names.append(name)
    return names


def apply_adapter(model: nn.Module, config: AdapterConfig) -> list[str]:
    """Adapt ``model`` in place for ``config`` and return the trainable parameter names.

    Parameters
    ----------
    model
        A :class:`~medsam.models.PromptableSam` without an adapter.
    config
        The method and its settings.

    Returns
    -------
    list of str
        Paths of the parameters left trainable (``requires_grad=True``); every other
        parameter is frozen.

    Raises
    ------
    ValueError
        The model already carries an adapter, or the LoRA targets match nothing.
    """
    if getattr(model, "adapter_config", None) is not None:
        raise ValueError(
            "this model already has an adapter; load a fresh base model to add another"
        )
    for p in model.parameters():
        p.requires_grad_(False)
    if config.uses_lora:
        _inject_lora(model, config)
    names = adapter_parameter_names(model, config)
    params = dict(model.named_parameters())
    for n in names:
        params[n].requires_grad_(True)
    model.adapter_config = config
    logger.info(
        "adapter %s: %d trainable tensors, %d of %d parameters",
        config.method,
        len(names),
        count_parameters(model, trainable=True),
        count_parameters(model),
    )
    return names


def count_parameters(model: nn.Module, trainable: bool = False) -> int:
    """Number of parameters (only those with ``requires_grad`` when ``trainable``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, layer)`` of every LoRA layer in ``model`` (QkvLoRA and PEFT layers)."""
    out: list[tuple[str, nn.Module]] = []
    base_tuner = None
    config = getattr(model, "adapter_config", None)
    if config is not None and config.uses_lora:
        from peft.tuners.tuners_utils import BaseTunerLayer

        base_tuner = BaseTunerLayer
    for name, m in model.named_modules():
        if isinstance(m, QkvLoRA) or (base_tuner is not None and isinstance(m, base_tuner)):
            out.append((name, m))
    return out


def merge_lora(model: nn.Module) -> int:
    """Add every LoRA update into its base weight (faster inference); returns the layer count.

    The LoRA layers stay in place (inactive while merged). The base weights are kept, so
    :func:`unmerge_lora` restores them bit for bit rather than subtracting the update.
    """
    layers = lora_layers(model)
    backup = model.__dict__.setdefault("_lora_base_weights", {})
    for name, m in layers:
        if not getattr(m, "merged", False):
            backup[name] = m.get_base_layer().weight.detach().clone()
            m.merge()
    return len(layers)


def unmerge_lora(model: nn.Module) -> int:
    """Take merged LoRA updates out of the base weights again; returns the layer count."""
    layers = lora_layers(model)
    backup = model.__dict__.get("_lora_base_weights", {})
    for name, m in layers:
        if getattr(m, "merged", False):
            m.unmerge()
            if name in backup:
                with torch.no_grad():
                    m.get_base_layer().weight.copy_(backup.pop(name))
    return len(layers)


def unload_lora(model: nn.Module) -> nn.Module:
    """Merge LoRA and put the plain base layers back (checkpoint key layout, no LoRA tensors).

    The result can no longer be saved as a LoRA adapter; its weights differ from the base.
    """
    merge_lora(model)
    for name, m in lora_layers(model):
        model.set_submodule(name, m.get_base_layer())
    return model


def set_train_mode(model: nn.Module, train: bool = True) -> nn.Module:
    """``model.train(train)`` with every BatchNorm kept in eval mode.

    Fine-tuning batches are a few slices, too few for batch statistics, so the running
    statistics of the pretrained encoder stay fixed (TinyViT's convolution stages have
    BatchNorm). Returns ``model``.
    """
    model.train(train)
    if train:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
    return model
