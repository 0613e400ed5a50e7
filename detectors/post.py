"""POST: Prior-Observation adversarial learning of Spatio-Temporal associations (arXiv 2605.18128).

Follows the authors' code (anocodetest1/POST; notes in the project's shared notes on POST), in brief:

* every encoder layer runs SAGA (spatial graph attention: channels are nodes; structural *prior*
  P_s = softmax(g / tau) from a learnable adjacency-logit matrix g initialised from a kNN graph of the
  training channels; data-driven *observation* e = GAT additive attention), then TASA (Anomaly
  Transformer attention: series association S against a learnable Gaussian prior P);
* minimax association losses in both dimensions with AT's stop-gradients (one Adam step on the summed
  maximise / minimise phases), plus the alternating graph step on g (reconstruction + Laplacian
  smoothness + prior-toward-observation, SGD) followed by the L1-on-sigmoid proximal step;
* time score softmax_t(-t_t * AssDis) x reconstruction error; channel score additionally weighted by
  sigmoid(t_s * z(-spatial discrepancy)).

Choices and deviations are listed in docs/models/post.md.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .torch_base import TorchDetector

EPS = 1e-4


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p||q) over the last axis with POST's/AT's 1e-4 smoothing (no reduction otherwise)."""
    return (p * (torch.log(p + EPS) - torch.log(q + EPS))).sum(-1)


