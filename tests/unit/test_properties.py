"""Property-based tests (hypothesis): whatever bytes arrive, the codec and the pipeline answer with
scores or reasons, never an exception, and the same messages replayed give the same outputs."""
import asyncio
import os

import numpy as np
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.pca import PCADetector
from producers.simulate import normal_history
from scoring import codec
from scoring.codec import OUTPUT_LIMIT, Readings, Rejection, decode, decode_many
from scoring.pipeline import META_KEY, Message, Pipeline
from scoring.settings import Settings

CODES = {"malformed", "missing_field", "bad_type", "bad_values", "non_finite", "too_many_values",
         "out_of_order", "duplicate_ts", "oversized", "future_ts", "too_many_entities"}

small = st.floats(min_value=-50, max_value=50, allow_nan=False)
odd_number = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-2**63, 2**64 - 1))
odd_value = st.one_of(odd_number, st.none(), st.booleans(), st.text(max_size=3), st.lists(small, max_size=2))
row3 = st.lists(st.one_of(small, small, small, st.none()), min_size=3, max_size=3)
named3 = st.fixed_dictionaries({"c0": small, "c1": small, "c2": small})
ts_near = st.floats(min_value=1e9, max_value=1e9 + 40)  # collisions and disorder on purpose


@st.composite
def messages(draw):
    """Mostly valid readings (so that scoring, thresholds and incidents run), each possibly mutated
    once in a way the worker must survive; sometimes arbitrary JSON or bytes."""
    kind = draw(st.sampled_from(["single", "named", "batch", "batch", "json", "bytes"]))
    entity = draw(st.sampled_from(["a", "a", "b", "c"]))
    if kind == "single":
        msg = {"entity": entity, "ts": draw(ts_near), "values": draw(row3)}
    elif kind == "named":
        msg = {"entity": entity, "ts": draw(ts_near), "values": draw(named3)}
    elif kind == "batch":
        n = draw(st.integers(1, 8))
        t0 = draw(ts_near)
        msg = {"entity": entity, "ts": [t0 + i for i in range(n)], "values": draw(st.lists(row3, min_size=n, max_size=n))}
        if draw(st.booleans()):
            msg["channels"] = ["c0", "c1", "c2"]
    elif kind == "json":
        return orjson.dumps(draw(st.recursive(odd_value, lambda inner: st.lists(inner) | st.dictionaries(
            st.sampled_from(["entity", "ts", "values", "channels", "x"]), inner), max_leaves=8)))
    else:
        return draw(st.one_of(st.binary(max_size=200), st.none()))
    mutation = draw(st.sampled_from(["none"] * 6 + ["drop", "field", "value", "width", "huge", "entity"]))
    if mutation == "drop":
        msg.pop(draw(st.sampled_from(["entity", "ts", "values"])))
    elif mutation == "field":
        msg[draw(st.sampled_from(["entity", "ts", "values", "channels"]))] = draw(odd_value)
    elif mutation == "value":
        vals = msg["values"]
        target = vals[0] if isinstance(vals, list) and isinstance(vals[0], list) else vals
        key = draw(st.sampled_from(list(target))) if isinstance(target, dict) else draw(st.integers(0, len(target) - 1))
        target[key] = draw(odd_value)
    elif mutation == "width":
        vals = msg["values"]
        (vals[-1] if isinstance(vals[0], (list, dict)) else vals).append(1.0) if isinstance(vals, list) else vals.update(c9=1.0)
    elif mutation == "huge":
        return orjson.dumps(msg).replace(b"]", b",1e39]", 1)
    elif mutation == "entity":
        msg["entity"] = draw(st.text(max_size=300))
    try:
        return orjson.dumps(msg)
    except (TypeError, orjson.JSONEncodeError):  # integers beyond 64 bits
        return repr(msg).encode()


@given(st.one_of(st.binary(max_size=500), messages()))
@settings(max_examples=600, deadline=None)
def test_decode_never_raises_and_answers_readings_or_a_known_reason(raw):
    out = decode(raw)
    assert isinstance(out, (Readings, Rejection))
    if isinstance(out, Rejection):
        assert out.code in CODES, out.reason
    else:
        assert out.values.ndim == 2 and len(out.ts) == len(out.values) > 0
        assert np.isfinite(out.ts).all() and not np.isinf(out.values).any()


