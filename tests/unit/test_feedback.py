"""Operators' labels: the message, which labels are in force, and how the trainer retunes to them."""
import numpy as np
import pytest

from detectors import artefacts
from detectors.pca import PCADetector
from producers.simulate import normal_history
from scoring import feedback
from scoring.settings import Settings
from training import feedback as retuning
from training.data import Dataset
from training.evaluate import stream_offline
from training.trainer import build_histories

START = 1_700_000_000.0


def test_labels_round_trip_and_bad_ones_are_refused():
    fb = feedback.make("pump-7", "anomaly", 10, 20, note="bearing")
    assert feedback.parse(fb.to_json()) == fb
    for kwargs in ({"entity": "", "label": "anomaly", "start": 1, "end": 2},
                   {"entity": "e", "label": "meh", "start": 1, "end": 2},
                   {"entity": "e", "label": "anomaly", "start": 3, "end": 2},
                   {"entity": "e", "label": "anomaly", "start": float("nan"), "end": 2},
                   {"entity": "e", "label": "anomaly", "start": "x", "end": 2}):
        with pytest.raises(ValueError):
            feedback.make(**kwargs)
    with pytest.raises(ValueError):
        feedback.make("e", "anomaly", 1, 2, note="x" * (feedback.MAX_NOTE + 1))
    for junk in (b"", b"[]", b"{}", b'{"entity": "e", "label": "anomaly", "start": 2, "end": 1}', b"\xff"):
        assert feedback.parse(junk) is None


def test_a_later_label_of_the_same_alert_replaces_the_earlier_one_and_misses_each_stand():
    a1 = feedback.make("e", "false-alarm", 10, 20, alert_id="e:10", ts=1)
    a2 = feedback.make("e", "anomaly", 10, 20, alert_id="e:10", ts=2)  # the operator changed their mind
    m1 = feedback.make("e", "anomaly", 30, 40)
    m2 = feedback.make("e", "anomaly", 50, 60)
    other = feedback.make("f", "false-alarm", 1, 2, alert_id="f:1")
    got = feedback.latest([a1.to_json(), m1.to_json(), b"junk", a2.to_json(), m2.to_json(), other.to_json()])
    assert got["e"] == [a2, m1, m2] and got["f"] == [other]


def test_choose_scale_honours_the_most_labels_closest_to_one_within_bounds():
    m = retuning.MARGIN
    assert retuning.choose_scale([], [], 0.5, 10) == 1.0
    assert retuning.choose_scale([0.8], [3.0], 0.5, 10) == 1.0  # already honoured: nothing moves
    assert retuning.choose_scale([2.0], [5.0], 0.5, 10) == pytest.approx(2.0 * m)  # silence the false alarm
    assert retuning.choose_scale([], [0.7], 0.5, 10) == pytest.approx(0.7 / m)  # make the miss fire
    # beyond the bounds a label cannot be honoured, and a scale that gains nothing is not taken
    assert retuning.choose_scale([50.0], [], 0.5, 10) == 1.0
    assert retuning.choose_scale([50.0, 4.0], [], 0.5, 10) == pytest.approx(4.0 * m)
    s = retuning.choose_scale([2.0, 3.0], [2.5], 0.5, 10)  # a conflict: two of three at best
    assert sum(retuning.honoured("false-alarm", r, s) for r in (2.0, 3.0)) + retuning.honoured("anomaly", 2.5, s) == 2
    assert retuning.choose_scale([float("nan")], [], 0.5, 10) == 1.0  # unjudged labels change nothing


def test_the_pipeline_serves_the_threshold_times_the_models_scale():
    hist = normal_history("e", 6, 3000, START, 1)
    det = PCADetector(hist.channels).fit(hist.values[:2000])
    live = hist.values[2000:].copy()
    live[300:340, 2] += 4.0  # a bump that alarms at scale 1
    data = Dataset("e", live[:0], live, np.zeros(len(live), np.int8), hist.channels)
    base = stream_offline(det, data, Settings())
    det.threshold_scale = 3.0
    scaled = stream_offline(det, data, Settings())
    ok = np.isfinite(base.threshold)
    assert np.allclose(scaled.threshold[ok], 3.0 * base.threshold[ok])
    assert np.array_equal(scaled.alarm, scaled.score > scaled.threshold)
    assert base.alarm[300:345].any() and scaled.alarm.sum() < base.alarm.sum()
    det.threshold_scale = 1.0
    again = stream_offline(det, data, Settings())
    assert np.array_equal(again.alarm, base.alarm), "the scale does not change what the threshold learns"


def test_the_scale_travels_in_the_artefact(tmp_path):
    hist = normal_history("e", 4, 1500, START, 2)
    det = PCADetector(hist.channels).fit(hist.values)
    det.threshold_scale = 2.5
    assert artefacts.load(artefacts.save(det, tmp_path / "m")).threshold_scale == 2.5
    det.threshold_scale = 1.0
    assert artefacts.load(artefacts.save(det, tmp_path / "n")).threshold_scale == 1.0


def test_retune_silences_a_labelled_benign_bump_and_keeps_a_labelled_anomaly():
    hist = normal_history("e", 6, 6000, START, 4)
    det = PCADetector(hist.channels).fit(hist.values[:3000])
    values, ts = hist.values.copy(), hist.ts
    values[3500:3530, 1] += 3.0  # benign (a valve test), labelled a false alarm
    values[4500:4530, 4] += 12.0  # a fault, labelled an anomaly
    labels = [feedback.make("e", "false-alarm", ts[3500], ts[3529]), feedback.make("e", "anomaly", ts[4500], ts[4529])]
    segs = [retuning.segment(ts, values, fb) for fb in labels]
    ratios = retuning.label_ratios(det, segs, Settings())
    assert ratios[0] > 1 and ratios[1] > ratios[0] * retuning.MARGIN ** 2, ratios
    record = retuning.retune(det, segs, Settings(), (0.5, 10.0))
    assert record["honoured"] == 2 and record["honoured_at_scale_1"] == 1
    assert ratios[0] < det.threshold_scale < ratios[1]
    assert [u["honoured"] for u in record["used"]] == [True, True]


def test_histories_keep_labelled_false_alarms_and_leave_labelled_anomalies_out():
    from scoring.codec import Readings

    ts = START + np.arange(1000.0)
    values = np.random.default_rng(0).normal(size=(1000, 3)).astype(np.float32)
    readings = [Readings("e", ts, values.astype(np.float64), ["a", "b", "c"], 0)]
    incidents = {"e": [(ts[100], ts[109]), (ts[300], ts[309])]}
    labels = {"e": [feedback.make("e", "false-alarm", ts[100], ts[109], alert_id="e:100"),
                    feedback.make("e", "anomaly", ts[500], ts[519]),
                    feedback.make("e", "anomaly", START - 5000, START - 4000)]}  # before the history: unusable
    h = build_histories(readings, incidents, 1e9, labels=labels)["e"]
    assert len(h.ts) == 1000 - 10 - 20 and h.excluded == 30
    assert ts[105] in h.ts and ts[305] not in h.ts and ts[510] not in h.ts
    assert [s.label.label for s in h.labels] == ["false-alarm", "anomaly"] and h.labels[1].points == 20
    assert h.labels_unusable == 0  # labels older than the history are not even considered