def knn_adjacency_logits(z: np.ndarray, k: int) -> np.ndarray:
    """POST's prior initialisation: [C, C] with +1 on self and the k nearest channels, -1 elsewhere.

    ``z`` is the standardised training series [T, C]; each channel's whole series is one vector and
    neighbours are by Euclidean distance. Directed (row i lists i's neighbours), not symmetrised.
    """
    x = np.asarray(z, dtype=np.float64).T  # [C, T]
    c = x.shape[0]
    k = max(0, min(int(k), c - 1))
    sq = (x ** 2).sum(1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
    np.fill_diagonal(d, np.inf)
    adj = -np.ones((c, c), np.float32)
    if k > 0:
        nn_idx = np.argsort(d, axis=1, kind="stable")[:, :k]
        np.put_along_axis(adj, nn_idx, 1.0, axis=1)
    np.fill_diagonal(adj, 1.0)
    return adj


def prox_l1_on_sigmoid(g: torch.Tensor, alpha: float, iters: int = 3) -> torch.Tensor:
    """prox of alpha * sum_{i!=j} sigmoid(x_ij) at g: fixed-point x = g - alpha * mask * sigmoid'(x).

    Shrinks off-diagonal edge logits (hence edge weights sigmoid(g)); the diagonal is untouched.
    """
    mask = 1.0 - torch.eye(g.shape[-1], dtype=g.dtype, device=g.device)
    x = g.clone()
    for _ in range(iters):
        s = torch.sigmoid(x)
        x = g - alpha * mask * s * (1.0 - s)
    return x


def feature_smoothing(adj: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """mean_b tr(X_b L X_b^T), L = D^-1/2 (D - A) D^-1/2 (Pro-GNN style, not symmetrised as in POST)."""
    rowsum = adj.sum(1)
    lap = torch.diag(rowsum) - adj
    r_inv = (rowsum + 1e-3).pow(-0.5)
    r_inv = torch.where(torch.isfinite(r_inv), r_inv, torch.zeros_like(r_inv))
    lap = r_inv[:, None] * lap * r_inv[None, :]
    return torch.einsum("blc,cd,bld->b", x, lap, x).mean()


class SAGA(nn.Module):
    """Spatial anomaly graph attention: returns (out [B,L,d], observation e [B,C,C], prior P_s [B,C,C])."""

    def __init__(self, window: int, d_model: int, channels: int, adj: torch.Tensor):
        super().__init__()
        self.W1 = nn.Linear(d_model, channels, bias=False)
        self.W2 = nn.Linear(channels, d_model, bias=False)
        nn.init.xavier_uniform_(self.W1.weight)
        nn.init.xavier_uniform_(self.W2.weight)
        self.theta_r = nn.Parameter(torch.empty(1, window))
        self.theta_c = nn.Parameter(torch.empty(1, window))
        nn.init.xavier_uniform_(self.theta_r)
        nn.init.xavier_uniform_(self.theta_c)
        self.tau_projection = nn.Linear(window, 1)
        nn.init.xavier_uniform_(self.tau_projection.weight)
        self.g = nn.Parameter(adj.clone())  # adjacency logits: the structural prior

    def forward(self, x):
        h = self.W1(x).transpose(1, 2)  # [B, C, L]: node = channel, feature = projected trajectory
        tau = torch.sigmoid(3.0 * self.tau_projection(h)) + 1e-5  # [B, C, 1]
        prior = torch.softmax(self.g.unsqueeze(0) / tau, dim=-1)  # [B, C, C]
        logits = F.leaky_relu(h @ self.theta_r[0][:, None] + (h @ self.theta_c[0][:, None]).transpose(1, 2), 0.2)
        obs = torch.softmax(logits / math.sqrt(h.shape[-1]), dim=-1)  # [B, C, C]
        a = torch.sigmoid(self.g).unsqueeze(0) * obs
        a = a / a.sum(-1, keepdim=True).clamp_min(1e-12)
        z = torch.bmm(a, h).transpose(1, 2)  # [B, L, C]
        return self.W2(z), obs, prior


class TASA(nn.Module):
    """Anomaly-Transformer attention with POST's learnable-frequency positional encoding."""

    def __init__(self, window: int, d_model: int, heads: int):
        super().__init__()
        self.heads = heads
        dk = d_model // heads
        self.q = nn.Linear(d_model, dk * heads)
        self.k = nn.Linear(d_model, dk * heads)
        self.v = nn.Linear(d_model, dk * heads)
        self.sigma = nn.Linear(d_model, heads)
        self.out = nn.Linear(dk * heads, d_model)
        self.alpha = nn.Parameter(torch.tensor(0.01))
        pos = torch.arange(window, dtype=torch.float32)[:, None]
        freq = torch.pow(10000.0, -torch.arange(0, d_model, 2, dtype=torch.float32) / d_model)
        self.register_buffer("pos_freq", pos * freq[None, :], persistent=False)  # [L, d/2]
        idx = torch.arange(window, dtype=torch.float32)
        self.register_buffer("dist", (idx[:, None] - idx[None, :]).abs(), persistent=False)
        self.d_model = d_model

    def forward(self, x):
        b, l, _ = x.shape
        ang = self.alpha * self.pos_freq[:l]
        pe = torch.stack([torch.sin(ang), torch.cos(ang)], dim=-1).reshape(l, -1)[:, : self.d_model]
        xp = x + pe
        h = self.heads
        q = self.q(xp).view(b, l, h, -1).transpose(1, 2)
        k = self.k(xp).view(b, l, h, -1).transpose(1, 2)
        v = self.v(x).view(b, l, h, -1).transpose(1, 2)
        series = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)  # [B,H,L,L]
        sigma = self.sigma(xp).transpose(1, 2)  # [B, H, L]
        sigma = torch.pow(3.0, torch.sigmoid(5.0 * sigma) + 1e-5) - 1.0
        sigma = sigma.unsqueeze(-1)
        prior = torch.exp(-self.dist[:l, :l] ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
        prior = prior / prior.sum(-1, keepdim=True)  # row-normalised, as the solver does
        out = (series @ v).transpose(1, 2).reshape(b, l, -1)
        return self.out(out), series, prior


class EncoderLayer(nn.Module):
    def __init__(self, window, d_model, heads, d_ff, channels, adj, dropout):
        super().__init__()
        self.saga = SAGA(window, d_model, channels, adj)
        self.tasa = TASA(window, d_model, heads)
        self.ff1 = nn.Conv1d(d_model, d_ff, 1)
        self.ff2 = nn.Conv1d(d_ff, d_model, 1)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        s_out, obs, prior_s = self.saga(x)
        x = x + s_out
        t_out, series, prior = self.tasa(x)
        x = self.norm1(x + self.drop(t_out))
        y = self.drop(F.gelu(self.ff1(x.transpose(1, 2))))
        y = self.drop(self.ff2(y).transpose(1, 2))
        return self.norm2(x + y), series, prior, obs, prior_s


class POSTNet(nn.Module):
    def __init__(self, channels, window, d_model, heads, layers, d_ff, dropout, adj):
        super().__init__()
        self.embed = nn.Conv1d(channels, d_model, 3, padding=1, padding_mode="circular", bias=False)
        nn.init.kaiming_normal_(self.embed.weight, mode="fan_in", nonlinearity="leaky_relu")
        self.layers = nn.ModuleList(
            EncoderLayer(window, d_model, heads, d_ff, channels, adj, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)
        self.proj = nn.Linear(d_model, channels)
        # Per-channel train statistics of the spatial score (set after training; saved with the net).
        self.register_buffer("s_mean", torch.zeros(channels))
        self.register_buffer("s_std", torch.ones(channels))

    def graph_params(self) -> list[nn.Parameter]:
        return [layer.saga.g for layer in self.layers]

    def forward(self, x):
        h = self.embed(x.transpose(1, 2)).transpose(1, 2)
        out = {"series": [], "prior": [], "obs": [], "prior_s": []}
        for layer in self.layers:
            h, s, p, e, ps = layer(h)
            out["series"].append(s)
            out["prior"].append(p)
            out["obs"].append(e)
            out["prior_s"].append(ps)
        out["recon"] = self.proj(self.norm(h))
        return out


class POST(TorchDetector):
    name = "post"
    defaults = {
        "d_model": 64, "heads": 4, "layers": 2, "d_ff": 64, "dropout": 0.0,
        "window": 64, "stride": 4, "epochs": 5, "batch_size": 32, "lr": 5e-4,
        "knn_k": 5,            # kNN prior neighbours
        "k": 1.0,              # temporal association weight (main.py)
        "k1": 0.05,            # spatial association weight
        "k2": 0.7,             # L1 prox strength (alpha = k2 * 1.0)
        "k3": 0.001,           # Laplacian smoothness weight
        "triplet": 1.0,        # head-agreement triplet regulariser weight
        "lr_g": 0.01,          # SGD(momentum 0.9) on the adjacency logits
        "graph_every": 5,      # graph step every n batches ...
        "graph_start_epoch": 1,  # ... from this (0-based) epoch on
        "t_t": 50.0,           # temperature of softmax(-AssDis) in the time score
        "t_s": 0.1,            # temperature of the spatial channel weight
        "max_train_windows": 6000,
    }
    presets = {
        "small": {},
        "paper": {"d_model": 512, "heads": 8, "layers": 3, "d_ff": 512, "window": 100, "stride": 100,
                  "epochs": 10, "batch_size": 64, "lr": 1e-4, "graph_start_epoch": 2, "t_t": 1000.0,
                  "max_train_windows": 1_000_000},
    }

    # ---- network ----------------------------------------------------------------------------
    def on_training_data(self, z: np.ndarray) -> None:
        self._adj_init = knn_adjacency_logits(z, self.cfg["knn_k"])
        self._step = 0

    def build(self) -> nn.Module:
        c = self.n_channels
        adj = getattr(self, "_adj_init", None)
        # On load the g's come from the state dict; the placeholder only fixes the shape.
        adj = torch.from_numpy(adj) if adj is not None else torch.ones(c, c)
        cfg = self.cfg
        return POSTNet(c, cfg["window"], cfg["d_model"], cfg["heads"], cfg["layers"], cfg["d_ff"],
                       cfg["dropout"], adj)

    def optimisers(self):
        gs = {id(p) for p in self.net.graph_params()}
        adam = torch.optim.Adam([p for p in self.net.parameters() if id(p) not in gs], lr=self.cfg["lr"])
        sgd = torch.optim.SGD(self.net.graph_params(), lr=self.cfg["lr_g"], momentum=0.9)
        return [adam, sgd]

    # ---- losses -------------------------------------------------------------------------------
    def terms(self, x: torch.Tensor) -> dict:
        """All loss terms of one forward pass (layer-averaged, batch-averaged), AT/POST stop-gradients."""
        out = self.net(x)
        n = len(out["series"])
        t = {"rec": F.mse_loss(out["recon"], x)}
        series = prior = series_s = prior_s = trip = 0.0
        for s, p, e, ps in zip(out["series"], out["prior"], out["obs"], out["prior_s"]):
            sd, pd, ed, psd = s.detach(), p.detach(), e.detach(), ps.detach()
            series = series + (kl(s, pd) + kl(pd, s)).mean()      # maximise phase: moves S
            prior = prior + (kl(p, sd) + kl(sd, p)).mean()        # minimise phase: moves P
            series_s = series_s + (kl(e, psd) + kl(psd, e)).mean()  # maximise phase: moves e
            prior_s = prior_s + (kl(ed, ps) + kl(ps, ed)).mean()    # minimise phase: moves P_s
            trip = trip + self._triplet(s)
        t.update(series=series / n, prior=prior / n, series_s=series_s / n, prior_s=prior_s / n,
                 triplet=trip / n, out=out)
        return t

    @staticmethod
    def _triplet(series: torch.Tensor) -> torch.Tensor:
        """POST's TripletLossWithKL: heads of a window agree, windows differ (margin 1)."""
        b, h = series.shape[:2]
        if b < 2 or h < 2:
            return series.new_zeros(())
        agg = series.mean(2)  # [B, H, L] over keys
        a, c = agg[:, :, None, :], agg[:, None, :, :]
        pair = kl(a, c) + kl(c, a)  # [B, H, H]
        pair = pair + torch.eye(h, device=pair.device) * 1e9
        d_pos = pair.min(-1).values
        shift = int(torch.randint(1, b, (1,)))
        other = agg.roll(shift, dims=0)
        d_neg = kl(agg, other) + kl(other, agg)
        return F.relu(d_pos - d_neg + 1.0).mean()

    def phase_losses(self, t: dict) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        loss1 = t["rec"] - c["k"] * t["series"] + c["triplet"] * t["triplet"] - c["k1"] * t["series_s"]
        loss2 = t["rec"] + c["k"] * t["prior"] + c["k1"] * t["prior_s"]
        return loss1, loss2

    def loss(self, x):
        t = self.terms(x)
        loss1, loss2 = self.phase_losses(t)
        return loss1 + loss2, {"rec": float(t["rec"].detach()), "dis": float(t["series"].detach())}

    def graph_loss(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        n = len(out["obs"])
        smooth = sum(feature_smoothing(torch.sigmoid(g), x) for g in self.net.graph_params()) / n
        ps_term = sum((kl(ps, e.detach()) + kl(e.detach(), ps)).mean()
                      for e, ps in zip(out["obs"], out["prior_s"])) / n
        return F.mse_loss(out["recon"], x) + self.cfg["k3"] * smooth + self.cfg["k1"] * ps_term

    def graph_step(self, x: torch.Tensor, opt_g: torch.optim.Optimizer) -> float:
        """Alternating structure step: SGD on g, then the L1-on-sigmoid proximal step."""
        self.net.zero_grad(set_to_none=True)
        g_loss = self.graph_loss(x)
        g_loss.backward()
        opt_g.step()
        with torch.no_grad():
            for g in self.net.graph_params():
                g.copy_(prox_l1_on_sigmoid(g, self.cfg["k2"]))
        self.net.zero_grad(set_to_none=True)
        return float(g_loss.detach())

    def train_step(self, x, optimisers):
        adam, sgd = optimisers
        self.net.zero_grad(set_to_none=True)
        loss, logs = self.loss(x)
        self.update(adam, loss, adam.param_groups[0]["params"])
        step = getattr(self, "_step", 0)
        self._step = step + 1
        epoch = step // getattr(self, "steps_per_epoch", 1)
        if epoch >= self.cfg["graph_start_epoch"] and (step + 1) % self.cfg["graph_every"] == 0:
            logs["g"] = self.graph_step(x, sgd)
        return {"loss": float(loss.detach()), **logs}

    # ---- scores -------------------------------------------------------------------------------
    def components(self, x: torch.Tensor) -> dict:
        """Per-window pieces of the scores: squared error, temporal weight, raw spatial statistic."""
        out = self.net(x)
        err = (x - out["recon"]) ** 2  # [B, L, C]
        ass = sum((kl(s, p) + kl(p, s)).mean(1) for s, p in zip(out["series"], out["prior"]))  # [B, L]
        metric = torch.softmax(-self.cfg["t_t"] * ass, dim=-1) * x.shape[1]  # mean 1 over the window
        raw_s = -sum(kl(e, ps) + kl(ps, e) for e, ps in zip(out["obs"], out["prior_s"]))  # [B, C]
        return {"err": err, "ass": ass, "metric": metric, "raw_s": raw_s}

    def infer(self, x):
        comp = self.components(x)
        z = (comp["raw_s"] - self.net.s_mean) / self.net.s_std
        metric_s = torch.sigmoid(self.cfg["t_s"] * z)  # [B, C]
        # channel: squared error x spatial weight; divergence: the temporal weight softmax_t(-t_t AssDis)
        # (x W). Under the stream's product fusion: score = recon x divergence, the paper's score.
        return comp["err"] * metric_s[:, None, :], comp["metric"]

    def before_calibration(self, windows: torch.Tensor) -> None:
        """Per-channel mean/std of the spatial statistic on the training windows
        (solver_channel's _get_global_spatial_stats)."""
        raws = []
        with torch.no_grad():
            for start in range(0, len(windows), 512):
                raws.append(self.components(windows[start:start + 512].to(self.device))["raw_s"])
        raw = torch.cat(raws)
        self.net.s_mean.copy_(raw.mean(0))
        self.net.s_std.copy_(raw.std(0, unbiased=False).clamp_min(1e-6) if len(raw) > 1
                             else torch.ones_like(raw[0]))
