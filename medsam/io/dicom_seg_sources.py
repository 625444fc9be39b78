"""Source headers for a DICOM SEG: reduced, repaired and, on request, pseudonymised.

highdicom copies the Patient and General Study modules of the first source image into the
SEG. :func:`source_datasets` hands it copies that hold only patient and study identity
(:data:`IDENTITY_TAGS`) and the geometry highdicom needs to place and reference the frames,
so nothing else of the source's header reaches the SEG.

Imperfect sources are repaired in memory, never on disk:

* an empty ``SpecificCharacterSet`` (as in the dcmqi CT) is removed: an absent one means the
  default repertoire, which is what the source meant;
* an empty SOP Class or SOP Instance UID is taken from the file meta header, where the
  TotalSegmentator DICOM still has them;
* empty Study, Series or Frame of Reference UIDs (as in the TotalSegmentator DICOM), and SOP
  Instance UIDs that the file meta header lacks too, are replaced by UIDs derived from the
  source, with a warning: a PACS cannot resolve such references, but reading the SEG back
  onto the same series still works (by position).

``anonymize=True`` replaces the identifying values consistently: the same source always
gets the same pseudonyms (``PatientName``/``PatientID`` from a hash of the original, UIDs
mapped with :func:`pydicom.uid.generate_uid` from the original UID), so the SEG's references
stay consistent among themselves and between runs; dates, sex, accession number, study ID
and referring physician are emptied (DICOM PS3.15 basic profile for these tags). The
mapping is a pseudonymisation: anyone holding the original UIDs can recompute it.
"""

from __future__ import annotations

import copy
import hashlib
import logging

from medsam.errors import InputFileError
from medsam.io.volume import Volume

__all__ = ["source_datasets", "IDENTITY_TAGS"]

logger = logging.getLogger(__name__)

_IDENTITY_EMPTIED = (
    "PatientBirthDate", "PatientSex", "PatientAge", "AccessionNumber", "StudyID", "ReferringPhysicianName",
    "StudyDate", "StudyTime", "StudyDescription",
)


def _uid_for(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["medsam", *parts])


#: Patient and study identity: copied from the source into the SEG.
IDENTITY_TAGS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName",
)
#: What highdicom reads from a source image to place and reference the frames (not copied).
_GEOMETRY_TAGS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID",
    "Modality", "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient",
    "SliceThickness", "SpacingBetweenSlices", "NumberOfFrames", "SharedFunctionalGroupsSequence",
    "PerFrameFunctionalGroupsSequence", "SamplesPerPixel", "BitsAllocated", "InstanceNumber",
    "PositionReferenceIndicator",
)


def source_datasets(like: Volume, *, anonymize: bool = False) -> list:
    """The source headers of ``like`` for highdicom, in slice order (one dataset for a
    multi-frame source): reduced to identity and geometry, so that highdicom copies nothing
    else into the SEG, repaired, and pseudonymised when ``anonymize``."""
    import pydicom

    out = []
    for f in dict.fromkeys(like.meta.slice_files):
        full = pydicom.dcmread(f, stop_before_pixels=True)
        ds = pydicom.Dataset()
        ds.file_meta = full.file_meta
        ds.filename = full.filename
        for key in (*IDENTITY_TAGS, *_GEOMETRY_TAGS):
            if key in full:
                ds[key] = copy.deepcopy(full[key])
        out.append(ds)
    _repair(out, str(like.source))
    if anonymize:
        _pseudonymise(out)
    return out


def _repair(datasets: list, source: str) -> None:
    """Make imperfect source headers acceptable to highdicom (in memory only)."""
    missing: set[str] = set()
    recovered: set[str] = set()
    # New UIDs derive from what identifies the series, so a rewrite gives the same ones.
    seed = "|".join(
        str(datasets[0].get(k, "")) for k in ("PatientID", "FrameOfReferenceUID", "SeriesNumber", "ImagePositionPatient")
    )
    for ds in datasets:
        if "SpecificCharacterSet" in ds and not ds.SpecificCharacterSet:
            del ds.SpecificCharacterSet  # empty means the default repertoire: say so by absence
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
            if not str(ds.get(key, "") or ""):
                missing.add(key)
                setattr(ds, key, _uid_for(key, seed))
        meta = getattr(ds, "file_meta", None) or {}
        for key, meta_key in (("SOPClassUID", "MediaStorageSOPClassUID"), ("SOPInstanceUID", "MediaStorageSOPInstanceUID")):
            value = str(meta.get(meta_key, "") or "")
            if not str(ds.get(key, "") or "") and value:
                recovered.add(key)  # the file meta header still has it
                setattr(ds, key, value)
        if not str(ds.get("SOPClassUID", "") or ""):
            raise InputFileError(ds.filename, "has no SOPClassUID, in its header or its file meta header")
        if not str(ds.get("SOPInstanceUID", "") or ""):
            missing.add("SOPInstanceUID")
            pos = ",".join(f"{float(v):.3f}" for v in ds.get("ImagePositionPatient", []) or [])
            ds.SOPInstanceUID = _uid_for("sop", str(ds.SeriesInstanceUID), pos, str(ds.get("InstanceNumber", "")))
    if recovered:
        logger.info("took empty %s from the file meta headers", ", ".join(sorted(recovered)))
    if missing:
        logger.warning(
            "%s: the source series has empty %s; the DICOM SEG references new UIDs that a PACS cannot resolve",
            source, ", ".join(sorted(missing)),
        )


def _pseudonymise(datasets: list) -> None:
    for ds in datasets:
        original = f"{ds.get('PatientID', '')}|{ds.get('PatientName', '')}"
        pseudo = hashlib.sha256(original.encode()).hexdigest()[:12].upper()
        ds.PatientName = f"ANONYMOUS^{pseudo}"
        ds.PatientID = f"ANON-{pseudo}"
        for key in _IDENTITY_EMPTIED:
            if key in ds:
                ds[key].value = ""
        for key in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID"):
            ds[key].value = _uid_for("anonymize", str(ds[key].value))
