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
from medsam.mask_rle import mask_to_rle
from medsam.models.checkpoints import file_sha256
from medsam.prompts import PromptSet
from medsam.session import PropagationConfig

__all__ = [
    "provenance", "session_record", "history_record", "input_files", "hashed", "prompts_record", "environment", "LIBRARIES",
]

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
        if p.mask is not None:
            out["mask"] = mask_to_rle(p.mask)
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

    Mask prompts (slices painted in napari) are run-length encoded in voxel space
    (:func:`medsam.mask_rle.mask_to_rle`); the LPS record leaves them out.
    """
    objects = []
    for o in prompts.objects:
        obj: dict[str, Any] = {"label": o.label, "name": o.name, "propagate": o.propagate}
        if o.z_range is not None:
            obj["z_range"] = list(o.z_range)
        keep = [p for p in o.prompts if p.box is not None or p.points or (volume is None and p.mask is not None)]
        obj["prompts"] = [_prompt_dict(p, volume) for p in keep]
        objects.append(obj)
    return {"space": "voxel" if volume is None else "lps", "objects": objects}


def history_record(events, volume: Volume) -> list[dict[str, Any]]:
    """A session's :class:`~medsam.session.SessionEvent` list, in order, for the sidecar.

    Each entry has ``step`` (1, 2, ...), ``action``, ``label`` and, where they apply,
    ``slice``, ``prompt`` (voxel space, as in a prompts file), ``prompt_lps`` (LPS mm) and the
    event's details (``direction``, ``z_range``).
    """
    out = []
    for i, e in enumerate(events, 1):
        entry: dict[str, Any] = {"step": i, "action": e.action, "label": int(e.label)}
        if e.slice is not None:
            entry["slice"] = int(e.slice)
        if e.prompt is not None:
            entry["prompt"] = _prompt_dict(e.prompt, None)
            entry["prompt_lps"] = _prompt_dict(e.prompt, volume)
        entry.update(e.detail)
        out.append(entry)
    return out


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


def session_record(
    vp: Any, *, checkpoint: Path | None = None, adapter: Path | None = None, series_uid: str | None = None
) -> dict[str, Any]:
    """A replayable sidecar of an interactive session (a :class:`~medsam.volume.VolumePredictor`
    with an open session): every object's prompts as they stand, painted slices as mask
    prompts, the model, window and engine. ``medsam replay`` runs it from the command line.

    ``history`` (:func:`history_record`) lists every prompt and correction in the order the
    user made them, with removals and re-propagations; replay runs the final ``prompts``,
    which give the same masks because a correction owns its stretch of slices.
    """
    from medsam import __version__
    from medsam.models.accel import prepare
    from medsam.prompts import ObjectPrompts

    session = vp.session
    if session is None:
        raise ValueError("no session: prepare an image first")
    volume = session.volume
    objects = tuple(
        ObjectPrompts(o.label, o.name, tuple(o.prompts[k] for k in o.prompted_slices), o.propagate, o.z_range)
        for o in session.objects.values()
        if o.prompts
    )
    prompts = PromptSet(objects)
    w = session.window
    return {
        "medsam_version": __version__,
        "input": str(volume.source) if volume.source is not None else None,
        "input_path": str(Path(volume.source).resolve()) if volume.source is not None else None,
        "model": vp.model.name,
        "weights": vp.model.weights_id,
        "inference": {
            "backend": prepare(vp.model, vp.inference).backend,
            "precision": vp.inference.precision,
            "device": str(vp.model.device),
        },
        "window": {"name": w.name, "low": w.low, "high": w.high},
        **provenance(
            volume, prompts, checkpoint=checkpoint, adapter=adapter, propagate=True, config=vp.config,
            series_uid=series_uid,
        ),
        "confidence": session.confidence(),
        "history": history_record(session.history, volume),
        "source": "napari session",
    }
