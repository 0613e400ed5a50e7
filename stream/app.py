"""The Faust app: the readings consumer's task, the checkpoint timer, the models follower, the dashboard.

Faust runs the application (lifecycle, signals, logging, timers and tasks); the readings are consumed
by ``stream.runner.Runner``, an aiokafka group member of its own that hands whole fetches to the
pipeline (docs/design.md says why). Faust's own consumer group is named ``GROUP-app`` so that it never
joins the readings group.
"""
from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faust

from scoring.pipeline import Pipeline
from scoring.settings import Settings

from .board import Board
from .feedback import publish_feedback
from .kafka import security_options
from .model_updates import follow, load_served
from .runner import Runner
from .web import serve

log = logging.getLogger("vigil.worker")
FAUST_DATA = Path(".vigil") / "faust"


def broker_credentials():
    """The environment's Kafka security (``stream.kafka.security_options``) in Faust's terms."""
    opts = security_options()
    if not opts:
        return None
    if opts["security_protocol"].startswith("SASL"):
        return faust.SASLCredentials(username=opts["sasl_plain_username"], password=opts["sasl_plain_password"],
                                     mechanism=opts["sasl_mechanism"], ssl_context=opts.get("ssl_context"))
    return faust.SSLCredentials(opts["ssl_context"])


def create_app(settings: Settings, models: dict | None = None) -> tuple[faust.App, Runner]:
    FAUST_DATA.mkdir(parents=True, exist_ok=True)
    app = faust.App(
        f"{settings.group}-app",
        broker=f"kafka://{settings.broker}",
        broker_credentials=broker_credentials(),
        value_serializer="raw",  # the pipeline decodes, so one bad message can never crash the agent
        key_serializer="raw",
        store="memory://",
        # Faust wants a data directory even with in-memory tables: under .vigil/, with the demo's files
        datadir=str(FAUST_DATA / "{conf.id}"),
        web_enabled=False,
        topic_partitions=settings.partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=settings.session_timeout,
        broker_rebalance_timeout=settings.rebalance_timeout,
        broker_heartbeat_interval=min(1.0, settings.session_timeout / 4),
        stream_wait_empty=False,
    )
    # Inference runs in one thread beside the event loop; torch releases the GIL while it computes.
    board = Board()
    pipeline = Pipeline(settings, models, executor=ThreadPoolExecutor(1, thread_name_prefix="detector"), board=board)
    pipeline.prepare(progress=True)
    runner = Runner(settings, pipeline)

    @app.task
    async def consume():
        try:
            await runner.run()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Faust would log a crashed task and keep the process alive, scoring nothing. Exit
            # instead: a supervisor restarts the worker, which resumes from its last checkpoint.
            log.exception("the readings consumer failed; the worker exits so that it can be restarted")
            logging.shutdown()
            os._exit(70)

    @app.task
    async def follow_models():
        """Swap in every model the trainer promotes, between two micro-batches."""
        loop = asyncio.get_running_loop()
        # Which artefact serves each entity: a version number alone is not an identity (an artefact
        # trained by hand and the registry's first version are both "pca@1").
        served = {entity: str(Path(path).resolve()) for entity, path in settings.models.items()}

        async def apply(event: dict) -> None:
            entity = event["entity"]
            if event["event"] != "promoted":
                log.warning("model event for %s: %s %s", entity, event["event"], event.get("reason", ""))
                return
            model_id = f"{event.get('model')}@{event.get('version')}"
            current = pipeline.models.get(entity)
            if served.get(entity) == str(Path(event["path"]).resolve()):
                return  # already serving it (a restart re-reads the latest promotion)
            try:
                det = await loop.run_in_executor(None, load_served, event["path"], settings.device, settings.detector)
            except Exception:  # noqa: BLE001 - a bad artefact must not stop scoring
                log.exception("cannot load %s for %s from %s; keeping %s", model_id, entity, event.get("path"),
                              current.model_id if current else "the cold-start detector")
                return
            async with runner.lock:
                pipeline.swap(entity, det)
            served[entity] = str(Path(event["path"]).resolve())
            log.warning("entity %s now served by %s", entity, det.model_id)

        while True:  # a broker hiccup must not stop the worker: follow again from the start
            try:
                await follow(settings.broker, settings.topics.models, apply)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001
                log.exception("following %s failed; retrying in 5s", settings.topics.models)
                await asyncio.sleep(5.0)

    if settings.web_port:
        @app.task
        async def dashboard():
            try:
                async def send(fb):
                    await publish_feedback(settings.broker, settings.topics.feedback, fb, settings.replication)
                app.web_runner = await serve(board, settings.web_host, settings.web_port, settings.web_token, send)
                log.warning("dashboard on http://%s:%d/", settings.web_host, settings.web_port)
            except OSError as exc:  # a busy port costs the dashboard, not the scoring
                log.error("dashboard not started on %s:%d: %s", settings.web_host, settings.web_port, exc)

    @app.timer(interval=settings.checkpoint_interval)
    async def checkpoint():
        await runner.tick()

    @app.timer(interval=10.0)
    async def report():
        m, t = runner.pipeline.metrics, runner.timings
        log.warning("points=%d messages=%d windows=%d alerts_open=%d dlq=%d imputed=%d entities=%d "
                    "(evicted %d) seconds: process=%.1f publish=%.1f checkpoint=%.1f",
                    m["points"], m["messages"], m["windows"], m["alerts_open"], m["dlq"], m["imputed"],
                    len(runner.pipeline.entities), runner.pipeline.known_entities() - len(runner.pipeline.entities),
                    t["process"], t["publish"], t["checkpoint"])

    return app, runner
