"""Soak: a worker held at about 80% of its measured maximum rate for 30 minutes, its RSS sampled.

1. Overload: the producer sends as fast as it can for ``--overload`` seconds (60) while the worker's
   readings per second are read from its /metrics over the second half: the maximum rate the worker
   sustains on this machine with this producer beside it (a backlog consumed with the producer idle
   overstates it: the first run, timed that way, could not keep up with 80% of it).
2. Soak: the same plant is produced at ``--load`` (0.8) of that rate for ``--minutes`` (30); the
   worker's RSS is sampled every 10 s. Reported: RSS at the end of the warm-up (``--warmup`` minutes,
   5) and at the end, and the growth between them (goal < 10%), plus consumer lag at the end.

With ``--burst X`` (issue 33) step 2 is a burst instead: the plant is produced at X times the maximum
for ``--minutes``, then stops, and the worker drains what it fell behind. ``/metrics`` is polled every
half second with a 1 s timeout throughout. Reported: the polls' response p50/p99/max and how many took
over 1 s or failed; the partition assignments in the worker's log (one: no rebalance); the rate at
which it drained after the burst against the rate at which it drained the unthrottled minute's
backlog with the producer idle (the backlog rate, same run); and its readings scored against those
sent (each counted once: none lost, none twice).

Not part of the test suite (it takes half an hour).

    python bench/soak.py [--minutes 30] [--load 0.8] [--entities 20] [--channels 8] [--batch 10]
    python bench/soak.py --burst 1.5 --minutes 10
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
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


def metrics(url: str, timeout: float = 5) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=timeout) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            base = name.split("{")[0]
            out[base] = out.get(base, 0.0) + float(value)
    return out


class Poller(threading.Thread):
    """``/metrics`` every half second with a 1 s timeout: (time, seconds to answer or None if it did not,
    readings scored, messages behind)."""

    def __init__(self, url: str):
        super().__init__(daemon=True)
        self.url, self.samples, self.stopped = url, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            a = time.perf_counter()
            try:
                m = metrics(self.url, timeout=1)
                self.samples.append((time.monotonic(), time.perf_counter() - a, m.get("vigil_readings_total", 0.0),
                                     m.get("vigil_consumer_lag", 0.0)))
            except OSError:
                self.samples.append((time.monotonic(), None, None, None))
            self.stopped.wait(max(0.0, 0.5 - (time.perf_counter() - a)))


def drain_rate(samples: list, since: float) -> float:
    """Readings scored per second from ``since`` until the lag first reached 0 (or the last sample)."""
    ok = [s for s in samples if s[0] >= since and s[2] is not None]
    end = next((s for s in ok if s[3] == 0), ok[-1])
    return (end[2] - ok[0][2]) / max(end[0] - ok[0][0], 1e-3)


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


def memory_low(floor_gb: float = 3.0) -> bool:
    """The machine has less than ``floor_gb`` available: the embedded broker keeps every message in
    memory, so a long burst can exhaust the machine (issue 11's soak stalled that way)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) < floor_gb * 2**20
    return False


async def produce(broker: str, plant: Plant, rate: float | None, seconds: float, rounds: int | None = None,
                  stop=None) -> int:
    """Produce rounds at ``rate`` readings/s (None: as fast as possible) for ``seconds`` or ``rounds``, or
    until ``stop()`` (asked every 1,000 rounds) says so."""
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
            if stop is not None and n % 1000 == 0 and stop():
                break
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
    ap.add_argument("--burst", type=float, default=0.0, help="a burst at this many times the maximum instead of the soak")
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
        poller = Poller(url)
        poller.start()
        backlog = asyncio.run(overload())
        (t0, first), (t1, last) = samples_max[0], samples_max[-1]
        max_rate = (last - first) / max(t1 - t0, 1e-3)
        idle_from = time.monotonic()
        while metrics(url).get("vigil_consumer_lag", 0.0) > 0:  # let it catch up before the soak
            time.sleep(1)
        if args.burst:
            return burst(args, broker, plant, url, w, tmp, poller, max_rate, drain_rate(poller.samples, idle_from))
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


def burst(args, broker: str, plant: Plant, url: str, w: subprocess.Popen, tmp: Path, poller: Poller,
          max_rate: float, backlog_rate: float) -> int:
    """``--burst``: X times the maximum for ``--minutes``, then the drain (see the module's docstring)."""
    rate = args.burst * max_rate
    print(orjson.dumps({"max_rate": round(max_rate), "backlog_rate": round(backlog_rate),
                        "burst_rate": round(rate)}).decode(), flush=True)
    t_burst = time.monotonic()
    sent_before = int(metrics(url).get("vigil_readings_total", 0))
    sent = asyncio.run(produce(broker, plant, rate, args.minutes * 60, stop=memory_low))
    t_end = time.monotonic()
    deadline = t_end + 4 * args.minutes * 60
    while time.monotonic() < deadline and w.poll() is None:
        m = metrics(url)
        if m.get("vigil_consumer_lag", 1.0) == 0 and m.get("vigil_readings_total", 0) >= sent_before + sent:
            break
        time.sleep(1)
    t_done = time.monotonic()
    poller.stopped.set()
    poller.join()
    m = metrics(url)
    polls = [s for s in poller.samples if s[0] >= t_burst]
    took = np.array([s[1] for s in polls if s[1] is not None]) * 1000
    log = (tmp / "worker.log").read_text(errors="replace")
    scored = int(m.get("vigil_readings_total", 0)) - sent_before
    result = {
        "minutes": args.minutes, "burst_s": round(t_end - t_burst, 1), "max_rate": round(max_rate),
        "burst_rate": round(rate), "sent": sent,
        "achieved_send_rate": round(sent / (t_end - t_burst)), "lag_at_burst_end": next(
            (int(s[3]) for s in reversed(polls) if s[0] <= t_end and s[3] is not None), None),
        "drain_s": round(t_done - t_end, 1), "drain_rate": round(drain_rate(poller.samples, t_end)),
        "backlog_rate": round(backlog_rate), "drain_over_backlog": round(drain_rate(poller.samples, t_end) / backlog_rate, 3),
        "polls": len(polls), "p50_ms": round(float(np.percentile(took, 50)), 1),
        "p99_ms": round(float(np.percentile(took, 99)), 1), "max_ms": round(float(took.max()), 1),
        "over_1s_or_failed": int((took > 1000).sum()) + sum(1 for s in polls if s[1] is None),
        "assignments": log.count("assigned partitions"), "keepalive_warnings": log.count("keepalive"),
        "scored": scored, "scored_minus_sent": scored - sent, "dlq": int(m.get("vigil_dlq_total", 0)),
        "rss_mb": round(rss_mb(w.pid), 1), "worker_alive": w.poll() is None}
    print(orjson.dumps({"result": result}).decode(), flush=True)
    return 0 if result["worker_alive"] and scored == sent else 1


if __name__ == "__main__":
    raise SystemExit(main())
