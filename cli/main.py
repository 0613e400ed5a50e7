"""The ``vigil`` command line: parses arguments and calls the functions that do the work."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

import orjson

from detectors import artefacts
from scoring.settings import CALIBRATIONS, DEFAULT_BROKER, Settings, Topics, broker_from_env
from stream.kafka import BrokerUnavailable, check_broker
from training.data import DataError

ArtefactError = artefacts.ArtefactError


class UsageError(Exception):
    """A mistake in what the user asked for; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line that says where to look (its default prints the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"expected a share above 0 and at most 1, got {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number above 0, got {value}")
    return value


def _whole_numbers(text: str) -> tuple[int, ...]:
    """Comma-separated whole numbers, e.g. ``--seeds 0,1,2``."""
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None


def _broker_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=None,
                   help=f"Kafka bootstrap HOST:PORT (default: $VIGIL_BROKER or {DEFAULT_BROKER})")


def _param(text: str) -> tuple[str, float]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return key, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in {text!r}") from None


def _topics_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--topic-prefix", default="vigil", help="topics PREFIX.readings, PREFIX.scores, ...")


def _duration(text: str) -> float:
    """'90', '90s', '30m', '6h', '7d' -> seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        return float(text[:-1]) * units[text[-1]] if text[-1] in units else float(text)
    except (ValueError, IndexError):
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 30m, 6h or 7d, got {text!r}") from None


def _timestamp(text: str) -> float:
    """'1700000000', '1700000000.5' or ISO 8601 ('2026-11-30T12:00:00Z'; no zone: UTC) -> unix seconds."""
    from datetime import datetime, timezone

    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected unix seconds or an ISO 8601 time, got {text!r}") from None
    return (t if t.tzinfo else t.replace(tzinfo=timezone.utc)).timestamp()


def _model_config(args, data=None) -> dict:
    """``--preset``, ``--epochs`` and ``--inputs`` where given, as detector configuration; without
    ``--inputs``, the inputs ``data`` declares (``training.data``) where the model takes inputs."""
    config = {k: v for k, v in (("preset", args.preset), ("epochs", args.epochs)) if v is not None}
    inputs = getattr(args, "inputs", None)
    trained = artefacts.is_artefact(args.model)
    if inputs and trained:
        raise UsageError(f"--inputs: {args.model} is a trained model; its inputs were set when it was trained")
    takes_inputs = not trained and artefacts.takes_inputs(args.model)
    if inputs and not takes_inputs:
        raise UsageError(f"--inputs: {args.model} scores every channel alike and cannot leave inputs out; "
                         f"models that can: {', '.join(artefacts.judging())}")
    if inputs is None and data is not None and takes_inputs:
        inputs = list(data.inputs)
    if inputs:
        config["inputs"] = inputs
    return config


def _inputs(text: str) -> list[str]:
    """``--inputs``: comma-separated channel names or fnmatch patterns ('' for none)."""
    return [p.strip() for p in text.split(",") if p.strip()]


def _inputs_arg(p: argparse.ArgumentParser, default_from_data: bool = True) -> None:
    p.add_argument("--inputs", type=_inputs, default=None, metavar="PATTERNS",
                   help="channels that are the plant's inputs (commands, setpoints): comma-separated names or "
                        "patterns such as 'cmd_*'; the model learns from them but judges and blames only the other "
                        "channels" + (" (default: what the dataset declares, e.g. SMAP/MSL's command columns; "
                                      "'' for none)" if default_from_data else ""))


def _scoring_args(p: argparse.ArgumentParser, publishes: bool = True) -> None:
    """How points are scored, thresholded and grouped into incidents: shared by worker, eval and trainer."""
    from scoring import fusion, thresholds

    d = Settings()
    p.add_argument("--window", type=_positive, default=d.window)
    p.add_argument("--hop", type=_positive, default=d.hop)
    p.add_argument("--threshold", choices=sorted(thresholds.KINDS), default=d.threshold)
    p.add_argument("--threshold-param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                   help="; ".join(f"{k}: {', '.join(thresholds.parameters(k))}" for k in sorted(thresholds.KINDS)))
    p.add_argument("--calibration", choices=CALIBRATIONS, default=d.calibration,
                   help="calibrate thresholds on the model's training scores or on each entity's first points")
    p.add_argument("--calibration-points", type=_positive, default=d.calibration_points)
    p.add_argument("--cold-calibration-points", type=int, default=d.cold_calibration_points,
                   help="points after the cold-start detector's warm-up that calibrate a model-less entity's threshold")
    p.add_argument("--fusion", choices=fusion.RULES, default=d.fusion)
    p.add_argument("--smooth", type=_positive, default=d.smooth, help="points a score is averaged over (1: none)")
    p.add_argument("--level-window", type=_duration, default=d.level_window,
                   help="time on the entity's clock over which the threshold follows the scores' level: a "
                        "departure that lasts half of it becomes the new level, with one drift record "
                        f"(default {d.level_window / 86400:g}d: a fault of minutes or hours alarms all along; "
                        "0: off)")
    p.add_argument("--top-k", type=_positive, default=d.top_k)
    p.add_argument("--open-after", type=_positive, default=d.open_after,
                   help="alarms within --open-window points that open an incident")
    p.add_argument("--open-window", type=_positive, default=d.open_window)
    p.add_argument("--close-after", type=_positive, default=d.close_after,
                   help="points without an alarm that close an incident")
    p.add_argument("--device", default=d.device,
                   help="auto (networks on cuda when present, other models on the CPU), cpu or cuda")
    if publishes:  # only the worker publishes scores (eval always asks for per-channel ones)
        p.add_argument("--score-channels", action="store_true",
                       help="publish per-channel scores of every point on vigil.scores")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vigil", description="Streaming anomaly detection on Kafka.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (tansu) in the foreground")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9092)

    d = Settings()
    p = sub.add_parser("worker", help="score vigil.readings and publish scores and alerts")
    _broker_arg(p)
    p.add_argument("--model", action="append", default=[], metavar="[ENTITY=]PATH",
                   help="model artefact directory, for one entity (ENTITY=PATH) or for every entity "
                        "whose channels match (PATH); a folder of artefacts (vigil train of a folder): each "
                        "to the entity it is named after; entities without a model use the cold-start detector")
    p.add_argument("--partitions", type=_positive, default=d.partitions,
                   help="partitions of vigil.readings when it is created (outputs follow its count)")
    p.add_argument("--replication", type=int, default=d.replication,
                   help="replication factor of the topics created on first start")
    p.add_argument("--group", default=d.group)
    _topics_arg(p)
    p.add_argument("--inputs", type=_inputs, default=[], metavar="PATTERNS",
                   help="channels that are the plant's inputs (commands, setpoints), for entities scored by the "
                        "cold start: learnt from, never judged or blamed (a trained model carries its own)")
    p.add_argument("--detector", default=None, metavar="HOST:PORT",
                   help="score in a `vigil detector` process (e.g. one per GPU) instead of in this process")
    p.add_argument("--batch-size", type=_positive, default=d.batch_size, help="messages per micro-batch, at most")
    p.add_argument("--batch-wait", type=float, default=d.batch_wait, help="seconds a micro-batch waits")
    _scoring_args(p)
    p.add_argument("--checkpoint-interval", type=float, default=d.checkpoint_interval,
                   help="seconds between checkpoints, at least")
    p.add_argument("--checkpoint-share", type=_share, default=d.checkpoint_share,
                   help="the most of the worker's time checkpoints may take (a fleet's are long: the next "
                        "waits until the share is kept)")
    p.add_argument("--max-message-bytes", type=_positive, default=d.max_message_bytes,
                   help="larger readings messages are dead-lettered (oversized)")
    p.add_argument("--max-future", type=_duration, default=d.max_future,
                   help="readings further ahead of their record's Kafka timestamp are dead-lettered "
                        "(future_ts); 0: off")
    p.add_argument("--torch-threads", type=int, default=d.torch_threads,
                   help="CPU threads for inference (0: all cores but two, at least 1)")
    p.add_argument("--entity-ttl", type=_duration, default=d.entity_ttl,
                   help="idle time after which an entity leaves memory (restored on its next reading); 0: never")
    p.add_argument("--max-live-entities", type=_positive, default=d.max_live_entities,
                   help="entities kept in memory; the least recently seen are evicted beyond it")
    p.add_argument("--max-entities", type=_positive, default=d.max_entities,
                   help="entities a worker holds, in memory or evicted; readings of more are dead-lettered")
    p.add_argument("--session-timeout", type=float, default=d.session_timeout)
    p.add_argument("--rebalance-timeout", type=float, default=d.rebalance_timeout)
    p.add_argument("--log-level", default="warn", choices=["crit", "error", "warn", "info", "debug"])
    p.add_argument("--web-port", type=int, default=d.web_port, help="dashboard and /metrics port (0: off)")
    p.add_argument("--web-host", default=d.web_host,
                   help="address to serve the dashboard on; other than loopback it needs --web-token")
    p.add_argument("--web-token", default=os.environ.get("VIGIL_WEB_TOKEN"),
                   help="token every dashboard request must carry (default: $VIGIL_WEB_TOKEN)")

    p = sub.add_parser("detector", help="serve models to workers over TCP (one process per GPU)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7070)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")

    p = sub.add_parser("eval", help="score datasets' test splits as the worker does and report honest metrics")
    p.add_argument("--model", default=artefacts.DEFAULT_MODEL,
                   help="a model name (trained on each dataset's train split) or an artefact directory "
                        f"(default: {artefacts.DEFAULT_MODEL}, Vigil's measured default: {artefacts.AUTO_RULE})")
    p.add_argument("--data", action="append", required=True,
                   help="dataset: .npz, a folder of .npz (SMAP/MSL: each file an entity with its own model, "
                        "then their mean), SMD text, telemanom or CSV; repeatable")
    p.add_argument("--preset", default=None, help="deep models: small (CPU) or paper (GPU)")
    p.add_argument("--epochs", type=_positive, default=None)
    _inputs_arg(p)
    p.add_argument("--through-kafka", action="store_true",
                   help="replay through a broker and a worker instead of the in-process pipeline")
    _broker_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object per dataset")
    p.add_argument("--budget", type=_duration, default=None,
                   help="auto: seconds per entity for the deep candidates and the GenIAS generator (default: none "
                        "on a CPU, 60s on a GPU)")
    p.add_argument("--interval", type=_duration, default=None,
                   help="time between the readings, e.g. 1s or 1m (default: what the dataset states or its time "
                        "column shows: SMD one minute; else one minute); the level window is time on this clock")
    _scoring_args(p, publishes=False)

    p = sub.add_parser("bench", help="benchmarks: `vigil bench quality` runs every model on every shared dataset")
    p.add_argument("what", choices=["quality"])
    p.add_argument("--quick", action="store_true", help="3000 points of each split around the first anomaly, one epoch: a smoke run in minutes")
    p.add_argument("--models", default=None, help="comma-separated model names (default: every model)")
    p.add_argument("--data-root", default="../shared/data", help="folder with smd/ and smap_msl/")
    p.add_argument("--datasets", default=None, help="comma-separated subset, e.g. machine-1-6,SMAP")
    p.add_argument("--results", default=None,
                   help="JSON-lines results, resumed if present (default bench/results/quality[-quick].jsonl)")
    p.add_argument("--doc", default=None, help="markdown to write the section into (default docs/benchmarks.md; "
                                               "with --quick or --results, stdout)")
    p.add_argument("--no-run", action="store_true", help="only render the results file")
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="small", help="deep models' preset: small (CPU) or paper (GPU); "
                                                     "give a paper run its own --results")
    p.add_argument("--seeds", default=None, type=_whole_numbers,
                   help="comma-separated seeds of the deep models (default 0,1,2)")
    p.add_argument("--variants", default=None, help="comma-separated settings to measure (default: all of them)")

    p = sub.add_parser("trainer", help="retrain models from Kafka history, compare without labels, promote")
    _broker_arg(p)
    _topics_arg(p)
    p.add_argument("--registry", default="./registry", help="model registry directory (shared with workers)")
    p.add_argument("--model", default=artefacts.DEFAULT_MODEL, choices=artefacts.CHOICES,
                   help=f"model to train per entity (default: auto: {artefacts.AUTO_RULE})")
    p.add_argument("--preset", default=None)
    p.add_argument("--epochs", type=_positive, default=None)
    _inputs_arg(p, default_from_data=False)
    p.add_argument("--every", type=_duration, default=_duration("6h"), help="interval, e.g. 30m, 6h, 1d")
    p.add_argument("--history", type=_duration, default=_duration("7d"),
                   help="history per entity, back from its newest reading (its own clock)")
    p.add_argument("--max-incident", type=_duration, default=float("inf"),
                   help="incidents longer than this stay in the history as a new operating mode (default: none; "
                        "an incident a drift record absorbed, or one labelled a false alarm, always does)")
    p.add_argument("--once", action="store_true", help="one round, then exit (for cron)")
    p.add_argument("--round-budget", type=_duration, default=None,
                   help="time a round may spend starting entities; the rest wait for the next round, those "
                        "without a model first, then the oldest models (default: half of --every; --once: none)")
    p.add_argument("--budget", type=_duration, default=None,
                   help="auto: seconds per entity for the deep candidates (default: none on a CPU, 60s on a GPU)")
    p.add_argument("--drift-poll", type=_duration, default=_duration("30s"),
                   help="between rounds, how often to look for drift events and retrain those entities")
    p.add_argument("--entities", default=None, help="comma-separated subset")
    p.add_argument("--min-points", type=_positive, default=1000)
    p.add_argument("--generator-epochs", type=int, default=None, help="GenIAS epochs for the generated anomalies")
    _scoring_args(p, publishes=False)

    p = sub.add_parser("promote", help="make a registered version the champion and tell the workers "
                                       "(roll back or forward by hand)")
    _broker_arg(p)
    _topics_arg(p)
    p.add_argument("entity")
    p.add_argument("version", metavar="MODEL@VERSION", help="e.g. pca@1 (see `vigil models`)")
    p.add_argument("--registry", default="./registry")

    p = sub.add_parser("models", help="list the model registry")
    p.add_argument("--registry", default="./registry")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("simulate", help="publish readings of a simulated plant with injected anomalies")
    _broker_arg(p)
    _topics_arg(p)
    p.add_argument("--entities", type=_positive, default=4)
    p.add_argument("--channels", type=_positive, default=12)
    p.add_argument("--points", type=_positive, default=3000, help="points per entity")
    p.add_argument("--rate", type=float, default=0.0, help="points per second per entity (0: as fast as possible)")
    p.add_argument("--start", type=float, default=None,
                   help="first timestamp, one second per point (default: the series ends now)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=1, help="rows per message (above 1: the batch form)")
    p.add_argument("--labels", default=None, help="write the injected anomalies as JSON lines here")
    p.add_argument("--no-anomalies", action="store_true")

    p = sub.add_parser("replay", help="publish a dataset's split as readings (any layout `vigil eval` reads; "
                                      "a folder's entities each as their own)")
    _broker_arg(p)
    _topics_arg(p)
    p.add_argument("file")
    p.add_argument("--entity", default=None, help="entity id of a one-entity dataset (default: the file name)")
    p.add_argument("--split", default="test")
    p.add_argument("--rate", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--start", type=float, default=None)

    p = sub.add_parser("alerts", help="print alerts as JSON lines")
    _broker_arg(p)
    p.add_argument("--follow", "-f", action="store_true", help="keep waiting for new alerts")
    _topics_arg(p)
    p.add_argument("--topic", default=None, help="another topic to print (default: PREFIX.alerts)")

    p = sub.add_parser("feedback", help="label an alert (false alarm or anomaly) or a missed period; the "
                                        "trainer retunes the entity to the labels")
    _broker_arg(p)
    _topics_arg(p)
    p.add_argument("alert_id", nargs="?", default=None, help="the incident's alert_id (see `vigil alerts`)")
    p.add_argument("--label", required=True, choices=["false-alarm", "anomaly"])
    p.add_argument("--note", default="", help="free text kept with the label")
    p.add_argument("--entity", default=None, help="with --start and --end: a period without an alert (a miss)")
    p.add_argument("--start", type=_timestamp, default=None, help="unix seconds or ISO 8601 (as the readings' ts)")
    p.add_argument("--end", type=_timestamp, default=None)

    p = sub.add_parser("train", help="train a detector on a dataset's train split and save an artefact")
    p.add_argument("--model", default=artefacts.DEFAULT_MODEL, choices=artefacts.CHOICES,
                   help=f"default: auto: {artefacts.AUTO_RULE}")
    p.add_argument("--preset", default=None, help="deep models: small (CPU) or paper (GPU)")
    p.add_argument("--epochs", type=_positive, default=None)
    _inputs_arg(p)
    p.add_argument("--budget", type=_duration, default=None,
                   help="auto: seconds per entity for the deep candidates and the GenIAS generator (default: none "
                        "on a CPU, 60s on a GPU)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", required=True, help="dataset whose train split to learn: .npz, SMD text, telemanom "
                                                 "or CSV; a folder of channel files (SMAP/MSL) or of machines: one "
                                                 "model per entity")
    p.add_argument("--out", required=True, help="artefact directory to write (a folder of them, one per entity, "
                                                "for a folder of entities)")

    p = sub.add_parser("demo", help="broker + worker + simulator, printing alerts as they happen")
    p.add_argument("--entities", type=_positive, default=4)
    p.add_argument("--channels", type=_positive, default=12)
    p.add_argument("--rate", type=float, default=20.0, help="points per second per entity")
    p.add_argument("--points", type=_positive, default=100_000)
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--port", type=int, default=9092)
    p.add_argument("--workdir", default=".vigil/demo")
    p.add_argument("--web-port", type=int, default=6066, help="the worker's dashboard port")
    return parser


def settings_from_args(args) -> Settings:
    from scoring import thresholds

    s = Settings(broker=broker_from_env(args.broker))
    for name in ("partitions", "replication", "group", "window", "hop", "batch_size", "batch_wait", "threshold",
                 "calibration", "calibration_points", "cold_calibration_points", "fusion", "smooth", "level_window", "top_k", "open_after", "open_window", "close_after",
                 "checkpoint_interval", "checkpoint_share", "session_timeout", "rebalance_timeout", "device", "score_channels",
                 "web_host", "web_port", "web_token", "detector", "max_message_bytes", "max_future",
                 "entity_ttl", "max_live_entities", "max_entities", "torch_threads"):
        setattr(s, name, getattr(args, name, getattr(s, name)))
    s.topics = Topics.named(getattr(args, "topic_prefix", "vigil"))
    types = thresholds.parameters(s.threshold)
    unknown = [k for k, _ in args.threshold_param if k not in types]
    if unknown:
        raise UsageError(f"--threshold-param {unknown[0]}: {s.threshold} takes {', '.join(sorted(types))}")
    s.threshold_params = {k: types[k](v) if types[k] is int and float(v).is_integer() else v
                          for k, v in args.threshold_param}
    try:
        thresholds.make_threshold(s.threshold, **{**thresholds.DEFAULTS.get(s.threshold, {}), **s.threshold_params})
    except ValueError as exc:
        raise UsageError(f"--threshold-param: {exc}") from None
    return s


def cmd_worker(args) -> int:
    from stream.worker import run_worker

    settings = settings_from_args(args)
    settings.inputs = list(args.inputs)
    settings.models = model_specs(args.model)
    return run_worker(settings, args.log_level)


def model_specs(specs: list[str]) -> dict[str, str]:
    """``vigil worker --model`` values -> entity: artefact directory. ``ENTITY=PATH`` serves one entity;
    ``PATH`` an artefact serves every entity whose channels match (``*``); ``PATH`` a folder of
    artefacts (what `vigil train` writes for a folder of channel files) serves each entity by its
    folder's name."""
    models = {}
    for spec in specs:
        entity, sep, path = spec.partition("=")
        if sep:
            models[entity] = path
        elif artefacts.is_artefact(spec) or not Path(spec).is_dir():
            models["*"] = spec
        else:
            found = {sub.name: str(sub) for sub in sorted(Path(spec).iterdir()) if artefacts.is_artefact(sub)}
            if not found:
                raise UsageError(f"--model {spec}: neither a model artefact nor a folder of them")
            models.update(found)
    return models


