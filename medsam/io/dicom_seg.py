"""DICOM Segmentation objects (SEG), written and read with highdicom.

:func:`write_dicom_seg` turns a label map (or a stack of possibly overlapping object masks)
on a DICOM series' grid into a BINARY DICOM SEG that references the series and each of its
source SOP instances, one segment per object, with coded anatomy (:mod:`medsam.io.seg_codes`),
a display colour and the algorithm that made it. :func:`load_segmentation` reads a SEG back
onto a reference volume's grid.

What the output carries: highdicom's SEG modules, with patient and study identity copied
from the source series (``PatientName``, ``PatientID``, ``PatientBirthDate``, ``PatientSex``,
``StudyInstanceUID``, ``StudyID``, ``StudyDate``, ``StudyTime``, ``AccessionNumber``,
``ReferringPhysicianName``) and nothing else of the source's header.

Imperfect source headers and ``anonymize`` are handled in :mod:`medsam.io.dicom_seg_sources`.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsam.atomic import atomic_write
from medsam.errors import InputFileError
from medsam.io.dicom_geometry import TILT_KEY, retilt
from medsam.io.dicom_seg_sources import source_datasets
from medsam.io.seg_codes import code_segment
from medsam.io.volume import Volume
from medsam.overlay import LABEL_COLOURS  # the SEG's default colours are medsam's overlay colours

__all__ = [
    "AlgorithmInfo",
    "Segmentation",
    "write_dicom_seg",
    "load_segmentation",
    "check_seg_source",
    "is_dicom_seg",
    "find_source_series",
]

#: SOP Class UID of Segmentation Storage.
SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"

logger = logging.getLogger(__name__)

#: Fractional SEG pixels at or above this fraction of MaximumFractionalValue count as inside.
FRACTIONAL_THRESHOLD = 0.5
_TRACKING_PREFIX = "medsam label "


@dataclass(frozen=True)
class AlgorithmInfo:
    """What made the segments, recorded in each segment's Algorithm Identification."""

    name: str = "medsam"
    version: str = ""
    model: str = ""
    adapter: str = ""


@dataclass(frozen=True, eq=False)
class Segmentation:
    """A DICOM SEG read onto a reference grid.

    Attributes
    ----------
    masks:
        ``(N, Z, Y, X)`` bool, one mask per segment, on the reference volume's grid.
        Overlapping segments stay separate here.
    values:
        The label value of each segment: the one medsam wrote (kept in the segment's
        TrackingID), else its SegmentNumber.
    names:
        Each segment's SegmentLabel.
    """

    masks: np.ndarray
    values: tuple[int, ...]
    names: tuple[str, ...]
    path: Path

    @property
    def labels(self) -> np.ndarray:
        """``(Z, Y, X)`` label map; where segments overlap, the later segment wins."""
        dtype = np.uint8 if max(self.values, default=0) <= 255 else np.uint16
        out = np.zeros(self.masks.shape[1:], dtype)
        for value, mask in zip(self.values, self.masks, strict=True):
            out[mask] = value
        return out

    @property
    def label_names(self) -> dict[int, str]:
        return dict(zip(self.values, self.names, strict=True))

    @property
    def overlapping(self) -> bool:
        return bool((self.masks.sum(axis=0) > 1).any()) if len(self.masks) else False


def check_seg_source(like: Volume, path: str | os.PathLike[str]) -> None:
    """Refuse a ``.dcm`` output for an image that was not read from DICOM files."""
    if like.meta.format != "dicom" or not like.meta.slice_files:
        raise InputFileError(
            path,
            f"a DICOM SEG needs a DICOM source series to reference, but the image is {like.meta.format} "
            "(write .nii.gz, .nrrd or .mha instead)",
        )


