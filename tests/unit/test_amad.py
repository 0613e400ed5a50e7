"""AMAD-specific checks: AutoMask frequency, attention mixup, Max-Min directions, contrastive loss, score."""
import numpy as np
import pytest
import torch

from detectors.amad import AMAD, AutoMaskBlock, cad, contrastive, js_rows
from detectors.base import sliding_windows

from ..helpers import correlated

TINY = {"epochs": 1, "window": 16, "stride": 4, "batch_size": 32, "d_model": 32, "heads": 4, "layers": 2,
        "d_ff": 32}



def make(**over):
    det = AMAD([f"c{i}" for i in range(6)], **{**TINY, **over})
    torch.manual_seed(0)
    det.net = det.build()
    return det


def batch(n=8, seed=0):
    return torch.from_numpy(np.array(sliding_windows(correlated(16 * n, seed=seed), 16, 16)))


def block(alpha=0.9, theta="scalar"):
    torch.manual_seed(0)
    return AutoMaskBlock(32, 4, 16, alpha=alpha, theta=theta, theta_value=1.0, scale="head")


def test_omega_is_learnable_and_changes_only_automask_attention():
    blk = block()
    x = torch.randn(3, 16, 32)
    assert blk.omega.requires_grad and blk.omega.shape == (4,)
    _, a0, s0 = blk(x)
    with torch.no_grad():
        blk.omega.add_(0.7)
    _, a1, s1 = blk(x)
    assert torch.allclose(s0, s1)  # self-attention has no rotary mask
    assert not torch.allclose(a0, a1, atol=1e-4)  # AutoMask attention depends on omega
    # and omega gets a gradient from the training objective
    det = make()
    loss, _ = det.loss(batch())
    loss.backward()
    assert all(l.attn.omega.grad is not None and l.attn.omega.grad.abs().sum() > 0 for l in det.net.layers)


def test_automask_scores_depend_on_relative_position_only():
    # RoPE property: with omega != 0 the rotated q.k depends on (n - m), not on absolute positions
    blk = block(theta="rope")
    q = torch.randn(1, 4, 1, 8).expand(1, 4, 16, 8)
    k = torch.randn(1, 4, 1, 8).expand(1, 4, 16, 8)
    from detectors.amad import rotate
    phi = blk.angles(16)
    g = (rotate(q, phi) @ rotate(k, phi).transpose(-1, -2))[0]
    assert torch.allclose(g[:, 3, 1], g[:, 10, 8], atol=1e-4) and torch.allclose(g[:, 0, 5], g[:, 7, 12], atol=1e-4)


def test_mixup_is_a_convex_combination_of_the_two_attentions():
    x = torch.randn(2, 16, 32)
    outs = {}
    for alpha in (0.0, 0.3, 1.0):
        blk = block(alpha)
        outs[alpha], a, s = blk(x)
    assert torch.allclose(a.sum(-1), torch.ones(2, 4, 16), atol=1e-5)
    assert torch.allclose(s.sum(-1), torch.ones(2, 4, 16), atol=1e-5)
    # o(M V) is affine in M, so the output at alpha is the same convex combination of the pure outputs
    assert torch.allclose(outs[0.3], 0.3 * outs[1.0] + 0.7 * outs[0.0], atol=1e-5)
    assert not torch.allclose(outs[1.0], outs[0.0], atol=1e-3)


def test_stop_gradients_route_min_to_A_and_max_to_S():
    torch.manual_seed(1)
    a = torch.softmax(torch.randn(2, 4, 8, 8), -1).requires_grad_()
    s = torch.softmax(torch.randn(2, 4, 8, 8), -1).requires_grad_()
    ga, gs = torch.autograd.grad(cad([a], [s], detach="S").sum(), (a, s), allow_unused=True)
    assert gs is None and ga.abs().sum() > 0
    ga, gs = torch.autograd.grad(cad([a], [s], detach="A").sum(), (a, s), allow_unused=True)
    assert ga is None and gs.abs().sum() > 0


