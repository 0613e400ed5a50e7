"""Every model is served by a worker through a real broker, and the stream's scores are the offline ones."""
import numpy as np
import orjson
import pytest
import torch

from detectors import artefacts
from scoring.settings import Settings
from stream.evaluation import stream_through_kafka
from training.evaluate import report, stream_offline
from training.selection import fit_model

from ..helpers import TINY, small_dataset

pytestmark = pytest.mark.integration



def test_every_model_served_through_kafka_scores_as_the_offline_pipeline(broker, tmp_path):
    torch.set_num_threads(1)
    data = small_dataset()
    # a level window of 200 readings (a minute apart: training.evaluate.DEFAULT_INTERVAL), so that the
    # 400-point test split holds a departure long enough to become the new level
    settings = Settings(score_channels=True, device="cpu", level_window=200 * 60.0)
    jobs, offline = {}, {}
    for name in artefacts.available():
        config = TINY if name in ("lstm_ae", "post", "amad", "mimgan", "genias") else {}
        det = artefacts.create(name, data.channels, **config).fit(data.train, progress=False)
        path = artefacts.save(det, tmp_path / name)
        jobs[name] = (path, data)
        offline[name] = stream_offline(artefacts.load(path), data, settings)

    # and an entity whose test period moves to another level for good: its drift event as well
    shifted = small_dataset()
    shifted.test = shifted.test.copy()
    shifted.test[150:] += 3.0 * shifted.train.std(0)
    jobs["regime"] = (jobs["pca"][0], shifted)
    offline["regime"] = stream_offline(artefacts.load(jobs["pca"][0]), shifted, settings)
    assert [a["state"] for a in offline["regime"].drift] == ["drift"]

    # and a model whose served threshold operators' feedback retuned (training.feedback)
    retuned = artefacts.load(jobs["pca"][0])
    retuned.threshold_scale = 2.0
    jobs["retuned"] = (artefacts.save(retuned, tmp_path / "retuned"), data)
    offline["retuned"] = stream_offline(artefacts.load(jobs["retuned"][0]), data, settings)
    assert np.nanmedian(offline["retuned"].threshold / offline["pca"].threshold) == pytest.approx(2.0)

    # and a model told that c1..c5 are inputs, whose judged channel c0 never moved in training: the
    # threshold of that degenerate calibration is served at the floor (scoring.thresholds.FLOOR)
    held = small_dataset()
    held.train, held.test = held.train.copy(), held.test.copy()
    held.train[:, 0], held.test[:, 0] = 0.5, 0.5
    held.test[300:320, 0] = 1.5
    judged = artefacts.create("pca", held.channels, inputs=["c[1-5]"]).fit(held.train, progress=False)
    jobs["inputs"] = (artefacts.save(judged, tmp_path / "inputs"), held)
    offline["inputs"] = stream_offline(artefacts.load(jobs["inputs"][0]), held, settings)
    assert np.nanmin(offline["inputs"].threshold) >= 1.0 and offline["inputs"].alarm[300:320].all()
    assert not np.delete(offline["inputs"].alarm, np.s_[300:330]).any()

    # and auto's choice, its record in the artefact: served as the model it chose
    chosen = fit_model("auto", data.channels, data.train, settings, progress=False)
    jobs["auto"] = (artefacts.save(chosen, tmp_path / "auto"), data)
    offline["auto"] = stream_offline(artefacts.load(jobs["auto"][0]), data, settings)
    assert artefacts.metadata(jobs["auto"][0])["selection"]["chosen"] == "pca"

    streamed = stream_through_kafka(jobs, settings, broker, timeout=300)

    base_rate = data.label.mean()
    for name in jobs:
        s, o = streamed[name], offline[name]
        assert s.model == o.model == f"{'pca' if name in ('regime', 'retuned', 'inputs', 'auto') else name}@1"
        np.testing.assert_allclose(s.score, o.score, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(s.threshold, o.threshold, rtol=1e-4, atol=1e-5, err_msg=name)
        np.testing.assert_allclose(s.channel, o.channel, rtol=1e-4, atol=1e-5, err_msg=name)
        assert [(a["start"], a["end"]) for a in s.incidents] == [(a["start"], a["end"]) for a in o.incidents], name
        assert [(a["state"], a["ts"]) for a in s.drift] == [(a["state"], a["ts"]) for a in o.drift], name
        if name in ("regime", "retuned", "inputs"):
            continue
        r = report(s, data)
        print(f"{name}: AUC-PR {r['auc_pr']:.3f} (base rate {base_rate:.3f}), point F1 {r['point']['f1']:.3f}, "
              f"HitRate@100% {r['localisation']['hit@100']:.3f}")
        assert r["auc_pr"] > 2 * base_rate, name


def test_vigil_eval_of_a_folder_through_kafka_reports_what_the_offline_pipeline_does(broker, tmp_path, capsys):
    """`vigil eval --data FOLDER --through-kafka`: every channel file its own entity and model, all of
    them served by one worker through the broker, each entity's metrics and their mean as offline."""
    from cli.main import main

    rng = np.random.default_rng(3)
    folder = tmp_path / "craft"
    folder.mkdir()
    for k in range(2):
        data = small_dataset()
        test = data.test + 0.01 * rng.normal(size=data.test.shape)  # two entities, two test periods
        np.savez(folder / f"E-{k}.npz", train=data.train, test=test, label=data.label)
    results = {}
    for via in ([], ["--through-kafka", "--broker", broker]):
        assert main(["eval", "--json", "--data", str(folder), *via]) == 0
        results[bool(via)] = [orjson.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    offline, streamed = results[False], results[True]
    assert [r["dataset"] for r in streamed] == ["craft/E-0", "craft/E-1", str(folder)]
    assert streamed[-1]["through_kafka"] and streamed[-1]["entities"] == 2
    for o, s in zip(offline[:-1], streamed[:-1]):
        assert s["point"] == o["point"] and s["alarm_rate"] == o["alarm_rate"] and s["incidents"] == o["incidents"]
    assert streamed[-1]["mean"]["point"] == offline[-1]["mean"]["point"]
