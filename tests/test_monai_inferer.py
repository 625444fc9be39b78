"""SamSliceInferer, SamInferenced and SamNetwork with real MONAI, real scans and the real LiteMedSAM.

Sub-volumes of a few slices keep the CPU time down (the encoder takes seconds per slice here).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    EnsureChannelFirstd,
    Invertd,
    LoadImage,
    LoadImaged,
    Orientationd,
    SaveImaged,
)

from medsam.io import load_volume
from medsam.metrics import dice
from medsam.monai import (
    PromptsFromLabeld,
    SamInferenced,
    SamIntensityd,
    SamNetwork,
    SamSliceInferer,
)
from medsam.predictor import SlicePredictor, embed_images
from medsam.prompts import box_from_mask
from medsam.volume import VolumePredictor

MR_LIVER = 5  # "total_mr" label map
CT_LIVER, CT_SPLEEN = 5, 1


def crop_file(src: Path, dst: Path, k0: int, k1: int) -> Path:
    """Slices k0..k1-1 of a NIfTI file, written with the matching geometry (SimpleITK slicing)."""
    sitk.WriteImage(sitk.ReadImage(str(src))[:, :, k0:k1], str(dst))
    return dst


@pytest.fixture(scope="module")
def network(litemedsam):
    return SamNetwork(litemedsam)


@pytest.fixture(scope="module")
def mr_case(sample_data, tmp_path_factory):
    """The LPS-oriented MR, slices 13..18 (liver large on all six), and its reference labels."""
    d = tmp_path_factory.mktemp("mr")
    ts = sample_data / "totalsegmentator"
    image = crop_file(ts / "example_mr_sm.nii.gz", d / "mr.nii.gz", 13, 19)
    label = crop_file(ts / "example_seg_mr.nii.gz", d / "mr_label.nii.gz", 13, 19)
    return image, label


@pytest.fixture(scope="module")
def ct_case(sample_data, tmp_path_factory):
    """The RAS CT, slices 24..26 (liver and spleen), and its reference labels."""
    d = tmp_path_factory.mktemp("ct")
    ts = sample_data / "totalsegmentator"
    image = crop_file(ts / "example_ct_sm.nii.gz", d / "ct.nii.gz", 24, 27)
    label = crop_file(ts / "example_seg.nii.gz", d / "ct_label.nii.gz", 24, 27)
    return image, label


def test_pipeline_orientation_invert_save(mr_case, network, tmp_path):
    """LoadImaged -> Orientationd(RAS) -> SamIntensityd -> SamInferenced -> Invertd -> SaveImaged."""
    image, label = mr_case
    keys = ["image", "label"]
    pre = Compose(
        [
            LoadImaged(keys, image_only=True),
            EnsureChannelFirstd(keys),
            Orientationd(keys, axcodes="RAS"),
            SamIntensityd("image"),
            PromptsFromLabeld("label", label_ids=[MR_LIVER], names={MR_LIVER: "liver"}),
            SamInferenced("image", prompts_key="prompts", output_keys="pred", model=network),
        ]
    )
    post = Compose(
        [
            Invertd("pred", transform=pre, orig_keys="image", nearest_interp=True),
            SaveImaged(
                "pred", output_dir=str(tmp_path), output_postfix="mask", separate_folder=False,
                output_dtype=np.uint8, resample=False, print_log=False,
            ),
        ]
    )
    data = pre({"image": str(image), "label": str(label)})
    pred = data["pred"]
    assert isinstance(pred, MetaTensor) and pred.shape == data["image"].shape
    assert torch.equal(pred.affine, data["image"].affine)  # the inferer keeps the input's geometry
    assert data["prompts"]["objects"][0]["name"] == "liver"
    post(data)

    out = nib.load(tmp_path / "mr_mask.nii.gz")
    ref = nib.load(label)
    np.testing.assert_allclose(out.affine, nib.load(image).affine, atol=1e-4)
    assert nib.aff2axcodes(out.affine) == ("L", "P", "S")  # back in the file's orientation
    assert out.shape == ref.shape
    mask = np.asarray(out.dataobj) == MR_LIVER
    ref_mask = np.asarray(ref.dataobj) == MR_LIVER
    # measured: 0.77 (box on the largest slice, propagated through the other five)
    assert dice(mask, ref_mask) > 0.7
    # and the same mask through medsam's own reader: the organ sits where the reference says
    assert dice(load_volume(tmp_path / "mr_mask.nii.gz").array == MR_LIVER, load_volume(label).array == MR_LIVER) > 0.7


def test_inferer_equals_volume_predictor(ct_case, network, litemedsam):
    """The same prompts give exactly the masks of VolumePredictor on medsam's own Volume."""
    image, label = ct_case
    ref = load_volume(label).array
    boxes = {1: box_from_mask(ref[1] == CT_LIVER), 2: box_from_mask(ref[1] == CT_SPLEEN)}
    prompts = {
        "space": "voxel",
        "objects": [
            {"label": 1, "name": "liver", "prompts": [{"slice": 1, "box": list(boxes[1])}]},
            {"label": 2, "name": "spleen", "prompts": [{"slice": 1, "box": list(boxes[2])}]},
        ],
    }
    img = LoadImage(image_only=True, ensure_channel_first=True)(str(image))
    inferer = SamSliceInferer(window="soft_tissue", sw_batch_size=2)
    out = inferer(img[None], network, prompts=prompts)
    assert out.shape == (1, 1, *img.shape[1:]) and out.dtype == torch.uint8
    np.testing.assert_array_equal(out.affine.numpy(), img.affine.numpy())

    vp = VolumePredictor(litemedsam, batch_size=2)
    vp.init_volume(load_volume(image), "soft_tissue")
    vp.add_prompt(1, 1, box=boxes[1], name="liver")
    vp.add_prompt(1, 2, box=boxes[2], name="spleen")
    vp.run()
    expected = vp.to_labels()  # (Z, Y, X)
    got = out[0, 0].numpy().transpose(2, 1, 0)  # MONAI (i, j, k) -> (k, j, i)
    np.testing.assert_array_equal(got, expected)
    assert set(np.unique(got)) == {0, 1, 2}
    assert inferer.last_confidence[0]["1"]["name"] == "liver"
    assert dice(got == 1, ref == CT_LIVER) > 0.9 and dice(got == 2, ref == CT_SPLEEN) > 0.9


