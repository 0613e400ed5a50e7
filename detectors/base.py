"""The one interface every detector follows.

A detector is fitted on normal history ``[T, C]`` and scores batches of sliding windows ``[B, W, C]``.
Scores are already normalised so that about 1.0 is a typical training value for every channel, which
is what lets the stream fuse, threshold and rank channels the same way whatever the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import numpy as np


@dataclass
class Scores:
    """What a detector says about a batch of windows.

    reconstruction: [B, W] per-point reconstruction (or prediction) error, normalised on training data.
    channel:        [B, W, C] per-channel contribution, normalised per channel on training data.
    divergence:     [B, W] a second, model-specific signal (association discrepancy, discriminator...),
                    or None where the model has none.
    """

    reconstruction: np.ndarray
    channel: np.ndarray
    divergence: np.ndarray | None = None


@dataclass
class ModelInfo:
    """Metadata that travels with an artefact (JSON)."""

    name: str
    version: str = "1"
    channels: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)


class Detector:
    """Base class: subclasses set ``name`` and implement fit/score/tensors/load_tensors."""

    name: str = "base"
    # Whether the point score is the mean of the channel scores, so that input channels (config
    # ``inputs``) can be left out of it: see ``judge``.
    supports_inputs: bool = False
    # Rows of context a model needs to score the last row of a window: None means the whole window.
    # A point-wise model (PCA) says 1, and the stream then hands it only the rows it scores.
    context: int | None = None

    def __init__(self, channels: list[str], **config):
        # no inputs declared: none in the config either (artefacts say ``inputs`` only when they have some)
        if config.get("inputs"):
            config["inputs"] = list(config["inputs"])
        else:
            config.pop("inputs", None)
        self.info = ModelInfo(name=self.name, channels=list(channels), config=dict(config))
        # Calibration scores, kept apart so that a threshold can be calibrated under whichever fusion
        # rule the stream uses (divergence None: the model has none): the scores of the training
        # points ("train"), or of a tail of the training split held out from fitting ("holdout",
        # training.calibration.fit_for_serving), in time order.
        self.train_reconstruction = np.zeros(0, dtype=np.float32)
        self.train_divergence: np.ndarray | None = None
        self.calibration_source = "train"
        # The served threshold is the calibrated one times this: 1 unless operators' feedback retuned
        # it for this entity (training.feedback), within the trainer's bounds.
        self.threshold_scale = 1.0
        # The channels the score judges (a mask), None: all of them. Set by ``fit`` (``learn_judged``).
        self.judged: np.ndarray | None = None
        # Missing values of the training split filled before fitting (training.calibration.fit_for_serving)
        self.filled_training_values = 0
        # How ``auto`` chose this model (training.selection): the candidates, their label-free figures,
        # the choice and why; None for a model trained by name.
        self.selection: dict | None = None

    @property
    def inputs(self) -> list[str]:
        """Patterns (fnmatch) naming the channels that are the plant's inputs: commands, setpoints."""
        return list(self.info.config.get("inputs") or [])

    def learn_judged(self) -> None:
        """Which channels the score judges: those that the declared inputs do not name
        (``judged_mask``)."""
        self.judged = judged_mask(self.channels, self.inputs)

    @property
    def judged_index(self) -> np.ndarray:
        """Indices of the judged channels (every channel when none are inputs)."""
        return np.flatnonzero(self.judged) if self.judged is not None else np.arange(len(self.channels))

    def judge(self, scores: Scores) -> Scores:
        """``scores`` with only the judged channels judged (``judge_scores``)."""
        return judge_scores(scores, self.judged)

    @property
    def channels(self) -> list[str]:
        return self.info.channels

    @property
    def model_id(self) -> str:
        return f"{self.info.name}@{self.info.version}"

    device: str = "cpu"
    # Whether ``to("auto")`` puts the model on a GPU when one is present. Only networks gain: PCA runs
    # just its projection there and scored no faster on an H200 than on two CPU cores (docs/benchmarks.md,
    # GPU); the numpy, scikit-learn and river models never leave the CPU whatever the device says.
    gpu_pays = False

    def to(self, device: str) -> "Detector":
        """Run inference on ``device`` (``auto``: cuda when present and ``gpu_pays``, else cpu)."""
        self.device = resolve_device(device) if device != "auto" or self.gpu_pays else "cpu"
        return self

    def fit(self, train: np.ndarray, progress: bool = True) -> "Detector":
        raise NotImplementedError

    def score(self, windows: np.ndarray) -> Scores:
        raise NotImplementedError

    # ---- many detectors in one call (a fleet of entities, each with its own model) ----------------
    def stack_key(self) -> tuple | None:
        """Detectors with equal keys are scored together by ``score_stacked``, their parameters stacked
        (``stack_params``); None: this one is scored on its own (``score``)."""
        return None

    def stack_params(self) -> dict[str, np.ndarray]:
        """This detector's parameters, as arrays of the same shapes for every detector of its stack key."""
        raise NotImplementedError

    @classmethod
    def score_stacked(cls, params: dict[str, np.ndarray], windows: np.ndarray, rows: np.ndarray,
                      device: str = "cpu") -> Scores:
        """Windows [B, W, C] of many detectors in one call: window b scored with the parameters of stack
        row ``rows[b]`` (``Stack``). Only for classes whose ``stack_key`` is not None."""
        raise NotImplementedError

    def tensors(self) -> dict[str, np.ndarray]:
        """Learned state as named arrays (saved with safetensors)."""
        raise NotImplementedError

    def load_tensors(self, tensors: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


class Stack:
    """The parameters of many detectors of one stack key (``Detector.stack_key``) as arrays with a row
    per detector, so that the windows of all of them are scored in one call (``score``): what a fleet of
    entities, each with a model of its own, costs per reading should not grow with the entities."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.index: dict[int, int] = {}  # id(detector) -> row
        self.detectors: list[Detector] = []  # kept alive, so that their ids stay theirs
        self.size = 0

    def row(self, det: Detector) -> int:
        """The row of ``det``, added on first sight."""
        at = self.index.get(id(det))
        if at is not None:
            return at
        p = det.stack_params()
        if not self.params:
            self.params = {k: np.zeros((16, *v.shape), v.dtype) for k, v in p.items()}
        if self.size == len(next(iter(self.params.values()))):
            self.params = {k: np.concatenate([v, np.zeros_like(v)]) for k, v in self.params.items()}
        for k, v in p.items():
            self.params[k][self.size] = v
        self.index[id(det)], at = self.size, self.size
        self.detectors.append(det)
        self.size += 1
        return at

    def score(self, windows: np.ndarray, rows: np.ndarray) -> Scores:
        det = self.detectors[0]
        return type(det).score_stacked(self.params, windows, rows, det.device)


class StreamingDetector:
    """A detector that learns while it scores, one instance per entity: the cold start of an entity that
    has no trained model yet. Nothing is fitted beforehand and no windows are built: rows are scored
    in order against what was learnt before them. Its whole state is JSON, saved with the entity's
    checkpoint. The pipeline serves each entity either a shared ``Detector`` (batched windows) or a
    ``StreamingDetector`` of its own; ``detectors.artefacts.STREAMING`` names the available ones.
    """

    name: str = "streaming"
    model_id: str = "streaming@1"  # what scores and alerts name as their model

    def __init__(self, channels: int, **config):
        self.channels = channels

    def ready_from(self) -> int:
        """Rows still to learn before its scores mean anything (its warm-up): the stream sets no
        threshold on them and never calibrates a threshold on them."""
        return 0

    def score_learn(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score each row of ``[n, C]`` against the state before it, then learn it.

        Returns point scores ``[n]`` and channel scores ``[n, C]``, normalised like a ``Detector``'s
        (about 1 when normal)."""
        raise NotImplementedError

    @classmethod
    def score_learn_many(cls, dets: list, rows: list) -> list[tuple[np.ndarray, np.ndarray]]:
        """``score_learn`` of many detectors of this class, each on its rows (a micro-batch's cold-start
        entities); a subclass may do them together."""
        return [d.score_learn(r) for d, r in zip(dets, rows)]

    def to_state(self) -> dict:
        raise NotImplementedError

    def load_state(self, state: dict) -> "StreamingDetector":
        raise NotImplementedError


def judged_mask(channels: list[str], inputs: list[str]) -> np.ndarray | None:
    """The channels to judge: those that no pattern in ``inputs`` names; None for all of them (no
    inputs, or patterns that name every channel).

    An input (a command sent, a setpoint) is what the plant was told to do: it informs the model,
    which learns how the measured channels answer it, but a new command is operation, not a fault,
    and never its cause. So the point score is the mean channel score of the *measured* channels.

    >>> judged_mask(["flow", "cmd_open"], ["cmd_*"]).tolist()
    [True, False]
    >>> judged_mask(["flow", "cmd_open"], []) is None
    True
    """
    measured = np.array([not any(fnmatchcase(c, p) for p in inputs) for c in channels], bool)
    return measured if inputs and measured.any() and not measured.all() else None


def judge_scores(scores: Scores, judged: np.ndarray | None) -> Scores:
    """``scores`` with the point score over the ``judged`` channels only and the other channels'
    scores zero (an input is never blamed); unchanged when ``judged`` is None."""
    if judged is None:
        return scores
    channel = np.where(judged, scores.channel, 0).astype(np.float32)
    point = scores.channel[..., judged].mean(-1).astype(np.float32)
    return Scores(point, channel, scores.divergence)


def check_train(train: np.ndarray, channels: int) -> np.ndarray:
    """Validate a training series ``[T, channels]`` of finite values and return it as float64."""
    x = np.asarray(train, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != channels:
        raise ValueError(f"expected train [T, {channels}], got {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("training data contains NaN or inf")
    return x


def standardisation(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std (float32) of a training series; a constant channel gets std 1, so that
    it neither explodes nor vanishes once standardised."""
    std = x.std(0)
    return x.mean(0).astype(np.float32), np.where(std > 1e-8, std, 1.0).astype(np.float32)


def check_windows(windows: np.ndarray, channels: int) -> np.ndarray:
    """Validate a window batch shape and return it as float32."""
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim != 3 or windows.shape[2] != channels:
        raise ValueError(f"expected windows [B, W, {channels}], got {windows.shape}")
    return windows


def sliding_windows(series: np.ndarray, window: int, hop: int) -> np.ndarray:
    """[T, C] -> [N, window, C] views (no copy) with the given hop; T must be >= window."""
    series = np.ascontiguousarray(series, dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(series, window, axis=0)  # [T-W+1, C, W]
    return view[::hop].transpose(0, 2, 1)


def resolve_device(device: str = "auto") -> str:
    """``auto`` means cuda when a GPU is present, else cpu."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device
