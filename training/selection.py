"""``auto``, the model Vigil trains for an entity when none is named: candidates, their label-free figures,
and the choice, recorded in the artefact (``Detector.selection``) so that `vigil models` and the
dashboard can say why this model.

Candidates: ``pca``, ``var`` and ``knn`` always; the deep detectors (``DEEP``) while the entity's time
``budget`` lasts (by default none on a CPU, a minute on a GPU: on two CPU cores they take 7 to 124 s per
entity and none scored better than these three, docs/benchmarks.md). Each is fitted as it would be
served (``training.calibration.fit_for_serving``) on the training split less its newest share, and
judged on that share (``training.label_free``: alarm rate as served, detection of injected anomalies,
and of GenIAS's learned ones where the budget allows fitting its generator, a deep model too).

The choice (``choose``): the family the entity's channels call for (``detectors.artefacts.
default_model``: PCA's learnt correlations where two or more channels are judged, the nearest normal
subsequence where one is) unless the figures show it broken (a fit that fails, scores that are not
finite), then the candidate that detects most. Why the figures do not choose by themselves: measured
on SMD, SMAP and MSL, every label-free rule tried (the best mean detection, rank aggregation over the
kinds, a paired test against the family's pick, a false-alarm guard, calibrated ensembles) chose
worse than the family rule, on every group (docs/model-choice.md): the injected anomalies are caught
by value-based models that miss the real, contextual faults. They are kept beside the choice for the
operator, and the trainer promotes by them (``training.trainer.Rule``).

The chosen candidate is fitted again on the whole training split: what serves is what `--model NAME`
would have trained, with the record of how it was chosen.
"""
from __future__ import annotations

import math
import time

import numpy as np

from detectors import artefacts
from detectors.base import Detector, resolve_device
from scoring.pipeline import SCORE_CAP
from scoring.settings import Settings
from scoring.windows import fill_gaps

from .calibration import fit_for_serving
from .label_free import Trial, broken, figures, make_trial

BASELINES = ("pca", "var", "knn")
DEEP = ("lstm_ae", "amad", "genias", "mimgan", "post")  # in order of their cost on a CPU (docs/benchmarks.md)
JUDGE = 0.2  # the newest share of the training split that the candidates are judged on
MIN_JUDGE = 200  # fewer points than this to judge on: no trial, the family's pick (as for a short split)
RULE = "the family the channels call for (pca: two or more judged channels; knn: one) unless broken"


def train_or_load(model: str, data, device: str = "auto", progress: bool = True, settings: Settings | None = None,
                  **config) -> Detector:
    """An artefact directory is loaded; a model name (``auto`` included) is trained on the dataset's train
    split (``fit_model``), its readings ``data.interval`` seconds apart."""
    if artefacts.is_artefact(model):
        return artefacts.load(model).to(device)
    return fit_model(model, data.channels, data.train, settings, device, progress, interval=data.interval, **config)


def default_budget(device: str) -> float:
    """Seconds per entity for the deep candidates: none on a CPU, a minute on a GPU."""
    return 60.0 if resolve_device(device).startswith("cuda") else 0.0


def fit_model(model: str, channels: list[str], train: np.ndarray, settings: Settings | None = None,
              device: str = "cpu", progress: bool = True, budget: float | None = None, seed: int = 0,
              interval: float | None = None, **config) -> Detector:
    """What Vigil fits for a model name: ``auto`` (``fit_auto``), or the named model as served."""
    if model == artefacts.AUTO:
        return fit_auto(channels, train, settings, device, progress, budget, seed, interval, **config)
    det = artefacts.create(model, channels, **config).to(device)
    return fit_for_serving(det, train, settings, progress=progress)


