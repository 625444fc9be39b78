"""The Segment Anything dock widget.

The widget owns its state (no globals) and holds references to the layers it creates; it
never looks layers up by name. Every action calls the core: :class:`~medsam.volume.VolumePredictor`
and :mod:`medsam.session_ops`. Conversions between napari layer data and prompts happen in
:mod:`napari_plugin._layers` only. Slow work (loading the model, embedding, propagation)
runs in napari thread workers; the main thread only runs the mask decoder on slices that
are already embedded, so the interface never freezes.

Keys, export and the replayable session are in :mod:`napari_plugin._widget_actions`
(``P`` points, ``B`` boxes, ``T`` point type, ``Shift+S`` propagate, ``N`` next object,
``C`` accept, ``Ctrl+Z`` / ``Ctrl+Shift+Z`` undo and redo).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import numpy as np
from napari.layers import Image
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import QWidget

from medsam import session_ops
from medsam.errors import MedsamError
from medsam.intensity import resolve_window
from medsam.models import list_models

from . import _widget_layers as wl
from ._layers import current_slice, volume_of_layer
from ._undo import LabelsUndo
from ._widget_actions import ActionsMixin
from ._widget_prompts import PromptsMixin
from ._widget_ui import SamWidgetUI
from ._widget_unsaved import UnsavedMixin

__all__ = ["SamWidget"]

logger = logging.getLogger(__name__)

#: Longest error line shown on screen (the whole message and traceback are in the log).
ERROR_CHARS = 300


class SamWidget(PromptsMixin, ActionsMixin, UnsavedMixin, QWidget):
    """Promptable segmentation of a CT/MR volume in napari.

    Parameters
    ----------
    napari_viewer:
        The viewer (npe2 passes it).
    device:
        Torch device for the model (``None``: cuda, then mps, then cpu).
    cache_dir:
        Optional on-disk embedding cache (reopening a scan then skips the encoder).
    """

    def __init__(self, napari_viewer, *, device: Any = None, cache_dir: Any = None) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.device, self.cache_dir = device, cache_dir
        self.ui = SamWidgetUI(self, list_models())
        self.vp = None
        self._vp_key: tuple[str, str] | None = None
        self.volume = None
        self.image_layer: Image | None = None
        self.labels_layer = self.points_layer = self.shapes_layer = None
        self.undo_stack: LabelsUndo | None = None
        self._written = None  # (Z, Y, X): what medsam last wrote into the labels layer
        self.objects: dict[int, dict[str, Any]] = {}  # label -> {"name", "color"}
        self.current_label: int | None = None
        self._stored_prompts: dict[int, dict[str, Any]] = {}  # prompts of the other objects
        self._changed: dict[int, set[int] | None] = {}  # slices changed since propagation
        self.confidence: dict[int, dict[int, float]] = {}  # label -> {slice: score} of propagation
        self._jobs: dict[str, Any] = {}  # "load", "embed", "demand", "propagate" -> worker
        self._embedding_paused = False
        self._loading_layers = False
        self._pending: set[int] = set()  # objects whose prompts wait for embeddings
        self._embed_yielded = False  # background embedding was stopped for a propagation
        self._connect()
        self._refresh_images()
        self._guard_window()  # asks before the viewer closes with unsaved labels

    # ------------------------------------------------------------------ wiring
    def _connect(self) -> None:
        u = self.ui
        u.prepare_btn.clicked.connect(self.prepare)
        u.cancel_btn.clicked.connect(self.cancel)
        u.new_obj_btn.clicked.connect(lambda: self.new_object())
        u.del_obj_btn.clicked.connect(self.delete_object)
        u.object_combo.activated.connect(lambda i: self.select_object(u.object_combo.itemData(i)))
        u.propagate_btn.clicked.connect(self.propagate)
        u.undo_btn.clicked.connect(self.undo)
        u.redo_btn.clicked.connect(self.redo)
        u.export_btn.clicked.connect(lambda: self.export())
        u.session_btn.clicked.connect(lambda: self.save_session())
        u.image_combo.currentIndexChanged.connect(self._on_image_choice)
        u.window_combo.currentTextChanged.connect(self._on_window_choice)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._refresh_images)

    def _refresh_images(self, *_: Any) -> None:
        images = [ly for ly in self.viewer.layers if isinstance(ly, Image)]
        self.ui.set_images(images, keep=self.ui.image_combo.currentData())

    def _on_image_choice(self, *_: Any) -> None:
        layer = self.ui.image_combo.currentData()
        if layer is None:
            return
        try:
            choices, default = session_ops.window_options(volume_of_layer(layer))
        except ValueError as exc:
            self.ui.status(str(exc))
            return
        self.ui.set_windows(choices, default)

    def _on_window_choice(self, name: str) -> None:
        layer = self.ui.image_combo.currentData()
        if not name or layer is None or getattr(layer, "rgb", False):
            return
        try:
            w = resolve_window(volume_of_layer(layer), name)
        except (MedsamError, ValueError):
            return
        layer.contrast_limits = (w.low, w.high)
        if self.session is not None and self.image_layer is layer and self.session.window.name != w.name:
            self.ui.status("Window changed: press Prepare to embed with it.")

    @property
    def busy(self) -> bool:
        """True while a background job (model, embedding, propagation) runs."""
        return bool(self._jobs)

    @property
    def session(self):
        return None if self.vp is None else self.vp.session

    def _launch(self, kind: str, job, *, yielded=None, returned=None, done=None) -> None:
        # Errors are reported once, by _on_error: not by napari's relay (a second toast with
        # the whole traceback) nor re-raised into the Qt event loop (the workers ignore them).
        relay = getattr(job, "_relay_error", None)
        if relay is not None:
            with contextlib.suppress(TypeError, RuntimeError):
                job.errored.disconnect(relay)
        self._jobs[kind] = job
        if yielded is not None:
            job.yielded.connect(yielded)
        if returned is not None:
            job.returned.connect(returned)
        job.errored.connect(self._on_error)
        job.finished.connect(lambda: self._job_finished(kind, job, done))
        self.ui.set_busy(True)
        job.start()

    def _job_finished(self, kind: str, job, done) -> None:
        if self._jobs.get(kind) is job:
            del self._jobs[kind]
        self.ui.set_busy(self.busy)
        if done is not None:
            done()

    def cancel(self) -> None:
        """Stop embedding and propagation (what is done so far is kept)."""
        self._embedding_paused = False
        for kind in ("embed", "propagate"):
            if kind in self._jobs:
                self._jobs[kind].quit()

    def _on_error(self, exc: BaseException) -> None:
        """One notification with one line; the traceback goes to the log."""
        logger.error("medsam widget: %s", exc, exc_info=(type(exc), exc, exc.__traceback__))
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if len(text) > ERROR_CHARS:
            text = text[: ERROR_CHARS - 3] + "..."
        show_error(f"medsam: {text}")
        self.ui.status(f"Error: {text}")

    # ----------------------------------------------------------------- prepare
    def prepare(self) -> None:
        """Load the model if needed, start a session on the chosen image, embed in background."""
        layer = self.ui.image_combo.currentData()
        if layer is None:
            show_warning("Open a CT or MR volume first.")
            return
        if {"load", "propagate"} & set(self._jobs):
            show_warning("Wait for the running job to finish (or cancel it).")
            return
        try:
            volume = volume_of_layer(layer)
        except ValueError as exc:
            show_error(str(exc))
            return
        key = (
            self.ui.model_combo.currentText(),
            self.ui.checkpoint_edit.text().strip(),
            self.ui.adapter_edit.text().strip(),
        )
        if self.vp is not None and self._vp_key == key:
            self._start_session(layer, volume)
            return
        self.ui.status(f"Loading model {key[0]}...")

        def loaded(vp) -> None:
            self.vp, self._vp_key = vp, key
            self._start_session(layer, volume)

        self._launch(
            "load", wl.load_worker(key[0], key[1], self.device, self.cache_dir, key[2]), returned=loaded
        )

    def _start_session(self, layer: Image, volume) -> None:
        if "embed" in self._jobs:
            self._jobs["embed"].quit()
        self.vp.init_volume(volume, self.ui.window_combo.currentText() or None)
        self.image_layer, self.volume = layer, volume
        self._make_layers(layer, volume)
        for store in (self.objects, self._stored_prompts, self._changed, self.confidence):
            store.clear()
        self._pending.clear()
        self.ui.object_combo.clear()
        self.current_label = None
        self.new_object()
        self._embed_rest()

    def _embed_rest(self) -> None:
        """Embed every slice not embedded yet, nearest to the visible slice first."""
        self._embedding_paused = False
        k = current_slice(self.viewer, self.image_layer)
        order = session_ops.embedding_order(self.volume.n_slices, k)
        todo = set(session_ops.missing_embeddings(self.session, order))
        order = [j for j in order if j in todo]
        if not order:
            return
        self.ui.progress(0, len(order))
        self.ui.status(f"Embedding slice {order[0]}, then {len(order) - 1} more in the background...")
        job = wl.embed_worker(self.session.embedder, order)
        outcome = {"state": "done"}
        job.aborted.connect(lambda: outcome.update(state="cancelled"))
        self._launch(
            "embed", job, yielded=self._on_embed_progress, done=lambda: self._on_embed_done(outcome["state"])
        )

    def _on_embed_progress(self, value: tuple[int, int]) -> None:
        self.ui.progress(*value)
        if self._pending and "demand" not in self._jobs:
            self._request_sync()

    def _on_embed_done(self, state: str = "done") -> None:
        if "propagate" in self._jobs or self.session is None:
            return
        if self._embedding_paused:
            self._embed_rest()
            return
        if state == "cancelled" and self._embed_yielded:
            self._embed_yielded = False  # it stopped for a propagation, whose status stands
            return
        n = len(self.session.embedder.embedded_slices())
        if state == "cancelled":
            self.ui.status(
                f"Embedding cancelled: {n} of {self.volume.n_slices} slices embedded; "
                "the others are embedded when a prompt or propagation needs them."
            )
        else:
            self.ui.status(f"{n} of {self.volume.n_slices} slices embedded. Draw a box or click points.")

    def _make_layers(self, image: Image, volume) -> None:
        for layer in (self.points_layer, self.shapes_layer):
            if layer is not None and layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.labels_layer = wl.make_labels_layer(image, volume, f"{image.name} segmentation")
        self.points_layer = wl.make_points_layer(image, volume, "prompt points (T: +/-)")
        self.shapes_layer = wl.make_shapes_layer(image, volume, "prompt boxes")
        self.undo_stack = LabelsUndo(self.labels_layer)
        self._written = self.labels_layer.data.copy()
        actions = self.key_actions()
        for layer in (self.labels_layer, self.shapes_layer, self.points_layer):
            self.viewer.add_layer(layer)
            for key, (_, action) in actions.items():
                layer.bind_key(key, lambda _ly, action=action: action(), overwrite=True)
        self.points_layer.events.data.connect(self._on_prompts_changed)
        self.labels_layer.events.paint.connect(self._schedule_measure)
        self.labels_layer.events.data.connect(self._schedule_measure)
        self.ui.measure_table.timer.timeout.connect(self.update_measurements)
        self.shapes_layer.events.data.connect(self._on_prompts_changed)
        self.points_layer.mode = "add"
        self.viewer.layers.selection.active = self.points_layer

    # ------------------------------------------------------------- propagation
    def propagate(self) -> None:
        """Propagate the current object through the volume (both directions) in background."""
        label = self.current_label
        if self.session is None or label is None or "propagate" in self._jobs:
            return
        self._absorb_edits()  # a painted slice is a prompt, and may be the only one
        obj = self.session.objects.get(label)
        if obj is None or not obj.prompts:
            show_warning("Add a box or points on a slice before propagating.")
            return
        # Propagation embeds the slices it reaches itself; background embedding pauses so
        # two encoders do not compete for the CPU, and resumes afterwards.
        if "embed" in self._jobs:
            self._embedding_paused = self._embed_yielded = True
            self._jobs["embed"].quit()
        self._prop_steps = 0
        self.ui.progress(0, max(self.volume.n_slices - 1, 1))
        self.ui.status(f"Propagating {self.objects[label]['name']}...")
        job = wl.propagate_worker(self.vp, label, self._changed.get(label))
        # a cancelled or failed run propagates the same slices again next time
        outcome = {"state": "done"}
        job.aborted.connect(lambda: outcome.update(state="cancelled"))
        job.errored.connect(lambda _exc: outcome.update(state="failed"))
        self._launch(
            "propagate", job, yielded=self._on_prop_step, done=lambda: self._on_prop_done(label, outcome["state"])
        )

    def _on_prop_step(self, step) -> None:
        self._prop_steps += 1
        n = max(self.volume.n_slices - 1, 1)
        self.ui.progress(min(self._prop_steps, n), n)
        for label, score in step.confidence.items():
            self.confidence.setdefault(label, {})[step.slice] = score
            self.ui.status(f"Slice {step.slice}: confidence {score:.2f}")

    def _on_prop_done(self, label: int, state: str = "done") -> None:
        """Show what happened: ``state`` is ``"done"``, ``"cancelled"`` or ``"failed"`` (the
        error is already shown). The slices segmented so far are kept in every case."""
        if state == "done":
            self._changed[label] = set()
        self._commit(None)
        obj = self.session.objects.get(label)
        summary = session_ops.result_summary(obj.results if obj else {})
        name = self.objects.get(label, {}).get("name", label)
        self.ui.progress(1, 1)
        self.ui.confidence_label.setText(f"{name}: {summary}")
        if obj is not None:
            per_slice = "\n".join(f"slice {k}: {r.score:.2f} ({r.source})" for k, r in sorted(obj.results.items()))
            self.ui.confidence_label.setToolTip(f"{name}, confidence per slice:\n{per_slice}")
        if state == "cancelled":
            self.ui.status(f"Cancelled: propagation of {name} stopped; kept so far: {summary}")
            show_info(f"medsam: propagation of {name} cancelled")
        elif state == "done":
            self.ui.status(f"{name}: {summary}")
            show_info(f"medsam: propagated {name}: {summary}")
        self._request_sync()
        if self._embedding_paused and "embed" not in self._jobs:
            self._embed_rest()

    # ---------------------------------------------------------- labels/history
    def _absorb_edits(self) -> dict[int, list[int]]:
        """Brush, eraser and fill edits since medsam last wrote the layer become mask prompts
        (``session_ops.absorb_label_edits``): those slices are the user's from now on."""
        if self.labels_layer is None or self.session is None or self._written is None:
            return {}
        data = self.labels_layer.data
        if getattr(data, "shape", None) != self._written.shape:
            return {}
        taken = session_ops.absorb_label_edits(self.vp, np.asarray(data), self._written)
        for label, ks in taken.items():
            if self._changed.get(label) is not None:
                self._changed[label].update(ks)  # re-propagate the stretches these slices own
        self._mark_written(sorted({k for ks in taken.values() for k in ks}))
        return taken

    def _mark_written(self, slices: list[int]) -> None:
        """What the layer now holds on ``slices`` is accounted for (in the session)."""
        if slices:
            self._written[slices] = np.asarray(self.labels_layer.data)[slices]

    def _commit(self, slices) -> list[int]:
        """Write the session's label map into the labels layer (one undoable step).

        The user's edits are taken into the session first, so a commit never overwrites them.
        """
        if self.undo_stack is None or self.session is None:
            return []
        self._absorb_edits()
        changed = self.undo_stack.commit(self.vp.to_labels(), slices)
        self._mark_written(changed)
        if changed:
            self._schedule_measure()
        return changed

    # ------------------------------------------------------------ measurements
    def _schedule_measure(self, *_: Any) -> None:
        self.ui.measure_table.timer.start()  # restarts: measures once the labels are still

    def update_measurements(self) -> list:
        """Measure every object now (volume in mL or area in mm², RECIST axes, HU mean) and
        show the table; returns :class:`medsam.measure.ObjectMeasurements` rows."""
        if self.labels_layer is None or self.volume is None:
            return []
        names = {label: o["name"] for label, o in self.objects.items()}
        return self.ui.measure_table.measure(np.asarray(self.labels_layer.data), self.volume, names)

    def _after_history_step(self, restored: list[int]) -> list[int]:
        # An undone/redone commit is medsam's writing again; an undone paint stroke is an
        # edit like any other (found by the next _absorb_edits).
        if self._written is not None:
            self._mark_written(restored)
        self._schedule_measure()
        return restored

    def undo(self) -> list[int]:
        """Undo the last change to the labels layer; returns the slices a commit restored."""
        return [] if self.undo_stack is None else self._after_history_step(self.undo_stack.undo())

    def redo(self) -> list[int]:
        """Re-apply the last undone change; returns the slices written."""
        return [] if self.undo_stack is None else self._after_history_step(self.undo_stack.redo())

    def closeEvent(self, event: Any) -> None:  # noqa: N802 - Qt API
        self.cancel()
        super().closeEvent(event)
