"""Batched slice embedding of a volume, cached in memory and optionally on disk.

Slices are windowed (:mod:`medsam.intensity`), preprocessed and encoded a batch at a time,
so a volume is never converted to float as a whole. Embeddings are computed lazily: a
request for slice ``k`` embeds a batch starting at ``k`` in the direction of travel, which
is how propagation asks for them, so only the slices propagation reaches are embedded.

The disk cache is keyed by (volume content hash, model name, weights hash, window); a
cache written for another window, model or checkpoint is never reused.

Examples
--------
>>> from medsam.io import load_volume                      # doctest: +SKIP
>>> from medsam.models import load_model                   # doctest: +SKIP
>>> vol = load_volume("sample_data/totalsegmentator/example_ct_sm.nii.gz")  # doctest: +SKIP
>>> emb = SliceEmbedder(load_model("litemedsam"), vol, window="soft_tissue")  # doctest: +SKIP
>>> emb.embed(range(10, 14))                                # doctest: +SKIP
>>> emb.get(12).shape                                       # doctest: +SKIP
torch.Size([1, 256, 64, 64])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medsam.atomic import atomic_write, atomic_write_text
from medsam.intensity import Window, WindowSpec, apply_window, apply_window_tensor, resolve_window
from medsam.models.accel import InferenceConfig, resolve_dtype
from medsam.predictor import embed_images

__all__ = ["SliceEmbedder", "EmbeddingInfo", "default_batch_size", "volume_content_hash"]

logger = logging.getLogger(__name__)

CACHE_ENV = "MEDSAM_CACHE_DIR"  # default on-disk embedding cache folder, when set

CACHE_FORMAT = 1

#: Volume dtypes windowed on the device (as torch can hold them; others are windowed on the CPU).
_TORCH_WINDOW_DTYPES = (np.dtype(np.int16), np.dtype(np.uint8), np.dtype(np.int32), np.dtype(np.float32))


def default_batch_size(device: torch.device) -> int:
    """Slices per encoder call: 1 on CPU, 8 on accelerators.

    Measured with ``benchmarks/speed.py`` on 2 CPU cores: batching never helps there
    (torch backend: 1.51 slices/s at batch 1, 1.21 at 2, 0.96 at 8; the ONNX Runtime
    graph runs one slice at a time anyway), so it only pays off on a GPU.
    """
    return 1 if torch.device(device).type == "cpu" else 8


def volume_content_hash(array: np.ndarray) -> str:
    """SHA-256 (first 16 hex digits) of an array's shape, dtype and bytes."""
    h = hashlib.sha256()
    h.update(f"{array.shape}|{array.dtype.str}".encode())
    a = np.ascontiguousarray(array)
    flat = a.reshape(-1).view(np.uint8)
    step = 1 << 24
    for start in range(0, flat.size, step):
        h.update(memoryview(flat[start : start + step]))
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class EmbeddingInfo:
    """Geometry of one embedded slice.

    Attributes
    ----------
    original_hw:
        ``(H, W)`` of the slice.
    input_hw:
        ``(h, w)`` of the resized image inside the model's ``S x S`` input.
    """

    original_hw: tuple[int, int]
    input_hw: tuple[int, int]