def fit_auto(channels: list[str], train: np.ndarray, settings: Settings | None = None, device: str = "cpu",
             progress: bool = True, budget: float | None = None, seed: int = 0, interval: float | None = None,
             **config) -> Detector:
    """Fit the candidates on ``train`` less its newest ``JUDGE`` share, judge them on that share (its
    readings ``interval`` seconds apart: the level guard's clock; default a minute), choose (``choose``),
    and fit the choice on all of ``train``; its ``selection`` says what was weighed."""
    settings = settings or Settings()
    t0 = time.perf_counter()
    inputs = config.get("inputs")
    prior = artefacts.default_model(channels, inputs)
    x = np.asarray(fill_gaps(train)[0], np.float32)
    n_judge = int(len(x) * JUDGE)
    record = {"rule": RULE, "prior": prior, "candidates": {}, "judged_points": 0}
    if n_judge >= MIN_JUDGE and len(x) - n_judge >= 4 * settings.window:
        fit, judged = x[:-n_judge], x[-n_judge:]
        ts = np.arange(len(judged), dtype=np.float64) * (interval or 60.0)
        budget = default_budget(device) if budget is None else budget
        trial = make_trial(fit, ts, judged, channels, inputs, settings.window, seed=seed, genias=budget > 0,
                           device=device, progress=progress)
        record["judged_points"] = n_judge
        record["candidates"] = judge_candidates(candidates(budget), channels, fit, trial, settings, device,
                                                progress, budget, seed, **config)[1]
    chosen, why = choose(record["candidates"], prior)
    record.update(chosen=chosen, why=why)
    det = artefacts.create(chosen, channels, **candidate_config(chosen, seed, config)).to(device)
    fit_for_serving(det, train, settings, progress=progress)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    det.selection = record
    return det


def candidates(budget: float) -> list[str]:
    """The candidates a budget allows: the baselines, then the deep models while it lasts."""
    return list(BASELINES) + ([m for m in DEEP if m in artefacts.available()] if budget > 0 else [])


def candidate_config(model: str, seed: int, config: dict) -> dict:
    """A candidate's configuration: the inputs where it takes them; for a deep model also the rest of
    ``config`` (preset, epochs) and a seed."""
    out = {k: v for k, v in config.items() if k == "inputs" or model in DEEP}
    if "inputs" in out and not artefacts.model_class(model).supports_inputs:
        del out["inputs"]
    if model in DEEP:
        out.setdefault("seed", seed)
    return out


def judge_candidates(names: list[str], channels: list[str], fit: np.ndarray, trial: Trial, settings: Settings,
                     device: str, progress: bool, budget: float, seed: int,
                     **config) -> tuple[dict[str, Detector], dict[str, dict]]:
    """Each candidate fitted on ``fit`` and its figures on ``trial`` (or why it could not be), with its
    fitting time; and the fitted candidates. Deep candidates start only while ``budget`` seconds of deep
    fitting remain."""
    fitted, out, spent = {}, {}, 0.0
    for name in names:
        if name in DEEP and spent >= budget:
            out[name] = {"skipped": f"over the budget of {budget:g} s"}
            continue
        t0 = time.perf_counter()
        try:
            det = artefacts.create(name, channels, **candidate_config(name, seed, config)).to(device)
            fitted[name] = fit_for_serving(det, fit, settings, progress=progress)
            out[name] = {**figures(det, trial, settings), "fit_seconds": round(time.perf_counter() - t0, 2)}
        except Exception as exc:  # noqa: BLE001 - a candidate that cannot be fitted is reported, not fatal
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        if name in DEEP:
            spent += time.perf_counter() - t0
    return fitted, out


def usable(m: dict) -> bool:
    """A candidate that was fitted and whose figures show it can serve."""
    return "error" not in m and "skipped" not in m and not broken(m, SCORE_CAP)


def choose(figures_of: dict[str, dict], prior: str) -> tuple[str, str]:
    """The model to serve, and why (see the module docstring): ``prior`` unless its figures show it
    broken, then the usable candidate that detects most (fewest alarms on a tie)."""
    mine = figures_of.get(prior)
    if mine is None:
        return prior, f"{prior}: the family the channels call for (too little training data to judge candidates)"
    if usable(mine):
        return prior, f"{prior}: the family the channels call for, and not broken on the judged data"
    ok = {n: m for n, m in figures_of.items() if usable(m)}
    if not ok:
        return prior, f"{prior}: the family the channels call for (no candidate could serve: {_reason(mine)})"
    best = max(ok, key=lambda n: (_value(ok[n]["detection"]), -_value(ok[n]["alarm_rate"])))
    return best, f"{best}: {prior} is broken on the judged data ({_reason(mine)}); {best} detects most of the rest"


def _value(v: float) -> float:
    return -math.inf if v is None or math.isnan(v) else float(v)


def _reason(m: dict) -> str:
    if "error" in m:
        return m["error"]
    if "skipped" in m:
        return m["skipped"]
    return f"alarm rate {m.get('alarm_rate')}, highest score {m.get('score_max')}"
