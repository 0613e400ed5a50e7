"""Simple, documented anomalies injected into normal windows: what a model's detection is judged on without labels.

Each kind changes the newest half of a window (the rows the stream scores last) on one to three of the
judged channels, in units of the channel's standard deviation on the data the model was fitted on:

  spike          one to three rows moved by 4-8 sd: a glitch, a transient
  level_shift    from a row of the second half on, moved by 2-4 sd: a step, an offset, a changed set point
  drift          a ramp from 0 to 2-4 sd over the second half: a slow fault, a fouling sensor
  stuck          the second half held at the value of its first row: a frozen sensor or actuator
  swap           one channel's second half taken from another normal window: plausible values that
                 break the channel's relations with the others and with its own past (a broken correlation)
  noise          Gaussian noise of 1-2 sd added over the second half: a loose contact, interference

The kinds follow the fault types of plant and server monitoring (and of Goswami et al., ICLR 2023,
"Unsupervised Model Selection for Time-series Anomaly Detection", whose injections include spikes,
level shifts, trends, flat segments and noise). GenIAS's learned anomalies (``detectors.genias``) are
the other source (``training.label_free``). Everything is drawn from a seeded generator: the same
windows and seed give the same anomalies.

>>> import numpy as np
>>> normal = np.zeros((4, 16, 3), np.float32)
>>> out = inject(normal, "level_shift", np.array([0, 1]), np.ones(3), seed=0)
>>> bool((out[:, :8] == 0).all() and (np.abs(out[:, 8:]) > 0).any() and (out[..., 2] == 0).all())
True
"""
from __future__ import annotations

import numpy as np

KINDS = ("spike", "level_shift", "drift", "stuck", "swap", "noise")


def inject(windows: np.ndarray, kind: str, judged: np.ndarray, std: np.ndarray, seed: int = 0) -> np.ndarray:
    """A copy of normal windows ``[B, W, C]`` (raw units) with one anomaly of ``kind`` in each, on judged
    channels (indices ``judged``), sized by the channels' standard deviations ``std`` ``[C]``."""
    if kind not in KINDS:
        raise ValueError(f"unknown injection {kind!r}; known: {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    out = np.array(windows, dtype=np.float32, copy=True)
    b, w, _ = out.shape
    half = w // 2
    scale = np.where(np.asarray(std) > 1e-8, std, 1.0).astype(np.float32)
    for i in range(b):
        win = out[i]  # a view: [W, C]
        chans = rng.choice(judged, size=min(len(judged), int(rng.integers(1, 4))), replace=False)
        sign = rng.choice([-1.0, 1.0], size=len(chans)).astype(np.float32)
        sd = scale[chans]
        if kind == "spike":
            at, length = int(rng.integers(half, w)), int(rng.integers(1, 4))
            win[at:at + length, chans] += sign * rng.uniform(4, 8) * sd
        elif kind == "level_shift":
            win[int(rng.integers(half, w - 1)):, chans] += sign * rng.uniform(2, 4) * sd
        elif kind == "drift":
            ramp = np.linspace(0.0, rng.uniform(2, 4), w - half, dtype=np.float32)[:, None]
            win[half:, chans] += ramp * sign * sd
        elif kind == "stuck":
            win[half:, chans] = win[half, chans]
        elif kind == "swap":
            other = (i + 1 + int(rng.integers(0, max(b - 1, 1)))) % b
            win[half:, chans] = windows[other][half:, chans]
        else:  # noise
            win[half:, chans] += rng.normal(size=(w - half, len(chans))).astype(np.float32) * rng.uniform(1, 2) * sd
    return out
