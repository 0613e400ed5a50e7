"""Score a dataset's test split the way the streaming worker does, and measure what an operator sees.

``stream_offline`` feeds the test split through ``stream.pipeline.Pipeline`` (the worker's own code:
the same windows, hop, fusion, online threshold and incident rule) as batch-form readings;
``stream_through_kafka`` sends the same messages through a broker and a ``vigil worker`` process.
Both return a ``Stream`` built from the messages the worker publishes, so ``report`` cannot tell
them apart. Labels are read only in ``report``.
"""
from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from detectors import artefacts
from detectors.base import Detector
from stream.codec import encode_readings
from stream.config import Settings, Topics
from stream.pipeline import Message, Pipeline

from . import metrics, range_metrics
from .data import Dataset

ENTITY = "eval"
START = 1_000_000_000.0  # test point i has timestamp START + i (exact in float64)


@dataclass
class Stream:
    """What the worker published for one entity's test split, indexed by test point."""

    score: np.ndarray  # [N] fused score
    threshold: np.ndarray  # [N] threshold in force, NaN while calibrating
    channel: np.ndarray | None  # [N, C] per-channel scores (when the worker publishes them)
    incidents: list[dict]  # the latest message of every incident: start/end as point indices
    model: str

    @property
    def alarm(self) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return self.score > self.threshold  # NaN threshold: no alarm

    def incident_mask(self) -> np.ndarray:
        """The points an operator sees inside an incident (opened to last alarm)."""
        mask = np.zeros(len(self.score), bool)
        for a in self.incidents:
            mask[a["start"]:a["end"] + 1] = True
        return mask


def messages(data: Dataset, entity: str = ENTITY, rows: int = 100) -> list[tuple[bytes, bytes]]:
    """The test split as batch-form readings of ``rows`` points each."""
    ts = START + np.arange(len(data.test), dtype=np.float64)
    return [(entity.encode(), encode_readings(entity, ts[i:i + rows], data.test[i:i + rows], data.channels))
            for i in range(0, len(ts), rows)]


def collect(score_msgs: list[dict], alert_msgs: list[dict], n: int, entity: str = ENTITY) -> Stream:
    """A ``Stream`` from decoded ``vigil.scores`` and ``vigil.alerts`` messages of one entity."""
    score, threshold = np.full(n, np.nan), np.full(n, np.nan)
    channel, seen, model = None, np.zeros(n, bool), ""
    for m in score_msgs:
        if m["entity"] != entity:
            continue
        idx = np.rint(np.asarray(m["ts"], np.float64) - START).astype(np.int64)
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
    latest = {}
    for a in alert_msgs:
        if a["entity"] == entity:
            latest[a["alert_id"]] = a
    incidents = [{**a, "start": int(round(a["start"] - START)), "end": int(round(a["end"] - START))}
                 for a in latest.values()]
    return Stream(score, threshold, channel, sorted(incidents, key=lambda a: a["start"]), model)


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
    return collect(scores, alerts, len(data.test))


def worker_args(settings: Settings) -> list[str]:
    """``vigil worker`` flags that reproduce ``settings``' scoring."""
    args = ["--window", str(settings.window), "--hop", str(settings.hop), "--threshold", settings.threshold,
            "--calibration", settings.calibration, "--calibration-points", str(settings.calibration_points),
            "--fusion", settings.fusion, "--top-k", str(settings.top_k), "--open-after", str(settings.open_after),
            "--open-window", str(settings.open_window), "--close-after", str(settings.close_after),
            "--device", settings.device]
    for k, v in settings.threshold_params.items():
        args += ["--threshold-param", f"{k}={v}"]
    if settings.score_channels:
        args.append("--score-channels")
    if settings.detector:
        args += ["--detector", settings.detector]
    return args


