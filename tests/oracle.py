"""The per-entity implementations the columnar ones replaced (issue 32), kept verbatim as test oracles:
``tests/unit/test_columns.py`` checks that many entities in one columnar step get exactly what each got
from these, one entity at a time."""
# ruff: noqa
from __future__ import annotations

import base64
from typing import NamedTuple

import math

import numpy as np

from scoring.thresholds import (MIN_PEAKS, Threshold, _calibration_scores, _check_kind, _count, _prob,
                                _STATE_VERSION, _tail_quantile, fit_gpd)


class LevelOut(NamedTuple):
    scale: np.ndarray
    drift: np.ndarray
    median: np.ndarray


def forward_fill(x: np.ndarray) -> np.ndarray:
    """Each NaN of ``x`` [T, C] replaced by the last value before it in its channel (NaN where there is
    none): how the stream imputes a missing reading."""
    idx = np.where(np.isnan(x), 0, np.arange(len(x))[:, None])
    np.maximum.accumulate(idx, axis=0, out=idx)
    return x[idx, np.arange(x.shape[1])]


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<f8").tobytes()).decode()


def _unpack(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), "<f8").copy()


class Smoother:
    def __init__(self, k: int, channels: int):
        self.k, self.channels = max(1, int(k)), channels
        self.prev = np.zeros(0)  # the last k - 1 scores
        self.prev_channel = np.zeros((0, channels))

    def apply(self, score: np.ndarray, channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.k == 1 or not len(score):
            return score, channel
        s = np.concatenate([self.prev, score])
        c = np.concatenate([self.prev_channel, channel.astype(np.float64)])
        pad = self.k - 1 - len(self.prev)  # an entity's first points: the mean of what there is
        s_pad = np.concatenate([np.zeros(pad), s])
        c_pad = np.concatenate([np.zeros((pad, self.channels)), c])
        n = len(score)
        # k shifted slices added in a fixed order: each point's sum is the same whatever the batches
        total, total_c = s_pad[:n].copy(), c_pad[:n].copy()
        for j in range(1, self.k):
            total += s_pad[j:j + n]
            total_c += c_pad[j:j + n]
        count = np.minimum(self.k, len(self.prev) + 1 + np.arange(n))
        self.prev, self.prev_channel = s[-(self.k - 1):], c[-(self.k - 1):]
        return total / count, total_c / count[:, None]

    def smooth(self, scores: np.ndarray) -> np.ndarray:
        """A whole series at once (calibration scores), from an empty state."""
        return Smoother(self.k, 1).apply(np.asarray(scores, np.float64), np.zeros((len(scores), 1)))[0]

    def to_state(self) -> dict:
        return {"k": self.k, "prev": _pack(self.prev), "prev_channel": _pack(self.prev_channel)}

    def load_state(self, state: dict) -> "Smoother":
        self.prev = _unpack(state["prev"])
        self.prev_channel = _unpack(state["prev_channel"]).reshape(-1, self.channels)
        return self


class Level:
    """The recent level of an entity's scores against its calibration (see the module docstring).

    Memory is bounded whatever the rate of readings: the window is cut into ``BLOCKS`` blocks of time,
    aligned on the clock (so they are the same whatever the micro-batches), and each block is summarised
    by the upper median of at most ``KEEP`` of its scores (every 2^k-th, k growing as the block fills: a
    block of 2,700 one-second readings keeps 43 of them). The recent level is the upper median of the
    window's block medians, where a block without a reading (before the entity's first, or a silence)
    counts at the calibration's level: a departure becomes the level only once it has filled half the
    window's *time*, however new the entity. The level is evaluated as each block begins, from the
    blocks before it, and holds through the block.
    """

    BLOCKS = 64  # blocks per window
    KEEP = 64  # scores kept per block at most

    def __init__(self, window: float, base: float, base_threshold: float):
        self.window = float(window)  # seconds of the entity's clock
        self.span = self.window / self.BLOCKS  # seconds per block
        self.base = base  # the calibration's level (> 0)
        self.base_threshold = base_threshold  # the threshold as calibrated, at the calibration level
        self.medians: dict[int, float] = {}  # block number -> median of its kept scores (completed blocks)
        self.block: int | None = None  # number of the block being filled (ts // span)
        self.kept = np.zeros(0)  # its kept scores: those at multiples of ``step`` among its ``count``
        self.count = 0
        self.step = 1
        self.scale = 1.0  # as last evaluated
        self.recent_median = base  # as last evaluated
        self.drifting = False
        self.back_since: float | None = None  # while drifting: the time since which the level is back under

    @classmethod
    def calibrated(cls, window: float, calibration: np.ndarray, threshold: float) -> "Level":
        x = np.asarray(calibration, np.float64)
        if not x.size:
            return cls(window, 1.0, float(threshold))
        centre, mean = float(np.median(x)), float(np.mean(np.abs(x)))
        if centre <= x.min():
            # an atom: half the calibration or more is its lowest value (knn's exact matches score 0).
            # Such a median says nothing of the scores' scale, and any rise of the recent median over
            # it would multiply the threshold by hundreds; the mean is the scale there.
            centre = mean
        # at least a thousandth of the mean (a sparse score) and of the threshold (a calibration of
        # all zeros, whose threshold was floored: scoring.thresholds.FLOOR)
        base = max(centre, 1e-3 * mean, 1e-3 * float(threshold), 1e-12)
        return cls(window, base, float(threshold))

    def level(self, block: int) -> float:
        """The upper median of the block medians of the window before ``block`` (missing ones at the base)."""
        values = np.full(self.BLOCKS, self.base)
        for i, b in enumerate(range(block - self.BLOCKS, block)):
            values[i] = self.medians.get(b, self.base)
        return float(np.partition(values, self.BLOCKS // 2)[self.BLOCKS // 2])

    def scales(self, ts: np.ndarray, scores: np.ndarray) -> LevelOut:
        """Per point (timestamps ``ts``, increasing): the threshold's scale, whether the entity drifts, and the
        recent level that decided both; then learns the points."""
        x = np.asarray(scores, np.float64)
        out = LevelOut(np.ones(len(x)), np.zeros(len(x), bool), np.zeros(len(x)))
        blocks = np.floor(np.asarray(ts, np.float64) / self.span).astype(np.int64)
        edges = np.r_[0, np.flatnonzero(np.diff(blocks)) + 1, len(x)]
        for lo, hi in zip(edges[:-1], edges[1:]):
            if blocks[lo] != self.block:
                self._begin(int(blocks[lo]), float(ts[lo]))
            out.scale[lo:hi], out.drift[lo:hi], out.median[lo:hi] = self.scale, self.drifting, self.recent_median
            self._keep(x[lo:hi])
        return out

    def _begin(self, block: int, t: float) -> None:
        """Close the block being filled, forget those out of the window, and evaluate for ``block``."""
        if self.block is not None and len(self.kept):
            mid = len(self.kept) // 2
            self.medians[self.block] = float(np.partition(self.kept, mid)[mid])
        self.medians = {b: m for b, m in self.medians.items() if b >= block - self.BLOCKS}
        self.block, self.kept, self.count, self.step = block, np.zeros(0), 0, 1
        m = self.level(block)
        self.recent_median, self.scale = m, max(1.0, m / self.base)
        if m > self.base_threshold:
            self.drifting, self.back_since = True, None
        elif self.drifting:
            self.back_since = t if self.back_since is None else self.back_since
            if t - self.back_since >= self.window:
                self.drifting, self.back_since = False, None

    def _keep(self, x: np.ndarray) -> None:
        """Add a run of the current block's scores: those at multiples of ``step`` are kept, and the step
        doubles (every other kept score dropped) while more than ``KEEP`` are. The kept set depends only
        on how many scores the block has had, not on how they arrived."""
        at = self.count + np.arange(len(x))
        self.kept = np.concatenate([self.kept, x[at % self.step == 0]])
        self.count += len(x)
        while len(self.kept) > self.KEEP:
            self.kept, self.step = self.kept[::2], self.step * 2

    def to_state(self) -> dict:
        return {"window": self.window, "base": self.base, "base_threshold": self.base_threshold,
                "medians": [[b, m] for b, m in sorted(self.medians.items())], "block": self.block,
                "kept": _pack(self.kept), "count": self.count, "step": self.step, "scale": self.scale,
                "recent_median": self.recent_median, "drifting": self.drifting, "back_since": self.back_since}

    @classmethod
    def from_state(cls, state: dict) -> "Level | None":
        """The level a checkpoint saved; None for one saved before the window was in time (its window
        counted points): the entity's level starts again from its calibration."""
        if "medians" not in state:
            return None
        obj = cls(state["window"], state["base"], state["base_threshold"])
        obj.medians = {int(b): float(m) for b, m in state["medians"]}
        obj.block = state["block"]
        obj.kept = _unpack(state["kept"])
        obj.count, obj.step = int(state["count"]), int(state["step"])
        obj.scale, obj.recent_median = float(state["scale"]), float(state["recent_median"])
        obj.drifting, obj.back_since = bool(state["drifting"]), state["back_since"]
        return obj


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


class SpotThreshold(Threshold):
    """SPOT (streaming peaks-over-threshold), the author's update rule with a bounded tail.

    ``q``: alarm probability targeted per point; ``level``: quantile of the calibration scores that
    sets the excess threshold ``t``; ``max_excess``: peaks kept (most recent first out is the
    oldest); ``refit_every``: redo the GPD fit only every k new peaks (1 = faithful; z_q is still
    recomputed with the new counts at every peak); ``min_peaks``: ``t`` is set low enough that at
    least this many calibration scores lie above it (never below their median), for a short
    calibration whose ``level`` quantile would leave the tail fit a handful of peaks (0 = faithful).
    """

    kind = "spot"

    def __init__(self, q: float = 1e-3, level: float = 0.98, max_excess: int = 1000,
                 refit_every: int = 1, min_peaks: int = 0):
        self.level = _prob("level", level)
        self.q = _prob("q", q, 0.0, 1.0 - self.level)
        self.max_excess = _count("max_excess", max_excess)
        self.refit_every = _count("refit_every", refit_every)
        self.min_peaks = _count("min_peaks", min_peaks, minimum=0)
        self._reset()

    def _reset(self) -> None:
        self._t: float | None = None   # excess (initial) threshold
        self._z: float | None = None   # alarm threshold z_q
        self._gamma = 0.0
        self._sigma = 0.0
        self._n = 0                    # non-alarm points seen (calibration included)
        self._nt = 0                   # excesses seen, including those dropped from the ring
        self._peaks: list[float] = []  # ring of the last max_excess excesses (physical order)
        self._head = 0                 # next ring slot to overwrite once full
        self._pending = 0              # peaks added since the last fit
        self._scale = 0.0              # calibration std: tail scale while there are no peaks

    @property
    def ready(self) -> bool:
        return self._z is not None

    @property
    def params(self) -> dict:
        return {"q": self.q, "level": self.level, "max_excess": self.max_excess,
                "refit_every": self.refit_every, "min_peaks": self.min_peaks}

    @property
    def threshold(self) -> float | None:
        return self._z

    def calibrate(self, scores: np.ndarray) -> None:
        """t = the ``level`` empirical quantile (sorted[int(level n)], as spot.py), or lower to leave
        ``min_peaks`` above it; fit the tail."""
        x = _calibration_scores(scores)
        self._reset()
        at = max(min(int(self.level * x.size), x.size - 1 - self.min_peaks), x.size // 2)
        self._t = float(np.sort(x)[at])
        self._n = int(x.size)
        self._scale = float(np.std(x))
        for excess in (x[x > self._t] - self._t).tolist():  # arrival order: the ring keeps the newest
            self._push(excess)
        self._fit()

    def _push(self, excess: float) -> None:
        self._nt += 1
        self._pending += 1
        if len(self._peaks) < self.max_excess:
            self._peaks.append(excess)
        else:
            self._peaks[self._head] = excess
            self._head = (self._head + 1) % self.max_excess

    def _fit(self) -> None:
        if len(self._peaks) < MIN_PEAKS:
            self._gamma = 0.0
            self._sigma = sum(self._peaks) / len(self._peaks) if self._peaks else self._scale
        else:
            self._gamma, self._sigma = fit_gpd(np.array(self._peaks))
        self._pending = 0
        self._update_z()

    def _update_z(self) -> None:
        fallback = sum(self._peaks) / len(self._peaks) if self._peaks else self._scale
        self._z = _tail_quantile(self._t, self._gamma, self._sigma, self.q, self._n, self._nt, fallback)

    def _observe(self, x: float) -> None:
        """Learn from a finite non-alarm value: count it, and if it is a peak, refit."""
        self._n += 1
        if x > self._t:
            self._push(x - self._t)
            if self._pending >= self.refit_every or len(self._peaks) <= MIN_PEAKS:
                self._fit()
            else:
                self._update_z()

    def _run(self, xs, thresholds, alarms) -> None:
        """The author's loop, visiting only the points that can change the state.

        z_q moves only at a peak (a finite non-alarm above t) and is never below t, so between two
        points above t nothing alarms and the threshold is constant: those stretches are counted with
        numpy, and Python loops
        over the points above t alone (about 1 - level of them), with the same result point by point.
        """
        x, t = xs, self._t
        finite = np.concatenate([[0], np.cumsum(np.isfinite(x))])  # finite points before each index
        start = 0
        for j in [*np.flatnonzero(x > t).tolist(), len(x)]:
            if j > start:  # at or below t (or NaN): no peak, no alarm (z_q >= t), z_q constant
                thresholds[start:j] = self._z
                self._n += int(finite[j] - finite[start])
            if j == len(x):
                break
            z = self._z
            thresholds[j] = z
            v = float(x[j])
            if v > z:
                alarms[j] = True  # not learnt from, n not incremented (discard anomalies)
            elif math.isfinite(v):
                self._observe(v)
            start = j + 1

    def to_state(self) -> dict:
        return {"kind": self.kind, "version": _STATE_VERSION, "params": self.params,
                "t": self._t, "z": self._z, "gamma": self._gamma, "sigma": self._sigma,
                "n": self._n, "nt": self._nt, "peaks": list(self._peaks), "head": self._head,
                "pending": self._pending, "scale": self._scale}

    @classmethod
    def from_state(cls, state: dict) -> "SpotThreshold":
        _check_kind(state, cls.kind)
        obj = cls(**state["params"])
        obj._load(state)
        return obj

    def _load(self, state: dict) -> None:
        self._t = None if state["t"] is None else float(state["t"])
        self._z = None if state["z"] is None else float(state["z"])
        self._gamma, self._sigma = float(state["gamma"]), float(state["sigma"])
        self._n, self._nt = int(state["n"]), int(state["nt"])
        self._peaks = [float(v) for v in state["peaks"]]
        self._head, self._pending = int(state["head"]), int(state["pending"])
        self._scale = float(state["scale"])
        if len(self._peaks) > self.max_excess:
            raise ValueError("state holds more peaks than max_excess")


