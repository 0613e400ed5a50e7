"""Helpers for integration tests: produce raw messages, read topics, train per-entity models."""
import asyncio
import time

import orjson

from detectors import artefacts
from detectors.pca import PCADetector
from producers.simulate import normal_history
from stream.kafka import producer, read_partition
from training.calibration import fit_for_serving

WORKER_FAST = ["--session-timeout", "6", "--rebalance-timeout", "3", "--checkpoint-interval", "0.5",
               "--batch-wait", "0.05"]


def train_models(entities, channels, end_ts, seed, directory, history=86400):
    """PCA per entity on a day of its normal history: the simulated plant's operating point follows a daily
    cycle, which a model trained on an hour meets as false alarms that the level guard (two days) leaves
    to the trainer; an operator's first model has the history a plant already keeps."""
    args = []
    for e in entities:
        hist = normal_history(e, channels, history, end_ts, seed)
        path = artefacts.save(fit_for_serving(PCADetector(hist.channels), hist.values, progress=False), directory / e)
        args.append(f"--model={e}={path}")
    return args


def send(broker, messages, topic="vigil.readings"):
    """messages: (key bytes, value bytes) in order."""
    async def run():
        p = producer(broker)
        await p.start()
        try:
            for key, value in messages:
                await p.send(topic, value, key=key)
            await p.flush()
        finally:
            await p.stop()
    asyncio.run(run())


def read_topic(broker, topic, partitions):
    async def run():
        out = []
        for p in range(partitions):
            out.extend(await read_partition(broker, topic, p))
        return out
    try:
        return [orjson.loads(r.value) for r in asyncio.run(run())]
    except Exception:  # topic not created yet
        return []


def scored_points(score_msgs):
    """(entity, ts) of every scored point, with repetitions."""
    pts = []
    for m in score_msgs:
        ts = m["ts"] if isinstance(m["ts"], list) else [m["ts"]]
        pts.extend((m["entity"], t) for t in ts)
    return pts


def wait_until(condition, timeout, interval=1.0, on_timeout=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s: {on_timeout() if callable(on_timeout) else on_timeout}")


def match_events(alerts, labels, slack_before=2, slack_after=15):
    """Event-level matching of opened incidents to injected anomalies (same entity, overlapping span)."""
    opens = [a for a in alerts if a["state"] == "open"]
    latest = {a["alert_id"]: a for a in alerts}  # channels as of the incident's last message
    ends = {k: a["end"] for k, a in latest.items()}
    detected, hits, true_pos = set(), 0, 0
    for a in opens:
        end = ends.get(a["alert_id"], a["end"])
        found = [i for i, lab in enumerate(labels) if lab["entity"] == a["entity"]
                 and a["start"] <= lab["end"] + slack_after and end >= lab["start"] - slack_before]
        if found:
            true_pos += 1
            for i in found:
                if i not in detected:
                    detected.add(i)
                    top3 = [c["channel"] for c in latest[a["alert_id"]]["channels"][:3]]
                    hits += bool(set(labels[i]["channels"]) & set(top3))
    recall = len(detected) / max(1, len(labels))
    precision = true_pos / max(1, len(opens))
    channel_hit = hits / max(1, len(detected))
    return recall, precision, channel_hit, len(opens)


def send_with(broker, messages, codec=None, topic="vigil.readings", partition=None):
    """Produce (key, value) pairs with aiokafka compressing batches with ``codec`` (gzip, snappy, lz4,
    zstd or None), in order."""
    async def run():
        p = producer(broker, compression_type=codec, linger_ms=20)
        await p.start()
        try:
            futures = [await p.send(topic, value, key=key, partition=partition) for key, value in messages]
            for f in futures:
                await f
        finally:
            await p.stop()
    asyncio.run(run())


def send_librdkafka(broker, messages, codec, topic="vigil.readings", partition=None):
    """Produce with librdkafka (confluent-kafka), the client of most non-Java producers."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": broker, "compression.type": codec, "linger.ms": 20})
    errors = []
    for key, value in messages:
        kw = {} if partition is None else {"partition": partition}
        p.produce(topic, value, key, on_delivery=lambda err, msg: err and errors.append(err), **kw)
    p.flush(30)
    assert not errors, errors


def send_corrupt_batch(broker, messages, kind, topic="vigil.readings", partition=0):
    """Produce one record batch that no client can decode: ``kind`` "gzip" (flagged gzip, payload not
    gzip) or "crc" (a flipped byte under the CRC). A stock producer never writes these; a damaged disk
    or a buggy proxy can, and the embedded broker stores them as they come."""
    import struct

    from aiokafka.producer import message_accumulator
    from aiokafka.record.util import calc_crc32c

    original = message_accumulator.BatchBuilder._build

    def damaged(self):
        b = bytearray(original(self))
        if kind == "gzip":
            attrs = struct.unpack_from(">h", b, 21)[0]
            struct.pack_into(">h", b, 21, (attrs & ~7) | 1)
            struct.pack_into(">I", b, 17, calc_crc32c(bytes(b[21:])))
        else:
            b[-1] ^= 0xFF
        self._buffer = b
        return b

    async def run():
        p = producer(broker, linger_ms=50)
        await p.start()
        message_accumulator.BatchBuilder._build = damaged
        try:
            futures = [await p.send(topic, value, key=key, partition=partition) for key, value in messages]
            return [(await f).offset for f in futures]
        finally:
            message_accumulator.BatchBuilder._build = original
            await p.stop()
    return asyncio.run(run())
