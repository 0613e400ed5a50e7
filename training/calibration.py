"""Fitting a detector for serving: its threshold calibrates on data it was not fitted on.

Why: a model's scores on its own training points are not what it will see on new normal data. It was
fitted to them, so they run low, and a threshold set there floods; and the training split of a real
system holds outliers the model absorbed, which stretch the tail of in-sample scores. The last
``holdout`` share of the training split is therefore held out: the model is fitted on the rest, the
held-out tail is scored exactly as the stream scores it (the same windows and hop, the rows before it
as context), and those scores, in time order, become the artefact's calibration scores
(``Detector.train_reconstruction``/``train_divergence``, with ``calibration_source = "holdout"``).
Too short a split (fewer than ``min_fit + min_holdout`` points) is fitted whole and calibrated on its
training scores as before. Missing values in the split are filled first (``scoring.windows.fill_gaps``)
and counted (``filled_training_values``, kept in the artefact).
"""
from __future__ import annotations

import numpy as np

from detectors.base import Detector
from scoring.settings import Settings
from scoring.windows import EntityWindow, fill_gaps

HOLDOUT = 0.2  # the share of the training split held out for calibration


def fit_for_serving(det: Detector, train: np.ndarray, settings: Settings | None = None, holdout: float = HOLDOUT,
                    min_fit: int = 500, min_holdout: int = 200, progress: bool = True) -> Detector:
    """Fit ``det`` on ``train`` less its last ``holdout`` share and calibrate it on that tail."""
    settings = settings or Settings()
    filled, gaps = fill_gaps(train)  # gaps in a recorded history (scoring.windows)
    det.filled_training_values = int(gaps.sum())
    train = np.asarray(filled, np.float32)
    n_hold = int(len(train) * holdout)
    if n_hold < min_holdout or len(train) - n_hold < min_fit:
        det.fit(train, progress=progress)
        det.calibration_source = "train"
        return det
    det.fit(train[:-n_hold], progress=progress)
    det.train_reconstruction, det.train_divergence = stream_scores(det, train, len(train) - n_hold, settings)
    det.calibration_source = "holdout"
    return det


def stream_scores(det: Detector, values: np.ndarray, start: int, settings: Settings,
                  rows: int = 100) -> tuple[np.ndarray, np.ndarray | None]:
    """Reconstruction and divergence of ``values[start:]`` as the stream computes them: messages of
    ``rows`` rows pushed into the entity's sliding windows, each window scoring its new rows."""
    length = int(det.info.config.get("window", settings.window))
    window = EntityWindow(length, min(settings.hop, length), values.shape[1], fill=getattr(det, "mean", None))
    window.extend(window.impute(values[:start]))
    recon, div = [], []
    for i in range(start, len(values), rows):
        chunk = window.impute(values[i:i + rows])
        windows, counts = window.push(chunk, [len(chunk)])
        if det.context is not None:
            windows = windows[:, -max(det.context, int(counts.max())):]
        s = det.score(windows)
        mask = np.arange(windows.shape[1]) >= windows.shape[1] - counts[:, None]
        recon.append(s.reconstruction[mask])
        if s.divergence is not None:
            div.append(s.divergence[mask])
    return (np.concatenate(recon).astype(np.float32),
            np.concatenate(div).astype(np.float32) if div else None)
