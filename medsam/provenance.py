"""What a sidecar records so that a result can be checked and replayed.

:func:`provenance` gathers, for one run of ``medsam segment``:

* ``inputs``: every file that was read (each slice of a DICOM series) with its SHA-256;
* ``prompts``: the prompts in voxel space, in the order given (later prompts are the
  corrections), as a prompts file that :func:`medsam.prompts.parse_prompts` reads back, and
  ``prompts_lps``: the same prompts in world LPS millimetres (also a valid prompts file);
* ``checkpoint`` and ``adapter`` with their SHA-256 (the model's ``weights`` id is written
  beside them);
* ``propagation``: whether it propagated and every :class:`~medsam.session.PropagationConfig`
  setting;
* ``environment``: the package and library versions (torch, onnxruntime, monai, numpy ...),
  Python and the platform.

``medsam replay`` (:mod:`medsam.replay`) checks the hashes and runs it again.
"""

from __future__ import annotations

import logging
import platform
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

from medsam.io.volume import Volume
from medsam.models.checkpoints import file_sha256
from medsam.prompts import PromptSet
from medsam.session import PropagationConfig

__all__ = ["provenance", "input_files", "hashed", "prompts_record", "environment", "LIBRARIES"]

logger = logging.getLogger(__name__)

#: Libraries whose versions can change a result.
LIBRARIES = ("medsam-monai", "torch", "onnxruntime", "monai", "numpy", "SimpleITK", "pydicom", "highdicom", "scipy",
             "scikit-image")


def input_files(volume: Volume) -> list[Path]:
    """The files ``volume`` was read from: each slice file of a DICOM series, else its source."""
    if volume.meta.slice_files:
        return [Path(f) for f in dict.fromkeys(volume.meta.slice_files)]
    return [volume.source] if volume.source is not None else []


def hashed(paths: list[Path]) -> list[dict[str, str]]:
    """``[{"path": absolute path, "sha256": hex}]``."""
    return [{"path": str(Path(p).resolve()), "sha256": file_sha256(p)} for p in paths]


def _prompt_dict(p, volume: Volume | None) -> dict[str, Any]:
    if volume is None:  # voxel space
        out: dict[str, Any] = {"slice": p.slice}
        if p.box is not None:
            out["box"] = [float(v) for v in p.box]
        if p.points:
            out["points"] = [[float(x), float(y)] for x, y in p.points]
            out["point_labels"] = [int(v) for v in p.point_labels]
        return out
    out = {}
    if p.box is not None:
        x0, y0, x1, y1 = p.box
        out["box"] = volume.index_to_world([[x0, y0, p.slice], [x1, y1, p.slice]]).round(4).tolist()
    if p.points:
        out["points"] = volume.index_to_world([[x, y, p.slice] for x, y in p.points]).round(4).tolist()
        out["point_labels"] = [int(v) for v in p.point_labels]
    return out


def prompts_record(prompts: PromptSet, volume: Volume | None = None) -> dict[str, Any]:
    """The prompts as a prompts file: voxel space, or LPS mm when ``volume`` is given.

    Mask prompts (painted in napari) are not representable and raise ``ValueError``.
    """
    objects = []
    for o in prompts.objects:
        if any(p.mask is not None for p in o.prompts):
            raise ValueError(f"object {o.name!r} has mask prompts, which a prompts file cannot hold")
        obj: dict[str, Any] = {"label": o.label, "name": o.name, "propagate": o.propagate}
        if o.z_range is not None:
            obj["z_range"] = list(o.z_range)
        obj["prompts"] = [_prompt_dict(p, volume) for p in o.prompts if p.box is not None or p.points]
        objects.append(obj)
    return {"space": "voxel" if volume is None else "lps", "objects": objects}


def environment() -> dict[str, Any]:
    """Versions of the libraries that make a result, Python and the platform."""
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
    }


def provenance(
    volume: Volume,
    prompts: PromptSet,
    *,
    checkpoint: Path | None,
    adapter: Path | None,
    propagate: bool,
    config: PropagationConfig,
    series_uid: str | None = None,
) -> dict[str, Any]:
    """The sidecar's provenance fields for one run (see the module docstring)."""
    return {
        "inputs": hashed(input_files(volume)),
        "series_uid": series_uid,
        "prompts": prompts_record(prompts),
        "prompts_lps": prompts_record(prompts, volume),
        "checkpoint": hashed([checkpoint])[0] if checkpoint is not None else None,
        "adapter": hashed([adapter])[0] if adapter is not None else None,
        "propagation": {"propagate": propagate, **asdict(config)},
        "environment": environment(),
    }
