"""Intensity handling: CT windows, the DICOM header window, MR percentiles, RGB passthrough.

One function pair serves the CLI, the MONAI transforms, the napari widget and training:

* :func:`resolve_window` turns a user's choice (a preset name, ``"L,W"``, ``"header"``,
  ``"percentile"``, ``"rgb"`` or ``None`` for automatic) into a concrete :class:`Window`.
  Percentiles need the whole volume, so they are resolved once per volume.
* :func:`apply_window` maps any array (one slice, a batch of slices, a volume) through that
  window to ``float32`` in ``[0, 1]``; this is exactly what the models receive. It works
  slice by slice without float64 copies, so callers can stream large volumes.

Examples
--------
>>> import numpy as np
>>> w = resolve_window(np.array([[-1000, 40, 240]], np.int16), "soft_tissue")
>>> (w.low, w.high)
(-160.0, 240.0)
>>> apply_window(np.array([-1000, 40, 240], np.int16), w).tolist()
[0.0, 0.5, 1.0]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from medsam.errors import MedsamError

__all__ = [
    "WINDOW_PRESETS",
    "Window",
    "WindowSpec",
    "parse_window_spec",
    "resolve_window",
    "apply_window",
    "apply_window_tensor",
]

logger = logging.getLogger(__name__)

#: CT window presets as ``(level, width)`` in Hounsfield units.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0),
    "abdomen": (60.0, 400.0),
    "liver": (80.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

#: Percentiles of non-background voxels used for MR and other non-CT data.
MR_PERCENTILES: tuple[float, float] = (0.5, 99.5)

#: Anything :func:`resolve_window` accepts.
WindowSpec = Union[None, str, tuple[float, float], list, "Window"]

_SPECIAL = ("auto", "header", "percentile", "rgb")


class WindowError(MedsamError, ValueError):
    """An unknown or invalid window specification."""


@dataclass(frozen=True)
class Window:
    """A concrete intensity mapping ``[low, high] -> [0, 1]``.

    Attributes
    ----------
    low, high:
        Input intensities mapped to 0 and 1 (values outside are clipped).
    name:
        Where it came from: a preset name, ``"header"``, ``"manual"``, ``"percentile"``
        or ``"rgb"``. Part of :attr:`key`, so embedding caches never mix windows.
    """

    low: float
    high: float
    name: str = "manual"

    def __post_init__(self) -> None:
        low, high = float(self.low), float(self.high)
        if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
            raise WindowError(f"window must have low < high, got low={low}, high={high}")
        object.__setattr__(self, "low", low)
        object.__setattr__(self, "high", high)

    @classmethod
    def from_level_width(cls, level: float, width: float, name: str = "manual") -> Window:
        """Build from a radiologist's ``(level, width)``."""
        if not width > 0:
            raise WindowError(f"window width must be positive, got {width}")
        return cls(level - width / 2.0, level + width / 2.0, name)

    @property
    def level(self) -> float:
        return (self.low + self.high) / 2.0

    @property
    def width(self) -> float:
        return self.high - self.low

    @property
    def is_rgb(self) -> bool:
        return self.name == "rgb"

    @property
    def key(self) -> str:
        """A stable string identifying this mapping (for cache keys and sidecars)."""
        return f"{self.name}:{self.low:.6g},{self.high:.6g}"


def parse_window_spec(spec: WindowSpec) -> str | Window:
    """Normalise a user window choice without looking at any data.

    Returns a :class:`Window` for fixed windows (presets, ``"L,W"``, ``(level, width)``)
    and one of ``"auto"``, ``"header"``, ``"percentile"``, ``"rgb"`` for the data-dependent
    choices. Raises :class:`WindowError` with the list of valid choices otherwise.
    """
    if spec is None:
        return "auto"
    if isinstance(spec, Window):
        return spec
    if isinstance(spec, (tuple, list)):
        if len(spec) != 2:
            raise WindowError(f"window must be (level, width), got {spec!r}")
        return Window.from_level_width(float(spec[0]), float(spec[1]))
    if not isinstance(spec, str):
        raise WindowError(f"window must be a preset name, 'L,W' or (level, width), got {spec!r}")
    s = spec.strip().lower()
    if "," not in s:
        s = s.replace("-", "_").replace(" ", "_")
    if s in ("mr", "percentiles"):
        s = "percentile"
    if s in _SPECIAL:
        return s
    if s in WINDOW_PRESETS:
        level, width = WINDOW_PRESETS[s]
        return Window.from_level_width(level, width, s)
    if "," in s:
        try:
            level, width = (float(p) for p in s.split(","))
        except ValueError:
            raise WindowError(f"window {spec!r} is not 'LEVEL,WIDTH' (e.g. '40,400')") from None
        return Window.from_level_width(level, width)
    choices = ", ".join([*WINDOW_PRESETS, *_SPECIAL, "'LEVEL,WIDTH'"])
    raise WindowError(f"unknown window {spec!r}; choose one of {choices}")


