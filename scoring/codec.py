"""Every message format in one place: readings in (bytes -> readings, or a rejection reason), and the
records the worker writes out (scores, alerts, dead letters; docs/contract.md).

Two message forms on ``vigil.readings`` (see docs/contract.md):
single  ``{"entity": "pump-7", "ts": 1700000000.0, "values": {"temp": 61.2, ...} | [61.2, ...]}``
batch   ``{"entity": "pump-7", "ts": [t0, t1, ...], "values": [[...], [...], ...]}``, with an optional
        ``"channels": ["temp", ...]`` naming the columns of the rows

The codec checks only what a message says by itself (syntax, types, finiteness, size). What needs the
entity's history (channel count, timestamp order) is checked by the pipeline's entity stage.
A null value, or a channel left out of a dict, becomes NaN: it is imputed later, not rejected.

Limits (docs/contract.md) keep every output of one message, and every entity's checkpoint, under
the 1 MB a default Kafka broker accepts: 1024 channels of names up to 256 characters, 100,000 rows.
Values must fit float32 (the precision windows are scored in): a larger magnitude is refused as
``non_finite`` rather than turned into infinity.
"""
from __future__ import annotations

import base64
import hashlib
import math
from dataclasses import dataclass
from typing import NotRequired, TypedDict

import numpy as np
import orjson
import simdjson

MAX_MESSAGE_BYTES = 1 << 20
MAX_ROWS = 100_000
MAX_CHANNELS = 1024
MAX_NAME = 256  # characters of an entity or channel name
FLOAT32_MAX = float(np.finfo(np.float32).max)
SIMD_MIN_BYTES = 1024  # from this size on, a message is first tried as a plain numeric batch


@dataclass(slots=True)
class Readings:
    entity: str
    ts: np.ndarray  # float64 [n]
    values: np.ndarray  # float64 [n, k], NaN where missing
    names: list[str] | None  # channel names for the dict form, None for lists
    missing: int  # count of null values (dict channels absent for the entity are counted later)


@dataclass
class Rejection:
    reason: str  # "code: detail"; the code is the first word, stable for metrics

    @property
    def code(self) -> str:
        return self.reason.split(":", 1)[0]


def _number(v) -> bool:
    return (type(v) is float or type(v) is int) and math.isfinite(v)


_NUMERIC = {float, int}


def _row(values, names_ref: list, rowno: int, nulls: list) -> list | Rejection:
    """One row of values to a list of numbers (NaN for null, counted in ``nulls[0]``); dict rows fix
    the channel order."""
    if type(values) is dict and not names_ref and 0 < len(values) <= MAX_CHANNELS:
        items = list(values.values())
        if set(map(type, items)) <= _NUMERIC:  # the common case: plain numbers (orjson refused inf/NaN)
            names_ref.extend(values.keys())
            return items
    elif type(values) is list and 0 < len(values) <= MAX_CHANNELS and set(map(type, values)) <= _NUMERIC:
        return values
    if isinstance(values, dict):
        if not values:
            return Rejection(f"bad_values: row {rowno} is empty")
        if len(values) > MAX_CHANNELS:
            return Rejection(f"too_many_values: {len(values)} channels > {MAX_CHANNELS}")
        if not names_ref:
            names_ref.extend(values.keys())
        elif list(values.keys()) != names_ref:
            # Same channels in another order, or a subset: map by name.
            unknown = [k for k in values if k not in names_ref]
            if unknown:
                return Rejection(f"too_many_values: channel {unknown[0]!r} not in the first row")
            values = {k: values.get(k) for k in names_ref}
        items = values.values()
    elif isinstance(values, list):
        if not values:
            return Rejection(f"bad_values: row {rowno} is empty")
        if len(values) > MAX_CHANNELS:
            return Rejection(f"too_many_values: {len(values)} values > {MAX_CHANNELS}")
        items = values
    else:
        return Rejection(f"bad_type: values of row {rowno} must be an object or a list")
    out = []
    for v in items:
        if v is None:
            nulls[0] += 1
            out.append(math.nan)
        elif _number(v):
            out.append(float(v))
        elif type(v) is float:
            return Rejection(f"non_finite: row {rowno} has {v}")
        else:
            return Rejection(f"bad_type: row {rowno} has a {type(v).__name__} value")
    return out


