"""The ``medsam`` command line.

``medsam segment INPUT -o OUTPUT [--prompts P.json] [--box K:X0,Y0,X1,Y1] [--point K:X,Y[,L]]``
segments objects from prompts on a few slices and writes a label map with the input's
geometry plus a JSON sidecar of per-slice confidence. ``medsam models`` lists the registry.

``medsam batch MANIFEST -o OUTDIR`` runs many cases (:mod:`medsam.batch`).

Exit codes: 0 success, 2 bad input or prompts (one-line message, nothing written),
3 a batch in which some case failed (the others are done), 1 any other failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from medsam import __version__
from medsam.errors import InputFileError, MedsamError, PromptError, one_line
from medsam.inference import BACKENDS, InferenceConfig
from medsam.segment_run import measurements_path, sidecar_path

__all__ = ["main", "build_parser", "sidecar_path", "measurements_path"]

logger = logging.getLogger("medsam.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam", description="Segment Anything for medical imaging.")
    parser.add_argument("--version", action="version", version=f"medsam {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an unexpected error")
    sub = parser.add_subparsers(dest="command", required=True)

    seg = sub.add_parser(
        "segment",
        help="segment objects in a CT/MR volume or 2D image from box/point prompts",
        description=(
            "Voxel prompts: K is the slice index (array axis 0, ITK k), X and Y the column and "
            "row (ITK i, j); boxes are inclusive. Point label L is 1 (foreground, default) or 0."
        ),
    )
    seg.add_argument("input", type=Path, help="DICOM folder/file, NIfTI, NRRD, MHA or PNG/JPEG/TIFF")
    seg.add_argument(
        "-o", "--output", type=Path, required=True,
        help="label map: .nii.gz, .nii, .nrrd, .mha, or .dcm (DICOM SEG, for DICOM input)",
    )
    seg.add_argument("--prompts", type=Path, help="prompts JSON file (see README)")
    seg.add_argument("--box", action="append", default=[], metavar="K:X0,Y0,X1,Y1")
    seg.add_argument("--point", action="append", default=[], metavar="K:X,Y[,L]")
    seg.add_argument("--label", type=int, default=1, help="label id for --box/--point prompts (default 1)")
    seg.add_argument("--name", default="", help="name for the --box/--point object")
    seg.add_argument("--no-propagate", action="store_true", help="segment only the prompted slices")
    seg.add_argument("--model", default="litemedsam", help="registry name (see `medsam models`)")
    seg.add_argument("--checkpoint", type=Path, help="weights file for SAM/MedSAM models")
    seg.add_argument("--adapter", type=Path, help="fine-tuned adapter .safetensors (medsam finetune)")
    seg.add_argument("--window", default=None, help="preset name, 'L,W', 'header' or 'percentile'")
    seg.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    seg.add_argument("--series-uid", default=None, help="pick one series from a DICOM folder")
    seg.add_argument("--frame", type=int, default=None, help="0-based frame of a 4D NIfTI/NRRD/MetaImage file")
    seg.add_argument("--cache-dir", type=Path, default=None, help="on-disk embedding cache folder (default: $MEDSAM_CACHE_DIR if set)")
    seg.add_argument(
        "--backend", default="auto", choices=BACKENDS,
        help="encoder/decoder engine (default auto: onnxruntime for LiteMedSAM on CPU, else torch; "
        "'compile' = torch.compile; 'reference' = the model's own fp32 path)",
    )
    seg.add_argument(
        "--precision", default="fp32", choices=("fp32", "bf16"),
        help="bf16 is faster on CPUs/GPUs with native bf16 but approximate (torch backends only)",
    )
    seg.add_argument("--overwrite", action="store_true", help="replace existing output files")
    seg.add_argument(
        "--anonymize", action="store_true",
        help="DICOM SEG output: pseudonymise patient and study identity (consistent hashes)",
    )
    seg.add_argument("--quiet", action="store_true", help="no progress bar")
    seg.set_defaults(func=cmd_segment)

    meas = sub.add_parser(
        "measure",
        help="measure every object of a label map: mL, surface, diameters, RECIST axes, HU",
        description="Measurements in world mm on the image grid (see README, Clinical outputs).",
    )
    meas.add_argument("labels", type=Path, help="label map (.nii.gz, .nrrd, .mha) or DICOM SEG (.dcm)")
    meas.add_argument("--image", type=Path, help="the source image (required for a DICOM SEG; gives HU for CT)")
    meas.add_argument("--names", type=Path, help='JSON file of label names, {"5": "liver", ...}')
    meas.add_argument("-o", "--output", type=Path, help="write the table as CSV")
    meas.add_argument("--overwrite", action="store_true", help="replace an existing CSV")
    meas.set_defaults(func=cmd_measure)

    rep = sub.add_parser(
        "replay",
        help="run a recorded segmentation again from its sidecar (checks every input's SHA-256)",
    )
    rep.add_argument("sidecar", type=Path, help="OUTPUT.json written by medsam segment (or the napari widget)")
    rep.add_argument("-o", "--output", type=Path, required=True, help="the new mask (any format medsam writes)")
    rep.add_argument("--overwrite", action="store_true", help="replace existing output files")
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(func=cmd_replay)

    _add_batch(sub)

    models = sub.add_parser("models", help="list the models in the registry")
    models.set_defaults(func=cmd_models)

    from medsam.plugins import cli_plugins  # finetune, evaluate: the adapters package

    for add in cli_plugins():
        add(sub)
    return parser


def _add_batch(sub: Any) -> None:
    bat = sub.add_parser(
        "batch",
        help="segment every case of a manifest (CSV/JSONL or a folder); resumable; local workers or Dask",
        description=(
            "MANIFEST rows: input, prompts (file, inline JSON or from-labels:LABELS), output (relative to "
            "OUTDIR), optional series_uid, window, model, adapter, reference. Rerunning skips the cases "
            "that are done and unchanged. Exit status: 0 all done, 3 some case failed (see "
            "OUTDIR/results.csv), 2 a bad manifest (nothing run)."
        ),
    )
    bat.add_argument("manifest", type=Path, help="manifest .csv/.jsonl, or a folder of x.nii.gz + x.prompts.json")
    bat.add_argument("-o", "--output", type=Path, required=True, help="output folder (OUTDIR)")
    bat.add_argument("--workers", type=int, default=None, help="local worker processes (default: fits the machine)")
    bat.add_argument("--scheduler", default=None, help="Dask scheduler address, e.g. tcp://HOST:8786")
    bat.add_argument("--retry-failed", action="store_true", help="run again the cases that failed before")
    bat.add_argument("--model", default="litemedsam", help="registry name (a manifest model column overrides)")
    bat.add_argument("--checkpoint", type=Path, help="weights file for SAM/MedSAM models")
    bat.add_argument("--adapter", type=Path, help="fine-tuned adapter .safetensors for every case")
    bat.add_argument("--window", default=None, help="preset name, 'L,W', 'header' or 'percentile'")
    bat.add_argument("--device", default="auto", help="auto, cpu, cuda (one worker per GPU) or mps")
    bat.add_argument("--backend", default="auto", choices=BACKENDS, help="encoder/decoder engine (see segment)")
    bat.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    bat.add_argument("--no-propagate", action="store_true", help="segment only the prompted slices")
    bat.add_argument("--cache-dir", type=Path, default=None, help="on-disk embedding cache folder")
    bat.add_argument("--overwrite", action="store_true", help="replace outputs that this batch did not write")
    bat.add_argument("--quiet", action="store_true", help="no progress bar and no per-case lines")
    bat.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    import signal

    from medsam.batch import BatchSettings, run_batch

    if args.workers is not None and args.scheduler is not None:
        raise InputFileError("--workers", "the Dask cluster has its own workers; give --workers or --scheduler")
    settings = BatchSettings(
        model=args.model, checkpoint=args.checkpoint, adapter=args.adapter, window=args.window,
        device=None if args.device == "auto" else args.device, backend=args.backend, precision=args.precision,
        propagate=not args.no_propagate, cache_dir=args.cache_dir, overwrite=args.overwrite,
    )
    if not args.quiet and not sys.stderr.isatty():  # a log line per finished case; a terminal gets a bar
        logging.getLogger("medsam.batch").setLevel(min(logging.INFO, logging.getLogger().level))

    def terminate(signum, frame):  # noqa: ANN001 - SIGTERM stops the workers as Ctrl-C does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        summary = run_batch(
            args.manifest, args.output, settings, workers=args.workers, scheduler=args.scheduler,
            retry_failed=args.retry_failed, quiet=args.quiet,
        )
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        f"{summary.done} done, {summary.skipped} done before, {summary.failed} failed; "
        f"wrote {summary.results} ({summary.seconds:.1f} s)"
    )
    return summary.exit_code


def _prompt_set(args: argparse.Namespace, volume) -> Any:
    from medsam.prompts import (
        ObjectPrompts,
        PromptSet,
        load_prompts,
        merge_slice_prompts,
        parse_box_arg,
        parse_point_arg,
        validate_slice_prompt,
    )

    objects = []
    if args.prompts is not None:
        objects.extend(load_prompts(args.prompts, volume).objects)
    cli = [parse_box_arg(b) for b in args.box] + [parse_point_arg(p) for p in args.point]
    if cli:
        merged = merge_slice_prompts(cli)
        for p in merged:
            validate_slice_prompt(p, volume.grid_shape, f"object {args.name or args.label}")
        objects.append(ObjectPrompts(label=args.label, name=args.name, prompts=merged))
    if not objects:
        raise PromptError("no prompts: give --prompts FILE, --box K:X0,Y0,X1,Y1 or --point K:X,Y[,L]")
    return PromptSet(tuple(objects))


def cmd_segment(args: argparse.Namespace) -> int:
    from medsam.intensity import resolve_window
    from medsam.io import load_volume
    from medsam.io.save import check_mask_format, check_mask_path
    from medsam.io.volume import require_segmentable
    from medsam.segment_run import RunSettings, run_and_write

    t0 = time.perf_counter()
    # Everything a user can get wrong is checked before the model is loaded.
    inference = InferenceConfig(backend=args.backend, precision=args.precision)
    out = check_mask_path(args.output, overwrite=args.overwrite)
    if args.anonymize and not out.name.lower().endswith(".dcm"):
        raise InputFileError(out, "--anonymize applies to DICOM SEG (.dcm) output only")
    # A sidecar (or measurements table) without its mask is stale (the mask is checked
    # above): it is replaced.
    volume = load_volume(args.input, series_uid=args.series_uid, frame=args.frame)
    require_segmentable(volume)
    check_mask_format(out, volume)
    prompts = _prompt_set(args, volume)
    # with an adapter and no --window: the adapter's training window (run_and_write)
    window = None if args.window is None and args.adapter is not None else resolve_window(volume, args.window)
    settings = RunSettings(
        model=args.model, checkpoint=args.checkpoint, adapter=args.adapter, window=window,
        device=None if args.device == "auto" else args.device, inference=inference, cache_dir=args.cache_dir,
        propagate=not args.no_propagate, anonymize=args.anonymize, quiet=args.quiet,
    )
    run = run_and_write(
        volume, prompts, out, settings, input_label=str(args.input), series_uid=args.series_uid,
        overwrite=args.overwrite,
    )
    _print_run(run, time.perf_counter() - t0)
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from medsam.replay import replay

    t0 = time.perf_counter()
    run = replay(args.sidecar, args.output, overwrite=args.overwrite, quiet=args.quiet)
    _print_run(run, time.perf_counter() - t0)
    return 0


def _print_run(run, total: float) -> None:
    for r in run.rows:
        span = f"slices {r['slices'][0]}-{r['slices'][1]}" if r["slices"] else "no slices"
        print(
            f"{r['label']:>3} {r['name']:<20} {span:<18} {r['n_slices']:>4} slices "
            f"{r['voxels']:>9} voxels {r['volume_ml']:>9.2f} mL"
        )
    print(
        f"wrote {run.output}, {run.sidecar.name} and {run.measurements.name} "
        f"({len(run.rows)} objects, {total:.1f} s)"
    )


def _print_measurements(rows) -> None:
    for m in rows:
        hu = f" HU {m.hu['mean']:.0f}±{m.hu['std']:.0f}" if m.hu else ""
        print(
            f"{m.label:>3} {m.name:<20} {m.volume_ml:>9.2f} mL {m.surface_mm2:>9.0f} mm² "
            f"max {m.max_diameter_mm:6.1f} mm  RECIST {m.long_axis_mm:5.1f} x {m.short_axis_mm:5.1f} mm "
            f"(slice {m.long_axis_slice}){hu}"
        )


def _names_file(path: Path) -> dict[int, str]:
    """``{label: name}`` from a JSON object such as ``{"5": "liver"}``."""
    from medsam.errors import MissingInputError

    if not path.is_file():
        raise MissingInputError(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {int(k): str(v) for k, v in raw.items() if isinstance(v, str)}
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f'is not a JSON object of label names like {{"5": "liver"}} ({exc})') from None


def cmd_measure(args: argparse.Namespace) -> int:
    import numpy as np

    from medsam.atomic import atomic_write_text
    from medsam.errors import OutputExistsError
    from medsam.io import load_volume
    from medsam.io.resample import resample_labels_to
    from medsam.measure import measure_labels, measurements_csv

    if args.output is not None and args.output.exists() and not args.overwrite:
        raise OutputExistsError(args.output)
    image = load_volume(args.image) if args.image is not None else None
    names: dict[int, str] = {}
    if args.labels.name.lower().endswith(".dcm"):
        from medsam.io.dicom_seg import load_segmentation

        if image is None:
            raise InputFileError(args.labels, "a DICOM SEG needs --image, the series it segments")
        seg = load_segmentation(args.labels, image)
        labels, names = seg.labels, seg.label_names
    else:
        lab = load_volume(args.labels)
        if not np.issubdtype(lab.array.dtype, np.integer) or lab.is_rgb:
            raise InputFileError(args.labels, f"is not a label map (voxels are {lab.array.dtype})")
        if image is None:
            image = lab
        elif not lab.same_geometry(image):
            logger.warning("%s: not on the grid of %s; labels resampled onto it (nearest)", args.labels, args.image)
        labels = resample_labels_to(lab, image)
        side = sidecar_path(args.labels)
        if side.is_file():  # names from the sidecar that medsam segment wrote
            try:
                names = {int(o["label"]): str(o["name"]) for o in json.loads(side.read_text())["objects"]}
            except (ValueError, KeyError, TypeError):
                logger.warning("%s: not a medsam sidecar; objects are unnamed", side)
    if args.names is not None:
        names.update(_names_file(args.names))
    rows = measure_labels(labels, image, names=names)
    _print_measurements(rows)
    if args.output is not None:
        atomic_write_text(args.output, measurements_csv(rows))
        print(f"wrote {args.output} ({len(rows)} objects)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from medsam.models import MODEL_REGISTRY

    for name, spec in MODEL_REGISTRY.items():
        print(f"{name:<14} {getattr(spec, 'description', '')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _log_warning  # one line each, like the logged warnings
        return _run(args)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """Show a Python warning (e.g. a DICOM geometry warning) as one log line, without the
    source line that :func:`warnings.showwarning` prints under it."""
    logging.getLogger("medsam").warning("%s", message)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except MedsamError as exc:
        print(f"medsam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"medsam {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `medsam measure ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except Exception as exc:  # a bug, or the machine (memory, disk): one line unless --debug
        if args.debug:
            raise
        print(
            f"medsam {args.command}: internal error: {type(exc).__name__}: {one_line(str(exc))} "
            "(run again with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
