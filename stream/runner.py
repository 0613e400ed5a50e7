"""The worker's Kafka side: whole fetches of ``vigil.readings`` in, outputs, checkpoints and commits out.

Why a consumer of our own instead of a Faust agent: Faust hands an agent one event at a time, which
capped single-reading messages at a few thousand a second, and a fetch that cannot be decoded (a
corrupt batch, a codec this process lacks) raised inside Faust's fetcher and crashed the worker at
every restart. Here one aiokafka group member fetches whole batches, hands them to the pipeline, and
isolates an undecodable batch to its offsets, which are dead-lettered and skipped. Faust still runs
the application (this loop is one of its tasks, beside the checkpoint timer, the models follower and
the dashboard).

Delivery contract (docs/contract.md): a micro-batch's outputs are published and acknowledged before
its offsets may be committed, and offsets are committed only after a checkpoint of the entity state
that includes them. After a crash the worker restores the last checkpoint, skips the readings it had
applied, and re-processes the rest; outputs published after that checkpoint are found in the output
topics' tails and not published again. So each point is scored once, whatever the timing of a crash.

A worker that stalls (SIGSTOP, a long GC, a frozen VM) may lose its partitions to another member
without noticing. Whenever more time than the group allows has passed since the broker last
confirmed this member, it confirms its membership with an offset commit of offsets it had already
committed (the broker refuses a commit from a member of an old generation) before it publishes or
checkpoints anything; a refused confirmation drops the partitions' state and their unpublished
outputs, and the rejoin that follows restores whatever partitions the group gives back.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict, deque

import orjson
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from scoring.pipeline import META_KEY, Message, Outputs, Pipeline
from scoring.settings import BATCH_OUTPUTS, Settings

from .kafka import consumer as kafka_consumer
from .kafka import iter_partition, producer, read_offsets, read_partition

log = logging.getLogger("vigil.worker")


def undecodable(exc: BaseException) -> bool:
    """An error raised while unpacking fetched records, which refetching cannot cure.

    aiokafka raises CorruptRecordException (bad CRC) and UnsupportedCodecError (codec unknown or
    missing) as Kafka errors; a corrupt compressed payload surfaces as the codec library's own error
    (gzip's BadGzipFile, cramjam's errors). Every other Kafka error (authorisation, a lost
    coordinator) is not about the bytes and is left to aiokafka's retries or to a restart.
    """
    if isinstance(exc, KafkaError):
        return type(exc).__name__ in ("CorruptRecordException", "UnsupportedCodecError")
    return isinstance(exc, Exception) and not isinstance(exc, (asyncio.CancelledError, MemoryError))


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, runner: "Runner"):
        self.runner = runner

    async def on_partitions_revoked(self, revoked):
        await self.runner.on_revoked({tp.partition for tp in revoked})

    async def on_partitions_assigned(self, assigned):
        await self.runner.on_assigned({tp.partition for tp in assigned})


class Runner:
    BATCH_FROM = 64  # records of one partition in one micro-batch from which they go as a batch of our own
    # A micro-batch pays each entity's costs once (its score record, its rows' bookkeeping): a fleet's
    # batches hold two readings an entity to amortise them; a few entities' hold ENOUGH messages (8
    # entities score no faster in batches of 20,000 than of 5,000, and a batch form's 5,000 messages
    # are already 500,000 rows).
    READINGS_PER_ENTITY, ENOUGH = 2, 5000
    # Output records handed to the producer and not yet acknowledged, at most (about): what a
    # checkpoint waits for. A fleet's micro-batch holds a score record per entity.
    UNACKED_RECORDS = 10_000
    # Seconds of checkpoint records written at a time: a micro-batch fetched meanwhile waits at most
    # this long (a tenth of the fetch wait), and ~250 entities' records amortise the lock's round trip.
    CHECKPOINT_SLICE = 0.01
    # An entity's checkpoint record before any was timed: a fleet entity's measured 40-100 us (to_state,
    # JSON, handing over); the estimate only spaces the first checkpoint, the next ones use the last's.
    FIRST_ENTITY_SECONDS = 100e-6

    def __init__(self, settings: Settings, pipeline: Pipeline):
        self.settings = settings
        self.pipeline = pipeline
        self.lock = asyncio.Lock()
        self.checkpointing = asyncio.Lock()  # one checkpoint at a time (the timer's, a rebalance's, the last)
        self.producer = None
        self.consumer = None
        self.recovered: set[int] = set()
        self.written_at: dict[int, float] = {}  # partition -> Kafka timestamp of its last message processed
        self.pending: dict[int, int] = {}  # partition -> next offset to commit after the next checkpoint
        self.committed: dict[int, int] = {}  # partition -> last offset committed (or found committed)
        self.confirmed_at = time.monotonic()  # when the broker last accepted this member's commit
        # More than this without a confirmation and the group may have moved on without us.
        self.fence_after = min(settings.session_timeout, settings.rebalance_timeout) / 2
        self.timings = defaultdict(float)
        self.unacked: deque = deque()  # (output kind, partition, records, delivery future) of record batches handed over
        self.unacked_records = 0
        self.checkpointed_at = time.monotonic()  # when the last checkpoint ended (or the worker started)
        self.entity_seconds = self.FIRST_ENTITY_SECONDS  # what an entity's record cost in the last checkpoint
        self.first_fetch: float | None = None  # wall clock of the first readings this process fetched
        pipeline.loader = self.load_states

    def tp(self, partition: int) -> TopicPartition:
        return TopicPartition(self.settings.topics.readings, partition)

    # ---- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.producer is None:
            # no linger: a batch's records leave the process as soon as they are handed over, which
            # keeps the window in which a stall can hold them back (docs/design.md) to the minimum
            self.producer = producer(self.settings.broker, linger_ms=0)
            await self.producer.start()
        if self.consumer is None:
            s = self.settings
            self.consumer = kafka_consumer(
                s.broker, group_id=s.group, enable_auto_commit=False, auto_offset_reset="earliest",
                session_timeout_ms=int(s.session_timeout * 1000),
                rebalance_timeout_ms=int(s.rebalance_timeout * 1000),
                heartbeat_interval_ms=int(min(1.0, s.session_timeout / 4) * 1000),
                max_poll_interval_ms=max(300_000, int(s.rebalance_timeout * 1000)),
                # a fetch returns at least one whole batch, however large (Kafka >= 0.10.1)
                max_partition_fetch_bytes=s.max_message_bytes + (64 << 10), fetch_max_bytes=32 << 20,
                # a fetch that finds nothing waits at most the micro-batch wait: a broker that does not
                # answer early when data arrives (tansu) would otherwise add up to 500 ms of latency
                fetch_max_wait_ms=max(1, int(s.batch_wait * 1000)))
            self.consumer.subscribe([s.topics.readings], listener=_Rebalance(self))
            await self.consumer.start()

    async def run(self) -> None:
        """Fetch and process micro-batches until cancelled; the last checkpoint is taken on the way out."""
        await self.start()
        try:
            while True:
                messages = await self.fetch()
                if messages:
                    await self.handle(messages)
        finally:
            try:
                await asyncio.shield(self.checkpoint())
            finally:
                for client in (self.consumer, self.producer):
                    if client is not None:
                        await client.stop()  # the consumer leaves the group: the others take over at once

    # ---- fetching -------------------------------------------------------------------------------
    async def fetch(self) -> list[Message]:
        """One micro-batch of records as Messages; offsets that could not be decoded come as Messages
        that say so (``Message.undecodable``), in offset order with the others."""
        s = self.settings
        try:
            batch = await self.consumer.getmany(timeout_ms=int(s.batch_wait * 1000), max_records=self.batch_limit())
        except Exception as exc:  # noqa: BLE001 - classified below
            if not undecodable(exc):
                raise
            return await self._isolate(exc)
        return [_message(r) for records in batch.values() for r in records]

    async def _isolate(self, exc: BaseException) -> list[Message]:
        """A fetch raised while decoding: find the partitions and offsets that cannot be decoded.

        Each assigned partition is read on its own, one record at a time, so the good records before a
        bad batch are kept; an offset that fails is skipped and the next one tried, until records
        decode again. A round trip per skipped offset, but rare, and exact with public APIs only.
        """
        log.error("a fetch of %s could not be decoded (%s: %s); isolating it", self.settings.topics.readings,
                  type(exc).__name__, exc)
        messages, bad = [], []  # bad: (partition, offset, reason)
        for tp in sorted(self.consumer.assignment()):
            for _ in range(self.batch_limit()):
                try:
                    got = await self.consumer.getmany(tp, timeout_ms=500, max_records=1)
                except Exception as err:  # noqa: BLE001 - classified below
                    if not undecodable(err):
                        raise
                    pos = await self.consumer.position(tp)
                    bad.append((tp.partition, pos, f"undecodable: {type(err).__name__}: {err}"[:500]))
                    self.consumer.seek(tp, pos + 1)
                    continue
                if not got:
                    break
                messages.extend(_message(r) for r in got[tp])
        skipped = []  # (partition, first, last, reason) of consecutive bad offsets
        for p, offset, reason in bad:
            if skipped and skipped[-1][0] == p and skipped[-1][2] == offset - 1 and skipped[-1][3] == reason:
                skipped[-1] = (p, skipped[-1][1], offset, skipped[-1][3])
            else:
                skipped.append((p, offset, offset, reason))
        for p, first, last, reason in skipped:
            log.error("partition %d: offsets %d-%d of %s cannot be decoded and are dead-lettered: %s", p, first,
                      last, self.settings.topics.readings, reason)
            messages.append(Message(p, first, None, None, None, (last, reason)))
        return sorted(messages, key=lambda m: (m.partition, m.offset))

    # ---- micro-batches --------------------------------------------------------------------------
    async def handle(self, messages: list[Message]) -> None:
        """Process one micro-batch and publish its outputs; its offsets commit at the next checkpoint."""
        async with self.lock:
            mine = self.recovered
            messages = [m for m in messages if m.partition in mine]  # fetched before a rebalance
            if messages and self.first_fetch is None:
                self.first_fetch = time.time()
                # one line per process; bench/throughput.py times the worker from it
                log.warning("first readings fetched at %.6f (unix time)", self.first_fetch)
            t0 = time.perf_counter()
            out = await self.pipeline.process(messages)
            t1 = time.perf_counter()
            if not await self.confirm():
                return
            if self.pipeline.board is not None:  # only the board reads how long readings waited
                for m in messages:
                    if m.timestamp is not None:
                        self.written_at[m.partition] = m.timestamp
                lag = self._lag()
                now = time.time()
                waited = {p: max(0.0, now - self.written_at[p]) if n and p in self.written_at else 0.0
                          for p, n in lag.items()}
                self.pipeline.board.batch(len(messages), lag, waited)
            await self.publish(out)
            self.timings["process"] += t1 - t0
            self.timings["publish"] += time.perf_counter() - t1
            for m in messages:
                last = m.offset if m.undecodable is None else m.undecodable[0]
                self.pending[m.partition] = max(self.pending.get(m.partition, 0), last + 1)

    def batch_limit(self) -> int:
        """Messages the next micro-batch may hold: two readings an entity held, at least ENOUGH, at most
        ``settings.batch_size``."""
        return min(self.settings.batch_size, max(self.ENOUGH, self.READINGS_PER_ENTITY * len(self.pipeline.entities)))

    async def publish(self, out: Outputs) -> None:
        """Hand a micro-batch's outputs to the producer. Where a partition has many records (a fleet's
        micro-batch holds a score record per entity) they go as record batches of our own: handing them
        over one by one cost four times as much. A few go one by one, joining the producer's open batch
        (``send_batch`` waits for the partition's previous batch to leave). Their acknowledgements are
        awaited at the next checkpoint (``settle``), before any offset is committed: the next
        micro-batch is processed while the broker acknowledges this one."""
        topics = self.settings.topics
        for kind in BATCH_OUTPUTS:
            name = getattr(topics, kind)
            by_partition: dict[int, list] = defaultdict(list)
            for r in getattr(out, kind):
                by_partition[r.partition].append(r)
            for partition, records in by_partition.items():
                if len(records) < self.BATCH_FROM:
                    for r in records:
                        fut = await self.producer.send(name, r.value, key=r.key, partition=partition)
                        self.unacked.append((kind, partition, 1, fut))
                    self.unacked_records += len(records)
                    continue
                for keys, fut in await self._send_batches(name, partition, ((r.key, r.value) for r in records)):
                    self.unacked.append((kind, partition, len(keys), fut))
                    self.unacked_records += len(keys)
        if self.unacked_records > self.UNACKED_RECORDS:  # bound what a checkpoint has to wait for
            await self.settle(keep=self.UNACKED_RECORDS // 2)

    async def _send_batches(self, topic: str, partition: int, records) -> list[tuple[list[bytes], asyncio.Future]]:
        """(key, value) records of one partition handed over as record batches, a new one whenever one is
        full: each batch's keys and its delivery future (which gives the batch's first offset)."""
        sent, batch, keys = [], self.producer.create_batch(), []
        for key, value in records:
            if batch.append(key=key, value=value, timestamp=None) is None:  # full: send it, begin another
                sent.append((keys, await self.producer.send_batch(batch, topic, partition=partition)))
                batch, keys = self.producer.create_batch(), []
                batch.append(key=key, value=value, timestamp=None)
            keys.append(key)
        if keys:
            sent.append((keys, await self.producer.send_batch(batch, topic, partition=partition)))
        return sent

    async def settle(self, keep: int = 0) -> None:
        """Wait until the broker has acknowledged the outputs handed over so far, all but the newest
        ``keep`` records; record their offsets (a checkpoint stores them, so that a restart does not
        publish them again). Oldest first: bounding what is outstanding (``publish``) waits on batches
        the broker has usually acknowledged already, not on a round trip for the one just sent, which
        held a fleet's worker up for a tenth of a second every few micro-batches."""
        while self.unacked and self.unacked_records > keep:
            kind, partition, n, fut = self.unacked.popleft()
            self.unacked_records -= n
            meta = await fut  # the batch's first offset
            if partition in self.recovered:  # a partition lost meanwhile: its new owner dedupes
                offs = self.pipeline.partitions[partition].out_offsets
                offs[kind] = max(offs.get(kind, -1), meta.offset + n - 1)

    # ---- membership -----------------------------------------------------------------------------
    async def confirm(self) -> bool:
        """True if this member still owns its partitions; after a stall, asks the broker first.

        On a refusal the partitions' state is dropped (their new owner restores it) and False returned.
        """
        if time.monotonic() - self.confirmed_at <= self.fence_after or not self.recovered:
            return True
        probe = {self.tp(p): OffsetAndMetadata(self.committed.get(p, 0), "") for p in self.recovered}
        try:
            await self.consumer.commit(probe)
        except (CommitFailedError, IllegalStateError) as exc:
            lost = sorted(self.recovered)
            log.warning("partitions %s were lost while this worker stalled (%s); dropping their state and "
                        "unpublished outputs", lost, type(exc).__name__)
            self._forget(lost)
            return False
        self.confirmed_at = time.monotonic()
        return True

    def _forget(self, partitions) -> None:
        for p in partitions:
            self.pipeline.drop(p)
            self.recovered.discard(p)
            self.pending.pop(p, None)
            self.committed.pop(p, None)
            self.written_at.pop(p, None)

    # ---- checkpoints ----------------------------------------------------------------------------
    async def tick(self) -> None:
        """The checkpoint timer: a checkpoint when one is due (``checkpoint_due``)."""
        if time.monotonic() >= self.checkpoint_due():
            await self.checkpoint()

    def checkpoint_due(self) -> float:
        """When the next checkpoint is due: checkpoints take at most ``settings.checkpoint_share`` of the
        worker's time, so the time since the last one must be (1/share - 1) times what the next one will
        cost, its changed entities at the last checkpoint's cost each. A few entities checkpoint at every
        tick; a fleet of 10,000, all changed every second at tens of microseconds each, every ~20 s, and
        its first checkpoint waits as long as the next ones (not at once, on top of the fleet's first
        readings)."""
        changed = sum(len(part.dirty) for part in self.pipeline.partitions.values())
        cost = changed * self.entity_seconds
        return self.checkpointed_at + cost * (1 / self.settings.checkpoint_share - 1)

    async def checkpoint(self) -> None:
        """Make entity state durable, then commit the offsets it covers; then evict idle entities.

        A partition at a time. Its snapshot's instant is fixed under the lock, between micro-batches,
        once its outputs are acknowledged; its records are written in slices of ``CHECKPOINT_SLICE``
        seconds with micro-batches scored between them (an entity a micro-batch changes is written
        first: ``Pipeline.begin_checkpoint``). Handing the records to the producer, the broker's
        acknowledgements and the offset commit happen while micro-batches are scored: a fleet's
        checkpoint is megabytes, and writing it in one piece held every reading up for a second."""
        async with self.checkpointing:
            async with self.lock:
                if self.producer is None or not self.recovered:
                    return
                await self.settle()
                if not await self.confirm():
                    return
                parts = set(self.pending) | {p for p, s in self.pipeline.partitions.items() if s.dirty}
                parts &= self.recovered
            spent, written = 0.0, 0
            for p in sorted(parts):
                async with self.lock:
                    t0 = time.perf_counter()
                    if p not in self.recovered:
                        continue
                    offset = await self._begin(p)
                    spent += time.perf_counter() - t0
                if offset is False:
                    return
                records = None
                while records is None:
                    await asyncio.sleep(0)  # a micro-batch fetched meanwhile goes first
                    async with self.lock:
                        if p not in self.pipeline.snapshots:  # lost meanwhile: its new owner restores it
                            break
                        t0 = time.perf_counter()
                        records = self.pipeline.checkpoint_step(p, self.CHECKPOINT_SLICE)
                        spent += time.perf_counter() - t0
                if records is None:
                    continue
                written += len(records) - 1  # the entities' records, not the offsets'
                t0 = time.perf_counter()
                sent = await self._send_batches(self.settings.topics.state, p, records)
                spent += time.perf_counter() - t0
                if not await self._commit_partition(p, sent, offset):
                    return
            async with self.lock:
                t0 = time.perf_counter()
                self.pipeline.evict()
                spent += time.perf_counter() - t0
            self.timings["checkpoint"] += spent
            if written:
                self.entity_seconds = spent / written
            self.checkpointed_at = time.monotonic()

    async def _begin(self, p: int) -> int | None | bool:
        """Under the lock: fix partition ``p``'s snapshot once the outputs of every micro-batch before it
        are acknowledged; the offset it covers (None: nothing new), or False when the group has moved on."""
        await self.settle()  # the outputs of every micro-batch that the offsets below cover
        if not await self.confirm():
            return False
        self.pipeline.begin_checkpoint(p)
        return self.pending.get(p)

    async def _commit_partition(self, p: int, sent: list, offset: int | None) -> bool:
        """Once the state records of a snapshot are acknowledged, commit the offset it covers; False when
        the group has moved on (the partitions are then dropped)."""
        for keys, fut in sent:
            first = (await fut).offset
            for i, key in enumerate(keys):
                self.pipeline.stored(p, key, first + i)
        if offset is None or p not in self.recovered:
            return True
        try:
            await self.consumer.commit({self.tp(p): OffsetAndMetadata(offset, "")})
        except (CommitFailedError, IllegalStateError) as exc:
            # The state written is correct for its offsets; the new owner replays from its
            # own view of the commits and suppresses what was already published.
            log.warning("offset commit refused (%s); partitions %s go to their new owner",
                        type(exc).__name__, sorted(self.recovered))
            async with self.lock:
                self._forget(sorted(self.recovered))
            return False
        self.confirmed_at = time.monotonic()
        self.committed[p] = offset
        if self.pending.get(p) == offset:  # no micro-batch of p since the snapshot
            del self.pending[p]
        return True

    def _lag(self) -> dict[int, int]:
        """Readings messages behind the head of each assigned partition."""
        lag = {}
        for p in self.recovered:
            head = self.consumer.highwater(self.tp(p))
            if head is not None:
                lag[p] = max(0, head - 1 - self.pipeline.partitions[p].input_offset)
        return lag

    # ---- rebalances -----------------------------------------------------------------------------
    async def on_assigned(self, partitions: set[int]) -> None:
        mine = sorted(partitions)
        log.warning("assigned partitions %s of %s", mine, self.settings.topics.readings)
        async with self.lock:
            todo = [p for p in mine if p not in self.recovered]
            await asyncio.gather(*(self.recover(p) for p in todo))
            for p in todo:
                self.committed[p] = await self.consumer.committed(self.tp(p)) or 0
            self.confirmed_at = time.monotonic()

    async def on_revoked(self, partitions: set[int]) -> None:
        await self.checkpoint()
        async with self.lock:
            self._forget(sorted(partitions & self.recovered))

    async def recover(self, partition: int) -> None:
        """Restore a partition's checkpoint and learn which outputs were published after it."""
        t0 = time.perf_counter()
        broker, topics = self.settings.broker, self.settings.topics
        index: dict[bytes, int] = {}  # entity key -> offset of its latest state record
        meta_raw = None
        async for records in iter_partition(broker, topics.state, partition):
            for rec in records:  # keys and offsets only: states load when their entity reads again
                index[rec.key] = rec.offset
        if META_KEY in index:
            meta_raw = (await read_offsets(broker, topics.state, partition, [index.pop(META_KEY)]))[0].value
        meta = orjson.loads(meta_raw) if meta_raw is not None else {"input_offset": -1, "out": {}}
        self.pipeline.restore(partition, meta, index)
        after = lambda kind: meta["out"].get(kind, -1) + 1  # noqa: E731 - first offset not covered
        scores, alerts, dlq = await asyncio.gather(
            read_partition(broker, topics.scores, partition, after("scores")),
            read_partition(broker, topics.alerts, partition, after("alerts")),
            read_partition(broker, topics.dlq, partition, after("dlq")))
        # decoded off the event loop: a long tail must not stall the other partitions' scoring
        scores_ts, alerts_ts, dlq_offset = await asyncio.get_running_loop().run_in_executor(
            None, published_after_checkpoint, scores, alerts, dlq)
        self.pipeline.suppress(partition, scores_ts, alerts_ts, dlq_offset)
        self.recovered.add(partition)
        log.warning("partition %d recovered in %.2fs: %d entities, input offset %d, %d entities with "
                    "outputs after the checkpoint", partition, time.perf_counter() - t0, len(index),
                    self.pipeline.partitions[partition].input_offset, len(scores_ts))

    async def load_states(self, partition: int, offsets: list[int]) -> list[bytes]:
        """Entity state records at these offsets of the partition's ``vigil.state`` (evicted entities)."""
        recs = await read_offsets(self.settings.broker, self.settings.topics.state, partition, offsets)
        return [r.value for r in recs]