def decode(raw: bytes | None, max_bytes: int = MAX_MESSAGE_BYTES) -> Readings | Rejection:
    """Parse one message; never raises on bad input."""
    if raw is None:
        return Rejection("malformed: empty message")
    if len(raw) > max_bytes:
        return Rejection(f"oversized: {len(raw)} bytes > {max_bytes}")
    if len(raw) >= SIMD_MIN_BYTES:
        fast = _simd_batch(raw)
        if fast is not None:
            return fast
    try:
        msg = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        code = "non_finite" if "infinity" in str(exc) else "malformed"
        return Rejection(f"{code}: {exc}")
    return _parsed(msg, raw)


def _parsed(msg, raw: bytes) -> Readings | Rejection:
    """``decode`` of a message orjson has parsed."""
    fast = _fast_single(msg)
    if fast is not None:
        return fast
    if not isinstance(msg, dict):
        return Rejection("malformed: message is not a JSON object")
    for field in ("entity", "ts", "values"):
        if field not in msg:
            return Rejection(f"missing_field: {field}")
    entity, ts, values = msg["entity"], msg["ts"], msg["values"]
    if not isinstance(entity, str) or not entity or len(entity) > MAX_NAME:
        return Rejection(f"bad_type: entity must be a non-empty string of at most {MAX_NAME} characters")
    columns = msg.get("channels")
    if columns is not None:
        if (not isinstance(ts, list) or not isinstance(columns, list) or not columns
                or not all(isinstance(c, str) for c in columns) or len(set(columns)) != len(columns)):
            return Rejection("bad_type: channels must be a list of distinct names, in the batch form only")
    if isinstance(ts, list) and isinstance(values, list):
        fast = _fast_batch(entity, ts, values, raw)
        if fast is not None:
            if columns is not None:
                if len(columns) != fast.values.shape[1]:
                    return Rejection(f"bad_values: {len(columns)} channels named, rows have {fast.values.shape[1]}")
                fast.names = list(columns)
            return _limits(fast)
    names: list[str] = []
    if isinstance(ts, list):  # batch form
        if not isinstance(values, list) or len(values) != len(ts):
            return Rejection("bad_values: batch form needs a list of rows as long as ts")
        if not ts:
            return Rejection("bad_values: batch has no rows")
        if len(ts) > MAX_ROWS:
            return Rejection(f"too_many_values: {len(ts)} rows > {MAX_ROWS}")
        rows_in = values
        ts_in = ts
    else:
        rows_in = [values]
        ts_in = [ts]
    for t in ts_in:
        if not _number(t):
            if type(t) is float:
                return Rejection(f"non_finite: ts {t}")
            return Rejection("bad_type: ts must be a number of seconds")
    rows, nulls = [], [0]
    for i, r in enumerate(rows_in):
        row = _row(r, names, i, nulls)
        if isinstance(row, Rejection):
            return row
        rows.append(row)
    width = len(rows[0])
    if any(len(r) != width for r in rows):
        return Rejection("bad_values: rows have different lengths")
    if columns is not None:
        if names:
            return Rejection("bad_values: channels given twice (a channels list and object rows)")
        if len(columns) != width:
            return Rejection(f"bad_values: {len(columns)} channels named, rows have {width}")
        names = list(columns)
    # magnitude checked on the Python numbers: numpy's reductions cost more than a short row itself
    # (NaN, an imputed null, compares False)
    if nulls[0]:
        too_large = any(abs(v) > FLOAT32_MAX for r in rows for v in r)
    else:
        too_large = max(max(map(abs, r)) for r in rows) > FLOAT32_MAX
    if too_large:
        return Rejection(_TOO_LARGE)
    arr = np.array(rows, dtype=np.float64)
    return _limits(Readings(entity=entity, ts=np.array(ts_in, dtype=np.float64), values=arr,
                            names=names or None, missing=nulls[0]))