def test_inferer_answers_one_click(ct_case, network):
    """A single positive click per organ through the MONAI inferer (LiteMedSAM answers it
    with a box, medsam.click_prompts): both organs are found on the 3-slice crop."""
    from medsam.prompt_sim import interior_point

    image, label = ct_case
    ref = load_volume(label).array
    prompts = {"space": "voxel", "objects": [
        {"label": i, "name": name, "prompts": [{"slice": 1, "points": [list(interior_point(ref[1] == lab))]}]}
        for i, (name, lab) in enumerate((("liver", CT_LIVER), ("spleen", CT_SPLEEN)), 1)
    ]}
    img = LoadImage(image_only=True, ensure_channel_first=True)(str(image))
    out = SamSliceInferer(window="soft_tissue", sw_batch_size=2)(img[None], network, prompts=prompts)
    got = out[0, 0].numpy().transpose(2, 1, 0)
    assert dice(got == 1, ref == CT_LIVER) > 0.7 and dice(got == 2, ref == CT_SPLEEN) > 0.7


def test_inferer_rejects_bad_input(ct_case, network):
    image, _ = ct_case
    img = LoadImage(image_only=True, ensure_channel_first=True)(str(image))
    prompts = {"objects": [{"label": 1, "prompts": [{"slice": 1, "box": [40, 30, 100, 80]}]}]}
    with pytest.raises(ValueError, match=r"\[B, C, H, W, D\]"):
        SamSliceInferer()(img, network, prompts=prompts)
    with pytest.raises(ValueError, match="one per item"):
        SamSliceInferer()(torch.stack([img, img]), network, prompts=prompts)
    with pytest.raises(ValueError, match="SamIntensityd"):  # raw HU with the default "prewindowed"
        SamSliceInferer()(img[None], network, prompts=prompts)
    with pytest.raises(ValueError, match="outside"):
        bad = {"objects": [{"label": 1, "prompts": [{"slice": 1, "box": [40, 30, 500, 80]}]}]}
        SamSliceInferer(window="soft_tissue")(img[None], network, prompts=bad)
    with pytest.raises(TypeError, match="SamNetwork"):
        SamSliceInferer(window="soft_tissue")(img[None], torch.nn.Identity(), prompts=prompts)
    with pytest.raises(ValueError, match="unknown window"):
        SamSliceInferer(window="sof_tissue")
    empty = SamSliceInferer(window="soft_tissue")(img[None], network, prompts={"objects": []})
    assert empty.shape == (1, 1, *img.shape[1:]) and not empty.any()  # e.g. a label absent from a case
    from monai.data import list_data_collate

    batch = list_data_collate([{"image": img}, {"image": img}])["image"]  # as a DataLoader gives it
    out = SamSliceInferer(window="soft_tissue")(batch, network, prompts=[{"objects": []}] * 2)
    assert out.shape == (2, 1, *img.shape[1:]) and out.is_batch and out.affine.shape == (2, 4, 4)


