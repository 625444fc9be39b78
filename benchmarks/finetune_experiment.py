"""Fine-tune LiteMedSAM (LoRA + mask decoder) on the TotalSegmentator CT and MR examples.

Zero-shot versus fine-tuned Dice on held-out slices, for box, 1-point and 3-point prompts.

Two splits (``--split``):

``volumes`` (default): whole volumes are kept out of training. Training uses every slice
of the CT volume ``example_ct_sm`` (30 slices, 3 mm) and the MR volume ``example_mr_sm``
(20 slices, 3 mm); the test set is the independent CT DICOM series ``example_ct_dicom``
(20 slices, 512 x 512, 0.98 x 0.98 x 2 mm) with its labels ``example_seg_dicom.nii.gz``
brought onto the DICOM grid (exact: the grids differ by axis flips). Default organ group:
liver + spleen, the abdominal organs present in all three (the kidneys are absent from
the 20 DICOM slices). MR label names come from the ``total_mr`` table, so ``liver`` and
``spleen`` map to the right ids in each volume.

``slabs``: the older split; each of the CT and MR volumes is cut along z into a training
slab and a test slab with a 2-slice (6 mm) gap between them:

* CT: test slices 0-11, gap 12-13, training slices 14-29;
* MR: training slices 0-8, gap 9-10, test slices 11-19.

Neighbouring slabs of the same patient are far easier than a new patient. Training uses
no validation in either split (the adapter after the last epoch is evaluated), so nothing
is selected on the test data. TotalSegmentator labels are model output, i.e. pseudo
ground truth.

Run::

    python -m benchmarks.finetune_experiment            # whole-volume split, CPU-friendly
    python -m benchmarks.finetune_experiment --split slabs
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
from adapters.train import TrainConfig, finetune
from benchmarks.machine import describe_machine
from medsam.prompt_sim import PromptSimConfig

ROOT = Path(__file__).resolve().parent.parent
TS = ROOT / "sample_data" / "totalsegmentator"

#: (image, labels, label-name map, train slab, test slab), slabs as [start, stop).
VOLUMES = {
    "ct": ("example_ct_sm.nii.gz", "example_seg.nii.gz", "total", (14, 30), (0, 12)),
    "mr": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", "total_mr", (0, 9), (11, 20)),
}
#: The held-out scan of the whole-volume split: (DICOM series folder, labels, label-name map).
HELD_OUT = ("example_ct_dicom", "example_seg_dicom.nii.gz", "total")
#: Default organ group per split.
DEFAULT_LABELS = {"volumes": "liver,spleen", "slabs": "liver,spleen,kidney_left,kidney_right"}
PROMPTS = (("box", 1), ("points", 1), ("points", 3))


def _label_names(table: str) -> dict[int, str]:
    names = json.loads((TS / "label_names_total_and_total_mr.json").read_text())
    return {int(k): v for k, v in names[table].items()}


def build_cases(out: Path) -> tuple[list[Case], list[Case]]:
    """Slab split: write the training and test slabs as NIfTI crops (real geometry)."""
    import SimpleITK as sitk

    out.mkdir(parents=True, exist_ok=True)
    train, test = [], []
    for key, (image, label, table, tr, te) in VOLUMES.items():
        img, seg = sitk.ReadImage(str(TS / image)), sitk.ReadImage(str(TS / label))
        label_names = _label_names(table)
        for split, (a, b), dest in (("train", tr, train), ("test", te, test)):
            cid = f"{key}_{split}"
            ip, lp = out / f"{cid}_image.nii.gz", out / f"{cid}_label.nii.gz"
            sitk.WriteImage(img[:, :, a:b], str(ip))
            sitk.WriteImage(seg[:, :, a:b], str(lp))
            dest.append(Case(cid, ip, lp, label_names, modality=key.upper()))
    return train, test


def build_volume_cases(out: Path) -> tuple[list[Case], list[Case]]:
    """Whole-volume split: train on all of the CT and MR volumes, test on the DICOM CT.

    The DICOM labels are stored on a flipped grid; they are resampled (nearest neighbour,
    exact for flips) onto the DICOM series and written beside it, so the test case reads
    the series itself and a label map of identical geometry.
    """
    from medsam.io import load_volume
    from medsam.io.resample import resample_labels_to
    from medsam.io.save import save_mask

    out.mkdir(parents=True, exist_ok=True)
    train = [
        Case(f"{key}_all", TS / image, TS / label, _label_names(table), modality=key.upper())
        for key, (image, label, table, _, _) in VOLUMES.items()
    ]
    series, label, table = HELD_OUT
    ct = load_volume(TS / series)
    lab = resample_labels_to(load_volume(TS / label), ct)
    lp = save_mask(lab, ct, out / "ct_dicom_label.nii.gz", overwrite=True)
    test = [Case("ct_dicom_test", TS / series, lp, _label_names(table), modality="CT")]
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
    """Markdown tables: mean Dice over structures per test case, and per structure."""
    lines = ["| test case | prompt | zero-shot Dice | fine-tuned Dice |", "|---|---|---|---|"]
    cases = list(dict.fromkeys(r["case"] for r in zero["box"] if r["case"] != "ALL"))
    if len(cases) > 1:
        cases.append("ALL")
    for case in cases:
        for key in zero:
            lines.append(f"| {case} | {key} | {_mean_dice(zero[key], case):.3f} | {_mean_dice(tuned[key], case):.3f} |")
    lines += ["", "| structure (all test slices) | slices | " + " | ".join(f"{k} zero-shot / tuned" for k in zero) + " |",
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
    p.add_argument("--split", choices=("volumes", "slabs"), default="volumes",
                   help="volumes: train on the CT and MR volumes, test on the DICOM CT (default); "
                        "slabs: train/test slabs of the CT and MR volumes")
    p.add_argument("--labels", default=None,
                   help="the organ group (default: liver,spleen for volumes; liver,spleen,kidneys for slabs)")
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
    data = args.out / "data"
    train, test = build_volume_cases(data) if args.split == "volumes" else build_cases(data)
    labels = args.labels or DEFAULT_LABELS[args.split]
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
        args.json.write_text(json.dumps({"machine": describe_machine(base.device),
                                         "command": "python -m benchmarks.finetune_experiment "
                                         + " ".join(argv if argv is not None else sys.argv[1:]),
                                         "args": {k: str(v) for k, v in vars(args).items()}, "speed": speed,
                                         "history": result.history, "zero_shot": zero, "fine_tuned": tuned}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
