"""Every example of the README runs, in order, in one fresh folder, and gives what it says.

The README is the source: its fenced ``bash`` and ``python`` blocks are extracted and run
as written (bash blocks with the environment's ``medsam`` and ``python`` first on PATH,
python blocks in-process). ``json`` blocks marked ``<!-- readme-test: file NAME -->`` are
written to NAME first, as a user would save them. A block is left out only with a
``<!-- readme-test: skip (why) -->`` marker; the test knows how many there are.

The examples share one embedding cache (``MEDSAM_CACHE_DIR``), as a user's machine would:
the same scan, model and window are embedded once (the cache key is tested elsewhere).

Each ``# expect: ORGAN Dice D (TARGET ...)`` comment is checked, within ±0.02:

- ``(OUT label A vs REF label B[, slices K0-K1])``: label A of the label-map file OUT
  against label B of the reference REF, resampled onto OUT's grid when the grids differ;
  with slices, the object lies within K0..K1 and Dice is taken there.
- ``(EXPR vs REF label B, slice K)``: a 2D boolean mask, EXPR evaluated in the block's
  namespace, against slice K of REF.
- ``(TABLE.csv)``: the organ's Dice in a metrics table that the example wrote.

Each ``# expect: ORGAN FIELD VALUE (TABLE.csv)`` comment is checked within 1%: the FIELD
column (``volume_ml``, ``long_axis_mm`` ...) of the ORGAN row of a measurements table.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medsam.io import load_volume
from medsam.io.resample import resample_labels_to
from medsam.metrics import dice

README = Path(__file__).parent.parent / "README.md"
TOLERANCE = 0.02
CACHE = ".embedding-cache"  # inside the workspace
N_SKIPPED = 3  # make demo/test (checked through the demo's output) and two benchmark blocks
FENCE = re.compile(r"(?:<!-- readme-test: (?P<marker>[^\n]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)
EXPECT = re.compile(
    r"# expect: (?P<organ>\w+) Dice (?P<dice>[0-9.]+) \((?P<target>[^\s)]+)(?: label (?P<a>\d+))?"
    r"(?: vs (?P<ref>\S+) label (?P<b>\d+))?(?:, slices? (?P<k0>\d+)(?:-(?P<k1>\d+))?)?\)"
)

#: ``# expect: ORGAN FIELD VALUE (TABLE.csv)``: a measurement in a measurements CSV, within 1%.
MEASURE = re.compile(r"# expect: (?P<organ>\w+) (?P<field>[a-z0-9_]+) (?P<value>-?[0-9.]+) \((?P<csv>[^\s)]+\.csv)\)")
MEASURE_TOLERANCE = 0.01


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [
        Block(text.count("\n", 0, m.start("lang")) + 1, m["lang"], m["code"], m["marker"])
        for m in FENCE.finditer(text)
    ]


BLOCKS = readme_blocks()
RUN = [b for b in BLOCKS if b.lang in ("bash", "python") and not (b.marker or "").startswith("skip")]


def test_every_runnable_block_is_run_or_skipped_with_a_reason():
    skipped = [b for b in BLOCKS if (b.marker or "").startswith("skip")]
    assert all(re.fullmatch(r"skip \(.+\)", b.marker) for b in skipped), [b.marker for b in skipped]
    assert len(skipped) == N_SKIPPED, [b.id for b in skipped]
    files = [b for b in BLOCKS if (b.marker or "").startswith("file ")]
    assert all(b.lang == "json" for b in files)
    assert {b.lang for b in BLOCKS} <= {"bash", "python", "json", ""}
    assert sum(b.code.count("# expect:") for b in RUN) >= 12  # the examples that segment something
    for b in RUN:  # a malformed expectation would silently check nothing
        assert len(EXPECT.findall(b.code)) + len(MEASURE.findall(b.code)) == b.code.count("# expect:"), b.id


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, sample_data):
    ws = tmp_path_factory.mktemp("readme")
    (ws / "sample_data").symlink_to(sample_data.resolve())
    (ws / CACHE).mkdir()
    for b in BLOCKS:
        if (b.marker or "").startswith("file "):
            (ws / b.marker.split(" ", 1)[1]).write_text(b.code)
    return ws


def _reference(ref_path: Path, grid) -> np.ndarray:
    ref = load_volume(ref_path)
    if ref.same_geometry(grid):
        return ref.array
    out = resample_labels_to(ref, grid)
    return getattr(out, "array", out)


def _label_file(path: Path, ws: Path):
    """``(grid volume, label array)`` of a label-map file or of a DICOM SEG, which is read
    onto the series it references (searched for in the sample data)."""
    if path.suffix != ".dcm":
        out = load_volume(path)
        return out, out.array
    from medsam.io.dicom_seg import find_source_series, load_segmentation

    folder, uid = find_source_series(path, search=[ws / "sample_data"])
    series = load_volume(folder, series_uid=uid)
    return series, load_segmentation(path, series).labels


def _csv_dice(path: Path, organ: str) -> float:
    """The Dice of ``organ`` in a metrics CSV: the bundle's (one row per case and label, by
    ``name``) or ``medsam evaluate``'s (its ``ALL`` row, by ``structure``)."""
    import csv

    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if organ in (r.get("name"), r.get("structure"))]
    rows = [r for r in rows if r.get("case") == "ALL"] or rows
    assert len(rows) == 1, (path, organ, rows)
    return float(rows[0]["dice"])


