"""Retuning an entity's alerts from its operators' labels (``scoring.feedback``).

Two uses of a label, both in the trainer's round for that entity:

- **Training data.** A period labelled a false alarm is normal: it stays in the history even though an
  incident covered it (incidents are otherwise left out). A period labelled an anomaly is left out.
- **The threshold.** Each labelled period is streamed through the worker's own pipeline with the
  candidate model (``peak_ratio``: its largest score over the served threshold, with some normal
  context before it, so windows, smoothing and level start as they would). The period alarms iff that
  ratio exceeds the model's ``threshold_scale``. The scale is chosen to honour as many labels as
  possible (false alarms at or below it, anomalies above it), each kept ``MARGIN`` inside its side so
  that a repeat of the same benign pattern a little stronger stays quiet; among equally good scales
  the one closest to 1 wins (the model's own calibration is trusted as far as the labels allow), and
  it stays within the trainer's bounds (``TrainerConfig.feedback_bounds``).

A scale rather than a new calibration: the labels are a handful of periods, far too few to fit a
tail on, but each says on which side of the threshold a known pattern must fall. The threshold keeps
learning as before; only the line it is served at moves (``scoring.pipeline``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from detectors.base import Detector
from scoring.feedback import Feedback
from scoring.settings import Settings

from .data import Dataset
from .evaluate import stream_offline

CONTEXT = 512  # points of history streamed before a labelled period
MARGIN = 1.2  # how far inside its side of the threshold a labelled period is put


@dataclass
class Segment:
    """A labelled period of an entity's history, with the points before it as context."""

    label: Feedback
    ts: np.ndarray
    values: np.ndarray  # [n, C]
    first: int  # index of the first labelled point; before it: context

    @property
    def points(self) -> int:
        return len(self.ts) - self.first


def segment(ts: np.ndarray, values: np.ndarray, fb: Feedback, context: int = CONTEXT) -> Segment | None:
    """The labelled period of ``fb`` in a history (timestamps sorted), or None when no point lies in it."""
    lo, hi = int(np.searchsorted(ts, fb.start, "left")), int(np.searchsorted(ts, fb.end, "right"))
    if hi <= lo:
        return None
    begin = max(0, lo - context)
    return Segment(fb, ts[begin:hi], values[begin:hi], lo - begin)


def masks(ts: np.ndarray, labels: list[Feedback]) -> tuple[np.ndarray, np.ndarray]:
    """Points inside periods labelled false alarm, and inside periods labelled anomaly."""
    normal, anomalous = np.zeros(len(ts), bool), np.zeros(len(ts), bool)
    for fb in labels:
        inside = (ts >= fb.start) & (ts <= fb.end)
        (normal if fb.label == "false-alarm" else anomalous)[inside] = True
    return normal & ~anomalous, anomalous


def peak_ratio(det: Detector, seg: Segment, settings: Settings) -> float:
    """The largest served score / threshold over the labelled points, at ``threshold_scale`` 1 (NaN
    when none of them was judged, e.g. a period shorter than the model's warm-up)."""
    saved, det.threshold_scale = det.threshold_scale, 1.0
    try:
        n = len(seg.ts)
        data = Dataset(seg.label.entity, seg.values[:0], seg.values, np.zeros(n, np.int8), list(det.channels))
        stream = stream_offline(det, data, settings)
    finally:
        det.threshold_scale = saved
    with np.errstate(divide="ignore", invalid="ignore"):
        r = stream.score[seg.first:] / stream.threshold[seg.first:]
    r = r[np.isfinite(r)]
    return float(r.max()) if len(r) else float("nan")


def honoured(label: str, ratio: float, scale: float) -> bool:
    """Whether the served threshold at ``scale`` agrees with the label (False when it cannot be judged)."""
    if not math.isfinite(ratio):
        return False
    return ratio <= scale if label == "false-alarm" else ratio > scale


def choose_scale(false_alarms: list[float], anomalies: list[float], low: float, high: float) -> float:
    """The scale honouring the most labels, closest to 1 among those (see the module docstring)."""
    fa = [r for r in false_alarms if math.isfinite(r)]
    an = [r for r in anomalies if math.isfinite(r)]
    candidates = {1.0, *(r * MARGIN for r in fa), *(r / MARGIN for r in an)}
    candidates = {min(high, max(low, c)) for c in candidates if c > 0}

    def merit(s: float) -> tuple[int, float]:
        return (sum(honoured("false-alarm", r, s) for r in fa) + sum(honoured("anomaly", r, s) for r in an),
                -abs(math.log(s)))
    return max(sorted(candidates), key=merit)


def label_ratios(det: Detector, segments: list[Segment], settings: Settings) -> list[float]:
    return [peak_ratio(det, s, settings) for s in segments]


def agreement(segments: list[Segment], ratios: list[float], scale: float) -> int:
    return sum(honoured(s.label.label, r, scale) for s, r in zip(segments, ratios))


def retune(det: Detector, segments: list[Segment], settings: Settings, bounds: tuple[float, float]) -> dict:
    """Set ``det.threshold_scale`` from the labels; returns what the registry records."""
    ratios = label_ratios(det, segments, settings)
    scale = choose_scale([r for s, r in zip(segments, ratios) if s.label.label == "false-alarm"],
                         [r for s, r in zip(segments, ratios) if s.label.label == "anomaly"], *bounds)
    det.threshold_scale = scale
    return {"threshold_scale": round(scale, 6), "bounds": list(bounds), "labels": len(segments),
            "honoured": agreement(segments, ratios, scale),
            "honoured_at_scale_1": agreement(segments, ratios, 1.0),
            "used": [{"feedback_id": s.label.feedback_id, "alert_id": s.label.alert_id, "label": s.label.label,
                      "start": s.label.start, "end": s.label.end, "points": s.points,
                      "peak_ratio": None if not math.isfinite(r) else round(r, 4),
                      "honoured": honoured(s.label.label, r, scale)} for s, r in zip(segments, ratios)]}
