"""One batch case, run inside a worker process: load, prompt, segment, write, score.

:func:`process_case` is what every worker runs, in the local pool and on a Dask cluster
alike. It never raises: a case that fails returns its one-line error, so one bad case
never stops the batch. The model is loaded once per worker process and kept
(:func:`cached_model`), so a worker pays the model load once, not once per case.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsam.batch.manifest import Case
from medsam.errors import one_line

__all__ = ["BatchSettings", "cached_model", "case_settings", "process_case"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchSettings:
    """Settings of every case of a batch; ``window``, ``model`` and ``adapter`` may be
    overridden per case by the manifest.

    ``threads`` is the torch (and ONNX Runtime) thread count of each worker (``None``:
    leave torch's default). ``nsd_tolerance_mm`` is the NSD tolerance for cases with a
    reference.
    """

    model: str = "litemedsam"
    checkpoint: Path | None = None
    adapter: Path | None = None
    window: str | None = None
    device: str | None = None
    backend: str = "auto"
    precision: str = "fp32"
    propagate: bool = True
    cache_dir: Path | None = None
    threads: int | None = None
    overwrite: bool = False
    nsd_tolerance_mm: float = 2.0


def case_settings(case: Case, settings: BatchSettings) -> dict[str, Any]:
    """What determines a case's result, as a JSON-serialisable dict (the journal hashes it).

    Files (prompts, adapter, checkpoint, reference) enter by content hash, so editing a
    prompts file reruns its case; the device and thread counts do not enter.
    """
    from medsam.batch.journal import hash_files

    adapter = case.adapter or settings.adapter
    return {
        "prompts": case.prompts if case.prompts_path is None else hash_files(case.prompts_path),
        "prompts_kind": "inline" if case.prompts_path is None else ("from-labels" if case.from_labels else "file"),
        "series_uid": case.series_uid,
        "window": case.window or settings.window,
        "model": case.model or settings.model,
        "checkpoint": hash_files(settings.checkpoint) if settings.checkpoint else None,
        "adapter": hash_files(adapter) if adapter else None,
        "backend": settings.backend,
        "precision": settings.precision,
        "propagate": settings.propagate,
        "reference": hash_files(case.reference) if case.reference else None,
        "output": case.output,
    }


_MODEL_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _load(model: str, checkpoint: str | None, adapter: str | None, device: str | None, backend: str, precision: str) -> Any:
    from medsam.inference import InferenceConfig
    from medsam.models import load_model
    from medsam.models.accel import prepare

    t0 = time.perf_counter()
    m = load_model(model, checkpoint=checkpoint, device=device, adapter=adapter)
    prepare(m, InferenceConfig(backend=backend, precision=precision))  # the ONNX export, once per process
    logger.info("worker loaded %s in %.1f s", model, time.perf_counter() - t0)
    return m


def cached_model(
    model: str, checkpoint: Path | None, adapter: Path | None, device: str | None, backend: str = "auto",
    precision: str = "fp32",
) -> tuple[Any, float]:
    """The loaded model for these settings with its engine built (the ONNX export of
    LiteMedSAM's encoder), once per process; and the seconds spent loading it now (0 when
    it was cached). A Dask worker's threads share it."""
    with _MODEL_LOCK:
        hits = _load.cache_info().hits
        t0 = time.perf_counter()
        key = (model, str(checkpoint) if checkpoint else None, str(adapter) if adapter else None, device)
        m = _load(*key, backend, precision)
        return m, (0.0 if _load.cache_info().hits > hits else time.perf_counter() - t0)


def _prompts(case: Case, volume: Any) -> Any:
    from medsam.errors import InputFileError
    from medsam.prompts import load_prompts, parse_prompts

    if case.prompts_path is None:
        return parse_prompts(json.loads(case.prompts), volume)
    if not case.from_labels:
        return load_prompts(case.prompts_path, volume)
    from medsam.monai.simulate import simulate_prompts

    labels = _label_map(case.prompts_path, volume)
    data = simulate_prompts(labels)
    if not data["objects"]:
        raise InputFileError(case.prompts_path, "has no labelled voxels to simulate prompts from")
    return parse_prompts(data, volume)


def _label_map(path: Path, volume: Any) -> Any:
    """A label map file on ``volume``'s grid, ``(Z, Y, X)`` integers."""
    import numpy as np

    from medsam.errors import InputFileError
    from medsam.io import load_volume
    from medsam.io.resample import resample_labels_to

    lab = load_volume(path)
    if not np.issubdtype(lab.array.dtype, np.integer) or lab.is_rgb:
        raise InputFileError(path, f"is not a label map (voxels are {lab.array.dtype})")
    return resample_labels_to(lab, volume)


def _scores(labels: Any, reference: Path, volume: Any, tolerance: float) -> dict[int, dict[str, float]]:
    """Dice and NSD per label of the reference (MONAI's metrics, voxel size of ``volume``)."""
    import torch
    from monai.data import MetaTensor

    from medsam.monai.metrics import LabelMetrics

    ref = _label_map(reference, volume)
    sx, sy, sz = volume.spacing
    affine = torch.diag(torch.tensor([sz, sy, sx, 1.0], dtype=torch.float64))  # (Z, Y, X) axes
    rows = LabelMetrics(nsd_tolerance_mm=tolerance)(
        torch.from_numpy(labels.astype("int64")), MetaTensor(torch.from_numpy(ref.astype("int64")), affine=affine)
    )
    return {int(r["label"]): {"dice": r["dice"], "nsd": r["nsd"]} for r in rows}


def process_case(case: Case, settings: BatchSettings, outdir: str, overwrite: bool = False) -> dict[str, Any]:
    """Run one case and write its outputs under ``outdir``; never raises.

    Parameters
    ----------
    case, settings:
        The manifest row and the batch settings.
    outdir:
        The batch's output folder (seen by every worker).
    overwrite:
        Replace existing outputs (the batch passes ``True`` for a case its journal owns).

    Returns
    -------
    dict
        ``{"status": "done", "objects": [...], "seconds", "load_seconds", "engine",
        "weights"}`` or ``{"status": "failed", "error": "<one line>", "seconds"}``.
    """
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = _run(case, settings, Path(outdir), overwrite, t0)
        except Exception as exc:  # noqa: BLE001 - a batch goes on; the error is the case's result
            from medsam.errors import MedsamError

            if not isinstance(exc, MedsamError | ValueError | FileNotFoundError):
                logger.debug("case %s failed", case.output, exc_info=True)
            text = str(exc) if isinstance(exc, MedsamError) else f"{type(exc).__name__}: {exc}"
            result = {"status": "failed", "error": one_line(text), "seconds": round(time.perf_counter() - t0, 3)}
    # a case's warnings (a geometry note, a slice without contrast) go to its journal record
    developer = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)  # for developers, not users
    notes = list(dict.fromkeys(one_line(str(w.message)) for w in caught if not issubclass(w.category, developer)))
    for note in notes:
        logger.warning("%s: %s", case.output, note)
    return {**result, "warnings": notes} if notes else result


