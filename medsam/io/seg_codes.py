"""Coded anatomy for DICOM SEG segments: an object's name to SNOMED CT concepts.

The concepts come from pydicom's DICOM code dictionary (``pydicom.sr.codedict.codes.SCT``),
so nothing is typed in by hand. A name is matched, after normalisation, as:

* a tumour, lesion, mass, nodule or metastasis: category *Morphologically abnormal
  structure*, type *Neoplasm*;
* an anatomical structure in the dictionary (``liver``, ``kidney_left``, ``Left adrenal
  gland``, ``urinary bladder``, ``vertebrae_L1`` ...): category *Anatomical structure*,
  type that structure (laterality words are dropped: the segment's label keeps them); a
  name that is not in the dictionary as a whole is tried by its first word
  (``lung_upper_lobe_left`` is *Lung*);
* anything else: category and type *Tissue*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

__all__ = ["SegmentCoding", "code_segment"]

_LESION_WORDS = ("tumour", "tumor", "lesion", "mass", "nodule", "metastasis", "metastases", "neoplasm", "cancer")
_DROP_WORDS = {"left", "right", "l", "r", "lt", "rt", "upper", "lower", "the"}
#: Names whose dictionary keyword is not the name itself.
_ALIASES = {"urinary bladder": "Bladder", "kidneys": "Kidney", "lungs": "Lung"}
#: SNOMED CT 49755003, "Morphologically abnormal structure" (not a keyword in pydicom's dictionary).
_MORPH_ABNORMAL = Code("49755003", "SCT", "Morphologically abnormal structure")


@dataclass(frozen=True)
class SegmentCoding:
    """The two codes a DICOM SEG segment must carry."""

    category: Code
    type: Code


def _keyword(words: list[str]) -> str:
    return "".join(w[:1].upper() + w[1:] for w in words)


def code_segment(name: str) -> SegmentCoding:
    """Codes for an object called ``name``.

    Examples
    --------
    >>> code_segment("liver").type.meaning
    'Liver'
    >>> code_segment("kidney_left").type.value
    '64033007'
    >>> code_segment("Liver tumour").type.meaning
    'Neoplasm'
    >>> code_segment("object 3").category.meaning
    'Tissue'
    """
    words = [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]
    if any(w.startswith(lesion) for w in words for lesion in _LESION_WORDS):
        return SegmentCoding(_MORPH_ABNORMAL, codes.SCT.Neoplasm)
    core = [w for w in words if w not in _DROP_WORDS and not w.isdigit()]
    level = [w.upper() for w in core if re.fullmatch(r"[ctls]\d{1,2}", w)]
    candidates = [_ALIASES.get(" ".join(core)), _keyword(core)]
    if level and any(w.startswith("vertebra") for w in core):
        candidates.insert(0, f"{level[0]}Vertebra")  # vertebrae_L1 -> L1Vertebra
    if core:
        candidates.append(_keyword(core[:1]))  # lung_upper_lobe_left -> Lung
    for candidate in candidates:
        if candidate and candidate in codes.SCT.dir(candidate):
            code = getattr(codes.SCT, candidate)
            if "(" not in code.meaning:  # "Portal (qualifier value)" is not a structure
                return SegmentCoding(codes.SCT.AnatomicalStructure, code)
    return SegmentCoding(codes.SCT.Tissue, codes.SCT.Tissue)
