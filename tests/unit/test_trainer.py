"""The retraining service without Kafka: histories, the promotion rule, and contained failures."""
import numpy as np
import orjson
import pytest

from detectors.pca import PCADetector
from producers.simulate import normal_history
from scoring.codec import Readings
from scoring.settings import Settings
from training.registry import Registry, data_hash
from training.injections import KINDS
from training.label_free import loses
from training.trainer import History, Rule, TrainerConfig, build_histories, incidents_from_alerts, retrain_entity

GEN = {"epochs": 2, "det_epochs": 1, "stride": 8}  # tiny GenIAS; the trainer caps patching at 2 channels
START = 1_700_000_000.0


def config(**kw):
    return TrainerConfig(model="pca", min_points=500, generator_config=GEN, generated_windows=64, **kw)


def history(values, entity="plant-01", names=None):
    names = names or [f"ch{i}" for i in range(values.shape[1])]
    return History(entity, names, START + np.arange(len(values), dtype=np.float64), values.astype(np.float32))


def champion(registry, values, entity="plant-01"):
    det = PCADetector([f"ch{i}" for i in range(values.shape[1])]).fit(values)
    v = registry.register(entity, det, trained_from=0.0, trained_to=1.0, data_hash=data_hash(values), metrics={},
                          parent=None)
    return registry.promote(entity, v.model, v.version)


def test_histories_drop_repeats_fill_gaps_leave_out_incidents_and_old_points():
    rows = np.arange(20, dtype=np.float64).reshape(10, 2)
    rows[3, 1] = np.nan
    first = Readings("e", START + np.arange(10.0), rows, ["a", "b"], 1)
    repeat = Readings("e", START + np.array([9.0, 10.0]), np.array([[0.0, 0.0], [20.0, 21.0]]), ["b", "a"], 0)
    h = build_histories([first, repeat], {"e": [(START + 5, START + 6)]}, history=9.0)["e"]
    assert h.names == ["a", "b"]
    assert h.ts.tolist() == [START + t for t in (1, 2, 3, 4, 7, 8, 9, 10)]  # 0 too old, 5-6 in an incident
    assert h.excluded == 2 and h.filled == 1
    assert h.values[2].tolist() == [6.0, 5.0]  # row 3's missing b filled forward from row 2
    assert h.values[-1].tolist() == [21.0, 20.0]  # named values land in the entity's channel order
    assert h.values[-2].tolist() == [18.0, 19.0], "a repeated timestamp keeps the first reading"
    kept = build_histories([first], {"e": [(START + 2, START + 8)]}, history=100.0, max_incident=5.0)["e"]
    assert len(kept.ts) == 10 and kept.excluded == 0, "an incident longer than asked: kept"
    long = build_histories([first], {"e": [(START + 2, START + 8, False)]}, history=100.0)["e"]
    assert long.excluded == 7, "a fault is left out however long it lasts"
    absorbed = build_histories([first], {"e": [(START + 2, START + 8, True)]}, history=100.0)["e"]
    assert absorbed.excluded == 0, "a drift record absorbed it: the new level, learnt"


def test_incidents_from_alerts_say_which_a_drift_absorbed():
    alerts = [{"alert_id": "a", "entity": "e", "state": "open", "start": 1.0, "end": 1.0},
              {"alert_id": "a", "entity": "e", "state": "close", "start": 1.0, "end": 9.0,
               "detail": {"absorbed_by": "d"}},
              {"alert_id": "b", "entity": "e", "state": "close", "start": 20.0, "end": 25.0, "detail": {}},
              {"alert_id": "d", "entity": "e", "state": "drift", "start": 9.0, "end": 9.0, "detail": {"absorbs": "a"}}]
    got = incidents_from_alerts([orjson.dumps(a) for a in alerts])
    assert sorted(got["e"]) == [(1.0, 9.0, True), (20.0, 25.0, False)]


def test_rule_promotes_only_a_candidate_at_least_as_good():
    rule = Rule()
    assert rule.decide({"alarm_rate": 0.01, "detection": 0.9}, {"alarm_rate": 0.2, "detection": 0.9})[0]
    assert not rule.decide({"alarm_rate": 0.01, "detection": 0.5}, {"alarm_rate": 0.2, "detection": 0.9})[0]
    assert not rule.decide({"alarm_rate": 0.05, "detection": 0.9}, {"alarm_rate": 0.01, "detection": 0.9})[0]
    assert rule.decide({"alarm_rate": 0.01, "detection": 0.8}, None)[0]
    # a first model's alarm rate on a history with unlabelled anomalies is not a reason by itself
    assert rule.decide({"alarm_rate": 0.2, "detection": 0.8}, None)[0]
    assert rule.decide({"alarm_rate": 0.01, "detection": 0.5}, {"alarm_rate": 0.2, "detection": float("nan")})[0]


def test_a_new_operating_mode_gets_a_new_champion_with_fewer_false_alarms(tmp_path):
    registry = Registry(tmp_path)
    old = normal_history("plant-01", 6, 3000, START, seed=1).values
    champion(registry, old)
    new_mode = old * 1.8 + 2.0  # the plant moved: same structure, other levels and gains
    e = retrain_entity(history(new_mode), registry, config(), Settings())
    assert e["event"] == "promoted", e
    assert e["version"] == 2 and registry.champion("plant-01").version == 2
    assert registry.get("plant-01", "pca", 1).status == "retired"
    cand, champ = e["metrics"]["candidate"], e["metrics"]["champion"]
    assert cand["alarm_rate"] < champ["alarm_rate"] and cand["detection"] > champ["detection"]


