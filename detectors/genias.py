"""GenIAS: a TCN-VAE that generates realistic anomalies by inflating the latent spread, plus a detector
trained with those anomalies as negatives (Darban et al., arXiv 2502.08262).

Stage 1 (generator): a TCN encoder gives mu, log sigma^2 of an L-dim latent; a transpose-conv decoder
maps z = mu + sigma*eps to X^ and z~ = mu + psi*sigma*eps' (learned psi > 1, Eq. 1) to X~. Losses (Eq. 6):
alpha*recon + beta*min-max margin triplet + gamma*zero-perturbation + zeta*compact KL (prior std 0.5).
Deviation-based patching (Alg. 2) swaps in X~ only on the channels whose mean squared deviation exceeds
tau * amplitude, which gives a channel mask.

Stage 2 (detector): the CARLA ResNet-TS backbone with a binary head, trained with binary cross-entropy on
normal windows (0) against freshly generated, patched anomalies of the same windows (1). See
docs/models/genias.md for why this replaces CARLA's two-stage clustering.

Scores: per-channel error = the VAE's squared reconstruction error from the latent mean (deterministic);
divergence = softplus(detector logit), broadcast over the window's points. The stream sums them.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .torch_base import TorchDetector


# ---- generator -------------------------------------------------------------------------------
class _TCNBlock(nn.Module):
    """Residual TCN block (Bai et al. 2018): 2x [dilated conv k -> ReLU -> dropout] + 1x1 skip."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        pad = dilation * (kernel - 1) // 2  # non-causal 'same' padding: the whole window is seen
        self.net = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel, padding=pad, dilation=dilation), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(c_out, c_out, kernel, padding=pad, dilation=dilation), nn.ReLU(), nn.Dropout(dropout))
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return F.relu(self.net(x) + self.skip(x))


class _Generator(nn.Module):
    def __init__(self, channels: int, window: int, hidden: int, latent: int, levels: int, kernel: int,
                 dropout: float, psi_init: float):
        super().__init__()
        self.window, self.hidden = window, hidden
        blocks, c = [], channels
        for i in range(levels):
            blocks.append(_TCNBlock(c, hidden, kernel, 2 ** i, dropout))
            c = hidden
        self.tcn = nn.Sequential(*blocks)
        self.mu = nn.Linear(hidden * window, latent)
        self.logvar = nn.Linear(hidden * window, latent)
        # psi = 1 + softplus(rho) > 1, one scale per latent dimension, initialised at psi_init
        self.rho = nn.Parameter(torch.full((latent,), math.log(math.expm1(psi_init - 1.0))))
        self.t4 = math.ceil(window / 4)
        self.expand = nn.Linear(latent, hidden * self.t4)
        self.up = nn.Sequential(
            nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.ConvTranspose1d(hidden, hidden, 4, stride=2, padding=1), nn.ReLU(), nn.Dropout(dropout),
            nn.Conv1d(hidden, channels, 3, padding=1))

    @property
    def psi(self) -> torch.Tensor:
        return 1.0 + F.softplus(self.rho)

    def encode(self, x):  # x [B, W, C]
        h = self.tcn(x.transpose(1, 2)).flatten(1)
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)

    def decode(self, z):
        h = self.expand(z).view(len(z), self.hidden, self.t4)
        return self.up(h)[:, :, :self.window].transpose(1, 2)

    def forward(self, x, generator: torch.Generator | None = None):
        mu, logvar = self.encode(x)
        sig = torch.exp(0.5 * logvar)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        eps2 = torch.randn(mu.shape, generator=generator, device=mu.device)  # independent eps for z~
        x_hat = self.decode(mu + sig * eps)
        x_til = self.decode(mu + self.psi * sig * eps2)  # Eq. (1): only the spread is perturbed
        return x_hat, x_til, mu, logvar


