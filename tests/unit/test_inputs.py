"""Input channels (commands, setpoints): learnt from, never judged or blamed; and the floor under a
threshold whose calibration never saw the judged channels move."""
import asyncio

import numpy as np
import orjson
import pytest

from detectors import artefacts
from detectors.base import sliding_windows
from detectors.pca import PCADetector
from scoring.codec import encode_readings
from scoring.pipeline import Message, Pipeline
from scoring.settings import Settings
from scoring.thresholds import FLOOR, floor_for
from training.calibration import fit_for_serving
from training.data import load, seal

from ..helpers import TINY

NAMES = ["flow", "pressure", "cmd_open", "cmd_close"]


def plant(n, seed=0, new_command=False):
    """Two measured channels that answer a valve command (open raises flow, pressure follows flow);
    the commands are sparse 0/1 pulses. ``new_command``: the close command, never sent in training,
    is sent (and the plant answers it as it should: nothing else changes)."""
    rng = np.random.default_rng(seed)
    cmd_open = (rng.random(n) < 0.05).astype(np.float32)
    cmd_close = np.zeros(n, np.float32)
    if new_command:
        cmd_close[n // 2:n // 2 + 20] = 1.0
    flow = 2.0 * cmd_open + 0.1 * rng.normal(size=n)
    pressure = 0.5 * flow + 0.05 * rng.normal(size=n)
    return np.stack([flow, pressure, cmd_open, cmd_close], 1).astype(np.float32)


def test_a_new_command_is_operation_while_a_plant_that_ignores_its_command_is_a_fault():
    train = plant(4000)
    judged = PCADetector(NAMES, inputs=["cmd_*"]).fit(train)
    everything = PCADetector(NAMES).fit(train)
    assert judged.judged.tolist() == [True, True, False, False]
    new_command = plant(400, seed=1, new_command=True)
    fault = plant(400, seed=2)
    fault[200:210, 2] = 1.0  # the valve is told to open ...
    fault[200:210, 0] = 0.0  # ... and the flow does not answer
    fault[200:210, 1] = 0.0
    for det, command_alarms in ((judged, False), (everything, True)):
        normal = float(np.quantile(det.score(plant(2000, seed=3)[None]).reconstruction, 0.999))
        s_cmd = det.score(new_command[None])
        assert bool(s_cmd.reconstruction[0, 200:220].max() > 3 * normal) is command_alarms
        s_fault = det.score(fault[None])
        assert s_fault.reconstruction[0, 200:210].min() > 3 * normal
    s = judged.score(fault[None])
    # inputs are never blamed, and the point score is the mean of the measured channels' parts
    assert np.all(s.channel[..., 2:] == 0)
    z = ((fault - judged.mean) / judged.std).astype(np.float32)
    resid, proj = judged._project(z)
    _, parts = judged._combine(z, resid ** 2 / judged.channel_scale, proj)
    assert np.allclose(s.reconstruction[0], parts[:, :2].mean(-1), rtol=1e-5)
    assert set(s.channel[0, 200:210].argmax(1).tolist()) <= {0, 1}


def test_no_inputs_or_inputs_naming_every_channel_judge_every_channel():
    train = plant(1000)
    plain = PCADetector(NAMES).fit(train)
    all_named = PCADetector(NAMES, inputs=["*"]).fit(train)
    assert plain.judged is None and all_named.judged is None
    w = sliding_windows(train[:64], 32, 32)
    assert np.array_equal(plain.score(w).reconstruction, all_named.score(w).reconstruction)


def test_judged_channels_travel_with_the_artefact(tmp_path):
    det = fit_for_serving(PCADetector(NAMES, inputs=["cmd_open", "cmd_close"]), plant(3000), progress=False)
    path = artefacts.save(det, tmp_path / "m")
    back = artefacts.load(path)
    assert back.judged.tolist() == [True, True, False, False] and back.inputs == ["cmd_open", "cmd_close"]
    w = plant(64, seed=5)[None]
    assert np.array_equal(back.score(w).reconstruction, det.score(w).reconstruction)
    # a mask that does not fit the channels is a broken artefact, said at load, never a crash at scoring
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(path / "model.safetensors"))
    tensors["judged"] = np.ones(3, np.uint8)
    save_file(tensors, str(path / "model.safetensors"))
    with pytest.raises(artefacts.ArtefactError, match="judged mask"):
        artefacts.load(path)


