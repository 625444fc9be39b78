"""Adapter methods: QkvLoRA, PEFT injection, exact identity before training, merge/unmerge.

LiteMedSAM uses its real bundled weights; the SAM ViT layout is checked on a tiny random
``segment_anything`` encoder (real SAM weights cannot exist here).
"""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
from torch import nn

from adapters.config import AdapterConfig, LoraSettings, parse_method
from adapters.methods import (
    adapter_parameter_names,
    apply_adapter,
    lora_layers,
    merge_lora,
    set_train_mode,
    unload_lora,
    unmerge_lora,
)
from adapters.qkv_lora import QkvLoRA, qkv_rows

METHODS = ["lora", "decoder", "full", "lora+decoder"]


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 70, 90, generator=g)
    box = torch.tensor([[12.0, 10.0, 60.0, 50.0]])
    points = torch.tensor([[[30.0, 30.0], [70.0, 60.0]]])
    labels = torch.tensor([[1, 0]])
    return image, box, points, labels


@pytest.fixture(scope="module")
def base_out(litemedsam, inputs):
    image, box, points, labels = inputs
    with torch.no_grad():
        return litemedsam(image, boxes=box, points=points, point_labels=labels).logits


def _randomize_lora(model: nn.Module, seed: int = 1) -> None:
    """Give every LoRA B a non-zero value (as training would)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


# --------------------------------------------------------------------------- QkvLoRA alone
def test_qkv_lora_identity_at_init_and_exact_merge_roundtrip():
    torch.manual_seed(0)
    base = nn.Linear(16, 48)
    layer = QkvLoRA(base, q_rows=range(16), v_rows=range(32, 48), r=4, alpha=8)
    x = torch.randn(5, 7, 16)
    assert torch.equal(layer(x), base(x))
    _randomize_lora(layer)
    w0 = base.weight.detach().clone()
    y = layer(x)
    assert not torch.allclose(y, base(x))
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-6)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, rtol=0, atol=1e-7)
    torch.testing.assert_close(layer(x), y, rtol=0, atol=1e-6)


def test_qkv_lora_updates_only_q_and_v_rows():
    base = nn.Linear(8, 24)
    layer = QkvLoRA(base, q_rows=range(8), v_rows=range(16, 24), r=2)
    _randomize_lora(layer)
    delta = layer.get_delta_weight()
    assert delta[8:16].abs().sum() == 0  # keys untouched
    assert delta[:8].abs().sum() > 0 and delta[16:].abs().sum() > 0
    assert torch.linalg.matrix_rank(delta[:8]) <= 2


def test_qkv_rows_tinyvit_layout(litemedsam):
    """q/v rows agree with how TinyViT's attention splits its fused output."""
    attn = litemedsam.image_encoder.layers[1].blocks[0].attn
    q_rows, v_rows = qkv_rows(attn, attn.qkv)
    out = torch.arange(attn.qkv.out_features)
    q, k, v = out.view(attn.num_heads, -1).split([attn.key_dim, attn.key_dim, attn.d], dim=1)
    assert q_rows == q.flatten().tolist()
    assert v_rows == v.flatten().tolist()


def test_qkv_rows_sam_vit_layout_and_identity():
    from segment_anything.modeling.image_encoder import ImageEncoderViT

    torch.manual_seed(0)
    enc = ImageEncoderViT(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=4, out_chans=16, global_attn_indexes=(1,))
    attn = enc.blocks[0].attn
    q_rows, v_rows = qkv_rows(attn, attn.qkv)
    assert q_rows == list(range(48)) and v_rows == list(range(96, 144))
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = enc(x)
    for blk in enc.blocks:
        blk.attn.qkv = QkvLoRA(blk.attn.qkv, *qkv_rows(blk.attn, blk.attn.qkv), r=2)
    with torch.no_grad():
        assert torch.equal(enc(x), ref)


def test_qkv_rows_unknown_layout():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(4, 10)

    odd = Odd()
    with pytest.raises(ValueError, match="qkv='qkv'"):
        qkv_rows(odd, odd.qkv)


