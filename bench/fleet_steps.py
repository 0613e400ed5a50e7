"""What a paced fleet's micro-batches cost inside the pipeline (no Kafka): a new entity's first reading
against a later one, and a micro-batch while a checkpoint is under way against one without.

A paced fleet (one reading per entity per message, each entity every few seconds) fills micro-batches
of about a thousand readings of a thousand different entities. Two things used to land on a few of
them: the first contact with every entity (a worker's start, or a fleet's arrival), and a checkpoint,
whose records were written by whichever micro-batch first touched each entity (``Pipeline._keep``).
Both are reported as milliseconds per micro-batch and microseconds per reading, on one process, so
the comparisons are within one run (this machine's speed drifts).

    python bench/fleet_steps.py [--entities 10000] [--batch 1000]
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from detectors.pca import PCADetector  # noqa: E402
from producers.simulate import normal_history, simulate_plant  # noqa: E402
from scoring.codec import encode_readings  # noqa: E402
from scoring.pipeline import Message, Pipeline  # noqa: E402
from scoring.settings import Settings  # noqa: E402

START = 1_700_000_000.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entities", type=int, default=10_000)
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1000, help="readings per micro-batch (a paced fleet's size)")
    args = ap.parse_args()
    e, rounds = args.entities, 6
    plant = simulate_plant(e, args.channels, rounds, START, seed=1)
    models = {}
    for s in tqdm(plant, desc="fitting a model per entity", unit="model"):
        hist = normal_history(s.entity, args.channels, 4000, START, 1)
        models[s.entity] = PCADetector(hist.channels).fit(hist.values)
    msgs = [(s.entity.encode(), encode_readings(s.entity, s.ts[j], s.values[j], s.channels))
            for j in range(rounds) for s in plant]
    pipe = Pipeline(Settings(), models)
    pipe.prepare(progress=True)
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)  # as the worker (stream.worker.tune_gc)

    async def run(lo: int, hi: int) -> list[float]:
        took = []
        for i in range(lo, hi, args.batch):
            t = time.perf_counter()
            await pipe.process([Message(0, i + k, a, b) for k, (a, b) in enumerate(msgs[i:min(hi, i + args.batch)])])
            took.append(time.perf_counter() - t)
        return took

    first = asyncio.run(run(0, e))
    second = asyncio.run(run(e, 2 * e))
    asyncio.run(run(2 * e, 4 * e))
    without = asyncio.run(run(4 * e, 5 * e))
    pipe.begin_checkpoint(0)
    during = asyncio.run(run(5 * e, 6 * e))
    t = time.perf_counter()
    records = pipe.checkpoint_step(0)
    rest = time.perf_counter() - t
    per = lambda took: f"{statistics.mean(took) * 1e3:6.1f} ms (max {max(took) * 1e3:6.1f}), " \
                       f"{sum(took) / e * 1e6:5.1f} us a reading"  # noqa: E731
    print(f"{e} entities x {args.channels} channels, micro-batches of {args.batch} readings, one partition")
    print(f"  first contact           {per(first)}")
    print(f"  second reading          {per(second)}")
    print(f"  no checkpoint           {per(without)}")
    print(f"  checkpoint under way    {per(during)}")
    print(f"  then the checkpoint's remaining records: {rest * 1e3:.0f} ms ({len(records) - 1} records in all), "
          f"written in slices between micro-batches by the worker")


if __name__ == "__main__":
    main()
