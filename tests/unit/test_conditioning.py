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


def seconds(n: int, step: float = 1.0, start: float = 1.7e9) -> np.ndarray:
    """Timestamps of ``n`` readings ``step`` seconds apart."""
    return start + step * np.arange(n, dtype=np.float64)


def test_a_short_fault_keeps_the_level_and_a_long_departure_becomes_it():
    rng = np.random.default_rng(1)
    calib = rng.exponential(size=2000)
    level = Level.calibrated(1000.0, calib, threshold=8.0)  # a window of 1000 s: readings each second
    normal = rng.exponential(size=1000)
    fault = np.r_[normal[:400], np.full(50, 30.0), normal[450:]]
    scale, drift, _ = level.scales(seconds(1000), fault)
    assert scale.max() < 1.2 and not drift.any(), "50 s of fault do not move the median of 1000 s"
    regime = rng.exponential(size=3000) * 20  # the whole level x20: above the threshold of 8
    scale, drift, _ = level.scales(seconds(3000, start=1.7e9 + 1000), regime)
    assert drift[-1] and scale[-1] > 10, "half a window later the new level is the level, and it drifts"
    first = np.flatnonzero(drift)[0]
    assert 500 <= first < 600, "once the departure has filled half the window's time, not before"
    back = Level.from_state(json.loads(json.dumps(level.to_state())))
    assert back.level(back.block) == level.level(level.block) and back.drifting


def test_a_departure_becomes_the_level_after_the_same_time_whatever_the_rate_and_however_new_the_entity():
    # the window is time on the entity's clock: a fault of half an hour is half an hour at one reading a
    # second or ten; and an entity seen for minutes has not seen a "new normal" in a fault of minutes
    rng = np.random.default_rng(7)
    for step in (1.0, 0.1):
        n = int(7200 / step)  # two hours
        x = rng.exponential(size=n) * 20  # departed from its first reading on
        level = Level(3600.0, 1.0, 8.0)  # an hour's window
        drift = level.scales(seconds(n, step), x).drift
        first = np.flatnonzero(drift)[0] * step
        span = 3600 / 64  # blocks are aligned on the clock: the first one is partly before the first reading
        assert 1800 - span <= first < 1800 + 2 * span, (step, first)
        assert len(level.kept) <= Level.KEEP and len(level.medians) <= Level.BLOCKS  # a summary, not the scores


def test_the_level_keeps_a_summary_not_the_scores():
    # a day of one-second readings is 86,400 scores; the level's state stays small whatever the rate
    rng = np.random.default_rng(8)
    level = Level(2 * 86400.0, 1.0, 8.0)
    for day in range(2):
        level.scales(seconds(86400, start=1.7e9 + 86400 * day), rng.exponential(size=86400))
    state = json.dumps(level.to_state())
    assert len(state) < 4000, len(state)


def test_a_checkpoint_of_the_level_before_its_window_was_time_starts_it_afresh():
    old = {"window": 1000, "base": 1.0, "base_threshold": 8.0, "recent": "", "drifting": True, "seen": 5}
    assert Level.from_state(old) is None


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
    pipe = Pipeline(Settings(level_window=2000.0), {"*": det})  # 2000 s: a new mode after 1000 s
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
    pipe = Pipeline(Settings(level_window=2000.0), {"*": PCADetector(names).fit(train)}, board=board)
    alerts = [orjson.loads(r.value) for m in msgs for r in asyncio.run(pipe.process([m])).alerts]
    drift = [a for a in alerts if a["state"] == "drift"]
    assert len(drift) == 1 and drift[0]["channels"][0]["channel"] == "speed", drift[0]["channels"]
    assert board.entities["p"].state.startswith("drifting (retrain asked): speed")  # the dashboard says it too


