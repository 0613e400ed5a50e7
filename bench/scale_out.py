"""Throughput with 1, 2 and 3 workers in one group, scoring in process or in a `vigil detector` process.

Each configuration gets a fresh embedded broker with the same messages (batch form) on 6 partitions.
The workers are started and left to settle their partition assignment first, then the messages are
produced; throughput is the points scored over the span of the broker timestamps of the scores.
Ratios are against raw aiokafka consume-and-parse of the same messages and against one in-process
worker, both measured in the same run (machines are noisy; read ratios).

    python bench/scale_out.py [--entities 12] [--channels 16] [--points 4000] [--model lstm_ae]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from throughput import _all, make_messages, produce, raw_consume  # noqa: E402

from detectors import artefacts  # noqa: E402
from producers.simulate import normal_history, simulate_plant  # noqa: E402
from stream.broker import free_port, start_broker  # noqa: E402

START = 1_700_000_000.0
PARTITIONS = 6


def spawn(args, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def settled(logs: list[Path], quiet: float = 5.0) -> bool:
    """Every worker has an assignment and none has logged a new one for ``quiet`` seconds."""
    newest = 0.0
    for log in logs:
        text = log.read_text(errors="replace") if log.exists() else ""
        if "assigned partitions [" not in text.replace("assigned partitions []", ""):
            return False
        newest = max(newest, log.stat().st_mtime)
    return time.time() - newest > quiet


def run_config(workers: int, detector: bool, model: Path, messages, n_points, tmp: Path) -> float:
    procs = []
    broker_proc, broker = start_broker(log=open(tmp / "broker.log", "wb"))
    try:
        args = ["worker", "--broker", broker, "--model", str(model), "--partitions", str(PARTITIONS),
                "--session-timeout", "6", "--rebalance-timeout", "3", "--web-port", "0", "--device", "cpu"]
        if detector:
            port = free_port()
            procs.append(spawn(["detector", "--port", str(port), "--device", "cpu"], tmp / "detector.log"))
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.2)
            args += ["--detector", f"127.0.0.1:{port}"]
        logs = [tmp / f"worker{i}.log" for i in range(workers)]
        for log in logs:
            procs.append(spawn(args, log))
        deadline = time.monotonic() + 180
        while not settled(logs):
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not settle: " + logs[0].read_text()[-2000:])
            time.sleep(1)
        asyncio.run(produce(broker, messages, PARTITIONS))
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            time.sleep(2)
            recs = asyncio.run(_all(broker, "vigil.scores", PARTITIONS))
            if sum(len(orjson.loads(r.value)["ts"]) for r in recs) >= n_points:
                stamps = [r.timestamp for r in recs]
                return n_points / ((max(stamps) - min(stamps)) / 1000.0)
        raise TimeoutError("not every point was scored in time")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        os.killpg(broker_proc.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=12)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--points", type=int, default=4000, help="points per entity")
    ap.add_argument("--batch", type=int, default=100, help="rows per message")
    ap.add_argument("--model", default="lstm_ae", help="one model serving every entity")
    args = ap.parse_args()

    plant = simulate_plant(args.entities, args.channels, args.points, START, seed=1)
    n_points = args.entities * args.points
    messages = make_messages(plant, args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        hist = normal_history(plant[0].entity, args.channels, 4000, START, 1)
        config = {"epochs": 1} if args.model not in ("pca", "iforest", "hst") else {}
        det = artefacts.create(args.model, hist.channels, **config).fit(hist.values, progress=False)
        model = artefacts.save(det, tmp / "model")
        proc, broker = start_broker(log=open(tmp / "broker-raw.log", "wb"))
        try:
            asyncio.run(produce(broker, messages, PARTITIONS))
            raw = n_points / asyncio.run(raw_consume(broker, len(messages)))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
        rows = []
        for detector in (False, True):
            for workers in (1, 2, 3):
                rate = run_config(workers, detector, model, messages, n_points, tmp)
                rows.append((workers, detector, rate))
                print(f"[{workers} workers, {'detector process' if detector else 'in process'}] {rate:,.0f}/s",
                      file=sys.stderr)
    base = rows[0][2]
    print(f"\n{args.entities} entities x {args.channels} channels x {args.points} points = {n_points} readings, "
          f"{len(messages)} messages of {args.batch} rows, {PARTITIONS} partitions; one {args.model} model; "
          f"{os.cpu_count()} CPUs\n")
    print("| workers | scoring | readings/s | ratio to raw consume | ratio to 1 in-process worker |")
    print("|---|---|---|---|---|")
    print(f"| – | raw aiokafka consume + orjson parse | {raw:,.0f} | 1.000 | {raw / base:.2f} |")
    for workers, detector, rate in rows:
        print(f"| {workers} | {'one vigil detector process' if detector else 'in process'} | {rate:,.0f} | "
              f"{rate / raw:.3f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()
