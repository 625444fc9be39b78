"""One entry point for every input: :func:`load_volume`."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from medsam.errors import InputFileError, MissingInputError
from medsam.io.dicom import read_dicom_file, read_dicom_folder
from medsam.io.dicom_header import is_dicom_file
from medsam.io.formats import IMAGE2D_FORMATS, ITK_FORMATS, format_of, read_itk_file
from medsam.io.image2d import read_image2d
from medsam.io.volume import Volume

__all__ = ["load_volume", "SUPPORTED_INPUTS"]

logger = logging.getLogger(__name__)

#: Human-readable list of what :func:`load_volume` reads, used in error messages.
SUPPORTED_INPUTS = "a DICOM folder or file, " + ", ".join([*ITK_FORMATS, *IMAGE2D_FORMATS])


def load_volume(
    path: str | os.PathLike[str], *, series_uid: str | None = None, frame: int | None = None
) -> Volume:
    """Read an image file or DICOM series folder into a :class:`~medsam.io.volume.Volume`.

    Parameters
    ----------
    path:
        A DICOM series folder (searched recursively), a DICOM file (single- or
        multi-frame), a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``, ``.nhdr``),
        MetaImage (``.mha``, ``.mhd``) file, or a 2D PNG/JPEG/TIFF picture. Files without
        a known ending are read as DICOM when they carry the ``DICM`` marker.
    series_uid:
        For a folder holding several DICOM series: the SeriesInstanceUID to read
        (default: the largest series; the others are logged).
    frame:
        For a 4D NIfTI/NRRD/MetaImage file: the 0-based frame to read (required when the
        file has more than one frame).

    Returns
    -------
    Volume
        Array ``(Z, Y, X)`` in its native dtype (rescaled DICOM CT is ``int16``),
        ``(1, Y, X)`` for a 2D image and ``(1, Y, X, 3)`` ``uint8`` for colour pictures.
        Spacing ``(sx, sy, sz)``, origin and direction in LPS mm (ITK convention),
        modality, source path and :class:`~medsam.io.volume.SourceMetadata`.

    Raises
    ------
    MissingInputError
        The path does not exist.
    InputFileError
        Anything else that makes the input unreadable; the one-line message names the
        file and the problem.

    Examples
    --------
    >>> from pathlib import Path
    >>> ct = load_volume(Path("sample_data/dcmqi_ct3slice/ct-3slice"))  # doctest: +SKIP
    >>> ct.shape, ct.array.dtype  # doctest: +SKIP
    ((3, 512, 512), dtype('int16'))
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingInputError(p)
    if frame is not None and (isinstance(frame, bool) or not isinstance(frame, int) or frame < 0):
        raise ValueError(f"frame must be a non-negative integer, got {frame!r}")
    if p.is_dir():
        if frame is not None:
            raise InputFileError(
                p, "is a DICOM folder; frame= applies to 4D NIfTI/NRRD/MetaImage files only"
            )
        return read_dicom_folder(p, series_uid=series_uid)
    if not os.access(p, os.R_OK):
        raise InputFileError(p, "is not readable (permission denied)")
    fmt = format_of(p)
    if fmt is None and is_dicom_file(p):
        fmt = "dicom"
    if fmt is None:
        suffix = "".join(p.suffixes[-2:]) if p.name.lower().endswith(".gz") else p.suffix
        what = (
            f"unsupported file type {suffix!r}"
            if suffix
            else "unknown file type (no extension, not DICOM)"
        )
        raise InputFileError(p, f"{what}; supported: {SUPPORTED_INPUTS}")
    if fmt == "dicom":
        if frame is not None:
            raise InputFileError(
                p, "is a DICOM file; frame= applies to 4D NIfTI/NRRD/MetaImage files only"
            )
        return read_dicom_file(p, series_uid=series_uid)
    if series_uid is not None:
        raise InputFileError(p, "is not DICOM; series_uid= applies to DICOM folders and files only")
    if fmt in IMAGE2D_FORMATS.values():
        if frame is not None:
            raise InputFileError(
                p, "is a 2D picture; frame= applies to 4D NIfTI/NRRD/MetaImage files only"
            )
        return read_image2d(p, fmt)
    return read_itk_file(p, fmt, frame=frame)
