"""LSTM autoencoder baseline: encode a window to its last hidden state, decode it back.

The plain deep baseline of TSB-AD's leaderboard (LSTMAD, AutoEncoder): every paper model must beat it.
"""
from __future__ import annotations

import torch
from torch import nn

from .torch_base import TorchDetector


class _LSTMAE(nn.Module):
    def __init__(self, channels: int, hidden: int, layers: int):
        super().__init__()
        self.encoder = nn.LSTM(channels, hidden, layers, batch_first=True)
        self.decoder = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.out = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.encoder(x)
        code = h[-1].unsqueeze(1).expand(-1, x.shape[1], -1)
        y, _ = self.decoder(code)
        return self.out(y)


class LSTMAutoencoder(TorchDetector):
    name = "lstm_ae"
    defaults = {"hidden": 64, "layers": 1, "epochs": 5}
    presets = {"small": {}, "paper": {"hidden": 128, "layers": 2, "epochs": 30, "window": 100}}

    def build(self) -> nn.Module:
        return _LSTMAE(self.n_channels, self.cfg["hidden"], self.cfg["layers"])

    def loss(self, x):
        loss = ((self.net(x) - x) ** 2).mean()
        return loss, {}

    def infer(self, x):
        return (self.net(x) - x) ** 2, None
