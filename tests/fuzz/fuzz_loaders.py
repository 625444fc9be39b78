"""Fuzz ``medsam.io.load_volume`` with atheris (libFuzzer): NIfTI, gzipped NIfTI, DICOM files
and DICOM folders.

Every input must either load or raise a :class:`medsam.errors.MedsamError` (a one-line
message for the user). Anything else (an ``IndexError`` deep in a decoder, a
``MemoryError`` from a forged header, a hang) is a crash: libFuzzer writes the input as
``crash-<sha1>`` and exits non-zero. Put such a file in ``tests/fuzz/regressions/<format>/``
and ``tests/test_fuzz.py`` replays it on every run.

In ``dcmdir`` the input is one slice of a folder that also holds two real slices of the
same series, so the series grouping, slice ordering, spacing and tilt checks and the
stacking of mismatched slices are fuzzed too.

Usage (the format is chosen by ``MEDSAM_FUZZ_FORMAT``: ``nii``, ``nii.gz``, ``dcm`` or
``dcmdir``)::

    MEDSAM_FUZZ_FORMAT=nii python tests/fuzz/fuzz_loaders.py SEEDS/ -max_total_time=60

``python tests/fuzz/fuzz_loaders.py --seeds DIR`` writes small seed files made from the
sample scans (a 4x4x3 NIfTI crop, a 16x16 CT slice).
"""

from __future__ import annotations

import gzip
import logging
import os
import sys
import tempfile
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORMATS = ("nii", "nii.gz", "dcm", "dcmdir")
SERIES = ROOT / "sample_data" / "highdicom_seg_ct2" / "ct2_series"
# libFuzzer's -rss_limit_mb compares the *peak* RSS (getrusage ru_maxrss), and Linux hands a
# child the parent's peak at fork and keeps it across exec: started from a pytest process
# that has grown to 4.6 GB, the fuzzer reports out-of-memory on its first check. A
# grandchild forked from a fresh interpreter starts from that small interpreter's peak.
FRESH_PEAK_RSS = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execv(sys.argv[1], sys.argv[1:])\n"
    "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
)


def write_seeds(folder: Path) -> None:
    """Small, valid seed inputs per format, cut from ``sample_data``."""
    import nibabel as nib
    import numpy as np

    ct = nib.load(ROOT / "sample_data" / "totalsegmentator" / "example_ct_sm.nii.gz")
    crop = nib.Nifti1Image(np.asarray(ct.dataobj)[40:44, 40:44, 10:13], ct.affine)
    for fmt in FORMATS:
        (folder / fmt).mkdir(parents=True, exist_ok=True)
    raw = crop.to_bytes()
    (folder / "nii" / "crop.nii").write_bytes(raw)
    (folder / "nii.gz" / "crop.nii.gz").write_bytes(gzip.compress(raw, mtime=0))
    slices = sorted(SERIES.iterdir())
    (folder / "dcm" / "slice.dcm").write_bytes(slices[0].read_bytes())
    (folder / "dcmdir" / "slice.dcm").write_bytes(slices[2].read_bytes())


def place_input(data: bytes, folder: Path, fmt: str) -> Path:
    """Write one fuzz input under ``folder``; returns the path to give ``load_volume``.

    For ``dcmdir`` that is a folder holding two real slices of the series and the input.
    """
    if fmt != "dcmdir":
        path = folder / f"input.{fmt}"
        path.write_bytes(data)
        return path
    series = folder / "series"
    if not series.is_dir():
        series.mkdir()
        for src in sorted(SERIES.iterdir())[:2]:
            (series / src.name).write_bytes(src.read_bytes())
    (series / "input.dcm").write_bytes(data)
    return series


def _fuzz(fmt: str) -> None:
    import atheris

    with atheris.instrument_imports(include=["medsam"]):
        from medsam.errors import MedsamError
        from medsam.io import load_volume

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    folder = Path(tempfile.mkdtemp(prefix="medsam-fuzz-"))

    def one_input(data: bytes) -> None:
        path = place_input(data, folder, fmt)
        try:
            load_volume(path)
        except MedsamError as exc:
            assert "\n" not in str(exc), f"a multi-line error: {exc!r}"

    atheris.Setup(sys.argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if len(sys.argv) == 3 and sys.argv[1] == "--seeds":
        write_seeds(Path(sys.argv[2]))
        sys.exit(0)
    fmt = os.environ.get("MEDSAM_FUZZ_FORMAT", "nii")
    if fmt not in FORMATS:
        sys.exit(f"MEDSAM_FUZZ_FORMAT must be one of {', '.join(FORMATS)}")
    _fuzz(fmt)
