"""AMAD: AutoMasked Attention for unsupervised multivariate time-series anomaly detection (Huang & Li).

An encoder-only Transformer trained to reconstruct its input window. Each layer runs, on the same Q/K/V,
plain self-attention S (the global learner) and AutoMask attention A (a RoPE variant whose rotation
frequency omega is learnable, one per head: the multi-scale learner), mixes them M = a*A + (1-a)*S and
applies M to V. Training adds
  - the Max-Min strategy on the cross-attention divergence CAD(A, S) (a Jensen-Shannon divergence per
    query row): Min = rec + lam*CAD(A, sg(S)) pulls A towards S, Max = rec - lam*CAD(sg(A), S) pushes S away;
  - the local-global contrastive loss: CLIP-style cross-entropy over the batch between the flattened
    global (S) and local (A) maps of each window.
The paper's anomaly score is softmax_time(-CAD)_i * ||x_i - x_hat_i||^2. Here ``infer`` returns the
per-channel squared error and the divergence signal softmax_time(-CAD) (times W, so it averages 1);
under the stream's ``product`` fusion the fused score is the paper's score up to the per-channel
normalisation of the error. See docs/models/amad.md for every choice made where the paper is silent.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .torch_base import TorchDetector

EPS = 1e-4  # inside the logs of the JS divergence, as Anomaly Transformer does


# ---- building blocks ---------------------------------------------------------------------------------
def sinusoidal(n: int, d: int) -> torch.Tensor:
    pos = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : d // 2]
    return pe


def rotate(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Eq.11: rotate each feature pair (2k, 2k+1) of x [B,h,N,E] by angle [h,N,E/2]."""
    x1, x2 = x[..., 0::2], x[..., 1::2]
    cos, sin = torch.cos(angle), torch.sin(angle)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2)


