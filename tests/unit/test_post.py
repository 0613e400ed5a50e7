"""POST-specific checks: kNN prior, stop-gradients and signs of the minimax phases, graph step, prox, localisation."""
import numpy as np
import pytest
import torch

from detectors import artefacts
from detectors.base import sliding_windows
from detectors.post import POST, feature_smoothing, kl, knn_adjacency_logits, prox_l1_on_sigmoid

from ..helpers import correlated

TINY = {"epochs": 2, "window": 16, "stride": 4, "batch_size": 32, "d_model": 16, "heads": 2}
CH = [f"c{i}" for i in range(6)]



@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return POST(CH, **{**TINY, "epochs": 4, "graph_start_epoch": 0}).fit(correlated(1500), progress=False)


def _untrained(**over):
    det = POST(CH, **{**TINY, **over})
    det._adj_init = knn_adjacency_logits(correlated(500), 2)
    torch.manual_seed(0)
    det.net = det.build()
    return det


def _batch(seed=5):
    return torch.from_numpy(np.array(sliding_windows(correlated(200, seed=seed), 16, 8)))


def test_knn_prior_has_k_neighbours_and_finds_the_nearest_channels():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(400, 3))
    # channels 0/3, 1/4 and 2/5 are near-duplicates: each is the other's nearest neighbour
    z = np.concatenate([base, base + 0.01 * rng.normal(size=base.shape)], axis=1)
    adj = knn_adjacency_logits(z, 1)
    assert set(np.unique(adj)) == {-1.0, 1.0}
    assert (np.diag(adj) == 1).all()
    assert ((adj == 1).sum(1) == 2).all()  # self + k
    for i in range(3):
        assert adj[i, i + 3] == 1 and adj[i + 3, i] == 1
    adj3 = knn_adjacency_logits(z, 3)
    assert ((adj3 == 1).sum(1) == 4).all()
    assert ((knn_adjacency_logits(z, 99) == 1).sum(1) == 6).all()  # k capped at C - 1


def test_prior_is_stored_in_the_state_dict_and_survives_save_load(trained, tmp_path):
    g0 = trained.net.layers[0].saga.g.detach().numpy()
    assert g0.shape == (6, 6)
    loaded = artefacts.load(artefacts.save(trained, tmp_path / "m"))
    assert np.array_equal(loaded.net.layers[0].saga.g.detach().numpy(), g0)
    assert np.array_equal(loaded.net.s_std.numpy(), trained.net.s_std.numpy())
    assert not np.allclose(trained.net.s_std.numpy(), 1.0)  # spatial stats were set on training windows


def test_association_discrepancies_are_non_negative(trained):
    with torch.no_grad():
        comp = trained.components(_batch())
        t = trained.terms(_batch())
    assert (comp["ass"] >= -1e-5).all() and (comp["raw_s"] <= 1e-5).all()
    for key in ("series", "prior", "series_s", "prior_s"):
        assert float(t[key]) >= -1e-5
    p = torch.softmax(torch.randn(4, 7), -1)
    assert torch.allclose(kl(p, p), torch.zeros(4), atol=1e-6)


def _grad(det, term, param):
    det.net.zero_grad(set_to_none=True)
    det.terms(_batch())[term].backward()
    g = param.grad
    return 0.0 if g is None else float(g.abs().sum())


def test_stop_gradients_route_each_phase_to_its_own_side():
    det = _untrained()
    # last layer: earlier layers legitimately reach later layers' priors through the residual stream
    tasa, saga = det.net.layers[-1].tasa, det.net.layers[-1].saga
    # temporal: the maximise term moves only the series (Q), the minimise term only the prior (sigma)
    assert _grad(det, "series", tasa.q.weight) > 0 and _grad(det, "series", tasa.sigma.weight) == 0
    assert _grad(det, "prior", tasa.sigma.weight) > 0 and _grad(det, "prior", tasa.q.weight) == 0
    # spatial: the maximise term moves only the observation (theta), the minimise term only the prior
    assert _grad(det, "series_s", saga.theta_r) > 0 and _grad(det, "series_s", saga.tau_projection.weight) == 0
    assert _grad(det, "prior_s", saga.tau_projection.weight) > 0 and _grad(det, "prior_s", saga.theta_r) == 0
    assert _grad(det, "prior_s", saga.g) > 0


