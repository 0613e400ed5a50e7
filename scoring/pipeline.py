"""The path of a micro-batch of readings, with no Kafka in it.

``Pipeline.process`` takes raw messages (partition, offset, key, bytes) and returns the messages to
publish on ``vigil.scores``, ``vigil.alerts`` and ``vigil.dlq``. The Faust agent (``stream.runner``)
only moves bytes in and out, so every step here is testable on its own.

Order inside a batch: decode and validate every message; then, for the entities of each *cohort*
(one shape: channels and model window), every step on all their rows at once: windows, scoring (one
call per model, or per stack of models of one kind: ``detectors.base.Stack``), fusion, smoothing,
level and threshold; then per entity only what is its own: incidents, drift records, the records to
publish. Each entity's state is a slot in its cohort's arrays (``Cohort``), so a micro-batch costs about
the same for ten entities or ten thousand (docs/design.md, "Many entities, one call"); an entity that
needs more than the common case (a threshold still calibrating, a cold start warming up, a row out of
order) takes its own way through the same state. Everything an entity's outputs depend on is in its own
state, so a replay of the same messages after a restart gives the same scores and alert ids.
"""
from __future__ import annotations

import asyncio
import logging
import math
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import numpy as np
import orjson
from tqdm import tqdm

from detectors import artefacts
from detectors.base import Detector, Scores, Stack, StreamingDetector, judge_scores, judged_mask

from .codec import (
    OUTPUT_LIMIT,
    Reading,
    Readings,
    Rejection,
    decode_many,
    drift_alert,
    encode_alert,
    encode_dead_letter,
    encode_score_records,
)
from .conditioning import Level, LevelOut, Levels, Smoother, Smoothing
from .fusion import fuse, top_channels
from .incidents import IncidentTracker
from .segments import Segments, gather, grow
from .settings import Settings
from .thresholds import SpotColumns, SpotThreshold, floor_for, make_threshold, threshold_from_state, trim_far_out
from .windows import EntityWindow, Windows

log = logging.getLogger("vigil.worker")

META_KEY = b"__partition__"
# A score that overflowed (inf, NaN) is reported as this: above every threshold, never learnt from.
SCORE_CAP = 1e30


class Observer(Protocol):
    """What the pipeline tells whoever watches it (the worker's dashboard, ``stream.board.Board``)."""

    def observe_many(self, entities: list["EntityState"], bounds: list[tuple[int, int]], ts: np.ndarray,
                     score: np.ndarray, threshold: np.ndarray, channel: np.ndarray, raw: np.ndarray,
                     alerts: dict[int, list[dict]], passable: np.ndarray) -> None:
        """A cohort's rows of one micro-batch: entity ``s`` has rows ``bounds[s]`` and ``alerts[s]``.
        ``passable[s]``: entity ``s`` has no alert in this micro-batch and is not watched
        (``EntityState.watched``): an observer that keeps only some entities may pass it over without a
        look (an entity gets a trace as it alerts, not at every point of a long incident)."""

    def inference(self, seconds: float) -> None: ...

    def forget(self, entity: str) -> None: ...


class Message(NamedTuple):
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float | None = None  # the record's Kafka timestamp in seconds (None: not known)
    # Offsets offset..last that the Kafka layer could not decode, and why: (last, reason)
    undecodable: tuple[int, str] | None = None


class Record(NamedTuple):
    partition: int
    key: bytes
    value: bytes


@dataclass
class Outputs:
    """The records of one micro-batch, a list per output topic (``settings.BATCH_OUTPUTS``)."""

    scores: list[Record] = field(default_factory=list)
    alerts: list[Record] = field(default_factory=list)
    dlq: list[Record] = field(default_factory=list)


@dataclass
class PartitionState:
    """What a partition's checkpoint records, and what recovery learned from the output topics."""

    input_offset: int = -1  # last readings offset applied to entity state
    out_offsets: dict = field(default_factory=dict)  # topic kind -> last offset known delivered
    dirty: set = field(default_factory=set)  # entities changed since the last checkpoint
    dlq_suppress_offset: int = -1  # DLQ records up to this source offset were already published
    evicted: dict = field(default_factory=dict)  # entity -> offset of its state record, not in memory


@dataclass
class Snapshot:
    """A partition's checkpoint under way: its changed entities and offsets as of one instant, the
    entities' records written a slice at a time between micro-batches (a fleet's are seconds of work)."""

    order: list  # the entities changed before the instant, in record order
    meta: bytes  # the partition's offsets at the instant
    pending: set  # those not yet taken: taken (``taken``) or written before anything changes them
    records: dict = field(default_factory=dict)  # entity -> its record as of the instant (None: none)
    taken: dict = field(default_factory=dict)  # entity -> a copy of it as of the instant, record to write
    next: int = 0  # position in ``order`` of the next slice


