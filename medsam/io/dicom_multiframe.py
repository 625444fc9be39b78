"""Multi-frame DICOM files (Enhanced / Legacy Converted Enhanced CT, MR, PET ...).

Frame geometry comes from the functional groups: ``PlanePositionSequence`` per frame,
``PlaneOrientationSequence`` and ``PixelMeasuresSequence`` (shared or per frame). Frames are
sorted along the slice normal like the slices of a series. Pixels are decoded by GDCM
through SimpleITK; when the frames carry different rescale values (which GDCM applies
from one frame only) the stored values are decoded with pydicom and rescaled per frame.
Files without per-frame positions fall back to the geometry GDCM computes.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

from medsam.errors import InputFileError
from medsam.io.dicom_geometry import correct_tilt, order_slices, slice_axes
from medsam.io.dicom_header import Header, first_float, float_tuple, series_metadata
from medsam.io.dicom_pixels import decode_file, output_dtype, shrink_dtype
from medsam.io.formats import short_error
from medsam.io.volume import Volume

__all__ = ["read_multiframe"]

logger = logging.getLogger(__name__)


def _group_item(ds: pydicom.Dataset, frame: int, keyword: str) -> pydicom.Dataset | None:
    """First item of functional group ``keyword`` for ``frame`` (per-frame, else shared)."""
    for seq_name, index in (
        ("PerFrameFunctionalGroupsSequence", frame),
        ("SharedFunctionalGroupsSequence", 0),
    ):
        groups = ds.get(seq_name)
        if groups is not None and len(groups) > index:
            seq = groups[index].get(keyword)
            if seq is not None and len(seq) > 0:
                return seq[0]
    return None


def read_multiframe(path: Path, ds: pydicom.Dataset, h: Header) -> Volume:
    """Read a multi-frame image file as a ``(Z, Y, X)`` volume.

    Parameters
    ----------
    path:
        The file.
    ds:
        Its dataset (pixel data may be deferred).
    h:
        Its parsed top-level header.

    Returns
    -------
    Volume
        Frames sorted lowest-first along the slice normal, LPS geometry;
        ``meta.extra["frame_numbers"]`` holds the 1-based DICOM frame number of each slice.
    """
    n = h.n_frames
    if h.samples > 1:
        raise InputFileError(
            path,
            "is a colour multi-frame DICOM (e.g. an ultrasound cine); medsam reads grayscale volumes",
        )
    rescale = []
    for i in range(n):
        item = _group_item(ds, i, "PixelValueTransformationSequence")
        slope = first_float(item.get("RescaleSlope")) if item is not None else None
        intercept = first_float(item.get("RescaleIntercept")) if item is not None else None
        rescale.append((slope or h.slope, intercept if intercept is not None else h.intercept))
    array = _pixels(path, ds, h, rescale)
    if array.shape[0] != n:
        raise InputFileError(
            path, f"decoded {array.shape[0]} frames but the header says NumberOfFrames={n}"
        )

    positions = []
    for i in range(n):
        item = _group_item(ds, i, "PlanePositionSequence")
        positions.append(
            float_tuple(item.get("ImagePositionPatient"), 3) if item is not None else None
        )
    orient_item = _group_item(ds, 0, "PlaneOrientationSequence")
    orientation = (
        float_tuple(orient_item.get("ImageOrientationPatient"), 6)
        if orient_item is not None
        else None
    )
    orientation = orientation or h.orientation
    measures = _group_item(ds, 0, "PixelMeasuresSequence")
    spacing = float_tuple(measures.get("PixelSpacing"), 2) if measures is not None else None
    sy, sx = spacing or h.pixel_spacing
    thickness = None
    if measures is not None:
        thickness = first_float(measures.get("SpacingBetweenSlices")) or first_float(
            measures.get("SliceThickness")
        )
    voi = _group_item(ds, 0, "FrameVOILUTSequence")
    window_center = first_float(voi.get("WindowCenter")) if voi is not None else h.window_center
    window_width = first_float(voi.get("WindowWidth")) if voi is not None else h.window_width

    extra: dict = {"n_frames": n}
    if any(p is None for p in positions) or orientation is None:
        logger.info("%s: no per-frame positions; using the geometry GDCM computes", path)
        info = sitk.ImageFileReader()
        info.SetImageIO("GDCMImageIO")
        info.SetFileName(str(path))
        info.ReadImageInformation()
        dim = info.GetDimension()
        direction = np.array(info.GetDirection()).reshape(dim, dim)
        spacing3, origin = tuple(info.GetSpacing()), tuple(info.GetOrigin())
        if dim == 2:
            d3 = np.eye(3)
            d3[:2, :2] = direction
            direction, spacing3, origin = d3, (*spacing3, 1.0), (*origin, 0.0)
        extra["frame_numbers"] = tuple(range(1, n + 1))
    else:
        row, col, normal = slice_axes(orientation)
        pos = np.array(positions, dtype=np.float64)
        order, step = order_slices(path, pos, normal, [f"frame {i + 1}" for i in range(n)])
        if not np.array_equal(order, np.arange(n)):
            array = array[order]
        array, tilt = correct_tilt(path, array, pos[order], (row, col, normal), (sy, sx), step or thickness or 1.0)
        extra.update(tilt)
        direction = np.column_stack([row, col, normal])
        spacing3 = (sx, sy, step or thickness or 1.0)
        origin = tuple(pos[order[0]])
        extra["frame_numbers"] = tuple(int(i) + 1 for i in order)
    meta = series_metadata(h, [h] * n, extra)
    meta = replace(meta, window_center=window_center, window_width=window_width)
    vol = Volume(
        array, spacing3, origin, direction, modality=h.modality or "OT", source=path, meta=meta
    )
    logger.info("read multi-frame DICOM %s: %s", path, vol)
    return vol


def _pixels(
    path: Path, ds: pydicom.Dataset, h: Header, rescale: list[tuple[float, float]]
) -> np.ndarray:
    """``(frames, Y, X)`` rescaled pixels in the smallest fitting dtype."""
    if len(set(rescale)) == 1:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        a = decode_file(reader, path)
        return a.astype(np.float32) if a.dtype.kind == "f" else shrink_dtype(a)
    # Frames rescaled differently: GDCM would apply one frame's values to all.
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for undecodable data
        raise InputFileError(path, f"cannot decode the pixel data ({short_error(exc)})") from None
    stored = stored.reshape((-1, *stored.shape[-2:]))
    dtype = output_dtype([(s, b, h.bits_stored, h.signed) for s, b in rescale])
    out = np.empty(stored.shape, dtype=dtype)
    for i, (slope, intercept) in enumerate(rescale):
        frame = stored[i].astype(np.float64) * slope + intercept
        out[i] = np.rint(frame) if dtype.kind in "iu" else frame
    return shrink_dtype(out)
