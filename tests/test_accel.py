"""Fast inference backends against the reference path, with the real LiteMedSAM on real scans."""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
import torch
from conftest import crop_slices
from torch import nn

from medsam.intensity import apply_window, resolve_window
from medsam.io import load_volume
from medsam.io.resample import resample_labels_to
from medsam.metrics import dice
from medsam.models import REFERENCE, InferenceConfig
from medsam.models.accel import bf16_supported, fold_batchnorm, prepare, resolve_backend
from medsam.predictor import SlicePredictor, embed_images
from medsam.prompts import ObjectPrompts, PromptSet, SlicePrompt, box_from_mask
from medsam.volume import VolumePredictor

FP32_BACKENDS = ("torch", "onnxruntime")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.fixture(scope="module")
def slices(ct_sm):
    """Three windowed real CT slices (liver level), ``(3, 1, 101, 122)`` in [0, 1]."""
    ct, _ = ct_sm
    win = resolve_window(ct, "soft_tissue")
    return torch.from_numpy(apply_window(ct.array[22:25], win))[:, None]


@pytest.fixture(scope="module")
def dev_scans(sample_data, ct_sm):
    """Sub-volumes of the three dev scans with their reference labels and window."""
    d = sample_data / "totalsegmentator"
    ct_dcm = load_volume(d / "example_ct_dicom")
    ref_dcm = resample_labels_to(load_volume(d / "example_seg_dicom.nii.gz"), ct_dcm)
    mr = load_volume(d / "example_mr_sm.nii.gz")
    ref_mr = load_volume(d / "example_seg_mr.nii.gz").array
    ct, ref_ct = ct_sm
    return [
        (crop_slices(ct_dcm, 6, 12), ref_dcm[6:12], "soft_tissue"),
        (crop_slices(ct, 20, 26), ref_ct[20:26], "soft_tissue"),
        (crop_slices(mr, 8, 14), ref_mr[8:14], None),
    ]


def test_fold_batchnorm_is_exact_and_leaves_the_model_alone(litemedsam, slices):
    enc = litemedsam.image_encoder
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules())
    params = {id(p) for p in enc.parameters()}
    folded = fold_batchnorm(enc)
    assert n_bn == 27  # TinyViT's Conv2d_BN pairs
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules()) == n_bn  # original untouched
    assert {id(p) for p in enc.parameters()} == params
    # unfolded parts are shared, not copied (the attention layers, the neck)
    assert folded.layers[2].blocks[0].attn is enc.layers[2].blocks[0].attn and folded.neck is enc.neck
    with torch.inference_mode():
        x = litemedsam.preprocess(slices[:1])
        assert _rel(folded(x), litemedsam.encode(x)) < 1e-5


@pytest.mark.parametrize("backend", FP32_BACKENDS)
def test_fp32_backends_match_reference_embeddings_and_decoder(litemedsam, slices, backend):
    cfg = InferenceConfig(backend=backend)
    assert resolve_backend(cfg, "cpu") == backend
    ref = embed_images(litemedsam, slices, REFERENCE)
    fast = embed_images(litemedsam, slices, cfg)
    assert fast.dtype == torch.float32 and fast.shape == (3, 256, 64, 64)
    assert _rel(fast, ref) < 1e-4
    # the decoder: box, points, mask input and multimask, against the model's own decode
    engine = prepare(litemedsam, cfg)
    emb = ref[:1]
    box = torch.tensor([[30.0, 40.0, 150.0, 170.0]])
    pts, lbl = torch.tensor([[[90.0, 100.0], [60.0, 60.0]]]), torch.tensor([[1, 0]])
    mask = torch.randn(1, 1, 256, 256)
    with torch.inference_mode():
        for kwargs in (
            {"boxes": box},
            {"points": pts, "point_labels": lbl},
            {"boxes": box, "points": pts, "point_labels": lbl, "mask_input": mask},
            {"boxes": box, "multimask": True},
        ):
            low_f, iou_f = engine.decode(emb, **kwargs)
            low_r, iou_r = litemedsam.decode(emb, **kwargs)
            assert low_f.shape == low_r.shape and iou_f.shape == iou_r.shape
            assert float((low_f - low_r).abs().max()) < 1e-3
            assert float((iou_f - iou_r).abs().max()) < 1e-4


