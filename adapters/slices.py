"""2D training samples from 3D cases: which (case, slice, structure) to train on, and loading.

:class:`SliceIndex` reads each label map once and lists, per structure, the slices where it
is present (foreground samples) and the absent slices just beyond its ends (empty samples:
the prompt is the box of the nearest slice with the structure, and the answer must be
empty, which is what propagation meets at an organ's end). :meth:`SliceIndex.epoch_items`
draws an epoch: all foreground samples plus a fraction of empty ones, shuffled with a seed
derived from the epoch (so a resumed run sees the same data).

:class:`CaseStore` keeps a few decoded cases in memory and windows slices on request with
:func:`medsam.intensity.apply_window`, the function inference uses.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from adapters.datasets import Case, case_targets, load_case
from medsam.intensity import Window, WindowSpec, apply_window, resolve_window

__all__ = ["CaseStore", "SliceIndex", "SliceItem"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SliceItem:
    """One 2D sample: structure ``label_id`` on slice ``k`` of case ``case``.

    ``ref_k`` is the slice whose mask gives the prompt: ``k`` itself for foreground
    samples, the nearest slice with the structure for empty ones.
    """

    case: int
    k: int
    structure: str
    label_id: int
    ref_k: int

    @property
    def empty(self) -> bool:
        return self.ref_k != self.k


class CaseStore:
    """Decoded cases (image, labels, window), the ``max_cached`` most recent kept in memory.

    Parameters
    ----------
    cases
        The dataset's cases.
    window
        Window spec, resolved per case with :func:`medsam.intensity.resolve_window`
        (``None``: CT soft tissue or header window, MR percentiles), as at inference.
    """

    def __init__(self, cases: Sequence[Case], window: WindowSpec = None, max_cached: int = 8) -> None:
        self.cases = list(cases)
        self.window_spec = window
        self.max_cached = max(1, int(max_cached))
        self._cache: OrderedDict[int, tuple[object, np.ndarray, Window]] = OrderedDict()

    def get(self, i: int) -> tuple[object, np.ndarray, Window]:
        """``(Volume, labels (Z, Y, X), Window)`` of case ``i``."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        volume, labels = load_case(self.cases[i])
        window = resolve_window(volume, self.window_spec)
        self._cache[i] = (volume, labels, window)
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return self._cache[i]

    def image(self, i: int, k: int) -> np.ndarray:
        """Slice ``k`` of case ``i`` windowed to float32 ``(Y, X)`` in [0, 1]."""
        volume, _, window = self.get(i)
        return apply_window(volume.array[k], window)

    def mask(self, i: int, k: int, label_id: int) -> np.ndarray:
        """``(Y, X)`` bool mask of ``label_id`` on slice ``k`` of case ``i``."""
        return self.get(i)[1][k] == label_id


class SliceIndex:
    """Foreground and empty slice samples of the chosen structures over all cases.

    Parameters
    ----------
    store
        The cases.
    labels
        Structure names or ids (``"liver,spleen"``, ``[5, 1]``).
    min_area
        Slices where a structure has fewer pixels are neither foreground nor empty.
    empty_margin
        Empty samples come from the ``empty_margin`` slices beyond each end of a structure.
    """

    def __init__(self, store: CaseStore, labels, *, min_area: int = 10, empty_margin: int = 3) -> None:
        self.store = store
        self.min_area = int(min_area)
        self.foreground: list[SliceItem] = []
        self.empty: list[SliceItem] = []
        self.structures: list[str] = []
        for ci, case in enumerate(store.cases):
            targets = case_targets(case, labels)
            if not targets:
                logger.warning("case %s defines none of the requested labels", case.case_id)
                continue
            lab = store.get(ci)[1]
            for t in targets:
                if t.name not in self.structures:
                    self.structures.append(t.name)
                area = (lab == t.label_id).sum(axis=(1, 2))
                fg = np.flatnonzero(area >= self.min_area)
                self.foreground += [SliceItem(ci, int(k), t.name, t.label_id, int(k)) for k in fg]
                if fg.size == 0:
                    continue
                absent = np.flatnonzero(area == 0)
                near = absent[(absent >= fg.min() - empty_margin) & (absent <= fg.max() + empty_margin)]
                for k in near:
                    ref = int(fg[np.argmin(np.abs(fg - k))])
                    self.empty.append(SliceItem(ci, int(k), t.name, t.label_id, ref))

    def __len__(self) -> int:
        return len(self.foreground)

    def summary(self) -> dict:
        """Counts for logs and the adapter sidecar."""
        per = {s: sum(1 for it in self.foreground if it.structure == s) for s in self.structures}
        return {
            "cases": [c.case_id for c in self.store.cases],
            "structures": list(self.structures),
            "foreground_slices": per,
            "empty_slices": len(self.empty),
        }

    def epoch_items(
        self,
        epoch: int,
        seed: int,
        *,
        empty_fraction: float = 0.1,
        samples: int | None = None,
        group_slices: bool = False,
    ) -> list[SliceItem]:
        """The samples of one epoch, shuffled with ``(seed, epoch)``.

        All foreground samples (or ``samples`` of them, drawn without replacement while
        possible), plus empty samples making up ``empty_fraction`` of the epoch. With
        ``group_slices``, the samples of one slice (its structures) follow each other, so
        a batch shares one encoder pass when the encoder is trained (LoRA, full).
        """
        if not 0.0 <= empty_fraction < 1.0:
            raise ValueError(f"empty_fraction must be in [0, 1), got {empty_fraction}")
        rng = np.random.default_rng([seed, epoch])
        n_total = samples if samples is not None else int(round(len(self.foreground) / (1 - empty_fraction)))
        n_empty = min(len(self.empty), int(round(n_total * empty_fraction))) if self.empty else 0
        n_fg = max(0, n_total - n_empty)
        if not self.foreground:
            raise ValueError("no foreground slices for the requested labels (check --labels and min_area)")
        fg_idx = rng.permutation(len(self.foreground))
        while len(fg_idx) < n_fg:
            fg_idx = np.concatenate([fg_idx, rng.permutation(len(self.foreground))])
        items = [self.foreground[i] for i in fg_idx[:n_fg]]
        items += [self.empty[i] for i in rng.choice(len(self.empty), n_empty, replace=False)] if n_empty else []
        order = rng.permutation(len(items))
        items = [items[i] for i in order]
        if group_slices:
            slices = list(dict.fromkeys((it.case, it.k) for it in items))
            rank = {key: r for r, key in enumerate(slices)}
            items.sort(key=lambda it: rank[(it.case, it.k)])
        return items
