"""Progress bars for work that takes more than a couple of seconds.

One rule for every front end: a tqdm bar on stderr when stderr is a terminal, nothing when
it is not (a log file, a pipe, CI) or when the user asked for quiet.
"""

from __future__ import annotations

import sys
from typing import IO


def progress_bar(total: int, desc: str, unit: str, *, quiet: bool = False, stream: IO[str] | None = None):
    """A ``tqdm`` bar on ``stream`` (default stderr), or ``None`` where none should show.

    Parameters
    ----------
    total:
        Expected number of steps (0 when not known yet; callers may set ``bar.total``).
    desc, unit:
        The bar's label and step unit.
    quiet:
        The user asked for no progress output (``--quiet``).
    stream:
        Where the bar goes; it shows only if this is a TTY.
    """
    stream = sys.stderr if stream is None else stream
    isatty = getattr(stream, "isatty", None)
    if quiet or not (callable(isatty) and isatty()):
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=stream, leave=False)
