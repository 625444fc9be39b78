"""The bad-input corpus (``tests/corpus/generate.py``) through every front end.

Each case has one expected outcome: an error (one line, naming the file and the problem,
exit 2 and nothing written), a warning plus a correct result, or a clean result. The
same file gives the same outcome through ``load_volume``, ``medsam segment``, MONAI's
``LoadVolume`` and the napari reader. Each test runs every case and reports every miss.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from corpus.generate import Case, build_corpus  # noqa: E402

from medsam.cli import main  # noqa: E402
from medsam.errors import InputFileError  # noqa: E402
from medsam.io import load_volume  # noqa: E402

FILE_CATEGORIES = ("dicom", "nifti", "size", "picture")


@pytest.fixture(scope="module")
def corpus(sample_data: Path, tmp_path_factory) -> tuple[Path, list[Case]]:
    root = tmp_path_factory.mktemp("corpus")
    return root, build_corpus(root, sample_data)


def _file_cases(cases: list[Case]) -> list[Case]:
    return [c for c in cases if c.category in FILE_CATEGORIES]


def _check_volume(case: Case, vol) -> list[str]:
    misses = []
    if "shape" in case.expect and list(vol.shape) != case.expect["shape"]:
        misses.append(f"shape {list(vol.shape)} != {case.expect['shape']}")
    if "spacing" in case.expect and not np.allclose(vol.spacing, case.expect["spacing"], atol=1e-3):
        misses.append(f"spacing {vol.spacing} != {case.expect['spacing']}")
    if "dtype" in case.expect and str(vol.array.dtype) != case.expect["dtype"]:
        misses.append(f"dtype {vol.array.dtype} != {case.expect['dtype']}")
    return misses


def _report(misses: dict[str, list[str]]) -> None:
    bad = {k: v for k, v in misses.items() if v}
    assert not bad, "\n".join(f"{k}: {'; '.join(v)}" for k, v in bad.items())


def test_corpus_covers_the_issue(corpus) -> None:
    _, cases = corpus
    assert len(cases) >= 30
    counts = {cat: sum(c.category == cat for c in cases) for cat in ("dicom", "nifti", "size", "picture", "prompts", "checkpoint")}
    assert all(counts.values()), counts
    assert {c.load for c in cases} == {"error", "warning", "ok"}


def test_load_volume(corpus, caplog) -> None:
    root, cases = corpus
    misses: dict[str, list[str]] = {}
    for case in _file_cases(cases):
        m = misses.setdefault(case.name, [])
        path = root / case.input
        caplog.clear()
        with caplog.at_level(logging.WARNING), _record_warnings() as caught:
            try:
                vol = load_volume(path)
            except InputFileError as exc:
                msg = str(exc)
                if case.load != "error":
                    m.append(f"unexpected error: {msg}")
                elif case.message not in msg or "\n" in msg or path.name not in msg:
                    m.append(f"error {msg!r} lacks {case.message!r}, the file name, or is not one line")
                continue
        if case.load == "error":
            m.append(f"loaded, but expected the error {case.message!r}")
            continue
        said = caplog.text + "".join(str(w.message) for w in caught)
        if case.load == "warning" and case.message not in said:
            m.append(f"no warning {case.message!r}; got {said!r}")
        if case.load == "ok" and said.strip():
            m.append(f"unexpected warning {said!r}")
        m += _check_volume(case, vol)
    _report(misses)


class _record_warnings:  # noqa: N801 - used as a context manager, like warnings.catch_warnings
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings(record=True)
        caught = self._cm.__enter__()
        warnings.simplefilter("always")
        return caught

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_segment_cli(corpus, tmp_path, monkeypatch, capsys, caplog) -> None:
    """``medsam segment`` on every case: errors exit 2 with one line and write nothing."""
    root, cases = corpus
    monkeypatch.chdir(root)
    misses: dict[str, list[str]] = {}
    for case in cases:
        m = misses.setdefault(case.name, [])
        out_dir = tmp_path / case.name
        out_dir.mkdir()
        out = out_dir / "mask.nii.gz"
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            # the torch engine: the corpus tests input handling, and each run loads a fresh
            # model, which the ONNX engine would export again (seconds per case)
            rc = main(["segment", case.input, "-o", str(out), "--no-propagate", "--device", "cpu",
                       "--backend", "torch", *case.args])
        err = capsys.readouterr().err
        said = err + caplog.text
        if case.segment_outcome == "error":
            lines = err.strip().splitlines()
            if rc != 2:
                m.append(f"exit {rc}, expected 2")
            if len(lines) != 1 or case.segment_text not in lines[0]:
                m.append(f"stderr {err!r} is not one line with {case.segment_text!r}")
            if any(out_dir.iterdir()):
                m.append(f"wrote {sorted(p.name for p in out_dir.iterdir())}")
            continue
        if rc != 0:
            m.append(f"exit {rc}: {err.strip()!r}")
            continue
        if not out.exists():
            m.append("no mask written")
        if case.segment_outcome == "warning" and case.segment_text not in said:
            m.append(f"no warning {case.segment_text!r}")
    assert not (root / "payload_ran").exists(), "the pickled payload ran"
    _report(misses)


def test_monai_load_volume(corpus) -> None:
    from medsam.monai import LoadVolume

    root, cases = corpus
    load = LoadVolume()
    misses: dict[str, list[str]] = {}
    for case in _file_cases(cases):
        m = misses.setdefault(case.name, [])
        try:
            img = load(str(root / case.input))
        except InputFileError as exc:
            if case.load != "error" or case.message not in str(exc):
                m.append(f"error {exc}")
            continue
        if case.load == "error":
            m.append("loaded, but expected an error")
            continue
        z, y, x = case.expect.get("shape", [0, 0, 0])[:3]
        if "shape" in case.expect and tuple(img.shape[1:]) != (x, y, z):
            m.append(f"MetaTensor shape {tuple(img.shape)} is not [C, {x}, {y}, {z}]")
    _report(misses)


def test_napari_reader(corpus) -> None:
    """The reader declines (returns None) what medsam refuses, and reads the rest."""
    from napari_plugin._reader import get_reader

    root, cases = corpus
    misses: dict[str, list[str]] = {}
    for case in _file_cases(cases):
        m = misses.setdefault(case.name, [])
        if case.input.endswith(".png"):
            continue  # pictures are napari's own reader's
        reader = get_reader(str(root / case.input))
        if case.load == "error":
            if reader is not None:
                m.append("the reader accepted a file medsam refuses")
            continue
        if reader is None:
            m.append("the reader declined")
            continue
        [(data, kwargs, kind)] = reader(str(root / case.input))
        if kind != "image" or ("shape" in case.expect and list(np.shape(data)) != case.expect["shape"]):
            m.append(f"layer {kind} {np.shape(data)}")
    _report(misses)