# ----------------------------------------------------------------------------- writing
def _segment_stack(
    masks: np.ndarray, grid: tuple[int, int, int], names: Mapping[int, str] | Sequence[str] | None
) -> tuple[np.ndarray, list[int], list[str]]:
    """``(Z, Y, X, N)`` bool masks, the label value and the name of each segment."""
    arr = np.asarray(masks)
    if arr.shape == grid:  # a label map
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool):
            raise TypeError(f"labels must be an integer or bool array, got {arr.dtype}")
        named = dict(names) if isinstance(names, Mapping) else {}
        values = sorted({int(v) for v in np.unique(arr) if v > 0} | {int(v) for v in named if int(v) > 0})
        stack = np.stack([arr == v for v in values], axis=-1) if values else np.zeros((*grid, 0), bool)
        return stack, values, [named.get(v) or f"object {v}" for v in values]
    if arr.ndim == 4 and arr.shape[1:] == grid:  # (N, Z, Y, X) object masks, may overlap
        n = arr.shape[0]
        listed = list(names) if names is not None and not isinstance(names, Mapping) else []
        if names is not None and len(listed) != n:
            raise ValueError(f"{n} object masks need {n} names, got {len(listed) or names!r}")
        values = list(range(1, n + 1))
        return np.moveaxis(arr.astype(bool), 0, -1), values, [nm or f"object {v}" for nm, v in zip(listed or [""] * n, values, strict=True)]
    raise ValueError(f"masks have shape {arr.shape}; expected the grid {grid} (Z, Y, X) or (N, *grid)")


def write_dicom_seg(
    masks: np.ndarray,
    like: Volume,
    path: str | os.PathLike[str],
    *,
    names: Mapping[int, str] | Sequence[str] | None = None,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    algorithm: AlgorithmInfo | None = None,
    anonymize: bool = False,
) -> Path:
    """Write a BINARY DICOM SEG of ``masks`` on the DICOM series ``like`` was read from.

    Parameters
    ----------
    masks:
        A label map ``(Z, Y, X)`` (one segment per label value present, or named), or
        ``(N, Z, Y, X)`` bool object masks, which may overlap and stay separate segments.
    like:
        The source volume; ``like.meta.slice_files`` are re-read for their headers.
    path:
        Output file. Written atomically; the caller checks overwriting.
    names:
        ``{label value: name}`` for a label map, or ``N`` names for object masks; missing
        names are ``"object V"``. Names choose the coded anatomy.
    colors:
        ``{label value: (r, g, b)}`` 0-255 display colours (default:
        :data:`medsam.overlay.LABEL_COLOURS`).
    algorithm:
        Recorded in every segment (name, version, and model/adapter as parameters).
    anonymize:
        Pseudonymise patient and study identity (see the module docstring).

    Returns
    -------
    Path
        The written file.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    check_seg_source(like, path)
    if like.is_rgb:
        raise InputFileError(path, "a DICOM SEG of an RGB image is not supported")
    stack, values, seg_names = _segment_stack(masks, like.grid_shape, names)
    if not values:
        raise ValueError(f"{path}: nothing to write: the mask is empty and no object is named")
    algo = algorithm or AlgorithmInfo()
    from medsam import __version__

    version = algo.version or __version__
    params = {k: v for k, v in (("model", algo.model), ("adapter", algo.adapter)) if v}
    ident = hd.AlgorithmIdentificationSequence(
        name=algo.name, family=codes.cid7162.ArtificialIntelligence, version=version, parameters=params or None
    )
    descriptions = []
    for number, (value, name) in enumerate(zip(values, seg_names, strict=True), start=1):
        coding = code_segment(name)
        rgb = (colors or {}).get(value) or tuple(int(c) for c in LABEL_COLOURS[(value - 1) % len(LABEL_COLOURS)])
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name[:64],
                segmented_property_category=coding.category,
                segmented_property_type=coding.type,
                # prompted by a user, made by a model: semi-automatic
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.SEMIAUTOMATIC,
                algorithm_identification=ident,
                tracking_id=f"{_TRACKING_PREFIX}{value}",
                tracking_uid=generate_uid(),
                display_color=hd.color.CIELabColor.from_rgb(*rgb),
            )
        )
    sources = source_datasets(like, anonymize=anonymize)
    shifts = like.meta.extra.get(TILT_KEY)
    if shifts and len(shifts) == stack.shape[0]:
        stack = retilt(stack, shifts)  # each frame on its tilted source slice's pixels
    frame_numbers = like.meta.extra.get("frame_numbers")
    if len(sources) == 1 and frame_numbers and len(frame_numbers) == stack.shape[0]:
        stack = stack[np.argsort(frame_numbers)]  # a multi-frame source: SEG frames follow its frames
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        seg = _segmentation(
            like,
            source_images=sources,
            pixel_array=stack,  # in the order of the source images (or frames)
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=generate_uid(),
            series_number=1000,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer="medsam",
            manufacturer_model_name=(algo.model or "medsam")[:64],
            software_versions=version,
            device_serial_number="0",
            content_label="MEDSAM",
            content_description="Segmentation made with medsam",
            series_description="medsam segmentation",
        )
    for w in caught:  # highdicom's remarks on source headers (single-component names ...)
        logger.info("%s: %s", like.source, w.message)
    if anonymize:
        seg.PatientIdentityRemoved = "YES"
        seg.DeidentificationMethod = "medsam pseudonymisation (hashed identity and UIDs)"
    atomic_write(Path(path), lambda tmp: seg.save_as(tmp, enforce_file_format=True))
    logger.info("wrote DICOM SEG with %d segments on %d frames to %s", len(values), seg.NumberOfFrames, path)
    return Path(path)


def _segmentation(like: Volume, **kwargs):
    """``highdicom.seg.Segmentation(**kwargs)``; a source header it refuses is a one-line error."""
    import highdicom as hd

    try:
        return hd.seg.Segmentation(**kwargs)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise InputFileError(
            like.source or "source series", f"cannot make a DICOM SEG on this series: {type(exc).__name__}: {exc}"
        ) from exc


# ----------------------------------------------------------------------------- reading
def _frame_item(seg, frame, keyword: str):
    """A functional group's first item for one frame: per-frame, else shared."""
    for group in (frame, seg.SharedFunctionalGroupsSequence[0]):
        if keyword in group:
            return group[keyword].value[0]
    return None