def _percentile_window(array: np.ndarray, max_samples: int = 2_000_000) -> Window:
    """0.5-99.5 percentiles of non-background voxels, on a deterministic strided sample."""
    flat = np.asarray(array).reshape(-1)
    step = max(1, flat.size // max_samples)
    sample = flat[::step]
    if np.issubdtype(sample.dtype, np.floating):
        sample = sample[np.isfinite(sample)]
    background = sample.min() if sample.size else 0
    fg = sample[sample > background]
    if fg.size < 16:
        fg = sample
    lo, hi = np.percentile(fg.astype(np.float32), MR_PERCENTILES)
    if not hi > lo:
        hi = lo + 1.0
    return Window(float(lo), float(hi), "percentile")


def resolve_window(
    data: Any,
    spec: WindowSpec = None,
    *,
    modality: str | None = None,
    header_window: tuple[float | None, float | None] | None = None,
) -> Window:
    """Resolve a window choice into a concrete :class:`Window` for this data.

    Parameters
    ----------
    data:
        A :class:`medsam.io.Volume` (its modality and header window are used), or a
        numpy array of any shape (only needed for ``"percentile"``/automatic MR).
    spec:
        ``None``/``"auto"``: RGB images pass through; CT uses the DICOM header's window
        when present, else ``soft_tissue``; anything else uses MR percentiles.
        A preset name from :data:`WINDOW_PRESETS`, ``"L,W"`` (e.g. ``"40,400"``),
        ``(level, width)``, ``"header"``, ``"percentile"`` or ``"rgb"``.
    modality, header_window:
        Override what a Volume carries (or supply them for a plain array):
        ``header_window`` is ``(center, width)``.
    """
    parsed = parse_window_spec(spec)
    if isinstance(parsed, Window):
        return parsed
    array = getattr(data, "array", data)
    if modality is None:
        modality = getattr(data, "modality", None)
    if header_window is None:
        meta = getattr(data, "meta", None)
        if meta is not None:
            header_window = (meta.window_center, meta.window_width)
    is_rgb = bool(getattr(data, "is_rgb", False)) or (modality or "").upper() == "RGB"

    if parsed == "rgb" or (parsed == "auto" and is_rgb):
        return Window(0.0, 255.0, "rgb")
    has_header = header_window is not None and None not in header_window and header_window[1] > 0
    if parsed == "header":
        if not has_header:
            raise WindowError("window 'header' requested but the image header has no window")
        return Window.from_level_width(float(header_window[0]), float(header_window[1]), "header")
    if parsed == "auto" and (modality or "").upper() == "CT":
        if has_header:
            return Window.from_level_width(float(header_window[0]), float(header_window[1]), "header")
        level, width = WINDOW_PRESETS["soft_tissue"]
        return Window.from_level_width(level, width, "soft_tissue")
    if array is None:
        raise WindowError("percentile window needs the image data")
    return _percentile_window(np.asarray(array))


def apply_window(array: np.ndarray, window: Window, out: np.ndarray | None = None) -> np.ndarray:
    """Map intensities through ``window`` to ``float32`` in ``[0, 1]``.

    Parameters
    ----------
    array:
        Any shape: a slice ``(Y, X)``, slices ``(Z, Y, X)``, or RGB ``(..., 3)``.
        Integer inputs are converted one array at a time to float32 (never float64).
    window:
        From :func:`resolve_window`.
    out:
        Optional preallocated float32 output of the same shape.

    Returns
    -------
    numpy.ndarray
        ``float32`` array, same shape as ``array``, values in ``[0, 1]``. NaN and
        infinite voxels map to 0, the window's minimum.
    """
    a = np.asarray(array)
    if out is None:
        out = np.empty(a.shape, dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32's range: +-inf, clipped to 0 or 1
        np.subtract(a, np.float32(window.low), out=out, dtype=np.float32, casting="unsafe")
        np.multiply(out, np.float32(1.0 / (window.high - window.low)), out=out)
    np.clip(out, 0.0, 1.0, out=out)
    if np.issubdtype(a.dtype, np.floating):
        bad = ~np.isfinite(a)
        if bad.any():  # NaN and infinite voxels are the window's minimum
            out[bad] = 0.0
    return out


def apply_window_tensor(tensor: Any, window: Window) -> Any:
    """:func:`apply_window` for a torch tensor, on the tensor's device.

    Lets a GPU receive raw int16 slices (half the bytes of float32) and window them
    there. The arithmetic is :func:`apply_window`'s, in float32, so the results are equal.

    Parameters
    ----------
    tensor:
        ``torch.Tensor`` of any shape and real dtype.
    window:
        From :func:`resolve_window`.

    Returns
    -------
    torch.Tensor
        float32, same shape and device, values in ``[0, 1]``.
    """
    out = tensor.float()
    if out.data_ptr() == tensor.data_ptr():
        out = out.clone()
    if out.is_floating_point():  # NaN and infinite voxels are the window's minimum
        low = float(np.float32(window.low))
        out.nan_to_num_(nan=low, posinf=low, neginf=low)
    out.sub_(float(np.float32(window.low)))
    out.mul_(float(np.float32(1.0 / (window.high - window.low))))
    return out.clamp_(0.0, 1.0)
