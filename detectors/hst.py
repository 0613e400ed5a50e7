"""Half-Space Trees baseline (Tan, Ting and Liu, IJCAI 2011), fitted on a reference window, in numpy.

Each tree halves a randomly perturbed [0, 1] workspace on random features down to ``height``; the
training points give each node a mass. A point's score sums, over trees, mass x 2^depth at the first
node on its path whose mass falls under ``size_limit`` (or at the leaf): sparse regions score low. The
defaults are river's (10 trees, height 8, a reference window of 250 points, size limit 0.1 x window).
river's own HalfSpaceTrees keeps its trees as Python objects that only pickle can save, which Vigil's
artefacts never use, so the same algorithm is written here over arrays.

Like Isolation Forest it has no channel attribution: per-channel scores are squared z-scores
normalised on training data. The point score is 1 / (1 + mass score), divided by its training mean.
"""
from __future__ import annotations

import numpy as np

from .base import Detector, Scores, check_train, check_windows, standardisation


class HalfSpaceTreesDetector(Detector):
    name = "hst"
    context = 1

    def __init__(self, channels: list[str], trees: int = 10, height: int = 8, window: int = 250,
                 seed: int = 0):
        super().__init__(channels, trees=trees, height=height, window=window, seed=seed)
        c = len(channels)
        self.mean = np.zeros(c, np.float32)
        self.std = np.ones(c, np.float32)
        self.low = np.zeros(c, np.float32)  # training range, mapped to [0, 1]
        self.span = np.ones(c, np.float32)
        self.channel_scale = np.ones(c, np.float32)
        self.score_scale = np.ones(1, np.float32)
        self.feature = self.split = self.mass = None  # [trees, internal], [trees, internal], [trees, nodes]

    def _unit(self, x: np.ndarray) -> np.ndarray:
        return (x - self.low) / self.span

    def fit(self, train: np.ndarray, progress: bool = True) -> "HalfSpaceTreesDetector":
        x = check_train(train, len(self.channels))
        cfg = self.info.config
        rng = np.random.default_rng(cfg["seed"])
        c = x.shape[1]
        self.mean, self.std = standardisation(x)
        self.low = x.min(0).astype(np.float32)
        span = x.max(0) - x.min(0)
        self.span = np.where(span > 1e-8, span, 1.0).astype(np.float32)
        internal = 2 ** cfg["height"] - 1
        self.feature = np.zeros((cfg["trees"], internal), np.int32)
        self.split = np.zeros((cfg["trees"], internal), np.float32)
        for t in range(cfg["trees"]):
            s = rng.uniform(size=c)  # the perturbed workspace of the paper: [s - r, s + r], r = 2 max(s, 1 - s)
            r = 2 * np.maximum(s, 1 - s)
            lo, hi = np.tile(s - r, (internal * 2 + 1, 1)), np.tile(s + r, (internal * 2 + 1, 1))
            for node in range(internal):  # heap order: children of i are 2i+1 and 2i+2
                f = int(rng.integers(c))
                mid = (lo[node, f] + hi[node, f]) / 2
                self.feature[t, node], self.split[t, node] = f, mid
                for child in (2 * node + 1, 2 * node + 2):
                    lo[child], hi[child] = lo[node], hi[node]
                hi[2 * node + 1, f] = mid
                lo[2 * node + 2, f] = mid
        reference = self._unit(x[rng.choice(len(x), min(cfg["window"], len(x)), replace=False)])
        self.mass = np.zeros((cfg["trees"], 2 * internal + 1), np.float32)
        for path in self._paths(reference):
            np.add.at(self.mass, (np.arange(cfg["trees"])[:, None], path), 1.0)
        z = (x - self.mean) / self.std
        self.channel_scale = np.maximum((z ** 2).mean(0), 1e-8).astype(np.float32)
        raw = self._anomaly(self._unit(x))
        self.score_scale = np.array([max(float(raw.mean()), 1e-12)], np.float32)
        self.train_reconstruction = (raw / self.score_scale[0]).astype(np.float32)
        return self

    def _paths(self, u: np.ndarray):
        """Yield, level by level, the node index [trees, N] of each point, root first."""
        trees = len(self.feature)
        node = np.zeros((trees, len(u)), dtype=np.int64)
        yield node
        rows = np.arange(trees)[:, None]
        for _ in range(self.info.config["height"]):
            f = self.feature[rows, node]
            right = u[np.arange(len(u))[None, :], f] >= self.split[rows, node]
            node = 2 * node + 1 + right
            yield node

    def _anomaly(self, u: np.ndarray) -> np.ndarray:
        limit = 0.1 * self.info.config["window"]
        trees = len(self.feature)
        rows = np.arange(trees)[:, None]
        total = np.zeros(len(u))
        done = np.zeros((trees, len(u)), bool)
        for depth, node in enumerate(self._paths(u)):
            m = self.mass[rows, node]
            stop = ~done & ((m < limit) | (depth == self.info.config["height"]))
            total += (np.where(stop, m, 0.0) * 2.0 ** depth).sum(0)
            done |= stop
        return 1.0 / (1.0 + total)

    def score(self, windows: np.ndarray) -> Scores:
        w = check_windows(windows, len(self.channels))
        b, t, c = w.shape
        x = w.reshape(-1, c).astype(np.float64)
        point = (self._anomaly(self._unit(x)) / self.score_scale[0]).reshape(b, t).astype(np.float32)
        z = (x - self.mean) / self.std
        channel = (z ** 2 / self.channel_scale).reshape(b, t, c).astype(np.float32)
        return Scores(reconstruction=point, channel=channel)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "low": self.low, "span": self.span,
                "channel_scale": self.channel_scale, "score_scale": self.score_scale,
                "feature": self.feature, "split": self.split, "mass": self.mass}

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        for k, v in tensors.items():
            setattr(self, k, v)
