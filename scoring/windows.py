"""Per-entity sliding windows.

An entity keeps its last ``window - 1`` rows. New rows are cut into chunks of at most ``hop`` rows, and
each chunk is scored by the window of ``window`` rows that ends at the chunk's last row; the chunk's
rows are the window's last rows. Chunks follow message boundaries, never wall-clock time, so a replay
of the same messages builds the same windows. Before an entity has ``window - 1`` rows of history the
window is padded on the left with its first row.

Missing values (NaN) are imputed with the channel's last seen value (or ``fill`` before any value).
"""
from __future__ import annotations

import base64

import numpy as np

from .segments import Segments, grow


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Each NaN of ``x`` [T, C] replaced by the last value before it in its channel (NaN where there is
    none): how the stream imputes a missing reading."""
    idx = np.where(np.isnan(x), 0, np.arange(len(x))[:, None])
    np.maximum.accumulate(idx, axis=0, out=idx)
    return x[idx, np.arange(x.shape[1])]


def fill_gaps(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A whole recorded series (a training split) with its missing values filled, and where they were.

    A gap (NaN or infinite) takes the channel's last value before it, as the stream imputes a
    missing reading (``EntityWindow.impute``); a gap at the start takes the channel's first value (the
    stream would use the model's mean, which a training split has yet to give), and a channel never
    measured is 0. Real plant histories have gaps (a sensor offline, a column added later); a model
    fitted on them would otherwise fail or learn NaN. Without gaps, ``values`` come back as they are.

    >>> filled, gaps = fill_gaps(np.array([[np.nan, 1.0], [2.0, np.nan], [np.nan, 3.0]]))
    >>> filled.tolist(), int(gaps.sum())
    ([[2.0, 1.0], [2.0, 1.0], [2.0, 3.0]], 3)
    """
    values = np.asarray(values)
    gaps = ~np.isfinite(values)
    if not gaps.any():
        return values, gaps
    x = np.where(gaps, np.nan, values).astype(np.float64)
    x = forward_fill(forward_fill(x)[::-1])[::-1]  # then the first value backwards over a leading gap
    x[np.isnan(x)] = 0.0
    return x, gaps


