"""Clicks on the dev scans: 2D Dice from 1 and 3 clicks per slice, against a tight box.

Protocol (issue #12): on every slice that holds a structure (or ``--max-slices`` of them,
evenly spaced), one positive click at the most interior pixel of the reference (the
maximum of its distance transform). Three clicks: that one, then twice the most
interior pixel of the larger error region (positive in missed foreground, negative in
false foreground; :func:`medsam.prompt_sim.correction_click`), each refining the current
mask (given as ``mask_input``). Reported per structure:
mean 2D Dice of the default path (clicks answered as boxes for LiteMedSAM,
:mod:`medsam.click_prompts`), of the model's own point path (``clicks="model"``) and of a
tight box; and the time from a click to its mask against a box's, in the same run.

Run: ``python -m benchmarks.clicks [--json out.json] [--max-slices N]``. Slices are
embedded once per scan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.machine import describe_machine

DATA = Path(__file__).resolve().parents[1] / "sample_data" / "totalsegmentator"
CT = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "aorta": 52, "pancreas": 7,
      "gallbladder": 4, "adrenal_gland_right": 8, "adrenal_gland_left": 9}
MR = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3}
SCANS = {
    "ct_nifti_3mm": ("example_ct_sm.nii.gz", "example_seg.nii.gz", "soft_tissue", CT),
    "ct_dicom_20sl": ("example_ct_dicom", "example_seg_dicom.nii.gz", "soft_tissue", CT),
    "mr_3mm": ("example_mr_sm.nii.gz", "example_seg_mr.nii.gz", None, MR),
}


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def evaluate_slice(clicks, native, ref: np.ndarray) -> dict:
    """Dice and seconds of each path on one slice whose embedding is set on both predictors."""
    from medsam.metrics import dice
    from medsam.prompt_sim import correction_click, interior_point
    from medsam.prompts import box_from_mask

    box, t_box = _timed(lambda: clicks.predict(box=box_from_mask(ref)))
    pts, labels = [interior_point(ref)], [1]
    one, t_click = _timed(lambda: clicks.predict(points=pts, point_labels=labels))
    base = native.predict(points=pts, point_labels=labels)
    row = {"box": dice(box.mask, ref), "click1": dice(one.mask, ref), "model_click1": dice(base.mask, ref),
           "s_box": t_box, "s_click": t_click}
    pred = one
    for _ in range(2):
        nxt = correction_click(pred.mask, ref)
        if nxt is None:
            break
        pts.append(nxt[0])
        labels.append(nxt[1])
        # a correction refines the slice's current mask (its logits as mask input)
        pred = clicks.predict(points=pts, point_labels=labels, mask_input=pred.low_res_logits)
    row["click3"] = dice(pred.mask, ref)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-slices", type=int, default=0, help="slices per structure (0: all)")
    parser.add_argument("--scans", nargs="*", default=list(SCANS), choices=list(SCANS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ClickConfig overrides")
    args = parser.parse_args(argv)
    from dataclasses import asdict, replace

    from medsam.click_prompts import ClickConfig

    cfg = ClickConfig()
    for kv in args.set:
        key, _, value = kv.partition("=")
        v = json.loads(value)  # numbers, or [a, b] for tuples
        cfg = replace(cfg, **{key: tuple(v) if isinstance(v, list) else v})

    from medsam.io import load_volume
    from medsam.io.resample import resample_labels_to
    from medsam.predictor import SlicePredictor
    from medsam.volume import VolumePredictor

    vp = VolumePredictor("litemedsam", device=args.device, batch_size=8)
    clicks = SlicePredictor(vp.model, click_config=cfg)
    native = SlicePredictor(vp.model, clicks="model")
    results = []
    for scan in args.scans:
        image_name, seg_name, window, structures = SCANS[scan]
        vol = load_volume(DATA / image_name)
        ref_all = np.asarray(resample_labels_to(load_volume(DATA / seg_name), vol))
        session = vp.init_volume(vol, window)
        session.embedder.embed()
        info = session.embedder.info
        for organ, lab in structures.items():
            ref = ref_all == lab
            ks = np.nonzero(ref.reshape(ref.shape[0], -1).any(1))[0]
            if ks.size == 0:
                continue
            if args.max_slices and ks.size > args.max_slices:
                ks = ks[np.linspace(0, ks.size - 1, args.max_slices).round().astype(int)]
            rows = []
            for k in ks.tolist():
                emb = session.embedder.get(k, 1)
                for p in (clicks, native):
                    p.set_embedding(emb, info.original_hw, info.input_hw)
                rows.append(evaluate_slice(clicks, native, ref[k]))
            mean = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
            results.append({"scan": scan, "structure": organ, "n_slices": len(rows),
                            **{k: round(v, 4) for k, v in mean.items()}})
            print(f"{scan} {organ}: " + " ".join(f"{k} {v:.3f}" for k, v in mean.items()), file=sys.stderr)
    summary = {
        key: round(float(np.mean([r[key] for r in results])), 4)
        for key in ("box", "click1", "click3", "model_click1")
    }
    summary["min_click1"] = round(float(min(r["click1"] for r in results)), 4)
    summary["latency_ratio_click_vs_box"] = round(
        float(np.mean([r["s_click"] for r in results]) / np.mean([r["s_box"] for r in results])), 2
    )
    report = {
        "benchmark": "clicks",
        "model": vp.model.name,
        "click_config": asdict(cfg),
        "machine": describe_machine(vp.model.device),
        "command": "python -m benchmarks.clicks " + " ".join(argv if argv is not None else sys.argv[1:]),
        "summary": summary,
        "results": results,
    }
    print("| scan | structure | slices | 1 click | 3 clicks | box | model's own point path |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['scan']} | {r['structure']} | {r['n_slices']} | {r['click1']:.3f} | {r['click3']:.3f} "
              f"| {r['box']:.3f} | {r['model_click1']:.3f} |")
    print(f"| **mean** | | | {summary['click1']:.3f} | {summary['click3']:.3f} | {summary['box']:.3f} "
          f"| {summary['model_click1']:.3f} |")
    print(f"click/box latency ratio: {summary['latency_ratio_click_vs_box']}")
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
