"""DICOM input: series folders and single files (single- and multi-frame).

Headers are read with pydicom (``stop_before_pixels=True``); pixel data is decoded by
GDCM through SimpleITK, one file at a time, so every transfer syntax GDCM knows (JPEG,
JPEG-LS, JPEG 2000, RLE) works and GDCM applies RescaleSlope/Intercept. Geometry is
computed here, never taken from file names or InstanceNumber:

* slices are sorted by their position along the slice normal
  ``n = row_cosines x column_cosines`` (``ImagePositionPatient . n``), lowest first;
* ``direction = [row cosines, column cosines, n]`` as columns, ``origin`` the position of
  the first sorted slice, ``spacing = (column spacing, row spacing, median slice step)``;
* gaps and uneven steps give a :class:`SliceSpacingWarning` that names them.

Rescaled integer data keeps an integer type (``int16`` whenever the values fit); data with
a non-integer slope or intercept becomes ``float32``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from medsam.errors import InputFileError
from medsam.io.dicom_geometry import (
    DicomGeometryWarning,
    SliceSpacingWarning,
    correct_tilt,
    order_slices,
    slice_axes,
)
from medsam.io.dicom_header import (
    Header,
    describe_non_image,
    has_dicm_marker,
    is_dicom_file,
    read_header,
    series_metadata,
)
from medsam.io.dicom_multiframe import read_multiframe
from medsam.io.dicom_pixels import (
    check_dataset_structure,
    check_pixel_header,
    decode_file,
    read_pixels,
)
from medsam.io.formats import short_error
from medsam.io.volume import Volume

__all__ = [
    "DicomGeometryWarning",
    "SliceSpacingWarning",
    "DicomSeriesInfo",
    "list_dicom_series",
    "read_dicom_folder",
    "read_dicom_file",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DicomSeriesInfo:
    """One image series found in a folder.

    Attributes
    ----------
    series_uid:
        The value to pass as ``load_volume(..., series_uid=...)``: the SeriesInstanceUID, or
        ``"no-uid:<frame of reference>:<series number>:<description>"`` for files whose
        SeriesInstanceUID is blank.
    modality, description:
        Modality and SeriesDescription from the first file.
    n_files:
        Number of image files in the series.
    """

    series_uid: str
    modality: str
    description: str
    n_files: int

    def __str__(self) -> str:
        desc = f" {self.description!r}" if self.description else ""
        return f"{self.series_uid} ({self.modality}{desc}, {self.n_files} files)"


# ------------------------------------------------------------------ folders
@dataclass
class _Scan:
    images: list[Header]
    others: list[Header]  # non-image objects: SEG, SR, RTSTRUCT ...
    unreadable: list[tuple[Path, str]]
    n_files: int


def _scan_folder(folder: Path) -> _Scan:
    """Headers of the DICOM files under ``folder`` (hidden files and folders skipped)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )
    scan = _Scan([], [], [], len(files))
    for f in files:
        if not is_dicom_file(f):
            continue
        try:
            h = read_header(f)
        except Exception as exc:  # pydicom raises many types on corrupt files
            why = exc.problem if isinstance(exc, InputFileError) else short_error(exc)
            logger.warning("%s: skipped, not a readable DICOM file (%s)", f, why)
            scan.unreadable.append((f, why))
            continue
        if h.sop_class_uid is None and not h.rows:
            scan.unreadable.append((f, "no SOPClassUID and no image attributes"))
        elif h.non_image or not (h.rows and h.columns):
            scan.others.append(h)
        else:
            scan.images.append(h)
    return scan


def _group(headers: Sequence[Header]) -> dict[str, list[Header]]:
    groups: dict[str, list[Header]] = {}
    for h in headers:
        groups.setdefault(h.series_key, []).append(h)
    return groups


def _info(uid: str, hs: Sequence[Header]) -> DicomSeriesInfo:
    return DicomSeriesInfo(uid, hs[0].modality or "OT", hs[0].description, len(hs))


def list_dicom_series(folder: str | Path) -> list[DicomSeriesInfo]:
    """List the image series under ``folder`` (recursively), largest first.

    Parameters
    ----------
    folder:
        A folder of DICOM files.

    Returns
    -------
    list of DicomSeriesInfo
        One entry per SeriesInstanceUID holding images; non-image objects (SEG, SR,
        RTSTRUCT ...) are not listed.
    """
    groups = _group(_scan_folder(Path(folder)).images)
    return sorted(
        (_info(u, hs) for u, hs in groups.items()), key=lambda s: (-s.n_files, s.series_uid)
    )


