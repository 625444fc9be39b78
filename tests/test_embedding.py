"""Slice embedding: batching, lazy embedding, the disk cache and its key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import crop_slices

from medsam.embedding import SliceEmbedder, volume_content_hash
from medsam.predictor import SlicePredictor


@pytest.fixture(scope="module")
def small(ct_sm):
    ct, _ = ct_sm
    return crop_slices(ct, 22, 26)


def test_batched_equals_single_slice_embedding(litemedsam, small):
    emb = SliceEmbedder(litemedsam, small, "soft_tissue", batch_size=4)
    emb.embed()
    assert emb.embedded_slices() == [0, 1, 2, 3] and emb.n_encoded == 4
    # the same slice through SlicePredictor.set_image (one at a time) gives the same embedding
    pred = SlicePredictor(litemedsam)
    pred.set_image(emb.window_slices([2])[0])
    torch.testing.assert_close(emb.get(2), pred.get_image_embedding(), atol=2e-4, rtol=1e-3)


def test_lazy_get_embeds_a_batch_in_the_direction_of_travel(litemedsam, small):
    emb = SliceEmbedder(litemedsam, small, "soft_tissue", batch_size=2)
    e = emb.get(2, direction=-1)
    assert e.shape == (1, 256, 64, 64)
    assert emb.embedded_slices() == [1, 2]
    with pytest.raises(IndexError):
        emb.get(4)


def test_disk_cache_is_reused_only_for_the_same_volume_model_and_window(litemedsam, small, tmp_path):
    a = SliceEmbedder(litemedsam, small, "soft_tissue", cache_dir=tmp_path)
    a.embed([0, 1])
    b = SliceEmbedder(litemedsam, small, "soft_tissue", cache_dir=tmp_path)
    b.embed([0, 1])
    assert b.n_encoded == 0 and a.cache_key() == b.cache_key()
    torch.testing.assert_close(a.get(1), b.get(1))
    c = SliceEmbedder(litemedsam, small, "lung", cache_dir=tmp_path)
    c.embed([0])
    assert c.n_encoded == 1 and c.cache_key() != a.cache_key()
    changed = small.with_array(small.array + np.int16(1))
    d = SliceEmbedder(litemedsam, changed, "soft_tissue", cache_dir=tmp_path)
    assert d.cache_key() != a.cache_key()
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 3
    # a corrupt entry is recomputed, not trusted
    f = next((tmp_path / a.cache_key()).glob("slice_00000.pt"))
    f.write_bytes(b"garbage")
    e = SliceEmbedder(litemedsam, small, "soft_tissue", cache_dir=tmp_path)
    e.embed([0])
    assert e.n_encoded == 1


def test_cache_folder_from_the_environment(litemedsam, small, tmp_path, monkeypatch):
    """``MEDSAM_CACHE_DIR`` is the default cache folder; an explicit ``cache_dir`` wins."""
    monkeypatch.setenv("MEDSAM_CACHE_DIR", str(tmp_path / "env"))
    a = SliceEmbedder(litemedsam, small, "soft_tissue")
    a.embed([0])
    assert (tmp_path / "env" / a.cache_key() / "slice_00000.pt").is_file()
    b = SliceEmbedder(litemedsam, small, "soft_tissue")
    b.embed([0])
    assert b.n_encoded == 0
    SliceEmbedder(litemedsam, small, "soft_tissue", cache_dir=tmp_path / "own").embed([0])
    assert (tmp_path / "own" / a.cache_key()).is_dir()
    monkeypatch.delenv("MEDSAM_CACHE_DIR")
    c = SliceEmbedder(litemedsam, small, "soft_tissue")
    c.embed([0])
    assert c.n_encoded == 1  # no disk cache without the variable


def test_content_hash_sees_every_byte():
    a = np.zeros((3, 4, 5), np.int16)
    b = a.copy()
    b[2, 3, 4] = 1
    assert volume_content_hash(a) != volume_content_hash(b)
    assert volume_content_hash(a) != volume_content_hash(a.astype(np.int32))


def test_device_windowing_of_raw_int16_equals_cpu_windowing(litemedsam, small):
    """The GPU path ships raw int16 slices and windows them with torch; the values are equal."""
    from medsam.intensity import apply_window

    assert small.array.dtype == np.int16
    emb = SliceEmbedder(litemedsam, small, "soft_tissue")
    cpu = emb.batch_tensor([0, 2, 3], on_device=False)
    dev = emb.batch_tensor([0, 2, 3], on_device=True)
    assert cpu.shape == dev.shape == (3, 1, *small.grid_shape[1:]) and dev.dtype == torch.float32
    assert torch.equal(cpu, dev)
    np.testing.assert_array_equal(dev[1, 0].numpy(), apply_window(small.array[2], emb.window))
    assert 0.0 <= float(dev.min()) and float(dev.max()) <= 1.0 and 0 < float(dev.mean()) < 1