def published_after_checkpoint(scores: list, alerts: list, dlq: list) -> tuple[dict, dict, int]:
    """Per entity, the last score and alert timestamps published after the checkpoint, and the last
    dead-lettered source offset: what recovery must not publish again. A record on those topics that
    Vigil did not write (not JSON, fields missing) is skipped, never fatal to recovery."""
    scores_ts: dict[str, float] = {}
    alerts_ts: dict[str, float] = {}
    dlq_offset = -1
    for rec in scores:
        try:
            msg = orjson.loads(rec.value)
            last = float(msg["ts"][-1] if isinstance(msg["ts"], list) else msg["ts"])
            scores_ts[msg["entity"]] = max(scores_ts.get(msg["entity"], -math.inf), last)
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            continue
    for rec in alerts:
        try:
            msg = orjson.loads(rec.value)
            alerts_ts[msg["entity"]] = max(alerts_ts.get(msg["entity"], -math.inf), float(msg["ts"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
    for rec in dlq:
        try:
            d = orjson.loads(rec.value)
            dlq_offset = max(dlq_offset, int(d.get("last_offset", d["offset"])))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            continue
    return scores_ts, alerts_ts, dlq_offset


def _message(r) -> Message:
    ts = r.timestamp / 1000.0 if r.timestamp is not None and r.timestamp >= 0 else None
    return Message(r.partition, r.offset, r.key, r.value, ts)
