"""Saving and loading detectors: safetensors for arrays, JSON for everything else.

Loading reads data only: the JSON names a class from the fixed ``MODELS`` table, never code.
"""
from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from .base import Detector, judged_mask

FORMAT = 2  # 2: training reconstruction and divergence stored apart
# name -> "module:class", imported on first use so that a worker serving PCA never imports the rest.
# Baselines first, then the papers' models: the order of every listing and benchmark table.
MODELS: dict[str, str] = {
    "pca": "detectors.pca:PCADetector",
    "var": "detectors.var:VARDetector",
    "knn": "detectors.knn:NearestSubsequenceDetector",
    "iforest": "detectors.iforest:IsolationForestDetector",
    "hst": "detectors.hst:HalfSpaceTreesDetector",
    "lstm_ae": "detectors.lstm_ae:LSTMAutoencoder",
    "post": "detectors.post:POST",
    "amad": "detectors.amad:AMAD",
    "mimgan": "detectors.mimgan:MIMGAN",
    "genias": "detectors.genias:GenIAS",
}


# What Vigil trains when the user names no model: ``auto`` (training.selection): pca, var and knn judged
# without labels, and the model ``default_model`` picks for the entity's channels served unless broken,
# the best measured default (docs/benchmarks.md, docs/model-choice.md).
AUTO = "auto"
DEFAULT_MODEL = AUTO
CHOICES = [AUTO, *MODELS]  # what --model accepts by name
# ``auto`` in words, for help texts
AUTO_RULE = "pca, var and knn judged without labels; pca serves, or knn for one measured channel, unless broken"

# Streaming detectors (``detectors.base.StreamingDetector``): what scores an entity without a model.
STREAMING: dict[str, str] = {
    "coldstart": "detectors.coldstart:ColdStartDetector",
}


def streaming_class(name: str) -> type:
    module, cls = STREAMING[name].split(":")
    return getattr(importlib.import_module(module), cls)


def model_class(name: str) -> type[Detector]:
    try:
        module, cls = MODELS[name].split(":")
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODELS))}") from None
    try:
        return getattr(importlib.import_module(module), cls)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise ValueError(f"model {name!r} is not implemented yet") from None


def available() -> list[str]:
    """The names whose implementation is present."""
    out = []
    for name in MODELS:
        try:
            model_class(name)
            out.append(name)
        except ValueError:
            pass
    return out


def default_model(channels: list[str], inputs: list[str] | None = None) -> str:
    """The family ``auto`` serves unless its label-free figures show it broken (``training.selection``):
    ``pca`` for an entity with two or more judged channels, ``knn`` for one.

    Why: PCA scores a reading by how far it falls from the subspace the channels share, i.e. by their
    learnt correlations. With a single measured channel (a telemetry value and the commands it is
    sent, SMAP/MSL's layout) there is no correlation among judged channels to learn, and PCA reduces
    to a z-score of the value; what is left to judge is the channel's own course, and the distance of
    its recent subsequence to the nearest one of normal operation judges shape and level at once
    (a forecaster, VAR, judges only the next step and follows a new level within a few). Measured per
    entity: docs/benchmarks.md.

    >>> default_model(["flow", "pressure"]), default_model(["telemetry", "cmd_1"], ["cmd_*"])
    ('pca', 'knn')
    """
    judged = judged_mask(channels, inputs or [])
    measured = len(channels) if judged is None else int(judged.sum())
    return "pca" if measured >= 2 else "knn"


def resolve(name: str, channels: list[str], inputs: list[str] | None = None) -> str:
    """``name``, with ``auto`` replaced by the model it picks for these channels."""
    return default_model(channels, inputs) if name == AUTO else name


def takes_inputs(name: str) -> bool:
    """Whether a model (or ``auto``: every model it picks does) can leave input channels out."""
    return name == AUTO or model_class(name).supports_inputs


def create(name: str, channels: list[str], **config) -> Detector:
    """A new, unfitted detector by name (``auto``: ``default_model``'s pick)."""
    name = resolve(name, channels, config.get("inputs"))
    cls = model_class(name)
    if config.get("inputs") and not cls.supports_inputs:
        raise ValueError(f"{name} scores every channel alike and cannot leave input channels out; "
                         f"models that can: {', '.join(judging())}")
    return cls(channels, **config)


