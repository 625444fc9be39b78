"""Reading and checking checkpoint files: weights-only loading, layout check, content hash."""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch

from medsam.errors import InputFileError, MissingInputError

__all__ = [
    "check_state_dict",
    "file_sha256",
    "layout_mismatch",
    "read_state_dict",
    "resolve_checkpoint_path",
]

logger = logging.getLogger(__name__)

#: (resolved path, size, mtime_ns) -> SHA-256 hex digest, so a file is hashed once per process.
_SHA256_CACHE: dict[tuple[str, int, int], str] = {}
_WRAPPER_KEYS = ("model", "state_dict")

Layout = Mapping[str, tuple[int, ...]]


def resolve_checkpoint_path(checkpoint: str | Path) -> Path:
    """Expand ``~`` and check that ``checkpoint`` is an existing file."""
    path = Path(checkpoint).expanduser()
    if not path.exists():
        raise MissingInputError(path)
    if not path.is_file():
        raise InputFileError(
            path, "is a folder, not a checkpoint file; pass the .pth/.pt file itself"
        )
    return path


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file, cached in-process by (path, size, mtime)."""
    path = Path(path)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    digest = _SHA256_CACHE.get(key)
    if digest is None:
        logger.debug("hashing %s (%d bytes)", path, stat.st_size)
        digest = _hash_file(path)
        _SHA256_CACHE[key] = digest
    return digest


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``torch.load(..., map_location="cpu", weights_only=True)``.

    A raw state dict is accepted, or one wrapped under ``"model"`` or ``"state_dict"``
    (training checkpoints). The tensors are not memory-mapped, so a model that takes them
    over (``load_state_dict(assign=True)``) never depends on the file afterwards.

    Raises
    ------
    InputFileError
        The file is not a weights-only PyTorch checkpoint holding a state dict.
    """
    path = resolve_checkpoint_path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower() or "weights_only" in str(err).lower():
            raise InputFileError(
                path,
                "holds pickled Python objects besides tensors, which medsam refuses to load "
                "(weights_only=True); re-save it with torch.save(model.state_dict(), path)",
            ) from err
        raise InputFileError(path, f"not a PyTorch checkpoint ({_first_line(err)})") from err
    except MemoryError:
        raise
    except Exception as err:  # torch raises many types for a file that is not a checkpoint
        raise InputFileError(
            path, f"not a readable PyTorch checkpoint ({_first_line(err)})"
        ) from err
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise InputFileError(path, f"does not hold a state dict (found {type(obj).__name__})")
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise InputFileError(
                path,
                f"does not hold a state dict: entry {key!r} holds {type(value).__name__}, not a tensor",
            )
    return dict(obj)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def layout_mismatch(state: Mapping[str, torch.Tensor], expected: Layout) -> list[str]:
    """Describe how a state dict's keys and shapes differ from ``expected``; empty if they match."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
    if wrong:
        k = wrong[0]
        parts.append(
            f"{len(wrong)} tensors of the wrong shape (e.g. {k}: {list(state[k].shape)} in the file, "
            f"{list(expected[k])} expected)"
        )
    return parts


def _prefix_hint(state: Mapping[str, torch.Tensor], expected: Layout) -> str:
    """A hint when every key carries one extra prefix, such as DataParallel's ``module.``."""
    first_expected = next(iter(expected), None)
    candidates = [
        k for k in state if first_expected and k.endswith(first_expected) and k != first_expected
    ]
    for key in candidates:
        prefix = key[: -len(first_expected)]
        if all(k.startswith(prefix) for k in state) and {k[len(prefix) :] for k in state} == set(
            expected
        ):
            return f"; every key starts with the extra prefix {prefix!r}, strip it before loading"
    return ""


def check_state_dict(
    state: Mapping[str, torch.Tensor],
    expected: Layout,
    *,
    path: str | Path,
    model_name: str,
    alternatives: Mapping[str, Layout] | None = None,
) -> None:
    """Raise a one-line :class:`InputFileError` unless ``state`` has exactly the layout ``expected``.

    Parameters
    ----------
    state
        The loaded state dict.
    expected
        ``{key: shape}`` of the model's ``state_dict()``.
    path, model_name
        For the message: ``"<path>: not a <model_name> checkpoint: ..."``.
    alternatives
        ``{name: layout}`` of other models; the message names those the file matches.
    """
    parts = layout_mismatch(state, expected)
    if not parts:
        return
    hint = _prefix_hint(state, expected)
    matches = [
        name for name, layout in (alternatives or {}).items() if not layout_mismatch(state, layout)
    ]
    if matches:
        hint += f"; it matches the layout of {' / '.join(matches)}"
    raise InputFileError(path, f"not a {model_name} checkpoint: {', '.join(parts)}{hint}")
