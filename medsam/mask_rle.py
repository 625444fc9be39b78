"""Run-length encoding of 2D masks, as mask prompts travel in prompts files and sidecars.

``{"size": [Y, X], "counts": [...]}``: run lengths of the row-major pixels of a ``(Y, X)``
slice, starting with a (possibly empty) run of background. Plain JSON, readable by hand.

Examples
--------
>>> import numpy as np
>>> rle = mask_to_rle(np.array([[0, 1, 1], [1, 0, 0]], bool))
>>> rle
{'size': [2, 3], 'counts': [1, 3, 2]}
>>> rle_to_mask(rle, (2, 3)).astype(int).tolist()
[[0, 1, 1], [1, 0, 0]]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from medsam.errors import PromptError

__all__ = ["mask_to_rle", "rle_to_mask"]


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise PromptError(msg)


def mask_to_rle(mask: np.ndarray) -> dict[str, Any]:
    """A ``(Y, X)`` mask as ``{"size": [Y, X], "counts": [...]}``: run lengths of the row-major
    pixels, starting with a (possibly empty) run of background."""
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    edges = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(edges).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": list(np.asarray(mask).shape), "counts": [int(c) for c in counts]}


def rle_to_mask(rle: Any, shape: tuple[int, int], where: str = "mask") -> np.ndarray:
    """Decode :func:`mask_to_rle`; the size must be ``shape`` (the slice's ``(Y, X)``)."""
    _check(isinstance(rle, Mapping) and set(rle) == {"size", "counts"}, f"{where}: a mask is {{'size', 'counts'}}")
    size, counts = rle["size"], rle["counts"]
    _check(list(size) == list(shape), f"{where}: mask size {list(size)} is not the slice's {list(shape)}")
    _check(
        isinstance(counts, list) and all(isinstance(c, int) and c >= 0 for c in counts)
        and sum(counts) == shape[0] * shape[1],
        f"{where}: mask counts must be non-negative integers summing to {shape[0] * shape[1]}",
    )
    values = np.arange(len(counts)) % 2 == 1
    return np.repeat(values, counts).reshape(shape)
