"""What happens to an entity's fused scores before its threshold judges them, and why.

``Smoother``: the mean of each point's score and its ``k - 1`` predecessors (channel scores alike).
Faults in plants and servers last from a few points to hours; noise does not. Averaging over a few
points shrinks the spread of normal scores (isolated spikes of a heavy-tailed score are the commonest
false alarm) while a sustained fault keeps its level, and the channel ranking of an incident steadies.
It costs up to ``k - 1`` points of delay on a step, and one-point spikes are diluted. As one raw spike
now makes up to ``k`` alarms, the incident rule asks for ``k - 1`` more alarms (in a window as much
longer), so that it still counts distinct evidence (``scoring.pipeline.EntityState``).

``Level``: the median of the last ``window`` smoothed scores, against the median of the calibration
scores (their mean where half of them or more share the lowest value, as knn's exact matches do).
When an entity's scores rise as a whole (a new operating mode, a changed workload: the model no
longer describes the entity), every point crosses a threshold set for the old level and the
operator drowns in alarms that say one thing. The threshold is therefore scaled by
``max(1, recent median / calibration median)``: a departure shorter than half the window (a fault)
hardly moves the median and alarms as before; a departure longer than that becomes the new level.
When the recent median itself crosses the calibrated threshold (the typical point would alarm), the
entity is *drifting*: one ``drift`` event goes out (and a ``drift_end`` when it comes back), which asks
the trainer for a retrain (docs/contract.md). It comes back when the median has stayed at or under the
threshold for a whole window, the time it took to declare the drift: a median that hovers at the
threshold, or a score that switches between two levels, would otherwise send a drift record and a
retrain request every few points (SMAP E-2: 12 in one test period, E-5: 23).

Both are exact to replay: each output depends only on the values in its window, summed in the same
order whatever the micro-batch, and their state saves as JSON.
"""
from __future__ import annotations

import base64

import numpy as np


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

    The median is evaluated every ``window // 64`` points of the entity (counted from its first scored
    point, so at the same points whatever the micro-batches), over the ``window`` points before, and
    holds in between: in that many points at most 1/64 of the window is new, which cannot move the
    median far, and a median at every point cost as much as the rest of the pipeline.
    """

    MIN_POINTS = 100  # points before the recent median is trusted over the calibration's
    EVALUATIONS = 64  # per window

    def __init__(self, window: int, base: float, base_threshold: float):
        self.window = max(1, int(window))
        self.stride = max(1, self.window // self.EVALUATIONS)
        self.base = base  # median of the calibration scores (> 0)
        self.base_threshold = base_threshold  # the threshold as calibrated, at the calibration level
        self.recent = np.zeros(0)  # the last ``window`` scores, oldest first
        self.seen = 0  # points learnt so far
        self.scale = 1.0  # as last evaluated
        self.recent_median = base  # as last evaluated (the calibration's until trusted)
        self.drifting = False
        self.back_since: int | None = None  # while drifting: the point since which the median is back under

    @classmethod
    def calibrated(cls, window: int, calibration: np.ndarray, threshold: float) -> "Level":
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

    def median(self, values: np.ndarray | None = None) -> float | None:
        """The upper median of ``values`` (default: the recent window); None while too few."""
        v = self.recent if values is None else values
        if len(v) < min(self.MIN_POINTS, self.window):
            return None
        mid = len(v) // 2
        return float(np.partition(v, mid)[mid])

    def scales(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per point, the threshold's scale (from the points before it), whether the entity drifts, and
        the recent median that decided both (what a drift record reports); then learns the points."""
        x = np.asarray(scores, np.float64)
        out, drift, medians = np.ones(len(x)), np.zeros(len(x), bool), np.zeros(len(x))
        known = len(self.recent)
        history = np.concatenate([self.recent, x])  # point i of x is history[known + i]
        i = 0
        while i < len(x):
            if (self.seen + i) % self.stride == 0:
                end = known + i
                m = self.median(history[max(0, end - self.window):end])
                if m is not None:
                    self.recent_median, self.scale = m, max(1.0, m / self.base)
                    if m > self.base_threshold:
                        self.drifting, self.back_since = True, None
                    elif self.drifting:
                        self.back_since = self.seen + i if self.back_since is None else self.back_since
                        if self.seen + i - self.back_since >= self.window:
                            self.drifting, self.back_since = False, None
            j = min(len(x), i + self.stride - (self.seen + i) % self.stride)
            out[i:j], drift[i:j], medians[i:j] = self.scale, self.drifting, self.recent_median
            i = j
        self.seen += len(x)
        self.recent = history[-self.window:]
        return out, drift, medians

    def to_state(self) -> dict:
        return {"window": self.window, "base": self.base, "base_threshold": self.base_threshold,
                "recent": _pack(self.recent), "drifting": self.drifting, "seen": self.seen, "scale": self.scale,
                "recent_median": self.recent_median, "back_since": self.back_since}

    @classmethod
    def from_state(cls, state: dict) -> "Level":
        obj = cls(state["window"], state["base"], state["base_threshold"])
        obj.recent = _unpack(state["recent"])
        obj.drifting = bool(state["drifting"])
        obj.seen = int(state.get("seen", 0))  # checkpoints before strides: evaluate at the next point
        obj.scale = float(state.get("scale", 1.0))
        obj.recent_median = float(state.get("recent_median", obj.scale * obj.base))  # older checkpoints: from the scale
        obj.back_since = state.get("back_since")
        return obj
