"""Small Kafka helpers on aiokafka: broker checks, topic creation, reading a partition to its end.

Only standard Kafka APIs are used, so everything here works on Apache Kafka as on the embedded broker.
"""
from __future__ import annotations

import asyncio
import os
import socket
import time

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic


class BrokerUnavailable(RuntimeError):
    pass


def security_options() -> dict:
    """Kafka security from the environment, as aiokafka keyword arguments (empty: plaintext).

    ``VIGIL_KAFKA_SECURITY_PROTOCOL`` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL),
    ``VIGIL_KAFKA_SASL_MECHANISM`` (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512), ``VIGIL_KAFKA_SASL_USERNAME``,
    ``VIGIL_KAFKA_SASL_PASSWORD``, ``VIGIL_KAFKA_SSL_CAFILE`` and, for mutual TLS,
    ``VIGIL_KAFKA_SSL_CERTFILE``/``VIGIL_KAFKA_SSL_KEYFILE``. Every Vigil client (workers, trainer,
    producers, evaluation) reads the same variables, so one environment configures a deployment.
    """
    env = os.environ.get
    protocol = env("VIGIL_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT").upper()
    if protocol == "PLAINTEXT":
        return {}
    opts: dict = {"security_protocol": protocol}
    if protocol in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        opts["ssl_context"] = create_ssl_context(cafile=env("VIGIL_KAFKA_SSL_CAFILE"),
                                                 certfile=env("VIGIL_KAFKA_SSL_CERTFILE"),
                                                 keyfile=env("VIGIL_KAFKA_SSL_KEYFILE"))
    if protocol.startswith("SASL"):
        opts.update(sasl_mechanism=env("VIGIL_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
                    sasl_plain_username=env("VIGIL_KAFKA_SASL_USERNAME"),
                    sasl_plain_password=env("VIGIL_KAFKA_SASL_PASSWORD"))
    return opts


def consumer(broker: str, *topics: str, **kw) -> AIOKafkaConsumer:
    """A consumer with the deployment's security settings; no group and no commits unless asked."""
    opts = dict(bootstrap_servers=broker, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest")
    opts.update(security_options())
    opts.update(kw)
    return AIOKafkaConsumer(*topics, **opts)


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
    admin = AIOKafkaAdminClient(bootstrap_servers=broker, **security_options())
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
    opts.update(security_options())
    opts.update(kw)
    return AIOKafkaProducer(**opts)


async def read_partition(broker: str, topic: str, partition: int, start: int = 0) -> list:
    """All records of one partition from ``start`` to its current end (no consumer group)."""
    out = []
    async for records in iter_partition(broker, topic, partition, start):
        out.extend(records)
    return out


async def read_topic(broker: str, topic: str, since_wall: float | None = None) -> list:
    """Every record of every partition, from the first whose Kafka timestamp is >= ``since_wall``
    (None: from the beginning); [] when the topic does not exist."""
    starts = await offsets_for_time(broker, topic, since_wall)
    parts = await asyncio.gather(*(read_partition(broker, topic, p, start) for p, start in starts.items()))
    return [r for part in parts for r in part]


async def iter_partition(broker: str, topic: str, partition: int, start: int = 0):
    """The records of one partition from ``start`` to its current end, a fetch at a time, so that a
    caller can keep only what it needs of a large partition."""
    tp = TopicPartition(topic, partition)
    c = consumer(broker)
    await c.start()
    try:
        c.assign([tp])
        end = (await c.end_offsets([tp]))[tp]
        start = max(start, (await c.beginning_offsets([tp]))[tp])
        c.seek(tp, start)
        deadline = asyncio.get_running_loop().time() + 30.0
        while True:
            recs = (await c.getmany(tp, timeout_ms=100, max_records=10_000)).get(tp, [])
            # The fetch's high watermark is the true end: the embedded broker lists the last batch's
            # base offset + 1 as the end offset.
            end = max(end, c.highwater(tp) or 0)
            if recs:
                yield recs
            if c.highwater(tp) is not None and await c.position(tp) >= end:
                return
            if not recs and asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{topic}[{partition}]: no records up to offset {end} within 30 s")
    finally:
        await c.stop()


async def read_offsets(broker: str, topic: str, partition: int, offsets: list[int]) -> list:
    """The records at these offsets of one partition, in the order asked (None where there is none,
    e.g. compacted away). Neighbouring offsets are read in one pass, distant ones by a seek."""
    tp = TopicPartition(topic, partition)
    wanted = sorted(set(offsets))
    found: dict[int, object] = {}
    if not wanted:
        return []
    c = consumer(broker)
    await c.start()
    try:
        c.assign([tp])
        i = 0
        while i < len(wanted):
            c.seek(tp, wanted[i])
            before = i
            while i < len(wanted):
                batch = (await c.getmany(tp, timeout_ms=1000, max_records=500)).get(tp, [])
                if not batch:
                    break
                for r in batch:
                    while i < len(wanted) and wanted[i] < r.offset:
                        i += 1  # not in the log any more
                    if i < len(wanted) and wanted[i] == r.offset:
                        found[r.offset] = r
                        i += 1
                if i < len(wanted) and wanted[i] - batch[-1].offset > 1000:
                    break  # far ahead: seek rather than read through
            if i == before:
                i += 1  # nothing at that offset
    finally:
        await c.stop()
    return [found.get(o) for o in offsets]


async def offsets_for_time(broker: str, topic: str, since_wall: float | None) -> dict[int, int]:
    """Per partition, the first offset whose Kafka timestamp is >= ``since_wall`` (None: the beginning;
    a partition with nothing that recent: its end)."""
    c = consumer(broker)
    await c.start()
    try:
        await c.topics()  # fetches the metadata of every topic
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
        if not tps:
            return {}
        if since_wall is None:
            return {tp.partition: o for tp, o in (await c.beginning_offsets(tps)).items()}
        found = await c.offsets_for_times({tp: int(since_wall * 1000) for tp in tps})
        end = await c.end_offsets(tps)
        return {tp.partition: found[tp].offset if found.get(tp) else end[tp] for tp in tps}
    finally:
        await c.stop()


async def tail_json(broker: str, topic: str, follow: bool, from_beginning: bool = True, idle: float = 2.0,
                    stamped: bool = False):
    """Yield decoded JSON messages of a topic (with ``stamped``, as (message, the record's Kafka timestamp
    in seconds)); without ``follow``, stop when it has been idle for ``idle`` s."""
    c = consumer(broker, topic, auto_offset_reset="earliest" if from_beginning else "latest")
    await c.start()
    try:
        last = time.monotonic()
        while True:
            batch = await c.getmany(timeout_ms=200, max_records=1000)
            got = False
            for records in batch.values():
                for rec in records:
                    got = True
                    try:
                        msg = orjson.loads(rec.value)
                    except orjson.JSONDecodeError:
                        continue
                    yield (msg, rec.timestamp / 1000.0) if stamped else msg
            if got:
                last = time.monotonic()
            elif not follow and time.monotonic() - last > idle:
                return
    finally:
        await c.stop()