def js_rows(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence between rows of p, q [..., N, N] (KL summed over the key axis) -> [..., N]."""
    m = 0.5 * (p + q)
    log_m = torch.log(m + EPS)
    kl_p = (p * (torch.log(p + EPS) - log_m)).sum(-1)
    kl_q = (q * (torch.log(q + EPS) - log_m)).sum(-1)
    return 0.5 * (kl_p + kl_q)


def cad(As: list[torch.Tensor], Ss: list[torch.Tensor], detach: str | None = None) -> torch.Tensor:
    """Eq.6, cross-attention divergence [B, N]: mean over layers and heads of row-wise JS(A || S).

    detach="S" gives CAD(A, sg(S)) (Min phase), detach="A" gives CAD(sg(A), S) (Max phase); the stop-gradient
    also covers the copy of the distribution inside the JS mixture.
    """
    total = 0.0
    for a, s in zip(As, Ss):
        if detach == "S":
            s = s.detach()
        elif detach == "A":
            a = a.detach()
        total = total + js_rows(a, s).mean(1)  # mean over heads
    return total / len(As)


def contrastive(As: list[torch.Tensor], Ss: list[torch.Tensor], tau: float, normalise: bool = False) -> torch.Tensor:
    """Eq.19-20 / Fig.5: sum over layers of CE(flat(S) @ flat(A)^T * exp(tau), arange(B)), divided by B."""
    b = As[0].shape[0]
    target = torch.arange(b, device=As[0].device)
    con = 0.0
    for a, s in zip(As, Ss):
        g, loc = s.reshape(b, -1), a.reshape(b, -1)
        if normalise:  # deviation, off by default: cosine similarity as in CLIP
            g, loc = F.normalize(g, dim=1), F.normalize(loc, dim=1)
        con = con + F.cross_entropy(g @ loc.t() * math.exp(tau), target)
    return con / b


class AutoMaskBlock(nn.Module):
    """Self-attention S and AutoMask attention A on shared Q/K/V, fused by attention mixup (Eq.16)."""

    def __init__(self, d_model: int, heads: int, window: int, alpha: float, theta: str, theta_value: float,
                 scale: str):
        super().__init__()
        assert d_model % heads == 0 and (d_model // heads) % 2 == 0, "d_model/heads must be even"
        self.h, self.e, self.alpha = heads, d_model // heads, alpha
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        # omega = W_omega . Pos with Pos constant is h free scalars; init spread over scales: 2^-eta
        self.omega = nn.Parameter(torch.tensor([2.0 ** -i for i in range(heads)]))
        self.register_buffer("pos", torch.arange(1, window + 1, dtype=torch.float32))  # Pos = 1..N
        if theta == "scalar":  # the text: one fixed theta for every feature pair
            th = torch.full((self.e // 2,), float(theta_value))
        elif theta == "rope":  # the Fig.3 caption: per-pair RoPE angles theta_k = 10000^(-2k/E), scaled by omega
            th = 10000.0 ** (-torch.arange(0, self.e, 2, dtype=torch.float32) / self.e)
        else:
            raise ValueError(f"theta must be 'scalar' or 'rope', got {theta!r}")
        self.register_buffer("theta", th)
        if scale == "head":  # standard sqrt(E) for both maps
            self.s_scale = self.a_scale = 1.0 / math.sqrt(self.e)
        elif scale == "literal":  # Eq.3 sqrt(d_model), Eq.15 sqrt(d_q d_k) = d_model
            self.s_scale, self.a_scale = 1.0 / math.sqrt(d_model), 1.0 / d_model
        else:
            raise ValueError(f"scale must be 'head' or 'literal', got {scale!r}")

    def angles(self, n: int) -> torch.Tensor:
        """phi[h, p, k] = p * omega_h * theta_k, positions 1..n."""
        return self.pos[:n].view(1, n, 1) * self.omega.view(-1, 1, 1) * self.theta.view(1, 1, -1)

    def forward(self, x: torch.Tensor):
        b, n, _ = x.shape
        split = lambda t: t.view(b, n, self.h, self.e).transpose(1, 2)  # noqa: E731  [B,h,N,E]
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        s = torch.softmax(q @ k.transpose(-1, -2) * self.s_scale, dim=-1)  # GSI
        phi = self.angles(n)
        qr, kr = rotate(q, phi), rotate(k, phi)
        a = torch.softmax(qr @ kr.transpose(-1, -2) * self.a_scale, dim=-1)  # MSI
        m = self.alpha * a + (1.0 - self.alpha) * s  # row-stochastic
        z = (m @ v).transpose(1, 2).reshape(b, n, -1)
        return self.o(z), a, s


class AMADLayer(nn.Module):
    def __init__(self, d_model: int, d_ff: int, ffn: str, **attn):
        super().__init__()
        self.attn = AutoMaskBlock(d_model, **attn)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        if ffn == "two":
            self.ff = nn.Sequential(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))
        elif ffn == "single":  # literal: GeLU(W x + b)
            self.ff = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU())
        else:
            raise ValueError(f"ffn must be 'two' or 'single', got {ffn!r}")

    def forward(self, x):
        z, a, s = self.attn(x)
        h = self.norm1(x + z)
        return self.norm2(h + self.ff(h)), a, s


class _AMADNet(nn.Module):
    def __init__(self, channels: int, window: int, d_model: int, heads: int, layers: int, d_ff: int, ffn: str,
                 alpha: float, theta: str, theta_value: float, scale: str):
        super().__init__()
        self.embed = nn.Conv1d(channels, d_model, 3, padding=1, padding_mode="circular", bias=False)
        self.register_buffer("pe", sinusoidal(window, d_model))
        self.layers = nn.ModuleList(
            AMADLayer(d_model, d_ff, ffn, heads=heads, window=window, alpha=alpha, theta=theta,
                      theta_value=theta_value, scale=scale) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, channels)

    def forward(self, x: torch.Tensor):
        h = self.embed(x.transpose(1, 2)).transpose(1, 2) + self.pe[: x.shape[1]]
        As, Ss = [], []
        for layer in self.layers:
            h, a, s = layer(h)
            As.append(a)
            Ss.append(s)
        return self.head(self.norm(h)), As, Ss


# ---- the detector ------------------------------------------------------------------------------------
class AMAD(TorchDetector):
    name = "amad"
    defaults = {
        "window": 32, "stride": 4, "epochs": 3, "batch_size": 64, "lr": 1e-3, "lr_decay": 1.0,
        "d_model": 64, "heads": 4, "layers": 2, "d_ff": 128, "ffn": "two",
        "alpha": 0.9, "tau": 0.35, "lam": 3.0, "theta": "scalar", "theta_value": 1.0, "scale": "head",
        "maxmin": "joint", "contrastive": True, "con_normalise": False, "score_temp": 1.0,
        "max_train_windows": 20_000, "threads": None,
    }
    presets = {
        "small": {"window": 50, "stride": 5, "epochs": 5, "d_model": 64, "heads": 4, "layers": 2, "d_ff": 128,
                  "batch_size": 64, "max_train_windows": 5000, "threads": 1},
        "paper": {"window": 100, "stride": 1, "epochs": 10, "d_model": 512, "heads": 8, "layers": 3, "d_ff": 512,
                  "batch_size": 256, "lr": 1e-4, "lr_decay": 0.5, "max_train_windows": 10**9},
    }

    def build(self) -> nn.Module:
        c = self.cfg
        return _AMADNet(self.n_channels, c["window"], c["d_model"], c["heads"], c["layers"], c["d_ff"], c["ffn"],
                        c["alpha"], c["theta"], c["theta_value"], c["scale"])

    # -- losses -------------------------------------------------------------------------------------
    def phase_losses(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One forward pass; the Min, Max and contrastive objectives of Eq.17-20 (means, AT-style)."""
        x_hat, As, Ss = self.net(x)
        rec = ((x_hat - x) ** 2).mean()
        lam = self.cfg["lam"]
        cad_min = cad(As, Ss, detach="S").mean()  # gradient only through A
        cad_max = cad(As, Ss, detach="A").mean()  # gradient only through S
        out = {"rec": rec, "min": rec + lam * cad_min, "max": rec - lam * cad_max, "cad": cad_max.detach()}
        out["con"] = (contrastive(As, Ss, self.cfg["tau"], self.cfg["con_normalise"]) if self.cfg["contrastive"]
                      else torch.zeros((), device=x.device))
        return out

    def loss(self, x):
        """Joint Max-Min objective (Option A): L_min + L_con + L_max; its gradient equals the two backward passes."""
        p = self.phase_losses(x)
        total = p["min"] + p["con"] + p["max"]
        return total, {"rec": float(p["rec"].detach()), "cad": float(p["cad"]), "con": float(p["con"].detach())}

    # -- parameters updated by each phase in the literal ("alternate") mode ----------------------------
    def automask_params(self) -> list[nn.Parameter]:
        return [l.attn.omega for l in self.net.layers]

    def selfattn_params(self) -> list[nn.Parameter]:
        return [p for l in self.net.layers for m in (l.attn.q, l.attn.k) for p in m.parameters()]

    def optimisers(self):
        self._step = 0
        return [torch.optim.Adam(self.net.parameters(), lr=self.cfg["lr"])]

    def _decay(self, opt):
        self._step = getattr(self, "_step", 0) + 1
        epoch = self._step // max(self.steps_per_epoch, 1)
        for g in opt.param_groups:
            g["lr"] = self.cfg["lr"] * self.cfg["lr_decay"] ** epoch

    def _phase_step(self, x, opt, objective, frozen: list[nn.Parameter]) -> dict:
        """Backward ``objective`` and step, leaving ``frozen`` untouched (Adam skips params whose grad is None)."""
        opt.zero_grad(set_to_none=True)
        p = self.phase_losses(x)
        self.update(opt, objective(p), self.net.parameters(), frozen=frozen)
        return p

    def min_step(self, x, opt) -> dict:
        """Min phase (+ contrastive): rec + lam*CAD(A, sg(S)) + L_con; self-attention's W_Q/W_K stay fixed."""
        return self._phase_step(x, opt, lambda p: p["min"] + p["con"], self.selfattn_params())

    def max_step(self, x, opt) -> dict:
        """Max phase: rec - lam*CAD(sg(A), S); AutoMask's omega stays fixed."""
        return self._phase_step(x, opt, lambda p: p["max"], self.automask_params())

    def train_step(self, x, optimisers):
        (opt,) = optimisers
        mode = self.cfg["maxmin"]
        if mode == "joint":
            # Option A: L_min + L_con and L_max on one forward pass; the stop-gradients set the CAD directions
            opt.zero_grad(set_to_none=True)
            loss, logs = self.loss(x)
            self.update(opt, loss, self.net.parameters())
        elif mode == "alternate":
            # Option B (literal): the Min step does not move self-attention's W_Q/W_K, the Max step does not
            # move AutoMask's omega; the shared rest follows reconstruction in both.
            p = self.min_step(x, opt)
            p2 = self.max_step(x, opt)
            loss = p["min"] + p["con"] + p2["max"]
            logs = {"rec": float(p2["rec"].detach()), "cad": float(p2["cad"]), "con": float(p["con"].detach())}
        else:
            raise ValueError(f"maxmin must be 'joint' or 'alternate', got {mode!r}")
        self._decay(opt)
        return {"loss": float(loss.detach()), **logs}

    # -- scoring ------------------------------------------------------------------------------------
    def infer(self, x):
        """Per-channel squared error, and Eq.21's weight softmax_time(-CAD) (scaled by W to average 1)."""
        x_hat, As, Ss = self.net(x)
        err = (x_hat - x) ** 2
        weight = torch.softmax(-self.cfg["score_temp"] * cad(As, Ss), dim=-1) * x.shape[1]
        return err, weight
