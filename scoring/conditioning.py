"""What happens to an entity's fused scores before its threshold judges them, and why.

``Smoother``: the mean of each point's score and its ``k - 1`` predecessors (channel scores alike).
Faults in plants and servers last from a few points to hours; noise does not. Averaging over a few
points shrinks the spread of normal scores (isolated spikes of a heavy-tailed score are the commonest
false alarm) while a sustained fault keeps its level, and the channel ranking of an incident steadies.
It costs up to ``k - 1`` points of delay on a step, and one-point spikes are diluted. As one raw spike
now makes up to ``k`` alarms, the incident rule asks for ``k - 1`` more alarms (in a window as much
longer), so that it still counts distinct evidence (``scoring.pipeline.EntityState``).

``Level``: how high an entity's scores run lately, against its calibration, over ``window`` seconds
of the entity's own clock (two days by default). When an entity's scores rise as a whole and stay up (a
new operating mode, a changed workload: the model no longer describes the entity), every point crosses
a threshold set for the old level and the operator drowns in alarms that say one thing. The threshold
is therefore scaled by ``max(1, recent level / calibration level)``, the recent level being the median
over the window and the calibration's the median of the calibration scores (their mean where half of
them or more share the lowest value, as knn's exact matches do). A departure moves that median only
once it has held for half the window, a day by default, whatever the rate of readings: a fault of
minutes or hours alarms all along (as one incident: ``scoring.incidents``); a departure that lasts a
day becomes the new level. When the recent level itself crosses the calibrated threshold
(the typical point would alarm), the entity is *drifting*: one ``drift`` record goes out, naming the
incident it absorbs, which asks the trainer for a retrain (docs/contract.md), and a ``drift_end`` when
it comes back. It comes back when the level has stayed at or under the threshold for a whole window, the
time it took to declare the drift: a level that hovers at the threshold would otherwise send a drift
record and a retrain request every few points.

A day of one-second readings is 86,400 scores: the level keeps a summary, not the scores (below).

Both are exact to replay: each output depends only on the values in its window, summed in the same
order whatever the micro-batch, and their state saves as JSON.
"""
from __future__ import annotations

import base64
from typing import NamedTuple

import numpy as np

from .segments import Segments, grow


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<f8").tobytes()).decode()


def _unpack(s: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), "<f8").copy()


