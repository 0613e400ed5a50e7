"""Score a dataset's test split the way the streaming worker does, and measure what an operator sees.

``stream_offline`` feeds the test split through ``scoring.pipeline.Pipeline`` (the worker's own code:
the same windows, hop, fusion, online threshold and incident rule) as batch-form readings;
``stream.evaluation.stream_through_kafka`` sends the same messages through a broker and a ``vigil
worker`` process. Both return a ``Stream`` built from the messages the worker publishes, so ``report``
cannot tell them apart. Labels are read only in ``report``.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import orjson

from detectors.base import Detector
from scoring.codec import encode_readings
from scoring.pipeline import Message, Pipeline
from scoring.settings import Settings

from . import metrics, range_metrics
from .data import Dataset, SealedDataset

ENTITY = "eval"
START = 1_000_000_000.0  # test point i has timestamp START + i x the dataset's interval (exact in float64)
# Seconds between readings where a dataset states none (SMAP, MSL, a CSV without a time column): one
# minute, the interval of the one shared set that states one (SMD) and the usual granularity of plant
# historians and server monitoring. Only the level guard reads it: its window is time on the entity's
# clock (scoring.conditioning.Level). `vigil eval --interval` says otherwise.
DEFAULT_INTERVAL = 60.0


def interval_of(data: Dataset) -> float:
    """Seconds between ``data``'s readings: as it states, else ``DEFAULT_INTERVAL``."""
    return float(data.interval or DEFAULT_INTERVAL)


def timestamps(n: int, interval: float) -> np.ndarray:
    """The timestamps of ``n`` test points, ``interval`` seconds apart from START."""
    return START + np.arange(n, dtype=np.float64) * interval


def point_index(ts, interval: float):
    """The test point of a timestamp (or an array of them): the inverse of ``timestamps``."""
    return np.rint((np.asarray(ts, np.float64) - START) / interval).astype(np.int64)


