"""``vigil worker``: check the broker, create topics, load models, run the Faust worker."""
from __future__ import annotations

import asyncio
import gc
import logging
import os
import sys

from scoring.settings import Settings

from .kafka import check_broker, ensure_topics
from .model_updates import load_served

log = logging.getLogger("vigil.worker")


def load_models(settings: Settings) -> dict:
    return {entity: load_served(path, settings.device, settings.detector) for entity, path in settings.models.items()}


def tune_gc() -> None:
    """Fewer, cheaper garbage collections while scoring.

    Every reading leaves short-lived objects behind (parsed JSON, small arrays): at CPython's default
    gen-0 threshold of 700 allocations a collection ran every few messages, and each older collection
    walked the whole startup heap (torch, the models). The startup heap is frozen out of collection,
    and gen 0 is collected every 50,000 allocations (a few MB of garbage at most; cycles are rare
    here, reference counting frees the rest at once).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def tune_threads(settings: Settings) -> int:
    """Inference threads: torch's default (one per core) competes with the event loop, which decodes,
    thresholds and talks to Kafka in the meantime; on 2 cores it cost ~10% of throughput with PCA
    (docs/benchmarks.md). Leave two cores to the rest unless told otherwise."""
    import torch

    n = settings.torch_threads or max(1, (os.cpu_count() or 1) - 2)
    torch.set_num_threads(n)
    return n


def run_worker(settings: Settings, loglevel: str = "warn") -> int:
    from .web import check_exposure

    if settings.web_port:
        try:
            check_exposure(settings.web_host, settings.web_token)
        except ValueError as exc:
            print(f"vigil: {exc}", file=sys.stderr)
            return 2
    tune_threads(settings)
    models = load_models(settings)  # a bad artefact path is the user's to fix: before any broker work
    check_broker(settings.broker)
    from aiokafka import codec

    missing = [name for name, ok in (("snappy", codec.has_snappy()), ("lz4", codec.has_lz4()),
                                     ("zstd", codec.has_zstd())) if not ok]
    if missing:  # a packaging fault: those batches would be dead-lettered as undecodable
        log.error("no %s codec in this environment (install cramjam): such batches will be dead-lettered",
                  ", ".join(missing))
    # The readings topic may already exist (producers came first): outputs follow its partition count.
    readings = asyncio.run(ensure_topics(settings.broker, [settings.topics.readings], settings.partitions,
                                         settings.replication))[settings.topics.readings]
    counts = asyncio.run(ensure_topics(settings.broker, settings.topics.outputs(), readings, settings.replication))
    short = [t for t in settings.topics.outputs() if counts[t] < readings]
    if short:
        print(f"vigil: topics {', '.join(short)} have fewer partitions than {settings.topics.readings} "
              f"({readings}); outputs go to the reading's partition, so recreate them with {readings}",
              file=sys.stderr)
        return 2
    settings.partitions = readings
    asyncio.run(ensure_topics(settings.broker, [settings.topics.models, settings.topics.feedback], 1,
                              settings.replication))

    from faust.worker import Worker

    from .app import create_app

    app, runner = create_app(settings, models)
    print(f"vigil: worker on {settings.broker}, {readings} partitions, "
          f"models: {', '.join(f'{e}={m.model_id}' for e, m in models.items()) or 'cold-start only'}",
          file=sys.stderr, flush=True)
    if settings.web_port:
        print(f"vigil: dashboard http://{settings.web_host}:{settings.web_port}/, metrics at /metrics",
              file=sys.stderr, flush=True)
    tune_gc()
    worker = Worker(app, loglevel=loglevel, quiet=True)
    worker.execute_from_commandline()
    return 0
