"""The ``vigil`` command line: parses arguments and calls the functions that do the work."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time

import orjson

from .config import DEFAULT_BROKER, Settings, broker_from_env
from .kafka import BrokerUnavailable, check_broker


def _broker_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=None,
                   help=f"Kafka bootstrap HOST:PORT (default: $VIGIL_BROKER or {DEFAULT_BROKER})")


def _param(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return key, float(value)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vigil", description="Streaming anomaly detection on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (tansu) in the foreground")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)

    d = Settings()
    p = sub.add_parser("worker", help="score vigil.readings and publish scores and alerts")
    _broker_arg(p)
    p.add_argument("--model", action="append", default=[], metavar="[ENTITY=]PATH",
                   help="model artefact directory, for one entity (ENTITY=PATH) or for every entity "
                        "whose channels match (PATH); entities without a model use the cold-start detector")
    p.add_argument("--partitions", type=int, default=d.partitions)
    p.add_argument("--group", default=d.group)
    p.add_argument("--window", type=int, default=d.window)
    p.add_argument("--hop", type=int, default=d.hop)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="messages per micro-batch")
    p.add_argument("--batch-wait", type=float, default=d.batch_wait, help="seconds a micro-batch waits")
    p.add_argument("--threshold", choices=["spot", "dspot", "percentile"], default=d.threshold)
    p.add_argument("--threshold-param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                   help="e.g. q=1e-3, level=0.98, depth=100 (dspot), window=5000 (percentile)")
    p.add_argument("--calibration", choices=["train", "first"], default=d.calibration,
                   help="calibrate thresholds on the model's training scores or on each entity's first points")
    p.add_argument("--calibration-points", type=int, default=d.calibration_points)
    p.add_argument("--fusion", choices=["sum", "product"], default=d.fusion)
    p.add_argument("--top-k", type=int, default=d.top_k)
    p.add_argument("--open-after", type=int, default=d.open_after,
                   help="alarms within --open-window points that open an incident")
    p.add_argument("--open-window", type=int, default=d.open_window)
    p.add_argument("--close-after", type=int, default=d.close_after,
                   help="points without an alarm that close an incident")
    p.add_argument("--checkpoint-interval", type=float, default=d.checkpoint_interval)
    p.add_argument("--session-timeout", type=float, default=d.session_timeout)
    p.add_argument("--rebalance-timeout", type=float, default=d.rebalance_timeout)
    p.add_argument("--device", default=d.device, help="auto, cpu or cuda")
    p.add_argument("--log-level", default="warn", choices=["crit", "error", "warn", "info", "debug"])

    p = sub.add_parser("simulate", help="publish readings of a simulated plant with injected anomalies")
    _broker_arg(p)
    p.add_argument("--entities", type=int, default=4)
    p.add_argument("--channels", type=int, default=12)
    p.add_argument("--points", type=int, default=3000, help="points per entity")
    p.add_argument("--rate", type=float, default=0.0, help="points per second per entity (0: as fast as possible)")
    p.add_argument("--start", type=float, default=None, help="first timestamp (default: now)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="rows per message (above 1: the batch form)")
    p.add_argument("--labels", default=None, help="write the injected anomalies as JSON lines here")
    p.add_argument("--no-anomalies", action="store_true")

    p = sub.add_parser("replay", help="publish a dataset split (.npz) as readings")
    _broker_arg(p)
    p.add_argument("file")
    p.add_argument("--entity", default=None, help="entity id (default: the file name)")
    p.add_argument("--split", default="test")
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--start", type=float, default=None)

    p = sub.add_parser("alerts", help="print alerts as JSON lines")
    _broker_arg(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new alerts")
    p.add_argument("--topic", default="vigil.alerts")

    p = sub.add_parser("train", help="train a detector on a dataset's train split and save an artefact")
    p.add_argument("--model", default="pca", help="pca, lstm_ae, ... (detectors.artefacts.MODELS)")
    p.add_argument("--preset", default=None, help="deep models: small (CPU) or paper (GPU)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--data", required=True, help=".npz file with a 'train' array [T, C]")
    p.add_argument("--out", required=True, help="artefact directory to write")

    p = sub.add_parser("demo", help="broker + worker + simulator, printing alerts as they happen")
    p.add_argument("--entities", type=int, default=4)
    p.add_argument("--channels", type=int, default=12)
    p.add_argument("--rate", type=float, default=20.0, help="points per second per entity")
    p.add_argument("--points", type=int, default=100_000)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--workdir", default=".vigil/demo")
    return parser


def settings_from_args(args) -> Settings:
    s = Settings(broker=broker_from_env(args.broker))
    for name in ("partitions", "group", "window", "hop", "batch_size", "batch_wait", "threshold",
                 "calibration", "calibration_points", "fusion", "top_k", "open_after", "open_window", "close_after",
                 "checkpoint_interval", "session_timeout", "rebalance_timeout", "device"):
        setattr(s, name, getattr(args, name))
    s.threshold_params = {k: int(v) if k in ("refit_every", "max_excess", "depth", "window") else v
                          for k, v in args.threshold_param}
    for spec in args.model:
        entity, sep, path = spec.partition("=")
        s.models[entity if sep else "*"] = path if sep else entity
    return s


def cmd_worker(args) -> int:
    from .worker import run_worker

    return run_worker(settings_from_args(args), args.log_level)


def cmd_simulate(args) -> int:
    from .producers import produce_series, write_labels
    from .simulate import simulate_plant

    broker = broker_from_env(args.broker)
    check_broker(broker)
    start = args.start if args.start is not None else float(int(time.time()))
    plant = simulate_plant(args.entities, args.channels, args.points, start, args.seed,
                           anomalies=not args.no_anomalies)
    if args.labels:
        write_labels(args.labels, [a for s in plant for a in s.anomalies])
    n = asyncio.run(produce_series(broker, "vigil.readings", plant, args.rate, args.batch, progress=True))
    print(f"vigil: sent {args.points} points for each of {args.entities} entities in {n} messages", file=sys.stderr)
    return 0


def cmd_replay(args) -> int:
    from .producers import dataset_series, produce_series

    broker = broker_from_env(args.broker)
    check_broker(broker)
    series = dataset_series(args.file, args.entity, args.split, args.start)
    n = asyncio.run(produce_series(broker, "vigil.readings", [series], args.rate, args.batch, progress=True))
    print(f"vigil: replayed {len(series.ts)} points of {series.entity} in {n} messages", file=sys.stderr)
    return 0


def cmd_alerts(args) -> int:
    from .producers import consume

    broker = broker_from_env(args.broker)
    check_broker(broker)

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `vigil alerts | head` ends quietly

    async def run():
        async for msg in consume(broker, args.topic, args.follow):
            sys.stdout.buffer.write(orjson.dumps(msg) + b"\n")
            sys.stdout.flush()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def cmd_train(args) -> int:
    import numpy as np

    from detectors import artefacts

    data = np.load(args.data)
    train = np.asarray(data["train"], np.float32)
    config = {k: v for k, v in (("preset", args.preset), ("epochs", args.epochs)) if v is not None}
    det = artefacts.create(args.model, [f"ch{i}" for i in range(train.shape[1])], **config)
    det.to(args.device)
    det.fit(train)
    path = artefacts.save(det, args.out)
    print(f"vigil: trained {det.model_id} on {train.shape[0]} points x {train.shape[1]} channels -> {path}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "broker":
        from .broker import run_foreground

        return run_foreground(args.host, args.port)
    handler = {"worker": cmd_worker, "simulate": cmd_simulate, "replay": cmd_replay, "alerts": cmd_alerts,
               "train": cmd_train, "demo": cmd_demo}[args.command]
    try:
        return handler(args)
    except BrokerUnavailable as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
