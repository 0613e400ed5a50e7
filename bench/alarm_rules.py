"""Alarm rules tried beside the served one on the default's scores: what each would do to the honest
point-wise F1 and to floods, per dataset group. An analysis of rules not adopted, not a result.

Every rule below was picked for the reason given with it before it was measured (in scratch runs that
this script repeats), and none reads the test labels to set anything: its constants are textbook values or come from the entity's own held-out
calibration scores. The test labels are read only to score it. A rule goes into the worker only where
it gains on every group (SMD, SMAP, MSL); none of these did (docs/benchmarks.md, "SMAP and MSL per
entity stay below the 0.30 goal").

  served         the worker's default (``scoring.settings.Settings``)
  level W        the level tracker (``scoring.conditioning.Level``) over W days of the entity's clock
                 instead of the served two (why: how long a fault may last before it becomes the new
                 level is a property of the plant); ``off``: none
  level q25      the level at the lower quartile of the window's block medians rather than their median
                 (why: a departure must fill three quarters of the window, not half, before it becomes
                 the new level)
  stuck xF       also alarm while a judged channel repeats one value more than F times as long as its
                 longest run in ``train`` (why: a stuck sensor is a classic fault a forecaster misses,
                 as it predicts "no change"); channels constant for 5% of ``train`` or more are exempt
  cusum          also alarm when Page's CUSUM of the scores in threshold units (capped at 1), with
                 reference value k = 0.5 (half-way to the threshold: the textbook k for a shift to
                 it), exceeds its largest excursion on the calibration scores (why: the optimal
                 detector of a sustained moderate shift, the anomaly type SMAP/MSL label)
  quiet W        also alarm when the mean log-score over W points falls below its lowest value on
                 the calibration scores (why: a residual *too small* for too long, a signal gone
                 flat, is the other side of the innovation test)
  geo K          smoothing by the geometric (log-domain) mean over K points instead of the served
                 arithmetic mean over 5 (why: it damps the isolated spikes of a heavy-tailed score)
  mean 20        the served arithmetic mean over 20 points instead of 5 (why: longer faults)
  level shift    the level *adds* the recent median's rise to the threshold instead of scaling it by
                 the ratio (why: a heavy-tailed score's threshold is 5-1000x its median, and a ratio
                 rule multiplies that margin too: a median from 1 to 10 lifts a threshold of 20 to 200)
  trimmed cal    the held-out calibration less its far-out scores (Tukey, Q3 + 3 IQR), as the cold
                 start trims its first points (why: the held-out tail of a live history is data nobody
                 checked; SMAP E-3's threshold ran at 25-64 against normal test scores under 2)
  atom fp        the level's atom rule tolerating float32 rounding: half the calibration within
                 1e-6 of its range above the lowest score counts as an atom (why: knn's exact matches
                 of quantised telemetry come out at 1e-14..1e-9, not 0, so the median stays the scale
                 and a rise to a typical distance multiplies the threshold by hundreds: MSL M-4)
  drift recal    inside each drift period, instead of the scaled threshold, SPOT calibrated afresh on the
                 1,000 scores before the drift record and stepped on (why: a retrain would calibrate on
                 the recent scores; this serves that threshold while the retrain is pending)

    python bench/alarm_rules.py [--groups SMAP,MSL,SMD] [--data-root ../shared/data]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from unittest.mock import patch

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ceiling import entities, floods  # noqa: E402  (bench/ceiling.py, beside this script)

from detectors import artefacts  # noqa: E402
from scoring import conditioning, pipeline  # noqa: E402
from scoring.settings import Settings  # noqa: E402
from scoring.thresholds import make_threshold  # noqa: E402
from training.calibration import fit_for_serving  # noqa: E402
from training.data import load, seal  # noqa: E402
from training.evaluate import stream_offline  # noqa: E402
from training.metrics import prf  # noqa: E402
from training.quality import CachedScores, dataset_paths, model_config  # noqa: E402
from training.label_free import serving_threshold  # noqa: E402

EPS = 1e-3  # added before the log of a score (scores are in units of the mean training error)


def level_quantile(q: float):
    """``Level`` taking the ``q`` quantile of its window's block medians instead of their median, while in
    force."""
    def level(self, block):
        values = np.array([self.medians.get(b, self.base) for b in range(block - self.BLOCKS, block)])
        k = int(q * (len(values) - 1) + 0.5)
        return float(np.partition(values, k)[k])
    return patch.object(conditioning.Level, "level", level)


def geometric_smoothing():
    """``Smoother`` averaging log-scores (the geometric mean), while in force."""
    original = conditioning.Smoother.apply

    def apply(self, score, channel):
        if self.k == 1 or not len(score):
            return score, channel
        out, ch = original(self, np.log(np.asarray(score, np.float64) + EPS), channel)
        return np.exp(out) - EPS, ch
    return patch.object(conditioning.Smoother, "apply", apply)


def level_shift():
    """``Level`` moving the threshold by the recent median's rise over the calibration's, while in force."""
    original = conditioning.Level.scales

    def scales(self, ts, scores):
        out = original(self, ts, scores)
        return out._replace(scale=np.maximum(1.0, 1.0 + (out.median - self.base) / self.base_threshold))
    return patch.object(conditioning.Level, "scales", scales)


def trimmed_calibration():
    """Model calibrations trimmed of their far-out scores as the cold start's are, while in force."""
    def calibrate(self, scores, settings):
        self.set_threshold(self.smoother.smooth(scores), settings, trim=True)
    return patch.object(pipeline.EntityState, "calibrate", calibrate)


