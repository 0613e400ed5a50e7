"""The evaluation harness: streams rebuilt from worker messages, reports, and the quality benchmark."""
import numpy as np
import orjson
import pytest

from cli.main import main
from detectors.pca import PCADetector
from scoring.settings import Settings
from training import quality
from training.data import Dataset
from training.evaluate import START, Stream, alarm_cells, collect, report, stream_offline

from ..helpers import correlated


def small_dataset(n_test=600):
    test, label, interp = correlated(n_test, seed=4), np.zeros(n_test, np.int8), []
    for i, start in enumerate(range(100, n_test - 50, 150)):
        test[start:start + 10, i % 6] += 3.0
        label[start:start + 10] = 1
        interp.append((start, start + 10, i % 6))
    return Dataset("small", correlated(2000), test, label, [f"c{i}" for i in range(6)], np.array(interp))


def test_collect_rebuilds_points_from_score_messages_and_refuses_gaps_and_repeats():
    msgs = [{"entity": "eval", "ts": [START + 0, START + 1], "score": [1.0, 5.0], "threshold": [None, 2.0],
             "model": "pca@1", "channels": [[1, 0], [0, 5]]},
            {"entity": "other", "ts": [START + 2], "score": [9.0], "threshold": [1.0], "model": "x@1"},
            {"entity": "eval", "ts": [START + 2], "score": [0.5], "threshold": [2.0], "model": "pca@1",
             "channels": [[0.2, 0.3]]}]
    alerts = [{"entity": "eval", "alert_id": "a", "state": "open", "start": START + 1, "end": START + 1},
              {"entity": "eval", "alert_id": "a", "state": "closed", "start": START + 1, "end": START + 2}]
    s = collect(msgs, alerts, 3, interval=1.0)  # readings one second apart
    assert s.score.tolist() == [1.0, 5.0, 0.5] and np.isnan(s.threshold[0])
    assert s.alarm.tolist() == [False, True, False]  # no alarm while the threshold calibrates
    assert s.channel.shape == (3, 2) and s.model == "pca@1"
    assert [(a["start"], a["end"], a["state"]) for a in s.incidents] == [(1, 2, "closed")]
    assert s.incident_mask().tolist() == [False, True, True]
    # an incident still open at the end was last reported by an update: it runs to the last alarm
    still_open = Stream(np.array([0, 5, 0, 5, 5, 0.]), np.full(6, 2.0), None,
                        [{"start": 1, "end": 1, "state": "update"}], "m@1")
    assert still_open.incident_mask().tolist() == [False, True, True, True, True, False]
    with pytest.raises(ValueError, match="not scored"):
        collect(msgs[:1], [], 3, interval=1.0)
    with pytest.raises(ValueError, match="twice"):
        collect(msgs + msgs[:1], [], 3, interval=1.0)
    # a minute apart (the default where a dataset states none): the same points
    minute = [{**m, "ts": [START + 60 * (t - START) for t in m["ts"]]} for m in msgs]
    assert collect(minute, [], 3).score.tolist() == [1.0, 5.0, 0.5]


def test_alarm_cells_blame_the_top_k_channels_at_alarm_points():
    channel = np.array([[3, 2, 1], [1, 2, 3], [9, 9, 9]], float)
    cells = alarm_cells(np.array([True, True, False]), channel, 2)
    assert cells.astype(int).tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 0]]


def test_report_puts_honest_metrics_first_and_labels_the_inflated_ones():
    data = small_dataset(400)  # two events: points 100-109 on channel 0, 250-259 on channel 1
    label = data.label.astype(bool)
    score = np.where(label, 5.0, 1.0)
    score[label.nonzero()[0][::2]] = 1.0  # half of every event below the threshold
    channel = np.tile(np.arange(6) / 10.0, (400, 1))
    channel[label, 0] = 10.0  # always blames channel 0 first, then 5 and 4
    s = Stream(score, np.full(400, 2.0), channel, [], "m@1")
    r = report(s, data)
    assert r["point"]["precision"] == 1.0 and r["point"]["recall"] == 0.5
    assert r["point_adjusted_f1"]["f1"] == 1.0  # the inflation: every event counted whole
    assert r["oracle_best_f1"]["oracle"] is True
    assert 0.5 < r["auc_pr"] <= 1.0 and 0 < r["vus_pr"] <= 1.0
    loc = r["localisation"]
    assert loc["hit@100"] == pytest.approx(1 / 2)  # right at the 10 steps of event 1, wrong at event 2's
    # 20 labelled cells; 10 alarm points blame 3 cells each; only event 1's 5 alarms hit a labelled one
    assert loc["cell"]["recall"] == pytest.approx(5 / 20) and loc["cell"]["precision"] == pytest.approx(5 / 30)


