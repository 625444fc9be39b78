"""Fine-tune a registry model on 2D slices of labelled volumes; single process or DDP.

:func:`finetune` adapts the model (:func:`~adapters.methods.apply_adapter`), samples
slices (:class:`~adapters.slices.SliceIndex`), simulates prompts
(:mod:`medsam.prompt_sim`), minimises MONAI's ``DiceCELoss`` (+ IoU-head MSE) with AdamW
and a warmup + cosine schedule, accumulates gradients, validates each epoch (MONAI Dice
and NSD per structure), keeps ``best`` and ``last`` adapters, and resumes exactly from
``state/`` (weights, optimizer, scheduler, RNG, epoch). Launched by ``torchrun`` it trains
with ``DistributedDataParallel``, each rank on its shard of every epoch.

Examples
--------
>>> from adapters.datasets import find_cases, split_cases                # doctest: +SKIP
>>> train, val = split_cases(find_cases("Task09_Spleen"), 0.2)            # doctest: +SKIP
>>> result = finetune(train, val, TrainConfig(labels=("spleen",)), "runs/spleen")  # doctest: +SKIP
>>> result.best_adapter                                                   # doctest: +SKIP
PosixPath('runs/spleen/best.safetensors')
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import resource
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from adapters.config import AdapterConfig
from adapters.datasets import Case, check_label_spec
from adapters.distributed import all_reduce_mean, barrier, cleanup_distributed, init_distributed
from adapters.evaluate import EvalConfig, evaluate, summarize_rows
from adapters.files import save_adapter
from adapters.methods import apply_adapter, set_train_mode
from adapters.run_io import RunLogger, load_rng, load_state, save_rng, save_state
from adapters.slices import CaseStore, SliceIndex
from adapters.step import PromptedSegLoss, TrainSample
from medsam.errors import MedsamError
from medsam.progress import progress_bar
from medsam.prompt_sim import PromptSimConfig, simulate_prompt

__all__ = ["FinetuneResult", "RunExistsError", "TrainConfig", "finetune"]

logger = logging.getLogger(__name__)


class RunExistsError(MedsamError, FileExistsError):
    """The run folder already holds a run and resuming was not asked for."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(f"{run_dir}: already holds a training run; pass --resume to continue it or choose another --out")


@dataclass(frozen=True)
class TrainConfig:
    """A fine-tuning run's settings (plain values, so configs and CLIs can build it).

    Parameters
    ----------
    labels
        Structures to train (names or ids), e.g. ``("liver", "spleen")``.
    adapter
        Method and LoRA settings.
    model, checkpoint
        Base model registry name and weights file (None: bundled LiteMedSAM weights).
    window
        Intensity window spec, as ``medsam segment --window`` (None: automatic).
    epochs, batch_size, grad_accum
        Epochs; slices per forward pass per process; forward passes per optimizer step.
    lr, lora_lr, weight_decay, warmup_frac, min_lr_ratio
        AdamW learning rates (``lr``: decoder/full weights, default 1e-4, or 1e-5 for
        ``"full"``; ``lora_lr``: LoRA tensors), decay, linear warmup share of all steps,
        and the cosine floor as a fraction of the peak.
    samples_per_epoch
        Slices per epoch over all processes (None: every foreground slice once).
    group_slices
        Put the structures of one slice in the same batch (one encoder pass for all of
        them: much faster for LoRA/full with several structures).
    empty_fraction, min_area
        Share of empty-slice samples; minimum structure area (pixels) of a sample.
    prompt, iou_weight
        Prompt simulation; weight of the IoU-head loss.
    val_prompt, val_max_slices, nsd_tolerance_mm
        Validation prompt, slice cap per case and structure, NSD tolerance.
    seed, device, bf16, cache_embeddings, progress, max_steps
        Seed; device (None: best); bf16 autocast on CUDA; cache frozen-encoder
        embeddings; tqdm bar; stop after this many optimizer steps (smoke tests).
    """

    labels: tuple = ()
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    model: str = "litemedsam"
    checkpoint: str | None = None
    window: str | None = None
    epochs: int = 10
    batch_size: int = 4
    grad_accum: int = 1
    lr: float | None = None
    lora_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.01
    samples_per_epoch: int | None = None
    group_slices: bool = False
    empty_fraction: float = 0.1
    min_area: int = 10
    prompt: PromptSimConfig = field(default_factory=PromptSimConfig)
    iou_weight: float = 1.0
    val_prompt: str = "box"
    val_max_slices: int | None = None
    nsd_tolerance_mm: float = 2.0
    seed: int = 0
    device: str | None = None
    bf16: bool = True
    cache_embeddings: bool = True
    progress: bool = True
    max_steps: int | None = None

    def __post_init__(self) -> None:
        labels = (self.labels,) if isinstance(self.labels, (str, int)) else tuple(self.labels)
        object.__setattr__(self, "labels", labels)
        if not labels:
            raise ValueError("labels must name at least one structure, e.g. labels=('liver',)")
        if self.epochs < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("epochs, batch_size and grad_accum must be >= 1")
        if self.lr is None:  # every weight moves by ~lr on AdamW's first steps
            object.__setattr__(self, "lr", 1e-5 if "full" in self.adapter.parts else 1e-4)
        if self.lr <= 0 or self.lora_lr <= 0 or not 0 <= self.warmup_frac < 1:
            raise ValueError("learning rates must be positive and warmup_frac in [0, 1)")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError("samples_per_epoch must be >= 1")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["adapter"] = self.adapter.to_dict()
        d["labels"] = list(self.labels)
        d["prompt"]["kinds"] = list(self.prompt.kinds)
        return d


