"""``medsam replay SIDECAR -o OUT``: run a recorded segmentation again.

The sidecar (:mod:`medsam.provenance`) names every input file with its SHA-256, the model
and its weights, the adapter, the window, the engine, the propagation settings and the
prompts in order. :func:`replay` refuses, with one line and before any model work, when an
input, the checkpoint or the adapter is missing or has a different hash. After loading the
model it also refuses when the model's weights id differs. On the same machine, engine and
library versions, the mask is identical voxel for voxel.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

from medsam.errors import InputFileError, MissingInputError

__all__ = ["replay", "check_hashes"]

logger = logging.getLogger(__name__)

_REQUIRED = ("input_path", "inputs", "prompts", "model", "weights", "window", "inference", "propagation")


def _read(sidecar: Path) -> dict[str, Any]:
    if not sidecar.is_file():
        raise MissingInputError(sidecar)
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputFileError(sidecar, f"is not a JSON sidecar ({exc})") from None
    missing = [k for k in _REQUIRED if not isinstance(record, dict) or record.get(k) is None]
    if missing:
        raise InputFileError(
            sidecar, f"is not a replayable medsam sidecar: no {', '.join(missing)} (written by medsam < 0.2?)"
        )
    return record


def check_hashes(entries: list[dict[str, str]], sidecar: Path) -> None:
    """Every ``{"path", "sha256"}`` file exists and has that hash, else a one-line error."""
    from medsam.models.checkpoints import file_sha256

    for entry in entries:
        path = Path(entry["path"])
        if not path.is_file():
            raise InputFileError(path, f"recorded in {sidecar.name} is missing")
        got = file_sha256(path)
        if got != entry["sha256"]:
            raise InputFileError(
                path, f"has changed since {sidecar.name} was written (SHA-256 {got[:12]}..., recorded {entry['sha256'][:12]}...)"
            )


def replay(
    sidecar: str | os.PathLike[str], output: str | os.PathLike[str], *, overwrite: bool = False, quiet: bool = False
):
    """Re-run the segmentation recorded in ``sidecar`` and write it to ``output``.

    Returns the :class:`medsam.segment_run.RunResult`; the new sidecar has ``replay_of``.
    """
    from medsam.inference import InferenceConfig
    from medsam.intensity import Window
    from medsam.io import load_volume
    from medsam.io.save import check_mask_format, check_mask_path
    from medsam.prompts import parse_prompts
    from medsam.segment_run import RunSettings, run_and_write
    from medsam.session import PropagationConfig

    sidecar = Path(sidecar).expanduser()
    record = _read(sidecar)
    out = check_mask_path(output, overwrite=overwrite)
    check_hashes(record["inputs"], sidecar)
    for key in ("checkpoint", "adapter"):
        if record.get(key):
            check_hashes([record[key]], sidecar)
    volume = load_volume(record["input_path"], series_uid=record.get("series_uid"))
    check_mask_format(out, volume)
    prompts = parse_prompts(record["prompts"], volume)
    w = record["window"]
    prop = dict(record["propagation"])
    propagate = bool(prop.pop("propagate", True))
    known = {f.name for f in fields(PropagationConfig)}
    engine = record["inference"]
    settings = RunSettings(
        model=record["model"],
        checkpoint=Path(record["checkpoint"]["path"]) if record.get("checkpoint") else None,
        adapter=Path(record["adapter"]["path"]) if record.get("adapter") else None,
        window=Window(w["low"], w["high"], w["name"]),
        device=engine["device"],
        inference=InferenceConfig(backend=engine["backend"], precision=engine["precision"]),
        propagate=propagate,
        config=PropagationConfig(**{k: v for k, v in prop.items() if k in known}),
        anonymize=bool(record.get("anonymize", False)),
        quiet=quiet,
    )
    logger.info("replaying %s (%d objects) into %s", sidecar, len(prompts.objects), out)
    return run_and_write(
        volume, prompts, out, settings, input_label=record["input"], series_uid=record.get("series_uid"),
        overwrite=overwrite, extra={"replay_of": str(sidecar.resolve())}, expect_weights=record["weights"],
    )
