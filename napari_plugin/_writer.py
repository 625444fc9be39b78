"""npe2 writer: a labels layer to NIfTI, NRRD, MetaImage or DICOM SEG with the source geometry.

The geometry comes from the labels layer's ``metadata`` (the source
:class:`~medsam.io.Volume` that the reader, the sample data and the widget put there), so
the file carries exactly the source's spacing, origin and direction. For a labels layer
made elsewhere, the layer transform is inverted instead and a warning says so.

Overwrite policy
----------------
Writing is atomic (:func:`medsam.io.save_mask`). The npe2 writer (File > Save Selected
Layers, ``viewer.layers.save``) **never overwrites**: napari also calls it from scripts
without asking anyone, so an existing file raises
:class:`~medsam.errors.OutputExistsError` and is left untouched. Only the widget's
*Export* passes ``overwrite=True``, and only for a path the user has just picked in a save
dialog that asked to confirm replacing the file (:func:`save_labels`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from medsam.io import save_mask
from medsam.io.dicom_seg import AlgorithmInfo

from ._layers import LABEL_NAMES_KEY, geometry_from_layer_state

__all__ = ["write_labels", "save_labels"]

logger = logging.getLogger(__name__)


def save_labels(
    path: str | os.PathLike,
    data: Any,
    meta: dict[str, Any],
    *,
    overwrite: bool = False,
    names: dict[int, str] | None = None,
    colors: dict[int, tuple[int, int, int]] | None = None,
    algorithm: AlgorithmInfo | None = None,
) -> str:
    """Write labels ``data`` ``(Z, Y, X)`` with the geometry found in ``meta`` (a layer's
    state: ``metadata``, ``scale``, ``translate``, ``affine``). Returns the written path.

    A ``.dcm`` path writes a DICOM SEG on the source series (DICOM sources only), with
    ``names`` and ``colors`` per label and the ``algorithm`` that made them."""
    labels = np.asarray(data)
    like, source = geometry_from_layer_state(meta, labels.shape)
    if source != "metadata":
        msg = (
            f"{meta.get('name', 'labels')}: no source image geometry in the layer metadata; "
            "the file's geometry is taken from the layer's scale/translate/affine"
        )
        logger.warning(msg)
        try:
            from napari.utils.notifications import show_warning

            show_warning(msg)
        except Exception:  # noqa: BLE001 - notifications are best effort
            pass
    from medsam.io.save import check_mask_format

    check_mask_format(path, like)
    out = save_mask(
        labels, like, path, overwrite=overwrite, names=names, colors=colors, algorithm=algorithm
    )
    return str(out)


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """npe2 single-layer writer for labels; never overwrites an existing file. A DICOM SEG
    takes its segment names from ``metadata["medsam_label_names"]`` (a SEG opened by the
    reader has them)."""
    names = (meta.get("metadata") or {}).get(LABEL_NAMES_KEY)
    return [save_labels(path, data, meta, overwrite=False, names=names)]
