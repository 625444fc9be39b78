"""Qt controls of the Segment Anything widget (layout only; no behaviour)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QColorDialog,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._widget_measure import MeasurementsTable

__all__ = ["SamWidgetUI"]


def _swatch(color: QColor) -> QIcon:
    pix = QPixmap(12, 12)
    pix.fill(color)
    return QIcon(pix)


class SamWidgetUI:
    """Builds the controls on ``parent`` and offers small setters for the widget."""

    def __init__(self, parent: QWidget, models: Sequence[str]) -> None:
        self.parent = parent
        self.picked_color: QColor | None = None
        root = QVBoxLayout(parent)

        setup = QGroupBox("1. Image and model")
        form = QFormLayout(setup)
        self.image_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.addItems(list(models))
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("bundled weights (LiteMedSAM)")
        browse = QPushButton("...")
        browse.setFixedWidth(28)
        browse.clicked.connect(self._browse_checkpoint)
        ckpt = QHBoxLayout()
        ckpt.addWidget(self.checkpoint_edit)
        ckpt.addWidget(browse)
        self.adapter_edit = QLineEdit()
        self.adapter_edit.setPlaceholderText("none (optional .safetensors from medsam finetune)")
        browse_adapter = QPushButton("...")
        browse_adapter.setFixedWidth(28)
        browse_adapter.clicked.connect(self._browse_adapter)
        adapter_row = QHBoxLayout()
        adapter_row.addWidget(self.adapter_edit)
        adapter_row.addWidget(browse_adapter)
        self.window_combo = QComboBox()
        self.window_combo.setToolTip("Intensity window the model sees (default from the header / modality)")
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Checkpoint", ckpt)
        form.addRow("Adapter", adapter_row)
        form.addRow("Window", self.window_combo)
        self.prepare_btn = QPushButton("Prepare (embed slices)")
        form.addRow(self.prepare_btn)
        root.addWidget(setup)

        objects = QGroupBox("2. Objects and prompts")
        oform = QFormLayout(objects)
        self.object_combo = QComboBox()
        self.object_combo.setToolTip("The object that new prompts belong to (N: next object)")
        self.name_edit = QLineEdit()
        self.name_edit.setPlaceholderText("e.g. liver")
        self.label_spin = QSpinBox()
        self.label_spin.setRange(1, 255)
        self.color_btn = QPushButton("Colour...")
        self.color_btn.clicked.connect(self._pick_color)
        row = QHBoxLayout()
        row.addWidget(self.label_spin)
        row.addWidget(self.color_btn)
        self.new_obj_btn = QPushButton("New object")
        self.new_obj_btn.setToolTip("Add an object with its own label and colour (C accepts the current one "
                                    "and starts a new one; N moves to the next object)")
        self.del_obj_btn = QPushButton("Delete object")
        btns = QHBoxLayout()
        btns.addWidget(self.new_obj_btn)
        btns.addWidget(self.del_obj_btn)
        oform.addRow("Current", self.object_combo)
        oform.addRow("Name", self.name_edit)
        oform.addRow("Label", row)
        oform.addRow(btns)
        self.point_type_label = QLabel("New points: positive (T toggles)")
        oform.addRow(self.point_type_label)
        self.keys_label = QLabel(
            "Keys: P points, B boxes, T +/-, Shift+S propagate, N next object, C accept, "
            "Ctrl+Z / Ctrl+Shift+Z undo / redo"
        )
        self.keys_label.setWordWrap(True)
        oform.addRow(self.keys_label)
        root.addWidget(objects)

        run = QGroupBox("3. Volume")
        rform = QVBoxLayout(run)
        self.propagate_btn = QPushButton("Propagate current object")
        self.propagate_btn.setToolTip("Carry the current object through the volume, both ways (Shift+S)")
        undo = QHBoxLayout()
        self.undo_btn = QPushButton("Undo (Ctrl+Z)")
        self.undo_btn.setToolTip("Undo the last change to the labels (Ctrl+Z)")
        self.redo_btn = QPushButton("Redo (Ctrl+Shift+Z)")
        self.redo_btn.setToolTip("Redo (Ctrl+Shift+Z)")
        undo.addWidget(self.undo_btn)
        undo.addWidget(self.redo_btn)
        self.export_btn = QPushButton("Export segmentation...")
        self.session_btn = QPushButton("Save session for replay...")
        self.session_btn.setToolTip("A JSON sidecar of the prompts, model and window: `medsam replay FILE -o OUT`")
        self.confidence_label = QLabel("")
        self.confidence_label.setWordWrap(True)
        rform.addWidget(self.propagate_btn)
        rform.addLayout(undo)
        rform.addWidget(self.export_btn)
        rform.addWidget(self.session_btn)
        rform.addWidget(self.confidence_label)
        root.addWidget(run)

        measured = QGroupBox("4. Measurements")
        mform = QVBoxLayout(measured)
        self.measure_table = MeasurementsTable()
        mform.addWidget(self.measure_table)
        root.addWidget(measured)

        bar = QHBoxLayout()
        self.progress_bar = QProgressBar()
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        bar.addWidget(self.progress_bar)
        bar.addWidget(self.cancel_btn)
        root.addLayout(bar)
        self.status_label = QLabel("Open a volume, choose the model and press Prepare.")
        self.status_label.setWordWrap(True)
        root.addWidget(self.status_label)
        root.addStretch(1)

    # ----------------------------------------------------------------- setters
    def set_images(self, layers: Sequence[Any], keep: Any = None) -> None:
        combo = self.image_combo
        combo.blockSignals(True)
        combo.clear()
        for layer in layers:
            combo.addItem(layer.name, layer)
        idx = next((i for i, ly in enumerate(layers) if ly is keep), len(layers) - 1)
        combo.setCurrentIndex(idx)
        combo.blockSignals(False)
        if layers and combo.currentData() is not keep:
            combo.currentIndexChanged.emit(idx)

    def set_windows(self, choices: Sequence[str], default: str) -> None:
        combo = self.window_combo
        combo.blockSignals(True)
        combo.clear()
        combo.addItems(list(choices))
        combo.setCurrentText(default)
        combo.blockSignals(False)

    def status(self, text: str) -> None:
        self.status_label.setText(text)

    def progress(self, done: int, total: int) -> None:
        self.progress_bar.setRange(0, max(int(total), 1))
        self.progress_bar.setValue(int(done) if total else 1)

    def set_busy(self, busy: bool) -> None:
        self.cancel_btn.setEnabled(busy)

    def add_object(self, label: int, name: str, color: QColor) -> None:
        self.object_combo.addItem(_swatch(color), f"{label}: {name}", label)

    def select_object(self, label: int) -> None:
        idx = self.object_combo.findData(label)
        if idx >= 0:
            self.object_combo.setCurrentIndex(idx)

    def remove_object(self, label: int) -> None:
        idx = self.object_combo.findData(label)
        if idx >= 0:
            self.object_combo.removeItem(idx)

    def after_new_object(self, next_label: int) -> None:
        self.name_edit.clear()
        self.picked_color = None
        self.label_spin.setValue(min(next_label, self.label_spin.maximum()))

    # ------------------------------------------------------------------ dialogs
    def _pick_color(self) -> None:
        color = QColorDialog.getColor(parent=self.parent, title="Object colour")
        if color.isValid():
            self.picked_color = color
            self.color_btn.setIcon(_swatch(color))

    def _browse_adapter(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.parent, "Fine-tuned adapter", "", "Adapters (*.safetensors);;All files (*)"
        )
        if path:
            self.adapter_edit.setText(path)

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.parent, "Model checkpoint", "", "PyTorch weights (*.pth *.pt *.ckpt);;All files (*)"
        )
        if path:
            self.checkpoint_edit.setText(path)
