"""Atomic file writes: write beside the target, then :func:`os.replace`.

Readers never see a partial file, and a failed write leaves any previous file untouched.
The temporary name keeps the target's ending (``.tmp-PID-XXXX-name.nii.gz``) so writers that
choose a format by extension (SimpleITK, Pillow) write the right one; the next write of the
same target removes the temporary files of writers that were killed. The file gets the
mode that the process umask gives a new file (0644 under umask 022), as ``cp`` would,
not the 0600 of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_text", "default_file_mode", "output_lock"]


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
    _remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{os.getpid()}-", suffix=f"-{path.name}")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _remove_stale_temporaries(path: Path) -> None:
    """Remove the temporary files of ``path`` left by writers that were killed (their
    process is gone); a live writer's temporary file is left alone."""
    for tmp in path.parent.glob(f".tmp-*-*-{path.name}"):
        pid = tmp.name.split("-")[1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive, under another user
            continue


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@contextlib.contextmanager
def output_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s folder while a group of files is written.

    Two processes writing the same outputs (a mask, its sidecar and its measurements) then
    write them one group after the other, never interleaved, so the files left always
    belong together; the second one sees the first one's mask when it re-checks for an
    existing output. The lock is ``flock`` on the folder itself, so no lock file is left
    behind; it is released when the process dies. Where ``fcntl`` does not exist
    (Windows) it does nothing.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = Path(path).parent
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
