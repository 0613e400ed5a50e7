"""MIM-GAN: an LSTM GAN trained with the exponential message-importance-measure loss (Lu et al.).

Generator G: per-step latent noise z [B, W, latent] -> LSTM -> Linear -> window [B, W, C].
Discriminator D: window [B, W, C] -> LSTM -> Linear -> sigmoid, a "real" probability at every step.

Training (the paper's eq.4 and Alg.1; min over D, max over G):
    L_D = mean exp(1 - D(x)) + mean exp(D(G(z)))              D minimises
    L_G = g_sign * mean exp(D(G(z))),  g_sign = -1            G maximises mean exp(D(G(z)))
The released code minimises +mean exp(D(G(z))) (g_sign=+1), which pushes D(G(z)) down, the same way
as D: not adversarial. We follow the paper's text and theory (g_sign=-1); see docs/models/mimgan.md.

Scoring (the DR / DIRE-score): latent inversion finds, for a whole batch at once, the z whose G(z)
best matches each window (fixed number of Adam steps on z only, from a fixed start stored as a
buffer, so inference is deterministic); the per-channel residual |x - G(z*)| is the Rec-Score and
1 - D(x) the Dis-Score. The harness normalises both by their training means and the stream sums them.
"""
from __future__ import annotations

import torch
from torch import nn

from .torch_base import TorchDetector


def mim_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
    """Discriminator MIM loss (minimised): E[exp(1 - D(x))] + E[exp(D(G(z)))]."""
    return torch.exp(1.0 - d_real).mean() + torch.exp(d_fake).mean()


def mim_g_loss(d_fake: torch.Tensor, g_sign: float = -1.0) -> torch.Tensor:
    """Generator MIM loss (minimised): g_sign * E[exp(D(G(z)))]; g_sign=-1 maximises exp(D(G(z)))."""
    return g_sign * torch.exp(d_fake).mean()


def _forget_bias(lstm: nn.LSTM, value: float = 1.0) -> None:
    """TF-style forget-gate bias (gate order in PyTorch: input, forget, cell, output)."""
    h = lstm.hidden_size
    for name, p in lstm.named_parameters():
        if name.startswith("bias_ih"):
            with torch.no_grad():
                p[h:2 * h].fill_(value)
        elif name.startswith("bias_hh"):
            with torch.no_grad():
                p[h:2 * h].zero_()


