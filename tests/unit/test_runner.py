"""The worker's Kafka side with fake clients: fencing after a stall, commits after checkpoints, and
isolating records that cannot be decoded."""
import asyncio
import gzip
import time

import orjson
import pytest
from aiokafka.errors import CommitFailedError, CorruptRecordException, UnsupportedCodecError

from scoring.pipeline import META_KEY, Message, Pipeline
from scoring.settings import Settings
from stream.runner import Runner, undecodable


class FakeBatch:
    """aiokafka's BatchBuilder as the runner uses it: full after ``capacity`` records."""

    def __init__(self, capacity):
        self.capacity, self.records = capacity, []

    def append(self, *, timestamp, key, value):
        if len(self.records) == self.capacity:
            return None
        self.records.append((key, value))
        return object()

    def record_count(self):
        return len(self.records)


class FakeProducer:
    """Offsets count every record sent, whatever its topic and partition."""

    def __init__(self, batch_capacity=1000):
        self.sent, self.batch_capacity = [], batch_capacity

    def _acked(self, offset):
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(type("Meta", (), {"offset": offset})())
        return fut

    async def send(self, topic, value, key=None, partition=None):
        self.sent.append((topic, partition, key, value))
        return self._acked(len(self.sent) - 1)

    def create_batch(self):
        return FakeBatch(self.batch_capacity)

    async def send_batch(self, batch, topic, *, partition):
        first = len(self.sent)
        self.sent.extend((topic, partition, k, v) for k, v in batch.records)
        return self._acked(first)


class FakeConsumer:
    def __init__(self, refuse=False):
        self.refuse, self.commits = refuse, []

    async def commit(self, offsets):
        if self.refuse:
            raise CommitFailedError("the group rebalanced")
        self.commits.append({tp.partition: om.offset for tp, om in offsets.items()})

    def highwater(self, tp):
        return None


def reading(entity, ts, offset):
    return Message(0, offset, entity.encode(), orjson.dumps({"entity": entity, "ts": ts, "values": [1.0, 2.0]}))


def runner(refuse=False):
    r = Runner(Settings(session_timeout=6, rebalance_timeout=3), Pipeline(Settings()))
    r.producer, r.consumer = FakeProducer(), FakeConsumer(refuse)
    r.recovered = {0}
    return r


def test_a_worker_that_stalled_past_the_group_timeouts_confirms_before_it_publishes():
    r = runner(refuse=True)
    r.confirmed_at = time.monotonic() - 60  # as after a SIGSTOP
    asyncio.run(r.handle([reading("a", 1.0, 0), reading("a", 2.0, 1)]))
    assert r.producer.sent == [], "nothing published for partitions that may belong to another worker now"
    assert r.recovered == set() and 0 not in r.pipeline.partitions, "their state is dropped"
    asyncio.run(r.checkpoint())
    assert r.producer.sent == [] and r.consumer.commits == []


def test_a_confirmed_member_publishes_then_commits_only_after_the_checkpoint():
    r = runner()
    r.confirmed_at = time.monotonic() - 60
    asyncio.run(r.handle([reading("a", 1.0, 0), reading("a", 2.0, 1)]))
    assert r.consumer.commits == [{0: 0}], "the stall probe commits what was already committed"
    assert [t for t, *_ in r.producer.sent] == ["vigil.scores"]
    asyncio.run(r.checkpoint())
    topics = [t for t, *_ in r.producer.sent]
    assert topics[-2:] == ["vigil.state", "vigil.state"], "entity state, then the partition's offsets"
    assert r.consumer.commits[-1] == {0: 2}, "offsets after the last message, once the state is written"


def test_errors_of_undecodable_records_are_told_apart_from_other_failures():
    assert undecodable(CorruptRecordException("Invalid CRC"))
    assert undecodable(UnsupportedCodecError("lz4"))
    assert undecodable(gzip.BadGzipFile("Not a gzipped file"))
    assert not undecodable(CommitFailedError("rebalanced"))
    assert not undecodable(asyncio.CancelledError())


def test_an_undecodable_range_is_one_dead_letter_and_moves_the_partition_on():
    pipe = Pipeline(Settings())
    msgs = [reading("a", 1.0, 0), Message(0, 1, None, None, None, (4, "undecodable: BadGzipFile: x")),
            reading("a", 2.0, 5)]
    out = asyncio.run(pipe.process(msgs))
    dlq = [orjson.loads(r.value) for r in out.dlq]
    assert [(d["code"], d["offset"], d["last_offset"]) for d in dlq] == [("undecodable", 1, 4)]
    assert pipe.partitions[0].input_offset == 5 and pipe.metrics["points"] == 2
    again = asyncio.run(pipe.process(msgs))  # a replay after a restart skips them all
    assert not again.dlq and not again.scores


