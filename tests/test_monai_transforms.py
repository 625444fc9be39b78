"""The dictionary transforms: intensity, prompt reading/simulation, metrics; Dataset/DataLoader and ConfigParser."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.bundle import ConfigParser
from monai.data import CacheDataset, DataLoader, MetaTensor
from monai.transforms import Compose, DeleteItemsd, LoadImage, LoadImaged

import medsam.monai as mm
from medsam.intensity import apply_window, resolve_window
from medsam.io import load_volume
from medsam.metrics import dice
from medsam.prompts import box_from_mask

CT_LIVER, CT_SPLEEN = 5, 1


@pytest.fixture(scope="module")
def ts(sample_data):
    return sample_data / "totalsegmentator"


@pytest.fixture(scope="module")
def loader():
    return LoadImage(image_only=True, ensure_channel_first=True)


@pytest.fixture(scope="module")
def ct_case(ts, tmp_path_factory):
    """CT slices 24..26 and the reference labels, as files with the right geometry."""
    d = tmp_path_factory.mktemp("ct3")
    sitk.WriteImage(sitk.ReadImage(str(ts / "example_ct_sm.nii.gz"))[:, :, 24:27], str(d / "ct.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(ts / "example_seg.nii.gz"))[:, :, 24:27], str(d / "ct.label.nii.gz"))
    return d / "ct.nii.gz", d / "ct.label.nii.gz"


# --------------------------------------------------------------------------- intensity
@pytest.mark.parametrize(
    ("name", "window", "expected"),
    [("example_mr_sm", None, "percentile"), ("example_ct_sm", None, "soft_tissue"), ("example_ct_sm", "liver", "liver")],
)
def test_intensity_matches_the_core(ts, loader, name, window, expected):
    path = ts / f"{name}.nii.gz"
    img = loader(str(path))
    vol = load_volume(path)
    core = resolve_window(vol, window)  # what `medsam segment --window` uses
    assert core.name == expected
    out = mm.SamIntensityd("image", window=window)({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.dtype == torch.float32 and out.shape == img.shape
    assert out.meta["medsam_window"] == core.key
    assert torch.equal(out.affine, img.affine)
    np.testing.assert_array_equal(out[0].numpy().transpose(2, 1, 0), apply_window(vol.array, core))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_intensity_array_forms_and_missing_keys():
    arr = np.array([[[[-1000.0, 40.0, 240.0]]]], np.float32)  # [C, H, W, D]
    out = mm.SamIntensity(window="soft_tissue")(arr)
    assert isinstance(out, np.ndarray) and out.reshape(-1).tolist() == [0.0, 0.5, 1.0]
    assert isinstance(mm.SamIntensity(window="40,400")(torch.from_numpy(arr)), torch.Tensor)
    assert mm.SamIntensityD is mm.SamIntensityDict is mm.SamIntensityd
    assert mm.SamIntensityd("image", allow_missing_keys=True)({"other": 1}) == {"other": 1}
    with pytest.raises(KeyError):
        mm.SamIntensityd("image")({"other": 1})
    with pytest.raises(ValueError, match="unknown window"):
        mm.SamIntensityd("image", window="softtissue")


# ----------------------------------------------------------------------------- prompts
def test_prompts_from_label_tight_box_on_the_largest_slice(ts, loader):
    label = loader(str(ts / "example_seg.nii.gz"))
    ref = load_volume(ts / "example_seg.nii.gz").array  # (Z, Y, X)
    prompts = mm.PromptsFromLabeld("label", label_ids=[CT_LIVER, 200], names={"5": "liver"})({"label": label})["prompts"]
    json.dumps(prompts)  # plain JSON
    assert prompts["space"] == "voxel" and len(prompts["objects"]) == 1  # label 200 is absent: skipped
    obj = prompts["objects"][0]
    assert (obj["label"], obj["name"], obj["propagate"]) == (CT_LIVER, "liver", True)
    liver = ref == CT_LIVER
    k = int(np.argmax(liver.sum(axis=(1, 2))))
    assert obj["prompts"] == [{"slice": k, "box": [int(v) for v in box_from_mask(liver[k])]}]
    # and it validates against the image: voxel prompts (slice=k, x=i, y=j)
    pset = mm.resolve_prompts(prompts, label)
    assert pset.objects[0].prompts[0].box == tuple(float(v) for v in box_from_mask(liver[k]))


def test_prompts_from_label_points_jitter_and_seed(ts, loader):
    label = loader(str(ts / "example_seg.nii.gz"))
    ref = load_volume(ts / "example_seg.nii.gz").array
    t = mm.PromptsFromLabel(label_ids=CT_SPLEEN, key_slices=3, jitter=0.1, n_positive=3, n_negative=2, seed=7)
    a, b = t(label), t(label)
    assert a == b  # a fixed seed gives the same prompts for the same label
    spleen = ref == CT_SPLEEN
    present = np.nonzero(spleen.any(axis=(1, 2)))[0]
    slices = [p["slice"] for p in a["objects"][0]["prompts"]]
    assert slices == [int(present[0]), int((present[0] + present[-1]) // 2), int(present[-1])]
    for p in a["objects"][0]["prompts"]:
        k = p["slice"]
        x0, y0, x1, y1 = p["box"]
        tx0, ty0, tx1, ty1 = box_from_mask(spleen[k])
        w, h = tx1 - tx0 + 1, ty1 - ty0 + 1
        assert abs(x0 - tx0) <= 0.1 * w + 1 and abs(y1 - ty1) <= 0.1 * h + 1
        assert p["point_labels"] == [1, 1, 1, 0, 0]
        for (x, y), lab in zip(p["points"], p["point_labels"], strict=True):
            assert spleen[k, y, x] == bool(lab)
    unseeded = mm.PromptsFromLabel(label_ids=CT_SPLEEN, n_positive=3, seed=None)
    unseeded.set_random_state(1)
    c = unseeded(label)
    unseeded.set_random_state(2)
    assert c != unseeded(label)
    with pytest.raises(ValueError, match="box=True or n_positive"):
        mm.PromptsFromLabel(box=False)


def test_load_prompts_reads_the_cli_format(tmp_path):
    p = tmp_path / "case.prompts.json"
    data = {"space": "voxel", "objects": [{"label": 1, "prompts": [{"slice": 0, "box": [1, 2, 3, 4]}]}]}
    p.write_text(json.dumps(data))
    assert mm.LoadPromptsd("prompts")({"prompts": str(p)})["prompts"] == data
    assert mm.LoadPrompts()(data) == data
    with pytest.raises(FileNotFoundError):
        mm.LoadPrompts()(str(tmp_path / "missing.json"))


# ---------------------------------------------------------------------------- metrics
def test_label_metrics_against_the_core_dice(ts, loader):
    label = loader(str(ts / "example_seg.nii.gz"))
    ref = load_volume(ts / "example_seg.nii.gz").array
    shifted = torch.roll(label, shifts=1, dims=1)  # one voxel (3 mm) along i
    rows = mm.LabelMetricsd("pred", label_ids=[CT_LIVER, CT_SPLEEN, 77], names={5: "liver"})(
        {"pred": shifted, "label": label}
    )["metrics"]
    liver, spleen, absent = rows
    assert liver["case"] == "example_seg" and liver["name"] == "liver" and spleen["name"] == "label_1"
    assert liver["dice"] == pytest.approx(dice(np.roll(ref, 1, axis=2) == CT_LIVER, ref == CT_LIVER), abs=1e-6)
    # a 3 mm shift is beyond the 2 mm tolerance on the shifted faces only
    assert 0.5 < liver["nsd"] < 1.0
    assert math.isnan(absent["dice"]) and absent["reference_voxels"] == 0
    rows_3mm = mm.LabelMetrics(label_ids=[CT_LIVER], nsd_tolerance_mm=3.5)(shifted, label)
    assert rows_3mm[0]["nsd"] == pytest.approx(1.0)


# ----------------------------------------------------------- Dataset, DataLoader, bundle
def test_transforms_with_cache_dataset_and_dataloader(ct_case, litemedsam):
    image, label = ct_case
    keys = ["image", "label"]
    chain = Compose(
        [
            LoadImaged(keys, image_only=True, ensure_channel_first=True),
            mm.SamIntensityd("image", window="soft_tissue"),
            mm.PromptsFromLabeld("label", label_ids=[CT_SPLEEN], propagate=False),
            mm.SamInferenced("image", model=mm.SamNetwork(litemedsam), propagate=False, sw_batch_size=1),
            DeleteItemsd("prompts"),  # a dict of lists does not collate
        ]
    )
    ds = CacheDataset([{"image": str(image), "label": str(label)}], transform=chain, cache_rate=1.0, num_workers=0)
    cached = ds._cache[0]
    assert isinstance(cached["image"], MetaTensor) and "prompts" not in cached  # cached up to the random transform
    batch = next(iter(DataLoader(ds, batch_size=1, num_workers=0)))
    pred, ref = batch["pred"], batch["label"]
    assert pred.shape == (1, 1, *ref.shape[2:]) and torch.equal(pred.affine, batch["image"].affine)
    per_slice = pred[0, 0].reshape(-1, pred.shape[-1]).sum(0)
    k = int(np.argmax((ref[0, 0] == CT_SPLEEN).reshape(-1, ref.shape[-1]).sum(0)))
    assert per_slice.nonzero().flatten().tolist() == [k]  # no propagation: the key slice only
    assert dice((pred[0, 0, :, :, k] == 1).numpy(), (ref[0, 0, :, :, k] == CT_SPLEEN).numpy()) > 0.9


def test_bundle_configs_parse_with_plain_values(ct_case):
    image, label = ct_case
    prompts = image.parent / "ct.prompts.json"
    prompts.write_text(json.dumps({"objects": [{"label": 1, "prompts": [{"slice": 1, "box": [40, 30, 100, 80]}]}]}))
    root = mm.bundle_path()
    assert (root / "configs" / "metadata.json").is_file() and (root / "docs" / "README.md").is_file()
    parser = ConfigParser()
    parser.read_config(str(root / "configs" / "inference.json"))
    parser.update({"dataset_dir": str(image.parent), "sw_batch_size": 2, "window": "liver"})
    assert parser.get_parsed_content("datalist") == [{"image": str(image), "prompts": str(prompts)}]
    pre = parser.get_parsed_content("preprocessing")
    kinds = [type(t).__name__ for t in pre.transforms]
    assert kinds == ["LoadVolumed", "LoadPromptsd", "SamIntensityd", "SamInferenced"]
    assert pre.transforms[2].transform.window == "liver"
    inference = pre.transforms[3].inference
    assert inference.inferer.sw_batch_size == 2 and inference.model == "litemedsam" and inference._network is None

    ev = ConfigParser()
    ev.read_config(str(root / "configs" / "evaluate.json"))
    ev.update({"dataset_dir": str(image.parent), "labels": [5, 1], "key_slices": 2, "n_positive": 1})
    assert ev.get_parsed_content("datalist") == [{"image": str(image), "label": str(label)}]
    sim = ev.get_parsed_content("preprocessing").transforms[2].transform
    assert (sim.label_ids, sim.key_slices, sim.n_positive, sim.seed) == ([5, 1], 2, 1, 0)
    metrics = ev.get_parsed_content("postprocessing").transforms[1].metrics
    assert metrics.tolerance == 2.0 and metrics.label_ids == [5, 1]
