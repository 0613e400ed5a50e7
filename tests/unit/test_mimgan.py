"""MIM-GAN specifics: the exponential MIM loss, the generator's sign, batched latent inversion, determinism."""
import math

import numpy as np
import pytest
import torch

from detectors.base import sliding_windows
from detectors.mimgan import MIMGAN, mim_d_loss, mim_g_loss

from ..helpers import correlated

CH = [f"c{i}" for i in range(4)]
TINY = {"window": 8, "stride": 4, "epochs": 1, "batch_size": 32, "g_hidden": 16, "d_hidden": 16,
        "latent": 5, "inv_steps": 30, "inv_lr": 0.1}



def built(**overrides) -> MIMGAN:
    det = MIMGAN(CH, **{**TINY, **overrides})
    torch.manual_seed(0)
    det.net = det.build()
    return det


@pytest.fixture(scope="module")
def fitted():
    return MIMGAN(CH, **TINY).fit(correlated(400, c=4), progress=False)


def test_mim_losses_match_hand_computed_values():
    d_real = torch.tensor([[0.2, 0.9], [0.5, 1.0]])
    d_fake = torch.tensor([[0.1, 0.5], [0.0, 0.3]])
    real_term = (math.exp(0.8) + math.exp(0.1) + math.exp(0.5) + math.exp(0.0)) / 4
    fake_term = (math.exp(0.1) + math.exp(0.5) + math.exp(0.0) + math.exp(0.3)) / 4
    assert mim_d_loss(d_real, d_fake).item() == pytest.approx(real_term + fake_term, rel=1e-6)
    assert mim_g_loss(d_fake).item() == pytest.approx(-fake_term, rel=1e-6)  # paper: G maximises
    assert mim_g_loss(d_fake, g_sign=1.0).item() == pytest.approx(fake_term, rel=1e-6)  # released code
    # Perfect D (real -> 1, fake -> 0) reaches the minimum 2; the equilibrium D = 1/2 gives 2*sqrt(e).
    assert mim_d_loss(torch.ones(3), torch.zeros(3)).item() == pytest.approx(2.0)
    half = torch.full((3,), 0.5)
    assert mim_d_loss(half, half).item() == pytest.approx(2 * math.sqrt(math.e), rel=1e-6)
    # Gradients: d/dD(x) = -exp(1-D)/n, d/dD(G(z)) = +exp(D)/n.
    r = d_real.clone().requires_grad_(True)
    f = d_fake.clone().requires_grad_(True)
    mim_d_loss(r, f).backward()
    assert torch.allclose(r.grad, -torch.exp(1 - d_real) / 4)
    assert torch.allclose(f.grad, torch.exp(d_fake) / 4)


@pytest.mark.parametrize("g_sign,direction", [(-1.0, 1), (1.0, -1)])
def test_generator_sign(g_sign, direction):
    """Minimising the default generator loss raises D(G(z)); the code's sign (+1) would lower it."""
    det = built(g_sign=g_sign)
    G, D = det.net.generator, det.net.discriminator
    z = torch.randn(16, 8, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = D(G(z)).mean().item()
    opt = torch.optim.Adam(G.parameters(), lr=1e-2)
    d_before = [p.detach().clone() for p in D.parameters()]
    for _ in range(20):
        opt.zero_grad()
        mim_g_loss(D(G(z)), det.cfg["g_sign"]).backward()
        opt.step()
    with torch.no_grad():
        after = D(G(z)).mean().item()
    assert direction * (after - before) > 0.02, (before, after)
    assert all(torch.equal(a, b) for a, b in zip(d_before, D.parameters()))


def test_train_step_updates_both_networks_with_opposite_goals():
    det = built()
    x = torch.from_numpy(np.array(sliding_windows(correlated(200, c=4), 8, 4)))[:32]
    opts = det.optimisers()
    g0 = [p.detach().clone() for p in det.net.generator.parameters()]
    d0 = [p.detach().clone() for p in det.net.discriminator.parameters()]
    logs = det.train_step(x, opts)
    assert set(logs) >= {"loss_d", "loss_g", "d_real", "d_fake"}
    assert all(np.isfinite(v) for v in logs.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, det.net.generator.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, det.net.discriminator.parameters()))
    assert all(p.requires_grad for p in det.net.discriminator.parameters())  # restored after G steps


def test_batched_inversion_reduces_error_and_leaves_weights_untouched():
    det = built()
    det.net.eval()
    G = det.net.generator
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # realisable targets plus a little noise, and plain data windows
        target = G(torch.randn(24, 8, 5, generator=gen)) + 0.01 * torch.randn(24, 8, 4, generator=gen)
    data = torch.from_numpy(np.array(sliding_windows(correlated(200, c=4, seed=5), 8, 8)))[:24]
    x = torch.cat([target, data])
    state = {k: v.clone() for k, v in det.net.state_dict().items()}
    with torch.no_grad():  # as the harness calls it
        z = det.invert(x)
        z0 = det.net.z_init.expand(len(x), -1, -1)
        err0 = ((G(z0) - x) ** 2).flatten(1).mean(1)
        err1 = ((G(z) - x) ** 2).flatten(1).mean(1)
    assert z.shape == (48, 8, 5) and not z.requires_grad
    assert (err1 < err0).all(), (err0, err1)
    assert err1[:24].mean() < 0.2 * err0[:24].mean()  # realisable targets: nearly recovered
    assert all(torch.equal(state[k], v) for k, v in det.net.state_dict().items())
    assert all(p.grad is None for p in det.net.parameters())
    # One window's z does not depend on the other windows of the batch.
    with torch.no_grad():
        z_alone = det.invert(x[5:6])
    assert torch.allclose(z_alone, z[5:6], atol=1e-5)


def test_inference_is_deterministic(fitted):
    w = sliding_windows(correlated(120, c=4, seed=7), 8, 4)
    a, b = fitted.score(w), fitted.score(w)
    assert np.array_equal(a.channel, b.channel) and np.array_equal(a.divergence, b.divergence)
    assert (a.channel >= 0).all() and (a.divergence >= 0).all()
    sub = fitted.score(w[3:5])
    np.testing.assert_allclose(sub.channel, a.channel[3:5], rtol=1e-4, atol=1e-5)


def test_divergence_is_one_minus_discriminator(fitted):
    w = sliding_windows(correlated(60, c=4, seed=8), 8, 8)
    x = torch.from_numpy(fitted._standardise(w))
    with torch.no_grad():
        _, div = fitted.infer(x)
        d = fitted.net.discriminator(x)
    assert torch.allclose(div, 1 - d)
    assert div.shape == w.shape[:2]
