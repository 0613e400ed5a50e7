"""A plant changes operating mode; the trainer learns it and the worker swaps the new model in live."""
import asyncio
import collections
import threading
import time

import numpy as np
import orjson
import pytest

from detectors import artefacts
from detectors.pca import PCADetector
from producers.simulate import normal_history
from scoring.codec import encode_readings
from stream.kafka import producer
from stream.model_updates import publish
from training.registry import Registry, data_hash
from training.trainer import event

from .support import WORKER_FAST, read_topic, send, wait_until

pytestmark = pytest.mark.integration

ENTITY, CHANNELS, START = "plant-01", 6, 1_700_000_000.0
OLD, SHIFTED, DURING = 1000, 4000, 40000  # points: old mode; new mode before retraining; at most, while it runs
AFTER = 1000  # points sent after the worker swapped the new model in


def batches(ts, values, rows=20):
    names = [f"ch{i}" for i in range(CHANNELS)]
    return [(ENTITY.encode(), encode_readings(ENTITY, ts[i:i + rows], values[i:i + rows], names))
            for i in range(0, len(ts), rows)]


def test_trainer_promotes_a_model_for_the_new_mode_and_the_worker_swaps_it_in_live(broker, procs, tmp_path):
    registry = Registry(tmp_path / "registry")
    series = normal_history(ENTITY, CHANNELS, 8000 + OLD + SHIFTED + DURING, START, seed=5).values
    v1 = PCADetector([f"ch{i}" for i in range(CHANNELS)]).fit(series[:8000])
    v = registry.register(ENTITY, v1, trained_from=START, trained_to=START + 8000, data_hash=data_hash(series[:8000]),
                          metrics={}, parent=None)
    v = registry.promote(ENTITY, v.model, v.version)
    # the worker starts on a model trained by hand, also called pca@1, and learns the registry's from
    # vigil.models, as every worker does: the same name and version, another artefact, so it swaps
    by_hand = artefacts.save(PCADetector([f"ch{i}" for i in range(CHANNELS)]).fit(series[:2000]), tmp_path / "hand")
    # the threshold's level adaptation (which would absorb the new mode by itself) is off: this test
    # measures what retraining brings
    procs.vigil("worker", "--broker", broker, f"--model={ENTITY}={by_hand}", *WORKER_FAST, "--level-window", "0",
                name="worker")
    wait_until(lambda: "assigned partitions" in procs.log("worker"), 60, 0.5, lambda: procs.log("worker")[-2000:])
    asyncio.run(publish(broker, "vigil.models", [event("promoted", ENTITY, model=v.model, version=v.version,
                                                       path=str(v.path.resolve()))]))
    wait_until(lambda: "now served by pca@1" in procs.log("worker"), 60, 0.5, lambda: procs.log("worker")[-2000:])

    live = series[8000:].copy()
    live[OLD:] = live[OLD:] * 1.8 + 2.0  # the new operating mode: other levels and gains
    ts = START + 8000 + np.arange(len(live), dtype=np.float64)
    n_before = OLD + SHIFTED
    send(broker, batches(ts[:n_before], live[:n_before]))

    def scored():
        return sum(len(m["ts"]) for m in read_topic(broker, "vigil.scores", 4))

    wait_until(lambda: scored() >= n_before, 120, 1, lambda: procs.log("worker")[-2000:])

    # readings keep flowing while the trainer reads history, trains, compares and promotes
    sent = [n_before]

    def keep_sending():
        async def run():
            p = producer(broker)
            await p.start()
            try:
                swapped_at = None
                for i in range(n_before, len(ts), 20):
                    await p.send_and_wait("vigil.readings", batches(ts[i:i + 20], live[i:i + 20])[0][1],
                                          key=ENTITY.encode())
                    sent[0] = min(i + 20, len(ts))
                    if swapped_at is None and "now served by pca@2" in procs.log("worker"):
                        swapped_at = sent[0]
                    if swapped_at is not None and sent[0] >= swapped_at + AFTER:
                        return
                    await asyncio.sleep(0.1)
            finally:
                await p.stop()
        asyncio.run(run())
    sender = threading.Thread(target=keep_sending)
    sender.start()
    trainer = procs.vigil("trainer", "--once", "--broker", broker, "--registry", str(tmp_path / "registry"),
                          "--history", "3000s", "--max-incident", "600s", "--min-points", "1000",
                          "--generator-epochs", "2", name="trainer")
    assert trainer.wait(timeout=240) == 0, procs.log("trainer")[-3000:]
    assert registry.champion(ENTITY).version == 2, procs.log("trainer")[-3000:]
    sender.join(timeout=300)
    assert "now served by pca@2" in procs.log("worker")
    ts, live = ts[:sent[0]], live[:sent[0]]
    wait_until(lambda: scored() >= len(ts), 120, 1, lambda: procs.log("worker")[-2000:])

    scores = read_topic(broker, "vigil.scores", 4)
    points = collections.Counter(t for m in scores for t in m["ts"])
    assert sorted(points) == ts.tolist(), "no point around the swap is unscored"
    assert max(points.values()) == 1, "no point is scored twice"
    by_point = {}
    for m in scores:
        for t, s, thr in zip(m["ts"], m["score"], m["threshold"]):
            by_point[t] = (m["model"], thr is not None and s > thr)
    models = [by_point[t][0] for t in ts]
    swap_at = models.index("pca@2")
    assert swap_at >= n_before and set(models[swap_at:]) == {"pca@2"}, "once swapped, the new version serves"
    new_mode_v1 = [by_point[t][1] for t in ts[OLD + 500:swap_at]]  # after v1's threshold adapted a little
    new_mode_v2 = [by_point[t][1] for t in ts[swap_at:]]
    before, after = float(np.mean(new_mode_v1)), float(np.mean(new_mode_v2))
    print(f"\nalarm rate on the new normal: pca@1 {before:.3f} ({len(new_mode_v1)} points), "
          f"pca@2 {after:.3f} ({len(new_mode_v2)} points); swapped at point {swap_at} of {len(ts)}")
    assert after < before / 5
    alerts = read_topic(broker, "vigil.alerts", 4)
    late = [a for a in alerts if a["ts"] >= ts[swap_at] and a["state"] == "open"]
    assert all(a["model"] == "pca@2" for a in late)

    # a run that fails (here: a preset that does not exist) is published with its reason; v2 keeps serving
    failing = procs.vigil("trainer", "--once", "--broker", broker, "--registry", str(tmp_path / "registry"),
                          "--history", "3000s", "--max-incident", "600s", "--min-points", "1000", "--model", "lstm_ae",
                          "--preset", "huge", name="failing")
    assert failing.wait(timeout=120) == 1, procs.log("failing")[-2000:]
    events = read_topic(broker, "vigil.models", 1)
    assert [e["event"] for e in events][-1] == "failed" and "huge" in events[-1]["reason"]
    assert registry.champion(ENTITY).version == 2
    wait_until(lambda: "model event for plant-01: failed" in procs.log("worker"), 30, 0.5)
    listing = procs.vigil("models", "--registry", str(tmp_path / "registry"), "--json", name="models")
    assert listing.wait(timeout=60) == 0
    rows = [orjson.loads(line) for line in procs.log("models").splitlines() if line.startswith("{")]
    assert [(r["version"], r["status"]) for r in rows if r["model"] == "pca"] == [(1, "retired"), (2, "champion")]

    # rolling back by hand: v1 serves again, in the registry and in the running worker
    back = procs.vigil("promote", "--broker", broker, "--registry", str(tmp_path / "registry"), ENTITY, "pca@1",
                       name="promote")
    assert back.wait(timeout=60) == 0, procs.log("promote")
    assert registry.champion(ENTITY).version == 1 and registry.get(ENTITY, "pca", 2).status == "retired"
    wait_until(lambda: procs.log("worker").count("now served by pca@1") == 2, 30, 0.5,
               lambda: procs.log("worker")[-1500:])


