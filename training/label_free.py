"""How good a model is for one entity, without labels: the measures ``auto`` reports its candidates by and
the trainer promotes by (docs/retraining.md, docs/model-choice.md).

Every model of an entity is judged on the same ``Trial``: a stretch of the entity's normal history that
none of them was fitted or calibrated on, normal windows cut from it, and anomalous versions of those
windows, one set per kind: the simple injections of ``training.injections`` (spikes, level shifts,
drifts, stuck channels, broken correlations, noise) and the learned anomalies of a GenIAS generator
fitted on the entity's own training data (``detectors.genias``). Two figures per model:

- ``alarm_rate``: the share of the stretch that alarms when it is streamed through the worker's own
  pipeline (``training.evaluate.stream_offline``), as served: the model's false alarms on fresh data
  it was not calibrated on, where the stretch is normal;
- ``detection``: per kind, the share of anomalous windows whose highest fused score crosses the
  model's served threshold, less the share of the normal windows that do (a model that flags everything
  detects nothing); the figure is the mean over kinds, and their spread is kept (``detection_sd``).

Two models are compared kind by kind (``loses``): one loses when its detection is lower on average by
more than twice the standard error of the paired differences (and more than a floor), a test that
needs no assumption on how the kinds' scales compare.
"""
from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import numpy as np
import orjson

from detectors import artefacts
from detectors.base import Detector, Scores, judged_mask, sliding_windows
from scoring.codec import encode_readings
from scoring.fusion import fuse
from scoring.pipeline import Message, Pipeline
from scoring.settings import Settings
from scoring.thresholds import floor_for, make_threshold

from .data import Dataset
from .evaluate import stream_offline
from .injections import KINDS, inject

# GenIAS's literal patching swaps most channels of a window on data like SMD's and yields windows a
# detector finds *more* normal than real ones (docs/models/genias.md); patching at most two channels
# breaks the channels' relations the way a faulty sensor does.
GENERATOR_DEFAULTS = {"max_patch_channels": 2}
GENIAS = "genias"  # the kind of GenIAS's anomalies among the trial's sets


@dataclass
class Trial:
    """What the models of one entity are judged on (see the module docstring)."""

    names: list[str]
    ts: np.ndarray  # [n] the stretch's timestamps
    values: np.ndarray  # [n, C] its readings
    normal: np.ndarray  # [B, W, C] normal windows from it
    anomalies: dict[str, np.ndarray] = field(default_factory=dict)  # kind -> [B, W, C]

    @property
    def interval(self) -> float | None:
        """Seconds between its readings (the level guard's clock), None for fewer than two."""
        return float(np.median(np.diff(self.ts))) if len(self.ts) > 1 else None


