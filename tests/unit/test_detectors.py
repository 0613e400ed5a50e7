import json

import numpy as np
import pytest

from detectors import artefacts
from detectors.base import sliding_windows
from detectors.coldstart import ColdStartDetector
from detectors.pca import PCADetector

from ..helpers import correlated


def test_pca_scores_shapes_normalisation_and_localisation():
    train = correlated(3000)
    det = PCADetector([f"c{i}" for i in range(6)]).fit(train)
    assert det.components.shape[1] < 6
    # SPE and T^2 / k are each normalised to mean 1 on training data
    assert abs(float(det.train_reconstruction.mean()) - 2.0) < 0.05
    test = correlated(200, seed=1)
    test[100:110, 4] += 3.0  # breaks the correlation on channel 4
    s = det.score(sliding_windows(test, 10, 10))
    assert s.reconstruction.shape == (20, 10) and s.channel.shape == (20, 10, 6) and s.divergence is None
    flat = s.reconstruction.reshape(-1)
    assert flat[100:110].min() > np.quantile(flat[:100], 0.99)
    assert (s.channel.reshape(-1, 6)[100:110].argmax(1) == 4).mean() >= 0.8


def test_pca_t2_scores_a_reading_far_along_the_components_that_the_residual_misses():
    train = correlated(3000)
    names = [f"c{i}" for i in range(6)]
    with_t2, without = PCADetector(names).fit(train), PCADetector(names, t2=0.0).fit(train)
    # eight standard deviations along the first component: far out of range, correlations intact
    v = with_t2.components[:, 0]
    far = (with_t2.mean + with_t2.std * v * 8 * np.sqrt(with_t2.component_var[0]))[None, None].repeat(5, 1)
    normal = correlated(200, seed=2)
    for det, expect in ((with_t2, True), (without, False)):
        s_far = float(det.score(far).reconstruction.min())
        s_normal = float(np.quantile(det.score(normal[None]).reconstruction, 0.99))
        assert (s_far > 3 * s_normal) is expect, (det.info.config, s_far, s_normal)


def test_a_pca_artefact_from_before_t2_scores_as_it_was_trained(tmp_path):
    det = PCADetector([f"c{i}" for i in range(6)], t2=0.0).fit(correlated(1000))
    path = artefacts.save(det, tmp_path / "old")
    meta = json.loads((path / "model.json").read_text())
    del meta["config"]["t2"]  # what an older Vigil wrote: no t2, no component_var
    (path / "model.json").write_text(json.dumps(meta))
    from safetensors.numpy import load_file, save_file
    tensors = load_file(str(path / "model.safetensors"))
    del tensors["component_var"]
    save_file(tensors, str(path / "model.safetensors"))
    old = artefacts.load(path)
    x = correlated(64, seed=5)
    assert np.allclose(old.score(x[None]).reconstruction, det.score(x[None]).reconstruction, atol=1e-5)


def test_pca_score_of_a_point_is_independent_of_its_window():
    det = PCADetector([f"c{i}" for i in range(6)]).fit(correlated(1000))
    x = correlated(64, seed=3)
    a = det.score(sliding_windows(x, 8, 8)).reconstruction.reshape(-1)
    b = det.score(sliding_windows(x, 16, 16)).reconstruction.reshape(-1)
    assert np.allclose(a, b, atol=1e-5)


def test_artefact_round_trip_gives_identical_scores(tmp_path):
    det = PCADetector([f"c{i}" for i in range(6)]).fit(correlated(1000))
    path = artefacts.save(det, tmp_path / "m")
    meta = json.loads((path / "model.json").read_text())
    assert meta["name"] == "pca" and meta["channels"][0] == "c0" and meta["train_score_stats"]["reconstruction"]["count"] == 1000
    loaded = artefacts.load(path)
    w = sliding_windows(correlated(50, seed=4), 10, 5)
    assert np.array_equal(det.score(w).channel, loaded.score(w).channel)
    assert np.array_equal(det.train_reconstruction, loaded.train_reconstruction)
    artefacts.save(det, path)  # overwriting is atomic and leaves no temporary directories
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_unknown_model_and_bad_input():
    with pytest.raises(ValueError, match="unknown model"):
        artefacts.create("nope", ["a"])
    with pytest.raises(ValueError):
        PCADetector(["a", "b"]).fit(np.array([[1.0, np.nan]]))
    with pytest.raises(artefacts.ArtefactError, match="not a Vigil model artefact"):
        artefacts.load("/nonexistent")