@dataclass(frozen=True)
class FinetuneResult:
    """What a run produced: adapter paths, per-epoch history, speed and memory.

    ``model`` is the trained model as it is after the last step (eval mode), with the
    adapter still attached (save it with :func:`~adapters.files.save_adapter`).
    """

    run_dir: Path
    best_adapter: Path
    last_adapter: Path
    history: list[dict]
    slices_per_s: float
    peak_memory_mb: float
    model: torch.nn.Module = field(repr=False, compare=False, default=None)


def _lr_lambda(total: int, warmup: int, floor: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))

    return f


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


def _epoch(index: SliceIndex, cfg: TrainConfig, epoch: int):
    return index.epoch_items(epoch, cfg.seed, empty_fraction=cfg.empty_fraction,
                             samples=cfg.samples_per_epoch, group_slices=cfg.group_slices)


def _my_batches(items: list, cfg: TrainConfig, info) -> list[list]:
    """This rank's batches of ``(position, item)``; every rank gets the same number."""
    items = list(enumerate(items))
    bs = cfg.batch_size
    units = [items[i : i + bs] for i in range(0, len(items), bs)] if cfg.group_slices else items
    n = len(units) // info.world
    if n == 0:
        raise ValueError(f"{len(items)} samples per epoch are too few for {info.world} processes")
    if cfg.group_slices:  # whole batches per rank keep a slice's structures together
        return units[info.rank :: info.world][:n]
    mine = units[info.rank :: info.world][:n]
    return [mine[i : i + bs] for i in range(0, len(mine), bs)]


def _samples(items, store: CaseStore, cfg: TrainConfig, epoch: int) -> list[TrainSample]:
    """``items`` are ``(position in the epoch, SliceItem)``; the position seeds the prompt."""
    out = []
    for pos, it in items:
        seed = int(np.random.SeedSequence([cfg.seed, epoch, pos]).generate_state(1)[0])
        rng = np.random.default_rng(seed)
        target = store.mask(it.case, it.k, it.label_id)
        ref = store.mask(it.case, it.ref_k, it.label_id) if it.empty else None
        prompt = simulate_prompt(target, rng, cfg.prompt, ref_mask=ref)
        out.append(TrainSample(store.image(it.case, it.k), target, prompt, (it.case, it.k), seed + 1))
    return out


