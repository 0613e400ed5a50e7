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


class EntityWindow:
    def __init__(self, window: int, hop: int, channels: int, fill: np.ndarray | None = None):
        if not 1 <= hop <= window:
            raise ValueError(f"hop must be in [1, window], got hop={hop}, window={window}")
        self.window, self.hop, self.channels = window, hop, channels
        self.history = np.zeros((0, channels), np.float32)  # at most window-1 rows
        self.last = np.full(channels, np.nan) if fill is None else np.asarray(fill, np.float64).copy()

    def impute(self, rows: np.ndarray) -> np.ndarray:
        """Forward-fill NaN per channel from the last seen value; returns a new float64 array."""
        rows = np.array(rows, dtype=np.float64)
        if np.isnan(rows).any():
            rows = forward_fill(np.vstack([self.last[None], rows]))[1:]
            rows[np.isnan(rows)] = 0.0  # a channel never seen and without a fill value
        self.last = rows[-1].copy()
        return rows

    def push(self, rows: np.ndarray, lengths=None) -> tuple[np.ndarray, np.ndarray]:
        """Append imputed rows ``[n, C]``; return the windows ``[B, W, C]`` that score them and the
        number of new rows at the end of each window ``[B]``.

        ``lengths`` are the row counts of the messages the rows came from (default: one message);
        chunks never straddle two messages.
        """
        rows = np.asarray(rows, np.float32)
        n = len(rows)
        lengths = np.array([n] if lengths is None else lengths, dtype=np.int64)
        ctx = np.concatenate([self.history, rows])
        pad = self.window - 1 - len(self.history)
        if pad > 0:
            ctx = np.concatenate([np.repeat(ctx[:1], pad, axis=0), ctx])
        if (lengths <= self.hop).all():
            ends, counts = np.cumsum(lengths) - 1, lengths
        else:
            ends, counts, first = [], [], 0
            for m in lengths.tolist():
                for start in range(0, m, self.hop):
                    stop = min(start + self.hop, m)
                    ends.append(first + stop - 1)
                    counts.append(stop - start)
                first += m
            ends, counts = np.array(ends), np.array(counts)
        # ctx index of new row i is i + window - 1, so the window ending at it starts at i
        view = np.lib.stride_tricks.sliding_window_view(ctx, self.window, axis=0)  # [N, C, W]
        windows = view[ends].transpose(0, 2, 1)
        self._keep_tail(ctx)
        return np.ascontiguousarray(windows), counts

    def extend(self, rows: np.ndarray) -> None:
        """Append rows without building windows (entities scored row by row, like the cold start's)."""
        self._keep_tail(np.concatenate([self.history, np.asarray(rows, np.float32)]))

    def _keep_tail(self, ctx: np.ndarray) -> None:
        self.history = ctx[-(self.window - 1):] if self.window > 1 else ctx[:0]

    def to_state(self, history: bool = True) -> dict:
        """The rows kept, as base64 of their float32 bytes (exact, a fifth of the JSON of the numbers);
        ``history=False`` leaves them out (a restore then pads the next window with its first row)."""
        rows = base64.b64encode(np.ascontiguousarray(self.history, "<f4").tobytes()).decode() if history else None
        return {"history": rows, "last": [None if np.isnan(v) else float(v) for v in self.last]}

    def load_state(self, state: dict) -> "EntityWindow":
        rows = state["history"]
        if rows is None:
            rows = np.zeros((0, self.channels), np.float32)
        elif isinstance(rows, str):
            rows = np.frombuffer(base64.b64decode(rows), "<f4")
        self.history = np.asarray(rows, np.float32).reshape(-1, self.channels).copy()
        self.last = np.array([np.nan if v is None else v for v in state["last"]], np.float64)
        return self