@pytest.mark.parametrize("size", [5 << 20])
def test_dead_letters_are_bounded_whatever_the_message_holds(size):
    pipe = Pipeline(Settings())
    big = b'{"entity": "a", "ts": 1, "values": [1], "pad": "' + b"x" * size + b'"}'
    out = asyncio.run(pipe.process([Message(0, 0, b"k" * size, big)]))
    (record,) = out.dlq
    d = orjson.loads(record.value)
    assert len(record.value) < 300_000 and len(record.key) <= 1024
    assert d["code"] == "oversized" and d["value_bytes"] == len(big) and d["key_bytes"] == size


def test_recovery_skips_output_records_vigil_did_not_write():
    from types import SimpleNamespace as Rec

    from stream.runner import published_after_checkpoint

    scores = [Rec(value=b'{"entity": "a", "ts": [1.0, 2.0]}'), Rec(value=b"junk"), Rec(value=b'{"entity": "a"}'),
              Rec(value=b'{"entity": ["x"], "ts": 3}'), Rec(value=b'{"entity": "b", "ts": 5.0}'),
              Rec(value=b'{"entity": "a", "ts": []}')]
    alerts = [Rec(value=b'{"entity": "a", "ts": 1.5}'), Rec(value=b"\xff"), Rec(value=b'{"ts": "x", "entity": "a"}')]
    dlq = [Rec(value=b'{"offset": 7}'), Rec(value=b'{"offset": 3, "last_offset": 9}'), Rec(value=b"[]"),
           Rec(value=b'{"offset": "x"}')]
    assert published_after_checkpoint(scores, alerts, dlq) == ({"a": 2.0, "b": 5.0}, {"a": 1.5}, 9)


def test_outputs_go_out_in_record_batches_and_the_checkpoint_records_their_last_offsets():
    """A micro-batch of many entities' score records is handed over as record batches per partition,
    a new batch whenever one is full; the offsets a checkpoint stores are of the last record sent."""
    r = runner()
    r.producer = FakeProducer(batch_capacity=3)
    r.BATCH_FROM = 5
    asyncio.run(r.handle([reading(f"e{i}", 1.0, i) for i in range(7)]))
    assert [(t, p) for t, p, *_ in r.producer.sent] == [("vigil.scores", 0)] * 7, "every entity's record, in order"
    assert sorted(orjson.loads(v)["entity"] for *_, v in r.producer.sent) == [f"e{i}" for i in range(7)]
    assert r.unacked_records == 7 and [n for _, _, n, _ in r.unacked] == [3, 3, 1]
    asyncio.run(r.settle())
    assert r.pipeline.partitions[0].out_offsets == {"scores": 6}
    asyncio.run(r.handle([reading(f"e{i}", 2.0, 7 + i) for i in range(2)]))  # a few: one by one
    assert [n for _, _, n, _ in r.unacked] == [1, 1] and len(r.producer.sent) == 9
    asyncio.run(r.settle())
    assert r.pipeline.partitions[0].out_offsets == {"scores": 8}


def test_a_checkpoint_goes_a_partition_at_a_time_and_the_next_waits_out_its_share():
    r = runner()
    r.recovered = {0, 1}
    asyncio.run(r.handle([reading("a", 1.0, 0), Message(1, 0, b"b", orjson.dumps(
        {"entity": "b", "ts": 1.0, "values": [1.0, 2.0]}))]))
    assert r.checkpoint_due() > r.checkpointed_at, "two entities changed: not free"
    r.checkpointed_at -= 1.0  # a tick later: due (two entities at 100 us each, 5%: 4 ms)
    asyncio.run(r.tick())
    assert r.consumer.commits == [{0: 1}, {1: 1}], "each partition committed after its own state"
    spent = r.timings["checkpoint"]
    assert spent > 0 and r.entity_seconds == pytest.approx(spent / 2), "what each record cost"
    assert r.settings.checkpoint_share <= 0.1
    asyncio.run(r.handle([reading("a", 2.0, 1)]))
    assert r.checkpoint_due() == pytest.approx(r.checkpointed_at + spent / 2 * (1 / r.settings.checkpoint_share - 1))
    r.entity_seconds = 1.0  # as if each record took a second: the next waits 19 s
    asyncio.run(r.tick())
    assert len(r.consumer.commits) == 2, "not due yet: the timer takes no checkpoint"
    asyncio.run(r.checkpoint())  # a rebalance or shutdown checkpoints whatever is due
    assert r.consumer.commits[-1] == {0: 2}


