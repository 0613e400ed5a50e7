"""Small Kafka helpers on aiokafka: broker checks, topic creation, reading a partition to its end.

Only standard Kafka APIs are used, so everything here works on Apache Kafka as on the embedded broker.
"""
from __future__ import annotations

import asyncio
import socket

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


class BrokerUnavailable(RuntimeError):
    pass


def check_broker(address: str, timeout: float = 3.0) -> None:
    """Raise BrokerUnavailable with a one-line, actionable message when nothing listens at address."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as exc:
        raise BrokerUnavailable(
            f"no Kafka broker answers at {address} ({exc.__class__.__name__}): start one with "
            f"`vigil broker`, or pass --broker HOST:PORT / set VIGIL_BROKER") from None


async def ensure_topics(broker: str, names: list[str], partitions: int, replication: int = 1) -> dict[str, int]:
    """Create missing topics; return every topic's partition count."""
    admin = AIOKafkaAdminClient(bootstrap_servers=broker)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(n, partitions, replication) for n in names if n not in existing]
        if missing:
            try:
                await admin.create_topics(missing)
            except Exception as exc:  # created concurrently by another worker
                if "TopicAlreadyExists" not in type(exc).__name__ + str(exc):
                    raise
        counts = {}
        for _ in range(50):
            meta = await admin.describe_topics(names)
            counts = {t["topic"]: len(t["partitions"]) for t in meta if t.get("partitions")}
            if all(counts.get(n) for n in names):
                return counts
            await asyncio.sleep(0.1)
        raise RuntimeError(f"topics not visible after creation: {sorted(set(names) - set(counts))}")
    finally:
        await admin.close()


def producer(broker: str, **kw) -> AIOKafkaProducer:
    opts = dict(bootstrap_servers=broker, acks="all", linger_ms=5, max_request_size=4 << 20,
                max_batch_size=1 << 20)
    opts.update(kw)
    return AIOKafkaProducer(**opts)


async def read_partition(broker: str, topic: str, partition: int, start: int = 0) -> list:
    """All records of one partition from ``start`` to its current end (no consumer group)."""
    tp = TopicPartition(topic, partition)
    consumer = AIOKafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        begin = (await consumer.beginning_offsets([tp]))[tp]
        start = max(start, begin)
        if start >= end:
            return []
        consumer.seek(tp, start)
        out = []
        while True:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
            recs = batch.get(tp, [])
            out.extend(recs)
            if (recs and recs[-1].offset >= end - 1) or await consumer.position(tp) >= end:
                return out
    finally:
        await consumer.stop()
