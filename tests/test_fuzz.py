"""Fuzzing the loaders: every past crash replays clean, and a short atheris run finds none.

``tests/fuzz/regressions/<format>/`` holds the inputs that once crashed ``load_volume``
(found by ``tests/fuzz/fuzz_loaders.py``); each must now load or raise a one-line
:class:`~medsam.errors.MedsamError`. The bounded run fuzzes each format for
``MEDSAM_FUZZ_RUNS`` inputs (default 1500) from seeds cut from the sample scans, with a
fixed libFuzzer seed, so that CI is deterministic; longer runs are
``tests/fuzz/fuzz_loaders.py`` by hand (``-max_total_time=``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from medsam.errors import MedsamError
from medsam.io import load_volume

FUZZ = Path(__file__).parent / "fuzz"
_spec = importlib.util.spec_from_file_location("fuzz_loaders", FUZZ / "fuzz_loaders.py")
fuzz_loaders = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_loaders)
FORMATS = fuzz_loaders.FORMATS
FRESH_PEAK_RSS = fuzz_loaders.FRESH_PEAK_RSS
REGRESSIONS = sorted(p for fmt in FORMATS for p in (FUZZ / "regressions" / fmt).glob("*") if p.is_file())


def test_there_are_regressions_to_replay() -> None:
    assert len(REGRESSIONS) >= 2


@pytest.mark.parametrize("case", REGRESSIONS, ids=lambda p: f"{p.parent.name}/{p.name[:18]}")
def test_past_crashes_load_or_refuse_in_one_line(case: Path, tmp_path: Path) -> None:
    path = fuzz_loaders.place_input(case.read_bytes(), tmp_path, case.parent.name)
    try:
        load_volume(path)
    except MedsamError as exc:
        assert "\n" not in str(exc) and str(exc).isprintable()


@pytest.mark.parametrize("fmt", FORMATS)
def test_bounded_fuzz_run_finds_no_crash(fmt: str, tmp_path: Path) -> None:
    pytest.importorskip("atheris")
    runs = int(os.environ.get("MEDSAM_FUZZ_RUNS", "1500"))
    seeds = tmp_path / "seeds"
    subprocess.run([sys.executable, str(FUZZ / "fuzz_loaders.py"), "--seeds", str(seeds)], check=True, timeout=120)
    env = {**os.environ, "MEDSAM_FUZZ_FORMAT": fmt}
    proc = subprocess.run(
        [sys.executable, "-c", FRESH_PEAK_RSS, sys.executable, str(FUZZ / "fuzz_loaders.py"), str(seeds / fmt),
         f"-runs={runs}", "-seed=1", "-rss_limit_mb=4096", "-timeout=20", f"-artifact_prefix={tmp_path}/"],
        capture_output=True, text=True, timeout=600, env=env,
    )
    crashes = sorted(p.name for kind in ("crash", "timeout", "oom") for p in tmp_path.glob(f"{kind}-*"))
    assert proc.returncode == 0 and not crashes, (
        f"{crashes}: move them to tests/fuzz/regressions/{fmt}/ and fix\n{proc.stderr[-3000:]}"
    )
    done = re.findall(r"Done (\d+) runs", proc.stderr)
    assert done and int(done[-1]) >= runs, proc.stderr[-2000:]
