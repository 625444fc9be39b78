"""Intensity: presets, header window, MR percentiles, RGB passthrough, on real scans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsam.intensity import (
    WINDOW_PRESETS,
    Window,
    WindowError,
    apply_window,
    parse_window_spec,
    resolve_window,
)

DATA = Path(__file__).resolve().parent.parent / "sample_data" / "totalsegmentator"


def _read(name: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(DATA / name)))


def test_presets_map_known_hu_values():
    w = resolve_window(None, "soft_tissue")
    assert (w.low, w.high) == (-160.0, 240.0)
    hu = np.array([-1000, -160, 40, 89, 240, 3000], dtype=np.int16)
    out = apply_window(hu, w)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0, 0, 0.5, (89 + 160) / 400, 1, 1], atol=1e-6)
    for name, (level, width) in WINDOW_PRESETS.items():
        w = resolve_window(None, name)
        assert w.level == pytest.approx(level) and w.width == pytest.approx(width)
        assert w.name == name


def test_level_width_string_and_tuple_agree():
    assert parse_window_spec("40,400") == parse_window_spec((40, 400))
    assert parse_window_spec("Soft Tissue").name == "soft_tissue"
    assert resolve_window(None, "-600,1500").low == -1350.0


def test_auto_ct_uses_header_window_then_soft_tissue():
    w = resolve_window(None, None, modality="CT", header_window=(40.0, 300.0))
    assert (w.low, w.high, w.name) == (-110.0, 190.0, "header")
    w = resolve_window(None, "auto", modality="CT", header_window=(None, None))
    assert w.name == "soft_tissue"


def test_real_ct_liver_lands_mid_window():
    ct = _read("example_ct_sm.nii.gz")
    seg = _read("example_seg.nii.gz")
    assert ct.dtype == np.int16
    win = apply_window(ct, resolve_window(ct, "soft_tissue", modality="CT"))
    assert win.dtype == np.float32 and win.min() >= 0 and win.max() <= 1
    liver = float(win[seg == 5].mean())  # liver is ~60-100 HU -> 0.55-0.65 in a 40/400 window
    air = float(win[ct < -900].mean())
    assert 0.5 < liver < 0.7
    assert air == 0.0


def test_mr_percentiles_of_non_background():
    mr = _read("example_mr_sm.nii.gz")
    w = resolve_window(mr, None, modality="MR")
    assert w.name == "percentile"
    fg = mr[mr > mr.min()].astype(np.float64)
    lo, hi = np.percentile(fg, [0.5, 99.5])
    assert w.low == pytest.approx(lo, rel=1e-3) and w.high == pytest.approx(hi, rel=1e-3)
    out = apply_window(mr, w)
    # about 0.5 % of the foreground saturates at each end
    frac_top = float((out[mr > mr.min()] >= 1.0).mean())
    assert 0.001 < frac_top < 0.02


def test_rgb_passthrough():
    rgb = np.random.default_rng(0).integers(0, 256, size=(1, 8, 9, 3), dtype=np.uint8)
    w = resolve_window(rgb, None, modality="RGB")
    assert w.is_rgb
    np.testing.assert_allclose(apply_window(rgb, w), rgb / 255.0, atol=1e-6)


def test_window_keys_distinguish_windows():
    keys = {resolve_window(None, name).key for name in WINDOW_PRESETS}
    assert len(keys) == len(WINDOW_PRESETS)


@pytest.mark.parametrize(
    "spec, match",
    [("lungs", "unknown window 'lungs'"), ("40,x", "LEVEL,WIDTH"), ((40, 0), "width must be positive")],
)
def test_bad_window_specs(spec, match):
    with pytest.raises(WindowError, match=match):
        parse_window_spec(spec)


def test_header_window_missing_is_clear():
    with pytest.raises(WindowError, match="no window"):
        resolve_window(np.zeros((2, 2)), "header", modality="CT", header_window=(None, None))


def test_window_validation():
    with pytest.raises(ValueError, match="low < high"):
        Window(10, 5)