def judging() -> list[str]:
    """The models that take input channels (``Detector.supports_inputs``)."""
    return [n for n in available() if model_class(n).supports_inputs]


def save(detector: Detector, path: str | os.PathLike) -> Path:
    """Write ``model.json`` and ``model.safetensors`` into directory ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    tensors = {k: np.ascontiguousarray(v) for k, v in detector.tensors().items()}
    tensors["train_reconstruction"] = np.ascontiguousarray(detector.train_reconstruction, dtype=np.float32)
    if detector.train_divergence is not None:
        tensors["train_divergence"] = np.ascontiguousarray(detector.train_divergence, dtype=np.float32)
    if detector.judged is not None:
        tensors["judged"] = detector.judged.astype(np.uint8)
    save_file(tensors, str(tmp / "model.safetensors"))
    meta = {"format": FORMAT, "name": detector.info.name, "version": detector.info.version,
            "channels": detector.channels, "config": detector.info.config, "created": time.time(),
            "calibration": detector.calibration_source, "threshold_scale": float(detector.threshold_scale),
            "filled_training_values": int(detector.filled_training_values),
            "selection": detector.selection,
            "train_score_stats": {"reconstruction": _stats(detector.train_reconstruction),
                                  "divergence": _stats(detector.train_divergence)}}
    (tmp / "model.json").write_text(json.dumps(meta, indent=2))
    if path.exists():
        old = path.with_name(f".{path.name}.old.{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    else:
        tmp.rename(path)
    return path


def is_artefact(path: str | os.PathLike) -> bool:
    """A directory holding a model artefact (as opposed to a model name)."""
    return Path(path, "model.json").is_file()


class ArtefactError(ValueError):
    """A path that is not a readable model artefact; the message says which and what to do."""


def metadata(path: str | os.PathLike) -> dict:
    """An artefact's ``model.json`` (name, version, channels, config, ...) without loading its tensors."""
    path = Path(path)
    try:
        meta = json.loads((path / "model.json").read_text())
    except FileNotFoundError:
        raise ArtefactError(f"{path} is not a Vigil model artefact (no model.json; `vigil train` writes one)") from None
    except (OSError, ValueError) as exc:
        raise ArtefactError(f"{path}/model.json cannot be read ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ArtefactError(f"{path}: not a Vigil model artefact of format {FORMAT}")
    return meta


def load(path: str | os.PathLike) -> Detector:
    path = Path(path)
    meta = metadata(path)
    try:
        detector = create(meta["name"], meta["channels"], **meta["config"])
        detector.info.version = str(meta["version"])
        tensors = load_file(str(path / "model.safetensors"))
        detector.train_reconstruction = tensors.pop("train_reconstruction")
        detector.train_divergence = tensors.pop("train_divergence", None)
        judged = tensors.pop("judged", None)
        if judged is not None and judged.shape != (len(detector.channels),):
            raise ValueError(f"judged mask of shape {judged.shape} for {len(detector.channels)} channels")
        detector.judged = None if judged is None else judged.astype(bool)
        detector.calibration_source = meta.get("calibration", "train")
        detector.threshold_scale = float(meta.get("threshold_scale", 1.0))
        detector.filled_training_values = int(meta.get("filled_training_values", 0))
        detector.selection = meta.get("selection")
        if not (math.isfinite(detector.threshold_scale) and detector.threshold_scale > 0):
            raise ValueError(f"threshold_scale must be a positive number, not {detector.threshold_scale}")
        detector.load_tensors(tensors)
    except Exception as exc:  # noqa: BLE001 - whatever is broken, the artefact is; say so in one line
        raise ArtefactError(f"{path}: a broken model artefact ({type(exc).__name__}: {exc}); retrain it with "
                            f"`vigil train`") from exc
    return detector


def _stats(scores: np.ndarray | None) -> dict:
    if scores is None or len(scores) == 0:
        return {}
    q = np.quantile(scores, [0.5, 0.9, 0.99, 0.999])
    return {"count": int(len(scores)), "mean": float(np.mean(scores)), "p50": float(q[0]),
            "p90": float(q[1]), "p99": float(q[2]), "p999": float(q[3]), "max": float(np.max(scores))}