def cmd_detector(args) -> int:
    from stream.detector_service import serve

    print(f"vigil: detector process on {args.host}:{args.port}", file=sys.stderr, flush=True)
    try:
        asyncio.run(serve(args.host, args.port, args.device))
    except KeyboardInterrupt:
        pass
    return 0


def cmd_eval(args) -> int:
    import tempfile

    from tqdm import tqdm

    from stream.evaluation import stream_through_kafka
    from training.data import load_entities, seal
    from training.evaluate import mean_of, mean_report, report, stream_offline
    from training.selection import train_or_load
    from training.report import print_report, print_summary

    if not artefacts.is_artefact(args.model) and args.model not in artefacts.CHOICES:
        raise UsageError(f"--model {args.model}: neither a model name ({', '.join(artefacts.CHOICES)}) nor a "
                         f"model artefact folder (one that `vigil train` wrote)")
    settings = settings_from_args(args)
    settings.score_channels = True
    for path in args.data:
        # a folder of channel files is one entity per file, each with its own model, as a stream deploys them
        datasets = [seal(d) for d in load_entities(path)]  # no label can be read before report(), after scoring
        for d in datasets:
            d.interval = args.interval or d.interval
        many = len(datasets) > 1
        dets = [train_or_load(args.model, d, args.device, progress=not many, budget=args.budget,
                              **_model_config(args, d))
                for d in tqdm(datasets, desc=f"training on {path}", unit="entity", disable=not many)]
        if args.through_kafka:
            with tempfile.TemporaryDirectory(prefix="vigil-eval-model-") as tmp:
                jobs = {f"eval-{i}": (args.model if artefacts.is_artefact(args.model)
                                      else artefacts.save(det, Path(tmp) / f"m{i}"), d)
                        for i, (det, d) in enumerate(zip(dets, datasets))}
                by_job = stream_through_kafka(jobs, settings, args.broker)
                streams = [by_job[f"eval-{i}"] for i in range(len(datasets))]
        else:
            streams = [stream_offline(det, d, settings) for det, d in zip(dets, datasets)]
        results = [{"dataset": d.name, "through_kafka": args.through_kafka, "inputs": det.inputs,
                    "selection": det.selection,
                    "judged_channels": len(det.channels) if det.judged is None else int(det.judged.sum()),
                    "filled_training_values": int(det.filled_training_values),
                    "channels": len(det.channels), **report(stream, d, settings.top_k)}
                   for det, d, stream in zip(dets, datasets, streams)]
        for result in results:
            if args.json:
                print(orjson.dumps(result, option=orjson.OPT_SERIALIZE_NUMPY).decode(), flush=True)
            else:
                print_report(result)
        if many:
            summary = {"dataset": str(path), "entities": len(results), "models": sorted({r["model_id"].split("@")[0]
                                                                                          for r in results}),
                       "through_kafka": args.through_kafka,
                       "mean": mean_report([{k: v for k, v in r.items() if k != "selection"} for r in results]),
                       "anomalous_share": mean_of(r["anomalous_points"] / r["points"] for r in results)}
            if args.json:
                print(orjson.dumps(summary, option=orjson.OPT_SERIALIZE_NUMPY).decode(), flush=True)
            else:
                print_summary(summary)
    return 0


