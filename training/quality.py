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
from scoring.thresholds import DEFAULTS as THRESHOLD_DEFAULTS

from .calibration import fit_for_serving
from .data import Dataset, load, seal
from .evaluate import mean_of, mean_report, report, stream_offline
from .selection import fit_model

MODELS = list(artefacts.CHOICES)  # Vigil's default (auto), then every registered model in the registry's order
SMD = ["machine-1-6", "machine-1-7", "machine-2-1", "machine-2-2", "machine-2-7", "machine-2-8",
       "machine-3-3", "machine-3-4"]

# Sensitivity: settings other than the default, applied to the same trained model.
VARIANTS = {
    "default": {},
    "smooth=1": {"smooth": 1},
    "level 1d": {"level_window": 86400.0},  # the level guard's window (default two days, docs/deploy.md)
    "level 4d": {"level_window": 4 * 86400.0},
    "no level": {"level_window": 0},
    "spot q=1e-3": {"threshold_params": {"q": 1e-3}},
    "fusion=product": {"fusion": "product"},
    "calibration=first": {"calibration": "first"},
}
# PCA as Vigil served it before the calibration work (fitted on the whole train split, calibrated on
# its own training scores, SPOT q = 1e-3 on raw scores, per-channel floor 1e-6): the baseline the
# default must beat, measured in the same run.
PREVIOUS = "pca (previous defaults)"
PREVIOUS_SETTINGS = {"smooth": 1, "level_window": 0, "threshold_params": {"q": 1e-3}}
# Baselines measured beside each PCA run: name -> (PCA config, settings changed from the default,
# whether it judges only the channels that are not the dataset's inputs, as today's PCA does).
SPE_ONLY = "pca (SPE only, no T^2)"
ALL_CHANNELS = "pca (inputs judged too)"
BASELINES = {PREVIOUS: ({"min_scale": 1e-6, "t2": 0.0}, PREVIOUS_SETTINGS, False),
             SPE_ONLY: ({"t2": 0.0}, {}, True),
             ALL_CHANNELS: ({}, {}, False)}
# 3: the level guard's window in time (two days of the entity's clock; SMD a minute a point, SMAP and MSL
# too, as none is stated); 2: SMAP and MSL per entity, held-out calibration, conditioned scores; 1: before
PROTOCOL = 3
SEEDS = (0, 1, 2)  # deep models: every seed is a row; tables show mean ± sd
DEEP = ("lstm_ae", "post", "amad", "mimgan", "genias")
QUICK_POINTS = 3000  # --quick: 3000 points of each split, one epoch (a smoke run)


def dataset_paths(root: str | os.PathLike) -> dict[str, Path]:
    """The shared benchmark datasets under ``root``: the 8 SMD machines, and every SMAP and MSL channel
    file as an entity of its own (``SMAP/A-1``, ...), as a stream deploys them."""
    root = Path(root)
    paths = {m: root / "smd" / f"{m}.npz" for m in SMD}
    for craft in ("SMAP", "MSL"):
        for f in sorted((root / "smap_msl" / craft.lower()).glob("*.npz")):
            paths[f"{craft}/{f.stem}"] = f
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


def model_config(model: str, quick: bool, seed: int = 0, inputs: list[str] | None = None,
                 preset: str = "small") -> dict:
    """The configuration a model is measured with: the preset (``small`` unless a GPU run asks for
    ``paper``) and the seed for deep models, and the dataset's input channels for a model that can leave
    them out of its judgement."""
    config = {} if model not in DEEP else (
        {"preset": preset, "epochs": 1, "seed": seed} if quick else {"preset": preset, "seed": seed})
    if inputs and artefacts.takes_inputs(model):
        config["inputs"] = list(inputs)
    return config


def done_keys(results: Path) -> set:
    if not results.exists():
        return set()
    return {(r["model"], r["dataset"], r["variant"], r.get("seed", 0))
            for r in map(orjson.loads, results.read_bytes().splitlines()) if r and r.get("protocol") == PROTOCOL}


