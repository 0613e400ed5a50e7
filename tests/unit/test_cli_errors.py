"""Every user mistake on the command line: one line that says what is wrong and what to do, a
non-zero exit, never a traceback."""
import json

import numpy as np
import pytest

from cli.main import main
from detectors import artefacts
from detectors.pca import PCADetector


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "good.npz", train=rng.normal(size=(300, 3)), test=rng.normal(size=(200, 3)),
             label=np.zeros(200, np.int8))
    (tmp_path / "bad.npz").write_text("not a zip")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "model.json").write_text("{")
    good = artefacts.save(PCADetector(["a", "b", "c"]).fit(rng.normal(size=(300, 3))), tmp_path / "model")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.json").write_text((good / "model.json").read_text())
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "registry").mkdir()
    (tmp_path / "craft").mkdir()
    for name in ("A-1", "B-1"):
        np.savez(tmp_path / "craft" / f"{name}.npz", train=rng.normal(size=(50, 2)), test=rng.normal(size=(20, 2)),
                 label=np.zeros(20, np.int8))
    return tmp_path


MISTAKES = {
    "unknown model to train": ("train --model nope --data {t}/good.npz --out {t}/out", "invalid choice: 'nope'"),
    "missing data file": ("train --model pca --data {t}/missing.npz --out {t}/out", "no such file"),
    "unreadable data file": ("train --model pca --data {t}/bad.npz --out {t}/out", "cannot be read as a dataset"),
    "not a dataset": ("eval --model pca --data {t}/notes.txt", "not a dataset layout"),
    "unknown model to evaluate": ("eval --model nope --data {t}/good.npz", "neither a model name"),
    "artefact with a broken model.json": ("eval --model {t}/half --data {t}/good.npz", "cannot be read"),
    "artefact with broken tensors": ("eval --model {t}/broken --data {t}/good.npz", "broken model artefact"),
    "worker with a missing artefact": ("worker --model {t}/nothing --broker 127.0.0.1:1", "not a Vigil model artefact"),
    "bad number": ("worker --batch-size -5", "expected a number above 0"),
    "replay of a missing file": ("replay {t}/missing.npz --broker 127.0.0.1:1", "no such file"),
    "one entity id for a folder of them": ("replay {t}/craft --entity pump --broker 127.0.0.1:1", "holds 2"),
    "bad duration": ("trainer --every 6x", "expected a duration"),
    "unknown threshold parameter": ("worker --threshold-param nope=1 --broker 127.0.0.1:1", "spot takes"),
    "threshold parameter out of range": ("worker --threshold-param q=5 --broker 127.0.0.1:1", "q must be"),
    "no registry": ("models --registry {t}/none", "no registry at"),
    "empty registry": ("models --registry {t}/registry", "no models registered"),
    "no broker": ("alerts --broker 127.0.0.1:1", "no Kafka broker answers"),
    "no command": ("", "required"),
    "feedback about nothing": ("feedback --label false-alarm --broker 127.0.0.1:1", "say what the label is about"),
    "feedback on an alert and a period": ("feedback a1 --entity e --start 1 --end 2 --label anomaly",
                                          "not both"),
    "a missed period labelled a false alarm": ("feedback --entity e --start 1 --end 2 --label false-alarm",
                                               "can only be labelled --label anomaly"),
    "a period that ends before it starts": ("feedback --entity e --start 5 --end 2 --label anomaly --broker "
                                            "127.0.0.1:1", "start <= end"),
    "a time that is not a time": ("feedback --entity e --start yesterday --end 2 --label anomaly",
                                  "unix seconds or an ISO 8601 time"),
    "an unknown label": ("feedback a1 --label maybe", "invalid choice: 'maybe'"),
    "inputs for a model that judges every channel": ("train --model iforest --inputs c --data {t}/good.npz "
                                                     "--out {t}/out", "cannot leave inputs out"),
    "inputs for a trained model": ("eval --model {t}/model --inputs c --data {t}/good.npz",
                                   "its inputs were set when it was trained"),
}


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_mistake_gets_one_line_and_a_nonzero_exit(mistake, files, capsys):
    argv, expected = MISTAKES[mistake]
    try:
        code = main(argv.format(t=files).split())
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    out, err = capsys.readouterr()
    assert code not in (0, None), mistake
    assert "Traceback" not in err and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vigil"), err
    assert expected in lines[0], lines[0]


def test_the_model_table_is_read_not_executed(files):
    """An artefact names its class from a fixed table: a model.json naming anything else is refused."""
    meta = json.loads((files / "model" / "model.json").read_text())
    meta["name"] = "os:system"
    (files / "half" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(artefacts.ArtefactError, match="broken model artefact"):
        artefacts.load(files / "half")


def test_feedback_on_a_drift_still_going_asks_for_its_period():
    from cli.main import UsageError, labelled_span

    closed = {"alert_id": "a1", "entity": "e", "state": "close", "start": 10.0, "end": 20.0}
    ended = {"alert_id": "d1", "entity": "e", "state": "drift_end", "start": 10.0, "end": 90.0}
    assert labelled_span(closed) == ("e", 10.0, 20.0) and labelled_span(ended) == ("e", 10.0, 90.0)
    with pytest.raises(UsageError, match="--entity e --start 10 --end T"):
        labelled_span({"alert_id": "d1", "entity": "e", "state": "drift", "start": 10.0, "end": 10.0})
