"""DistributedDataParallel training: 2 CPU processes (gloo) end with identical weights."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

TS = "totalsegmentator"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    """One rank: join the gloo group through the environment, as torchrun would, and train."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    from adapters.config import AdapterConfig
    from adapters.datasets import find_cases
    from adapters.methods import adapter_parameter_names
    from adapters.train import TrainConfig, finetune
    from medsam.prompt_sim import PromptSimConfig

    cfg = TrainConfig(
        labels=("liver", "spleen"), adapter=AdapterConfig("decoder"), epochs=1, batch_size=1,
        samples_per_epoch=4, empty_fraction=0.0, progress=False, device="cpu", lr=1e-3,
        prompt=PromptSimConfig(n_corrections=0),
    )
    result = finetune(find_cases(data), [], cfg, Path(out) / "run")
    model = result.model
    names = adapter_parameter_names(model, model.adapter_config)
    params = dict(model.named_parameters())
    torch.save({n: params[n].detach().clone() for n in names}, Path(out) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def one_case(sample_data, tmp_path_factory) -> Path:
    import SimpleITK as sitk

    root = tmp_path_factory.mktemp("ddp_pairs")
    for sub in ("images", "labels"):
        (root / sub).mkdir()
    img = sitk.ReadImage(str(sample_data / TS / "example_ct_sm.nii.gz"))
    seg = sitk.ReadImage(str(sample_data / TS / "example_seg.nii.gz"))
    sitk.WriteImage(img[:, :, 14:16], str(root / "images" / "ct.nii.gz"))
    sitk.WriteImage(seg[:, :, 14:16], str(root / "labels" / "ct.nii.gz"))
    names = json.loads((sample_data / TS / "label_names_total_and_total_mr.json").read_text())["total"]
    (root / "labels.json").write_text(json.dumps(names))
    return root


def test_two_gloo_ranks_end_with_identical_weights(one_case, tmp_path, litemedsam):
    mp.spawn(_worker, args=(2, _free_port(), str(one_case), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert set(w0) == set(w1) and w0
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    base = dict(litemedsam.named_parameters())
    assert any(not torch.equal(w0[k], base[k]) for k in w0)  # it trained
    steps = (tmp_path / "run" / "steps.csv").read_text().splitlines()
    assert len(steps) == 1 + 2  # 4 samples over 2 ranks, batch 1: 2 optimizer steps
    assert (tmp_path / "run" / "best.safetensors").exists()
