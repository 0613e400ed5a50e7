"""The cold-start detector: scores an entity from its first points, with no training.

It keeps an exponentially weighted mean and variance per channel and scores each row by its squared
z-score before learning from it (river's ``score_one`` then ``learn_one`` order). Values are clipped
to ``clip`` standard deviations before they are learned, so a fault does not become the new normal in
a few points. Chosen over river's HalfSpaceTrees because it gives a per-channel attribution (HST
gives none) and its whole state is three small arrays that restore exactly after a restart.
"""
from __future__ import annotations

import numpy as np

from .base import StreamingDetector


class ColdStartDetector(StreamingDetector):
    name = "coldstart"
    model_id = "coldstart@1"

    def __init__(self, channels: int, half_life: float = 600.0, clip: float = 4.0, min_var: float = 1e-6):
        super().__init__(channels)
        self.alpha = 1.0 - 0.5 ** (1.0 / half_life)
        self.clip = clip
        self.min_var = min_var
        self.n = 0
        self.mean = np.zeros(channels)
        self.var = np.ones(channels)

    def score_learn(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score each row of ``[n, C]`` against the state before it, then learn it.

        Returns point scores ``[n]`` and channel scores ``[n, C]`` (squared z, about 1 when normal).
        """
        rows = np.asarray(rows, dtype=np.float64)
        channel = np.empty_like(rows)
        for i, x in enumerate(rows):
            channel[i] = self.score_one(x)
            self.learn_one(x)
        return channel.mean(1), channel

    def score_one(self, x: np.ndarray) -> np.ndarray:
        if self.n < 2:
            return np.zeros(self.channels)
        return (x - self.mean) ** 2 / np.maximum(self.var, self.min_var)

    def learn_one(self, x: np.ndarray) -> None:
        if self.n == 0:
            self.mean = x.astype(np.float64).copy()
            self.var = np.full(self.channels, self.min_var)
        else:
            # Fast start: a plain running average until 1/alpha points, then exponential forgetting.
            a = max(self.alpha, 1.0 / (self.n + 1))
            sd = np.sqrt(np.maximum(self.var, self.min_var))
            if self.n >= 10:
                x = np.clip(x, self.mean - self.clip * sd, self.mean + self.clip * sd)
            d = x - self.mean
            self.mean = self.mean + a * d
            self.var = (1 - a) * (self.var + a * d * d)
        self.n += 1

    def to_state(self) -> dict:
        return {"n": self.n, "mean": self.mean.tolist(), "var": self.var.tolist()}

    def load_state(self, state: dict) -> "ColdStartDetector":
        self.n = int(state["n"])
        self.mean = np.asarray(state["mean"], dtype=np.float64)
        self.var = np.asarray(state["var"], dtype=np.float64)
        return self
