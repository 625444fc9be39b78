"""Choice of the torch device: ``None`` means CUDA if available, else MPS, else CPU."""

from __future__ import annotations

import logging

import torch

__all__ = ["DeviceLike", "select_device"]

logger = logging.getLogger(__name__)

DeviceLike = str | torch.device | None


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(device: DeviceLike = None) -> torch.device:
    """Resolve a device request to a usable :class:`torch.device`.

    Parameters
    ----------
    device
        ``None`` or ``"auto"``: CUDA if available, else Apple MPS, else CPU.
        ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a :class:`torch.device`: that
        device, after checking that it exists on this machine.

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For an unknown device string or a device this machine does not have.

    Examples
    --------
    >>> select_device("cpu")
    device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            chosen = torch.device("cuda")
        elif _mps_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
        logger.debug("device=None resolved to %s", chosen)
        return chosen
    if isinstance(device, torch.device):
        chosen = device
    elif isinstance(device, str):
        try:
            chosen = torch.device(device.strip().lower())
        except RuntimeError as err:
            raise ValueError(
                f"unknown device {device!r}; use None/'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
            ) from err
    else:
        raise TypeError(
            f"device must be None, a string or a torch.device, not {type(device).__name__}"
        )

    if chosen.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {str(chosen)!r} requested but CUDA is not available; use device=None or 'cpu'"
            )
        if chosen.index is not None and chosen.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(chosen)!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist"
            )
    elif chosen.type == "mps":
        if not _mps_available():
            raise ValueError(
                "device 'mps' requested but Apple MPS is not available; use device=None or 'cpu'"
            )
    elif chosen.type != "cpu":
        raise ValueError(
            f"unsupported device {str(chosen)!r}; use None/'auto', 'cpu', 'cuda' or 'mps'"
        )
    return chosen
