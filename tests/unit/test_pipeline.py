"""The pipeline without Kafka: scoring, dead letters, imputation, checkpoints and replays."""
import asyncio
import collections
import time

import numpy as np
import orjson

from detectors.pca import PCADetector
from producers.simulate import normal_history, simulate_entity
from scoring.codec import SCORE_MESSAGE_VALUES, encode_readings
from scoring.pipeline import META_KEY, Message, Pipeline
from scoring.settings import Settings

START = 1_700_000_000.0


def setup(points=1500, seed=3):
    live = simulate_entity("plant-01", 8, points, START, seed)
    hist = normal_history("plant-01", 8, 3000, START, seed)
    det = PCADetector(hist.channels).fit(hist.values)
    return live, det


def messages(live, batch=1, partition=0, offset=0):
    out = []
    for j in range(0, len(live.ts), batch):
        if batch == 1:
            v = encode_readings(live.entity, live.ts[j], live.values[j], live.channels)
        else:
            v = encode_readings(live.entity, live.ts[j:j + batch], live.values[j:j + batch], live.channels)
        out.append(Message(partition, offset + len(out), live.entity.encode(), v))
    return out


def restore_from(pipe, partition, records):
    """Restore ``pipe`` from checkpoint records as the worker does: the records stand for the state
    topic's log, the pipeline gets an index of offsets and reads entities back on their next reading."""
    log = list(records)
    meta = orjson.loads(dict(log)[META_KEY])
    index = {k: i for i, (k, _) in enumerate(log) if k != META_KEY}

    async def loader(p, offsets):
        return [log[o][1] for o in offsets]

    pipe.loader = loader
    pipe.restore(partition, meta, index)


def run(pipe, msgs, size=97):
    outs = []
    for i in range(0, len(msgs), size):
        outs.append(asyncio.run(pipe.process(msgs[i:i + size])))
    return outs


def collect(outs):
    scores = [orjson.loads(r.value) for o in outs for r in o.scores]
    alerts = [orjson.loads(r.value) for o in outs for r in o.alerts]
    dlq = [orjson.loads(r.value) for o in outs for r in o.dlq]
    return scores, alerts, dlq


def points(scores):
    return [(m["entity"], t, s) for m in scores for t, s in zip(m["ts"], m["score"])]


def test_every_point_scored_once_and_alerts_name_injected_channels():
    live, det = setup()
    pipe = Pipeline(Settings(), {"*": det})
    scores, alerts, dlq = collect(run(pipe, messages(live)))
    pts = points(scores)
    assert [t for _, t, _ in pts] == live.ts.tolist()
    assert not dlq
    opens = [a for a in alerts if a["state"] == "open"]
    assert opens
    hits = 0
    for a in live.anomalies:
        found = [o for o in opens if a.start - 2 <= o["start"] <= a.end + 10]
        hits += bool(found)
    assert hits >= len(live.anomalies) - 1


def test_message_form_and_batching_do_not_change_scores():
    live, det = setup(600)
    a = points(collect(run(Pipeline(Settings(), {"*": det}), messages(live, 1)))[0])
    b = points(collect(run(Pipeline(Settings(), {"*": det}), messages(live, 50), size=3))[0])
    assert [x[1] for x in a] == [x[1] for x in b]
    assert np.allclose([x[2] for x in a], [x[2] for x in b], rtol=1e-5)


