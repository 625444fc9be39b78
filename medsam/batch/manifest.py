"""The cases of a batch: a CSV or JSONL manifest, or a folder of images with prompts beside them.

A manifest has one row per case with the columns ``input``, ``prompts`` and ``output``, and
optionally ``series_uid``, ``window``, ``model``, ``adapter`` and ``reference``:

* ``input``: an image file or a DICOM series folder (``series_uid`` picks one series);
* ``prompts``: a prompts JSON file (the ``medsam segment --prompts`` format), inline JSON
  (a value starting with ``{``), or ``from-labels:PATH``, prompts simulated from a reference
  label map (a tight box on each object's largest slice, as ``medsam evaluate`` does);
* ``output``: the mask's file name, relative to the batch's output folder; its ending
  picks the format (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.dcm`` for DICOM SEG);
* ``window``, ``model``, ``adapter``: per-case overrides of the batch settings;
* ``reference``: a label map that the result is scored against (Dice, NSD).

Relative paths are relative to the manifest's folder. Everything that can be checked
without reading the images is checked by :func:`read_manifest`, which names the row of
the first problem; an unreadable image or a prompt off the image fails that case only.

A folder serves as a manifest too (:func:`folder_cases`): each ``x.nii.gz`` with an
``x.prompts.json`` beside it is a case whose output is ``x_mask.nii.gz``. The MONAI
bundle's folder run (:func:`medsam.monai.find_cases`) finds its cases with the same code.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from medsam.errors import InputFileError, MissingInputError

__all__ = [
    "Case",
    "COLUMNS",
    "FROM_LABELS",
    "IMAGE_SUFFIXES",
    "folder_cases",
    "image_pairs",
    "read_manifest",
]

logger = logging.getLogger(__name__)

#: Required, then optional manifest columns.
REQUIRED: tuple[str, ...] = ("input", "prompts", "output")
COLUMNS: tuple[str, ...] = (*REQUIRED, "series_uid", "window", "model", "adapter", "reference")
#: The ``prompts`` prefix of prompts simulated from a label map.
FROM_LABELS = "from-labels:"
#: Image endings of a folder manifest.
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha")
MASK_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".mha", ".dcm")


@dataclass(frozen=True)
class Case:
    """One row of a manifest, its paths resolved.

    ``row`` is the manifest's line number (1 is the CSV header or the first JSONL line);
    ``output`` is relative to the batch's output folder and names the case in the journal
    and ``results.csv``. ``prompts`` is a path, inline JSON (starts with ``{``) or
    ``from-labels:`` + a path.
    """

    row: int
    input: Path
    prompts: str
    output: str
    series_uid: str | None = None
    window: str | None = None
    model: str | None = None
    adapter: Path | None = None
    reference: Path | None = None

    @property
    def prompts_path(self) -> Path | None:
        """The file the prompts come from (``None`` for inline JSON)."""
        if self.prompts.startswith("{"):
            return None
        return Path(self.prompts.removeprefix(FROM_LABELS))

    @property
    def from_labels(self) -> bool:
        return self.prompts.startswith(FROM_LABELS)


def read_manifest(path: str | Path, models: Sequence[str] | None = None) -> list[Case]:
    """The cases of a CSV or JSONL manifest, or of a folder (see :func:`folder_cases`).

    Parameters
    ----------
    path:
        ``.csv`` (a header row naming the columns), ``.jsonl`` (one JSON object per line;
        blank lines are skipped) or a folder.
    models:
        Registry names a ``model`` value may take (default: the registry's).

    Raises
    ------
    InputFileError
        ``"MANIFEST: row N: <problem>"`` for the first bad row: a missing column or value,
        broken JSON, an unknown model, an output outside the output folder or with an
        unknown ending, two rows writing the same output.
    """
    path = Path(path)
    if path.is_dir():
        return folder_cases(path)
    if not path.is_file():
        raise MissingInputError(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(path, f"cannot be read as UTF-8 text ({exc})") from None
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _csv_rows(path, text)
    elif suffix in (".jsonl", ".ndjson"):
        rows = _jsonl_rows(path, text)
    else:
        raise InputFileError(path, "a manifest is a .csv or .jsonl file, or a folder of images and prompts")
    if models is None:
        from medsam.models.registry import MODEL_REGISTRY

        models = list(MODEL_REGISTRY)
    cases: list[Case] = []
    seen: dict[str, int] = {}
    for row, values in rows:
        case = _case(path, row, values, models)
        key = case.output.lower()
        if key in seen:
            raise InputFileError(path, f"row {row}: output {case.output} is also the output of row {seen[key]}")
        seen[key] = row
        cases.append(case)
    if not cases:
        raise InputFileError(path, "has no cases")
    return cases


def _csv_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text))
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise InputFileError(path, f"row 1: the header lacks the column(s) {', '.join(missing)} (has: {', '.join(header) or 'none'})")
    unknown = [h for h in header if h and h not in COLUMNS]
    if unknown:
        raise InputFileError(path, f"row 1: unknown column(s) {', '.join(unknown)}; the columns are {', '.join(COLUMNS)}")
    rows = []
    for values in reader:
        if None in values:  # more cells than header columns
            raise InputFileError(path, f"row {reader.line_num}: more cells than the header has columns")
        cells = {k.strip(): v for k, v in values.items() if k is not None}
        if all(not (v or "").strip() for v in cells.values()):
            continue
        rows.append((reader.line_num, cells))
    return rows


def _jsonl_rows(path: Path, text: str) -> list[tuple[int, dict[str, Any]]]:
    rows = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except ValueError as exc:
            raise InputFileError(path, f"row {n}: not JSON ({exc})") from None
        if not isinstance(values, dict):
            raise InputFileError(path, f"row {n}: not a JSON object but {type(values).__name__}")
        unknown = [k for k in values if k not in COLUMNS]
        if unknown:
            raise InputFileError(path, f"row {n}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(COLUMNS)}")
        if isinstance(values.get("prompts"), dict):  # inline prompts as a JSON object
            values = {**values, "prompts": json.dumps(values["prompts"])}
        rows.append((n, values))
    return rows


def _case(manifest: Path, row: int, values: dict[str, Any], models: Sequence[str]) -> Case:
    def bad(problem: str) -> InputFileError:
        return InputFileError(manifest, f"row {row}: {problem}")

    cells: dict[str, str | None] = {}
    for key in COLUMNS:
        value = values.get(key)
        if value is not None and not isinstance(value, str | int | float):
            raise bad(f"{key} must be text, not {type(value).__name__}")
        value = str(value).strip() if value is not None else ""
        cells[key] = value or None
    for key in REQUIRED:
        if cells[key] is None:
            raise bad(f"{key} is empty")
    base = manifest.resolve().parent  # absolute: a Dask worker's working folder is not ours

    def local(value: str | None) -> Path | None:
        return None if value is None else (base / Path(value).expanduser()).resolve()

    prompts = str(cells["prompts"])
    if prompts.startswith("{"):
        try:
            json.loads(prompts)
        except ValueError as exc:
            raise bad(f"inline prompts are not JSON ({exc})") from None
    elif prompts.startswith(FROM_LABELS):
        label_file = prompts.removeprefix(FROM_LABELS).strip()
        if not label_file:
            raise bad(f"{FROM_LABELS} needs a label map path")
        prompts = FROM_LABELS + str(local(label_file))
    else:
        prompts = str(local(prompts))
    output = _output_name(str(cells["output"]), bad)
    model = cells["model"]
    if model is not None and model not in models:
        raise bad(f"unknown model {model!r}; the models are {', '.join(models)}")
    if cells["window"] is not None:
        _check_window(cells["window"], bad)
    return Case(
        row=row, input=local(cells["input"]) or base, prompts=prompts, output=output,
        series_uid=cells["series_uid"], window=cells["window"], model=model,
        adapter=local(cells["adapter"]), reference=local(cells["reference"]),
    )


def _output_name(value: str, bad: Any) -> str:
    name = PurePosixPath(value.replace("\\", "/"))
    if name.is_absolute() or ".." in name.parts or str(name) in ("", "."):
        raise bad(f"output {value} must be a file name inside the output folder (no absolute path, no ..)")
    if not name.name.lower().endswith(MASK_SUFFIXES):
        raise bad(f"output {value} must end with one of {', '.join(MASK_SUFFIXES)}")
    return str(name)


def _check_window(value: str, bad: Any) -> None:
    from medsam.intensity import parse_window_spec

    try:
        parse_window_spec(value)
    except ValueError as exc:  # WindowError, or a width <= 0
        raise bad(str(exc)) from None


def image_pairs(
    folder: Path,
    companions: dict[str, str | None],
    *,
    exclude_suffixes: Sequence[str] = (),
    image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> list[dict[str, str]]:
    """Each image of ``folder`` (not recursive, sorted by name) with its companion files.

    ``companions`` maps a key to a suffix: image ``x.nii.gz`` gets ``{key: x + suffix}``.
    Images lacking a companion are skipped with a warning; files ending with a companion
    suffix or one of ``exclude_suffixes`` are not images. Returns ``{"image": path, key:
    path, ...}`` as strings.
    """
    wanted = {k: s for k, s in companions.items() if s}
    skip = tuple(s.lower() for s in (*wanted.values(), *exclude_suffixes) if s)
    found = []
    for f in sorted(folder.iterdir()):
        stem = _stem(f.name, image_suffixes)
        if stem is None or not f.is_file() or f.name.lower().endswith(skip):
            continue
        case = {"image": str(f)}
        missing = []
        for key, suffix in wanted.items():
            other = folder / f"{stem}{suffix}"
            if other.is_file():
                case[key] = str(other)
            else:
                missing.append(other.name)
        if missing:
            logger.warning("skipping %s: missing %s", f.name, ", ".join(missing))
            continue
        found.append(case)
    return found


def _stem(name: str, suffixes: Sequence[str]) -> str | None:
    low = name.lower()
    for suf in suffixes:
        if low.endswith(suf) and len(name) > len(suf):
            return name[: -len(suf)]
    return None


def folder_cases(folder: str | Path, prompts_suffix: str = ".prompts.json", output_postfix: str = "_mask") -> list[Case]:
    """A folder as a manifest: ``x.nii.gz`` + ``x.prompts.json`` -> output ``x_mask.nii.gz``.

    Images ending with ``output_postfix`` + an image ending (earlier outputs) are skipped.
    """
    folder = Path(folder).resolve()
    if not folder.is_dir():
        raise MissingInputError(folder)
    outputs = tuple(output_postfix + s for s in IMAGE_SUFFIXES)
    pairs = image_pairs(folder, {"prompts": prompts_suffix}, exclude_suffixes=outputs)
    if not pairs:
        raise InputFileError(
            folder, f"no cases: expected images ({', '.join(IMAGE_SUFFIXES)}) each with a NAME{prompts_suffix} beside it"
        )
    cases = []
    for n, pair in enumerate(pairs, start=1):
        image = Path(pair["image"])
        stem = _stem(image.name, IMAGE_SUFFIXES)
        ending = image.name[len(stem or "") :]
        cases.append(Case(row=n, input=image, prompts=pair["prompts"], output=f"{stem}{output_postfix}{ending}"))
    return cases
