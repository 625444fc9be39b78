"""Batch throughput: ``medsam batch`` (1 and 2 local workers, a Dask LocalCluster) vs a shell loop.

    python -m benchmarks.batch --tiles 6 --json benchmarks/results/batch-DATE-MACHINE.json

The dev cases of ``tests/batch_cases.py`` (3-slice crops of the TotalSegmentator CT and
MR, CC BY 4.0) are tiled ``--tiles`` times (6 tiles: 24 good cases, plus the 2 broken
ones). Each configuration runs into a fresh output folder, in one process run on the
same machine, so the ratios compare like with like:

* ``loop``: one ``medsam segment`` process per case (the model loaded every time);
* ``workers1``, ``workers2``: ``medsam batch --workers N``;
* ``dask2``: ``run_batch`` on a ``distributed.LocalCluster`` of 2 single-thread worker
  processes, started before the clock starts (an existing cluster), its workers fresh.

Reported: cases per hour, the ratios to the loop and of Dask to the 2-worker pool, and
the per-case model-load and segmentation (embedding + propagation) seconds from the
batch journal.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.machine import describe_machine

ROOT = Path(__file__).resolve().parents[1]


def _journal_times(outdir: Path) -> dict:
    recs = [json.loads(line) for line in (outdir / "batch-journal.jsonl").read_text().splitlines() if line.strip()]
    done = [r for r in recs if r["status"] == "done"]
    loads = [r["load_seconds"] for r in done if r["load_seconds"] > 0]
    return {
        "model_loads": len(loads),
        "model_load_seconds_mean": round(statistics.mean(loads), 2) if loads else None,
        "segment_seconds_median": round(statistics.median(r["segment_seconds"] for r in done), 2),
    }


def _loop_commands(cases, folder: Path) -> list[list[str]]:
    """One ``medsam segment`` command per case, as a shell loop would run them."""
    from medsam.io import load_volume
    from medsam.monai.simulate import simulate_prompts

    folder.mkdir(parents=True, exist_ok=True)
    commands = []
    for i, c in enumerate(cases):
        prompts = folder / f"{i}.prompts.json"
        if c.prompts.startswith("{"):
            prompts.write_text(c.prompts)
        elif c.from_labels:
            labels = load_volume(c.prompts_path).array
            prompts.write_text(json.dumps(simulate_prompts(labels)))
        else:
            prompts = c.prompts_path
        cmd = [sys.executable, "-m", "medsam", "segment", str(c.input), "--prompts", str(prompts),
               "-o", str(folder / c.output), "--quiet"]
        commands.append(cmd + (["--window", c.window] if c.window else []))
    return commands


def _timed(name: str, n_cases: int, run) -> dict:
    t0 = time.perf_counter()
    extra = run() or {}
    seconds = time.perf_counter() - t0
    print(f"{name}: {n_cases} cases in {seconds:.1f} s ({3600 * n_cases / seconds:.0f} cases/h)", flush=True)
    return {"name": name, "cases": n_cases, "seconds": round(seconds, 2), "cases_per_hour": round(3600 * n_cases / seconds, 1), **extra}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=6, help="copies of the 4 good dev cases (6: 24 cases)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from batch_cases import write_dev_cases

    from medsam.batch import read_manifest, run_batch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        manifest = write_dev_cases(work / "cases", tiles=args.tiles, broken=False)
        cases = read_manifest(manifest)
        n = len(cases)
        commands = _loop_commands(cases, work / "loop")  # prompts written beforehand, not timed

        def loop() -> None:
            for c in commands:
                subprocess.run(c, check=True, capture_output=True)

        runs = [_timed("loop", n, loop)]
        for w in (1, 2):
            out = work / f"workers{w}"

            def pool(out: Path = out, w: int = w) -> dict:
                subprocess.run(
                    [sys.executable, "-m", "medsam", "batch", str(manifest), "-o", str(out), "--workers", str(w), "--quiet"],
                    check=True, capture_output=True,
                )
                return _journal_times(out)

            runs.append(_timed(f"workers{w}", n, pool))
        import distributed

        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
            with distributed.Client(cl) as client:
                out = work / "dask2"

                def dask() -> dict:
                    summary = run_batch(manifest, out, scheduler=client, quiet=True)
                    assert summary.failed == 0
                    return _journal_times(out)

                runs.append(_timed("dask2", n, dask))
    by = {r["name"]: r for r in runs}
    ratios = {
        "workers1_vs_loop": round(by["workers1"]["cases_per_hour"] / by["loop"]["cases_per_hour"], 2),
        "workers2_vs_loop": round(by["workers2"]["cases_per_hour"] / by["loop"]["cases_per_hour"], 2),
        "dask2_overhead_vs_workers2": round(by["dask2"]["seconds"] / by["workers2"]["seconds"] - 1, 3),
    }
    result = {
        "machine": describe_machine("cpu"),
        "command": "python -m benchmarks.batch " + " ".join(argv if argv is not None else sys.argv[1:]),
        "tiles": args.tiles,
        "runs": runs,
        "ratios": ratios,
        "targets": {"workers_vs_loop": ">= 1.5", "dask2_overhead_vs_workers2": "<= 0.10"},
    }
    print(json.dumps(ratios))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
