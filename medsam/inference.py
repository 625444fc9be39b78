"""Inference settings (:class:`InferenceConfig`), kept free of heavy imports for the CLI.

The engines behind them are in :mod:`medsam.models.accel`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BACKENDS", "REFERENCE", "Backend", "InferenceConfig", "Precision"]

Backend = Literal["auto", "onnxruntime", "torch", "compile", "reference"]
Precision = Literal["fp32", "bf16"]
BACKENDS: tuple[str, ...] = ("auto", "onnxruntime", "torch", "compile", "reference")


@dataclass(frozen=True)
class InferenceConfig:
    """How a model runs at inference (plain values, bundle-friendly).

    Parameters
    ----------
    backend
        One of :data:`BACKENDS`; see :mod:`medsam.models.accel`.
    precision
        ``"fp32"`` (default, matches the reference) or ``"bf16"`` (approximate, torch
        backends only, devices with native bf16 only).
    """

    backend: Backend = "auto"
    precision: Precision = "fp32"

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {self.backend!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.precision == "bf16" and self.backend in ("onnxruntime", "reference"):
            raise ValueError(f"precision 'bf16' needs the 'torch' or 'compile' backend, not {self.backend!r}")


#: The reference path: the model's own fp32 ``encode`` and ``decode``, nothing changed.
REFERENCE = InferenceConfig(backend="reference")
