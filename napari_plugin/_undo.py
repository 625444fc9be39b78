"""Undo/redo on the widget's labels layer: medsam commits and napari paint strokes, in order.

Commits (masks from the model written into the layer) are kept by the core's
:class:`~medsam.session_ops.LabelHistory` as changed slices. Paint strokes stay in napari's
own labels history; this class remembers the order of both, so ``Ctrl+Z`` always undoes
the most recent change, whoever made it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medsam.session_ops import LabelHistory

__all__ = ["LabelsUndo"]


class LabelsUndo:
    """Undo and redo for one napari ``Labels`` layer.

    Parameters
    ----------
    layer:
        The labels layer; its ``data`` is a ``(Z, Y, X)`` numpy array changed in place.
    max_steps:
        Commits that can be undone.
    """

    def __init__(self, layer: Any, max_steps: int = 30) -> None:
        self.layer = layer
        self.history = LabelHistory(max_steps)
        self._undo: list[str] = []  # "commit" or "paint", newest last
        self._redo: list[str] = []
        layer.events.paint.connect(self._on_paint)

    def _on_paint(self, _event: Any = None) -> None:
        self._undo.append("paint")
        self._redo.clear()

    def commit(self, labels: np.ndarray, slices: Sequence[int] | None = None) -> list[int]:
        """Write ``labels[k]`` into the layer for ``slices`` (default all) as one undoable step."""
        data = self.layer.data
        changed = self.history.apply(data, np.asarray(labels).astype(data.dtype, copy=False), slices)
        if changed:
            self._undo.append("commit")
            del self._undo[: -4 * self.history.max_steps]
            self._redo.clear()
            self.layer.refresh()
        return changed

    def undo(self) -> list[int]:
        """Undo the newest change; returns the slices a commit restored (``[]`` for paint)."""
        return self._step(self._undo, self._redo, undoing=True)

    def redo(self) -> list[int]:
        """Re-apply the newest undone change."""
        return self._step(self._redo, self._undo, undoing=False)

    def _step(self, src: list[str], dst: list[str], *, undoing: bool) -> list[int]:
        while src:
            source = src.pop()
            if source == "paint":
                dst.append(source)
                (self.layer.undo if undoing else self.layer.redo)()
                return []
            ks = (self.history.undo if undoing else self.history.redo)(self.layer.data)
            if ks:  # an empty result: that commit fell off the bounded history
                dst.append(source)
                self.layer.refresh()
                return ks
        return []