def test_checkpoint_restore_then_replay_is_seamless():
    live, det = setup(1200)
    msgs = messages(live)
    whole = collect(run(Pipeline(Settings(), {"*": det}), msgs))
    # crash after 700 messages, with the checkpoint taken at 500
    first = Pipeline(Settings(), {"*": det})
    out1 = run(first, msgs[:500])
    saved = first.checkpoint(0)
    out1 += run(first, msgs[500:700])
    published = collect(out1)
    second = Pipeline(Settings(), {"*": det})
    restore_from(second, 0, saved)
    last_score_ts = max(t for _, t, _ in points(published[0]))
    last_alert_ts = max([a["ts"] for a in published[1]], default=-1)
    second.suppress(0, {live.entity: last_score_ts}, {live.entity: last_alert_ts}, -1)
    out2 = run(second, msgs[300:])  # the consumer resumes before the checkpoint: those are skipped
    resumed = collect(out2)
    combined = points(published[0]) + points(resumed[0])
    assert [t for _, t, _ in combined] == live.ts.tolist()  # once each, none missing
    assert np.allclose([s for *_, s in combined], [s for *_, s in points(whole[0])], rtol=1e-5)
    ids = lambda alerts: [(a["alert_id"], a["state"]) for a in alerts]  # noqa: E731
    assert ids(published[1]) + ids(resumed[1]) == ids(whole[1])


def test_bad_rows_go_to_dlq_and_good_rows_are_kept():
    live, det = setup(300)
    pipe = Pipeline(Settings(), {"*": det})
    msgs = messages(live, 100)
    run(pipe, msgs[:2])
    # a batch whose first rows repeat old timestamps: those rows are refused, the rest scored
    ts = np.concatenate([live.ts[195:200], live.ts[200:300]])
    vals = np.concatenate([live.values[195:200], live.values[200:300]])
    scores, _, dlq = collect(run(pipe, [Message(0, 2, b"plant-01", encode_readings(live.entity, ts, vals,
                                                                                   live.channels))]))
    assert [d["code"] for d in dlq] == ["duplicate_ts"] and dlq[0]["rows"] == [0, 1, 2, 3, 4]
    assert points(scores)[0][1] == live.ts[200] and len(points(scores)) == 100


def test_missing_values_are_imputed_and_counted_and_unknown_entities_cold_start():
    live, det = setup(50)
    pipe = Pipeline(Settings(calibration_points=20, cold_calibration_points=20), {"plant-01": det})
    row = dict(zip(live.channels, live.values[0].tolist()))
    row[live.channels[1]] = None
    del row[live.channels[2]]
    msgs = [Message(0, 0, b"k", orjson.dumps({"entity": "plant-01", "ts": 1.0, "values": row}))]
    rng = np.random.default_rng(0)
    for i in range(100):
        msgs.append(Message(0, i + 1, b"x", orjson.dumps({"entity": "other", "ts": float(i),
                                                          "values": rng.normal(size=3).tolist()})))
    scores, _, dlq = collect(run(pipe, msgs))
    assert not dlq and pipe.metrics["imputed"] == 2
    by_model = collections.Counter(m["model"] for m in scores)
    assert set(by_model) == {"pca@1", "coldstart@2"}
    cold = [m for m in scores if m["entity"] == "other"]
    thr = [t for m in cold for t in m["threshold"]]
    warmup = pipe.entities["other"].streaming.warmup  # 50 rows: the detector's own warm-up
    # no threshold while the detector warms up, then 20 calibration points after it, then alerts
    assert thr[:warmup + 20] == [None] * (warmup + 20) and all(t is not None for t in thr[warmup + 20:])


def test_restore_under_a_new_model_keeps_timestamp_order_and_switches_model():
    live, det = setup(200)
    msgs = messages(live)
    cold = Pipeline(Settings(calibration_points=50))
    run(cold, msgs[:100])
    saved = cold.checkpoint(0)
    served = Pipeline(Settings(), {"*": det})
    restore_from(served, 0, saved)
    scores, _, dlq = collect(run(served, [Message(0, 100, b"k", msgs[50].value)] + msgs[101:]))
    assert [d["code"] for d in dlq] == ["out_of_order"]  # ordering survived the model change
    assert {m["model"] for m in scores} == {"pca@1"}
    assert [t for _, t, _ in points(scores)] == live.ts[101:].tolist()


