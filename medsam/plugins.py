"""What front ends add to the core, found through entry points: the core imports none of them.

Two entry-point groups, declared by the distribution that provides them (``pyproject.toml``):

``medsam.adapter_loaders``
    ``loader(model, path) -> model``: applies a fine-tuning delta stored in ``path`` (an
    adapter file) to a loaded :class:`~medsam.models.PromptableSam`, for inference. The
    loader checks that the file belongs to ``model`` and sets ``model.weights_id`` to a new
    id (so embedding caches never mix base and adapted embeddings) and
    ``model.adapter_meta`` (a dict; ``"window"`` is the training window). It returns a
    model of plain modules (updates merged into the weights), so the fast engines export
    the adapted model exactly as they export the base model.
``medsam.cli``
    ``add(subparsers) -> None``: adds sub-commands to the ``medsam`` command line.

The ``adapters`` package of this distribution provides both (``medsam finetune``,
``medsam evaluate``, and ``.safetensors`` adapters). With it absent, ``import medsam`` and
every core command work, and an adapter file is refused with one line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from medsam.errors import InputFileError

__all__ = ["ADAPTER_LOADERS", "CLI_PLUGINS", "adapter_loader", "apply_adapter_file", "cli_plugins"]

logger = logging.getLogger(__name__)

ADAPTER_LOADERS = "medsam.adapter_loaders"
CLI_PLUGINS = "medsam.cli"


def _load(group: str) -> list[tuple[str, Callable[..., Any] | None, str | None]]:
    """``(name, object or None, why not)`` of every entry point in ``group``, by name."""
    found = []
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            found.append((ep.name, ep.load(), None))
        except ImportError as exc:  # the providing package, or one of its dependencies, is absent
            logger.debug("entry point %s of %s cannot be loaded: %s", ep.name, group, exc)
            found.append((ep.name, None, str(exc)))
    return found


def adapter_loader() -> Callable[[Any, Path], Any]:
    """The installed adapter loader.

    Raises
    ------
    LookupError
        None is installed, or it cannot be imported (the message says why);
        :func:`apply_adapter_file` turns this into a one-line ``InputFileError``.
    """
    loaders = _load(ADAPTER_LOADERS)
    usable = [(name, fn) for name, fn, _ in loaders if fn is not None]
    if usable:
        if len(usable) > 1:
            logger.warning("several adapter loaders are installed; using %s", usable[0][0])
        return usable[0][1]
    why = "; ".join(f"{name}: {err}" for name, _, err in loaders) or "no package provides one"
    raise LookupError(f"loading an adapter needs the fine-tuning extra (pip install 'medsam-monai[train]'): {why}")


def apply_adapter_file(model: Any, path: str | Path) -> Any:
    """Apply the adapter file ``path`` to ``model`` (in place) for inference; returns it.

    Raises
    ------
    InputFileError
        The file is missing, no adapter loader is installed, or the loader refuses the file
        (another base model, a damaged file: its own one-line reason).
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "no such adapter file")
    try:
        load = adapter_loader()
    except LookupError as exc:
        raise InputFileError(path, str(exc)) from None
    return load(model, path)


def cli_plugins() -> list[Callable[[Any], None]]:
    """The installed ``medsam`` sub-command providers that can be imported."""
    return [fn for _, fn, _ in _load(CLI_PLUGINS) if fn is not None]
