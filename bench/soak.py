"""Soak: a worker held at about 80% of its measured maximum rate for 30 minutes, its RSS sampled.

1. Overload: the producer sends as fast as it can for ``--overload`` seconds (60) while the worker's
   readings per second are read from its /metrics over the second half: the maximum rate the worker
   sustains on this machine with this producer beside it (a backlog consumed with the producer idle
   overstates it: the first run, timed that way, could not keep up with 80% of it).
2. Soak: the same plant is produced at ``--load`` (0.8) of that rate for ``--minutes`` (30); the
   worker's RSS is sampled every 10 s. Reported: RSS at the end of the warm-up (``--warmup`` minutes,
   5) and at the end, and the growth between them (goal < 10%), plus consumer lag at the end.

Not part of the test suite (it takes half an hour).

    python bench/soak.py [--minutes 30] [--load 0.8] [--entities 20] [--channels 8] [--batch 10]
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
import urllib.request
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import artefacts  # noqa: E402
from detectors.pca import PCADetector  # noqa: E402
from producers.simulate import normal_history, simulate_plant  # noqa: E402
from scoring.codec import encode_readings  # noqa: E402
from scoring.settings import Topics  # noqa: E402
from stream.broker import free_port, start_broker  # noqa: E402
from stream.kafka import ensure_topics, producer  # noqa: E402

TOPICS = Topics().all()
STEP = 0.001  # seconds between a simulated entity's points: 30 minutes of load stay in the past


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            base = name.split("{")[0]
            out[base] = out.get(base, 0.0) + float(value)
    return out


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Plant:
    """An endless simulated plant: one cycle of simulated readings replayed with advancing timestamps."""

    def __init__(self, entities: int, channels: int, batch: int, start: float, length: int = 4000):
        self.series = simulate_plant(entities, channels, length, 0.0, seed=5)
        self.batch, self.start, self.length = batch, start, length
        self.i = 0  # rows sent per entity so far

    def next_round(self) -> list[tuple[bytes, bytes]]:
        """One message per entity, ``batch`` rows each."""
        j = self.i % self.length
        rows = np.arange(j, min(j + self.batch, self.length))
        ts = self.start + (self.i + np.arange(len(rows))) * STEP
        self.i += len(rows)
        return [(s.entity.encode(), encode_readings(s.entity, ts, s.values[rows], s.channels)) for s in self.series]


async def produce(broker: str, plant: Plant, rate: float | None, seconds: float, rounds: int | None = None) -> int:
    """Produce rounds at ``rate`` readings/s (None: as fast as possible) for ``seconds`` or ``rounds``."""
    p = producer(broker, linger_ms=5)
    await p.start()
    sent, t0 = 0, time.monotonic()
    per_round = len(plant.series) * plant.batch
    try:
        n = 0
        while (rounds is None and time.monotonic() - t0 < seconds) or (rounds is not None and n < rounds):
            for key, value in plant.next_round():
                await p.send("vigil.readings", value, key=key)
            sent += per_round
            n += 1
            if rate:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        await p.flush()
    finally:
        await p.stop()
    return sent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--load", type=float, default=0.8)
    ap.add_argument("--entities", type=int, default=20)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--overload", type=float, default=60.0, help="seconds of the unthrottled run")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="vigil-soak-"))
    proc, broker = start_broker(log=open(tmp / "broker.log", "wb"))
    asyncio.run(ensure_topics(broker, TOPICS, 4))
    start = time.time() - 3 * 3600
    hist = normal_history("plant-01", args.channels, 4000, start, 5)
    model = artefacts.save(PCADetector(hist.channels).fit(hist.values), tmp / "model")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    w = subprocess.Popen([sys.executable, "-m", "cli", "worker", "--broker", broker, "--model", str(model),
                          "--web-port", str(port)], stdout=open(tmp / "worker.log", "wb"),
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        while True:
            try:
                metrics(url)
                break
            except OSError:
                time.sleep(0.5)
        plant = Plant(args.entities, args.channels, args.batch, start)
        # 1. the overload: what the worker sustains while the producer runs flat out beside it
        samples_max = []

        async def overload():
            task = asyncio.create_task(produce(broker, plant, None, args.overload))
            await asyncio.sleep(args.overload / 2)
            while not task.done():
                samples_max.append((time.monotonic(), metrics(url).get("vigil_readings_total", 0.0)))
                await asyncio.sleep(2)
            return await task
        backlog = asyncio.run(overload())
        (t0, first), (t1, last) = samples_max[0], samples_max[-1]
        max_rate = (last - first) / max(t1 - t0, 1e-3)
        while metrics(url).get("vigil_consumer_lag", 0.0) > 0:  # let it catch up before the soak
            time.sleep(1)
        rate = args.load * max_rate
        print(orjson.dumps({"overload_readings": backlog, "max_rate": round(max_rate), "soak_rate": round(rate)}).decode(),
              flush=True)
        # 2. the soak
        samples = []

        async def soak():
            task = asyncio.create_task(produce(broker, plant, rate, args.minutes * 60))
            t_start = time.monotonic()
            while not task.done():
                await asyncio.sleep(10)
                m = metrics(url)
                samples.append((round(time.monotonic() - t_start), round(rss_mb(w.pid), 1),
                                int(m.get("vigil_readings_total", 0)), int(m.get("vigil_consumer_lag", 0))))
                print(orjson.dumps({"t": samples[-1][0], "rss_mb": samples[-1][1], "readings": samples[-1][2],
                                    "lag": samples[-1][3]}).decode(), flush=True)
            return await task
        sent = asyncio.run(soak())
        warm = [s for s in samples if s[0] >= args.warmup * 60]
        rss_warm, rss_end = warm[0][1], samples[-1][1]
        result = {"minutes": args.minutes, "max_rate": round(max_rate), "soak_rate": round(rate), "sent": sent,
                  "rss_after_warmup_mb": rss_warm, "rss_end_mb": rss_end, "rss_max_mb": max(s[1] for s in warm),
                  "growth_after_warmup": round((rss_end - rss_warm) / rss_warm, 4), "lag_end": samples[-1][3],
                  "worker_alive": w.poll() is None}
        print(orjson.dumps({"result": result}).decode(), flush=True)
        (tmp / "samples.json").write_bytes(orjson.dumps(samples))
        print(f"samples: {tmp / 'samples.json'}", flush=True)
        return 0
    finally:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)


if __name__ == "__main__":
    raise SystemExit(main())
