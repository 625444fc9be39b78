"""Real (tiny) fine-tuning on CPU: the CLI end to end, exact resume, LoRA training.

Data: two crops of the real TotalSegmentator CT and its reference labels (a 2-slice
training case, a 1-slice validation case), written as an image/label pairs dataset.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from adapters.config import AdapterConfig
from adapters.datasets import find_cases
from adapters.train import RunExistsError, TrainConfig, finetune
from medsam.cli import main
from medsam.prompt_sim import PromptSimConfig

TS = "totalsegmentator"
CROPS = {"train_ct": (14, 16), "val_ct": (24, 25)}


@pytest.fixture(scope="module")
def dataset(sample_data, tmp_path_factory) -> Path:
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("data")
    img = sitk.ReadImage(str(sample_data / TS / "example_ct_sm.nii.gz"))
    seg = sitk.ReadImage(str(sample_data / TS / "example_seg.nii.gz"))
    names = json.loads((sample_data / TS / "label_names_total_and_total_mr.json").read_text())["total"]
    for cid, (a, b) in CROPS.items():
        split = root / cid.split("_")[0]  # train/ and val/, each a pairs dataset
        for sub in ("images", "labels"):
            (split / sub).mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img[:, :, a:b], str(split / "images" / f"{cid}.nii.gz"))
        sitk.WriteImage(seg[:, :, a:b], str(split / "labels" / f"{cid}.nii.gz"))
        (split / "labels.json").write_text(json.dumps(names))
    sitk.WriteImage(img[:, :, 23:26], str(root / "ct3.nii.gz"))  # for medsam segment
    return root


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_finetune_cli_end_to_end(dataset, tmp_path, capsys, ct_sm):
    """medsam finetune -> loss falls -> adapter saved -> medsam segment/evaluate --adapter."""
    run = tmp_path / "run"
    # Points-only prompts: the pretrained LiteMedSAM (trained on boxes) is poor at them.
    argv = ["finetune", "--data", str(dataset / "train"), "--val-data", str(dataset / "val"),
            "--labels", "liver", "--method", "decoder", "--epochs", "2", "--out", str(run), "--batch-size", "3",
            "--samples-per-epoch", "6", "--lr", "3e-4", "--corrections", "0", "--empty-fraction", "0",
            "--prompt-mix", "0,1,0", "--max-points", "1", "--max-neg-points", "0", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "slices/s" in out and "peak memory" in out
    steps = _rows(run / "steps.csv")
    losses = [float(r["loss"]) for r in steps]
    assert len(losses) == 4
    assert np.mean(losses[2:]) < np.mean(losses[:2]), losses
    epochs = _rows(run / "metrics.csv")
    assert [int(r["epoch"]) for r in epochs] == [1, 2]
    assert all(0 <= float(r["val_dice"]) <= 1 and "nsd_liver" in r for r in epochs)
    assert (run / "tb").is_dir() and any((run / "tb").iterdir())
    meta = json.loads((run / "best.json").read_text())
    assert meta["labels"] == ["liver"] and meta["data"]["cases"] == ["train_ct"]
    assert meta["data"]["val_cases"] == ["val_ct"]
    assert set(load_file(str(run / "best.safetensors"))) == {
        k for k in load_file(str(run / "last.safetensors"))
    }

    # medsam segment --adapter on a slice of a held-out crop (liver box from the reference)
    seg_out = tmp_path / "seg.nii.gz"
    ys, xs = np.nonzero(ct_sm[1][24] == 5)
    box = f"1:{xs.min()},{ys.min()},{xs.max()},{ys.max()}"
    rc = main(["segment", str(dataset / "ct3.nii.gz"), "-o", str(seg_out), "--box", box,
               "--no-propagate", "--adapter", str(run / "best.safetensors"), "--device", "cpu", "--quiet"])
    assert rc == 0
    side = json.loads(seg_out.with_name(seg_out.name + ".json").read_text())
    assert "+adapter:" in side["weights"]
    from medsam.io import load_volume

    labels = load_volume(seg_out).array
    ref = ct_sm[1][24] == 5
    dice = 2 * (labels[1].astype(bool) & ref).sum() / (labels[1].astype(bool).sum() + ref.sum())
    assert dice > 0.8 and not labels[0].any() and not labels[2].any()

    # medsam evaluate --adapter
    metrics = tmp_path / "metrics.csv"
    assert main(["evaluate", "--data", str(dataset / "val"), "--labels", "liver", "--adapter", str(run / "best.safetensors"),
                 "--prompt", "points", "--points", "3", "--max-slices", "1", "--out", str(metrics),
                 "--device", "cpu", "--quiet"]) == 0
    rows = _rows(metrics)
    assert [r["case"] for r in rows] == ["val_ct", "ALL"]
    assert all(r["prompt"] == "points" and r["n_points"] == "3" for r in rows)

    # a finished run is not overwritten
    assert main(argv) == 2
    assert "--resume" in capsys.readouterr().err


def test_segment_refuses_adapter_for_other_checkpoint(dataset, tmp_path, capsys):
    from adapters.files import sidecar_of

    fake = tmp_path / "a.safetensors"
    from safetensors.torch import save_file

    save_file({"mask_decoder.iou_token.weight": torch.zeros(1, 256)}, str(fake))
    sidecar_of(fake).write_text(json.dumps({
        "format": "medsam-adapter/1", "base_model": {"name": "litemedsam", "weights_id": "litemedsam:ffffffffffffffff"},
        "config": AdapterConfig("decoder").to_dict(), "window": "auto",
    }))
    rc = main(["segment", str(dataset / "ct3.nii.gz"), "-o", str(tmp_path / "s.nii.gz"),
               "--box", "1:10,10,50,50", "--adapter", str(fake), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "trained for litemedsam (litemedsam:ffffffffffffffff)" in err[0]


def test_lora_resume_is_exact(dataset, tmp_path):
    """Two epochs in one go == one epoch, stop, --resume; LoRA trains, base weights do not."""
    train = find_cases(dataset / "train")
    cfg = TrainConfig(
        labels=("liver",), adapter=AdapterConfig("lora+decoder"), epochs=2, batch_size=1,
        samples_per_epoch=1, empty_fraction=0.0, progress=False,
        prompt=PromptSimConfig(n_corrections=1),
    )
    full = finetune(train, [], cfg, tmp_path / "full")
    half = finetune(train, [], TrainConfig(**{**cfg.__dict__, "max_steps": 1}), tmp_path / "half")
    assert len(half.history) == 1
    with pytest.raises(RunExistsError):
        finetune(train, [], cfg, tmp_path / "half")
    resumed = finetune(train, [], cfg, tmp_path / "half", resume=True)
    a, b = load_file(str(full.last_adapter)), load_file(str(resumed.last_adapter))
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in _rows(tmp_path / "full" / "steps.csv")] == [
        r["loss"] for r in _rows(tmp_path / "half" / "steps.csv")
    ]
    lora_b = [k for k in a if "lora_B" in k]
    assert lora_b and any(a[k].abs().sum() > 0 for k in lora_b)  # LoRA moved off zero
    assert not any("base_layer" in k or k.startswith("image_encoder.patch_embed") for k in a)
    with pytest.raises(ValueError, match="settings differ"):
        finetune(train, [], TrainConfig(**{**cfg.__dict__, "lr": 1.0}), tmp_path / "half", resume=True)


def test_gradient_accumulation_and_run_files(dataset, tmp_path):
    cfg = TrainConfig(
        labels=("liver",), adapter=AdapterConfig("decoder"), epochs=1, batch_size=1, grad_accum=2,
        samples_per_epoch=4, empty_fraction=0.0, progress=False, prompt=PromptSimConfig(n_corrections=0),
    )
    assert cfg.lr == 1e-4 and TrainConfig(labels=("liver",), adapter=AdapterConfig("full")).lr == 1e-5
    result = finetune(find_cases(dataset / "train"), [], cfg, tmp_path / "acc")
    assert len(_rows(tmp_path / "acc" / "steps.csv")) == 2  # 4 forward passes, 2 optimizer steps
    assert result.history[0]["slices_per_s"] > 0 and result.peak_memory_mb > 0
    config = json.loads((tmp_path / "acc" / "config.json").read_text())
    assert config["grad_accum"] == 2 and config["train_cases"] == ["train_ct"]
