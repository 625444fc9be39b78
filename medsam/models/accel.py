"""Fast inference: one switch (:class:`InferenceConfig`) over measured backends.

The reference path is the model's own fp32 ``encode`` and ``decode``. The fast backends
all start from an inference copy of the image encoder with every ``Conv2d -> BatchNorm2d``
pair folded into one convolution (exact in fp32; :func:`fold_batchnorm`):

``"torch"``
    The folded encoder in eager torch with ``channels_last`` input (oneDNN's preferred
    layout); the model's own decoder.
``"compile"``
    As ``"torch"``, through ``torch.compile``. The first call compiles (about 30 s on 2
    CPU cores, cached on disk afterwards); a failure logs one warning and runs eager.
``"onnxruntime"``
    Encoder and mask decoder exported in memory to ONNX and run by ONNX Runtime (CPU,
    fp32). Falls back to ``"torch"`` with one warning if the export fails.
``"auto"`` (default)
    ``"onnxruntime"`` on the CPU for small encoders (LiteMedSAM) when it is installed and
    the precision is fp32, else ``"torch"`` (see :func:`resolve_backend`).

``precision="bf16"`` runs the torch backends under bf16 autocast where the device has
native bf16 (``avx512_bf16``/AMX CPUs, CUDA); it is opt-in because it is approximate
(LiteMedSAM embeddings differ by about 4%; propagated masks' per-organ Dice to the
reference is 0.95 to 0.999 on the bundled scans). Every fp32 backend matches the reference path with Dice
>= 0.995 (``tests/test_accel.py``).

Fast copies are kept per model and rebuilt whenever a parameter is replaced or updated in
place (an optimiser step, a loaded adapter, a LoRA merge), so training and inference can
alternate safely. The model itself is never modified.
"""

from __future__ import annotations

import copy
import logging
import threading
import weakref

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from medsam.inference import BACKENDS, REFERENCE, InferenceConfig, Precision

__all__ = [
    "BACKENDS",
    "InferenceConfig",
    "REFERENCE",
    "bf16_supported",
    "Engine",
    "fold_batchnorm",
    "prepare",
    "resolve_backend",
    "AUTO_ORT_MAX_BYTES",
    "ORT_MAX_BYTES",
    "resolve_dtype",
]

logger = logging.getLogger(__name__)


def bf16_supported(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively (so bf16 is faster, not emulated)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        caps = torch.cpu.get_capabilities()
        return bool(torch.backends.mkldnn.is_available() and (caps.get("avx512_bf16") or caps.get("amx_bf16")))
    return False


def resolve_dtype(precision: Precision, device: torch.device | str) -> torch.dtype:
    """The compute dtype of ``precision`` on ``device``.

    Raises
    ------
    ValueError
        ``"bf16"`` on a device without native bf16.
    """
    if precision == "fp32":
        return torch.float32
    if not bf16_supported(device):
        raise ValueError(f"precision 'bf16' needs native bf16, which {torch.device(device)} lacks; use 'fp32'")
    return torch.bfloat16


#: ``auto`` picks ONNX Runtime only for encoders up to this size (LiteMedSAM: 23 MB). Measured
#: on 2 cores, SAM ViT-B (360 MB) is 9% faster in ONNX Runtime once exported, but the
#: export costs 8 s, so the ViT family stays on torch unless asked.
AUTO_ORT_MAX_BYTES = 100 * 2**20
#: ONNX files are protobufs, limited to 2 GB: larger encoders (SAM ViT-H) are never exported.
ORT_MAX_BYTES = 1900 * 2**20


def _encoder_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.image_encoder.parameters())


