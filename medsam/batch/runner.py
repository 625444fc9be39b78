"""``medsam batch``: segment every case of a manifest, resumably, one bad case never stopping the rest.

:func:`run_batch` reads and checks the manifest (a bad one raises before any work), skips
the cases that its journal records as done with unchanged input and settings, runs the
rest on a local pool or a Dask cluster (:mod:`medsam.batch.pool`), journals every result
as it arrives, and writes ``OUTDIR/results.csv``: one row per case and object.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medsam.batch.journal import Journal, hash_files, hash_settings
from medsam.batch.manifest import Case, read_manifest
from medsam.batch.worker import BatchSettings, case_settings

__all__ = ["BatchSummary", "RESULT_FIELDS", "run_batch"]

logger = logging.getLogger(__name__)

#: Columns of ``results.csv`` (``dice`` and ``nsd`` only when a case has a reference).
RESULT_FIELDS: tuple[str, ...] = (
    "case", "row", "input", "status", "label", "name", "first_slice", "last_slice", "slices", "voxels",
    "volume_ml", "confidence", "min_confidence", "seconds", "load_seconds", "engine", "model", "error",
)
SCORE_FIELDS: tuple[str, ...] = ("dice", "nsd")
#: Exit status of a batch in which some case failed (0: all done; 2: a bad manifest).
EXIT_SOME_FAILED = 3


@dataclass(frozen=True)
class BatchSummary:
    """How a batch ended: counts of cases ``done`` (run now), ``skipped`` (done before and
    unchanged) and ``failed``, and the ``results.csv`` written."""

    outdir: Path
    results: Path
    done: int
    skipped: int
    failed: int
    seconds: float

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else 0


def run_batch(
    manifest: str | Path,
    outdir: str | Path,
    settings: BatchSettings | None = None,
    *,
    workers: int | None = None,
    scheduler: Any = None,
    retry_failed: bool = False,
    quiet: bool = False,
) -> BatchSummary:
    """Segment every case of ``manifest`` into ``outdir``; see :mod:`medsam.batch.manifest`.

    Parameters
    ----------
    manifest:
        CSV or JSONL manifest, or a folder of ``x.nii.gz`` + ``x.prompts.json``.
    outdir:
        Output folder: each case's mask, sidecar and measurements (exactly what
        ``medsam segment`` writes), ``batch-journal.jsonl`` and ``results.csv``.
    settings:
        Model, engine and window of every case (manifest columns override per case).
    workers:
        Local worker processes (default :func:`~medsam.batch.pool.default_workers`); each
        loads the model once.
    scheduler:
        A Dask scheduler address (``tcp://HOST:8786``) or ``distributed.Client``: run on
        that cluster instead of the local pool.
    retry_failed:
        Run again the cases that failed before with the same input and settings (by
        default they keep their recorded error).
    quiet:
        No progress bar.

    Raises
    ------
    InputFileError
        A bad manifest (its row named), before any case runs; or another batch is writing
        to ``outdir``.
    """
    from medsam.atomic import atomic_write_text
    from medsam.batch.pool import default_workers, run_dask, run_local
    from medsam.errors import InputFileError
    from medsam.progress import progress_bar

    t0 = time.perf_counter()
    settings = settings or BatchSettings()
    cases = read_manifest(manifest)
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputFileError(outdir, "is a file; the batch output is a folder")
    if workers is not None and workers < 1:
        raise InputFileError("--workers", f"must be at least 1, not {workers}")
    by_key = {c.output: c for c in cases}
    with Journal(outdir) as journal:
        todo, hashes, skipped, kept_failed = [], {}, 0, 0
        for case in cases:
            h = {"input_sha256": hash_files(case.input), "settings_sha256": hash_settings(case_settings(case, settings))}
            hashes[case.output] = h
            prior = journal.state.get(case.output, {})
            same = all(prior.get(k) == v for k, v in h.items())
            if same and prior.get("status") == "done" and _outputs_exist(outdir / case.output):
                skipped += 1
                continue
            if same and prior.get("status") == "failed" and not retry_failed:
                kept_failed += 1
                continue
            todo.append(case)
        logger.info(
            "%s: %d case(s): %d to run, %d done before, %d failed before%s",
            manifest, len(cases), len(todo), skipped, kept_failed,
            "" if retry_failed or not kept_failed else " (pass --retry-failed to run them again)",
        )
        counts = {"done": 0, "failed": 0}
        bar = progress_bar(len(todo), "batch", "case", quiet=quiet)
        finished = 0

        def on_start(key: str) -> None:
            journal.record(key, "pending", row=by_key[key].row, **hashes[key])

        def on_result(key: str, result: dict[str, Any]) -> None:
            nonlocal finished
            finished += 1
            journal.record(key, result["status"], row=by_key[key].row, **hashes[key], **_without(result, "status"))
            counts[result["status"]] += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(failed=counts["failed"], refresh=False)
            msg = f"{result['seconds']:.1f} s" if result.get("seconds") is not None else ""
            if result["status"] == "failed":
                msg = result["error"]
            logger.info("[%d/%d] %s %s: %s", finished, len(todo), result["status"], key, msg)

        jobs = [(c.output, (c, settings, str(outdir.resolve()), journal.owns(c.output))) for c in todo]
        try:
            if jobs and scheduler is not None:
                run_dask(jobs, on_start, on_result, scheduler=scheduler)
            elif jobs:
                n = workers or default_workers(len(jobs), settings.device)
                run_local(jobs, on_start, on_result, workers=n, device=settings.device)
        finally:
            if bar is not None:
                bar.close()
            results = atomic_write_text(outdir / "results.csv", results_csv(cases, journal.state))
    failed = sum(1 for c in cases if journal.state.get(c.output, {}).get("status") == "failed")
    return BatchSummary(outdir, results, counts["done"], skipped, failed, time.perf_counter() - t0)


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _outputs_exist(mask: Path) -> bool:
    from medsam.segment_run import measurements_path, sidecar_path

    return all(p.is_file() for p in (mask, sidecar_path(mask), measurements_path(mask)))


def results_csv(cases: Sequence[Case], state: dict[str, dict[str, Any]]) -> str:
    """``results.csv``: one row per case and object, in manifest order (see :data:`RESULT_FIELDS`).

    A case that failed, or never ran, has one row with its status and error.
    """
    scored = any(c.reference is not None for c in cases)
    fields = RESULT_FIELDS + (SCORE_FIELDS if scored else ())
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for case in cases:
        rec = state.get(case.output, {"status": "not run"})
        status = rec.get("status", "")
        base = {
            "case": case.output, "row": case.row, "input": str(case.input), "status": status,
            "seconds": rec.get("seconds"), "load_seconds": rec.get("load_seconds"),
            "engine": rec.get("engine", ""), "model": rec.get("weights", ""), "error": rec.get("error", ""),
        }
        objects = rec.get("objects") if status == "done" else None
        if not objects:
            writer.writerow(base)
            continue
        for o in objects:
            span = o.get("slices") or []
            writer.writerow(
                {
                    **base, "label": o["label"], "name": o["name"],
                    "first_slice": span[0] if span else "", "last_slice": span[-1] if span else "",
                    "slices": o.get("n_slices"), "voxels": o.get("voxels"), "volume_ml": o.get("volume_ml"),
                    "confidence": o.get("confidence"), "min_confidence": o.get("min_confidence"),
                    **{k: _num(o.get(k)) for k in SCORE_FIELDS},
                }
            )
    return buf.getvalue()


def _num(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return round(float(v), 4)