_TOO_LARGE = "non_finite: a value beyond the float32 range (3.4e38)"


def _limits(r: Readings) -> Readings | Rejection:
    """What every parsing path checks last: channel names' length (each path checks the values'
    magnitude itself, where it is cheapest: on Python numbers or on the array it built)."""
    if r.names is not None and max(map(len, r.names)) > MAX_NAME:
        return Rejection(f"bad_type: channel names must have at most {MAX_NAME} characters")
    return r


def _simd_batch(raw: bytes) -> Readings | None:
    """A batch of plain numbers parsed straight into numpy by simdjson (a third of the cost of Python
    lists, which the batch form spent most of its decoding time building). Anything it does not
    accept as such (nulls, booleans, strings, ragged rows, other types, values beyond float32) ->
    None, and the general path decides with its precise reason."""
    try:
        doc = simdjson.Parser().parse(raw)  # a parser per message: documents never outlive it
        entity, ts, values = doc["entity"], doc["ts"], doc["values"]
        if (type(entity) is not str or not 0 < len(entity) <= MAX_NAME or not isinstance(ts, simdjson.Array)
                or not isinstance(values, simdjson.Array) or not 0 < len(ts) <= MAX_ROWS or len(values) != len(ts)):
            return None
        widths = {len(row) for row in values}  # a number instead of a row raises: not this path
        width = widths.pop()
        if widths or not 0 < width <= MAX_CHANNELS:
            return None
        t = np.frombuffer(ts.as_buffer(of_type="d"), np.float64).copy()
        arr = np.frombuffer(values.as_buffer(of_type="d"), np.float64).reshape(len(t), width).copy()
        columns = doc.get("channels")
        names = None if columns is None else columns.as_list()
    except Exception:  # noqa: BLE001 - any doubt: the general path parses again and explains
        return None
    if names is not None and (len(names) != width or len(set(names)) != width
                              or not all(type(c) is str for c in names)):
        return None
    if np.abs(arr).max() > FLOAT32_MAX:
        return None
    return _limits(Readings(entity=entity, ts=t, values=arr, names=names, missing=0))


def _plain_single(msg, last_names: list | None = None) -> tuple | None:
    """A single reading of plain numbers, checked without leaving Python's builtins (this is most of
    the per-message cost at gateway rates): (entity, ts, row, names), or None for anything else, which
    the general path accepts with imputation or refuses with the precise reason. Channel names equal
    to ``last_names`` (already checked) come back as that very list. Magnitudes are the caller's."""
    if type(msg) is not dict or len(msg) != 3:
        return None
    entity, ts, values = msg.get("entity"), msg.get("ts"), msg.get("values")
    if (type(entity) is not str or not 0 < len(entity) <= MAX_NAME or type(ts) not in _NUMERIC
            or not math.isfinite(ts)):
        return None
    if type(values) is dict:
        row, names = list(values.values()), list(values)
        if names == last_names:
            names = last_names
        elif not names or len(names) > MAX_CHANNELS or max(map(len, names)) > MAX_NAME:
            return None
    elif type(values) is list and 0 < len(values) <= MAX_CHANNELS:
        row, names = values, None
    else:
        return None
    if not set(map(type, row)) <= _NUMERIC:
        return None
    return entity, ts, row, names


def _fast_single(msg) -> Readings | None:
    """The single form's fast path (``_plain_single``), its magnitudes checked on Python numbers."""
    plain = _plain_single(msg)
    if plain is None or max(map(abs, plain[2])) > FLOAT32_MAX:
        return None
    entity, ts, row, names = plain
    return Readings(entity, np.array([ts], np.float64), np.array([row], np.float64), names, 0)


class Stacked:
    """The single readings of plain numbers of one micro-batch that have one row width, as arrays
    (``decode_many``): ``ts`` [n], ``values`` [n, width]."""

    __slots__ = ("ts", "values")


