"""Volume I/O with exact geometry: :func:`load_volume` and :func:`save_mask`."""

from __future__ import annotations

from medsam.io.load import load_volume
from medsam.io.save import save_mask
from medsam.io.volume import SourceMetadata, Volume

__all__ = ["Volume", "SourceMetadata", "load_volume", "save_mask"]
