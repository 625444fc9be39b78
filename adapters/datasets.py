"""Training data on disk: Medical Segmentation Decathlon, nnU-Net raw, and image/label pairs.

Every image and label map is read with :func:`medsam.io.load_volume`, so any format medsam
reads (NIfTI, NRRD, MetaImage, DICOM series folders) works.

=========  =============================================================================
format     layout
=========  =============================================================================
``msd``    ``dataset.json`` (``"labels": {"1": "liver"}``, ``"training": [{"image",
           "label"}]``, ``"modality": {"0": "CT"}``), ``imagesTr/``, ``labelsTr/``
``nnunet`` ``dataset.json`` (``"labels": {"liver": 1}``, ``"channel_names": {"0": "CT"}``,
           ``"file_ending"``), ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``
``pairs``  ``images/NAME.*`` and ``labels/NAME.*`` with the same NAME; optional
           ``labels.json`` (``{"1": "liver"}`` or ``{"liver": 1}``)
=========  =============================================================================

Examples
--------
>>> cases = find_cases("Task03_Liver")                   # doctest: +SKIP
>>> [t.name for t in case_targets(cases[0], "liver")]     # doctest: +SKIP
['liver']
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsam.errors import InputFileError, MissingInputError

__all__ = [
    "FORMATS",
    "Case",
    "Target",
    "case_targets",
    "check_label_spec",
    "detect_format",
    "find_cases",
    "load_case",
    "parse_label_names",
    "parse_label_spec",
    "split_cases",
]

logger = logging.getLogger(__name__)

FORMATS = ("msd", "nnunet", "pairs")
_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")


@dataclass(frozen=True)
class Case:
    """One training/evaluation case: an image and its label map on the same grid.

    Attributes
    ----------
    case_id
        Unique name within the dataset.
    image, label
        Paths readable by :func:`medsam.io.load_volume`.
    label_names
        ``{label id: structure name}`` (empty when the dataset names none).
    modality
        Modality declared by the dataset (``"CT"``, ``"MR"``...), or None to use the one
        read from the image; it picks the automatic intensity window.
    frame
        Channel of a 4D image to read (MSD multi-modal data), or None.
    """

    case_id: str
    image: Path
    label: Path
    label_names: Mapping[int, str] = field(default_factory=dict)
    modality: str | None = None
    frame: int | None = None


@dataclass(frozen=True)
class Target:
    """A structure to segment in one case: its name and label id there."""

    name: str
    label_id: int


def _stem(path: Path) -> str:
    name = path.name
    for s in _SUFFIXES:
        if name.lower().endswith(s):
            return name[: -len(s)]
    return name


def parse_label_names(obj: Any) -> dict[int, str]:
    """``{"1": "liver"}`` (MSD) or ``{"liver": 1}`` (nnU-Net v2) to ``{1: "liver"}``; drops 0.

    nnU-Net region entries (``"tumor": [1, 2]``) are skipped.
    """
    if not isinstance(obj, Mapping):
        return {}
    out: dict[int, str] = {}
    for k, v in obj.items():
        if str(k).strip().lstrip("-").isdigit():
            out[int(k)] = str(v)
        elif isinstance(v, int) and not isinstance(v, bool):
            out[int(v)] = str(k)
    out.pop(0, None)
    return out


def _modality(obj: Any, frame: int) -> str | None:
    if isinstance(obj, Mapping):
        value = obj.get(str(frame), obj.get(frame))
        if value is not None:
            v = str(value).upper()
            return "CT" if v == "CT" else ("MR" if v in ("MR", "MRI", "T1", "T2", "FLAIR", "ADC") else v)
    return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingInputError(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputFileError(path, f"unreadable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise InputFileError(path, "expected a JSON object")
    return data


def detect_format(root: str | Path) -> str:
    """``"nnunet"``, ``"msd"`` or ``"pairs"`` from a dataset folder's layout."""
    root = Path(root)
    if not root.is_dir():
        raise MissingInputError(root) if not root.exists() else InputFileError(root, "not a folder")
    ds = root / "dataset.json"
    if ds.is_file():
        data = _read_json(ds)
        return "nnunet" if ("channel_names" in data or "file_ending" in data) else "msd"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "pairs"
    raise InputFileError(
        root, "no dataset.json (MSD/nnU-Net) and no images/ + labels/ folders (pairs format)"
    )


