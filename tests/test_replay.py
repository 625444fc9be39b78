"""Provenance in the sidecar, and `medsam replay` bit for bit on the real model (CPU)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medsam.cli import main
from medsam.io import load_volume


@pytest.fixture(scope="module")
def run(sample_data: Path, tmp_path_factory):
    """A segmentation of a copy of the 3-slice DICOM CT: a box on slice 1 and a second on slice 0."""
    ws = tmp_path_factory.mktemp("replay")
    series = ws / "ct"
    shutil.copytree(sample_data / "dcmqi_ct3slice" / "ct-3slice", series)
    out = ws / "liver.nrrd"
    rc = main(["segment", str(series), "-o", str(out), "--box", "1:80,146,349,365", "--box", "0:81,147,348,364",
               "--name", "liver", "--device", "cpu", "--quiet"])
    assert rc == 0
    return ws, series, out, json.loads((ws / "liver.nrrd.json").read_text())


def test_sidecar_records_provenance(run) -> None:
    ws, series, out, side = run
    files = sorted(series.iterdir())
    assert sorted(e["path"] for e in side["inputs"]) == [str(f.resolve()) for f in files]
    for e in side["inputs"]:
        assert e["sha256"] == hashlib.sha256(Path(e["path"]).read_bytes()).hexdigest()
    [obj] = side["prompts"]["objects"]
    assert side["prompts"]["space"] == "voxel" and obj["name"] == "liver"
    assert [p["slice"] for p in obj["prompts"]] == [0, 1]
    ct = load_volume(series)
    [lps] = side["prompts_lps"]["objects"]
    corner = ct.index_to_world([80, 146, 1])
    np.testing.assert_allclose(lps["prompts"][1]["box"][0], corner, atol=1e-3)  # world LPS mm
    assert side["model"] == "litemedsam" and side["weights"].startswith("litemedsam:")
    assert side["checkpoint"] is None and side["adapter"] is None
    assert side["propagation"]["propagate"] is True and side["propagation"]["score_threshold"] == 0.7
    assert side["inference"] == {"backend": "onnxruntime", "precision": "fp32", "device": "cpu"}
    versions = side["environment"]["versions"]
    assert versions["torch"] and versions["onnxruntime"] and versions["monai"] and versions["medsam-monai"]
    assert side["medsam_version"] == versions["medsam-monai"]


def test_replay_is_identical(run, tmp_path: Path, capsys) -> None:
    ws, series, out, side = run
    again = tmp_path / "again.nii.gz"
    assert main(["replay", str(ws / "liver.nrrd.json"), "-o", str(again), "--quiet"]) == 0
    first, second = load_volume(out), load_volume(again)
    assert first.array.any()
    np.testing.assert_array_equal(second.array, first.array)  # voxel for voxel
    assert second.same_geometry(first)
    new = json.loads((tmp_path / "again.nii.gz.json").read_text())
    assert new["replay_of"] == str((ws / "liver.nrrd.json").resolve())
    assert new["prompts"] == side["prompts"] and new["inputs"] == side["inputs"]
    assert new["confidence"] == side["confidence"]
    assert (tmp_path / "again.nii.gz.measurements.csv").is_file()
    assert "liver" in capsys.readouterr().out


def _replay(sidecar: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsam", "replay", str(sidecar), "-o", str(out)],
                          capture_output=True, text=True)


def test_replay_refuses_changed_inputs_and_weights(run, tmp_path: Path) -> None:
    ws, series, out, side = run
    # a changed input file: refused before any model work, one line, nothing written
    changed = tmp_path / "ct"
    shutil.copytree(series, changed)
    record = json.loads((ws / "liver.nrrd.json").read_text())
    record["input_path"] = str(changed)
    for e in record["inputs"]:
        e["path"] = str(changed / Path(e["path"]).name)
    victim = changed / Path(record["inputs"][0]["path"]).name
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF  # one pixel bit
    victim.write_bytes(bytes(data))
    sidecar = tmp_path / "changed.json"
    sidecar.write_text(json.dumps(record))
    res = _replay(sidecar, tmp_path / "x.nrrd")
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert f"{victim}: has changed since changed.json was written" in res.stderr
    assert not (tmp_path / "x.nrrd").exists()

    # other weights than recorded
    record = json.loads((ws / "liver.nrrd.json").read_text())
    record["weights"] = "litemedsam:0000000000000000"
    sidecar = tmp_path / "weights.json"
    sidecar.write_text(json.dumps(record))
    res = _replay(sidecar, tmp_path / "y.nrrd")
    assert res.returncode == 2 and "not the recorded litemedsam:0000000000000000" in res.stderr
    assert res.stderr.count("\n") == 1 and not (tmp_path / "y.nrrd").exists()

    # a missing input, and a file that is not a sidecar
    record = json.loads((ws / "liver.nrrd.json").read_text())
    record["inputs"][0]["path"] = str(tmp_path / "gone.dcm")
    sidecar.write_text(json.dumps(record))
    res = _replay(sidecar, tmp_path / "z.nrrd")
    assert res.returncode == 2 and "gone.dcm: recorded in weights.json is missing" in res.stderr
    res = _replay(ws / "liver.nrrd.measurements.csv", tmp_path / "z.nrrd")
    assert res.returncode == 2 and "is not a JSON sidecar" in res.stderr


def test_mask_prompts_round_trip_and_refusals() -> None:
    """Painted slices travel as run-length masks in the prompts record."""
    from medsam.errors import PromptError
    from medsam.io.volume import Volume
    from medsam.mask_rle import mask_to_rle
    from medsam.prompts import ObjectPrompts, PromptSet, SlicePrompt, parse_prompts
    from medsam.provenance import prompts_record

    vol = Volume(np.zeros((4, 6, 7), np.int16))
    mask = np.zeros((6, 7), bool)
    mask[0, 0:3] = mask[2:5, 4:7] = True
    assert mask_to_rle(mask) == {"size": [6, 7], "counts": [0, 3, 15, 3, 4, 3, 4, 3, 7]}
    pset = PromptSet((ObjectPrompts(2, "lesion", (SlicePrompt(1, mask=mask), SlicePrompt(3, box=(1, 1, 4, 4)))),))
    record = prompts_record(pset)
    back = parse_prompts(record, vol)
    np.testing.assert_array_equal(back.objects[0].prompts[0].mask, mask)
    assert back.objects[0].prompts[1].box == (1, 1, 4, 4)
    assert [p.get("box") for p in prompts_record(pset, vol)["objects"][0]["prompts"]][0][0] == [1, 1, 3]  # LPS
    bad = {"space": "voxel", "objects": [{"label": 1, "prompts": [{"slice": 0, "mask": {"size": [6, 6], "counts": [36]}}]}]}
    with pytest.raises(PromptError, match=r"mask size \[6, 6\] is not the slice's \[6, 7\]"):
        parse_prompts(bad, vol)
    bad["objects"][0]["prompts"][0]["mask"] = {"size": [6, 7], "counts": [40]}
    with pytest.raises(PromptError, match="summing to 42"):
        parse_prompts(bad, vol)


def test_cli_sidecar_history(run) -> None:
    """A CLI run's history: the prompts as applied, then one propagation of the object."""
    side = run[3]
    assert [(e["action"], e.get("slice")) for e in side["history"]] == [("prompt", 0), ("prompt", 1), ("propagate", None)]
    assert side["history"][1]["prompt"]["box"] == [80.0, 146.0, 349.0, 365.0]


