"""SIGKILL the worker mid-stream: after a restart no point is unscored or scored twice, no incident doubles."""
import collections
import os
import signal

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
