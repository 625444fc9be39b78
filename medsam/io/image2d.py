"""2D pictures (PNG, JPEG, TIFF) as one-slice volumes.

Grayscale pictures become ``(1, H, W)`` arrays in their own dtype (``uint8``, ``uint16``,
``int32``, ``float32``), colour pictures ``(1, H, W, 3)`` ``uint8`` with modality ``"RGB"``
(alpha dropped). Pictures carry no patient geometry: spacing is 1 mm, origin 0 and the
direction the identity.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medsam.errors import InputFileError
from medsam.io.formats import short_error
from medsam.io.volume import SourceMetadata, Volume

__all__ = ["read_image2d"]

logger = logging.getLogger(__name__)


def read_image2d(path: Path, fmt: str) -> Volume:
    """Read a PNG, JPEG or TIFF picture.

    Parameters
    ----------
    path:
        The picture file.
    fmt:
        ``"png"``, ``"jpeg"`` or ``"tiff"``.

    Returns
    -------
    Volume
        ``(1, H, W)`` grayscale (modality ``"OT"``) or ``(1, H, W, 3)`` ``uint8`` RGB
        (modality ``"RGB"``). A multi-page grayscale TIFF stack gives ``(pages, H, W)``.

    Raises
    ------
    InputFileError
        When the file cannot be decoded or has an unsupported pixel layout.
    """
    try:
        array, colour = _read_tiff(path) if fmt == "tiff" else _read_pillow(path)
    except InputFileError:
        raise
    except Exception as exc:  # decoders raise many types on corrupt files
        raise InputFileError(
            path, f"cannot read the {fmt.upper()} image ({short_error(exc)})"
        ) from None
    array = _to_volume_layout(path, array, colour)
    rgb = array.ndim == 4
    meta = SourceMetadata(format=fmt, extra={"mode": "RGB" if rgb else "gray"})
    vol = Volume(array, modality="RGB" if rgb else "OT", source=path, meta=meta)
    logger.info("read %s: %s", path, vol)
    return vol


#: The largest picture read, in pixels (Pillow's decompression-bomb limit, about 13,400^2).
MAX_PICTURE_PIXELS = 178_956_970


def _check_size(path: Path, width: int, height: int) -> None:
    """Refuse a picture over :data:`MAX_PICTURE_PIXELS` before its pixels are decoded."""
    if width * height > MAX_PICTURE_PIXELS:
        raise InputFileError(
            path,
            f"is {width:,} x {height:,} pixels ({width * height / 1e6:,.0f} Mpx); medsam reads pictures "
            f"of up to {MAX_PICTURE_PIXELS / 1e6:.0f} Mpx, so cut it into tiles",
        )


def _read_pillow(path: Path) -> tuple[np.ndarray, bool]:
    from PIL import Image, ImageOps

    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the size is checked here, in one line
    try:
        im = Image.open(path)
    finally:
        Image.MAX_IMAGE_PIXELS = limit
    with im:
        _check_size(path, *im.size)
        im = ImageOps.exif_transpose(im)
        if im.mode in ("1", "LA"):
            im = im.convert("L")
        elif im.mode in ("P", "PA", "CMYK", "YCbCr", "RGBA", "RGBX", "LAB", "HSV"):
            im = im.convert("RGB")
        array = np.asarray(im).copy()
    return array, array.ndim == 3


def _read_tiff(path: Path) -> tuple[np.ndarray, bool]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        dims = dict(zip(series.axes, series.shape, strict=True))
        _check_size(path, int(dims.get("X", 1)), int(dims.get("Y", 1)))
        array = series.asarray()
        axes = series.axes
    # Put colour samples last, whatever the planar configuration.
    colour = "S" in axes
    if colour and axes.index("S") != len(axes) - 1:
        array = np.moveaxis(array, axes.index("S"), -1)
    return array, colour


def _to_volume_layout(path: Path, array: np.ndarray, colour: bool) -> np.ndarray:
    """``(H, W)`` -> ``(1, H, W)``; ``(H, W, 3|4)`` -> ``(1, H, W, 3)`` uint8; stacks kept."""
    if colour:
        if array.ndim != 3 or array.shape[-1] not in (3, 4):
            raise InputFileError(
                path,
                f"has an unsupported colour layout {array.shape}; expected one RGB or RGBA picture",
            )
        rgb = array[..., :3]
        if rgb.dtype == np.uint16:
            logger.info("%s: 16-bit colour reduced to 8 bits", path)
            rgb = (rgb // 257).astype(np.uint8)
        if rgb.dtype != np.uint8:
            raise InputFileError(
                path, f"is a {rgb.dtype} colour image; convert it to 8-bit RGB or grayscale"
            )
        return np.ascontiguousarray(rgb)[None]
    a = array
    while a.ndim > 2 and a.shape[0] == 1:  # leading page/series axes of length 1
        a = a[0]
    if a.ndim == 2:
        return a[None]
    if a.ndim == 3:
        logger.info("%s: multi-page picture read as a stack of %d slices", path, a.shape[0])
        return a
    raise InputFileError(
        path,
        f"has an unsupported pixel layout {array.shape}; expected a 2D grayscale or RGB picture",
    )
