"""``vigil bench quality``: every model on every dataset under one protocol, written to docs/benchmarks.md.

Protocol: train on the dataset's ``train`` split with the model's ``small`` preset and seed 0; score
``test`` through the worker's pipeline (``training.evaluate.stream_offline``) with the default
settings (window 32 / hop 16 where the model does not fix its own, sum fusion, SPOT calibrated on the
training scores, incidents opened by 2 alarms in 10 points); report the honest metrics, then the
oracle and point-adjusted ones. Nothing is tuned on test labels. The sensitivity rows re-run the
same scores under other fusion and threshold settings; they show how much the honest F1 moves,
they are not a search for the best setting.

Results are appended to a JSON-lines file, one line per (model, dataset, setting), so a long run can
be stopped and resumed, and run on several machines and merged; ``write_markdown`` renders the file.
"""
from __future__ import annotations

import hashlib
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson

from detectors import artefacts
from detectors.base import Detector, Scores
from scoring.settings import Settings

from .data import Dataset, load
from .evaluate import report, stream_offline

MODELS = list(artefacts.MODELS)  # every registered model, in the registry's order
SMD = ["machine-1-6", "machine-1-7", "machine-2-1", "machine-2-2", "machine-2-7", "machine-2-8",
       "machine-3-3", "machine-3-4"]

# Sensitivity: settings other than the default, applied to the same trained model.
VARIANTS = {
    "default": {},
    "fusion=product": {"fusion": "product"},
    "spot q=1e-4": {"threshold_params": {"q": 1e-4}},
    "dspot depth=100": {"threshold": "dspot"},
    "percentile 99.5%": {"threshold": "percentile"},
    "calibration=first": {"calibration": "first"},
}
QUICK_POINTS = 3000  # --quick: 3000 points of each split, one epoch (a smoke run)


def dataset_paths(root: str | os.PathLike) -> dict[str, Path]:
    """The shared benchmark datasets under ``root``: the 8 SMD machines, SMAP and MSL."""
    root = Path(root)
    paths = {m: root / "smd" / f"{m}.npz" for m in SMD}
    paths.update({"SMAP": root / "smap_msl" / "smap", "MSL": root / "smap_msl" / "msl"})
    return {k: p for k, p in paths.items() if p.exists()}


