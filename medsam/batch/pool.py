"""Where batch cases run: a local pool of worker processes, or a Dask cluster.

Both take a list of ``(key, args)`` jobs for :func:`medsam.batch.worker.process_case` and
call ``on_start(key)`` and ``on_result(key, result)`` in the calling process, as cases
start and finish, in completion order.

The local pool is a few ``spawn``-ed processes, each given one case at a time over a pipe.
A worker that dies (killed for memory, a crash in native code) fails only the case it
held, with its exit status, and is replaced. The Dask path submits the same function to
an existing cluster (``tcp://HOST:8786`` or a ``distributed.Client``) and lets Dask do
the scheduling, retries and worker restarts.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.connection
import os
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["default_workers", "run_local", "run_dask", "Job"]

logger = logging.getLogger(__name__)

Job = tuple[str, tuple[Any, ...]]
OnStart = Callable[[str], None]
OnResult = Callable[[str, dict[str, Any]], None]

#: Memory a CPU worker may need for one volume's embeddings and model (bytes).
WORKER_MEMORY = 4 << 30


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        return os.cpu_count() or 1


def _memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return None


def default_workers(n_cases: int, device: str | None = None) -> int:
    """Workers that fit the machine: one per visible GPU with a CUDA device; on a CPU, one
    per core, fewer when the free memory holds fewer than one volume per 4 GiB, and never
    more than there are cases."""
    if device is not None and device.startswith("cuda"):
        import torch

        return max(1, min(n_cases, torch.cuda.device_count()))
    n = _cores()
    mem = _memory()
    if mem is not None:
        n = min(n, max(1, mem // WORKER_MEMORY))
    return max(1, min(n, n_cases))


def threads_per_worker(workers: int) -> int:
    """Torch threads of each of ``workers`` CPU workers: together never more than the cores."""
    return max(1, _cores() // max(1, workers))


def _worker_main(conn: multiprocessing.connection.Connection, threads: int, device: str | None, level: int) -> None:
    """A pool worker: run the cases sent over ``conn`` until it sends ``None``."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what an interrupt stops
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    import torch

    torch.set_num_threads(threads)
    if device is not None and device.startswith("cuda:"):
        torch.cuda.set_device(device)
    from medsam.batch.worker import process_case

    while True:
        try:
            job = conn.recv()
        except EOFError:  # the parent is gone
            return
        if job is None:
            return
        conn.send(process_case(*job))


@dataclass
class _Worker:
    process: Any
    conn: multiprocessing.connection.Connection
    device: str | None
    job: Job | None = field(default=None)


def run_local(
    jobs: Sequence[Job],
    on_start: OnStart,
    on_result: OnResult,
    *,
    workers: int,
    device: str | None = None,
) -> None:
    """Run ``jobs`` on ``workers`` local processes (one per GPU with ``device="cuda"``)."""
    ctx = multiprocessing.get_context("spawn")
    gpus = [f"cuda:{i}" for i in range(workers)] if device == "cuda" else [device] * workers
    threads = 1 if device is not None and device.startswith("cuda") else threads_per_worker(workers)

    def start(dev: str | None) -> _Worker:
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_worker_main, args=(child, threads, dev, logging.getLogger().getEffectiveLevel()), daemon=True, name="medsam-batch-worker")
        proc.start()
        child.close()
        return _Worker(proc, parent, dev)

    queue = deque(jobs)
    pool = [start(gpus[i]) for i in range(min(workers, len(jobs)))]
    try:
        while queue or any(w.job for w in pool):
            for w in pool:
                if w.job is None and queue:
                    w.job = queue.popleft()
                    key, args = w.job
                    # a GPU worker runs on its own device
                    args = (args[0], _on_device(args[1], w.device), *args[2:])
                    on_start(key)
                    try:
                        w.conn.send(args)
                    except OSError:  # it died before taking the case: the sentinel below says so
                        pass
            busy = [w for w in pool if w.job is not None]
            ready = multiprocessing.connection.wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for w in busy:
                if w.job is None:
                    continue
                key = w.job[0]
                if w.conn in ready or w.conn.poll():
                    try:
                        result = w.conn.recv()
                    except (EOFError, OSError):
                        result = None
                    if result is not None:
                        w.job = None
                        on_result(key, result)
                        continue
                if w.process.sentinel in ready or not w.process.is_alive():
                    w.process.join()
                    code = w.process.exitcode
                    why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
                    hint = " (out of memory?)" if code == -9 else ""
                    on_result(key, {"status": "failed", "error": f"the worker process died, {why}{hint}", "seconds": None})
                    logger.warning("batch worker died on %s (%s); starting another", key, why)
                    pool[pool.index(w)] = start(w.device)
    finally:
        for w in pool:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        for w in pool:
            w.process.join(timeout=5)
            if w.process.is_alive():
                w.process.terminate()
                w.process.join(timeout=5)
            w.conn.close()


def _on_device(settings: Any, device: str | None) -> Any:
    from dataclasses import replace

    return settings if device is None or settings.device == device else replace(settings, device=device)


def run_dask(jobs: Sequence[Job], on_start: OnStart, on_result: OnResult, *, scheduler: Any) -> None:
    """Run ``jobs`` on a Dask cluster: ``scheduler`` is an address or a ``distributed.Client``."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        from medsam.errors import InputFileError

        raise InputFileError("--scheduler", "needs Dask distributed: pip install 'medsam-monai[cluster]'") from None
    from medsam.batch.worker import process_case

    own = not isinstance(scheduler, Client)
    client = Client(scheduler, timeout="30s") if own else scheduler
    futures = {}
    try:
        for key, args in jobs:
            fut = client.submit(process_case, *args, pure=False, key=f"medsam-case-{key}-{os.getpid()}")
            futures[fut] = key
            on_start(key)
        for fut in as_completed(futures):
            key = futures[fut]
            try:
                result = fut.result()
            except Exception as exc:  # noqa: BLE001 - KilledWorker, a lost connection ...
                result = {"status": "failed", "error": f"the Dask task failed: {type(exc).__name__}: {exc}", "seconds": None}
            on_result(key, result)
    finally:
        for fut in futures:
            if not fut.done():
                fut.cancel()
        if own:
            client.close()
