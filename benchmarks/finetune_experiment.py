"""Fine-tune LiteMedSAM (LoRA + mask decoder) on the TotalSegmentator CT and MR examples.

Zero-shot versus fine-tuned Dice on held-out slices, for box, 1-point and 3-point prompts.

Data and split (honest about its size): the repository holds one CT volume
(``example_ct_sm``, 30 slices, 3 mm) and one MR volume (``example_mr_sm``, 20 slices, 3 mm)
with TotalSegmentator reference labels. No whole volume can be held out, so each volume
is cut along z into a training slab and a test slab with a 2-slice (6 mm) gap between them:

* CT: test slices 0-11, gap 12-13, training slices 14-29;
* MR: training slices 0-8, gap 9-10, test slices 11-19.

Neighbouring slabs of the same patient are far easier than a new patient, so the numbers
show what fine-tuning changes (notably point prompts), not how it generalises across
patients. Training uses no validation (the adapter after the last epoch is evaluated),
so nothing is selected on the test slabs.

Run::

    python -m benchmarks.finetune_experiment            # defaults, CPU-friendly
    python -m benchmarks.finetune_experiment --epochs 4 --device cuda --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

from adapters.config import AdapterConfig, LoraSettings
from adapters.datasets import Case
from adapters.evaluate import EvalConfig, evaluate
from adapters.prompt_sim import PromptSimConfig
from adapters.train import TrainConfig, finetune

ROOT = Path(__file__).resolve().parent.parent
TS = ROOT / "sample_data" / "totalsegmentator"

#: (image, labels, label-name map, train slab, test slab), slabs as [start, stop).
VOLUMES = {
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz", "total", (14, 30), (0, 12)),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr", (0, 9), (11, 20)),
}
PROMPTS = (("box", 1), ("points", 1), ("points", 3))


def build_cases(out: Path) -> tuple[list[Case], list[Case]]:
    """Write the training and test slabs as NIfTI crops (real geometry) and return the cases."""
    import SimpleITK as sitk

    names = json.loads((TS / "label_names_total_and_total_mr.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for key, (image, label, table, tr, te) in VOLUMES.items():
        img, seg = sitk.ReadImage(str(TS / image)), sitk.ReadImage(str(TS / label))
        label_names = {int(k): v for k, v in names[table].items()}
        for split, (a, b), dest in (("train", tr, train), ("test", te, test)):
            cid = f"{key}_{split}"
            ip, lp = out / f"{cid}_image.nii.gz", out / f"{cid}_label.nii.gz"
            sitk.WriteImage(img[:, :, a:b], str(ip))
            sitk.WriteImage(seg[:, :, a:b], str(lp))
            dest.append(Case(cid, ip, lp, label_names, modality=key.upper()))
    return train, test


def run_eval(model, cases, labels, max_slices) -> dict:
    """``{(prompt, n): rows}`` for box, 1-point and 3-point prompts."""
    results, embeddings = {}, {}
    for prompt, n in PROMPTS:
        cfg = EvalConfig(prompt=prompt, n_points=n, max_slices=max_slices)
        results[f"{prompt}{n if prompt != 'box' else ''}"] = evaluate(
            model, cases, labels, cfg, embeddings=embeddings
        )
    return results


def _mean_dice(rows, case: str) -> float:
    vals = [r["dice"] for r in rows if r["case"] == case]
    return float(np.mean(vals)) if vals else float("nan")


def report(zero: dict, tuned: dict, speed: dict) -> str:
    """Markdown tables: mean Dice over structures per modality, and per structure."""
    lines = ["| test slab | prompt | zero-shot Dice | fine-tuned Dice |", "|---|---|---|---|"]
    for case, label in (("ct_test", "CT"), ("mr_test", "MR"), ("ALL", "CT+MR")):
        for key in zero:
            lines.append(f"| {label} | {key} | {_mean_dice(zero[key], case):.3f} | {_mean_dice(tuned[key], case):.3f} |")
    lines += ["", "| structure (CT+MR slices) | slices | " + " | ".join(f"{k} zero-shot / tuned" for k in zero) + " |",
              "|---|---|" + "---|" * len(zero)]
    for r in [r for r in zero["box"] if r["case"] == "ALL"]:
        cells = []
        for key in zero:
            z = next(x for x in zero[key] if x["case"] == "ALL" and x["structure"] == r["structure"])
            t = next(x for x in tuned[key] if x["case"] == "ALL" and x["structure"] == r["structure"])
            cells.append(f"{z['dice']:.3f} / {t['dice']:.3f}")
        lines.append(f"| {r['structure']} | {r['n_slices']} | " + " | ".join(cells) + " |")
    lines += ["", f"training: {speed['slices_per_s']:.2f} slices/s, peak memory {speed['peak_memory_mb']:.0f} MB, "
              f"{speed['train_s']:.0f} s training, {speed['eval_s']:.0f} s evaluation (device {speed['device']})"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--labels", default="liver,spleen,kidney_left,kidney_right", help="the organ group")
    p.add_argument("--method", default="lora+decoder")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--samples-per-epoch", type=int, default=None, help="default: every foreground slice once")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--max-test-slices", type=int, default=None, help="per case and structure (default: all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("out") / "finetune_experiment", help="working folder (data crops, run)")
    p.add_argument("--json", type=Path, default=None, help="also write all numbers as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    from adapters.files import load_adapter
    from medsam.models import load_model

    device = None if args.device == "auto" else args.device
    train, test = build_cases(args.out / "data")
    labels = args.labels
    t0 = time.perf_counter()
    base = load_model("litemedsam", device=device)
    zero = run_eval(base, test, labels, args.max_test_slices)
    eval_s = time.perf_counter() - t0
    print(f"zero-shot evaluation: {eval_s:.0f} s", file=sys.stderr)

    cfg = TrainConfig(
        labels=tuple(labels.split(",")),
        adapter=AdapterConfig(args.method, LoraSettings(r=args.lora_rank, alpha=float(args.lora_rank))),
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lora_lr=args.lora_lr,
        samples_per_epoch=args.samples_per_epoch, group_slices=True, empty_fraction=0.1,
        prompt=PromptSimConfig(kinds=(0.3, 0.5, 0.2), max_pos_points=3, max_neg_points=1, n_corrections=1),
        device=device, seed=args.seed,
    )
    run_dir = args.out / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    t1 = time.perf_counter()
    result = finetune(train, [], cfg, run_dir)
    train_s = time.perf_counter() - t1
    print(f"training: {train_s:.0f} s, {result.slices_per_s:.2f} slices/s, peak memory "
          f"{result.peak_memory_mb:.0f} MB", file=sys.stderr)

    tuned_model = load_adapter(load_model("litemedsam", device=device), result.last_adapter)
    t2 = time.perf_counter()
    tuned = run_eval(tuned_model, test, labels, args.max_test_slices)
    eval_s += time.perf_counter() - t2
    speed = {"slices_per_s": result.slices_per_s, "peak_memory_mb": result.peak_memory_mb,
             "train_s": train_s, "eval_s": eval_s, "device": str(base.device)}
    print(report(zero, tuned, speed))
    print(f"\nadapter: {result.last_adapter}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "speed": speed,
                                         "history": result.history, "zero_shot": zero, "fine_tuned": tuned}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
