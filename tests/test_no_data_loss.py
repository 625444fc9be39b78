"""No data loss: concurrent writers, and a writer killed mid-write (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from medsam.io import load_volume

BOXES = {"liver": "15:44,27,104,81", "spleen": "22:10,22,39,51"}


@pytest.fixture(scope="module")
def ct(sample_data: Path) -> Path:
    return sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"


def _segment(ct: Path, out: Path, organ: str, *extra: str) -> subprocess.Popen:
    label = "1" if organ == "liver" else "2"
    return subprocess.Popen(
        [sys.executable, "-m", "medsam", "segment", str(ct), "-o", str(out), "--box", BOXES[organ],
         "--label", label, "--no-propagate", "--device", "cpu", "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _check_matching(out: Path) -> int:
    """The mask and its sidecar and measurements belong to the same run; returns its label."""
    labels = load_volume(out).array
    side = json.loads(out.with_name(out.name + ".json").read_text())
    present = sorted(int(v) for v in np.unique(labels) if v)
    assert present == [o["label"] for o in side["objects"]], (present, side["objects"])
    for o in side["objects"]:
        assert int((labels == o["label"]).sum()) == o["voxels"]
    table = out.with_name(out.name + ".measurements.csv").read_text().splitlines()
    assert len(table) == 1 + len(present) and table[1].split(",")[0] == str(present[0])
    return present[0]


@pytest.mark.parametrize("overwrite", [True, False])
def test_two_writers_leave_one_complete_result(ct: Path, tmp_path: Path, overwrite: bool) -> None:
    out = tmp_path / "mask.nii.gz"
    extra = ("--overwrite",) if overwrite else ()
    procs = [_segment(ct, out, organ, *extra) for organ in ("liver", "spleen")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    if overwrite:
        assert codes == [0, 0], results
    else:  # the second to write finds the first one's mask and refuses
        assert codes == [0, 2], results
        [err] = [e for rc, e in results if rc == 2]
        assert "exists" in err and len(err.strip().splitlines()) == 1
    assert _check_matching(out) in (1, 2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["mask.nii.gz", "mask.nii.gz.json", "mask.nii.gz.measurements.csv"]


def test_killed_writer_leaves_the_old_file(tmp_path: Path) -> None:
    """SIGKILL during ``save_mask``: the old mask stays intact, nothing partial takes its
    name, and the next write removes the dead writer's temporary file."""
    out = tmp_path / "mask.nii.gz"
    from medsam.io import Volume, save_mask

    like = Volume(np.zeros((4, 8, 8), np.int16))
    old = np.zeros((4, 8, 8), np.uint8)
    old[1, 2:5, 2:5] = 1
    save_mask(old, like, out)
    before = out.read_bytes()
    writer = textwrap.dedent(f"""
        import numpy as np
        from medsam.io import Volume, save_mask
        rng = np.random.default_rng(0)
        labels = rng.integers(0, 200, (400, 512, 512), dtype=np.uint8)  # seconds to compress
        print("writing", flush=True)
        save_mask(labels, Volume(np.zeros((400, 512, 512), np.int16)), {str(out)!r}, overwrite=True)
        print("done", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.monotonic() + 120
    partial = []
    while time.monotonic() < deadline and not partial:
        partial = [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-") and p.stat().st_size > 0]
        time.sleep(0.05)
    assert partial, "the writer never started its temporary file"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.stdout.read() == ""  # killed before it finished
    assert out.read_bytes() == before
    np.testing.assert_array_equal(load_volume(out).array, old)
    assert partial[0].exists()  # the dead writer's, under its temporary name only
    save_mask(old, like, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mask.nii.gz"]