def test_a_model_trained_on_longer_windows_is_served_windows_of_its_length():
    from detectors.lstm_ae import LSTMAutoencoder

    live = simulate_entity("plant-01", 4, 120, START, 1)
    hist = normal_history("plant-01", 4, 400, START, 1)
    det = LSTMAutoencoder(hist.channels, epochs=1, window=20, stride=10).fit(hist.values, progress=False)
    pipe = Pipeline(Settings(window=32, hop=16, calibration="first", calibration_points=50), {"*": det})
    scores, _, _ = collect(run(pipe, messages(live, 30)))
    assert [t for _, t, _ in points(scores)] == live.ts.tolist()
    assert pipe.entities["plant-01"].window.window == 20


def new_entities(pipe: Pipeline, *names: str) -> list:
    """States for entities of 8 unnamed channels, made as a micro-batch makes them (together)."""
    pipe._new_entities([(type("R", (), {"entity": e, "values": np.zeros((1, 8)), "names": None})(), 0) for e in names])
    return [pipe.entities[e] for e in names]


def test_threshold_calibrates_on_training_scores_fused_by_the_served_rule():
    _, det = setup(10)
    det.train_divergence = np.full(len(det.train_reconstruction), 3.0, np.float32)
    for rule, expected in (("sum", det.train_reconstruction + 3.0), ("product", det.train_reconstruction * 3.0)):
        pipe = Pipeline(Settings(fusion=rule, threshold="percentile"), {"*": det})
        ent = new_entities(pipe, "plant-01")[0]
        expected = ent.smoother.smooth(expected)  # served scores are smoothed: so are the calibration scores
        window = expected[-ent.threshold.window:]
        assert np.isclose(ent.threshold.threshold, np.quantile(window, ent.threshold.q), rtol=1e-4)


def test_a_large_micro_batch_publishes_its_scores_in_bounded_messages():
    live, det = setup(6000)
    pipe = Pipeline(Settings(score_channels=True), {"*": det})
    scores, _, _ = collect(run(pipe, messages(live, batch=500), size=1000))  # one micro-batch, 6000 points
    assert len(scores) > 1 and all(len(m["ts"]) * (3 + 8) <= SCORE_MESSAGE_VALUES for m in scores)
    assert [t for m in scores for t in m["ts"]] == live.ts.tolist()
    assert all(len(row) == 8 for m in scores for row in m["channels"])


def test_swap_between_micro_batches_scores_every_point_once_and_recalibrates():
    live, det = setup(1200)
    hist = normal_history("plant-01", 8, 3000, START, seed=9)
    new = PCADetector(hist.channels).fit(hist.values * 1.5)
    new.info.version = "2"
    msgs = messages(live, batch=50)
    pipe = Pipeline(Settings(), {"plant-01": det})
    before, _, _ = collect(run(pipe, msgs[:12]))
    pipe.swap("plant-01", new)
    after, _, _ = collect(run(pipe, msgs[12:]))
    assert {m["model"] for m in before} == {"pca@1"} and {m["model"] for m in after} == {"pca@2"}
    assert [t for m in before + after for t in m["ts"]] == live.ts.tolist(), "every point once, in order"
    fresh, _, _ = collect(run(Pipeline(Settings(), {"plant-01": new}), msgs[:1]))
    assert after[0]["threshold"][0] == fresh[0]["threshold"][0], "calibrated on the new model's training scores"
    state = dict(pipe.checkpoint(0))[b"plant-01"]
    assert orjson.loads(state)["model"] == "pca@2", "a restart restores the swapped-in model's state"


