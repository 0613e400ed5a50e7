"""How far the scores of Vigil's default can go on a dataset group: the served honest F1 beside
ceilings that read the test labels. An analysis of where the remaining gap lies, not a result.

For every entity of a group (``SMD``: the 8 machines; ``SMAP``, ``MSL``: every channel file its own
entity), the default (``auto``) is trained as ``vigil bench quality`` trains it and its test split
scored by the worker's pipeline (``training.evaluate.stream_offline``). Reported, as means over the
group's entities:

  served              the honest point-wise F1 at the worker's threshold (the benchmark's figure)
  alarm or drift      every point of a ``drift`` event counted as flagged too (what an operator is told
                      is abnormal, as points): honest, another convention
  cross-fitted        the threshold calibrated on out-of-sample scores of *all* of ``train`` (K
                      contiguous folds, each scored by a model fitted on the others; the served model
                      fitted on all of it), not only its held-out tail: honest
  oracle threshold    READS TEST LABELS: a fixed threshold at the 99th percentile of the test split's
                      *normal* points' scores (a 1% false-alarm budget met exactly; no level), per
                      smoothing span: what perfect calibration of these scores could reach
  best setting        READS TEST LABELS: the best over a grid of the worker's own settings (smoothing
                      span x level tracking on/off) chosen per group with the test labels, with its mean
                      alarm rate and the number of entities whose alarm rate passes 3x their anomalous
                      share + 0.02

    python bench/ceiling.py [--groups SMAP,MSL,SMD] [--data-root ../shared/data] [--crossfit 5]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import artefacts  # noqa: E402
from scoring.settings import Settings  # noqa: E402
from scoring.windows import fill_gaps  # noqa: E402
from training.calibration import fit_for_serving, stream_scores  # noqa: E402
from training.data import load, seal  # noqa: E402
from training.evaluate import stream_offline  # noqa: E402
from training.metrics import prf  # noqa: E402
from training.quality import SMD, CachedScores, dataset_paths, model_config  # noqa: E402

SPANS = (1, 5, 20, 50, 100)  # smoothing spans of the grid (the worker's default: 5)


def entities(name: str, paths: dict) -> list[str]:
    """A dataset group's entities: the 8 SMD machines, or every SMAP/MSL channel file of the group."""
    return SMD if name == "SMD" else sorted(p for p in paths if p.startswith(name + "/"))


def floods(alarm_rate: float, share: float) -> bool:
    """Over issue 14's flood line: an alarm rate above 3x the anomalous share + 0.02."""
    return alarm_rate > 3 * share + 0.02


def f1(flag: np.ndarray, label: np.ndarray) -> float:
    return prf(flag, label)["f1"]


def crossfitted(make, train: np.ndarray, folds: int, settings: Settings):
    """A detector fitted on all of ``train`` whose calibration scores are out of sample for every part of
    it; None for a split too short for folds of 200 points (served as fitted whole, as the worker does)."""
    train = np.asarray(fill_gaps(train)[0], np.float32)
    if len(train) < 200 * folds:
        return None
    edges = np.linspace(0, len(train), folds + 1).astype(int)
    scores = []
    for a, b in zip(edges[:-1], edges[1:]):
        det = make().fit(np.concatenate([train[:a], train[b:]]), progress=False)
        scores.append(stream_scores(det, train[:b], max(a, 64), settings)[0])  # the first fold: 64 rows of context
    det = make().fit(train, progress=False)
    det.train_reconstruction, det.train_divergence = np.concatenate(scores), None
    det.calibration_source = "holdout"
    return det


def group(name: str, paths: dict, folds: int, model: str) -> dict:
    names = entities(name, paths)
    grid = [(s, lv) for s in SPANS for lv in (True, False)]
    rows = []
    for entity in tqdm(names, desc=name, unit="entity"):
        data = load(paths[entity])
        label = data.label.astype(bool)
        make = lambda: artefacts.create(model, data.channels, **model_config(model, False, 0, data.inputs))  # noqa: E731
        det = CachedScores(fit_for_serving(make(), data.train, progress=False))
        row = {"share": label.mean()}
        for span, level in grid:
            settings = replace(Settings(score_channels=True), smooth=span, **({} if level else {"level_window": 0}))
            s = stream_offline(det, seal(data), settings)
            row[(span, level)] = (f1(s.alarm, label), s.alarm.mean())
            if level and span == Settings.smooth:
                row["served"], row["alarm or drift"] = f1(s.alarm, label), f1(s.alarm | s.drift_mask(), label)
            if level:  # the scores do not depend on the level: one oracle threshold per span
                ok = np.isfinite(s.threshold)
                cut = np.quantile(s.score[ok & ~label], 0.99) if (ok & ~label).any() else np.inf
                row[("oracle", span)] = f1(ok & (s.score > cut), label)
        if folds:
            crossed = crossfitted(make, data.train, folds, Settings())
            if crossed is None:
                row["cross-fitted"] = row["served"]
            else:
                s = stream_offline(crossed, seal(data), Settings(score_channels=True))
                row["cross-fitted"] = f1(s.alarm, label)
        rows.append(row)
    mean = lambda key, i=None: float(np.mean([r[key] if i is None else r[key][i] for r in rows]))  # noqa: E731
    best = max(grid, key=lambda g: mean(g, 0))
    flooded = sum(floods(r[best][1], r["share"]) for r in rows)
    return {"entities": len(rows), "served": mean("served"), "alarm or drift": mean("alarm or drift"),
            **({"cross-fitted": mean("cross-fitted")} if folds else {}),
            **{f"oracle threshold, smoothing {s}": mean(("oracle", s)) for s in SPANS},
            "best setting": f"smoothing {best[0]}, level {'on' if best[1] else 'off'}: F1 {mean(best, 0):.3f}, "
                            f"alarm rate {mean(best, 1):.3f}, {flooded} of {len(rows)} entities over the flood line"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", default="SMAP,MSL,SMD")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--crossfit", type=int, default=5, help="folds of the cross-fitted calibration (0: skip)")
    p.add_argument("--model", default="auto")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    paths = dataset_paths(args.data_root)
    for name in args.groups.split(","):
        out = group(name, paths, args.crossfit, args.model)
        print(f"\n{name} ({out.pop('entities')} entities, model {args.model}; means over entities)")
        for k, v in out.items():
            print(f"  {k:34s} {v:.3f}" if isinstance(v, float) else f"  {k:34s} {v}")


if __name__ == "__main__":
    main()
