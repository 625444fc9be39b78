"""A training run's folder: resumable state, CSV and TensorBoard logs.

::

    RUN_DIR/
      config.json             the TrainConfig and the data split
      best.safetensors/.json  adapter with the best validation Dice
      last.safetensors/.json  adapter after the last finished epoch
      state/last.pt           optimizer, scheduler, trained weights, epoch, step, best score
      state/rng-rank{R}.pt    each process's RNG state (Python, NumPy, torch, CUDA)
      metrics.csv             one row per epoch (loss, lr, validation Dice/NSD per structure)
      steps.csv               one row per optimizer step (loss, lr)
      tb/                     TensorBoard event files
"""

from __future__ import annotations

import csv
import logging
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medsam.atomic import atomic_write

__all__ = ["RunLogger", "load_rng", "load_state", "save_rng", "save_state"]

logger = logging.getLogger(__name__)


def _atomic_torch_save(obj: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def save_state(path: Path, *, weights: Mapping[str, torch.Tensor], optimizer, scheduler,
               epoch: int, step: int, best: float, history: list[dict], config: dict) -> None:
    """Everything needed to continue after ``epoch`` (0-based, finished)."""
    _atomic_torch_save(
        {
            "weights": {k: v.detach().cpu() for k, v in weights.items()},
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "epoch": int(epoch),
            "step": int(step),
            "best": float(best),
            "history": history,
            "config": config,
        },
        path,
    )


def load_state(path: Path) -> dict:
    """Read a state written by :func:`save_state` (tensors and plain values only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def save_rng(path: Path) -> None:
    """This process's Python, NumPy, torch (and CUDA) RNG states."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {  # plain values and tensors only, so it loads with weights_only=True
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    _atomic_torch_save(state, path)


def load_rng(path: Path) -> None:
    """Restore what :func:`save_rng` saved."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunLogger:
    """Appends epoch and step rows to CSV files and TensorBoard (main process only).

    Parameters
    ----------
    run_dir
        The run folder.
    enabled
        False on non-main ranks: every call is a no-op.
    tensorboard
        Also write TensorBoard events (needs the ``tensorboard`` package).
    """

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is in the train extra
                logger.warning("tensorboard is not installed; logging to CSV only")

    def _append(self, name: str, row: Mapping[str, Any]) -> None:
        path = self.run_dir / name
        fields = list(row)
        if path.exists():
            with open(path, newline="") as fh:
                header = next(csv.reader(fh), [])
            fields = header + [f for f in row if f not in header]
            if fields != header:  # a new column (e.g. a structure seen later): rewrite
                with open(path, newline="") as fh:
                    old = list(csv.DictReader(fh))
                with open(path, "w", newline="") as fh:
                    w = csv.DictWriter(fh, fieldnames=fields)
                    w.writeheader()
                    w.writerows(old)
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            if new:
                w.writeheader()
            w.writerow(dict(row))

    def step(self, step: int, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._append("steps.csv", {"step": step, **row})
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self._tb.add_scalar(f"train/{k}", v, step)

    def epoch(self, epoch: int, step: int, row: Mapping[str, Any]) -> None:
        if not self.enabled:
            return
        self._append("metrics.csv", {"epoch": epoch, "step": step, **row})
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)):
                    self._tb.add_scalar(f"epoch/{k}", v, step)
            self._tb.flush()

    def truncate(self, step: int) -> None:
        """Drop rows logged after ``step`` (a resumed run repeats them)."""
        if not self.enabled:
            return
        for name in ("steps.csv", "metrics.csv"):
            path = self.run_dir / name
            if not path.exists():
                continue
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            fields = list(rows[0]) if rows else []
            keep = [r for r in rows if int(float(r["step"])) <= step]
            with open(path, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=fields)
                if fields:
                    w.writeheader()
                w.writerows(keep)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