# --------------------------------------------------------------------------- configs
def test_method_parsing():
    assert parse_method("decoder+lora") == ("lora", "decoder")
    assert AdapterConfig("LoRA + Decoder").method == "lora+decoder"
    with pytest.raises(ValueError, match="full"):
        AdapterConfig("full+lora")
    with pytest.raises(ValueError, match="unknown"):
        AdapterConfig("adapterformer")
    with pytest.raises(ValueError, match="rank"):
        LoraSettings(r=0)
    cfg = AdapterConfig("lora", LoraSettings(r=4, qkv="qkv", targets=()))
    assert AdapterConfig.from_dict(cfg.to_dict()) == cfg


# --------------------------------------------------------------------------- on LiteMedSAM
@pytest.mark.parametrize("method", METHODS)
def test_adapted_model_equals_base_exactly_before_training(litemedsam, inputs, base_out, method):
    model = copy.deepcopy(litemedsam)
    names = apply_adapter(model, AdapterConfig(method))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == set(names) and names
    if method == "decoder":
        assert all(n.startswith("mask_decoder.") for n in names)
    if method == "lora":
        assert all("lora_" in n for n in names)
        assert any(".attn.qkv.lora_A_q" in n for n in names)  # QkvLoRA
        assert any(".attn.proj.lora_A.default" in n for n in names)  # PEFT
    image, box, points, labels = inputs
    with torch.no_grad():
        out = model(image, boxes=box, points=points, point_labels=labels).logits
    assert torch.equal(out, base_out)


def test_lora_targets_whole_qkv_with_peft(litemedsam, inputs, base_out):
    model = copy.deepcopy(litemedsam)
    apply_adapter(model, AdapterConfig("lora", LoraSettings(r=2, qkv="qkv", targets=())))
    from peft.tuners.lora import Linear as PeftLinear

    assert isinstance(model.image_encoder.layers[1].blocks[0].attn.qkv, PeftLinear)
    image, box, points, labels = inputs
    with torch.no_grad():
        assert torch.equal(model(image, boxes=box, points=points, point_labels=labels).logits, base_out)


def test_merge_unmerge_roundtrip_on_litemedsam(litemedsam, inputs):
    model = copy.deepcopy(litemedsam)
    apply_adapter(model, AdapterConfig("lora"))
    _randomize_lora(model)
    model.eval()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    image, box, _, _ = inputs
    with torch.no_grad():
        adapted = model(image, boxes=box).logits
        n = merge_lora(model)
        merged = model(image, boxes=box).logits
        assert n == len(lora_layers(model)) > 0
        assert unmerge_lora(model) == n
        unmerged = model(image, boxes=box).logits
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)
    assert torch.equal(unmerged, adapted)  # base weights restored bit for bit
    for name, p in model.named_parameters():
        if name in before:
            assert torch.equal(p, before[name])


def test_unload_restores_checkpoint_keys(litemedsam):
    model = copy.deepcopy(litemedsam)
    apply_adapter(model, AdapterConfig("lora+decoder"))
    _randomize_lora(model)
    unload_lora(model)
    assert set(model.state_dict()) == set(litemedsam.state_dict())
    assert not lora_layers(model)


def test_apply_twice_and_train_mode(litemedsam):
    model = copy.deepcopy(litemedsam)
    apply_adapter(model, AdapterConfig("decoder"))
    with pytest.raises(ValueError, match="already has an adapter"):
        apply_adapter(model, AdapterConfig("lora"))
    set_train_mode(model, True)
    assert model.training and model.mask_decoder.training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and not any(m.training for m in bns)
    names = adapter_parameter_names(model, AdapterConfig("decoder", train_prompt_encoder=True))
    assert any(n.startswith("prompt_encoder.") for n in names)


def test_imports_stay_light():
    code = "import sys, medsam, adapters, medsam.cli; medsam.cli.build_parser(); print('peft' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