def finetune(
    train_cases: Sequence[Case],
    val_cases: Sequence[Case],
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
) -> FinetuneResult:
    """Train an adapter; see the module docstring. Returns the run's :class:`FinetuneResult`.

    Raises
    ------
    ValueError
        Unknown labels, no foreground slices, or ``resume`` with a different config.
    RunExistsError
        ``run_dir`` holds a run and ``resume`` is False.
    """
    from medsam.models import load_model

    run_dir = Path(run_dir)
    state_path = run_dir / "state" / "last.pt"
    if state_path.exists() and not resume:
        raise RunExistsError(run_dir)
    structures = check_label_spec(list(train_cases), config.labels)
    info = init_distributed(config.device)
    try:
        return _run(train_cases, val_cases, config, run_dir, resume, structures, info, load_model)
    finally:
        cleanup_distributed(info)


def _run(train_cases, val_cases, cfg: TrainConfig, run_dir: Path, resume: bool, structures, info, load_model):
    random.seed(cfg.seed + info.rank)
    np.random.seed(cfg.seed + info.rank)
    torch.manual_seed(cfg.seed + info.rank)
    model = load_model(cfg.model, checkpoint=cfg.checkpoint, device=info.device)
    trainable = apply_adapter(model, cfg.adapter)
    set_train_mode(model, True)
    store = CaseStore(train_cases, cfg.window)
    index = SliceIndex(store, cfg.labels, min_area=cfg.min_area)
    if len(index) == 0:
        raise ValueError(f"no slices with at least {cfg.min_area} pixels of {', '.join(structures)}")
    step_module = PromptedSegLoss(
        model, cfg.prompt, iou_weight=cfg.iou_weight, cache_embeddings=cfg.cache_embeddings, bf16=cfg.bf16
    )
    net = step_module
    if info.enabled:
        import inspect

        from torch.nn.parallel import DistributedDataParallel

        # BatchNorm statistics are frozen: no buffers to synchronise at each forward.
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
            DistributedDataParallel.__init__).parameters else "broadcast_buffers"
        # Only prompt-encoder embeddings go unused in some steps (e.g. no box in a points prompt).
        unused = "full" in cfg.adapter.parts or cfg.adapter.train_prompt_encoder
        net = DistributedDataParallel(step_module, find_unused_parameters=unused, **{no_sync: False})
    params = dict(model.named_parameters())
    groups = [
        {"params": [params[n] for n in trainable if "lora_" in n], "lr": cfg.lora_lr},
        {"params": [params[n] for n in trainable if "lora_" not in n], "lr": cfg.lr},
    ]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], weight_decay=cfg.weight_decay)
    micro = len(_my_batches(_epoch(index, cfg, 0), cfg, info))
    steps_per_epoch = math.ceil(micro / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(total_steps, int(cfg.warmup_frac * total_steps), cfg.min_lr_ratio)
    )
    log = RunLogger(run_dir, enabled=info.is_main)
    start_epoch, step, best, history = 0, 0, -1.0, []
    config_dict = {**cfg.to_dict(), "train_cases": [c.case_id for c in train_cases],
                   "val_cases": [c.case_id for c in val_cases]}
    if resume and (run_dir / "state" / "last.pt").exists():
        state = load_state(run_dir / "state" / "last.pt")
        ignore = {"progress", "max_steps", "device"}
        old = {k: v for k, v in state["config"].items() if k not in ignore}
        new = {k: v for k, v in config_dict.items() if k not in ignore}
        if old != new:
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ValueError(f"--resume: settings differ from the saved run ({', '.join(diff)})")
        with torch.no_grad():
            for n, t in state["weights"].items():
                params[n].copy_(t.to(params[n].device))
        optimizer.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start_epoch, step, best, history = state["epoch"] + 1, state["step"], state["best"], state["history"]
        rng_file = run_dir / "state" / f"rng-rank{info.rank}.pt"
        if rng_file.exists():
            load_rng(rng_file)
        log.truncate(step)
        logger.info("resuming %s after epoch %d (step %d)", run_dir, start_epoch, step)
    elif info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(config_dict, indent=1))
    summary = {**index.summary(), "val_cases": [c.case_id for c in val_cases]}
    eval_cfg = EvalConfig(prompt=cfg.val_prompt, window=cfg.window, min_area=cfg.min_area,
                          max_slices=cfg.val_max_slices, nsd_tolerance_mm=cfg.nsd_tolerance_mm)
    n_seen, t_train = 0, 0.0
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    stop = False
    for epoch in range(start_epoch, cfg.epochs):
        batches = _my_batches(_epoch(index, cfg, epoch), cfg, info)
        bar = None
        if info.is_main:
            bar = progress_bar(len(batches), f"epoch {epoch + 1}/{cfg.epochs}", "batch", quiet=not cfg.progress)
        set_train_mode(model, True)
        losses: list[float] = []
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        for b, batch in enumerate(batches):
            last_micro = (b + 1) % cfg.grad_accum == 0 or b == len(batches) - 1
            samples = _samples(batch, store, cfg, epoch)
            sync = net.no_sync() if (info.enabled and not last_micro) else contextlib.nullcontext()
            with sync:
                loss, stats = net(samples)
                (loss / cfg.grad_accum).backward()
            losses.append(float(loss.detach()))
            n_seen += len(samples) * info.world
            if last_micro:
                torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
                optimizer.step()
                sched.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                step_loss = all_reduce_mean(float(np.mean(losses[-cfg.grad_accum :])), info)
                log.step(step, {"epoch": epoch + 1, "loss": step_loss, "lr": sched.get_last_lr()[-1], **stats})
                if cfg.max_steps is not None and step >= cfg.max_steps:
                    stop = True
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
            if stop:
                break
        if bar is not None:
            bar.close()
        t_train += time.perf_counter() - t0
        train_loss = all_reduce_mean(float(np.mean(losses)) if losses else float("nan"), info)
        row = {"train_loss": round(train_loss, 5), "lr": sched.get_last_lr()[-1]}
        if info.is_main:
            set_train_mode(model, False)
            if val_cases:
                rows = evaluate(model, val_cases, cfg.labels, eval_cfg)
                score = summarize_rows(rows)
                row.update({"val_dice": round(score["dice"], 4), "val_nsd": round(score["nsd"], 4)})
                for r in rows:
                    if r["case"] == "ALL":
                        row[f"dice_{r['structure']}"], row[f"nsd_{r['structure']}"] = r["dice"], r["nsd"]
                metric = score["dice"]
            else:
                metric = -train_loss
            row.update({"seconds": round(t_train, 1), "slices_per_s": round(n_seen / max(t_train, 1e-9), 3),
                        "peak_memory_mb": round(_peak_memory_mb(info.device), 1)})
            history.append({"epoch": epoch + 1, "step": step, **row})
            meta = {"labels": structures, "window": cfg.window, "data": summary,
                    "training": {"epoch": epoch + 1, "step": step, "config": config_dict, **row}}
            save_adapter(model, run_dir / "last.safetensors", **meta)
            if metric > best or not (run_dir / "best.safetensors").exists():
                best = max(best, metric)
                save_adapter(model, run_dir / "best.safetensors", **meta)
            weights = {n: params[n] for n in trainable}
            save_state(run_dir / "state" / "last.pt", weights=weights, optimizer=optimizer, scheduler=sched,
                       epoch=epoch, step=step, best=best, history=history, config=config_dict)
            log.epoch(epoch + 1, step, row)
            logger.info("epoch %d: %s", epoch + 1, row)
        save_rng(run_dir / "state" / f"rng-rank{info.rank}.pt")
        barrier(info)
        if stop:
            break
    log.close()
    set_train_mode(model, False)
    return FinetuneResult(run_dir, run_dir / "best.safetensors", run_dir / "last.safetensors", history,
                          n_seen / max(t_train, 1e-9), _peak_memory_mb(info.device), model)

