"""One segmentation run, from a loaded volume and its prompts to the files on disk.

:func:`run_and_write` is what ``medsam segment`` and ``medsam replay`` share: it loads the
model, segments, and writes the mask (or DICOM SEG), the JSON sidecar with the provenance of
:mod:`medsam.provenance`, and ``OUTPUT.measurements.csv``. Checking the user's arguments
stays with the callers, which do it before any model work.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medsam.inference import InferenceConfig

if TYPE_CHECKING:  # the CLI imports this module; torch and SimpleITK wait until a run
    from medsam.intensity import Window
    from medsam.io.volume import Volume
    from medsam.prompts import PromptSet
    from medsam.session import PropagationConfig

__all__ = ["RunSettings", "RunResult", "run_and_write", "sidecar_path", "measurements_path"]

logger = logging.getLogger(__name__)


def sidecar_path(output: Path) -> Path:
    """``liver.nii.gz`` -> ``liver.nii.gz.json``: the sidecar is named from the whole file name,
    so ``out.nrrd`` and ``out.nii.gz`` never share one."""
    return output.with_name(output.name + ".json")


def measurements_path(output: Path) -> Path:
    """``liver.nii.gz`` -> ``liver.nii.gz.measurements.csv``."""
    return output.with_name(output.name + ".measurements.csv")


@dataclass(frozen=True)
class RunSettings:
    """How to segment: the model and its engine, the window and propagation.

    ``window`` ``None`` means the adapter's training window when there is an adapter, else
    the default for the image (header window, ``soft_tissue`` for CT, percentiles for MR).
    ``config`` ``None`` is the default :class:`~medsam.session.PropagationConfig`.
    """

    model: str = "litemedsam"
    checkpoint: Path | None = None
    adapter: Path | None = None
    window: Window | str | None = None
    device: str | None = None
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    cache_dir: Path | None = None
    propagate: bool = True
    config: PropagationConfig | None = None
    anonymize: bool = False
    quiet: bool = False


@dataclass(frozen=True)
class RunResult:
    """What was written: the mask, its sidecar and measurements, and one summary row per object.

    ``confidence`` is the sidecar's per-object, per-slice confidence; ``engine`` the backend
    that ran, ``weights`` the model's ``weights_id``.
    """

    output: Path
    sidecar: Path
    measurements: Path
    rows: list[dict[str, Any]]
    seconds: float
    confidence: dict[str, Any] = field(default_factory=dict)
    engine: str = ""
    weights: str = ""


def run_and_write(
    volume: Volume,
    prompts: PromptSet,
    out: Path,
    settings: RunSettings,
    *,
    input_label: str,
    series_uid: str | None = None,
    overwrite: bool = False,
    extra: dict[str, Any] | None = None,
    expect_weights: str | None = None,
    model: Any = None,
) -> RunResult:
    """Segment ``volume`` from ``prompts`` and write ``out``, its sidecar and measurements.

    ``input_label`` is the input as the user named it (recorded in the sidecar); ``extra``
    adds sidecar fields (``replay_of``). With ``expect_weights``, a model whose ``weights_id``
    differs raises :class:`~medsam.errors.InputFileError` before any work. ``model`` is
    an already loaded :class:`~medsam.models.PromptableSam` for ``settings`` (its adapter
    applied): ``medsam batch`` workers load it once and pass it to every case.
    """
    from medsam import __version__
    from medsam.atomic import atomic_write_text, output_lock
    from medsam.intensity import Window, resolve_window
    from medsam.io import save_mask
    from medsam.io.dicom_seg import AlgorithmInfo
    from medsam.measure import measure_labels, measurements_csv
    from medsam.models.accel import prepare
    from medsam.pipeline import segment_volume, summarize
    from medsam.progress import progress_bar
    from medsam.provenance import history_record, provenance
    from medsam.session import PropagationConfig
    from medsam.volume import VolumePredictor

    config = settings.config or PropagationConfig()
    if model is None:
        vp = VolumePredictor(
            settings.model, checkpoint=settings.checkpoint, device=settings.device, cache_dir=settings.cache_dir,
            adapter=settings.adapter, inference=settings.inference, config=config,
        )
    else:
        vp = VolumePredictor(model, cache_dir=settings.cache_dir, inference=settings.inference, config=config)
    if expect_weights is not None and vp.model.weights_id != expect_weights:
        from medsam.errors import InputFileError

        raise InputFileError(
            settings.checkpoint or settings.model,
            f"weights are {vp.model.weights_id}, not the recorded {expect_weights}",
        )
    window = settings.window
    if window is None and settings.adapter is not None:  # the window the adapter was trained with
        window = getattr(vp.model, "adapter_meta", {}).get("window")
    window = window if isinstance(window, Window) else resolve_window(volume, window)
    engine = prepare(vp.model, settings.inference)  # bf16 on a device without it fails here, before any work
    bar = progress_bar(0, "embed+propagate", "slice", quiet=settings.quiet)

    def progress(stage: str, done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            # embedding happens lazily, a batch ahead of propagation: show both
            bar.set_postfix(embedded=vp.session.embedder.n_encoded if vp.session else 0, refresh=False)
            bar.refresh()

    result = segment_volume(
        volume, prompts, predictor=vp, window=window, propagate=settings.propagate, progress=progress
    )
    if bar is not None:
        bar.close()
    model_name, weights_id, device = vp.model.name, vp.model.weights_id, str(vp.model.device)
    history = history_record(vp.session.history, volume) if vp.session is not None else []
    vp.close()  # the embeddings (2 GB for 1000 slices) are not needed to write the result
    rows = summarize(result, volume)
    names = {int(r["label"]): r["name"] for r in rows}
    measurements = measure_labels(result.labels, volume, names=names)
    algorithm = AlgorithmInfo(model=model_name, adapter=settings.adapter.name if settings.adapter else "")
    sidecar = {
        "medsam_version": __version__,
        "input": input_label,
        "input_path": str(Path(volume.source).resolve()) if volume.source is not None else None,
        "output": str(out),
        "model": model_name,
        "weights": weights_id,
        "inference": {"backend": engine.backend, "precision": settings.inference.precision, "device": device},
        "window": {"name": result.window.name, "low": result.window.low, "high": result.window.high},
        **provenance(
            volume, prompts, checkpoint=settings.checkpoint, adapter=settings.adapter,
            propagate=settings.propagate, config=config, series_uid=series_uid,
        ),
        "anonymize": settings.anonymize,
        "objects": rows,
        "measurements": [m.as_dict() for m in measurements],
        "confidence": result.confidence,
        "history": history,
        "seconds": round(result.seconds, 3),
        **(extra or {}),
    }
    side, table = sidecar_path(out), measurements_path(out)
    with output_lock(out):  # a second writer of the same outputs waits, then re-checks
        new = [p for p in (out, side, table) if not p.exists()]
        try:
            save_mask(
                result.labels, volume, out, overwrite=overwrite, names=names, algorithm=algorithm,
                anonymize=settings.anonymize,
            )
            atomic_write_text(side, json.dumps(sidecar, indent=1))
            atomic_write_text(table, measurements_csv(measurements))
        except BaseException:  # a full disk, a kill signal: no mask is left without its sidecar
            for p in new:
                p.unlink(missing_ok=True)
            raise
    return RunResult(out, side, table, rows, result.seconds, result.confidence, engine.backend, weights_id)