def test_offline_stream_scores_every_test_point_with_a_calibrated_threshold():
    data = small_dataset()
    det = PCADetector(data.channels).fit(data.train)
    s = stream_offline(det, data, Settings(score_channels=True))
    assert s.score.shape == (600,) and np.isfinite(s.score).all() and np.isfinite(s.threshold).all()
    assert s.channel.shape == (600, 6)
    r = report(s, data)
    assert r["point"]["recall"] > 0.8 and r["auc_pr"] > 0.8 and r["localisation"]["hit@100"] > 0.8
    assert len(s.incidents) >= 3


def test_quality_benchmark_resumes_and_renders_every_model_and_dataset(tmp_path, monkeypatch, capsys):
    paths = {}
    for name, seed in (("one", 0), ("two", 1)):
        d = small_dataset()
        paths[name] = tmp_path / f"{name}.npz"
        extra = {"inputs": np.array([5])} if name == "two" else {}  # "two" declares channel c5 an input
        np.savez(paths[name], train=d.train, test=d.test, label=d.label, interpretation=d.interpretation, **extra)
    results = tmp_path / "r.jsonl"
    quality.run(["pca", "iforest"], paths, results, quick=True, progress=False)
    rows = [orjson.loads(x) for x in results.read_bytes().splitlines()]
    # pca and iforest have no divergence: every variant but fusion=product, on both datasets; and PCA
    # with the previous defaults and without T^2, the baselines, once per dataset
    assert len(rows) == 2 * 2 * (len(quality.VARIANTS) - 1) + 2 * len(quality.BASELINES)
    assert sum(r["model"] == quality.PREVIOUS for r in rows) == 2
    assert sum(r["model"] == quality.SPE_ONLY for r in rows) == 2
    # the inputs a dataset declares are given to the models that can leave them out, and to the
    # baselines that stand for today's PCA; iforest cannot, and "inputs judged too" must not
    judged = {(r["model"], r["dataset"]): r["inputs"] for r in rows if r["variant"] == "default"}
    assert judged[("pca", "two")] == 1 and judged[(quality.SPE_ONLY, "two")] == 1
    assert judged[("iforest", "two")] == 0 and judged[(quality.ALL_CHANNELS, "two")] == 0
    assert judged[("pca", "one")] == 0
    quality.run(["pca", "iforest"], paths, results, quick=True, progress=False)
    assert len(results.read_bytes().splitlines()) == len(rows), "a second run resumes: nothing redone"
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\nhand-written throughput section\n")
    quality.write_markdown(results, doc, "vigil bench quality --quick")
    quality.write_markdown(results, doc, "vigil bench quality --quick")
    text = doc.read_text()
    assert text.count(quality.BEGIN) == 1 and "hand-written throughput section" in text
    assert "| pca | " in text and "| iforest | " in text and "| one | two | mean |" in text.replace("model | ", "")
    # the floor a point-wise F1 is read against: every point in alarm, F1 = 2p / (1 + p)
    p = np.mean([r["anomalous_points"] / r["points"] for r in rows if r["dataset"] == "one"])
    assert f"| (alarm on every point: no model) | {2 * p / (1 + p):.3f} |" in text
    # a results file of one's own is printed, not written over the published tables
    monkeypatch.chdir(tmp_path)
    (tmp_path / "docs").mkdir()
    assert main(["bench", "quality", "--no-run", "--results", str(results)]) == 0
    assert "| pca | " in capsys.readouterr().out and not (tmp_path / "docs" / "benchmarks.md").exists()


def test_bench_quality_measures_the_preset_seeds_and_settings_asked_for(tmp_path, monkeypatch, capsys):
    """A GPU run of the papers' presets: its rows say which preset made them, only the chosen settings
    and seeds run, and the rendered protocol names that preset rather than ``small``."""
    d = small_dataset()
    (tmp_path / "smd").mkdir()
    np.savez(tmp_path / "smd" / "machine-1-6.npz", train=d.train, test=d.test, label=d.label)
    monkeypatch.setattr(quality, "QUICK_POINTS", 300)
    results = tmp_path / "paper.jsonl"
    args = ["bench", "quality", "--quick", "--models", "genias", "--data-root", str(tmp_path), "--results",
            str(results), "--preset", "paper", "--seeds", "1", "--variants", "default"]
    assert main(args) == 0
    rows = [orjson.loads(x) for x in results.read_bytes().splitlines()]
    assert [(r["model"], r["variant"], r["seed"], r["preset"]) for r in rows] == [("genias", "default", 1, "paper")]
    assert "`paper` preset, seeds 1 " in capsys.readouterr().out
    assert main(args[:-1] + ["no-such-setting"]) == 2
    assert "no variant no-such-setting" in capsys.readouterr().err
    at = args.index("--results")
    assert main(args[:at] + args[at + 2:]) == 2, "a paper run resuming from the small preset's published rows"
    assert "needs a --results file of its own" in capsys.readouterr().err


