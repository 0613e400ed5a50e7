"""The base of every deep detector: standardisation, windowed training with a progress bar, scoring.

A model file subclasses ``TorchDetector`` and writes three things, in the spirit of thuml's
Time-Series-Library (one file per model, a small common harness):

    build(self) -> nn.Module                       the network, sized from ``self.cfg`` and ``self.n_channels``
    loss(self, x) -> (loss tensor, logs dict)       one training objective on standardised windows [B, W, C]
    infer(self, x) -> (err [B, W, C], div [B, W] | None)   per-channel error and optional divergence

Models with several optimisers or alternating steps (adversarial, minimax) override ``train_step``.
The harness standardises channels on training data, normalises the per-channel error and the
divergence by their means on the training windows (so about 1.0 is typical, as for every detector),
and stores everything as safetensors arrays plus JSON configuration.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .base import Detector, Scores, check_train, check_windows, sliding_windows, standardisation


class TorchDetector(Detector):
    supports_inputs = True  # the point error is the mean of the channel errors (``_normalised``)
    defaults: dict = {"window": 32, "stride": 4, "epochs": 5, "batch_size": 64, "lr": 1e-3,
                      "max_train_windows": 20_000}
    gpu_pays = True  # bench/gpu.py: 6-360x the points/s of two CPU cores on an H200, at 1,024 windows
    presets: dict[str, dict] = {"small": {}, "paper": {}}

    def __init__(self, channels: list[str], preset: str = "small", seed: int = 0, **overrides):
        if preset not in self.presets:
            raise ValueError(f"unknown preset {preset!r} for {self.name}; known: {', '.join(self.presets)}")
        config = {**TorchDetector.defaults, **self.defaults, **self.presets[preset], **overrides}
        super().__init__(channels, preset=preset, seed=seed, **config)
        c = len(channels)
        self.mean = np.zeros(c, np.float32)
        self.std = np.ones(c, np.float32)
        self.channel_scale = np.ones(c, np.float32)
        self.div_scale = np.ones(1, np.float32)
        self.net: nn.Module | None = None

    # ---- what a model file writes -----------------------------------------------------------
    def build(self) -> nn.Module:
        raise NotImplementedError

    def loss(self, x: torch.Tensor) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError

    def infer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def optimisers(self) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.net.parameters(), lr=self.cfg["lr"])]

    def train_step(self, x: torch.Tensor, optimisers: list[torch.optim.Optimizer]) -> dict:
        """One update on a batch of standardised windows; returns numbers for the progress bar."""
        (opt,) = optimisers
        opt.zero_grad(set_to_none=True)
        loss, logs = self.loss(x)
        self.update(opt, loss, self.net.parameters())
        return {"loss": float(loss.detach()), **logs}

    def update(self, opt: torch.optim.Optimizer, loss: torch.Tensor, params, what: str = "loss",
               frozen=()) -> None:
        """Every model's optimiser step: refuse a non-finite loss, backpropagate, drop the gradients of
        ``frozen`` parameters (the optimiser then skips them), clip to norm 5, step. Callers zero the
        gradients before computing ``loss``."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{self.name}: {what} is {loss.item()}")
        loss.backward()
        for p in frozen:
            p.grad = None
        nn.utils.clip_grad_norm_(params, 5.0)
        opt.step()

    # ---- the harness --------------------------------------------------------------------------
    @property
    def cfg(self) -> dict:
        return self.info.config

    @property
    def n_channels(self) -> int:
        return len(self.channels)

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)

    def fit(self, train: np.ndarray, progress: bool = True) -> "TorchDetector":
        windows = self.prepare(train)
        # On a small shared CPU, intra-op threads on small tensors oversubscribe the cores (measured
        # 4-9x slower with 2 threads than 1 under load): config "threads" caps them while training.
        before = torch.get_num_threads()
        if self.cfg.get("threads"):
            torch.set_num_threads(int(self.cfg["threads"]))
        try:
            torch.manual_seed(self.cfg["seed"])
            self.net = self.build().to(self.device)
            self.train_network(windows, progress)
            self.net.eval()
            self.calibrate(windows)
        finally:
            torch.set_num_threads(before)
        return self

    def prepare(self, train: np.ndarray) -> torch.Tensor:
        """Validate and standardise the training series; return its (capped) windows [N, W, C]."""
        x = check_train(train, self.n_channels)
        w = self.cfg["window"]
        if len(x) < w:
            raise ValueError(f"need at least {w} training points, got {len(x)}")
        self.mean, self.std = standardisation(x)
        self.learn_judged()
        z = self._standardise(x)
        self.on_training_data(z)
        windows = sliding_windows(z, w, self.cfg["stride"])
        rng = np.random.default_rng(self.cfg["seed"])
        if len(windows) > self.cfg["max_train_windows"]:
            windows = windows[np.sort(rng.choice(len(windows), self.cfg["max_train_windows"], replace=False))]
        self.steps_per_epoch = math.ceil(len(windows) / self.cfg["batch_size"])
        # a copy where the windows are a read-only view of the series (stride = window): torch warns on those
        return torch.from_numpy(np.require(windows, np.float32, ["C", "W"]))

    def on_training_data(self, z: np.ndarray) -> None:
        """Hook: see the standardised training series [T, C] before the network is built."""

    def train_network(self, windows: torch.Tensor, progress: bool) -> None:
        """Epochs of ``train_step`` over shuffled batches, with a progress bar."""
        from tqdm import tqdm

        self.net.train()
        optimisers = self.optimisers()
        bs = self.cfg["batch_size"]
        steps = self.cfg["epochs"] * self.steps_per_epoch
        bar = tqdm(total=steps, desc=f"training {self.name}", unit="step", disable=not progress)
        g = torch.Generator().manual_seed(self.cfg["seed"])
        for _ in range(self.cfg["epochs"]):
            for idx in torch.randperm(len(windows), generator=g).split(bs):
                logs = self.train_step(windows[idx].to(self.device), optimisers)
                bar.set_postfix({k: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
                bar.update()
        bar.close()

    def before_calibration(self, windows: torch.Tensor) -> None:
        """Hook: statistics a model needs from its training windows before they are scored."""

    def calibrate(self, windows: torch.Tensor) -> None:
        """Normalise scores on the training windows and keep their fused scores for thresholds."""
        self.before_calibration(windows)
        err, div = self._raw_scores(windows.numpy())
        self.channel_scale = np.maximum(err.reshape(-1, self.n_channels).mean(0), 1e-8).astype(np.float32)
        if div is not None:
            self.div_scale = np.array([max(float(div.mean()), 1e-8)], np.float32)
        s = self._normalised(err, div)
        last = slice(-self.cfg["stride"], None)  # each training point once (windows overlap)
        self.train_reconstruction = s.reconstruction[:, last].reshape(-1).astype(np.float32)
        if s.divergence is not None:
            self.train_divergence = s.divergence[:, last].reshape(-1).astype(np.float32)

    infer_chunk = 512  # windows per forward pass (bench/gpu.py varies it)

    def _raw_scores(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        errs, divs = [], []
        chunk = self.infer_chunk
        with torch.no_grad():
            for start in range(0, len(z), chunk):
                xb = torch.from_numpy(np.ascontiguousarray(z[start:start + chunk])).to(self.device)
                err, div = self.infer(xb)
                errs.append(err.float().cpu().numpy())
                if div is not None:
                    divs.append(div.float().cpu().numpy())
        return np.concatenate(errs), (np.concatenate(divs) if divs else None)

    def _normalised(self, err: np.ndarray, div: np.ndarray | None) -> Scores:
        channel = err / self.channel_scale
        return self.judge(Scores(reconstruction=channel.mean(2), channel=channel,
                                 divergence=None if div is None else div / self.div_scale[0]))

    def score(self, windows: np.ndarray) -> Scores:
        w = check_windows(windows, self.n_channels)
        if w.shape[1] != self.cfg["window"]:
            raise ValueError(f"{self.name} scores windows of {self.cfg['window']} points, got {w.shape[1]}")
        self.net.eval()
        err, div = self._raw_scores(self._standardise(w))
        return self._normalised(err, div)

    def to(self, device: str) -> "TorchDetector":
        super().to(device)
        if self.net is not None:
            self.net.to(self.device)
        return self

    def tensors(self) -> dict[str, np.ndarray]:
        out = {"mean": self.mean, "std": self.std, "channel_scale": self.channel_scale,
               "div_scale": self.div_scale}
        for k, v in self.net.state_dict().items():
            out[f"net.{k}"] = v.detach().cpu().numpy()
        return out

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.mean, self.std = tensors.pop("mean"), tensors.pop("std")
        self.channel_scale, self.div_scale = tensors.pop("channel_scale"), tensors.pop("div_scale")
        self.net = self.build()
        self.net.load_state_dict({k[4:]: torch.from_numpy(np.array(v)) for k, v in tensors.items()})
        self.net.to(self.device).eval()
