"""An operator labels alerts; the trainer retunes the entity; its false alarms drop, its faults still alert."""
import numpy as np
import pytest

from detectors.pca import PCADetector
from producers.simulate import normal_history
from scoring.codec import encode_readings
from training.calibration import fit_for_serving
from training.registry import Registry, data_hash

from .support import WORKER_FAST, read_topic, send, wait_until

pytestmark = pytest.mark.integration

ENTITY, CHANNELS, START = "line-3", 6, 1_700_000_000.0
TRAIN, PHASE = 4000, 3000  # points: the first model's training data; each live phase
BENIGN = (500, 1300, 2100)  # phase offsets of a recurring valve test: a harmless bump on ch1
FAULT = 1700  # phase offset of a real fault: a larger step on ch4
SPAN = 30


def live_phase(series, offset):
    values = series[offset:offset + PHASE].copy()
    for b in BENIGN:
        values[b:b + SPAN, 1] += 4.0
    values[FAULT:FAULT + SPAN, 4] += 12.0
    return values


def batches(ts, values, rows=20):
    names = [f"ch{i}" for i in range(CHANNELS)]
    return [(ENTITY.encode(), encode_readings(ENTITY, ts[i:i + rows], values[i:i + rows], names))
            for i in range(0, len(ts), rows)]


def incidents_over(alerts, ts0, spans):
    """alert_id of the incident opened over each span (start offset), or None."""
    opens = [a for a in alerts if a["state"] == "open"]
    out = []
    for s in spans:
        lo, hi = ts0 + s - 2, ts0 + s + SPAN + 15
        out.append(next((a["alert_id"] for a in opens if lo <= a["start"] <= hi), None))
    return out


def test_false_alarm_feedback_lowers_the_entitys_false_alarms_after_the_next_trainer_run(broker, procs, tmp_path):
    registry = Registry(tmp_path / "registry")
    series = normal_history(ENTITY, CHANNELS, TRAIN + 2 * PHASE, START, seed=11).values
    names = [f"ch{i}" for i in range(CHANNELS)]
    v1 = fit_for_serving(PCADetector(names), series[:TRAIN], progress=False)
    v = registry.register(ENTITY, v1, trained_from=START, trained_to=START + TRAIN, data_hash=data_hash(series[:TRAIN]),
                          metrics={}, parent=None)
    v = registry.promote(ENTITY, v.model, v.version)
    procs.vigil("worker", "--broker", broker, f"--model={ENTITY}={v.path}", *WORKER_FAST, name="worker")
    wait_until(lambda: "assigned partitions" in procs.log("worker"), 60, 0.5, lambda: procs.log("worker")[-2000:])

    def scored():
        return sum(len(m["ts"]) for m in read_topic(broker, "vigil.scores", 4))

    # phase 1: the valve test alarms every time; so does the fault
    ts1 = START + TRAIN + np.arange(PHASE, dtype=np.float64)
    send(broker, batches(ts1, live_phase(series, TRAIN)))
    wait_until(lambda: scored() >= PHASE, 120, 1, lambda: procs.log("worker")[-2000:])
    wait_until(lambda: None not in incidents_over(read_topic(broker, "vigil.alerts", 4), ts1[0], [FAULT]), 30, 1)
    alerts = read_topic(broker, "vigil.alerts", 4)
    benign1 = incidents_over(alerts, ts1[0], BENIGN)
    fault1 = incidents_over(alerts, ts1[0], [FAULT])[0]
    assert all(benign1), f"the first model alarms on every valve test: {benign1}"

    # the operator labels them, from the command line
    for alert_id, label in [(a, "false-alarm") for a in benign1] + [(fault1, "anomaly")]:
        p = procs.vigil("feedback", alert_id, "--label", label, "--note", "valve test" if label != "anomaly" else "",
                        "--broker", broker, name="feedback")
        assert p.wait(timeout=60) == 0, procs.log("feedback")[-2000:]
    bad = procs.vigil("feedback", "no-such-alert", "--label", "false-alarm", "--broker", broker, name="bad")
    assert bad.wait(timeout=60) == 1 and "no alert 'no-such-alert'" in procs.log("bad")
    labels = read_topic(broker, "vigil.feedback", 1)
    assert sorted((x["alert_id"], x["label"]) for x in labels) == sorted(
        [(a, "false-alarm") for a in benign1] + [(fault1, "anomaly")])

    # the trainer's next round uses the labels: promoted, with the labels recorded in the registry
    trainer = procs.vigil("trainer", "--once", "--broker", broker, "--registry", str(tmp_path / "registry"),
                          "--history", "30d", "--min-points", "1000", "--generator-epochs", "2", name="trainer")
    assert trainer.wait(timeout=300) == 0, procs.log("trainer")[-3000:]
    champion = registry.champion(ENTITY)
    assert champion.version == 2, procs.log("trainer")[-3000:]
    record = champion.metrics["feedback"]
    assert record["labels"] == 4 and record["honoured"] == 4 and record["champion_honoured"] == 1, record
    assert {u["alert_id"] for u in record["used"]} == set(benign1) | {fault1}
    assert 0.5 <= record["threshold_scale"] <= 10.0
    wait_until(lambda: "now served by pca@2" in procs.log("worker"), 60, 0.5, lambda: procs.log("worker")[-2000:])

    # phase 2: the same valve tests and another fault, now served by the retuned model
    ts2 = START + TRAIN + PHASE + np.arange(PHASE, dtype=np.float64)
    send(broker, batches(ts2, live_phase(series, TRAIN + PHASE)))
    wait_until(lambda: scored() >= 2 * PHASE, 120, 1, lambda: procs.log("worker")[-2000:])
    wait_until(lambda: None not in incidents_over(read_topic(broker, "vigil.alerts", 4), ts2[0], [FAULT]), 30, 1,
               "the labelled kind of fault must still alert")
    alerts = read_topic(broker, "vigil.alerts", 4)
    benign2 = incidents_over(alerts, ts2[0], BENIGN)
    every = read_topic(broker, "vigil.scores", 4)
    scores = [m for m in every if m["ts"][0] >= ts2[0]]

    def alarms(msgs):
        return sum(s > t for m in msgs for s, t in zip(m["score"], m["threshold"]) if t is not None)
    print(f"\nvalve tests alerted: before feedback {sum(map(bool, benign1))}/3, after {sum(map(bool, benign2))}/3; "
          f"scale {record['threshold_scale']:.2f}; point alarms per phase: "
          f"{alarms([m for m in every if m['ts'][0] < ts2[0]])} -> {alarms(scores)}")
    assert sum(map(bool, benign2)) == 0, f"the labelled false alarms do not fire again: {benign2}"
    assert all(m["model"] == "pca@2" for m in scores)
