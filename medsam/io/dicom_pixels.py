"""Pixel data of DICOM files, decoded by GDCM through SimpleITK.

GDCM handles every common transfer syntax (JPEG, JPEG-LS, JPEG 2000, RLE) and applies
RescaleSlope/Intercept. The output dtype is chosen from the headers so that whole volumes
are never held as float64: integer rescales give the smallest integer type that holds the
values (``int16`` for CT whenever they fit), non-integer rescales ``float32``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medsam.errors import InputFileError
from medsam.io.dicom_header import Header, check_element_order
from medsam.io.formats import short_error

__all__ = ["output_dtype", "shrink_dtype", "read_pixels", "decode_file", "check_pixel_header", "check_dataset_structure"]


logger = logging.getLogger(__name__)


def output_dtype(ranges: Sequence[tuple[float, float, int, int]]) -> np.dtype:
    """The dtype that holds rescaled values for every ``(slope, intercept, bits_stored, signed)``.

    Integer slope and intercept give the smallest integer type holding the possible range
    (``uint8``, ``uint16``, ``int16``, ``int32``, ``int64``); otherwise ``float32``.
    """
    lo, hi = np.inf, -np.inf
    for slope, intercept, bits, signed in ranges:
        if not (float(slope).is_integer() and float(intercept).is_integer()):
            return np.dtype(np.float32)
        smin, smax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        vals = (slope * smin + intercept, slope * smax + intercept)
        lo, hi = min(lo, *vals), max(hi, *vals)
    for dt in (np.uint8, np.uint16) if lo >= 0 else ():
        if hi <= np.iinfo(dt).max:
            return np.dtype(dt)
    for dt in (np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


def shrink_dtype(array: np.ndarray) -> np.ndarray:
    """``int32``/``int64`` data whose values fit ``int16`` become ``int16`` (e.g. CT in HU)."""
    if array.dtype in (np.int32, np.int64) and array.size:
        if array.min() >= -32768 and array.max() <= 32767:
            return array.astype(np.int16)
    return array


def read_pixels(headers: Sequence[Header]) -> np.ndarray:
    """Decode one single-frame file per slice into a ``(Z, Y, X)`` array."""
    for h in headers:
        check_pixel_header(h)
    first = headers[0]
    dtype = output_dtype([(h.slope, h.intercept, h.bits_stored, h.signed) for h in headers])
    out = np.empty((len(headers), first.rows, first.columns), dtype=dtype)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    for k, h in enumerate(headers):
        a = decode_file(reader, h.path)
        if a.shape != (1, first.rows, first.columns):
            raise InputFileError(
                h.path,
                f"decoded to shape {a.shape[1:]} but the header says {first.rows}x{first.columns}",
            )
        if out.dtype.kind in "iu" and (
            a.min() < np.iinfo(out.dtype).min or a.max() > np.iinfo(out.dtype).max
        ):
            out = out.astype(np.int64 if a.dtype.kind in "iu" else np.float32)
        out[k] = a[0]
    if first.modality == "CT" and not all(h.has_rescale for h in headers):
        n = sum(not h.has_rescale for h in headers)
        logger.warning(
            "%s: %d CT slice(s) without RescaleIntercept; their stored values (%s to %s) are used "
            "as they are, not as HU, so HU windows such as soft_tissue may not fit (try --window percentile)",
            next(h.path for h in headers if not h.has_rescale), n, out.min(), out.max(),
        )
    return shrink_dtype(out)


_NATIVE_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def check_dataset_structure(h: Header, ds: Any) -> None:
    """Refuse a damaged file before GDCM decodes it (GDCM can allocate gigabytes on one).

    Data elements must ascend by tag, as DICOM requires (a file whose bytes were shuffled
    fails this), and uncompressed pixel data must hold the bytes its header declares.
    """
    check_element_order(h.path, ds)
    try:
        element = ds.get_item(0x7FE00010) if 0x7FE00010 in ds else None
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a damaged element
        raise InputFileError(h.path, f"is corrupt: its pixel data element cannot be read ({exc})") from None
    length = getattr(element, "length", None)
    if h.transfer_syntax_uid in _NATIVE_SYNTAXES and length is not None and length != 0xFFFFFFFF:
        bits = int(ds.get("BitsAllocated", 16) or 16)
        expected = h.rows * h.columns * h.n_frames * h.samples * bits // 8
        if length < expected:
            raise InputFileError(
                h.path, f"is truncated: expected {expected:,} bytes of pixel data, found {length:,}"
            )


def check_pixel_header(h: Header) -> None:
    """Refuse pixel attributes no real image has, before they reach arithmetic or GDCM."""
    if not 1 <= h.bits_stored <= 64:
        raise InputFileError(h.path, f"has BitsStored {h.bits_stored}; DICOM allows 1 to 64")
    if not (np.isfinite(h.slope) and np.isfinite(h.intercept)) or max(abs(h.slope), abs(h.intercept)) > 1e30:
        raise InputFileError(h.path, f"has an unusable RescaleSlope/RescaleIntercept ({h.slope:g}, {h.intercept:g})")
    if h.rows <= 0 or h.columns <= 0:
        raise InputFileError(h.path, f"has an image size of {h.rows}x{h.columns} pixels")


def decode_file(reader: sitk.ImageFileReader, path: Path) -> np.ndarray:
    """Pixel data of one DICOM file, rescaled by GDCM, as a ``(frames, Y, X[, C])`` array."""
    reader.SetFileName(str(path))
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputFileError(
            path,
            f"cannot decode the pixel data, the file may be truncated or corrupt ({short_error(exc)})",
        ) from None
    a = sitk.GetArrayFromImage(image)  # a copy: a view would not outlive ``image``
    return a if image.GetDimension() == 3 else a[None]
