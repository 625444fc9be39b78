"""Adapter files: only trained tensors, sidecar contents, exact reload, refusal of other bases."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file

from adapters.config import AdapterConfig
from adapters.files import AdapterMismatchError, load_adapter, read_adapter_meta, save_adapter
from adapters.methods import apply_adapter, merge_lora
from medsam.errors import InputFileError, MissingInputError
from medsam.models import PromptableSam


def _train_like(model: torch.nn.Module, seed: int = 3) -> None:
    """Perturb every trainable tensor, as an optimizer would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.01)


@pytest.fixture(scope="module")
def image():
    return torch.rand(1, 1, 64, 80, generator=torch.Generator().manual_seed(0)), torch.tensor([[10.0, 8.0, 50.0, 40.0]])


@pytest.fixture(scope="module")
def saved(litemedsam, tmp_path_factory, image):
    """A trained-like lora+decoder adapter on disk and the adapted model's output."""
    model = copy.deepcopy(litemedsam)
    apply_adapter(model, AdapterConfig("lora+decoder"))
    _train_like(model)
    model.eval()
    path = tmp_path_factory.mktemp("adapter") / "best.safetensors"
    save_adapter(model, path, labels=["liver", "spleen"], window="soft_tissue", data={"cases": ["a", "b"]})
    with torch.no_grad():
        out = model(*image[:1], boxes=image[1]).logits
    return path, out, model


def test_file_holds_only_trained_weights_keyed_by_module_path(saved):
    path, _, model = saved
    tensors = load_file(str(path))
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(tensors) == trained
    assert "image_encoder.layers.1.blocks.0.attn.qkv.lora_B_q.weight" in tensors
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in tensors
    assert not any(k.startswith("prompt_encoder.") or "base_layer" in k for k in tensors)


def test_sidecar_records_config_base_labels_and_data(saved, litemedsam):
    path, _, _ = saved
    meta = read_adapter_meta(path)
    assert meta["base_model"] == {"name": "litemedsam", "weights_id": litemedsam.weights_id}
    assert meta["config"]["method"] == "lora+decoder"
    assert meta["labels"] == ["liver", "spleen"] and meta["window"] == "soft_tissue"
    assert meta["data"] == {"cases": ["a", "b"]}
    assert meta["n_parameters"] == sum(t.numel() for t in load_file(str(path)).values())


def test_reload_reproduces_the_adapted_model(saved, litemedsam, image):
    path, out, _ = saved
    model = load_adapter(copy.deepcopy(litemedsam), path)
    assert not any(p.requires_grad for p in model.parameters())
    assert model.weights_id.startswith(litemedsam.weights_id + "+adapter:")
    assert model.base_weights_id == litemedsam.weights_id
    with torch.no_grad():
        assert torch.equal(model(*image[:1], boxes=image[1]).logits, out)
        merge_lora(model)
        torch.testing.assert_close(model(*image[:1], boxes=image[1]).logits, out, rtol=1e-4, atol=1e-4)


def test_full_adapter_uses_checkpoint_keys(litemedsam, tmp_path, image):
    model = copy.deepcopy(litemedsam)
    apply_adapter(model, AdapterConfig("full"))
    _train_like(model)
    model.eval()  # TinyViT caches its attention biases in eval mode
    path = save_adapter(model, tmp_path / "full.safetensors")
    assert set(load_file(str(path))) == {n for n, _ in litemedsam.named_parameters()}
    with torch.no_grad():
        out = model(*image[:1], boxes=image[1]).logits
        reloaded = load_adapter(copy.deepcopy(litemedsam), path)
        assert torch.equal(reloaded(*image[:1], boxes=image[1]).logits, out)


def test_refuses_adapter_for_another_base_model(saved, litemedsam):
    path, _, _ = saved
    other = copy.deepcopy(litemedsam)
    other.weights_id = "litemedsam:0000000000000000"
    with pytest.raises(AdapterMismatchError) as err:
        load_adapter(other, path)
    msg = str(err.value)
    assert "\n" not in msg and "trained for litemedsam" in msg and "0000000000000000" in msg
    renamed = copy.deepcopy(litemedsam)
    renamed.name = "sam_vit_b"
    with pytest.raises(AdapterMismatchError, match="sam_vit_b"):
        load_adapter(renamed, path)


def test_refuses_twice_missing_sidecar_and_tampering(saved, litemedsam, tmp_path):
    path, _, _ = saved
    model = load_adapter(copy.deepcopy(litemedsam), path)
    with pytest.raises(AdapterMismatchError):  # weights_id now names the adapter
        load_adapter(model, path)
    with pytest.raises(MissingInputError):
        load_adapter(copy.deepcopy(litemedsam), tmp_path / "nope.safetensors")
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes(path.read_bytes())
    with pytest.raises(InputFileError, match="sidecar"):
        load_adapter(copy.deepcopy(litemedsam), lone)
    side = json.loads(path.with_suffix(".json").read_text())
    (tmp_path / "lone.json").write_text(json.dumps({**side, "sha256": "0" * 64}))
    with pytest.raises(InputFileError, match="SHA-256"):
        load_adapter(copy.deepcopy(litemedsam), lone)


def test_load_model_with_adapter(saved, litemedsam):
    from medsam.models import load_model

    path, _, _ = saved
    model = load_model("litemedsam", device="cpu", adapter=path)
    assert isinstance(model, PromptableSam) and not model.training
    assert model.adapter_meta["labels"] == ["liver", "spleen"]
    from adapters import load_adapted_model

    again = load_adapted_model(path, device="cpu")  # base model read from the sidecar
    assert again.weights_id == model.weights_id


def test_save_requires_an_adapter(litemedsam, tmp_path):
    with pytest.raises(ValueError, match="no adapter"):
        save_adapter(copy.deepcopy(litemedsam), tmp_path / "x.safetensors")