def test_max_min_phases_move_cad_in_their_directions():
    x = batch()

    def cad_now(det):
        with torch.no_grad():
            _, As, Ss = det.net(x)
            return float(cad(As, Ss).mean())

    def after_five_steps(objective):
        det = make()
        opt = torch.optim.SGD(det.net.parameters(), lr=0.5)
        before = cad_now(det)
        for _ in range(5):
            opt.zero_grad()
            _, As, Ss = det.net(x)
            objective(As, Ss).backward()
            opt.step()
        return before, cad_now(det)

    # Min phase (CAD term only, lam*CAD(A, sg S)) lowers the divergence
    before, after = after_five_steps(lambda As, Ss: cad(As, Ss, detach="S").mean())
    assert after < before
    # Max phase (-lam*CAD(sg A, S)) raises it
    before, after = after_five_steps(lambda As, Ss: -cad(As, Ss, detach="A").mean())
    assert after > before


def test_alternate_phases_update_only_their_attention():
    det = make(maxmin="alternate")
    opt = det.optimisers()[0]
    x = batch()
    snap = lambda ps: [p.detach().clone() for p in ps]  # noqa: E731
    om, qk = snap(det.automask_params()), snap(det.selfattn_params())
    det.min_step(x, opt)
    assert all(torch.equal(a, b) for a, b in zip(qk, det.selfattn_params()))
    assert any(not torch.equal(a, b) for a, b in zip(om, det.automask_params()))
    om, qk = snap(det.automask_params()), snap(det.selfattn_params())
    det.max_step(x, opt)
    assert all(torch.equal(a, b) for a, b in zip(om, det.automask_params()))
    assert any(not torch.equal(a, b) for a, b in zip(qk, det.selfattn_params()))


def test_contrastive_is_lower_for_matching_views_than_shuffled():
    torch.manual_seed(2)
    s = torch.softmax(3 * torch.randn(8, 4, 16, 16), -1)
    a = torch.softmax(torch.log(s + 1e-4) + 0.3 * torch.randn_like(s), -1)  # a noisy local view of the same window
    perm = torch.roll(torch.arange(8), 1)
    assert float(contrastive([a], [s], 0.35)) < float(contrastive([a[perm]], [s], 0.35))
    # divided by B on top of CE's batch mean (Fig.5), summed over layers
    assert torch.allclose(contrastive([a, a], [s, s], 0.35), 2 * contrastive([a], [s], 0.35))


def test_js_is_zero_for_equal_maps_and_bounded():
    p = torch.softmax(torch.randn(3, 5, 5), -1)
    q = torch.zeros(3, 5, 5)
    q[..., 0] = 1
    assert torch.allclose(js_rows(p, p), torch.zeros(3, 5), atol=1e-6)
    assert float(js_rows(p, q).max()) <= np.log(2) + 1e-6


def test_score_is_softmax_of_negative_cad_and_deterministic():
    det = make()
    det.net.eval()
    x = batch()
    with torch.no_grad():
        err1, w1 = det.infer(x)
        err2, w2 = det.infer(x)
        _, As, Ss = det.net(x)
    assert torch.equal(err1, err2) and torch.equal(w1, w2)
    assert torch.allclose(w1.sum(-1), torch.full((x.shape[0],), 16.0), atol=1e-4)
    c = cad(As, Ss)  # lower CAD -> larger weight, within each window
    assert torch.equal(torch.argmax(w1, -1), torch.argmin(c, -1))


@pytest.mark.parametrize("over", [{"maxmin": "alternate", "theta": "rope", "scale": "literal", "ffn": "single"}])
def test_variants_fit(over):
    det = AMAD([f"c{i}" for i in range(6)], **{**TINY, **over}).fit(correlated(300), progress=False)
    s = det.score(sliding_windows(correlated(64, seed=1), 16, 16))
    assert np.isfinite(s.channel).all() and np.isfinite(s.divergence).all()


def test_learning_rate_decays_once_per_epoch_not_per_step():
    det = make(lr=1e-3, lr_decay=0.5, epochs=2)
    det.fit(correlated(400), progress=False)
    steps = det.steps_per_epoch
    assert steps > 1 and det._step == 2 * steps
    (opt,) = det.optimisers()
    x = torch.from_numpy(np.array(sliding_windows(correlated(64, seed=3), 16, 16)))
    for _ in range(steps - 1):
        det.train_step(x, [opt])
    assert opt.param_groups[0]["lr"] == 1e-3  # still the first epoch
    det.train_step(x, [opt])
    assert opt.param_groups[0]["lr"] == 5e-4