def test_sam_network_trainable_and_matches_predictor(ct_case, litemedsam):
    """[N, C, H, W] + K boxes -> [N, K, H, W] logits, differentiable, equal to SlicePredictor's masks."""
    image, label = ct_case
    vol = load_volume(image)
    ref = load_volume(label).array[1]
    from medsam.intensity import apply_window, resolve_window

    slice_img = torch.from_numpy(apply_window(vol.array[1], resolve_window(vol, "soft_tissue")))[None, None]
    boxes = torch.tensor([[box_from_mask(ref == CT_LIVER), box_from_mask(ref == CT_SPLEEN)]])  # [1, 2, 4]
    net = SamNetwork(litemedsam)
    for p in net.model.image_encoder.parameters():  # only the decoder is trained here (fast on CPU)
        p.requires_grad_(False)
    logits = net(slice_img, boxes=boxes)
    assert logits.shape == (1, 2, *slice_img.shape[-2:]) and logits.requires_grad
    logits.sum().backward()
    grads = [p.grad for p in net.model.mask_decoder.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
    for p in net.model.image_encoder.parameters():
        p.requires_grad_(True)
    net.model.zero_grad(set_to_none=True)

    predictor = SlicePredictor(litemedsam)
    predictor.set_embedding(embed_images(litemedsam, slice_img), tuple(slice_img.shape[-2:]))
    for n in range(2):
        expected = predictor.predict(box=boxes[0, n].numpy()).mask
        np.testing.assert_array_equal((logits[0, n] > 0).numpy(), expected)
    assert dice(expected, ref == CT_SPLEEN) > 0.9


def test_sam_network_without_gradients_runs_the_fast_engine(litemedsam, ct_case):
    """Under no_grad (as MONAI inferers run) the default backend matches the reference path."""
    image, label = ct_case
    vol = load_volume(image)
    ref = load_volume(label).array[1]
    from medsam.intensity import apply_window, resolve_window

    slice_img = torch.from_numpy(apply_window(vol.array[1], resolve_window(vol, "soft_tissue")))[None, None]
    boxes = torch.tensor([[box_from_mask(ref == CT_LIVER), box_from_mask(ref == CT_SPLEEN)]])
    with pytest.raises(ValueError, match="backend must be one of"):
        SamNetwork(litemedsam, backend="tensorrt")
    with torch.no_grad():
        fast = SamNetwork(litemedsam)(slice_img, boxes=boxes)
        slow = SamNetwork(litemedsam, backend="reference")(slice_img, boxes=boxes)
    assert not fast.requires_grad and fast.shape == slow.shape == (1, 2, *slice_img.shape[-2:])
    assert float((fast - slow).abs().max()) < 0.05
    for n in range(2):
        assert dice((fast[0, n] > 0).numpy(), (slow[0, n] > 0).numpy()) >= 0.995


def test_sam_network_adapter(litemedsam, tmp_path):
    """With the adapters package, ``adapter=`` goes to ``adapters.load_adapter``; without it, a clear error."""
    from medsam.monai.network import adapters_available

    if adapters_available():
        with pytest.raises((FileNotFoundError, ValueError)):  # delegated: the file is checked there
            SamNetwork(litemedsam, adapter=tmp_path / "missing.safetensors")
    else:
        with pytest.raises(NotImplementedError, match="adapters package"):
            SamNetwork(litemedsam, adapter=tmp_path / "lora.safetensors")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        SamNetwork(litemedsam)(torch.rand(1, 2, 8, 8), boxes=torch.zeros(1, 1, 4))
    with pytest.raises(ValueError, match="together"):
        SamNetwork(litemedsam)(torch.rand(1, 1, 8, 8), points=torch.zeros(1, 1, 1, 2))
