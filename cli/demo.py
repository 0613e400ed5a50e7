"""``vigil demo``: the whole product on one machine, in one command.

Starts the embedded broker, trains a PCA model per simulated entity on its normal history, starts a
worker and the simulator as child processes, and prints each alert beside the anomaly the simulator
injected there. Ctrl-C (or ``--duration``) stops every child; none is left behind.
"""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson

from stream.broker import free_port, port_is_free, start_broker


def _stop(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout)
    except (subprocess.TimeoutExpired, ProcessLookupError, PermissionError):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def train_models(entities: list[str], channels: int, end_ts: float, seed: int, workdir: Path,
                 points: int = 86400) -> dict[str, Path]:
    """Vigil's default model per entity (``auto``: its candidates judged on the newest fifth, PCA serving the
    simulated plant's correlated channels), trained on a day of its simulated normal history (the data an
    operator already has: a day, so that the plant's daily cycle is normal to it)."""
    from tqdm import tqdm

    from detectors import artefacts
    from producers.simulate import normal_history
    from training.selection import fit_model

    out = {}
    for entity in tqdm(entities, desc="training models (auto: pca, var and knn judged per entity)", unit="entity"):
        hist = normal_history(entity, channels, points, end_ts, seed)
        det = fit_model(artefacts.DEFAULT_MODEL, hist.channels, hist.values, progress=False, interval=1.0)
        out[entity] = artefacts.save(det, workdir / "models" / entity)
    return out


def _truth(labels_path: Path) -> list[dict]:
    if not labels_path.exists():
        return []
    return [orjson.loads(line) for line in labels_path.read_bytes().splitlines() if line.strip()]


def _describe(alert: dict, truth: list[dict]) -> str:
    chans = ", ".join(f"{c['channel']} ({c['score']:.1f})" for c in alert["channels"])
    line = (f"{alert['state'].upper():6} {alert['entity']}  {time.strftime('%H:%M:%S', time.localtime(alert['start']))}"
            f"  score {alert['score']:.2f} > {alert['threshold']:.2f}  channels: {chans}")
    if alert["state"] == "open":
        hit = [t for t in truth if t["entity"] == alert["entity"]
               and t["start"] - 5 <= alert["start"] <= t["end"] + 10]
        if hit:
            t = hit[0]
            top = [c["channel"] for c in alert["channels"][:3]]
            ok = "channel hit" if set(t["channels"]) & set(top) else "channel miss"
            line += f"\n       truth: {t['kind']} on {', '.join(t['channels'])} ({ok})"
        else:
            line += "\n       truth: no injected anomaly here (false alarm, or one still being written)"
    return line


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run_demo(args) -> int:
    from producers.simulate import simulate_plant

    # Ctrl-C and `kill` both stop the demo cleanly, also when a shell started it with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    port = args.port
    try:
        try:
            broker_proc, broker = start_broker("127.0.0.1", port, log=open(workdir / "broker.log", "wb"))
        except (TimeoutError, OSError) as exc:
            port = free_port()
            print(f"vigil demo: port {args.port} unavailable ({exc}); using {port}")
            broker_proc, broker = start_broker("127.0.0.1", port, log=open(workdir / "broker.log", "wb"))
        procs.append(broker_proc)
        print(f"vigil demo: embedded broker on {broker}")
        # one simulated second per point, sent at --rate points/s: the series ends now, so no reading
        # is ahead of the wall clock (the worker refuses readings from the future)
        start = float(int(time.time())) - args.points
        seed = 0
        entities = [s.entity for s in simulate_plant(args.entities, args.channels, 1, start, seed)]
        print(f"vigil demo: training a model per entity on a day of its history: auto fits pca, var and knn and "
              f"judges them without labels (about 15 s an entity)", flush=True)
        models = train_models(entities, args.channels, start, seed, workdir)
        model_args = [f"--model={e}={p}" for e, p in models.items()]
        cli = [sys.executable, "-m", "cli"]
        env = {**os.environ, "VIGIL_BROKER": broker, "PYTHONUNBUFFERED": "1"}
        web = args.web_port if port_is_free("127.0.0.1", args.web_port) else free_port()
        worker = subprocess.Popen([*cli, "worker", *model_args, "--web-port", str(web)],
                                  stdout=open(workdir / "worker.log", "wb"),
                                  stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(worker)
        labels = workdir / "labels.jsonl"
        sim = subprocess.Popen([*cli, "simulate", "--entities", str(args.entities), "--channels",
                                str(args.channels), "--points", str(args.points), "--rate", str(args.rate),
                                "--start", str(start), "--seed", str(seed), "--labels", str(labels)],
                               stdout=subprocess.DEVNULL, stderr=open(workdir / "simulate.log", "wb"),
                               env=env, start_new_session=True)
        procs.append(sim)
        print(f"vigil demo: {args.entities} simulated entities x {args.channels} channels at {args.rate:g} "
              f"points/s each; the first anomalies come after about {300 / args.rate:.0f} s of warm-up.\n"
              f"  dashboard: http://127.0.0.1:{web}/  (Prometheus metrics at /metrics)\n"
              f"  alerts:  VIGIL_BROKER={broker} vigil alerts --follow\n"
              f"  scores:  topic vigil.scores on {broker}; dead letters: vigil.dlq\n"
              f"  logs:    {workdir}/worker.log, {workdir}/simulate.log; ground truth: {labels}\n"
              f"Press Ctrl-C to stop.\n", flush=True)
        asyncio.run(_print_alerts(broker, labels, args.duration, worker))
    except KeyboardInterrupt:
        print("\nvigil demo: stopping")
    finally:
        for p in reversed(procs):
            _stop(p)
    return 0


async def _print_alerts(broker: str, labels: Path, duration: float | None, worker: subprocess.Popen) -> None:
    from stream.kafka import tail_json

    deadline = None if duration is None else time.monotonic() + duration
    opened = 0

    async def watch():
        nonlocal opened
        async for alert in tail_json(broker, "vigil.alerts", follow=True):
            if alert["state"] == "open":
                opened += 1
            print(_describe(alert, _truth(labels)), flush=True)

    task = asyncio.create_task(watch())
    try:
        while not task.done():
            if deadline is not None and time.monotonic() > deadline:
                break
            if worker.poll() is not None:
                print("vigil demo: the worker stopped; see its log", file=sys.stderr)
                break
            await asyncio.sleep(0.5)
    finally:
        if task.done() and not task.cancelled() and task.exception() is not None:
            print(f"vigil demo: reading alerts failed: {task.exception()!r}", file=sys.stderr)
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - reported above
            pass
    print(f"vigil demo: {opened} incidents opened")
