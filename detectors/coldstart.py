"""The cold-start detector: scores an entity from its first minutes, with no training.

What it models: an exponentially weighted Gaussian of the entity's channels (mean and covariance,
half-life ``half_life`` rows). A row's channel score is that channel's *conditional* squared z-score
given all the other channels of the same row, ``z_j^2 = (P d)_j^2 / P_jj`` with ``d`` the row minus
the mean and ``P`` the inverse covariance; the point score is their mean (about 1 when normal, as for
every detector).

Why conditional, not each channel on its own (the first cold start): plant sensors move together
(a pump's flow, current and pressure follow the same load), so most of a channel's variance is shared
with its neighbours. A fault of a few noise standard deviations on one channel is invisible against
the channel's whole range, but large against what its neighbours predict for it: level shifts, drifts,
stuck sensors and broken correlations all break that prediction, and the broken channel is the one
whose conditional score rises, so it is ranked first. A channel with no correlated neighbour is scored
against its own mean and variance, as before.

Why these choices:
- Shrinkage towards the diagonal by ``C / (n_eff + C)``: with few rows a full covariance of C
  channels is noise; the entity is scored channel by channel at first and by its correlations as
  the estimate firms up.
- Robust learning: a row whose largest conditional z exceeds ``clip`` standard deviations is learnt
  with a weight ``clip^2 / z_max^2``, so a fault does not become the new normal within a few rows.
- A warm-up of ``warmup`` rows (``10 * (C + 1)`` with a covariance, 50 without; at least 50): a
  covariance of C channels needs about ten rows per column before its scores mean anything. The stream gives no
  threshold during it and calibrates the threshold on the scores *after* it (``ready``), never on the
  detector's own warm-up (scores are huge while the covariance is still being learnt).
- Above ``max_full`` channels (128) the covariance costs too much per row (O(C^3)) and too much state
  to checkpoint; the detector then scores channels on their own.

The state is the row count, the mean and the covariance (JSON floats): a restore continues bit for bit.
"""
from __future__ import annotations

import base64

import numpy as np

from .base import StreamingDetector


class ColdStartDetector(StreamingDetector):
    name = "coldstart"
    model_id = "coldstart@2"

    def __init__(self, channels: int, half_life: float = 600.0, clip: float = 4.0, max_full: int = 128):
        super().__init__(channels)
        self.alpha = 1.0 - 0.5 ** (1.0 / half_life)
        self.clip = clip
        self.full = channels <= max_full
        self.warmup = max(50, 10 * (channels + 1)) if self.full else 50
        self.n = 0
        self.mean = np.zeros(channels)
        self.cov = np.zeros((channels, channels)) if self.full else np.zeros(channels)

    @property
    def ready(self) -> bool:
        """Past the warm-up: scores can be thresholded and a threshold calibrated on them."""
        return self.n >= self.warmup

    def ready_from(self) -> int:
        """How many more rows until ``ready``."""
        return max(0, self.warmup - self.n)

    def _precision(self) -> np.ndarray:
        """The shrunk, floored inverse covariance (full), or the inverse variances (diagonal)."""
        var = np.diag(self.cov) if self.full else self.cov
        floor = 1e-6 * (float(var.mean()) if var.size else 1.0) + 1e-12
        if not self.full:
            return 1.0 / np.maximum(var, floor)
        n_eff = min(self.n, 2.0 / self.alpha)
        beta = self.channels / (n_eff + self.channels)
        s = (1.0 - beta) * self.cov
        s[np.diag_indices_from(s)] = np.maximum(var, floor)
        return np.linalg.inv(s)

    def _z2(self, d: np.ndarray) -> np.ndarray:
        p = self._precision()
        if not self.full:
            return d * d * p
        u = p @ d
        return u * u / np.diag(p)

    def score_learn(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score each row of ``[n, C]`` against the state before it, then learn it.

        Returns point scores ``[n]`` and channel scores ``[n, C]`` (conditional squared z, about 1 when
        normal; 0 for the first two rows, before any spread is known).
        """
        rows = np.asarray(rows, dtype=np.float64)
        channel = np.zeros_like(rows)
        for i, x in enumerate(rows):
            d = x - self.mean
            if self.n >= 2:
                channel[i] = self._z2(d)
            self._learn(d, channel[i])
        return channel.mean(1), channel

    def _learn(self, d: np.ndarray, z2: np.ndarray) -> None:
        a = max(self.alpha, 1.0 / (self.n + 1))  # a plain running average until 1/alpha rows
        top = float(z2.max()) if z2.size else 0.0
        if self.n >= self.warmup and top > self.clip ** 2:
            a *= self.clip ** 2 / top
        self.mean = self.mean + a * d
        if self.full:
            self.cov = (1.0 - a) * (self.cov + a * np.outer(d, d))
        else:
            self.cov = (1.0 - a) * (self.cov + a * d * d)
        self.n += 1

    def to_state(self) -> dict:
        cov = base64.b64encode(np.ascontiguousarray(self.cov, "<f8").tobytes()).decode()  # exact, compact
        return {"n": self.n, "mean": self.mean.tolist(), "cov": cov}

    def load_state(self, state: dict) -> "ColdStartDetector":
        self.n = int(state["n"])
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        if "cov" in state:
            self.cov = np.frombuffer(base64.b64decode(state["cov"]), "<f8").reshape(self.cov.shape).copy()
        else:  # a checkpoint of the first cold start (coldstart@1): its variances
            var = np.asarray(state["var"], dtype=np.float64)
            self.cov = np.diag(var) if self.full else var
        return self
