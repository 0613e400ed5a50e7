"""Nearest normal subsequence: a reading is as anomalous as the last ``length`` readings are far from
anything seen in training. The shape-based baseline, beside PCA (reconstruction) and VAR (forecast).

Why: a telemetry channel's faults are shapes and levels that normal operation never produced (a value
held where it never sits, an oscillation of the wrong form, a plateau); the distance from the recent
subsequence to its nearest neighbour among the training subsequences measures exactly that, with no
model of the dynamics to fit (the "AB-join" of a matrix profile, Yeh et al. 2016, or the
subsequence k-NN baseline of the univariate anomaly benchmarks). A forecaster, by contrast, follows
a new level after a few steps, and a reconstruction accepts a plausible value held still.

The reference set is the training split's subsequences of the judged channels (standardised; the
declared ``inputs``, commands and setpoints, are left out: a command is operation, not a shape to
match), at most ``max_reference`` of them (and at most ``REFERENCE_VALUES`` values), evenly strided,
which bounds memory and the cost per reading. A channel's score at a row is the mean squared difference, over the subsequence ending there,
between the channel and the same channel in the nearest training subsequence (nearest over all judged
channels together), divided by that quantity's mean in training, where every training subsequence
is matched against the others outside its own ``length`` neighbourhood (so training scores are
out-of-sample, about 1). Scale floored at ``min_scale`` as PCA's and VAR's are. The point score is the
mean over judged channels. Rows of a window with fewer than ``length - 1`` rows before them score as
the first row that has them; the stream only reads the newest rows of a window, which do
(``window - hop + 1 >= length``: the model's window is 32 and the stream's hop 16).

>>> import numpy as np
>>> t = np.arange(3000)
>>> x = np.sin(t / 10)[:, None] + 0.01 * np.random.default_rng(0).normal(size=(3000, 1))
>>> det = NearestSubsequenceDetector(["a"]).fit(x, progress=False)
>>> held = x[:64].copy(); held[40:, 0] = 0.5          # the value stops moving, inside its normal range
>>> s = det.score(held[None]).reconstruction[0]
>>> bool(s[50:].mean() > 20 * s[16:35].mean())
True
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .base import Detector, Scores, check_train, check_windows, standardisation

# At most this many values in the reference (64 MB of float32), whatever ``max_reference`` says: a wide
# entity keeps fewer subsequences rather than an artefact and a memory footprint of gigabytes.
REFERENCE_VALUES = 1 << 24


class NearestSubsequenceDetector(Detector):
    name = "knn"
    context = None  # whole windows: a row's subsequence is the ``length`` rows ending at it
    supports_inputs = True

    def __init__(self, channels: list[str], length: int = 16, max_reference: int = 20000,
                 min_scale: float = 1e-4, window: int = 32, inputs: list[str] | None = None):
        if not 2 <= length < window:
            raise ValueError(f"knn: length must be in 2..window-1, got length={length}, window={window}")
        super().__init__(channels, length=length, max_reference=max_reference, min_scale=min_scale,
                         window=window, inputs=inputs)
        c = len(channels)
        self.mean = np.zeros(c, np.float32)
        self.std = np.ones(c, np.float32)
        self.reference = np.zeros((0, length, 0), np.float32)  # [N, length, judged channels]
        self.channel_scale = np.ones(c, np.float32)
        self._flat: np.ndarray | None = None  # reference as [N, length * judged], and its squared norms
        self._norms: np.ndarray | None = None

    def _prepare(self) -> None:
        ref = self.reference.astype(np.float64)
        self._flat = ref.reshape(len(ref), -1)
        self._norms = (self._flat ** 2).sum(1)

    def _nearest(self, subs: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
        """Index of the nearest reference subsequence of each of ``subs`` ``[M, length, J]``; with
        ``exclude`` (the reference index of each), references within ``length`` of it are skipped."""
        flat = subs.reshape(len(subs), -1).astype(np.float64)
        out = np.empty(len(flat), np.int64)
        step = max(1, 4_000_000 // max(len(self._flat), 1))  # bounds the distance block's memory
        length = self.info.config["length"]
        for lo in range(0, len(flat), step):
            part = flat[lo:lo + step]
            d = (part ** 2).sum(1)[:, None] + self._norms[None] - 2 * part @ self._flat.T
            if exclude is not None:
                near = np.abs(exclude[lo:lo + step, None] - np.arange(len(self._flat))[None]) < length
                d[near] = np.inf
            out[lo:lo + step] = np.argmin(d, 1)
        return out

    def _errors(self, subs: np.ndarray, nearest: np.ndarray) -> np.ndarray:
        """Per judged channel, the mean squared difference to the matched subsequence: ``[M, J]``."""
        return ((subs - self.reference[nearest]) ** 2).mean(1)

    def fit(self, train: np.ndarray, progress: bool = True) -> "NearestSubsequenceDetector":
        x = check_train(train, len(self.channels))
        length = self.info.config["length"]
        if len(x) < 4 * length:
            raise ValueError(f"knn needs at least {4 * length} training points, got {len(x)}")
        self.mean, self.std = standardisation(x)
        self.learn_judged()
        z = ((x - self.mean) / self.std)[:, self.judged_index].astype(np.float32)
        subs = sliding_window_view(z, length, axis=0).transpose(0, 2, 1)  # [T - length + 1, length, J]
        n = min(len(subs), self.info.config["max_reference"], max(1, REFERENCE_VALUES // subs[0].size))
        keep = np.unique(np.linspace(0, len(subs) - 1, n).round().astype(np.int64))
        self.reference = np.ascontiguousarray(subs[keep])
        self._prepare()
        # out of sample: each training subsequence against the others beyond its own neighbourhood
        # (in reference indices, ``length`` strides of the subsample cover at least ``length`` rows)
        err = self._errors(self.reference, self._nearest(self.reference, exclude=np.arange(len(keep))))
        self.channel_scale = np.ones(len(self.channels), np.float32)
        self.channel_scale[self.judged_index] = np.maximum(err.mean(0), self.info.config["min_scale"])
        self.train_reconstruction = (err / self.channel_scale[self.judged_index]).mean(1).astype(np.float32)
        return self

    def score(self, windows: np.ndarray) -> Scores:
        w = check_windows(windows, len(self.channels))
        length = self.info.config["length"]
        b, t, c = w.shape
        if t < length:
            raise ValueError(f"knn with length {length} scores windows of at least {length} rows, got {t}")
        if self._flat is None:
            self._prepare()
        idx = self.judged_index
        z = ((w - self.mean) / self.std)[..., idx]
        subs = sliding_window_view(z, length, axis=1).transpose(0, 1, 3, 2)  # [B, t - length + 1, length, J]
        flat = subs.reshape(-1, length, len(idx))
        err = self._errors(flat, self._nearest(flat)).reshape(b, t - length + 1, -1)
        channel = np.zeros((b, t, c), np.float32)
        channel[:, length - 1:, idx] = err / self.channel_scale[idx]
        channel[:, :length - 1] = channel[:, length - 1:length]  # rows without a full subsequence
        return Scores(reconstruction=channel[..., idx].mean(-1).astype(np.float32), channel=channel)

    def tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "reference": self.reference,
                "channel_scale": self.channel_scale}

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.mean, self.std = tensors["mean"], tensors["std"]
        self.reference, self.channel_scale = tensors["reference"], tensors["channel_scale"]
        self._flat = self._norms = None