def cmd_bench(args) -> int:
    from training import quality

    results = Path(args.results or f"bench/results/quality{'-quick' if args.quick else ''}.jsonl")
    datasets = quality.dataset_paths(args.data_root)
    if args.datasets:  # names, or a column: SMD, SMAP, MSL
        chosen = {}
        for want in args.datasets.split(","):
            found = {d: p for d, p in datasets.items()
                     if d == want or quality.group(d) == want or (want == "SMD" and d.startswith("machine-"))}
            if not found:
                print(f"vigil: no dataset {want} under {args.data_root}", file=sys.stderr)
                return 2
            chosen.update(found)
        datasets = chosen
    if not args.no_run:
        if not datasets:
            print(f"vigil: no shared datasets under {args.data_root}", file=sys.stderr)
            return 2
        models = args.models.split(",") if args.models else quality.MODELS
        if args.preset != "small" and not args.results:  # its rows would resume as the small preset's
            print(f"vigil: --preset {args.preset} needs a --results file of its own", file=sys.stderr)
            return 2
        variants = args.variants.split(",") if args.variants else None
        unknown = set(variants or ()) - set(quality.VARIANTS)
        if unknown:
            print(f"vigil: no variant {', '.join(sorted(unknown))}; choose from {', '.join(quality.VARIANTS)}",
                  file=sys.stderr)
            return 2
        quality.run(models, datasets, results, args.quick, args.device, variants, seeds=args.seeds or quality.SEEDS,
                    preset=args.preset)
    if not results.exists():
        print(f"vigil: no results in {results} yet: run without --no-run first", file=sys.stderr)
        return 2
    command = "vigil bench quality" + (" --quick" if args.quick else "") + (
        f" --preset {args.preset}" if args.preset != "small" else "")
    # A results file of one's own (a few models, a scratch run) would replace the published tables with
    # its rows: it is printed unless --doc says where it goes.
    doc = args.doc or (None if args.quick or args.results else "docs/benchmarks.md")
    if doc is None:
        print(quality.markdown(results, command))
    else:
        quality.write_markdown(results, Path(doc), command,
                               models_doc=Path("docs/models.md") if doc == "docs/benchmarks.md" else None)
        print(f"vigil: wrote the quality section of {doc} (and auto's choices in docs/models.md) from {results}",
              file=sys.stderr)
    return 0


