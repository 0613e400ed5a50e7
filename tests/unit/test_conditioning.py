"""Score conditioning: smoothing that does not depend on micro-batches, and a threshold that follows a
new level with one drift event instead of a flood."""
import asyncio
import json

import numpy as np
import orjson

from detectors.pca import PCADetector
from scoring.codec import encode_readings
from scoring.conditioning import Level, Smoother
from scoring.pipeline import Message, Pipeline
from scoring.settings import Settings
from stream.board import Board


def test_smoothing_is_the_same_whatever_the_micro_batches_and_survives_a_restore():
    rng = np.random.default_rng(0)
    score, channel = rng.exponential(size=300), rng.exponential(size=(300, 4))
    whole = Smoother(5, 4).apply(score, channel)
    parts, sm = [], Smoother(5, 4)
    for lo, hi in ((0, 1), (1, 7), (7, 130), (130, 131)):
        parts.append(sm.apply(score[lo:hi], channel[lo:hi]))
    restored = Smoother(5, 4).load_state(json.loads(json.dumps(sm.to_state())))
    parts.append(restored.apply(score[131:], channel[131:]))
    assert np.array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    assert np.array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    assert whole[0][0] == score[0] and np.isclose(whole[0][10], score[6:11].mean())


def test_a_short_fault_keeps_the_level_and_a_long_departure_becomes_it():
    rng = np.random.default_rng(1)
    calib = rng.exponential(size=2000)
    level = Level.calibrated(1000, calib, threshold=8.0)
    normal = rng.exponential(size=1000)
    fault = np.r_[normal[:400], np.full(50, 30.0), normal[450:]]
    scale, drift, _ = level.scales(fault)
    assert scale.max() < 1.2 and not drift.any(), "50 points of fault do not move the median of 1000"
    regime = rng.exponential(size=3000) * 20  # the whole level x20: above the threshold of 8
    scale, drift, _ = level.scales(regime)
    assert drift[-1] and scale[-1] > 10, "half a window later the new level is the level, and it drifts"
    assert np.flatnonzero(drift)[0] < 1000, "within one window"
    back = Level.from_state(json.loads(json.dumps(level.to_state())))
    assert back.median() == level.median() and back.drifting