def _write(results: Path, row: dict) -> None:
    with results.open("ab") as f:
        f.write(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def run(models: list[str], datasets: dict[str, Path], results: Path, quick: bool = False, device: str = "auto",
        variants: list[str] | None = None, progress: bool = True, seeds: tuple[int, ...] = SEEDS,
        preset: str = "small") -> None:
    """Train, score and measure every (model, dataset, seed) missing from ``results``. A ``preset`` other
    than ``small`` belongs in a results file of its own: rows are resumed by (model, dataset, variant,
    seed)."""
    variants = variants or list(VARIANTS)
    results.parent.mkdir(parents=True, exist_ok=True)
    for ds_name, path in datasets.items():
        data = None
        for model in models:
            for seed in (seeds if model in DEEP else (0,)):
                done = done_keys(results)
                todo = [v for v in variants if (model, ds_name, v, seed) not in done]
                baselines = [b for b in BASELINES if model == "pca" and "default" in variants
                             and (b, ds_name, "default", 0) not in done]
                if not todo and not baselines:
                    continue
                if data is None:
                    data = load(path)
                    data.name = ds_name
                    if quick:  # reads the labels to find a window with anomalies: a smoke run, not a result
                        data = shorten(data, QUICK_POINTS)
                data = seal(data)  # report() unseals, after scoring
                base = {"dataset": ds_name, "quick": quick, "protocol": PROTOCOL, "seed": seed, "preset": preset,
                        "train_points": int(len(data.train)), "host": platform.node()}
                t0 = time.perf_counter()
                config = model_config(model, quick, seed, data.inputs, preset)
                base["inputs"] = len(config.get("inputs", []))
                det = fit_model(model, data.channels, data.train, device=device, progress=progress,
                                interval=data.interval, **config)
                train_s = time.perf_counter() - t0
                cached = CachedScores(det)
                for v in todo:
                    if v == "fusion=product" and det.train_divergence is None:
                        continue  # the same scores as the default: no divergence to fuse
                    t1 = time.perf_counter()
                    settings = replace(Settings(device=device, score_channels=True), **VARIANTS[v])
                    r = report(stream_offline(cached, data, settings), data, settings.top_k)
                    _write(results, {**r, **base, "model": model, "trained": det.info.name, "variant": v,
                                     "device": det.device, "selection": det.selection,
                                     "calibration_source": det.calibration_source, "train_seconds": round(train_s, 1),
                                     "score_seconds": round(time.perf_counter() - t1, 1)})
                    print(f"{model:8s} {ds_name:12s} {v:18s} seed {seed} point F1 {r['point']['f1']:.3f}  "
                          f"alarms {r['alarm_rate']:.4f}  AUC-PR {r['auc_pr']:.3f}  VUS-PR {r['vus_pr']:.3f}",
                          flush=True)
                for name in baselines:
                    config, changed, judges_inputs = BASELINES[name]
                    if judges_inputs and data.inputs:
                        config = {**config, "inputs": list(data.inputs)}
                    old = artefacts.create("pca", data.channels, **config).to(device)
                    if name == PREVIOUS:  # fitted on all of train, calibrated on its own training scores
                        old.fit(data.train, progress=False)
                    else:
                        fit_for_serving(old, data.train, progress=False)
                    settings = replace(Settings(device=device, score_channels=True), **changed)
                    r = report(stream_offline(old, data, settings), data, settings.top_k)
                    _write(results, {**r, **base, "inputs": len(config.get("inputs", [])), "model": name,
                                     "variant": "default", "device": old.device,
                                     "calibration_source": old.calibration_source, "train_seconds": 0.0,
                                     "score_seconds": 0.0})


# ---- the markdown ---------------------------------------------------------------------------------
BEGIN, END = "<!-- quality:begin (written by vigil bench quality) -->", "<!-- quality:end -->"


def _rows(results: Path, protocol: int = PROTOCOL) -> list[dict]:
    latest = {}
    for line in results.read_bytes().splitlines():
        if line:
            r = orjson.loads(line)
            if r.get("protocol", 1) == protocol:
                latest[(r["model"], r["dataset"], r["variant"], r.get("seed", 0))] = r
    return list(latest.values())


def group(dataset: str) -> str:
    """The column a dataset belongs to: an SMD machine, or the spacecraft of a SMAP/MSL entity."""
    return dataset.split("/", 1)[0]


def aggregate(rows: list[dict]) -> list[dict]:
    """Per (model, variant, column): seeds averaged per entity (their F1 spread kept as ``f1_sd``), then
    entities averaged per spacecraft (``entities`` counts them)."""
    by_entity: dict[tuple, list] = {}
    for r in rows:
        by_entity.setdefault((r["model"], r["variant"], r["dataset"]), []).append(r)
    seeds = []
    for rs in by_entity.values():
        row = mean_report(rs)
        row["seeds"], row["f1_sd"] = len(rs), float(np.std([x["point"]["f1"] for x in rs]))
        seeds.append(row)
    by_group: dict[tuple, list] = {}
    for r in seeds:
        by_group.setdefault((r["model"], r["variant"], group(r["dataset"])), []).append(r)
    out = []
    for (model, variant, col), rs in by_group.items():
        row = mean_report(rs)
        row.update(dataset=col, entities=len(rs), seeds=min(r["seeds"] for r in rs))
        out.append(row)
    return out


def _table(rows, models, datasets, value, fmt="{:.3f}", sd=False) -> list[str]:
    by = {(r["model"], r["dataset"]): r for r in rows}
    out = ["| model | " + " | ".join(datasets) + " | mean |", "|---" * (len(datasets) + 2) + "|"]
    for m in models:
        vals = [value(by[(m, d)]) if (m, d) in by else None for d in datasets]
        vals = [None if v is None or np.isnan(v) else v for v in vals]
        mean = fmt.format(mean_of(vals)) if all(v is not None for v in vals) else "–"
        cells = []
        for d, v in zip(datasets, vals):
            cell = "–" if v is None else fmt.format(v)
            if sd and v is not None and by[(m, d)].get("seeds", 1) > 1:
                cell += f" ± {by[(m, d)]['f1_sd']:.3f}"
            cells.append(cell)
        out.append(f"| {m} | " + " | ".join(cells) + f" | {mean} |")
    return out


def _share(row: dict) -> float:
    """A row's anomalous share (for a group: the mean over its entities; older rows: from the counts)."""
    return row.get("anomalous_share", row["anomalous_points"] / max(row["points"], 1))


def _groups(rows: list[dict], models: list[str], datasets: list[str]) -> list[str]:
    """Per model: the honest F1 of SMD (mean over machines), SMAP and MSL, their mean, and the floods."""
    by = {(r["model"], r["dataset"]): r for r in rows}
    smd = [d for d in datasets if d.startswith("machine-")]
    groups = ([("SMD", smd)] if smd else []) + [(g, [g]) for g in ("SMAP", "MSL") if g in datasets]
    out = ["| model | " + " | ".join(g for g, _ in groups) + " | mean of the groups | floods |",
           "|---" * (len(groups) + 3) + "|"]
    for m in models:
        if not all((m, d) in by for _, ds in groups for d in ds):
            continue
        f1 = [mean_of(by[(m, d)]["point"]["f1"] for d in ds) for _, ds in groups]
        flooded = [d for _, ds in groups for d in ds if by[(m, d)]["alarm_rate"] > 3 * _share(by[(m, d)]) + 0.02]
        out.append(f"| {m} | " + " | ".join(f"{v:.3f}" for v in f1) + f" | {mean_of(f1):.3f} | "
                   + (", ".join(flooded) or "none") + " |")
    return out


PUBLISHED = [
    ("GenIAS (paper), best F1 with an oracle threshold", {"SMD": "0.528 (28 machines)", "MSL": "0.579", "SMAP": "0.620"}),
    ("\"Quo vadis\" PCA baseline, oracle F1", {"SMD": "0.572", "MSL": "0.426", "SMAP": "0.387"}),
    ("TSB-AD-M best VUS-PR (threshold-free, its own benchmark)", {"SMD": "0.31 (all of TSB-AD-M)", "MSL": "", "SMAP": ""}),
]


def _alarm_everything(raw: list[dict], datasets: list[str]) -> str:
    """The table row of a 'detector' that alarms on every point: per entity F1 = 2p / (1 + p) for an
    anomalous share p, averaged per column like the models' rows."""
    share = {r["dataset"]: r["anomalous_points"] / r["points"] for r in raw if r["points"]}
    cols = []
    for d in datasets:
        f1 = [2 * p / (1 + p) for name, p in share.items() if group(name) == d]
        cols.append(mean_of(f1))
    cells = ["–" if np.isnan(v) else f"{v:.3f}" for v in cols]
    mean = "–" if any(np.isnan(v) for v in cols) else f"{mean_of(cols):.3f}"
    return "| (alarm on every point: no model) | " + " | ".join(cells) + f" | {mean} |"


def markdown(results: Path, command: str) -> str:
    raw = _rows(results)
    all_default = aggregate([r for r in raw if r["variant"] == "default"])
    rows = aggregate(raw)
    default = all_default
    present = {r["model"] for r in default}
    models = [m for m in [*BASELINES, *MODELS] if m in present]
    order = SMD + ["SMAP", "MSL"]
    datasets = [d for d in order if any(r["dataset"] == d for r in default)]
    datasets += sorted({r["dataset"] for r in default} - set(datasets))
    quick = any(r["quick"] for r in default)
    devices = sorted({r["device"] for r in default})
    presets = sorted({r.get("preset", "small") for r in raw if r["model"] in DEEP}) or ["small"]
    seeds = sorted({r.get("seed", 0) for r in raw if r["model"] in DEEP}) or list(SEEDS)
    entities = {d: max(r["entities"] for r in default if r["dataset"] == d) for d in datasets}
    lines = [BEGIN, "## Detection quality", "",
             f"Generated by `{command}` from `{results}`" + (" (**quick mode: "
             f"{QUICK_POINTS} points of each split, one epoch — a smoke run, not a result**)" if quick else "") + f"; "
             f"devices: {', '.join(devices)}.", "",
             "Protocol: each model is fitted on the dataset's `train` split less its last 20%, which is held "
             "out and scored as the stream scores it to calibrate the threshold (`training/calibration.py`); "
             "the `test` split is scored by the worker's own pipeline (`training/evaluate.py`: window 32 / hop 16 "
             "unless the model fixes its window, sum fusion, scores averaged over 5 points, SPOT (q = 1e-2, "
             f"level 0.98 or lower to fit at least {THRESHOLD_DEFAULTS['spot']['min_peaks']} peaks) on the held-out scores, its scale following the "
             "entity's recent level over two days of its clock (SMD: a reading a minute, as documented; SMAP and "
             "MSL, which state none: a minute too, `training.evaluate.DEFAULT_INTERVAL`), incidents "
             "opened by 2 alarms within 10 points). Deep models: "
             f"{' and '.join(f'`{p}`' for p in presets)} preset, seeds {', '.join(map(str, seeds))} "
             "(mean ± sd of the point-wise F1). SMAP and MSL: every channel file "
             f"is an entity with a model of its own ({entities.get('SMAP', 0)} and {entities.get('MSL', 0)} "
             "entities); their columns are means over entities. `" + PREVIOUS + "` is PCA as served before this "
             "protocol (fitted on all of `train`, calibrated on its own training scores, SPOT q = 1e-3 on raw "
             "scores, no T^2), and `" + SPE_ONLY + "` today's PCA without Hotelling's T^2 (`detectors/pca.py`), both "
             "measured in the same run. `auto` is what Vigil trains when no model is named "
             "(`training/selection.py`): pca, var and knn fitted and judged without labels on the newest fifth of "
             "`train`, and the family the channels call for served unless broken: `pca` where two or more channels "
             "are judged (every SMD machine), `knn` where one is (every SMAP/MSL channel file, whose other columns "
             "are commands); docs/models.md lists each entity's choice. "
             "No setting is fitted to test labels; where a default was compared on them, the reading below says so. "
             "Metrics: "
             "`training/metrics.py`, `training/range_metrics.py`.", "",
             "### Honest point-wise F1 by dataset group", "",
             "SMD: the mean over its 8 machines; SMAP and MSL: the mean over their channel files. *Floods*: SMD "
             "machines whose alarm rate exceeds 3x their anomalous share + 0.02, and the spacecraft whose mean "
             "alarm rate exceeds 3x its mean anomalous share + 0.02.", ""]
    lines += _groups(default, models, datasets)
    lines += ["", "### Honest: point-wise F1 at the online threshold (what the operator's alarms score)", ""]
    lines += _table(default, models, datasets, lambda r: r["point"]["f1"], sd=True)
    lines.append(_alarm_everything(raw, datasets))
    lines += ["", "Last row: no model at all, every test point in alarm (precision = the anomalous share, recall "
              "1). It is the floor a point-wise F1 must be read against: where anomalies fill a large share of "
              "the test period, as on many SMAP/MSL channel files, a flood scores well."]
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
                lines.append(f"| {m} | {mean_of(x['hit@150'] for x in loc):.3f} | "
                             f"{mean_of(x['ndcg@150'] for x in loc):.3f} | {mean_of(x['cell']['f1'] for x in loc):.3f} |")
    lines += ["", "### Inflated, for comparison with papers only", "",
              "Oracle best F1 (threshold chosen on the test labels themselves):", ""]
    lines += _table(default, models, datasets, lambda r: r["oracle_best_f1"]["f1"])
    lines += ["", "Point-adjusted F1 of the online alarms (a whole event counts as found after one hit):", ""]
    lines += _table(default, models, datasets, lambda r: r["point_adjusted_f1"]["f1"])
    lines += ["", "Published figures, each under its own protocol (not comparable with the honest tables above; "
              "the oracle row above is the closest to the first two):", "", "| source | SMD | SMAP | MSL |",
              "|---|---|---|---|"]
    lines += [f"| {src} | {f['SMD']} | {f['SMAP']} | {f['MSL']} |" for src, f in PUBLISHED]
    lines += ["", "### Sensitivity of the honest point-wise F1 to settings (mean over the columns above)", "",
              "Each row re-runs the pipeline on the same trained model's scores with one setting changed.", "",
              "| model | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
    for m in models:
        cells = []
        for v in VARIANTS:
            vals = [r["point"]["f1"] for r in rows if r["model"] == m and r["variant"] == v and r["dataset"] in datasets]
            cells.append(f"{mean_of(vals):.3f} ({len(vals)})" if vals else "–")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    with_div = [m for m in models if any(r["model"] == m and r["variant"] == "fusion=product" for r in rows)]
    lines += ["", "In parentheses: columns measured. `fusion=product` exists only for models with a divergence "
              f"signal ({', '.join(with_div) or 'none here'})."]
    old = [r for r in _rows(results, protocol=1) if r["variant"] == "default" and r["dataset"] in ("SMAP", "MSL")]
    if old:
        lines += ["", "Footnote, the concatenated form (previous protocol: all channel files of a spacecraft as one "
                      "entity, fitted on all of `train`, SPOT q = 1e-3): point-wise F1 "
                  + "; ".join(f"{r['model']} {r['dataset']} {r['point']['f1']:.3f}"
                              for r in sorted(old, key=lambda r: (r["dataset"], r["model"]))) + "."]
    previous = aggregate([r for r in _rows(results, PROTOCOL - 1) if r["variant"] == "default"
                          and r["model"] in MODELS and r["model"] not in present])
    if previous:
        was = [m for m in MODELS if any(r["model"] == m for r in previous)]
        lines += ["", f"### Not re-run under this protocol: {', '.join(was)} (protocol {PROTOCOL - 1})", "",
                  "Honest point-wise F1 as last measured, under the previous protocol: the level guard's window "
                  "was the calibration's length in points (500..5000), not two days of the entity's clock. Their "
                  "scores do not depend on it, their alarms do; re-running them takes hours on a CPU "
                  f"(`vigil bench quality --models {','.join(was)}`).", ""]
        lines += _groups(previous, was, datasets)
        lines += [""] + _table(previous, was, datasets, lambda r: r["point"]["f1"], sd=True)
    lines += ["", "### Cost", "", "| model | mean training seconds per entity | device |", "|---|---|---|"]
    for m in models:
        rs = [r for r in default if r["model"] == m]
        lines.append(f"| {m} | {mean_of(r['train_seconds'] for r in rs):.1f} | "
                     f"{', '.join(sorted({r['device'] for r in rs}))} |")
    lines.append(END)
    return "\n".join(lines) + "\n"


CHOICES_BEGIN, CHOICES_END = "<!-- choices:begin (written by vigil bench quality) -->", "<!-- choices:end -->"


def choices(results: Path, command: str) -> str:
    """docs/models.md's section: the model ``auto`` chose for every entity of the benchmark, why, and each
    candidate's label-free figures (``training.selection``), from the ``auto`` rows of ``results``."""
    rows = [r for r in _rows(results) if r["model"] == artefacts.AUTO and r["variant"] == "default"]
    order = {d: i for i, d in enumerate(SMD)}
    rows.sort(key=lambda r: (group(r["dataset"]) != r["dataset"], group(r["dataset"]),
                             order.get(r["dataset"], 0), r["dataset"]))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["trained"]] = counts.get(r["trained"], 0) + 1
    lines = [CHOICES_BEGIN, "", f"Generated by `{command}` from `{results}` (its `auto` rows): "
             + ", ".join(f"{m} for {n} entities" for m, n in sorted(counts.items())) + ". Each candidate's "
             "figures on the newest fifth of the entity's `train`: *detection*, the mean over the six injected "
             "kinds of the share of anomalous windows flagged less the share of normal ones, and the *alarm* "
             "rate as served (`training/label_free.py`); the honest test F1 of the served model is in "
             "docs/benchmarks.md. *Family rule*: pca where two or more channels are judged, knn where one is, "
             "unless its figures show it broken (`training/selection.py`; docs/model-choice.md says why).", "",
             "| entity | served | why | pca: detection / alarms | var | knn |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        sel = r.get("selection") or {}
        cand = sel.get("candidates", {})

        def cell(m):
            c = cand.get(m)
            if not c:
                return "–"
            if "detection" not in c:
                return c.get("error") or c.get("skipped") or "–"
            return f"{c['detection']:.2f} / {c['alarm_rate']:.3f}"
        why = (sel.get("why") or "").split(": ", 1)[-1]
        if r["trained"] == sel.get("prior"):  # the family rule: say so shortly, and when nothing was judged
            why = "family rule" + (" (train too short to judge candidates)" if not cand else "")
        lines.append(f"| {r['dataset']} | {r['trained']} | {why} | " + " | ".join(cell(m) for m in ("pca", "var", "knn"))
                     + " |")
    lines.append(CHOICES_END)
    return "\n".join(lines) + "\n"


def _replace_section(doc: Path, section: str, begin: str, end: str, empty: str) -> None:
    """Replace the text between ``begin`` and ``end`` in ``doc`` with ``section`` (or append it)."""
    text = doc.read_text() if doc.exists() else empty
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)


def write_markdown(results: Path, doc: Path, command: str, reading: str = "", models_doc: Path | None = None) -> None:
    """Replace the quality section of ``doc`` (or append it), keeping the rest of the file; and, where
    ``models_doc`` is given and the results hold ``auto`` rows, its section of ``auto``'s choices."""
    section = markdown(results, command)
    if reading:
        section = section.replace(END, reading.rstrip() + "\n" + END)
    _replace_section(doc, section, BEGIN, END, "# Benchmarks\n")
    if models_doc is not None and any(r["model"] == artefacts.AUTO for r in _rows(results)):
        _replace_section(models_doc, choices(results, command), CHOICES_BEGIN, CHOICES_END, "# Detectors\n")
