"""Readings per second through the whole pipeline beside raw aiokafka consume-and-parse, and latency.

Throughput: for each message form (one reading per message, a batch of rows per message) the same
messages are measured four ways on one embedded broker (tansu), repeated ``--repeats`` times:
  raw      aiokafka consumer + orjson.loads of every message: the ceiling for any Python consumer
  codec    the pipeline's decode alone (no Kafka)
  pipeline Pipeline.process on micro-batches (decode, windows, PCA, thresholds, incidents; no Kafka)
  worker   the real ``vigil worker`` on a backlog, from the first readings it fetched (its log line)
           to its last score published (the score records' broker timestamps)
Every repetition uses fresh topics (``--topic-prefix``) and a fresh worker; ratios are taken against
``raw`` of the same repetition, because absolute rates depend on the machine; min and median reported.

Latency: a fresh worker is started and settled first; then readings are produced at ``--load`` (0.5)
of that form's median worker rate, paced every 10 ms, and each point's reading-to-score latency is the
score record's broker timestamp less the reading record's; reading-to-alert is the same for the
reading at which an incident opened (its ``ts``) and the alert that opened it. p50/p99/max reported.

    python bench/throughput.py [--entities 8] [--channels 16] [--points 20000] [--batch 100] [--repeats 3]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiokafka import AIOKafkaConsumer  # noqa: E402
from aiokafka.partitioner import DefaultPartitioner  # noqa: E402

from detectors import artefacts  # noqa: E402
from detectors.pca import PCADetector  # noqa: E402
from producers.simulate import normal_history, simulate_plant  # noqa: E402
from scoring.codec import decode, encode_readings  # noqa: E402
from scoring.pipeline import Message, Pipeline  # noqa: E402
from scoring.settings import Settings, Topics  # noqa: E402
from stream.broker import start_broker  # noqa: E402
from stream.kafka import ensure_topics, producer, read_partition  # noqa: E402

START = 1_700_000_000.0
# Micro-batches of the runs without Kafka (the pipeline row, memory): 5,000 messages, a live fleet's
# 100 ms micro-batch at 50,000 entities a reading a second (the worker takes two messages an entity).
BATCH = 5000
FIRST_FETCH = re.compile(r"first readings fetched at ([0-9.]+)")


def make_messages(plant, batch: int) -> list[tuple[bytes, bytes, str, float]]:
    """(key, value, entity, ts of the message's last row), interleaving entities as a plant would."""
    out = []
    for j in range(0, len(plant[0].ts), batch):
        for s in plant:
            if batch == 1:
                value = encode_readings(s.entity, s.ts[j], s.values[j], s.channels)
            else:
                value = encode_readings(s.entity, s.ts[j:j + batch], s.values[j:j + batch], s.channels)
            out.append((s.entity.encode(), value, s.entity, float(s.ts[min(j + batch, len(s.ts)) - 1])))
    return out


async def produce(broker, topics: Topics, messages, partitions):
    await ensure_topics(broker, topics.all(), partitions)
    p = producer(broker, linger_ms=20)
    await p.start()
    for key, value, _, _ in messages:
        await p.send(topics.readings, value, key=key)
    await p.flush()
    await p.stop()


async def raw_consume(broker, topic, n_messages) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=broker, group_id=None,
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


def pipeline_seconds(messages, models, settings) -> tuple[float, float]:
    t0 = time.perf_counter()
    for _, v, _, _ in messages:
        decode(v)
    codec = time.perf_counter() - t0
    pipe = Pipeline(settings, models)
    pipe.prepare()  # as the worker does before it consumes
    msgs = [Message(0, i, k, v) for i, (k, v, _, _) in enumerate(messages)]

    async def run():
        for i in range(0, len(msgs), BATCH):
            await pipe.process(msgs[i:i + BATCH])
    t0 = time.perf_counter()
    asyncio.run(run())
    return codec, time.perf_counter() - t0


class Worker:
    """A ``vigil worker`` subprocess on its own topics, killed on exit."""

    profile: Path | None = None  # --profile: record every worker with py-spy into this folder

    def __init__(self, broker, model_args, partitions, prefix, log_path: Path):
        self.log_path = log_path
        wrap = []
        if self.profile is not None:
            spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))  # the venv's, unactivated
            wrap = [spy, "record", "--format", "raw", "--rate", "200", "--nonblocking", "--threads",
                    "-o", str(self.profile / f"worker-{prefix}.txt"), "--"]
        self.proc = subprocess.Popen(
            [*wrap, sys.executable, "-m", "cli", "worker", "--broker", broker, *model_args, "--partitions",
             str(partitions), "--topic-prefix", prefix, "--group", f"{prefix}-workers", "--web-port", "0",
             "--rebalance-timeout", "3", "--session-timeout", "6"],
            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError("worker died:\n" + self.log()[-3000:])

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log():
            self.alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker never logged {text!r}:\n" + self.log()[-3000:])
            time.sleep(0.2)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGINT if self.profile else signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


async def _records(broker, topic, partitions):
    out = []
    for p in range(partitions):
        out.extend(await read_partition(broker, topic, p))
    return out


def _scored(recs) -> int:
    return sum(len(orjson.loads(r.value)["ts"]) for r in recs)


def worker_seconds(broker, model_args, n_points, partitions, prefix, workdir: Path) -> float:
    """Seconds from the worker's first fetch to its last score, on a backlog produced beforehand."""
    topics = Topics.named(prefix)
    worker = Worker(broker, model_args, partitions, prefix, workdir / f"worker-{prefix}.log")
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            time.sleep(1)
            worker.alive()
            recs = asyncio.run(_records(broker, topics.scores, partitions))
            if _scored(recs) >= n_points:
                first = FIRST_FETCH.search(worker.log())
                return max(r.timestamp for r in recs) / 1000.0 - float(first.group(1))
        raise TimeoutError("worker did not score every point in time")
    finally:
        worker.stop()


async def paced_produce(broker, topic, messages, rate_msgs: float) -> None:
    """Send messages at ``rate_msgs`` per second, in 10 ms ticks, each tick's messages as one record
    batch per partition (keys placed by the default partitioner, as ``send`` places them): the load
    generator shares the machine with the worker, and sending one by one cost it about half a core
    at 30,000 messages/s, which the worker's latency then paid for."""
    p = producer(broker, linger_ms=0)
    await p.start()
    partitions = sorted(await p.partitions_for(topic))
    place = DefaultPartitioner()
    where = [place(key, partitions, partitions) for key, _, _, _ in messages]
    tick, sent, t0 = 0.01, 0, time.perf_counter()
    pending = []
    while sent < len(messages):
        due = min(len(messages), int((time.perf_counter() - t0) * rate_msgs) + 1)
        batches: dict[int, object] = {}
        for i in range(sent, due):
            key, value = messages[i][0], messages[i][1]
            part = where[i]
            batch = batches.get(part)
            if batch is None:
                batch = batches[part] = p.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send, begin another
                pending.append(await p.send_batch(batch, topic, partition=part))
                batch = batches[part] = p.create_batch()
                batch.append(key=key, value=value, timestamp=None)
        for part, batch in batches.items():
            pending.append(await p.send_batch(batch, topic, partition=part))
        sent = due
        await asyncio.sleep(tick)
    await asyncio.gather(*pending)
    await p.stop()


def latency(broker, model_args, messages, n_points, rate_msgs, partitions, prefix, workdir: Path) -> dict:
    """Reading-to-score and reading-to-alert latencies (seconds) at a paced rate on a settled worker."""
    topics = Topics.named(prefix)
    asyncio.run(ensure_topics(broker, topics.all(), partitions))
    worker = Worker(broker, model_args, partitions, prefix, workdir / f"worker-{prefix}.log")
    try:
        worker.wait_for("recovered")
        time.sleep(2)
        asyncio.run(paced_produce(broker, topics.readings, messages, rate_msgs))
        deadline = time.monotonic() + 300
        while _scored(asyncio.run(_records(broker, topics.scores, partitions))) < n_points:
            worker.alive()
            if time.monotonic() > deadline:
                raise TimeoutError("worker did not score every point in time")
            time.sleep(1)
        time.sleep(1)
        readings = asyncio.run(_records(broker, topics.readings, partitions))
        scores = asyncio.run(_records(broker, topics.scores, partitions))
        alerts = asyncio.run(_records(broker, topics.alerts, partitions))
    finally:
        worker.stop()
    # broker timestamp (ms) of the record that carried each point, by (entity, ts)
    sent: dict[tuple[str, float], int] = {}
    for r in readings:
        msg = orjson.loads(r.value)
        for ts in (msg["ts"] if isinstance(msg["ts"], list) else [msg["ts"]]):
            sent[(msg["entity"], float(ts))] = r.timestamp
    to_score = []
    for r in scores:
        msg = orjson.loads(r.value)
        for ts in msg["ts"]:
            t = sent.get((msg["entity"], float(ts)))
            if t is not None:
                to_score.append(r.timestamp - t)
    to_alert = []
    for r in alerts:
        msg = orjson.loads(r.value)
        if msg["state"] == "open":
            t = sent.get((msg["entity"], float(msg["ts"])))
            if t is not None:
                to_alert.append(r.timestamp - t)
    return {"score": np.asarray(to_score, float) / 1000.0, "alert": np.asarray(to_alert, float) / 1000.0}


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def memory_child(n: int, channels: int, points: int = 3) -> None:
    """In a process of its own: resident bytes per live entity of a fleet of one kind (one shared PCA
    model), each entity sending ``points`` readings, one per message. Measured as a slope: the growth
    of the resident set from ``n / 2`` live entities to ``n``, over ``n / 2`` (what the first entities
    and micro-batches cost once is not the entities' cost); printed as JSON."""
    import ctypes
    import gc

    hist = normal_history("kind", channels, 5000, START, 1)
    det = PCADetector(hist.channels).fit(hist.values[:4000])
    settings = Settings()
    pipe = Pipeline(settings, {"*": det})
    pipe.prepare()
    names = list(hist.channels)
    live = hist.values[4000:]  # readings as the kind behaves, after its training span
    offset, rss = 0, []
    for first, last in ((0, n // 2), (n // 2, n)):
        for j in range(points):
            for lo in range(first, last, BATCH):
                msgs = []
                for i in range(lo, min(last, lo + BATCH)):
                    entity = f"device-{i:06d}"
                    msgs.append(Message(0, offset, entity.encode(),
                                        encode_readings(entity, START + j, live[(7 * i + j) % len(live)], names)))
                    offset += 1
                asyncio.run(pipe.process(msgs))
                del msgs
        gc.collect()
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the allocator holds free is not the entities'
        rss.append(rss_bytes())
    print(orjson.dumps({"entities": len(pipe.entities), "bytes_per_entity": (rss[1] - rss[0]) / (n - n // 2),
                        "rss_mb": rss[1] / 2**20}).decode())


def memory_table(counts: list[int], channels: int, runs: int = 3) -> list[dict]:
    """Each count measured in ``runs`` fresh processes (where the arrays' capacity steps fall moves a
    single figure by a few hundred bytes); the median run reported."""
    out = []
    for n in counts:
        got = []
        for _ in range(runs):
            res = subprocess.run([sys.executable, __file__, "--memory-child", str(n), "--channels", str(channels)],
                                 capture_output=True, text=True, check=True)
            got.append(orjson.loads(res.stdout.strip().splitlines()[-1]))
        got.sort(key=lambda m: m["bytes_per_entity"])
        out.append({**got[len(got) // 2], "runs": [round(m["bytes_per_entity"]) for m in got]})
        print(f"[memory] {n} entities: {out[-1]['bytes_per_entity']:,.0f} B per live entity "
              f"(runs {out[-1]['runs']})", file=sys.stderr)
    return out


PRESETS = {
    # a fleet: many entities of one kind, one reading per entity per message, each at a steady rate
    "fleet": dict(entities=10000, channels=8, points=64, repeats=1, forms="single", memory="1000,10000,50000"),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=sorted(PRESETS), help="fleet: 10,000 entities x 8 channels x 64 "
                    "points, single readings, one repetition, memory at 1,000/10,000/50,000 entities "
                    "(flags given as well override it)")
    ap.add_argument("--memory", default="", help="also measure memory per live entity at these entity counts "
                    "(comma-separated; one shared model)")
    ap.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--entities", type=int, default=8)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--points", type=int, default=20000, help="points per entity")
    ap.add_argument("--batch", type=int, default=100, help="rows per message in the batch form")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", type=float, default=0.5, help="latency run's rate, as a share of the worker's")
    ap.add_argument("--latency-seconds", type=float, default=20, help="length of each latency run")
    ap.add_argument("--forms", default="single,batch")
    ap.add_argument("--profile", type=Path, default=None,
                    help="record each worker with py-spy (collapsed stacks) into this folder (pip install -e .[bench])")
    args = ap.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.channels)
        return
    if args.preset:
        given = {a.split("=")[0].lstrip("-").replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
        for k, v in PRESETS[args.preset].items():
            if k not in given:
                setattr(args, k, v)
    memory = memory_table([int(x) for x in args.memory.split(",") if x], args.channels) if args.memory else []
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        Worker.profile = args.profile

    plant = simulate_plant(args.entities, args.channels, args.points, START, seed=1)
    n_points = args.entities * args.points
    results, latencies = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models, model_args = {}, []
        for s in plant:
            hist = normal_history(s.entity, args.channels, 4000, START, 1)
            det = PCADetector(hist.channels).fit(hist.values)
            models[s.entity] = det
            model_args.append(f"--model={s.entity}={artefacts.save(det, tmp / s.entity)}")
        settings = Settings()
        for form in args.forms.split(","):
            batch = 1 if form == "single" else args.batch
            messages = make_messages(plant, batch)
            proc, broker = start_broker(log=open(tmp / f"broker-{form}.log", "wb"))
            try:
                reps = []
                for rep in range(args.repeats):
                    prefix = f"{form}{rep}"
                    asyncio.run(produce(broker, Topics.named(prefix), messages, args.partitions))
                    raw = asyncio.run(raw_consume(broker, Topics.named(prefix).readings, len(messages)))
                    codec, pipe = pipeline_seconds(messages, models, settings)
                    worker = worker_seconds(broker, model_args, n_points, args.partitions, prefix, tmp)
                    reps.append({"raw": raw, "codec": codec, "pipeline": pipe, "worker": worker})
                    print(f"[{form} {rep + 1}/{args.repeats}] raw {n_points / raw:,.0f}/s, worker "
                          f"{n_points / worker:,.0f}/s ({raw / worker:.3f} of raw)", file=sys.stderr)
                results.append((form, len(messages), reps))
                rate = statistics.median(n_points / r["worker"] for r in reps) * args.load
                per_msg = n_points / len(messages)
                n_lat = min(len(messages), int(rate * args.latency_seconds / per_msg))
                lat = latency(broker, model_args, messages[:n_lat], int(n_lat * per_msg), rate / per_msg,
                              args.partitions, f"{form}lat", tmp)
                latencies.append((form, rate, lat))
                print(f"[{form}] latency at {rate:,.0f} readings/s done", file=sys.stderr)
            finally:
                os.killpg(proc.pid, signal.SIGKILL)

    print(f"\n{args.entities} entities x {args.channels} channels x {args.points} points = {n_points} "
          f"readings; batch form {args.batch} rows/message; {args.partitions} partitions; PCA per entity; "
          f"window 32, hop 16; {args.repeats} repetitions (ratio to the same repetition's raw)\n")
    print("| form | messages | stage | readings/s (median) | ratio to raw: min | median | max |")
    print("|---|---|---|---|---|---|---|")
    names = {"raw": "raw aiokafka consume + orjson parse", "codec": "codec decode only",
             "pipeline": "pipeline, no Kafka", "worker": "vigil worker (end to end)"}
    for form, n_msg, reps in results:
        for stage, label in names.items():
            ratios = [r["raw"] / r[stage] for r in reps]
            rate = statistics.median(n_points / r[stage] for r in reps)
            print(f"| {form} | {n_msg} | {label} | {rate:,.0f} | {min(ratios):.3f} | "
                  f"{statistics.median(ratios):.3f} | {max(ratios):.3f} |")
    print(f"\nLatency at {args.load:g} of the worker's median rate (broker timestamps, ms; micro-batch wait "
          f"{settings.batch_wait * 1000:.0f} ms; a point is scored when its window of 32 completes, hop 16)\n")
    print("| form | offered readings/s | latency | points | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|---|")
    for form, rate, lat in latencies:
        for kind, label in (("score", "reading to score"), ("alert", "reading to alert (incident open)")):
            x = lat[kind] * 1000
            if len(x):
                print(f"| {form} | {rate:,.0f} | {label} | {len(x)} | {np.percentile(x, 50):.0f} | "
                      f"{np.percentile(x, 99):.0f} | {x.max():.0f} |")
            else:
                print(f"| {form} | {rate:,.0f} | {label} | 0 | – | – | – |")
    if memory:
        print(f"\nMemory per live entity (one shared PCA model, {args.channels} channels, 3 readings each; "
              "growth of the resident set from half the entities to all of them, per entity, after malloc_trim)\n")
        print("| live entities | bytes per entity (median of 3 processes) | the 3 runs | process RSS MB |")
        print("|---|---|---|---|")
        for m in memory:
            print(f"| {m['entities']:,} | {m['bytes_per_entity']:,.0f} | {', '.join(map(str, m['runs']))} | "
                  f"{m['rss_mb']:,.0f} |")


if __name__ == "__main__":
    main()
