"""What the dashboard and ``/metrics`` show: each entity's recent points and incidents, and health.

The pipeline calls ``observe`` once per entity per micro-batch and the runner calls ``batch`` once
per micro-batch; both only append to bounded buffers, so the cost on the hot path is small and
memory is ``keep`` points per entity. Readers (the web handlers) run on the same event loop.
"""
from __future__ import annotations

import math
import time
from collections import deque

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class EntityTrace:
    """One entity's last ``keep`` points (score, threshold, per-channel scores) and incidents."""

    def __init__(self, keep: int):
        self.ts: deque[float] = deque(maxlen=keep)
        self.score: deque[float] = deque(maxlen=keep)
        self.threshold: deque[float | None] = deque(maxlen=keep)
        self.channel: deque[np.ndarray] = deque(maxlen=keep)
        self.incidents: dict[str, dict] = {}  # alert id -> latest alert message
        self.names: list[str] = []
        self.model, self.state = "", "warming up"


class Board:
    def __init__(self, keep: int = 2000, max_incidents: int = 50):
        self.keep, self.max_incidents = keep, max_incidents
        self.entities: dict[str, EntityTrace] = {}
        self.started = time.time()
        self.samples: deque[tuple[float, int]] = deque([(time.monotonic(), 0)], maxlen=256)  # (time, points)
        self.last_batch = 0
        self.batches = 0
        self.inference_seconds = 0.0
        self.inference_calls = 0
        self.last_inference = 0.0
        self.lag: dict[int, int] = {}
        self.pipeline = None  # set by the pipeline that feeds the board: its counters are the totals

    # ---- writers (hot path) --------------------------------------------------------------------
    def observe(self, ent, ts, score, threshold, channel, alerts: list[dict]) -> None:
        t = self.entities.get(ent.entity)
        if t is None:
            t = self.entities[ent.entity] = EntityTrace(self.keep)
        t.names, t.model = ent.names, ent.model
        t.ts.extend(ts.tolist())
        t.score.extend(score.tolist())
        t.threshold.extend(None if math.isnan(x) else x for x in threshold.tolist())
        t.channel.extend(channel.astype(np.float32))
        for a in alerts:
            t.incidents[a["alert_id"]] = a
        while len(t.incidents) > self.max_incidents:
            t.incidents.pop(next(iter(t.incidents)))
        if ent.detector is None:
            t.state = "no model" if ent.threshold is not None else "no model, warming up"
        elif ent.threshold is None:
            t.state = "warming up"
        else:
            t.state = "alerting" if ent.incidents.open is not None else "normal"

    def inference(self, seconds: float) -> None:
        self.inference_seconds += seconds
        self.inference_calls += 1
        self.last_inference = seconds

    def batch(self, events: int, lag: dict[int, int]) -> None:
        self.last_batch, self.batches = events, self.batches + 1
        self.lag = lag
        self.samples.append((time.monotonic(), self._count("points")))

    # ---- readers -------------------------------------------------------------------------------
    def _count(self, name: str) -> int:
        return int(self.pipeline.metrics[name]) if self.pipeline is not None else 0

    def readings_per_second(self, horizon: float = 10.0) -> float:
        """Points scored since the last sample at least ``horizon`` seconds old, per second."""
        now = time.monotonic()
        base = self.samples[0]
        for t, n in self.samples:
            if now - t >= horizon:
                base = (t, n)
        return (self._count("points") - base[1]) / max(now - base[0], 1e-3)

    def dlq_by_reason(self) -> dict[str, int]:
        m = self.pipeline.metrics if self.pipeline is not None else {}
        return {k[4:]: int(v) for k, v in m.items() if k.startswith("dlq_")}

    def health(self) -> dict:
        return {"readings_per_second": round(self.readings_per_second(), 1), "readings": self._count("points"),
                "messages": self._count("messages"), "dlq": self.dlq_by_reason(), "dlq_total": self._count("dlq"),
                "consumer_lag": {str(p): n for p, n in sorted(self.lag.items())},
                "batch_size": self.last_batch, "batches": self.batches,
                "inference_ms": round(1000 * self.last_inference, 2),
                "inference_ms_mean": round(1000 * self.inference_seconds / max(self.inference_calls, 1), 2),
                "entities": len(self.entities), "uptime_s": round(time.time() - self.started, 1)}

    def entity_list(self) -> list[dict]:
        return [{"entity": name, "state": t.state, "model": t.model,
                 "last_score": t.score[-1] if t.score else None,
                 "threshold": t.threshold[-1] if t.threshold else None,
                 "last_ts": t.ts[-1] if t.ts else None,
                 "incidents": len(t.incidents)} for name, t in sorted(self.entities.items())]

    def entity(self, name: str) -> dict | None:
        t = self.entities.get(name)
        if t is None:
            return None
        return {"entity": name, "state": t.state, "model": t.model, "names": t.names,
                "ts": list(t.ts), "score": list(t.score), "threshold": list(t.threshold),
                "incidents": [_span(a) for a in t.incidents.values()]}

    def incident(self, name: str, alert_id: str, pad: int = 20) -> dict | None:
        """Per-channel scores around one incident (a heat map) and its ranked channels."""
        t = self.entities.get(name)
        a = t.incidents.get(alert_id) if t is not None else None
        if a is None:
            return None
        ts = np.asarray(t.ts)
        inside = np.flatnonzero((ts >= a["start"]) & (ts <= a["end"]))
        if len(inside):
            lo, hi = max(inside[0] - pad, 0), min(inside[-1] + pad + 1, len(ts))
        else:  # the incident's points have left the buffer
            lo = hi = 0
        channel = np.stack([t.channel[i] for i in range(lo, hi)]) if hi > lo else np.zeros((0, len(t.names)))
        return {**_span(a), "names": t.names, "ts": ts[lo:hi].tolist(),
                "channel_scores": np.round(channel.T, 4).tolist()}  # [channel][time]

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
        open_alerts = GaugeMetricFamily("vigil_open_alerts", "Open incidents per entity", labels=["entity"])
        model = GaugeMetricFamily("vigil_model_info", "Model serving each entity (value 1)",
                                  labels=["entity", "model", "version"])
        for name, t in sorted(self.entities.items()):
            open_alerts.add_metric([name], int(t.state == "alerting"))
            kind, _, version = t.model.partition("@")
            model.add_metric([name, kind, version], 1)
        yield open_alerts
        yield model
        lag = GaugeMetricFamily("vigil_consumer_lag", "Readings messages not yet processed", labels=["partition"])
        for p, n in sorted(self.lag.items()):
            lag.add_metric([str(p)], n)
        yield lag
        yield GaugeMetricFamily("vigil_batch_size", "Messages in the last micro-batch", value=self.last_batch)
        yield CounterMetricFamily("vigil_inference_seconds", "Time in detector calls", value=self.inference_seconds)
        yield CounterMetricFamily("vigil_inference_calls", "Detector calls", value=self.inference_calls)


def _span(a: dict) -> dict:
    return {"alert_id": a["alert_id"], "start": a["start"], "end": a["end"], "state": a["state"],
            "score": a.get("score"), "channels": a.get("channels", []), "model": a.get("model")}
