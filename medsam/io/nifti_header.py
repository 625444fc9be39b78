"""What SimpleITK leaves unsaid about a NIfTI header: degenerate or conflicting geometry.

SimpleITK reads a header without an orientation (``qform_code`` and ``sform_code`` 0) as
an unrotated grid at the origin, a voxel size of 0 as 1 mm, and a qform and sform that
disagree as the sform, all without a word. A volume in mL computed on such a grid can be
off by a factor of 27 (3 mm voxels read as 1 mm). :func:`geometry_notes` says, in one
sentence each, what was assumed, so that the reader can warn and the sidecar can record it.

SimpleITK here does not read NIfTI-2 (``sizeof_hdr`` 540) at all; :func:`is_nifti2` spots
it so that :mod:`medsam.io.formats` can read it through nibabel instead.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["geometry_notes", "is_nifti2", "quiet_nibabel"]

_AXES = ("i (columns)", "j (rows)", "k (slices)")


@contextlib.contextmanager
def quiet_nibabel() -> Iterator[None]:
    """Silence nibabel's own header-fixing messages ("pixdim[1,2,3] should be non-zero"):
    :func:`geometry_notes` reports the same problems once, in medsam's words."""
    log = logging.getLogger("nibabel.global")
    level = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(level)


def is_nifti2(path: Path) -> bool:
    """True when ``path`` (``.nii`` or ``.nii.gz``) starts with a NIfTI-2 header (540 bytes)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
    except (OSError, EOFError, zlib.error):
        return False
    return len(head) == 4 and 540 in (int.from_bytes(head, "little"), int.from_bytes(head, "big"))


def _corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World positions ``(8, 3)`` of the grid's corner voxels under a 4x4 affine."""
    ext = [max(int(n) - 1, 0) for n in (tuple(shape) + (1, 1, 1))[:3]]
    ijk = np.array([[a, b, c, 1.0] for a in (0, ext[0]) for b in (0, ext[1]) for c in (0, ext[2])])
    return (ijk @ np.asarray(affine, dtype=np.float64).T)[:, :3]


def geometry_notes(path: Path, used_affine_ras: np.ndarray) -> list[str]:
    """One sentence per assumption the reader made about ``path``'s geometry.

    Parameters
    ----------
    path:
        A ``.nii`` or ``.nii.gz`` file (NIfTI-1 or NIfTI-2).
    used_affine_ras:
        The 4x4 voxel-to-RAS affine of the volume as read (``Volume.affine_ras()``); it
        tells which of qform and sform the reader used when the two disagree.

    Returns
    -------
    list of str
        Empty for a clean header. Otherwise, e.g. "has no valid voxel size (pixdim[3] = 0 along k
        (slices), ..."; "has a qform and an sform that disagree by up to 20.0 mm ...".
    """
    import nibabel as nib

    klass = nib.Nifti2Header if is_nifti2(path) else nib.Nifti1Header
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:  # unchecked: nibabel's checks would set a 0 pixdim to 1
            header = klass.from_fileobj(f, check=False)
    except Exception:  # noqa: BLE001 - an unreadable header is reported by the reader itself
        return []
    try:
        return _notes(header, used_affine_ras)
    except Exception as exc:  # noqa: BLE001 - a hostile header must not crash the reader
        return [f"has inconsistent orientation fields ({exc}); the orientation is ITK's reading of them"]


def _notes(header: Any, used_affine_ras: np.ndarray) -> list[str]:
    notes: list[str] = []
    qcode, scode = int(header["qform_code"]), int(header["sform_code"])
    shape = header.get_data_shape()
    if qcode == 0 and scode == 0:
        notes.append(
            "has no orientation (qform_code and sform_code are 0); assumed an unrotated grid at the "
            "origin, so positions in mm are not the scanner's"
        )
    if scode == 0:
        pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
        bad = [a for a, size in enumerate(pixdim[: min(3, len(shape))]) if not (np.isfinite(size) and size > 0)]
        if bad:
            names = ", ".join(f"pixdim[{a + 1}] = {pixdim[a]:g} along {_AXES[a]}" for a in bad)
            notes.append(
                f"has no valid voxel size ({names}); assumed 1 mm, so lengths and volumes in mL "
                "are not trustworthy"
            )
    else:
        columns = np.linalg.norm(np.asarray(header.get_sform(), dtype=np.float64)[:3, :3], axis=0)
        for axis, size in enumerate(columns):
            if not size > 1e-6:
                notes.append(f"the sform gives axis {_AXES[axis]} a voxel size of 0; its geometry is degenerate")
    if qcode > 0:
        try:
            header.get_qform()
        except Exception:  # noqa: BLE001 - e.g. b^2 + c^2 + d^2 > 1: no rotation has that quaternion
            notes.append("has an invalid qform quaternion (b^2 + c^2 + d^2 > 1); its orientation is a guess")
            qcode = 0
    if qcode > 0 and scode > 0:
        gap = float(np.abs(_corners(header.get_qform(), shape) - _corners(header.get_sform(), shape)).max())
        if gap > 1e-3:
            used = np.asarray(used_affine_ras, dtype=np.float64)
            near_s = np.abs(_corners(used, shape) - _corners(header.get_sform(), shape)).max()
            near_q = np.abs(_corners(used, shape) - _corners(header.get_qform(), shape)).max()
            which = "sform" if near_s <= near_q else "qform"
            notes.append(
                f"has a qform and an sform that disagree by up to {gap:.1f} mm at the image corners; "
                f"using the {which}, as ITK does"
            )
    return notes
