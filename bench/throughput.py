"""Readings per second through the whole pipeline, beside raw aiokafka consume-and-parse, in one run.

For each message form (single reading per message, batch of rows per message) the same messages are
measured four ways, on one embedded broker each:
  raw      aiokafka consumer + orjson.loads of every message: the ceiling for any Python consumer
  codec    the pipeline's decode alone (no Kafka)
  pipeline Pipeline.process on micro-batches (decode, windows, PCA scoring, thresholds, incidents; no Kafka)
  worker   the real ``vigil worker`` (Faust) from its first published score to its last
Ratios are against ``raw`` measured in the same run, because absolute rates depend on the machine.

    python bench/throughput.py [--entities 8] [--channels 16] [--points 20000] [--batch 100]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer  # noqa: E402

from detectors import artefacts  # noqa: E402
from detectors.pca import PCADetector  # noqa: E402
from producers.simulate import normal_history, simulate_plant  # noqa: E402
from scoring.codec import decode, encode_readings  # noqa: E402
from scoring.pipeline import Message, Pipeline  # noqa: E402
from scoring.settings import Settings  # noqa: E402
from stream.broker import start_broker  # noqa: E402
from stream.kafka import ensure_topics, producer, read_partition  # noqa: E402

START = 1_700_000_000.0


def make_messages(plant, batch: int) -> list[tuple[bytes, bytes]]:
    out = []
    for j in range(0, len(plant[0].ts), batch):
        for s in plant:
            if batch == 1:
                out.append((s.entity.encode(), encode_readings(s.entity, s.ts[j], s.values[j], s.channels)))
            else:
                out.append((s.entity.encode(), encode_readings(s.entity, s.ts[j:j + batch],
                                                               s.values[j:j + batch], s.channels)))
    return out


async def produce(broker, messages, partitions):
    await ensure_topics(broker, Settings().topics.all(), partitions)
    p = producer(broker, linger_ms=20)
    await p.start()
    for key, value in messages:
        await p.send("vigil.readings", value, key=key)
    await p.flush()
    await p.stop()


async def raw_consume(broker, n_messages) -> float:
    consumer = AIOKafkaConsumer("vigil.readings", bootstrap_servers=broker, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    got = 0
    t0 = time.perf_counter()
    while got < n_messages:
        batch = await consumer.getmany(timeout_ms=500, max_records=10_000)
        for records in batch.values():
            for r in records:
                orjson.loads(r.value)
                got += 1
    elapsed = time.perf_counter() - t0
    await consumer.stop()
    return elapsed


def pipeline_seconds(messages, models, settings, batch_size) -> tuple[float, float]:
    t0 = time.perf_counter()
    for _, v in messages:
        decode(v)
    codec = time.perf_counter() - t0
    pipe = Pipeline(settings, models)
    msgs = [Message(0, i, k, v) for i, (k, v) in enumerate(messages)]

    async def run():
        for i in range(0, len(msgs), batch_size):
            await pipe.process(msgs[i:i + batch_size])
    t0 = time.perf_counter()
    asyncio.run(run())
    return codec, time.perf_counter() - t0


def worker_seconds(broker, model_args, n_points, partitions, workdir: Path) -> tuple[float, str]:
    log = open(workdir / "worker.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "worker", "--broker", broker, *model_args,
                             "--partitions", str(partitions), "--rebalance-timeout", "3",
                             "--session-timeout", "6", "--log-level", "warn"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            time.sleep(2)
            recs = asyncio.run(_all(broker, "vigil.scores", partitions))
            scored = sum(len(orjson.loads(r.value)["ts"]) for r in recs)
            if scored >= n_points:
                stamps = [r.timestamp for r in recs]
                return (max(stamps) - min(stamps)) / 1000.0, (workdir / "worker.log").read_text()
            if proc.poll() is not None:
                raise RuntimeError("worker died:\n" + (workdir / "worker.log").read_text()[-2000:])
        raise TimeoutError("worker did not score every point in time")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


async def _all(broker, topic, partitions):
    out = []
    for p in range(partitions):
        out.extend(await read_partition(broker, topic, p))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=8)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--points", type=int, default=5000, help="points per entity")
    ap.add_argument("--batch", type=int, default=100, help="rows per message in the batch form")
    ap.add_argument("--partitions", type=int, default=4)
    args = ap.parse_args()

    plant = simulate_plant(args.entities, args.channels, args.points, START, seed=1)
    n_points = args.entities * args.points
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models, model_args = {}, []
        for s in plant:
            hist = normal_history(s.entity, args.channels, 4000, START, 1)
            det = PCADetector(hist.channels).fit(hist.values)
            models[s.entity] = det
            model_args.append(f"--model={s.entity}={artefacts.save(det, tmp / s.entity)}")
        settings = Settings()
        for form, batch in (("single", 1), ("batch", args.batch)):
            messages = make_messages(plant, batch)
            proc, broker = start_broker(log=open(tmp / f"broker-{form}.log", "wb"))
            try:
                asyncio.run(produce(broker, messages, args.partitions))
                raw = asyncio.run(raw_consume(broker, len(messages)))
                codec, pipe = pipeline_seconds(messages, models, settings, settings.batch_size)
                worker, log = worker_seconds(broker, model_args, n_points, args.partitions, tmp)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)
            rows.append((form, len(messages), n_points, raw, codec, pipe, worker))
            print(f"[{form}] done", file=sys.stderr)

    print(f"\n{args.entities} entities x {args.channels} channels x {args.points} points "
          f"= {n_points} readings; batch form {args.batch} rows/message; PCA per entity; "
          f"window 32, hop 16; SPOT thresholds\n")
    print("| form | messages | stage | seconds | readings/s | ratio to raw |")
    print("|---|---|---|---|---|---|")
    for form, n_msg, n, raw, codec, pipe, worker in rows:
        for stage, secs in (("raw aiokafka consume + orjson parse", raw), ("codec decode only", codec),
                            ("pipeline, no Kafka", pipe), ("vigil worker (Faust, end to end)", worker)):
            print(f"| {form} | {n_msg} | {stage} | {secs:.2f} | {n / secs:,.0f} | {raw / secs:.3f} |")


if __name__ == "__main__":
    main()