def shorten(data: Dataset, points: int) -> Dataset:
    """Quick mode: the first ``points`` of ``train`` and ``points`` of ``test`` that start a third of
    the way before the first labelled anomaly, so that the smoke run has something to find."""
    first = int(np.argmax(data.label)) if data.label.any() else 0
    start = max(0, min(first - points // 3, len(data.test) - points))
    interp = data.interpretation
    if interp is not None:
        interp = interp[(interp[:, 1] > start) & (interp[:, 0] < start + points)].copy()
        interp[:, :2] -= start
    window = slice(start, start + points)
    return replace(data, train=data.train[:points], test=data.test[window], label=data.label[window],
                   interpretation=interp)


class CachedScores:
    """A trained detector whose window scores are remembered, so that settings that only change what
    happens after scoring (fusion, thresholds) re-run the pipeline without re-running the network."""

    def __init__(self, detector: Detector):
        self._inner, self._cache = detector, {}

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def score(self, windows: np.ndarray) -> Scores:
        key = (windows.shape, hashlib.blake2b(np.ascontiguousarray(windows).tobytes(), digest_size=16).digest())
        if key not in self._cache:
            self._cache[key] = self._inner.score(windows)
        return self._cache[key]


def model_config(model: str, quick: bool) -> dict:
    deep = model in ("lstm_ae", "post", "amad", "mimgan", "genias")
    if not deep:
        return {}
    return {"preset": "small", "epochs": 1} if quick else {"preset": "small"}


def done_keys(results: Path) -> set:
    if not results.exists():
        return set()
    return {(r["model"], r["dataset"], r["variant"]) for r in map(orjson.loads, results.read_bytes().splitlines()) if r}


def run(models: list[str], datasets: dict[str, Path], results: Path, quick: bool = False, device: str = "auto",
        variants: list[str] | None = None, progress: bool = True) -> None:
    """Train, score and measure every (model, dataset) pair missing from ``results``."""
    variants = variants or list(VARIANTS)
    results.parent.mkdir(parents=True, exist_ok=True)
    for ds_name, path in datasets.items():
        data = None
        for model in models:
            done = done_keys(results)
            todo = [v for v in variants if (model, ds_name, v) not in done]
            if not todo:
                continue
            if data is None:
                data = load(path)
                data.name = ds_name
                if quick:
                    data = shorten(data, QUICK_POINTS)
            t0 = time.perf_counter()
            det = artefacts.create(model, data.channels, **model_config(model, quick)).to(device)
            det.fit(data.train, progress=progress)
            train_s = time.perf_counter() - t0
            cached = CachedScores(det)
            for v in todo:
                if v == "fusion=product" and det.train_divergence is None:
                    continue  # the same scores as the default: no divergence to fuse
                t1 = time.perf_counter()
                settings = replace(Settings(device=device, score_channels=True), **VARIANTS[v])
                r = report(stream_offline(cached, data, settings), data, settings.top_k)
                row = {**r, "model": model, "dataset": ds_name, "variant": v, "quick": quick, "device": det.device,
                       "train_points": int(len(data.train)), "train_seconds": round(train_s, 1),
                       "score_seconds": round(time.perf_counter() - t1, 1), "host": platform.node()}
                with results.open("ab") as f:
                    f.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
                print(f"{model:8s} {ds_name:12s} {v:18s} point F1 {r['point']['f1']:.3f}  "
                      f"affiliation F1 {r['affiliation']['f1']:.3f}  AUC-PR {r['auc_pr']:.3f}  "
                      f"VUS-PR {r['vus_pr']:.3f}", flush=True)


# ---- the markdown ---------------------------------------------------------------------------------
BEGIN, END = "<!-- quality:begin (written by vigil bench quality) -->", "<!-- quality:end -->"


def _rows(results: Path) -> list[dict]:
    latest = {}
    for line in results.read_bytes().splitlines():
        if line:
            r = orjson.loads(line)
            latest[(r["model"], r["dataset"], r["variant"])] = r
    return list(latest.values())


def _mean(values) -> float:
    """Mean of the known values (JSON writes NaN as null)."""
    known = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(known)) if known else float("nan")


def _table(rows, models, datasets, value, fmt="{:.3f}") -> list[str]:
    by = {(r["model"], r["dataset"]): r for r in rows}
    out = ["| model | " + " | ".join(datasets) + " | mean |", "|---" * (len(datasets) + 2) + "|"]
    for m in models:
        vals = [value(by[(m, d)]) if (m, d) in by else None for d in datasets]
        vals = [None if v is None or np.isnan(v) else v for v in vals]
        mean = fmt.format(_mean(vals)) if all(v is not None for v in vals) else "–"
        out.append(f"| {m} | " + " | ".join("–" if v is None else fmt.format(v) for v in vals) + f" | {mean} |")
    return out


def markdown(results: Path, command: str) -> str:
    rows = _rows(results)
    default = [r for r in rows if r["variant"] == "default"]
    models = [m for m in MODELS if any(r["model"] == m for r in default)]
    order = SMD + ["SMAP", "MSL"]
    datasets = [d for d in order if any(r["dataset"] == d for r in default)]
    datasets += sorted({r["dataset"] for r in default} - set(datasets))
    quick = any(r["quick"] for r in default)
    devices = sorted({r["device"] for r in default})
    lines = [BEGIN, "## Detection quality", "",
             f"Generated by `{command}` from `{results}`" + (" (**quick mode: "
             f"{QUICK_POINTS} points of each split, one epoch — a smoke run, not a result**)" if quick else "") + f"; "
             f"devices: {', '.join(devices)}.", "",
             "Protocol: each model is trained on the dataset's `train` split (`small` preset, seed 0) and the "
             "`test` split is scored by the worker's own pipeline (`training/evaluate.py`: window 32 / hop 16 "
             "unless the model fixes its window, sum fusion, SPOT (q = 1e-3, level 0.98) calibrated on the "
             "training scores, incidents opened by 2 alarms within 10 points). No setting was chosen on test "
             "labels. SMAP and MSL are the usual concatenations of all channel files of a spacecraft, "
             "one model each. Metrics: `training/metrics.py`, `training/range_metrics.py`.", "",
             "### Honest: point-wise F1 at the online threshold (what the operator's alarms score)", ""]
    lines += _table(default, models, datasets, lambda r: r["point"]["f1"])
    lines += ["", "Alarm rate at the online threshold (share of test points) beside the share of anomalous points:", ""]
    lines += _table(default, models, datasets, lambda r: r["alarm_rate"], "{:.4f}")
    lines += ["", "| | " + " | ".join(datasets) + " |", "|---" * (len(datasets) + 1) + "|",
              "| anomalous share | " + " | ".join(
                  f"{next(r['anomalous_points'] / r['points'] for r in default if r['dataset'] == d):.4f}"
                  for d in datasets) + " |"]
    lines += ["", "### Honest: affiliation F1 of the alarms", ""]
    lines += _table(default, models, datasets, lambda r: r["affiliation"]["f1"])
    lines += ["", "### Honest: incident-level F1 (incidents vs labelled events)", ""]
    lines += _table(default, models, datasets, lambda r: r["incident"]["f1"])
    lines += ["", "### Threshold-free: AUC-PR", ""]
    lines += _table(default, models, datasets, lambda r: r["auc_pr"])
    lines += ["", "### Threshold-free: VUS-PR", ""]
    lines += _table(default, models, datasets, lambda r: r["vus_pr"])
    smd = [d for d in datasets if d.startswith("machine-")]
    if smd:
        lines += ["", "### Localisation (SMD interpretation labels): HitRate@100%", ""]
        lines += _table(default, models, smd, lambda r: r.get("localisation", {}).get("hit@100", np.nan))
        lines += ["", "### Localisation: NDCG@100%", ""]
        lines += _table(default, models, smd, lambda r: r.get("localisation", {}).get("ndcg@100", np.nan))
        lines += ["", "### Localisation: HitRate@150% / NDCG@150% / cell F1 (top-3 channels at alarm points), "
                      "mean over SMD machines", "", "| model | HitRate@150% | NDCG@150% | cell F1 |", "|---|---|---|---|"]
        for m in models:
            loc = [r["localisation"] for r in default if r["model"] == m and r["dataset"] in smd and "localisation" in r]
            if loc:
                lines.append(f"| {m} | {_mean(x['hit@150'] for x in loc):.3f} | "
                             f"{_mean(x['ndcg@150'] for x in loc):.3f} | {_mean(x['cell']['f1'] for x in loc):.3f} |")
    lines += ["", "### Inflated, for comparison with papers only", "",
              "Oracle best F1 (threshold chosen on the test labels themselves):", ""]
    lines += _table(default, models, datasets, lambda r: r["oracle_best_f1"]["f1"])
    lines += ["", "Point-adjusted F1 of the online alarms (a whole event counts as found after one hit):", ""]
    lines += _table(default, models, datasets, lambda r: r["point_adjusted_f1"]["f1"])
    lines += ["", "### Sensitivity of the honest point-wise F1 to settings (mean over datasets)", "",
              "Each row re-runs the pipeline on the same trained model's scores with one setting changed.", "",
              "| model | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
    for m in models:
        cells = []
        for v in VARIANTS:
            vals = [r["point"]["f1"] for r in rows if r["model"] == m and r["variant"] == v and r["dataset"] in datasets]
            cells.append(f"{_mean(vals):.3f} ({len(vals)})" if vals else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    with_div = [m for m in models if any(r["model"] == m and r["variant"] == "fusion=product" for r in rows)]
    lines += ["", "In parentheses: datasets measured. `fusion=product` exists only for models with a divergence "
              f"signal ({', '.join(with_div) or 'none here'}).", "", "### Cost", "",
              "| model | mean training seconds | device |", "|---|---|---|"]
    for m in models:
        rs = [r for r in default if r["model"] == m]
        lines.append(f"| {m} | {_mean(r['train_seconds'] for r in rs):.1f} | "
                     f"{', '.join(sorted({r['device'] for r in rs}))} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_markdown(results: Path, doc: Path, command: str, reading: str = "") -> None:
    """Replace the quality section of ``doc`` (or append it), keeping the rest of the file."""
    section = markdown(results, command)
    if reading:
        section = section.replace(END, reading.rstrip() + "\n" + END)
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section.rstrip("\n") + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)
