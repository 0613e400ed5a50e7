"""``auto``: candidates fitted and judged without labels, the choice and its record, kept in the artefact."""
import numpy as np

from detectors import artefacts
from training import selection
from training.injections import KINDS, inject
from training.selection import choose, fit_auto

from ..helpers import correlated


def test_auto_judges_its_candidates_records_why_and_serves_the_family_the_channels_call_for(tmp_path):
    names = [f"c{i}" for i in range(6)]
    det = fit_auto(names, correlated(3000), progress=False)
    rec = det.selection
    assert det.info.name == "pca" and rec["chosen"] == "pca" and rec["prior"] == "pca"
    assert set(rec["candidates"]) == {"pca", "var", "knn"} and rec["judged_points"] == 600
    for m in rec["candidates"].values():
        assert set(m["detection_by_kind"]) == set(KINDS)  # no GenIAS on a CPU without a budget
        assert 0 <= m["alarm_rate"] <= 1 and m["fit_seconds"] >= 0 and np.isfinite(m["detection"])
    # a correlated plant: PCA finds the injected level shifts and broken correlations on its judged data
    assert rec["candidates"]["pca"]["detection_by_kind"]["level_shift"] > 0.5
    assert "pca" in rec["why"]
    # what serves was fitted on all of train, calibrated on its held-out tail as a named model would be
    named = selection.fit_model("pca", names, correlated(3000), progress=False)
    assert np.array_equal(det.components, named.components) and named.selection is None
    back = artefacts.load(artefacts.save(det, tmp_path / "m"))
    assert back.selection == rec and artefacts.metadata(tmp_path / "m")["selection"]["chosen"] == "pca"


def test_one_judged_channel_calls_for_knn_and_a_short_split_is_not_judged():
    names = ["telemetry", "cmd_a", "cmd_b"]
    x = correlated(3000, c=3)
    det = fit_auto(names, x, progress=False, inputs=["cmd_*"])
    assert det.info.name == "knn" and det.inputs == ["cmd_*"] and set(det.selection["candidates"]) == set(selection.BASELINES)
    short = fit_auto(names, x[:600], progress=False, inputs=["cmd_*"])
    assert short.info.name == "knn" and short.selection["candidates"] == {}
    assert "too little training data" in short.selection["why"]


def test_the_choice_keeps_the_family_unless_it_is_broken():
    ok = {"alarm_rate": 0.01, "detection": 0.3, "score_max": 12.0}
    better = {"alarm_rate": 0.0, "detection": 0.9, "score_max": 5.0}
    assert choose({"pca": ok, "var": better, "knn": ok}, "pca")[0] == "pca"
    overflow = {**ok, "score_max": 1e30}
    chosen, why = choose({"pca": overflow, "var": better, "knn": ok}, "pca")
    assert chosen == "var" and "broken" in why
    failed = {"error": "LinAlgError: SVD did not converge"}
    assert choose({"pca": failed, "var": ok, "knn": better}, "pca")[0] == "knn"
    assert choose({"pca": failed, "var": failed}, "pca")[0] == "pca", "nothing can serve: the family's pick"


def test_deep_candidates_only_within_the_budget():
    assert selection.candidates(0.0) == list(selection.BASELINES)
    assert selection.candidates(30.0)[:4] == [*selection.BASELINES, "lstm_ae"]
    assert selection.default_budget("cpu") == 0.0 and selection.default_budget("cuda:0") == 60.0
    names = [f"c{i}" for i in range(4)]
    x = correlated(1200, c=4)
    from training.label_free import make_trial
    trial = make_trial(x[:900], np.arange(300.0), x[900:], names, window=16, windows=16, genias=False)
    from scoring.settings import Settings
    fitted, figs = selection.judge_candidates(["lstm_ae", "amad"], names, x[:900], trial, Settings(window=16), "cpu",
                                              False, 1e-6, 0, epochs=1, window=16, stride=8)
    assert "lstm_ae" in fitted and "detection" in figs["lstm_ae"], "the first starts while budget remains"
    assert figs["amad"] == {"skipped": "over the budget of 1e-06 s"}


def test_injections_change_only_the_newest_half_of_judged_channels_and_are_seeded():
    normal = correlated(64 * 8, c=4).reshape(8, 64, 4)
    std = normal.reshape(-1, 4).std(0)
    for kind in KINDS:
        a = inject(normal, kind, np.array([0, 2]), std, seed=1)
        assert np.array_equal(a, inject(normal, kind, np.array([0, 2]), std, seed=1))
        assert np.array_equal(a[:, :32], normal[:, :32]) and np.array_equal(a[..., [1, 3]], normal[..., [1, 3]])
        assert (a != normal).any(), kind