def rounding_atoms(tolerance: float = 1e-6):
    """``Level.calibrated`` counting a median within ``tolerance`` of the scores' range above their
    lowest value as an atom (the mean is then the scale), while in force."""
    original = conditioning.Level.calibrated.__func__

    def calibrated(cls, window, calibration, threshold):
        x = np.asarray(calibration, np.float64)
        if x.size:
            edge = x.min() + tolerance * (np.mean(np.abs(x)) - x.min())
            if np.median(x) <= edge:
                x = np.where(x <= edge, x.min(), x)
        return original(cls, window, x, threshold)
    return patch.object(conditioning.Level, "calibrated", classmethod(calibrated))


def recalibrated_in_drift(served, settings: Settings, points: int = 1000) -> np.ndarray:
    """The served alarms, but inside each drift period those of a threshold calibrated on the ``points``
    scores before it (as the served one was on its calibration) and stepped through the period."""
    alarm, drifting = served.alarm.copy(), served.drift_mask()
    score = np.nan_to_num(served.score, nan=0.0)
    edges = np.flatnonzero(np.diff(np.r_[0, drifting.astype(np.int8), 0]))
    for start, end in zip(edges[::2], edges[1::2]):
        before = score[max(0, start - points):start]
        if len(before) >= 100:
            threshold = make_threshold(settings.threshold, **settings.threshold_config())
            threshold.calibrate(before)
            alarm[start:end] = threshold.step(score[start:end])[1]
    return alarm


def run_lengths(x: np.ndarray) -> np.ndarray:
    """Per point and channel: how many points the value has stood unchanged, itself included."""
    out = np.ones(x.shape, np.int64)
    for i in range(1, len(x)):
        out[i] = np.where(x[i] == x[i - 1], out[i - 1] + 1, 1)
    return out


def cusum(z: np.ndarray, k: float) -> np.ndarray:
    out, s = np.zeros(len(z)), 0.0
    for i, v in enumerate(np.nan_to_num(z)):
        s = max(0.0, s + v - k)
        out[i] = s
    return out


def rolling_mean(x: np.ndarray, w: int) -> np.ndarray:
    c, out = np.cumsum(np.r_[0.0, x]), np.full(len(x), np.nan)
    if len(x) >= w:
        out[w - 1:] = (c[w:] - c[:-w]) / w
    return out


