"""Prompts in MONAI pipelines: read them, and validate them against a ``MetaTensor``'s grid.

Prompts use the project's JSON format (:func:`medsam.prompts.parse_prompts`), in voxel
space or in world millimetres (``"space": "lps"`` or ``"ras"``). World prompts are mapped
through the image's affine by the core's one conversion, on a :class:`~medsam.io.Volume`
built from the ``MetaTensor`` (:mod:`medsam.monai.geometry`); so they stay right after any
``Orientationd``/``Spacingd``. Voxel prompts are ``(slice=k, x=i, y=j)`` indices of the grid
the inferer sees (the file's grid when nothing resamples it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medsam.errors import InputFileError, MissingInputError, PromptError
from medsam.io.volume import Volume
from medsam.monai.geometry import volume_from_metatensor
from medsam.prompts import PromptSet, parse_prompts, validate_slice_prompt

__all__ = ["PromptSource", "read_prompts", "resolve_prompts", "is_empty"]

#: What the MONAI components accept as prompts for one image.
PromptSource = PromptSet | Mapping | str | Path


def read_prompts(source: PromptSource) -> PromptSet | dict:
    """Read prompts from a JSON file path or JSON text; pass dicts and PromptSets through.

    Returns the parsed JSON object (still unvalidated: validation needs the image) or the
    given :class:`~medsam.prompts.PromptSet`.
    """
    if isinstance(source, (PromptSet, Mapping)):
        return source if isinstance(source, PromptSet) else dict(source)
    if isinstance(source, Path) or (isinstance(source, str) and not source.lstrip().startswith("{")):
        path = Path(source)
        if not path.exists():
            raise MissingInputError(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputFileError(path, f"not valid JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise InputFileError(path, "prompts must be a JSON object with 'objects'")
        return dict(data)
    if isinstance(source, str):
        try:
            data = json.loads(source)
        except json.JSONDecodeError as exc:
            raise PromptError(f"prompts text is not valid JSON ({exc})") from None
        if not isinstance(data, Mapping):
            raise PromptError("prompts must be a JSON object with 'objects'")
        return dict(data)
    raise TypeError(
        f"prompts must be a dict in the medsam JSON format, a JSON file path or a PromptSet, "
        f"not {type(source).__name__}"
    )


def is_empty(source: PromptSource) -> bool:
    """True for a prompts dict (or PromptSet) with no objects (e.g. a label with no organ)."""
    data = read_prompts(source)
    objects = data.objects if isinstance(data, PromptSet) else data.get("objects")
    return isinstance(objects, (list, tuple)) and len(objects) == 0


def resolve_prompts(source: PromptSource, image: Any, *, spatial_axis: int = 2) -> PromptSet:
    """Validated voxel prompts for ``image`` (a ``[C, H, W, D]`` MetaTensor or a Volume).

    Parameters
    ----------
    source:
        A dict in the project JSON format (``"space"``: ``"voxel"``, ``"lps"`` or ``"ras"``),
        a JSON file path or text, or a :class:`~medsam.prompts.PromptSet` (voxel space).
    image:
        The unbatched MetaTensor the prompts refer to, or the Volume already built from it.
    spatial_axis:
        The MONAI spatial axis sliced (default 2, D); voxel prompts' ``slice`` indexes it.

    Returns
    -------
    PromptSet
        Voxel prompts ``(slice=k', x=i', y=j')`` on the Volume of
        :func:`~medsam.monai.geometry.volume_from_metatensor`.

    Raises
    ------
    PromptError
        Malformed prompts, prompts outside the image, or world points off every slice.
    """
    volume = image if isinstance(image, Volume) else volume_from_metatensor(image, spatial_axis=spatial_axis)
    data = read_prompts(source)
    if isinstance(data, PromptSet):
        for obj in data.objects:
            for p in obj.prompts:
                validate_slice_prompt(p, volume.grid_shape, f"object {obj.name!r}")
        return data
    return parse_prompts(data, volume)
