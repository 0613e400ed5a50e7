"""Three workers share six partitions; one is SIGKILLed and another joins mid-stream; nothing is lost or doubled."""
import collections
import os
import signal

import pytest

from producers.simulate import simulate_plant

from .support import WORKER_FAST, match_events, read_topic, scored_points, train_models, wait_until

pytestmark = pytest.mark.integration

ENTITIES, CHANNELS, POINTS, SEED, START, PARTITIONS = 12, 6, 2000, 13, 1_700_200_000.0, 6


def test_workers_come_and_go_and_every_point_is_scored_once(broker, procs, tmp_path):
    entities = [f"plant-{i:02d}" for i in range(1, ENTITIES + 1)]
    models = train_models(entities, CHANNELS, START, SEED, tmp_path / "models")
    args = ["worker", "--broker", broker, "--partitions", str(PARTITIONS), *models, *WORKER_FAST, "--web-port", "0"]
    workers = [procs.vigil(*args, name=f"worker{i}") for i in (1, 2, 3)]
    wait_until(lambda: all("assigned partitions" in procs.log(f"worker{i}") for i in (1, 2, 3)), 90, 1,
               lambda: procs.log("worker1")[-2000:])
    procs.vigil("simulate", "--broker", broker, "--entities", str(ENTITIES), "--channels", str(CHANNELS),
                "--points", str(POINTS), "--rate", "60", "--start", str(START), "--seed", str(SEED),
                "--batch", "5", name="simulate")
    total = ENTITIES * POINTS

    def scored():
        return len(set(scored_points(read_topic(broker, "vigil.scores", PARTITIONS))))

    wait_until(lambda: scored() >= total // 4, 180, 1, lambda: procs.log("worker1")[-3000:])
    os.killpg(workers[1].pid, signal.SIGKILL)  # worker 2 dies without a word
    workers[1].wait()
    killed_at = scored()
    wait_until(lambda: scored() >= total // 2, 180, 1, lambda: procs.log("worker1")[-3000:])
    procs.vigil(*args, name="worker4")  # and a new one joins
    added_at = scored()
    assert added_at < total, "the new worker must join mid-stream"
    wait_until(lambda: scored() >= total, 300, 2,
               lambda: "\n".join(procs.log(f"worker{i}")[-1500:] for i in (1, 3, 4)))

    counts = collections.Counter(scored_points(read_topic(broker, "vigil.scores", PARTITIONS)))
    assert len(counts) == total, "every point scored"
    dupes = [k for k, v in counts.items() if v > 1]
    assert not dupes, f"{len(dupes)} points scored twice, e.g. {dupes[:3]}"
    alerts = read_topic(broker, "vigil.alerts", PARTITIONS)
    per_state = collections.Counter((a["alert_id"], a["state"]) for a in alerts)
    assert all(v == 1 for (_, st), v in per_state.items() if st in ("open", "close")), "no incident doubles"
    labels = [a.to_json() for s in simulate_plant(ENTITIES, CHANNELS, POINTS, START, SEED) for a in s.anomalies]
    recall, precision, hit, n_open = match_events(alerts, labels)
    owners = {i: [line.split("assigned partitions ")[1].split(" of")[0] for line in procs.log(f"worker{i}").splitlines()
                  if "assigned partitions" in line] for i in (1, 2, 3, 4)}
    print(f"\nkilled worker2 at {killed_at}, added worker4 at {added_at} of {total} points; "
          f"event recall {recall:.2f} precision {precision:.2f} channel hit@3 {hit:.2f} ({n_open} incidents); "
          f"assignments {owners}")
    assert recall >= 0.8, "alerts still arrive for injected anomalies"
    assert all(owners[i] and owners[i][-1] != "[]" for i in (1, 3, 4)), "every live worker ends with partitions"
