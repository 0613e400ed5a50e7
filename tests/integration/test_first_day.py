"""A new plant's first day on a real broker: workers with no model alert from the cold start, the
trainer's first run promotes a model for every entity, and the workers hand over to it."""
import collections
import time

import orjson
import pytest

from .support import WORKER_FAST, match_events, read_topic, scored_points, wait_until

pytestmark = pytest.mark.integration

START = 1_790_000_000.0  # September 2026: in the past (the worker refuses readings from the future)


def run_simulator(procs, broker, name, entities, channels, points, seed, start, labels):
    sim = procs.vigil("simulate", "--broker", broker, "--entities", str(entities), "--channels", str(channels),
                      "--points", str(points), "--seed", str(seed), "--start", str(start), "--labels", str(labels),
                      name=name)
    assert sim.wait(timeout=120) == 0, procs.log(name)[-2000:]
    return [orjson.loads(line) for line in labels.read_text().splitlines()]


def wait_scored(broker, procs, total):
    wait_until(lambda: len(set(scored_points(read_topic(broker, "vigil.scores", 4)))) >= total, 240, 2,
               lambda: procs.log("worker")[-2000:])
    counts = collections.Counter(scored_points(read_topic(broker, "vigil.scores", 4)))
    assert len(counts) == total and max(counts.values()) == 1, "every point scored once"


def test_a_worker_without_models_alerts_on_the_simulators_anomalies_from_cold_start(broker, procs, tmp_path):
    procs.vigil("worker", "--broker", broker, *WORKER_FAST, "--web-port", "0", name="worker")
    labels = run_simulator(procs, broker, "simulate", 3, 8, 4000, 7, START, tmp_path / "labels.jsonl")
    wait_scored(broker, procs, 3 * 4000)
    time.sleep(2)  # the last incidents close
    alerts = read_topic(broker, "vigil.alerts", 4)
    assert {a["model"] for a in alerts} == {"coldstart@2"}
    recall, precision, hit, n = match_events(alerts, labels)
    print(f"\ncold start, seed 7, 3 entities x 8 channels x 4000 points: event recall {recall:.2f}, "
          f"precision {precision:.2f}, channel hit@3 {hit:.2f} ({len(labels)} anomalies, {n} incidents)")
    assert recall >= 0.7 and precision >= 0.5 and hit >= 0.5

    # the first trainer run on that history, anomalies the cold start missed included: auto's model for
    # every entity replaces the cold start (an alarm rate on unlabelled anomalies is not a reason to keep it)
    trainer = procs.vigil("trainer", "--once", "--broker", broker, "--registry", str(tmp_path / "registry"),
                          "--history", "30d", "--generator-epochs", "2", name="trainer")
    assert trainer.wait(timeout=300) == 0, procs.log("trainer")[-3000:]
    events = read_topic(broker, "vigil.models", 1)
    assert sorted((e["entity"], e["event"]) for e in events) == [(f"plant-0{i}", "promoted") for i in (1, 2, 3)], \
        [e.get("reason") for e in events]
    for e in events:
        chosen = e["metrics"]["selection"]
        assert chosen["chosen"] == e["model"] and set(chosen["candidates"]) == {"pca", "var", "knn"}, chosen


def test_the_first_trainer_run_promotes_every_entity_and_the_worker_hands_over(broker, procs, tmp_path):
    procs.vigil("worker", "--broker", broker, *WORKER_FAST, "--web-port", "0", name="worker")
    history = 4000
    run_simulator(procs, broker, "history", 2, 6, history, 3, START, tmp_path / "history.jsonl")
    wait_scored(broker, procs, 2 * history)
    # the plant of issue 31, whose plant-02 the old rule left on the cold start: `--model auto`, the default
    trainer = procs.vigil("trainer", "--once", "--broker", broker, "--registry", str(tmp_path / "registry"),
                          "--model", "auto", "--history", "30d", "--generator-epochs", "2", name="trainer")
    assert trainer.wait(timeout=300) == 0, procs.log("trainer")[-3000:]
    events = read_topic(broker, "vigil.models", 1)
    assert sorted((e["entity"], e["event"]) for e in events) == [("plant-01", "promoted"), ("plant-02", "promoted")], \
        [e.get("reason") for e in events]
    wait_until(lambda: procs.log("worker").count("now served by pca@1") == 2, 60, 0.5,
               lambda: procs.log("worker")[-2000:])

    labels = run_simulator(procs, broker, "live", 2, 6, 3000, 3, START + history, tmp_path / "live.jsonl")
    wait_scored(broker, procs, 2 * (history + 3000))
    time.sleep(2)
    scores = read_topic(broker, "vigil.scores", 4)
    assert {m["model"] for m in scores if m["ts"][0] >= START + history} == {"pca@1"}, "the first models serve"
    alerts = [a for a in read_topic(broker, "vigil.alerts", 4) if a["ts"] >= START + history]
    recall, precision, hit, n = match_events(alerts, labels)
    print(f"\nafter the hand-over to the first models: event recall {recall:.2f}, precision {precision:.2f}, "
          f"channel hit@3 {hit:.2f} ({len(labels)} anomalies, {n} incidents); trainer said: "
          + "; ".join(f"{e['entity']}: {e['reason']}" for e in events))
    assert recall >= 0.7
