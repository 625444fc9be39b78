"""NIfTI, NRRD and MetaImage input through SimpleITK, plus SimpleITK <-> :class:`Volume` helpers.

The geometry of every file read here is ITK's: SimpleITK derives the LPS origin and
direction of a NIfTI file from its sform/qform exactly as ITK does, so a mask written by
:func:`medsam.io.save_mask` lands where ITK-based tools (3D Slicer, ITK-SNAP, MONAI's ITK
reader) expect it.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medsam.errors import InputFileError
from medsam.io.volume import LPS_TO_RAS, SourceMetadata, Volume

__all__ = [
    "ITK_FORMATS",
    "IMAGE2D_FORMATS",
    "format_of",
    "guess_modality",
    "image_to_volume",
    "read_itk_file",
    "short_error",
]

logger = logging.getLogger(__name__)

#: File name endings read through SimpleITK, and the format name recorded in ``meta.format``.
ITK_FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mha": "mha",
    ".mhd": "mhd",
}
#: File name endings read as 2D pictures.
IMAGE2D_FORMATS: dict[str, str] = {
    ".png": "png",
    ".jpg": "jpeg",
    ".jpeg": "jpeg",
    ".tif": "tiff",
    ".tiff": "tiff",
}
_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

_CT_HINT = re.compile(r"(^|[^a-z])ct([^a-z]|$)")
_MR_HINT = re.compile(r"(^|[^a-z])(mr|mri|t1w?|t2w?|flair|dwi|adc)([^a-z]|$)")


def format_of(path: str | Path) -> str | None:
    """The input format implied by a file name: ``"nifti"``, ``"nrrd"``, ``"mha"``, ``"mhd"``,
    ``"png"``, ``"jpeg"``, ``"tiff"``, ``"dicom"``, or ``None`` when the ending is unknown."""
    name = Path(path).name.lower()
    for table in (ITK_FORMATS, IMAGE2D_FORMATS):
        for suffix, fmt in table.items():
            if name.endswith(suffix):
                return fmt
    if name.endswith(_DICOM_SUFFIXES):
        return "dicom"
    return None


def short_error(exc: BaseException, limit: int = 160) -> str:
    """One line from an exception message (SimpleITK's span several lines and name C++ files)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # SimpleITK puts the useful part on the last line, after "sitk::ERROR:".
    text = lines[-1] if lines else type(exc).__name__
    text = text.split("sitk::ERROR:")[-1].strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def guess_modality(array: np.ndarray, name: str | None = None) -> str:
    """Guess ``"CT"``, ``"MR"`` or ``"OT"`` for an image without a DICOM header.

    The rules, in order, are deliberately conservative:

    1. Signed or floating-point data with a minimum below -500 looks like Hounsfield
       units (air is -1000 HU): ``"CT"``.
    2. Non-negative integer data with few distinct values looks like a label map: ``"OT"``.
    3. A file name token ``ct``, or ``mr``/``mri``/``t1``/``t2``/``flair``/``dwi``/``adc``
       (e.g. ``case_ct.nii.gz``, ``brain-t1.nrrd``), decides.
    4. A 3D (more than one slice), non-negative, non-label image: ``"MR"``.
    5. Anything else: ``"OT"``.

    Parameters
    ----------
    array:
        Voxel data, shape ``(Z, Y, X)``.
    name:
        Optional file name used for the hints of rule 3.

    Returns
    -------
    str
        ``"CT"``, ``"MR"`` or ``"OT"``.

    Examples
    --------
    >>> guess_modality(np.array([[[-1024, 40]]], np.int16))
    'CT'
    >>> guess_modality(np.zeros((4, 8, 8), np.uint8))
    'OT'
    """
    a = np.asarray(array)
    if a.size == 0 or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        return "OT"
    lo = float(a.min())
    signed = np.issubdtype(a.dtype, np.signedinteger) or np.issubdtype(a.dtype, np.floating)
    if signed and lo < -500:
        return "CT"
    if (
        lo >= 0
        and (a.dtype == bool or np.issubdtype(a.dtype, np.integer))
        and _looks_like_labels(a)
    ):
        return "OT"
    if name:
        stem = Path(name).name.lower()
        if _CT_HINT.search(stem):
            return "CT"
        if _MR_HINT.search(stem):
            return "MR"
    if a.ndim == 3 and a.shape[0] > 1 and lo >= 0:
        return "MR"
    return "OT"


def _looks_like_labels(a: np.ndarray, max_labels: int = 64) -> bool:
    """True when a strided sample of ``a`` holds at most ``max_labels`` distinct values."""
    flat = a.reshape(-1)
    step = max(1, flat.size // 1_000_000)
    return np.unique(flat[::step]).size <= max_labels


def image_to_volume(
    image: sitk.Image,
    *,
    source: Path | None = None,
    meta: SourceMetadata | None = None,
    modality: str | None = None,
    affine_ras: np.ndarray | None = None,
) -> Volume:
    """Convert a 2D or 3D SimpleITK image into a :class:`Volume`.

    Parameters
    ----------
    image:
        A scalar 2D/3D image, or a 2D image with 3 or 4 ``uint8`` components (RGB(A); alpha
        is dropped).
    source, meta:
        Recorded on the volume.
    modality:
        Modality to record; guessed with :func:`guess_modality` when ``None``.
    affine_ras:
        Optional 4x4 voxel-to-RAS affine that replaces the image's geometry. Used for 2D
        NIfTI files, where SimpleITK keeps only the in-plane part of the geometry.

    Returns
    -------
    Volume
        Array ``(Z, Y, X)`` (``(1, Y, X)`` for 2D, ``(1, Y, X, 3)`` for RGB) in the image's
        native pixel type; spacing, origin and direction in LPS mm.
    """
    dim = image.GetDimension()
    ncomp = image.GetNumberOfComponentsPerPixel()
    array = sitk.GetArrayFromImage(image)  # (Z, Y, X[, C]) or (Y, X[, C])
    if dim == 2:
        array = array[None]
    if ncomp > 1:
        array = array[..., :3]
    spacing = tuple(image.GetSpacing())
    origin = tuple(image.GetOrigin())
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if dim == 2:
        spacing = (*spacing, 1.0)
        origin = (*origin, 0.0)
        d3 = np.eye(3)
        d3[:2, :2] = direction
        direction = d3
    if affine_ras is not None:
        lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
        cols = lps[:3, :3]
        norms = np.linalg.norm(cols, axis=0)
        spacing = tuple(float(n) for n in norms)
        direction = cols / norms
        origin = tuple(float(o) for o in lps[:3, 3])
    meta = meta or SourceMetadata()
    if modality is None:
        modality = "RGB" if ncomp > 1 else guess_modality(array, source.name if source else None)
    return Volume(array, spacing, origin, direction, modality=modality, source=source, meta=meta)


def _mark_non_finite(vol: Volume, flat: np.ndarray, frame: int, path: Path) -> None:
    """Give NaN and infinite voxels (file-order ``flat`` indices of frame ``frame``) the
    image's lowest finite value, so that every window shows them as its minimum; warn."""
    a = vol.array
    n = a.size
    flat = flat[(flat >= frame * n) & (flat < (frame + 1) * n)] - frame * n
    if not flat.size:
        return
    view = a.reshape(-1)  # (Z, Y, X) C order is the file's order, x fastest
    view[flat] = np.nan
    low = np.nanmin(view) if flat.size < n else 0
    view[flat] = low
    vol.meta.extra["non_finite_voxels"] = int(flat.size)
    logger.warning(
        "%s: %s of %s voxels are NaN or infinite; they are treated as the window's minimum",
        path, f"{flat.size:,}", f"{n:,}",
    )


def read_itk_file(path: Path, fmt: str, *, frame: int | None = None) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file through SimpleITK (see :func:`_read_itk_file`).

    ITK's own multi-line warnings ("has unexpected scales in sform", "is Analyze file")
    are silenced while it reads: medsam reports what matters itself, in one line each.
    """
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        return _read_itk_file(path, fmt, frame=frame)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _read_itk_file(path: Path, fmt: str, *, frame: int | None = None) -> Volume:
    """Read a NIfTI, NRRD or MetaImage file through SimpleITK.

    Parameters
    ----------
    path:
        ``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha`` or ``.mhd`` file.
    fmt:
        The format name from :func:`format_of`.
    frame:
        0-based frame of a 4D image; required when the image has more than one frame.

    Returns
    -------
    Volume
        ``(Z, Y, X)`` array in the file's pixel type, LPS geometry as ITK reads it.
        ``meta.extra`` holds ``qform_code``/``sform_code`` for NIfTI, and ``frame`` and
        ``n_frames`` for 4D input.

    Raises
    ------
    InputFileError
        Unreadable file, a NIfTI file with less voxel data than its header declares, a 4D
        image without (or with an out-of-range) ``frame``, or a vector image.
    """
    label = {"nifti": "NIfTI", "nrrd": "NRRD"}.get(fmt, "MetaImage")
    nifti = fmt == "nifti" and path.name.lower().endswith((".nii", ".nii.gz"))
    if nifti:
        from medsam.io.nifti_header import is_nifti2

        if is_nifti2(path):
            return _finish_nifti(path, *_read_nifti2(path, frame))
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputFileError(path, f"cannot read the {label} header ({short_error(exc)})") from None
    dim = reader.GetDimension()
    size = list(reader.GetSize())
    ncomp = reader.GetNumberOfComponents()
    extra: dict[str, Any] = {}
    for key in ("qform_code", "sform_code"):
        if reader.HasMetaDataKey(key):
            try:
                extra[key] = int(reader.GetMetaData(key))
            except ValueError:
                pass

    if dim > 4 or dim < 2:
        raise InputFileError(path, f"is a {dim}D image; medsam reads 2D, 3D and 4D images")
    if dim == 4:
        n_frames = size[3]
        f = _frame_of(path, n_frames, frame)
        reader.SetExtractIndex([0, 0, 0, f])
        reader.SetExtractSize([size[0], size[1], size[2], 0])
        extra.update(frame=f, n_frames=n_frames)
    elif frame not in (None, 0):
        raise InputFileError(
            path, f"is a {dim}D image without frames; frame= applies to 4D images only"
        )
    if ncomp > 1 and not (dim == 2 and ncomp in (3, 4)):
        raise InputFileError(
            path,
            f"has {ncomp} values per voxel (a vector or colour volume); medsam reads scalar images",
        )
    non_finite = None
    if nifti:
        from medsam.io.nifti_check import scan_nifti_data

        # SimpleITK zero-fills a truncated file without a word, and reads NaN as 0
        non_finite = scan_nifti_data(path)
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputFileError(
            path,
            f"cannot read the image data, the file may be truncated or corrupt ({short_error(exc)})",
        ) from None
    if ncomp > 1 and image.GetPixelID() != sitk.sitkVectorUInt8:
        raise InputFileError(
            path, "is a colour image that is not 8-bit; convert it to 8-bit RGB or grayscale"
        )

    affine = None
    if fmt == "nifti" and dim == 2:
        # SimpleITK drops the third axis of a 2D NIfTI; take the full affine from nibabel.
        import nibabel as nib

        from medsam.io.nifti_header import quiet_nibabel

        try:
            with quiet_nibabel():
                affine = nib.load(str(path)).affine
        except Exception:  # noqa: BLE001 - a header nibabel refuses: keep SimpleITK's in-plane geometry
            affine = None
    if not nifti:
        vol = image_to_volume(image, source=path, meta=SourceMetadata(format=fmt, extra=extra))
        logger.info("read %s: %s", path, vol)
        return vol
    return _finish_nifti(path, image, extra, non_finite, affine)


def _frame_of(path: Path, n_frames: int, frame: int | None) -> int:
    """The frame to read of a 4D image with ``n_frames`` frames (``frame`` is required
    when there are several)."""
    if frame is None and n_frames > 1:
        raise InputFileError(
            path,
            f"is a 4D image with {n_frames} frames; choose one with frame= (--frame on the command line), 0..{n_frames - 1}",
        )
    f = 0 if frame is None else frame
    if not 0 <= f < n_frames:
        raise InputFileError(path, f"frame={f} is out of range: the image has {n_frames} frames (0..{n_frames - 1})")
    return f


def _read_nifti2(path: Path, frame: int | None) -> tuple[sitk.Image, dict, np.ndarray, np.ndarray]:
    """A NIfTI-2 file through nibabel (SimpleITK here reads NIfTI-1 only): the image as
    SimpleITK would hold it, its header codes, its non-finite voxels and its RAS affine."""
    import nibabel as nib

    from medsam.io.nifti_check import scan_nifti_data
    from medsam.io.nifti_header import quiet_nibabel

    non_finite = scan_nifti_data(path)  # before any voxel is allocated
    with quiet_nibabel():
        img = nib.load(str(path))
    shape = img.shape
    extra: dict[str, Any] = {"qform_code": int(img.header["qform_code"]), "sform_code": int(img.header["sform_code"])}
    if len(shape) == 4:
        n_frames = shape[3]
        f = _frame_of(path, n_frames, frame)
        data = np.asanyarray(img.dataobj[..., f])
        extra.update(frame=f, n_frames=n_frames)
    elif len(shape) in (2, 3):
        if frame not in (None, 0):
            raise InputFileError(path, f"is a {len(shape)}D image without frames; frame= applies to 4D images only")
        data = np.asanyarray(img.dataobj)
    else:
        raise InputFileError(path, f"is a {len(shape)}D image; medsam reads 2D, 3D and 4D images")
    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T))  # (i, j, k) -> ITK's (k, j, i) array
    return image, extra, non_finite, img.affine


def _finish_nifti(
    path: Path, image: sitk.Image, extra: dict, non_finite: np.ndarray | None, affine: np.ndarray | None
) -> Volume:
    """The Volume of a NIfTI file: NaN voxels marked, and every geometry assumption warned of
    and kept in ``meta.extra["geometry_notes"]``."""
    from medsam.io.nifti_header import geometry_notes

    vol = image_to_volume(image, source=path, meta=SourceMetadata(format="nifti", extra=extra), affine_ras=affine)
    if non_finite is not None and non_finite.size:
        _mark_non_finite(vol, non_finite, extra.get("frame", 0), path)
    notes = geometry_notes(path, vol.affine_ras())
    if notes:
        vol.meta.extra["geometry_notes"] = notes
        for note in notes:
            logger.warning("%s: %s", path, note)
    logger.info("read %s: %s", path, vol)
    return vol
