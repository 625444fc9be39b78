"""The plugin's layer adapter: the one place that converts between napari and medsam.

* Geometry: a :class:`~medsam.io.Volume`'s LPS geometry <-> napari layer transforms.
  napari's axis order is the array's, ``(z, y, x) = (k, j, i)``, so its world coordinates
  are LPS millimetres in reversed order, ``(S, P, L)``: ``world = P @ (origin + D @ diag(spacing) @ ijk)``
  with ``P`` the axis reversal. ``scale`` is the spacing and ``translate`` the origin (both
  in napari order); for axis-aligned directions (flips, as in RAS NIfTI files) an
  ``affine`` holds the direction, applied about the origin, so napari's world coordinates
  are exactly LPS mm and slices show in radiological orientation. Oblique or axis-swapping
  directions cannot be sliced by napari; those layers get scale and translate only and a
  warning says so. Export never relies on the display: the layer's ``metadata`` keeps the
  full geometry.
* Prompts: napari data coordinates ``(z, row, col)`` of Points/Shapes layers that share the
  image's transform <-> the project's prompt convention (slice ``k``, point ``(x, y)`` =
  (column, row), box ``(x0, y0, x1, y1)`` inclusive pixel indices).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from medsam.intensity import resolve_window
from medsam.io import Volume
from medsam.prompts import SlicePrompt

__all__ = [
    "VOLUME_KEY",
    "GEOMETRY_KEY",
    "LABEL_NAMES_KEY",
    "napari_transform",
    "transform_kwargs",
    "image_layer_data",
    "labels_layer_data",
    "volume_of_layer",
    "geometry_from_layer_state",
    "current_slice",
    "prompts_from_layers",
    "POSITIVE",
    "NEGATIVE",
]

logger = logging.getLogger(__name__)

#: ``layer.metadata`` key of the source :class:`~medsam.io.Volume` (exact geometry and header).
VOLUME_KEY = "medsam_volume"
#: ``layer.metadata`` key of the plain geometry (spacing, origin, direction, ...).
GEOMETRY_KEY = "medsam_geometry"
#: Layer metadata key of ``{label: name}`` (a DICOM SEG opened by the reader; the SEG writer uses it).
LABEL_NAMES_KEY = "medsam_label_names"

#: Point prompt categories (the ``prompt`` feature of the widget's Points layer).
POSITIVE, NEGATIVE = "positive", "negative"

_REVERSE = np.eye(3)[::-1]


# ------------------------------------------------------------------------------ geometry
def napari_transform(volume: Volume) -> tuple[dict[str, Any], bool]:
    """napari ``scale``, ``translate`` and ``affine`` for ``volume``'s grid.

    Returns
    -------
    (kwargs, exact)
        ``exact`` is False when the direction is oblique or swaps axes: the layer then
        shows the grid with scale and translate only (world = origin + spacing * index).
    """
    scale = tuple(float(s) for s in volume.spacing[::-1])
    translate = tuple(float(o) for o in volume.origin[::-1])
    d = _REVERSE @ np.asarray(volume.direction, dtype=np.float64) @ _REVERSE
    exact = bool(np.allclose(np.abs(d), np.eye(3), atol=1e-6))
    affine = np.eye(4)
    if exact:
        d = np.diag(np.sign(np.diag(d)))
        affine[:3, :3] = d
        affine[:3, 3] = np.asarray(translate) - d @ np.asarray(translate)
    return {"scale": scale, "translate": translate, "affine": affine}, exact


def geometry_dict(volume: Volume) -> dict[str, Any]:
    """Plain (JSON-friendly) geometry of ``volume`` for ``layer.metadata``."""
    return {
        "grid_shape": list(volume.grid_shape),
        "spacing": list(volume.spacing),
        "origin": list(volume.origin),
        "direction": np.asarray(volume.direction).tolist(),
        "space": "LPS",
        "modality": volume.modality,
        "source": None if volume.source is None else str(volume.source),
        "format": volume.meta.format,
    }


def transform_kwargs(layer: Any) -> dict[str, Any]:
    """The transform of an existing layer, to give a new layer the same data coordinates."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "affine": np.asarray(layer.affine.affine_matrix),
    }


def _metadata(volume: Volume) -> dict[str, Any]:
    return {VOLUME_KEY: volume, GEOMETRY_KEY: geometry_dict(volume)}


