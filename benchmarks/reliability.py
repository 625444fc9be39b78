"""The README's Reliability numbers: corpus cases, a timed fuzzing campaign, the kill test.

    python -m benchmarks.reliability --seconds 60 --json benchmarks/results/reliability-DATE-MACHINE.json

1. Builds the bad-input corpus (``tests/corpus/generate.py``) and counts its cases by
   category and outcome (the outcomes themselves are checked by ``tests/test_corpus.py``).
2. Fuzzes each loader format for ``--seconds`` with ``tests/fuzz/fuzz_loaders.py`` and
   records the executions and any crash (its file is kept in ``--keep``).
3. Kills a ``save_mask`` writer with SIGKILL mid-write ``--kills`` times and records
   whether the old file stayed intact and nothing partial took its name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]
FUZZ = ROOT / "tests" / "fuzz" / "fuzz_loaders.py"

_WRITER = """
import numpy as np
from medsam.io import Volume, save_mask
labels = np.random.default_rng(0).integers(0, 200, (400, 512, 512), dtype=np.uint8)
print("writing", flush=True)
save_mask(labels, Volume(np.zeros((400, 512, 512), np.int16)), {out!r}, overwrite=True)
"""


def _fuzz_loaders():
    """``tests/fuzz/fuzz_loaders.py`` as a module (its formats and launcher)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("fuzz_loaders", FUZZ)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def corpus_counts(folder: Path) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from corpus.generate import build_corpus, table

    cases = build_corpus(folder, ROOT / "sample_data")
    by = {}
    for c in cases:
        row = by.setdefault(c.category, {"cases": 0, "error": 0, "warning": 0, "ok": 0})
        row["cases"] += 1
        row[c.segment_outcome] += 1
    return {"cases": len(cases), "by_category": by, "table": table(cases)}


def fuzz(fmt: str, seconds: int, keep: Path, work: Path) -> dict:
    seeds = work / "seeds"
    if not seeds.exists():
        subprocess.run([sys.executable, str(FUZZ), "--seeds", str(seeds)], check=True)
    keep.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", _fuzz_loaders().FRESH_PEAK_RSS, sys.executable, str(FUZZ), str(seeds / fmt), f"-max_total_time={seconds}", "-rss_limit_mb=4096",
         "-timeout=20", f"-artifact_prefix={keep}/{fmt}-"],
        capture_output=True, text=True, env={**os.environ, "MEDSAM_FUZZ_FORMAT": fmt},
    )
    done = re.findall(r"Done (\d+) runs", proc.stderr)
    execs = re.findall(r"#(\d+)\s", proc.stderr)
    found = sorted(p.name for p in keep.glob(f"{fmt}-*"))
    return {"format": fmt, "seconds": round(time.perf_counter() - t0, 1),
            "executions": int(done[-1]) if done else (int(execs[-1]) if execs else 0),
            "exit": proc.returncode, "crashes": found}


def kill_test(work: Path, n: int) -> dict:
    import numpy as np

    from medsam.io import Volume, load_volume, save_mask

    ok = 0
    for i in range(n):
        folder = work / f"kill{i}"
        folder.mkdir()
        out = folder / "mask.nii.gz"
        old = np.zeros((4, 8, 8), np.uint8)
        old[1, 2:5, 2:5] = 1
        save_mask(old, Volume(np.zeros((4, 8, 8), np.int16)), out)
        before = out.read_bytes()
        proc = subprocess.Popen([sys.executable, "-c", _WRITER.format(out=str(out))], stdout=subprocess.PIPE,
                                text=True, cwd=ROOT)
        proc.stdout.readline()
        time.sleep(0.5 + 0.3 * i)  # kill at different points of the write
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        names = {p.name for p in folder.iterdir() if not p.name.startswith(".tmp-")}
        if out.read_bytes() == before and names == {"mask.nii.gz"} and (load_volume(out).array == old).all():
            ok += 1
    return {"kills": n, "old_file_intact": ok}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="fuzzing time per format")
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=Path("fuzz-finds"), help="where crash inputs are kept")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {
            "machine": describe_machine("cpu"),
            "corpus": corpus_counts(work / "corpus"),
            "fuzzing": [fuzz(fmt, args.seconds, args.keep, work) for fmt in _fuzz_loaders().FORMATS],
            "kill_test": kill_test(work, args.kills),
        }
    print(result["corpus"]["table"])
    for f in result["fuzzing"]:
        print(f"fuzz {f['format']}: {f['executions']:,} inputs in {f['seconds']} s, crashes: {f['crashes'] or 'none'}")
    k = result["kill_test"]
    print(f"kill test: old file intact after {k['old_file_intact']} of {k['kills']} SIGKILLs")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
