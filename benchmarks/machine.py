"""The machine a benchmark ran on, written into every results JSON.

Absolute times mean little without it: the same command gave 0.77 and 0.31 fine-tuning
slices/s on two "2-core" machines. Ratios measured in one run travel better.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

__all__ = ["describe_machine"]


def _cpu_model() -> str | None:
    """The CPU's full model name (Linux ``/proc/cpuinfo``), else None."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def describe_machine(device: torch.device | str | None = None) -> dict:
    """CPU model and features, core counts, memory, GPU and library versions.

    Parameters
    ----------
    device:
        The device the benchmark computed on (``"cpu"``, ``"cuda"``, ...); default CPU.
    """
    device = torch.device(device or "cpu")
    caps = torch.cpu.get_capabilities()
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    gpu = None
    if device.type == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(device)
        gpu = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1)}
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model() or caps.get("cpu_name") or platform.processor(),
        "cpu_cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "avx512_bf16": bool(caps.get("avx512_bf16")),
        "memory_gb": mem_gb,
        "device": str(device),
        "gpu": gpu,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
