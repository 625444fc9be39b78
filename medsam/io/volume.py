"""The in-memory volume: a ``(Z, Y, X)`` array plus its LPS geometry and source metadata.

Conventions (decided once for the whole project, see ``shared/STYLE.md``):

* ``Volume.array`` has shape ``(Z, Y, X)`` (slices, rows, columns), exactly what
  ``SimpleITK.GetArrayFromImage`` returns. RGB images have shape ``(1, Y, X, 3)``.
* Voxel indices follow ITK: ``(i, j, k) = (column, row, slice)``, so a voxel is
  ``array[k, j, i]``.
* Geometry is in **LPS millimetres** (DICOM/ITK): ``world = origin + D @ diag(spacing) @ (i, j, k)``
  where ``D`` is the 3x3 ``direction`` matrix whose *columns* are the directions of the
  i, j and k axes. The RAS affine used by nibabel and MONAI is derived here and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Volume", "SourceMetadata", "LPS_TO_RAS", "MIN_SEGMENT_SIDE", "require_segmentable"]

#: Flip of the first two world axes: LPS <-> RAS (its own inverse).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

#: The smallest slice, in pixels per side, that medsam segments: below it a box or click
#: has no room, and the model's 1024-pixel input would be one upsampled blur.
MIN_SEGMENT_SIDE = 8


@dataclass(frozen=True)
class SourceMetadata:
    """What export (NIfTI/NRRD/MHA now, DICOM SEG later) needs to know about the source.

    Attributes
    ----------
    format:
        ``"dicom"``, ``"nifti"``, ``"nrrd"``, ``"mha"``, ``"image2d"`` ...
    series_uid, study_uid, frame_of_reference_uid:
        DICOM identifiers, ``None`` for non-DICOM input.
    sop_instance_uids:
        One per slice, ordered by slice index ``k`` (the array's axis 0).
        A multi-frame file repeats its one SOPInstanceUID.
    sop_class_uid:
        SOP class of the source images.
    slice_files:
        Source file per slice (ordered by ``k``), so that a DICOM SEG writer can
        re-read the headers it needs without this object holding pixel data.
    window_center, window_width:
        The first window in the DICOM header (``WindowCenter``/``WindowWidth``), if any.
    extra:
        Free-form, format-specific header values (e.g. NIfTI qform/sform codes).
    """

    format: str = "unknown"
    series_uid: str | None = None
    study_uid: str | None = None
    frame_of_reference_uid: str | None = None
    sop_class_uid: str | None = None
    sop_instance_uids: tuple[str, ...] = ()
    slice_files: tuple[str, ...] = ()
    window_center: float | None = None
    window_width: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class Volume:
    """A 3D (or 2D, as one slice) image with exact geometry.

    Parameters
    ----------
    array:
        Voxel data, shape ``(Z, Y, X)`` in its native dtype (CT stays int16 after
        rescale when it fits), or ``(1, Y, X, 3)`` for RGB 2D images.
    spacing:
        ``(sx, sy, sz)`` in mm, along the i, j, k axes.
    origin:
        World position (LPS mm) of voxel ``(0, 0, 0)``'s centre.
    direction:
        3x3 direction cosines; column ``n`` is the LPS direction of index axis ``n``.
    modality:
        ``"CT"``, ``"MR"``, ``"RGB"``, ``"OT"`` (other) ...
    source:
        The path this volume was read from, if any.
    meta:
        Source metadata for export.

    Examples
    --------
    >>> import numpy as np
    >>> v = Volume(np.zeros((2, 3, 4), np.int16), spacing=(0.5, 0.5, 2.0))
    >>> v.shape, v.n_slices
    ((2, 3, 4), 2)
    >>> v.index_to_world([1, 0, 1]).tolist()
    [0.5, 0.0, 2.0]
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))
    modality: str = "OT"
    source: Path | None = None
    meta: SourceMetadata = field(default_factory=SourceMetadata)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[None]
        rgb = arr.ndim == 4 and arr.shape[-1] in (3, 4)
        if not (arr.ndim == 3 or rgb):
            raise ValueError(
                f"Volume array must be (Z, Y, X) or (1, Y, X, 3) for RGB, got shape {arr.shape}"
            )
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if len(spacing) != 3 or len(origin) != 3:
            raise ValueError("spacing and origin must have 3 values (x, y, z)")
        if any(not np.isfinite(s) or s <= 0 for s in spacing):
            raise ValueError(f"spacing must be positive and finite, got {spacing}")
        if not np.allclose(np.abs(np.linalg.det(direction)), 1.0, atol=1e-3):
            raise ValueError(f"direction must be an orthonormal 3x3 matrix, got {direction.tolist()}")
        direction.setflags(write=False)
        object.__setattr__(self, "array", arr)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        if self.source is not None:
            object.__setattr__(self, "source", Path(self.source))

    # ------------------------------------------------------------------ shape
    @property
    def shape(self) -> tuple[int, ...]:
        """Array shape, ``(Z, Y, X)`` or ``(1, Y, X, 3)``."""
        return tuple(self.array.shape)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(Z, Y, X)`` without any colour axis."""
        return tuple(int(s) for s in self.array.shape[:3])  # type: ignore[return-value]

    @property
    def n_slices(self) -> int:
        return int(self.array.shape[0])

    @property
    def is_rgb(self) -> bool:
        return self.array.ndim == 4

    @property
    def name(self) -> str:
        """A short human name from the source path (without NIfTI's double suffix)."""
        if self.source is None:
            return "volume"
        n = self.source.name
        for suf in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm"):
            if n.lower().endswith(suf):
                return n[: -len(suf)]
        return self.source.stem

    # --------------------------------------------------------------- geometry
    def affine_lps(self) -> np.ndarray:
        """4x4 affine from ``(i, j, k, 1)`` voxel indices to LPS mm."""
        a = np.eye(4)
        a[:3, :3] = self.direction @ np.diag(self.spacing)
        a[:3, 3] = self.origin
        return a

    def affine_ras(self) -> np.ndarray:
        """4x4 affine from ``(i, j, k, 1)`` voxel indices to RAS mm (nibabel/MONAI)."""
        return LPS_TO_RAS @ self.affine_lps()

    def index_to_world(self, ijk: Any, space: str = "lps") -> np.ndarray:
        """Map voxel indices ``(..., 3)`` as ``(i, j, k)`` to world mm ``(..., 3)``."""
        aff = self.affine_ras() if space.lower() == "ras" else self.affine_lps()
        p = np.asarray(ijk, dtype=np.float64)
        return p @ aff[:3, :3].T + aff[:3, 3]

    def world_to_index(self, xyz: Any, space: str = "lps") -> np.ndarray:
        """Map world mm ``(..., 3)`` (LPS or RAS) to continuous ``(i, j, k)`` indices."""
        aff = self.affine_ras() if space.lower() == "ras" else self.affine_lps()
        p = np.asarray(xyz, dtype=np.float64) - aff[:3, 3]
        return p @ np.linalg.inv(aff[:3, :3]).T

    def same_geometry(self, other: Volume, atol: float = 1e-4) -> bool:
        """True when both volumes share grid shape, spacing, origin and direction."""
        return (
            self.grid_shape == other.grid_shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    def with_array(self, array: np.ndarray, **changes: Any) -> Volume:
        """A copy with a new array on the same grid (e.g. a mask or a windowed image)."""
        arr = np.asarray(array)
        if tuple(arr.shape[:3]) != self.grid_shape:
            raise ValueError(f"array shape {arr.shape} does not match the volume grid {self.grid_shape}")
        return replace(self, array=arr, **changes)

    def __repr__(self) -> str:
        return (
            f"Volume(shape={self.shape}, dtype={self.array.dtype}, spacing={self.spacing}, "
            f"origin={self.origin}, modality={self.modality!r}, source={str(self.source)!r})"
        )


def require_segmentable(volume: Volume) -> None:
    """Refuse a volume whose slices are too small to segment (under ``MIN_SEGMENT_SIDE``).

    Raises
    ------
    medsam.errors.InputFileError
        "is 1x1 pixels per slice; medsam segments slices of at least 8x8", naming the source.
    """
    from medsam.errors import InputFileError

    _, h, w = volume.grid_shape
    if min(h, w) < MIN_SEGMENT_SIDE:
        raise InputFileError(
            volume.source or "the image",
            f"is {w}x{h} pixels per slice; medsam segments slices of at least "
            f"{MIN_SEGMENT_SIDE}x{MIN_SEGMENT_SIDE}",
        )