class Windows:
    """The windows of every entity of one shape (``channels``, ``window``, ``hop``), one slot each.

    A slot keeps its last ``window - 1`` rows (``history`` [slots, window - 1, C], newest last, the
    first ``window - 1 - count`` of them unused) and each channel's last value for imputation
    (``last``). ``push`` builds the windows of many entities' new rows at once; ``EntityWindow`` is one
    slot of it, for a single entity's series.
    """

    def __init__(self, window: int, hop: int, channels: int, capacity: int = 0):
        if not 1 <= hop <= window:
            raise ValueError(f"hop must be in [1, window], got hop={hop}, window={window}")
        self.window, self.hop, self.channels = window, hop, channels
        self.history = np.zeros((capacity, max(window - 1, 0), channels), np.float32)
        self.count = np.zeros(capacity, np.int64)  # rows of history kept (<= window - 1)
        self.last = np.full((capacity, channels), np.nan)

    def ensure(self, capacity: int) -> None:
        self.history = grow(self.history, capacity)
        self.count = grow(self.count, capacity)
        self.last = grow(self.last, capacity, np.nan)

    def reset(self, slot: int | np.ndarray, fill: np.ndarray | None = None) -> None:
        """A new entity in ``slot`` (or in each of an array of slots): no history; imputes with ``fill``
        before any value (else 0)."""
        self.history[slot] = 0.0
        self.count[slot] = 0
        self.last[slot] = np.nan if fill is None else np.asarray(fill, np.float64)

    def impute(self, seg: Segments, rows: np.ndarray) -> np.ndarray:
        """Forward-fill NaN per channel from each entity's last seen value; a new float64 array. The last
        row of each segment becomes its entity's last value."""
        rows = np.array(rows, dtype=np.float64)
        if not len(rows):
            return rows
        nan = np.isnan(rows)
        if nan.any():
            for s in np.flatnonzero(np.add.reduceat(nan.any(1), seg.start) > 0).tolist():
                a, b, slot = int(seg.start[s]), int(seg.end[s]), int(seg.slot[s])
                filled = forward_fill(np.vstack([self.last[slot][None], rows[a:b]]))[1:]
                filled[np.isnan(filled)] = 0.0  # a channel never seen and without a fill value
                rows[a:b] = filled
        self.last[seg.slot] = rows[seg.last()]
        return rows

    def push(self, seg: Segments, rows: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Append imputed rows ``[n, C]`` of many entities; return the windows ``[B, W, C]`` that score them,
        in row order, and the number of new rows at the end of each window ``[B]``.

        ``lengths``: the row counts of the messages the rows came from, in row order (a message's rows
        belong to one entity); a message's rows are cut into chunks of at most ``hop`` rows, each scored
        by the window ending at its last row. Before an entity has ``window - 1`` rows of history its
        window is padded on the left with its first row.
        """
        rows = np.asarray(rows, np.float32)
        k = self.window - 1
        ctx, base = self._context(seg, rows, padded=True)
        lengths = np.asarray(lengths, np.int64)
        chunks = -(-lengths // self.hop)  # per message
        if not int(chunks.sum()):
            return np.zeros((0, self.window, self.channels), np.float32), np.zeros(0, np.int64)
        first = np.repeat(np.cumsum(lengths) - lengths, chunks)
        step = np.arange(int(chunks.sum())) - np.repeat(np.cumsum(chunks) - chunks, chunks)  # chunk no. in its message
        size = np.repeat(lengths, chunks)
        ends = first + np.minimum((step + 1) * self.hop, size) - 1  # row of each chunk's last row
        counts = np.minimum(self.hop, size - step * self.hop)
        where = ends + (seg.row_seg[ends] + 1) * k  # that row's place in ctx
        view = np.lib.stride_tricks.sliding_window_view(ctx, self.window, axis=0)  # [T - W + 1, C, W]
        windows = view[where - k].transpose(0, 2, 1)
        self._keep_tail(seg, ctx, base)
        return np.ascontiguousarray(windows), counts

    def extend(self, seg: Segments, rows: np.ndarray) -> None:
        """Append rows without building windows (entities scored row by row, like the cold start's)."""
        ctx, base = self._context(seg, np.asarray(rows, np.float32), padded=False)
        self._keep_tail(seg, ctx, base, unpadded=True)

    def _context(self, seg: Segments, rows: np.ndarray, padded: bool) -> tuple[np.ndarray, np.ndarray]:
        """Each segment's history (``window - 1`` rows, the unused ones filled with the entity's first
        row where ``padded``) then its new rows, one segment after another; and where each begins."""
        k = self.window - 1
        n_seg = len(seg.slot)
        hist = self.history[seg.slot]  # [S, k, C] copy
        if padded and k:
            have = self.count[seg.slot]
            oldest = np.where(have > 0, k - have, 0)
            first = np.where((have > 0)[:, None], hist[np.arange(n_seg), np.minimum(oldest, k - 1)],
                             rows[seg.start] if len(rows) else 0.0)
            unused = np.arange(k)[None, :] < (k - have)[:, None]
            hist = np.where(unused[..., None], first[:, None, :], hist)
        ctx = np.empty((n_seg * k + len(rows), self.channels), np.float32)
        base = seg.start + np.arange(n_seg) * k  # where segment s begins in ctx
        if k:
            ctx[(base[:, None] + np.arange(k)[None, :]).ravel()] = hist.reshape(-1, self.channels)
        ctx[np.arange(len(rows)) + (seg.row_seg + 1) * k] = rows
        return ctx, base

    def _keep_tail(self, seg: Segments, ctx: np.ndarray, base: np.ndarray, unpadded: bool = False) -> None:
        k = self.window - 1
        if not k or not len(seg.slot):
            return
        tail = base[:, None] + seg.length[:, None] + np.arange(k)[None, :]  # the last k rows of each
        self.history[seg.slot] = ctx[tail]
        self.count[seg.slot] = np.minimum(k, self.count[seg.slot] + seg.length) if unpadded else k

    def to_state(self, slot: int, history: bool = True) -> dict:
        """The rows kept, as base64 of their float32 bytes (exact, a fifth of the JSON of the numbers);
        ``history=False`` leaves them out (a restore then pads the next window with its first row)."""
        n = int(self.count[slot])
        kept = self.history[slot, self.history.shape[1] - n:] if n else self.history[slot, :0]
        rows = base64.b64encode(np.ascontiguousarray(kept, "<f4").tobytes()).decode() if history else None
        return {"history": rows, "last": [None if v != v else v for v in self.last[slot].tolist()]}  # NaN: none

    def load_state(self, slot: int, state: dict) -> None:
        rows = state["history"]
        if rows is None:
            rows = np.zeros((0, self.channels), np.float32)
        elif isinstance(rows, str):
            rows = np.frombuffer(base64.b64decode(rows), "<f4")
        rows = np.asarray(rows, np.float32).reshape(-1, self.channels)[-self.history.shape[1]:] \
            if self.history.shape[1] else np.zeros((0, self.channels), np.float32)
        self.history[slot] = 0.0
        if len(rows):
            self.history[slot, self.history.shape[1] - len(rows):] = rows
        self.count[slot] = len(rows)
        self.last[slot] = np.array([np.nan if v is None else v for v in state["last"]], np.float64)

    def rows(self, slot: int) -> np.ndarray:
        """The rows ``slot`` keeps, oldest first."""
        n = int(self.count[slot])
        return self.history[slot, self.history.shape[1] - n:].copy()

    def set_rows(self, slot: int, rows: np.ndarray) -> None:
        self.load_state(slot, {"history": np.asarray(rows, np.float32), "last": self.last[slot].tolist()})


class EntityWindow:
    """One entity's windows (``Windows`` with a single slot), for a series scored on its own."""

    def __init__(self, window: int, hop: int, channels: int, fill: np.ndarray | None = None,
                 columns: Windows | None = None, slot: int = 0):
        """A window of its own, or (``columns``, ``slot``) the one an entity has in a fleet's windows."""
        if columns is None:
            columns = Windows(window, hop, channels, capacity=1)
            columns.reset(0, fill)
        self.columns, self.slot = columns, slot
        self.window, self.hop, self.channels = columns.window, columns.hop, columns.channels

    @property
    def history(self) -> np.ndarray:
        return self.columns.rows(self.slot)

    @history.setter
    def history(self, rows: np.ndarray) -> None:
        self.columns.set_rows(self.slot, rows)

    @property
    def last(self) -> np.ndarray:
        return self.columns.last[self.slot].copy()

    @last.setter
    def last(self, values: np.ndarray) -> None:
        self.columns.last[self.slot] = values

    def impute(self, rows: np.ndarray) -> np.ndarray:
        """Forward-fill NaN per channel from the last seen value; returns a new float64 array."""
        rows = np.asarray(rows)
        if not len(rows):
            return np.array(rows, np.float64)
        return self.columns.impute(Segments.one(len(rows), self.slot), rows)

    def push(self, rows: np.ndarray, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        """Append imputed rows ``[n, C]``; return the windows ``[B, W, C]`` that score them and the
        number of new rows at the end of each window ``[B]`` (``Windows.push``). ``lengths`` are the row
        counts of the messages the rows came from (default: one message)."""
        rows = np.asarray(rows, np.float32)
        lengths = np.array([len(rows)] if lengths is None else lengths, dtype=np.int64)
        return self.columns.push(Segments.one(len(rows), self.slot), rows, lengths)

    def extend(self, rows: np.ndarray) -> None:
        """Append rows without building windows (entities scored row by row, like the cold start's)."""
        if len(rows):
            self.columns.extend(Segments.one(len(rows), self.slot), rows)

    def to_state(self, history: bool = True) -> dict:
        return self.columns.to_state(self.slot, history)

    def load_state(self, state: dict) -> "EntityWindow":
        self.columns.load_state(self.slot, state)
        return self