class Reading:
    """One single-form reading of a micro-batch: row ``row`` of its ``Stacked`` arrays. Reads like a
    ``Readings`` of one row (``ts``, ``values`` are views made on demand), so that only what needs
    them pays for per-message numpy objects; the pipeline takes rows straight from the stack."""

    __slots__ = ("entity", "names", "stack", "row")
    missing = 0

    def __init__(self, entity: str, names: list[str] | None, stack: Stacked, row: int):
        self.entity, self.names, self.stack, self.row = entity, names, stack, row

    @property
    def ts(self) -> np.ndarray:
        return self.stack.ts[self.row:self.row + 1]

    @property
    def values(self) -> np.ndarray:
        return self.stack.values[self.row:self.row + 1]


def decode_many(raws: list, max_bytes: int = MAX_MESSAGE_BYTES) -> list[Readings | Reading | Rejection]:
    """``decode`` of a micro-batch's messages: the same answers, but single readings of plain numbers
    are checked in Python and converted to numpy together, one array per row width (``Reading``): a
    numpy call per message cost more than the rest of its decoding, and decoding is most of a
    worker's time when every message is one reading.

    >>> [r.values.tolist() for r in decode_many([b'{"entity":"p","ts":1,"values":[1,2]}', b'{"entity":"q","ts":1,"values":[3,4]}'])]
    [[[1.0, 2.0]], [[3.0, 4.0]]]
    """
    out: list = [None] * len(raws)
    stacks: dict[int, tuple[Stacked, list, list, list, list, list]] = {}  # width -> (stack, positions, ts, rows, done ts, done rows)
    small = min(SIMD_MIN_BYTES, max_bytes + 1)
    last_names: list | None = None
    for i, raw in enumerate(raws):
        if i % DECODE_CHUNK == 0:
            _convert(stacks)
        if raw is None or len(raw) >= small:
            out[i] = decode(raw, max_bytes)
            continue
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            out[i] = decode(raw, max_bytes)
            continue
        plain = _plain_single(msg, last_names)
        if plain is None:
            out[i] = _parsed(msg, raw)
            continue
        entity, ts, row, names = plain
        if names is not None:
            last_names = names  # one list for a run of messages in the same layout, checked once
        group = stacks.get(len(row))
        if group is None:
            group = stacks[len(row)] = (Stacked(), [], [], [], [], [])
        out[i] = Reading(entity, names, group[0], len(group[1]))
        group[1].append(i)
        group[2].append(ts)
        group[3].append(row)
    _convert(stacks)
    for stack, positions, _, _, ts, rows in stacks.values():
        stack.ts, stack.values = np.concatenate(ts), np.concatenate(rows)
        for j in np.flatnonzero(np.abs(stack.values).max(1) > FLOAT32_MAX).tolist():
            out[positions[j]] = Rejection(_TOO_LARGE)
    return out


DECODE_CHUNK = 1024  # messages parsed before their numbers become arrays: their objects stay in cache


def _convert(stacks: dict) -> None:
    """The numbers gathered since the last call to arrays (``decode_many``)."""
    for _, _, ts, rows, done_ts, done_rows in stacks.values():
        if ts:
            done_ts.append(np.array(ts, np.float64))
            done_rows.append(np.array(rows, np.float64))
            ts.clear()
            rows.clear()


