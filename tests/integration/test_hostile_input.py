"""No message stops a partition: oversized input, every compression codec, undecodable batches,
clock glitches and entity floods, each on a real broker with one worker that must stay alive and score
every valid reading around the bad one exactly once."""
import collections
import hashlib
import time
import urllib.request

import numpy as np
import orjson
import pytest

from scoring.codec import encode_readings
from stream.broker import free_port
from stream.kafka import producer

from .support import (
    WORKER_FAST,
    read_topic,
    scored_points,
    send,
    send_corrupt_batch,
    send_librdkafka,
    send_with,
    wait_until,
)

pytestmark = pytest.mark.integration

BROKER_MESSAGE_LIMIT = 1_048_588  # message.max.bytes of a default Apache Kafka broker


def readings(entity, n, start, channels=4, seed=0):
    """n single readings of a cold-start entity, one a second from ``start``."""
    rng = np.random.default_rng(seed)
    return [(entity.encode(), orjson.dumps({"entity": entity, "ts": start + i,
                                            "values": rng.normal(size=channels).round(4).tolist()}))
            for i in range(n)]


def start_worker(procs, broker, *extra, name="worker"):
    """A worker on a one-partition readings topic, once it owns the partition."""
    proc = procs.vigil("worker", "--broker", broker, "--partitions", "1", *WORKER_FAST, "--web-port", "0",
                       *extra, name=name)
    wait_until(lambda: "recovered" in procs.log(name), 60, 0.5, lambda: procs.log(name)[-2000:])
    return proc


def wait_scored(broker, procs, expected, name="worker", timeout=120):
    def done():
        return len(set(scored_points(read_topic(broker, "vigil.scores", 1)))) >= expected
    wait_until(done, timeout, 1, lambda: procs.log(name)[-3000:])
    counts = collections.Counter(scored_points(read_topic(broker, "vigil.scores", 1)))
    assert len(counts) == expected, "every valid reading is scored"
    assert max(counts.values()) == 1, "no reading is scored twice"
    return counts


def raw_dlq(broker):
    """Dead letters with their encoded size."""
    import asyncio

    from stream.kafka import read_partition
    return [(len(r.value), orjson.loads(r.value)) for r in asyncio.run(read_partition(broker, "vigil.dlq", 0))]


def test_oversized_messages_are_dead_lettered_in_bounded_records_and_the_partition_goes_on(broker, procs):
    now = time.time() - 3600
    worker = start_worker(procs, broker)
    big_value = orjson.dumps({"entity": "a", "ts": now + 150.5, "values": [1.0] * 4, "pad": "x" * (5 << 20)})
    rows = 200_000
    big_batch = encode_readings("b", now + 1000 + np.arange(rows), np.zeros((rows, 4)))
    huge_key = b"k" * (2 << 20)
    before, after = readings("a", 150, now), readings("a", 150, now + 151)
    others = readings("b", 300, now, seed=1)

    async def produce():  # a 5 MB message needs a producer that allows it
        p = producer(broker, max_request_size=16 << 20, max_batch_size=16 << 20)
        await p.start()
        try:
            for key, value in before + others[:150]:
                await p.send("vigil.readings", value, key=key)
            await p.send("vigil.readings", big_value, key=b"a")
            await p.send("vigil.readings", big_batch, key=b"b")
            await p.send("vigil.readings", after[0][1], key=huge_key)  # a valid reading under a 2 MB key
            for key, value in after[1:] + others[150:]:
                await p.send("vigil.readings", value, key=key)
            await p.flush()
        finally:
            await p.stop()
    import asyncio
    asyncio.run(produce())

    wait_scored(broker, procs, 600)
    assert worker.poll() is None, "the worker is alive"
    dlq = raw_dlq(broker)
    assert sorted(d["code"] for _, d in dlq) == ["oversized", "oversized"]
    for size, d in dlq:
        assert size < BROKER_MESSAGE_LIMIT, "a dead letter fits a default broker"
        assert d["value_truncated"] and d["value_bytes"] > (1 << 20)
        original = big_value if d["value_bytes"] == len(big_value) else big_batch
        assert d["value_sha256"] == hashlib.sha256(original).hexdigest()
    assert all(len(orjson.dumps(m)) < BROKER_MESSAGE_LIMIT for m in read_topic(broker, "vigil.scores", 1))


