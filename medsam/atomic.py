"""Atomic file writes: write beside the target, then :func:`os.replace`.

Readers never see a partial file, and a failed write leaves any previous file untouched.
The temporary name keeps the target's ending (``.tmp-XXXX-name.nii.gz``) so writers that
choose a format by extension (SimpleITK, Pillow) write the right one. The file gets the
mode that the process umask gives a new file (0644 under umask 022), as ``cp`` would,
not the 0600 of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "default_file_mode"]


def default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: ``0o666`` less the umask."""
    mask = os.umask(0o022)  # the only portable way to read the umask is to set it
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` for a temporary file beside ``path``, then move it onto ``path``.

    Missing parent folders are created. Whatever ``write`` raises propagates, and the
    temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=f"-{path.name}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
