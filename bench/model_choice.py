"""Choosing a model per entity without labels: what each rule would have served on SMD, SMAP and MSL, beside
the family rule that ``auto`` serves. An analysis of rules not adopted, not a result (docs/model-choice.md).

For every entity, as ``training.selection.fit_auto`` does: the candidates (pca, var, knn) are fitted on the
training split less its newest fifth and judged on that fifth (``training.label_free``: alarm rate as served,
detection of the injected anomalies of ``training.injections``, and of GenIAS's with ``--genias``); each is
also fitted on the whole split and its test split scored by the worker's pipeline, for its honest
point-wise F1. The test labels are read only to score; no rule reads them. Rules, each picking one
candidate per entity from the label-free figures alone:

  family          auto's rule: pca where two or more channels are judged, knn where one is
  detection       the highest mean detection over the kinds of anomaly
  borda           the best mean rank over the kinds (Borda count; Goswami et al., ICLR 2023, aggregate ranks)
  paired          the family's pick unless another detects more by over twice the standard error of the
                  kinds' paired differences (the trainer's test, ``training.label_free.loses``, turned round)
  alarm guard     the family's pick unless it alarms on over 5% of the judged stretch (five times SPOT's
                  q = 1%), then the candidate that alarms least
  detection - alarms   the highest mean detection less the alarm rate
  ensemble        not a choice: the mean of the three candidates' scores, each divided by the 99th
                  percentile of its held-out calibration scores (a calibrated ensemble), thresholded as
                  any model (SPOT on the same held-out scores, smoothing, level)
  oracle          READS TEST LABELS: the candidate with the best test F1, per entity: the headroom

    python bench/model_choice.py [--groups SMD,SMAP,MSL] [--genias] [--data-root ../shared/data]
                                 [--results bench/results/model_choice.jsonl]
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import orjson
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ceiling import entities  # noqa: E402  (bench/ceiling.py, beside this script)

from detectors import artefacts  # noqa: E402
from detectors.base import Scores  # noqa: E402
from scoring.settings import Settings  # noqa: E402
from scoring.windows import fill_gaps  # noqa: E402
from training.calibration import fit_for_serving  # noqa: E402
from training.data import load, seal  # noqa: E402
from training.evaluate import interval_of, stream_offline  # noqa: E402
from training.label_free import difference, figures, make_trial  # noqa: E402
from training.metrics import auc_pr, prf  # noqa: E402
from training.quality import CachedScores, dataset_paths, model_config  # noqa: E402
from training.selection import BASELINES, JUDGE  # noqa: E402

RULES = ("family", "detection", "borda", "paired", "alarm guard", "detection - alarms", "ensemble", "oracle")


class Ensemble:
    """The mean of fitted members' scores, each divided by the 99th percentile of its calibration scores."""

    def __init__(self, members):
        self.members = members
        n = min(len(m.train_reconstruction) for m in members)  # in-sample calibrations differ in length
        self.scale = [max(float(np.quantile(m.train_reconstruction[-n:], 0.99)), 1e-12) for m in members]
        self.train_reconstruction = np.mean([m.train_reconstruction[-n:] / k for m, k in zip(members, self.scale)],
                                            0).astype(np.float32)
        first = members[0]
        self.info, self.judged, self.mean = first.info, first.judged, getattr(first, "mean", None)
        self.train_divergence, self.threshold_scale, self.context, self.model_id = None, 1.0, None, "ensemble@1"

    @property
    def channels(self):
        return self.members[0].channels

    def score(self, windows):
        parts = [m.score(windows) for m in self.members]
        point = np.mean([p.reconstruction / k for p, k in zip(parts, self.scale)], 0).astype(np.float32)
        channel = np.mean([p.channel / k for p, k in zip(parts, self.scale)], 0).astype(np.float32)
        return Scores(point, channel, None)


