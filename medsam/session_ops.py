"""Interactive-session operations on top of :class:`~medsam.volume.VolumePredictor`.

Every action of an interactive front end (the napari widget today) is one plain function
here, so the same behaviour is available from Python and testable without a GUI:

* :func:`window_options` - the window choices for a volume and the default one.
* :func:`embedding_order` / :func:`embed_slices` - embed a volume nearest-slice-first, in
  cancellable batches (a generator a GUI worker can drive).
* :func:`missing_embeddings` - which slices still need the encoder before segmenting.
* :func:`ensure_object`, :func:`sync_object_prompts`, :func:`remove_object` - keep the
  session's prompts of one object equal to what the user currently has on screen.
* :func:`absorb_label_edits` - turn the user's brush, eraser and fill edits of the label
  map into mask prompts: an edited slice belongs to the user, and seeds propagation.
* :func:`propagate_object` - propagate one object, only from the slices that changed.
* :class:`LabelHistory` - commits of a label map, with undo and redo.

Nothing here imports Qt or napari.

Examples
--------
>>> embedding_order(6, 2)
[2, 1, 3, 0, 4, 5]
>>> import numpy as np
>>> target = np.zeros((3, 2, 2), np.uint8)
>>> h = LabelHistory()
>>> h.apply(target, np.ones((3, 2, 2), np.uint8), slices=[1])
[1]
>>> int(target.sum()), h.undo(target), int(target.sum()), h.redo(target), int(target.sum())
(4, [1], 0, [1], 4)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from medsam.intensity import WINDOW_PRESETS, resolve_window
from medsam.prompts import SlicePrompt
from medsam.volume import ObjectState, PropagationStep, SliceResult, VolumePredictor

__all__ = [
    "window_options",
    "embedding_order",
    "embed_slices",
    "missing_embeddings",
    "ensure_object",
    "sync_object_prompts",
    "remove_object",
    "absorb_label_edits",
    "propagate_object",
    "LabelHistory",
    "result_summary",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ windows
def window_options(volume) -> tuple[list[str], str]:
    """The window choices that make sense for ``volume`` and the automatic default.

    Returns
    -------
    (choices, default)
        ``choices`` are names :func:`medsam.intensity.resolve_window` accepts: ``["rgb"]``
        for colour pictures, otherwise the CT presets, ``"header"`` when the file carries
        a window, and ``"percentile"``. ``default`` is what ``resolve_window(volume, None)``
        picks (the header window for CT when present, ``soft_tissue`` for other CT,
        ``percentile`` for MR and anything else).
    """
    default = resolve_window(volume, None).name
    if default == "rgb":
        return ["rgb"], "rgb"
    meta = getattr(volume, "meta", None)
    has_header = meta is not None and meta.window_center is not None and bool(meta.window_width)
    choices = [*(["header"] if has_header else []), *WINDOW_PRESETS, "percentile"]
    if default not in choices:
        choices.insert(0, default)
    return choices, default


# ---------------------------------------------------------------------------- embedding
def embedding_order(n_slices: int, first: int) -> list[int]:
    """All slice indices, nearest to ``first`` first (ties: the lower slice first)."""
    if n_slices < 1:
        return []
    first = min(max(int(first), 0), n_slices - 1)
    return sorted(range(n_slices), key=lambda k: (abs(k - first), k))


def embed_slices(
    embedder,
    slices: Iterable[int],
    *,
    first_alone: bool = True,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[tuple[int, int]]:
    """Embed ``slices`` in order, a batch at a time; yields ``(done, total)`` after each batch.

    Parameters
    ----------
    embedder:
        A :class:`medsam.embedding.SliceEmbedder` (``session.embedder``).
    slices:
        Slice indices in the order wanted (see :func:`embedding_order`); already embedded
        ones are skipped.
    first_alone:
        Embed the first slice as a batch of one, so it is usable as soon as possible.
    should_stop:
        Polled before each batch; returning True ends the generator early.

    Notes
    -----
    Safe to run in a worker thread while another thread segments slices that are already
    embedded: the embedder only ever adds finished embeddings to its store.
    """
    todo = [k for k in dict.fromkeys(int(k) for k in slices) if not embedder.has(k)]
    total = len(todo)
    if not todo:
        yield 0, 0
        return
    batches = [todo[:1], todo[1:]] if first_alone else [todo]
    done = 0
    for group in batches:
        for start in range(0, len(group), embedder.batch_size):
            if should_stop is not None and should_stop():
                logger.info("embedding stopped after %d of %d slices", done, total)
                return
            batch = group[start : start + embedder.batch_size]
            embedder.embed(batch)
            done += len(batch)
            yield done, total


def missing_embeddings(session, slices: Iterable[int]) -> list[int]:
    """The slices among ``slices`` that are not embedded yet (sorted, unique)."""
    return sorted({int(k) for k in slices if not session.embedder.has(int(k))})


# ------------------------------------------------------------------------------ objects
def _session_of(vp: VolumePredictor):
    if vp.session is None:
        raise RuntimeError("no volume; call VolumePredictor.init_volume(volume) first")
    return vp.session


def ensure_object(vp: VolumePredictor, label: int, name: str | None = None) -> ObjectState:
    """Return object ``label`` of the session, creating it (without prompts) if needed."""
    _session_of(vp)
    return vp.add_object(int(label), name)


def _same_prompt(a: SlicePrompt | None, b: SlicePrompt | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.points == b.points and a.point_labels == b.point_labels and a.box == b.box


def _is_painted(p: SlicePrompt | None) -> bool:
    """A mask-only prompt: what the user painted on the label map."""
    return p is not None and p.mask is not None and p.box is None and not p.points


def sync_object_prompts(
    vp: VolumePredictor,
    label: int,
    prompts: Mapping[int, SlicePrompt],
    *,
    name: str | None = None,
) -> list[int]:
    """Make object ``label``'s prompts equal ``prompts`` and re-segment what changed.

    Parameters
    ----------
    prompts:
        ``{slice k: SlicePrompt}``, the complete current prompts of the object (points
        ``(x, y)`` and box ``(x0, y0, x1, y1)`` in voxel indices of slice ``k``).
        Slices with an empty prompt, or missing from the mapping, lose their prompt and
        its mask (propagated masks on other slices are kept).

    Returns
    -------
    list[int]
        The slices whose prompts changed (their masks are new), sorted. The caller must
        make sure these slices are embedded (:func:`missing_embeddings`) or accept that
        the encoder runs on the calling thread.
    """
    obj = ensure_object(vp, label, name)
    wanted = {int(k): p for k, p in prompts.items() if not p.is_empty}
    changed = []
    for k in sorted(set(obj.prompts) | set(wanted)):
        new, old = wanted.get(k), obj.prompts.get(k)
        if _same_prompt(new, old) or (new is None and _is_painted(old)):
            continue  # a painted slice is not on the prompt layers: it stays the user's
        changed.append(k)
        if new is None:
            vp.remove_prompt(k, obj.label)
            continue
        vp.add_prompt(
            k, obj.label,
            points=list(new.points) or None,
            point_labels=list(new.point_labels) or None,
            box=new.box,
            clear=True,
        )
    return changed


def remove_object(vp: VolumePredictor, label: int) -> list[int]:
    """Delete object ``label`` with its prompts and masks; returns the slices it covered."""
    obj = _session_of(vp).objects.get(int(label))
    if obj is None:
        return []
    slices = sorted(set(obj.results) | set(obj.prompts))
    vp.remove_object(obj.label)
    return slices


def absorb_label_edits(vp: VolumePredictor, shown: np.ndarray, written: np.ndarray) -> dict[int, list[int]]:
    """Make the user's edits of a label map part of the session, as mask prompts.

    Parameters
    ----------
    shown:
        ``(Z, Y, X)`` the label map as the user has it now (a napari labels layer after
        brush, eraser or fill strokes).
    written:
        ``(Z, Y, X)`` the label map that medsam last wrote there.

    Every voxel where the two differ is the user's. On each slice with such voxels, every
    label they involve gets the user's mask of that slice as a mask prompt, which replaces
    the object's box or points there (an empty mask where the user erased the object).
    A prompted slice is never overwritten by propagation or re-propagation, and it seeds
    propagation like any prompt. Labels without an object get one. Returns
    ``{label: [slices]}`` of the masks taken over.
    """
    if shown.shape != written.shape:
        raise ValueError(f"label map shapes differ: {shown.shape} vs {written.shape}")
    taken: dict[int, list[int]] = {}
    for k in np.nonzero((shown != written).reshape(shown.shape[0], -1).any(1))[0].tolist():
        diff = shown[k] != written[k]
        for label in np.unique(np.concatenate([shown[k][diff], written[k][diff]])).tolist():
            if label == 0:
                continue
            ensure_object(vp, int(label))
            vp.add_prompt(k, int(label), mask=shown[k] == label, clear=True)
            taken.setdefault(int(label), []).append(k)
    return taken


# -------------------------------------------------------------------------- propagation
def propagate_object(
    vp: VolumePredictor,
    label: int,
    changed_slices: Iterable[int] | None = None,
    *,
    direction: str = "both",
) -> Iterator[PropagationStep]:
    """Propagate one object through the volume; yields one step per slice reached.

    Parameters
    ----------
    label:
        The object.
    changed_slices:
        Slices whose prompts changed since the object was last propagated. When every one
        of them still carries a prompt, only the stretches those prompts own are
        re-propagated (a correction keeps the rest of the object). ``None``, or a changed
        slice that lost its prompt, re-propagates the whole object. Other objects are
        never touched.
    """
    obj = _session_of(vp).objects.get(int(label))
    if obj is None or not obj.prompts:
        return
    changed = None if changed_slices is None else sorted({int(k) for k in changed_slices})
    if changed is not None and changed and all(k in obj.prompts for k in changed):
        for k in changed:
            yield from vp.propagate(direction, obj_ids=[obj.label], start_slice=k)
        return
    if changed == []:
        return
    yield from vp.propagate(direction, obj_ids=[obj.label])


# ------------------------------------------------------------------------------ history
@dataclass(frozen=True)
class _Step:
    slices: tuple[int, ...]
    before: np.ndarray  # (n, Y, X)
    after: np.ndarray  # (n, Y, X)


class LabelHistory:
    """Undo/redo of commits to a ``(Z, Y, X)`` label map, stored as changed slices only.

    Parameters
    ----------
    max_steps:
        How many commits can be undone (the oldest is dropped beyond that).
    """

    def __init__(self, max_steps: int = 30) -> None:
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.max_steps = int(max_steps)
        self._undo: list[_Step] = []
        self._redo: list[_Step] = []

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def clear(self) -> None:
        self._undo.clear()
        self._redo.clear()

    def apply(
        self, target: np.ndarray, new: np.ndarray, slices: Sequence[int] | None = None
    ) -> list[int]:
        """Copy ``new[k]`` into ``target[k]`` (in place) for ``slices`` (default: all) and
        record the change as one undoable step. Returns the slices that actually changed
        (nothing is recorded when none did)."""
        if target.shape != new.shape:
            raise ValueError(f"label map shapes differ: {target.shape} vs {new.shape}")
        ks = range(target.shape[0]) if slices is None else sorted({int(k) for k in slices})
        changed = [k for k in ks if not np.array_equal(target[k], new[k])]
        if not changed:
            return []
        step = _Step(tuple(changed), target[changed].copy(), np.asarray(new[changed], target.dtype))
        target[changed] = step.after
        self._undo.append(step)
        del self._undo[: -self.max_steps]
        self._redo.clear()
        return changed

    def undo(self, target: np.ndarray) -> list[int]:
        """Restore the label map before the last commit; returns the slices restored."""
        if not self._undo:
            return []
        step = self._undo.pop()
        target[list(step.slices)] = step.before
        self._redo.append(step)
        return list(step.slices)

    def redo(self, target: np.ndarray) -> list[int]:
        """Re-apply the last undone commit; returns the slices written."""
        if not self._redo:
            return []
        step = self._redo.pop()
        target[list(step.slices)] = step.after
        self._undo.append(step)
        return list(step.slices)


def result_summary(results: Mapping[int, SliceResult]) -> str:
    """One line about an object's masks: slice range, count and lowest confidence."""
    if not results:
        return "no masks"
    ks = sorted(results)
    low = min(results[k].score for k in ks)
    return f"{len(ks)} slices ({ks[0]}-{ks[-1]}), lowest confidence {low:.2f}"