def resolve_backend(config: InferenceConfig, device: torch.device | str, model: nn.Module | None = None) -> str:
    """The concrete backend ``config`` selects on ``device`` for ``model`` (``"auto"`` resolved).

    ``"auto"`` is ONNX Runtime on the CPU, at fp32, when it is installed and the encoder is
    at most :data:`AUTO_ORT_MAX_BYTES` (or no model is given); ``"torch"`` otherwise.
    """
    from medsam.models.ort import ort_available

    device = torch.device(device)
    backend = config.backend
    if backend == "auto":
        cpu_fp32 = device.type == "cpu" and config.precision == "fp32"
        small = model is None or _encoder_bytes(model) <= AUTO_ORT_MAX_BYTES
        backend = "onnxruntime" if cpu_fp32 and small and ort_available() else "torch"
    elif backend == "onnxruntime":
        if device.type != "cpu":
            logger.info("onnxruntime runs on the CPU only; using the torch backend on %s", device)
            backend = "torch"
        elif not ort_available():
            logger.warning("onnxruntime is not installed; using the torch backend")
            backend = "torch"
        elif model is not None and _encoder_bytes(model) > ORT_MAX_BYTES:
            logger.warning(
                "%s's encoder (%.1f GB) exceeds ONNX's 2 GB limit; using the torch backend",
                getattr(model, "name", "the model"), _encoder_bytes(model) / 2**30,
            )
            backend = "torch"
    return backend


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with each ``Conv2d -> BatchNorm2d`` pair folded (BatchNorm in eval form).

    Pairs are adjacent children of an ``nn.Sequential`` (TinyViT's ``Conv2d_BN``); the
    BatchNorm becomes ``nn.Identity``. Only containers on the path to a folded pair are
    copied (shallowly); every other submodule and parameter is shared with ``module``,
    which is left unchanged. Folded convolutions get ``channels_last`` weights.
    """
    changed: dict[str, nn.Module] = {}
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for a, b in zip(names, names[1:], strict=False):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                fused = fuse_conv_bn_eval(copy.deepcopy(conv).eval(), copy.deepcopy(bn).eval())
                fused.weight.data = fused.weight.data.contiguous(memory_format=torch.channels_last)
                changed[a], changed[b] = fused, nn.Identity()
    for name, child in module._modules.items():
        if child is None or name in changed:
            continue
        new = fold_batchnorm(child)
        if new is not child:
            changed[name] = new
    if not changed:
        return module
    out = copy.copy(module)
    out._modules = {**module._modules, **changed}
    return out


def _signature(model: nn.Module) -> tuple:
    """Identity, storage and in-place version of every parameter and persistent buffer.

    Non-persistent buffers are derived or constant (TinyViT rebuilds its attention biases
    ``ab`` on every ``train()``/``eval()``), so they are left out.
    """
    tensors = list(model.parameters())
    for module in model.modules():
        skip = module._non_persistent_buffers_set
        tensors.extend(b for name, b in module._buffers.items() if b is not None and name not in skip)
    return tuple((id(t), t.data_ptr(), 0 if t.is_inference() else t._version) for t in tensors)


class _Runtime:
    """Fast copies of one model for one backend, valid while its parameters are unchanged.

    It holds no reference to the model itself (the model is the weak key of ``_RUNTIMES``).
    """

    def __init__(self, model: nn.Module, backend: str) -> None:
        self.backend = backend
        self.signature = _signature(model)
        self.decoders: dict[bool, object] = {}
        folded = fold_batchnorm(model.image_encoder)  # no .eval(): never touch the model's mode
        self.encoder: object = folded
        if backend == "compile":
            self.encoder = _Compiled(folded)
        elif backend == "onnxruntime":
            from medsam.models.ort import OrtEncoder

            try:
                self.encoder = OrtEncoder(folded, model.image_size)
            except Exception as exc:  # noqa: BLE001 - any export failure falls back
                logger.warning("ONNX export of %s's encoder failed (%s); using the torch backend", model.name, exc)
                self.backend = "torch"

    def decoder(self, model: nn.Module, multimask: bool):
        """The ONNX Runtime mask decoder, or None where it cannot be built."""
        if multimask not in self.decoders:
            from medsam.models.ort import OrtMaskDecoder

            try:
                self.decoders[multimask] = OrtMaskDecoder(model, multimask)
            except Exception as exc:  # noqa: BLE001
                logger.warning("ONNX export of %s's mask decoder failed (%s); using torch", model.name, exc)
                self.decoders[multimask] = None
        return self.decoders[multimask]


class _Compiled:
    """``torch.compile`` of a module, eager for good after the first failure."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.compiled: nn.Module | None = torch.compile(module, dynamic=False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self.compiled(x)
            except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
                logger.warning("torch.compile of the image encoder failed (%s); using eager mode", exc)
                self.compiled = None
        return self.module(x)


_RUNTIMES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# napari embeds in a worker thread while the main thread predicts: build each engine once.
_LOCK = threading.Lock()


def _runtime(model: nn.Module, backend: str) -> _Runtime:
    with _LOCK:
        per_model = _RUNTIMES.setdefault(model, {})
        rt = per_model.get(backend)
        if rt is None or rt.signature != _signature(model):
            rt = per_model[backend] = _Runtime(model, backend)
        return rt


class Engine:
    """A model bound to a backend: ``encode`` and ``decode`` as the model's, only faster.

    Get one with :func:`prepare`; it is valid while the model's parameters are unchanged
    (prepare again after training or loading an adapter; :func:`prepare` is cheap when
    nothing changed).
    """

    def __init__(self, model, config: InferenceConfig, device: torch.device) -> None:
        self.model = model
        self.config = config
        self.dtype = resolve_dtype(config.precision, device)
        self.backend = resolve_backend(config, device, model)
        self._rt = None if self.backend == "reference" else _runtime(model, self.backend)
        if self._rt is not None:
            self.backend = self._rt.backend

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` float32 from ``model.preprocess`` to ``(B, 256, 64, 64)`` embeddings.

        The result is contiguous, on ``x``'s device, in the compute dtype (float32, or
        bfloat16 with ``precision="bf16"``).
        """
        if self._rt is None:
            return self.model.encode(x).contiguous()
        if self.backend == "onnxruntime":
            return self._rt.encoder(x).to(x.device)
        x = x.contiguous(memory_format=torch.channels_last)
        if self.dtype == torch.float32:
            return self._rt.encoder(x).contiguous()
        with torch.autocast(x.device.type, dtype=self.dtype):
            return self._rt.encoder(x).to(self.dtype).contiguous()

    def decode(
        self,
        embeddings: torch.Tensor,
        points: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`PromptableSam.decode <medsam.models.PromptableSam.decode>` (model-frame prompts).

        Only the ``"onnxruntime"`` backend replaces the decoder, for one image embedding
        and one prompt set (an interactive click, a propagation step); batches use torch.
        """
        decoder = None
        n_sets = next((t.shape[0] for t in (boxes, points, mask_input) if t is not None), 1)
        if self.backend == "onnxruntime" and embeddings.shape[0] == 1 and n_sets == 1:
            decoder = self._rt.decoder(self.model, multimask)
        if decoder is None:
            return self.model.decode(embeddings, points, point_labels, boxes, mask_input, multimask)
        sparse, dense = self.model.encode_prompts(points, point_labels, boxes, mask_input, embeddings.device)
        low_res, iou = decoder(embeddings, sparse, dense)
        return low_res.to(embeddings.device), iou.to(embeddings.device)


def prepare(model, config: InferenceConfig | None = None, device: torch.device | str | None = None) -> Engine:
    """The :class:`Engine` of ``model`` under ``config`` (default: the fast path) on ``device``.

    Raises
    ------
    ValueError
        ``precision="bf16"`` on a device without native bf16.
    """
    device = torch.device(device) if device is not None else model.device
    return Engine(model, config or InferenceConfig(), device)