class SliceEmbedder:
    """Embeds the slices of one volume with one model and one window.

    Parameters
    ----------
    model:
        A :class:`medsam.models.PromptableSam` (already on its device).
    volume:
        A :class:`medsam.io.Volume`; slices are ``volume.array[k]`` of shape ``(Y, X)``
        (or ``(Y, X, 3)`` for RGB).
    window:
        Any window spec or a resolved :class:`~medsam.intensity.Window`.
    batch_size:
        Slices per encoder call (default: :func:`default_batch_size` of the model's device).
    cache_dir:
        Optional folder for the on-disk cache. Default: the ``MEDSAM_CACHE_DIR``
        environment variable when it is set, else no disk cache.
    store_dtype:
        dtype of the in-memory embeddings. Default: the encoder's compute dtype (bfloat16
        on the bf16 path, at no loss), float32 while all slices' embeddings fit in
        ``store_budget_mb``, else float16 (half the memory; masks agree with float32
        storage to Dice >= 0.995, tested).
    store_budget_mb:
        Memory for float32 embeddings of every slice above which the default storage
        becomes float16 (2048 MB: about 500 slices of LiteMedSAM's 4 MB embeddings).
    inference:
        How the encoder runs (:class:`~medsam.inference.InferenceConfig`; default: the
        fast path). It is part of the cache key.
    """

    def __init__(
        self,
        model,
        volume,
        window: WindowSpec | Window = None,
        *,
        batch_size: int | None = None,
        cache_dir: str | Path | None = None,
        store_dtype: torch.dtype | None = None,
        store_budget_mb: float = 2048.0,
        inference: InferenceConfig | None = None,
    ) -> None:
        if batch_size is None:
            batch_size = default_batch_size(model.device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.volume = volume
        self.window = window if isinstance(window, Window) else resolve_window(volume, window)
        self.batch_size = int(batch_size)
        self.inference = inference or InferenceConfig()
        self.compute_dtype = resolve_dtype(self.inference.precision, model.device)
        self.store_dtype = store_dtype or self._default_store_dtype(store_budget_mb)
        # One buffer for every slice's embedding, allocated once and untouched until a slice
        # is written: the OS commits its pages only then, so memory grows with the slices
        # embedded, never fragments, and a long volume costs nothing until propagation
        # reaches it. ``_store`` maps embedded slices to their rows.
        self._buffer: torch.Tensor | None = None
        self._store: dict[int, torch.Tensor] = {}
        hw = tuple(int(s) for s in volume.grid_shape[1:3])
        self.info = EmbeddingInfo(original_hw=hw, input_hw=tuple(model.frame_transform(hw).input_hw))
        self.n_encoded = 0
        self._cache_path: Path | None = None
        if cache_dir is None:
            cache_dir = os.environ.get(CACHE_ENV) or None
        if cache_dir is not None:
            self._cache_path = Path(cache_dir) / self.cache_key()
            self._cache_path.mkdir(parents=True, exist_ok=True)
            self._write_signature()

    def _default_store_dtype(self, budget_mb: float) -> torch.dtype:
        if self.compute_dtype != torch.float32:
            return self.compute_dtype
        per_slice = 4 * self.model.embed_dim * int(np.prod(self.model.embedding_hw))
        if self.n_slices * per_slice <= budget_mb * 2**20:
            return torch.float32
        logger.info(
            "%d slices of float32 embeddings need %.0f MB > %.0f MB; storing them as float16",
            self.n_slices, self.n_slices * per_slice / 2**20, budget_mb,
        )
        return torch.float16

    @property
    def nbytes(self) -> int:
        """Bytes of the embeddings held in memory."""
        return sum(t.numel() * t.element_size() for t in self._store.values())

    def _keep(self, k: int, embedding: torch.Tensor) -> None:
        """Copy one ``(256, 64, 64)`` embedding into its row of the buffer."""
        if self._buffer is None:
            shape = (self.n_slices, self.model.embed_dim, *self.model.embedding_hw)
            self._buffer = torch.empty(shape, dtype=self.store_dtype)
        row = self._buffer[k]
        row.copy_(embedding)
        self._store[k] = row

    # ------------------------------------------------------------------ keys
    def signature(self) -> dict:
        """Everything the embeddings depend on."""
        return {
            "format": CACHE_FORMAT,
            "volume": volume_content_hash(self.volume.array),
            "model": self.model.name,
            "weights": self.model.weights_id or "unknown",
            "window": self.window.key,
            "preprocessing": repr(self.model.preprocessing),
            # fp32 backends agree to float rounding, so they share a cache; bf16 does not.
            "encoder_dtype": str(self.compute_dtype).removeprefix("torch."),
        }

    def cache_key(self) -> str:
        """A folder name derived from :meth:`signature`."""
        sig = json.dumps(self.signature(), sort_keys=True)
        return hashlib.sha256(sig.encode()).hexdigest()[:24]

    def _write_signature(self) -> None:
        assert self._cache_path is not None
        path = self._cache_path / "signature.json"
        sig = self.signature()
        if path.exists():
            on_disk = json.loads(path.read_text())
            if on_disk != sig:  # a hash collision on the folder name; never reuse it
                raise RuntimeError(f"{path}: embedding cache signature mismatch; delete the folder")
            return
        atomic_write_text(path, json.dumps(sig, indent=1, sort_keys=True))

    # --------------------------------------------------------------- access
    @property
    def n_slices(self) -> int:
        return int(self.volume.grid_shape[0])

    def has(self, k: int) -> bool:
        return k in self._store

    def embedded_slices(self) -> list[int]:
        return sorted(self._store)

    def get(self, k: int, direction: int = 1) -> torch.Tensor:
        """Embedding ``(1, 256, 64, 64)`` of slice ``k`` on the model's device.

        Missing slices are embedded a batch at a time starting at ``k`` and continuing in
        ``direction`` (+1 up, -1 down), so a propagation run triggers few encoder calls.
        """
        if not 0 <= k < self.n_slices:
            raise IndexError(f"slice {k} out of range 0..{self.n_slices - 1}")
        if k not in self._store:
            step = 1 if direction >= 0 else -1
            want = [j for j in range(k, k + step * self.batch_size, step) if 0 <= j < self.n_slices]
            self.embed([j for j in want if j not in self._store])
        return self._store[k].to(self.model.device, torch.float32)[None]

    def embed(
        self,
        slices: Iterable[int] | None = None,
        progress: Callable[[int, int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Embed ``slices`` (default: all) that are not embedded yet, in batches.

        ``progress(done, total)`` is called after each batch; ``should_stop()`` is polled
        between batches so a GUI can cancel.
        """
        ks = list(range(self.n_slices)) if slices is None else [int(k) for k in slices]
        todo = [k for k in dict.fromkeys(ks) if k not in self._store]
        todo = [k for k in todo if not self._load_cached(k)]
        total = len(todo)
        for start in range(0, total, self.batch_size):
            if should_stop is not None and should_stop():
                logger.info("embedding cancelled after %d of %d slices", start, total)
                return
            batch = todo[start : start + self.batch_size]
            emb = self._encode(batch)
            for k, e in zip(batch, emb, strict=True):
                self._keep(k, e)
                self._save_cached(k)
            if progress is not None:
                progress(min(start + len(batch), total), total)

    def window_slices(self, ks: list[int]) -> np.ndarray:
        """Windowed slices ``(B, Y, X)`` (or ``(B, Y, X, 3)``) as float32 in [0, 1]."""
        return apply_window(self.volume.array[ks], self.window)

    def batch_tensor(self, ks: list[int], on_device: bool | None = None) -> torch.Tensor:
        """Windowed slices ``ks`` as ``(B, C, Y, X)`` float32 in [0, 1] on the model's device.

        With ``on_device`` (default: on CUDA, for grey int/float32 volumes) the raw slices
        travel as they are stored (int16 for CT: half the bytes of float32), through
        pinned memory, and are windowed on the device by
        :func:`~medsam.intensity.apply_window_tensor`; otherwise they are windowed on the
        CPU by :func:`~medsam.intensity.apply_window`. Both give equal values.
        """
        device = self.model.device
        raw = self.volume.array[ks]
        if on_device is None:
            on_device = device.type == "cuda"
        if on_device and raw.ndim == 3 and raw.dtype in _TORCH_WINDOW_DTYPES:
            host = torch.from_numpy(np.ascontiguousarray(raw))
            if device.type == "cuda":
                host = host.pin_memory()
            return apply_window_tensor(host.to(device, non_blocking=True), self.window)[:, None]
        x = torch.from_numpy(apply_window(raw, self.window))
        x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x[:, None]
        return x.to(device)

    def _encode(self, ks: list[int]) -> torch.Tensor:
        emb = embed_images(self.model, self.batch_tensor(ks), self.inference)
        self.n_encoded += len(ks)
        return emb

    # ------------------------------------------------------------------ disk
    def _slice_file(self, k: int) -> Path:
        assert self._cache_path is not None
        return self._cache_path / f"slice_{k:05d}.pt"

    def _load_cached(self, k: int) -> bool:
        if self._cache_path is None:
            return False
        f = self._slice_file(k)
        if not f.exists():
            return False
        try:
            self._keep(k, torch.load(f, map_location="cpu", weights_only=True))
        except Exception as exc:  # a broken or foreign cache entry is recomputed, never trusted
            logger.warning("%s: unreadable cache entry (%s); recomputing", f, exc)
            return False
        return True

    def _save_cached(self, k: int) -> None:
        if self._cache_path is None:
            return
        emb = self._store[k].clone()
        atomic_write(self._slice_file(k), lambda tmp: torch.save(emb, tmp))
