"""A group that is behind: a backlog, a second worker joining a third of the way through, live readings
on top. Does every worker's loop still answer, and is every point scored exactly once?

As a new user would (issue 33's acceptance): ``vigil simulate --rate 0 --batch 100`` writes ENTITIES x
POINTS past readings to a fresh embedded broker; ``vigil worker`` starts on them (no models: every
entity cold-starts); once a third of them are scored a second ``vigil worker`` joins the group, and
``vigil simulate`` sends LIVE_ENTITIES readings a second each, for LIVE_POINTS seconds (``--start`` now:
live timestamps; the first ENTITIES of them continue the backlog's entities). Both workers' ``/metrics``
are polled every half second with a 1 s timeout, and their resident memory read from /proc, until every
reading is scored. Then every score record is read back: each (entity, ts) must be scored once.

Reports per worker: polls, response p50/p99/max, polls over 1 s or failed, peak RSS, partition
assignments and "keepalive" warnings in its log; and the catch-up: time from the first score to the
last, readings per second, points scored once, missing and doubled.

    .venv/bin/python bench/overload.py --entities 40 --points 50000 --live-entities 4000 --live-points 50
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from scoring.settings import Settings  # noqa: E402
from stream.broker import free_port, start_broker  # noqa: E402
from stream.kafka import read_partition  # noqa: E402

READINGS = re.compile(r"^vigil_readings_total ([0-9.e+]+)", re.M)


class Watched:
    """A ``vigil worker`` whose /metrics is polled and whose memory is read, a poll at a time."""

    def __init__(self, vigil: str, broker: str, log: Path):
        self.port, self.log = free_port("127.0.0.1"), log
        self.proc = subprocess.Popen([vigil, "worker", "--broker", broker, "--web-port", str(self.port)],
                                     stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        self.polls, self.failed, self.rss, self.readings = [], 0, 0, 0.0

    def poll(self) -> None:
        a = time.perf_counter()
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=1).read().decode()
            self.readings = float(m.group(1)) if (m := READINGS.search(body)) else self.readings
            self.polls.append(time.perf_counter() - a)
        except OSError:
            if self.readings > 0:  # before the first readings, the worker may still be starting
                self.polls.append(time.perf_counter() - a)
                self.failed += 1
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            self.rss = max(self.rss, int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) * 1024)
        except (OSError, AttributeError):
            pass

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.log.read_text(errors="replace")


def scored_points(broker: str, topic: str, partitions: int) -> Counter:
    """How many times each (entity, ts) was scored, from every score record of ``topic``."""
    counts = Counter()
    for p in range(partitions):
        for r in asyncio.run(read_partition(broker, topic, p)):
            m = orjson.loads(r.value)
            counts.update((m["entity"], t) for t in m["ts"])
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=40)
    ap.add_argument("--points", type=int, default=50_000, help="past readings per entity")
    ap.add_argument("--batch", type=int, default=100, help="rows per past message")
    ap.add_argument("--live-entities", type=int, default=4000, help="entities sending live readings")
    ap.add_argument("--live-points", type=int, default=50, help="live readings per entity, one a second")
    ap.add_argument("--join-at", type=float, default=1 / 3, help="share of the backlog scored when worker 2 joins")
    ap.add_argument("--timeout", type=float, default=1800, help="give up after this many seconds")
    args = ap.parse_args()
    vigil = str(Path(sys.executable).with_name("vigil"))
    backlog, live = args.entities * args.points, args.live_entities * args.live_points
    total = backlog + live
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proc, broker = start_broker(log=open(tmp / "broker.log", "wb"))
        workers, sender = [], None
        try:
            subprocess.run([vigil, "simulate", "--broker", broker, "--entities", str(args.entities), "--points",
                            str(args.points), "--rate", "0", "--batch", str(args.batch)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            workers.append(Watched(vigil, broker, tmp / "worker1.log"))
            t0, first, done, joined_at = time.monotonic(), None, None, None
            while time.monotonic() - t0 < args.timeout and all(w.proc.poll() is None for w in workers):
                a = time.perf_counter()
                for w in workers:
                    w.poll()
                scored = sum(w.readings for w in workers)
                if first is None and scored > 0:
                    first = time.monotonic()
                if joined_at is None and scored >= args.join_at * backlog:
                    joined_at = time.monotonic()
                    workers.append(Watched(vigil, broker, tmp / "worker2.log"))
                    sender = subprocess.Popen(
                        [vigil, "simulate", "--broker", broker, "--entities", str(args.live_entities), "--points",
                         str(args.live_points), "--rate", "1", "--start", str(time.time())],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if scored >= total:
                    done = time.monotonic()
                    break
                time.sleep(max(0.0, 0.5 - (time.perf_counter() - a)))
            alive = [w.proc.poll() is None for w in workers]
            if sender is not None:
                sender.wait(120)
            settings = Settings()  # the topics and partitions a worker creates by default
            counts = scored_points(broker, settings.topics.scores, settings.partitions) if done else Counter()
            logs = [w.stop() for w in workers]
        finally:
            for w in workers:
                if w.proc.poll() is None:
                    w.proc.kill()
            os.killpg(proc.pid, signal.SIGKILL)
    print(f"\n{args.entities} entities x {args.points} past readings ({backlog:,}, batch form {args.batch} rows, "
          f"cold start); worker 2 joins at {args.join_at:.0%} scored, with {args.live_entities} entities x "
          f"{args.live_points} live readings a second each ({live:,}, single form)\n")
    print("| worker | alive at the end | /metrics polls | p50 ms | p99 ms | max ms | over 1 s or failed | peak RSS MB | "
          "assignments | keepalive warnings |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for i, (w, text, up) in enumerate(zip(workers, logs, alive), 1):
        x = np.array(w.polls or [np.nan]) * 1000
        print(f"| {i} | {'yes' if up else 'NO'} | {len(w.polls)} | {np.percentile(x, 50):.0f} | "
              f"{np.percentile(x, 99):.0f} | {np.nanmax(x):.0f} | {int((x > 1000).sum())} ({w.failed} failed) | "
              f"{w.rss / 2**20:,.0f} | {text.count('assigned partitions')} | {text.count('keepalive')} |")
    span = (done - first) if done and first else float("nan")
    doubled = sum(1 for c in counts.values() if c > 1)
    print(f"\ncaught up {span:.1f} s after the first score ({total / span:,.0f} readings/s); "
          f"points scored: {len(counts):,} of {total:,}, missing {total - len(counts):,}, doubled {doubled:,}")
    if done is None or doubled or len(counts) != total or not all(alive):
        sys.exit("FAILED: a worker died, a point was lost or doubled, or the backlog was not scored in time")


if __name__ == "__main__":
    main()
