import numpy as np
import pytest

from scoring.windows import EntityWindow


def test_chunks_follow_hop_and_cover_every_row_once():
    w = EntityWindow(window=4, hop=2, channels=1)
    windows, counts = w.push(np.arange(5, dtype=float)[:, None])
    assert counts.tolist() == [2, 2, 1]
    # each window's new rows are its last rows, in order
    got = np.concatenate([win[-c:, 0] for win, c in zip(windows, counts)])
    assert got.tolist() == [0, 1, 2, 3, 4]
    # left padding with the first row until there is history
    assert windows[0][:, 0].tolist() == [0, 0, 0, 1]
    more, _ = w.push(np.array([[5.0]]))
    assert more[0][:, 0].tolist() == [2, 3, 4, 5]


def test_chunks_never_straddle_messages():
    w = EntityWindow(window=4, hop=3, channels=1)
    windows, counts = w.push(np.arange(7, dtype=float)[:, None], lengths=[2, 5])
    assert counts.tolist() == [2, 3, 2]
    assert [win[-1, 0] for win in windows] == [1, 4, 6]


def test_windows_do_not_depend_on_how_messages_are_batched():
    rows = np.random.default_rng(0).random((20, 2))
    lengths = [3, 1, 4, 2, 6, 4]
    a, b = EntityWindow(6, 2, 2), EntityWindow(6, 2, 2)
    wa, ca = a.push(rows, lengths)
    parts, start, wb, cb = [[0, 1], [2, 3, 4], [5]], 0, [], []
    for group in parts:
        ls = [lengths[i] for i in group]
        w, c = b.push(rows[start:start + sum(ls)], ls)
        start += sum(ls)
        wb.append(w)
        cb.append(c)
    assert np.array_equal(wa, np.concatenate(wb)) and np.array_equal(ca, np.concatenate(cb))


def test_impute_forward_fills_and_uses_fill_before_any_value():
    w = EntityWindow(3, 1, 2, fill=np.array([7.0, np.nan]))
    out = w.impute(np.array([[np.nan, np.nan], [1.0, 2.0], [np.nan, 3.0], [np.nan, np.nan]]))
    assert out.tolist() == [[7.0, 0.0], [1.0, 2.0], [1.0, 3.0], [1.0, 3.0]]
    assert w.impute(np.array([[np.nan, 5.0]])).tolist() == [[1.0, 5.0]]


def test_state_round_trip():
    w = EntityWindow(4, 2, 2)
    w.impute(np.array([[1.0, 2.0]]))
    w.push(np.random.default_rng(1).random((6, 2)))
    r = EntityWindow(4, 2, 2).load_state(w.to_state())
    nxt = np.random.default_rng(2).random((3, 2))
    assert np.array_equal(w.push(nxt)[0], r.push(nxt)[0])


def test_bad_hop():
    with pytest.raises(ValueError):
        EntityWindow(4, 5, 1)


def test_extend_keeps_the_same_history_as_push():
    rows = np.random.default_rng(3).random((9, 2))
    a, b = EntityWindow(4, 2, 2), EntityWindow(4, 2, 2)
    a.push(rows[:5])
    b.extend(rows[:5])
    assert np.array_equal(a.history, b.history)
    assert np.array_equal(a.push(rows[5:])[0], b.push(rows[5:])[0])
