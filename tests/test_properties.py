"""Property tests (Hypothesis): prompt parsing, world <-> voxel geometry, intensity windows
and the label writers, on generated inputs rather than a few chosen ones."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from medsam.errors import MedsamError
from medsam.intensity import Window, apply_window
from medsam.io import Volume, load_volume, save_mask
from medsam.prompts import SlicePrompt, parse_box_arg, parse_point_arg, parse_prompts

VOLUME = Volume(np.zeros((3, 16, 20), np.int16))

numbers = st.one_of(st.integers(-50, 50), st.floats(allow_nan=True, allow_infinity=True), st.just("7"))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, st.text(max_size=8)),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=8), inner, max_size=5)),
    max_leaves=20,
)
prompt_like = st.fixed_dictionaries(
    {"slice": numbers, "box": st.lists(numbers, max_size=5), "points": st.lists(st.lists(numbers, max_size=3), max_size=3),
     "point_labels": st.lists(numbers, max_size=3)}
).map(lambda d: {k: v for k, v in d.items() if v != []})
prompts_like = st.fixed_dictionaries(
    {"space": st.sampled_from(["voxel", "lps", "ras", "pixels"]),
     "objects": st.lists(st.fixed_dictionaries({"label": numbers, "prompts": st.lists(prompt_like, max_size=3)}), max_size=3)}
)


tokens = st.one_of(st.sampled_from(["inf", "-inf", "nan", "1e999", ",", ":", " ", "-", "."]),
                   st.integers(-5, 600).map(str), st.floats().map(repr), st.text(max_size=2))


number_text = st.one_of(st.sampled_from(["inf", "-inf", "nan", "1e999", "", "x"]), st.integers(-5, 600).map(str),
                        st.floats().map(repr))
structured = st.tuples(number_text, st.lists(number_text, max_size=5)).map(lambda t: f"{t[0]}:{','.join(t[1])}")


@settings(max_examples=300)
@given(st.one_of(structured, st.lists(tokens, max_size=10).map("".join)))
@example("2:1,1,inf")  # found by the structured strategy: int(inf) raised OverflowError
@example("2:1,1,nan")
def test_cli_prompt_arguments_parse_or_say_why(text: str) -> None:
    """Any ``--box``/``--point`` text is a prompt or a one-line PromptError, nothing else."""
    for parse in (parse_box_arg, parse_point_arg):
        try:
            assert isinstance(parse(text), SlicePrompt)
        except MedsamError as exc:
            assert "\n" not in str(exc)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(prompts_like, json_values))
def test_prompts_json_is_valid_or_refused(data) -> None:
    """Any JSON value, however wrong its types, parses into valid prompts or raises a
    medsam error; a parsed prompt lies on the image, with finite coordinates."""
    data = json.loads(json.dumps(data))  # what a file could hold
    try:
        pset = parse_prompts(data, VOLUME)
    except MedsamError:
        return
    z, h, w = VOLUME.grid_shape
    for obj in pset.objects:
        for p in obj.prompts:
            assert 0 <= p.slice < z
            if p.box is not None:
                x0, y0, x1, y1 = p.box
                assert all(math.isfinite(v) for v in p.box) and 0 <= x0 <= x1 < w and 0 <= y0 <= y1 < h
            for x, y in p.points:
                assert math.isfinite(x) and math.isfinite(y)


def _rotation(q: list[float]) -> np.ndarray:
    a, b, c, d = np.asarray(q) / np.linalg.norm(q)
    return np.array([
        [a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
        [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
        [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d],
    ])


quaternions = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1)
spacings = st.tuples(*[st.floats(0.05, 20)] * 3)
origins = st.tuples(*[st.floats(-1000, 1000)] * 3)


@given(quaternions, spacings, origins, st.tuples(st.integers(0, 511), st.integers(0, 511), st.integers(0, 999)),
       st.booleans())
def test_world_voxel_round_trip(q, spacing, origin, ijk, flip) -> None:
    """voxel -> world -> voxel returns the voxel (well within half a voxel), in LPS and RAS,
    for any spacing, origin and rotation (and reflections)."""
    direction = _rotation(q) @ np.diag([1.0, 1.0, -1.0 if flip else 1.0])
    vol = Volume(np.zeros((1, 1, 1), np.int16), spacing, origin, direction)
    for space in ("lps", "ras"):
        back = vol.world_to_index(vol.index_to_world(ijk, space), space)
        assert np.abs(back - np.asarray(ijk)).max() < 1e-6 * max(1.0, max(ijk))


@given(arrays(st.sampled_from([np.float32, np.float64, np.int16, np.int32]), st.integers(1, 64),
              elements={"allow_nan": False, "allow_infinity": False}),
       st.floats(-1e30, 1e30), st.floats(1e-6, 1e30))
def test_window_output_is_finite_and_in_range(values, low, width) -> None:
    """Any finite input through any window is finite and in [0, 1]."""
    high = low + width
    if not (math.isfinite(high) and high > low):
        return
    out = apply_window(values, Window(low, high))
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert out.min() >= 0.0 and out.max() <= 1.0


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(1, 4), st.integers(2, 9), st.integers(2, 9)), q=quaternions, spacing=spacings,
       origin=origins, seed=st.integers(0, 2**31 - 1))
def test_label_writers_read_back_what_they_wrote(tmp_path_factory, suffix, shape, q, spacing, origin, seed) -> None:
    """A random label map on a random valid grid reads back voxel for voxel, on the same grid."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 6, shape).astype(np.uint8)
    like = Volume(np.zeros(shape, np.int16), spacing, origin, _rotation(q))
    path = tmp_path_factory.mktemp("w") / f"labels{suffix}"
    save_mask(labels, like, path)
    back = load_volume(path)
    np.testing.assert_array_equal(back.array, labels)
    assert back.same_geometry(like, atol=1e-3), (back, like)