def check_expectations(block: Block, ws: Path, namespace: dict) -> list[str]:
    """Every ``# expect:`` of ``block``, checked; returns one line per expectation."""
    report = []
    for m in EXPECT.finditer(block.code):
        want = float(m["dice"])
        if m["target"].endswith(".csv"):  # a metrics table that the example wrote
            got = _csv_dice(ws / m["target"], m["organ"])
        elif m["a"] is not None:  # a label-map file, or a DICOM SEG on a series of the sample data
            out, labels = _label_file(ws / m["target"], ws)
            pred = labels == int(m["a"])
            ref = _reference(ws / m["ref"], out) == int(m["b"])
            if m["k0"] is not None:
                k0, k1 = int(m["k0"]), int(m["k1"] or m["k0"])
                occupied = np.nonzero(pred.reshape(pred.shape[0], -1).any(1))[0]
                assert occupied.size and occupied.min() >= k0 and occupied.max() <= k1, (m[0], occupied)
                pred, ref = pred[k0 : k1 + 1], ref[k0 : k1 + 1]
        else:  # an in-memory 2D mask
            pred = np.asarray(eval(m["target"], namespace))
            ref = load_volume(ws / m["ref"]).array[int(m["k0"])] == int(m["b"])
            assert pred.shape == ref.shape, (m[0], pred.shape, ref.shape)
        if not m["target"].endswith(".csv"):
            got = dice(pred, ref)
        assert abs(got - want) <= TOLERANCE, f"{m[0]}: measured Dice {got:.3f}"
        report.append(f"{m['organ']} {got:.3f}")
    for m in MEASURE.finditer(block.code):
        import csv

        with open(ws / m["csv"], newline="") as f:
            [row] = [r for r in csv.DictReader(f) if r["name"] == m["organ"]]
        got, want = float(row[m["field"]]), float(m["value"])
        assert abs(got - want) <= MEASURE_TOLERANCE * abs(want), f"{m[0]}: measured {got}"
        report.append(f"{m['organ']} {m['field']} {got}")
    return report


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_readme_example(block: Block, workspace: Path, monkeypatch, capsys):
    namespace: dict = {"__name__": "__readme__"}
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(workspace / CACHE))
    if block.lang == "bash":
        env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        proc = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block.code], cwd=workspace, env=env,
            capture_output=True, text=True, timeout=900,
        )
        assert proc.returncode == 0, f"README line {block.line}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        assert "Traceback" not in proc.stderr
    else:
        monkeypatch.chdir(workspace)
        exec(compile(block.code, f"{README}:{block.line}", "exec"), namespace)
    print(check_expectations(block, workspace, namespace))


def _demo_output() -> str:
    section = README.read_text().split("## What the demo does", 1)[1].split("\n## ", 1)[0]
    return next(b for b in FENCE.finditer(section) if b["lang"] == "")["code"]


def test_demo_prints_what_the_readme_shows(tmp_path, workspace):
    """``make demo`` runs ``python -m medsam.demo --out out --overwrite``: its output is the README's."""
    proc = subprocess.run(
        [sys.executable, "-m", "medsam.demo", "--out", "out", "--overwrite"], cwd=tmp_path,
        capture_output=True, text=True, timeout=900, env=dict(os.environ, MEDSAM_CACHE_DIR=str(workspace / CACHE)),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    shown = dict(line.split(None, 1) for line in _demo_output().splitlines() if line.strip())
    got = dict(line.split(None, 1) for line in proc.stdout.splitlines() if line.strip())
    assert got["prompt"] == shown["prompt"]
    assert got["result"].split("),")[0] == shown["result"].split("),")[0]  # the slices covered
    want, measured = (float(d["dice"].split()[0]) for d in (shown, got))
    assert abs(measured - want) <= TOLERANCE
    assert (tmp_path / "out" / "liver_mask.nii.gz").is_file() and (tmp_path / "out" / "liver_overlay.png").is_file()
