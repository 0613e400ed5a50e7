"""SIGKILL the worker mid-stream: after a restart no point is unscored or scored twice, no incident doubles."""
import collections
import os
import signal
import time

import pytest

from .support import WORKER_FAST, read_topic, scored_points, train_models, wait_until

pytestmark = pytest.mark.integration

ENTITIES, CHANNELS, POINTS, SEED, START = 4, 8, 3000, 11, 1_700_100_000.0


def test_sigkill_mid_stream_loses_and_duplicates_nothing(broker, procs, tmp_path):
    models = train_models([f"plant-{i:02d}" for i in range(1, ENTITIES + 1)], CHANNELS, START, SEED,
                          tmp_path / "models")
    worker_args = ["worker", "--broker", broker, *models, *WORKER_FAST]
    first = procs.vigil(*worker_args, name="worker1")
    procs.vigil("simulate", "--broker", broker, "--entities", str(ENTITIES), "--channels", str(CHANNELS),
                "--points", str(POINTS), "--rate", "150", "--start", str(START), "--seed", str(SEED),
                name="simulate")
    total = ENTITIES * POINTS

    def scored():
        return len(scored_points(read_topic(broker, "vigil.scores", 4)))

    wait_until(lambda: scored() >= total // 3, 120, 1, lambda: procs.log("worker1")[-3000:])
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    killed_at = scored()
    assert killed_at < total, "the kill must land mid-stream"
    procs.vigil(*worker_args, name="worker2")
    wait_until(lambda: len(set(scored_points(read_topic(broker, "vigil.scores", 4)))) >= total, 180, 2,
               lambda: procs.log("worker2")[-3000:])

    counts = collections.Counter(scored_points(read_topic(broker, "vigil.scores", 4)))
    assert len(counts) == total, "every point scored"
    dupes = [k for k, v in counts.items() if v > 1]
    assert not dupes, f"{len(dupes)} points scored twice, e.g. {dupes[:3]}"
    alerts = read_topic(broker, "vigil.alerts", 4)
    per_state = collections.Counter((a["alert_id"], a["state"]) for a in alerts)
    assert all(v == 1 for (aid, st), v in per_state.items() if st in ("open", "close")), "no incident doubles"
    opens = [a for a in alerts if a["state"] == "open"]
    assert opens, "the simulated anomalies raised alerts"
    print(f"\nkilled after {killed_at} of {total} points; {len(opens)} incidents; restart log:\n"
          + "\n".join(line for line in procs.log("worker2").splitlines() if "recovered" in line))


def test_a_stalled_worker_loses_its_partitions_and_comes_back_without_doubling_anything(broker, procs, tmp_path):
    """SIGSTOP a worker past its session timeout while a newcomer forces a rebalance, then SIGCONT it
    while the others score on: its partitions were taken over, it must publish and checkpoint nothing
    for them, rejoin, and score its new share.

    The stop lands while the worker is idle (its readings scored and checkpointed): a stop in the
    milliseconds between handing a batch's records to the Kafka client and their leaving the process
    would let them out after the resume, a duplicate that only Kafka transactions fence
    (docs/design.md)."""
    n, points = 8, 1000  # plant-01 ... plant-08 land on all four partitions
    entities = [f"plant-{i:02d}" for i in range(1, n + 1)]
    models = train_models(entities, CHANNELS, START, SEED, tmp_path / "models")
    args = ["worker", "--broker", broker, *models, *WORKER_FAST, "--web-port", "0"]
    stalled = procs.vigil(*args, name="worker1")
    procs.vigil(*args, name="worker2")
    wait_until(lambda: all("assigned partitions" in procs.log(f"worker{i}") for i in (1, 2)), 90, 1,
               lambda: procs.log("worker1")[-2000:])

    def simulate(start, name, rate):
        procs.vigil("simulate", "--broker", broker, "--entities", str(n), "--channels", str(CHANNELS),
                    "--points", str(points), "--rate", str(rate), "--start", str(start), "--seed", str(SEED),
                    name=name)

    def scored():
        return len(scored_points(read_topic(broker, "vigil.scores", 4)))

    simulate(START, "simulate1", 0)
    wait_until(lambda: scored() >= n * points, 120, 0.5, lambda: procs.log("worker1")[-3000:])
    time.sleep(2)  # its last checkpoint
    os.kill(stalled.pid, signal.SIGSTOP)
    procs.vigil(*args, name="worker3")  # its join rebalances the group; the stalled member misses it
    wait_until(lambda: "assigned partitions" in procs.log("worker3"), 60, 0.5, lambda: procs.log("worker2")[-2000:])
    simulate(START + points, "simulate2", 100)
    total = 2 * n * points
    wait_until(lambda: scored() >= n * points + n * points // 4, 120, 0.5, lambda: procs.log("worker2")[-2000:])
    os.kill(stalled.pid, signal.SIGCONT)
    resumed_at = scored()
    wait_until(lambda: len(set(scored_points(read_topic(broker, "vigil.scores", 4)))) >= total, 240, 2,
               lambda: "\n".join(procs.log(f"worker{i}")[-1500:] for i in (1, 2, 3)))
    time.sleep(5)  # anything the resumed worker would still publish

    counts = collections.Counter(scored_points(read_topic(broker, "vigil.scores", 4)))
    assert len(counts) == total, "every point scored"
    dupes = [k for k, v in counts.items() if v > 1]
    assert not dupes, f"{len(dupes)} points scored twice, e.g. {dupes[:3]}"
    alerts = read_topic(broker, "vigil.alerts", 4)
    per_state = collections.Counter((a["alert_id"], a["state"]) for a in alerts)
    assert all(v == 1 for (aid, st), v in per_state.items() if st in ("open", "close")), "no incident doubles"
    assert stalled.poll() is None, "the stalled worker is alive again"
    log1 = procs.log("worker1")
    assert "were lost while this worker stalled" in log1, "it found out, and dropped them"
    assert log1.count("assigned partitions") >= 2, "the stalled worker rejoined the group"
    print(f"\nresumed at {resumed_at} of {total} points; stalled worker's view:\n"
          + "\n".join(line for line in log1.splitlines() if "partitions" in line or "lost" in line))