def test_fast_masks_match_reference_on_the_dev_scans(litemedsam, dev_scans):
    """Dice >= 0.995 between fast and reference 3D masks (box-propagated, 2 objects per scan)."""
    for vol, ref, window in dev_scans:
        labels, counts = np.unique(ref[ref > 0], return_counts=True)
        organs = labels[np.argsort(-counts)][:2]
        objs = []
        for i, lab in enumerate(organs, start=1):
            m = ref == lab
            k = int(m.reshape(len(m), -1).sum(1).argmax())
            objs.append(ObjectPrompts(i, str(lab), (SlicePrompt(k, box=box_from_mask(m[k])),)))
        out = {}
        for name in ("reference", *FP32_BACKENDS):
            vp = VolumePredictor(litemedsam, inference=InferenceConfig(backend=name))
            vp.init_volume(vol, window)
            vp.add_objects(PromptSet(tuple(objs)))
            vp.run()
            out[name] = vp.to_labels()
        assert (out["reference"] > 0).sum() > 1000  # the reference found the organs
        for name in FP32_BACKENDS:
            for i in range(1, len(organs) + 1):
                d = dice(out[name] == i, out["reference"] == i)
                assert d >= 0.995, f"{name}: object {i} Dice {d:.4f} on a {vol.grid_shape} scan"


def test_compile_backend_matches_reference(litemedsam, slices):
    """torch.compile (the C++ inductor backend on the CPU) gives the reference embeddings."""
    ref = embed_images(litemedsam, slices[:1], REFERENCE)
    fast = embed_images(litemedsam, slices[:1], InferenceConfig(backend="compile"))
    assert _rel(fast, ref) < 1e-4


def test_engine_follows_weight_updates(litemedsam, slices):
    """An in-place update (an optimiser step, an adapter merge) rebuilds the fast copies."""
    model = copy.deepcopy(litemedsam)
    cfg = InferenceConfig(backend="onnxruntime")
    before = embed_images(model, slices[:1], cfg)
    with torch.no_grad():
        model.image_encoder.neck[3].weight.mul_(1.5)  # the final LayerNorm2d scale
    after = embed_images(model, slices[:1], cfg)
    ref_after = embed_images(model, slices[:1], REFERENCE)
    assert _rel(after, before) > 0.05
    assert _rel(after, ref_after) < 1e-4


class _CummaxTail(nn.Module):
    """Adds zero through an op ONNX opset 17 cannot express (aten::cummax)."""

    def forward(self, x):
        return x + 0.0 * torch.cummax(x, dim=1).values


