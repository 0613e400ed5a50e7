"""Many entities in one columnar step get exactly what each got from the per-entity implementation it
replaced (``tests/oracle.py``), whatever the micro-batches and whichever entities share a step."""
import numpy as np
import pytest

from scoring.conditioning import Levels, Smoothing
from scoring.segments import Segments, gather
from scoring.windows import Windows

from .. import oracle

ENTITIES = 7


def batches(rng, lengths: list[int]):
    """Random micro-batches over entities with ``lengths`` rows each: per batch, each entity's next run
    of 0-5 rows (some entities absent), entities in a shuffled order."""
    done = [0] * len(lengths)
    while any(d < n for d, n in zip(done, lengths)):
        parts = []
        for e in rng.permutation(len(lengths)).tolist():
            take = min(int(rng.integers(0, 6)), lengths[e] - done[e])
            if take:
                parts.append((e, done[e], done[e] + take))
                done[e] += take
        if parts:
            yield parts


@pytest.mark.parametrize("seed", range(4))
def test_smoothing_of_many_entities_is_each_entity_smoothed_alone(seed):
    rng = np.random.default_rng(seed)
    n = [int(rng.integers(1, 60)) for _ in range(ENTITIES)]
    score = [rng.exponential(size=k) for k in n]
    channel = [rng.exponential(size=(k, 3)) for k in n]
    cols = Smoothing(5, 3, capacity=ENTITIES + 3)
    slots = rng.permutation(ENTITIES + 3)[:ENTITIES]  # any slots, not 0..n-1
    for e in range(ENTITIES):
        cols.reset(int(slots[e]))
    got = [[] for _ in range(ENTITIES)]
    for parts in batches(rng, n):
        seg = Segments.of(slots[[e for e, _, _ in parts]], [b - a for _, a, b in parts])
        s, c = cols.apply(seg, np.concatenate([score[e][a:b] for e, a, b in parts]),
                          np.concatenate([channel[e][a:b] for e, a, b in parts]))
        for i, (e, _, _) in enumerate(parts):
            got[e].append((s[seg.start[i]:seg.end[i]], c[seg.start[i]:seg.end[i]]))
    for e in range(ENTITIES):
        want = oracle.Smoother(5, 3).apply(score[e], channel[e])
        assert np.array_equal(np.concatenate([g[0] for g in got[e]]), want[0])
        assert np.array_equal(np.concatenate([g[1] for g in got[e]]), want[1])
        state = cols.to_state(int(slots[e]))
        ref = oracle.Smoother(5, 3)
        ref.apply(score[e], channel[e])
        assert state == ref.to_state()


