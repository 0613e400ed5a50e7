import numpy as np
import orjson
import pytest

from scoring.codec import Readings, Rejection, decode, encode_readings


def code(raw):
    r = decode(raw)
    assert isinstance(r, Rejection), r
    return r.code


def test_single_dict_and_list_forms():
    r = decode(b'{"entity":"p","ts":10,"values":{"a":1,"b":2.5}}')
    assert isinstance(r, Readings) and r.names == ["a", "b"]
    assert r.values.tolist() == [[1.0, 2.5]] and r.ts.tolist() == [10.0]
    r = decode(b'{"entity":"p","ts":10.5,"values":[1,2,3]}')
    assert r.names is None and r.values.shape == (1, 3)


def test_nulls_are_kept_as_missing_not_rejected():
    r = decode(b'{"entity":"p","ts":1,"values":{"a":null,"b":2}}')
    assert isinstance(r, Readings) and r.missing == 1 and np.isnan(r.values[0, 0])
    r = decode(b'{"entity":"p","ts":[1,2],"values":[[1,null],[2,3]]}')
    assert r.missing == 1


def test_batch_form_round_trip_with_channel_names():
    ts, vals = np.arange(5.0), np.random.default_rng(0).random((5, 3))
    r = decode(encode_readings("p", ts, vals, ["x", "y", "z"]))
    assert r.names == ["x", "y", "z"] and np.allclose(r.values, vals) and r.ts.tolist() == ts.tolist()


@pytest.mark.parametrize("raw, expected", [
    (b"{not json", "malformed"),
    (b"[1,2]", "malformed"),
    (b'{"ts":1,"values":[1]}', "missing_field"),
    (b'{"entity":"p","values":[1]}', "missing_field"),
    (b'{"entity":"p","ts":1}', "missing_field"),
    (b'{"entity":5,"ts":1,"values":[1]}', "bad_type"),
    (b'{"entity":"p","ts":"now","values":[1]}', "bad_type"),
    (b'{"entity":"p","ts":true,"values":[1]}', "bad_type"),
    (b'{"entity":"p","ts":1,"values":"1,2"}', "bad_type"),
    (b'{"entity":"p","ts":1,"values":[1,"2"]}', "bad_type"),
    (b'{"entity":"p","ts":1,"values":[1,true]}', "bad_type"),
    (b'{"entity":"p","ts":[1,2],"values":[[1,true],[1,2]]}', "bad_type"),
    (b'{"entity":"p","ts":1,"values":[1,1e999]}', "non_finite"),
    (b'{"entity":"p","ts":1e999,"values":[1]}', "non_finite"),
    (b'{"entity":"p","ts":1,"values":[1,NaN]}', "malformed"),
    (b'{"entity":"p","ts":[1,2],"values":[[1,2],[3]]}', "bad_values"),
    (b'{"entity":"p","ts":[1,2],"values":[[1,2]]}', "bad_values"),
    (b'{"entity":"p","ts":1,"values":[]}', "bad_values"),
    (b'{"entity":"p","ts":[1],"channels":["a"],"values":[[1,2]]}', "bad_values"),
])
def test_rejections_carry_a_reason(raw, expected):
    assert code(raw) == expected


def test_oversized_and_empty():
    assert decode(b"x" * 100, max_bytes=10).code == "oversized"
    assert decode(None).code == "malformed"


def test_too_many_values():
    raw = orjson.dumps({"entity": "p", "ts": 1, "values": list(range(5000))})
    assert code(raw) == "too_many_values"


def _batch(rows: list, ts=None, channels=None) -> bytes:
    msg = {"entity": "pump-7", "ts": ts if ts is not None else [1.0e9 + i for i in range(len(rows))], "values": rows}
    if channels is not None:
        msg["channels"] = channels
    return orjson.dumps(msg)


def test_large_batches_decode_the_same_through_simdjson_and_the_general_path(monkeypatch):
    from scoring import codec

    rng = np.random.default_rng(0)
    good = rng.normal(size=(60, 12)).round(6).tolist()
    cases = [
        _batch(good), _batch(good, channels=[f"c{i}" for i in range(12)]),
        _batch([[int(v * 100) for v in row] for row in good]),  # integers
        _batch([[0.0, 1.0] * 6 for _ in range(60)]),  # zeros and ones, no booleans
        _batch([row[:-1] + [None] for row in good]),  # nulls: imputed by the general path
        _batch([row[:-1] + [True] for row in good]),  # a boolean: bad_type
        _batch([row[:-1] + ["1.5"] for row in good]),  # a string: bad_type
        _batch(good[:-1] + [good[-1][:-1]]),  # ragged
        _batch(good[:-2] + [good[-2][:-1], good[-1] + [1.0]]),  # ragged, same total
        _batch(good[:-1] + [good[-1][:-1] + [1e39]]),  # beyond float32: non_finite
        _batch(good, channels=["a"] * 12), _batch(good, channels=[f"c{i}" for i in range(11)]),
        _batch(good, ts=[1.0] * 59),  # fewer ts than rows
    ]
    for raw in cases:
        assert len(raw) >= codec.SIMD_MIN_BYTES
        fast = codec.decode(raw)
        with monkeypatch.context() as m:
            m.setattr(codec, "SIMD_MIN_BYTES", 1 << 30)
            slow = codec.decode(raw)
        assert type(fast) is type(slow), raw[:80]
        if isinstance(slow, codec.Rejection):
            assert fast.code == slow.code
        else:
            assert fast.entity == slow.entity and fast.names == slow.names and fast.missing == slow.missing
            assert np.array_equal(fast.ts, slow.ts) and np.array_equal(fast.values, slow.values, equal_nan=True)
            assert fast.values.flags.writeable
