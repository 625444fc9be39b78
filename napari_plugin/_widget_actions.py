"""Keys, export and session saving of the Segment Anything widget (a mixin of :class:`SamWidget`).

Uses the state :class:`~napari_plugin._widget.SamWidget` sets up: ``ui``, ``vp``,
``session``, ``volume``, the three layers, ``objects``, ``current_label``, ``_jobs``,
``_vp_key`` and its ``propagate``, ``undo``, ``redo``, ``new_object``, ``select_object``,
``toggle_point_type``, ``_commit`` and ``_absorb_edits``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtGui import QColor
from qtpy.QtWidgets import QFileDialog

from medsam.errors import MedsamError
from medsam.io.dicom_seg import AlgorithmInfo

from ._writer import save_labels

__all__ = ["ActionsMixin"]

logger = logging.getLogger(__name__)


class ActionsMixin:
    """Key bindings, export and the replayable session sidecar."""

    # -------------------------------------------------------------------- keys
    def key_actions(self) -> dict[str, tuple[str, Any]]:
        """``{napari key: (what it does, function)}``, bound on the widget's three layers.

        After micro-sam (T toggles the point type, Shift+S segments the volume, C commits,
        N moves to the next object) and nnInteractive (P points, B boxes)."""
        return {
            "P": ("point mode", self.point_mode),
            "B": ("box mode", self.box_mode),
            "T": ("toggle positive/negative points", self.toggle_point_type),
            "Shift-S": ("propagate the current object", self.propagate),
            "N": ("next object", self.next_object),
            "C": ("accept the current object and start a new one", self.accept_object),
            "Control-Z": ("undo", self.undo),
            "Control-Shift-Z": ("redo", self.redo),
        }

    def point_mode(self) -> None:
        """Click points: the prompt points layer, in add mode."""
        if self.points_layer is not None:
            self.viewer.layers.selection.active = self.points_layer
            self.points_layer.mode = "add"

    def box_mode(self) -> None:
        """Draw boxes: the prompt boxes layer, in rectangle mode."""
        if self.shapes_layer is not None:
            self.viewer.layers.selection.active = self.shapes_layer
            self.shapes_layer.mode = "add_rectangle"

    def next_object(self) -> int | None:
        """Make the next object (by label, wrapping round) current; returns its label."""
        if not self.objects:
            return None
        labels = sorted(self.objects)
        current = self.current_label if self.current_label in labels else labels[-1]
        label = labels[(labels.index(current) + 1) % len(labels)]
        self.select_object(label)
        self.ui.status(f"Current object: {self.objects[label]['name']}")
        return label

    def accept_object(self) -> int | None:
        """The current object is done (its masks stay, its prompts are kept in the session):
        start a new object for the next structure; returns its label."""
        if self.current_label is None or "propagate" in self._jobs:
            return None
        name = self.objects[self.current_label]["name"]
        self._commit(None)
        label = self.new_object()
        self.ui.status(f"Accepted {name}; now prompting {self.objects[label]['name']}")
        return label

    # ------------------------------------------------------------------ export
    def save_session(self, path: str | Path | None = None) -> str | None:
        """Save a replayable sidecar of this session (``medsam.provenance.session_record``):
        the user's painted slices are kept as mask prompts. ``medsam replay FILE -o OUT``
        runs it from the command line. A ``path`` given in code is never overwritten."""
        if self.session is None:
            show_warning("Nothing to save yet: prepare an image first.")
            return None
        self._absorb_edits()  # painted slices are prompts too
        if path is None:
            start = str(Path(self.volume.source).parent) if self.volume.source else ""
            path, _ = QFileDialog.getSaveFileName(self, "Save session for replay", start, "JSON (*.json)")
            if not path:
                return None
        elif Path(path).exists():
            show_error(f"Save failed: {path} already exists")
            return None
        from medsam.atomic import atomic_write_text
        from medsam.provenance import session_record

        try:
            if self.volume.source is None:
                raise ValueError("the image was not read from a file, so a replay could not find it")
            _model, checkpoint, adapter = self._vp_key
            series = self.volume.meta.series_uid if Path(self.volume.source).is_dir() else None
            record = session_record(
                self.vp, checkpoint=Path(checkpoint) if checkpoint else None,
                adapter=Path(adapter) if adapter else None, series_uid=series,
            )
            atomic_write_text(path, json.dumps(record, indent=1))
        except (MedsamError, OSError, ValueError) as exc:
            return self._report_failure("Save", path, exc)
        self.mark_labels_saved()
        return self._report_saved(str(path), f"Saved session {path}; replay: medsam replay {path} -o OUT")

    def export(self, path: str | Path | None = None) -> str | None:
        """Save the labels layer with the source geometry (NIfTI, NRRD, MetaImage, or a DICOM
        SEG with one named, coloured segment per object for a DICOM source).

        Without ``path`` a save dialog asks (and confirms replacing an existing file, so
        the file is overwritten); a ``path`` given in code is never overwritten.
        """
        if self.labels_layer is None:
            show_warning("Nothing to export yet.")
            return None
        overwrite = False
        if path is None:
            start = str(Path(self.volume.source).parent) if self.volume.source else ""
            filters = "NIfTI (*.nii.gz *.nii);;NRRD (*.nrrd);;MetaImage (*.mha)"
            if self.volume.meta.format == "dicom":
                filters = "DICOM SEG (*.dcm);;" + filters
            path, _ = QFileDialog.getSaveFileName(self, "Export segmentation", start, filters)
            if not path:
                return None
            overwrite = True  # the dialog has just confirmed replacing an existing file
        _, meta, _ = self.labels_layer.as_layer_data_tuple()
        names = {label: o["name"] for label, o in self.objects.items()}
        colors = {label: tuple(QColor(o["color"]).getRgb()[:3]) for label, o in self.objects.items()}
        model, _checkpoint, adapter = self._vp_key if self._vp_key else ("", "", "")
        algorithm = AlgorithmInfo(model=model, adapter=Path(adapter).name if adapter else "")
        try:
            out = save_labels(
                path, self.labels_layer.data, meta, overwrite=overwrite, names=names, colors=colors,
                algorithm=algorithm,
            )
        except (MedsamError, OSError, ValueError, TypeError) as exc:
            return self._report_failure("Export", path, exc)
        self.mark_labels_saved()
        return self._report_saved(str(out), f"Saved {out}")

    def _report_failure(self, what: str, path: Any, exc: BaseException) -> None:
        """A failed save: its error in one notification and the status line (never "Saved")."""
        logger.debug("%s to %s failed", what, path, exc_info=True)
        show_error(f"{what} failed: {exc}")
        self.ui.status(f"{what} failed: {exc}")

    def _report_saved(self, path: str, status: str) -> str:
        """A finished save: a notification and the status line; returns ``path``."""
        show_info(f"medsam: saved {path}")
        self.ui.status(status)
        return path
