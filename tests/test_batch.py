"""``medsam batch``: six real cases (two broken), resume after SIGKILL, Dask, journal skips.

The cases are 3-slice crops of the TotalSegmentator CT and MR (``tests/batch_cases.py``),
run by the real LiteMedSAM in real worker processes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from batch_cases import DEV_CASES, write_dev_cases

from medsam.batch import read_manifest, run_batch
from medsam.batch.journal import JOURNAL_NAME, Journal
from medsam.cli import main
from medsam.errors import InputFileError
from medsam.io import load_volume

GOOD = [name for name, status in DEV_CASES if status == "done"]
# sidecar fields that differ between two runs of the same case: the time taken, the paths as given
VOLATILE = {"seconds", "output", "input"}


def _results(outdir: Path) -> list[dict[str, str]]:
    with open(outdir / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _journal(outdir: Path) -> list[dict]:
    return [json.loads(line) for line in (outdir / JOURNAL_NAME).read_text().splitlines() if line.strip()]


def _outputs(outdir: Path) -> dict[str, Path]:
    """The case files of an output folder (not the journal or results.csv)."""
    return {
        str(p.relative_to(outdir)): p
        for p in sorted(outdir.rglob("*"))
        if p.is_file() and p.name not in (JOURNAL_NAME, "results.csv")
    }


def _same_outputs(a: Path, b: Path) -> None:
    """Two batch output folders hold the same files: masks byte for byte (else voxel for
    voxel), sidecars equal but for timings and paths, measurement tables equal."""
    fa, fb = _outputs(a), _outputs(b)
    assert sorted(fa) == sorted(fb)
    assert not [n for n in fa if ".tmp-" in n], "a temporary file was left under the outputs"
    for name, pa in fa.items():
        pb = fb[name]
        if name.endswith(".json"):
            ja, jb = json.loads(pa.read_text()), json.loads(pb.read_text())
            assert {k: v for k, v in ja.items() if k not in VOLATILE} == {k: v for k, v in jb.items() if k not in VOLATILE}
        elif name.endswith(".csv"):
            assert pa.read_text() == pb.read_text(), name
        elif pa.read_bytes() != pb.read_bytes():
            np.testing.assert_array_equal(load_volume(pa).array, load_volume(pb).array, err_msg=name)


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    return write_dev_cases(tmp_path_factory.mktemp("batch_cases"))


@pytest.fixture(scope="module")
def reference_run(cases, tmp_path_factory) -> tuple[Path, int, str]:
    """One uninterrupted batch of the six cases with one worker: (outdir, exit code, stdout)."""
    out = tmp_path_factory.mktemp("batch") / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "medsam", "batch", str(cases), "-o", str(out), "--workers", "1"],
        capture_output=True, text=True, timeout=900, cwd=cases.parent,
    )
    return out, proc.returncode, proc.stdout + proc.stderr


def test_four_done_two_failed_with_their_messages_exit_3(reference_run, cases) -> None:
    out, code, log = reference_run
    assert code == 3, log
    rows = _results(out)
    status = {r["case"]: r["status"] for r in rows}
    assert status == dict(DEV_CASES), log
    errors = {r["case"]: r["error"] for r in rows if r["status"] == "failed"}
    assert "unreadable.nii.gz" in errors["e_unreadable.nii.gz"] and "\n" not in errors["e_unreadable.nii.gz"]
    assert "outside the 122x101 image" in errors["f_box_off_image.nii.gz"]
    for name in GOOD:  # the segment outputs of each done case, and nothing for a failed one
        for suffix in ("", ".json", ".measurements.csv"):
            assert (out / f"{name}{suffix}").is_file()
    assert not any(out.glob("e_unreadable*")) and not any(out.glob("f_box*"))
    # one line per finished case when stderr is not a terminal
    assert log.count("] done ") == 4 and log.count("] failed ") == 2, log
    done = [r for r in rows if r["status"] == "done"]
    assert all(float(r["volume_ml"]) > 10 and 0.5 < float(r["confidence"]) <= 1 for r in done), done
    assert {r["engine"] for r in done} == {"onnxruntime"} and all(r["model"].startswith("litemedsam:") for r in done)
    scored = next(r for r in rows if r["case"] == "c_liver_from_labels.nii.gz")
    assert float(scored["dice"]) > 0.8 and 0.5 < float(scored["nsd"]) <= 1.0, scored
    # the mask is on the input's grid
    assert load_volume(out / "b_spleen.nrrd").same_geometry(load_volume(cases.parent / "ct_a.nii.gz"))


def test_a_batch_case_equals_medsam_segment(reference_run, cases, tmp_path, capsys) -> None:
    out, _, _ = reference_run
    single = tmp_path / "a_liver.nii.gz"
    code = main(["segment", str(cases.parent / "ct_a.nii.gz"), "--prompts", str(cases.parent / "a.prompts.json"),
                 "-o", str(single), "--quiet"])
    assert code == 0
    assert single.read_bytes() == (out / "a_liver.nii.gz").read_bytes()
    ja = json.loads((out / "a_liver.nii.gz.json").read_text())
    jb = json.loads(single.with_name(single.name + ".json").read_text())
    assert {k: v for k, v in ja.items() if k not in VOLATILE} == {k: v for k, v in jb.items() if k not in VOLATILE}
    assert (out / "a_liver.nii.gz.measurements.csv").read_text() == (tmp_path / "a_liver.nii.gz.measurements.csv").read_text()


def test_a_rerun_skips_what_is_done_and_a_changed_prompts_file_reruns_only_its_case(reference_run, cases, tmp_path) -> None:
    ref_out, _, _ = reference_run
    folder = tmp_path / "cases"
    shutil.copytree(cases.parent, folder)
    out = tmp_path / "out"
    shutil.copytree(ref_out, out)
    mtimes = {n: p.stat().st_mtime_ns for n, p in _outputs(out).items()}
    before = len(_journal(out))
    # the same command again: nothing runs (the failed cases keep their errors)
    summary = run_batch(folder / "manifest.csv", out, workers=1, quiet=True)
    assert (summary.done, summary.skipped, summary.failed, summary.exit_code) == (0, 4, 2, 3)
    assert len(_journal(out)) == before
    # a changed prompts file: only its case runs again
    prompts = json.loads((folder / "a.prompts.json").read_text())
    prompts["objects"][0]["prompts"][0]["box"][0] += 2
    (folder / "a.prompts.json").write_text(json.dumps(prompts))
    summary = run_batch(folder / "manifest.csv", out, workers=1, quiet=True)
    assert (summary.done, summary.skipped, summary.failed) == (1, 3, 2)  # e_unreadable uses a.prompts.json too
    new = _journal(out)[before:]
    assert {r["case"] for r in new} == {"a_liver.nii.gz", "e_unreadable.nii.gz"}
    assert [r["status"] for r in new if r["case"] == "a_liver.nii.gz"] == ["pending", "done"]
    for name, p in _outputs(out).items():
        assert (p.stat().st_mtime_ns == mtimes[name]) == (not name.startswith("a_liver")), name
    # failed cases run again only when asked
    summary = run_batch(folder / "manifest.csv", out, workers=1, quiet=True, retry_failed=True)
    assert (summary.done, summary.skipped, summary.failed) == (0, 4, 2)
    assert {r["case"] for r in _journal(out)[before + len(new):]} == {"e_unreadable.nii.gz", "f_box_off_image.nii.gz"}


def test_sigkill_after_the_second_case_then_resume_equals_an_uninterrupted_run(reference_run, cases, tmp_path) -> None:
    ref_out, _, _ = reference_run
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medsam", "batch", str(cases), "-o", str(out), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            journal = out / JOURNAL_NAME
            if journal.is_file() and sum(r["status"] == "done" for r in _journal(journal.parent)) >= 2:
                break
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the batch and its worker, mid-way through case 3
        proc.wait()
    states = {r["case"]: r["status"] for r in _journal(out)}
    assert list(states.values()).count("done") == 2 and len(states) < len(DEV_CASES), states
    assert not (out / "results.csv").exists()
    code = main(["batch", str(cases), "-o", str(out), "--workers", "1", "--quiet"])
    assert code == 3
    _same_outputs(ref_out, out)
    assert [r["status"] for r in _results(out)] == [s for _, s in DEV_CASES]


def test_a_dask_local_cluster_with_two_workers_gives_the_same_outputs(reference_run, cases, tmp_path) -> None:
    distributed = pytest.importorskip("distributed")
    ref_out, _, _ = reference_run
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            summary = run_batch(cases, out, scheduler=client, quiet=True)
            # each worker process loaded the model once, for all its cases
            loads = [r for r in _journal(out) if r["status"] == "done" and r["load_seconds"] > 0]
            assert 1 <= len(loads) <= 2
    assert (summary.done, summary.failed, summary.exit_code) == (4, 2, 3)
    _same_outputs(ref_out, out)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("input,output\nct_a.nii.gz,x.nii.gz\n", "row 1: the header lacks the column(s) prompts"),
        ("input,prompts,output\nct_a.nii.gz,a.prompts.json,x.nii.gz\nct_a.nii.gz,,y.nii.gz\n", "row 3: prompts is empty"),
        ("input,prompts,output\nct_a.nii.gz,a.prompts.json,x.nii.gz\nct_a.nii.gz,a.prompts.json,X.nii.gz\n",
         "row 3: output X.nii.gz is also the output of row 2"),
        ("input,prompts,output\nct_a.nii.gz,a.prompts.json,../x.nii.gz\n", "row 2: output ../x.nii.gz must be a file name inside"),
        ("input,prompts,output\nct_a.nii.gz,a.prompts.json,x.png\n", "row 2: output x.png must end with one of"),
        ("input,prompts,output,model\nct_a.nii.gz,a.prompts.json,x.nii.gz,gpt\n", "row 2: unknown model 'gpt'"),
        ("input,prompts,output,window\nct_a.nii.gz,a.prompts.json,x.nii.gz,40\n", "row 2: unknown window '40'"),
        ('input,prompts,output\nct_a.nii.gz,"{""objects"": [",x.nii.gz\n', "row 2: inline prompts are not JSON"),
        ("input,prompts,output,colour\nct_a.nii.gz,a.prompts.json,x.nii.gz,red\n", "row 1: unknown column(s) colour"),
    ],
)
def test_a_bad_manifest_is_refused_before_any_work_naming_its_row(
    text: str, message: str, cases, tmp_path, capsys
) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    out = tmp_path / "out"
    assert main(["batch", str(manifest), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(manifest) in err and message in err, err
    assert not out.exists()


def test_jsonl_manifest_with_inline_prompts_and_paths_relative_to_it(cases, tmp_path) -> None:
    manifest = tmp_path / "sub" / "m.jsonl"
    manifest.parent.mkdir()
    rel = os.path.relpath(cases.parent, manifest.parent)
    rows = [
        {"input": f"{rel}/ct_a.nii.gz", "prompts": {"objects": [{"label": 2, "prompts": [{"slice": 1, "box": [1, 2, 9, 9]}]}]},
         "output": "deep/x.nii.gz", "series_uid": None},
        {"input": f"{rel}/mr.nii.gz", "prompts": f"from-labels:{rel}/seg_b.nii.gz", "output": "y.mha", "window": "percentile"},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    got = read_manifest(manifest)
    assert [c.row for c in got] == [1, 2]
    assert got[0].input == (cases.parent / "ct_a.nii.gz").resolve() and got[0].output == "deep/x.nii.gz"
    assert json.loads(got[0].prompts)["objects"][0]["label"] == 2 and got[0].prompts_path is None
    assert got[1].from_labels and got[1].prompts_path == (cases.parent / "seg_b.nii.gz").resolve()
    manifest.write_text(json.dumps(rows[0]) + "\n[1, 2]\n")
    with pytest.raises(InputFileError, match="row 2: not a JSON object but list"):
        read_manifest(manifest)


def test_a_folder_serves_as_a_manifest_as_the_bundle_folder_run_does(sample_data, tmp_path) -> None:
    from medsam.monai import find_cases

    for name in ("p1", "p2", "p3"):
        shutil.copy(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz", tmp_path / f"{name}.nii.gz")
    (tmp_path / "p1.prompts.json").write_text("{}")
    (tmp_path / "p3.prompts.json").write_text("{}")
    (tmp_path / "p1_mask.nii.gz").write_bytes(b"an earlier output")
    got = read_manifest(tmp_path)
    assert [(c.input.name, Path(c.prompts).name, c.output) for c in got] == [
        ("p1.nii.gz", "p1.prompts.json", "p1_mask.nii.gz"), ("p3.nii.gz", "p3.prompts.json", "p3_mask.nii.gz"),
    ]
    bundle = find_cases(tmp_path, exclude_suffixes=["_mask.nii.gz"])
    assert [Path(c["image"]).name for c in bundle] == [c.input.name for c in got]


def test_a_second_batch_on_the_same_folder_is_refused(tmp_path) -> None:
    with Journal(tmp_path) as journal:
        journal.record("x.nii.gz", "pending")
        with pytest.raises(InputFileError, match="another medsam batch is writing to this folder"):
            Journal(tmp_path).__enter__()
    # a line cut short by a kill is ignored; the records before it stand
    with open(tmp_path / JOURNAL_NAME, "a") as fh:
        fh.write('{"case": "y.nii.gz", "sta')
    with Journal(tmp_path) as journal:
        assert set(journal.state) == {"x.nii.gz"}
        journal.record("y.nii.gz", "done")
    with Journal(tmp_path) as journal:
        assert journal.state["y.nii.gz"]["status"] == "done"


def test_a_worker_killed_mid_case_fails_only_that_case(cases, tmp_path) -> None:
    """SIGKILL the worker process (as the kernel's OOM killer would) while it runs the first
    case: that case fails with the worker's fate, a new worker runs the next one."""
    manifest = tmp_path / "two.csv"
    rows = (cases.read_text().splitlines())[:3]  # header, a_liver, b_spleen
    manifest.write_text("\n".join(rows) + "\n")
    shutil.copy(cases.parent / "ct_a.nii.gz", tmp_path)
    shutil.copy(cases.parent / "a.prompts.json", tmp_path)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "medsam", "batch", str(manifest), "-o", str(out), "--workers", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.monotonic() + 300
    killed = None
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        journal = out / JOURNAL_NAME
        if journal.is_file() and _journal(out):  # the first case has been sent to the worker
            pids = [int(p) for p in children.read_text().split()]
            for pid in pids:  # the worker, not the resource tracker (it has no 'spawn_main')
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
        time.sleep(0.05)
    _, err = proc.communicate(timeout=300)
    assert killed is not None and proc.returncode == 3, err[-2000:]
    rows = {r["case"]: r for r in _results(out)}
    assert rows["a_liver.nii.gz"]["status"] == "failed"
    assert "the worker process died, killed by signal 9 (out of memory?)" in rows["a_liver.nii.gz"]["error"]
    assert rows["b_spleen.nrrd"]["status"] == "done"
    assert not (out / "a_liver.nii.gz").exists()
    summary = run_batch(manifest, out, workers=1, quiet=True, retry_failed=True)
    assert (summary.done, summary.skipped, summary.failed) == (1, 1, 0)
