"""SAM-family models behind one interface: registry, loading, preprocessing, device choice.

Examples
--------
>>> from medsam.models import list_models, load_model
>>> list_models()
['litemedsam', 'medsam_vit_b', 'sam_vit_b', 'sam_vit_l', 'sam_vit_h']
>>> model = load_model()  # LiteMedSAM, bundled weights, best device  # doctest: +SKIP
"""

from __future__ import annotations

from medsam.models.accel import REFERENCE, InferenceConfig
from medsam.models.base import Preprocessing, PromptableSam, SamOutput
from medsam.models.device import select_device
from medsam.models.frame import FrameTransform
from medsam.models.registry import (
    MODEL_REGISTRY,
    ModelSpec,
    get_model_spec,
    list_models,
    load_model,
    register_model,
)

__all__ = [
    "MODEL_REGISTRY",
    "FrameTransform",
    "InferenceConfig",
    "ModelSpec",
    "Preprocessing",
    "PromptableSam",
    "REFERENCE",
    "SamOutput",
    "get_model_spec",
    "list_models",
    "load_model",
    "register_model",
    "select_device",
]