def _fast_batch(entity: str, ts: list, values: list, raw: bytes) -> Readings | None:
    """The batch form's fast path: numeric lists convert in one numpy call.

    Anything unusual (nulls, strings, ragged rows, booleans) falls back to the row-by-row path, which
    imputes or gives the precise reason. numpy reads a JSON boolean among numbers as 0 or 1, so only
    when a 0 or 1 is present are the bytes searched for ``true``/``false`` (a search costs as much as
    the parse). orjson has already refused NaN and infinity, so numeric arrays are finite.
    """
    try:
        t = np.array(ts)
        arr = np.array(values)
    except ValueError:
        return None
    if (t.ndim != 1 or arr.ndim != 2 or t.dtype.kind not in "fi" or arr.dtype.kind not in "fi"
            or len(t) != len(arr) or not 0 < len(t) <= MAX_ROWS or not 0 < arr.shape[1] <= MAX_CHANNELS):
        return None
    if (((arr == 0) | (arr == 1)).any() or ((t == 0) | (t == 1)).any()) and (b"true" in raw or b"false" in raw):
        return None
    arr = arr.astype(np.float64, copy=False)
    if np.abs(arr).max() > FLOAT32_MAX:
        return None  # the row-by-row path names the reason
    return Readings(entity=entity, ts=t.astype(np.float64, copy=False), values=arr, names=None, missing=0)


def encode_readings(entity: str, ts, values, names: list[str] | None = None) -> bytes:
    """Encode readings for producers: one row (scalar ts) or a batch (list ts)."""
    if np.ndim(ts) == 0:
        row = [float(v) for v in np.asarray(values).ravel()]
        vals = dict(zip(names, row)) if names else row
        return orjson.dumps({"entity": entity, "ts": float(ts), "values": vals})
    msg = {"entity": entity, "ts": np.asarray(ts, dtype=np.float64),
           "values": np.asarray(values, dtype=np.float64)}
    if names:
        msg["channels"] = list(names)
    return orjson.dumps(msg, option=orjson.OPT_SERIALIZE_NUMPY)


# ---- outputs ------------------------------------------------------------------------------------
# Every record written stays under OUTPUT_LIMIT, the default message.max.bytes of an Apache Kafka
# broker (1,048,588) less room for the record's overhead.
OUTPUT_LIMIT = 1_000_000
SCORE_MESSAGE_VALUES = 30_000  # numbers per vigil.scores message: at most 25 bytes of JSON each
DLQ_PAYLOAD_BYTES = 64 << 10  # bytes of a rejected message a dead letter carries (base64: 88 kB)
DLQ_KEY_BYTES = 1024  # a dead letter's own key: the original key, cut to this length
DLQ_ROWS = 1000  # row numbers listed in a dead letter; "rows_total" counts them all


class Alert(TypedDict):
    """A ``vigil.alerts`` record: one incident's open, update or close."""

    alert_id: str
    entity: str
    state: str  # open | update | close (an incident), drift | drift_end (the entity's level)
    ts: float
    start: float
    end: float
    score: float
    threshold: float
    channels: list[dict]  # [{"channel": name, "score": summed score}], highest first
    model: str
    detail: dict  # {"reconstruction": float, "divergence": float | None} at the peak
    sent: NotRequired[float]  # the Kafka timestamp (s) of the readings message that carried ``ts``, where known


