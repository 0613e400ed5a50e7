"""Per-entity online thresholds on a stream of anomaly scores (higher = more anomalous).

Three kinds behind one small interface (``calibrate``, ``step``, ``to_state``):

- ``spot``: SPOT, Siffer et al. KDD 2017. A generalised Pareto tail is fitted by maximum likelihood
  (Grimshaw's trick) to the excesses over a high empirical quantile ``t``; the alarm threshold is the
  ``1 - q`` quantile it implies. The tail is a bounded ring of the most recent ``max_excess`` peaks,
  as in the author's libspot v2, so a refit costs O(max_excess) however long the stream runs.
- ``dspot``: SPOT on ``x - M``, with ``M`` the mean of the last ``depth`` non-alarm scores, so a
  slow drift of the score level is followed instead of alarmed on.
- ``percentile``: the ``q`` quantile of the last ``window`` non-alarm scores (river's exact
  ``RollingQuantile``, linear interpolation, same as ``numpy.quantile``).

Every kind judges a score against the threshold in force *before* it, then learns from it only if
it was not an alarm. ``step`` is strictly sequential and deterministic, and the state round-trips
through JSON (plain floats, ints, lists, str) so that a restored object continues bit-for-bit.

Non-finite scores in ``step``: ``+inf`` is an alarm; ``NaN`` and ``-inf`` are never alarms and are
not learnt from (a NaN would otherwise poison the tail, window or moving mean).
"""

from __future__ import annotations

import inspect
import math
from collections import deque

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from river.stats import RollingQuantile

from .segments import Segments, gather, grow

__all__ = ["FLOOR", "floor_for", "Threshold", "SpotThreshold", "DSpotThreshold", "PercentileThreshold",
           "make_threshold", "threshold_from_state", "fit_gpd", "KINDS", "DEFAULTS", "parameters", "trim_far_out"]

_STATE_VERSION = 1

# The threshold served after a degenerate calibration. Detectors normalise scores so that a typical
# training point scores about 1 (``detectors.base``). When every calibration score is ~0 (what the
# model judges never moved while it was calibrated: a telemetry value held constant), the calibrated
# threshold is ~0 and any later wiggle, however small, would be an alarm: the threshold is then served
# at least this, "as far off as a typical training point". Other calibrations are served as calibrated.
FLOOR = 1.0


def floor_for(calibration: np.ndarray) -> float:
    """``FLOOR`` if the calibration scores are degenerate (all below a millionth of it), else 0."""
    x = np.asarray(calibration, dtype=np.float64)
    return FLOOR if x.size and float(np.max(np.abs(x))) < FLOOR * 1e-6 else 0.0

# ---------------------------------------------------------------------------------------------
# GPD fit (Grimshaw's trick)
# ---------------------------------------------------------------------------------------------

MIN_PEAKS = 5
"""Below this many peaks the GPD fit is noise: use an exponential tail with sigma = mean peak."""

# Search grids for the roots of w(x) on peaks scaled to mean 1 (scale-free, see fit_gpd).
# Left interval (-1/ymax, 0): x = -s / ymax, dense near both ends (gamma near 0, gamma << 0).
_LEFT_S = np.concatenate([np.geomspace(1e-4, 0.5, 8), 1.0 - np.geomspace(0.5, 1e-8, 11)[1:]])
# Right interval (0, 2(1 - ymin)/ymin^2): log-spaced from 1e-4 (below that gamma ~ 0: exponential).
# As libspot v2, not spot.py, whose lower end 2(1 - ymin)/ymin excludes the usual positive roots.
_RIGHT_U = np.linspace(0.0, 1.0, 12)
_X_MIN = 1e-4
_X_MAX = 1e12
_NEWTON_ITERS = 60
_NEWTON_RTOL = 1e-10


