"""Operator feedback on alerts, as it travels on ``vigil.feedback`` (docs/contract.md, "Feedback").

An operator says that an incident was a false alarm or a true anomaly, or that a period without an
alert was an anomaly (a miss). Each label is one JSON message keyed by entity. A later label for the
same alert replaces an earlier one (the operator changed their mind); labels of periods without an
alert each stand on their own. The trainer (``training.feedback``) keeps labelled false alarms as
normal training data, leaves labelled anomalies out of it, and retunes the entity's threshold so that
the labels would have been honoured.

>>> fb = make("pump-7", "false-alarm", 100.0, 160.0, alert_id="pump-7:100", note="valve test")
>>> parse(fb.to_json()) == fb
True
>>> parse(b'{"entity": "pump-7", "label": "maybe"}') is None
True
"""
from __future__ import annotations

import math
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Iterable

import orjson

LABELS = ("false-alarm", "anomaly")
MAX_NOTE = 2000  # characters
MAX_ENTITY = 256


@dataclass(frozen=True)
class Feedback:
    entity: str
    label: str  # one of LABELS
    start: float  # the labelled period, in the entity's own clock (the readings' ts)
    end: float
    alert_id: str | None  # the incident labelled; None for a missed period
    note: str
    source: str  # "cli", "dashboard", ...
    feedback_id: str
    ts: float  # wall-clock time the label was given

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @property
    def key(self) -> str:
        """What a later label replaces: the same alert's, or (for a miss) nothing but itself."""
        return f"alert:{self.alert_id}" if self.alert_id else f"period:{self.feedback_id}"


def make(entity: str, label: str, start: float, end: float, *, alert_id: str | None = None, note: str = "",
         source: str = "cli", feedback_id: str | None = None, ts: float | None = None) -> Feedback:
    """A checked label; ``ValueError`` says what is wrong with it."""
    if not isinstance(entity, str) or not entity or len(entity) > MAX_ENTITY:
        raise ValueError(f"the entity must be a non-empty string of at most {MAX_ENTITY} characters")
    if label not in LABELS:
        raise ValueError(f"the label must be one of {', '.join(LABELS)}, not {label!r}")
    try:
        start, end = float(start), float(end)
    except (TypeError, ValueError):
        raise ValueError("start and end must be numbers (seconds, as the readings' ts)") from None
    if not (math.isfinite(start) and math.isfinite(end)) or end < start:
        raise ValueError(f"the period must be finite with start <= end, not {start}..{end}")
    if alert_id is not None and (not isinstance(alert_id, str) or not alert_id):
        raise ValueError("alert_id must be a non-empty string when given")
    note = "" if note is None else str(note)
    if len(note) > MAX_NOTE:
        raise ValueError(f"the note has {len(note)} characters; at most {MAX_NOTE}")
    return Feedback(entity, label, start, end, alert_id, note, str(source),
                    feedback_id or uuid.uuid4().hex, time.time() if ts is None else float(ts))


def parse(value: bytes) -> Feedback | None:
    """A message of the feedback topic, or None when it is not a valid label (it is then ignored)."""
    try:
        d = orjson.loads(value)
        return make(d["entity"], d["label"], d["start"], d["end"], alert_id=d.get("alert_id"),
                    note=d.get("note", ""), source=d.get("source", "?"), feedback_id=d.get("feedback_id"),
                    ts=d.get("ts", 0.0))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None


def latest(values: Iterable[bytes]) -> dict[str, list[Feedback]]:
    """Entity -> its labels in force, from the topic's messages in order (invalid ones skipped)."""
    by_key: dict[tuple[str, str], Feedback] = {}
    for value in values:
        fb = parse(value)
        if fb is not None:
            by_key[(fb.entity, fb.key)] = fb
    out: dict[str, list[Feedback]] = {}
    for (entity, _), fb in by_key.items():
        out.setdefault(entity, []).append(fb)
    for labels in out.values():
        labels.sort(key=lambda f: (f.start, f.end))
    return out
