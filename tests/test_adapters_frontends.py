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
    # LoRA is merged into the weights for inference: equal to float rounding (measured 3e-5)
    torch.testing.assert_close(_logits(net.model, image, box), expected, rtol=0, atol=2e-4)

    vp = _load("litemedsam", None, "cpu", None, str(path))  # the widget's model loader
    assert vp.model.weights_id == net.model.weights_id
    torch.testing.assert_close(_logits(vp.model, image, box), expected, rtol=0, atol=2e-4)


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


def test_segment_with_adapter_is_quiet_and_runs_on_the_fast_engine(adapter_file, sample_data, tmp_path):
    """`medsam segment --adapter`: no exporter graph dump, no fallback warning, ONNX Runtime in
    the sidecar, and the mask of the adapted model's reference path."""
    import subprocess
    import sys

    import SimpleITK as sitk

    from medsam.io import load_volume
    from medsam.metrics import dice
    from medsam.models import REFERENCE
    from medsam.volume import VolumePredictor

    path, adapted = adapter_file
    img = sitk.ReadImage(str(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"))
    ct = tmp_path / "ct.nii.gz"
    sitk.WriteImage(img[:, :, 23:26], str(ct))
    out = tmp_path / "liver.nii.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "medsam", "segment", str(ct), "-o", str(out), "--box", "1:44,27,104,81",
         "--adapter", str(path), "--device", "cpu", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2, proc.stdout[:2000]  # one object line, one "wrote" line
    assert proc.stderr.strip() == "", proc.stderr[:2000]
    side = json.loads((tmp_path / "liver.nii.gz.json").read_text())
    assert side["inference"]["backend"] == "onnxruntime"
    assert "+adapter:" in side["weights"]

    vp = VolumePredictor(adapted, inference=REFERENCE)  # LoRA unmerged, the model's own torch path
    vol = load_volume(ct)
    vp.init_volume(vol, window="soft_tissue")
    vp.add_prompt(1, obj_id=1, box=(44, 27, 104, 81))
    list(vp.propagate())
    assert dice(load_volume(out).array == 1, vp.to_labels() == 1) >= 0.995


def test_loaded_adapter_leaves_plain_modules(adapter_file):
    """Loading for inference merges LoRA into the weights: no LoRA wrapper is left to export."""
    from adapters.methods import lora_layers

    path, _ = adapter_file
    model = load_model("litemedsam", device="cpu", adapter=path)
    assert lora_layers(model) == [] and "+adapter:" in model.weights_id
