"""The batch journal: what happened to each case, so that a rerun does only what is missing.

``OUTDIR/batch-journal.jsonl`` gets one JSON line per event (``pending`` when a case is
sent to a worker, then ``done`` or ``failed``), appended and flushed to disk at once. The
last line of a case is its state. A line cut short by a kill is ignored when the journal
is read, so the journal is always consistent with the outputs: a case is ``done`` only
after its mask, sidecar and measurements are in place under their final names.

Each record carries the SHA-256 of the case's input files and of its settings (prompts,
window, model, adapter, engine, ...): a case is skipped on a rerun only when both are
unchanged and its outputs still exist.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from medsam.errors import InputFileError

__all__ = ["Journal", "JOURNAL_NAME", "hash_files", "hash_settings"]

logger = logging.getLogger(__name__)

JOURNAL_NAME = "batch-journal.jsonl"


def hash_files(path: Path) -> str:
    """SHA-256 over a file, or over a folder's files (names relative to it, sorted, and
    contents; hidden files are left out). A missing path hashes as ``"missing"``."""
    h = hashlib.sha256()
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted(
            (str(f.relative_to(path)), f) for f in path.rglob("*") if f.is_file() and not f.name.startswith(".")
        )
    else:
        return "missing"
    for name, f in files:
        h.update(name.encode() + b"\0")
        try:
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:  # unreadable: the case fails when it runs; hash the reason
            h.update(str(exc).encode())
        h.update(b"\0")
    return h.hexdigest()


def hash_settings(settings: dict[str, Any]) -> str:
    """SHA-256 of a JSON-serialisable settings dict (keys sorted)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()


class Journal:
    """The journal of one output folder; holds an exclusive lock on it while open.

    Use as a context manager. A second batch on the same folder raises
    :class:`~medsam.errors.InputFileError` instead of waiting.
    """

    def __init__(self, outdir: Path) -> None:
        self.path = Path(outdir) / JOURNAL_NAME
        self.state: dict[str, dict[str, Any]] = {}
        self._fh = None

    def __enter__(self) -> Journal:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+", encoding="utf-8")
        with contextlib.suppress(ImportError):
            import fcntl

            try:
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._fh.close()
                raise InputFileError(self.path.parent, "another medsam batch is writing to this folder") from None
        self._read()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.close()  # releases the lock
            self._fh = None

    def _read(self) -> None:
        assert self._fh is not None
        self._fh.seek(0)
        text = self._fh.read()
        if text and not text.endswith("\n"):  # the last line was cut short by a kill
            logger.warning("%s: its last line is incomplete (an interrupted run); ignored", self.path)
            self._fh.write("\n")
            self._fh.flush()
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                case = rec["case"]
            except (ValueError, KeyError, TypeError):
                logger.warning("%s: line %d is not a journal record; ignored", self.path, n)
                continue
            self.state[case] = rec

    def record(self, case: str, status: str, **fields: Any) -> dict[str, Any]:
        """Append ``{"case", "status", "time", **fields}`` and flush it to disk."""
        assert self._fh is not None, "the journal is not open"
        rec = {"case": case, "status": status, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **fields}
        self._fh.write(json.dumps(rec, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.state[case] = rec
        return rec

    def owns(self, case: str) -> bool:
        """Whether an earlier run of this batch started ``case`` (so it may replace its outputs)."""
        return case in self.state
