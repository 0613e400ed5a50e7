"""Random fleets through the pipeline without Kafka: the scenario of the fleet tests and their golden outputs.

A fleet of simulated entities (6 channels), served by models of their own (mostly PCA, one VAR, one knn, one
with input channels) or by none (the cold start), sending single readings or batches, with missing values,
out-of-order and future rows; micro-batches of random sizes over 2 partitions; a checkpoint and a restart
into a new pipeline part way, and a hot swap of one entity's model. ``run_scenario`` returns every output
the pipeline published, decoded. ``tests/golden/`` holds what the per-entity pipeline published before
the fleet work (issue 32), which the fleet pipeline must reproduce (``tests/unit/test_fleet.py``).
"""
from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import numpy as np
import orjson

from detectors.knn import NearestSubsequenceDetector
from detectors.pca import PCADetector
from detectors.var import VARDetector
from producers.simulate import normal_history, simulate_plant
from scoring.codec import encode_readings
from scoring.pipeline import META_KEY, Message, Pipeline
from scoring.settings import Settings

GOLDEN = Path(__file__).parent / "golden"
START = 1_700_000_000.0
CHANNELS = 6


def fleet(seed: int, entities: int = 10, points: int = 700):
    """Entities, their models (None: cold start), and the messages, as (partition, key, value, kafka ts)."""
    rng = np.random.default_rng(seed)
    plant = simulate_plant(entities, CHANNELS, points, START, seed)
    models = {}
    for i, s in enumerate(plant):
        hist = normal_history(s.entity, CHANNELS, 1500, START, seed).values
        if i == entities - 1:
            continue  # no model: the cold start
        if i == 1:
            models[s.entity] = VARDetector(s.channels).fit(hist, progress=False)
        elif i == 2:
            models[s.entity] = NearestSubsequenceDetector(s.channels).fit(hist, progress=False)
        elif i == 3:
            models[s.entity] = PCADetector(s.channels, inputs=[s.channels[-1]]).fit(hist, progress=False)
        else:
            models[s.entity] = PCADetector(s.channels).fit(hist, progress=False)
    msgs = []  # (time order key, partition, key, value, kafka ts)
    for i, s in enumerate(plant):
        values = s.values.astype(np.float64)
        if i == 4:  # a channel missing now and then
            values[rng.random(len(values)) < 0.05, 2] = np.nan
        if i == 7:  # a new operating mode for good: a drift record absorbs its incident
            values[250:] += 3.0 * values[:250].std(0)
        batch = 1 if i % 2 == 0 else 7
        partition = i % 2
        for j in range(0, len(s.ts), batch):
            ts, vals = s.ts[j:j + batch], values[j:j + batch]
            kafka_ts = float(ts[-1])
            if i == 5 and j == 350:  # a reading an hour and more ahead of its record
                ts = ts.copy()
                ts[-1] += 7200.0
            value = encode_readings(s.entity, ts[0] if batch == 1 else ts, vals[0] if batch == 1 else vals, s.channels)
            msgs.append((float(s.ts[j]), partition, s.entity.encode(), value, kafka_ts))
            if i == 6 and j == 200:  # the same reading again: a duplicate timestamp
                msgs.append((float(s.ts[j]) + 0.5, partition, s.entity.encode(), value, kafka_ts))
    msgs.sort(key=lambda m: m[0])
    return plant, models, [(p, k, v, t) for _, p, k, v, t in msgs], rng


def run_scenario(seed: int) -> dict:
    """The scenario's outputs: scores, alerts and dead letters as published, in order."""
    plant, models, msgs, rng = fleet(seed)
    settings = Settings(level_window=600.0, score_channels=True)  # a new level after 5 minutes: drifts in the run
    offsets = {0: 0, 1: 0}
    messages = []
    for p, k, v, t in msgs:
        messages.append(Message(p, offsets[p], k, v, t))
        offsets[p] += 1
    restart_at, swap_at = len(messages) // 2, (2 * len(messages)) // 3
    swap_entity = plant[0].entity
    swapped = PCADetector(plant[0].channels, variance=0.9).fit(
        normal_history(swap_entity, CHANNELS, 1500, START - 5000, seed + 1).values, progress=False)
    out = {"scores": [], "alerts": [], "dlq": []}
    pipe = Pipeline(settings, dict(models))
    i = 0
    while i < len(messages):
        size = int(rng.integers(1, 60))
        stop = min(i + size, len(messages))
        if i < restart_at <= stop:
            stop = restart_at
        if i < swap_at <= stop:
            stop = swap_at
        batch = asyncio.run(pipe.process(messages[i:stop]))
        for kind in out:
            out[kind].extend(orjson.loads(r.value) for r in getattr(batch, kind))
        i = stop
        if i == restart_at:  # a checkpoint, then a new pipeline restored from it
            pipe = restored(pipe, settings, models)
        if i == swap_at:
            pipe.swap(swap_entity, swapped)
    return out


def restored(pipe: Pipeline, settings: Settings, models: dict) -> Pipeline:
    """A new pipeline started from ``pipe``'s checkpoint of every partition, as a restarted worker is."""
    fresh = Pipeline(settings, dict(models))
    logs = {}
    for p in sorted(pipe.partitions):
        log = pipe.checkpoint(p)
        logs[p] = log
        meta = orjson.loads(dict(log)[META_KEY])
        fresh.restore(p, meta, {k: n for n, (k, _) in enumerate(log) if k != META_KEY})

    async def loader(p, offsets):
        return [logs[p][o][1] for o in offsets]
    fresh.loader = loader
    return fresh


def golden_path(seed: int) -> Path:
    return GOLDEN / f"fleet-{seed}.json.gz"


def write_golden(seed: int) -> None:
    GOLDEN.mkdir(exist_ok=True)
    golden_path(seed).write_bytes(gzip.compress(orjson.dumps(run_scenario(seed), option=orjson.OPT_SERIALIZE_NUMPY)))


def read_golden(seed: int) -> dict:
    return orjson.loads(gzip.decompress(golden_path(seed).read_bytes()))


if __name__ == "__main__":  # python -m tests.fleet: record the golden outputs (done once, before issue 32)
    for s in (1, 2):
        write_golden(s)
