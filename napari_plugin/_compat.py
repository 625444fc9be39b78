"""Work-arounds for the environment napari runs in (kept out of the widget's logic).

Triton's native library links its own LLVM. When the OpenGL driver in the process is
Mesa (software ``llvmpipe``, or AMD/Intel drivers built on LLVM), that driver's
``libLLVM`` is already loaded by the time a napari widget runs, and importing triton then
crashes the whole process (two LLVMs registering the same global options). torch imports
triton only to offer ``torch.compile`` GPU kernels, which inference does not use; so when
an LLVM is already mapped and triton is not imported yet, triton is hidden from this
process before the model is loaded (torch then reports it as unavailable).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["avoid_llvm_clash", "import_triton_first"]

logger = logging.getLogger(__name__)


def _llvm_loaded() -> bool:
    try:
        return "libLLVM" in Path("/proc/self/maps").read_text(errors="replace")
    except OSError:  # not Linux: no Mesa LLVM clash to avoid
        return False


def import_triton_first() -> bool:
    """Import triton now, before any OpenGL context exists (test sessions, scripts).

    A process that later creates napari viewers *and* loads models outside the widget
    (a test suite) must load triton's LLVM first. Returns True when triton is loaded.
    """
    if "triton" in sys.modules:
        return sys.modules["triton"] is not None
    if _llvm_loaded():
        avoid_llvm_clash()
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def avoid_llvm_clash() -> bool:
    """Hide triton when another LLVM is loaded; returns True when it did."""
    if "triton" in sys.modules or not _llvm_loaded():
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # makes `import triton` an ImportError
    logger.info("an OpenGL driver's LLVM is loaded; triton (torch.compile kernels) is disabled")
    return True
