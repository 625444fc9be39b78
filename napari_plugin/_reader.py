"""npe2 reader: DICOM series folders and files, NIfTI, NRRD and MetaImage via ``load_volume``,
and DICOM SEG files, which open as a labels layer on top of the series they reference.

``get_reader`` reads the input once with :func:`medsam.io.load_volume` and returns a
function that hands napari the already-loaded volume, or ``None`` for anything
``load_volume`` cannot read (a text file, a DICOM SR, a folder without images...). It
never raises. 2D pictures (PNG, JPEG, TIFF) are left to napari's own reader.

Layers are in LPS millimetres (see :mod:`napari_plugin._layers`) with the source
:class:`~medsam.io.Volume` in ``layer.metadata["medsam_volume"]``, and their contrast
limits are the intensity window the model will use by default (the DICOM header window,
``soft_tissue`` for other CT, percentiles for MR).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medsam.errors import MedsamError

from ._layers import LABEL_NAMES_KEY, image_layer_data, labels_layer_data

__all__ = ["get_reader", "read_volume", "read_segmentation"]

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict, str]

_PICTURES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _single_path(path: str | os.PathLike | Sequence[str | os.PathLike]) -> Path | None:
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    try:
        return Path(path)
    except TypeError:
        return None


def get_reader(path: str | Sequence[str]) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader for ``path`` when medsam can read it, else ``None`` (never raises)."""
    p = _single_path(path)
    if p is None or p.name.lower().endswith(_PICTURES):
        return None
    try:
        from medsam.io import load_volume
        from medsam.io.dicom_seg import is_dicom_seg

        if p.is_file() and is_dicom_seg(p):
            layers = read_segmentation(p)
            return lambda _path=None: layers
        volume = load_volume(p)
    except MedsamError as exc:
        logger.debug("medsam reader declines %s: %s", p, exc)
        return None
    except Exception as exc:  # noqa: BLE001 - a reader must never raise
        logger.warning("medsam reader could not read %s: %s", p, exc)
        return None

    def reader(_path: Any = None) -> list[LayerData]:
        return [image_layer_data(volume)]

    return reader


def read_segmentation(path: str | os.PathLike) -> list[LayerData]:
    """A DICOM SEG and the series it references (found beside it): image and labels layers.

    The labels layer holds the segments as a label map (where segments overlap, the later
    one wins, and a warning says so), named ``"<SEG name> (<segment names>)"``; its metadata
    has the segment names under ``LABEL_NAMES_KEY``.
    """
    from medsam.io import load_volume
    from medsam.io.dicom_seg import find_source_series, load_segmentation

    folder, uid = find_source_series(path)
    volume = load_volume(folder, series_uid=uid)
    seg = load_segmentation(path, volume)
    if seg.overlapping:
        logger.warning("%s: segments overlap; the labels layer shows the later one where they do", path)
    name = f"{Path(path).name} ({', '.join(seg.names)})"
    data, kwargs, kind = labels_layer_data(seg.labels, volume, name)
    kwargs["metadata"][LABEL_NAMES_KEY] = seg.label_names
    return [image_layer_data(volume), (data, kwargs, kind)]


def read_volume(path: str | os.PathLike) -> list[LayerData]:
    """Read ``path`` into layer data (raises the medsam error for unreadable input)."""
    from medsam.io import load_volume

    return [image_layer_data(load_volume(path))]