def cmd_trainer(args) -> int:
    from stream.retraining import run_every, run_once
    from training.registry import Registry
    from training.trainer import TrainerConfig

    settings = settings_from_args(args)
    check_broker(settings.broker)
    config = TrainerConfig(model=args.model, history=args.history, min_points=args.min_points,
                           max_incident=args.max_incident, budget=args.budget,
                           model_config=_model_config(args),
                           generator_config={"epochs": args.generator_epochs} if args.generator_epochs else {})
    registry = Registry(args.registry)
    entities = args.entities.split(",") if args.entities else None
    if args.once:
        events = run_once(settings, registry, config, entities, budget=args.round_budget)
        for e in events:
            print(f"vigil: {e['entity']}: {e['event']} {e.get('model', '')}@{e.get('version', '')} "
                  f"({e.get('reason', '')})", file=sys.stderr)
        return 1 if any(e["event"] == "failed" for e in events) else 0
    run_every(settings, registry, config, args.every, entities, poll=args.drift_poll, budget=args.round_budget)
    return 0


def cmd_promote(args) -> int:
    from stream.model_updates import publish
    from training.registry import Registry
    from training.trainer import event

    broker = broker_from_env(args.broker)
    check_broker(broker)
    model, _, version = args.version.partition("@")
    registry = Registry(args.registry)
    try:
        previous = registry.champion(args.entity)
        v = registry.promote(args.entity, model, int(version))
    except (KeyError, ValueError) as exc:
        print(f"vigil: {args.entity} has no version {args.version} in {args.registry} ({exc})", file=sys.stderr)
        return 2
    asyncio.run(publish(broker, Topics.named(args.topic_prefix).models, [event(
        "promoted", args.entity, model=v.model, version=v.version, path=str(v.path.resolve()),
        reason="promoted by hand", replaces=previous.model_id if previous else None)]))
    print(f"vigil: {args.entity} is now served by {v.model_id} (was {previous.model_id if previous else 'none'})",
          file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    from training.registry import Registry, format_table, table

    if not Path(args.registry).is_dir():
        raise UsageError(f"no registry at {args.registry}: `vigil trainer --registry {args.registry}` creates it")
    rows = table(Registry(args.registry).versions())
    if not rows:
        print(f"vigil: no models registered in {args.registry} yet: `vigil trainer --once` trains the first ones",
              file=sys.stderr)
        return 1
    if args.json:
        for r in rows:
            print(orjson.dumps(r).decode())
    else:
        print(format_table(rows))
    return 0


def cmd_simulate(args) -> int:
    from producers.publish import produce_series, write_labels
    from producers.simulate import simulate_plant

    broker = broker_from_env(args.broker)
    check_broker(broker)
    # One simulated second per point, sent faster than that: by default the series ends now, so that
    # no reading lies ahead of the wall clock (workers refuse readings from the future, --max-future).
    start = args.start if args.start is not None else float(int(time.time())) - args.points
    plant = simulate_plant(args.entities, args.channels, args.points, start, args.seed,
                           anomalies=not args.no_anomalies)
    if args.labels:
        write_labels(args.labels, [a for s in plant for a in s.anomalies])
    topic = Topics.named(args.topic_prefix).readings
    n = asyncio.run(produce_series(broker, topic, plant, args.rate, args.batch, progress=True))
    print(f"vigil: sent {args.points} points for each of {args.entities} entities in {n} messages", file=sys.stderr)
    return 0


def cmd_replay(args) -> int:
    from producers.publish import dataset_series, produce_series

    try:
        series = dataset_series(args.file, args.entity, args.split, args.start)
    except ValueError as exc:  # DataError included: one line for the user
        raise UsageError(str(exc)) from None
    broker = broker_from_env(args.broker)
    check_broker(broker)
    topic = Topics.named(args.topic_prefix).readings
    n = asyncio.run(produce_series(broker, topic, series, args.rate, args.batch, progress=True))
    what = series[0].entity if len(series) == 1 else f"{len(series)} entities"
    print(f"vigil: replayed {sum(len(s.ts) for s in series)} points of {what} in {n} messages", file=sys.stderr)
    return 0


def cmd_alerts(args) -> int:
    from stream.kafka import tail_json

    broker = broker_from_env(args.broker)
    check_broker(broker)

    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `vigil alerts | head` ends quietly

    async def run():
        async for msg, at in tail_json(broker, args.topic or Topics.named(args.topic_prefix).alerts, args.follow,
                                       stamped=True):
            if isinstance(msg, dict) and isinstance(msg.get("sent"), (int, float)):
                msg["age_s"] = round(at - msg["sent"], 3)  # a late alert (raised catching up) says so
            sys.stdout.buffer.write(orjson.dumps(msg) + b"\n")
            sys.stdout.flush()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


def labelled_span(alert: dict) -> tuple[str, float, float]:
    """(entity, start, end) that a label of this alert record covers. A drift still going on has no end
    yet (its record spans start..start until ``drift_end``): it is labelled as a period instead."""
    if alert.get("state") == "drift":
        raise UsageError(f"alert {alert['alert_id']} is a drift of {alert['entity']} that has not ended: label "
                         f"its period with --entity {alert['entity']} --start {alert['start']:.0f} --end T")
    return alert["entity"], alert["start"], alert["end"]


def cmd_feedback(args) -> int:
    from scoring.feedback import make
    from stream.feedback import find_alert, publish_feedback

    topics = Topics.named(args.topic_prefix)
    if args.alert_id is not None:
        if args.entity or args.start is not None or args.end is not None:
            raise UsageError("give either an ALERT_ID or --entity, --start and --end (a missed period), not both")
    elif not (args.entity and args.start is not None and args.end is not None):
        raise UsageError("say what the label is about: an ALERT_ID, or --entity E --start T --end T for a period "
                         "without an alert")
    elif args.label != "anomaly":
        raise UsageError("a period without an alert can only be labelled --label anomaly (a miss)")

    def label(entity, start, end):
        try:
            return make(entity, args.label, start, end, alert_id=args.alert_id, note=args.note, source="cli")
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    fb = label(args.entity, args.start, args.end) if args.alert_id is None else None  # checked before any I/O
    broker = broker_from_env(args.broker)
    check_broker(broker)
    if fb is None:
        alert = asyncio.run(find_alert(broker, topics.alerts, args.alert_id))
        if alert is None:
            print(f"vigil: no alert {args.alert_id!r} on {topics.alerts}: `vigil alerts` lists them with their "
                  f"alert_id", file=sys.stderr)
            return 1
        fb = label(*labelled_span(alert))
    asyncio.run(publish_feedback(broker, topics.feedback, fb))
    print(f"vigil: labelled {fb.entity} {fb.start:.0f}..{fb.end:.0f} as {fb.label} on {topics.feedback} "
          f"(feedback {fb.feedback_id}); the trainer's next round for {fb.entity} uses it", file=sys.stderr)
    return 0


def cmd_train(args) -> int:
    """One artefact for a dataset; for a folder of channel files (or a fleet), one per entity under
    ``--out``, named as the entity, which `vigil worker --model OUT` serves each to its entity."""
    from tqdm import tqdm

    from training.data import entity_name, load_entities
    from training.report import why_line
    from training.selection import fit_model

    datasets = load_entities(args.data)
    many = len(datasets) > 1
    for data in tqdm(datasets, desc=f"training on {args.data}", unit="entity", disable=not many):
        det = fit_model(args.model, data.channels, data.train, device=args.device, progress=not many,
                        budget=args.budget, interval=data.interval, **_model_config(args, data))
        path = artefacts.save(det, Path(args.out) / entity_name(data) if many else args.out)
        filled = f" ({det.filled_training_values} missing values filled)" if det.filled_training_values else ""
        print(f"vigil: trained {det.model_id} on {data.train.shape[0]} points x {data.train.shape[1]} channels"
              f"{filled} -> {path}", file=sys.stderr if many else sys.stdout)
        if det.selection and not many:
            print(f"vigil: auto chose {why_line(det.selection)}")
    if many:
        print(f"vigil: {len(datasets)} models in {args.out}, one per entity; serve them with "
              f"`vigil worker --model {args.out}`")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "broker":
        from stream.broker import run_foreground

        return run_foreground(args.host, args.port)
    handler = {"worker": cmd_worker, "simulate": cmd_simulate, "replay": cmd_replay, "alerts": cmd_alerts,
               "train": cmd_train, "demo": cmd_demo, "eval": cmd_eval, "bench": cmd_bench,
               "trainer": cmd_trainer, "models": cmd_models, "feedback": cmd_feedback,
               "detector": cmd_detector, "promote": cmd_promote}[args.command]
    try:
        return handler(args)
    except (BrokerUnavailable, UsageError, DataError, ArtefactError) as exc:
        print(f"vigil: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder the user named; a network error reaching a service
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"vigil: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
