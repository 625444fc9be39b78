"""Segmentation quality on the dev scans: Dice against the TotalSegmentator reference.

Two protocols per organ (liver, spleen, kidneys, aorta):

* ``box_every_slice``: a tight box from the reference on every slice containing the organ,
  no propagation (the model's per-slice ceiling with perfect boxes);
* ``one_box_propagate``: one tight box on the slice where the organ is largest, then
  propagation in both directions with no z-range (what a user does with one click-drag).

Run: ``python -m benchmarks.quality [--json out.json] [--device cpu]``. Prints a Markdown
table and JSON. Slices are embedded once per scan and shared by all organs and protocols.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from benchmarks.machine import describe_machine

DATA = Path(__file__).resolve().parents[1] / "sample_data" / "totalsegmentator"
ORGANS = {"liver": 5, "spleen": 1, "kidney_right": 2, "kidney_left": 3, "aorta": 52}
SCANS = {
    "ct_nifti_3mm": ("example_ct_sm.nii.gz", "example_seg.nii.gz"),
    "ct_dicom_20sl": ("example_ct_dicom", "example_seg_dicom.nii.gz"),
}


def evaluate_scan(vp, ct, ref_labels: np.ndarray, window: str) -> list[dict]:
    from medsam.metrics import dice
    from medsam.prompts import box_from_mask

    vp.init_volume(ct, window)
    t = time.perf_counter()
    vp.session.embedder.embed()
    embed_s = time.perf_counter() - t
    rows = []
    for organ, lab in ORGANS.items():
        ref = ref_labels == lab
        areas = ref.reshape(ref.shape[0], -1).sum(1)
        if areas.max() == 0:
            continue
        # protocol 1: a tight box on every slice
        vp.reset()
        for k in np.nonzero(areas)[0]:
            vp.add_prompt(int(k), 1, box=box_from_mask(ref[k]))
        d_every = dice(vp.to_labels() == 1, ref)
        # protocol 2: one box on the largest slice, then propagate
        vp.reset()
        k = int(areas.argmax())
        vp.add_prompt(k, 1, box=box_from_mask(ref[k]))
        t = time.perf_counter()
        vp.run()
        prop_s = time.perf_counter() - t
        pred = vp.to_labels() == 1
        ks = np.nonzero(pred.reshape(pred.shape[0], -1).any(1))[0]
        rk = np.nonzero(areas)[0]
        rows.append(
            {
                "organ": organ,
                "dice_box_every_slice": round(d_every, 4),
                "dice_one_box_propagate": round(dice(pred, ref), 4),
                "ref_slices": [int(rk[0]), int(rk[-1])],
                "pred_slices": [int(ks[0]), int(ks[-1])] if ks.size else [],
                "seed_slice": k,
                "propagate_s": round(prop_s, 3),
            }
        )
    for r in rows:
        r["embed_s_per_slice"] = round(embed_s / ct.n_slices, 3)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--device", default=None)
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--window", default="soft_tissue")
    parser.add_argument("--scans", nargs="*", default=list(SCANS), choices=list(SCANS))
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="PropagationConfig overrides")
    args = parser.parse_args(argv)

    from medsam.io import load_volume
    from medsam.io.resample import resample_labels_to
    from medsam.volume import PropagationConfig, VolumePredictor

    cfg = PropagationConfig()
    for kv in args.set:
        key, _, value = kv.partition("=")
        cfg = replace(cfg, **{key: type(getattr(cfg, key))(value if value not in ("False", "false") else "")})
    vp = VolumePredictor(args.model, checkpoint=args.checkpoint, device=args.device, batch_size=8, config=cfg)
    results = []
    for scan in args.scans:
        image_name, seg_name = SCANS[scan]
        ct = load_volume(DATA / image_name)
        ref = resample_labels_to(load_volume(DATA / seg_name), ct)
        for row in evaluate_scan(vp, ct, ref, args.window):
            results.append({"scan": scan, **row})
    report = {
        "benchmark": "quality",
        "model": vp.model.name,
        "window": args.window,
        "config": asdict(cfg),
        "machine": describe_machine(vp.model.device),
        "command": "python -m benchmarks.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "results": results,
    }
    print("| scan | organ | Dice, tight box every slice | Dice, one box + propagation | slices ref / pred |")
    print("|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['scan']} | {r['organ']} | {r['dice_box_every_slice']:.3f} | {r['dice_one_box_propagate']:.3f} "
            f"| {r['ref_slices']} / {r['pred_slices']} |"
        )
    for scan in args.scans:
        rows = [r for r in results if r["scan"] == scan]
        print(
            f"| {scan} | **mean** | {np.mean([r['dice_box_every_slice'] for r in rows]):.3f} "
            f"| {np.mean([r['dice_one_box_propagate'] for r in rows]):.3f} | |"
        )
    text = json.dumps(report, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
