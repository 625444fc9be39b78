"""Interactive 3D segmentation, the CVPR 2025 challenge protocol, on the dev scans.

"Foundation Models for Interactive 3D Biomedical Image Segmentation": an initial prompt,
then 5 corrective clicks, each answered by the model and re-propagated from its slice.

* **Initial prompt.** ``box``: the reference's box on its largest slice plus its z-extent
  (:meth:`~medsam.volume.VolumePredictor.set_box_3d`), propagated inside it; ``click``: one
  click at the most interior voxel of the structure (the maximum of its 3D distance
  transform in mm), propagated both ways.
* **Clicks.** Each goes to the most interior voxel of the largest 3D connected error
  component: positive in missed foreground, negative in false foreground. It is added on
  its slice (:meth:`~medsam.volume.VolumePredictor.add_prompt`, correcting that slice's
  mask) and the stretch of slices it owns is re-propagated.
* **Reported** per scan and structure: the slices the reference and the initial
  prediction span; 3D Dice and NSD (2 mm, MONAI's
  ``SurfaceDiceMetric`` with the voxel spacing) after the initial prompt and after every
  click; DSC-AUC and NSD-AUC, the trapezoid area under the curve over clicks 1 to 5
  (at most 4.0); the final Dice; seconds per click (the click's decode and its
  re-propagation) on this machine.

Run: ``python -m benchmarks.interactive [--start box|click] [--json out.json]``. Slices are
embedded once per scan.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from benchmarks.clicks import DATA, SCANS
from benchmarks.machine import describe_machine

N_CLICKS = 5
NSD_MM = 2.0


def _metrics(pred: np.ndarray, ref: np.ndarray, spacing_zyx: tuple[float, float, float]) -> tuple[float, float]:
    import torch
    from monai.metrics import SurfaceDiceMetric

    from medsam.metrics import dice

    if not pred.any():
        return 0.0, 0.0
    p = torch.from_numpy(pred.astype(np.float32))[None]
    r = torch.from_numpy(ref.astype(np.float32))[None]
    nsd = SurfaceDiceMetric([NSD_MM], include_background=False)(
        torch.cat([1 - p, p])[None], torch.cat([1 - r, r])[None], spacing=list(spacing_zyx)
    )
    return dice(pred, ref), float(nsd[0, 0])


def _interior_voxel(mask: np.ndarray, spacing_zyx) -> tuple[int, int, int]:
    """``(k, y, x)`` of the voxel farthest (in mm) from the mask's border."""
    dist = ndi.distance_transform_edt(np.pad(mask, 1), sampling=spacing_zyx)[1:-1, 1:-1, 1:-1]
    k, y, x = np.unravel_index(int(np.argmax(dist)), mask.shape)
    return int(k), int(y), int(x)


def next_click(pred: np.ndarray, ref: np.ndarray, spacing_zyx) -> tuple[tuple[int, int, int], int] | None:
    """The challenge's click: the most interior voxel of the largest 3D error component."""
    best = None
    for label, error in ((1, ref & ~pred), (0, pred & ~ref)):
        lab, n = ndi.label(error)
        if n == 0:
            continue
        sizes = ndi.sum(error, lab, range(1, n + 1))
        i = int(np.argmax(sizes))
        if best is None or sizes[i] > best[0]:
            best = (sizes[i], lab == i + 1, label)
    if best is None:
        return None
    return _interior_voxel(best[1], spacing_zyx), best[2]


def _object_mask(vp, obj: int) -> np.ndarray:
    out = np.zeros(vp.session.grid_shape, bool)
    for k, r in vp.session.objects[obj].results.items():
        out[k] = r.mask
    return out


