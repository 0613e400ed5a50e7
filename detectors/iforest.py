"""Isolation Forest baseline (Liu et al. 2008) on standardised points, in numpy.

A point isolated in few random splits is anomalous: score 2^(-E[h(x)] / c(psi)). Trees are stored as
arrays (feature, threshold, children, leaf size), so the artefact is plain safetensors. Isolation
Forest defines no channel attribution: its per-channel scores are each channel's squared z-score,
normalised on training data, and its point score is the isolation score divided by its training mean.
"""
from __future__ import annotations

import numpy as np

from .base import Detector, Scores, check_train, check_windows, standardisation


def _c(n: np.ndarray) -> np.ndarray:
    """Average path length of an unsuccessful search in a binary search tree of n points."""
    n = np.asarray(n, dtype=np.float64)
    out = np.zeros_like(n)
    big = n > 2
    out[big] = 2.0 * (np.log(n[big] - 1.0) + np.euler_gamma) - 2.0 * (n[big] - 1.0) / n[big]
    out[n == 2] = 1.0
    return out


class IsolationForestDetector(Detector):
    name = "iforest"
    context = 1

    def __init__(self, channels: list[str], trees: int = 100, sample: int = 256, seed: int = 0):
        super().__init__(channels, trees=trees, sample=sample, seed=seed)
        c = len(channels)
        self.mean = np.zeros(c, np.float32)
        self.std = np.ones(c, np.float32)
        self.channel_scale = np.ones(c, np.float32)
        self.score_scale = np.ones(1, np.float32)
        self.feature = self.threshold = self.left = self.right = self.size = None

    def fit(self, train: np.ndarray, progress: bool = True) -> "IsolationForestDetector":
        from tqdm import tqdm

        x = check_train(train, len(self.channels))
        self.mean, self.std = standardisation(x)
        z = ((x - self.mean) / self.std).astype(np.float32)
        cfg = self.info.config
        rng = np.random.default_rng(cfg["seed"])
        psi = min(cfg["sample"], len(z))
        limit = int(np.ceil(np.log2(max(psi, 2))))
        trees = [self._grow(z[rng.choice(len(z), psi, replace=False)], limit, rng)
                 for _ in tqdm(range(cfg["trees"]), desc="training iforest", unit="tree", disable=not progress)]
        width = max(len(t[0]) for t in trees)
        pad = lambda i, fill, dt: np.stack([np.pad(np.asarray(t[i], dt), (0, width - len(t[i])),  # noqa: E731
                                                   constant_values=fill) for t in trees])
        self.feature, self.threshold = pad(0, -1, np.int32), pad(1, 0.0, np.float32)
        self.left, self.right, self.size = pad(2, -1, np.int32), pad(3, -1, np.int32), pad(4, 0, np.int32)
        self.score_scale = np.array([max(float(self._isolation(z).mean()), 1e-8)], np.float32)
        sq = z.astype(np.float64) ** 2
        self.channel_scale = np.maximum(sq.mean(0), 1e-8).astype(np.float32)
        self.train_reconstruction = (self._isolation(z) / self.score_scale[0]).astype(np.float32)
        return self

    @staticmethod
    def _grow(z: np.ndarray, limit: int, rng) -> tuple[list, ...]:
        """One isolation tree as flat lists: feature (-1 at leaves), threshold, left, right, leaf size."""
        feature, threshold, left, right, size = [], [], [], [], []
        stack = [(np.arange(len(z)), 0, None)]
        while stack:
            idx, depth, parent = stack.pop()
            node = len(feature)
            if parent is not None:
                (left if parent[1] == 0 else right)[parent[0]] = node
            if len(idx) <= 1 or depth >= limit:  # (a split value that rounds onto a bound leaves a side empty)
                feature.append(-1), threshold.append(0.0), left.append(-1), right.append(-1)
                size.append(len(idx))
                continue
            lo, hi = z[idx].min(0), z[idx].max(0)
            splittable = np.flatnonzero(hi > lo)
            if not len(splittable):
                feature.append(-1), threshold.append(0.0), left.append(-1), right.append(-1)
                size.append(len(idx))
                continue
            f = int(rng.choice(splittable))
            t = float(rng.uniform(lo[f], hi[f]))
            feature.append(f), threshold.append(t), left.append(-1), right.append(-1), size.append(len(idx))
            goes_left = z[idx, f] < t
            stack.append((idx[~goes_left], depth + 1, (node, 1)))
            stack.append((idx[goes_left], depth + 1, (node, 0)))
        return feature, threshold, left, right, size

    def _isolation(self, z: np.ndarray) -> np.ndarray:
        """2^(-E[h] / c(psi)) per row of z [N, C], all trees walked level by level in numpy."""
        n, trees = len(z), len(self.feature)
        depth = np.zeros((trees, n))
        node = np.zeros((trees, n), dtype=np.int64)
        rows = np.arange(trees)[:, None]
        while True:
            f = self.feature[rows, node]
            inner = f >= 0
            if not inner.any():
                break
            value = z[np.arange(n)[None, :], np.where(inner, f, 0)]
            go_left = value < self.threshold[rows, node]
            child = np.where(go_left, self.left[rows, node], self.right[rows, node])
            node = np.where(inner, child, node)
            depth += inner
        h = depth + _c(self.size[rows, node])
        psi = max(int(self.size[0, 0]), 2)  # a root holds the whole subsample
        return 2.0 ** (-h.mean(0) / _c(np.array([psi]))[0])

    def score(self, windows: np.ndarray) -> Scores:
        w = check_windows(windows, len(self.channels))
        b, t, c = w.shape
        z = (w.reshape(-1, c) - self.mean) / self.std
        point = (self._isolation(z) / self.score_scale[0]).reshape(b, t).astype(np.float32)
        channel = (z.astype(np.float64) ** 2 / self.channel_scale).reshape(b, t, c).astype(np.float32)
        return Scores(reconstruction=point, channel=channel)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "channel_scale": self.channel_scale,
                "score_scale": self.score_scale, "feature": self.feature, "threshold": self.threshold,
                "left": self.left, "right": self.right, "size": self.size}

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        for k, v in tensors.items():
            setattr(self, k, v)