def test_coldstart_flags_a_jump_on_the_right_channel_and_restores_exactly():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    x[500, 1] += 8.0
    det = ColdStartDetector(3)
    point, channel = det.score_learn(x[:550])
    assert point[500] > np.quantile(point[100:500], 0.999)
    assert channel[500].argmax() == 1
    restored = ColdStartDetector(3).load_state(json.loads(json.dumps(det.to_state())))
    a = det.score_learn(x[550:])
    b = restored.score_learn(x[550:])
    assert np.array_equal(a[1], b[1])


def test_coldstart_entities_learnt_together_are_bit_for_bit_each_learnt_alone():
    """A micro-batch's cold-start entities step together (``score_learn_many``): each one's scores and
    state are exactly what it alone gives, whatever the others, their row counts or their warm-up."""
    rng = np.random.default_rng(3)
    shapes = [(4, 0), (4, 7), (4, 90), (4, 3), (6, 40), (200, 5)]  # (channels, rows learnt before); 200: diagonal
    alone, together, rows = [], [], []
    for k, (c, before) in enumerate(shapes):
        pair = [ColdStartDetector(c), ColdStartDetector(c)]
        past = rng.normal(size=(before, c)) @ rng.normal(size=(c, c))
        for det in pair:
            det.score_learn(past)
        alone.append(pair[0])
        together.append(pair[1])
        x = rng.normal(size=(int(rng.integers(0, 60)), c)) * (1 + k)
        x[len(x) // 2:, 0] += 9.0 * (k % 2)  # a fault, learnt robustly, in some
        rows.append(x)
    expected = [det.score_learn(x) for det, x in zip(alone, rows)]
    got = ColdStartDetector.score_learn_many(together, rows)
    for (p1, c1), (p2, c2), a, b in zip(expected, got, alone, together):
        assert np.array_equal(c1, c2) and np.array_equal(p1, p2)
        assert a.n == b.n and np.array_equal(a.mean, b.mean) and np.array_equal(a.cov, b.cov)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_pca_on_cuda_matches_cpu():
    det = PCADetector([f"c{i}" for i in range(6)]).fit(correlated(2000))
    w = sliding_windows(correlated(500, seed=5), 16, 4)
    cpu = det.score(w)
    gpu = det.to("cuda").score(w)
    assert det.device == "cuda"
    assert np.allclose(cpu.channel, gpu.channel, rtol=1e-4, atol=1e-5)



def test_auto_device_puts_only_networks_on_a_gpu(monkeypatch):
    """With a GPU present, ``auto`` leaves PCA, VAR and the tree models on the CPU (PCA gains nothing
    there, the others never use it) and moves networks; a device named outright is obeyed."""
    import torch

    from detectors.base import resolve_device
    from detectors.torch_base import TorchDetector

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    for name in artefacts.available():
        det = artefacts.create(name, ["a", "b"])
        det.net = None  # nothing to move: this machine has no GPU
        want = "cuda" if isinstance(det, TorchDetector) else "cpu"
        assert det.to("auto").device == want, name
    assert PCADetector(["a", "b"]).to("cuda").device == "cuda"

def marginal_outliers():
    """300 points with ten one-channel outliers of 6 sd (what tree ensembles on points can find)."""
    x = correlated(300, seed=7)
    rows = np.arange(15, 300, 30)
    x[rows, rows % 6] += 6 * x.std(0)[rows % 6]
    labels = np.zeros(300)
    labels[rows] = 1
    return x, rows, labels


def auc_pr(scores, labels):
    order = np.argsort(-scores)
    precision = np.cumsum(labels[order]) / np.arange(1, len(scores) + 1)
    return float((precision * labels[order]).sum() / labels.sum())


@pytest.mark.parametrize("name", ["iforest", "hst"])
def test_tree_baselines_flag_outliers_localise_and_round_trip(name, tmp_path):
    det = artefacts.create(name, [f"c{i}" for i in range(6)]).fit(correlated(2000), progress=False)
    assert abs(float(det.train_reconstruction.mean()) - 1.0) < 1e-3
    x, rows, labels = marginal_outliers()
    s = det.score(sliding_windows(x, 10, 10))
    # above 3x the base rate, the bar of every detector; one-channel outliers in 6 correlated
    # channels are hard for axis-aligned splits (measured: iforest 0.15, hst 0.21, base rate 0.033)
    assert auc_pr(s.reconstruction.reshape(-1), labels) > 3 * labels.mean()
    assert (s.channel.reshape(-1, 6)[rows].argmax(1) == rows % 6).all()
    loaded = artefacts.load(artefacts.save(det, tmp_path / name))
    w = sliding_windows(x, 10, 5)
    assert np.array_equal(det.score(w).reconstruction, loaded.score(w).reconstruction)


def test_pca_blames_a_single_faulty_channel_first_however_its_neighbours_are_reconstructed():
    """Reconstruction-based contributions (detectors/pca.py, ``_blame``): on random plants (two loads,
    8 channels, noise levels spanning two decades) a fault of 8 standard deviations on one channel is
    blamed on it. Each channel's own normalised residual, as PCA blamed before, puts a well-reconstructed
    neighbour first on some of them (seed 23 among these), as the fault's residual smears onto it."""
    for seed in range(40):
        rng = np.random.default_rng(seed)
        mix, noise = rng.normal(size=(2, 8)), np.exp(rng.uniform(np.log(0.01), 0, 8))
        x = rng.normal(size=(3000, 2)) @ mix + noise * rng.normal(size=(3000, 8))
        det = PCADetector([f"c{i}" for i in range(8)]).fit(x)
        live = rng.normal(size=(20, 2)) @ mix + noise * rng.normal(size=(20, 8))
        j = int(rng.integers(8))
        live[10, j] += 8 * x[:, j].std()
        assert det.score(live[None]).channel[0, 10].argmax() == j, seed


def test_isolation_forest_path_length_constant():
    from detectors.iforest import _c

    assert _c(np.array([2.0]))[0] == 1.0 and abs(_c(np.array([256.0]))[0] - 10.24) < 0.01  # Liu et al.


def test_coldstart_sees_a_shift_hidden_in_a_channels_range_through_its_neighbours():
    """Three channels share a load signal several times their noise: a shift of 5 noise stds on one
    is well within its range (a per-channel z-score misses it) but breaks its relation to the others."""
    rng = np.random.default_rng(1)
    load = np.cumsum(rng.normal(size=3000)) * 0.05 + np.sin(np.arange(3000) / 20)
    x = np.stack([5 * load + rng.normal(size=3000), 4 * load + rng.normal(size=3000),
                  -6 * load + rng.normal(size=3000), rng.normal(size=3000)], 1)
    x[2500:2520, 0] += 5.0
    assert 5.0 < x[:2500, 0].std()  # inside the channel's own range
    det = ColdStartDetector(4)
    point, channel = det.score_learn(x)
    normal = point[det.warmup:2500]
    assert point[2500:2520].mean() > np.quantile(normal, 0.99)
    assert (channel[2500:2520].mean(0).argmax()) == 0
    restored = ColdStartDetector(4).load_state(json.loads(json.dumps(det.to_state())))
    more = rng.normal(size=(50, 4))
    assert np.array_equal(det.score_learn(more)[1], restored.score_learn(more)[1])


def test_coldstart_of_a_wide_entity_scores_channels_alone_and_stays_small():
    det = ColdStartDetector(300)
    assert not det.full and det.warmup == 50
    det.score_learn(np.random.default_rng(0).normal(size=(60, 300)))
    assert len(json.dumps(ColdStartDetector(128).to_state())) < 250_000  # the widest full covariance


def _oscillating(n, seed=0):
    t = np.arange(n)
    rng = np.random.default_rng(seed)
    return np.stack([np.sin(t / 7), np.cos(t / 7), 0.5 * np.sin(t / 3)], 1) + 0.02 * rng.normal(size=(n, 3))


def test_var_forecast_sees_a_stuck_channel_that_reconstruction_finds_plausible(tmp_path):
    names = ["a", "b", "c"]
    train = _oscillating(4000)
    var = artefacts.create("var", names).fit(train, progress=False)
    pca = PCADetector(names).fit(train)
    live = _oscillating(400, seed=1)
    live[200:260, 2] = live[200, 2]  # channel c stops moving: each reading on its own is plausible
    score = {}
    for name, det in (("var", var), ("pca", pca)):
        s = det.score(live[None])
        normal = float(np.quantile(s.reconstruction[0, 20:190], 0.99))
        score[name] = float(np.median(s.reconstruction[0, 210:260])) / normal
    assert score["var"] > 3 and score["pca"] < 1, score
    s = var.score(live[None])
    assert (s.channel[0, 210:260].argmax(1) == 2).mean() > 0.9
    back = artefacts.load(artefacts.save(var, tmp_path / "var"))
    w = sliding_windows(live, 32, 16)
    assert np.array_equal(back.score(w).reconstruction, var.score(w).reconstruction)


def test_var_with_inputs_forecasts_the_measured_channels_from_the_commands_of_the_same_instant():
    rng = np.random.default_rng(0)
    cmd = (rng.random(3000) < 0.05).astype(np.float32)
    flow = 2.0 * cmd + 0.05 * rng.normal(size=3000)  # answers its command at once
    train = np.stack([flow, cmd], 1)
    det = artefacts.create("var", ["flow", "cmd"], inputs=["cmd"]).fit(train, progress=False)
    assert det.judged.tolist() == [True, False]
    live = train[:300].copy()
    live[150, 1], live[150, 0] = 1.0, 0.0  # told to open, did not
    s = det.score(live[None])
    assert np.all(s.channel[..., 1] == 0)
    assert s.reconstruction[0, 150] > 20 * np.quantile(s.reconstruction[0, 10:140], 0.99)
    with pytest.raises(ValueError, match="lags"):
        artefacts.create("var", ["a"], lags=40)


def test_knn_keeps_seeing_a_new_level_that_a_forecast_follows(tmp_path):
    """A telemetry value that keeps its rhythm at a new level: a forecast from its own past follows it
    after the onset, the distance to the nearest normal subsequence stays high for as long as it lasts."""
    def telemetry(n, seed):
        t = np.arange(n)
        return (np.sin(t / 7) + 0.02 * np.random.default_rng(seed).normal(size=n))[:, None]

    train = telemetry(4000, 0)
    knn = artefacts.create("knn", ["a"]).fit(train, progress=False)
    var = artefacts.create("var", ["a"]).fit(train, progress=False)
    live = telemetry(400, 1)
    live[200:300, 0] += 1.0  # half the amplitude's range up, for 100 readings
    held = {}
    for name, det in (("knn", knn), ("var", var)):
        s = det.score(live[None]).reconstruction[0]
        normal = float(np.quantile(s[20:190], 0.99))
        assert s[200:206].max() > 50 * normal, name  # both see the onset
        held[name] = float(np.median(s[230:300])) / float(s[200:206].max())  # later, against the onset
    assert held["knn"] > 0.5 and held["var"] < 0.1, held
    # training scores are matched out of sample, so about 1, like the other models' normalisation
    assert 0.5 < float(np.median(knn.train_reconstruction)) < 1.5
    back = artefacts.load(artefacts.save(knn, tmp_path / "knn"))
    w = sliding_windows(live, 32, 16)
    assert np.array_equal(back.score(w).reconstruction, knn.score(w).reconstruction)


def test_knn_blames_the_channel_whose_course_left_normal_operation():
    names = ["a", "b", "c"]
    knn = artefacts.create("knn", names).fit(_oscillating(4000), progress=False)
    live = _oscillating(400, seed=1)
    live[200:300, 2] = 1.5  # channel c (amplitude 0.5) leaves its range and stays there, flat
    s = knn.score(live[None])
    assert np.median(s.reconstruction[0, 230:300]) > 10 * np.quantile(s.reconstruction[0, 20:190], 0.99)
    assert (s.channel[0, 230:300].argmax(1) == 2).all()


def test_knn_judges_only_the_measured_channels_and_bounds_its_reference(monkeypatch):
    rng = np.random.default_rng(0)
    cmd = (rng.random(3000) < 0.05).astype(np.float32)
    level = np.sin(np.arange(3000) / 9) + 0.05 * rng.normal(size=3000)
    det = artefacts.create("knn", ["level", "cmd"], inputs=["cmd"], max_reference=500).fit(
        np.stack([level, cmd], 1), progress=False)
    assert det.judged.tolist() == [True, False] and det.reference.shape == (500, 16, 1)
    live = np.stack([level[:300], np.zeros(300, np.float32)], 1)
    live[100:140, 1] = 1.0  # a command held on as never in training: operation, not a fault
    s = det.score(live[None])
    assert np.all(s.channel[..., 1] == 0)
    assert s.reconstruction[0, 100:140].max() < 3 * np.quantile(s.reconstruction[0, 16:100], 0.99)
    with pytest.raises(ValueError, match="length"):
        artefacts.create("knn", ["a"], length=32)
    # a wide entity keeps fewer subsequences, not more memory
    import detectors.knn
    monkeypatch.setattr(detectors.knn, "REFERENCE_VALUES", 16 * 3 * 100)
    wide = artefacts.create("knn", ["a", "b", "c"]).fit(_oscillating(3000), progress=False)
    assert wide.reference.shape == (100, 16, 3)


@pytest.mark.parametrize("name", ["pca", "var", "knn", "iforest", "hst"])
def test_a_model_refuses_training_data_it_cannot_learn_from(name):
    train = _oscillating(600)
    det = artefacts.create(name, ["a", "b", "c"])
    with pytest.raises(ValueError, match="expected train"):
        det.fit(train[:, :2], progress=False)
    train[100, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        det.fit(train, progress=False)
