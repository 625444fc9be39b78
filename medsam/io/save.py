"""Writing label maps with the exact geometry of their source: :func:`save_mask`.

NIfTI, NRRD and MetaImage files are written by SimpleITK from the ``Volume``'s LPS
geometry. For NIfTI, ITK stores the same voxel-to-RAS affine in both the qform and the
sform (codes 1, scanner), so a mask of an image read from NIfTI has that image's affine.
A ``.dcm`` output is a DICOM SEG on the source series (:mod:`medsam.io.dicom_seg`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from medsam.atomic import atomic_write
from medsam.errors import InputFileError, OutputExistsError
from medsam.io.formats import short_error
from medsam.io.volume import Volume

if TYPE_CHECKING:
    from medsam.io.dicom_seg import AlgorithmInfo

__all__ = ["save_mask", "check_mask_path", "check_mask_format", "MASK_FORMATS"]

logger = logging.getLogger(__name__)

#: File name endings :func:`save_mask` writes, and whether the file is compressed.
#: ``.dcm`` is a DICOM SEG (:mod:`medsam.io.dicom_seg`), for DICOM sources only.
MASK_FORMATS: dict[str, bool] = {".nii.gz": True, ".nii": False, ".nrrd": True, ".mha": True, ".dcm": False}


def _mask_suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in MASK_FORMATS:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    ext = "".join(path.suffixes[-2:]) if name.endswith(".gz") else path.suffix
    raise InputFileError(
        path,
        f"cannot write masks as {ext or 'a file without extension'!r}; supported: {', '.join(MASK_FORMATS)}",
    )


def _as_labels(labels: object, grid_shape: tuple[int, int, int]) -> np.ndarray:
    """Validate ``labels`` and return them as C-contiguous ``uint8`` (or ``uint16``)."""
    arr = np.asarray(labels)
    if arr.shape != tuple(grid_shape):
        raise ValueError(
            f"labels have shape {arr.shape} but the image grid is {tuple(grid_shape)} (Z, Y, X)"
        )
    if arr.dtype == bool:
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(
            f"labels must be an integer or bool array, got {arr.dtype}; cast (e.g. .astype(np.uint8)) first"
        )
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0:
        raise ValueError(f"labels must be >= 0 (0 is background), got a minimum of {lo}")
    if hi > np.iinfo(np.uint16).max:
        raise ValueError(f"labels must be <= 65535, got a maximum of {hi}")
    dtype = np.uint8 if hi <= 255 else np.uint16
    return np.ascontiguousarray(arr, dtype=dtype)


def _write_image(image: sitk.Image, path: Path, compress: bool) -> None:
    """Write ``image`` to ``path`` (the writer is chosen by the file name ending)."""
    sitk.WriteImage(image, str(path), useCompression=compress)


def check_mask_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """Check an output path before any work: a supported ending, not a folder, not under a
    file, and not an existing file unless ``overwrite``. Returns the expanded path."""
    path = Path(path).expanduser()
    _mask_suffix(path)
    if path.is_dir():
        raise InputFileError(
            path, f"is a folder; give a file name ending in one of {', '.join(MASK_FORMATS)}"
        )
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise InputFileError(path, f"cannot be written: {parent} is a file, not a folder")
    return path


def check_mask_format(path: str | os.PathLike[str], like: Volume) -> None:
    """Refuse an output format that cannot hold a mask of ``like``: a DICOM SEG (``.dcm``)
    needs a DICOM source series to reference."""
    if _mask_suffix(Path(path)) == ".dcm":
        from medsam.io.dicom_seg import check_seg_source

        check_seg_source(like, path)


def save_mask(
    labels: np.ndarray,
    like: Volume,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    names: Mapping[int, str] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    algorithm: AlgorithmInfo | None = None,
    anonymize: bool = False,
) -> Path:
    """Write a label map on the grid of ``like`` as NIfTI, NRRD, MetaImage or DICOM SEG.

    Parameters
    ----------
    labels:
        Integer or bool array of shape ``like.grid_shape`` = ``(Z, Y, X)``; 0 is
        background. Stored as ``uint8``, or ``uint16`` when a label exceeds 255.
    like:
        The image the labels belong to; its spacing, origin and direction (LPS mm) are
        written unchanged.
    path:
        Output file ending in ``.nii.gz``, ``.nii``, ``.nrrd`` or ``.mha``, or ``.dcm`` for a
        DICOM SEG (only when ``like`` was read from DICOM; see
        :func:`medsam.io.dicom_seg.write_dicom_seg`). Missing parent folders are created.
        Compressed except for ``.nii``.
    overwrite:
        Replace an existing file. Without it an existing file raises
        :class:`~medsam.errors.OutputExistsError` before any work is done.
    names, colors, algorithm, anonymize:
        DICOM SEG only: ``{label: name}`` (names choose the coded anatomy),
        ``{label: (r, g, b)}`` display colours, what made the mask, and whether to
        pseudonymise patient and study identity.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InputFileError
        Unsupported file name ending.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    ValueError, TypeError
        ``labels`` of the wrong shape, a non-integer dtype, or out-of-range values.

    Notes
    -----
    The file is written to a temporary name in the output folder and moved into place
    with :func:`os.replace`, so readers never see a partial file and a failed write leaves
    any previous file untouched.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> img = Volume(np.zeros((2, 3, 4), np.int16), spacing=(0.5, 0.5, 2.0))
    >>> out = save_mask(np.ones((2, 3, 4), np.uint8), img, pathlib.Path(tempfile.mkdtemp()) / "m.nrrd")
    >>> out.name
    'm.nrrd'
    """
    path = check_mask_path(path, overwrite=overwrite)
    suffix = _mask_suffix(path)
    arr = _as_labels(labels, like.grid_shape)
    if suffix == ".dcm":
        from medsam.io.dicom_seg import write_dicom_seg

        return write_dicom_seg(
            arr, like, path, names=names, colors=colors, algorithm=algorithm, anonymize=anonymize
        )
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(tuple(float(s) for s in like.spacing))
    image.SetOrigin(tuple(float(o) for o in like.origin))
    image.SetDirection(tuple(float(d) for d in np.asarray(like.direction).ravel()))

    def write(tmp: Path) -> None:
        try:
            _write_image(image, tmp, MASK_FORMATS[suffix])
        except RuntimeError as exc:
            raise OSError(f"{path}: could not write the mask ({short_error(exc)})") from None

    atomic_write(path, write)
    logger.info("wrote %s labels %s to %s", arr.dtype, arr.shape, path)
    return path