def test_a_drift_event_makes_the_running_trainer_retrain_that_entity_at_once(broker, procs, tmp_path):
    from training.calibration import fit_for_serving

    registry = Registry(tmp_path / "registry")
    series = normal_history(ENTITY, CHANNELS, 6000, START, seed=5).values
    v1 = fit_for_serving(PCADetector([f"ch{i}" for i in range(CHANNELS)]), series[:4000], progress=False)
    v = registry.register(ENTITY, v1, trained_from=START, trained_to=START + 4000, data_hash=data_hash(series[:4000]),
                          metrics={}, parent=None)
    v = registry.promote(ENTITY, v.model, v.version)
    # a level window of 1000 s of the plant's clock (a reading a second): the new mode, sent from the 500th
    # reading on, becomes the level 500 s later, within the test (the default is two days)
    procs.vigil("worker", "--broker", broker, f"--model={ENTITY}={v.path}", *WORKER_FAST, "--level-window", "1000s",
                name="worker")
    wait_until(lambda: "assigned partitions" in procs.log("worker"), 60, 0.5, lambda: procs.log("worker")[-2000:])
    procs.vigil("trainer", "--broker", broker, "--registry", str(tmp_path / "registry"), "--every", "1h",
                "--drift-poll", "2s", "--history", "30d", "--min-points", "500", "--generator-epochs", "2",
                name="trainer")
    time.sleep(10)  # its first round, on no history yet, is over
    live = series[4000:].copy()
    live[500:] = live[500:] * 1.8 + 2.0  # a new operating mode, for good
    ts = START + 4000 + np.arange(len(live), dtype=np.float64)
    send(broker, batches(ts, live))
    wait_until(lambda: any(a["state"] == "drift" for a in read_topic(broker, "vigil.alerts", 4)), 120, 1,
               lambda: procs.log("worker")[-2000:])
    drift = next(a for a in read_topic(broker, "vigil.alerts", 4) if a["state"] == "drift")
    assert drift["entity"] == ENTITY and drift["ts"] >= ts[500] and drift["detail"]["retrain"]
    wait_until(lambda: any(e["entity"] == ENTITY for e in read_topic(broker, "vigil.models", 1)), 180, 2,
               lambda: procs.log("trainer")[-3000:])
    assert f"drift reported for {ENTITY}: retraining now" in procs.log("trainer")
    alerts = read_topic(broker, "vigil.alerts", 4)
    assert sum(a["state"] == "drift" for a in alerts) == 1, "one drift event, not one per point"