def stream_through_kafka(jobs: dict[str, tuple[str | os.PathLike, Dataset]], settings: Settings,
                         broker: str | None = None, rows: int = 100, timeout: float = 900.0) -> dict[str, Stream]:
    """Replay test splits through a broker (the embedded one when ``broker`` is None) and one worker.

    ``jobs`` maps an entity id to (artefact directory, dataset): the worker serves each entity its
    model, and the entities' readings are interleaved on one partition as a plant's would be.
    """
    from stream.broker import start_broker
    from stream.kafka import ensure_topics, producer, read_partition

    workdir = Path(tempfile.mkdtemp(prefix="vigil-eval-"))
    procs = []
    run_id = f"{os.getpid()}-{time.time_ns()}"
    prefix = f"vigil-eval-{run_id}"  # topics of their own: an evaluation never mixes with live data
    topics = Topics.named(prefix)
    try:
        if broker is None:
            proc, broker = start_broker("127.0.0.1", log=open(workdir / "broker.log", "wb"))
            procs.append(proc)
        asyncio.run(ensure_topics(broker, [topics.readings, topics.scores, topics.alerts, topics.dlq, topics.state], 1))
        log = open(workdir / "worker.log", "wb")
        cmd = [sys.executable, "-m", "stream.cli", "worker", "--broker", broker, "--partitions", "1",
               "--group", f"vigil-eval-{run_id}", "--session-timeout", "6", "--rebalance-timeout", "3",
               "--topic-prefix", prefix, "--web-port", "0", *worker_args(settings)]
        for entity, (artefact, _) in jobs.items():
            cmd += ["--model", f"{entity}={artefact}"]
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        per_entity = [messages(data, entity, rows) for entity, (_, data) in jobs.items()]
        interleaved = [m for group in itertools.zip_longest(*per_entity) for m in group if m is not None]
        need = {entity: len(data.test) for entity, (_, data) in jobs.items()}

        async def produce_and_read():
            p = producer(broker)
            await p.start()
            try:
                for key, value in interleaved:
                    await p.send(topics.readings, value, key=key, partition=0)
                await p.flush()
            finally:
                await p.stop()
            deadline, scores, done, offset = time.monotonic() + timeout, [], {e: 0 for e in need}, 0
            while True:
                new = await read_partition(broker, topics.scores, 0, start=offset)  # only what is new
                offset = new[-1].offset + 1 if new else offset
                for m in (orjson.loads(r.value) for r in new):
                    scores.append(m)
                    done[m["entity"]] = done.get(m["entity"], 0) + len(m["ts"])
                if all(done[e] >= n for e, n in need.items()):
                    alerts = [orjson.loads(r.value) for r in await read_partition(broker, topics.alerts, 0)]
                    return scores, alerts
                if procs[-1].poll() is not None or time.monotonic() > deadline:
                    tail = (workdir / "worker.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"worker scored {done} of {need} points before it stopped or timed out:\n{tail}")
                await asyncio.sleep(0.5)

        scores, alerts = asyncio.run(produce_and_read())
        return {e: collect(scores, alerts, len(data.test), e) for e, (_, data) in jobs.items()}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def report(stream: Stream, data: Dataset, top_k: int = 3) -> dict:
    """Honest metrics first; the oracle and point-adjusted figures are labelled as such."""
    labels = data.label.astype(bool)
    alarm = stream.alarm
    out = {"points": int(len(labels)), "anomalous_points": int(labels.sum()),
           "events": len(metrics.segments(labels)), "model_id": stream.model,
           "alarm_rate": float(alarm.mean()),
           "point": metrics.prf(alarm, labels),
           "affiliation": range_metrics.affiliation(alarm, labels),
           "incident": metrics.event_f1(stream.incident_mask(), labels),
           "incidents": len(stream.incidents),
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


def alarm_cells(alarm: np.ndarray, channel: np.ndarray, k: int) -> np.ndarray:
    """(time, channel) cells an alert blames: the top-k channels at every alarm point."""
    cells = np.zeros(channel.shape, bool)
    rows = np.flatnonzero(alarm)
    if len(rows):
        top = np.argsort(-channel[rows], axis=1, kind="stable")[:, :k]
        cells[rows[:, None], top] = True
    return cells


def train_or_load(model: str, data: Dataset, device: str = "auto", **config) -> Detector:
    """An artefact directory is loaded; a model name is trained on the dataset's train split."""
    if artefacts.is_artefact(model):
        return artefacts.load(model).to(device)
    return artefacts.create(model, data.channels, **config).to(device).fit(data.train)
