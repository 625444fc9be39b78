"""Typed prompts, their validation, and the one world (mm) -> voxel conversion.

Coordinate convention (``shared/STYLE.md``): on a slice ``k`` (the array's axis 0, the ITK
k index), a point is ``(x, y) = (i, j)`` = (column, row) with label 1 (foreground) or 0
(background), and a box is ``(x0, y0, x1, y1)`` in *inclusive* pixel indices. The
conversion to SAM's resized model frame happens only in :mod:`medsam.models`.

World prompts (LPS or RAS mm) are turned into voxel prompts by :func:`world_to_voxel`
and nothing else. All validation happens here, before any model work.

Examples
--------
>>> p = SlicePrompt(slice=3, box=(10, 20, 30, 40))
>>> validate_slice_prompt(p, (5, 64, 64)) is p
True
>>> parse_box_arg("3:10,20,30,40")
SlicePrompt(slice=3, points=(), point_labels=(), box=(10.0, 20.0, 30.0, 40.0), mask=None)
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from medsam.errors import InputFileError, MissingInputError, PromptError
from medsam.mask_rle import rle_to_mask

__all__ = [
    "SlicePrompt",
    "ObjectPrompts",
    "PromptSet",
    "as_float_array",
    "validate_box",
    "validate_points",
    "validate_slice_prompt",
    "world_to_voxel",
    "parse_prompts",
    "load_prompts",
    "parse_box_arg",
    "parse_point_arg",
    "box_from_mask",
]

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SlicePrompt:
    """Prompts for one object on one slice, in voxel space.

    Attributes
    ----------
    slice:
        Slice index ``k`` (array axis 0).
    points:
        ``((x, y), ...)`` pixel coordinates (column, row).
    point_labels:
        One per point: 1 foreground, 0 background.
    box:
        ``(x0, y0, x1, y1)`` inclusive pixel indices, or ``None``.
    mask:
        Optional ``(Y, X)`` bool mask prompt (e.g. a user-painted correction).
    """

    slice: int
    points: tuple[tuple[float, float], ...] = ()
    point_labels: tuple[int, ...] = ()
    box: Box | None = None
    mask: np.ndarray | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "slice", int(self.slice))
        pts = tuple((float(p[0]), float(p[1])) for p in self.points)
        object.__setattr__(self, "points", pts)
        labels = tuple(int(v) for v in self.point_labels)
        if pts and not labels:
            labels = (1,) * len(pts)
        object.__setattr__(self, "point_labels", labels)
        if self.box is not None:
            object.__setattr__(self, "box", tuple(float(v) for v in self.box))
        if self.mask is not None:
            object.__setattr__(self, "mask", np.asarray(self.mask, dtype=bool))

    @property
    def is_empty(self) -> bool:
        return not self.points and self.box is None and self.mask is None


@dataclass(frozen=True)
class ObjectPrompts:
    """All prompts of one object (one output label).

    Attributes
    ----------
    label:
        Output label id (1..65535).
    name:
        Human name, e.g. ``"liver"``.
    prompts:
        Slice prompts, any number of slices.
    propagate:
        Carry the object through the volume from its prompted slices.
    z_range:
        3D-box mode: ``(k0, k1)`` inclusive slice range to which the object is limited.
    """

    label: int
    name: str = ""
    prompts: tuple[SlicePrompt, ...] = ()
    propagate: bool = True
    z_range: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.label, (int, np.integer)) and 1 <= int(self.label) <= 65535):
            raise PromptError(f"object label must be an integer in 1..65535, got {self.label!r}")
        object.__setattr__(self, "label", int(self.label))
        object.__setattr__(self, "name", self.name or f"object_{self.label}")
        object.__setattr__(self, "prompts", tuple(self.prompts))
        if self.z_range is not None:
            k0, k1 = (int(v) for v in self.z_range)
            if k1 < k0:
                raise PromptError(f"object {self.name!r}: z_range {self.z_range} is inverted")
            object.__setattr__(self, "z_range", (k0, k1))


@dataclass(frozen=True)
class PromptSet:
    """Prompts for several objects on one volume."""

    objects: tuple[ObjectPrompts, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "objects", tuple(self.objects))
        labels = [o.label for o in self.objects]
        dup = sorted({v for v in labels if labels.count(v) > 1})
        if dup:
            raise PromptError(f"label ids must be unique across objects, repeated: {dup}")

    @property
    def labels(self) -> dict[int, str]:
        return {o.label: o.name for o in self.objects}


# ----------------------------------------------------------------------------- validation
def as_float_array(value: object, what: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise PromptError(f"{what} must be numeric, got {value!r}") from err


def validate_points(
    points: object, point_labels: object, hw: tuple[int, int], where: str = ""
) -> tuple[np.ndarray, np.ndarray]:
    """Check ``(N, 2)`` ``(x, y)`` points and their 0/1 labels against an ``hw = (H, W)`` slice.

    Returns ``(N, 2)`` float64 points and ``(N,)`` int64 labels; raises :class:`PromptError`.
    """
    try:
        return _validate_points(points, point_labels, hw)
    except PromptError as exc:
        raise PromptError(f"{where}: {exc}" if where else str(exc)) from None


def _validate_points(
    points: object, point_labels: object, hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    if points is None or point_labels is None:
        raise PromptError(
            "points and point_labels must be given together (label 1 foreground, 0 background)"
        )
    pts = as_float_array(points, "points")
    if pts.shape == (2,):
        pts = pts[None]
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] == 0:
        raise PromptError(
            f"points must have shape (N, 2) as (x, y) = (column, row), got {pts.shape}"
        )
    labels = as_float_array(point_labels, "point_labels").reshape(-1)
    if labels.shape[0] != pts.shape[0]:
        raise PromptError(
            f"{pts.shape[0]} points but {labels.shape[0]} point_labels; give one label per point"
        )
    if not np.isin(labels, (0, 1)).all():
        raise PromptError(
            f"point_labels must be 1 (foreground) or 0 (background), got {np.unique(labels).tolist()}"
        )
    finite = np.isfinite(pts).all(axis=1)
    if not finite.all():
        bad_x, bad_y = pts[int(np.argmin(finite))]
        raise PromptError(f"point (x={bad_x:g}, y={bad_y:g}) is not finite: give pixel coordinates")
    h, w = hw
    x, y = pts[:, 0], pts[:, 1]
    inside = np.isfinite(pts).all(axis=1) & (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    if not inside.all():
        bad_x, bad_y = pts[int(np.argmin(inside))]
        raise PromptError(
            f"point (x={bad_x:g}, y={bad_y:g}) is outside the {w}x{h} image "
            f"(x in [0, {w - 1}], y in [0, {h - 1}])"
        )
    return pts, labels.astype(np.int64)


def validate_box(box: object, hw: tuple[int, int], where: str = "") -> Box:
    """Check an inclusive ``(x0, y0, x1, y1)`` box against an ``hw = (H, W)`` slice."""
    try:
        return tuple(float(v) for v in _validate_box(box, hw))  # type: ignore[return-value]
    except PromptError as exc:
        raise PromptError(f"{where}: {exc}" if where else str(exc)) from None


def _validate_box(box: object, hw: tuple[int, int]) -> np.ndarray:
    bbox = as_float_array(box, "box")
    if bbox.size != 4:
        raise PromptError(f"box must be (x0, y0, x1, y1), got shape {bbox.shape}")
    bbox = bbox.reshape(4)
    x0, y0, x1, y1 = bbox
    text = f"box (x0={x0:g}, y0={y0:g}, x1={x1:g}, y1={y1:g})"
    if not np.isfinite(bbox).all():
        raise PromptError(f"{text} has non-finite coordinates")
    if x1 < x0 or y1 < y0:
        raise PromptError(f"{text} is inverted; need x0 <= x1 and y0 <= y1")
    h, w = hw
    if x0 < 0 or y0 < 0 or x1 > w - 1 or y1 > h - 1:
        raise PromptError(
            f"{text} is outside the {w}x{h} image (x in [0, {w - 1}], y in [0, {h - 1}])"
        )
    return bbox


def validate_slice_prompt(prompt: SlicePrompt, grid_shape: Sequence[int], where: str = "") -> SlicePrompt:
    """Validate a :class:`SlicePrompt` against a ``(Z, Y, X)`` grid; returns it unchanged.

    Besides shapes and bounds: negative clicks need a positive click, a box or a mask on the
    same slice (pass the slice's merged prompt, :func:`merge_slice_prompts`).
    """
    z, h, w = (int(s) for s in grid_shape[:3])
    pre = f"{where}: " if where else ""
    if not 0 <= prompt.slice < z:
        raise PromptError(f"{pre}slice {prompt.slice} is out of range (the volume has slices 0..{z - 1})")
    if prompt.is_empty:
        raise PromptError(f"{pre}empty prompt on slice {prompt.slice}: give a box, points or a mask")
    where_k = f"{where + ', ' if where else ''}slice {prompt.slice}"
    if prompt.box is not None:
        validate_box(prompt.box, (h, w), where_k)
    if prompt.points:
        validate_points(prompt.points, prompt.point_labels, (h, w), where_k)
        if prompt.box is None and prompt.mask is None and not any(int(v) == 1 for v in prompt.point_labels):
            raise PromptError(
                f"{pre}only negative clicks on slice {prompt.slice}: add a positive click or a box "
                "(a negative click removes part of an object)"
            )
    if prompt.mask is not None and prompt.mask.shape != (h, w):
        raise PromptError(f"{pre}mask prompt shape {prompt.mask.shape} does not match the slice ({h}, {w})")
    return prompt


# ------------------------------------------------------------------------ world -> voxel
def world_to_voxel(xyz: Any, volume: Any, space: str = "lps") -> np.ndarray:
    """Convert world points ``(N, 3)`` in mm (``"lps"`` or ``"ras"``) to ``(N, 3)`` ``(i, j, k)``.

    The single conversion from world prompts to voxel prompts. Points whose ``k`` lies
    more than half a slice outside the volume are off every slice plane and rejected.
    """
    if space not in ("lps", "ras"):
        raise PromptError(f"world space must be 'lps' or 'ras', got {space!r}")
    pts = np.asarray(xyz, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise PromptError(f"world points must be [x, y, z] in mm, got {pts.tolist()}")
    ijk = volume.world_to_index(pts, space=space)
    z = volume.grid_shape[0]
    off = (ijk[:, 2] < -0.5) | (ijk[:, 2] > z - 0.5)
    if off.any():
        p = pts[np.argmax(off)].tolist()
        raise PromptError(
            f"world point {p} ({space.upper()} mm) is off every slice plane "
            f"(slice index {ijk[np.argmax(off), 2]:.2f}, volume has 0..{z - 1})"
        )
    return ijk


def _world_box(corners: Any, volume: Any, space: str, where: str) -> tuple[int, Box]:
    c = np.asarray(corners, dtype=np.float64)
    if c.shape != (2, 3):
        raise PromptError(f"{where}: a world box is two corners [[x0,y0,z0],[x1,y1,z1]] in mm")
    ijk = world_to_voxel(c, volume, space)
    k0, k1 = np.round(ijk[:, 2]).astype(int)
    if k0 != k1:
        raise PromptError(
            f"{where}: world box corners lie on different slices ({ijk[0, 2]:.2f} vs {ijk[1, 2]:.2f}); "
            "both corners must lie on one slice plane (within half a slice)"
        )
    i0, i1 = sorted(ijk[:, 0])
    j0, j1 = sorted(ijk[:, 1])
    return int(k0), (float(np.round(i0)), float(np.round(j0)), float(np.round(i1)), float(np.round(j1)))


# ------------------------------------------------------------------------------- parsing
def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise PromptError(msg)


def _parse_object(obj: Mapping[str, Any], idx: int, space: str, volume: Any) -> ObjectPrompts:
    where = f"object #{idx}"
    _require(isinstance(obj, Mapping), f"{where}: must be a JSON object")
    unknown = set(obj) - {"label", "name", "propagate", "prompts", "z_range"}
    _require(not unknown, f"{where}: unknown keys {sorted(unknown)}")
    _require("label" in obj, f"{where}: missing 'label'")
    label = obj["label"]
    _require(isinstance(label, int) and not isinstance(label, bool), f"{where}: label must be an integer")
    where = f"object {obj.get('name') or label!r}"
    raw = obj.get("prompts", [])
    _require(isinstance(raw, list) and raw, f"{where}: 'prompts' must be a non-empty list")
    prompts = []
    try:
        for p in raw:
            _require(isinstance(p, Mapping), f"{where}: each prompt must be a JSON object")
            unknown = set(p) - {"slice", "box", "points", "point_labels", "mask"}
            _require(not unknown, f"{where}: unknown prompt keys {sorted(unknown)}")
            pts = p.get("points") or []
            labels = p.get("point_labels") or [1] * len(pts)
            if space == "voxel":
                _require("slice" in p and isinstance(p["slice"], int), f"{where}: voxel prompts need an integer 'slice'")
                k = int(p["slice"])
                box = p.get("box")
                mask = None
                if p.get("mask") is not None:
                    mask = rle_to_mask(p["mask"], tuple(volume.grid_shape[1:3]), f"{where}, slice {k}")
                prompts.append(
                    SlicePrompt(k, points=[tuple(q[:2]) for q in pts], point_labels=labels, box=box, mask=mask)
                )
                continue
            _require("mask" not in p, f"{where}: mask prompts are in voxel space only")
            _require("slice" not in p, f"{where}: omit 'slice' in {space} space (it follows from the mm)")
            if p.get("box") is not None:
                k, box = _world_box(p["box"], volume, space, where)
                prompts.append(SlicePrompt(k, box=box))
            if pts:
                ijk = world_to_voxel(pts, volume, space)
                ks = np.round(ijk[:, 2]).astype(int)
                for k in sorted(set(ks.tolist())):
                    sel = ks == k
                    prompts.append(
                        SlicePrompt(
                            k,
                            points=[tuple(q) for q in ijk[sel, :2].round(3).tolist()],
                            point_labels=np.asarray(labels)[sel].tolist(),
                        )
                    )
    except PromptError:
        raise
    except (TypeError, ValueError, IndexError, OverflowError):  # numbers of the wrong type or shape
        raise PromptError(
            f"{where}: malformed prompt: 'box' is [x0, y0, x1, y1], 'points' [[x, y], ...] and "
            "'point_labels' [1 or 0, ...], all numbers"
        ) from None
    z_range = obj.get("z_range")
    _require(
        z_range is None or (isinstance(z_range, list) and len(z_range) == 2
                            and all(isinstance(v, int) and not isinstance(v, bool) for v in z_range)),
        f"{where}: 'z_range' must be [k0, k1], two slice indices",
    )
    return ObjectPrompts(
        label=label,
        name=str(obj.get("name", "")),
        prompts=tuple(prompts),
        propagate=bool(obj.get("propagate", True)),
        z_range=tuple(z_range) if z_range is not None else None,
    )


def parse_prompts(data: Mapping[str, Any], volume: Any) -> PromptSet:
    """Parse and validate the prompts JSON structure against ``volume``.

    Format::

        {"space": "voxel" | "lps" | "ras",
         "objects": [{"label": 1, "name": "liver", "propagate": true, "z_range": [k0, k1],
                      "prompts": [{"slice": 57, "box": [x0, y0, x1, y1]},
                                  {"slice": 60, "points": [[x, y], [x, y]], "point_labels": [1, 0]}]}]}

    In ``lps``/``ras`` space points are ``[x, y, z]`` mm, a box is two corners
    ``[[x0, y0, z0], [x1, y1, z1]]`` on one slice plane, and ``slice`` is omitted. In voxel
    space a prompt may also hold ``"mask": {"size": [Y, X], "counts": [...]}``
    (:func:`mask_to_rle`).
    """
    _require(isinstance(data, Mapping), "prompts must be a JSON object with 'objects'")
    space = str(data.get("space", "voxel")).lower()
    _require(space in ("voxel", "lps", "ras"), f"'space' must be voxel, lps or ras, got {space!r}")
    objs = data.get("objects")
    _require(isinstance(objs, list) and objs, "prompts need a non-empty 'objects' list")
    pset = PromptSet(tuple(_parse_object(o, i, space, volume) for i, o in enumerate(objs)))
    for obj in pset.objects:
        for p in merge_slice_prompts(obj.prompts):  # a slice's prompts count together
            validate_slice_prompt(p, volume.grid_shape, f"object {obj.name!r}")
        if obj.z_range is not None:
            z = volume.grid_shape[0]
            _require(
                0 <= obj.z_range[0] and obj.z_range[1] < z,
                f"object {obj.name!r}: z_range {list(obj.z_range)} is out of range (0..{z - 1})",
            )
    return pset


def load_prompts(path: str | Path, volume: Any) -> PromptSet:
    """Read a prompts JSON file; errors name the file."""
    p = Path(path)
    if not p.exists():
        raise MissingInputError(p)
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(p, f"not valid JSON ({exc})") from None
    try:
        return parse_prompts(data, volume)
    except PromptError as exc:
        raise PromptError(f"{p}: {exc}") from None


def _numbers(text: str, what: str, arg: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise PromptError(f"{what} {arg!r}: expected numbers separated by commas") from None


def parse_box_arg(arg: str) -> SlicePrompt:
    """Parse the CLI form ``K:X0,Y0,X1,Y1`` (voxel indices, inclusive)."""
    k, sep, rest = arg.partition(":")
    _require(bool(sep) and k.strip().lstrip("-").isdigit(), f"--box {arg!r}: expected K:X0,Y0,X1,Y1")
    nums = _numbers(rest, "--box", arg)
    _require(len(nums) == 4, f"--box {arg!r}: expected 4 numbers after the slice")
    return SlicePrompt(int(k), box=tuple(nums))


def parse_point_arg(arg: str) -> SlicePrompt:
    """Parse the CLI form ``K:X,Y[,L]`` (label L defaults to 1, foreground)."""
    k, sep, rest = arg.partition(":")
    _require(bool(sep) and k.strip().lstrip("-").isdigit(), f"--point {arg!r}: expected K:X,Y[,L]")
    nums = _numbers(rest, "--point", arg)
    _require(len(nums) in (2, 3), f"--point {arg!r}: expected X,Y or X,Y,L after the slice")
    _require(
        len(nums) < 3 or (math.isfinite(nums[2]) and nums[2].is_integer()),
        f"--point {arg!r}: the label L must be 1 (foreground) or 0 (background)",
    )
    label = int(nums[2]) if len(nums) == 3 else 1
    return SlicePrompt(int(k), points=[(nums[0], nums[1])], point_labels=[label])


def merge_slice_prompts(prompts: Sequence[SlicePrompt]) -> tuple[SlicePrompt, ...]:
    """Merge prompts that share a slice (points concatenated, last box/mask wins)."""
    by_k: dict[int, SlicePrompt] = {}
    for p in prompts:
        q = by_k.get(p.slice)
        if q is None:
            by_k[p.slice] = p
            continue
        by_k[p.slice] = replace(
            q,
            points=q.points + p.points,
            point_labels=q.point_labels + p.point_labels,
            box=p.box if p.box is not None else q.box,
            mask=p.mask if p.mask is not None else q.mask,
        )
    return tuple(by_k[k] for k in sorted(by_k))


def box_from_mask(mask: np.ndarray) -> Box | None:
    """Tight inclusive ``(x0, y0, x1, y1)`` box of a ``(Y, X)`` mask, or ``None`` if empty."""
    ys, xs = np.nonzero(np.asarray(mask))
    if ys.size == 0:
        return None
    return (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))