def _resolve(root: Path, rel: str) -> Path:
    p = Path(rel)
    return p if p.is_absolute() else (root / rel).resolve()


def _read_msd(root: Path, frame: int) -> list[Case]:
    data = _read_json(root / "dataset.json")
    names = parse_label_names(data.get("labels"))
    mods = data.get("modality") or {}
    training = data.get("training")
    if not isinstance(training, list) or not training:
        raise InputFileError(root / "dataset.json", "no 'training' list of {image, label} entries")
    cases = []
    for entry in training:
        image, label = _resolve(root, entry["image"]), _resolve(root, entry["label"])
        if not image.exists():  # nnU-Net v1 lists CASE.nii.gz for imagesTr/CASE_0000.nii.gz
            alt = image.with_name(f"{_stem(image)}_{frame:04d}{image.name[len(_stem(image)):]}")
            image = alt if alt.exists() else image
        cases.append(
            Case(
                case_id=_stem(label),
                image=image,
                label=label,
                label_names=names,
                modality=_modality(mods, frame),
                frame=frame if isinstance(mods, Mapping) and len(mods) > 1 else None,
            )
        )
    return cases


def _read_nnunet(root: Path, frame: int) -> list[Case]:
    data = _read_json(root / "dataset.json")
    if "training" in data and "channel_names" not in data:  # nnU-Net v1: MSD-style json
        return _read_msd(root, frame)
    names = parse_label_names(data.get("labels"))
    ending = str(data.get("file_ending", ".nii.gz"))
    labels_dir = root / "labelsTr"
    if not labels_dir.is_dir():
        raise InputFileError(root, "nnU-Net dataset without labelsTr/")
    cases = []
    for label in sorted(labels_dir.glob(f"*{ending}")):
        cid = label.name[: -len(ending)]
        image = root / "imagesTr" / f"{cid}_{frame:04d}{ending}"
        cases.append(
            Case(cid, image, label, names, _modality(data.get("channel_names"), frame), None)
        )
    return cases


def _read_pairs(root: Path) -> list[Case]:
    names = parse_label_names(_read_json(root / "labels.json")) if (root / "labels.json").is_file() else {}
    images = {_stem(p): p for p in sorted((root / "images").iterdir()) if not p.name.startswith(".")}
    labels = {_stem(p): p for p in sorted((root / "labels").iterdir()) if not p.name.startswith(".")}
    unmatched = sorted(set(images) ^ set(labels))
    if unmatched:
        logger.warning("%s: %d images/labels without a partner skipped: %s", root, len(unmatched), unmatched[:5])
    return [Case(n, images[n], labels[n], names) for n in sorted(set(images) & set(labels))]


def find_cases(root: str | Path, format: str | None = None, *, frame: int = 0) -> list[Case]:
    """List the labelled cases of a dataset folder.

    Parameters
    ----------
    root
        The dataset folder.
    format
        ``"msd"``, ``"nnunet"``, ``"pairs"`` or None to detect it.
    frame
        Channel to use for multi-channel datasets (nnU-Net ``_0000``, MSD 4D images).

    Raises
    ------
    InputFileError
        Unknown layout, no cases, or a listed file that does not exist.
    """
    root = Path(root).expanduser()
    fmt = detect_format(root) if format is None else format.lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; choose one of {', '.join(FORMATS)}")
    cases = {"msd": lambda: _read_msd(root, frame), "nnunet": lambda: _read_nnunet(root, frame)}.get(
        fmt, lambda: _read_pairs(root)
    )()
    if not cases:
        raise InputFileError(root, f"no labelled cases found ({fmt} layout)")
    for c in cases:
        for p in (c.image, c.label):
            if not p.exists():
                raise InputFileError(p, f"listed by the {fmt} dataset in {root} but missing")
    logger.info("%s: %d cases (%s)", root, len(cases), fmt)
    return cases


