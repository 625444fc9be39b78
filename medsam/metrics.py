"""Small overlap metrics on numpy masks (evaluation at scale uses MONAI's metrics)."""

from __future__ import annotations

import numpy as np

__all__ = ["dice"]


def dice(pred: np.ndarray, ref: np.ndarray) -> float:
    """Dice coefficient of two boolean masks of the same shape (1.0 when both are empty)."""
    a, b = np.asarray(pred, dtype=bool), np.asarray(ref, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total
