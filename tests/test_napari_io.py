"""napari reader, writer and sample data of the medsam plugin (no model needed)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import npe2
import numpy as np
import pytest

from medsam.errors import OutputExistsError
from medsam.io import load_volume
from napari_plugin._layers import (
    GEOMETRY_KEY,
    VOLUME_KEY,
    geometry_from_layer_state,
    napari_transform,
)
from napari_plugin._reader import get_reader
from napari_plugin._sample_data import make_sample_ct
from napari_plugin._writer import save_labels, write_labels

PLUGIN = "medsam-monai"  # npe2 requires the manifest name to equal the distribution name


@pytest.fixture(scope="module")
def ct_path(sample_data: Path) -> Path:
    return sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"


def _world_of_voxels(kwargs: dict, zyx: np.ndarray) -> np.ndarray:
    """napari's data -> world: affine(translate + scale * x)."""
    physical = np.asarray(kwargs["translate"]) + np.asarray(kwargs["scale"]) * zyx
    aff = np.asarray(kwargs["affine"])
    return physical @ aff[:3, :3].T + aff[:3, 3]


def test_manifest_is_valid_and_discovered() -> None:
    pm = npe2.PluginManager.instance()
    pm.discover()
    mf = pm.get_manifest(PLUGIN)
    assert {c.id.split(".")[-1] for c in mf.contributions.commands} >= {
        "get_reader", "write_labels", "make_sample_ct", "make_sam_widget",
    }


def test_reader_nifti_world_is_lps_mm(ct_path: Path) -> None:
    reader = get_reader(str(ct_path))
    assert reader is not None
    [(data, kwargs, kind)] = reader(str(ct_path))
    vol = kwargs["metadata"][VOLUME_KEY]
    assert kind == "image" and data.shape == (30, 101, 122)
    assert kwargs["scale"] == (3.0, 3.0, 3.0)
    # CT without a header window: the soft-tissue window is the initial contrast
    assert kwargs["contrast_limits"] == (-160.0, 240.0)
    # napari world coordinates are LPS mm in (S, P, L) order for every voxel
    rng = np.random.default_rng(0)
    zyx = rng.integers(0, [30, 101, 122], size=(20, 3)).astype(float)
    lps = vol.index_to_world(zyx[:, ::-1])
    np.testing.assert_allclose(_world_of_voxels(kwargs, zyx), lps[:, ::-1], atol=1e-6)
    assert kwargs["metadata"][GEOMETRY_KEY]["spacing"] == [3.0, 3.0, 3.0]


def test_reader_dicom_folder_uses_header_window(sample_data: Path) -> None:
    folder = sample_data / "totalsegmentator" / "example_ct_dicom"
    [(data, kwargs, _)] = get_reader(str(folder))(str(folder))
    assert data.shape == (20, 512, 512)
    assert kwargs["contrast_limits"] == (40 - 150, 40 + 150)  # WindowCenter 40, Width 300
    np.testing.assert_allclose(kwargs["scale"], (2.0, 0.9765625, 0.9765625))


def test_reader_through_npe2(ct_path: Path) -> None:
    layers = npe2.read([str(ct_path)], stack=False, plugin_name=PLUGIN)
    assert layers[0][0].shape == (30, 101, 122)


def test_reader_declines_text_and_sr(tmp_path: Path) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert get_reader(str(text)) is None
    assert get_reader(str(tmp_path / "missing.nii.gz")) is None

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientName = "SR", "Test^SR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    sr = tmp_path / "report.dcm"
    ds.save_as(sr, enforce_file_format=True)
    assert get_reader(str(sr)) is None
    assert get_reader(str(tmp_path)) is None  # a folder with no image series


def test_writer_round_trip_keeps_the_source_affine(ct_path: Path, tmp_path: Path) -> None:
    image, labels = make_sample_ct()
    data, kwargs, kind = labels
    assert kind == "labels"
    out = tmp_path / "seg.nii.gz"
    meta = {"name": kwargs["name"], "metadata": kwargs["metadata"], "scale": kwargs["scale"]}
    assert write_labels(str(out), data, meta) == [str(out)]
    src, written = nib.load(ct_path), nib.load(out)
    np.testing.assert_allclose(written.affine, src.affine, atol=1e-4)
    np.testing.assert_allclose(written.get_qform(), src.affine, atol=1e-4)
    np.testing.assert_allclose(written.get_sform(), src.affine, atol=1e-4)
    np.testing.assert_array_equal(load_volume(out).array, data)
    # the npe2 writer never overwrites; the widget's confirmed export may
    with pytest.raises(OutputExistsError):
        write_labels(str(out), data, meta)
    assert save_labels(out, np.zeros_like(data), meta, overwrite=True) == str(out)
    assert load_volume(out).array.max() == 0


