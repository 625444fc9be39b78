"""The one conversion between MONAI's ``MetaTensor`` layout and medsam's :class:`~medsam.io.Volume`.

MONAI (``LoadImage`` with the ITK or NiBabel reader, then ``EnsureChannelFirst``) holds a
3D image as ``[C, H, W, D]`` whose spatial axes are the voxel indices ``(i, j, k)`` of the
file, i.e. ITK's ``(x, y, z)`` = (column, row, slice), with a 4x4 voxel-to-**RAS** affine
in ``MetaTensor.affine`` (``meta["space"] == "RAS"``, MONAI's default).

medsam holds the same voxels as a ``(Z, Y, X)`` = ``(k, j, i)`` array with **LPS**
geometry. So ``volume.array[k, j, i] == image[0, i, j, k]`` and
``volume.affine_ras() == image.affine``.

Slicing along another spatial axis (``spatial_axis`` 0 or 1 instead of 2) makes that
axis the Volume's slice axis ``k'``; the two remaining MONAI axes, in increasing order,
become ``(i', j')``. The Volume's geometry follows the permutation, so its world
coordinates (and world-space prompts) are unchanged, while its voxel prompts are
``(slice=k', x=i', y=j')``.

Examples
--------
>>> import numpy as np, torch
>>> from monai.data import MetaTensor
>>> img = MetaTensor(torch.zeros(1, 4, 3, 2), affine=torch.diag(torch.tensor([2.0, 3.0, 5.0, 1.0])))
>>> vol = volume_from_metatensor(img)
>>> vol.shape, vol.spacing
((2, 3, 4), (2.0, 3.0, 5.0))
>>> np.allclose(vol.affine_ras(), img.affine.numpy())
True
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam.io.formats import guess_modality
from medsam.io.volume import LPS_TO_RAS, SourceMetadata, Volume

__all__ = [
    "normalize_spatial_axis",
    "axis_order",
    "affine_ras_of",
    "to_zyx",
    "from_zyx",
    "volume_from_metatensor",
    "labels_to_metatensor",
    "spacing_of",
]

logger = logging.getLogger(__name__)


def normalize_spatial_axis(spatial_axis: int) -> int:
    """A spatial axis of ``[C, H, W, D]`` as 0 (H), 1 (W) or 2 (D); -1 means D."""
    if isinstance(spatial_axis, bool) or not isinstance(spatial_axis, (int, np.integer)):
        raise TypeError(f"spatial_axis must be an integer (0, 1, 2 or -1), got {spatial_axis!r}")
    a = int(spatial_axis)
    if a < 0:
        a += 3
    if a not in (0, 1, 2):
        raise ValueError(
            f"spatial_axis must be 0 (H), 1 (W), 2 (D, default) or -1 for [C, H, W, D] images, got {spatial_axis}"
        )
    return a


def axis_order(spatial_axis: int = 2) -> tuple[int, int, int]:
    """MONAI spatial axes ``(a_i, a_j, a_k)`` that become the Volume's ``(i', j', k')``.

    ``spatial_axis`` is the slicing axis (it becomes ``k'``); the other two keep their order.

    >>> axis_order(2), axis_order(0), axis_order(1)
    ((0, 1, 2), (1, 2, 0), (0, 2, 1))
    """
    a = normalize_spatial_axis(spatial_axis)
    rest = [n for n in (0, 1, 2) if n != a]
    return (rest[0], rest[1], a)


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        t = x.as_tensor() if hasattr(x, "as_tensor") else x
        return t.detach().cpu().numpy()
    return np.asarray(x)


def affine_ras_of(image: Any, affine: Any = None) -> np.ndarray:
    """The 4x4 voxel-to-RAS affine (float64) of a ``MetaTensor`` (unbatched).

    ``affine`` overrides the tensor's own. A ``meta["space"]`` of ``"LPS"`` (a reader run
    with ``affine_lps_to_ras=False``) is converted to RAS here.
    """
    meta = getattr(image, "meta", None)
    if affine is None:
        affine = getattr(image, "affine", None)
        if affine is None:
            raise TypeError(
                "image has no affine: pass a monai.data.MetaTensor (e.g. from LoadImaged) or affine="
            )
    a = _as_numpy(affine).astype(np.float64)
    if a.shape == (1, 4, 4):
        a = a[0]
    if a.shape != (4, 4):
        raise ValueError(
            f"expected one 4x4 affine, got shape {a.shape}; for a batch, pass one image at a time"
        )
    space = str(meta.get("space", "RAS")).upper() if isinstance(meta, Mapping) else "RAS"
    if space == "LPS":
        a = LPS_TO_RAS @ a
    return a


def to_zyx(array: np.ndarray, spatial_axis: int = 2) -> np.ndarray:
    """A spatial ``(H, W, D)`` array as the Volume's ``(k', j', i')`` (a view, no copy)."""
    ai, aj, ak = axis_order(spatial_axis)
    return np.asarray(array).transpose(ak, aj, ai)


def from_zyx(array: np.ndarray, spatial_axis: int = 2) -> np.ndarray:
    """Inverse of :func:`to_zyx`: a ``(k', j', i')`` array back to MONAI's ``(H, W, D)`` (a view)."""
    ai, aj, ak = axis_order(spatial_axis)
    return np.asarray(array).transpose(np.argsort((ak, aj, ai)))


def spacing_of(affine_ras: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along MONAI's spatial axes ``(H, W, D)`` (column norms of the affine)."""
    a = np.asarray(affine_ras, dtype=np.float64)
    return tuple(float(v) for v in np.linalg.norm(a[:3, :3], axis=0))  # type: ignore[return-value]


def volume_from_metatensor(
    image: Any,
    *,
    spatial_axis: int = 2,
    channel: int = 0,
    modality: str | None = None,
    affine: Any = None,
    window_center: float | None = None,
    window_width: float | None = None,
) -> Volume:
    """A medsam :class:`Volume` sharing memory with one channel of a MONAI image.

    Parameters
    ----------
    image:
        ``[C, H, W, D]`` ``MetaTensor`` (channel first, unbatched) on any device; CPU
        tensors are viewed, not copied. A plain tensor/array needs ``affine=``.
    spatial_axis:
        MONAI spatial axis sliced by medsam (default 2, D: the file's ``k``).
    channel:
        Which channel to view.
    modality:
        Recorded on the Volume (``"CT"``, ``"MR"`` ...); default: from the image's meta
        (DICOM tag ``0008|0060`` or a ``"modality"`` key), else guessed from the data and
        file name by :func:`medsam.io.formats.guess_modality`, exactly as ``load_volume``
        does for NIfTI/NRRD files.
    affine:
        Voxel-to-RAS 4x4 affine overriding the image's.
    window_center, window_width:
        Header window recorded in the Volume's metadata; default: DICOM tags in meta.

    Returns
    -------
    Volume
        Array ``(k', j', i')`` (``(Z, Y, X)`` for ``spatial_axis=2``), a view of the
        tensor's data; LPS spacing, origin and direction such that world coordinates of
        every voxel equal those given by the image's affine.
    """
    arr = image
    if isinstance(arr, torch.Tensor) or hasattr(arr, "shape"):
        shape = tuple(arr.shape)
    else:
        raise TypeError(f"image must be a tensor or array, not {type(image).__name__}")
    if len(shape) != 4:
        raise ValueError(
            f"image must be channel-first [C, H, W, D] (one 3D image), got shape {shape}; "
            "add EnsureChannelFirstd after LoadImaged, and pass batch items one at a time"
        )
    if not 0 <= channel < shape[0]:
        raise ValueError(f"channel {channel} is out of range for an image with {shape[0]} channels")
    a_ras = affine_ras_of(image, affine)
    data = _as_numpy(arr[channel])
    ai, aj, ak = axis_order(spatial_axis)
    lps = LPS_TO_RAS @ a_ras
    cols = lps[:3, [ai, aj, ak]]
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"the image affine has a zero or non-finite voxel size: {a_ras.tolist()}")
    direction = cols / spacing
    meta = getattr(image, "meta", None)
    meta = meta if isinstance(meta, Mapping) else {}
    zyx = to_zyx(data, spatial_axis)
    source = meta.get("filename_or_obj")
    src_path = Path(source) if isinstance(source, str) and source else None
    if modality is None:
        modality = _modality_from_meta(meta)
    if modality is None:
        modality = guess_modality(zyx, src_path.name if src_path else None)
    if window_center is None and window_width is None:
        window_center, window_width = _header_window(meta)
    return Volume(
        zyx,
        spacing=tuple(spacing),
        origin=tuple(lps[:3, 3]),
        direction=direction,
        modality=modality or "OT",
        source=src_path,
        meta=SourceMetadata(format="monai", window_center=window_center, window_width=window_width),
    )


