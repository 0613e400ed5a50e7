"""Operators' labels on ``vigil.feedback``: publishing one, finding the alert it is about, reading them all.

The message format and its rules are ``scoring.feedback``; what the trainer does with the labels is
``training.feedback``. The topic has one partition (labels are few and read whole by the trainer),
keyed by entity.
"""
from __future__ import annotations

import orjson

from scoring.feedback import Feedback, latest

from .kafka import ensure_topics, producer, read_topic


async def publish_feedback(broker: str, topic: str, fb: Feedback, replication: int = 1) -> None:
    await ensure_topics(broker, [topic], 1, replication)
    p = producer(broker)
    await p.start()
    try:
        await p.send_and_wait(topic, fb.to_json(), key=fb.entity.encode())
    finally:
        await p.stop()


async def find_alert(broker: str, alerts_topic: str, alert_id: str) -> dict | None:
    """The latest message of incident ``alert_id`` on the alerts topic (its final start and end), or None."""
    found = None
    for rec in await read_topic(broker, alerts_topic):
        try:
            a = orjson.loads(rec.value)
        except orjson.JSONDecodeError:
            continue
        if isinstance(a, dict) and a.get("alert_id") == alert_id:
            found = a
    return found


async def read_feedback(broker: str, topic: str) -> dict[str, list[Feedback]]:
    """Entity -> the labels in force (``scoring.feedback.latest``); {} when the topic does not exist."""
    return latest(r.value for r in await read_topic(broker, topic))
