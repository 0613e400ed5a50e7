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

    def score_learn(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score each row of ``[n, C]`` against the state before it, then learn it.

        Returns point scores ``[n]`` and channel scores ``[n, C]`` (conditional squared z, about 1 when
        normal; 0 for the first two rows, before any spread is known).
        """
        return type(self).score_learn_many([self], [rows])[0]

    @classmethod
    def score_learn_many(cls, dets: list, rows: list) -> list[tuple[np.ndarray, np.ndarray]]:
        """``score_learn`` of many entities' detectors at once, a row step for all of them together:
        a backlog of cold-start entities learns in numpy steps over the entities, not in a Python loop
        per entity (70 us a row before). Only elementwise operations and reductions along the channels
        are used, so each entity's scores and state are bit for bit what it alone would give (a single
        ``score_learn`` is this with one entity)."""
        out: list = [None] * len(dets)
        kinds: dict[tuple, list[int]] = {}
        for i, d in enumerate(dets):
            kinds.setdefault((d.channels, d.alpha, d.clip, d.full, d.warmup), []).append(i)
        for (c, alpha, clip, full, warmup), idx in kinds.items():
            group = [dets[i] for i in idx]
            lens = np.array([len(rows[i]) for i in idx], np.int64)
            x = np.zeros((len(idx), int(lens.max(initial=0)), c))
            for k, i in enumerate(idx):
                x[k, :lens[k]] = rows[i]
            channel = _step(x, lens, group, alpha, clip, full, warmup)
            for k, i in enumerate(idx):
                z = channel[k, :lens[k]]
                out[i] = (z.mean(1), z)
        return out

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


def _step(x: np.ndarray, lens: np.ndarray, dets: list, alpha: float, clip: float, full: bool,
          warmup: int) -> np.ndarray:
    """Rows ``x`` [E, T, C] (entity e's first ``lens[e]``) scored and learnt, a row of every entity per
    step; the detectors' states updated in place. Channel scores [E, T, C]."""
    _, t_max, c = x.shape
    n = np.array([d.n for d in dets], np.int64)
    mean = np.stack([d.mean for d in dets]).astype(np.float64)
    cov = np.stack([d.cov for d in dets]).astype(np.float64)
    channel = np.zeros_like(x)
    diag = np.arange(c)
    for t in range(t_max):
        live = lens > t
        d = x[:, t] - mean
        var = np.ascontiguousarray(cov[:, diag, diag] if full else cov)
        floor = 1e-6 * var.mean(-1) + 1e-12
        if full:
            n_eff = np.minimum(n, 2.0 / alpha)
            beta = c / (n_eff + c)
            s = (1.0 - beta)[:, None, None] * cov
            s[:, diag, diag] = np.maximum(var, floor[:, None])
            p = np.linalg.inv(s)
            u = (p * d[:, None, :]).sum(-1)
            z2 = u * u / np.ascontiguousarray(p[:, diag, diag])
        else:
            z2 = d * d * (1.0 / np.maximum(var, floor[:, None]))
        if n.min() < 2:  # no spread known yet: no score
            z2 = np.where((n >= 2)[:, None], z2, 0.0)
        channel[:, t] = z2
        a = np.maximum(alpha, 1.0 / (n + 1))  # a plain running average until 1/alpha rows
        top = z2.max(-1)
        robust = (n >= warmup) & (top > clip ** 2)  # a fault is learnt slowly: it is not the new normal
        if robust.any():
            a = np.where(robust, a * (clip ** 2 / np.where(robust, top, 1.0)), a)
        every = live.all()  # else those without a row at this step keep their state
        new_mean = mean + a[:, None] * d
        mean = new_mean if every else np.where(live[:, None], new_mean, mean)
        if full:
            new = (1.0 - a)[:, None, None] * (cov + a[:, None, None] * (d[:, :, None] * d[:, None, :]))
            cov = new if every else np.where(live[:, None, None], new, cov)
        else:
            new = (1.0 - a)[:, None] * (cov + a[:, None] * d * d)
            cov = new if every else np.where(live[:, None], new, cov)
        n = n + live
    for k, det in enumerate(dets):
        det.n, det.mean, det.cov = int(n[k]), mean[k].copy(), cov[k].copy()
    return channel
