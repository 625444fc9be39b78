"""npe2 reader: DICOM series folders and files, NIfTI, NRRD and MetaImage via ``load_volume``.

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

from ._layers import image_layer_data

__all__ = ["get_reader", "read_volume"]

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


def read_volume(path: str | os.PathLike) -> list[LayerData]:
    """Read ``path`` into layer data (raises the medsam error for unreadable input)."""
    from medsam.io import load_volume

    return [image_layer_data(load_volume(path))]