def test_a_candidate_trained_on_anomalies_is_not_promoted(tmp_path):
    registry = Registry(tmp_path)
    normal = normal_history("plant-01", 6, 6000, START, seed=1).values
    champ = champion(registry, normal[:3000])
    rng = np.random.default_rng(3)
    polluted = normal[3000:].copy()  # the same operating mode, but most of the training part is broken
    polluted[:2400] += rng.normal(scale=4.0, size=(2400, 6))
    e = retrain_entity(history(polluted), registry, config(), Settings())
    assert e["event"] == "rejected", e
    assert registry.champion("plant-01").version == champ.version
    assert registry.get("plant-01", "pca", 2).status == "rejected"


@pytest.mark.parametrize("make_history,cfg", [
    (lambda v: history(v[:100]), {}),  # too little data
    (lambda v: history(v), {"model_config": {"preset": "no-such-preset"}}),  # training raises
])
def test_a_failed_run_leaves_the_champion_serving(tmp_path, make_history, cfg):
    registry = Registry(tmp_path)
    values = normal_history("plant-01", 6, 3000, START, seed=1).values
    champ = champion(registry, values)
    e = retrain_entity(make_history(values), registry, config(**cfg), Settings())
    assert e["event"] == "failed" and e["reason"] and e["champion"] == champ.model_id
    assert registry.champion("plant-01").version == champ.version


def test_a_first_model_is_judged_against_the_cold_start_and_promoted_whatever_the_seed(tmp_path):
    """The noisy case of a new plant: a first model on live data with its anomalies, which the model
    alarms on and the cold start partly missed; it detects the injected and generated anomalies at least
    as well, and must be promoted for every seed of the trial."""
    from producers.simulate import simulate_entity

    live = simulate_entity("plant-01", 6, 2500, START, 3)
    decisions = []
    for seed in (0, 1, 2):
        registry = Registry(tmp_path / f"seed{seed}")
        e = retrain_entity(history(live.values), registry, config(seed=seed), Settings())
        decisions.append(e["event"])
        cand, cold = e["metrics"]["candidate"], e["metrics"]["cold_start"]
        assert cold is not None and set(cand["detection_by_kind"]) == {*KINDS, "genias"}
        assert cand["detection_sd"] >= 0 and not loses(cand, cold)
    assert decisions == ["promoted"] * 3


def test_a_first_model_is_rejected_only_when_broken_or_detecting_less_than_the_cold_start():
    rule = Rule()
    kinds = {k: 0.5 for k in KINDS}
    cold = {"alarm_rate": 0.01, "detection": 0.5, "detection_sd": 0.0, "detection_by_kind": kinds}
    alarming = {"alarm_rate": 0.2, "detection": 0.9, "score_max": 9.0, "detection_by_kind": {k: 0.9 for k in KINDS}}
    assert rule.decide(alarming, None, cold)[0], "alarms on a history with anomalies: not a reason by itself"
    blind = {"alarm_rate": 0.0, "detection": 0.1, "score_max": 9.0,
             "detection_by_kind": {k: 0.1 + 0.01 * i for i, k in enumerate(KINDS)}}
    assert not rule.decide(blind, None, cold)[0], "detects clearly less on every kind"
    noisy = {"alarm_rate": 0.0, "detection": 0.45, "score_max": 9.0,
             "detection_by_kind": {k: v for k, v in zip(KINDS, (0.9, 0.0, 0.9, 0.0, 0.9, 0.0))}}
    assert rule.decide(noisy, None, cold)[0], "lower on average but within the kinds' noise"
    assert not rule.decide({**alarming, "score_max": 1e30}, None, cold)[0], "broken: scores overflow"


def test_the_trainer_trains_the_named_model_with_the_declared_inputs(tmp_path):
    """``vigil trainer --model var --inputs 'ch5'``: the registered model forecasts only the measured
    channels and never blames the input."""
    values = normal_history("plant-01", 6, 2000, START, 4).values
    registry = Registry(tmp_path)
    cfg = TrainerConfig(model="var", model_config={"inputs": ["ch5"]}, min_points=500, generator_config=GEN,
                        generated_windows=64)
    e = retrain_entity(history(values), registry, cfg, Settings())
    assert e["event"] in ("promoted", "rejected"), e
    det = registry.load(registry.versions("plant-01")[-1])
    assert det.model_id.startswith("var@") and det.inputs == ["ch5"]
    assert det.judged.tolist() == [True] * 5 + [False]


def test_with_no_model_named_the_trainer_picks_per_entity_by_its_judged_channels(tmp_path):
    """``vigil trainer`` without ``--model`` (``auto``): PCA for an entity with several measured channels,
    the nearest-subsequence model for one whose other channels are all inputs (a telemetry value beside
    its commands)."""
    values = normal_history("plant-01", 4, 1500, START, 4).values
    registry = Registry(tmp_path)
    for entity, inputs, model in (("many", [], "pca"), ("one", ["ch1", "ch2", "ch3"], "knn")):
        cfg = TrainerConfig(model_config={"inputs": inputs} if inputs else {}, min_points=500,
                            generator_config=GEN, generated_windows=64)
        assert cfg.model == "auto"
        e = retrain_entity(history(values, entity), registry, cfg, Settings())
        assert e["event"] in ("promoted", "rejected"), e
        assert registry.load(registry.versions(entity)[-1]).model_id.startswith(f"{model}@")
