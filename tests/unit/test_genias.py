"""GenIAS-specific checks: generated anomalies are realistic yet separable, the channel mask is exact,
the losses behave as the paper says, and generation is reproducible."""
import math

import numpy as np
import pytest
import torch

from detectors.base import sliding_windows
from detectors.genias import GenIAS, compact_kl, deviation_patch, perturb_loss, zero_perturbation_loss

from ..helpers import correlated

W = 16
CFG = {"window": W, "stride": 4, "epochs": 5, "batch_size": 32}


@pytest.fixture(scope="module")
def model():
    train = correlated(1600)
    det = GenIAS([f"c{i}" for i in range(6)], **CFG).fit(train, progress=False)
    return det, np.array(sliding_windows(train, W, 4))


def nearest(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distance from each window of a to its nearest window in b."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    d2 = (a ** 2).sum(1)[:, None] + (b ** 2).sum(1)[None] - 2 * a @ b.T
    return np.sqrt(np.maximum(d2.min(1), 0))


def realism_and_separability(det, train_w, seed=0):
    held = np.array(sliding_windows(correlated(1000, seed=7), W, 4))
    gen, _ = det.generate(train_w[::3], seed=seed)
    nn_normal = float(np.median(nearest(held, train_w)))  # typical normal -> nearest normal distance
    nn_gen = float(np.median(nearest(gen, train_w)))
    thr = np.quantile(det.score(train_w).divergence[:, 0], 0.99)
    flag_gen = float((det.score(gen).divergence[:, 0] > thr).mean())
    flag_held = float((det.score(held).divergence[:, 0] > thr).mean())
    return nn_gen, nn_normal, flag_gen, flag_held


def test_generated_close_to_normal_yet_separable(model):
    det, train_w = model
    nn_gen, nn_normal, flag_gen, flag_held = realism_and_separability(det, train_w)
    print(f"\n(a) median NN distance generated->train {nn_gen:.3f}, held-out normal->train {nn_normal:.3f}, "
          f"ratio {nn_gen / nn_normal:.3f}\n(b) flagged above train p99: generated {flag_gen:.3f}, "
          f"held-out normal {flag_held:.3f}")
    assert nn_gen < 2.0 * nn_normal  # realistic: as close to normal data as normal data is to itself
    assert flag_gen > 0.5 and flag_held < 0.2 and flag_gen > 5 * flag_held  # yet separable


def test_channel_mask_marks_exactly_the_changed_channels(model):
    det, train_w = model
    raw = train_w[:64] * 3.0 + 10.0  # raw units far from standardised ones
    gen, mask = det.generate(raw, seed=1)
    assert gen.shape == raw.shape and mask.shape == (64, 6) and mask.dtype == bool
    assert mask.any(1).all()  # every generated window is changed somewhere
    changed = (gen != raw).any(1)
    assert np.array_equal(changed, mask)
    assert np.array_equal(gen[~mask[:, None, :].repeat(W, 1)], raw[~mask[:, None, :].repeat(W, 1)])
    assert np.abs(gen - raw).max() < 50  # still in the raw units, not standardised ones


def test_generate_is_reproducible_with_a_seed(model):
    det, train_w = model
    a, ma = det.generate(train_w[:32], seed=3)
    b, mb = det.generate(train_w[:32], seed=3)
    c, _ = det.generate(train_w[:32], seed=4)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    assert not np.array_equal(a, c)


def test_psi_is_a_learned_parameter_above_one(model):
    det, train_w = model
    gen = det.net.generator
    assert any(p is gen.rho for p in det.net.parameters())  # saved with the net, updated by Adam
    assert (gen.psi.detach() > 1).all()
    # psi only gets a gradient from the perturbation loss; when X~ is not distinct enough and still
    # realistic (d(X,X^) small), the margin term must push psi up (d loss / d rho < 0)
    x = torch.from_numpy(det._standardise(train_w[:32]))
    gen.train()
    torch.manual_seed(0)
    x_hat, x_til, _, _ = gen(x)
    gen.zero_grad()
    perturb_loss(x, x, x_til, 10.0, 1e6).backward()  # hinge 1 active, hinge 2 inactive
    gen.eval()
    assert gen.rho.grad is not None and float(gen.rho.grad.sum()) < 0


def test_zero_perturbation_loss():
    x = torch.randn(4, W, 3)
    # no all-zero channel: nothing to perturb, the loss is exactly zero
    assert zero_perturbation_loss(x, x + 1.0).item() == 0.0
    x[:2, :, 1] = 0.0
    # zero perturbation of an all-zero channel gives the maximum 1 (Eq. 4 pushes X~ away from 0 there)
    assert zero_perturbation_loss(x, x.clone()).item() == pytest.approx(1.0)
    small, large = x.clone(), x.clone()
    small[:, :, 1] += 0.5
    large[:, :, 1] += 2.0
    assert zero_perturbation_loss(x, large) < zero_perturbation_loss(x, small) < 1.0
    assert zero_perturbation_loss(x, small).item() == pytest.approx(1 / 1.25)


def test_min_max_margin_and_compact_kl():
    x = torch.zeros(1, 10, 2)
    x_hat = torch.full_like(x, math.sqrt(0.02))      # d(X, X^) = 0.02
    ok = torch.full_like(x, math.sqrt(0.15))         # 0.15 in [0.02 + 0.1, 0.2]: no loss
    close = torch.full_like(x, math.sqrt(0.05))      # not distinct enough
    far = torch.full_like(x, math.sqrt(0.5))         # unrealistic
    assert perturb_loss(x, x_hat, ok, 0.1, 0.2).item() == pytest.approx(0.0, abs=1e-7)
    assert perturb_loss(x, x_hat, close, 0.1, 0.2).item() == pytest.approx(0.07, abs=1e-6)
    assert perturb_loss(x, x_hat, far, 0.1, 0.2).item() == pytest.approx(0.3, abs=1e-6)
    logvar = torch.full((3, 5), math.log(0.25))
    assert compact_kl(torch.zeros(3, 5), logvar, 0.5).item() == pytest.approx(0.0, abs=1e-6)
    assert compact_kl(torch.zeros(3, 5), torch.zeros(3, 5), 0.5).item() > 0  # unit variance is penalised


def test_deviation_patch_swaps_whole_channels_and_falls_back_to_one():
    x = torch.randn(2, W, 4)
    x_til = x.clone()
    x_til[0, :, 2] += 3.0                      # window 0: one channel deviates strongly
    x_til[1] += 0.01 * torch.randn(W, 4)       # window 1: nothing passes tau -> best channel only
    out, mask = deviation_patch(x, x_til, tau=0.1)
    assert mask[0].tolist() == [False, False, True, False]
    assert int(mask[1].sum()) == 1
    assert torch.equal(out[0, :, 2], x_til[0, :, 2]) and torch.equal(out[0, :, :2], x[0, :, :2])


def test_deviation_patch_keeps_only_the_most_deviating_channels():
    x = torch.randn(1, W, 5)
    x_til = x.clone()
    for d, shift in enumerate([1.0, 4.0, 2.0, 3.0, 0.0]):
        x_til[0, :, d] += shift
    _, mask = deviation_patch(x, x_til, tau=0.0)
    assert mask[0].tolist() == [True, True, True, True, False]  # channel 4 is unchanged: not passed
    _, mask = deviation_patch(x, x_til, tau=0.0, max_channels=2)
    amp = (x.amax(1) - x.amin(1))[0]
    ratio = torch.tensor([1.0, 16.0, 4.0, 9.0, 0.0]) / (amp + 1e-6)
    assert set(torch.nonzero(mask[0]).flatten().tolist()) == set(ratio.topk(2).indices.tolist())
