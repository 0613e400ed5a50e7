"""Per-entity sliding windows.

An entity keeps its last ``window - 1`` rows. New rows are cut into chunks of at most ``hop`` rows, and
each chunk is scored by the window of ``window`` rows that ends at the chunk's last row; the chunk's
rows are the window's last rows. Chunks follow message boundaries, never wall-clock time, so a replay
of the same messages builds the same windows. Before an entity has ``window - 1`` rows of history the
window is padded on the left with its first row.

Missing values (NaN) are imputed with the channel's last seen value (or ``fill`` before any value).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Chunk:
    window: np.ndarray  # [W, C] float32
    count: int  # the last ``count`` rows of the window are new and get scored


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
            prev = self.last
            for i in range(len(rows)):
                miss = np.isnan(rows[i])
                rows[i, miss] = prev[miss]
                prev = rows[i]
            rows[np.isnan(rows)] = 0.0  # a channel never seen and without a fill value
        self.last = rows[-1].copy()
        return rows

    def push(self, rows: np.ndarray) -> list[Chunk]:
        """Append imputed rows ``[n, C]`` and return the windows that score them, oldest first."""
        rows = np.asarray(rows, np.float32)
        n = len(rows)
        if n == 0:
            return []
        ctx = np.concatenate([self.history, rows])
        pad = self.window - 1 - len(self.history)
        if pad > 0:
            ctx = np.concatenate([np.repeat(ctx[:1], pad, axis=0), ctx])
        offset = self.window - 1  # index in ctx of the first new row
        chunks = []
        for start in range(0, n, self.hop):
            end = min(start + self.hop, n)  # exclusive, in new-row coordinates
            last = offset + end - 1
            chunks.append(Chunk(ctx[last - self.window + 1:last + 1], end - start))
        self.history = ctx[-(self.window - 1):] if self.window > 1 else ctx[:0]
        return chunks

    def to_state(self) -> dict:
        return {"history": self.history.tolist(), "last": [None if np.isnan(v) else float(v) for v in self.last]}

    def load_state(self, state: dict) -> "EntityWindow":
        self.history = np.asarray(state["history"], np.float32).reshape(-1, self.channels)
        self.last = np.array([np.nan if v is None else v for v in state["last"]], np.float64)
        return self