def warn_inexact(volume: Volume) -> None:
    """Tell the user that an oblique volume is shown without its rotation."""
    msg = (
        f"{volume.name}: the image axes are oblique or swapped relative to the patient "
        "(direction not axis-aligned); napari shows the voxel grid with spacing and origin "
        "only. Exported masks keep the exact geometry."
    )
    logger.warning(msg)
    try:
        from napari.utils.notifications import show_warning

        show_warning(msg)
    except Exception:  # noqa: BLE001 - a notification must never break reading
        pass


def image_layer_data(volume: Volume, name: str | None = None) -> tuple[np.ndarray, dict, str]:
    """A napari image layer-data tuple for ``volume`` (geometry, window, metadata)."""
    kwargs, exact = napari_transform(volume)
    if not exact:
        warn_inexact(volume)
    kwargs.update(name=name or volume.name, metadata=_metadata(volume))
    if volume.is_rgb:
        kwargs["rgb"] = True
    else:
        window = resolve_window(volume, None)
        kwargs.update(contrast_limits=(window.low, window.high), colormap="gray")
    return volume.array, kwargs, "image"


def labels_layer_data(
    labels: np.ndarray, like: Volume, name: str
) -> tuple[np.ndarray, dict, str]:
    """A napari labels layer-data tuple on ``like``'s grid (exported with its geometry)."""
    if tuple(labels.shape) != like.grid_shape:
        raise ValueError(f"labels {labels.shape} do not match the image grid {like.grid_shape}")
    kwargs, _ = napari_transform(like)
    kwargs.update(name=name, metadata=_metadata(like))
    return labels, kwargs, "labels"


def volume_of_layer(layer: Any) -> Volume:
    """The :class:`Volume` behind an image layer.

    Layers opened by this plugin carry it in ``metadata``; for any other 3D grayscale
    layer a Volume is built from its data, ``scale`` (spacing) and ``translate`` (origin),
    with an identity direction and unknown modality.
    """
    vol = getattr(layer, "metadata", {}).get(VOLUME_KEY)
    if isinstance(vol, Volume):
        return vol
    data = np.asarray(layer.data)
    if getattr(layer, "rgb", False):
        return _rgb_volume(layer, data)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise ValueError(
            f"layer {layer.name!r} has shape {data.shape}; Segment Anything needs a 3D "
            "grayscale image (Z, Y, X) or a 2D RGB picture"
        )
    scale = list(layer.scale)[-3:] if layer.ndim >= 3 else [1.0, *layer.scale]
    translate = list(layer.translate)[-3:] if layer.ndim >= 3 else [0.0, *layer.translate]
    return Volume(data, spacing=tuple(scale[::-1]), origin=tuple(translate[::-1]))


def _rgb_volume(layer: Any, data: np.ndarray) -> Volume:
    """A 2D RGB(A) picture ``(Y, X, 3|4)`` as an RGB :class:`Volume` ``(1, Y, X, 3)`` ``uint8``
    (alpha dropped; float pictures in [0, 1] scaled to 0..255)."""
    if data.ndim != 3 or data.shape[-1] not in (3, 4):
        raise ValueError(f"layer {layer.name!r}: an RGB picture must be (Y, X, 3) or (Y, X, 4), got {data.shape}")
    rgb = data[..., :3]
    if np.issubdtype(rgb.dtype, np.floating) and float(np.nanmax(rgb)) <= 1.0:
        rgb = rgb * 255.0
    rgb = np.clip(np.nan_to_num(rgb), 0, 255).astype(np.uint8)
    scale, translate = list(layer.scale)[-2:], list(layer.translate)[-2:]
    return Volume(
        rgb[None], spacing=(float(scale[1]), float(scale[0]), 1.0), origin=(float(translate[1]), float(translate[0]), 0.0),
        modality="RGB",
    )


def geometry_from_layer_state(meta: Mapping[str, Any], grid_shape: Sequence[int]) -> tuple[Volume, str]:
    """A geometry-only :class:`Volume` for writing a labels layer, and where it came from.

    Looks, in order, at ``metadata[VOLUME_KEY]`` (exact), ``metadata[GEOMETRY_KEY]`` (exact)
    and finally the layer's ``scale``/``translate``/``affine`` (the inverse of
    :func:`napari_transform`; exact for layers this plugin created, a best guess for others).
    """
    md = meta.get("metadata") or {}
    vol = md.get(VOLUME_KEY)
    if isinstance(vol, Volume):
        return vol, "metadata"
    zeros = np.broadcast_to(np.zeros((), np.uint8), tuple(int(s) for s in grid_shape))
    geo = md.get(GEOMETRY_KEY)
    if isinstance(geo, Mapping):
        return Volume(zeros, tuple(geo["spacing"]), tuple(geo["origin"]), np.asarray(geo["direction"])), "metadata"
    ndim = len(grid_shape)
    scale = np.asarray(meta.get("scale", np.ones(ndim)), dtype=np.float64)[-3:]
    translate = np.asarray(meta.get("translate", np.zeros(ndim)), dtype=np.float64)[-3:]
    affine = np.asarray(meta.get("affine", np.eye(ndim + 1)), dtype=np.float64)
    if affine.shape == (ndim + 1, ndim + 1) and ndim > 3:
        affine = np.block([[affine[-4:-1, -4:-1], affine[-4:-1, -1:]], [np.zeros((1, 3)), np.ones((1, 1))]])
    lin, off = affine[:3, :3], affine[:3, 3]
    origin = _REVERSE @ (lin @ translate + off)
    lin_scaled = _REVERSE @ lin @ np.diag(scale) @ _REVERSE
    spacing = np.linalg.norm(lin_scaled, axis=0)
    direction = lin_scaled / spacing
    return Volume(zeros, tuple(spacing), tuple(origin), direction), "layer transform"


