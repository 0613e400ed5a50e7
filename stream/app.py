"""The Faust app: topics, the scoring agent, the checkpoint timer and rebalance hooks."""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor

import faust

from .agents import Runner
from .config import Settings
from .pipeline import Pipeline

log = logging.getLogger("vigil.worker")


def create_app(settings: Settings, models: dict | None = None) -> tuple[faust.App, Runner]:
    app = faust.App(
        settings.group,
        broker=f"kafka://{settings.broker}",
        value_serializer="raw",  # the pipeline decodes, so one bad message can never crash the agent
        key_serializer="raw",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_rebalance_timeout=settings.rebalance_timeout,
        broker_heartbeat_interval=min(1.0, settings.session_timeout / 4),
        stream_wait_empty=False,
        broker_commit_interval=max(0.5, settings.checkpoint_interval),
        producer_max_request_size=4 << 20,
        consumer_max_fetch_size=4 << 20,
    )
    # Inference runs in one thread beside the event loop; torch releases the GIL while it computes.
    pipeline = Pipeline(settings, models, executor=ThreadPoolExecutor(1, thread_name_prefix="detector"))
    runner = Runner(settings, pipeline)
    readings = app.topic(settings.topics.readings, value_serializer="raw", key_serializer="raw",
                         partitions=settings.partitions)

    @app.agent(readings, name="vigil-score")
    async def score(stream):
        runner.consumer = app.consumer
        try:
            async for events in stream.take_events(settings.batch_size, within=settings.batch_wait):
                await runner.handle(events)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Faust would log a crashed agent and keep the process alive, scoring nothing. Exit
            # instead: a supervisor restarts the worker, which resumes from its last checkpoint.
            log.exception("the scoring agent failed; the worker exits so that it can be restarted")
            logging.shutdown()
            os._exit(70)

    @app.timer(interval=settings.checkpoint_interval)
    async def checkpoint():
        await runner.checkpoint()

    @app.timer(interval=10.0)
    async def report():
        m, t = runner.pipeline.metrics, runner.timings
        log.warning("points=%d messages=%d windows=%d alerts_open=%d dlq=%d imputed=%d entities=%d "
                    "seconds: process=%.1f publish=%.1f checkpoint=%.1f",
                    m["points"], m["messages"], m["windows"], m["alerts_open"], m["dlq"], m["imputed"],
                    len(runner.pipeline.entities), t["process"], t["publish"], t["checkpoint"])

    @app.on_partitions_revoked.connect
    async def on_revoked(sender, revoked, **kwargs):
        await runner.on_revoked({tp.partition for tp in revoked if tp.topic == settings.topics.readings})

    @app.on_partitions_assigned.connect
    async def on_assigned(sender, assigned, **kwargs):
        mine = sorted(tp.partition for tp in assigned if tp.topic == settings.topics.readings)
        log.warning("assigned partitions %s of %s", mine, settings.topics.readings)

    return app, runner