@given(st.lists(st.one_of(st.binary(max_size=200), messages()), max_size=30), st.integers(1, 8))
@settings(max_examples=300, deadline=None)
def test_decode_many_answers_as_decode_does_message_by_message(raws, chunk):
    """The micro-batch decoder (single readings stacked into one array per width, converted every
    ``chunk`` messages) gives each message decode's answer: the same readings or the same reason."""
    codec.DECODE_CHUNK, before = chunk, codec.DECODE_CHUNK
    try:
        many = decode_many(raws)
    finally:
        codec.DECODE_CHUNK = before
    assert len(many) == len(raws)
    for raw, got in zip(raws, many):
        want = decode(raw)
        if isinstance(want, Rejection):
            assert isinstance(got, Rejection) and got.reason == want.reason
        else:
            assert not isinstance(got, Rejection)
            assert (got.entity, got.names, got.missing) == (want.entity, want.names, want.missing)
            np.testing.assert_array_equal(got.ts, want.ts)
            np.testing.assert_array_equal(got.values, want.values)
            assert got.values.dtype == want.values.dtype == np.float64


def _model():
    hist = normal_history("a", 3, 600, 1e9, 0)
    det = PCADetector(["c0", "c1", "c2"]).fit(hist.values)
    return det


MODEL = _model()


def _run(batch_sets, models):
    pipe = Pipeline(Settings(calibration_points=5, max_entities=2), models)
    outs = []
    for batch in batch_sets:
        outs.append(asyncio.run(pipe.process(batch)))
    return pipe, outs


def _bytes(outs):
    return [[r.value for r in (o.scores + o.alerts + o.dlq)] for o in outs]


@given(st.lists(st.tuples(st.one_of(st.none(), st.binary(max_size=20)), messages(),
                          st.one_of(st.none(), st.floats(0, 4e9))), max_size=25),
       st.integers(1, 7), st.booleans())
@settings(max_examples=int(os.environ.get("VIGIL_HYPOTHESIS_EXAMPLES", 150)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_pipeline_scores_or_dead_letters_every_message_and_replays_identically(items, split, with_model):
    msgs = [Message(0, i, key, value, ts) for i, (key, value, ts) in enumerate(items)]
    batches = [msgs[i:i + split] for i in range(0, len(msgs), split)]
    models = {"*": MODEL} if with_model else {}
    pipe, outs = _run(batches, models)
    assert pipe.metrics["messages"] == len(msgs)
    dead = {}
    for o in outs:
        for r in o.dlq + o.scores + o.alerts:
            assert len(r.value) < OUTPUT_LIMIT
        for r in o.dlq:
            d = orjson.loads(r.value)
            assert d["code"] in CODES, d["reason"]
            dead[d["offset"]] = d
    scored = sum(len(orjson.loads(r.value)["ts"]) for o in outs for r in o.scores)
    assert scored == pipe.metrics["points"]
    for o in outs:
        for r in o.scores:
            s = orjson.loads(r.value)
            assert all(x is not None for x in s["score"]), "scores are finite numbers"
    # Replayed, the same messages give the same records, byte for byte.
    _, same = _run(batches, models)
    assert _bytes(same) == _bytes(outs)
    # And a worker that checkpoints, dies and is restored goes on exactly as if it had not died.
    if len(batches) > 1:
        cut = len(batches) // 2
        first, _ = _run(batches[:cut], models)
        log = first.checkpoint(0)
        restored = Pipeline(Settings(calibration_points=5, max_entities=2), models)

        async def loader(p, offsets):
            return [log[o][1] for o in offsets]
        restored.loader = loader
        restored.restore(0, orjson.loads(dict(log)[META_KEY]), {k: i for i, (k, _) in enumerate(log) if k != META_KEY})
        rest = [asyncio.run(restored.process(b)) for b in batches[cut:]]
        assert _bytes(rest) == _bytes(outs[cut:])


_floats = st.floats(allow_nan=True, allow_infinity=True, width=64)


@given(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=12),
                          st.lists(st.tuples(_floats, _floats, _floats), min_size=1, max_size=4)), max_size=6),
       st.booleans())
@settings(max_examples=300, deadline=None)
def test_score_records_are_the_json_of_their_dicts(entities, with_keep):
    """The joined score records (``encode_score_records``) are byte for byte ``orjson.dumps`` of each
    record's dict, whatever the entity and model names (quotes, escapes, any unicode) and the numbers
    (NaN, infinities, subnormals), with and without rows left out."""
    from scoring.codec import encode_score_records

    bounds, rows = [], []
    for _, _, points in entities:
        bounds.append((len(rows), len(rows) + len(points)))
        rows += points
    ts, score, thr = (np.array([r[i] for r in rows], np.float64) for i in range(3))
    keep = np.arange(len(rows)) % 3 != 1 if with_keep else None
    got = encode_score_records([e[0] for e in entities], [e[1] for e in entities], bounds, ts, score, thr,
                               keep=keep)
    want = []
    for s, ((name, model, _), (a, b)) in enumerate(zip(entities, bounds)):
        pick = [i for i in range(a, b) if keep is None or keep[i]]
        if pick:
            want.append((s, [orjson.dumps({"entity": name, "ts": ts[pick].tolist(), "score": score[pick].tolist(),
                                           "threshold": thr[pick].tolist(), "model": model})]))
    assert got == want
