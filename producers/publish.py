"""Producing readings to Kafka for people and tests: simulated plants and dataset replays."""
from __future__ import annotations

import asyncio
import time
from typing import Iterable

import numpy as np
import orjson

from scoring.codec import encode_readings
from stream.kafka import producer


async def produce_series(broker: str, topic: str, series: list, rate: float = 0.0, batch: int = 1,
                         progress: bool = False) -> int:
    """Send each entity's rows as readings, interleaving entities step by step.

    ``series`` items need ``entity``, ``channels``, ``ts`` and ``values``. ``rate`` is points per second
    per entity in wall-clock time (0: as fast as possible); ``batch`` rows go in one message (the batch
    form) when above 1. Returns the number of messages sent.
    """
    from tqdm import tqdm

    prod = producer(broker)
    await prod.start()
    sent = 0
    longest = max(len(s.ts) for s in series)
    bar = tqdm(total=longest, unit="point", desc="points per entity", disable=not progress, mininterval=1.0)
    try:
        t0 = time.monotonic()
        for start in range(0, longest, batch):
            if rate > 0:
                due = t0 + (start + batch) / rate if batch > 1 else t0 + start / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            for s in series:
                if start >= len(s.ts):
                    continue
                end = min(start + batch, len(s.ts))
                if batch == 1:
                    value = encode_readings(s.entity, s.ts[start], s.values[start], s.channels)
                else:
                    value = encode_readings(s.entity, s.ts[start:end], s.values[start:end], s.channels)
                await prod.send(topic, value, key=s.entity.encode())
                sent += 1
            bar.update(min(batch, longest - start))
        await prod.flush()
    finally:
        bar.close()
        await prod.stop()
    return sent


def write_labels(path: str, anomalies: Iterable) -> None:
    with open(path, "wb") as f:
        for a in anomalies:
            f.write(orjson.dumps(a.to_json()) + b"\n")


class Series:
    """A named block of rows (what replay and the simulator hand to ``produce_series``)."""

    def __init__(self, entity: str, channels: list[str], ts: np.ndarray, values: np.ndarray):
        self.entity, self.channels, self.ts, self.values = entity, channels, ts, values


def dataset_series(path: str, entity: str | None = None, split: str = "test",
                   start: float | None = None) -> list[Series]:
    """One split of a dataset as readings, at the dataset's own interval (what it states or its time column
    shows, else ``training.evaluate.DEFAULT_INTERVAL``, as `vigil eval` times it) from ``start`` (default:
    the split ends now, so that no reading lies ahead of the wall clock): every entity the path holds
    (``training.data.load_entities``: each file of a folder, each machine of a fleet), named as
    ``vigil train --data PATH --out DIR`` names their models, with the dataset's channel names; a gap
    (NaN) is sent as ``null``, which the worker imputes."""
    from training.data import entity_name, load_entities
    from training.evaluate import interval_of

    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, not {split!r}")
    datasets = load_entities(path)
    if entity is not None and len(datasets) > 1:
        raise ValueError(f"--entity names one entity, and {path} holds {len(datasets)}")
    out = []
    for d in datasets:
        values = np.asarray(getattr(d, split), dtype=np.float64)
        step = interval_of(d)
        t0 = float(start if start is not None else int(time.time() - len(values) * step))
        out.append(Series(entity or entity_name(d), list(d.channels),
                          t0 + np.arange(len(values), dtype=np.float64) * step, values))
    return out