def pick(rule: str, figs: dict[str, dict], prior: str, f1: dict[str, float]) -> str:
    """The candidate ``rule`` serves, from the label-free figures ``figs`` (``f1`` only for the oracle)."""
    ok = {m: v for m, v in figs.items() if np.isfinite(v.get("detection", np.nan))}
    if rule == "family" or not ok:
        return prior
    if rule == "detection":  # ties (e.g. a channel constant in training, all detect alike) keep the family's
        return max(ok, key=lambda m: (ok[m]["detection"], m == prior))
    if rule == "detection - alarms":
        return max(ok, key=lambda m: (ok[m]["detection"] - ok[m]["alarm_rate"], m == prior))
    if rule == "borda":
        kinds = set.intersection(*(set(v["detection_by_kind"]) for v in ok.values()))
        rank = {m: sum(sum(ok[o]["detection_by_kind"][k] > ok[m]["detection_by_kind"][k] for o in ok) for k in kinds)
                for m in ok}
        return min(ok, key=lambda m: (rank[m], m != prior))
    if rule == "paired":
        best, best_t = prior, 0.0
        for m in ok:
            mean, se = difference(ok[m], figs[prior])
            t = mean / max(se, 1e-9)
            if m != prior and mean > 0 and t > 2.0 and t > best_t:
                best, best_t = m, t
        return best
    if rule == "alarm guard":
        if figs[prior]["alarm_rate"] <= 0.05:
            return prior
        return min(ok, key=lambda m: (ok[m]["alarm_rate"], m != prior))
    if rule == "oracle":
        return max(f1, key=f1.get)
    raise ValueError(rule)


def entity_row(name: str, path: Path, genias: bool) -> dict:
    data = load(path)
    data.name = name
    sealed = seal(data)
    settings = Settings(score_channels=True)
    inputs = list(data.inputs) or None
    prior = artefacts.default_model(data.channels, inputs)
    x = np.asarray(fill_gaps(data.train)[0], np.float32)
    n_judge = int(len(x) * JUDGE)
    fit, judged = x[:-n_judge], x[-n_judge:]
    trial = make_trial(fit, np.arange(n_judge) * interval_of(data), judged, data.channels, inputs, settings.window,
                       genias=genias, progress=False)
    figs, f1, alarm, aucpr, served = {}, {}, {}, {}, {}
    for m in BASELINES:
        cfg = model_config(m, False, 0, data.inputs)
        figs[m] = figures(fit_for_serving(artefacts.create(m, data.channels, **cfg), fit, settings, progress=False),
                          trial, settings)
        served[m] = CachedScores(fit_for_serving(artefacts.create(m, data.channels, **cfg), data.train, settings,
                                                 progress=False))
    label = data.label.astype(bool)
    for m, det in [*served.items(), ("ensemble", Ensemble(list(served.values())))]:
        stream = stream_offline(det, sealed, settings)
        f1[m], alarm[m] = prf(stream.alarm, label)["f1"], float(stream.alarm.mean())
        aucpr[m] = auc_pr(stream.score, label)
    return {"entity": name, "prior": prior, "share": float(label.mean()), "figures": figs, "f1": f1, "alarm": alarm,
            "auc_pr": aucpr}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", default="SMD,SMAP,MSL")
    p.add_argument("--genias", action="store_true", help="judge on GenIAS's anomalies too (fits a generator per entity)")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--results", default=None, help="also write each entity's figures and F1 here (JSON lines)")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    paths = dataset_paths(args.data_root)
    out = open(args.results, "wb") if args.results else None
    print(f"{'rule':22s}" + "".join(f"{g:>22s}" for g in args.groups.split(",")))
    table, aucs = {}, {}
    for g in args.groups.split(","):
        rows = aucs[g] = [entity_row(n, paths[n], args.genias) for n in tqdm(entities(g, paths), desc=g, unit="entity")]
        for r in rows:
            if out:
                out.write(orjson.dumps({**r, "group": g}, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")
        for rule in RULES:
            chosen = ["ensemble" if rule == "ensemble" else pick(rule, r["figures"], r["prior"],
                                                                 {m: r["f1"][m] for m in BASELINES}) for r in rows]
            f1 = np.mean([r["f1"][c] for r, c in zip(rows, chosen)])
            floods = sum(r["alarm"][c] > 3 * r["share"] + 0.02 for r, c in zip(rows, chosen))
            switched = sum(c != r["prior"] for r, c in zip(rows, chosen))
            table.setdefault(rule, []).append(f"{f1:.3f} ({switched} sw, {floods} fl)")
    for rule, cells in table.items():
        print(f"{rule:22s}" + "".join(f"{c:>22s}" for c in cells))
    print(f"\n{'AUC-PR (threshold-free)':22s}" + "".join(f"{'':>22s}" for _ in table["family"]))
    for m in (*BASELINES, "ensemble"):
        print(f"{m:22s}" + "".join(f"{np.mean([r['auc_pr'][m] for r in rows]):>22.3f}" for g, rows in aucs.items()))
    print("\nper group: mean honest point-wise F1 (entities whose pick differs from the family's; entities over "
          "the flood line, an alarm rate above 3x the anomalous share + 0.02)")


if __name__ == "__main__":
    main()