def test_the_level_is_the_same_whatever_the_micro_batches_and_survives_a_restore():
    rng = np.random.default_rng(3)
    x = rng.exponential(size=4000) * np.r_[np.ones(2000), np.full(2000, 15.0)]
    ts = seconds(4000)
    whole = Level(640.0, 1.0, 8.0).scales(ts, x)
    level, parts = Level(640.0, 1.0, 8.0), []
    for lo, hi in ((0, 1), (1, 333), (333, 2500)):
        parts.append(level.scales(ts[lo:hi], x[lo:hi]))
    level = Level.from_state(json.loads(json.dumps(level.to_state())))
    parts.append(level.scales(ts[2500:], x[2500:]))
    for i in range(3):
        assert np.array_equal(np.concatenate([p[i] for p in parts]), whole[i])
    # evaluated as each block of 10 s begins, from the 64 blocks before it, exactly
    for at in (2100, 3000, 3510):
        assert len(set(whole.scale[at:at + 10])) == 1
        blocks = [np.sort(x[b * 10:(b + 1) * 10])[5] for b in range(at // 10 - 64, at // 10)]
        assert whole.scale[at] == max(1.0, float(np.sort(blocks)[32]))
    assert whole.drift[-1] and not whole.drift[1000]


def test_a_calibration_mostly_at_zero_scales_by_its_mean_not_by_hundreds():
    # knn scores training's exact twins 0: a calibration that is mostly zeros has a median of 0, which
    # says nothing of the scale; the test period's typical score a little above that must not
    # multiply the threshold by hundreds and silence the entity
    rng = np.random.default_rng(3)
    calib = np.where(rng.random(2000) < 0.6, 0.0, rng.exponential(2.5, 2000))
    level = Level.calibrated(1000.0, calib, threshold=8.0)
    assert np.isclose(level.base, calib.mean())
    scale, drift, _ = level.scales(seconds(1000), rng.exponential(size=1000) * calib.mean())
    assert scale.max() < 1.5 and not drift.any()
    fault = level.scales(seconds(50, start=1.7e9 + 1000), np.full(50, 30.0)).scale
    assert fault.max() < 1.5, "a fault 30 / 1.5 above the calibrated threshold still alarms"
    # a calibration without an atom keeps its median
    spread = rng.exponential(size=2000)
    assert Level.calibrated(1000.0, spread, threshold=8.0).base == np.median(spread)


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

    def alerts_of(per_batch: int) -> list[dict]:
        pipe = Pipeline(Settings(level_window=2000.0), {"*": det})
        out = [asyncio.run(pipe.process(msgs[i:i + per_batch])) for i in range(0, len(msgs), per_batch)]
        return [orjson.loads(r.value) for o in out for r in o.alerts]

    alerts, many = alerts_of(len(msgs)), alerts_of(3)
    assert alerts == many
    one = [a for a in alerts if a["state"].startswith("drift")]
    assert [a["state"] for a in one] == ["drift", "drift_end"], one
    start, end = one
    assert start["score"] > start["threshold"] and start["detail"]["level_ratio"] > 1
    assert end["score"] <= end["threshold"]
    # the departure was one incident, held open until the drift record absorbed it
    during = {a["alert_id"] for a in alerts if a["state"] == "open" and ts[2000] <= a["start"] < start["ts"]}
    assert during == {start["detail"]["absorbs"]}, (during, start["detail"])
    closed = [a for a in alerts if a["alert_id"] == start["detail"]["absorbs"] and a["state"] == "close"]
    assert closed[0]["detail"]["absorbed_by"] == start["alert_id"] and closed[0]["ts"] == start["ts"]


def test_a_median_hovering_at_the_threshold_drifts_once_not_every_few_points():
    # scores whose typical value sits right at the calibrated threshold for 4,000 points: the median of
    # the window crosses it back and forth; each crossing was a drift record and a retrain request
    rng = np.random.default_rng(6)
    level = np.r_[np.ones(2000), np.full(4000, 8.0 / np.log(2)), np.ones(4000)]  # median 8: the threshold
    x = rng.exponential(size=len(level)) * level
    drift = Level(640.0, 1.0, 8.0).scales(seconds(len(x)), x).drift
    starts = np.flatnonzero(np.diff(np.r_[False, drift].astype(int)) == 1)
    assert 1 <= len(starts) <= 2, starts  # 9 drift periods without the wait
    assert drift[2700] and not drift[-1], "declared while the median is up; over a window after it is back"
    back = np.flatnonzero(drift)[-1]
    assert 6000 + 640 <= back < 6000 + 640 + 640 + 10


def test_sustained_faults_of_a_pump_read_each_second_open_one_incident_each_and_no_drift():
    # issue 31's pump testbed, in small: faults of 10 to 25 minutes on a plant read once a second. With
    # the level guard in the entity's time (two days), each is an incident and none becomes the level;
    # with a window of 1,000 readings (the old default's order), they turn into drift records
    from ..helpers import correlated

    names = [f"c{i}" for i in range(6)]
    det = PCADetector(names).fit(correlated(4000))
    live = correlated(7 * 1800, seed=11)
    faults = [(1800 * k + 600, 1800 * k + 600 + 60 * (10 + 3 * k)) for k in range(6)]
    for k, (a, b) in enumerate(faults):
        live[a:b, k] += 6.0  # one channel leaves its relation with the others and stays there
    ts = seconds(len(live))
    msgs = [Message(0, i // 60, b"pump", encode_readings("pump", ts[i:i + 60], live[i:i + 60], names))
            for i in range(0, len(live), 60)]

    def alerts_of(settings):
        pipe = Pipeline(settings, {"*": det})
        return [orjson.loads(r.value) for i in range(0, len(msgs), 20)
                for r in asyncio.run(pipe.process(msgs[i:i + 20])).alerts]

    alerts = alerts_of(Settings())
    assert not [a for a in alerts if a["state"].startswith("drift")]
    opened = [a for a in alerts if a["state"] == "open"]
    hits = [[a for a in opened if ts[a0] - 10 <= a["start"] <= ts[b0 - 1]] for a0, b0 in faults]
    assert all(len(h) == 1 for h in hits), [len(h) for h in hits]  # one incident per fault
    last = {a["alert_id"]: a for a in alerts if a["state"] != "open"}
    assert all(last[h[0]["alert_id"]]["end"] >= ts[b0 - 60] for h, (_, b0) in zip(hits, faults)), "it lasts as long"
    mine = {h[0]["alert_id"] for h in hits}
    others = [last[a["alert_id"]] for a in opened if a["alert_id"] not in mine]
    assert all(a["end"] - a["start"] < 20 for a in others), others  # the rest: blips of the normal noise
    short = alerts_of(Settings(level_window=1000.0))
    assert [a for a in short if a["state"] == "drift"], "a window of 1,000 s takes the faults for a new level"


def test_a_level_keeps_block_numbers_past_32_bits_through_its_state():
    """The ring keeps the low 32 bits of each block's number (memory); a clock in microseconds makes
    block numbers far beyond that, and the state still names every block exactly."""
    from scoring.conditioning import Levels
    from scoring.segments import Segments

    lv = Levels(1)
    lv.reset(0, 640.0, 1.0, 5.0, on=True)
    ts = 1.7e15 + np.arange(0, 1920, 3.0)  # 1.7e15 / 10 s blocks: numbers above 2**47
    lv.scales(Segments.one(len(ts), 0), ts, np.abs(np.random.default_rng(0).normal(size=len(ts))))
    state = lv.to_state(0)
    blocks = [b for b, _ in state["medians"]]
    assert blocks == list(range(state["block"] - 64, state["block"])) and blocks[0] > 2**47
    again = Levels(1)
    again.load_state(0, state)
    assert again.to_state(0) == state and again.level(0, state["block"]) == lv.level(0, state["block"])


def test_many_levels_begin_a_block_in_one_step_exactly_as_each_on_its_own():
    """``Levels._begin_many`` (a fleet's first readings, an hour's turn) is ``_begin`` for each slot:
    the same closed medians, levels, scales and drift states, from random states of every kind (no
    block yet, empty or full kept sets, drifting or back under, NaN medians)."""
    import copy

    from scoring.conditioning import NONE, Levels

    rng = np.random.default_rng(7)
    n = 300
    levels = Levels(n)
    levels.on[:] = True
    levels.window[:] = rng.choice([100.0, 640.0, 3600.0], n)
    levels.base[:] = rng.uniform(0.5, 2.0, n)
    levels.base_threshold[:] = levels.base * rng.uniform(1.5, 4.0, n)
    levels.block[:] = np.where(rng.random(n) < 0.2, NONE, rng.integers(0, 5000, n))
    levels.kept_n[:] = rng.integers(0, Levels.KEEP + 1, n)
    levels.kept[:] = rng.exponential(size=(n, Levels.KEEP)) * rng.uniform(0.5, 8.0, (n, 1))
    levels.medians[:] = np.where(rng.random((n, Levels.BLOCKS)) < 0.3, np.nan,
                                 rng.exponential(size=(n, Levels.BLOCKS)) * 3)
    levels.median_block[:] = rng.integers(0, 5100, (n, Levels.BLOCKS)).astype(np.int32)
    levels.drifting[:] = rng.random(n) < 0.4
    levels.back_since[:] = np.where(levels.drifting & (rng.random(n) < 0.5), rng.uniform(0, 2000, n), np.nan)
    slots = rng.permutation(n)[:200]
    blocks = np.where(levels.block[slots] == NONE, 4000, levels.block[slots] + rng.integers(1, 80, 200))
    t = rng.uniform(1000, 5000, 200)
    edge = slots[:40]  # back under for exactly a window by now: no longer drifting
    levels.drifting[edge], levels.back_since[edge] = True, t[:40] - levels.window[edge]
    one, many = levels, copy.deepcopy(levels)
    for s, b, at in zip(slots.tolist(), blocks.tolist(), t.tolist()):
        one._begin(s, b, at)
    many._begin_many(slots, blocks, t)
    for name, value in vars(one).items():
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, getattr(many, name), equal_nan=value.dtype.kind == "f"), name
