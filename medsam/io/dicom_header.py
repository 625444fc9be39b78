"""The few DICOM header values the readers need, parsed once per file with pydicom."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import UID

from medsam.errors import InputFileError
from medsam.io.volume import SourceMetadata

__all__ = [
    "Header",
    "read_header",
    "is_dicom_file",
    "has_dicm_marker",
    "describe_non_image",
    "first_float",
    "float_tuple",
    "series_metadata",
]

_DICOM_SUFFIXES = (".dcm", ".dicom", ".ima")

#: Storage classes that never hold an image volume (checked as exact UIDs or ``prefix.``).
_NON_IMAGE_PREFIXES = (
    "1.2.840.10008.1.3.10",  # Media Storage Directory (DICOMDIR)
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, registration, fiducials, SEG, surface SEG ...
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA/STL ...
)
#: RT classes are non-image except RT Image (481.1) and RT Dose (481.2).
_RT_PREFIX = "1.2.840.10008.5.1.4.1.1.481."
_RT_IMAGES = ("1.2.840.10008.5.1.4.1.1.481.1", "1.2.840.10008.5.1.4.1.1.481.2")
_NON_IMAGE_MODALITIES = {
    "SR",
    "RTSTRUCT",
    "RTPLAN",
    "RTRECORD",
    "SEG",
    "KO",
    "PR",
    "REG",
    "DOC",
    "FID",
    "RWV",
    "PLAN",
}


def first_float(value: Any) -> float | None:
    """The first number of a (possibly multi-valued) DICOM value, or ``None``."""
    if value is None or value == "":
        return None
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def float_tuple(value: Any, n: int) -> tuple[float, ...] | None:
    """``n`` numbers from a multi-valued DICOM value, or ``None`` when absent or malformed."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        vals = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return vals if len(vals) == n else None


def is_non_image_class(sop_class_uid: str | None, modality: str | None) -> bool:
    """True for SOP classes (or modalities) that are not images: SR, RTSTRUCT, SEG, PR ..."""
    uid = sop_class_uid or ""
    for prefix in _NON_IMAGE_PREFIXES:
        if uid == prefix.rstrip(".") or uid.startswith(
            prefix if prefix.endswith(".") else prefix + "."
        ):
            return True
    if uid.startswith(_RT_PREFIX) and uid not in _RT_IMAGES:
        return True
    return (modality or "").upper() in _NON_IMAGE_MODALITIES


@dataclass
class Header:
    """Header values of one DICOM file (top level; multi-frame functional groups aside).

    ``pixel_spacing`` is ``(row spacing, column spacing)`` in mm as in the DICOM attribute,
    i.e. ``(sy, sx)``; ``position`` is ImagePositionPatient (LPS mm) and ``orientation``
    ImageOrientationPatient (row cosines then column cosines).
    """

    path: Path
    series_uid: str | None
    study_uid: str | None
    frame_of_reference_uid: str | None
    sop_class_uid: str | None
    sop_instance_uid: str | None
    modality: str
    description: str
    transfer_syntax_uid: str | None
    photometric: str | None
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, float]
    slice_spacing: float | None
    rows: int
    columns: int
    n_frames: int
    samples: int
    bits_stored: int
    signed: bool
    slope: float
    intercept: float
    window_center: float | None
    window_width: float | None
    non_image: bool
    series_number: str = ""
    has_rescale: bool = True

    @property
    def series_key(self) -> str:
        """SeriesInstanceUID, or a stand-in built from other series attributes when it is empty
        (some anonymisers blank it)."""
        if self.series_uid:
            return self.series_uid
        return f"no-uid:{self.frame_of_reference_uid or ''}:{self.series_number}:{self.description}"

    @classmethod
    def from_dataset(cls, path: Path, ds: pydicom.Dataset) -> Header:
        meta = getattr(ds, "file_meta", None)
        sop_class = ds.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else None)
        modality = str(ds.get("Modality", "") or "")
        spacing = float_tuple(ds.get("PixelSpacing"), 2) or float_tuple(
            ds.get("ImagerPixelSpacing"), 2
        )
        if spacing is None or min(spacing) <= 0:
            spacing = (1.0, 1.0)
        slice_spacing = first_float(ds.get("SpacingBetweenSlices")) or first_float(
            ds.get("SliceThickness")
        )
        bits_alloc = int(ds.get("BitsAllocated", 16) or 16)
        slope = first_float(ds.get("RescaleSlope"))
        return cls(
            path=path,
            series_uid=_str(ds.get("SeriesInstanceUID")),
            study_uid=_str(ds.get("StudyInstanceUID")),
            frame_of_reference_uid=_str(ds.get("FrameOfReferenceUID")),
            sop_class_uid=_str(sop_class),
            sop_instance_uid=_str(ds.get("SOPInstanceUID"))
            or (_str(meta.get("MediaStorageSOPInstanceUID")) if meta else None),
            modality=modality,
            description=str(ds.get("SeriesDescription", "") or ""),
            transfer_syntax_uid=_str(meta.get("TransferSyntaxUID")) if meta else None,
            photometric=_str(ds.get("PhotometricInterpretation")),
            position=float_tuple(ds.get("ImagePositionPatient"), 3),
            orientation=float_tuple(ds.get("ImageOrientationPatient"), 6),
            pixel_spacing=(float(spacing[0]), float(spacing[1])),
            slice_spacing=slice_spacing if slice_spacing and slice_spacing > 0 else None,
            rows=int(ds.get("Rows", 0) or 0),
            columns=int(ds.get("Columns", 0) or 0),
            n_frames=int(first_float(ds.get("NumberOfFrames")) or 1),
            samples=int(ds.get("SamplesPerPixel", 1) or 1),
            bits_stored=int(ds.get("BitsStored", bits_alloc) or bits_alloc),
            signed=int(ds.get("PixelRepresentation", 0) or 0) == 1,
            slope=slope if slope else 1.0,
            intercept=first_float(ds.get("RescaleIntercept")) or 0.0,
            window_center=first_float(ds.get("WindowCenter")),
            window_width=first_float(ds.get("WindowWidth")),
            non_image=is_non_image_class(_str(sop_class), modality),
            series_number=str(ds.get("SeriesNumber", "") or ""),
            has_rescale=ds.get("RescaleIntercept") is not None,
        )