def test_the_widest_entity_the_codec_admits_checkpoints_under_the_output_limit():
    from scoring.codec import MAX_CHANNELS, MAX_NAME, OUTPUT_LIMIT

    names = [f"{i:04d}".ljust(MAX_NAME, "x") for i in range(MAX_CHANNELS)]
    rng = np.random.default_rng(0)
    values = rng.normal(size=(1300, MAX_CHANNELS))
    values[1210:1220] += 50  # an incident open at the checkpoint
    pipe = Pipeline(Settings(threshold="percentile"))
    msgs = [Message(0, j // 20, b"w", encode_readings("wide", START + np.arange(j, j + 20), values[j:j + 20], names))
            for j in range(0, 1210, 20)]
    run(pipe, msgs, size=len(msgs))
    ent = pipe.entities["wide"]
    assert ent.threshold is not None and ent.incidents.open is not None and len(ent.threshold.to_state()["values"]) > 200
    (key, value), _meta = pipe.checkpoint(0)
    assert len(value) < OUTPUT_LIMIT and pipe.metrics["state_without_history"] == 0
    print(f"\nwidest checkpoint: {len(value):,} bytes")


def test_every_output_list_of_a_micro_batch_has_its_topic():
    from dataclasses import fields

    from scoring.pipeline import Outputs
    from scoring.settings import BATCH_OUTPUTS, Topics

    assert tuple(f.name for f in fields(Outputs)) == BATCH_OUTPUTS
    assert all(getattr(Topics(), kind) in Topics().outputs() for kind in BATCH_OUTPUTS)


def test_the_hand_over_from_cold_start_to_a_first_model_keeps_every_point_and_the_open_incident():
    live, det = setup(1200)
    values = live.values.copy()
    values[1000:1060, 0] += 40 * values[:900, 0].std()  # a fault that is still going on at the swap
    msgs = [Message(0, j // 20, b"plant-01", encode_readings(live.entity, live.ts[j:j + 20], values[j:j + 20],
                                                             live.channels)) for j in range(0, 1200, 20)]
    pipe = Pipeline(Settings())
    before = collect(run(pipe, msgs[:51], size=51))  # up to point 1020: the incident is open
    assert pipe.entities["plant-01"].incidents.open is not None
    pipe.swap("plant-01", det)
    after = collect(run(pipe, msgs[51:], size=9))
    ts = [t for m in before[0] + after[0] for t in m["ts"]]
    assert ts == live.ts.tolist(), "every point once, in order, across the hand-over"
    assert {m["model"] for m in before[0]} == {"coldstart@2"} and {m["model"] for m in after[0]} == {"pca@1"}
    opened = [a for a in before[1] + after[1] if a["state"] == "open" and live.ts[990] <= a["start"] <= live.ts[1060]]
    assert len(opened) == 1, "the fault is one incident, opened once"
    closed = [a for a in after[1] if a["state"] == "close" and a["alert_id"] == opened[0]["alert_id"]]
    assert closed and closed[0]["end"] >= live.ts[1040], "the first model carries it on and closes it"


def test_entities_of_one_model_start_from_its_calibration_computed_once(monkeypatch):
    """The calibration a model's training scores give is computed once (``prepare``) and copied into each
    entity it serves: the same threshold, peaks, floor and level as an entity that calibrates itself,
    and the copies then update apart."""
    from scoring import thresholds
    from scoring.pipeline import EntityState

    live, det = setup(400)
    for kind in ("spot", "percentile"):
        settings = Settings(threshold=kind)
        pipe = Pipeline(settings, {"*": det})
        pipe.prepare()
        fits = []
        monkeypatch.setattr(thresholds, "fit_gpd", lambda *a: fits.append(1) or (0.0, 1.0))
        a, b = new_entities(pipe, "a", "b")
        monkeypatch.undo()
        assert not fits, "an entity's first reading fitted a tail"
        alone = EntityState("c", 0, list(det.channels), det, settings, pipe._cohort(list(det.channels), det))
        for ent in (a, b):
            assert ent.threshold.to_state() == alone.threshold.to_state()
            assert ent.floor == alone.floor and ent.level.to_state() == alone.level.to_state()
        if kind == "spot":
            spot = a.cohort.spot
            for x in (1e3, 2e3):  # a peak each: a's tail moves, b's does not
                spot.observe(a.slot, x)
            assert a.threshold.to_state() != b.threshold.to_state() == alone.threshold.to_state()


