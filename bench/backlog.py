"""A worker facing a backlog: does its event loop still answer while it catches up?

Writes ENTITIES x POINTS past readings (the batch form, ``vigil simulate --rate 0``) to a fresh embedded
broker, starts one ``vigil worker`` (no models: every entity cold-starts, as on a new user's first day)
and polls its ``/metrics`` every half second with a 1 s timeout until every reading is scored. Reports the
polls' response times, how many took over 1 s or failed, the catch-up time and rate, and the worker log's
"keepalive" and overlapping-timer warnings. The first part of issue 33's acceptance (a second worker
joining and live readings on top are not in it yet).

    .venv/bin/python bench/backlog.py --entities 40 --points 10000
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.broker import free_port, start_broker  # noqa: E402

READINGS = re.compile(r"^vigil_readings_total ([0-9.e+]+)", re.M)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=40)
    ap.add_argument("--points", type=int, default=10000, help="past readings per entity")
    ap.add_argument("--batch", type=int, default=100, help="rows per message")
    ap.add_argument("--timeout", type=float, default=900, help="give up after this many seconds")
    args = ap.parse_args()
    vigil = str(Path(sys.executable).with_name("vigil"))
    total = args.entities * args.points
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        proc, broker = start_broker(log=open(tmp / "broker.log", "wb"))
        try:
            subprocess.run([vigil, "simulate", "--broker", broker, "--entities", str(args.entities), "--points",
                            str(args.points), "--rate", "0", "--batch", str(args.batch)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            port = free_port("127.0.0.1")
            log = tmp / "worker.log"
            worker = subprocess.Popen([vigil, "worker", "--broker", broker, "--web-port", str(port)],
                                      stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
            polls, failed, t0, done, first = [], 0, time.monotonic(), None, None
            while time.monotonic() - t0 < args.timeout and worker.poll() is None:
                a = time.perf_counter()
                try:
                    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read().decode()
                    n = float(m.group(1)) if (m := READINGS.search(body)) else 0.0
                    if first is not None or n > 0:
                        polls.append(time.perf_counter() - a)
                        first = first or time.monotonic()
                    if n >= total:
                        done = time.monotonic()
                        break
                except OSError:
                    if first is not None:
                        polls.append(time.perf_counter() - a)
                        failed += 1
                time.sleep(max(0.0, 0.5 - (time.perf_counter() - a)))
            worker.send_signal(signal.SIGTERM)
            worker.wait(60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
        text = log.read_text(errors="replace")
    x = np.array(polls) * 1000
    print(f"\n{args.entities} entities x {args.points} past readings ({total:,}), batch form {args.batch} rows, "
          f"one worker, cold start\n")
    print("| scored all after first score (s) | readings/s | /metrics polls | p50 ms | p99 ms | max ms | over 1 s or "
          "failed | keepalive warnings | overlapping-timer warnings |")
    print("|---|---|---|---|---|---|---|---|---|")
    span = (done - first) if done and first else float("nan")
    print(f"| {span:.1f} | {total / span:,.0f} | {len(x)} | {np.percentile(x, 50):.0f} | {np.percentile(x, 99):.0f} | "
          f"{x.max():.0f} | {int((x > 1000).sum())} ({failed} failed) | {text.count('keepalive')} | "
          f"{text.count('overlapping')} |")
    if done is None:
        sys.exit("the worker did not score every reading in time")


if __name__ == "__main__":
    main()
