"""Helpers of the MONAI bundle shipped in ``medsam/bundle``: where it is, its cases, its loop.

The bundle's configs call these through ``$medsam.monai.<name>(...)`` expressions::

    python -m monai.bundle run --config_file "$(python -c 'import medsam.monai as m; print(m.bundle_path())')/configs/inference.json" \\
        --dataset_dir cases/ --output_dir masks/
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medsam.batch.manifest import image_pairs
from medsam.errors import InputFileError, MissingInputError

__all__ = ["bundle_path", "find_cases", "run_cases", "IMAGE_SUFFIXES"]

logger = logging.getLogger(__name__)

#: File endings read as images by :func:`find_cases` (MONAI reads NRRD/MetaImage only with ``itk``).
IMAGE_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")


def bundle_path() -> Path:
    """The installed MONAI bundle folder (``configs/inference.json``, ``configs/evaluate.json`` ...)."""
    return Path(str(importlib.resources.files("medsam") / "bundle"))


def find_cases(
    dataset_dir: str | os.PathLike[str],
    prompts_suffix: str | None = ".prompts.json",
    label_suffix: str | None = None,
    exclude_suffixes: Sequence[str] = (),
    image_suffixes: Sequence[str] = IMAGE_SUFFIXES,
) -> list[dict[str, str]]:
    """The cases of a folder: each image with its prompts and/or reference label beside it.

    Parameters
    ----------
    dataset_dir:
        Folder of images, not searched recursively.
    prompts_suffix:
        Case ``x.nii.gz`` uses ``x`` + this (``x.prompts.json``, the ``medsam segment``
        prompts format); ``None`` when no prompts file is needed.
    label_suffix:
        Case ``x.nii.gz`` uses ``x`` + this as its reference label (e.g. ``.label.nii.gz``);
        files ending with it are not images. ``None`` when no label is needed.
    exclude_suffixes:
        More endings of files that are not images (e.g. earlier outputs ``_mask.nii.gz``).
    image_suffixes:
        Endings of image files (default NIfTI; add ``.nrrd``/``.mha`` when ``itk`` is installed).

    Returns
    -------
    list of dict
        ``{"image": path, "prompts": path, "label": path}`` (keys as requested), sorted by
        name. Images lacking a required file are skipped with a warning.

    Raises
    ------
    MissingInputError
        ``dataset_dir`` does not exist.
    InputFileError
        No complete case was found.
    """
    if not str(dataset_dir):
        raise InputFileError("dataset_dir", "is empty; pass --dataset_dir FOLDER")
    root = Path(dataset_dir).expanduser()
    if not root.is_dir():
        raise MissingInputError(root)
    # the same discovery as a folder given to `medsam batch`
    cases = image_pairs(
        root, {"prompts": prompts_suffix, "label": label_suffix},
        exclude_suffixes=exclude_suffixes, image_suffixes=image_suffixes,
    )
    if not cases:
        need = [s for s in (prompts_suffix, label_suffix) if s]
        raise InputFileError(
            root,
            f"no cases found: expected images ({', '.join(image_suffixes)})"
            + (f" each with a NAME{' and NAME'.join(need)} file beside it" if need else ""),
        )
    logger.info("%s: %d case(s)", root, len(cases))
    return cases


def run_cases(dataset: Any, collect: str | None = None, quiet: bool = False) -> list[Any]:
    """Run a dataset's transform chain on every case, in order (the bundles' ``run`` step).

    Parameters
    ----------
    dataset:
        Any indexable dataset (``monai.data.Dataset``) whose transforms do the work.
    collect:
        A key whose value (a list, e.g. metric rows, or a single value) is gathered from
        each case; ``None`` keeps nothing, so memory stays flat.
    quiet:
        No progress bar (one shows, per case, only when stderr is a terminal).

    Returns
    -------
    list
        The gathered values (empty without ``collect``).
    """
    from medsam.progress import progress_bar

    gathered: list[Any] = []
    n = len(dataset)
    bar = progress_bar(n, "bundle", "case", quiet=quiet)
    for i in range(n):
        t0 = time.perf_counter()
        item = dataset[i]
        logger.info("case %d/%d done in %.1f s", i + 1, n, time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
        if collect is not None:
            value = item[collect]
            gathered.extend(value if isinstance(value, list) else [value])
    if bar is not None:
        bar.close()
    return gathered