def test_a_regime_change_raises_one_drift_event_instead_of_a_flood():
    rng = np.random.default_rng(2)
    names = [f"c{i}" for i in range(4)]
    mix = rng.normal(size=(2, 4))
    train = rng.normal(size=(3000, 2)) @ mix + 0.1 * rng.normal(size=(3000, 4))
    det = PCADetector(names).fit(train)
    live = rng.normal(size=(6000, 2)) @ mix + 0.1 * rng.normal(size=(6000, 4))
    live[2000:] += rng.normal(size=4) * 3  # the plant moves to another operating point and stays
    ts = 1.7e9 + np.arange(len(live), dtype=np.float64)
    msgs = [Message(0, i // 50, b"p", encode_readings("p", ts[i:i + 50], live[i:i + 50], names))
            for i in range(0, len(live), 50)]
    pipe = Pipeline(Settings(), {"*": det})
    alerts, scores = [], []
    for i in range(0, len(msgs), 10):
        out = asyncio.run(pipe.process(msgs[i:i + 10]))
        alerts += [orjson.loads(r.value) for r in out.alerts]
        scores += [orjson.loads(r.value) for r in out.scores]
    drift = [a for a in alerts if a["state"] in ("drift", "drift_end")]
    assert [a["state"] for a in drift] == ["drift"] and drift[0]["ts"] >= ts[2000], drift
    assert drift[0]["detail"]["retrain"] and drift[0]["detail"]["level_ratio"] > 1
    alarms = np.array([s > t for m in scores for s, t in zip(m["score"], m["threshold"]) if t is not None])
    assert alarms[:2000].mean() < 0.05 and alarms[4000:].mean() < 0.05, "no flood after the level caught up"


def test_a_drift_event_names_the_channels_that_departed():
    """Drift or slow fault? The operator is told where it shows: here one channel moves for good."""
    rng = np.random.default_rng(4)
    names = ["flow", "pressure", "speed", "level", "temp_in", "temp_out", "current", "power"]
    mix = rng.normal(size=(2, 8))
    train = rng.normal(size=(3000, 2)) @ mix + 0.1 * rng.normal(size=(3000, 8))
    live = rng.normal(size=(5000, 2)) @ mix + 0.1 * rng.normal(size=(5000, 8))
    live[2000:, 2] += 2.0  # speed leaves its relation with the others and stays there
    ts = 1.7e9 + np.arange(len(live), dtype=np.float64)
    msgs = [Message(0, i // 100, b"p", encode_readings("p", ts[i:i + 100], live[i:i + 100], names))
            for i in range(0, len(live), 100)]
    board = Board()
    pipe = Pipeline(Settings(), {"*": PCADetector(names).fit(train)}, board=board)
    alerts = [orjson.loads(r.value) for m in msgs for r in asyncio.run(pipe.process([m])).alerts]
    drift = [a for a in alerts if a["state"] == "drift"]
    assert len(drift) == 1 and drift[0]["channels"][0]["channel"] == "speed", drift[0]["channels"]
    assert board.entities["p"].state.startswith("drifting (retrain asked): speed")  # the dashboard says it too


def test_the_level_is_the_same_whatever_the_micro_batches_and_survives_a_restore():
    rng = np.random.default_rng(3)
    x = rng.exponential(size=4000) * np.r_[np.ones(2000), np.full(2000, 15.0)]
    whole = Level(640, 1.0, 8.0).scales(x)
    level, parts = Level(640, 1.0, 8.0), []
    for lo, hi in ((0, 1), (1, 333), (333, 2500)):
        parts.append(level.scales(x[lo:hi]))
    level = Level.from_state(json.loads(json.dumps(level.to_state())))
    parts.append(level.scales(x[2500:]))
    assert np.array_equal(np.concatenate([p[0] for p in parts]), whole[0])
    assert np.array_equal(np.concatenate([p[1] for p in parts]), whole[1])
    assert np.array_equal(np.concatenate([p[2] for p in parts]), whole[2])
    # evaluated every 640 // 64 = 10 points, from the 100 points before, exactly
    assert len(set(whole[0][3000:3010])) == 1 and whole[0][3010] != whole[0][3000]
    assert whole[0][3000] == max(1.0, float(np.sort(x[3000 - 640:3000])[320]))
    assert whole[1][-1] and not whole[1][1000]


def test_a_calibration_mostly_at_zero_scales_by_its_mean_not_by_hundreds():
    # knn scores training's exact twins 0: a calibration that is mostly zeros has a median of 0, which
    # says nothing of the scale; the test period's typical score a little above that must not
    # multiply the threshold by hundreds and silence the entity
    rng = np.random.default_rng(3)
    calib = np.where(rng.random(2000) < 0.6, 0.0, rng.exponential(2.5, 2000))
    level = Level.calibrated(1000, calib, threshold=8.0)
    assert np.isclose(level.base, calib.mean())
    scale, drift, _ = level.scales(rng.exponential(size=1000) * calib.mean())
    assert scale.max() < 1.5 and not drift.any()
    fault = level.scales(np.full(50, 30.0))[0]
    assert fault.max() < 1.5, "a fault 30 / 1.5 above the calibrated threshold still alarms"
    # a calibration without an atom keeps its median
    spread = rng.exponential(size=2000)
    assert Level.calibrated(1000, spread, threshold=8.0).base == np.median(spread)


def test_a_drift_record_reports_the_median_that_crossed_whatever_the_micro_batches():
    # the drift record's score is the recent median at the point the entity began drifting (above the
    # calibrated threshold, by definition), not the median at the end of whatever micro-batch held it
    rng = np.random.default_rng(5)
    names = [f"c{i}" for i in range(4)]
    mix = rng.normal(size=(2, 4))
    det = PCADetector(names).fit(rng.normal(size=(3000, 2)) @ mix + 0.1 * rng.normal(size=(3000, 4)))
    live = rng.normal(size=(12000, 2)) @ mix + 0.1 * rng.normal(size=(12000, 4))
    live[2000:5000] += rng.normal(size=4) * 3  # a new operating point for a while, then back
    ts = 1.7e9 + np.arange(len(live), dtype=np.float64)
    msgs = [Message(0, i // 100, b"p", encode_readings("p", ts[i:i + 100], live[i:i + 100], names))
            for i in range(0, len(live), 100)]

    def drift_records(per_batch: int) -> list[dict]:
        pipe = Pipeline(Settings(), {"*": det})
        out = [asyncio.run(pipe.process(msgs[i:i + per_batch])) for i in range(0, len(msgs), per_batch)]
        alerts = [orjson.loads(r.value) for o in out for r in o.alerts]
        return [a for a in alerts if a["state"].startswith("drift")]

    one, many = drift_records(len(msgs)), drift_records(3)
    assert [a["state"] for a in one] == ["drift", "drift_end"], one
    assert one == many
    start, end = one
    assert start["score"] > start["threshold"] and start["detail"]["level_ratio"] > 1
    assert end["score"] <= end["threshold"]


def test_a_median_hovering_at_the_threshold_drifts_once_not_every_few_points():
    # scores whose typical value sits right at the calibrated threshold for 4,000 points: the median of
    # the window crosses it back and forth; each crossing was a drift record and a retrain request
    rng = np.random.default_rng(6)
    level = np.r_[np.ones(2000), np.full(4000, 8.0 / np.log(2)), np.ones(4000)]  # median 8: the threshold
    x = rng.exponential(size=len(level)) * level
    drift = Level(640, 1.0, 8.0).scales(x)[1]
    starts = np.flatnonzero(np.diff(np.r_[False, drift].astype(int)) == 1)
    assert 1 <= len(starts) <= 2, starts  # 9 drift periods without the wait
    assert drift[2700] and not drift[-1], "declared while the median is up; over a window after it is back"
    back = np.flatnonzero(drift)[-1]
    assert 6000 + 640 <= back < 6000 + 640 + 640