def test_a_checkpoint_written_in_slices_is_the_instant_it_began_while_scoring_goes_on():
    """Records written a slice at a time, with micro-batches and a model swap between the slices, are
    byte for byte those of the instant the checkpoint began; what changed meanwhile is dirty again."""
    fleet = [simulate_entity(f"e{i:02d}", 8, 120, START, seed=i) for i in range(12)]
    hist = normal_history("e00", 8, 2000, START, 1)
    det = PCADetector(hist.channels).fit(hist.values)
    other = PCADetector(hist.channels, max_components=2).fit(hist.values)

    def batch(lo, hi, entities):
        out = []
        for j in range(lo, hi):
            for s in entities:
                out.append(Message(0, len(out) + 10_000 * j, s.entity.encode(),
                                   encode_readings(s.entity, s.ts[j], s.values[j], s.channels)))
        return out

    pipe = Pipeline(Settings(), {"*": det})
    run(pipe, batch(0, 60, fleet), size=50)
    at_instant = {e.encode(): pipe._state_record(pipe.entities[e]) for e in sorted(pipe.partitions[0].dirty)}
    meta = {"input_offset": pipe.partitions[0].input_offset, "out": {}}
    pipe.begin_checkpoint(0)
    assert pipe.checkpoint_step(0, 0.0) is None, "one entity a slice here: more to write"
    run(pipe, batch(60, 62, fleet[3:7]))  # changes entities not yet written: they are written first
    pipe.swap("e09", other)
    written = None
    while written is None:
        run(pipe, batch(62, 63, fleet[8:]))
        written = pipe.checkpoint_step(0, 0.0)
    assert dict(written[:-1]) == at_instant and [k for k, _ in written[:-1]] == sorted(at_instant)
    assert written[-1] == (META_KEY, orjson.dumps(meta))
    assert pipe.partitions[0].dirty == {s.entity for s in fleet[3:7] + fleet[8:]}
    assert not pipe.snapshots


def test_an_alert_says_when_its_reading_reached_kafka_where_the_timestamp_is_known():
    """Readings written an hour ago and scored now (a backlog): each alert's ``sent`` is the Kafka
    timestamp of the message that carried the point that raised it (its age: the alert record's own
    timestamp minus it); without Kafka timestamps there is none, and the alerts are otherwise the same."""
    live, det = setup(900)
    sent = time.time() - 3600.0
    msgs = [m._replace(timestamp=sent + 0.5 * i) for i, m in enumerate(messages(live, batch=10))]
    alerts = collect(run(Pipeline(Settings(), {"*": det}), msgs, size=7))[1]
    assert alerts
    for a in alerts:
        carried = int(np.searchsorted(live.ts, a["ts"])) // 10  # the message of the alert's point
        assert a["sent"] == sent + 0.5 * carried, a
    plain = collect(run(Pipeline(Settings(), {"*": det}), messages(live, batch=10), size=7))[1]
    assert [{k: v for k, v in a.items() if k != "sent"} for a in alerts] == plain


def test_slots_allocated_together_are_those_allocated_one_at_a_time_in_the_same_arrays():
    """A micro-batch's new entities take their slots in one step (``Cohort.alloc_many``): the slots, and
    the capacity the cohort's arrays grow to (its memory), are those of allocating them one by one."""
    from scoring.pipeline import Cohort

    one, many = Cohort(8, 1, Settings()), Cohort(8, 1, Settings())
    for n in (3, 1, 700, 5000, 20, 12_000):
        alone = [one.alloc() for _ in range(n)]
        assert many.alloc_many(n).tolist() == alone
        assert len(many.last_ts) == len(one.last_ts) and many.windows.last.shape == one.windows.last.shape
    for s in (5, 900, 17):
        one.release(s)
        many.release(s)
    assert many.alloc_many(5).tolist() == [one.alloc() for _ in range(5)]
