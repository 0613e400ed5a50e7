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