def test_writer_through_npe2_and_from_layer_transform(ct_path: Path, tmp_path: Path) -> None:
    vol = load_volume(ct_path)
    kwargs, exact = napari_transform(vol)
    assert exact
    labels = (vol.array > 100).astype(np.uint8)
    # no metadata: the geometry is recovered from the layer transform (with a warning)
    like, source = geometry_from_layer_state(kwargs, labels.shape)
    assert source == "layer transform" and like.same_geometry(vol)
    out = tmp_path / "seg.nrrd"
    written = npe2.write(str(out), [(labels, {"metadata": {VOLUME_KEY: vol}}, "labels")], plugin_name=PLUGIN)
    assert written == [str(out)]
    back = load_volume(out)
    assert back.same_geometry(vol)
    np.testing.assert_array_equal(back.array, labels)


def test_sample_data_matches_reference(ct_path: Path) -> None:
    (img, ikw, ikind), (lab, lkw, lkind) = make_sample_ct()
    assert (ikind, lkind) == ("image", "labels")
    assert img.shape == lab.shape == (30, 101, 122)
    assert (lab == 5).sum() > 10000  # liver
    np.testing.assert_allclose(lkw["affine"], ikw["affine"])


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_reader_nrrd_and_metaimage(ct_path: Path, tmp_path: Path, suffix: str) -> None:
    import SimpleITK as sitk

    out = tmp_path / f"ct{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(ct_path)), str(out))
    [(data, kwargs, _)] = get_reader(str(out))(str(out))
    src = load_volume(ct_path)
    assert kwargs["metadata"][VOLUME_KEY].same_geometry(src)
    np.testing.assert_array_equal(data, src.array)


def test_contributions_in_a_viewer(make_napari_viewer, ct_path: Path, tmp_path: Path) -> None:
    viewer = make_napari_viewer()
    layers = viewer.open_sample(PLUGIN, "abdomen_ct")
    assert [ly.name for ly in layers] == ["sample CT (abdomen)", "reference (TotalSegmentator)"]
    image, ref = layers
    # world coordinates are LPS mm: voxel (k=0, j=0, i=0) sits at the NIfTI origin (LPS)
    vol = image.metadata[VOLUME_KEY]
    np.testing.assert_allclose(image.data_to_world([0, 0, 0]), np.asarray(vol.origin)[::-1], atol=1e-6)
    opened = viewer.open(str(ct_path), plugin=PLUGIN)
    assert opened[0].data.shape == (30, 101, 122)
    out = tmp_path / "reference.nii.gz"
    viewer.layers.selection.active = ref
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    np.testing.assert_allclose(nib.load(out).affine, nib.load(ct_path).affine, atol=1e-4)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment Anything")
    assert widget.ui.image_combo.count() == 2  # the two CTs


def test_dicom_seg_opens_on_its_series_and_saves_back(make_napari_viewer, sample_data: Path, tmp_path: Path) -> None:
    """A SEG file opens as a labels layer on top of the series it references; the npe2 writer
    saves it back as a SEG with the same segments."""
    import SimpleITK as sitk

    from medsam.io.dicom_seg import load_segmentation

    seg_path = sample_data / "dcmqi_ct3slice" / "dicom_seg" / "liver_seg_pydicom-data.dcm"
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_data / "dcmqi_ct3slice" / "liver_seg.nrrd")))
    viewer = make_napari_viewer(show=True)
    image, labels = viewer.open(str(seg_path), plugin=PLUGIN)
    assert image.data.shape == labels.data.shape == (3, 512, 512)
    np.testing.assert_array_equal(labels.data, liver)
    # a screenshot for the README (docs/napari_seg.png is a copy of this)
    viewer.dims.set_point(0, image.data_to_world([1, 0, 0])[0])
    shot = viewer.screenshot(canvas_only=True, flash=False)
    assert shot.std() > 10
    from imageio.v3 import imwrite

    artifacts = Path(__file__).resolve().parent / "artifacts"
    artifacts.mkdir(exist_ok=True)
    imwrite(artifacts / "napari_seg.png", shot)
    assert labels.name == "liver_seg_pydicom-data.dcm (Liver)"
    # on top of its series: the same world placement, LPS mm
    np.testing.assert_allclose(labels.data_to_world([2, 10, 20]), image.data_to_world([2, 10, 20]))
    ct = image.metadata[VOLUME_KEY]
    assert ct.meta.series_uid == load_volume(sample_data / "dcmqi_ct3slice" / "ct-3slice").meta.series_uid

    out = tmp_path / "resaved.dcm"
    viewer.layers.selection.active = labels
    assert viewer.layers.save(str(out), selected=True, plugin=PLUGIN) == [str(out)]
    back = load_segmentation(out, ct)
    np.testing.assert_array_equal(back.labels, liver)
    assert back.names == ("Liver",)


