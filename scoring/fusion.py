"""Fusing a detector's signals into one score per point, and channel attribution.

Detectors return a normalised reconstruction error and, for some models, a divergence signal
(association discrepancy, discriminator output). Two rules:
- ``sum``: score = reconstruction + weight * divergence (the default; additive evidence)
- ``product``: score = reconstruction * divergence (Anomaly-Transformer style weighting)
A model without divergence is scored by its reconstruction alone under either rule.
"""
from __future__ import annotations

import numpy as np

from detectors.base import Scores

RULES = ("sum", "product")


def fuse(scores: Scores, rule: str = "sum", weight: float = 1.0) -> np.ndarray:
    if rule not in RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; known: {', '.join(RULES)}")
    if scores.divergence is None:
        return scores.reconstruction
    if rule == "sum":
        return scores.reconstruction + weight * scores.divergence
    return scores.reconstruction * scores.divergence


def top_channels(channel_scores: np.ndarray, names: list[str], k: int) -> list[dict]:
    """The k channels with the highest scores, highest first, as alert payload entries; a channel that
    contributed nothing (score 0: an input channel, ``detectors.base.Detector.judge``) is no cause."""
    k = min(k, len(names))
    idx = np.argsort(-channel_scores, kind="stable")[:k]
    return [{"channel": names[i], "score": round(float(channel_scores[i]), 4)} for i in idx if channel_scores[i] > 0]
