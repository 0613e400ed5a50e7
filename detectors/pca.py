"""PCA reconstruction detector: the honest baseline every deep model must beat.

Channels are standardised on training data, projected on the top-k principal components and
reconstructed; the squared error per channel, divided by that channel's mean training error, averaged
over channels, is the residual statistic (SPE, or Q, of multivariate statistical process control). Its
companion, Hotelling's T^2 inside the subspace, is added (``t2``, see ``_combine``): the two together
are the classic PCA monitoring pair. A channel's mean error is floored at ``min_scale`` (0.01% of its
variance): a channel the components reconstruct almost perfectly (a constant, a duplicate of another)
would otherwise have its rounding noise multiplied into scores of 1e10. The score of a point does not
depend on the rest of its window, so any window length and hop give the same scores. With input channels
declared (``inputs``: commands, setpoints), they take part in the components, so the residual of a
measured channel says whether it answered its inputs as in training, but only the measured channels are
judged (``Detector.judge``). A channel is blamed by how much the point's score would fall if it alone
were corrected (reconstruction-based contributions, ``_blame``), not by its own residual, which a
fault on a neighbour smears onto it.
"""
from __future__ import annotations

import numpy as np
import torch

from .base import Detector, Scores, check_train, check_windows, standardisation


class PCADetector(Detector):
    name = "pca"
    context = 1
    supports_inputs = True

    def __init__(self, channels: list[str], variance: float = 0.95, max_components: int | None = None,
                 min_scale: float = 1e-4, t2: float = 1.0, inputs: list[str] | None = None):
        super().__init__(channels, variance=variance, max_components=max_components, min_scale=min_scale, t2=t2,
                         inputs=inputs)
        c = len(channels)
        self.mean = np.zeros(c, np.float32)
        self.std = np.ones(c, np.float32)
        self.components = np.zeros((c, 0), np.float32)  # [C, k]
        self.channel_scale = np.ones(c, np.float32)  # mean training squared error per channel
        self.component_var = np.ones(0, np.float32)  # [k] training variance of each component's score
        self._blame_diag: np.ndarray | None = None  # [C] M_cc of ``_blame``, derived from the tensors on first use

    def fit(self, train: np.ndarray, progress: bool = True) -> "PCADetector":
        x = check_train(train, len(self.channels))
        self.mean, self.std = standardisation(x)
        self.learn_judged()
        z = (x - self.mean) / self.std
        _, s, vt = np.linalg.svd(z, full_matrices=False)
        explained = np.cumsum(s**2) / max(float(np.sum(s**2)), 1e-12)
        k = int(np.searchsorted(explained, self.info.config["variance"]) + 1)
        cap = self.info.config.get("max_components") or (len(self.channels) - 1)
        k = max(1, min(k, cap, len(self.channels)))
        self.components = vt[:k].T.astype(np.float32)
        self.component_var = np.maximum((s[:k] ** 2) / len(z), 1e-12).astype(np.float32)
        z = z.astype(np.float32)
        resid, proj = self._project(z)
        err = resid ** 2
        self._blame_diag = None
        self.channel_scale = np.maximum(err.mean(0), self.info.config.get("min_scale", 1e-4)).astype(np.float32)
        self.train_reconstruction = self.judge(Scores(*self._combine(z, err / self.channel_scale, proj))).reconstruction
        return self

    def _combine(self, z: np.ndarray, spe: np.ndarray, proj: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Point and channel scores from the normalised residuals ``spe`` [N, C] and the components'
        scores ``proj`` [N, k] of standardised rows ``z``.

        Point: the mean normalised residual (SPE, the distance *off* the components' subspace) plus
        ``t2`` x Hotelling's T^2 / k (the distance *inside* it, each component by its training
        variance); both have mean 1 on the training data, so ``t2`` = 1 weighs them alike. Without T^2 a
        reading that moves far along the directions the components span (a value far outside its
        range, with its correlations intact) reconstructs perfectly and scores nothing.
        Parts per channel (their mean over the judged channels is the point score when inputs are
        declared): its normalised residual plus its share of T^2 (|z_c (P L^-1 P' z)_c| / k). Which
        channel is to blame is ``_blame``'s answer, not the largest part."""
        w = float(self.info.config.get("t2", 0.0))
        if not w or not len(self.component_var):
            return spe.mean(1).astype(np.float32), spe
        k = len(self.component_var)
        t2 = ((proj ** 2) / self.component_var).sum(1) / k
        share = np.abs(z * ((proj / self.component_var) @ self.components.T)) / k
        return (spe.mean(1) + w * t2).astype(np.float32), (spe + w * share).astype(np.float32)

    def _project(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Reconstruction residual per channel [N, C] (signed) and the components' scores [N, k], from
        one projection on the model's device."""
        with torch.no_grad():
            zt = torch.from_numpy(np.ascontiguousarray(z)).to(self.device)
            p = torch.from_numpy(self.components).to(self.device)
            proj = zt @ p
            return (zt - proj @ p.T).cpu().numpy(), proj.cpu().numpy()

    def _blame(self, z: np.ndarray, resid: np.ndarray, proj: np.ndarray) -> np.ndarray:
        """Each channel's reconstruction-based contribution (RBC; Alcala & Qin 2009) to the point score
        z' M z: how much that score would fall if this channel alone were corrected, (M z)_c^2 / M_cc.
        Why not the channel's own residual: the projection spreads one channel's fault over the channels
        it is reconstructed from (the "smearing" of contribution plots), so a neighbour can outrank the
        cause; RBC ranks a single faulty channel first. M is the score's own form: the residual part
        C~ D C~ / n (C~ = I - P P', D the judged channels over their mean training error) and T^2's,
        P L^-1 P' / k, restricted to the judged channels (symmetrised)."""
        p, lam = self.components, self.component_var
        mask = np.ones(len(self.channels), bool) if self.judged is None else self.judged
        d = mask / self.channel_scale / mask.sum()  # D / n
        w = float(self.info.config.get("t2", 0.0)) if len(lam) else 0.0
        if self._blame_diag is None:
            q = p.astype(np.float64) @ p.T.astype(np.float64)
            diag = d * (1 - 2 * np.diag(q)) + (q * q) @ d
            if w:
                diag = diag + w * mask * ((p ** 2) / lam).sum(1) / len(lam)
            self._blame_diag = np.maximum(diag, 1e-12).astype(np.float32)
        dr = (resid * d).astype(np.float32)
        back = -(dr @ p)  # [N, k]: C~ D r = D r - P P' D r
        if w and self.judged is None:  # T^2's part P L^-1 P' z / k, P' z being ``proj``: one product for both
            back += (w / len(lam)) * (proj / lam)
        mz = dr + back @ p.T
        if w and self.judged is not None:
            k = len(lam)
            mz += w / (2 * k) * (mask * ((proj / lam) @ p.T) + ((z * mask) @ p / lam) @ p.T)
        return (mz ** 2 / self._blame_diag).astype(np.float32)

    def score(self, windows: np.ndarray) -> Scores:
        w = check_windows(windows, len(self.channels))
        b, t, c = w.shape
        z = ((w.reshape(-1, c) - self.mean) / self.std).astype(np.float32)
        resid, proj = self._project(z)
        point, parts = self._combine(z, resid ** 2 / self.channel_scale, proj)
        point = self.judge(Scores(point, parts)).reconstruction  # with inputs, the judged channels' parts
        channel = self._blame(z, resid, proj)
        if self.judged is not None:
            channel[:, ~self.judged] = 0  # an input is never blamed
        return Scores(reconstruction=point.reshape(b, t), channel=channel.reshape(b, t, c))

    # ---- many PCA models in one call -------------------------------------------------------------
    def stack_key(self) -> tuple:
        """Models with as many channels and components, the same judged channels and T^2 weight stack: the
        arithmetic of ``score`` then runs row by row with each row's own parameters."""
        judged = None if self.judged is None else tuple(self.judged.tolist())
        return ("pca", len(self.channels), len(self.component_var), judged, float(self.info.config.get("t2", 0.0)))

    def stack_params(self) -> dict[str, np.ndarray]:
        if self._blame_diag is None:  # computed by ``_blame`` on first use
            self._blame(np.zeros((0, len(self.channels)), np.float32), np.zeros((0, len(self.channels)), np.float32),
                        np.zeros((0, len(self.component_var)), np.float32))
        mask = np.ones(len(self.channels), bool) if self.judged is None else self.judged
        return {"mean": self.mean, "std": self.std, "p": self.components, "lam": self.component_var,
                "scale": self.channel_scale, "d": mask / self.channel_scale / mask.sum(), "diag": self._blame_diag,
                "mask": mask, "judged": np.array(self.judged is not None), "t2": np.array(self.info.config.get("t2", 0.0))}

    @classmethod
    def score_stacked(cls, params: dict[str, np.ndarray], windows: np.ndarray, rows: np.ndarray,
                      device: str = "cpu") -> Scores:
        """``score``'s arithmetic for the windows of many PCA models of one stack key, window b with the
        parameters of stack row ``rows[b]``: each row's products with its own components (einsum over
        the gathered parameters, in bounded chunks of rows)."""
        b, t, c = windows.shape
        x = np.asarray(windows, np.float32).reshape(-1, c)
        owner = np.repeat(np.asarray(rows, np.int64), t)
        point, channel = np.empty(len(x), np.float32), np.empty((len(x), c), np.float32)
        k = params["p"].shape[2]
        step = max(1, (1 << 22) // max(c * max(k, 1), 1))
        for lo in range(0, len(x), step):
            o = owner[lo:lo + step]
            point[lo:lo + step], channel[lo:lo + step] = cls._rows(params, x[lo:lo + step], o)
        return Scores(reconstruction=point.reshape(b, t), channel=channel.reshape(b, t, c))

    @staticmethod
    def _rows(params: dict, x: np.ndarray, o: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``score``, ``_combine`` and ``_blame`` for rows ``x`` [N, C] of the models of stack rows ``o``."""
        mask, w = params["mask"][0], float(params["t2"][0])
        judged = bool(params["judged"][0])
        p, lam = params["p"][o], params["lam"][o]  # [N, C, k], [N, k]
        k = p.shape[2]
        z = ((x - params["mean"][o]) / params["std"][o]).astype(np.float32)
        proj = np.einsum("nc,nck->nk", z, p)
        resid = z - np.einsum("nk,nck->nc", proj, p)
        spe = resid ** 2 / params["scale"][o]
        if not w or not k:
            point, parts = spe.mean(1).astype(np.float32), spe
        else:
            t2 = ((proj ** 2) / lam).sum(1) / k
            share = np.abs(z * np.einsum("nk,nck->nc", proj / lam, p)) / k
            point, parts = (spe.mean(1) + w * t2).astype(np.float32), (spe + w * share).astype(np.float32)
        if judged:
            point = parts[..., mask].mean(-1).astype(np.float32)
        dr = (resid * params["d"][o]).astype(np.float32)
        w = w if k else 0.0
        back = -np.einsum("nc,nck->nk", dr, p)
        if w and not judged:
            back += (w / k) * (proj / lam)
        mz = dr + np.einsum("nk,nck->nc", back, p)
        if w and judged:
            mz += w / (2 * k) * (mask * np.einsum("nk,nck->nc", proj / lam, p)
                                 + np.einsum("nk,nck->nc", np.einsum("nc,nck->nk", z * mask, p) / lam, p))
        channel = (mz ** 2 / params["diag"][o]).astype(np.float32)
        if judged:
            channel[:, ~mask] = 0  # an input is never blamed
        return point, channel

    def tensors(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "std": self.std, "components": self.components,
                "channel_scale": self.channel_scale, "component_var": self.component_var}

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        self.mean, self.std = tensors["mean"], tensors["std"]
        self.components, self.channel_scale = tensors["components"], tensors["channel_scale"]
        self._blame_diag = None
        if "component_var" in tensors:
            self.component_var = tensors["component_var"]
        else:  # an artefact from before T^2: scored as it was trained
            self.component_var = np.ones(0, np.float32)
