"""The layers the widget creates (labels, point and box prompts) and the background workers.

Layers share the image layer's transform, so their data coordinates are the image's voxel
indices ``(k, j, i)`` and :func:`napari_plugin._layers.prompts_from_layers` can read them.
Workers wrap the core's generators (:mod:`medsam.session_ops`) in napari thread workers;
they hold no logic of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes
from napari.qt.threading import create_worker
from napari.utils.colormaps import DirectLabelColormap

from medsam import session_ops
from medsam.io import Volume
from medsam.volume import VolumePredictor

from ._compat import avoid_llvm_clash
from ._layers import NEGATIVE, POSITIVE, VOLUME_KEY, napari_transform, transform_kwargs

__all__ = [
    "PROMPT_COLORS",
    "PALETTE",
    "make_labels_layer",
    "make_points_layer",
    "make_shapes_layer",
    "labels_colormap",
    "load_worker",
    "embed_worker",
    "propagate_worker",
    "embed_missing_worker",
]

#: Face colours of positive and negative point prompts.
PROMPT_COLORS = {POSITIVE: "lime", NEGATIVE: "red"}

#: Default object colours (label 1 gets the first).
PALETTE = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231",
    "#911eb4", "#46f0f0", "#f032e6", "#bcf60c", "#fabebe",
)


def _layer_kwargs(image: Image, volume: Volume) -> dict[str, Any]:
    if VOLUME_KEY in image.metadata:
        kwargs, _ = napari_transform(volume)
        return kwargs
    return transform_kwargs(image)


def make_labels_layer(image: Image, volume: Volume, name: str) -> Labels:
    """An empty ``uint8`` labels layer on the image grid, with the source geometry in metadata."""
    layer = Labels(
        np.zeros(volume.grid_shape, dtype=np.uint8),
        name=name,
        metadata={VOLUME_KEY: volume},
        opacity=0.5,
        **_layer_kwargs(image, volume),
    )
    return layer


def make_points_layer(image: Image, volume: Volume, name: str) -> Points:
    """Point prompts: the ``prompt`` feature is positive (green) or negative (red)."""
    h, w = volume.grid_shape[1:3]
    features = pd.DataFrame({"prompt": pd.Categorical([], categories=[POSITIVE, NEGATIVE])})
    return Points(
        np.zeros((0, 3)),
        ndim=3,
        name=name,
        features=features,
        feature_defaults={"prompt": POSITIVE},
        face_color="prompt",
        face_color_cycle=dict(PROMPT_COLORS),
        border_color="white",
        size=max(3.0, min(h, w) / 40.0),
        **_layer_kwargs(image, volume),
    )


def make_shapes_layer(image: Image, volume: Volume, name: str) -> Shapes:
    """Box prompts: rectangles drawn on a slice."""
    h, w = volume.grid_shape[1:3]
    return Shapes(
        ndim=3,
        name=name,
        shape_type="rectangle",
        edge_color="yellow",
        face_color="transparent",
        edge_width=max(0.5, min(h, w) / 200.0),
        **_layer_kwargs(image, volume),
    )


def labels_colormap(colors: Mapping[int, Any]) -> DirectLabelColormap:
    """Object colours for the labels layer; unknown labels and background are transparent."""
    return DirectLabelColormap(color_dict={None: "transparent", 0: "transparent", **dict(colors)})


def default_color(label: int) -> str:
    return PALETTE[(int(label) - 1) % len(PALETTE)]


# -------------------------------------------------------------------------------- workers
def _load(
    model: str, checkpoint: str | None, device: Any, cache_dir: Any, adapter: str | None = None
) -> VolumePredictor:
    return VolumePredictor(
        model, checkpoint=checkpoint or None, device=device, cache_dir=cache_dir, adapter=adapter or None
    )


def load_worker(model: str, checkpoint: str | None, device: Any, cache_dir: Any, adapter: str | None = None):
    """A function worker that builds a :class:`VolumePredictor` (loads the model and adapter)."""
    avoid_llvm_clash()
    return create_worker(_load, model, checkpoint, device, cache_dir, adapter, _start_thread=False, _ignore_errors=True)


def _embed(embedder, order: list[int]) -> Iterator[tuple[int, int]]:
    yield from session_ops.embed_slices(embedder, order, first_alone=True)


def embed_worker(embedder, order: list[int]):
    """A generator worker embedding ``order``; yields ``(done, total)`` per batch."""
    return create_worker(_embed, embedder, list(order), _start_thread=False, _ignore_errors=True)


def _embed_missing(embedder, slices: list[int]) -> list[int]:
    embedder.embed(slices)
    return slices


def embed_missing_worker(embedder, slices: Iterable[int]):
    """A function worker embedding a few slices needed now (prompts on them)."""
    return create_worker(_embed_missing, embedder, sorted(set(slices)), _start_thread=False, _ignore_errors=True)


def _propagate(vp: VolumePredictor, label: int, changed):
    yield from session_ops.propagate_object(vp, label, changed)


def propagate_worker(vp: VolumePredictor, label: int, changed):
    """A generator worker propagating one object; yields ``PropagationStep``s."""
    return create_worker(_propagate, vp, label, changed, _start_thread=False, _ignore_errors=True)
