"""Ask before the viewer closes with unsaved labels (a mixin of :class:`SamWidget`).

Labels count as saved when they equal what the last export or session save held (a
SHA-1 of the labels layer's data). When the user closes the napari window (its close
button, the window manager, Cmd/Alt+Q) with other labels, the widget asks: *Save* (the
export dialog; the window closes only if the export succeeds), *Discard* or *Cancel*.

A close from code (``viewer.close()`` in a script) does not ask, as napari's own close
confirmation does not: a script that closes its viewer means it. Set
``confirm_programmatic_close = True`` to ask then too. ``ask_unsaved`` is the question
itself; a script can replace it by a function returning ``"save"``, ``"discard"`` or
``"cancel"``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from qtpy.QtCore import QEvent, QObject
from qtpy.QtWidgets import QMessageBox

__all__ = ["UnsavedMixin"]


class UnsavedMixin:
    """Tracks whether the labels layer has been saved, and guards the viewer's window."""

    _saved_digest: str | None = None
    #: Ask on closes from code too, not only on the user's (spontaneous) close events.
    confirm_programmatic_close: bool = False

    def _labels_digest(self) -> str | None:
        if self.labels_layer is None:
            return None
        data = np.ascontiguousarray(np.asarray(self.labels_layer.data))
        return hashlib.sha1(data.view(np.uint8).reshape(-1)).hexdigest() if data.size else None

    def mark_labels_saved(self) -> None:
        """The labels layer as it is now is saved (called after an export or session save)."""
        self._saved_digest = self._labels_digest()

    def has_unsaved_labels(self) -> bool:
        """True when the labels layer holds labels that no export or session save holds."""
        if self.labels_layer is None or not np.asarray(self.labels_layer.data).any():
            return False
        return self._labels_digest() != self._saved_digest

    def ask_unsaved(self) -> str:
        """Ask what to do with unsaved labels: ``"save"``, ``"discard"`` or ``"cancel"``."""
        buttons = QMessageBox.Save | QMessageBox.Discard | QMessageBox.Cancel
        answer = QMessageBox.question(
            self, "Unsaved segmentation",
            "The labels layer has changes that are not exported. Save them before closing?",
            buttons, QMessageBox.Save,
        )
        return {QMessageBox.Save: "save", QMessageBox.Discard: "discard"}.get(answer, "cancel")

    def may_close(self) -> bool:
        """Whether the viewer may close now (asks when labels are unsaved)."""
        if not self.has_unsaved_labels():
            return True
        answer = self.ask_unsaved()
        if answer == "save":
            return self.export() is not None
        return answer == "discard"

    def _guard_window(self) -> None:
        """Watch the viewer's main window for its close event."""
        window = getattr(getattr(self.viewer, "window", None), "_qt_window", None)
        if window is not None:
            window.installEventFilter(self)

    def eventFilter(self, obj: QObject, event: Any) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Close and obj is getattr(self.viewer.window, "_qt_window", None):
            if (event.spontaneous() or self.confirm_programmatic_close) and not self.may_close():
                event.ignore()
                return True  # the window stays open
        return super().eventFilter(obj, event)
