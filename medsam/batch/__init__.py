"""Batch segmentation of a collection of studies: ``medsam batch`` and :func:`run_batch`.

* :mod:`medsam.batch.manifest`: the cases (CSV, JSONL or a folder), checked before any work;
* :mod:`medsam.batch.journal`: what happened to each case, so a rerun resumes;
* :mod:`medsam.batch.worker`: one case in a worker process (the model loaded once per process);
* :mod:`medsam.batch.pool`: the local process pool and the Dask cluster path;
* :mod:`medsam.batch.runner`: :func:`run_batch`, which ties them together.
"""

from medsam.batch.manifest import Case, folder_cases, read_manifest
from medsam.batch.runner import EXIT_SOME_FAILED, BatchSummary, run_batch
from medsam.batch.worker import BatchSettings, process_case

__all__ = [
    "BatchSettings",
    "BatchSummary",
    "Case",
    "EXIT_SOME_FAILED",
    "folder_cases",
    "process_case",
    "read_manifest",
    "run_batch",
]
