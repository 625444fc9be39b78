"""Fine-tuning adapters for medsam models: LoRA, mask decoder and full fine-tuning.

Everything is imported lazily: ``import adapters`` loads neither torch nor PEFT until a
name is used.

Examples
--------
>>> from medsam.models import load_model                               # doctest: +SKIP
>>> from adapters import AdapterConfig, apply_adapter, load_adapter    # doctest: +SKIP
>>> model = load_model("litemedsam", device="cpu")                      # doctest: +SKIP
>>> apply_adapter(model, AdapterConfig("lora+decoder"))                 # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "AdapterConfig": "adapters.config",
    "LoraSettings": "adapters.config",
    "parse_method": "adapters.config",
    "QkvLoRA": "adapters.qkv_lora",
    "apply_adapter": "adapters.methods",
    "adapter_parameter_names": "adapters.methods",
    "merge_lora": "adapters.methods",
    "unmerge_lora": "adapters.methods",
    "unload_lora": "adapters.methods",
    "save_adapter": "adapters.files",
    "load_adapter": "adapters.files",
    "load_adapted_model": "adapters.files",
    "read_adapter_meta": "adapters.files",
    "AdapterMismatchError": "adapters.files",
    "find_cases": "adapters.datasets",
    "Case": "adapters.datasets",
    "PromptSimConfig": "medsam.prompt_sim",
    "TrainConfig": "adapters.train",
    "finetune": "adapters.train",
    "EvalConfig": "adapters.evaluate",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'adapters' has no attribute {name!r}")