# ------------------------------------------------------------------------------- prompts
def current_slice(viewer: Any, layer: Any) -> int:
    """The slice index ``k`` of ``layer`` at the viewer's current position."""
    if getattr(layer, "rgb", False) or layer.ndim < 3:  # a 2D picture is slice 0
        return 0
    point = np.asarray(viewer.dims.point, dtype=np.float64)[-layer.ndim :]
    k = float(layer.world_to_data(point)[0])
    n = int(layer.data.shape[0])
    return int(min(max(round(k), 0), n - 1))


def prompts_from_layers(
    points: np.ndarray,
    point_kinds: Sequence[str],
    shapes: Sequence[np.ndarray],
    grid_shape: Sequence[int],
) -> dict[int, SlicePrompt]:
    """Slice prompts from the data of a Points and a Shapes layer.

    Parameters
    ----------
    points:
        ``(N, 3)`` Points-layer data in data coordinates ``(z, row, col)``.
    point_kinds:
        ``N`` values, :data:`POSITIVE` (label 1) or :data:`NEGATIVE` (label 0).
    shapes:
        Shapes-layer data: per shape an ``(V, 3)`` array of vertices ``(z, row, col)``.
        A shape's bounding box on its slice is the box prompt, clipped to the image
        (data coordinates have pixel centres at integers, so corners are pixel indices).
        With several shapes on one slice the last one drawn wins.
    grid_shape:
        ``(Z, Y, X)`` of the image.

    Returns
    -------
    dict[int, SlicePrompt]
        ``{k: SlicePrompt(k, points=((x, y), ...), point_labels=(1|0, ...), box=...)}``.
        Points outside the image are left out (and logged).
    """
    z, h, w = (int(s) for s in grid_shape[:3])
    pts: dict[int, list[tuple[float, float]]] = {}
    labels: dict[int, list[int]] = {}
    data = np.asarray(points, dtype=np.float64).reshape(-1, 3) if len(points) else np.zeros((0, 3))
    for (pz, row, col), kind in zip(data, point_kinds, strict=True):
        k = int(round(pz))
        if not (0 <= k < z and -0.5 <= row <= h - 0.5 and -0.5 <= col <= w - 0.5):
            logger.info("point (z=%g, row=%g, col=%g) lies outside the image; ignored", pz, row, col)
            continue
        x, y = float(np.clip(col, 0, w - 1)), float(np.clip(row, 0, h - 1))
        pts.setdefault(k, []).append((x, y))
        labels.setdefault(k, []).append(1 if kind == POSITIVE else 0)
    boxes: dict[int, tuple[float, float, float, float]] = {}
    for verts in shapes:
        v = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
        ks = np.unique(np.round(v[:, 0]).astype(int))
        if v.shape[0] == 0 or ks.size != 1 or not 0 <= ks[0] < z:
            logger.info("a shape spans several slices or lies outside the volume; ignored")
            continue
        r0, r1 = np.clip([v[:, 1].min(), v[:, 1].max()], 0, h - 1)
        c0, c1 = np.clip([v[:, 2].min(), v[:, 2].max()], 0, w - 1)
        if r1 <= r0 or c1 <= c0:
            continue
        k = int(ks[0])
        if k in boxes:
            logger.info("slice %d has several boxes; the last one drawn is used", k)
        boxes[k] = (float(c0), float(r0), float(c1), float(r1))
    out = {}
    for k in sorted(set(pts) | set(boxes)):
        out[k] = SlicePrompt(k, points=tuple(pts.get(k, ())), point_labels=tuple(labels.get(k, ())), box=boxes.get(k))
    return out