def test_a_fleet_s_first_checkpoint_waits_out_its_share_too():
    r = runner()
    asyncio.run(r.handle([reading(f"e{i}", 1.0, i) for i in range(10_000)]))
    wait = r.checkpoint_due() - r.checkpointed_at
    assert wait == pytest.approx(10_000 * Runner.FIRST_ENTITY_SECONDS * (1 / r.settings.checkpoint_share - 1))
    assert 10 < wait < 60, "a fleet's first checkpoint is not taken on top of its first readings"


def test_a_micro_batch_holds_two_readings_an_entity_held_at_least_enough_at_most_batch_size():
    r = runner()
    r.settings.batch_size = 50_000
    assert r.batch_limit() == Runner.ENOUGH, "a few entities"
    r.pipeline.entities = {f"e{i}": None for i in range(10_000)}
    assert r.batch_limit() == 20_000, "a fleet: two readings each"
    r.pipeline.entities = {f"e{i}": None for i in range(40_000)}
    assert r.batch_limit() == 50_000, "never beyond batch_size"
    r.settings.batch_size = 1000
    assert r.batch_limit() == 1000


def test_micro_batches_are_scored_between_the_slices_of_a_checkpoint():
    """A checkpoint of many entities is written in slices; a micro-batch that arrives meanwhile is
    scored between two of them, and the checkpoint still commits the offset of its instant."""
    r = runner()
    r.CHECKPOINT_SLICE = 0.0  # one entity a slice
    asyncio.run(r.handle([reading(f"e{i}", 1.0, i) for i in range(40)]))
    order = []

    async def both():
        async def batch():
            await asyncio.sleep(0)
            await r.handle([reading("e3", 2.0, 40)])
            order.append(("batch", len(r.pipeline.snapshots)))
        await asyncio.gather(r.checkpoint(), batch())
    asyncio.run(both())
    assert order == [("batch", 1)], "scored while the checkpoint was under way"
    states = {k: orjson.loads(v) for t, _, k, v in r.producer.sent if t == "vigil.state" and k != META_KEY}
    assert len(states) == 40 and states[b"e3"]["last_ts"] == 1.0, "e3 as of the instant, before its new reading"
    assert r.consumer.commits == [{0: 40}] and r.pending == {0: 41}
    assert r.pipeline.partitions[0].dirty == {"e3"}


def test_the_board_hears_how_long_the_oldest_unprocessed_reading_has_waited():
    from stream.board import Board
    r = runner()
    r.pipeline.board = Board()
    r.pipeline.board.pipeline = r.pipeline
    r.consumer.highwater = lambda tp: 10  # the partition's head: offsets 0..9
    written = time.time() - 30.0
    msgs = [m._replace(timestamp=written + i) for i, m in enumerate(reading("a", 1.0 + i, i) for i in range(4))]
    asyncio.run(r.handle(msgs))
    assert r.pipeline.board.lag == {0: 6}
    assert r.pipeline.board.lag_seconds[0] == pytest.approx(27.0, abs=1.0), "behind: the last one done waited 27 s"
    asyncio.run(r.handle([reading("a", 10.0 + i, 4 + i)._replace(timestamp=time.time()) for i in range(6)]))
    assert r.pipeline.board.lag == {0: 0} and r.pipeline.board.lag_seconds == {0: 0.0}, "caught up"


def test_a_partition_lost_and_regained_in_the_middle_of_its_checkpoint_abandons_it():
    """A stall loses the partitions (their snapshot goes with their state) and a rebalance gives one
    back before the checkpoint's next slice: that checkpoint writes and commits nothing for it."""
    r = runner()
    r.CHECKPOINT_SLICE = 0.0
    asyncio.run(r.handle([reading(f"e{i}", 1.0, i) for i in range(20)]))

    async def both():
        async def lose_and_regain():
            await asyncio.sleep(0)
            async with r.lock:
                r._forget([0])
                r.pipeline.restore(0, None, {})
                r.recovered.add(0)
        await asyncio.gather(r.checkpoint(), lose_and_regain())
    asyncio.run(both())
    assert not [k for t, _, k, _ in r.producer.sent if t == "vigil.state"] and r.consumer.commits == []
