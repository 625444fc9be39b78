"""The widget's measurements table: one row per object, refreshed after each edit.

The numbers come from :func:`medsam.measure.measure_labels` on the source grid: volume in mL
(area in mm² for a 2D image), the RECIST long and short axes, and the HU mean for CT. A
refresh waits until the labels have been still for :data:`DELAY_MS`, so a brush stroke
measures once, not once per dab.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QTableWidget, QTableWidgetItem

from medsam.io.volume import Volume
from medsam.measure import ObjectMeasurements, measure_labels

__all__ = ["MeasurementsTable", "DELAY_MS", "size_text"]

DELAY_MS = 300


def size_text(m: ObjectMeasurements, volume: Volume) -> str:
    """``"712.51 mL"``, or for a 2D image the area, ``"1234.5 mm²"``."""
    if volume.n_slices == 1:
        sx, sy, _ = volume.spacing
        return f"{m.voxels * sx * sy:.1f} mm²"
    return f"{m.volume_ml:.2f} mL"


class MeasurementsTable(QTableWidget):
    """Object, size, long axis, short axis and HU mean, one row per object."""

    HEADERS = ("Object", "Size", "Long axis (mm)", "Short axis (mm)", "HU mean")

    def __init__(self, parent: Any = None) -> None:
        super().__init__(0, len(self.HEADERS), parent)
        self.setHorizontalHeaderLabels(self.HEADERS)
        self.verticalHeader().setVisible(False)
        self.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.setToolTip("Measured on the source grid in mm; updates after each propagation or edit.")
        self.rows: list[ObjectMeasurements] = []
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DELAY_MS)

    def measure(self, labels: np.ndarray, volume: Volume, names: Mapping[int, str]) -> list[ObjectMeasurements]:
        """Measure the objects in ``names`` now and show them; returns the rows shown."""
        labels = np.asarray(labels)
        keep = np.isin(labels, list(names)) if names else np.zeros(labels.shape, bool)
        self.rows = measure_labels(np.where(keep, labels, 0), volume, names=names)
        self.setRowCount(len(names))
        by_label = {m.label: m for m in self.rows}
        for row, (label, name) in enumerate(sorted(names.items())):
            m = by_label.get(label)
            cells = (
                f"{label}: {name}",
                size_text(m, volume) if m else ("0 mm²" if volume.n_slices == 1 else "0.00 mL"),
                f"{m.long_axis_mm:.1f}" if m else "",
                f"{m.short_axis_mm:.1f}" if m else "",
                f"{m.hu['mean']:.0f}" if m and m.hu else "",
            )
            for col, text in enumerate(cells):
                self.setItem(row, col, QTableWidgetItem(text))
        self.resizeColumnsToContents()
        return self.rows

    def text(self) -> list[list[str]]:
        """The table's cells, row by row (what the user sees)."""
        return [[self.item(r, c).text() for c in range(self.columnCount())] for r in range(self.rowCount())]