def run_structure(vp, ref: np.ndarray, spacing_zyx, start: str) -> dict:
    from medsam.prompts import box_from_mask

    obj = 1
    vp.reset()
    areas = ref.reshape(ref.shape[0], -1).sum(1)
    ks = np.nonzero(areas)[0]
    if start == "box":
        k = int(areas.argmax())
        vp.set_box_3d(obj, box_from_mask(ref[k]), (int(ks[0]), int(ks[-1])), key_slice=k)
    else:
        k, y, x = _interior_voxel(ref, spacing_zyx)
        vp.add_prompt(k, obj, points=[(x, y)], point_labels=[1])
    list(vp.propagate(obj_ids=[obj]))
    pred = _object_mask(vp, obj)
    curve = [_metrics(pred, ref, spacing_zyx)]
    pk = np.nonzero(pred.reshape(pred.shape[0], -1).any(1))[0]
    extent = {"ref_slices": [int(ks[0]), int(ks[-1])], "start_slices": [int(pk[0]), int(pk[-1])] if pk.size else []}
    seconds = []
    for _ in range(N_CLICKS):
        click = next_click(pred, ref, spacing_zyx)
        if click is None:
            curve.append(curve[-1])
            continue
        (k, y, x), label = click
        t = time.perf_counter()
        try:
            vp.add_prompt(k, obj, points=[(x, y)], point_labels=[label])
            list(vp.propagate(obj_ids=[obj], start_slice=k))
        except Exception as exc:  # noqa: BLE001 - a refused click counts as a click that changed nothing
            print(f"  click on slice {k} refused: {exc}", file=sys.stderr)
        seconds.append(time.perf_counter() - t)
        pred = _object_mask(vp, obj)
        curve.append(_metrics(pred, ref, spacing_zyx))
    dsc = [c[0] for c in curve]
    nsd = [c[1] for c in curve]
    return {
        **extent,
        "dice": [round(v, 4) for v in dsc],
        "nsd": [round(v, 4) for v in nsd],
        "dsc_auc": round(float(np.trapezoid(dsc[1:])), 4),
        "nsd_auc": round(float(np.trapezoid(nsd[1:])), 4),
        "final_dice": round(dsc[-1], 4),
        "s_per_click": round(float(np.mean(seconds)), 3) if seconds else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--device", default=None)
    parser.add_argument("--start", choices=("box", "click"), default="box")
    parser.add_argument("--scans", nargs="*", default=list(SCANS), choices=list(SCANS))
    args = parser.parse_args(argv)

    from medsam.io import load_volume
    from medsam.io.resample import resample_labels_to
    from medsam.volume import VolumePredictor

    vp = VolumePredictor("litemedsam", device=args.device, batch_size=8)
    results = []
    for scan in args.scans:
        image_name, seg_name, window, structures = SCANS[scan]
        vol = load_volume(DATA / image_name)
        ref_all = np.asarray(resample_labels_to(load_volume(DATA / seg_name), vol))
        vp.init_volume(vol, window).embedder.embed()
        sx, sy, sz = vol.spacing
        for organ, lab in structures.items():
            ref = ref_all == lab
            if not ref.any():
                continue
            row = {"scan": scan, "structure": organ, **run_structure(vp, ref, (sz, sy, sx), args.start)}
            results.append(row)
            print(f"{scan} {organ}: dice {row['dice']} auc {row['dsc_auc']}", file=sys.stderr)
    summary = {key: round(float(np.mean([r[key] for r in results])), 4)
               for key in ("final_dice", "dsc_auc", "nsd_auc")}
    summary["initial_dice"] = round(float(np.mean([r["dice"][0] for r in results])), 4)
    summary["s_per_click"] = round(float(np.mean([r["s_per_click"] for r in results if r["s_per_click"]])), 3)
    report = {
        "benchmark": "interactive",
        "protocol": f"CVPR 2025 interactive 3D: {args.start} start, {N_CLICKS} clicks, NSD {NSD_MM} mm",
        "model": vp.model.name,
        "machine": describe_machine(vp.model.device),
        "command": "python -m benchmarks.interactive " + " ".join(argv if argv is not None else sys.argv[1:]),
        "summary": summary,
        "results": results,
    }
    print("| scan | structure | Dice: start | after 1 | 3 | 5 clicks | DSC-AUC | NSD-AUC | s/click |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        d = r["dice"]
        print(f"| {r['scan']} | {r['structure']} | {d[0]:.3f} | {d[1]:.3f} | {d[3]:.3f} | {d[5]:.3f} "
              f"| {r['dsc_auc']:.2f} | {r['nsd_auc']:.2f} | {r['s_per_click']} |")
    print(f"| **mean** | | {summary['initial_dice']:.3f} | | | {summary['final_dice']:.3f} "
          f"| {summary['dsc_auc']:.2f} | {summary['nsd_auc']:.2f} | {summary['s_per_click']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