def parse_label_spec(spec: str | Sequence[str | int]) -> list[str | int]:
    """``"liver,spleen"`` -> ``["liver", "spleen"]``; ``"5,1"`` -> ``[5, 1]``."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    out: list[str | int] = []
    for item in items:
        s = str(item).strip()
        if s:
            out.append(int(s) if s.lstrip("-").isdigit() else s)
    if not out:
        raise ValueError("no labels given; pass names or ids such as 'liver,spleen' or '5,1'")
    return out


def case_targets(case: Case, spec: str | Sequence[str | int]) -> list[Target]:
    """The requested structures that this case's label map defines.

    Names are matched case-insensitively against the case's label names; ids are used
    directly (named from the label names when there are any, else ``"label_<id>"``).
    Requested names the case does not define are skipped.
    """
    by_name = {v.lower(): k for k, v in case.label_names.items()}
    out = []
    for item in parse_label_spec(spec):
        if isinstance(item, int):
            out.append(Target(case.label_names.get(item, f"label_{item}"), item))
        elif item.lower() in by_name:
            lid = by_name[item.lower()]
            out.append(Target(case.label_names[lid], lid))
    return out


def check_label_spec(cases: Sequence[Case], spec: str | Sequence[str | int]) -> list[str]:
    """Structure names of ``spec`` over all cases; ``ValueError`` for names no case defines."""
    names: list[str] = []
    for item in parse_label_spec(spec):
        found = [t.name for c in cases for t in case_targets(c, [item])]
        if not found:
            known = sorted({v for c in cases for v in c.label_names.values()})
            close = difflib.get_close_matches(str(item).lower(), known, n=3)
            if close:
                hint = f"; did you mean {' or '.join(close)}?"
            elif known:
                hint = f"; known names: {', '.join(known[:20])}{', ...' if len(known) > 20 else ''}"
            else:
                hint = "; this dataset names no labels, use ids"
            raise ValueError(f"label {item!r} is not defined by any case{hint}")
        if found[0] not in names:
            names.append(found[0])
    return names


def load_case(case: Case):
    """Read a case: ``(Volume, labels)`` with labels ``(Z, Y, X)`` integer on the image grid.

    Raises
    ------
    InputFileError
        Image and label map differ in shape or geometry.
    """
    from medsam.io import load_volume

    image = load_volume(case.image, frame=case.frame)
    label = load_volume(case.label)
    if image.array.shape[:3] != label.array.shape[:3]:
        raise InputFileError(
            case.label, f"label map {label.array.shape} does not match image {image.array.shape}"
        )
    if not image.same_geometry(label):
        raise InputFileError(case.label, "label map geometry (spacing/origin/direction) differs from the image")
    if case.modality is not None and case.modality != image.modality:
        from dataclasses import replace

        image = replace(image, modality=case.modality)
    lab = np.asarray(label.array)
    if not np.issubdtype(lab.dtype, np.integer):
        lab = np.rint(lab).astype(np.int32)
    return image, lab


def split_cases(
    cases: Sequence[Case], n_val: int | float, seed: int = 0
) -> tuple[list[Case], list[Case]]:
    """Split whole cases into ``(train, val)`` deterministically.

    ``n_val`` is a count (int) or a fraction (float in (0, 1)); at least one case stays in
    training. With one case, validation is empty.
    """
    ordered = sorted(cases, key=lambda c: c.case_id)
    n = len(ordered)
    k = int(round(n * n_val)) if isinstance(n_val, float) and n_val < 1 else int(n_val)
    k = max(0, min(k, n - 1))
    perm = np.random.default_rng(seed).permutation(n)
    val_idx = set(perm[:k].tolist())
    return [c for i, c in enumerate(ordered) if i not in val_idx], [ordered[i] for i in sorted(val_idx)]