def labels_to_metatensor(labels: np.ndarray, like: Any, *, spatial_axis: int = 2) -> Any:
    """A ``(k', j', i')`` label map as a ``[1, H, W, D]`` MetaTensor with ``like``'s affine and meta.

    ``like`` is the (unbatched) image the labels were computed on; its meta dictionary and
    applied operations are copied, so ``Invertd`` and ``SaveImaged`` treat the labels
    exactly like the image. The result lives on ``like``'s device.
    """
    from monai.data import MetaTensor

    lab = np.ascontiguousarray(from_zyx(labels, spatial_axis))
    if lab.dtype == np.uint16:  # torch's uint16 supports few operations
        lab = lab.astype(np.int32)
    device = like.device if isinstance(like, torch.Tensor) else "cpu"
    t = torch.from_numpy(lab)[None].to(device)
    if isinstance(like, MetaTensor):
        out = MetaTensor(t)
        out.copy_meta_from(like)
        out.is_batch = False
        return out
    return MetaTensor(t, affine=torch.as_tensor(affine_ras_of(like)))


# ----------------------------------------------------------------------------- metadata
_MODALITY_KEYS = ("modality", "Modality", "0008|0060", "00080060")
_CENTER_KEYS = ("0028|1050", "00281050", "WindowCenter", "window_center")
_WIDTH_KEYS = ("0028|1051", "00281051", "WindowWidth", "window_width")


def _first_value(meta: Mapping, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in meta and meta[key] is not None:
            value = meta[key]
            if isinstance(value, Mapping):  # pydicom JSON style {"vr": ..., "Value": [...]}
                value = (value.get("Value") or [None])[0]
            return value
    return None


def _modality_from_meta(meta: Mapping) -> str | None:
    value = _first_value(meta, _MODALITY_KEYS)
    if value is None:
        return None
    text = str(np.asarray(value).reshape(-1)[0]).strip().upper()
    return text or None


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        if isinstance(value, str):
            value = value.replace("\\", " ").split()[0]
        return float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
    except (ValueError, TypeError, IndexError):
        return None


def _header_window(meta: Mapping) -> tuple[float | None, float | None]:
    return _number(_first_value(meta, _CENTER_KEYS)), _number(_first_value(meta, _WIDTH_KEYS))
