"""Evaluation results as text: honest metrics first, inflated ones after and labelled."""
from __future__ import annotations


def _prf(d: dict) -> str:
    return f"P {d['precision']:.3f}  R {d['recall']:.3f}  F1 {d['f1']:.3f}"


def _share(v: float | None) -> str:
    """A share as a percentage; n/a where there were no such points (NaN, or null from JSON)."""
    return "n/a" if v is None or v != v else f"{100 * v:.1f}%"


def _print_metrics(r: dict, alarms: str, incidents: str) -> None:
    """The metric lines of one report or of a mean report (``training.evaluate.mean_report``)."""
    print(f"  point-wise at the online threshold  {_prf(r['point'])}  ({alarms})")
    print(f"  affiliation                         {_prf(r['affiliation'])}")
    print(f"  incidents vs events                 {_prf(r['incident'])}  ({incidents})")
    d = r.get("drift")
    if d and (r.get("drift_events") or 0) > 0:  # what the drift records told the operator, beside the alarms
        print(f"  drift periods cover {_share(d['anomalous_covered'])} of anomalous points and "
              f"{_share(d['normal_covered'])} of normal ones (F1 counting them as alarms {d['f1_with_drift']:.3f})")
    print(f"  AUC-PR {r['auc_pr']:.3f}   VUS-PR {r['vus_pr']:.3f}")
    loc = r.get("localisation")
    if loc:
        print(f"  localisation  HitRate@100% {loc['hit@100']:.3f}  @150% {loc['hit@150']:.3f}  "
              f"NDCG@100% {loc['ndcg@100']:.3f}  @150% {loc['ndcg@150']:.3f}  cells {_prf(loc['cell'])}")
    print(f"  oracle best F1 (threshold chosen on test labels)  {r['oracle_best_f1']['f1']:.3f}")
    print(f"  point-adjusted F1 (inflated)        {_prf(r['point_adjusted_f1'])}")


def why_line(selection: dict) -> str:
    """``auto``'s choice in one line: what it chose and why, and each candidate's label-free figures
    (detection of injected anomalies, alarm rate on the judged stretch; training.label_free)."""
    parts = []
    for name, m in selection.get("candidates", {}).items():
        if "detection" in m:
            parts.append(f"{name} detects {m['detection']:.2f}, alarms {m['alarm_rate']:.3f}")
        else:
            parts.append(f"{name}: {m.get('error') or m.get('skipped')}")
    figures = f" [{'; '.join(parts)}]" if parts else ""
    return f"{selection['why']}{figures}"


def print_report(r: dict) -> None:
    via = "through Kafka" if r.get("through_kafka") else "offline pipeline"
    print(f"{r['dataset']}  model {r['model_id']}  ({via}; {r['points']} test points, {r['anomalous_points']} "
          f"anomalous in {r['events']} events)")
    if r.get("interval"):
        how = "" if r.get("interval_stated") else ": none stated, assumed (--interval says otherwise)"
        print(f"  readings {r['interval']:g} s apart{how}; the level guard's clock")
    if r.get("selection"):
        print(f"  auto chose {why_line(r['selection'])}")
    if r.get("inputs"):
        shown = ", ".join(r["inputs"][:4]) + (", ..." if len(r["inputs"]) > 4 else "")
        print(f"  judged {r['judged_channels']} of {r['channels']} channels; inputs, learnt from but not judged: {shown}")
    if r.get("filled_training_values"):
        print(f"  training split: {r['filled_training_values']} missing values filled (a channel's last value; "
              f"its first before it was measured)")
    drifts, incidents = r.get("drift_events") or 0, r["incidents"]
    drift = f", {drifts} drift event{'s' if drifts > 1 else ''}" if drifts else ""
    counted = f"{incidents} incident{'' if incidents == 1 else 's'}{drift}"
    _print_metrics(r, f"alarm rate {r['alarm_rate']:.4f}", counted)


def print_summary(s: dict) -> None:
    """The mean over the entities of a folder (each channel file its own entity and model)."""
    m = s["mean"]
    via = "through Kafka" if s.get("through_kafka") else "offline pipeline"
    print(f"{s['dataset']}: mean over {s['entities']} entities, each with its own {'/'.join(s['models'])} model ({via})")
    _print_metrics(m, f"alarm rate {m['alarm_rate']:.4f}, anomalous share {s['anomalous_share']:.4f}",
                   f"{m['incidents']:.1f} incidents and {m.get('drift_events', 0):.1f} drift events per entity")