def test_deep_models_judge_the_measured_channels_and_tree_models_refuse_inputs():
    det = artefacts.create("lstm_ae", NAMES, inputs=["cmd_*"], **TINY).fit(plant(800), progress=False)
    s = det.score(sliding_windows(plant(64, seed=1), 16, 16))
    assert np.all(s.channel[..., 2:] == 0)
    assert np.allclose(s.reconstruction, s.channel[..., :2].mean(-1), rtol=1e-5)
    with pytest.raises(ValueError, match="cannot leave input channels out; models that can: pca"):
        artefacts.create("iforest", NAMES, inputs=["cmd_*"])


def test_the_shared_smap_and_msl_files_declare_their_command_columns(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "smap_msl" / "smap"
    folder.mkdir(parents=True)
    np.savez(folder / "X-1.npz", train=rng.normal(size=(50, 4)), test=rng.normal(size=(20, 4)),
             label=np.zeros(20, np.int8))
    np.savez(tmp_path / "own.npz", train=rng.normal(size=(50, 4)), test=rng.normal(size=(20, 4)),
             label=np.zeros(20, np.int8), inputs=np.array([3]))
    np.savez(tmp_path / "plain.npz", train=rng.normal(size=(50, 4)), test=rng.normal(size=(20, 4)),
             label=np.zeros(20, np.int8))
    assert load(folder / "X-1.npz").inputs == ["ch1", "ch2", "ch3"]  # column 0 is the telemetry
    assert seal(load(tmp_path / "own.npz")).inputs == ["ch3"]
    assert load(tmp_path / "plain.npz").inputs == []


def _stream(det, values, start=1_700_000_000.0):
    names = list(det.channels)
    msgs = [Message(0, i, b"e", encode_readings("e", start + i, values[i], names)) for i in range(len(values))]
    pipe = Pipeline(Settings(), {"*": det})
    out = [asyncio.run(pipe.process(msgs[i:i + 50])) for i in range(0, len(msgs), 50)]
    scores = [orjson.loads(r.value) for o in out for r in o.scores]
    thr = np.array([t if t is not None else np.nan for m in scores for t in m["threshold"]], float)
    score = np.array([s for m in scores for s in m["score"]])
    pipe.published_alerts = [orjson.loads(r.value) for o in out for r in o.alerts]
    return score, thr, pipe


def test_an_incident_names_measured_channels_only():
    det = fit_for_serving(PCADetector(NAMES, inputs=["cmd_*"]), plant(4000), progress=False)
    live = plant(900, seed=2)
    live[600:640, 2] = 1.0  # the valve is told to open for 40 readings and the flow does not answer
    live[600:640, 0] = 0.0
    live[600:640, 1] = 0.0
    _, _, pipe = _stream(det, live)
    incidents = [a for a in pipe.published_alerts if a.get("channels")]
    assert incidents, pipe.published_alerts
    named = {c["channel"] for a in incidents for c in a["channels"]}
    assert named and named <= {"flow", "pressure"}, named


def test_a_judged_channel_held_constant_in_training_alarms_when_it_moves_not_when_it_wiggles():
    rng = np.random.default_rng(0)
    train = np.stack([np.full(3000, 0.5), (rng.random(3000) < 0.1), (rng.random(3000) < 0.1)], 1).astype(np.float32)
    det = fit_for_serving(PCADetector(["value", "cmd_a", "cmd_b"], inputs=["cmd_*"]), train, progress=False)
    assert np.all(det.train_reconstruction == 0)  # calibration never saw the value move
    live = np.stack([np.full(600, 0.5), (rng.random(600) < 0.1), (rng.random(600) < 0.1)], 1).astype(np.float32)
    live[:, 0] += 0.001  # a rounding-level offset: the same constant, as far as anybody cares
    live[400:430, 0] = 0.9  # the value moves
    score, thr, pipe = _stream(det, live)
    alarm = score > thr
    assert np.nanmin(thr) >= FLOOR
    assert not alarm[:400].any() and alarm[400:430].all()
    # the floor is part of the entity's state, and a restored entity serves it
    ent = pipe.entities["e"]
    state = orjson.loads(orjson.dumps(ent.to_state()))
    assert state["floor"] == FLOOR
    ent.floor = 0.0
    ent.load_state(state)
    assert ent.floor == FLOOR


def test_only_a_degenerate_calibration_is_floored():
    assert floor_for(np.zeros(100)) == FLOOR and floor_for(np.full(100, 1e-31)) == FLOOR
    assert floor_for(np.r_[np.zeros(99), 0.05]) == 0.0 and floor_for(np.zeros(0)) == 0.0


def test_vigil_eval_uses_the_inputs_a_dataset_declares_and_says_so(tmp_path, capsys):
    from cli.main import main

    folder = tmp_path / "smap_msl" / "smap"
    folder.mkdir(parents=True)
    train, test = plant(2000), plant(600, seed=1)
    np.savez(folder / "X-1.npz", train=train, test=test, label=np.zeros(600, np.int8))
    results = {}
    for flag in ([], ["--inputs", ""], ["--inputs", "ch3"]):
        assert main(["eval", "--json", "--data", str(folder / "X-1.npz"), *flag]) == 0
        results[" ".join(flag)] = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert results[""]["inputs"] == ["ch1", "ch2", "ch3"] and results[""]["judged_channels"] == 1
    assert results["--inputs "]["inputs"] == [] and results["--inputs "]["judged_channels"] == 4
    assert results["--inputs ch3"]["judged_channels"] == 3
    # no --model: the default (auto) matches a lone measured channel's course and reconstructs several
    assert results[""]["model_id"].startswith("knn@")
    assert results["--inputs "]["model_id"].startswith("pca@") and results["--inputs ch3"]["model_id"].startswith("pca@")


def test_the_default_model_follows_the_number_of_judged_channels(tmp_path):
    assert artefacts.DEFAULT_MODEL == artefacts.AUTO and artefacts.AUTO in artefacts.CHOICES
    assert artefacts.create("auto", NAMES).name == "pca"
    assert artefacts.create("auto", NAMES, inputs=["cmd_*"]).name == "pca"  # flow and pressure judged
    lone = artefacts.create("auto", NAMES, inputs=["pressure", "cmd_*"])
    assert lone.name == "knn" and lone.inputs == ["pressure", "cmd_*"]
    assert artefacts.create("auto", ["level"]).name == "knn"  # a single channel, no inputs
    assert artefacts.create("auto", NAMES, inputs=["*"]).name == "pca"  # naming every channel names none
    # the artefact records what was trained, not "auto"
    det = fit_for_serving(lone, plant(2000), progress=False)
    assert artefacts.load(artefacts.save(det, tmp_path / "m")).name == "knn"


def test_the_cold_start_judges_the_channels_the_worker_says_are_not_inputs():
    live = plant(1200, seed=4)
    live[700:720, 3] = 1.0  # the close command, never sent before, is sent; the plant answers as it should
    alarms = {}
    for inputs in ([], ["cmd_*"]):
        pipe = Pipeline(Settings(inputs=inputs))  # no model: every entity is scored by the cold start
        msgs = [Message(0, i, b"e", encode_readings("e", 1_700_000_000.0 + i, live[i], NAMES)) for i in range(len(live))]
        out = [asyncio.run(pipe.process(msgs[i:i + 50])) for i in range(0, len(msgs), 50)]
        scores = [orjson.loads(r.value) for o in out for r in o.scores]
        alarm = np.array([t is not None and s > t for m in scores for s, t in zip(m["score"], m["threshold"])])
        alerts = [orjson.loads(r.value) for o in out for r in o.alerts]
        alarms[tuple(inputs)] = (int(alarm[700:725].sum()), {c["channel"] for a in alerts for c in a["channels"]})
    assert alarms[()][0] > 0 and "cmd_close" in alarms[()][1]  # judged as a channel, the command alarms
    assert alarms[("cmd_*",)][0] == 0 and not alarms[("cmd_*",)][1] & {"cmd_open", "cmd_close"}


def test_a_training_split_with_gaps_is_filled_counted_and_scored(tmp_path, capsys):
    """A recorded history with a sensor offline for a while, a column never measured and an infinity:
    `vigil eval` and `vigil train` fit on it (gaps filled as the stream fills them), say how many values
    were filled, and the artefact keeps the count."""
    from cli.main import main

    train, test = plant(3000), plant(800, seed=1)
    train[100:400, 1] = np.nan  # pressure offline for 300 points
    train[:50, 0] = np.nan  # flow recorded from point 50 on
    train[:, 3] = np.nan  # a command column never recorded
    train[1000, 2] = np.inf
    label = np.zeros(800, np.int8)
    label[400:440] = 1
    test[400:440, 1] += 3.0  # pressure departs from flow
    np.savez(tmp_path / "gaps.npz", train=train, test=test, label=label)
    n_gaps = 300 + 50 + 3000 + 1
    assert main(["eval", "--json", "--data", str(tmp_path / "gaps.npz")]) == 0
    r = orjson.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["filled_training_values"] == n_gaps
    assert r["point"]["recall"] > 0.5 and np.isfinite(r["auc_pr"])
    assert main(["train", "--data", str(tmp_path / "gaps.npz"), "--out", str(tmp_path / "m")]) == 0
    det = artefacts.load(tmp_path / "m")
    assert det.filled_training_values == n_gaps and np.isfinite(det.train_reconstruction).all()


def test_vigil_eval_of_a_folder_scores_each_channel_file_as_its_own_entity_and_reports_their_mean(tmp_path, capsys):
    """As SMAP and MSL are deployed (and benchmarked): a model per channel file, and the mean over
    entities, never one model for the concatenation."""
    from cli.main import main

    folder = tmp_path / "smap_msl" / "smap"
    folder.mkdir(parents=True)
    for k in range(3):
        test = plant(600, seed=10 + k)
        label = np.zeros(600, np.int8)
        label[300 + 50 * k:340 + 50 * k] = 1
        test[300 + 50 * k:340 + 50 * k, 0] += 2.0  # flow departs while its command stays
        np.savez(folder / f"X-{k}.npz", train=plant(2000, seed=k), test=test, label=label)
    assert main(["eval", "--json", "--data", str(folder)]) == 0
    lines = [orjson.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    entities, summary = lines[:-1], lines[-1]
    assert [e["dataset"] for e in entities] == ["smap/X-0", "smap/X-1", "smap/X-2"]
    assert all(e["points"] == 600 and e["judged_channels"] == 1 for e in entities)  # telemanom layout: ch0 judged
    assert summary["entities"] == 3 and summary["models"] == ["knn"]
    assert summary["mean"]["point"]["f1"] == pytest.approx(np.mean([e["point"]["f1"] for e in entities]))
    assert summary["anomalous_share"] == pytest.approx(40 / 600)
    assert summary["mean"]["point"]["recall"] > 0.5


def test_vigil_train_of_a_folder_writes_a_model_per_entity_that_the_worker_serves_by_name(tmp_path, capsys):
    from cli.main import UsageError, main, model_specs

    folder = tmp_path / "smap_msl" / "smap"
    folder.mkdir(parents=True)
    for k in range(2):
        np.savez(folder / f"X-{k}.npz", train=plant(1500, seed=k), test=plant(300, seed=5 + k),
                 label=np.zeros(300, np.int8))
    assert main(["train", "--data", str(folder), "--out", str(tmp_path / "models")]) == 0
    assert "serve them with `vigil worker --model" in capsys.readouterr().out
    served = model_specs([str(tmp_path / "models")])
    assert sorted(served) == ["X-0", "X-1"]
    assert all(artefacts.load(p).name == "knn" and artefacts.load(p).inputs == ["ch1", "ch2", "ch3"]
               for p in served.values())
    one = served["X-0"]
    assert model_specs([one]) == {"*": one} and model_specs([f"pump-7={one}"]) == {"pump-7": one}
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="neither a model artefact nor a folder of them"):
        model_specs([str(tmp_path / "empty")])