def _step_and_measure(det, phase, params, measure, lr=1e-3):
    det.net.zero_grad(set_to_none=True)
    loss1, loss2 = det.phase_losses(det.terms(_batch()))
    (loss1 if phase == 1 else loss2).backward()
    with torch.no_grad():
        before = float(det.terms(_batch())[measure])
        for p in params:
            p -= lr * p.grad / (p.grad.norm() + 1e-12)
        after = float(det.terms(_batch())[measure])
    return before, after


def test_minimax_phases_have_the_right_signs():
    det = _untrained(k=1e3, k1=1e3, triplet=0.0)
    layer = det.net.layers[0]
    # maximise phase (loss1): the series association moves AWAY from the Gaussian prior
    b, a = _step_and_measure(det, 1, [layer.tasa.q.weight, layer.tasa.k.weight], "series", lr=0.05)
    assert a > b
    # minimise phase (loss2): the prior moves TOWARD the series
    b, a = _step_and_measure(det, 2, [layer.tasa.sigma.weight, layer.tasa.sigma.bias], "prior", lr=0.05)
    assert a < b
    # spatial maximise: the GAT observation moves away from the structural prior
    b, a = _step_and_measure(det, 1, [layer.saga.theta_r, layer.saga.theta_c], "series_s", lr=0.05)
    assert a > b
    # spatial minimise: the structural prior (via tau) moves toward the observation
    b, a = _step_and_measure(det, 2, [layer.saga.tau_projection.weight, layer.saga.tau_projection.bias],
                             "prior_s", lr=0.05)
    assert a < b


def test_prox_shrinks_off_diagonal_edges_only_and_solves_the_prox_problem():
    g = torch.tensor([[1.0, 1.0, -1.0], [1.0, 1.0, 0.2], [-1.0, -3.0, 1.0]])
    alpha = 0.7
    x = prox_l1_on_sigmoid(g, alpha)
    off = ~torch.eye(3, dtype=torch.bool)
    assert torch.equal(torch.diag(x), torch.diag(g))
    assert (x[off] < g[off]).all()
    # with enough fixed-point iterations x minimises 1/2 (x - g)^2 + alpha * sigmoid(x) off the diagonal
    x = prox_l1_on_sigmoid(g, alpha, iters=100)
    s = torch.sigmoid(x)
    assert torch.allclose((x - g + alpha * s * (1 - s))[off], torch.zeros(6), atol=1e-5)
    # repeated proximal steps drive an edge that nothing supports towards zero weight
    w = g.clone()
    for _ in range(200):
        w = prox_l1_on_sigmoid(w, alpha)
    assert (torch.sigmoid(w)[off] < 0.05).all()


def test_graph_step_moves_only_the_adjacency():
    det = _untrained()
    _, sgd = det.optimisers()
    others = {n: p.detach().clone() for n, p in det.net.named_parameters() if not n.endswith(".g")}
    gs = [g.detach().clone() for g in det.net.graph_params()]
    det.graph_step(_batch(), sgd)
    assert all(not torch.equal(a, b) for a, b in zip(gs, det.net.graph_params()))
    assert all(torch.equal(p, others[n]) for n, p in det.net.named_parameters() if not n.endswith(".g"))


def test_laplacian_smoothness_prefers_graphs_linking_similar_channels():
    t = torch.linspace(0, 6, 32)
    x = torch.stack([torch.sin(t), torch.sin(t), torch.cos(3 * t)], 1)[None]  # [1, L, 3]
    linked_same = torch.tensor([[1.0, 1, 0], [1, 1, 0], [0, 0, 1]])
    linked_diff = torch.tensor([[1.0, 0, 1], [0, 1, 0], [1, 0, 1]])
    assert feature_smoothing(linked_same, x) < feature_smoothing(linked_diff, x)


def test_localisation_ranks_the_injected_channel_first(trained):
    for channel in (1, 2, 4):
        x = correlated(400, seed=7)
        x[200:216, channel] += 3.0
        s = trained.score(sliding_windows(x, 16, 16))
        ch = s.channel.reshape(-1, 6)[200:216]
        assert ch.mean(0).argmax() == channel  # the segment's channel ranking puts it first
        assert (ch.argmax(1) == channel).mean() >= 0.5  # and most of its points do too
        rec = s.reconstruction.reshape(-1)
        assert rec[200:216].mean() > 2 * np.median(rec)


def test_scores_are_deterministic(trained):
    w = sliding_windows(correlated(100, seed=3), 16, 4)
    a, b = trained.score(w), trained.score(w)
    assert np.array_equal(a.channel, b.channel) and np.array_equal(a.divergence, b.divergence)
    assert np.isfinite(a.divergence).all() and (a.divergence >= 0).all()