def _run(case: Case, settings: BatchSettings, outdir: Path, overwrite: bool, t0: float) -> dict[str, Any]:
    import numpy as np

    from medsam.inference import InferenceConfig
    from medsam.intensity import resolve_window
    from medsam.io import load_volume
    from medsam.io.save import check_mask_format, check_mask_path
    from medsam.io.volume import require_segmentable
    from medsam.segment_run import RunSettings, run_and_write

    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    out = check_mask_path(outdir / case.output, overwrite=overwrite or settings.overwrite)
    volume = load_volume(case.input, series_uid=case.series_uid)
    require_segmentable(volume)
    check_mask_format(out, volume)
    prompts = _prompts(case, volume)
    adapter = case.adapter or settings.adapter
    window_spec = case.window or settings.window
    window = None if window_spec is None and adapter is not None else resolve_window(volume, window_spec)
    run_settings = RunSettings(
        model=case.model or settings.model, checkpoint=settings.checkpoint, adapter=adapter, window=window,
        device=settings.device, inference=InferenceConfig(backend=settings.backend, precision=settings.precision),
        cache_dir=settings.cache_dir, propagate=settings.propagate, quiet=True,
    )
    model, load_seconds = cached_model(
        run_settings.model, run_settings.checkpoint, adapter, settings.device, settings.backend, settings.precision
    )
    run = run_and_write(
        volume, prompts, out, run_settings, input_label=str(case.input), series_uid=case.series_uid,
        overwrite=True, model=model,  # check_mask_path above made the overwrite decision
    )
    objects = []
    scores: dict[int, dict[str, float]] = {}
    if case.reference is not None:  # score what was written
        if out.name.lower().endswith(".dcm"):
            from medsam.io.dicom_seg import load_segmentation

            labels = load_segmentation(out, volume).labels
        else:
            labels = np.asarray(load_volume(out).array)
        scores = _scores(labels, case.reference, volume, settings.nsd_tolerance_mm)
    for r in run.rows:
        slices = run.confidence.get(str(r["label"]), {}).get("slices", {})
        values = list(slices.values())
        objects.append(
            {
                **r,
                "confidence": round(float(np.mean(values)), 4) if values else None,
                "min_confidence": round(float(np.min(values)), 4) if values else None,
                **scores.get(int(r["label"]), {}),
            }
        )
    return {
        "status": "done",
        "objects": objects,
        "seconds": round(time.perf_counter() - t0, 3),
        "load_seconds": round(load_seconds, 3),
        "segment_seconds": round(run.seconds, 3),
        "engine": run.engine,
        "weights": run.weights,
    }

