"""What the dashboard and ``/metrics`` show: each entity's recent points and incidents, and health.

The pipeline calls ``observe_many`` once per cohort per micro-batch and the runner calls ``batch`` once
per micro-batch; both only append to bounded buffers, so the cost on the hot path is small and
memory is ``keep`` points for each of at most ``max_traces`` entities. Readers (the web handlers) run on the same event loop.
"""
from __future__ import annotations

import itertools
import math
import time
from collections import deque

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from training.report import why_line


class EntityTrace:
    """One entity's last ``keep`` points (score, threshold, per-channel scores) and incidents.

    Numpy ring buffers that grow by doubling up to ``keep`` rows, so an entity seen three times costs
    three rows, not ``keep``.
    """

    def __init__(self, keep: int, channels: int):
        self.keep, self.n = keep, 0  # n: points written so far
        size = min(keep, 64)
        self._ts, self._score, self._thr = np.empty(size), np.empty(size), np.empty(size)
        self._channel = np.empty((size, channels), np.float32)
        self._raw = np.full((size, channels), np.nan, np.float32)  # the readings as scored
        self.incidents: dict[str, dict] = {}  # alert id -> latest alert message
        self.names: list[str] = []
        self.model, self.state = "", "warming up"
        self.drift_channels: list[str] = []  # where the entity's last drift event said it departed
        self.seen = 0.0  # wall clock of the last reading scored
        self.models: list[dict] = []  # the models that served it here, oldest first (at most 20)
        self.why: str | None = None  # why its model: auto's record (training.selection), None for a named one
        self.ent = None  # the entity's state (scoring.pipeline.EntityState) as last observed

    def extend(self, ts, score, threshold, channel, raw=None) -> None:
        k = len(ts)
        if raw is None or raw.shape != channel.shape:
            raw = np.full(channel.shape, np.nan, np.float32)
        if k > self.keep:
            ts, score, threshold, channel = ts[-self.keep:], score[-self.keep:], threshold[-self.keep:], channel[-self.keep:]
            raw = raw[-self.keep:]
            self.n += k - self.keep
            k = self.keep
        size = len(self._ts)
        if self.n + k > size and size < self.keep:  # grow (only before the ring wraps)
            new = min(self.keep, max(2 * size, self.n + k))
            for name in ("_ts", "_score", "_thr", "_channel", "_raw"):
                old = getattr(self, name)
                grown = np.empty((new, *old.shape[1:]), old.dtype)
                grown[:size] = old
                setattr(self, name, grown)
        if channel.shape[1] != self._channel.shape[1]:  # another model with other channels
            self._channel = np.zeros((len(self._ts), channel.shape[1]), np.float32)
            self._raw = np.full((len(self._ts), channel.shape[1]), np.nan, np.float32)
        idx = (self.n + np.arange(k)) % len(self._ts)
        self._ts[idx], self._score[idx], self._thr[idx], self._channel[idx] = ts, score, threshold, channel
        self._raw[idx] = raw
        self.n += k

    def _order(self) -> np.ndarray:
        m = min(self.n, len(self._ts))
        return (self.n - m + np.arange(m)) % len(self._ts)

    @property
    def ts(self) -> np.ndarray:
        return self._ts[self._order()]

    @property
    def score(self) -> np.ndarray:
        return self._score[self._order()]

    @property
    def threshold(self) -> list:
        return [None if math.isnan(x) else x for x in self._thr[self._order()].tolist()]

    @property
    def channel(self) -> np.ndarray:
        return self._channel[self._order()]

    @property
    def raw(self) -> np.ndarray:
        return self._raw[self._order()]

    def last(self) -> tuple:
        if not self.n:
            return None, None, None
        i = (self.n - 1) % len(self._ts)
        thr = float(self._thr[i])
        return float(self._ts[i]), float(self._score[i]), None if math.isnan(thr) else thr


