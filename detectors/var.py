"""Vector autoregression: each measured channel forecast from the last ``lags`` readings of every
channel, and the squared forecast error is the score. The forecasting baseline, as PCA is the
reconstruction one.

Why a forecaster: reconstruction (PCA and the autoencoders) asks whether a reading is a plausible
combination of channels, so a channel that keeps a plausible value while it should be moving (a
telemetry value stuck, an oscillation that stops) looks normal to it; a forecast from the channel's own
recent past sees it (the design of telemanom, Hundman et al. KDD 2018, with a linear model in place of
its LSTM). With input channels declared (``inputs``: commands, setpoints), the model is an ARX model
of system identification: the measured channels are forecast from everybody's past *and* the inputs
of the same instant (a command acts at once), and only they are judged; inputs are not forecast.

Fitting is one ridge regression in closed form on standardised channels (no seed, no epochs). A
channel's score is its squared error over its mean training error (floored like PCA's at ``min_scale``
for a channel forecast perfectly); the point score is their mean. The first ``lags`` rows of a window
have no full past and score as its row ``lags``; the stream only reads the newest rows of a window,
which always have it (``window - hop >= lags``).

>>> import numpy as np
>>> t = np.arange(3000)
>>> x = np.stack([np.sin(t / 10), np.cos(t / 10)], 1) + 0.01 * np.random.default_rng(0).normal(size=(3000, 2))
>>> det = VARDetector(["a", "b"]).fit(x, progress=False)
>>> stuck = x[:64].copy(); stuck[40:, 0] = stuck[40, 0]   # channel a stops moving
>>> s = det.score(stuck[None])
>>> bool(s.reconstruction[0, 50:].mean() > 20 * s.reconstruction[0, 10:35].mean())
True
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import Detector, Scores, check_train, check_windows, standardisation


class VARDetector(Detector):
    name = "var"
    context = None  # whole windows: a row's forecast needs the ``lags`` rows before it
    supports_inputs = True

    def __init__(self, channels: list[str], lags: int = 8, ridge: float = 1.0, min_scale: float = 1e-4,
                 window: int = 32, inputs: list[str] | None = None):
        if not 1 <= lags < window:
            raise ValueError(f"var: lags must be in 1..window-1, got lags={lags}, window={window}")
        super().__init__(channels, lags=lags, ridge=ridge, min_scale=min_scale, window=window, inputs=inputs)
        c = len(channels)
        self.mean = np.zeros(c, np.float32)
        self.std = np.ones(c, np.float32)
        self.weights = np.zeros((0, c), np.float32)  # [features, targets]
        self.channel_scale = np.ones(c, np.float32)  # mean training squared error per target channel

    def _features(self, z: np.ndarray) -> np.ndarray:
        """Rows ``lags..W-1`` of standardised windows ``[B, W, C]`` -> features ``[B, W - lags, F]``: the
        ``lags`` rows before each (oldest first), the same row's inputs when declared, and 1."""
        lags = self.info.config["lags"]
        b, w, c = z.shape
        past = sliding_window_view(z[:, :-1], lags, axis=1)  # [B, W - lags, C, lags]
        parts = [past.transpose(0, 1, 3, 2).reshape(b, w - lags, lags * c)]
        if self.judged is not None:
            parts.append(z[:, lags:, ~self.judged])
        parts.append(np.ones((b, w - lags, 1), z.dtype))
        return np.concatenate(parts, axis=2)

    def fit(self, train: np.ndarray, progress: bool = True) -> "VARDetector":
        x = check_train(train, len(self.channels))
        lags = self.info.config["lags"]
        if len(x) < 4 * lags + 2:
            raise ValueError(f"var needs at least {4 * lags + 2} training points, got {len(x)}")
        self.mean, self.std = standardisation(x)
        self.learn_judged()
        z = ((x - self.mean) / self.std)[None]
        idx = self.judged_index
        feats, target = self._features(z)[0], z[0, lags:][:, idx]
        gram = feats.T @ feats
        ridge = self.info.config["ridge"] * np.eye(len(gram))
        ridge[-1, -1] = 0.0  # the intercept is not shrunk
        self.weights = np.linalg.solve(gram + ridge, feats.T @ target).astype(np.float32)
        err = (target - feats @ self.weights) ** 2
        self.channel_scale = np.ones(len(self.channels), np.float32)
        self.channel_scale[idx] = np.maximum(err.mean(0), self.info.config["min_scale"])
        channel = np.zeros((len(err), len(self.channels)), np.float32)
        channel[:, idx] = err / self.channel_scale[idx]
        self.train_reconstruction = channel[:, idx].mean(1).astype(np.float32)
        return self

    def score(self, windows: np.ndarray) -> Scores:
        w = check_windows(windows, len(self.channels))
        lags = self.info.config["lags"]
        b, t, c = w.shape
        if t <= lags:
            raise ValueError(f"var with {lags} lags scores windows of more than {lags} rows, got {t}")
        z = (w - self.mean) / self.std
        idx = self.judged_index
        err = (z[:, lags:, idx] - self._features(z) @ self.weights) ** 2
        channel = np.zeros((b, t, c), np.float32)
        channel[:, lags:, idx] = err / self.channel_scale[idx]
        channel[:, :lags] = channel[:, lags:lags + 1]  # rows without a full past: as the first that has one
        return Scores(reconstruction=channel[..., idx].mean(-1).astype(np.float32), channel=channel)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "weights": self.weights, "channel_scale": self.channel_scale}

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.mean, self.std = tensors["mean"], tensors["std"]
        self.weights, self.channel_scale = tensors["weights"], tensors["channel_scale"]
