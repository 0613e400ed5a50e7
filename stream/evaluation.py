"""Evaluation through Kafka: a dataset's test split replayed through a broker and a real ``vigil worker``.

The same messages as ``training.evaluate.stream_offline`` (``messages``), the same ``Stream`` back
(``collect``), so ``training.evaluate.report`` scores both alike; this module only adds the broker,
the worker process and the topics.
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
from pathlib import Path

import orjson

from scoring.settings import Settings, Topics
from training.data import Dataset
from training.evaluate import Stream, collect, interval_of, messages

from .broker import start_broker
from .kafka import ensure_topics, producer, read_partition


def worker_args(settings: Settings) -> list[str]:
    """``vigil worker`` flags that reproduce ``settings``' scoring."""
    args = ["--window", str(settings.window), "--hop", str(settings.hop), "--threshold", settings.threshold,
            "--calibration", settings.calibration, "--calibration-points", str(settings.calibration_points),
            "--cold-calibration-points", str(settings.cold_calibration_points), "--smooth", str(settings.smooth),
            "--fusion", settings.fusion, "--top-k", str(settings.top_k), "--open-after", str(settings.open_after),
            "--open-window", str(settings.open_window), "--close-after", str(settings.close_after),
            "--device", settings.device]
    args += ["--level-window", f"{settings.level_window:g}"]
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
    workdir = Path(tempfile.mkdtemp(prefix="vigil-eval-"))
    procs = []
    run_id = f"{os.getpid()}-{time.time_ns()}"
    prefix = f"vigil-eval-{run_id}"  # topics of their own: an evaluation never mixes with live data
    topics = Topics.named(prefix)
    try:
        if broker is None:
            proc, broker = start_broker("127.0.0.1", log=open(workdir / "broker.log", "wb"))
            procs.append(proc)
        asyncio.run(ensure_topics(broker, [topics.readings, *topics.outputs()], 1))
        log = open(workdir / "worker.log", "wb")
        cmd = [sys.executable, "-m", "cli", "worker", "--broker", broker, "--partitions", "1",
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
        return {e: collect(scores, alerts, len(data.test), e, interval_of(data)) for e, (_, data) in jobs.items()}
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
