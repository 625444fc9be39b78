"""Fuzz ``medsam.io.load_volume`` with atheris (libFuzzer): NIfTI, gzipped NIfTI and DICOM.

Every input must either load or raise a :class:`medsam.errors.MedsamError` (a one-line
message for the user). Anything else (an ``IndexError`` deep in a decoder, a
``MemoryError`` from a forged header, a hang) is a crash: libFuzzer writes the input as
``crash-<sha1>`` and exits non-zero. Put such a file in ``tests/fuzz/regressions/<format>/``
and ``tests/test_fuzz.py`` replays it on every run.

Usage (the format is chosen by ``MEDSAM_FUZZ_FORMAT``: ``nii``, ``nii.gz`` or ``dcm``)::

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
FORMATS = ("nii", "nii.gz", "dcm")


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
    dcm = sorted((ROOT / "sample_data" / "highdicom_seg_ct2" / "ct2_series").iterdir())[0]
    (folder / "dcm" / "slice.dcm").write_bytes(dcm.read_bytes())


def _fuzz(fmt: str) -> None:
    import atheris

    with atheris.instrument_imports(include=["medsam"]):
        from medsam.errors import MedsamError
        from medsam.io import load_volume

    logging.disable(logging.CRITICAL)
    warnings.simplefilter("ignore")
    folder = Path(tempfile.mkdtemp(prefix="medsam-fuzz-"))
    path = folder / f"input.{fmt}"

    def one_input(data: bytes) -> None:
        path.write_bytes(data)
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