def _w(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Grimshaw's w(x) = u(x) v(x) - 1 for each x of a 1-D grid, on peaks y.

    Written as w = B - A - A*B with A = 1 - u = mean(xy/(1+xy)) and B = v - 1 = mean(log(1+xy)),
    which avoids the 1 - 1 cancellation of u*v - 1 for small |x|.
    """
    xy = np.multiply.outer(x, y)
    d = 1.0 + xy
    a = np.add.reduce(xy / d, axis=1) / y.size
    b = np.add.reduce(np.log(d), axis=1) / y.size
    return b - a - a * b


def _refine_root(y: np.ndarray, lo: float, hi: float, w_lo: float, w_hi: float) -> float:
    """The root of w in a sign-changing bracket [lo, hi] (either order).

    Newton steps (dw/dx is cheap once w is computed), falling back to the Illinois-weighted secant
    point of the bracket whenever a step would leave it: converges in a few steps, cannot diverge.
    """
    k = 1.0 / y.size
    x = lo - w_lo * (hi - lo) / (w_hi - w_lo)
    for _ in range(_NEWTON_ITERS):
        d = 1.0 + x * y
        y_inv = y / d
        db = float(np.add.reduce(y_inv)) * k              # B' = mean(y/(1+xy)), and A = x B'
        a = x * db
        b = float(np.add.reduce(np.log(d))) * k
        da = db - x * float(np.add.reduce(y_inv * y_inv)) * k
        w = b - a - a * b
        dw = db - da - da * b - a * db
        if w == 0.0:
            return x
        if (w < 0.0) == (w_lo < 0.0):
            lo, w_lo, w_hi = x, w, w_hi * 0.5   # Illinois: the kept end loses weight
        else:
            hi, w_hi = x, w
        x_new = x - w / dw if dw != 0.0 else math.nan
        if not (x_new - lo) * (x_new - hi) < 0.0:
            x_new = lo - w_lo * (hi - lo) / (w_hi - w_lo)
            if not (x_new - lo) * (x_new - hi) < 0.0:
                x_new = 0.5 * (lo + hi)
        if abs(x_new - x) <= _NEWTON_RTOL * abs(x):
            return x_new
        x = x_new
    return x


def fit_gpd(peaks: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood GPD (gamma, sigma) of positive excesses, by Grimshaw's trick.

    The candidates are every root of w found on both of Grimshaw's intervals, the exponential case
    (gamma = 0, sigma = mean) and the method-of-moments estimate (as libspot v2 does); the one with
    the highest log-likelihood wins. Roots are located by the sign changes of w on a fixed grid
    (vectorised), then refined by safeguarded Newton. The peaks are scaled to mean 1 first, which
    makes the search scale-free (raw scores of 300-1000 are a known trap for ports of spot.py).
    Degenerate input (fewer than MIN_PEAKS peaks, all peaks equal) gives the exponential fit.
    """
    y = np.asarray(peaks, dtype=np.float64)
    if y.size == 0:
        raise ValueError("fit_gpd needs at least one peak")
    mean = float(np.mean(y))
    if not (mean > 0.0 and math.isfinite(mean)):
        raise ValueError("peaks must be positive and finite")
    y = y / mean
    y_min, y_max = float(y.min()), float(y.max())
    if y.size < MIN_PEAKS or y_max - y_min <= 1e-9 * y_max:
        return 0.0, mean

    # Candidate roots: sign changes of w on a grid over each of Grimshaw's intervals.
    right_max = min(2.0 * (1.0 - y_min) / max(y_min, 1e-300) ** 2, _X_MAX)
    grids = [-_LEFT_S / y_max]
    if right_max > _X_MIN:
        grids.append(_X_MIN * (right_max / _X_MIN) ** _RIGHT_U)
    # Exponential case, profile log-likelihood per peak: -log(sigma) - 1 with sigma = 1.
    best_ll, best_gamma, best_sigma = -1.0, 0.0, 1.0
    for grid in grids:
        w = _w(grid, y)
        for i in np.flatnonzero(np.signbit(w[:-1]) != np.signbit(w[1:])).tolist():
            x = _refine_root(y, float(grid[i]), float(grid[i + 1]), float(w[i]), float(w[i + 1]))
            g = float(np.add.reduce(np.log1p(x * y))) / y.size
            s = g / x
            if s > 0.0 and g != 0.0:
                # sum(log1p(x y)) = N gamma, so loglik/N = -log(sigma) - (1 + 1/gamma) gamma.
                ll = -math.log(s) - 1.0 - g
                if ll > best_ll:
                    best_ll, best_gamma, best_sigma = ll, g, s

    # Method of moments: gamma = (1 - m^2/v)/2, sigma = m (1 + m^2/v)/2 with m = 1 here.
    var = float(np.var(y))
    if var > 0.0:
        r = 1.0 / var
        g, s = 0.5 * (1.0 - r), 0.5 * (1.0 + r)
        if g != 0.0 and (g > 0.0 or y_max < -s / g):
            ll = -math.log(s) - (1.0 + 1.0 / g) * float(np.mean(np.log1p((g / s) * y)))
            if math.isfinite(ll) and ll > best_ll:
                best_ll, best_gamma, best_sigma = ll, g, s
    return best_gamma, best_sigma * mean


def _tail_quantile(t: float, gamma: float, sigma: float, q: float, n: int, nt: int,
                   fallback_sigma: float) -> float:
    """z_q = t + (sigma/gamma)((q n/Nt)^-gamma - 1), or t - sigma log(q n/Nt) for gamma = 0.

    Never below t (the model says nothing below t; a z_q under t would alarm on ordinary values)
    and never non-finite: an overflowing GPD quantile falls back to the exponential one.
    """
    log_r = math.log(q * n / max(nt, 1))
    d = math.nan
    if gamma != 0.0 and abs(gamma * log_r) < 700.0:
        d = sigma * math.expm1(-gamma * log_r) / gamma  # expm1: exact as gamma -> 0
    elif gamma == 0.0:
        d = -sigma * log_r
    if not math.isfinite(d):
        d = -fallback_sigma * log_r
    z = t + max(d, 0.0)
    return z if math.isfinite(z) else t


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def _prob(name: str, value, low: float = 0.0, high: float = 1.0) -> float:
    """A float strictly inside (low, high)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not low < value < high:
        raise ValueError(f"{name} must be in ({low:g}, {high:g}), got {value!r}")
    return value


def _count(name: str, value, minimum: int = 1) -> int:
    """A whole number >= minimum; integral floats are accepted (CLI params arrive as floats)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _calibration_scores(scores, minimum: int = 1) -> np.ndarray:
    x = np.atleast_1d(np.asarray(scores, dtype=np.float64))
    if x.ndim != 1:
        raise ValueError(f"calibration scores must be 1-D, got shape {x.shape}")
    if x.size < minimum:
        raise ValueError(f"need at least {minimum} calibration score(s), got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError("calibration scores must be finite")
    return x


def _check_kind(state: dict, kind: str) -> None:
    if state.get("kind") != kind:
        raise ValueError(f"state is for kind {state.get('kind')!r}, not {kind!r}")
    if state.get("version") != _STATE_VERSION:
        raise ValueError(f"unsupported threshold state version {state.get('version')!r}")


# ---------------------------------------------------------------------------------------------
# Interface
# ---------------------------------------------------------------------------------------------

class Threshold:
    """An online threshold on one entity's score stream."""

    kind: str = ""

    @property
    def ready(self) -> bool:
        """True once calibrated."""
        raise NotImplementedError

    @property
    def params(self) -> dict:
        """Constructor parameters, enough to rebuild an uncalibrated twin."""
        raise NotImplementedError

    @property
    def threshold(self) -> float | None:
        """The threshold the next score will be judged against (None until calibrated)."""
        raise NotImplementedError

    def calibrate(self, scores: np.ndarray) -> None:
        """Initial fit on 1-D calibration scores (training scores or an entity's first points).

        Resets any previous state.
        """
        raise NotImplementedError

    def step(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Judge scores in order, learning from each non-alarm as it is seen.

        Returns (thresholds float64 [n], the threshold in force when each score was judged;
        alarms bool [n], score > threshold). Raises RuntimeError if not calibrated.
        """
        x = np.atleast_1d(np.asarray(scores, dtype=np.float64))
        if x.ndim != 1:
            raise ValueError(f"scores must be 1-D, got shape {x.shape}")
        if not self.ready:
            raise RuntimeError(f"{self.kind} threshold is not calibrated; call calibrate() first")
        thresholds = np.empty(x.size, dtype=np.float64)
        alarms = np.zeros(x.size, dtype=bool)
        self._run(x, thresholds, alarms)
        return thresholds, alarms

    def _run(self, xs: np.ndarray, thresholds: np.ndarray, alarms: np.ndarray) -> None:
        raise NotImplementedError

    def to_state(self) -> dict:
        """JSON-serialisable state: kind, version, params and everything step() depends on."""
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict) -> "Threshold":
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args}, ready={self.ready})"


# ---------------------------------------------------------------------------------------------
# SPOT
# ---------------------------------------------------------------------------------------------

class SpotColumns:
    """SPOT for many entities, one slot each (``SpotThreshold`` is one slot of it; see there for the rule).

    A score at or below its entity's excess threshold ``t`` changes nothing but the count of points seen
    (z_q only moves at a peak, and is never below t), so ``step`` takes such rows of every entity in one
    array operation and visits, one by one, only the entities with a row above t (about 1 - level of
    the points): the same thresholds and alarms, point by point, as each entity stepped alone.
    """

    PARAMS = ("q", "level", "max_excess", "refit_every", "min_peaks")

    def __init__(self, capacity: int = 0):
        self.q, self.level = np.zeros(capacity), np.zeros(capacity)
        self.max_excess, self.refit_every, self.min_peaks = (np.zeros(capacity, np.int64) for _ in range(3))
        self.t = np.full(capacity, np.nan)  # excess (initial) threshold; NaN: not calibrated
        self.z = np.full(capacity, np.nan)  # alarm threshold z_q
        self.gamma, self.sigma = np.zeros(capacity), np.zeros(capacity)
        self.n = np.zeros(capacity, np.int64)  # non-alarm points seen (calibration included)
        self.nt = np.zeros(capacity, np.int64)  # excesses seen, including those dropped from the ring
        self.head = np.zeros(capacity, np.int64)  # next ring slot to overwrite once full
        self.pending = np.zeros(capacity, np.int64)  # peaks added since the last fit
        self.scale = np.zeros(capacity)  # calibration std: tail scale while there are no peaks
        self.peaks: list[np.ndarray] = [_NO_PEAKS] * capacity  # ring of the last max_excess excesses

    SLOT_FIELDS = ("q", "level", "max_excess", "refit_every", "min_peaks", "t", "z", "gamma", "sigma", "n", "nt",
                   "head", "pending", "scale")

    def ensure(self, capacity: int) -> None:
        for name in ("q", "level", "max_excess", "refit_every", "min_peaks", "gamma", "sigma", "n", "nt", "head",
                     "pending", "scale"):
            setattr(self, name, grow(getattr(self, name), capacity))
        self.t, self.z = grow(self.t, capacity, np.nan), grow(self.z, capacity, np.nan)
        self.peaks += [_NO_PEAKS] * (capacity - len(self.peaks))

    def take(self, slot: int) -> tuple:
        """``slot``'s whole state, for ``put_many`` into other slots (or another SpotColumns)."""
        return tuple(getattr(self, name)[slot] for name in self.SLOT_FIELDS) + (self.peaks[slot].copy(),)

    def gather(self, slots: np.ndarray) -> SpotColumns:
        """``segments.gather``, the peak rings copied too (a full ring is updated in place)."""
        out = gather(self, slots)
        out.peaks = [self.peaks[s].copy() for s in slots.tolist()]
        return out

    def put_many(self, slots: np.ndarray, states: list[tuple]) -> None:
        """Each of ``slots`` becomes what ``take`` took (its own of ``states``), which they then update
        apart. The peaks are shared until the ring is full: before that a new peak makes a new array
        (``_push``), so thousands of entities started from one calibration hold one array until each
        has a peak of its own."""
        for i, name in enumerate(self.SLOT_FIELDS):
            getattr(self, name)[slots] = [state[i] for state in states]
        for s, state in zip(slots.tolist(), states):
            peaks = state[-1]
            self.peaks[s] = peaks if len(peaks) < self.max_excess[s] else peaks.copy()

    def reset(self, slot: int | np.ndarray, q: float = 1e-3, level: float = 0.98, max_excess: int = 1000,
              refit_every: int = 1, min_peaks: int = 0) -> None:
        """An uncalibrated SPOT with these parameters in ``slot`` (or each of an array of slots)."""
        self.q[slot], self.level[slot] = _prob("q", q, 0.0, 1.0 - _prob("level", level)), level
        self.max_excess[slot] = _count("max_excess", max_excess)
        self.refit_every[slot] = _count("refit_every", refit_every)
        self.min_peaks[slot] = _count("min_peaks", min_peaks, minimum=0)
        self.t[slot] = self.z[slot] = np.nan
        self.gamma[slot] = self.sigma[slot] = self.scale[slot] = 0.0
        self.n[slot] = self.nt[slot] = self.head[slot] = self.pending[slot] = 0
        for s in np.atleast_1d(slot).tolist():
            self.peaks[s] = _NO_PEAKS

    def params(self, slot: int) -> dict:
        return {"q": float(self.q[slot]), "level": float(self.level[slot]), "max_excess": int(self.max_excess[slot]),
                "refit_every": int(self.refit_every[slot]), "min_peaks": int(self.min_peaks[slot])}

    def ready(self, slot: int) -> bool:
        return not np.isnan(self.z[slot])

    def calibrate(self, slot: int, scores: np.ndarray) -> None:
        """t = the ``level`` empirical quantile (sorted[int(level n)], as spot.py), or lower to leave
        ``min_peaks`` above it; fit the tail."""
        x = _calibration_scores(scores)
        self.reset(slot, **self.params(slot))
        at = max(min(int(self.level[slot] * x.size), x.size - 1 - int(self.min_peaks[slot])), x.size // 2)
        self.t[slot] = float(np.sort(x)[at])
        self.n[slot] = int(x.size)
        self.scale[slot] = float(np.std(x))
        excesses = x[x > self.t[slot]] - self.t[slot]  # in arrival order: the ring keeps the newest
        if len(excesses) <= self.max_excess[slot]:  # as pushed one by one, in one step
            self.peaks[slot] = excesses.astype(np.float64)
            self.nt[slot] += len(excesses)
            self.pending[slot] += len(excesses)
        else:
            for excess in excesses.tolist():
                self._push(slot, excess)
        self._fit(slot)

    def _push(self, slot: int, excess: float) -> None:
        self.nt[slot] += 1
        self.pending[slot] += 1
        peaks = self.peaks[slot]
        if len(peaks) < self.max_excess[slot]:
            self.peaks[slot] = np.append(peaks, excess)
        else:
            peaks[self.head[slot]] = excess
            self.head[slot] = (self.head[slot] + 1) % self.max_excess[slot]

    def _fit(self, slot: int) -> None:
        peaks = self.peaks[slot]
        if len(peaks) < MIN_PEAKS:
            self.gamma[slot] = 0.0
            self.sigma[slot] = sum(peaks.tolist()) / len(peaks) if len(peaks) else self.scale[slot]
        else:
            self.gamma[slot], self.sigma[slot] = fit_gpd(peaks)
        self.pending[slot] = 0
        self._update_z(slot)

    def _update_z(self, slot: int) -> None:
        peaks = self.peaks[slot]
        fallback = sum(peaks.tolist()) / len(peaks) if len(peaks) else float(self.scale[slot])
        self.z[slot] = _tail_quantile(float(self.t[slot]), float(self.gamma[slot]), float(self.sigma[slot]),
                                      float(self.q[slot]), int(self.n[slot]), int(self.nt[slot]), fallback)

    def observe(self, slot: int, x: float) -> None:
        """Learn from a finite non-alarm value: count it, and if it is a peak, refit."""
        self.n[slot] += 1
        if x > self.t[slot]:
            self._push(slot, x - float(self.t[slot]))
            if self.pending[slot] >= self.refit_every[slot] or len(self.peaks[slot]) <= MIN_PEAKS:
                self._fit(slot)
            else:
                self._update_z(slot)

    def step(self, seg: Segments, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Judge many entities' scores (``seg``) in order, each against its threshold in force before it,
        learning from each non-alarm: (thresholds float64 [R], alarms bool [R]). Every slot must be
        calibrated."""
        x = np.asarray(x, np.float64)
        thresholds, alarms = self.z[seg.row_slot], np.zeros(len(x), bool)
        if not len(x):
            return thresholds, alarms
        busy = np.add.reduceat(x > self.t[seg.row_slot], seg.start) > 0
        quiet = ~busy
        # at or below t (or NaN): no peak, no alarm (z_q >= t), z_q constant; the finite ones are counted
        self.n[seg.slot[quiet]] += np.add.reduceat(np.isfinite(x), seg.start)[quiet]
        for s in np.flatnonzero(busy).tolist():
            a, b = int(seg.start[s]), int(seg.end[s])
            self._run(int(seg.slot[s]), x[a:b], thresholds[a:b], alarms[a:b])
        return thresholds, alarms

    def _run(self, slot: int, x: np.ndarray, thresholds: np.ndarray, alarms: np.ndarray) -> None:
        """The author's loop for one entity, visiting only the points that can change the state."""
        t = self.t[slot]
        finite = np.concatenate([[0], np.cumsum(np.isfinite(x))])  # finite points before each index
        start = 0
        for j in [*np.flatnonzero(x > t).tolist(), len(x)]:
            if j > start:  # at or below t (or NaN): no peak, no alarm (z_q >= t), z_q constant
                thresholds[start:j] = self.z[slot]
                self.n[slot] += int(finite[j] - finite[start])
            if j == len(x):
                break
            z = float(self.z[slot])
            thresholds[j] = z
            v = float(x[j])
            if v > z:
                alarms[j] = True  # not learnt from, n not incremented (discard anomalies)
            elif math.isfinite(v):
                self.observe(slot, v)
            start = j + 1

    def to_state(self, slot: int) -> dict:
        t, z = float(self.t[slot]), float(self.z[slot])
        return {"kind": SpotThreshold.kind, "version": _STATE_VERSION, "params": self.params(slot),
                "t": None if np.isnan(t) else t, "z": None if np.isnan(z) else z,
                "gamma": float(self.gamma[slot]), "sigma": float(self.sigma[slot]), "n": int(self.n[slot]),
                "nt": int(self.nt[slot]), "peaks": self.peaks[slot].tolist(), "head": int(self.head[slot]),
                "pending": int(self.pending[slot]), "scale": float(self.scale[slot])}

    def load_state(self, slot: int, state: dict) -> None:
        _check_kind(state, SpotThreshold.kind)
        self.reset(slot, **state["params"])
        self.t[slot] = np.nan if state["t"] is None else float(state["t"])
        self.z[slot] = np.nan if state["z"] is None else float(state["z"])
        self.gamma[slot], self.sigma[slot] = float(state["gamma"]), float(state["sigma"])
        self.n[slot], self.nt[slot] = int(state["n"]), int(state["nt"])
        peaks = np.array([float(v) for v in state["peaks"]], np.float64)
        self.head[slot], self.pending[slot] = int(state["head"]), int(state["pending"])
        self.scale[slot] = float(state["scale"])
        if len(peaks) > self.max_excess[slot]:
            raise ValueError("state holds more peaks than max_excess")
        self.peaks[slot] = peaks


_NO_PEAKS = np.zeros(0)


class SpotThreshold(Threshold):
    """SPOT (streaming peaks-over-threshold), the author's update rule with a bounded tail.

    ``q``: alarm probability targeted per point; ``level``: quantile of the calibration scores that
    sets the excess threshold ``t``; ``max_excess``: peaks kept (most recent first out is the
    oldest); ``refit_every``: redo the GPD fit only every k new peaks (1 = faithful; z_q is still
    recomputed with the new counts at every peak); ``min_peaks``: ``t`` is set low enough that at
    least this many calibration scores lie above it (never below their median), for a short
    calibration whose ``level`` quantile would leave the tail fit a handful of peaks (0 = faithful).
    One slot of ``SpotColumns``, which the stream keeps for all its entities.
    """

    kind = "spot"

    def __init__(self, q: float = 1e-3, level: float = 0.98, max_excess: int = 1000,
                 refit_every: int = 1, min_peaks: int = 0):
        self.columns, self.slot = SpotColumns(capacity=1), 0
        self.columns.reset(0, q, level, max_excess, refit_every, min_peaks)

    @classmethod
    def of(cls, columns: SpotColumns, slot: int) -> "SpotThreshold":
        """The SPOT an entity has in a fleet's ``SpotColumns``."""
        obj = cls.__new__(cls)
        obj.columns, obj.slot = columns, slot
        return obj

    def __getattr__(self, name: str):
        if name in SpotColumns.PARAMS:
            return self.columns.params(self.slot)[name]
        raise AttributeError(name)

    @property
    def ready(self) -> bool:
        return self.columns.ready(self.slot)

    @property
    def params(self) -> dict:
        return self.columns.params(self.slot)

    @property
    def threshold(self) -> float | None:
        return float(self.columns.z[self.slot]) if self.ready else None

    @property
    def _z(self) -> float:
        return float(self.columns.z[self.slot])

    def calibrate(self, scores: np.ndarray) -> None:
        self.columns.calibrate(self.slot, scores)

    def _observe(self, x: float) -> None:
        self.columns.observe(self.slot, x)

    def _run(self, xs, thresholds, alarms) -> None:
        self.columns._run(self.slot, xs, thresholds, alarms)

    def to_state(self) -> dict:
        return self.columns.to_state(self.slot)

    @classmethod
    def from_state(cls, state: dict) -> "SpotThreshold":
        _check_kind(state, cls.kind)
        obj = cls(**state["params"])
        obj._load(state)
        return obj

    def _load(self, state: dict) -> None:
        self.columns.load_state(self.slot, state)


# ---------------------------------------------------------------------------------------------
# DSPOT
# ---------------------------------------------------------------------------------------------

def _back_mean_residuals(x: np.ndarray, depth: int) -> np.ndarray:
    """Each score minus the mean of the ``depth`` scores before it (spot.py's backMean).

    With ``depth`` or fewer scores, the mean of all the scores before it instead, so that short
    calibration sets still give residuals.
    """
    if x.size > depth:
        return x[depth:] - sliding_window_view(x, depth)[:-1].mean(axis=1)
    return x[1:] - np.cumsum(x)[:-1] / np.arange(1, x.size)


class DSpotThreshold(Threshold):
    """Drift-aware SPOT: SPOT on x - M, M = mean of the last ``depth`` non-alarm scores.

    The reported threshold is z_q + M. The window is seeded with the last ``depth`` calibration
    scores and advances only on non-alarm points, as in spot.py's dSPOT.
    """

    kind = "dspot"

    def __init__(self, q: float = 1e-3, level: float = 0.98, max_excess: int = 1000,
                 refit_every: int = 1, depth: int = 100, min_peaks: int = 0):
        self._spot = SpotThreshold(q=q, level=level, max_excess=max_excess, refit_every=refit_every,
                                   min_peaks=min_peaks)
        self.depth = _count("depth", depth)
        self._window: deque[float] = deque(maxlen=self.depth)

    @property
    def ready(self) -> bool:
        return self._spot.ready

    @property
    def params(self) -> dict:
        return {**self._spot.params, "depth": self.depth}

    def _mean(self) -> float:
        # fsum: exactly rounded, so the mean does not depend on summation order or history.
        return math.fsum(self._window) / len(self._window)

    @property
    def threshold(self) -> float | None:
        return self._spot.threshold + self._mean() if self.ready else None

    def calibrate(self, scores: np.ndarray) -> None:
        """Calibrate SPOT on the residuals to the moving mean; seed the window. Needs >= 2 scores."""
        x = _calibration_scores(scores, minimum=2)
        self._spot.calibrate(_back_mean_residuals(x, self.depth))
        self._window = deque(x[-self.depth:].tolist(), maxlen=self.depth)

    def _run(self, xs, thresholds, alarms) -> None:
        xs = xs.tolist()
        spot, window = self._spot, self._window
        for i, x in enumerate(xs):
            m = self._mean()
            z = spot._z + m
            thresholds[i] = z
            if x > z:
                alarms[i] = True
            elif math.isfinite(x):
                spot._observe(x - m)
                window.append(x)

    def to_state(self) -> dict:
        return {"kind": self.kind, "version": _STATE_VERSION, "params": self.params,
                "window": list(self._window), "spot": self._spot.to_state()}

    @classmethod
    def from_state(cls, state: dict) -> "DSpotThreshold":
        _check_kind(state, cls.kind)
        obj = cls(**state["params"])
        _check_kind(state["spot"], SpotThreshold.kind)
        obj._spot._load(state["spot"])
        obj._window = deque((float(v) for v in state["window"]), maxlen=obj.depth)
        return obj


# ---------------------------------------------------------------------------------------------
# Percentile
# ---------------------------------------------------------------------------------------------

class PercentileThreshold(Threshold):
    """Threshold = the ``q`` quantile of the last ``window`` scores, alarms learnt as the threshold.

    An alarm enters the window capped at the threshold it crossed: it still counts as "above the
    quantile", so the top of the distribution stays represented, but its size cannot drag the
    threshold up. Leaving alarms out instead cuts the top off the window at every turnover and the
    threshold creeps down without limit (1.4% -> 17% alarms over 100k Gaussian points at q=0.995).

    Built on river's ``RollingQuantile`` (exact, sorted window, linear interpolation like
    ``numpy.quantile``). river does not expose its window, so a deque mirrors it for to_state;
    restoring re-feeds that deque in order, which rebuilds the identical river state.
    """

    kind = "percentile"

    def __init__(self, q: float = 0.995, window: int = 5000):
        self.q = _prob("q", q)
        self.window = _count("window", window)
        self._load([])

    def _load(self, values: list[float]) -> None:
        self._quantile = RollingQuantile(q=self.q, window_size=self.window)
        self._values: deque[float] = deque(maxlen=self.window)
        for v in values:
            self._quantile.update(v)
            self._values.append(v)

    @property
    def ready(self) -> bool:
        return len(self._values) > 0

    @property
    def params(self) -> dict:
        return {"q": self.q, "window": self.window}

    @property
    def threshold(self) -> float | None:
        return self._quantile.get() if self.ready else None

    def calibrate(self, scores: np.ndarray) -> None:
        """Fill the window with the last ``window`` calibration scores."""
        x = _calibration_scores(scores)
        self._load(x[-self.window:].tolist())

    def _run(self, xs, thresholds, alarms) -> None:
        xs = xs.tolist()
        quantile, values = self._quantile, self._values
        for i, x in enumerate(xs):
            z = quantile.get()
            thresholds[i] = z
            if x > z:
                alarms[i] = True
                x = z
            if math.isfinite(x):
                quantile.update(x)
                values.append(x)

    def to_state(self) -> dict:
        return {"kind": self.kind, "version": _STATE_VERSION, "params": self.params,
                "values": list(self._values)}

    @classmethod
    def from_state(cls, state: dict) -> "PercentileThreshold":
        _check_kind(state, cls.kind)
        obj = cls(**state["params"])
        obj._load([float(v) for v in state["values"]][-obj.window:])
        return obj


# ---------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------

KINDS: dict[str, type[Threshold]] = {
    "spot": SpotThreshold,
    "dspot": DSpotThreshold,
    "percentile": PercentileThreshold,
}

# Vigil's serving defaults, under the user's --threshold-param values. SPOT refits its tail every 10
# new peaks (the threshold still moves with the counts at every peak): the same alerts as refitting at
# every peak on the simulator, at a tenth of the cost (docs/design.md). q = 1e-2: a false-alarm budget
# of about 1% of the time on normal data, judged on smoothed scores (scoring/conditioning.py); the
# papers' 1e-3 on raw scores sat above the whole bulk of heavy-tailed scores and left real faults
# silent (docs/benchmarks.md). min_peaks = 19: the tail is fitted on at least the peaks that a full
# calibration gives (1,000 points at level 0.98: the 19 above sorted[980]), so longer calibrations
# are unchanged; a model's held-out tail of a few hundred points would otherwise hand the GPD fit 4-18
# peaks, often one burst, and the 1% point would sit on it. The classes keep the papers' defaults.
DEFAULTS: dict[str, dict] = {"spot": {"refit_every": 50, "q": 1e-2, "min_peaks": 19},
                             "dspot": {"refit_every": 50, "q": 1e-2, "min_peaks": 19},
                             "percentile": {"q": 0.99}}


def parameters(kind: str) -> dict[str, type]:
    """A kind's parameters and their types, read from its constructor (the one place they are written)."""
    if kind not in KINDS:
        raise ValueError(f"unknown threshold kind {kind!r}; expected one of {sorted(KINDS)}")
    sig = inspect.signature(KINDS[kind].__init__)
    return {name: type(p.default) for name, p in sig.parameters.items() if name != "self"}


def trim_far_out(scores: np.ndarray) -> np.ndarray:
    """Calibration scores less the far-out ones (above Q3 + 3 IQR, Tukey's fence for far-out values).

    For calibration on an entity's own first points, which nobody has checked: an anomaly there
    would be fitted as the tail of normal and raise the threshold for a long time (SPOT keeps its
    peaks). Training scores are not trimmed: the model was trained on them as normal."""
    x = np.asarray(scores, dtype=np.float64)
    if x.size < 20:
        return x
    q1, q3 = np.quantile(x, [0.25, 0.75])
    return x[x <= q3 + 3.0 * (q3 - q1)]


def make_threshold(kind: str, **params) -> Threshold:
    """A new, uncalibrated threshold of ``kind``; bad kinds or parameters raise ValueError."""
    accepted = parameters(kind)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {kind!r}; "
                         f"accepted: {list(accepted)}")
    return KINDS[kind](**params)


def threshold_from_state(state: dict) -> Threshold:
    """Exact restore from ``to_state()`` (after a JSON round trip): same next outputs."""
    kind = state.get("kind") if isinstance(state, dict) else None
    if kind not in KINDS:
        raise ValueError(f"unknown threshold kind {kind!r} in state; expected one of {sorted(KINDS)}")
    return KINDS[kind].from_state(state)