def test_every_codec_of_stock_producers_is_scored_and_undecodable_batches_are_skipped(broker, procs):
    now = time.time() - 3600
    worker = start_worker(procs, broker)
    expected = 0
    for codec in ("gzip", "snappy", "lz4", "zstd"):
        send_with(broker, readings(f"aiokafka-{codec}", 100, now), codec)
        send_librdkafka(broker, readings(f"librdkafka-{codec}", 100, now), codec)
        expected += 200
    send(broker, readings("victim", 50, now))
    bad_gzip = send_corrupt_batch(broker, readings("victim", 5, now + 50), "gzip")
    bad_crc = send_corrupt_batch(broker, readings("victim", 3, now + 55), "crc")
    send(broker, readings("victim", 50, now + 58))
    expected += 100

    wait_scored(broker, procs, expected)
    assert worker.poll() is None, "the worker is alive"
    dlq = read_topic(broker, "vigil.dlq", 1)
    assert {d["code"] for d in dlq} == {"undecodable"}
    skipped = sorted(o for d in dlq for o in range(d["offset"], d.get("last_offset", d["offset"]) + 1))
    assert skipped == sorted(bad_gzip + bad_crc), "exactly the undecodable offsets are dead-lettered"
    assert any("gzip" in d["reason"].lower() for d in dlq) and any("crc" in d["reason"].lower() for d in dlq)


def test_readings_from_the_future_are_refused_and_the_entity_keeps_its_clock(broker, procs):
    now = time.time() - 3600
    worker = start_worker(procs, broker)
    good = readings("clock", 300, now)
    glitches = [(b"clock", orjson.dumps({"entity": "clock", "ts": 1e308, "values": [0.0] * 4})),
                (b"clock", orjson.dumps({"entity": "clock", "ts": 32_503_680_000.0, "values": [0.0] * 4})),  # 3000
                (b"clock", encode_readings("clock", [now + 100.5, now + 1e9, now + 100.7], np.zeros((3, 4))))]
    send(broker, good[:100] + glitches + good[101:])

    counts = wait_scored(broker, procs, 299 + 2)
    assert worker.poll() is None
    assert ("clock", now + 100.5) in counts and ("clock", now + 100.7) in counts, "the batch's good rows are used"
    dlq = read_topic(broker, "vigil.dlq", 1)
    assert [d["code"] for d in dlq] == ["future_ts"] * 3, "only the glitches are refused, none as out_of_order"
    assert dlq[2]["rows"] == [1]


def fetch_metrics(url):
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = collections.defaultdict(float)
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] += float(value)
            if "{" in name:
                out[name.split("{")[0]] += float(value)
    return out


def test_an_entity_flood_is_evicted_capped_and_evicted_entities_come_back_whole(broker, procs):
    now = time.time() - 3600
    port = free_port()
    worker = start_worker(procs, broker, "--web-port", str(port), "--entity-ttl", "0", "--max-live-entities", "200",
                          "--max-entities", "3000", "--cold-calibration-points", "20")
    url = f"http://127.0.0.1:{port}"
    flood = [(f"e{i:05d}".encode(), encode_readings(f"e{i:05d}", now + np.arange(3), np.ones((3, 2)) * i))
             for i in range(3500)]
    send(broker, flood)
    wait_until(lambda: fetch_metrics(url)["vigil_dlq_total"] >= 500, 120, 1, lambda: procs.log("worker")[-2000:])
    wait_until(lambda: fetch_metrics(url)['vigil_entities{state="live"}'] <= 200, 30, 0.5)
    m = fetch_metrics(url)
    assert m['vigil_dlq_total{reason="too_many_entities"}'] == 500
    assert m['vigil_entities{state="live"}'] + m['vigil_entities{state="evicted"}'] == 3000
    assert m["vigil_entity_evictions_total"] >= 2800

    # e00001 was evicted after 3 of the 50 rows of its detector's warm-up (20 calibration points follow
    # it): it must go on from row 4, so its first threshold comes at row 71, not 74
    rng = np.random.default_rng(0)
    back = [(b"e00001", encode_readings("e00001", now + 3 + np.arange(70), 1 + 0.1 * rng.normal(size=(70, 2)))),
            (b"e00002", encode_readings("e00002", [now + 1.5], np.ones((1, 2))))]  # before its last reading
    send(broker, back)
    wait_until(lambda: any(s["entity"] == "e00001" and s["ts"][-1] == now + 72
                           for s in read_topic(broker, "vigil.scores", 1)), 60, 1)
    late = [t for s in read_topic(broker, "vigil.scores", 1) if s["entity"] == "e00001" and s["ts"][0] > now + 2
            for t in s["threshold"]]
    assert late[:67] == [None] * 67 and None not in late[67:], "warm-up and calibration resumed at row 4"
    codes = collections.Counter(d["code"] for d in read_topic(broker, "vigil.dlq", 1))
    assert codes == {"too_many_entities": 500, "out_of_order": 1}, "the evicted entity kept its clock"
    assert fetch_metrics(url)["vigil_entity_loads_total"] >= 2
    assert worker.poll() is None