def test_unexportable_encoder_falls_back_to_torch(litemedsam, slices, caplog):
    model = copy.deepcopy(litemedsam)
    model.image_encoder.neck.append(_CummaxTail())
    with caplog.at_level(logging.WARNING, logger="medsam.models.accel"):
        engine = prepare(model, InferenceConfig(backend="onnxruntime"))
    assert engine.backend == "torch"
    assert any("ONNX export" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
    with torch.inference_mode():
        x = model.preprocess(slices[:1])
        assert _rel(engine.encode(x), model.encode(x)) < 1e-5


def test_auto_picks_onnxruntime_only_for_small_encoders(litemedsam, monkeypatch, caplog):
    """auto: ONNX Runtime for LiteMedSAM (measured faster); larger encoders stay on torch."""
    from medsam.models import accel

    auto, ort = InferenceConfig(), InferenceConfig(backend="onnxruntime")
    assert resolve_backend(auto, "cpu", litemedsam) == "onnxruntime"
    assert resolve_backend(InferenceConfig(precision="bf16"), "cpu", litemedsam) == "torch"
    size = sum(p.numel() * p.element_size() for p in litemedsam.image_encoder.parameters())
    monkeypatch.setattr(accel, "AUTO_ORT_MAX_BYTES", size - 1)  # as if it were a ViT
    assert resolve_backend(auto, "cpu", litemedsam) == "torch"
    assert resolve_backend(ort, "cpu", litemedsam) == "onnxruntime"  # asked for explicitly
    monkeypatch.setattr(accel, "ORT_MAX_BYTES", size - 1)  # as if it were past ONNX's 2 GB
    with caplog.at_level(logging.WARNING, logger="medsam.models.accel"):
        assert resolve_backend(ort, "cpu", litemedsam) == "torch"
    assert any("exceeds ONNX's 2 GB limit" in r.getMessage() for r in caplog.records)


def test_config_errors_are_one_line():
    with pytest.raises(ValueError, match="backend must be one of"):
        InferenceConfig(backend="tensorrt")
    with pytest.raises(ValueError, match="precision must be"):
        InferenceConfig(precision="fp16")
    with pytest.raises(ValueError, match="needs the 'torch' or 'compile' backend"):
        InferenceConfig(backend="onnxruntime", precision="bf16")
    # a device without native bf16 is refused, not emulated slowly
    with pytest.raises(ValueError, match="needs native bf16"):
        prepare(torch.nn.Linear(2, 2), InferenceConfig(backend="torch", precision="bf16"), device="meta")


def test_bf16_is_approximate_and_halves_embedding_memory(litemedsam, slices, ct_sm):
    """Where the CPU has native bf16 the opt-in path runs; elsewhere it is refused."""
    cfg = InferenceConfig(backend="torch", precision="bf16")
    if not bf16_supported("cpu"):
        with pytest.raises(ValueError, match="needs native bf16"):
            embed_images(litemedsam, slices[:1], cfg)
        return
    ref = embed_images(litemedsam, slices[:1], REFERENCE)
    fast = embed_images(litemedsam, slices[:1], cfg)
    assert fast.dtype == torch.bfloat16
    assert _rel(fast, ref) < 0.1  # measured 0.04: approximate, hence opt-in
    ct, seg = ct_sm
    liver = seg[22] == 5
    masks = []
    for inference in (REFERENCE, cfg):
        p = SlicePredictor(litemedsam, inference=inference)
        p.set_image(slices[0, 0].numpy())
        masks.append(p.predict(box=box_from_mask(liver)).mask)
    assert dice(masks[0], masks[1]) > 0.95
    vp = VolumePredictor(litemedsam, inference=cfg)
    vp.init_volume(crop_slices(ct, 22, 23), "soft_tissue")
    vp.session.embedder.embed()
    assert vp.session.embedder.nbytes == 256 * 64 * 64 * 2  # bf16 stored as computed, 2 bytes


def test_float16_storage_of_long_volumes_matches_float32(litemedsam, dev_scans):
    """Past the memory budget embeddings are kept as float16: half the bytes, same masks."""
    from medsam.embedding import SliceEmbedder

    vol, ref, window = dev_scans[0]  # the 512 x 512 DICOM CT
    full = SliceEmbedder(litemedsam, vol, window)
    assert full.store_dtype == torch.float32  # 6 slices are far below the 2 GB budget
    half = SliceEmbedder(litemedsam, vol, window, store_budget_mb=1.0)
    assert half.store_dtype == torch.float16
    full.embed()
    for k in range(vol.n_slices):  # the same encoder output, stored at half precision
        half._store[k] = full._store[k].to(torch.float16)
    assert half.nbytes * 2 == full.nbytes
    fp32, fp16 = [], []
    labels, counts = np.unique(ref[ref > 0], return_counts=True)
    for lab in labels[np.argsort(-counts)][:3]:
        for k in range(vol.n_slices):
            box = box_from_mask(ref[k] == lab)
            if box is None:
                continue
            for store, out in ((full, fp32), (half, fp16)):
                p = SlicePredictor(litemedsam)
                p.set_embedding(store.get(k), store.info.original_hw, store.info.input_hw)
                out.append(p.predict(box=box).mask)
    assert len(fp32) >= 12
    assert dice(np.stack(fp16), np.stack(fp32)) >= 0.995