def _frame_slices(seg, reference: Volume, path: Path) -> list[int]:
    """The reference slice ``k`` of each SEG frame, by source SOP instance, else by position."""
    ref_uids = [u for u in reference.meta.sop_instance_uids]
    shifts = reference.meta.extra.get(TILT_KEY)
    by_uid = {u: k for k, u in enumerate(ref_uids) if u and ref_uids.count(u) == 1}
    ks: list[int] = []
    for n, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        derivation = _frame_item(seg, frame, "DerivationImageSequence")
        sources = [s.ReferencedSOPInstanceUID for s in (derivation or {}).get("SourceImageSequence", [])]
        hits = [by_uid[u] for u in sources if u in by_uid]
        if hits:
            ks.append(hits[0])
            continue
        pos = _frame_item(seg, frame, "PlanePositionSequence").ImagePositionPatient
        i, j, k = reference.world_to_index([float(v) for v in pos])
        kk = int(round(k))
        dy, dx = shifts[kk] if shifts and 0 <= kk < len(shifts) else (0.0, 0.0)  # a tilted slice's corner
        if abs(i - dx) > 0.01 or abs(j - dy) > 0.01 or abs(k - kk) > 0.05 or not 0 <= kk < reference.n_slices:
            raise InputFileError(
                path,
                f"frame {n} (at {', '.join(f'{float(v):.2f}' for v in pos)} mm) references no instance of the "
                "reference series and lies on none of its slices",
            )
        ks.append(kk)
    return ks


