"""One adapter file, loaded the same way by the MONAI network, the napari widget's loader and the engine."""

from __future__ import annotations

import json

import pytest
import torch

from adapters import AdapterConfig, apply_adapter, save_adapter
from adapters.files import AdapterMismatchError
from medsam.models import load_model


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    """A LoRA+decoder adapter whose weights differ from the base (as after training)."""
    model = load_model("litemedsam", device="cpu")
    names = apply_adapter(model, AdapterConfig(method="lora+decoder"))
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in names and ("lora_B" in name or "mask_decoder.output_upscaling.0" in name):
                p.add_(0.02 * torch.randn(p.shape, generator=gen))
    path = save_adapter(model, tmp_path_factory.mktemp("adapter") / "liver.safetensors",
                        labels=["liver"], window="soft_tissue")
    return path, model.eval()


def _logits(model, image, box):
    with torch.inference_mode():
        return model(image, boxes=box).logits


def test_monai_network_and_napari_loader_load_the_same_adapter(adapter_file):
    from medsam.monai import SamNetwork
    from napari_plugin._widget_layers import _load

    path, adapted = adapter_file
    image = torch.rand(1, 1, 96, 80, generator=torch.Generator().manual_seed(1))
    box = torch.tensor([[10.0, 12.0, 60.0, 70.0]])
    expected = _logits(adapted, image, box)
    base = _logits(load_model("litemedsam", device="cpu"), image, box)
    assert not torch.equal(expected, base)  # the adapter changes the output

    net = SamNetwork("litemedsam", device="cpu", adapter=path).eval()
    assert "+adapter:" in net.model.weights_id
    torch.testing.assert_close(_logits(net.model, image, box), expected, rtol=0, atol=1e-5)

    vp = _load("litemedsam", None, "cpu", None, str(path))  # the widget's model loader
    assert vp.model.weights_id == net.model.weights_id
    torch.testing.assert_close(_logits(vp.model, image, box), expected, rtol=0, atol=1e-5)


def test_adapter_for_another_base_is_refused_by_every_front_end(adapter_file, tmp_path):
    from medsam.monai import SamNetwork

    path, _ = adapter_file
    other = tmp_path / "other.safetensors"
    other.write_bytes(path.read_bytes())
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["base_model"]["weights_id"] = "litemedsam:0000000000000000"
    other.with_suffix(".json").write_text(json.dumps(meta))
    for build in (lambda: SamNetwork("litemedsam", device="cpu", adapter=other),
                  lambda: load_model("litemedsam", device="cpu", adapter=other)):
        with pytest.raises(AdapterMismatchError) as err:
            build()
        assert "other.safetensors" in str(err.value) and len(str(err.value).splitlines()) == 1