@dataclass
class Stream:
    """What the worker published for one entity's test split, indexed by test point."""

    score: np.ndarray  # [N] fused score
    threshold: np.ndarray  # [N] threshold in force, NaN while calibrating
    channel: np.ndarray | None  # [N, C] per-channel scores (when the worker publishes them)
    incidents: list[dict]  # the latest message of every incident: start/end as point indices
    model: str
    drift: list[dict] = field(default_factory=list)  # drift and drift_end events: ts as a point index

    @property
    def alarm(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.score > self.threshold  # NaN threshold: no alarm

    def incident_mask(self) -> np.ndarray:
        """The points an operator sees inside an incident (opened to last alarm). An incident still open
        when the test ends was last reported by an ``update`` whose ``end`` may be long past: every alarm
        after its start belongs to it, so it runs to the last of them."""
        mask = np.zeros(len(self.score), bool)
        alarms = np.flatnonzero(self.alarm)
        for a in self.incidents:
            end = a["end"]
            if a["state"] != "close" and len(alarms):
                end = max(end, int(alarms[-1]))
            mask[a["start"]:end + 1] = True
        return mask

    def drift_mask(self) -> np.ndarray:
        """The points inside a drift period, from its ``drift`` record to its ``drift_end`` (or to the end
        of the test split): the entity was reported as departed from its model as a whole there."""
        mask, start = np.zeros(len(self.score), bool), None
        for e in sorted(self.drift, key=lambda e: e["ts"]):
            if e["state"] == "drift":
                start = int(e["ts"]) if start is None else start
            elif start is not None:
                mask[start:int(e["ts"])], start = True, None
        if start is not None:
            mask[start:] = True
        return mask


def messages(data: Dataset, entity: str = ENTITY, rows: int = 100) -> list[tuple[bytes, bytes]]:
    """The test split as batch-form readings of ``rows`` points each, ``interval_of(data)`` seconds apart."""
    ts = timestamps(len(data.test), interval_of(data))
    return [(entity.encode(), encode_readings(entity, ts[i:i + rows], data.test[i:i + rows], data.channels))
            for i in range(0, len(ts), rows)]


def collect(score_msgs: list[dict], alert_msgs: list[dict], n: int, entity: str = ENTITY,
            interval: float = DEFAULT_INTERVAL) -> Stream:
    """A ``Stream`` from decoded ``vigil.scores`` and ``vigil.alerts`` messages of one entity whose
    readings were ``interval`` seconds apart (``messages``)."""
    score, threshold = np.full(n, np.nan), np.full(n, np.nan)
    channel, seen, model = None, np.zeros(n, bool), ""
    for m in score_msgs:
        if m["entity"] != entity:
            continue
        idx = point_index(m["ts"], interval)
        if seen[idx].any():
            raise ValueError("a test point was scored twice")
        seen[idx] = True
        score[idx] = np.asarray(m["score"], np.float64)
        threshold[idx] = np.array([np.nan if t is None else t for t in m["threshold"]], np.float64)
        if "channels" in m:
            if channel is None:
                channel = np.full((n, len(m["channels"][0])), np.nan, np.float32)
            channel[idx] = np.asarray(m["channels"], np.float32)
        model = m["model"]
    if not seen.all():
        raise ValueError(f"{int((~seen).sum())} of {n} test points were not scored")
    latest, drift = {}, []
    for a in alert_msgs:
        if a["entity"] != entity:
            continue
        if a["state"] in ("drift", "drift_end"):
            drift.append({**a, "ts": int(point_index(a["ts"], interval))})
        else:
            latest[a["alert_id"]] = a
    incidents = [{**a, "start": int(point_index(a["start"], interval)), "end": int(point_index(a["end"], interval))}
                 for a in latest.values()]
    return Stream(score, threshold, channel, sorted(incidents, key=lambda a: a["start"]), model, drift)


def stream_offline(detector: Detector, data: Dataset, settings: Settings, rows: int = 100) -> Stream:
    """The worker's pipeline, in process, over the test split."""
    pipe = Pipeline(settings, {ENTITY: detector})
    msgs = [Message(0, i, k, v) for i, (k, v) in enumerate(messages(data, ENTITY, rows))]
    scores, alerts = [], []

    async def run():
        for i in range(0, len(msgs), settings.batch_size):
            out = await pipe.process(msgs[i:i + settings.batch_size])
            scores.extend(orjson.loads(r.value) for r in out.scores)
            alerts.extend(orjson.loads(r.value) for r in out.alerts)

    asyncio.run(run())
    return collect(scores, alerts, len(data.test), interval=interval_of(data))


def report(stream: Stream, data: Dataset, top_k: int = 3) -> dict:
    """Honest metrics first; the oracle and point-adjusted figures are labelled as such.

    The scores are final here: the only place that unseals a sealed dataset's labels."""
    if isinstance(data, SealedDataset):
        data.unseal()
    labels = data.label.astype(bool)
    alarm = stream.alarm
    out = {"points": int(len(labels)), "interval": interval_of(data), "interval_stated": data.interval is not None,
           "anomalous_points": int(labels.sum()),
           "anomalous_share": float(labels.mean()) if len(labels) else float("nan"),
           "events": len(metrics.segments(labels)), "model_id": stream.model,
           "alarm_rate": float(alarm.mean()),
           "point": metrics.prf(alarm, labels),
           "affiliation": range_metrics.affiliation(alarm, labels),
           "incident": metrics.event_f1(stream.incident_mask(), labels),
           "incidents": len(stream.incidents),
           "drift_events": sum(a["state"] == "drift" for a in stream.drift),
           "drift": _drift_cover(stream.drift_mask(), alarm, labels),
           "auc_pr": metrics.auc_pr(stream.score, labels),
           "vus_pr": range_metrics.vus_pr(stream.score, labels),
           "oracle_best_f1": metrics.best_f1(stream.score, labels),
           "point_adjusted_f1": metrics.point_adjusted_f1(alarm, labels)}
    if data.interpretation is not None and stream.channel is not None:
        truth = metrics.channel_label_matrix(len(labels), stream.channel.shape[1], data.interpretation)
        out["localisation"] = {
            "hit@100": metrics.hit_rate(stream.channel, truth, 100), "hit@150": metrics.hit_rate(stream.channel, truth, 150),
            "ndcg@100": metrics.ndcg(stream.channel, truth, 100), "ndcg@150": metrics.ndcg(stream.channel, truth, 150),
            "cell": metrics.prf(alarm_cells(alarm, stream.channel, top_k), truth)}
    return out


def _drift_cover(drifting: np.ndarray, alarm: np.ndarray, labels: np.ndarray) -> dict:
    """How much of the test split the drift records covered: the share of anomalous and of normal points
    inside a drift period, and the point-wise F1 were those points flagged too. A fault longer than half
    the level window becomes the entity's level (scoring/conditioning.py): its point alarms stop and a drift
    record tells the operator instead; the point-wise F1 above does not count that record, this one does
    (and counts a new operating mode's drift period as false alarms)."""
    anomalous = float(drifting[labels].mean()) if labels.any() else float("nan")
    normal = float(drifting[~labels].mean()) if (~labels).any() else float("nan")
    return {"anomalous_covered": anomalous, "normal_covered": normal,
            "f1_with_drift": metrics.prf(alarm | drifting, labels)["f1"]}


def mean_of(values) -> float:
    """Mean of the known values (JSON writes NaN as null)."""
    known = [v for v in values if v is not None and not np.isnan(v)]
    return float(np.mean(known)) if known else float("nan")


def mean_report(rows: list[dict]) -> dict:
    """One report whose numbers are the means of ``rows``' (nested dicts alike), NaN left out: the
    per-entity mean that SMAP/MSL are read by; other fields from the first."""
    out = {}
    for k, v in rows[0].items():
        if isinstance(v, dict):
            out[k] = mean_report([r[k] for r in rows if isinstance(r.get(k), dict)])
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[k] = mean_of([r.get(k) for r in rows])
        else:
            out[k] = v
    return out


def alarm_cells(alarm: np.ndarray, channel: np.ndarray, k: int) -> np.ndarray:
    """(time, channel) cells an alert blames: the top-k channels at every alarm point."""
    cells = np.zeros(channel.shape, bool)
    rows = np.flatnonzero(alarm)
    if len(rows):
        top = np.argsort(-channel[rows], axis=1, kind="stable")[:, :k]
        cells[rows[:, None], top] = True
    return cells
