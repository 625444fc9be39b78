"""``medsam finetune`` and ``medsam evaluate``: argument parsers and handlers.

:func:`add_subcommands` is called by :func:`medsam.cli.build_parser`; this module imports
only the standard library at import time (torch and PEFT load when a command runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

__all__ = ["add_subcommands", "cmd_evaluate", "cmd_finetune"]

logger = logging.getLogger("medsam.cli")


def _common_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, help="dataset folder (MSD, nnU-Net raw, or images/ + labels/)")
    p.add_argument("--format", choices=("msd", "nnunet", "pairs"), default=None, help="dataset layout (default: detect)")
    p.add_argument("--labels", required=True, help="structures by name or id: 'liver,spleen' or '5,1'")
    p.add_argument("--model", default="litemedsam", help="base model registry name")
    p.add_argument("--checkpoint", type=Path, help="base weights file for SAM/MedSAM models")
    p.add_argument("--window", default=None, help="preset name, 'L,W', 'header' or 'percentile' (default: automatic)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_subcommands(sub) -> None:
    """Add ``finetune`` and ``evaluate`` to the ``medsam`` sub-parsers."""
    ft = sub.add_parser(
        "finetune",
        help="fine-tune a model (LoRA, mask decoder or full) on labelled volumes",
        description="Trains on 2D slices with simulated box/point prompts and writes "
        "RUN_DIR/best.safetensors (+ .json) for `medsam segment --adapter`. "
        "Multi-GPU: torchrun --nproc_per_node N -m medsam finetune ...",
    )
    _common_data(ft)
    ft.add_argument("--method", default="lora+decoder", help="lora, decoder, full or lora+decoder")
    ft.add_argument("--epochs", type=int, default=10)
    ft.add_argument("--out", type=Path, required=True, help="run folder")
    ft.add_argument("--resume", action="store_true", help="continue the run in --out")
    ft.add_argument("--val-data", type=Path, help="separate validation dataset folder")
    ft.add_argument("--val-cases", type=float, default=0.2, help="validation cases: a count (>= 1) or a fraction (default 0.2)")
    ft.add_argument("--batch-size", type=int, default=4)
    ft.add_argument("--grad-accum", type=int, default=1)
    ft.add_argument("--lr", type=float, default=None, help="learning rate of decoder/full weights (default 1e-4; 1e-5 for full)")
    ft.add_argument("--lora-lr", type=float, default=1e-3)
    ft.add_argument("--lora-rank", type=int, default=8)
    ft.add_argument("--lora-alpha", type=float, default=8.0)
    ft.add_argument("--lora-qkv", choices=("qv", "qkv", "none"), default="qv")
    ft.add_argument("--lora-targets", default="proj", help="other attention linears for LoRA, comma-separated ('' for none)")
    ft.add_argument("--train-prompt-encoder", action="store_true")
    ft.add_argument("--samples-per-epoch", type=int, default=None)
    ft.add_argument("--group-slices", action="store_true", help="batch the structures of a slice together (one encoder pass)")
    ft.add_argument("--empty-fraction", type=float, default=0.1)
    ft.add_argument("--corrections", type=int, default=1, help="simulated correction clicks per sample")
    ft.add_argument("--prompt-mix", default="0.4,0.4,0.2", help="probabilities of box, points, box+points prompts")
    ft.add_argument("--max-points", type=int, default=3, help="most positive points of a points prompt")
    ft.add_argument("--max-neg-points", type=int, default=1, help="most negative points of a points prompt")
    ft.add_argument("--val-max-slices", type=int, default=None)
    ft.add_argument("--seed", type=int, default=0)
    ft.add_argument("--no-bf16", action="store_true", help="no bf16 autocast on CUDA")
    ft.add_argument("--max-steps", type=int, default=None, help=argparse.SUPPRESS)
    ft.set_defaults(func=cmd_finetune)

    ev = sub.add_parser("evaluate", help="Dice and NSD per structure from simulated prompts")
    _common_data(ev)
    ev.add_argument("--adapter", type=Path, help="adapter .safetensors from `medsam finetune`")
    ev.add_argument("--prompt", choices=("box", "points", "box+points"), default="box")
    ev.add_argument("--points", type=int, default=1, help="positive points per slice for point prompts")
    ev.add_argument("--max-slices", type=int, default=None, help="evenly spaced slices per case and structure")
    ev.add_argument("--nsd-tolerance", type=float, default=2.0, help="NSD tolerance in mm")
    ev.add_argument("--out", type=Path, required=True, help="metrics CSV")
    ev.add_argument("--overwrite", action="store_true")
    ev.set_defaults(func=cmd_evaluate)


def _floats(text: str, what: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _cases(args: argparse.Namespace, root: Path):
    from adapters.datasets import find_cases

    return find_cases(root, args.format)


def cmd_finetune(args: argparse.Namespace) -> int:
    from adapters.config import AdapterConfig, LoraSettings
    from adapters.datasets import check_label_spec, parse_label_spec, split_cases
    from adapters.train import RunExistsError, TrainConfig, finetune
    from medsam.prompt_sim import PromptSimConfig

    if (args.out / "state" / "last.pt").exists() and not args.resume:
        raise RunExistsError(args.out)
    targets = tuple(t for t in args.lora_targets.split(",") if t.strip())
    adapter = AdapterConfig(
        args.method,
        LoraSettings(r=args.lora_rank, alpha=args.lora_alpha, qkv=args.lora_qkv, targets=targets),
        train_prompt_encoder=args.train_prompt_encoder,
    )
    cases = _cases(args, args.data)
    if args.val_data is not None:
        train, val = cases, _cases(args, args.val_data)
    else:
        n_val = int(args.val_cases) if args.val_cases >= 1 else float(args.val_cases)
        train, val = split_cases(cases, n_val, seed=args.seed)
    check_label_spec(train, args.labels)
    cfg = TrainConfig(
        labels=tuple(parse_label_spec(args.labels)),
        adapter=adapter,
        model=args.model,
        checkpoint=None if args.checkpoint is None else str(args.checkpoint),
        window=args.window,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        lr=args.lr,
        lora_lr=args.lora_lr,
        samples_per_epoch=args.samples_per_epoch,
        group_slices=args.group_slices,
        empty_fraction=args.empty_fraction,
        prompt=PromptSimConfig(
            kinds=_floats(args.prompt_mix, "--prompt-mix"), max_pos_points=args.max_points,
            max_neg_points=args.max_neg_points, n_corrections=args.corrections,
        ),
        val_max_slices=args.val_max_slices,
        seed=args.seed,
        device=None if args.device == "auto" else args.device,
        bf16=not args.no_bf16,
        progress=not args.quiet,
        max_steps=args.max_steps,
    )
    main_rank = int(os.environ.get("RANK", "0")) == 0  # under torchrun, rank 0 reports
    if main_rank:
        print(f"training {adapter.method} on {len(train)} cases, validating on {len(val)}", file=sys.stderr)
    result = finetune(train, val, cfg, args.out, resume=args.resume)
    if not main_rank:
        return 0
    for h in result.history:
        val_txt = f"val Dice {h['val_dice']:.3f} NSD {h['val_nsd']:.3f}" if "val_dice" in h else "no validation"
        print(f"epoch {h['epoch']:>3}  loss {h['train_loss']:.4f}  {val_txt}")
    print(
        f"{result.slices_per_s:.2f} slices/s, peak memory {result.peak_memory_mb:.0f} MB; "
        f"wrote {result.best_adapter} and {result.last_adapter}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from adapters.evaluate import EvalConfig, evaluate, write_metrics_csv
    from medsam.errors import OutputExistsError

    if args.out.exists() and not args.overwrite:
        raise OutputExistsError(args.out)
    window = args.window
    if args.adapter is not None and window is None:
        from adapters.files import read_adapter_meta

        window = read_adapter_meta(args.adapter).get("window")
    config = EvalConfig(
        prompt=args.prompt, n_points=args.points, window=window,
        max_slices=args.max_slices, nsd_tolerance_mm=args.nsd_tolerance,
    )
    cases = _cases(args, args.data)
    from adapters.datasets import check_label_spec

    check_label_spec(cases, args.labels)
    from medsam.models import load_model

    device = None if args.device == "auto" else args.device
    model = load_model(args.model, checkpoint=args.checkpoint, device=device, adapter=args.adapter)
    from medsam.progress import progress_bar

    bar = progress_bar(len(cases), "evaluate", "case", quiet=args.quiet)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()

    rows = evaluate(model, cases, args.labels, config, progress=progress)
    if bar is not None:
        bar.close()
    write_metrics_csv(rows, args.out)
    for r in rows:
        if r["case"] == "ALL":
            print(f"{r['structure']:<24} {r['n_slices']:>5} slices  Dice {r['dice']:.3f}  NSD {r['nsd']:.3f}")
    print(f"wrote {args.out}")
    return 0
