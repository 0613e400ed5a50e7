"""Worker settings: one dataclass, filled from the command line and ``VIGIL_*`` environment variables."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

DEFAULT_BROKER = "127.0.0.1:9092"
# Where an entity's threshold is calibrated: on the model's training scores, or on its first points
CALIBRATIONS = ("train", "first")



def broker_from_env(value: str | None = None) -> str:
    return value or os.environ.get("VIGIL_BROKER") or DEFAULT_BROKER


# The topics a micro-batch writes, one list each in ``scoring.pipeline.Outputs``, in this order
BATCH_OUTPUTS = ("scores", "alerts", "dlq")


@dataclass
class Topics:
    readings: str = "vigil.readings"
    scores: str = "vigil.scores"
    alerts: str = "vigil.alerts"
    dlq: str = "vigil.dlq"
    state: str = "vigil.state"  # worker checkpoints: entity state + per-partition offsets
    models: str = "vigil.models"  # model lifecycle events from the trainer (promotions, failures)
    feedback: str = "vigil.feedback"  # operators' labels of alerts and missed periods (scoring.feedback)

    @classmethod
    def named(cls, prefix: str = "vigil") -> "Topics":
        """Topics ``PREFIX.readings``, ``PREFIX.scores``, ...: one set per deployment or evaluation run."""
        return cls(**{f.name: f"{prefix}.{f.name}" for f in fields(cls)})

    def outputs(self) -> list[str]:
        """What a worker writes: each micro-batch's outputs (``scoring.pipeline.Outputs``) and its state."""
        return [getattr(self, kind) for kind in BATCH_OUTPUTS] + [self.state]

    def all(self) -> list[str]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass
class Settings:
    broker: str = DEFAULT_BROKER
    topics: Topics = field(default_factory=Topics)
    partitions: int = 4  # created on first start when missing; outputs get the readings' count
    replication: int = 1  # replication factor of topics created on first start (3 on a production cluster)
    group: str = "vigil-worker"
    # windows and micro-batches
    window: int = 32
    hop: int = 16
    # messages per micro-batch, at most: the worker takes two readings an entity held (a fleet's
    # per-entity costs amortised), at least 5,000 (stream.runner.Runner.batch_limit)
    batch_size: int = 50_000
    batch_wait: float = 0.1  # seconds a micro-batch waits for more messages
    checkpoint_interval: float = 1.0  # seconds between checkpoints, at least (see checkpoint_share)
    # Checkpoints take at most this share of a worker's time: after one that took d seconds the next waits
    # at least d (1 / share - 1). A fleet's entities all change every second and cost tens of
    # microseconds each to write, so 10,000 of them checkpoint every 8 s or so rather than every second;
    # the price is replay after a crash (the readings since the last checkpoint are scored again).
    checkpoint_share: float = 0.05
    # models: entity -> artefact directory; "*" is the default for entities with matching channels
    models: dict[str, str] = field(default_factory=dict)
    device: str = "auto"
    torch_threads: int = 0  # CPU threads for inference; 0: all cores but two (the event loop, Kafka), at least 1
    cold_start: str = "coldstart"  # the streaming detector of entities without a model (detectors.artefacts.STREAMING)
    # Channel patterns that are the plant's inputs (commands, setpoints), for the cold start: judged by
    # nobody (detectors.base.judged_mask). A trained model carries its own, set when it was trained.
    inputs: list[str] = field(default_factory=list)
    detector: str | None = None  # HOST:PORT of a `vigil detector` process that scores; None: in process
    # scoring
    fusion: str = "sum"
    fusion_weight: float = 1.0
    threshold: str = "spot"
    threshold_params: dict = field(default_factory=dict)
    calibration: str = "train"  # one of CALIBRATIONS
    calibration_points: int = 1000  # with SPOT's level 0.98: 19 peaks to fit the tail on (thresholds.DEFAULTS)
    # score conditioning (scoring/conditioning.py): each point's score is the mean of the last
    # ``smooth`` fused scores; the threshold scales with their median over the last ``level_window``
    # seconds of the entity's clock, so a departure becomes the new level once it has lasted half of
    # it: two days, so that a fault of minutes or hours alarms all along (0: off)
    smooth: int = 5
    level_window: float = 2 * 86400.0
    # Entities on the cold start calibrate on this many points after the detector's warm-up (SPOT
    # fits its tail on 19 of them: min_peaks in scoring.thresholds.DEFAULTS), so alerts start minutes
    # after the first reading; SPOT keeps learning the tail from there.
    cold_calibration_points: int = 300
    # incidents
    top_k: int = 3
    score_channels: bool = False  # per-channel scores in vigil.scores (evaluation, dashboards)
    open_after: int = 2  # alarms within open_window points that open an incident
    open_window: int = 10
    close_after: int = 10
    update_every: int = 30
    # the dashboard and /metrics (stream/web.py); port 0: off
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_token: str | None = None  # required when web_host is not a loopback address
    # input limits (docs/contract.md)
    max_message_bytes: int = 1 << 20
    # A reading more than this many seconds ahead of its record's Kafka timestamp is refused
    # (future_ts); 0 turns the check off. One hour, as Kafka's own log.message.timestamp.after.max.ms.
    max_future: float = 3600.0
    # entity memory: idle entities leave memory (their state stays in vigil.state) and come back on
    # their next reading; beyond max_entities (in memory or not) new entities are refused
    entity_ttl: float = 3600.0  # seconds without a reading before an entity is evicted (0: never)
    max_live_entities: int = 10_000  # entities kept in memory; the least recently seen go first
    max_entities: int = 100_000  # entities a worker holds at all; more: too_many_entities
    # group membership (short values suit the embedded broker; Kafka defaults are longer)
    session_timeout: float = 10.0
    rebalance_timeout: float = 5.0

    def threshold_config(self) -> dict:
        from .thresholds import DEFAULTS

        return {**DEFAULTS.get(self.threshold, {}), **self.threshold_params}
