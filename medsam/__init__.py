"""medsam: Segment Anything for medical imaging.

The public API is imported lazily so that ``import medsam`` stays cheap and never
pulls in torch, Qt or napari until they are used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "Volume": "medsam.io",
    "load_volume": "medsam.io",
    "save_mask": "medsam.io",
    "apply_window": "medsam.intensity",
    "WINDOW_PRESETS": "medsam.intensity",
    "InferenceConfig": "medsam.inference",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medsam' has no attribute {name!r}")
