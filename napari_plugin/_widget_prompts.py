"""Prompts and objects of the Segment Anything widget (a mixin of :class:`SamWidget`).

Each object (one output label) has its own prompts. The current object's prompts are the
widget's Points and Shapes layers; the others are kept aside and put back on switching.
Every prompt edit is synced into the core session with
:func:`medsam.session_ops.sync_object_prompts` after any slice it needs is embedded by a
worker; the labels layer is then updated as one undoable commit.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from napari.utils.notifications import show_warning
from qtpy.QtGui import QColor

from medsam import session_ops
from medsam.errors import MedsamError

from . import _widget_layers as wl
from ._layers import NEGATIVE, POSITIVE, prompts_from_layers

__all__ = ["PromptsMixin"]

_DONE_ACTIONS = {"added", "removed", "changed"}
_EMPTY = {"points": [], "kinds": [], "shapes": []}


class PromptsMixin:
    """Prompt layers, objects and the sync of prompts into the session.

    Uses the state :class:`~napari_plugin._widget.SamWidget` sets up: ``ui``, ``vp``,
    ``session``, ``volume``, the three layers, ``objects``, ``current_label``,
    ``_stored_prompts``, ``_changed``, ``_pending``, ``_jobs``, ``_loading_layers``.
    """

    # ----------------------------------------------------------------- prompts
    def toggle_point_type(self) -> str:
        """Switch new points between positive and negative; returns the new type."""
        layer = self.points_layer
        kind = NEGATIVE if layer.feature_defaults["prompt"].iloc[0] == POSITIVE else POSITIVE
        layer.feature_defaults = {"prompt": kind}
        layer.events.current_face_color()  # refresh napari's layer controls
        self.ui.point_type_label.setText(f"New points: {kind} (T toggles)")
        return kind

    def _on_prompts_changed(self, event: Any) -> None:
        action = str(getattr(event, "action", "changed")).split(".")[-1].lower()
        if self._loading_layers or action not in _DONE_ACTIONS or self.current_label is None:
            return
        self._pending.add(self.current_label)
        self._request_sync()

    def _prompt_data(self, label: int) -> dict[str, Any]:
        """The on-screen prompts of ``label`` (the layers for the current object)."""
        if label != self.current_label:
            return self._stored_prompts.get(label, _EMPTY)
        points = self.points_layer.data
        kinds = list(self.points_layer.features["prompt"]) if len(points) else []
        return {"points": points, "kinds": kinds, "shapes": list(self.shapes_layer.data)}

    def _request_sync(self) -> None:
        """Bring pending objects' prompts into the session and update the labels layer.

        Slices not embedded yet are embedded by a worker first; during propagation the
        sync waits (both would drive the same predictor).
        """
        if self.session is None or not self._pending or {"propagate", "demand"} & set(self._jobs):
            return
        prompts = {}
        for label in self._pending:
            d = self._prompt_data(label)
            prompts[label] = prompts_from_layers(d["points"], d["kinds"], d["shapes"], self.volume.grid_shape)
        missing = session_ops.missing_embeddings(self.session, {k for p in prompts.values() for k in p})
        if missing:
            self.ui.status(f"Embedding slice(s) {missing} for the prompt...")
            job = wl.embed_missing_worker(self.session.embedder, missing)
            self._launch("demand", job, done=self._request_sync)
            return
        changed: set[int] = set()
        for label, p in prompts.items():
            try:
                ks = session_ops.sync_object_prompts(self.vp, label, p, name=self.objects[label]["name"])
            except MedsamError as exc:
                show_warning(str(exc))
                continue
            if self._changed.get(label) is not None:
                self._changed[label].update(ks)
            changed.update(ks)
        self._pending.clear()
        if changed:
            self._commit(sorted(changed))
            obj = self.session.objects.get(self.current_label)
            scores = [f"{k}: {obj.results[k].score:.2f}" for k in sorted(changed) if obj and k in obj.results]
            self.ui.status(f"Segmented slice(s) {sorted(changed)}; confidence {', '.join(scores) or '-'}")

    # ----------------------------------------------------------------- objects
    def new_object(self, name: str | None = None, label: int | None = None, color: Any = None) -> int:
        """Add an object (one output label) and make it current; returns its label."""
        if label is None:
            ui_label = self.ui.label_spin.value()
            label = ui_label if ui_label not in self.objects else max(self.objects, default=0) + 1
        label = int(label)
        if not 1 <= label <= 255:
            raise ValueError(f"object labels are 1..255 in the widget, got {label}")
        if label in self.objects:
            raise ValueError(f"label {label} is already used by {self.objects[label]['name']!r}")
        name = name or self.ui.name_edit.text().strip() or f"object {label}"
        qcolor = QColor(color) if color is not None else self.ui.picked_color or QColor(wl.default_color(label))
        self.objects[label] = {"name": name, "color": qcolor.name()}
        self._changed[label] = None
        if self.session is not None:
            session_ops.ensure_object(self.vp, label, name)
        self.ui.add_object(label, name, qcolor)
        if self.labels_layer is not None:
            self.labels_layer.colormap = wl.labels_colormap({k: v["color"] for k, v in self.objects.items()})
        self.select_object(label)
        self.ui.after_new_object(max(self.objects) + 1)
        self._schedule_measure()
        return label

    def select_object(self, label: int) -> None:
        """Make ``label`` the current object; each object keeps its own prompts."""
        label = int(label)
        if label not in self.objects or label == self.current_label:
            return
        if self.current_label is not None and self.points_layer is not None:
            self._stored_prompts[self.current_label] = {
                k: (list(v) if k != "points" else v.copy()) for k, v in self._prompt_data(self.current_label).items()
            }
        self.current_label = label
        self.ui.select_object(label)
        if self.points_layer is None:
            return
        stored = self._stored_prompts.pop(label, _EMPTY)
        self._loading_layers = True
        try:
            self.points_layer.data = stored["points"] if len(stored["points"]) else []
            if len(stored["kinds"]):
                kinds = pd.Categorical(stored["kinds"], categories=[POSITIVE, NEGATIVE])
                self.points_layer.features = pd.DataFrame({"prompt": kinds})
                self.points_layer.refresh_colors(update_color_mapping=False)
            self.shapes_layer.data = stored["shapes"]
        finally:
            self._loading_layers = False
        self.labels_layer.selected_label = label

    def delete_object(self) -> None:
        """Remove the current object, its prompts and its masks."""
        label = self.current_label
        if label is None or "propagate" in self._jobs:
            return
        slices = session_ops.remove_object(self.vp, label) if self.session is not None else []
        for store in (self.objects, self._stored_prompts, self._changed):
            store.pop(label, None)
        self._pending.discard(label)
        self.current_label = None
        self.ui.remove_object(label)
        if slices:
            self._commit(slices)
        if self.objects:
            self.select_object(next(iter(self.objects)))
        else:
            self.new_object()
        self._schedule_measure()