def read_dicom_folder(folder: Path, *, series_uid: str | None = None) -> Volume:
    """Read one image series from a folder of DICOM files (searched recursively).

    Parameters
    ----------
    folder:
        The folder.
    series_uid:
        SeriesInstanceUID of the series to read. Default: the series with the most files;
        the others are logged.

    Returns
    -------
    Volume
        ``(Z, Y, X)`` array, slice ``k = 0`` lowest along the slice normal; LPS geometry;
        ``meta.sop_instance_uids`` and ``meta.slice_files`` ordered by ``k``.

    Raises
    ------
    InputFileError
        No files, no DICOM files, no image series, an unknown ``series_uid``, slices that
        cannot form one volume, or undecodable pixel data.
    """
    scan = _scan_folder(folder)
    others = scan.others
    if scan.n_files == 0:
        raise InputFileError(folder, "is an empty folder; expected DICOM files")
    groups = _group(scan.images)
    if not groups:
        if scan.unreadable:
            path, problem = scan.unreadable[0]
            raise InputFileError(
                folder,
                f"holds {len(scan.unreadable)} DICOM file(s) that cannot be read, e.g. {path.name}: {problem}",
            )
        if others:
            kinds = sorted({describe_non_image(h) for h in others})
            raise InputFileError(
                folder,
                f"holds {len(others)} DICOM file(s) but no image series, only: {', '.join(kinds)}",
            )
        raise InputFileError(
            folder,
            f"holds no DICOM files ({scan.n_files} file(s) checked); pass a DICOM series folder or an image file",
        )
    infos = sorted(
        (_info(u, hs) for u, hs in groups.items()), key=lambda s: (-s.n_files, s.series_uid)
    )
    if series_uid is not None:
        if series_uid not in groups:
            other = next((h for h in others if h.series_key == series_uid), None)
            if other is not None:
                raise InputFileError(
                    other.path, f"is a DICOM {describe_non_image(other)}, not an image"
                )
            available = "; ".join(str(i) for i in infos)
            raise InputFileError(
                folder,
                f"no image series with SeriesInstanceUID {series_uid}; available: {available}",
            )
        chosen = series_uid
    else:
        chosen = infos[0].series_uid
        if len(infos) > 1:
            logger.warning(
                "%s holds %d image series; reading the largest, %s. Others (choose with series_uid=): %s",
                folder,
                len(infos),
                infos[0],
                "; ".join(str(i) for i in infos[1:]),
            )
    headers = groups[chosen]
    extra = {"series_in_folder": tuple(i.series_uid for i in infos)}
    multi = [h for h in headers if h.n_frames > 1]
    if multi:
        if len(headers) == 1:
            vol = read_dicom_file(headers[0].path)
            return replace(vol, meta=replace(vol.meta, extra={**vol.meta.extra, **extra}))
        raise InputFileError(
            folder,
            f"series {chosen} is stored as {len(headers)} files of which {len(multi)} are multi-frame; "
            "load the multi-frame files one at a time",
        )
    return _read_series(folder, headers, extra)


def _select_stack(folder: Path, headers: list[Header]) -> list[Header]:
    """Keep the largest group of slices that share orientation, size and pixel spacing."""
    groups: list[list[Header]] = []
    for h in headers:
        for g in groups:
            r = g[0]
            if (
                (h.rows, h.columns) == (r.rows, r.columns)
                and np.allclose(h.orientation, r.orientation, atol=1e-3)
                and np.allclose(h.pixel_spacing, r.pixel_spacing, atol=1e-4)
            ):
                g.append(h)
                break
        else:
            groups.append([h])
    groups.sort(key=len, reverse=True)
    if len(groups) > 1:
        ignored = sum(len(g) for g in groups[1:])
        warnings.warn(
            DicomGeometryWarning(
                f"{folder}: series {headers[0].series_key} mixes {len(groups)} slice geometries "
                f"(orientation, size or pixel spacing; e.g. localizer images); using the {len(groups[0])} "
                f"slices like {groups[0][0].path.name} and ignoring {ignored}, e.g. {groups[1][0].path.name}"
            ),
            stacklevel=5,
        )
    return groups[0]


