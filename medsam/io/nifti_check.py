"""A NIfTI file must hold all the voxel data its header declares; NaN voxels are counted.

SimpleITK reads a ``.nii.gz`` whose gzip stream was cut short, or a ``.nii`` cut short,
without an error and fills the missing voxels; it also reads NaN voxels as 0 (water on
CT). :func:`scan_nifti_data` reads the voxel bytes once, in 1 MiB pieces, before SimpleITK
does: it compares the bytes that the header promises (``vox_offset`` plus shape times
bytes per voxel) with the bytes the file holds, so a truncated file is refused and a header
that declares far more voxels than the file holds never allocates them; and for float data
it finds the NaN and infinite voxels, which the reader then marks.
"""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from medsam.errors import InputFileError
from medsam.io.nifti_header import quiet_nibabel

__all__ = ["scan_nifti_data"]

_CHUNK = 1 << 20


def _pieces(path: Path, offset: int, limit: int) -> Iterator[bytes]:
    """The file's voxel bytes after ``offset`` (at most ``limit``); a cut gzip stream just ends."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            f.seek(offset)  # a gzip file decompresses up to there
            left = limit
            while left > 0:
                chunk = f.read(min(left, _CHUNK))
                if not chunk:
                    return
                left -= len(chunk)
                yield chunk
    except (EOFError, zlib.error, gzip.BadGzipFile, ValueError, OverflowError):  # also an offset past any file
        return  # a truncated or damaged stream: what was read so far counts


def _unchecked_header(path: Path):
    """The NIfTI-1 header as written (nibabel's checks off), or None if it is not one."""
    import nibabel as nib

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f, quiet_nibabel():
            return nib.Nifti1Header.from_fileobj(f, check=False)
    except Exception:  # noqa: BLE001
        return None


def scan_nifti_data(path: Path) -> np.ndarray:
    """Check ``path``'s voxel data against its header; return its non-finite voxels.

    Returns
    -------
    numpy.ndarray
        Flat indices, in file order (x fastest), of the NaN and infinite voxels of a float
        image; empty for integer images.

    Raises
    ------
    InputFileError
        The file holds less voxel data than its header declares ("is truncated: expected
        N bytes of voxel data, found M").
    """
    import nibabel as nib

    try:
        with quiet_nibabel():
            proxy = nib.load(str(path)).dataobj  # the file's own offset (the image's header copy has 0)
        offset, dtype, shape = int(proxy.offset), np.dtype(proxy.dtype), tuple(int(v) for v in proxy.shape)
    except Exception:  # noqa: BLE001 - a header nibabel refuses may still be one ITK reads
        header = _unchecked_header(path)
        if header is None:
            return np.zeros(0, np.int64)  # SimpleITK reports unreadable headers in its own words
        try:  # ITK reads a dimension of 0 as 1: so must the size it will allocate
            dims = header["dim"][1 : 1 + max(1, min(int(header["dim"][0]), 7))]
            shape = tuple(max(1, int(v)) for v in dims)
            vox_offset = float(header["vox_offset"])
            offset = max(int(vox_offset) if np.isfinite(vox_offset) else 0, 352)
            dtype = np.dtype(header.get_data_dtype())
        except Exception:  # noqa: BLE001 - no usable numbers: SimpleITK's own check decides
            return np.zeros(0, np.int64)
        floating_ok = False
    else:
        floating_ok = True
    if any(n <= 0 for n in shape):
        dims = ", ".join(f"dim[{i + 1}] = {n}" for i, n in enumerate(shape))
        raise InputFileError(path, f"declares an image without voxels ({dims})")
    expected = math.prod(shape) * dtype.itemsize
    if not path.name.lower().endswith(".gz"):  # the size says it all, without reading
        found = max(0, path.stat().st_size - offset)
        if found < expected:
            raise InputFileError(path, f"is truncated: expected {expected:,} bytes of voxel data, found {found:,}")
    floating = dtype.kind == "f" and floating_ok
    found, carry, bad = 0, b"", []
    for chunk in _pieces(path, offset, expected):
        if floating:
            data = carry + chunk
            n = len(data) // dtype.itemsize * dtype.itemsize
            values = np.frombuffer(data[:n], dtype=dtype)
            hits = np.flatnonzero(~np.isfinite(values))
            if hits.size:
                bad.append(hits + (found - len(carry)) // dtype.itemsize)
            carry = data[n:]
        elif not path.name.lower().endswith(".gz"):
            break  # an integer .nii: nothing more to learn
        found += len(chunk)
    else:
        if found < expected:
            raise InputFileError(path, f"is truncated: expected {expected:,} bytes of voxel data, found {found:,}")
    return np.concatenate(bad) if bad else np.zeros(0, np.int64)