# ---- downstream detector ------------------------------------------------------------------------
class _ResBlock(nn.Module):
    """ResNet-TS block as in CARLA: 3x [conv 'same' (k=8,5,3) -> BN -> ReLU], 1x1 conv+BN shortcut."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        layers, c = [], c_in
        for k in (8, 5, 3):
            layers += [nn.ConstantPad1d(((k - 1) // 2, k // 2), 0.0), nn.Conv1d(c, c_out, k),  # "same"
                       nn.BatchNorm1d(c_out), nn.ReLU()]
            c = c_out
        self.body = nn.Sequential(*layers[:-1])
        self.skip = (nn.Sequential(nn.Conv1d(c_in, c_out, 1), nn.BatchNorm1d(c_out))
                     if c_in != c_out else nn.BatchNorm1d(c_out))

    def forward(self, x):
        return F.relu(self.body(x) + self.skip(x))


class _Detector(nn.Module):
    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.backbone = nn.Sequential(_ResBlock(channels, mid), _ResBlock(mid, 2 * mid), _ResBlock(2 * mid, 2 * mid))
        self.head = nn.Sequential(nn.Linear(2 * mid, 2 * mid), nn.ReLU(), nn.Linear(2 * mid, 1))

    def forward(self, x):  # [B, W, C] -> logit [B]
        return self.head(self.backbone(x.transpose(1, 2)).mean(2)).squeeze(1)


class _GenIASNet(nn.Module):
    def __init__(self, generator: _Generator, detector: _Detector):
        super().__init__()
        self.generator, self.detector = generator, detector


# ---- losses (exposed as functions so tests can check them) -------------------------------------
def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean(dim=(1, 2))


def perturb_loss(x, x_hat, x_til, delta_min: float, delta_max: float) -> torch.Tensor:
    """Eq. (3): X~ at least delta_min further from X than X^ is, and at most delta_max from X (MSE)."""
    d_hat, d_til = per_sample_mse(x, x_hat), per_sample_mse(x, x_til)
    return (F.relu(d_hat - d_til + delta_min) + F.relu(d_til - delta_max)).mean()


def zero_perturbation_loss(x, x_til) -> torch.Tensor:
    """Eq. (4), element-wise form: mean over t and all-zero channels of 1/((X - X~)^2 + 1).

    Samples without all-zero channels do not contribute; the loss is 0 when no sample has one."""
    zero = (x == 0).all(dim=1)  # [B, C]
    if not bool(zero.any()):
        return x.new_zeros(())
    inv = 1.0 / ((x - x_til) ** 2 + 1.0)  # [B, W, C]
    per_sample = (inv * zero.unsqueeze(1)).sum(dim=(1, 2)) / (zero.sum(1) * x.shape[1]).clamp(min=1)
    has = zero.any(1)
    return per_sample[has].mean()


def compact_kl(mu, logvar, prior_std: float) -> torch.Tensor:
    """Eq. (5) with the constant chosen so that it is 0 at its optimum (mu=0, sigma=prior_std):
    0.5 * sum_j [sigma^2/s^2 + mu^2 - 1 - log sigma^2 + log s^2], summed over j, averaged over samples."""
    s2 = prior_std ** 2
    kl = 0.5 * (logvar.exp() / s2 + mu ** 2 - 1.0 - logvar + math.log(s2))
    return kl.sum(1).mean()


def deviation_patch(x: torch.Tensor, x_til: torch.Tensor, tau: float,
                    max_channels: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Alg. 2: per channel, use X~ where mean_t (X - X~)^2 > tau * (max_t X - min_t X), else keep X.

    When no channel passes, the channel with the largest deviation/amplitude ratio is swapped, so
    every generated window is anomalous. With ``max_channels``, only that many of the passing channels
    (the largest deviation/amplitude ratios) are swapped. Returns (patched [B, W, C], mask [B, C] bool)."""
    dev = ((x - x_til) ** 2).mean(1)
    amp = x.amax(1) - x.amin(1)
    mask = dev > tau * amp
    ratio = dev / (amp + 1e-6)
    none = ~mask.any(1)
    if bool(none.any()):
        best = F.one_hot(ratio.argmax(1), x.shape[2]).bool()
        mask = torch.where(none.unsqueeze(1), best, mask)
    if max_channels is not None and max_channels < x.shape[2]:
        keep = torch.where(mask, ratio, torch.full_like(ratio, -1.0)).topk(max_channels, dim=1).indices
        mask = mask & torch.zeros_like(mask).scatter(1, keep, True)
    return torch.where(mask.unsqueeze(1), x_til, x), mask


