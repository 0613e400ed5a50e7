"""Model lifecycle events on ``vigil.models``, and the worker's side of a hot swap.

The trainer publishes one JSON event per decision, keyed by entity:
``{"event": "promoted", "entity", "model", "version", "path", "ts", ...}`` when a new version becomes
the champion (``path``: the artefact directory, on storage the workers share), and ``"rejected"`` or
``"failed"`` events (with a ``reason``) that workers only log. Every worker reads the whole topic
without a consumer group: at start it applies the latest promotion of each entity, then follows new
events and swaps each promoted model in between two micro-batches (``Pipeline.swap``).
"""
from __future__ import annotations

import logging

import orjson
from aiokafka import TopicPartition

from .kafka import consumer as kafka_consumer
from .kafka import producer

log = logging.getLogger("vigil.models")


def load_model(path: str, device: str = "auto"):
    """An artefact directory -> a detector on ``device`` (safetensors + JSON: no code is executed)."""
    from detectors import artefacts

    return artefacts.load(path).to(device)


def load_served(path: str, device: str = "auto", detector: str | None = None):
    """The model a worker serves: scored in process, or by the detector process at ``detector``
    (HOST:PORT; the local copy then stays on the CPU and only answers questions about the model)."""
    if detector is None:
        return load_model(path, device)
    from .detector_service import RemoteDetector

    return RemoteDetector(load_model(path, "cpu"), path, detector)


async def publish(broker: str, topic: str, events: list[dict]) -> None:
    p = producer(broker)
    await p.start()
    try:
        for e in events:
            await p.send_and_wait(topic, orjson.dumps(e), key=e["entity"].encode())
    finally:
        await p.stop()


async def follow(broker: str, topic: str, apply, poll_ms: int = 500) -> None:
    """Call ``await apply(event)`` for the latest promotion per entity so far, then for each new event.

    ``apply`` must not raise for a bad event (it logs and keeps the current model).
    """
    consumer = kafka_consumer(broker)
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata of every topic (the worker created this one)
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(f"topic {topic} does not exist")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        latest: dict[str, dict] = {}
        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            batch = await consumer.getmany(*tps, timeout_ms=poll_ms)
            for records in batch.values():
                for r in records:
                    e = _decode(r.value)
                    if e is not None and e["event"] == "promoted":
                        latest[e["entity"]] = e
        for e in latest.values():
            await apply(e)
        while True:
            batch = await consumer.getmany(*tps, timeout_ms=poll_ms)
            for records in batch.values():
                for r in records:
                    e = _decode(r.value)
                    if e is not None:
                        await apply(e)
    finally:
        await consumer.stop()


def _decode(raw: bytes | None) -> dict | None:
    try:
        e = orjson.loads(raw)
        if isinstance(e, dict) and isinstance(e.get("event"), str) and isinstance(e.get("entity"), str):
            return e
    except orjson.JSONDecodeError:
        pass
    log.error("ignoring an undecodable event on the models topic: %r", (raw or b"")[:200])
    return None
