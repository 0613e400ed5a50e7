"""Plant simulator: determinism, layout, ground truth and the structure detectors rely on."""
import time

import numpy as np
import pytest

from producers.simulate import (
    CHANNEL_BASES,
    KINDS,
    MIN_GAP,
    Anomaly,
    EntitySeries,
    _physics,
    channel_names,
    noise_std,
    normal_history,
    simulate_entity,
    simulate_plant,
)

T0 = 1_700_000_000.0
C = 16


def _idx(series: EntitySeries, a: Anomaly) -> tuple[int, int]:
    """Index span [s, e) of an anomaly in its series."""
    return int(a.start - series.ts[0]), int(a.end - series.ts[0]) + 1


@pytest.fixture(scope="module")
def live():
    return simulate_entity("plant-01", C, 12_000, T0, seed=7)


@pytest.fixture(scope="module")
def counterfactual():
    return simulate_entity("plant-01", C, 12_000, T0, seed=7, anomalies=False)


def test_channel_names_unique_and_readable():
    names = channel_names(3 * len(CHANNEL_BASES) + 2)
    assert len(set(names)) == len(names)
    assert names[:len(CHANNEL_BASES)] == CHANNEL_BASES
    assert names[len(CHANNEL_BASES)] == CHANNEL_BASES[0] + "_2"
    assert names[-1] == CHANNEL_BASES[1] + "_4"
    assert channel_names(0) == []


def test_deterministic_bit_identical():
    a = simulate_plant(3, 8, 3000, T0, seed=11)
    b = simulate_plant(3, 8, 3000, T0, seed=11)
    for x, y in zip(a, b):
        assert x.values.tobytes() == y.values.tobytes()
        assert x.ts.tobytes() == y.ts.tobytes() and x.labels.tobytes() == y.labels.tobytes()
        assert [v.to_json() for v in x.anomalies] == [v.to_json() for v in y.anomalies]
    h1, h2 = (normal_history("plant-02", 8, 2000, T0, seed=11) for _ in range(2))
    assert h1.values.tobytes() == h2.values.tobytes()
    other = simulate_plant(3, 8, 3000, T0, seed=12)
    assert not np.array_equal(a[0].values, other[0].values)


def test_shapes_dtypes_and_time_grid(live):
    assert live.values.shape == (12_000, C) and live.values.dtype == np.float32
    assert live.ts.dtype == np.float64 and live.labels.dtype == np.int8
    assert np.isfinite(live.values).all()
    assert live.ts[0] == T0 and np.all(np.diff(live.ts) == 1.0)
    assert live.channels == channel_names(C)

    plant = simulate_plant(3, 5, 1000, T0, seed=1, anomaly_every=300)
    assert [s.entity for s in plant] == ["plant-01", "plant-02", "plant-03"]
    assert all(s.values.shape == (1000, 5) for s in plant)
    assert not np.array_equal(plant[0].values, plant[1].values)

    hist = normal_history("plant-01", C, 5000, T0, seed=7)
    assert hist.values.shape == (5000, C) and hist.values.dtype == np.float32
    assert hist.ts[-1] == T0 - 1 and np.all(np.diff(hist.ts) == 1.0)
    assert hist.anomalies == [] and not hist.labels.any()


def test_labels_match_anomaly_spans_inclusive(live):
    expected = np.zeros(len(live.ts), np.int8)
    for a in live.anomalies:
        s, e = _idx(live, a)
        assert live.ts[s] == a.start and live.ts[e - 1] == a.end
        expected[s:e] = 1
        assert a.to_json() == {"entity": "plant-01", "start": a.start, "end": a.end,
                               "channels": a.channels, "kind": a.kind}
    assert np.array_equal(live.labels, expected)


def test_schedule_warmup_gaps_channels_and_kinds(live):
    anomalies = live.anomalies
    assert len(anomalies) >= 20
    assert anomalies[0].start >= T0 + 300
    for prev, nxt in zip(anomalies, anomalies[1:]):
        assert nxt.start - prev.end - 1 >= MIN_GAP
    for k, a in enumerate(anomalies):
        assert a.kind == KINDS[k % len(KINDS)]
        assert 1 <= len(a.channels) <= 3 and len(set(a.channels)) == len(a.channels)
        assert set(a.channels) <= set(live.channels)
        dur = a.end - a.start + 1
        lo, hi = {"spike": (1, 5), "level_shift": (20, 60), "drift": (40, 80), "stuck": (30, 80),
                  "correlation_break": (30, 80)}[a.kind]
        assert lo <= dur <= hi, a
    # Any series of >= 5 * anomaly_every points (default warmup) contains every kind.
    for i in range(8):
        s = simulate_entity(f"plant-{i + 1:02d}", 6, 2000, T0 + 977 * i, seed=i)
        assert {a.kind for a in s.anomalies} == set(KINDS)
        s = simulate_entity(f"plant-{i + 1:02d}", 6, 3000 + 5 * 500, T0, seed=i,
                            anomaly_every=500, warmup=3000)
        assert {a.kind for a in s.anomalies} == set(KINDS) and s.anomalies[0].start >= T0 + 3000
    off = simulate_entity("plant-01", C, 12_000, T0, seed=7, anomalies=False)
    assert off.anomalies == [] and not off.labels.any()