def entity_rules(data, model: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Every rule's alarms on one entity's test split, and the served scores."""
    det = CachedScores(fit_for_serving(artefacts.create(model, data.channels,
                                                        **model_config(model, False, 0, data.inputs)),
                                       data.train, progress=False))
    test = seal(data)
    base = Settings()
    served = stream_offline(det, test, base)
    out = {"served": served.alarm}
    for days in (1, 4):
        out[f"level {days}d"] = stream_offline(det, test, replace(base, level_window=days * 86400.0)).alarm
    out["level off"] = stream_offline(det, test, replace(base, level_window=0)).alarm
    with level_quantile(0.25):
        out["level q25"] = stream_offline(det, test, base).alarm
    out["mean 20"] = stream_offline(det, test, replace(base, smooth=20)).alarm  # the served mean is over 5
    for k in (5, 20):
        with geometric_smoothing():
            out[f"geo {k}"] = stream_offline(det, test, replace(base, smooth=k)).alarm
    for name, change in (("level shift", level_shift), ("trimmed cal", trimmed_calibration),
                         ("atom fp", rounding_atoms)):
        with change():
            out[name] = stream_offline(det, test, base).alarm
    out["drift recal"] = recalibrated_in_drift(served, base)
    # rules added to the served alarms, from the served scores and the entity's calibration
    judged = np.array([c not in (data.inputs or []) for c in data.channels])
    longest = run_lengths(data.train[:, judged]).max(0)
    moving = longest < 0.05 * len(data.train)
    runs = run_lengths(data.test[:, judged])[:, moving]
    for f in (2, 3):
        out[f"stuck x{f}"] = served.alarm | (runs > f * longest[moving]).any(1)
    calibration = conditioning.Smoother(base.smooth, 1).smooth(np.asarray(det.train_reconstruction, np.float64))
    if det.train_divergence is not None:  # fused as the worker fuses (sum), for models that have one
        calibration = calibration + conditioning.Smoother(base.smooth, 1).smooth(np.asarray(det.train_divergence))
    limit = serving_threshold(det, base)
    h = max(float(cusum(np.minimum(calibration / limit, 1.0), 0.5).max()), 1.0)
    out["cusum"] = served.alarm | (cusum(np.minimum(served.score / served.threshold, 1.0), 0.5) > h)
    low = rolling_mean(np.log(calibration + EPS), 50)
    low = low[np.isfinite(low)]
    quiet = rolling_mean(np.log(np.nan_to_num(served.score) + EPS), 50)
    out["quiet 50"] = served.alarm | (np.nan_to_num(quiet, nan=np.inf) < low.min()) if len(low) >= 50 \
        else served.alarm
    return out, served.score


def group(name: str, paths: dict, model: str) -> list[str]:
    names = entities(name, paths)
    rows, quieter = {}, []
    for entity in tqdm(names, desc=name, unit="entity"):
        data = load(paths[entity])
        label = data.label.astype(bool)
        rules, score = entity_rules(data, model)
        for rule, alarm in rules.items():
            rows.setdefault(rule, []).append((prf(alarm, label)["f1"], alarm.mean(), label.mean()))
        if label.any() and (~label).any() and np.nanmedian(score[label]) < 0.9 * np.nanmedian(score[~label]):
            quieter.append(entity)
    lines = [f"  labelled anomalies scoring lower than the normal points (served scores, median < 0.9x): "
             f"{len(quieter)} of {len(names)} entities {', '.join(quieter)}"]
    for rule, r in rows.items():
        r = np.array(r)
        flooded = sum(floods(rate, share) for _, rate, share in r)
        lines.append(f"  {rule:12s} F1 {r[:, 0].mean():.3f}  alarm rate {r[:, 1].mean():.3f}  "
                     f"{flooded} of {len(r)} entities over the flood line")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", default="SMAP,MSL,SMD")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--model", default="auto")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    paths = dataset_paths(args.data_root)
    for name in args.groups.split(","):
        lines = group(name, paths, args.model)
        print(f"\n{name} (model {args.model}; means over entities; honest point-wise F1)")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
