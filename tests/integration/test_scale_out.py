"""Three workers share six partitions; one is SIGKILLed and another joins mid-stream; nothing is lost or doubled."""
import asyncio
import collections
import os
import signal
import time

import pytest

from producers.simulate import simulate_plant
from scoring.settings import Settings
from stream.kafka import ensure_topics

from .support import WORKER_FAST, match_events, read_topic, scored_points, train_models, wait_until

pytestmark = pytest.mark.integration

ENTITIES, CHANNELS, POINTS, SEED, START, PARTITIONS = 12, 6, 2000, 13, 1_700_200_000.0, 6


def scored_once(broker, partitions, total) -> list[dict]:
    """Assert that every point was scored once and no incident opened or closed twice; the alerts."""
    counts = collections.Counter(scored_points(read_topic(broker, "vigil.scores", partitions)))
    assert len(counts) == total, "every point scored"
    dupes = [k for k, v in counts.items() if v > 1]
    assert not dupes, f"{len(dupes)} points scored twice, e.g. {dupes[:3]}"
    alerts = read_topic(broker, "vigil.alerts", partitions)
    per_state = collections.Counter((a["alert_id"], a["state"]) for a in alerts)
    assert all(v == 1 for (_, st), v in per_state.items() if st in ("open", "close")), "no incident doubles"
    return alerts


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

    alerts = scored_once(broker, PARTITIONS, total)
    labels = [a.to_json() for s in simulate_plant(ENTITIES, CHANNELS, POINTS, START, SEED) for a in s.anomalies]
    recall, precision, hit, n_open = match_events(alerts, labels)
    owners = {i: [line.split("assigned partitions ")[1].split(" of")[0] for line in procs.log(f"worker{i}").splitlines()
                  if "assigned partitions" in line] for i in (1, 2, 3, 4)}
    print(f"\nkilled worker2 at {killed_at}, added worker4 at {added_at} of {total} points; "
          f"event recall {recall:.2f} precision {precision:.2f} channel hit@3 {hit:.2f} ({n_open} incidents); "
          f"assignments {owners}")
    assert recall >= 0.8, "alerts still arrive for injected anomalies"
    assert all(owners[i] and owners[i][-1] != "[]" for i in (1, 3, 4)), "every live worker ends with partitions"


def test_a_worker_joining_a_group_behind_on_its_backlog_loses_and_doubles_nothing(broker, procs):
    """Issue 33 in small: a backlog of cold-start readings, one worker catching up on it, a second one
    joining while it is behind, live readings on top. Every point is scored once, the join is one
    rebalance (no member stalls out of the group), both workers keep partitions, and the alerts say when
    their readings reached Kafka, so a late one can be told from a live one."""
    entities, points, live, parts = 8, 150_000, 300, 4  # a backlog of 1.2 M readings: over 10 s to catch up
    asyncio.run(ensure_topics(broker, Settings().topics.all(), parts))
    end = time.time() - 60  # the backlog ends a minute ago
    common = ["--broker", broker, "--entities", str(entities), "--channels", "6", "--seed", "5"]
    backlog = procs.vigil("simulate", *common, "--points", str(points), "--rate", "0", "--start",
                          str(end - points), "--batch", "100", name="backlog")
    assert backlog.wait(300) == 0
    args = ["worker", "--broker", broker, "--partitions", str(parts), *WORKER_FAST, "--web-port", "0"]
    first = procs.vigil(*args, name="worker1")
    total = entities * (points + live)

    def scored():
        return len(set(scored_points(read_topic(broker, "vigil.scores", parts))))

    def assigned(name):
        return [line.split("assigned partitions ")[1].split(" of")[0] for line in procs.log(name).splitlines()
                if "assigned partitions" in line]

    wait_until(lambda: scored() > 0, 120, 0.5, lambda: procs.log("worker1")[-3000:])
    second = procs.vigil(*args, name="worker2")
    procs.vigil("simulate", *common, "--points", str(live), "--rate", "50", "--start", str(end), name="live")
    wait_until(lambda: assigned("worker2") and assigned("worker2")[-1] != "[]", 120, 0.5,
               lambda: procs.log("worker2")[-3000:])
    joined_at = scored()
    wait_until(lambda: scored() >= total, 300, 2, lambda: procs.log("worker1")[-1500:] + procs.log("worker2")[-1500:])

    alerts = scored_once(broker, parts, total)
    assert alerts and all(isinstance(a.get("sent"), float) for a in alerts), "each says when its reading came"
    owners = {name: assigned(name) for name in ("worker1", "worker2")}
    print(f"\nworker2 took partitions at {joined_at} of {total} points; assignments {owners}")
    assert joined_at < entities * points, "the second worker joined while the first was behind"
    assert len(owners["worker1"]) == 2 and len(owners["worker2"]) == 1, "one rebalance for the join"
    assert all(a[-1] != "[]" for a in owners.values()), "both workers end with partitions"
    assert first.poll() is None and second.poll() is None
    for name in ("worker1", "worker2"):
        assert "keepalive" not in procs.log(name), "the consumer's heartbeats were answered throughout"
