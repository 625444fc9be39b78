"""A MONAI ``ImageReader`` that reads through :func:`medsam.io.load_volume`.

:class:`LoadVolume` (and its dictionary twin :class:`LoadVolumed`) gives a transform
chain the same input checks as ``medsam segment`` and the napari reader: a truncated NIfTI or DICOM file is refused with
its byte counts (MONAI's ITK and NiBabel readers zero-fill it), NaN voxels are counted and
set to the image's minimum, a DICOM folder is stacked along its slice normal with its gaps
and mixed geometries reported, and degenerate NIfTI geometry is warned of.

The output matches MONAI's ``ITKReader``: the array's axes are the file's ``(i, j, k)``
(``[H, W, D]`` before ``EnsureChannelFirst``), ``affine`` is voxel-to-RAS, and the meta
dictionary has ``modality`` and the DICOM header window, which
:func:`medsam.monai.geometry.volume_from_metatensor` reads back.

``LoadImage(reader=MedsamReader())`` alone is not enough: when the chosen reader refuses a
file, ``LoadImage`` goes on to its other readers, and MONAI's NiBabel reader then reads
the truncated file, or allocates the 100,000^3 voxels a forged header declares.
:class:`LoadVolume` hands ``LoadImage`` the reader at call time, so medsam's refusal is
final and its one-line message is the error.

Examples
--------
>>> load = LoadVolume()     # image_only and ensure_channel_first by default
>>> img = load("ct.nii.gz")  # doctest: +SKIP
>>> img.shape                # doctest: +SKIP
torch.Size([1, 122, 101, 30])
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImage, MapTransform, Transform
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medsam.io import Volume, load_volume
from medsam.io.formats import format_of

__all__ = ["MedsamReader", "LoadVolume", "LoadVolumed", "LoadVolumeD", "LoadVolumeDict"]


class MedsamReader(ImageReader):
    """Read images with :func:`medsam.io.load_volume` (see the module docstring).

    Parameters
    ----------
    series_uid:
        For DICOM folders with several series: the one to read (default: the largest).
    frame:
        For 4D NIfTI/NRRD/MetaImage: the frame to read.
    """

    def __init__(self, series_uid: str | None = None, frame: int | None = None) -> None:
        super().__init__()
        self.series_uid = series_uid
        self.frame = frame

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """True for every path ``load_volume`` reads by name, and for folders (DICOM series)."""
        return all(Path(f).is_dir() or format_of(f) is not None for f in ensure_tuple(filename))

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Volume | list[Volume]:
        """Load each path; raises :class:`medsam.errors.InputFileError` with medsam's one-line
        message for input it refuses."""
        vols = [
            load_volume(p, series_uid=kwargs.get("series_uid", self.series_uid), frame=kwargs.get("frame", self.frame))
            for p in ensure_tuple(data)
        ]
        return vols if len(vols) > 1 else vols[0]

    def get_data(self, img: Volume | Sequence[Volume]) -> tuple[np.ndarray, dict]:
        """The ``(i, j, k)`` array (``(i, j, 1, 3)`` for RGB, channel last) and its meta dictionary;
        several volumes are stacked on a new first axis, as MONAI's readers do."""
        vols = [img] if isinstance(img, Volume) else list(img)
        arrays, metas = [], []
        for vol in vols:
            a = vol.array
            rgb = a.ndim == 4
            arrays.append(np.transpose(a, (2, 1, 0, 3) if rgb else (2, 1, 0)))
            affine = vol.affine_ras()
            metas.append({
                MetaKeys.AFFINE: affine,
                MetaKeys.ORIGINAL_AFFINE: affine.copy(),
                MetaKeys.SPATIAL_SHAPE: np.asarray(arrays[-1].shape[:3]),
                MetaKeys.SPACE: SpaceKeys.RAS,
                MetaKeys.ORIGINAL_CHANNEL_DIM: -1 if rgb else "no_channel",
                "modality": vol.modality,
                "window_center": vol.meta.window_center,
                "window_width": vol.meta.window_width,
                "filename_or_obj": str(vol.source) if vol.source else None,
                "medsam_notes": list(vol.meta.extra.get("geometry_notes", ())),
            })
        if len(arrays) == 1:
            return arrays[0], metas[0]
        return np.stack(arrays), metas[0]


class LoadVolume(Transform):
    """Load an image with :class:`MedsamReader`; medsam's refusal is final (no fallback reader).

    Parameters
    ----------
    image_only, ensure_channel_first, dtype:
        As for MONAI's ``LoadImage`` (defaults: image only, channel first, float32).
    series_uid, frame:
        As for :func:`medsam.io.load_volume`.

    Raises
    ------
    medsam.errors.InputFileError
        The file is refused (truncated, not an image ...), with medsam's one-line message.
    """

    def __init__(
        self,
        image_only: bool = True,
        ensure_channel_first: bool = True,
        dtype: Any = np.float32,
        series_uid: str | None = None,
        frame: int | None = None,
    ) -> None:
        self.reader = MedsamReader(series_uid=series_uid, frame=frame)
        self._load = LoadImage(
            reader=self.reader, image_only=image_only, ensure_channel_first=ensure_channel_first, dtype=dtype
        )

    def __call__(self, filename: str | os.PathLike) -> Any:
        return self._load(filename, reader=self.reader)


class LoadVolumed(MapTransform):
    """Dictionary version of :class:`LoadVolume` (``image_only`` output per key)."""

    def __init__(
        self,
        keys: KeysCollection,
        ensure_channel_first: bool = True,
        dtype: Any = np.float32,
        series_uid: str | None = None,
        frame: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.transform = LoadVolume(True, ensure_channel_first, dtype, series_uid, frame)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.transform(d[key])
        return d


LoadVolumeD = LoadVolumeDict = LoadVolumed