def _read_series(folder: Path, headers: list[Header], extra: dict) -> Volume:
    missing = [h for h in headers if h.position is None or h.orientation is None]
    if missing:
        if len(headers) == 1:
            return read_dicom_file(headers[0].path)
        raise InputFileError(
            missing[0].path,
            "has no ImagePositionPatient/ImageOrientationPatient, so its series cannot be stacked",
        )
    headers = _select_stack(folder, headers)
    first = headers[0]
    row, col, normal = slice_axes(first.orientation)
    positions = np.array([h.position for h in headers], dtype=np.float64)
    order, step = order_slices(folder, positions, normal, [h.path.name for h in headers])
    headers = [headers[i] for i in order]
    if step is None:
        step = first.slice_spacing or 1.0
    array = read_pixels(headers)
    first = headers[0]
    array, tilt = correct_tilt(folder, array, positions[order], (row, col, normal), first.pixel_spacing, step)
    meta = series_metadata(first, headers, {**extra, **tilt})
    sy, sx = first.pixel_spacing
    direction = np.column_stack([row, col, normal])
    vol = Volume(
        array,
        (sx, sy, step),
        tuple(first.position),
        direction,
        modality=first.modality or "OT",
        source=folder,
        meta=meta,
    )
    logger.info("read DICOM series %s from %s: %s", first.series_uid, folder, vol)
    return vol


# ----------------------------------------------------------- single files
def read_dicom_file(path: Path, *, series_uid: str | None = None) -> Volume:
    """Read one DICOM file: a single slice, or a multi-frame (e.g. Enhanced CT/MR) volume.

    Parameters
    ----------
    path:
        The file.
    series_uid:
        When given, the file must belong to this series.

    Returns
    -------
    Volume
        ``(1, Y, X)`` for a single frame (``(1, Y, X, 3)`` ``uint8`` for colour), ``(Z, Y, X)``
        for a multi-frame file with frames sorted along the slice normal.

    Raises
    ------
    InputFileError
        Not DICOM, truncated, a non-image object (SR, RTSTRUCT, SEG ...), or undecodable.
    """
    size = path.stat().st_size
    if size == 0:
        raise InputFileError(path, "is empty (0 bytes), not a DICOM file")
    marker = has_dicm_marker(path)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pydicom_log = logging.getLogger("pydicom")
            level, pydicom_log.level = pydicom_log.level, logging.ERROR  # its warnings become ours
            try:
                ds = pydicom.dcmread(path, defer_size="1 KB", force=not marker)
            finally:
                pydicom_log.setLevel(level)
        h = Header.from_dataset(path, ds)
    except Exception as exc:  # pydicom raises many types on corrupt files
        raise InputFileError(path, f"is not a readable DICOM file ({short_error(exc)})") from None
    if any("End of file reached" in str(w.message) for w in caught):
        raise InputFileError(path, f"is truncated: the file ends ({size:,} bytes) inside a DICOM data element")
    if not marker and not h.sop_class_uid and not h.rows:
        raise InputFileError(path, "is not a DICOM file (no DICM marker and no DICOM image header)")
    if h.non_image:
        raise InputFileError(path, f"is a DICOM {describe_non_image(h)}, not an image")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if h.rows:
            raise InputFileError(path, "has no pixel data; the file may be truncated")
        raise InputFileError(
            path, f"is a DICOM {describe_non_image(h)} without pixel data, not an image"
        )
    if series_uid is not None and h.series_key != series_uid:
        raise InputFileError(path, f"belongs to series {h.series_key}, not series_uid={series_uid}")
    check_pixel_header(h)
    check_dataset_structure(h, ds)
    if h.n_frames > 1:
        return read_multiframe(path, ds, h)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    if h.samples > 1:
        a = decode_file(reader, path)
        vol = Volume(
            np.ascontiguousarray(a[..., :3]).astype(np.uint8, copy=False),
            _in_plane_spacing(h),
            modality="RGB",
            source=path,
            meta=series_metadata(h, [h], {"modality": h.modality}),
        )
        return vol
    array = read_pixels([h])
    if h.position is not None and h.orientation is not None:
        row, col, normal = slice_axes(h.orientation)
        direction, origin = np.column_stack([row, col, normal]), tuple(h.position)
    else:
        direction, origin = np.eye(3), (0.0, 0.0, 0.0)
    vol = Volume(
        array,
        _in_plane_spacing(h),
        origin,
        direction,
        modality=h.modality or "OT",
        source=path,
        meta=series_metadata(h, [h], {}),
    )
    logger.info("read DICOM file %s: %s", path, vol)
    return vol


def _in_plane_spacing(h: Header) -> tuple[float, float, float]:
    sy, sx = h.pixel_spacing
    return (sx, sy, h.slice_spacing or 1.0)
