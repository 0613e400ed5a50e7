"""Wiring between Faust and the pipeline: micro-batches in, outputs and checkpoints out.

Delivery contract (docs/contract.md): outputs of a micro-batch are published and confirmed before its
events are released for commit, and events are released only after a checkpoint of the entity state
that includes them. After a crash the worker restores the last checkpoint, skips the readings it
already applied, and re-processes the rest; outputs that had been published after that checkpoint are
found by reading the output topics' tails and are not published again. So each point is scored once,
and an incident is opened once, whatever the timing of the crash.
"""
from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict

import orjson

from .config import Settings
from .kafka import producer, read_partition
from .pipeline import META_KEY, Message, Outputs, Pipeline

log = logging.getLogger("vigil.worker")


class Runner:
    def __init__(self, settings: Settings, pipeline: Pipeline):
        self.settings = settings
        self.pipeline = pipeline
        self.lock = asyncio.Lock()
        self.producer = None
        self.recovered: set[int] = set()
        self.held: list = []  # events kept unacked until their state is checkpointed
        self.consumer = None  # the Faust consumer, for the assignment check
        self.timings = defaultdict(float)

    async def start(self) -> None:
        if self.producer is None:
            self.producer = producer(self.settings.broker)
            await self.producer.start()

    # ---- micro-batches --------------------------------------------------------------------------
    async def handle(self, events: list) -> None:
        """Process one micro-batch of Faust events."""
        async with self.lock:
            await self.start()
            topic = self.settings.topics.readings
            assigned = self._assigned()
            fresh = []
            for e in events:
                tp = e.message.tp
                if assigned is not None and tp not in assigned:
                    continue  # buffered before a rebalance took the partition away
                fresh.append(e)
            mine = {e.message.partition for e in fresh}
            if assigned is not None:  # recover every assigned partition at once, not one per batch
                mine |= {tp.partition for tp in assigned if tp.topic == topic}
            todo = sorted(mine - self.recovered)
            if todo:
                await asyncio.gather(*(self.recover(p) for p in todo))
            t0 = time.perf_counter()
            msgs = [Message(e.message.partition, e.message.offset, e.message.key, e.message.value)
                    for e in fresh if e.message.topic == topic]
            out = await self.pipeline.process(msgs)
            t1 = time.perf_counter()
            if self.pipeline.board is not None:
                self.pipeline.board.batch(len(events), self._lag(assigned))
            await self.publish(out)
            t2 = time.perf_counter()
            self.timings["process"] += t1 - t0
            self.timings["publish"] += t2 - t1
            for e in fresh:
                e.message.incref()  # released by checkpoint(), after the state is durable
                self.held.append(e)

    async def publish(self, out: Outputs) -> None:
        topics = self.settings.topics
        futures = []
        for kind, records in (("scores", out.scores), ("alerts", out.alerts), ("dlq", out.dlq)):
            name = getattr(topics, kind)
            for r in records:
                futures.append((kind, r.partition,
                                await self.producer.send(name, r.value, key=r.key, partition=r.partition)))
        for kind, partition, fut in futures:
            meta = await fut
            offs = self.pipeline.partitions[partition].out_offsets
            offs[kind] = max(offs.get(kind, -1), meta.offset)

    async def checkpoint(self) -> None:
        """Make entity state durable, then release the events it covers for commit."""
        async with self.lock:
            if self.producer is None:
                return
            t0 = time.perf_counter()
            parts = {e.message.partition for e in self.held}
            parts |= {p for p, s in self.pipeline.partitions.items() if s.dirty}
            futures = []
            for p in sorted(parts & self.recovered):
                for key, value in self.pipeline.checkpoint(p):
                    futures.append(await self.producer.send(self.settings.topics.state, value, key=key,
                                                            partition=p))
            for fut in futures:
                await fut
            for e in self.held:
                e.ack()
            self.held.clear()
            self.timings["checkpoint"] += time.perf_counter() - t0

    def _lag(self, assigned) -> dict[int, int]:
        """Readings messages behind the head of each assigned partition."""
        lag = {}
        for tp in assigned or ():
            if tp.topic == self.settings.topics.readings:
                try:
                    head = self.consumer.highwater(tp)
                except Exception:  # noqa: BLE001 - not known before the first fetch
                    continue
                if head is not None:
                    lag[tp.partition] = max(0, head - 1 - self.pipeline.partitions[tp.partition].input_offset)
        return lag

    # ---- rebalances -----------------------------------------------------------------------------
    def _assigned(self):
        try:
            return self.consumer.assignment() if self.consumer is not None else None
        except Exception:  # noqa: BLE001 - the consumer may be between generations
            return None

    async def recover(self, partition: int) -> None:
        """Restore a partition's checkpoint and learn which outputs were published after it."""
        t0 = time.perf_counter()
        broker, topics = self.settings.broker, self.settings.topics
        states: dict[bytes, bytes] = {}
        for rec in await read_partition(broker, topics.state, partition):
            states[rec.key] = rec.value
        meta = orjson.loads(states[META_KEY]) if META_KEY in states else {"out": {}}
        self.pipeline.restore(partition, states)
        after = lambda kind: meta["out"].get(kind, -1) + 1  # noqa: E731 - first offset not covered
        scores, alerts, dlq = await asyncio.gather(
            read_partition(broker, topics.scores, partition, after("scores")),
            read_partition(broker, topics.alerts, partition, after("alerts")),
            read_partition(broker, topics.dlq, partition, after("dlq")))
        scores_ts: dict[str, float] = {}
        alerts_ts: dict[str, float] = {}
        for rec in scores:
            msg = orjson.loads(rec.value)
            last = msg["ts"][-1] if isinstance(msg["ts"], list) else msg["ts"]
            scores_ts[msg["entity"]] = max(scores_ts.get(msg["entity"], -math.inf), last)
        for rec in alerts:
            msg = orjson.loads(rec.value)
            alerts_ts[msg["entity"]] = max(alerts_ts.get(msg["entity"], -math.inf), msg["ts"])
        dlq_offset = max((orjson.loads(rec.value)["offset"] for rec in dlq), default=-1)
        self.pipeline.suppress(partition, scores_ts, alerts_ts, dlq_offset)
        self.recovered.add(partition)
        log.warning("partition %d recovered in %.2fs: %d entities, input offset %d, %d entities with "
                 "outputs after the checkpoint", partition, time.perf_counter() - t0,
                 len(states) - (META_KEY in states), self.pipeline.partitions[partition].input_offset,
                 len(scores_ts))

    async def on_revoked(self, partitions: set[int]) -> None:
        await self.checkpoint()
        async with self.lock:
            for p in partitions:
                self.pipeline.drop(p)
                self.recovered.discard(p)