class _Generator(nn.Module):
    def __init__(self, latent: int, hidden: int, channels: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(latent, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, channels)
        _forget_bias(self.lstm)
        # As the released code: output weights ~ truncated normal, std 1 (cut at 2 std). Without it the
        # untrained G spans a tiny range and short trainings leave the inversion nothing to fit with.
        nn.init.trunc_normal_(self.out.weight, std=1.0, a=-2.0, b=2.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(z)
        return self.out(y)  # linear output: the harness feeds z-scored data, not [-1, 1]


class _Discriminator(nn.Module):
    def __init__(self, channels: int, hidden: int, layers: int):
        super().__init__()
        self.lstm = nn.LSTM(channels, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, 1)
        _forget_bias(self.lstm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return torch.sigmoid(self.out(y)).squeeze(-1)  # [B, W] per-step "real" probability


class _MIMGANNet(nn.Module):
    """Both networks plus the fixed inversion start, so that state_dict covers everything."""

    def __init__(self, channels: int, window: int, latent: int, g_hidden: int, d_hidden: int, layers: int):
        super().__init__()
        self.generator = _Generator(latent, g_hidden, channels, layers)
        self.discriminator = _Discriminator(channels, d_hidden, layers)
        # Deterministic start of the latent inversion: the prior's mean (zeros), one row per step.
        self.register_buffer("z_init", torch.zeros(window, latent))


class MIMGAN(TorchDetector):
    name = "mimgan"
    defaults = {
        "latent": 15, "g_hidden": 64, "d_hidden": 64, "layers": 1,
        "lr": 1e-3, "d_lr": 1e-3, "weight_decay": 0.01,
        "d_steps": 1, "g_steps": 1, "g_sign": -1.0,
        "inv_steps": 20, "inv_lr": 0.1, "inv_loss": "mse",
        "epochs": 5, "batch_size": 64,
    }
    presets = {
        # One SMD machine (~24k x 38, ~5.9k windows of 32 at stride 4) on 2 CPU cores, 4,000 windows x 4
        # epochs: measured ~105 s (1 thread) to ~425 s (2 threads, machine overloaded) incl. scoring.
        "small": {"window": 32, "stride": 4, "epochs": 4, "batch_size": 64, "max_train_windows": 4000,
                  "g_hidden": 64, "d_hidden": 64, "inv_steps": 10, "inv_lr": 0.2},
        # The paper's best setting (Table II, MIM-GAN***) and the released code's network sizes.
        "paper": {"window": 90, "stride": 10, "epochs": 100, "batch_size": 512, "lr": 5e-4, "d_lr": 1e-3,
                  "g_hidden": 100, "d_hidden": 100, "latent": 15, "d_steps": 6, "g_steps": 3,
                  "inv_steps": 200, "inv_lr": 0.1, "max_train_windows": 200_000},
    }

    # ---- networks ------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        c = self.cfg
        return _MIMGANNet(self.n_channels, c["window"], c["latent"], c["g_hidden"], c["d_hidden"], c["layers"])

    def noise(self, batch: int, window: int | None = None) -> torch.Tensor:
        w = self.cfg["window"] if window is None else window
        dev = next(self.net.parameters()).device
        return torch.randn(batch, w, self.cfg["latent"], device=dev)

    def optimisers(self) -> list[torch.optim.Optimizer]:
        wd = self.cfg["weight_decay"]
        opt_d = torch.optim.AdamW(self.net.discriminator.parameters(), lr=self.cfg["d_lr"], weight_decay=wd)
        opt_g = torch.optim.AdamW(self.net.generator.parameters(), lr=self.cfg["lr"], weight_decay=wd)
        return [opt_d, opt_g]

    # ---- training ------------------------------------------------------------------------------
    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The generator's MIM loss on fresh noise (x only sets batch size and window length)."""
        fake = self.net.generator(self.noise(x.shape[0], x.shape[1]))
        d_fake = self.net.discriminator(fake)
        return mim_g_loss(d_fake, self.cfg["g_sign"]), {"d_fake": float(d_fake.mean().detach())}

    def train_step(self, x: torch.Tensor, optimisers: list[torch.optim.Optimizer]) -> dict:
        opt_d, opt_g = optimisers
        G, D = self.net.generator, self.net.discriminator
        b, w = x.shape[:2]
        z = self.noise(b, w)
        loss_d = loss_g = d_real = d_fake = torch.zeros(())
        for _ in range(self.cfg["d_steps"]):  # D: minimise L_D on the same (x, z), as in the code
            with torch.no_grad():
                fake = G(z)
            d_real, d_fake = D(x), D(fake)
            loss_d = mim_d_loss(d_real, d_fake)
            opt_d.zero_grad(set_to_none=True)
            self.update(opt_d, loss_d, D.parameters(), "D loss")
        D.requires_grad_(False)
        try:
            for _ in range(self.cfg["g_steps"]):  # G: fresh noise each round
                d_gen = D(G(self.noise(b, w)))
                loss_g = mim_g_loss(d_gen, self.cfg["g_sign"])
                opt_g.zero_grad(set_to_none=True)
                self.update(opt_g, loss_g, G.parameters(), "G loss")
        finally:
            D.requires_grad_(True)
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach()),
                "d_real": float(d_real.mean().detach()), "d_fake": float(d_fake.mean().detach())}

    # ---- inference -----------------------------------------------------------------------------
    def _inversion_error(self, x: torch.Tensor, gen: torch.Tensor) -> torch.Tensor:
        """Per-window error [B] that the inversion minimises."""
        if self.cfg["inv_loss"] == "cosine":  # the paper's eq.17-18: 1 - cosine similarity
            a, b = x.flatten(1), gen.flatten(1)
            return 1.0 - (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + 1e-8)
        return ((gen - x) ** 2).flatten(1).mean(1)  # argmin of the code's RBF 1 - exp(-|x-G|^2/2s^2)

    def invert(self, x: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """Latent z [B, W, latent] minimising each window's error, for the whole batch at once.

        Only z is optimised (gradients via autograd.grad, so no parameter .grad is touched). The
        per-window errors are summed, so each window's z follows its own gradient (Adam is
        element-wise): the result does not depend on which other windows share the batch.
        """
        steps = self.cfg["inv_steps"] if steps is None else steps
        G = self.net.generator
        b, w = x.shape[:2]
        z_init = self.net.z_init
        if w != z_init.shape[0]:
            raise ValueError(f"{self.name} inverts windows of {z_init.shape[0]} points, got {w}")
        # cuDNN refuses an LSTM backward pass in eval mode; the native kernels allow it (found on an H100).
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            z = z_init.unsqueeze(0).expand(b, -1, -1).clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.cfg["inv_lr"])
            x = x.detach()
            for _ in range(steps):
                err = self._inversion_error(x, G(z)).sum()
                (grad,) = torch.autograd.grad(err, [z])
                z.grad = grad
                opt.step()
        return z.detach()

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.invert(x)
        with torch.no_grad():
            residual = (x - self.net.generator(z)).abs()      # Rec-Score per channel, eq.19
            dis = 1.0 - self.net.discriminator(x)             # Dis-Score, oriented: high = anomalous
        return residual, dis