class Smoothing:
    """The smoothing of every entity of one shape (``k``, ``channels``), one slot each: a slot keeps its
    last ``k - 1`` scores and channel scores (newest last; the first ``k - 1 - count`` unused, zero).

    Each point's score is the sum of the ``k`` scores ending at it, added oldest first (missing ones, at
    an entity's start, as zeros), over how many there are: the same sums in the same order whatever the
    micro-batches and whichever entities share them.
    """

    def __init__(self, k: int, channels: int, capacity: int = 0):
        self.k, self.channels = max(1, int(k)), channels
        self.count = np.zeros(capacity, np.int64)
        self.prev = np.zeros((capacity, self.k - 1))
        self.prev_channel = np.zeros((capacity, self.k - 1, channels))

    def ensure(self, capacity: int) -> None:
        self.count = grow(self.count, capacity)
        self.prev = grow(self.prev, capacity)
        self.prev_channel = grow(self.prev_channel, capacity)

    def reset(self, slot: int | np.ndarray) -> None:
        self.count[slot] = 0
        self.prev[slot] = 0.0
        self.prev_channel[slot] = 0.0

    def apply(self, seg: Segments, score: np.ndarray, channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Smoothed scores and channel scores of many entities' rows (``seg``), in row order."""
        if self.k == 1 or not len(score):
            return score, channel
        k1, n = self.k - 1, len(score)
        score = np.asarray(score, np.float64)
        channel = np.asarray(channel, np.float64)
        total = total_c = None
        for j in range(self.k):  # the score d = k - 1 - j rows back, oldest first: the same order for every point
            d = k1 - j
            col, col_c = np.empty(n), np.empty((n, self.channels))
            if d < n:
                col[d:], col_c[d:] = score[:n - d], channel[:n - d]
            early = np.flatnonzero(seg.pos < d)  # rows whose d-th predecessor is kept from before the batch
            if len(early):
                at = seg.pos[early] + j
                col[early] = self.prev[seg.row_slot[early], at]
                col_c[early] = self.prev_channel[seg.row_slot[early], at]
            if total is None:
                total, total_c = col, col_c
            else:
                total += col
                total_c += col_c
        count = np.minimum(self.k, self.count[seg.row_slot] + 1 + seg.pos)
        # the last k - 1 of (kept, new rows) of each entity
        at = seg.length[:, None] + np.arange(k1)[None, :]
        kept = at < k1
        row = np.clip(seg.start[:, None] + at - k1, 0, n - 1)
        slots = seg.slot[:, None]
        prev = np.where(kept, self.prev[slots, np.minimum(at, k1 - 1)], score[row])
        prev_c = np.where(kept[..., None], self.prev_channel[slots, np.minimum(at, k1 - 1)], channel[row])
        self.prev[seg.slot], self.prev_channel[seg.slot] = prev, prev_c
        self.count[seg.slot] = np.minimum(k1, self.count[seg.slot] + seg.length)
        return total / count, total_c / count[:, None]

    def to_state(self, slot: int) -> dict:
        m = int(self.count[slot])
        return {"k": self.k, "prev": _pack(self.prev[slot, self.k - 1 - m:]),
                "prev_channel": _pack(self.prev_channel[slot, self.k - 1 - m:])}

    def load_state(self, slot: int, state: dict) -> None:
        prev = _unpack(state["prev"])[-(self.k - 1):] if self.k > 1 else np.zeros(0)
        prev_c = _unpack(state["prev_channel"]).reshape(-1, self.channels)[-(self.k - 1):] if self.k > 1 \
            else np.zeros((0, self.channels))
        self.reset(slot)
        if len(prev):
            self.prev[slot, self.k - 1 - len(prev):] = prev
            self.prev_channel[slot, self.k - 1 - len(prev_c):] = prev_c
        self.count[slot] = len(prev)


class Smoother:
    """One entity's smoothing (``Smoothing`` with a single slot), for a series scored on its own; or
    (``columns``, ``slot``) the one an entity has in a fleet's smoothing."""

    def __init__(self, k: int, channels: int, columns: Smoothing | None = None, slot: int = 0):
        self.columns = Smoothing(k, channels, capacity=1) if columns is None else columns
        self.slot = slot
        self.k, self.channels = self.columns.k, self.columns.channels

    def apply(self, score: np.ndarray, channel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.columns.apply(Segments.one(len(score), self.slot), score, channel)

    def smooth(self, scores: np.ndarray) -> np.ndarray:
        """A whole series at once (calibration scores), from an empty state."""
        return Smoother(self.k, 1).apply(np.asarray(scores, np.float64), np.zeros((len(scores), 1)))[0]

    def to_state(self) -> dict:
        return self.columns.to_state(self.slot)

    def load_state(self, state: dict) -> "Smoother":
        self.columns.load_state(self.slot, state)
        return self


class LevelOut(NamedTuple):
    """What the level says of each point of a run (``Level.scales``)."""

    scale: np.ndarray  # the threshold's scale
    drift: np.ndarray  # whether the entity drifts (its level crossed the calibrated threshold)
    median: np.ndarray  # the recent level that decided both (what a drift record reports)


NONE = np.iinfo(np.int64).min  # no block yet


def _low32(block):
    """The low 32 bits of block numbers, as int32 (what ``Levels.median_block`` keeps)."""
    return np.asarray(block, np.int64).astype(np.int32)


def level_base(calibration: np.ndarray, threshold: float) -> float:
    """The calibration's level: its median, or its mean where half of it or more is its lowest value."""
    x = np.asarray(calibration, np.float64)
    if not x.size:
        return 1.0
    centre, mean = float(np.median(x)), float(np.mean(np.abs(x)))
    if centre <= x.min():
        # an atom: half the calibration or more is its lowest value (knn's exact matches score 0).
        # Such a median says nothing of the scores' scale, and any rise of the recent median over
        # it would multiply the threshold by hundreds; the mean is the scale there.
        centre = mean
    # at least a thousandth of the mean (a sparse score) and of the threshold (a calibration of
    # all zeros, whose threshold was floored: scoring.thresholds.FLOOR)
    return max(centre, 1e-3 * mean, 1e-3 * float(threshold), 1e-12)


class Levels:
    """The recent level of many entities' scores against their calibrations (see the module docstring),
    one slot each.

    Memory is bounded whatever the rate of readings: the window is cut into ``BLOCKS`` blocks of time,
    aligned on the clock (so they are the same whatever the micro-batches), and each block is summarised
    by the upper median of at most ``KEEP`` of its scores (every 2^k-th, k growing as the block fills: a
    block of 2,700 one-second readings keeps 43 of them). The recent level is the upper median of the
    window's block medians, where a block without a reading (before the entity's first, or a silence)
    counts at the calibration's level: a departure becomes the level only once it has filled half the
    window's *time*, however new the entity. The level is evaluated as each block begins, from the
    blocks before it, and holds through the block; rows inside the block an entity is filling take its
    values in one step for every entity (``scales``), and only an entity that begins a block, or whose
    kept scores fill up, is visited on its own.
    """

    BLOCKS = 64  # blocks per window
    KEEP = 64  # scores kept per block at most

    def __init__(self, capacity: int = 0):
        self.on = np.zeros(capacity, bool)  # the slot has a level (its threshold is calibrated)
        self.window = np.ones(capacity)  # seconds of the entity's clock
        self.base = np.ones(capacity)  # the calibration's level (> 0)
        self.base_threshold = np.ones(capacity)  # the threshold as calibrated, at the calibration level
        self.block = np.full(capacity, NONE, np.int64)  # number of the block being filled (ts // span)
        self.kept = np.zeros((capacity, self.KEEP))  # its kept scores: at multiples of ``step`` among ``count``
        self.kept_n = np.zeros(capacity, np.int64)
        self.count = np.zeros(capacity, np.int64)
        self.step = np.ones(capacity, np.int64)
        self.scale = np.ones(capacity)  # as last evaluated
        self.recent_median = np.ones(capacity)  # as last evaluated
        self.drifting = np.zeros(capacity, bool)
        self.back_since = np.full(capacity, np.nan)  # while drifting: the time since which it is back under
        # completed blocks' medians, a ring by block number: median of block b at [b % BLOCKS] if there
        # (NaN: none), with the low 32 bits of b (4 bytes, not 8, a slot of 64: a fleet's memory;
        # blocks a ring holds are never 2**32 apart, so the low bits tell them apart)
        self.medians = np.full((capacity, self.BLOCKS), np.nan)
        self.median_block = np.zeros((capacity, self.BLOCKS), np.int32)

    def ensure(self, capacity: int) -> None:
        for name, fill in (("on", False), ("window", 1.0), ("base", 1.0), ("base_threshold", 1.0), ("block", NONE),
                           ("kept", 0.0), ("kept_n", 0), ("count", 0), ("step", 1), ("scale", 1.0),
                           ("recent_median", 1.0), ("drifting", False), ("back_since", np.nan), ("medians", 0.0),
                           ("median_block", 0)):  # medians: ``reset`` marks a slot's empty (NaN) as it is allocated
            setattr(self, name, grow(getattr(self, name), capacity, fill))

    def reset(self, slot: int | np.ndarray, window: float = 1.0, base: float = 1.0, base_threshold: float = 1.0,
              on: bool = False) -> None:
        self.on[slot], self.window[slot], self.base[slot], self.base_threshold[slot] = on, window, base, base_threshold
        self.block[slot], self.kept_n[slot], self.count[slot], self.step[slot] = NONE, 0, 0, 1
        self.scale[slot], self.recent_median[slot] = 1.0, base
        self.drifting[slot], self.back_since[slot] = False, np.nan
        self.medians[slot] = np.nan

    def calibrate(self, slot: int, window: float, calibration: np.ndarray, threshold: float) -> None:
        """A fresh level for ``slot``: over ``window`` seconds, from its calibration and threshold."""
        self.reset(slot, float(window), level_base(calibration, threshold), float(threshold), on=True)

    def level(self, slot: int, block: int) -> float:
        """The upper median of the block medians of the window before ``block`` (missing ones at the base)."""
        blocks = np.arange(block - self.BLOCKS, block)
        ring = blocks % self.BLOCKS
        medians = self.medians[slot, ring]
        there = (self.median_block[slot, ring] == _low32(blocks)) & ~np.isnan(medians)
        values = np.where(there, medians, self.base[slot])
        return float(np.partition(values, self.BLOCKS // 2)[self.BLOCKS // 2])

    def scales(self, seg: Segments, ts: np.ndarray, scores: np.ndarray) -> LevelOut:
        """Per row of many entities (timestamps ``ts``, increasing per entity): the threshold's scale,
        whether the entity drifts, and the recent level that decided both; then learns the rows."""
        x = np.asarray(scores, np.float64)
        span = self.window[seg.row_slot] / self.BLOCKS
        blocks = np.floor(np.asarray(ts, np.float64) / span).astype(np.int64)
        slot = seg.row_slot
        if len(x):
            # entities whose rows all lie in one block after the one they fill (every entity's first
            # reading, and the hour-to-hour turn of a fleet): that block begins in one step for all of them
            first, last = blocks[seg.start], blocks[seg.end - 1]
            turn = np.flatnonzero((first != self.block[seg.slot]) & (first == last))
            if len(turn):
                self._begin_many(seg.slot[turn], first[turn], np.asarray(ts, np.float64)[seg.start[turn]])
        # the fast rows: every row of the segment in the block its entity is filling, and room for the
        # scores kept (every step-th of the block's), so no entity needs a visit of its own
        at = self.count[slot] + seg.pos
        keep = at % self.step[slot] == 0
        new_kept = np.add.reduceat(keep, seg.start) if len(x) else np.zeros(0, np.int64)
        inside = np.add.reduceat(blocks == self.block[slot], seg.start) == seg.length if len(x) else new_kept > 0
        fast = inside & (self.kept_n[seg.slot] + new_kept <= self.KEEP)
        out = LevelOut(self.scale[slot].copy(), self.drifting[slot].copy(), self.recent_median[slot].copy())
        rows = seg.rows_of(fast)
        if len(rows):
            kept_rows = rows[keep[rows]]
            slot_of = seg.row_slot[kept_rows]
            # each kept row's place: after its entity's kept scores, numbered within its segment
            before = np.repeat(np.cumsum(new_kept[fast]) - new_kept[fast], new_kept[fast])
            self.kept[slot_of, self.kept_n[slot_of] + np.arange(len(kept_rows)) - before] = x[kept_rows]
            self.kept_n[seg.slot[fast]] += new_kept[fast]
            self.count[seg.slot[fast]] += seg.length[fast]
        for s in np.flatnonzero(~fast).tolist():
            a, b = int(seg.start[s]), int(seg.end[s])
            self._scales_one(int(seg.slot[s]), ts[a:b], blocks[a:b], x[a:b], out, a)
        return out

    def _scales_one(self, slot: int, ts: np.ndarray, blocks: np.ndarray, x: np.ndarray, out: LevelOut,
                    offset: int) -> None:
        """One entity's rows, in runs of one block each: a run that begins a block evaluates the level."""
        edges = np.r_[0, np.flatnonzero(np.diff(blocks)) + 1, len(x)]
        for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
            if blocks[lo] != self.block[slot]:
                self._begin(slot, int(blocks[lo]), float(ts[lo]))
            out.scale[offset + lo:offset + hi] = self.scale[slot]
            out.drift[offset + lo:offset + hi] = self.drifting[slot]
            out.median[offset + lo:offset + hi] = self.recent_median[slot]
            self._keep(slot, x[lo:hi])

    def _begin(self, slot: int, block: int, t: float) -> None:
        """Close the block being filled, and evaluate for ``block``."""
        current = int(self.block[slot])
        if current != NONE and self.kept_n[slot]:
            kept = self.kept[slot, :self.kept_n[slot]]
            mid = len(kept) // 2
            self.medians[slot, current % self.BLOCKS] = float(np.partition(kept, mid)[mid])
            self.median_block[slot, current % self.BLOCKS] = _low32(current)
        self.block[slot], self.kept_n[slot], self.count[slot], self.step[slot] = block, 0, 0, 1
        m = self.level(slot, block)
        self.recent_median[slot], self.scale[slot] = m, max(1.0, m / self.base[slot])
        if m > self.base_threshold[slot]:
            self.drifting[slot], self.back_since[slot] = True, np.nan
        elif self.drifting[slot]:
            if np.isnan(self.back_since[slot]):
                self.back_since[slot] = t
            if t - self.back_since[slot] >= self.window[slot]:
                self.drifting[slot], self.back_since[slot] = False, np.nan

    def _begin_many(self, slots: np.ndarray, blocks: np.ndarray, t: np.ndarray) -> None:
        """``_begin`` of many slots (distinct) at once: the same medians, levels and drift states."""
        current = self.block[slots]
        n = self.kept_n[slots]
        close = np.flatnonzero((current != NONE) & (n > 0))
        if len(close):  # the block being filled closes: the upper median of its kept scores
            cs, cn = slots[close], n[close]
            kept = np.where(np.arange(self.KEEP) < cn[:, None], self.kept[cs], np.inf)
            ring = current[close] % self.BLOCKS
            self.medians[cs, ring] = np.sort(kept, axis=1)[np.arange(len(cs)), cn // 2]
            self.median_block[cs, ring] = _low32(current[close])
        self.block[slots], self.kept_n[slots], self.count[slots], self.step[slots] = blocks, 0, 0, 1
        window = blocks[:, None] - self.BLOCKS + np.arange(self.BLOCKS)  # the blocks before each
        ring = window % self.BLOCKS
        medians = self.medians[slots[:, None], ring]
        there = (self.median_block[slots[:, None], ring] == _low32(window)) & ~np.isnan(medians)
        values = np.where(there, medians, self.base[slots][:, None])
        m = np.partition(values, self.BLOCKS // 2, axis=1)[:, self.BLOCKS // 2]
        self.recent_median[slots], self.scale[slots] = m, np.maximum(1.0, m / self.base[slots])
        up = m > self.base_threshold[slots]
        drifting, back = self.drifting[slots], self.back_since[slots]
        under = ~up & drifting  # drifting, and its level back at or under the threshold
        back = np.where(up, np.nan, np.where(under & np.isnan(back), t, back))
        over = under & (t - back >= self.window[slots])  # back under for a whole window: no longer drifting
        self.drifting[slots] = (drifting | up) & ~over
        self.back_since[slots] = np.where(over, np.nan, back)

    def _keep(self, slot: int, x: np.ndarray) -> None:
        """Add a run of the current block's scores: those at multiples of ``step`` are kept, and the step
        doubles (every other kept score dropped) while more than ``KEEP`` are. The kept set depends only
        on how many scores the block has had, not on how they arrived."""
        at = int(self.count[slot]) + np.arange(len(x))
        kept = np.concatenate([self.kept[slot, :self.kept_n[slot]], x[at % self.step[slot] == 0]])
        self.count[slot] += len(x)
        while len(kept) > self.KEEP:
            kept, self.step[slot] = kept[::2], self.step[slot] * 2
        self.kept[slot, :len(kept)], self.kept_n[slot] = kept, len(kept)

    def to_state(self, slot: int) -> dict:
        ok = np.flatnonzero(~np.isnan(self.medians[slot]))
        block = int(self.block[slot])
        if len(ok):
            low = self.median_block[slot, ok].astype(np.int64)
            # the blocks a ring holds are before the one being filled: each is that less its distance in low bits
            blocks = block - (int(_low32(block)) - low) % 2**32 if block != NONE else low
            fresh = blocks >= block - self.BLOCKS if block != NONE else np.ones(len(blocks), bool)
            medians = sorted(zip(blocks[fresh].tolist(), self.medians[slot, ok][fresh].tolist()))
        else:  # a young entity: no block completed yet
            medians = []
        back = float(self.back_since[slot])
        return {"window": float(self.window[slot]), "base": float(self.base[slot]),
                "base_threshold": float(self.base_threshold[slot]), "medians": [[b, m] for b, m in medians],
                "block": None if block == NONE else block, "kept": _pack(self.kept[slot, :self.kept_n[slot]]),
                "count": int(self.count[slot]), "step": int(self.step[slot]), "scale": float(self.scale[slot]),
                "recent_median": float(self.recent_median[slot]), "drifting": bool(self.drifting[slot]),
                "back_since": None if np.isnan(back) else back}

    def load_state(self, slot: int, state: dict) -> bool:
        """``slot`` as a checkpoint saved it; False (and nothing loaded) for one saved before the window
        was in time (its window counted points): the entity's level starts again from its calibration."""
        if "medians" not in state:
            return False
        self.reset(slot, float(state["window"]), float(state["base"]), float(state["base_threshold"]), on=True)
        for b, m in state["medians"]:
            self.medians[slot, int(b) % self.BLOCKS], self.median_block[slot, int(b) % self.BLOCKS] = float(m), _low32(int(b))
        self.block[slot] = NONE if state["block"] is None else int(state["block"])
        kept = _unpack(state["kept"])
        self.kept[slot, :len(kept)], self.kept_n[slot] = kept, len(kept)
        self.count[slot], self.step[slot] = int(state["count"]), int(state["step"])
        self.scale[slot], self.recent_median[slot] = float(state["scale"]), float(state["recent_median"])
        self.drifting[slot] = bool(state["drifting"])
        self.back_since[slot] = np.nan if state["back_since"] is None else float(state["back_since"])
        return True


class Level:
    """One entity's level (``Levels`` with a single slot), for a series on its own and for the records
    that report it (``scoring.codec.drift_alert``)."""

    BLOCKS, KEEP = Levels.BLOCKS, Levels.KEEP

    def __init__(self, window: float, base: float, base_threshold: float, columns: Levels | None = None,
                 slot: int = 0):
        if columns is None:
            columns = Levels(capacity=1)
            columns.reset(0, float(window), base, base_threshold, on=True)
        self.columns, self.slot = columns, slot

    @classmethod
    def calibrated(cls, window: float, calibration: np.ndarray, threshold: float) -> "Level":
        return cls(window, level_base(calibration, threshold), float(threshold))

    def __getattr__(self, name: str):
        if name in ("window", "base", "base_threshold", "count", "step", "scale", "recent_median"):
            return getattr(self.columns, name)[self.slot].item()
        raise AttributeError(name)

    @property
    def span(self) -> float:
        return self.window / self.BLOCKS

    @property
    def drifting(self) -> bool:
        return bool(self.columns.drifting[self.slot])

    @property
    def block(self) -> int | None:
        b = int(self.columns.block[self.slot])
        return None if b == NONE else b

    @property
    def kept(self) -> np.ndarray:
        return self.columns.kept[self.slot, :self.columns.kept_n[self.slot]]

    @property
    def medians(self) -> dict[int, float]:
        return {b: m for b, m in self.columns.to_state(self.slot)["medians"]}

    def level(self, block: int) -> float:
        return self.columns.level(self.slot, block)

    def scales(self, ts: np.ndarray, scores: np.ndarray) -> LevelOut:
        """Per point (timestamps ``ts``, increasing): the threshold's scale, whether the entity drifts, and
        the recent level that decided both; then learns the points (``Levels.scales``)."""
        seg = Segments.one(len(scores), self.slot)
        return self.columns.scales(seg, np.asarray(ts, np.float64), np.asarray(scores, np.float64))

    def to_state(self) -> dict:
        return self.columns.to_state(self.slot)

    @classmethod
    def from_state(cls, state: dict) -> "Level | None":
        """The level a checkpoint saved; None for one saved before the window was in time (its window
        counted points): the entity's level starts again from its calibration."""
        obj = cls(1.0, 1.0, 1.0)
        return obj if obj.columns.load_state(0, state) else None
