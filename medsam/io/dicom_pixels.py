"""Pixel data of DICOM files, decoded by GDCM through SimpleITK.

GDCM handles every common transfer syntax (JPEG, JPEG-LS, JPEG 2000, RLE) and applies
RescaleSlope/Intercept. The output dtype is chosen from the headers so that whole volumes
are never held as float64: integer rescales give the smallest integer type that holds the
values (``int16`` for CT whenever they fit), non-integer rescales ``float32``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsam.errors import InputFileError
from medsam.io.dicom_header import Header
from medsam.io.formats import short_error

__all__ = ["output_dtype", "shrink_dtype", "read_pixels", "decode_file"]


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
    return shrink_dtype(out)


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