def test_widget_exports_dicom_seg_and_reports_a_failed_export(
    make_napari_viewer, qtbot, sample_data: Path, tmp_path: Path, monkeypatch
) -> None:
    """Export writes one named, coloured segment per object; a failed export says so, not
    'Saved'. The measurements table follows the labels."""
    import SimpleITK as sitk

    from medsam.io.dicom_seg import load_segmentation
    from napari_plugin._widget import SamWidget

    folder = sample_data / "dcmqi_ct3slice" / "ct-3slice"
    liver = sitk.GetArrayFromImage(sitk.ReadImage(str(sample_data / "dcmqi_ct3slice" / "liver_seg.nrrd")))
    viewer = make_napari_viewer()
    [(data, kwargs, _)] = get_reader(str(folder))(str(folder))
    image = viewer.add_image(data, **kwargs)
    widget = SamWidget(viewer, device="cpu")
    widget._make_layers(image, kwargs["metadata"][VOLUME_KEY])
    widget.volume = kwargs["metadata"][VOLUME_KEY]
    widget.new_object("liver", 1, "#00ff00")
    widget.labels_layer.data = liver.astype(widget.labels_layer.data.dtype)
    # the measurements table: the liver's mL, and again after a brush stroke
    vol = widget.volume
    voxel_ml = float(np.prod(vol.spacing)) / 1000
    qtbot.waitUntil(lambda: widget.ui.measure_table.rowCount() == 1, timeout=5000)
    [[name, size, long_axis, short_axis, hu]] = widget.ui.measure_table.text()
    assert name == "1: liver" and size == f"{liver.sum() * voxel_ml:.2f} mL"
    assert 150 < float(long_axis) < 300 and 0 < float(short_axis) < float(long_axis) and 20 < float(hu) < 150
    widget.labels_layer.brush_size = 9
    widget.labels_layer.paint((1, 20, 20), 1)  # outside the liver
    painted = int((np.asarray(widget.labels_layer.data) == 1).sum())
    assert painted > liver.sum()
    qtbot.waitUntil(lambda: widget.ui.measure_table.text()[0][1] == f"{painted * voxel_ml:.2f} mL", timeout=5000)
    widget.labels_layer.data = liver.astype(widget.labels_layer.data.dtype)
    qtbot.waitUntil(lambda: widget.ui.measure_table.text()[0][1] == f"{liver.sum() * voxel_ml:.2f} mL", timeout=5000)

    out = tmp_path / "liver.dcm"
    monkeypatch.setattr("napari_plugin._widget_actions.QFileDialog.getSaveFileName", lambda *a, **k: (str(out), ""))
    assert widget.export() == str(out)
    assert widget.ui.status_label.text() == f"Saved {out}"
    seg = load_segmentation(out, widget.volume)
    np.testing.assert_array_equal(seg.labels, liver)
    assert seg.names == ("liver",)
    import highdicom as hd
    import pydicom

    lab = pydicom.dcmread(out).SegmentSequence[0].RecommendedDisplayCIELabValue
    assert hd.color.CIELabColor.from_dicom_value(tuple(lab)).to_rgb() == (0, 255, 0)

    # The same labels on a NIfTI image cannot become a SEG: the error is shown, nothing is written.
    ct = sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"
    [(data2, kwargs2, _)] = get_reader(str(ct))(str(ct))
    image2 = viewer.add_image(data2, **kwargs2)
    widget2 = SamWidget(viewer, device="cpu")
    widget2._make_layers(image2, kwargs2["metadata"][VOLUME_KEY])
    widget2.volume = kwargs2["metadata"][VOLUME_KEY]
    bad = tmp_path / "nifti.dcm"
    monkeypatch.setattr("napari_plugin._widget_actions.QFileDialog.getSaveFileName", lambda *a, **k: (str(bad), ""))
    assert widget2.export() is None
    assert widget2.ui.status_label.text().startswith("Export failed:")
    assert "needs a DICOM source series" in widget2.ui.status_label.text()
    assert not bad.exists()


def test_widget_measures_area_on_a_2d_image(make_napari_viewer, qtbot, sample_data: Path, tmp_path: Path) -> None:
    """A one-slice image: the table shows the area in mm²."""
    import SimpleITK as sitk

    from napari_plugin._widget import SamWidget

    img = sitk.ReadImage(str(sample_data / "totalsegmentator" / "example_ct_sm.nii.gz"))
    path = tmp_path / "slice.nii.gz"
    sitk.WriteImage(img[:, :, 24:25], str(path))
    viewer = make_napari_viewer()
    [(data, kwargs, _)] = get_reader(str(path))(str(path))
    image = viewer.add_image(data, **kwargs)
    widget = SamWidget(viewer, device="cpu")
    vol = kwargs["metadata"][VOLUME_KEY]
    widget._make_layers(image, vol)
    widget.volume = vol
    widget.new_object("spot", 2)
    labels = np.zeros(vol.grid_shape, widget.labels_layer.data.dtype)
    labels[0, 40:50, 30:45] = 2  # 10 x 15 pixels
    widget.labels_layer.data = labels
    sx, sy, _ = vol.spacing
    qtbot.waitUntil(lambda: widget.ui.measure_table.rowCount() == 1, timeout=5000)
    qtbot.waitUntil(lambda: widget.ui.measure_table.text()[0][1] == f"{150 * sx * sy:.1f} mm²", timeout=5000)
    long_axis = float(widget.ui.measure_table.text()[0][2])
    assert abs(long_axis - np.hypot(15 * sx, 10 * sy)) <= max(sx, sy)  # the diagonal