def load_segmentation(path: str | os.PathLike[str], reference: Volume) -> Segmentation:
    """Read a DICOM SEG onto the grid of ``reference`` (the series it segments).

    Frames are placed by the source SOP instance they reference, or, when that instance is
    not in ``reference`` (a SEG made on a copy with new UIDs), by their position, which must
    fall on one of the reference's slices. FRACTIONAL segments are thresholded: a pixel is
    inside when its value is at least half of ``MaximumFractionalValue``.

    Returns
    -------
    Segmentation
        ``masks`` ``(N, Z, Y, X)`` bool, each segment's label value and name.

    Raises
    ------
    InputFileError
        Not a DICOM SEG, or a SEG whose frames do not fit the reference grid.
    """
    import highdicom as hd

    path = Path(path)
    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # noqa: BLE001 - pydicom and highdicom raise many kinds
        raise InputFileError(path, f"is not a readable DICOM SEG ({type(exc).__name__}: {exc})") from None
    z, rows, cols = reference.grid_shape
    if (int(seg.Rows), int(seg.Columns)) != (rows, cols):
        raise InputFileError(
            path, f"frames are {seg.Rows}x{seg.Columns} but the reference slices are {rows}x{cols}"
        )
    ks = _frame_slices(seg, reference, path)
    frames = np.asarray(seg.pixel_array).reshape(len(ks), rows, cols)
    if seg.SegmentationType == "FRACTIONAL":
        inside = frames >= FRACTIONAL_THRESHOLD * float(seg.MaximumFractionalValue)
    else:
        inside = frames > 0
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence]
    index = {n: i for i, n in enumerate(numbers)}
    masks = np.zeros((len(numbers), z, rows, cols), bool)
    for frame, k, mask in zip(seg.PerFrameFunctionalGroupsSequence, ks, inside, strict=True):
        number = int(_frame_item(seg, frame, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        masks[index[number], k] |= mask
    shifts = reference.meta.extra.get(TILT_KEY)
    if shifts and len(shifts) == z:  # frames lie on the tilted source slices' pixels
        masks = np.moveaxis(retilt(np.moveaxis(masks, 0, -1), shifts, inverse=False), -1, 0)
    values, names = [], []
    for d in seg.SegmentSequence:
        tracking = str(d.get("TrackingID", ""))
        tail = tracking[len(_TRACKING_PREFIX):]
        values.append(int(tail) if tracking.startswith(_TRACKING_PREFIX) and tail.isdigit() else int(d.SegmentNumber))
        names.append(str(d.SegmentLabel))
    if len(set(values)) != len(values):
        values = numbers
    logger.info("read %d segments of %s onto %s", len(values), path, reference.source)
    return Segmentation(masks=masks, values=tuple(values), names=tuple(names), path=path)


def is_dicom_seg(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a DICOM file of the Segmentation Storage class."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
    except Exception:  # noqa: BLE001 - anything unreadable is not a SEG
        return False
    return str(ds.get("SOPClassUID", "")) == SEG_SOP_CLASS


def find_source_series(
    path: str | os.PathLike[str], search: Sequence[str | os.PathLike[str]] | None = None
) -> tuple[Path, str]:
    """Find the series a SEG references: ``(folder, series_uid)`` to pass to ``load_volume``.

    The folders in ``search`` are searched recursively, by default the SEG's folder and then
    its parent folder. A series without a
    SeriesInstanceUID (the SEG then references a new one) is matched by its frame of reference.

    Raises
    ------
    InputFileError
        The SEG names no series, or the series is in neither folder.
    """
    import pydicom

    from medsam.io.dicom import list_dicom_series

    path = Path(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    refs = [str(r.get("SeriesInstanceUID", "")) for r in ds.get("ReferencedSeriesSequence", [])]
    uid = next((u for u in refs if u), "")
    if not uid:
        raise InputFileError(path, "the DICOM SEG references no source series (empty ReferencedSeriesSequence)")
    # A source without a SeriesInstanceUID got a new one in the SEG: find it by its frame of reference.
    blank = f"no-uid:{ds.get('FrameOfReferenceUID', '')}:"
    folders = [Path(f) for f in search] if search is not None else [path.parent, path.parent.parent]
    for folder in dict.fromkeys(folders):
        found = [s.series_uid for s in list_dicom_series(folder)]
        for candidate in [u for u in found if u == uid] or [u for u in found if u.startswith(blank)]:
            return folder, candidate
    raise InputFileError(
        path, f"its source series {uid} is not in {' or '.join(map(str, dict.fromkeys(folders)))}; open the series first"
    )