def _str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def has_dicm_marker(path: Path) -> bool:
    """True when ``path`` has the ``DICM`` marker after the 128-byte preamble."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_file(path: Path) -> bool:
    """True when ``path`` has the ``DICM`` marker, or no marker but a DICOM file name ending."""
    return has_dicm_marker(path) or path.name.lower().endswith(_DICOM_SUFFIXES)


PIXEL_DATA_TAG = 0x7FE00010
_TRAILING_TAGS = (0xFFFAFFFA, 0xFFFCFFFC)  # digital signatures and padding may follow pixel data


def check_element_order(path: Path, ds: Any) -> None:
    """Refuse a dataset whose elements do not ascend by tag (a damaged or shuffled file).

    GDCM can allocate gigabytes decoding such a file, so this runs before it does.
    """
    previous = None
    for tag in ds.keys():
        if previous is not None and tag < previous:
            raise InputFileError(
                path, f"is corrupt: data element {tag} follows {previous}, but DICOM elements ascend by tag"
            )
        previous = tag


def read_header(path: Path) -> Header:
    """Parse a file's header (no pixel data).

    Raises whatever pydicom raises for bad files, and :class:`~medsam.errors.InputFileError`
    for elements out of order or elements past where the pixel data should start (its tag
    is damaged), which GDCM would otherwise try to decode.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=not has_dicm_marker(path))
    check_element_order(path, ds)
    late = [t for t in ds.keys() if t > PIXEL_DATA_TAG and t not in _TRAILING_TAGS]
    if late:
        raise InputFileError(path, f"is corrupt: no pixel data element (7FE0,0010), but element {late[0]} after it")
    return Header.from_dataset(path, ds)


def describe_non_image(h: Header) -> str:
    """``"SR (Basic Text SR)"``-style description of a header's object type."""
    name = UID(h.sop_class_uid).name if h.sop_class_uid else "unknown SOP class"
    name = name.removesuffix(" Storage") if name else h.sop_class_uid
    return f"{h.modality or 'object'} ({name})"


def series_metadata(first: Header, headers: Sequence[Header], extra: dict) -> SourceMetadata:
    """Source metadata of slices ``headers`` (ordered by ``k``); ``first`` supplies the rest."""
    return SourceMetadata(
        format="dicom",
        series_uid=first.series_uid,
        study_uid=first.study_uid,
        frame_of_reference_uid=first.frame_of_reference_uid,
        sop_class_uid=first.sop_class_uid,
        sop_instance_uids=tuple(h.sop_instance_uid or "" for h in headers),
        slice_files=tuple(str(h.path) for h in headers),
        window_center=first.window_center,
        window_width=first.window_width,
        extra={
            "transfer_syntax_uid": first.transfer_syntax_uid,
            "photometric_interpretation": first.photometric,
            "series_description": first.description,
            **extra,
        },
    )