def test_evaluation_cannot_read_test_labels_before_the_scores_are_final(tmp_path, monkeypatch):
    import pytest

    import training.evaluate as evaluate
    import training.selection as selection
    from cli.main import main
    from training.data import LabelsSealed, seal

    data = small_dataset()
    sealed = seal(data)
    with pytest.raises(LabelsSealed):
        sealed.label
    with pytest.raises(LabelsSealed):
        sealed.interpretation
    det = selection.train_or_load("pca", sealed)  # training and scoring run without them
    stream = evaluate.stream_offline(det, sealed, Settings(score_channels=True))
    assert evaluate.report(stream, sealed)["point"]["f1"] > 0  # report() unseals, after scoring

    path = tmp_path / "small.npz"
    np.savez(path, train=data.train, test=data.test, label=data.label, interpretation=data.interpretation)
    seen = []
    original = selection.train_or_load

    def spy(model, d, *a, **kw):
        with pytest.raises(LabelsSealed):
            d.label  # what vigil eval hands to training and scoring is sealed
        seen.append(d.name)
        return original(model, d, *a, **kw)
    monkeypatch.setattr(selection, "train_or_load", spy)
    assert main(["eval", "--model", "pca", "--data", str(path), "--json"]) == 0
    assert seen == ["small"]


def test_report_text_says_how_many_drift_events_the_entity_raised(capsys):
    from training.report import print_report

    data = small_dataset(400)
    drift = [{"state": "drift", "ts": 120}, {"state": "drift_end", "ts": 300}]
    s = Stream(np.ones(400), np.full(400, 2.0), None, [], "m@1", drift=drift)
    r = report(s, data)
    assert r["drift_events"] == 1
    print_report({**r, "dataset": "d"})
    assert "(0 incidents, 1 drift event)" in capsys.readouterr().out


def test_report_says_how_much_the_drift_records_covered_beside_the_point_alarms(capsys):
    # a fault the level absorbed: its first points alarm, the rest lies in a drift period that the point-wise
    # F1 does not count; the report says how much of it the drift record covered, and what counting it gives
    from training.report import print_report

    data = small_dataset(400)  # events at 100-109 and 250-259
    score = np.ones(400)
    score[100:103] = 5.0  # the first alarms of the first event
    drift = [{"state": "drift", "ts": 103}, {"state": "drift_end", "ts": 120}, {"state": "drift", "ts": 390}]
    s = Stream(score, np.full(400, 2.0), None, [], "m@1", drift=drift)
    assert s.drift_mask().nonzero()[0].tolist() == list(range(103, 120)) + list(range(390, 400))
    r = report(s, data)
    assert r["drift"]["anomalous_covered"] == pytest.approx(7 / 20)  # 103-109 of the 20 anomalous points
    assert r["drift"]["normal_covered"] == pytest.approx(20 / 380)  # 110-119 and 390-399
    assert r["point"]["recall"] == pytest.approx(3 / 20)  # the drift period is not an alarm
    flagged = 3 + 7  # alarms or drift on anomalous points; 20 normal points flagged
    assert r["drift"]["f1_with_drift"] == pytest.approx(2 * flagged / (2 * flagged + 20 + 10))
    print_report({**r, "dataset": "d"})
    out = capsys.readouterr().out
    assert "(0 incidents, 2 drift events)" in out
    assert "drift periods cover 35.0% of anomalous points and 5.3% of normal ones" in out
    # a test split without anomalies has no anomalous share to cover
    quiet = Dataset("quiet", data.train, data.test, np.zeros(400, np.int8), data.channels)
    print_report({**report(s, quiet), "dataset": "q"})
    assert "drift periods cover n/a of anomalous points and 6.8% of normal ones" in capsys.readouterr().out
    # no drift record, no line
    print_report({**report(Stream(score, np.full(400, 2.0), None, [], "m@1"), data), "dataset": "d"})
    assert "drift periods" not in capsys.readouterr().out
