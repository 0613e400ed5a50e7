import numpy as np
import pytest

from stream.windows import EntityWindow


def test_chunks_follow_hop_and_cover_every_row_once():
    w = EntityWindow(window=4, hop=2, channels=1)
    rows = np.arange(5, dtype=float)[:, None]
    chunks = w.push(rows)
    assert [c.count for c in chunks] == [2, 2, 1]
    # each chunk's new rows are the last rows of its window, in order
    got = np.concatenate([c.window[-c.count:, 0] for c in chunks])
    assert got.tolist() == [0, 1, 2, 3, 4]
    # left padding with the first row until there is history
    assert chunks[0].window[:, 0].tolist() == [0, 0, 0, 1]
    more = w.push(np.array([[5.0]]))
    assert more[0].window[:, 0].tolist() == [2, 3, 4, 5]


def test_windows_do_not_depend_on_message_split_for_hop_one():
    a, b = EntityWindow(6, 1, 2), EntityWindow(6, 1, 2)
    rows = np.random.default_rng(0).random((20, 2))
    wa = [c.window for c in a.push(rows)]
    wb = [c.window for part in np.array_split(rows, 7) for c in b.push(part)]
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))


def test_impute_forward_fills_and_uses_fill_before_any_value():
    w = EntityWindow(3, 1, 2, fill=np.array([7.0, np.nan]))
    out = w.impute(np.array([[np.nan, np.nan], [1.0, 2.0], [np.nan, 3.0]]))
    assert out.tolist() == [[7.0, 0.0], [1.0, 2.0], [1.0, 3.0]]


def test_state_round_trip():
    w = EntityWindow(4, 2, 2)
    w.impute(np.array([[1.0, 2.0]]))
    w.push(np.random.default_rng(1).random((6, 2)))
    r = EntityWindow(4, 2, 2).load_state(w.to_state())
    nxt = np.random.default_rng(2).random((3, 2))
    assert all(np.array_equal(x.window, y.window) for x, y in zip(w.push(nxt), r.push(nxt)))


def test_bad_hop():
    with pytest.raises(ValueError):
        EntityWindow(4, 5, 1)