def test_session_history_keeps_corrections_in_order(sample_data: Path) -> None:
    """An interactive session: a box, propagation, a negative click on another slice, its
    re-propagation, a second click on the first slice. The sidecar lists them in that order,
    in voxel and in LPS mm, and each LPS point maps back to its voxel."""
    from medsam.provenance import session_record
    from medsam.volume import VolumePredictor

    ct = load_volume(sample_data / "dcmqi_ct3slice" / "ct-3slice")
    vp = VolumePredictor(device="cpu")
    vp.init_volume(ct)
    vp.add_prompt(1, 1, box=(80, 146, 349, 365), name="liver")
    list(vp.propagate())
    vp.add_prompt(2, 1, points=[(300, 200)], point_labels=[0])  # a correction on slice 2
    list(vp.propagate(start_slice=2))
    vp.add_prompt(1, 1, points=[(200, 250)], point_labels=[1])  # and one on slice 1
    vp.remove_prompt(2, 1)
    record = session_record(vp)
    steps = [(e["step"], e["action"], e.get("slice")) for e in record["history"]]
    assert steps == [(1, "prompt", 1), (2, "propagate", None), (3, "prompt", 2), (4, "propagate", 2),
                     (5, "prompt", 1), (6, "remove_prompt", 2)]
    vp.reset()
    assert vp.session.history[-1].action == "reset" and not vp.session.objects
    h = record["history"]
    # the click corrects slice 2's propagated mask, which the prompt keeps as its base
    assert {k: v for k, v in h[2]["prompt"].items() if k != "mask"} == {
        "slice": 2, "points": [[300.0, 200.0]], "point_labels": [0]}
    assert sum(h[2]["prompt"]["mask"]["counts"]) == 512 * 512 and len(h[2]["prompt"]["mask"]["counts"]) > 2
    # the click on slice 1 adds to its box: the event holds the slice's whole prompt
    assert h[4]["prompt"]["box"] == [80.0, 146.0, 349.0, 365.0] and h[4]["prompt"]["points"] == [[200.0, 250.0]]
    np.testing.assert_allclose(ct.world_to_index(h[2]["prompt_lps"]["points"]), [[300, 200, 2]], atol=1e-3)
    assert h[1]["direction"] == "both"
    json.dumps(record)  # the whole record is JSON