def make_trial(fit_values: np.ndarray, ts: np.ndarray, values: np.ndarray, names: list[str],
               inputs: list[str] | None = None, window: int = 32, windows: int = 256, seed: int = 0,
               genias: bool = True, generator_config: dict | None = None, device: str = "cpu",
               progress: bool = False) -> Trial:
    """The trial of an entity whose models were fitted on ``fit_values`` and are judged on (``ts``,
    ``values``): up to ``windows`` normal windows of ``window`` rows (hop half a window), each kind of
    injection on the judged channels, and GenIAS's anomalies where ``genias`` (input channels restored:
    an input is never what a model judges)."""
    values = np.asarray(values, np.float32)
    normal = sliding_windows(values, window, max(1, window // 2)) if len(values) >= window else \
        np.zeros((0, window, len(names)), np.float32)
    pick = np.random.default_rng(seed).permutation(len(normal))[:windows]
    normal = np.ascontiguousarray(normal[np.sort(pick)])
    judged = judged_mask(names, inputs or [])
    judged_idx = np.arange(len(names)) if judged is None else np.flatnonzero(judged)
    std = np.asarray(fit_values, np.float64).std(0)
    anomalies = {kind: inject(normal, kind, judged_idx, std, seed=seed + k) for k, kind in enumerate(KINDS)}
    if genias and len(normal):
        gen = artefacts.create("genias", names, **{**GENERATOR_DEFAULTS, **(generator_config or {}), "window": window})
        gen.to(device)
        gen.fit(np.asarray(fit_values, np.float32), progress=progress)
        made = gen.generate(normal, seed=seed)[0]
        if judged is not None:
            made[..., ~judged] = normal[..., ~judged]
        anomalies[GENIAS] = made
    return Trial(list(names), np.asarray(ts, np.float64), values, normal, anomalies)


def serving_threshold(det: Detector, settings: Settings) -> float:
    """The threshold a worker starts with for this model: calibrated on its calibration scores, times
    the scale operators' feedback set."""
    thr = make_threshold(settings.threshold, **settings.threshold_config())
    train = Scores(det.train_reconstruction, None, det.train_divergence)
    fused = fuse(train, settings.fusion, settings.fusion_weight).astype(np.float64)
    thr.calibrate(fused)
    return max(float(thr.threshold) * det.threshold_scale, floor_for(fused))


def _flagged_share(scores_of, windows: np.ndarray, threshold: float) -> float:
    """The share of windows whose highest fused point score crosses ``threshold``."""
    return float((scores_of(windows).max(axis=1) > threshold).mean()) if len(windows) else float("nan")


def _detection(flag, trial: Trial) -> dict:
    """Per kind, the share of its anomalous windows flagged less the share of the normal windows; their
    mean and spread."""
    base = flag(trial.normal)
    by_kind = {kind: round(flag(w) - base, 4) for kind, w in trial.anomalies.items()}
    values = list(by_kind.values())
    return {"normal_flagged": round(base, 4), "detection": float(np.mean(values)),
            "detection_sd": float(np.std(values)), "detection_by_kind": by_kind}


def figures(det: Detector, trial: Trial, settings: Settings) -> dict:
    """A trained model's two label-free figures on ``trial`` (module docstring), and its highest score
    there (whether its scores stay finite)."""
    n = len(trial.ts)
    data = Dataset("trial", trial.values[:0], trial.values, np.zeros(n, np.int8), det.channels,
                   interval=trial.interval)
    stream = stream_offline(det, data, settings)
    out = {"alarm_rate": float(stream.alarm.mean()), "detection": float("nan"),
           "score_max": float(np.max(stream.score)) if n else float("nan")}
    length = int(det.info.config.get("window", trial.normal.shape[1]))
    if length <= trial.normal.shape[1] and len(trial.normal):
        thr = serving_threshold(det, settings)

        def fused(w):
            return fuse(det.score(np.ascontiguousarray(w[:, -length:])), settings.fusion, settings.fusion_weight)
        out.update(_detection(lambda w: _flagged_share(fused, w, thr), trial))
    return out


def cold_start_figures(ts: np.ndarray, values: np.ndarray, names: list[str], n_hold: int, trial: Trial,
                       settings: Settings) -> dict:
    """The same figures for the cold start, what an entity without a model has: the worker's pipeline
    without a model streams the whole history; the alarm rate is taken over its last ``n_hold`` points
    (the trial's stretch), and the trial's windows are scored from the cold start's state (and
    threshold) at the end of the part before."""
    pipe = Pipeline(settings)
    cut = len(ts) - n_hold

    def run(lo: int, hi: int) -> list[dict]:
        msgs = [Message(0, i, b"e", encode_readings("e", ts[i:min(i + 100, hi)], values[i:min(i + 100, hi)], names))
                for i in range(lo, hi, 100)]
        out = asyncio.run(pipe.process(msgs))
        return [orjson.loads(r.value) for r in out.scores]

    run(0, cut)
    ent = pipe.entities["e"]
    state, thr = ent.streaming.to_state(), ent.threshold.threshold if ent.threshold is not None else None
    held = run(cut, len(ts))
    alarms = [t is not None and x > t for m in held for x, t in zip(m["score"], m["threshold"])]
    out = {"alarm_rate": float(np.mean(alarms)) if alarms else float("nan"), "detection": float("nan")}
    if thr is not None and len(trial.normal):
        def scores_of(windows):
            rows = []
            for w in windows:  # each window scored by a copy of the cold start as it stood
                det = type(ent.streaming)(len(names)).load_state(state)
                rows.append(det.score_learn(w)[0])
            return np.array(rows)
        out.update(_detection(lambda w: _flagged_share(scores_of, w, thr), trial))
    return out


def difference(a: dict, b: dict) -> tuple[float, float]:
    """``a``'s detection less ``b``'s, kind by kind: the mean difference and its standard error (NaN where
    either was not measured, e.g. a model whose window is longer than the trial's; without kinds, the
    difference of the two means and no error)."""
    ka, kb = a.get("detection_by_kind") or {}, b.get("detection_by_kind") or {}
    d = np.array([ka[k] - kb[k] for k in ka if k in kb], np.float64)
    if not len(d):
        return float(a.get("detection", np.nan)) - float(b.get("detection", np.nan)), 0.0
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0


def loses(a: dict, b: dict, floor: float = 0.05) -> bool:
    """Whether ``a`` detects clearly less than ``b``: by more than ``floor`` and more than twice the
    standard error of the kinds' paired differences. False where the difference was not measured."""
    mean, se = difference(a, b)
    return bool(mean < -max(floor, 2.0 * se)) if not math.isnan(mean) else False


def broken(m: dict, cap: float) -> bool:
    """A model whose figures show it cannot serve: no alarm rate, or scores not finite (at ``cap``)."""
    return not math.isfinite(m.get("alarm_rate", float("nan"))) or not m.get("score_max", 0.0) < cap
