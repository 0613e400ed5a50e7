"""The rows of many entities in one micro-batch: what every columnar step of the stream takes.

A fleet is thousands of entities with a few readings each per micro-batch. Their rows are laid out
entity after entity (each entity's rows contiguous, in arrival order) and every per-entity state
(windows, smoothing, level, threshold) is an array with one row per entity *slot* (docs/design.md,
"Many entities, one call"), so that a step costs about the same for ten entities or ten thousand.
``Segments`` says which rows are whose.

>>> s = Segments.of(np.array([3, 0]), np.array([2, 1]))
>>> s.start.tolist(), s.row_slot.tolist(), s.pos.tolist(), s.end.tolist()
([0, 2], [3, 3, 0], [0, 1, 0], [2, 3])
"""
from __future__ import annotations

import copy

import numpy as np


class Segments:
    """``slot`` [S]: the entity slot of each segment; ``length`` [S]: its rows (at least 1); segments
    follow each other in the rows. Derived: ``start``/``end`` [S], and per row [R] its segment
    (``row_seg``), slot (``row_slot``) and position within the segment (``pos``)."""

    __slots__ = ("slot", "length", "start", "end", "row_seg", "row_slot", "pos")

    def __init__(self, slot: np.ndarray, length: np.ndarray):
        self.slot = np.asarray(slot, np.int64)
        self.length = np.asarray(length, np.int64)
        self.end = np.cumsum(self.length)
        self.start = self.end - self.length
        self.row_seg = np.repeat(np.arange(len(self.slot)), self.length)
        self.row_slot = self.slot[self.row_seg]
        self.pos = np.arange(int(self.end[-1]) if len(self.end) else 0) - self.start[self.row_seg]

    @classmethod
    def of(cls, slot, length) -> "Segments":
        return cls(slot, length)

    @classmethod
    def one(cls, n: int, slot: int = 0) -> "Segments":
        """The ``n`` rows of a single entity (the per-entity classes' single slot)."""
        return cls(np.array([slot]), np.array([n])) if n else cls(np.zeros(0, np.int64), np.zeros(0, np.int64))

    @property
    def rows(self) -> int:
        return int(self.end[-1]) if len(self.end) else 0

    def last(self) -> np.ndarray:
        """Index of each segment's last row."""
        return self.end - 1

    def select(self, keep: np.ndarray) -> "Segments":
        """The segments where ``keep`` [S] holds (their rows keep their order)."""
        return Segments(self.slot[keep], self.length[keep])

    def rows_of(self, keep: np.ndarray) -> np.ndarray:
        """Indices of the rows of the segments where ``keep`` [S] holds."""
        return np.flatnonzero(keep[self.row_seg])


def grow(a: np.ndarray, capacity: int, fill=0) -> np.ndarray:
    """``a`` with its first axis grown to ``capacity`` rows (new rows ``fill``), or ``a`` as it is."""
    if len(a) >= capacity:
        return a
    if fill == 0:  # zeroed pages are only resident once written: unused capacity costs no memory
        out = np.zeros((capacity, *a.shape[1:]), dtype=a.dtype)
    else:
        out = np.empty((capacity, *a.shape[1:]), dtype=a.dtype)
        out[len(a):] = fill
    out[:len(a)] = a
    return out


def gather(columns, slots: np.ndarray):
    """A copy of ``columns`` (an object whose arrays have a row per slot) holding only the rows of
    ``slots``, in that order, as they are now: whatever the original does next, the copy keeps them
    (a checkpoint's instant, ``Pipeline._keep``)."""
    out = copy.copy(columns)
    for name, value in vars(columns).items():
        if isinstance(value, np.ndarray):
            setattr(out, name, value[slots])
    return out