@pytest.mark.parametrize("seed", range(4))
def test_levels_of_many_entities_are_each_entity_levelled_alone(seed):
    rng = np.random.default_rng(seed)
    n = [int(rng.integers(50, 400)) for _ in range(ENTITIES)]
    step = [float(rng.choice([0.5, 1.0, 7.0])) for _ in range(ENTITIES)]
    ts = [1.7e9 + st * np.arange(k) + rng.random(k) * 0.1 * st for st, k in zip(step, n)]
    x = [rng.exponential(size=k) * np.where(np.arange(k) > k // 3, 12.0, 1.0) for k in n]
    cols = Levels(capacity=ENTITIES)
    for e in range(ENTITIES):
        cols.reset(e, 120.0, 1.0, 8.0, on=True)
    got = [[] for _ in range(ENTITIES)]
    for parts in batches(rng, n):
        seg = Segments.of(np.array([e for e, _, _ in parts]), [b - a for _, a, b in parts])
        out = cols.scales(seg, np.concatenate([ts[e][a:b] for e, a, b in parts]),
                          np.concatenate([x[e][a:b] for e, a, b in parts]))
        for i, (e, _, _) in enumerate(parts):
            got[e].append([v[seg.start[i]:seg.end[i]] for v in out])
    for e in range(ENTITIES):
        ref = oracle.Level(120.0, 1.0, 8.0)
        want = ref.scales(ts[e], x[e])
        for i in range(3):
            assert np.array_equal(np.concatenate([g[i] for g in got[e]]), want[i]), (e, i)
        state = cols.to_state(e)
        assert state == ref.to_state() | {"medians": [[b, m] for b, m in sorted(ref.medians.items())]}


@pytest.mark.parametrize("seed", range(4))
def test_windows_of_many_entities_are_each_entitys_windows(seed):
    rng = np.random.default_rng(seed)
    n = [int(rng.integers(1, 80)) for _ in range(ENTITIES)]
    rows = [rng.random((k, 2)) for k in n]
    for e in range(0, ENTITIES, 3):  # some missing values to impute
        rows[e][rng.random(n[e]) < 0.2, 1] = np.nan
    cols = Windows(8, 3, 2, capacity=ENTITIES)
    refs = [oracle.EntityWindow(8, 3, 2, fill=np.array([0.5, np.nan])) for _ in range(ENTITIES)]
    for e in range(ENTITIES):
        cols.reset(e, np.array([0.5, np.nan]))
    for parts in batches(rng, n):
        # one message per entity run, but a long run is two messages (chunks never straddle them)
        seg = Segments.of(np.array([e for e, _, _ in parts]), [b - a for _, a, b in parts])
        raw = np.concatenate([rows[e][a:b] for e, a, b in parts])
        lengths = []
        for _, a, b in parts:
            lengths += [2, b - a - 2] if b - a > 3 else [b - a]
        filled = cols.impute(seg, raw)
        windows, counts = cols.push(seg, filled, np.array(lengths))
        w_at = 0
        for i, (e, a, b) in enumerate(parts):
            ls = [2, b - a - 2] if b - a > 3 else [b - a]
            want_rows = refs[e].impute(rows[e][a:b])
            assert np.array_equal(filled[seg.start[i]:seg.end[i]], want_rows)
            want_w, want_c = refs[e].push(want_rows, ls)
            assert np.array_equal(windows[w_at:w_at + len(want_w)], want_w)
            assert np.array_equal(counts[w_at:w_at + len(want_c)], want_c)
            w_at += len(want_w)
    for e in range(ENTITIES):
        assert cols.to_state(e) == refs[e].to_state()


@pytest.mark.parametrize("seed", range(4))
def test_spot_of_many_entities_is_each_entitys_spot(seed):
    from scoring.thresholds import SpotColumns

    rng = np.random.default_rng(seed)
    n = [int(rng.integers(1, 400)) for _ in range(ENTITIES)]
    x = [rng.pareto(3.0, size=k) * float(rng.choice([1.0, 3.0])) for k in n]
    for e in range(0, ENTITIES, 2):
        x[e][rng.random(n[e]) < 0.03] = np.nan  # overflowed scores: never learnt from
    params = {"q": 1e-2, "level": 0.98, "max_excess": 40, "refit_every": 7, "min_peaks": 19}
    cols = SpotColumns(capacity=ENTITIES)
    refs = []
    for e in range(ENTITIES):
        calib = rng.pareto(3.0, size=int(rng.integers(100, 1200)))
        cols.reset(e, **params)
        cols.calibrate(e, calib)
        refs.append(oracle.SpotThreshold(**params))
        refs[-1].calibrate(calib)
    got = [[] for _ in range(ENTITIES)]
    for parts in batches(rng, n):
        seg = Segments.of(np.array([e for e, _, _ in parts]), [b - a for _, a, b in parts])
        thr, alarm = cols.step(seg, np.concatenate([x[e][a:b] for e, a, b in parts]))
        for i, (e, _, _) in enumerate(parts):
            got[e].append((thr[seg.start[i]:seg.end[i]], alarm[seg.start[i]:seg.end[i]]))
    for e in range(ENTITIES):
        want = refs[e].step(x[e])
        assert np.array_equal(np.concatenate([g[0] for g in got[e]]), want[0])
        assert np.array_equal(np.concatenate([g[1] for g in got[e]]), want[1])
        assert cols.to_state(e) == refs[e].to_state()


def test_gathered_rows_keep_what_they_held_whatever_the_columns_do_next():
    """``gather`` (a checkpoint's copy of the entities a micro-batch is about to change) holds the rows
    as they were, full SPOT rings included (those are updated in place), while the columns go on."""
    from scoring.thresholds import SpotColumns

    rng = np.random.default_rng(0)
    cols, wins = SpotColumns(capacity=3), Windows(8, 1, 2, capacity=3)
    for e in range(3):
        cols.reset(e, q=1e-2, level=0.9, max_excess=5)
        cols.calibrate(e, rng.pareto(3.0, size=300))
        for x in rng.pareto(3.0, size=200):  # the ring fills
            cols.observe(e, float(x))
    wins.reset(np.arange(3))
    wins.push(Segments.of(np.arange(3), [4, 4, 4]), rng.normal(size=(12, 2)), np.ones(12, np.int64))
    slots = np.array([2, 0])
    before = [cols.to_state(int(s)) for s in slots]
    history = wins.history[slots].copy()
    spot_copy, win_copy = cols.gather(slots), gather(wins, slots)
    for e in range(3):
        for x in 10.0 + rng.pareto(3.0, size=50):  # peaks: every ring moves
            cols.observe(e, float(x))
    wins.push(Segments.of(np.arange(3), [3, 3, 3]), rng.normal(size=(9, 2)), np.ones(9, np.int64))
    assert [cols.to_state(int(s)) for s in slots] != before
    assert [spot_copy.to_state(i) for i in range(2)] == before
    assert np.array_equal(win_copy.history, history) and not np.array_equal(wins.history[slots], history)