def encode_scores(entity: str, ts: np.ndarray, score: np.ndarray, threshold: np.ndarray, model: str,
                  channels: np.ndarray | None = None) -> list[bytes]:
    """``vigil.scores`` records for an entity's points, cut into messages of at most
    SCORE_MESSAGE_VALUES numbers (a micro-batch can hold 100k points of one entity)."""
    per_point = 3 + (channels.shape[1] if channels is not None else 0)
    step = max(1, SCORE_MESSAGE_VALUES // per_point)
    out = []
    for start in range(0, len(ts), step):
        rows = slice(start, start + step)
        msg = {"entity": entity, "ts": ts[rows], "score": score[rows], "threshold": threshold[rows], "model": model}
        if channels is not None:
            msg["channels"] = channels[rows].astype(np.float32)
        out.append(orjson.dumps(msg, option=orjson.OPT_SERIALIZE_NUMPY))
    return out


def encode_score_records(entities: list[str], models: list[str], bounds: list[tuple[int, int]], ts: np.ndarray,
                         score: np.ndarray, threshold: np.ndarray, channels: np.ndarray | None = None,
                         keep: np.ndarray | None = None) -> list[tuple[int, list[bytes]]]:
    """``encode_scores`` for many entities' rows (entity ``s`` has rows ``bounds[s]``), less the rows
    where ``keep`` is False: [(s, records)] for the entities with a row left.

    A fleet's micro-batch holds a record per entity of a point or two: those are written from Python
    floats (one ``tolist`` for all, the same JSON as numpy's float64), not from numpy slices, which
    cost more than the record."""
    columns = (ts, score, threshold)
    plain = channels is None and all(np.asarray(c).dtype == np.float64 for c in columns)
    step = SCORE_MESSAGE_VALUES // 3
    if plain:
        t, sc, th = (c.tolist() for c in columns)

        def record(s: int, a: int, b: int) -> bytes:
            return orjson.dumps({"entity": entities[s], "ts": t[a:b], "score": sc[a:b], "threshold": th[a:b],
                                 "model": models[s]})

        if keep is None and all(b - a <= step for a, b in bounds):
            return [(s, [record(s, a, b)]) for s, (a, b) in enumerate(bounds)]
    out = []
    for s, (a, b) in enumerate(bounds):
        pick = slice(a, b)
        if keep is not None:
            rows = np.flatnonzero(keep[a:b])
            if not len(rows):
                continue
            if len(rows) < b - a:
                pick = a + rows
        if plain and type(pick) is slice and b - a <= step:
            out.append((s, [record(s, a, b)]))
            continue
        out.append((s, encode_scores(entities[s], ts[pick], score[pick], threshold[pick], models[s],
                                     None if channels is None else channels[pick])))
    return out


def drift_alert(entity: str, state: str, ts: float, start: float, median: float, level, model: str,
                channels: list[dict] | None = None) -> Alert:
    """A ``drift`` (or ``drift_end``) record on ``vigil.alerts``: the entity's scores as a whole left the
    level its model was calibrated at (``scoring.conditioning.Level``); the trainer retrains it.
    ``median``: the recent median at ``ts``, which crossed (or came back under) the calibrated
    threshold; ``channels``: the channels that departed most (``fusion.top_channels``)."""
    return Alert(alert_id=hashlib.blake2b(f"{entity}|drift|{start!r}".encode(), digest_size=8).hexdigest(),
                 entity=entity, state=state, ts=ts, start=start, end=ts, score=round(float(median), 6),
                 threshold=round(float(level.base_threshold), 6), channels=list(channels or []), model=model,
                 detail={"level_ratio": round(float(median / level.base), 3), "retrain": state == "drift"})


def encode_alert(alert: Alert) -> bytes:
    return orjson.dumps(alert)


def encode_dead_letter(reason: str, topic: str, partition: int, offset: int, key: bytes | None,
                       value: bytes | None, rows: list | None = None,
                       last_offset: int | None = None) -> tuple[bytes, bytes]:
    """A ``vigil.dlq`` record (its key and value), bounded whatever the message held: the first
    DLQ_PAYLOAD_BYTES of the key and value (with their size and SHA-256 when cut), at most DLQ_ROWS
    row numbers. ``last_offset``: the end of a range of offsets the Kafka client could not decode."""
    record = {"reason": reason[:2000], "code": reason.split(":", 1)[0], "topic": topic,
              "partition": partition, "offset": offset,
              "key": None if key is None else base64.b64encode(key[:DLQ_PAYLOAD_BYTES]).decode(),
              "value": None if value is None else base64.b64encode(value[:DLQ_PAYLOAD_BYTES]).decode()}
    if last_offset is not None:
        record["last_offset"] = last_offset
    for part, data in (("key", key), ("value", value)):
        if data is not None and len(data) > DLQ_PAYLOAD_BYTES:
            record[f"{part}_bytes"] = len(data)
            record[f"{part}_sha256"] = hashlib.sha256(data).hexdigest()
            record[f"{part}_truncated"] = True
    if rows is not None:
        record["rows"] = rows[:DLQ_ROWS]
        if len(rows) > DLQ_ROWS:
            record["rows_total"] = len(rows)
    return (key or b"")[:DLQ_KEY_BYTES], orjson.dumps(record)
