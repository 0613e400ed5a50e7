"""Memory under an entity flood: what one entity costs in memory, live and evicted, and the worker's
resident memory before and after N new entities of 3 readings each (a producer bug inventing ids).

Two measurements:
  in process  Pipeline alone, tracemalloc: bytes per live entity, then per evicted entity (the index
              entry that finds its state in vigil.state again)
  worker      a real ``vigil worker`` on the embedded broker: RSS after warm-up, after the flood,
              and after its checkpoints have evicted what they may

    python bench/flood.py [--entities 50000] [--code DIR] [-- worker flags...]

``--code`` runs the worker of another checkout (e.g. the previous release, for a before/after).
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoring.settings import Topics  # noqa: E402
from stream.broker import free_port, start_broker  # noqa: E402
from stream.kafka import ensure_topics, producer  # noqa: E402

TOPICS = Topics().all()


def flood_messages(n: int, start: float, channels: int = 4, readings: int = 3) -> list[tuple[bytes, bytes]]:
    out = []
    for r in range(readings):
        for i in range(n):
            e = f"flood-{i:06d}"
            out.append((e.encode(), orjson.dumps({"entity": e, "ts": start + r, "values": [float(i % 7)] * channels})))
    return out


def in_process(n: int) -> dict:
    """tracemalloc of the pipeline: live entities, then the same entities evicted."""
    from scoring.pipeline import Message, Pipeline
    from scoring.settings import Settings

    pipe = Pipeline(Settings(max_live_entities=0, entity_ttl=0, max_entities=n + 1))
    msgs = [Message(0, i, k, v) for i, (k, v) in enumerate(flood_messages(n, time.time() - 7200))]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(0, len(msgs), 1000):
        asyncio.run(pipe.process(msgs[i:i + 1000]))
    gc.collect()
    live = tracemalloc.get_traced_memory()[0] - base
    for offset, (key, _) in enumerate(pipe.checkpoint(0)):  # as if written to vigil.state
        pipe.stored(0, key, offset)
    evicted = pipe.evict()
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return {"entities": n, "live_bytes_per_entity": live / n, "evicted": evicted,
            "evicted_bytes_per_entity": after / n}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


async def produce(broker: str, messages) -> None:
    p = producer(broker, linger_ms=20)
    await p.start()
    try:
        for key, value in messages:
            await p.send("vigil.readings", value, key=key)
        await p.flush()
    finally:
        await p.stop()


def worker_run(n: int, code: Path, extra: list[str]) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="vigil-flood-"))
    proc, broker = start_broker(log=open(tmp / "broker.log", "wb"))
    port = free_port()
    asyncio.run(ensure_topics(broker, TOPICS, 4))
    entry = "cli" if (code / "cli").is_dir() else "stream.cli"  # the CLI's home before the layers
    w = subprocess.Popen([sys.executable, "-m", entry, "worker", "--broker", broker, "--web-port", str(port),
                          *extra], cwd=code, stdout=open(tmp / "worker.log", "wb"), stderr=subprocess.STDOUT,
                         start_new_session=True, env={**os.environ, "PYTHONPATH": str(code)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                metric(url, "vigil_messages")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        start = time.time() - 7200
        warm = [(f"warm-{i}".encode(), orjson.dumps({"entity": f"warm-{i}", "ts": start + j, "values": [1.0] * 4}))
                for j in range(200) for i in range(4)]
        asyncio.run(produce(broker, warm))
        while metric(url, "vigil_messages") < len(warm):
            time.sleep(0.5)
        time.sleep(5)
        before = rss_mb(w.pid)
        msgs = flood_messages(n, start + 1000)
        t0 = time.monotonic()
        asyncio.run(produce(broker, msgs))
        while metric(url, "vigil_messages") < len(warm) + len(msgs):
            if w.poll() is not None:
                raise RuntimeError(f"the worker exited: {(tmp / 'worker.log').read_text()[-2000:]}")
            time.sleep(1)
        seconds = time.monotonic() - t0
        after = rss_mb(w.pid)
        time.sleep(10)  # checkpoints, evictions
        settled = rss_mb(w.pid)
        try:
            live = metric(url, 'vigil_entities{state="live"}')
            evicted = metric(url, 'vigil_entities{state="evicted"}')
        except Exception:  # noqa: BLE001 - an older worker has no such metric
            live = evicted = float("nan")
        return {"entities": n, "messages": len(msgs), "seconds": round(seconds, 1), "rss_before_mb": round(before, 1),
                "rss_after_flood_mb": round(after, 1), "rss_settled_mb": round(settled, 1),
                "per_entity_kb": round((settled - before) * 1024 / n, 2), "live": live, "evicted": evicted}
    finally:
        os.killpg(w.pid, signal.SIGKILL)
        os.killpg(proc.pid, signal.SIGKILL)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entities", type=int, default=50_000)
    ap.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1],
                    help="checkout whose worker to run (default: this one)")
    ap.add_argument("--skip-in-process", action="store_true")
    ap.add_argument("worker_args", nargs="*", help="extra flags for the worker (after --)")
    args = ap.parse_args()
    if not args.skip_in_process:
        print(orjson.dumps({"in_process": in_process(args.entities)}).decode(), flush=True)
    print(orjson.dumps({"worker": worker_run(args.entities, args.code.resolve(), args.worker_args),
                        "code": str(args.code), "flags": args.worker_args}).decode(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