class Board:
    def __init__(self, keep: int = 2000, max_incidents: int = 50, max_traces: int = 200):
        """``max_traces``: entities whose recent points are kept, the most recently active first (a
        trace holds ``keep`` points: about ``keep * (24 + 4 * channels)`` bytes)."""
        self.keep, self.max_incidents, self.max_traces = keep, max_incidents, max_traces
        self.entities: dict[str, EntityTrace] = {}  # least recently observed first
        self.started = time.time()
        self.samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)], maxlen=256)  # (time, points)
        self.last_batch = 0
        self.batches = 0
        self.inference_seconds = 0.0
        self.inference_calls = 0
        self.last_inference = 0.0
        self.lag: dict[int, int] = {}
        self.lag_seconds: dict[int, float] = {}
        self.lag_samples: deque[tuple[float, int]] = deque(maxlen=256)  # (monotonic time, total lag)
        self.pipeline = None  # set by the pipeline that feeds the board: its counters are the totals
        self.labels: dict[str, str] = {}  # alert id -> label given on this dashboard (bounded)

    # ---- writers (hot path) --------------------------------------------------------------------
    def observe_many(self, entities, bounds, ts, score, threshold, channel, raw, alerts: dict, passable) -> None:
        """A cohort's micro-batch (``scoring.pipeline.Observer``). When ``max_traces`` entities already
        have a trace, the entities without one and without an alert now (``passable``) are passed over in
        one step: a fleet of ten thousand costs nothing each, and the traces go to the entities as they
        alert (they displace the longest-quiet ones)."""
        room = len(self.entities) < self.max_traces
        for s in range(len(entities)) if room else np.flatnonzero(~passable).tolist():
            if not room and passable[s]:
                continue
            a, b = bounds[s]
            self.observe(entities[s], ts[a:b], score[a:b], threshold[a:b], channel[a:b], alerts.get(s, ()), raw[a:b])
            room = len(self.entities) < self.max_traces

    def observe(self, ent, ts, score, threshold, channel, alerts: list[dict], raw=None) -> None:
        t = self.entities.pop(ent.entity, None)
        if t is None:
            t = EntityTrace(self.keep, channel.shape[1])
            while len(self.entities) >= self.max_traces:
                self._drop_one()
        self.entities[ent.entity] = t  # now the most recent
        t.ent, ent.watched = ent, True
        if ent.model != t.model and len(ts):  # a new model (first seen, or swapped in by the trainer)
            t.models.append({"model": ent.model, "since": float(ts[0])})
            del t.models[:-20]
            chosen = getattr(ent.detector, "selection", None)
            t.why = why_line(chosen) if chosen else None
        t.names, t.model, t.seen = ent.names, ent.model, time.time()
        t.extend(ts, score, threshold, channel, raw)
        for a in alerts:
            if a["state"] == "drift":
                t.drift_channels = [c["channel"] for c in a["channels"]]
            elif a["state"] != "drift_end":
                t.incidents[a["alert_id"]] = a
        while len(t.incidents) > self.max_incidents:
            t.incidents.pop(next(iter(t.incidents)))
        if getattr(ent, "drift_start", None) is not None:
            t.state = "drifting (retrain asked)" + (f": {', '.join(t.drift_channels)}" if t.drift_channels else "")
        elif ent.detector is None:
            t.state = "no model" if ent.threshold is not None else "no model, warming up"
        elif ent.threshold is None:
            t.state = "warming up"
        else:
            t.state = "alerting" if ent.incidents.open is not None else "normal"

    def _drop_one(self) -> None:
        """Make room: of the 16 least recently observed traces, the first that is not alerting or drifting,
        else the oldest (looking no further keeps this O(1) when most traces are alerting)."""
        for name, t in itertools.islice(self.entities.items(), 16):
            if t.state in ("normal", "warming up", "no model", "no model, warming up"):
                break
        else:
            name = next(iter(self.entities))
        t = self.entities.pop(name)
        if self.pipeline is None or self.pipeline.entities.get(name) is t.ent:  # not a slot another has now
            t.ent.watched = False

    def forget(self, entity: str) -> None:
        """The entity left the worker's memory (evicted, or its partition went to another worker)."""
        self.entities.pop(entity, None)

    def inference(self, seconds: float) -> None:
        self.inference_seconds += seconds
        self.inference_calls += 1
        self.last_inference = seconds

    def batch(self, events: int, lag: dict[int, int], lag_seconds: dict[int, float] | None = None) -> None:
        """A micro-batch done: its size, and how far behind each partition is (messages, and seconds that
        its oldest unprocessed reading has waited)."""
        self.last_batch, self.batches = events, self.batches + 1
        self.lag, self.lag_seconds = lag, lag_seconds or {}
        now = time.monotonic()
        self.samples.append((now, self._count("points")))
        self.lag_samples.append((now, sum(lag.values())))

    # ---- readers -------------------------------------------------------------------------------
    def _count(self, name: str) -> int:
        return int(self.pipeline.metrics[name]) if self.pipeline is not None else 0

    def readings_per_second(self, horizon: float = 10.0) -> float:
        """Points scored since the last sample at least ``horizon`` seconds old, per second."""
        now = time.monotonic()
        base = _sample_before(self.samples, now - horizon)
        return (self._count("points") - base[1]) / max(now - base[0], 1e-3)

    def catch_up_seconds(self, horizon: float = 30.0) -> float:
        """Seconds until the lag is gone at the rate it shrank over the last ``horizon`` seconds: 0 when
        there is none, infinite while it does not shrink."""
        if not self.lag_samples or self.lag_samples[-1][1] == 0:
            return 0.0
        now, lag = self.lag_samples[-1]
        base = _sample_before(self.lag_samples, now - horizon)
        shrink = (base[1] - lag) / max(now - base[0], 1e-3)
        return lag / shrink if shrink > 0 else math.inf

    def dlq_by_reason(self) -> dict[str, int]:
        m = self.pipeline.metrics if self.pipeline is not None else {}
        # a copy first: the pipeline counts in its executor thread (``Pipeline.process``) meanwhile
        return {k[4:]: int(v) for k, v in list(m.items()) if k.startswith("dlq_")}

    def health(self) -> dict:
        return {"readings_per_second": round(self.readings_per_second(), 1), "readings": self._count("points"),
                "messages": self._count("messages"), "dlq": self.dlq_by_reason(), "dlq_total": self._count("dlq"),
                "consumer_lag": {str(p): n for p, n in sorted(self.lag.items())},
                "consumer_lag_seconds": {str(p): round(x, 1) for p, x in sorted(self.lag_seconds.items())},
                "catch_up_s": _finite_or_none(self.catch_up_seconds()),
                "batch_size": self.last_batch, "batches": self.batches,
                "inference_ms": round(1000 * self.last_inference, 2),
                "inference_ms_mean": round(1000 * self.inference_seconds / max(self.inference_calls, 1), 2),
                "entities": self._entities()[0], "entities_evicted": self._entities()[1],
                "uptime_s": round(time.time() - self.started, 1)}

    def _entities(self) -> tuple[int, int]:
        """Entities in memory and evicted (state on the broker) of the pipeline that feeds the board."""
        if self.pipeline is None:
            return len(self.entities), 0
        live = len(self.pipeline.entities)
        return live, self.pipeline.known_entities() - live

    def entity_list(self) -> list[dict]:
        out = []
        for name, t in sorted(self.entities.items()):
            last_ts, last_score, threshold = t.last()
            out.append({"entity": name, "state": t.state, "model": t.model, "last_score": last_score,
                        "threshold": threshold, "last_ts": last_ts, "incidents": len(t.incidents)})
        return out

    def entity(self, name: str) -> dict | None:
        t = self.entities.get(name)
        if t is None:
            return None
        return {"entity": name, "state": t.state, "model": t.model, "why": t.why, "names": t.names,
                "ts": t.ts.tolist(), "score": t.score.tolist(), "threshold": t.threshold,
                "incidents": [{**_span(a), "label": self.labels.get(a["alert_id"])} for a in t.incidents.values()],
                "models": t.models}

    def labelled(self, alert_id: str, label: str) -> None:
        self.labels[alert_id] = label
        while len(self.labels) > 10_000:
            self.labels.pop(next(iter(self.labels)))

    def incident(self, name: str, alert_id: str, pad: int = 20) -> dict | None:
        """Per-channel scores around one incident (a heat map) and its ranked channels."""
        t = self.entities.get(name)
        a = t.incidents.get(alert_id) if t is not None else None
        if a is None:
            return None
        ts = t.ts
        inside = np.flatnonzero((ts >= a["start"]) & (ts <= a["end"]))
        if len(inside):
            lo, hi = max(inside[0] - pad, 0), min(inside[-1] + pad + 1, len(ts))
        else:  # the incident's points have left the buffer
            lo = hi = 0
        channel, raw = t.channel[lo:hi], t.raw[lo:hi]
        index = {n: i for i, n in enumerate(t.names)}
        top = [{"channel": c["channel"], "values": _finite_list(raw[:, index[c["channel"]]]),
                "scores": np.round(channel[:, index[c["channel"]]], 4).tolist()}
               for c in a.get("channels", []) if c["channel"] in index and index[c["channel"]] < raw.shape[1]]
        return {**_span(a), "names": t.names, "ts": ts[lo:hi].tolist(),
                "channel_scores": np.round(channel.T, 4).tolist(),  # [channel][time]
                "top_channels": top}  # the ranked channels' raw readings and scores, over the same points

    def collect(self):
        """Prometheus collector: read on every scrape, nothing kept twice."""
        yield CounterMetricFamily("vigil_readings", "Readings scored", value=self._count("points"))
        yield CounterMetricFamily("vigil_messages", "Messages consumed", value=self._count("messages"))
        yield GaugeMetricFamily("vigil_readings_per_second", "Readings scored per second, last 10 s",
                                value=self.readings_per_second())
        dlq = CounterMetricFamily("vigil_dlq", "Messages dead-lettered, by reason", labels=["reason"])
        for reason, n in sorted(self.dlq_by_reason().items()):
            dlq.add_metric([reason], n)
        yield dlq
        yield CounterMetricFamily("vigil_alerts_opened", "Incidents opened", value=self._count("alerts_open"))
        yield CounterMetricFamily("vigil_drift_events", "Entities whose scores left their model's level",
                                  value=self._count("alerts_drift"))
        live, evicted = self._entities()
        entities = GaugeMetricFamily("vigil_entities", "Entities this worker holds, in memory or evicted",
                                     labels=["state"])
        entities.add_metric(["live"], live)
        entities.add_metric(["evicted"], evicted)
        yield entities
        yield CounterMetricFamily("vigil_entity_evictions", "Entities taken out of memory", value=self._count("evicted"))
        yield CounterMetricFamily("vigil_entity_loads", "Evicted entities read back from vigil.state",
                                  value=self._count("loaded"))
        open_alerts = GaugeMetricFamily("vigil_open_alerts", "Open incidents per entity", labels=["entity"])
        model = GaugeMetricFamily("vigil_model_info", "Model serving each entity (value 1)",
                                  labels=["entity", "model", "version"])
        drifting = GaugeMetricFamily("vigil_entity_drifting", "1 while an entity's scores drift from its model's level",
                                     labels=["entity"])
        seen = GaugeMetricFamily("vigil_entity_last_reading_seconds", "Unix time of the entity's last scored reading",
                                 labels=["entity"])
        for name, t in sorted(self.entities.items()):
            open_alerts.add_metric([name], int(t.state == "alerting"))
            drifting.add_metric([name], int(t.state.startswith("drifting")))
            seen.add_metric([name], t.seen)
            kind, _, version = t.model.partition("@")
            model.add_metric([name, kind, version], 1)
        yield open_alerts
        yield model
        yield drifting
        yield seen
        lag = GaugeMetricFamily("vigil_consumer_lag", "Readings messages not yet processed", labels=["partition"])
        for p, n in sorted(self.lag.items()):
            lag.add_metric([str(p)], n)
        yield lag
        behind = GaugeMetricFamily("vigil_consumer_lag_seconds", "Seconds the oldest unprocessed readings message "
                                   "has waited (its Kafka timestamp; 0 when none waits)", labels=["partition"])
        for p, x in sorted(self.lag_seconds.items()):
            behind.add_metric([str(p)], x)
        yield behind
        yield GaugeMetricFamily("vigil_catch_up_seconds", "Estimated seconds until the lag is gone, at the rate it "
                                "shrank over the last 30 s (+Inf while it does not shrink)", value=self.catch_up_seconds())
        yield GaugeMetricFamily("vigil_batch_size", "Messages in the last micro-batch", value=self.last_batch)
        yield CounterMetricFamily("vigil_inference_seconds", "Time in detector calls", value=self.inference_seconds)
        yield CounterMetricFamily("vigil_inference_calls", "Detector calls", value=self.inference_calls)


def _sample_before(samples, when: float) -> tuple[float, int]:
    """The last (time, count) sample taken at or before ``when``, else the oldest."""
    base = samples[0]
    for t, n in samples:
        if t <= when:
            base = (t, n)
    return base


def _finite_or_none(x: float) -> float | None:
    return round(x, 1) if math.isfinite(x) else None


def _finite_list(x: np.ndarray) -> list:
    """JSON has no NaN: a reading the dashboard does not have (older points) is null."""
    return [None if v != v else round(float(v), 6) for v in x.tolist()]


def _span(a: dict) -> dict:
    return {"alert_id": a["alert_id"], "start": a["start"], "end": a["end"], "state": a["state"],
            "score": a.get("score"), "channels": a.get("channels", []), "model": a.get("model")}