def test_prefix_stable(live):
    """A shorter run is the prefix of a longer one, so demos and tests can pick any length."""
    short = simulate_entity("plant-01", C, 5000, T0, seed=7)
    assert np.array_equal(short.values, live.values[:5000])
    assert [a.to_json() for a in short.anomalies] == \
        [a.to_json() for a in live.anomalies if a.end < T0 + 5000]


def test_history_shares_physics_but_not_noise(live):
    hist = normal_history("plant-01", C, 20_000, T0, seed=7).values.astype(np.float64)
    normal = live.values[live.labels == 0].astype(np.float64)
    std = hist.std(0)
    assert np.max(np.abs(normal.mean(0) - hist.mean(0)) / std) < 1.0  # slow operating point
    assert np.abs(normal.std(0) / std - 1).max() < 0.3
    corr_diff = np.abs(np.corrcoef(normal.T) - np.corrcoef(hist.T))
    assert corr_diff.mean() < 0.15
    # Control: another entity's physics is clearly different.
    other = normal_history("plant-02", C, 20_000, T0, seed=7).values.astype(np.float64)
    assert np.max(np.abs(other.mean(0) - hist.mean(0)) / std) > 1.2
    assert np.abs(np.corrcoef(other.T) - np.corrcoef(hist.T)).mean() > max(0.25, 2 * corr_diff.mean())
    # Strongly correlated groups exist (what PCA-style detectors exploit).
    assert (np.abs(np.corrcoef(hist.T))[np.triu_indices(C, 1)] > 0.8).sum() >= C // 2
    # Same ts grid, same physics, different noise realisation.
    h = normal_history("plant-01", C, 3000, T0 + 3000, seed=7)
    lv = simulate_entity("plant-01", C, 3000, T0, seed=7, anomalies=False)
    assert np.array_equal(h.ts, lv.ts)
    diff = (h.values - lv.values).astype(np.float64) / noise_std("plant-01", C, 7)
    assert np.all(diff.std(0) > 1.0)
    assert np.array_equal(noise_std("plant-01", C, 7), noise_std("plant-01", C, 7))


def test_injected_channels_deviate_from_counterfactual(live, counterfactual):
    sd = noise_std("plant-01", C, 7)
    diff = (live.values.astype(np.float64) - counterfactual.values) / sd
    assert np.all(diff[live.labels == 0] == 0)  # injection touches nothing outside the spans
    for a in live.anomalies:
        s, e = _idx(live, a)
        cols = [live.channels.index(c) for c in a.channels]
        untouched = np.setdiff1d(np.arange(C), cols)
        assert np.all(diff[s:e, untouched] == 0)
        d = np.abs(diff[s:e, cols])
        if a.kind in ("spike", "level_shift"):
            assert d[:, 0].min() >= 4.5, a
            assert np.all(d[:, 0].mean() >= d.mean(0)), a  # highest impact first
        elif a.kind == "drift":
            assert d[-1, 0] >= 6.5 and d[0, 0] < d[-1, 0] / 10, a
            assert np.all(d[-1, 0] >= d[-1]), a
        elif a.kind == "stuck":
            j = cols[0]
            assert np.all(live.values[s:e, j] == live.values[s - 1, j]), a
            assert d[:, 0].max() >= 3, a


def test_correlation_break_decouples_channel_from_its_group(live, counterfactual):
    ph = _physics("plant-01", C, 7)
    cf = counterfactual.values.astype(np.float64)
    z = (cf - cf.mean(0)) / cf.std(0)
    breaks = [a for a in live.anomalies if a.kind == "correlation_break"]
    assert len(breaks) >= 4
    befores = []
    for a in breaks:
        s, e = _idx(live, a)
        j = live.channels.index(a.channels[0])
        mates = [i for i in range(C) if ph.group[i] == ph.group[j] and i != j]
        assert mates
        sign = np.sign(np.corrcoef(cf.T)[j, mates])
        group = (z[s:e, mates] * sign).mean(1)  # sign-aligned group signal
        before = np.corrcoef(cf[s:e, j], group)[0, 1]
        after = np.corrcoef(live.values[s:e, j].astype(np.float64), group)[0, 1]
        assert after < min(0.0, before - 0.7), (a, before, after)
        befores.append(before)
        # It stays (about) inside its normal marginal range: no offset, only the wrong shape.
        lo, hi = cf[:, j].min(), cf[:, j].max()
        margin = 0.25 * (hi - lo)
        assert lo - margin <= live.values[s:e, j].min() and live.values[s:e, j].max() <= hi + margin
    assert np.mean(befores) > 0.6  # in the counterfactual it does follow its group


def test_fast_enough():
    t = time.perf_counter()
    simulate_plant(8, 16, 20_000, T0, seed=3)
    assert time.perf_counter() - t < 3.0
