"""`medsam segment` end to end on a real CT sub-volume, and its bad-input behaviour."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medsam.cli import main
from medsam.io import load_volume
from medsam.metrics import dice
from medsam.prompts import box_from_mask

K0, K1 = 20, 26  # slices of example_ct_sm kept in the test input (liver at its largest)


@pytest.fixture(scope="module")
def ct_file(sample_data, tmp_path_factory):
    """A real 6-slice CT sub-volume written as NIfTI (geometry kept by SimpleITK slicing)."""
    folder = tmp_path_factory.mktemp("cli")
    img = sitk.ReadImage(str(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"))
    seg = sitk.ReadImage(str(sample_data / "totalsegmentator" / "example_seg.nii.gz"))
    sitk.WriteImage(img[:, :, K0:K1], str(folder / "ct.nii.gz"))
    ref = sitk.GetArrayFromImage(seg[:, :, K0:K1]) == 5
    return folder / "ct.nii.gz", ref


def _liver_box(ref, k=3):
    return ",".join(str(int(v)) for v in box_from_mask(ref[k]))


def test_segment_box_writes_mask_with_input_geometry_and_sidecar(ct_file, tmp_path, capsys):
    ct, ref = ct_file
    out = tmp_path / "liver.nii.gz"
    rc = main(["segment", str(ct), "-o", str(out), "--box", f"3:{_liver_box(ref)}",
               "--name", "liver", "--device", "cpu", "--quiet"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "liver" in text and "mL" in text and str(out) in text
    src, res = nib.load(str(ct)), nib.load(str(out))
    np.testing.assert_allclose(res.affine, src.affine, atol=1e-4)
    assert res.shape == src.shape and res.get_data_dtype() == np.uint8
    labels = load_volume(out).array
    assert dice(labels == 1, ref) > 0.9  # measured 0.95
    side = json.loads((tmp_path / "liver.nii.gz.json").read_text())
    assert side["model"] == "litemedsam" and side["objects"][0]["name"] == "liver"
    assert side["inference"] == {"backend": "onnxruntime", "precision": "fp32", "device": "cpu"}
    assert sorted(side["confidence"]["1"]["slices"], key=int) == [str(k) for k in range(6)]
    assert side["objects"][0]["volume_ml"] == pytest.approx((labels == 1).sum() * 27 / 1000, rel=1e-3)

    # measurements beside the mask, in the sidecar, and again from `medsam measure`
    table = (tmp_path / "liver.nii.gz.measurements.csv").read_text()
    [row] = list(csv.DictReader(io.StringIO(table)))
    image = load_volume(ct)
    assert row["name"] == "liver" and float(row["volume_ml"]) == pytest.approx(side["objects"][0]["volume_ml"], abs=0.01)
    assert float(row["hu_mean"]) == pytest.approx(image.array[labels == 1].mean(), abs=0.05)
    assert float(row["hu_mean"]) == pytest.approx(image.array[ref].mean(), abs=5)  # the reference liver's HU
    assert side["measurements"][0]["long_axis_mm"] == pytest.approx(float(row["long_axis_mm"]), abs=0.01)
    capsys.readouterr()
    assert main(["measure", str(out), "--image", str(ct), "-o", str(tmp_path / "m.csv")]) == 0
    assert (tmp_path / "m.csv").read_text() == table
    assert "liver" in capsys.readouterr().out
    assert main(["measure", str(out), "--image", str(ct), "-o", str(tmp_path / "m.csv")]) == 2  # no overwrite
    assert "already exists" in capsys.readouterr().err

    # a second run refuses to overwrite (exit 2) and leaves the file as it was
    before = out.read_bytes()
    rc = main(["segment", str(ct), "-o", str(out), "--box", f"3:{_liver_box(ref)}", "--device", "cpu"])
    assert rc == 2
    assert "already exists" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_backend_choice_gives_the_same_mask(ct_file, tmp_path, capsys):
    """--backend reference and the default engine write the same liver; bad combos exit 2."""
    ct, ref = ct_file
    masks = []
    for backend in ("reference", "torch"):
        out = tmp_path / f"{backend}.nii.gz"
        assert main(["segment", str(ct), "-o", str(out), "--box", f"3:{_liver_box(ref)}",
                     "--device", "cpu", "--quiet", "--backend", backend]) == 0
        side = json.loads((tmp_path / f"{backend}.nii.gz.json").read_text())
        assert side["inference"]["backend"] == backend
        masks.append(load_volume(out).array == 1)
    assert dice(masks[0], masks[1]) >= 0.995
    capsys.readouterr()
    bad = tmp_path / "bad.nii.gz"
    assert main(["segment", str(ct), "-o", str(bad), "--box", f"3:{_liver_box(ref)}",
                 "--backend", "onnxruntime", "--precision", "bf16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs the 'torch' or 'compile' backend" in err[0]
    assert not bad.exists()


def test_world_prompts_equal_voxel_prompts(ct_file, tmp_path):
    ct, ref = ct_file
    vol = load_volume(ct)
    x0, y0, x1, y1 = box_from_mask(ref[3])
    corners = vol.index_to_world([[x0, y0, 3], [x1, y1, 3]], space="ras").tolist()
    centre = vol.index_to_world([[(x0 + x1) / 2, (y0 + y1) / 2, 3]], space="ras").tolist()
    (tmp_path / "p.json").write_text(json.dumps({"space": "ras", "objects": [
        {"label": 4, "name": "liver", "prompts": [{"box": corners}, {"points": centre, "point_labels": [1]}]}]}))
    a, b = tmp_path / "world.nrrd", tmp_path / "voxel.nrrd"
    assert main(["segment", str(ct), "-o", str(a), "--prompts", str(tmp_path / "p.json"),
                 "--no-propagate", "--device", "cpu", "--quiet"]) == 0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    assert main(["segment", str(ct), "-o", str(b), "--box", f"3:{x0:g},{y0:g},{x1:g},{y1:g}",
                 "--point", f"3:{cx:g},{cy:g},1", "--label", "4", "--no-propagate", "--device", "cpu",
                 "--quiet"]) == 0
    la, lb = load_volume(a).array, load_volume(b).array
    assert la.max() == 4 and (la[3] == 4).sum() > 500
    np.testing.assert_array_equal(la, lb)
    assert not la[[0, 1, 2, 4, 5]].any()  # --no-propagate: only the prompted slice


def _json_prompts(tmp_path, obj):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps({"space": obj.pop("space", "voxel"), "objects": [obj]}))
    return ["--prompts", str(p)]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--box", "3:10,10,500,20"], "outside"),
        (["--box", "3:40,40,20,20"], "inverted"),
        (["--box", "9:10,10,20,20"], "slice 9 is out of range"),
        (["--point", "2:10,10,7"], "point_labels must be 1"),
        (["--box", "3:10,10"], "expected 4 numbers"),
        ([], "no prompts"),
        (["--box", "3:10,10,20,20", "--label", "0"], "label must be an integer in 1..65535"),
        ("json:unknown-key", "unknown prompt keys"),
        ("json:empty", "'prompts' must be a non-empty list"),
        ("json:off-plane", "off every slice plane"),
    ],
)
def test_bad_prompts_exit_2_before_model_work(ct_file, tmp_path, monkeypatch, capsys, extra, message):
    ct, _ = ct_file
    import medsam.volume

    def no_model(*a, **k):
        raise AssertionError("the model must not be loaded for bad prompts")

    monkeypatch.setattr(medsam.volume, "load_model", no_model)
    if extra == "json:unknown-key":
        extra = _json_prompts(tmp_path, {"label": 1, "prompts": [{"slice": 1, "bx": [1, 1, 2, 2]}]})
    elif extra == "json:empty":
        extra = _json_prompts(tmp_path, {"label": 1, "prompts": []})
    elif extra == "json:off-plane":
        extra = _json_prompts(tmp_path, {"space": "lps", "label": 1, "prompts": [{"points": [[0, 0, 9999]]}]})
    out = tmp_path / "m.nii.gz"
    rc = main(["segment", str(ct), "-o", str(out), *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_bad_files_exit_2(tmp_path, ct_file, capsys):
    ct, _ = ct_file
    assert main(["segment", str(tmp_path / "nope.nii.gz"), "-o", str(tmp_path / "o.nii.gz"), "--box", "0:1,1,2,2"]) == 2
    assert "nope.nii.gz: no such file" in capsys.readouterr().err
    assert main(["segment", str(ct), "-o", str(tmp_path / "o.png"), "--box", "0:1,1,2,2"]) == 2
    assert "cannot write masks" in capsys.readouterr().err


def test_cli_entry_point_exit_code(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "medsam", "segment", str(tmp_path / "missing"), "-o", str(tmp_path / "o.nii.gz")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("no such file or folder")
    models = subprocess.run([sys.executable, "-m", "medsam", "models"], capture_output=True, text=True, timeout=120)
    assert models.returncode == 0 and "litemedsam" in models.stdout and "sam_vit_h" in models.stdout


def test_outputs_get_umask_mode_and_one_sidecar_per_file(ct_file, tmp_path, capsys):
    """Under umask 022 the mask and its sidecar are 0644; .nrrd and .nii.gz keep separate
    sidecars named from the whole file name; a stale sidecar without its mask is replaced."""
    import os
    import stat

    from medsam import __version__

    ct, ref = ct_file
    (tmp_path / "out.nrrd.json").write_text("stale")  # left from a run whose mask was deleted
    old = os.umask(0o022)
    try:
        for name in ("out.nii.gz", "out.nrrd"):
            assert main(["segment", str(ct), "-o", str(tmp_path / name), "--box", f"3:{_liver_box(ref)}",
                         "--no-propagate", "--device", "cpu", "--quiet"]) == 0
    finally:
        os.umask(old)
    capsys.readouterr()
    for name in ("out.nii.gz", "out.nrrd"):
        for path in (tmp_path / name, tmp_path / f"{name}.json"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o644, path
        side = json.loads((tmp_path / f"{name}.json").read_text())
        assert side["output"] == str(tmp_path / name) and side["medsam_version"] == __version__
    assert not (tmp_path / "out.json").exists()


def test_version_flag():
    from medsam import __version__

    run = subprocess.run([sys.executable, "-m", "medsam.cli", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == f"medsam {__version__}"


def test_progress_bar_only_on_a_terminal(ct_file, tmp_path):
    """The embed+propagate bar shows when stderr is a terminal (a real pseudo-terminal here),
    and not when it is a pipe or with --quiet."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    ct, ref = ct_file
    cmd = [sys.executable, "-m", "medsam", "segment", str(ct), "--box", f"3:{_liver_box(ref)}", "--device", "cpu",
           "--no-propagate"]
    piped = subprocess.run([*cmd, "-o", str(tmp_path / "a.nii.gz")], capture_output=True, text=True, timeout=300)
    assert piped.returncode == 0 and "embed+propagate" not in piped.stderr and "%|" not in piped.stderr

    for quiet, shown in ((False, True), (True, False)):
        main_fd, term_fd = pty.openpty()
        fcntl.ioctl(term_fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # a terminal 80 wide
        out = tmp_path / f"b{int(quiet)}.nii.gz"
        proc = subprocess.Popen([*cmd, "-o", str(out), *(["--quiet"] if quiet else [])],
                                stdout=subprocess.DEVNULL, stderr=term_fd)
        os.close(term_fd)
        seen = b""
        while True:
            try:
                chunk = os.read(main_fd, 4096)
            except OSError:  # the terminal closed: the run ended
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=300) == 0
        os.close(main_fd)
        assert (b"embed+propagate" in seen) is shown, seen[-500:]


def test_an_unexpected_error_is_one_line_and_exit_1_unless_debug(sample_data, tmp_path) -> None:
    """A full disk (here: a file size limit of 512 bytes) is not the user's input: one line
    naming the error, exit 1, no traceback and no output; --debug shows the traceback."""
    import resource
    import signal
    import subprocess
    import sys

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit raises EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))

    ct = sample_data / "dcmqi_ct3slice" / "ct-3slice"
    for debug in ([], ["--debug"]):
        out = tmp_path / f"mask{len(debug)}.nii.gz"
        proc = subprocess.run(
            [sys.executable, "-m", "medsam", *debug, "segment", str(ct), "--box", "1:60,60,200,200",
             "--no-propagate", "--quiet", "-o", str(out)],
            capture_output=True, text=True, timeout=300, preexec_fn=small_files,
        )
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert not list(tmp_path.glob(f"{out.name}*")) and not list(tmp_path.glob(".tmp-*"))
        if debug:
            assert "Traceback" in proc.stderr
        else:
            [line] = [x for x in proc.stderr.splitlines() if "internal error" in x]
            assert "(run again with --debug for the traceback)" in line and "Traceback" not in proc.stderr
