"""Every benchmark result names its machine."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from benchmarks.machine import describe_machine

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def test_machine_description_matches_the_system():
    m = describe_machine("cpu")
    assert m["cpu_cores_available"] == len(os.sched_getaffinity(0))
    kb = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal")).split()[1])
    assert abs(m["memory_gb"] - kb / 2**20) < 0.2
    assert m["device"] == "cpu" and m["gpu"] is None and m["cpu"]


def test_every_benchmark_that_writes_json_records_the_machine():
    for path in BENCHMARKS.glob("*.py"):
        text = path.read_text()
        if "json.dumps" not in text:
            continue
        calls = {n.func.id for n in ast.walk(ast.parse(text))
                 if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assert "describe_machine" in calls, path.name