# ---- the detector --------------------------------------------------------------------------------
class GenIAS(TorchDetector):
    name = "genias"
    defaults = {
        "window": 32, "stride": 4, "epochs": 10, "det_epochs": None, "batch_size": 64, "lr": 1e-3,
        "det_lr": 1e-3, "hidden": 32, "latent": 32, "levels": 3, "kernel": 3, "dropout": 0.1,
        "psi_init": 1.5, "prior_std": 0.5, "alpha": 1.0, "beta": 0.1, "gamma": 0.01, "zeta": 0.001,
        "delta_min": 0.1, "delta_max": 0.2, "tau": 0.1, "max_patch_channels": None, "det_mid": 8, "max_train_windows": 6000,
    }
    presets = {
        "small": {},
        # Table 6: T=200, L=100 (MTS), Adam 1e-4, batch 100, kernel 3, dropout 0.1; up to 1000 epochs
        # (we stop at 100 by default); CARLA's detector uses 8-dim features, 30+50 epochs, lr 1e-3.
        "paper": {"window": 200, "stride": 5, "latent": 100, "hidden": 64, "levels": 4, "lr": 1e-4,
                  "batch_size": 100, "epochs": 100, "det_epochs": 30, "det_mid": 4, "zeta": 0.1,
                  "max_train_windows": 100_000},
    }

    def build(self) -> nn.Module:
        c = self.cfg
        gen = _Generator(self.n_channels, c["window"], c["hidden"], c["latent"], c["levels"], c["kernel"],
                         c["dropout"], c["psi_init"])
        return _GenIASNet(gen, _Detector(self.n_channels, c["det_mid"]))

    # ---- losses -------------------------------------------------------------------------------
    def generator_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        c = self.cfg
        x_hat, x_til, mu, logvar = self.net.generator(x)
        recon = per_sample_mse(x, x_hat).mean()
        pert = perturb_loss(x, x_hat, x_til, c["delta_min"], c["delta_max"])
        zp = zero_perturbation_loss(x, x_til)
        kl = compact_kl(mu, logvar, c["prior_std"])
        loss = c["alpha"] * recon + c["beta"] * pert + c["gamma"] * zp + c["zeta"] * kl
        return loss, {"rec": float(recon.detach()), "pert": float(pert.detach()), "kl": float(kl.detach())}

    def _anomalies(self, x: torch.Tensor, generator: torch.Generator | None = None):
        """Patched anomalies of standardised windows from the (frozen, eval-mode) generator."""
        gen = self.net.generator
        was = gen.training
        gen.eval()
        with torch.no_grad():
            _, x_til, _, _ = gen(x, generator)
            patched, mask = deviation_patch(x, x_til, self.cfg["tau"], self.cfg["max_patch_channels"])
        gen.train(was)
        return patched, mask

    def detector_loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        neg, _ = self._anomalies(x)
        logits = self.net.detector(torch.cat([x, neg]))
        target = torch.cat([torch.zeros(len(x)), torch.ones(len(neg))]).to(logits.device)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        acc = float(((logits > 0).float() == target).float().mean())
        return loss, {"bce": float(loss.detach()), "acc": acc}

    def loss(self, x):
        g, logs = self.generator_loss(x)
        d, logs2 = self.detector_loss(x)
        return g + d, {**logs, **logs2}

    def infer(self, x):
        gen = self.net.generator
        mu, _ = gen.encode(x)
        err = (gen.decode(mu) - x) ** 2  # deterministic: reconstruct from the latent mean
        div = F.softplus(self.net.detector(x))  # -log(1 - p(anomalous)), >= 0
        return err, div.unsqueeze(1).expand(-1, x.shape[1])

    # ---- training: generator first, then the detector --------------------------------------------
    def train_network(self, windows: torch.Tensor, progress: bool) -> None:
        """Two stages, each with its own progress bar: the generator, then the detector on its anomalies."""
        from tqdm import tqdm

        bs = self.cfg["batch_size"]
        g = torch.Generator().manual_seed(self.cfg["seed"])
        det_epochs = self.cfg["det_epochs"] or self.cfg["epochs"]
        stages = [("generator", self.net.generator, self.generator_loss, self.cfg["epochs"], self.cfg["lr"]),
                  ("detector", self.net.detector, self.detector_loss, det_epochs, self.cfg["det_lr"])]
        for stage, module, loss_fn, epochs, lr in stages:
            self.net.train()
            opt = torch.optim.Adam(module.parameters(), lr=lr)
            steps = epochs * self.steps_per_epoch
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
            bar = tqdm(total=steps, desc=f"training {self.name} {stage}", unit="step", disable=not progress)
            for _ in range(epochs):
                for idx in torch.randperm(len(windows), generator=g).split(bs):
                    opt.zero_grad(set_to_none=True)
                    loss, logs = loss_fn(windows[idx].to(self.device))
                    self.update(opt, loss, module.parameters(), f"{stage} loss")
                    sched.step()
                    bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
                    bar.update()
            bar.close()

    # ---- the generator, for the trainer ------------------------------------------------------------
    def generate(self, windows: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Anomalous versions of raw windows [B, W, C] (same units) and the changed channels [B, C]."""
        raw = np.asarray(windows, dtype=np.float32)
        if raw.ndim != 3 or raw.shape[2] != self.n_channels or raw.shape[1] != self.cfg["window"]:
            raise ValueError(f"expected windows [B, {self.cfg['window']}, {self.n_channels}], got {raw.shape}")
        g = torch.Generator(device=self.device).manual_seed(int(seed))
        out, masks = [], []
        for start in range(0, len(raw), 512):
            z = torch.from_numpy(self._standardise(raw[start:start + 512])).to(self.device)
            patched, mask = self._anomalies(z, g)
            out.append(patched.cpu().numpy() * self.std + self.mean)
            masks.append(mask.cpu().numpy())
        if not out:
            return raw.copy(), np.zeros((0, self.n_channels), bool)
        mask = np.concatenate(masks)
        # unchanged channels are returned bit-for-bit, not through a standardise/unstandardise round trip
        gen = np.where(mask[:, None, :], np.concatenate(out), raw).astype(np.float32)
        return gen, mask