class Cohort:
    """The state of every entity of one shape (channels, model window), a slot each: its windows,
    smoothing, level and SPOT as arrays with a row per slot, and the scalars the threshold in force
    needs. Slots of entities that left are reused."""

    def __init__(self, channels: int, window: int, settings: Settings):
        self.channels, self.length = channels, window
        self.windows = Windows(window, min(settings.hop, window), channels)
        self.smoothing = Smoothing(settings.smooth, channels)
        self.levels = Levels()
        self.spot = SpotColumns() if settings.threshold == "spot" else None
        self.last_ts = np.zeros(0)
        self.threshold_scale = np.zeros(0)  # operators' feedback: the served threshold is the calibrated one x this
        self.floor = np.zeros(0)  # the lowest threshold served: nonzero after a degenerate calibration
        self.scored = np.zeros(0, np.int64)  # points scored, per entity (its other counts are its own)
        self.touched = np.zeros(0)  # monotonic time of the last micro-batch with a reading of it (eviction)
        self.suppress_scores_ts = np.zeros(0)  # set by recovery: its score records up to this ts were published
        # its incidents need a visit whatever its scores: one is open or pending, or it drifts (the others'
        # quiet points pass in one step: ``Pipeline._finish``)
        self.busy = np.zeros(0, bool)
        self.watched = np.zeros(0, bool)  # an observer keeps its points (the dashboard's traces: ``Observer``)
        # where its windows are scored (``Pipeline._place``): its detector's group (-1: a streaming detector
        # of its own) and that detector's row in the group's stack
        self.stack_group = np.zeros(0, np.int32)
        self.stack_row = np.zeros(0, np.int32)
        self.size, self.free = 0, []

    def alloc(self) -> int:
        return int(self.alloc_many(1)[0])

    def alloc_many(self, n: int) -> np.ndarray:
        """``n`` slots: freed ones first (last freed first), then new ones, the arrays grown once."""
        reused = [self.free.pop() for _ in range(min(n, len(self.free)))]
        fresh = n - len(reused)
        slots = np.array(reused + list(range(self.size, self.size + fresh)), np.int64)
        self.size += fresh
        if self.size > len(self.last_ts):
            # a quarter more at a time (copies stay amortised O(1), slack small), grown once: the capacity
            # that as many slots allocated one at a time would reach, however the micro-batches come
            capacity = len(self.last_ts)
            while capacity < self.size:
                capacity = max(16, capacity * 5 // 4)
            for part in (self.windows, self.smoothing, self.levels, self.spot):
                if part is not None:
                    part.ensure(capacity)
            self.last_ts = grow(self.last_ts, capacity)
            self.threshold_scale = grow(self.threshold_scale, capacity, 1.0)
            self.floor = grow(self.floor, capacity)
            self.scored = grow(self.scored, capacity)
            self.touched = grow(self.touched, capacity)
            self.busy = grow(self.busy, capacity)
            self.suppress_scores_ts = grow(self.suppress_scores_ts, capacity, -math.inf)
            self.watched = grow(self.watched, capacity)
            self.stack_group = grow(self.stack_group, capacity, -1)
            self.stack_row = grow(self.stack_row, capacity)
        self.busy[slots] = self.watched[slots] = False
        return slots

    def release(self, slot: int) -> None:
        self.free.append(slot)

    def gather(self, slots: np.ndarray) -> Cohort:
        """A copy holding only the rows of ``slots`` (the copy's slots 0, 1, ...), as they are now."""
        out = gather(self, slots)
        out.windows, out.smoothing, out.levels = (gather(c, slots) for c in (self.windows, self.smoothing, self.levels))
        out.spot = self.spot.gather(slots) if self.spot is not None else None
        out.free, out.size = [], len(slots)
        return out


class CohortValue:
    """An entity's number that its cohort keeps in an array (``Cohort.<name>[slot]``), read and set as
    an attribute of the entity."""

    def __init__(self, name: str):
        self.name = name

    def __get__(self, ent, owner=None) -> float:
        if ent is None:
            return self
        return float(getattr(ent.cohort, self.name)[ent.slot])

    def __set__(self, ent, value: float) -> None:
        getattr(ent.cohort, self.name)[ent.slot] = value


class ChannelMap:
    """Channel names, where each is, and where each order of them that messages use goes: one per
    distinct list of names, shared by every entity that has it (a fleet's thousands of entities of one
    kind hold one between them)."""

    __slots__ = ("names", "index", "layouts")
    MAX_LAYOUTS = 64  # orders remembered; more (a producer that shuffles its channels) start over

    def __init__(self, names: list[str]):
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        self.layouts: dict[tuple, np.ndarray | slice] = {}  # message channel order -> column indices


class Start(NamedTuple):
    """What a detector's training scores give every entity it serves, before its first point: the SPOT
    slot (``SpotColumns.take``) or another threshold's state, the floor, and the level's calibration
    (window, base, threshold). ``Pipeline.start`` computes it once per detector."""

    spot: tuple | None
    other: dict | None
    floor: float
    level: tuple[float, float, float] | None


class _Taken:
    """What an object's ``to_state`` gave when it was taken (``EntityState.taken``)."""

    __slots__ = ("state",)

    def __init__(self, state: dict):
        self.state = state

    def to_state(self) -> dict:
        return self.state


class EntityState:
    """Everything that one entity's scoring depends on: its slot in its cohort's arrays, and what is its
    own (incidents, counts, names, the records a recovery must not publish twice).

    Scored by ``detector`` (a trained model, shared with other entities, over batched windows) or,
    without one, by ``streaming``: a ``StreamingDetector`` of its own (``settings.cold_start``)."""

    def __init__(self, entity: str, partition: int, names: list[str], detector: Detector | None,
                 settings: Settings, cohort: Cohort, start: Start | None = None, channels: ChannelMap | None = None,
                 slot: int | None = None):
        """``start``: the detector's calibration as computed for another entity (``Pipeline.start``);
        without it, an entity with a detector calibrates from the detector's training scores itself.
        ``channels``: the shared map of ``names``, if there is one. ``slot``: its slot, already set up
        by ``setup_slots`` (``many``); else one is allocated and set up here."""
        channels = channels if channels is not None and channels.names == names else ChannelMap(names)
        self.entity, self.partition, self.names = entity, partition, channels.names
        self.index, self.layouts = channels.index, channels.layouts
        self.detector = detector
        self.streaming: StreamingDetector | None = (
            None if detector else artefacts.streaming_class(settings.cold_start)(len(names)))
        self.model = sys.intern((detector or self.streaming).model_id)  # one string for a model's entities
        # the cold start judges the channels that the worker's --inputs do not name (a model, its own)
        self.cold_judged = judged_mask(names, settings.inputs) if self.streaming is not None else None
        if slot is None:
            slot = cohort.alloc()
            self.setup_slots(cohort, np.array([slot]), [detector], [start], settings)
        self.cohort, self.slot = cohort, slot
        self.other_threshold = None  # a threshold of another kind than SPOT (per entity), once calibrated
        self.calib: list[float] | tuple = ()  # its own first scores, while it calibrates on them (a list then)
        if start is not None:
            if start.spot is None and start.other is not None:
                self.other_threshold = threshold_from_state(start.other)
        elif detector is not None and settings.calibration == "train" and len(detector.train_reconstruction):
            train = Scores(detector.train_reconstruction, None, detector.train_divergence)
            self.calibrate(fuse(train, settings.fusion, settings.fusion_weight).astype(np.float64), settings)
        # The incident rule counts raw evidence: a smoothed score carries each raw point into the next
        # smooth - 1 points, so one spike makes up to ``smooth`` alarms; "open_after alarms within
        # open_window" is asked of distinct raw points, i.e. smooth - 1 more alarms in a window as much longer.
        extra = max(settings.smooth, 1) - 1
        self.incidents = IncidentTracker(entity, settings.close_after, settings.update_every, settings.top_k,
                                         settings.open_after + extra, settings.open_window + extra)
        self._counts: Counter | None = None  # its rarer counts (imputed, dlq), once it has one
        # Set by recovery: alerts at or before this timestamp were already published (scores: the cohort's
        # ``suppress_scores_ts``).
        self.suppress_alerts_ts = -math.inf
        self.drift_start: float | None = None  # ts of its current drift event, if drifting
        self.stored_at: int | None = None  # offset of its latest state record in vigil.state

    @staticmethod
    def setup_slots(cohort: Cohort, slots: np.ndarray, detectors: list[Detector | None], starts: list[Start | None],
                    settings: Settings) -> None:
        """The cohort's rows of new entities, each as its ``start`` says: exactly what ``calibrate`` of the
        same scores would give (without one: uncalibrated); no history, their clocks unset. A fleet's
        first readings set up their entities' slots in one step (``many``)."""
        nan = np.full(cohort.channels, np.nan)
        cohort.windows.reset(slots, np.array([nan if d is None or getattr(d, "mean", None) is None
                                              else np.asarray(d.mean, np.float64) for d in detectors]))
        cohort.smoothing.reset(slots)
        level = [st.level if st is not None and st.level is not None else (1.0, 1.0, 1.0) for st in starts]
        window, base, threshold = (np.array(c, np.float64) for c in zip(*level))
        cohort.levels.reset(slots, window, base, threshold,
                            on=np.array([st is not None and st.level is not None for st in starts]))
        if cohort.spot is not None:
            calibrated = np.array([st is not None and st.spot is not None for st in starts])
            if calibrated.any():
                cohort.spot.put_many(slots[calibrated], [st.spot for st in starts if st is not None and st.spot is not None])
            if not calibrated.all():
                cohort.spot.reset(slots[~calibrated], **settings.threshold_config())
        cohort.last_ts[slots] = -math.inf
        cohort.floor[slots] = [0.0 if st is None else st.floor for st in starts]
        # operators' feedback, through the trainer: the served threshold is the calibrated one times this
        cohort.threshold_scale[slots] = [1.0 if d is None else float(getattr(d, "threshold_scale", 1.0))
                                         for d in detectors]
        cohort.scored[slots] = 0
        cohort.suppress_scores_ts[slots] = -math.inf
        cohort.touched[slots] = time.monotonic()  # last micro-batch with a reading of it (for eviction)

    @classmethod
    def many(cls, entities: list[str], partitions: list[int], names: list[str], detectors: list[Detector | None],
             starts: list[Start | None], settings: Settings, cohort: Cohort,
             channels: ChannelMap | None = None) -> list[EntityState]:
        """New entities of one shape (``names``), each as ``EntityState(entity, partition, names, detector,
        settings, cohort, start, channels)`` would be, their slots set up together: one by one, a fleet's
        first contact cost more than its readings."""
        slots = cohort.alloc_many(len(entities))
        cls.setup_slots(cohort, slots, detectors, starts, settings)
        return [cls(*a, names, d, settings, cohort, st, channels, slot)
                for a, d, st, slot in zip(zip(entities, partitions), detectors, starts, slots.tolist())]

    # ---- its slot of the cohort's state ---------------------------------------------------------------
    last_ts = CohortValue("last_ts")
    touched = CohortValue("touched")
    suppress_scores_ts = CohortValue("suppress_scores_ts")
    watched = CohortValue("watched")  # set by an observer that keeps this entity's points (``Observer``)
    floor = CohortValue("floor")
    threshold_scale = CohortValue("threshold_scale")

    @property
    def window(self) -> EntityWindow:
        return EntityWindow(0, 0, 0, columns=self.cohort.windows, slot=self.slot)

    @property
    def smoother(self) -> Smoother:
        return Smoother(0, 0, columns=self.cohort.smoothing, slot=self.slot)

    @property
    def threshold(self):
        """The threshold in force (None while it calibrates)."""
        if self.cohort.spot is None:
            return self.other_threshold
        return SpotThreshold.of(self.cohort.spot, self.slot) if self.cohort.spot.ready(self.slot) else None

    @property
    def level(self) -> Level | None:
        return Level(0, 0, 0, columns=self.cohort.levels, slot=self.slot) if self.cohort.levels.on[self.slot] else None

    def note_busy(self) -> None:
        """Tell the cohort whether its incidents need a visit whatever its scores (``Cohort.busy``)."""
        inc = self.incidents
        self.cohort.busy[self.slot] = inc.open is not None or bool(inc.candidates) or self.drift_start is not None

    def taken(self, cohort: Cohort, slot: int) -> EntityState:
        """This entity as it is now, for its checkpoint record to be written later whatever happens to it
        meanwhile: its cohort rows are ``slot`` of ``cohort`` (``Cohort.gather``), its own parts taken."""
        out = object.__new__(EntityState)
        out.__dict__.update(self.__dict__)
        out.cohort, out.slot = cohort, slot
        incidents = self.incidents.to_state()
        out.incidents = _Taken({**incidents, "candidates": list(incidents["candidates"])})
        if self.other_threshold is not None:
            out.other_threshold = _Taken(self.other_threshold.to_state())
        out.calib = list(self.calib)
        out._counts = Counter(self._counts) if self._counts else None
        return out

    def release(self) -> None:
        """The entity leaves this worker's memory: its slot goes to the next entity."""
        self.cohort.release(self.slot)

    def calibrate(self, scores: np.ndarray, settings: Settings) -> None:
        """The threshold from a model's calibration scores (in time order), smoothed as the stream
        smooths its scores."""
        self.set_threshold(self.smoother.smooth(scores), settings)

    def set_threshold(self, smoothed: np.ndarray, settings: Settings, trim: bool = False) -> None:
        """Threshold and level from smoothed calibration scores; ``trim``: less the far-out ones (an
        entity's own first points, which nobody has checked)."""
        scores = trim_far_out(smoothed) if trim else smoothed
        if self.cohort.spot is not None:
            self.cohort.spot.reset(self.slot, **settings.threshold_config())
            self.cohort.spot.calibrate(self.slot, scores)
        else:
            self.other_threshold = make_threshold(settings.threshold, **settings.threshold_config())
            self.other_threshold.calibrate(scores)
        self.floor = floor_for(smoothed)
        served = max(self.threshold.threshold * self.threshold_scale, self.floor)
        if settings.level_window:
            self.cohort.levels.calibrate(self.slot, settings.level_window, smoothed, served)
        else:
            self.cohort.levels.reset(self.slot)

    @property
    def counts(self) -> Counter:
        """Its counts other than ``scored`` (which its cohort keeps: every entity, every micro-batch)."""
        if self._counts is None:
            self._counts = Counter()
        return self._counts

    def count_dict(self) -> dict:
        return {**(self._counts or {}), "scored": int(self.cohort.scored[self.slot])}

    def set_counts(self, counts: dict) -> None:
        counts = dict(counts)
        self.cohort.scored[self.slot] = int(counts.pop("scored", 0))
        self._counts = Counter(counts) if counts else None

    def start(self) -> Start:
        """This entity's calibration, for ``setup_slots`` of other entities that the same detector serves."""
        spot, lv, s = self.cohort.spot, self.cohort.levels, self.slot
        level = (float(lv.window[s]), float(lv.base[s]), float(lv.base_threshold[s])) if lv.on[s] else None
        return Start(spot.take(s) if spot is not None else None,
                     self.other_threshold.to_state() if spot is None and self.other_threshold else None,
                     self.floor, level)

    def to_state(self, history: bool = True) -> dict:
        threshold, level = self.threshold, self.level
        return {"entity": self.entity, "names": self.names, "model": self.model, "last_ts": self.last_ts,
                "window": self.window.to_state(history),
                "threshold": threshold.to_state() if threshold else None, "floor": self.floor,
                "level": level.to_state() if level else None, "smoother": self.smoother.to_state(),
                "calib": self.calib, "streaming": self.streaming.to_state() if self.streaming else None,
                "incident": self.incidents.to_state(), "counts": self.count_dict(), "drift_start": self.drift_start}

    def load_state(self, state: dict) -> None:
        self.last_ts = state["last_ts"]
        self.window.load_state(state["window"])
        self.incidents.load_state(state["incident"])
        self.set_counts(state["counts"])
        self.drift_start = state.get("drift_start")
        self.note_busy()
        if state["model"] == self.model:  # a new model version recalibrates from scratch
            if state["threshold"] is not None:
                saved = state["threshold"]
                if self.cohort.spot is not None and saved.get("kind") == SpotThreshold.kind:
                    self.cohort.spot.load_state(self.slot, saved)
                else:
                    self.other_threshold = threshold_from_state(saved)
                self.floor = float(state.get("floor", 0.0))
            if state.get("level") is not None:
                self.cohort.levels.load_state(self.slot, state["level"])  # an old format keeps the calibrated one
            if state.get("smoother") is not None and state["smoother"]["k"] == self.cohort.smoothing.k:
                self.smoother.load_state(state["smoother"])
            self.calib = list(state["calib"]) if state["calib"] else ()
            streaming = state.get("streaming", state.get("coldstart"))  # "coldstart": before 2026-11-30
            if self.streaming is not None and streaming is not None:
                self.streaming.load_state(streaming)


@dataclass
class Rows:
    """A cohort's rows of one micro-batch on their way through scoring: the entities (a segment each, in
    order), their rows and the messages they came from."""

    cohort: Cohort
    entities: list[EntityState]
    seg: Segments
    ts: np.ndarray  # [R]
    values: np.ndarray  # [R, C] imputed
    lengths: np.ndarray  # [M] rows of each message, in row order
    msg_seg: np.ndarray  # [M] the segment each message belongs to
    written: np.ndarray  # [M] each message's Kafka timestamp (NaN: not known)
    reconstruction: np.ndarray | None = None  # [R] scores, once scored
    channel: np.ndarray | None = None  # [R, C]
    divergence: np.ndarray | None = None  # [R] (NaN where the model has none), or None: no model has one
    warming: np.ndarray | None = None  # [S] leading rows of a streaming detector's warm-up: no threshold


class Pipeline:
    def __init__(self, settings: Settings, models: dict[str, Detector] | None = None,
                 executor: Executor | None = None, board: Observer | None = None):
        """``models`` maps entity ids to detectors; key ``"*"`` serves every entity whose channels match.
        ``board`` (optional) records recent points and health for the dashboard and /metrics."""
        self.settings = settings
        self.board = board
        if board is not None:
            board.pipeline = self
        self.models = dict(models or {})
        self.executor = executor
        self.entities: dict[str, EntityState] = {}  # live: in memory
        self.cohorts: dict[tuple[int, int], Cohort] = {}  # (channels, model window) -> its entities' state
        self.stacks: dict[tuple, Stack] = {}  # stack key -> the stacked models of that kind (detectors.base)
        self.starts: dict[int, tuple[Detector, Start]] = {}  # id(detector) -> (it, its calibration)
        self.stack_keys: dict[int, tuple[Detector, tuple]] = {}  # id(detector) -> (it, its stack key)
        self.groups: dict[tuple, int] = {}  # stack key -> its number (``Cohort.stack_group``)
        self.group_keys: list[tuple] = []  # number -> stack key
        self.channel_maps: dict[tuple, ChannelMap] = {}  # channel names -> the map their entities share
        self.partitions: dict[int, PartitionState] = defaultdict(PartitionState)
        self.metrics = Counter()
        self._suppress: dict[str, tuple[float, float]] = {}  # recovery's findings for entities not in memory
        self.snapshots: dict[int, Snapshot] = {}  # partition -> its checkpoint under way
        # ``await loader(partition, offsets) -> [state bytes | None]`` reads evicted entities' state
        # records back (the runner reads them from vigil.state); None: nothing is ever evicted.
        self.loader = None
        self._told: list[tuple] = []  # the board's calls of the micro-batch under way (``_tell``)

    def known_entities(self) -> int:
        # a copy of the partitions first: the board asks from the loop while a micro-batch runs (``process``)
        return len(self.entities) + sum(len(p.evicted) for p in list(self.partitions.values()))

    # ---- entity stage -------------------------------------------------------------------------
    def _model_for(self, entity: str, names: list[str] | None, width: int) -> Detector | None:
        """The entity's own model, else the default model when the channels fit, else None (cold start)."""
        det = self.models.get(entity)
        default = self.models.get("*")
        if det is None and default is not None and (
                names is not None and set(names) <= set(default.channels)
                or names is None and width == len(default.channels)):
            det = default
        return det

    def _cohort(self, names: list[str], det: Detector | None) -> Cohort:
        if det is None:
            length = self.settings.window
        elif det.context is not None:  # a point-wise model scores a row from its last ``context`` rows alone:
            length = det.context       # its entities keep no more history (memory, checkpoints, copies)
        else:
            length = int(det.info.config.get("window", self.settings.window))
        key = (len(names), length)
        cohort = self.cohorts.get(key)
        if cohort is None:
            cohort = self.cohorts[key] = Cohort(len(names), length, self.settings)
        return cohort

    def _state(self, entity: str, partition: int, names: list[str], det: Detector | None) -> EntityState:
        """A new entity's state, in the cohort of its shape (``_states``)."""
        return self._states([(entity, partition, det)], names)[0]

    def _states(self, new: list[tuple[str, int, Detector | None]], names: list[str]) -> list[EntityState]:
        """New entities' states, (entity, partition, detector) each, all of channels ``names``: in the
        cohort of each one's shape, a cohort's set up together (``EntityState.many``)."""
        channels = self.channel_maps.get(tuple(names))
        if channels is None:
            if len(self.channel_maps) >= 10_000:  # names of every kind ever seen: start over past that
                self.channel_maps.clear()
            channels = self.channel_maps[tuple(names)] = ChannelMap(names)
        by_cohort: dict[int, tuple[Cohort, list]] = {}
        for item in new:
            cohort = self._cohort(names, item[2])
            by_cohort.setdefault(id(cohort), (cohort, []))[1].append(item)
        made = {}
        for cohort, members in by_cohort.values():
            entities, partitions, dets = (list(c) for c in zip(*members))
            starts = [self.start(d) for d in dets]
            ents = EntityState.many(entities, partitions, names, dets, starts, self.settings, cohort, channels)
            slots = np.array([e.slot for e in ents])
            places = np.array([self._place(d) for d in dets]).reshape(-1, 2)
            cohort.stack_group[slots], cohort.stack_row[slots] = places[:, 0], places[:, 1]
            for ent, det in zip(ents, dets):
                if det is not None and self.models.get(ent.entity) is det:
                    self.starts.pop(id(det), None)  # its own model: no other entity starts from it
                made[ent.entity] = ent
        return [made[entity] for entity, _, _ in new]

    def start(self, det: Detector | None) -> Start | None:
        """The calibration that ``det``'s training scores give (None: it has none to give), computed once
        per detector: thousands of entities may share a model, and the GPD fit and sorts of a calibration
        cost more than everything else an entity's first point needs."""
        if det is None or self.settings.calibration != "train" or not len(det.train_reconstruction):
            return None
        hit = self.starts.get(id(det))
        if hit is None or hit[0] is not det:
            names = list(det.channels)
            probe = EntityState("", 0, names, det, self.settings, self._cohort(names, det))
            hit = self.starts[id(det)] = (det, probe.start())
            probe.release()
        return hit[1]

    def prepare(self, progress: bool = False) -> None:
        """Calibrate every model now rather than at its entity's first reading (the worker calls this
        before it consumes, so that no first reading waits for a calibration on the event loop)."""
        dets = list({id(d): d for d in self.models.values()}.values())
        for det in tqdm(dets, desc="calibrating models", unit="model", disable=not progress or len(dets) < 100):
            self.start(det)
            self._place(det)  # its row of its kind's stack, now

    def _new_entities(self, firsts: list[tuple[Readings, int]]) -> set[str]:
        """States for the entities of a micro-batch not in memory (each one's first readings and their
        partition), as many as ``max_entities`` leaves room for; the names of those made. Those of one
        list of channels are made together (``_states``)."""
        room = max(0, self.settings.max_entities - self.known_entities())
        by_names: dict[tuple, list] = {}
        for readings, partition in firsts[:room]:
            width = readings.values.shape[1]
            det = self._model_for(readings.entity, readings.names, width)
            if det is not None:
                names = det.channels
            else:
                names = readings.names if readings.names else [f"ch{i}" for i in range(width)]
            by_names.setdefault(tuple(names), []).append((readings.entity, partition, det))
        for names, new in by_names.items():
            for ent in self._states(new, list(names)):
                self.entities[ent.entity] = ent
                suppress = self._suppress.pop(ent.entity, None)
                if suppress is not None:
                    ent.suppress_scores_ts, ent.suppress_alerts_ts = suppress
        self.metrics["entities"] += min(room, len(firsts))
        return {readings.entity for readings, _ in firsts[:room]}

    def _align(self, ent: EntityState, readings: Readings) -> np.ndarray | str:
        """The readings' values in the entity's channel order, NaN where missing; or a reason."""
        vals = readings.values
        c = len(ent.names)
        if readings.names is None:
            if vals.shape[1] > c:
                return f"too_many_values: {vals.shape[1]} values, entity {ent.entity!r} has {c} channels"
            if vals.shape[1] < c:
                vals = np.concatenate([vals, np.full((len(vals), c - vals.shape[1]), np.nan)], axis=1)
            return vals
        layout = ent.layouts.get(tuple(readings.names))
        if layout is None:
            unknown = [n for n in readings.names if n not in ent.index]
            if unknown:
                return (f"too_many_values: channel {unknown[0]!r} is not one of entity {ent.entity!r}'s "
                        f"channels")
            if len(ent.layouts) >= ChannelMap.MAX_LAYOUTS:
                ent.layouts.clear()
            layout = ent.layouts[tuple(readings.names)] = np.array([ent.index[n] for n in readings.names])
            if len(layout) == c and (layout == np.arange(c)).all():
                layout = ent.layouts[tuple(readings.names)] = slice(None)
        if isinstance(layout, slice):
            return vals
        out = np.full((len(vals), c), np.nan)
        out[:, layout] = vals
        return out

    # ---- the batch ------------------------------------------------------------------------------
    async def process(self, messages: list[Message]) -> Outputs:
        """One micro-batch: its outputs. Its work runs in the executor, off the event loop, so that the
        loop answers heartbeats, fetches and ``/metrics`` meanwhile (it gets the GIL every few
        milliseconds: ``sys.getswitchinterval``); only reading evicted entities back (I/O) and telling
        the board (the loop's, as the dashboard reads it) happen on the loop."""
        out = Outputs()
        self._told = []  # not those of a micro-batch that raised
        by_entity = await self._off_loop(self._decode, messages, out)
        await self._load_evicted(by_entity)
        await self._off_loop(self._score_batch, by_entity, out)
        told, self._told = self._told, []
        for call, args in told:
            call(*args)
        return out

    async def _off_loop(self, work, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, work, *args)

    def _tell(self, call, *args) -> None:
        """Call ``call`` (the board's) on the loop once the micro-batch's work is done (``process``)."""
        self._told.append((call, args))

    def _decode(self, messages: list[Message], out: Outputs) -> dict[str, list]:
        """The micro-batch's readings by entity, [(message, readings)] in arrival order; the messages that
        cannot be used dead-lettered. A checkpoint under way takes the entities first (``_keep``)."""
        by_entity: dict[str, list] = {}
        todo = []  # the messages not seen before, in offset order
        for msg in messages:
            part = self.partitions[msg.partition]
            if msg.offset <= part.input_offset:
                self.metrics["replayed_skipped"] += 1
                continue
            part.input_offset = msg.offset if msg.undecodable is None else msg.undecodable[0]
            todo.append(msg)
        decoded = iter(decode_many([m.value for m in todo if m.undecodable is None], self.settings.max_message_bytes))
        for msg in todo:
            if msg.undecodable is not None:  # a range of offsets: one dead letter for all of them
                last, reason = msg.undecodable
                self.metrics["messages"] += last - msg.offset + 1
                self._reject(out, msg, reason, last_offset=last)
                continue
            self.metrics["messages"] += 1
            readings = next(decoded)
            if type(readings) is Rejection:
                self._reject(out, msg, readings.reason)
                continue
            mine = by_entity.get(readings.entity)
            if mine is None:
                by_entity[readings.entity] = [(msg, readings)]
            else:
                mine.append((msg, readings))
        if self.snapshots:
            self._keep(by_entity)
        return by_entity

    def _score_batch(self, by_entity: dict[str, list], out: Outputs) -> None:
        """The micro-batch's entities (new ones made), their rows scored, thresholds, incidents, outputs."""
        made = self._new_entities([(items[0][1], items[0][0].partition) for entity, items in by_entity.items()
                                   if entity not in self.entities])
        by_cohort: dict[Cohort, list] = {}
        for entity, items in by_entity.items():
            ent = self.entities.get(entity)
            if ent is None:
                for msg, _ in items:
                    self._reject(out, msg, f"too_many_entities: this worker already holds "
                                 f"{self.settings.max_entities} entities (--max-entities)")
                continue
            ent.partition = items[0][0].partition
            by_cohort.setdefault(ent.cohort, []).append((ent, items, entity in made))
        batches = [b for b in (self._rows(c, members, out) for c, members in by_cohort.items()) if b is not None]
        self._score(batches)
        for rows in batches:
            self._finish(rows, out)

    def _rows(self, cohort: Cohort, members: list, out: Outputs) -> Rows | None:
        """A cohort's rows of this micro-batch: aligned, validated (every entity's in one step; an entity
        with a row out of order or from the future on its own), imputed."""
        ents, parts, msgs, lengths, counts = [], [], [], [], []
        for ent, items, new in members:
            n = 0
            names = ent.names
            for msg, readings in items:
                if type(readings) is Reading and (readings.names == names if readings.names is not None
                                                  else readings.stack.values.shape[1] == len(names)):
                    parts.append(readings)  # in the entity's order already: a row of the stack
                    lengths.append(1)
                else:
                    aligned = self._align(ent, readings)
                    if isinstance(aligned, str):
                        self._reject(out, msg, aligned, ent)
                        continue
                    parts.append((readings.ts, aligned))
                    lengths.append(len(readings.ts))
                msgs.append(msg)
                n += 1
            if n:
                ents.append(ent)
                counts.append(n)
            elif new:
                self._forget_new(ent)
        if not ents:
            return None
        ts, values = _stack(parts)
        lengths = np.array(lengths, np.int64)
        written = np.array([np.nan if m.timestamp is None else m.timestamp for m in msgs])
        msg_seg = np.repeat(np.arange(len(ents)), counts)
        seg = Segments(np.array([e.slot for e in ents]), np.bincount(msg_seg, weights=lengths,
                                                                        minlength=len(ents)).astype(np.int64))
        keep = self._check_times(cohort, seg, ents, ts, msgs, lengths, msg_seg, out)
        if keep is not None:
            owner = np.repeat(np.arange(len(msgs)), lengths)
            lengths = np.bincount(owner[keep], minlength=len(msgs))
            ts, values = ts[keep], values[keep]
            used = lengths > 0
            lengths, msg_seg, written = lengths[used], msg_seg[used], written[used]
            per_ent = np.bincount(msg_seg, weights=lengths, minlength=len(ents)).astype(np.int64)
            for i in np.flatnonzero(per_ent == 0).tolist():  # none of its rows could be used
                if any(e is ents[i] and new for e, _, new in members):
                    self._forget_new(ents[i])
            alive = per_ent > 0
            msg_seg = np.cumsum(alive)[msg_seg] - 1
            ents = [e for e, a in zip(ents, alive) if a]
            if not ents:
                return None
            seg = Segments(np.array([e.slot for e in ents]), per_ent[alive])
        cohort.last_ts[seg.slot] = ts[seg.last()]
        cohort.touched[seg.slot] = time.monotonic()
        missing = np.add.reduceat(np.isnan(values).sum(1), seg.start)
        for ent, m, n in zip(ents, missing.tolist(), seg.length.tolist()):
            if m:
                ent.counts["imputed"] += m
            self.partitions[ent.partition].dirty.add(ent.entity)
        self.metrics["imputed"] += int(missing.sum())
        self.metrics["points"] += len(ts)
        return Rows(cohort, ents, seg, ts, cohort.windows.impute(seg, values), lengths, msg_seg, written)

    def _forget_new(self, ent: EntityState) -> None:
        """A new entity none of whose rows could be used: not worth a place among max_entities."""
        if self.entities.get(ent.entity) is ent:
            del self.entities[ent.entity]
            ent.release()
            if ent.suppress_scores_ts > -math.inf or ent.suppress_alerts_ts > -math.inf:
                self._suppress[ent.entity] = (ent.suppress_scores_ts, ent.suppress_alerts_ts)

    def _check_times(self, cohort: Cohort, seg: Segments, ents: list[EntityState], ts: np.ndarray,
                     msgs: list[Message], lengths: np.ndarray, msg_seg: np.ndarray, out: Outputs) -> np.ndarray | None:
        """Rows to keep (None: all), by ``_check_time``: every entity's rows are checked in one step, and
        an entity with a row at or before the one before it, or from the future, on its own."""
        before = np.empty(len(ts))
        before[1:] = ts[:-1]
        before[seg.start] = cohort.last_ts[seg.slot]
        suspect = ts <= before
        limit = self.settings.max_future
        if limit > 0:
            ahead = np.array([math.inf if m.timestamp is None else m.timestamp + limit for m in msgs])
            suspect |= ts > np.repeat(ahead, lengths)
        bad = np.flatnonzero(np.add.reduceat(suspect, seg.start) > 0)
        if not len(bad):
            return None
        keep = np.ones(len(ts), bool)
        for s in bad.tolist():
            mine = np.flatnonzero(msg_seg == s)
            rows = slice(int(seg.start[s]), int(seg.end[s]))
            kept = self._check_time(ents[s], [msgs[m] for m in mine.tolist()], lengths[mine], ts[rows], out)
            if kept is not None:
                keep[rows] = kept
        return keep

    def _check_time(self, ent: EntityState, kept: list[Message], lengths: np.ndarray, ts: np.ndarray,
                    out: Outputs) -> np.ndarray | None:
        """Rows to keep (None: all): timestamps must increase strictly per entity and must not lie more
        than ``max_future`` seconds ahead of their record's Kafka timestamp.

        A row from the future is refused before it can move the entity's clock, so one glitch (a
        device clock jumping to the year 3000) costs that row only, not every reading after it.
        """
        limit = self.settings.max_future
        future = None
        if limit > 0:
            ahead = np.array([math.inf if m.timestamp is None else m.timestamp + limit for m in kept])
            future = ts > np.repeat(ahead, lengths)
        clock = ts if future is None or not future.any() else np.where(future, -math.inf, ts)
        before = np.maximum.accumulate(np.concatenate([[ent.last_ts], clock[:-1]]))
        bad_order = ts <= before
        if future is not None:
            bad_order &= ~future
        if not bad_order.any() and (future is None or not future.any()):
            return None
        owner = np.repeat(np.arange(len(kept)), lengths)
        first_row = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        kinds = [("future_ts", future, "more than {limit:g} s ahead of the record's Kafka timestamp"),
                 ("order", bad_order, "not after the entity's last timestamp")]
        for code, bad, why in kinds:
            if bad is None or not bad.any():
                continue
            for j in np.unique(owner[bad]).tolist():
                rows = np.flatnonzero(bad & (owner == j))
                if code == "order":
                    code_j = "duplicate_ts" if (ts[rows] == before[rows]).any() else "out_of_order"
                else:
                    code_j = code
                self._reject(out, kept[j], f"{code_j}: {len(rows)} of {lengths[j]} rows are "
                             f"{why.format(limit=limit)}", ent,
                             rows=(rows - first_row[j]).tolist() if len(rows) < lengths[j] else None)
        return ~(bad_order | future) if future is not None else ~bad_order

    def _score(self, batches: list[Rows]) -> None:
        """Every cohort's rows scored: a streaming detector's row by row (its own), the others over their
        windows, one detector call per model, or per stack of models of one kind (``Stack``)."""
        jobs, places = [], []  # (detector or stack, windows, rows or None); (rows batch, window -> row mask)
        streams = []  # (rows batch, its rows of one entity, the entity) of streaming detectors
        for rows in batches:
            cohort, seg = rows.cohort, rows.seg
            r = len(rows.ts)
            rows.reconstruction = np.zeros(r, np.float32)
            rows.channel = np.zeros((r, cohort.channels), np.float32)
            rows.warming = np.zeros(len(seg.slot), np.int64)
            streaming = cohort.stack_group[seg.slot] < 0
            if streaming.any():
                cold = seg.select(streaming)
                cohort.windows.extend(cold, rows.values[seg.rows_of(streaming)])
                for s in np.flatnonzero(streaming).tolist():
                    ent, sl = rows.entities[s], slice(int(seg.start[s]), int(seg.end[s]))
                    rows.warming[s] = min(int(seg.length[s]), ent.streaming.ready_from())
                    streams.append((rows, sl, ent))
            if streaming.all():
                continue
            model = ~streaming
            mseg, mrows = seg.select(model), seg.rows_of(model)
            windows, counts = cohort.windows.push(mseg, rows.values[mrows], rows.lengths[model[rows.msg_seg]])
            # each window's new rows are its last ``count`` rows, in row order: its rows in the batch
            ends = np.cumsum(counts) - 1
            owner = mseg.row_seg[ends]  # the (model) segment of each window
            of_model = np.flatnonzero(model)  # model segment -> segment
            group, stack_row = cohort.stack_group[mseg.slot], cohort.stack_row[mseg.slot]
            for g in np.unique(group).tolist():
                members = np.flatnonzero(group == g)
                key = self.group_keys[g]
                take = np.isin(owner, members) if len(members) < len(group) else np.ones(len(owner), bool)
                w, c = windows[take], counts[take]
                det = rows.entities[int(of_model[members[0]])].detector
                if det.context is not None:  # a point-wise model needs only the rows it scores
                    w = w[:, -max(det.context, int(c.max())):]
                at = stack_row[owner[take]]
                if key[0] == "one" or (at == at[0]).all():  # one detector
                    jobs.append((det, w, None))
                else:
                    jobs.append((self.stacks[key], w, at))
                mask = np.arange(w.shape[1]) >= w.shape[1] - c[:, None]
                places.append((rows, mrows[np.flatnonzero(np.repeat(take, counts))], mask))
        if not jobs and not streams:
            return
        results, learnt = _score_all(jobs, [(ent.streaming, rows.values[sl]) for rows, sl, ent in streams])
        for (rows, sl, ent), sc in zip(streams, learnt):
            sc = judge_scores(sc, ent.cold_judged)
            rows.reconstruction[sl], rows.channel[sl] = sc.reconstruction, sc.channel
            if sc.divergence is not None:
                self._divergence(rows)[sl] = sc.divergence
        for (rows, at, mask), (_, windows, _), (scores, seconds) in zip(places, jobs, results):
            if self.board is not None:
                self._tell(self.board.inference, seconds)
            self.metrics["windows"] += len(windows)
            self.metrics["batches"] += 1
            rows.reconstruction[at] = scores.reconstruction[mask]
            rows.channel[at] = scores.channel[mask]
            if scores.divergence is not None:
                self._divergence(rows)[at] = scores.divergence[mask]

    def _place(self, det: Detector | None) -> tuple[int, int]:
        """Where ``det``'s windows are scored: the number of its stack key and its row in that key's stack
        (``Stack``); (-1, 0) without a detector (a streaming detector of the entity's own). Asked once per
        entity, so that a micro-batch groups its entities' windows in numpy steps."""
        if det is None:
            return -1, 0
        key = self._stack_key(det)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = len(self.group_keys)
            self.group_keys.append(key)
        if key[0] == "one":
            return group, 0
        stack = self.stacks.get(key)
        if stack is None:
            stack = self.stacks[key] = Stack()
        return group, stack.row(det)

    def _stack_key(self, det: Detector) -> tuple:
        """The group ``det``'s windows are scored in (``Detector.stack_key``, or its own), asked once."""
        hit = self.stack_keys.get(id(det))
        if hit is None or hit[0] is not det:
            hit = self.stack_keys[id(det)] = (det, det.stack_key() or ("one", id(det)))
        return hit[1]

    @staticmethod
    def _divergence(rows: Rows) -> np.ndarray:
        if rows.divergence is None:
            rows.divergence = np.full(len(rows.ts), np.nan, np.float32)
        return rows.divergence

    def _finish(self, rows: Rows, out: Outputs) -> None:
        """Fusion, smoothing, level and threshold for every row of the cohort at once; then per entity its
        incidents, drift records and the records to publish."""
        cohort, seg, ts = rows.cohort, rows.seg, rows.ts
        score = self._fused(rows)
        score, channel = cohort.smoothing.apply(seg, score, self._finite(rows.channel))
        thr = np.full(len(ts), np.nan)
        alarm = np.zeros(len(ts), bool)
        drift = median = None
        # the common case in one step: a calibrated SPOT, no warm-up (else each entity on its own)
        fast = (rows.warming == 0) & (~np.isnan(cohort.spot.z[seg.slot]) if cohort.spot is not None
                                      else np.zeros(len(seg.slot), bool))
        if fast.any():
            fseg, at = seg.select(fast), seg.rows_of(fast)
            x = np.asarray(score[at], np.float64)
            scale = np.ones(len(x))
            on = cohort.levels.on[fseg.slot]
            if on.any():  # an entity without a level (off, or not calibrated) is served unscaled
                drift, median = np.zeros(len(ts), bool), np.zeros(len(ts))
                lseg, lrows = fseg.select(on), fseg.rows_of(on)
                lv = cohort.levels.scales(lseg, ts[at][lrows], x[lrows])
                scale[lrows] = lv.scale
                drift[at[lrows]], median[at[lrows]] = lv.drift, lv.median
                with_level = np.zeros(len(seg.slot), bool)
                with_level[np.flatnonzero(fast)[on]] = True
            learnt, _ = cohort.spot.step(fseg, x / scale)
            # the threshold learns as before; only the served one moves (feedback's scale, the floor)
            served = learnt * cohort.threshold_scale[fseg.row_slot]
            floor = cohort.floor[fseg.row_slot]
            served = np.where(served < floor, floor, served)
            alarm[at] = x / scale > served
            thr[at] = served * scale
        own = {}
        for s in np.flatnonzero(~fast).tolist():
            ent, sl = rows.entities[s], slice(int(seg.start[s]), int(seg.end[s]))
            thr[sl], alarm[sl], own[s] = self._threshold(ent, ts[sl], score[sl], int(rows.warming[s]))
        # Per entity, only what is its own: Python visits an entity's incidents only where it alarms, has
        # one open or pending, drifts or its level starts drifting (``Cohort.busy``); the others' quiet
        # points pass without a visit (their trackers need no clock while nothing is pending).
        visit = np.logical_or.reduceat(alarm, seg.start) | cohort.busy[seg.slot]
        if drift is not None:
            visit |= np.logical_or.reduceat(drift, seg.start) & with_level
        visit[list(own)] = True
        bounds = list(zip(seg.start.tolist(), seg.end.tolist()))
        np.add.at(cohort.scored, seg.slot, seg.length)
        div = rows.divergence
        alerts_of: dict[int, list] = {}
        for s in np.flatnonzero(visit).tolist():
            ent, (a, b) = rows.entities[s], bounds[s]
            level = own.get(s)
            if level is None and drift is not None and with_level[s]:
                level = LevelOut(np.ones(b - a), drift[a:b], median[a:b])
            sl = slice(a, b)
            scores = Scores(rows.reconstruction[sl], channel[sl], None if div is None or np.isnan(div[a]) else div[sl])
            alerts = self._alerts(ent, ts[sl], score[sl], thr[sl], alarm[sl], channel[sl], scores, level)
            if alerts:
                alerts_of[s] = alerts
            ent.note_busy()
        if self.board is not None:
            passable = ~cohort.watched[seg.slot]
            passable[list(alerts_of)] = False
            self._tell(self.board.observe_many, rows.entities, bounds, ts, score, thr, channel, rows.values, alerts_of,
                       passable)
        self._publish(rows, bounds, score, thr, channel, alerts_of, out)

    def _publish(self, rows: Rows, bounds: list, score: np.ndarray, thr: np.ndarray, channel: np.ndarray,
                 alerts_of: dict[int, list], out: Outputs) -> None:
        """Each entity's score record and alerts, less what a recovery found already published."""
        ts, ents = rows.ts, rows.entities
        suppress = rows.cohort.suppress_scores_ts[rows.seg.slot]
        fresh = ts > np.repeat(suppress, rows.seg.length) if (suppress > -math.inf).any() else None
        channels = channel if self.settings.score_channels else None
        names = [e.entity for e in ents]
        records = encode_score_records(names, [e.model for e in ents], bounds, ts, score, thr, channels, fresh)
        out.scores += [Record(ents[s].partition, names[s].encode(), v) for s, values in records for v in values]
        if alerts_of:
            ends = np.cumsum(rows.lengths)
        for s, alerts in alerts_of.items():
            ent, (a, b) = rows.entities[s], bounds[s]
            key = ent.entity.encode()
            for alert in alerts:
                if alert["ts"] > ent.suppress_alerts_ts:
                    # when the reading that raised it reached Kafka: the alert record's own timestamp
                    # minus this is its age (live, under a second; raised catching up, the backlog's)
                    row = min(a + int(np.searchsorted(ts[a:b], alert["ts"])), b - 1)
                    written = rows.written[int(np.searchsorted(ends, row, side="right"))]
                    if written == written:
                        alert["sent"] = float(written)
                    out.alerts.append(Record(ent.partition, key, encode_alert(alert)))
                    self.metrics[f"alerts_{alert['state']}"] += 1

    def _fused(self, rows: Rows) -> np.ndarray:
        """Each row's fused score (``fusion.fuse``), overflows capped (``_finite``)."""
        div = rows.divergence
        if div is None:
            return self._finite(fuse(Scores(rows.reconstruction, rows.channel), self.settings.fusion,
                                     self.settings.fusion_weight))
        has = ~np.isnan(div)
        fused = fuse(Scores(rows.reconstruction, rows.channel, np.where(has, div, 0.0).astype(np.float32)),
                     self.settings.fusion, self.settings.fusion_weight)
        return self._finite(np.where(has, fused, rows.reconstruction))

    def _finite(self, x: np.ndarray) -> np.ndarray:
        """Scores that overflowed inside a detector (inf, NaN) become SCORE_CAP, counted."""
        bad = ~np.isfinite(x)
        if not bad.any():
            return x
        self.metrics["nonfinite_scores"] += int(bad.sum())
        return np.where(bad, SCORE_CAP, np.minimum(x, SCORE_CAP))

    def _threshold(self, ent: EntityState, ts: np.ndarray, score: np.ndarray,
                   warming: int = 0) -> tuple[np.ndarray, np.ndarray, LevelOut | None]:
        """One entity's thresholds and alarms, and what its level says of each point (None: no level yet),
        when it is not the common case: NaN threshold and no alarm while the detector warms up (the first
        ``warming`` points) and while the threshold calibrates on the points after them (the level says
        nothing of those). The threshold scales with the entity's recent level (``conditioning.Level``)
        and with the model's ``threshold_scale`` (operators' feedback, ``training.feedback``)."""
        thr = np.full(len(score), np.nan)
        alarm = np.zeros(len(score), bool)
        start = warming
        if ent.threshold is None:
            points = self.settings.calibration_points if ent.streaming is None else self.settings.cold_calibration_points
            if not isinstance(ent.calib, list):
                ent.calib = []
            need = points - len(ent.calib)
            # an overflowed score says nothing about the normal range: not a calibration point
            ent.calib.extend(float(s) for s in score[warming:warming + need] if s < SCORE_CAP)
            start = min(warming + need, len(score))
            if len(ent.calib) >= points:
                ent.set_threshold(np.asarray(ent.calib), self.settings, trim=ent.streaming is not None)
                ent.calib = []
        level = None
        if ent.threshold is not None and start < len(score):
            x = score[start:].astype(np.float64)
            scale = np.ones(len(x))
            if ent.level is not None:
                part = ent.level.scales(ts[start:], x)
                scale = part.scale
                level = LevelOut(*(np.concatenate([np.zeros(start, a.dtype), a]) for a in part))
            learnt, alarm[start:] = ent.threshold.step(x / scale)
            # the threshold learns as before; only the served one moves (feedback's scale, the floor)
            served = learnt * ent.threshold_scale
            low = served < ent.floor
            if ent.threshold_scale != 1.0 or low.any():
                served = np.where(low, ent.floor, served)
                alarm[start:] = x / scale > served
            thr[start:] = served * scale
        return thr, alarm, level

    def _alerts(self, ent: EntityState, ts: np.ndarray, score: np.ndarray, threshold: np.ndarray, alarm: np.ndarray,
                channel: np.ndarray, s: Scores, level: LevelOut | None) -> list:
        """The incidents' messages (``IncidentTracker``), and the level's: a ``drift`` record where the
        entity starts drifting, naming the channels that score highest at that point (smoothed: what
        departed, for the operator to tell a new mode from a slow fault) and the open incident it
        absorbs, which closes there; a ``drift_end`` where it stops."""
        def incidents(lo: int, hi: int) -> list:
            sl = slice(lo, hi)
            return ent.incidents.observe(ts[sl], score[sl], threshold[sl], alarm[sl], channel[sl], s.reconstruction[sl],
                                         None if s.divergence is None else s.divergence[sl], ent.names, ent.model)
        was = ent.drift_start is not None
        if level is None or not was and not level.drift.any():  # no drift edge
            return incidents(0, len(ts))
        out, lo = [], 0
        for i in np.flatnonzero(level.drift != np.r_[was, level.drift[:-1]]).tolist():
            out += incidents(lo, i)
            lo, median = i, float(level.median[i])
            if level.drift[i]:
                ent.drift_start = float(ts[i])
                record = drift_alert(ent.entity, "drift", float(ts[i]), ent.drift_start, median, ent.level, ent.model,
                                     top_channels(channel[i], ent.names, self.settings.top_k))
                closed = ent.incidents.absorb(float(ts[i]), record["alert_id"], ent.names, ent.model)
                if closed is not None:
                    record["detail"]["absorbs"] = closed["alert_id"]
                    out.append(closed)
                out.append(record)
            else:
                out.append(drift_alert(ent.entity, "drift_end", float(ts[i]), ent.drift_start, median, ent.level,
                                       ent.model))
                ent.drift_start = None
        return out + incidents(lo, len(ts))

    def _reject(self, out: Outputs, msg: Message, reason: str, ent: EntityState | None = None,
                rows: list | None = None, last_offset: int | None = None) -> None:
        """A dead letter (bounded: ``codec.encode_dead_letter``), counted by its reason code."""
        code = reason.split(":", 1)[0]
        self.metrics[f"dlq_{code}"] += 1
        self.metrics["dlq"] += 1
        if ent is not None:
            ent.counts["dlq"] += 1
        if (msg.offset if last_offset is None else last_offset) <= self.partitions[msg.partition].dlq_suppress_offset:
            return
        key, value = encode_dead_letter(reason, self.settings.topics.readings, msg.partition, msg.offset, msg.key,
                                        msg.value, rows, last_offset)
        out.dlq.append(Record(msg.partition, key, value))

    # ---- model swaps ----------------------------------------------------------------------------
    def swap(self, entity: str, detector: Detector) -> None:
        """Serve ``entity`` with ``detector`` from the next micro-batch on (call between batches).

        The entity keeps its timestamp order, window history, imputation state, counts and open
        incident, so no point is dropped or scored twice; its threshold recalibrates from the new
        model's training scores (or its next points, with ``calibration="first"``). An evicted
        entity picks the new model up when it is loaded again.
        """
        self._keep((entity,))
        replaced = self.models.get(entity)
        self.models[entity] = detector
        if replaced is not None and not any(d is replaced for d in self.models.values()):
            self.starts.pop(id(replaced), None)
            self.stack_keys.pop(id(replaced), None)
        old = self.entities.get(entity)
        self.metrics["swaps"] += 1
        if old is None:
            return
        new = self._state(entity, old.partition, list(detector.channels), detector)
        new.last_ts, new.incidents = old.last_ts, old.incidents
        new.note_busy()
        new.watched = old.watched
        new.set_counts(old.count_dict())
        new.suppress_scores_ts, new.suppress_alerts_ts = old.suppress_scores_ts, old.suppress_alerts_ts
        new.stored_at = old.stored_at
        if new.names == old.names:
            keep = new.window.window - 1
            new.window.history = old.window.history[-keep:] if keep else old.window.history[:0]
            new.window.last = old.window.last.copy()
        old.release()
        self.entities[entity] = new
        self.partitions[old.partition].dirty.add(entity)

    # ---- checkpoints, eviction and recovery -----------------------------------------------------
    def checkpoint(self, partition: int) -> list[tuple[bytes, bytes]]:
        """State records for a partition's changed entities, then its offsets, written at once."""
        self.begin_checkpoint(partition)
        return self.checkpoint_step(partition)

    def begin_checkpoint(self, partition: int) -> None:
        """Fix the instant of a partition's checkpoint: its changed entities and its offsets now (the
        dirty set starts afresh). Their records are then written by ``checkpoint_step``, a slice at a
        time between micro-batches, and an entity that a micro-batch or a swap is about to change is
        written first (``_keep``): the records are exactly those of this instant, while scoring goes on."""
        part = self.partitions[partition]
        order = sorted(part.dirty)
        part.dirty = set()
        meta = orjson.dumps({"input_offset": part.input_offset, "out": part.out_offsets})
        self.snapshots[partition] = Snapshot(order, meta, set(order))

    def checkpoint_step(self, partition: int, seconds: float = math.inf) -> list[tuple[bytes, bytes]] | None:
        """Write the records of a checkpoint under way for about ``seconds`` (at least one); its state
        records, then its offsets, once all are written, else None."""
        snap = self.snapshots[partition]
        deadline = time.perf_counter() + seconds
        while snap.next < len(snap.order):
            name = snap.order[snap.next]
            snap.next += 1
            if name in snap.pending or name in snap.taken:
                self._write(snap, name)
                if time.perf_counter() >= deadline:
                    break
        if snap.next < len(snap.order):
            return None
        del self.snapshots[partition]
        records = [(e.encode(), snap.records[e]) for e in snap.order if snap.records[e] is not None]
        records.append((META_KEY, snap.meta))
        return records

    def _keep(self, names) -> None:
        """Entities about to change: a checkpoint under way that still owes their record takes them as
        they are (``EntityState.taken``: their cohorts' rows copied in one step each), to write the
        record in a later slice. A paced fleet's micro-batch touches a good part of a partition's
        entities: writing their records there and then put most of a checkpoint's cost on a few
        micro-batches. A streaming detector's entity is written at once (its state is its own)."""
        for snap in self.snapshots.values():
            if not snap.pending:
                continue
            by_cohort: dict[int, tuple[Cohort, list]] = {}
            for name in names:
                if name in snap.pending:
                    ent = self.entities.get(name)
                    if ent is None or ent.streaming is not None:
                        self._write(snap, name)
                    else:
                        snap.pending.discard(name)
                        by_cohort.setdefault(id(ent.cohort), (ent.cohort, []))[1].append(ent)
            for cohort, ents in by_cohort.values():
                copy_ = cohort.gather(np.array([e.slot for e in ents], np.int64))
                for i, ent in enumerate(ents):
                    snap.taken[ent.entity] = ent.taken(copy_, i)

    def _write(self, snap: Snapshot, name: str) -> None:
        snap.pending.discard(name)
        ent = snap.taken.pop(name, None) or self.entities.get(name)
        snap.records[name] = self._state_record(ent) if ent is not None else None

    def _state_record(self, ent: EntityState) -> bytes | None:
        """An entity's checkpoint, under OUTPUT_LIMIT: the codec's limits keep it there (a test checks
        the widest entity); were it still too large, the window's rows are left out, and failing that
        the entity is not checkpointed (its last durable state serves a restart), never a crash."""
        for history in (True, False):
            value = orjson.dumps(ent.to_state(history), option=orjson.OPT_SERIALIZE_NUMPY)
            if len(value) < OUTPUT_LIMIT:
                if not history:
                    self.metrics["state_without_history"] += 1
                return value
        log.error("entity %r: checkpoint of %d bytes is too large to write; keeping its previous one",
                  ent.entity, len(value))
        self.metrics["state_too_large"] += 1
        return None

    def stored(self, partition: int, key: bytes, offset: int) -> None:
        """A checkpoint record is durable at ``offset``: an evicted entity is read back from there."""
        ent = self.entities.get(key.decode()) if key != META_KEY else None
        if ent is not None:
            ent.stored_at = offset

    def evict(self, now: float | None = None) -> int:
        """Take entities out of memory whose state is durable and unchanged since: those idle for
        ``entity_ttl`` seconds, then the least recently seen beyond ``max_live_entities``.
        Called right after a checkpoint; an evicted entity is loaded back on its next reading."""
        now = time.monotonic() if now is None else now
        ttl, cap = self.settings.entity_ttl, self.settings.max_live_entities
        if len(self.entities) <= cap and (ttl <= 0 or not any(now - e.touched > ttl for e in self.entities.values())):
            return 0
        owed = set().union(*(snap.pending | snap.taken.keys() for snap in self.snapshots.values()))
        clean = [e for e in self.entities.values() if e.stored_at is not None
                 and e.entity not in self.partitions[e.partition].dirty and e.entity not in owed]
        clean.sort(key=lambda e: e.touched)
        go = [e for e in clean if ttl > 0 and now - e.touched > ttl]
        over = len(self.entities) - len(go) - cap
        if over > 0:
            go += clean[len(go):len(go) + over]
        for e in go:
            self.partitions[e.partition].evicted[e.entity] = e.stored_at
            if e.suppress_scores_ts > -math.inf or e.suppress_alerts_ts > -math.inf:
                self._suppress[e.entity] = (e.suppress_scores_ts, e.suppress_alerts_ts)
            del self.entities[e.entity]
            e.release()
            if self.board is not None:
                self.board.forget(e.entity)
        self.metrics["evicted"] += len(go)
        return len(go)

    async def _load_evicted(self, by_entity: dict[str, list]) -> None:
        """Bring the batch's evicted entities back into memory, from their last state records."""
        if not any(part.evicted for part in self.partitions.values()):
            return
        wanted: dict[int, list[str]] = defaultdict(list)
        for name, items in by_entity.items():
            if name not in self.entities:
                for p, part in self.partitions.items():
                    if name in part.evicted:
                        wanted[p].append(name)
                        break
        for p, names in wanted.items():
            part = self.partitions[p]
            offsets = [part.evicted.pop(n) for n in names]
            raws = await self.loader(p, offsets) if self.loader is not None else [None] * len(names)
            for name, offset, raw in zip(names, offsets, raws):
                ent = self._revive(p, raw) if raw is not None else None
                if ent is not None and ent.entity != name:
                    ent.release()
                    ent = None
                if ent is None:
                    log.error("state of entity %r at offset %d of partition %d could not be read back; it "
                              "starts afresh", name, offset, p)
                    self.metrics["state_lost"] += 1
                    continue
                ent.stored_at = offset
                ent.suppress_scores_ts, ent.suppress_alerts_ts = self._suppress.pop(name, (-math.inf, -math.inf))
                self.entities[name] = ent
                self.metrics["loaded"] += 1

    def _revive(self, partition: int, raw: bytes) -> EntityState | None:
        """An entity from its checkpointed state (None if the record cannot be read)."""
        try:
            state = orjson.loads(raw)
            det = self._model_for(state["entity"], state["names"], len(state["names"]))
            names = list(det.channels) if det is not None else state["names"]
            ent = self._state(state["entity"], partition, names, det)
            try:
                if names == state["names"]:
                    ent.load_state(state)
                else:  # the model now serving it has other channels: start over, keeping timestamp order
                    ent.last_ts = state["last_ts"]
            except Exception:
                ent.release()
                raise
            return ent
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.error("unreadable entity state in partition %d: %s", partition, exc)
            return None

    def restore(self, partition: int, meta: dict | None, index: dict[bytes, int]) -> None:
        """Start a partition from its last checkpoint: ``meta`` (offsets) and ``index`` (entity key ->
        offset of its latest state record). Entities stay on the broker until they read again."""
        part = self.partitions[partition] = PartitionState()
        self.snapshots.pop(partition, None)
        if meta is not None:
            part.input_offset, part.out_offsets = meta["input_offset"], dict(meta["out"])
        for key, offset in index.items():
            name = key.decode(errors="replace")
            gone = self.entities.pop(name, None)
            if gone is not None:
                gone.release()
            part.evicted[name] = offset
        self.metrics["restored_entities"] += len(index)

    def suppress(self, partition: int, scores_ts: dict[str, float], alerts_ts: dict[str, float],
                 dlq_offset: int) -> None:
        """Outputs found published after the checkpoint: a replay must not publish them again."""
        for entity in set(scores_ts) | set(alerts_ts):
            found = (scores_ts.get(entity, -math.inf), alerts_ts.get(entity, -math.inf))
            if entity in self.entities:
                self.entities[entity].suppress_scores_ts, self.entities[entity].suppress_alerts_ts = found
            else:
                self._suppress[entity] = found
        self.partitions[partition].dlq_suppress_offset = dlq_offset

    def drop(self, partition: int) -> None:
        """Forget a partition's state after it was revoked (its new owner restores it)."""
        part = self.partitions.pop(partition, None)
        self.snapshots.pop(partition, None)
        for name in [e for e, s in self.entities.items() if s.partition == partition]:
            self.entities.pop(name).release()
            if self.board is not None:
                self.board.forget(name)
        for name in (part.evicted if part is not None else ()):
            self._suppress.pop(name, None)


def _stack(parts: list) -> tuple[np.ndarray, np.ndarray]:
    """The timestamps and values of a cohort's messages, in order: each part a ``Reading`` (a row of
    its micro-batch's stack) or a (ts, values) pair. Readings of one stack, the common case, are
    taken in one indexing step."""
    first = parts[0]
    if type(first) is Reading and all(type(p) is Reading and p.stack is first.stack for p in parts):
        rows = np.fromiter((p.row for p in parts), np.int64, len(parts))
        return first.stack.ts[rows], first.stack.values[rows]
    pairs = [(p.ts, p.values) if type(p) is Reading else p for p in parts]
    return (np.concatenate([t for t, _ in pairs]).astype(np.float64),
            np.concatenate([v for _, v in pairs]).astype(np.float64, copy=False))


def _score_all(jobs: list, streams: list) -> tuple[list, list]:
    """Each job scored in turn, with its duration (runs in the executor): (detector, windows, None), or
    (stack, windows, the stack row of each window); then the streaming detectors' rows, scored and
    learnt, those of a class together (``StreamingDetector.score_learn_many``)."""
    out = []
    for det, windows, rows in jobs:
        t0 = time.perf_counter()
        out.append((det.score(windows) if rows is None else det.score(windows, rows), time.perf_counter() - t0))
    learnt: list = [None] * len(streams)
    by_class: dict[type, list[int]] = {}
    for i, (det, _) in enumerate(streams):
        by_class.setdefault(type(det), []).append(i)
    for kind, idx in by_class.items():
        for i, got in zip(idx, kind.score_learn_many([streams[i][0] for i in idx], [streams[i][1] for i in idx])):
            learnt[i] = Scores(*got)
    return out, learnt
