"""The bundle's case loop shows a tqdm bar on a terminal only (a pseudo-terminal here)."""

from __future__ import annotations

import os
import pty
import select

from monai.data import Dataset
from monai.transforms import Lambdad

from medsam.monai import run_cases


def _run(stream, monkeypatch, quiet=False):
    monkeypatch.setattr("sys.stderr", stream)
    data = Dataset([{"x": i} for i in range(3)], transform=Lambdad("x", lambda v: [v * 10]))
    return run_cases(data, collect="x", quiet=quiet)


def _drain(fd, wait=0.3) -> bytes:
    """Everything the terminal received so far (a pty delivers writes in chunks)."""
    out = b""
    while select.select([fd], [], [], wait)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out


def test_bundle_run_progress(monkeypatch, tmp_path) -> None:
    main_fd, term_fd = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    with os.fdopen(term_fd, "w") as term:
        assert _run(term, monkeypatch) == [0, 10, 20]
        term.flush()
        seen = _drain(main_fd)
        assert b"bundle" in seen and b"/3 [" in seen and b"case" in seen
        assert _run(term, monkeypatch, quiet=True) == [0, 10, 20]
        term.flush()
        assert _drain(main_fd) == b""  # --quiet: nothing on the terminal
    os.close(main_fd)
    with open(tmp_path / "log.txt", "w") as piped:  # not a terminal: no bar
        assert _run(piped, monkeypatch) == [0, 10, 20]
    assert (tmp_path / "log.txt").read_text() == ""
