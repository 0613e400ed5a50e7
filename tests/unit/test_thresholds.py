"""Unit tests for scoring.thresholds: SPOT, DSPOT and percentile online thresholds."""

import json
import math

import numpy as np
import orjson
import pytest
from scipy import stats

from scoring.thresholds import (
    DEFAULTS,
    KINDS,
    DSpotThreshold,
    PercentileThreshold,
    SpotThreshold,
    fit_gpd,
    make_threshold,
    threshold_from_state,
)

ALL_KINDS = sorted(KINDS)


def _json_roundtrip(state):
    return json.loads(json.dumps(state, allow_nan=False))


def _orjson_roundtrip(state):
    return orjson.loads(orjson.dumps(state))


# ---------------------------------------------------------------------------------------------
# GPD fit
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("gamma", [-0.3, -0.1, 0.0, 0.2, 0.5])
def test_fit_gpd_recovers_known_parameters(gamma):
    y = stats.genpareto.rvs(gamma, scale=2.0, size=5000, random_state=np.random.default_rng(5))
    g, s = fit_gpd(y)
    assert g == pytest.approx(gamma, abs=0.05)
    assert s == pytest.approx(2.0, rel=0.08)
    # It is the maximum-likelihood fit: at least as likely as scipy's MLE with loc fixed at 0.
    g_ref, _, s_ref = stats.genpareto.fit(y, floc=0)
    ll = stats.genpareto.logpdf(y, g, scale=s).sum()
    ll_ref = stats.genpareto.logpdf(y, g_ref, scale=s_ref).sum()
    assert ll >= ll_ref - 1e-6 * abs(ll_ref)


def test_fit_gpd_is_scale_free():
    y = stats.genpareto.rvs(0.1, scale=1.0, size=800, random_state=np.random.default_rng(6))
    g1, s1 = fit_gpd(y)
    g2, s2 = fit_gpd(y * 750.0)  # raw scores in the hundreds trip naive ports of spot.py
    assert g2 == pytest.approx(g1, abs=1e-8)
    assert s2 == pytest.approx(750.0 * s1, rel=1e-8)


def test_fit_gpd_degenerate_peaks_fall_back_to_exponential():
    assert fit_gpd(np.full(50, 0.25)) == (0.0, 0.25)        # all peaks equal
    g, s = fit_gpd(np.array([1.0, 2.0, 3.0]))                # too few peaks for a GPD fit
    assert (g, s) == (0.0, 2.0)
    with pytest.raises(ValueError):
        fit_gpd(np.array([]))


# ---------------------------------------------------------------------------------------------
# SPOT
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dist,true_quantile", [("exponential", math.log(1000.0)),
                                                ("normal", stats.norm.isf(1e-3))])
def test_spot_false_alarm_rate_is_close_to_q(dist, true_quantile):
    rng = np.random.default_rng(11)
    draw = getattr(rng, dist)
    th = make_threshold("spot", q=1e-3)
    th.calibrate(draw(size=10_000))
    # The calibrated threshold estimates the 1 - q quantile of the score distribution.
    assert th.threshold == pytest.approx(true_quantile, rel=0.12)
    thresholds, alarms = th.step(draw(size=50_000))
    assert np.isfinite(thresholds).all()
    assert 1e-3 / 5 < alarms.mean() < 1e-3 * 5


def test_spot_update_rule():
    th = SpotThreshold(q=1e-3, level=0.9)
    th.calibrate(np.random.default_rng(0).exponential(size=2000))
    s0 = th.to_state()
    t, z = s0["t"], s0["z"]

    th.step([t - 0.5])                      # below t: counted, not a peak
    s1 = th.to_state()
    assert (s1["n"], s1["nt"], s1["z"]) == (s0["n"] + 1, s0["nt"], z)

    thresholds, alarms = th.step([(t + z) / 2])  # between t and z: a peak, refit
    s2 = th.to_state()
    assert thresholds[0] == z and not alarms[0]
    assert (s2["n"], s2["nt"]) == (s1["n"] + 1, s1["nt"] + 1)
    assert s2["peaks"][-1] == pytest.approx((z - t) / 2)
    assert s2["z"] != z

    thresholds, alarms = th.step([s2["z"] + 1.0])  # above z: alarm, state untouched
    assert alarms[0] and thresholds[0] == s2["z"]
    assert th.to_state() == s2


def test_spot_tail_is_a_bounded_ring():
    th = SpotThreshold(q=1e-3, level=0.9, max_excess=20)
    rng = np.random.default_rng(1)
    th.calibrate(rng.exponential(size=1000))   # about 100 excesses, only the last 20 kept
    state = th.to_state()
    assert len(state["peaks"]) == 20 and state["nt"] > 20
    th.step(rng.exponential(size=2000))
    assert len(th.to_state()["peaks"]) == 20


def test_spot_min_peaks_lowers_t_for_a_short_calibration():
    x = np.random.default_rng(3).exponential(size=400)
    faithful, served = SpotThreshold(q=1e-2), SpotThreshold(q=1e-2, min_peaks=20)
    faithful.calibrate(x), served.calibrate(x)
    assert len(faithful.to_state()["peaks"]) == 7  # level 0.98 of 400 points
    assert len(served.to_state()["peaks"]) == 20
    served.calibrate(x[:30])  # never below the median, however short
    assert served.to_state()["t"] >= np.median(x[:30]) and len(served.to_state()["peaks"]) < 20
    long = SpotThreshold(q=1e-2, min_peaks=20)
    long.calibrate(np.random.default_rng(3).exponential(size=5000))
    assert len(long.to_state()["peaks"]) == 99  # enough peaks already: level 0.98 as before


def test_spot_min_peaks_estimates_a_heavy_tail_better_from_few_points():
    """Over 300 calibrations of 400 Pareto points, the 1% quantile is estimated with a smaller error
    from the 19 peaks served than from the 7 that level 0.98 leaves."""
    truth = 0.01 ** (-1 / 3) - 1
    err = {0: [], DEFAULTS["spot"]["min_peaks"]: []}
    for seed in range(300):
        x = np.random.default_rng(seed).pareto(3, size=400)
        for k in err:
            th = SpotThreshold(q=1e-2, min_peaks=k)
            th.calibrate(x)
            err[k].append(abs(math.log(th.threshold / truth)))
    assert np.mean(err[DEFAULTS["spot"]["min_peaks"]]) < 0.95 * np.mean(err[0])


def test_served_spot_keeps_the_peaks_of_a_full_calibration():
    """As many peaks as 1,000 calibration points give at level 0.98, however short the calibration;
    a calibration of 1,000 points or more is served exactly as without min_peaks."""
    x = np.random.default_rng(0).normal(size=1000)
    full = SpotThreshold(q=1e-2)
    full.calibrate(x)
    for kind in ("spot", "dspot"):
        th = make_threshold(kind, **DEFAULTS[kind])
        th.calibrate(x[:500])
        state = th.to_state()
        assert len(state.get("spot", state)["peaks"]) == len(full.to_state()["peaks"]) == 19
    served = make_threshold("spot", **DEFAULTS["spot"])
    faithful = make_threshold("spot", **{**DEFAULTS["spot"], "min_peaks": 0})
    served.calibrate(x), faithful.calibrate(x)
    assert served.to_state()["t"] == faithful.to_state()["t"] and served.threshold == faithful.threshold


def test_spot_refit_every_skips_fits_but_stays_close():
    rng = np.random.default_rng(12)
    cal, xs = rng.exponential(size=5000), rng.exponential(size=5000)
    every = SpotThreshold(refit_every=1)
    sparse = SpotThreshold(refit_every=10)
    every.calibrate(cal), sparse.calibrate(cal)
    t1, _ = every.step(xs)
    t10, _ = sparse.step(xs)
    assert not np.array_equal(t1, t10)
    assert np.max(np.abs(t10 / t1 - 1.0)) < 0.1


# ---------------------------------------------------------------------------------------------
# DSPOT
# ---------------------------------------------------------------------------------------------

def test_dspot_follows_slow_drift_where_spot_alarms():
    rng = np.random.default_rng(3)
    n_cal, n = 2000, 10_000
    level = 2e-3 * np.arange(n_cal + n)          # the score level rises by 24 noise sds
    x = level + rng.normal(size=n_cal + n)
    spot, dspot = make_threshold("spot"), make_threshold("dspot", depth=100)
    spot.calibrate(x[:n_cal])
    dspot.calibrate(x[:n_cal])
    _, spot_alarms = spot.step(x[n_cal:])
    thresholds, dspot_alarms = dspot.step(x[n_cal:])
    assert spot_alarms.sum() > n / 2
    assert dspot_alarms.sum() < 5 * 1e-3 * n + 5
    # The threshold rides a few sds above the moving level.
    gap = thresholds - level[n_cal:]
    assert 1.0 < gap.min() and gap.max() < 6.0


def test_dspot_window_seeded_from_calibration_and_moves_on_non_alarms():
    th = DSpotThreshold(depth=4)
    th.calibrate(np.arange(20, dtype=float))
    assert th.to_state()["window"] == [16.0, 17.0, 18.0, 19.0]
    z = th.to_state()["spot"]["z"]
    thresholds, alarms = th.step([1e6, 19.0])
    assert alarms.tolist() == [True, False]
    assert thresholds[0] == z + 17.5
    assert th.to_state()["window"] == [17.0, 18.0, 19.0, 19.0]


# ---------------------------------------------------------------------------------------------
# Percentile
# ---------------------------------------------------------------------------------------------

def test_percentile_equals_numpy_quantile_of_window_with_alarms_capped():
    rng = np.random.default_rng(2)
    q, window = 0.95, 300
    cal, xs = rng.gamma(2.0, size=1000), rng.gamma(2.0, size=2000)
    th = PercentileThreshold(q=q, window=window)
    th.calibrate(cal)
    thresholds, alarms = th.step(xs)
    mirror = list(cal[-window:])
    for i, x in enumerate(xs):
        expected = np.quantile(mirror[-window:], q)
        assert thresholds[i] == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert alarms[i] == (x > thresholds[i])
        mirror.append(min(x, thresholds[i]))
    assert alarms.any()


def test_percentile_false_alarm_rate_does_not_creep():
    rng = np.random.default_rng(5)
    th = PercentileThreshold(q=0.995, window=5000)
    th.calibrate(rng.normal(size=5000))
    _, alarms = th.step(rng.normal(size=100_000))
    late = alarms[-20_000:].mean()
    assert late < 2 * 0.005, f"alarm rate crept to {late:.4f}"


# ---------------------------------------------------------------------------------------------
# All kinds
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ALL_KINDS)
def test_injected_spikes_are_flagged(kind):
    rng = np.random.default_rng(4)
    cal, xs = rng.normal(size=5000), rng.normal(size=5000)
    spikes = np.arange(250, 5000, 500)
    xs[spikes] += 15.0
    th = make_threshold(kind)
    th.calibrate(cal)
    _, alarms = th.step(xs)
    assert alarms[spikes].all()
    assert np.delete(alarms, spikes).mean() < 0.02


RESTORE_CASES = [
    ("spot", {}),
    ("spot", {"max_excess": 50, "refit_every": 3}),   # ring wrapped, fit pending
    ("dspot", {"depth": 30}),
    ("percentile", {"q": 0.99, "window": 500}),
]


@pytest.mark.parametrize("roundtrip", [_json_roundtrip, _orjson_roundtrip], ids=["json", "orjson"])
@pytest.mark.parametrize("kind,params", RESTORE_CASES)
def test_restore_mid_stream_gives_identical_outputs(kind, params, roundtrip):
    rng = np.random.default_rng(8)
    cal, xs = rng.exponential(size=2000), rng.exponential(size=6000)
    xs[::997] += 20.0
    original = make_threshold(kind, **params)
    original.calibrate(cal)
    original.step(xs[:3000])
    restored = threshold_from_state(roundtrip(original.to_state()))
    assert type(restored) is type(original) and restored.params == original.params
    t_a, a_a = original.step(xs[3000:])
    t_b, a_b = restored.step(xs[3000:])
    np.testing.assert_array_equal(t_a, t_b)
    np.testing.assert_array_equal(a_a, a_b)
    assert restored.to_state() == original.to_state()


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_step_is_sequential_whatever_the_batching(kind):
    rng = np.random.default_rng(9)
    cal, xs = rng.exponential(size=1000), rng.exponential(size=3000)
    whole, pieces = make_threshold(kind), make_threshold(kind)
    whole.calibrate(cal), pieces.calibrate(cal)
    t_whole, a_whole = whole.step(xs)
    before = pieces.threshold
    parts = [pieces.step(xs[i:j]) for i, j in [(0, 1), (1, 700), (700, 701), (701, 3000)]]
    assert parts[0][0][0] == before          # the threshold in force when the score was judged
    np.testing.assert_array_equal(t_whole, np.concatenate([p[0] for p in parts]))
    np.testing.assert_array_equal(a_whole, np.concatenate([p[1] for p in parts]))
    np.testing.assert_array_equal(a_whole, xs > t_whole)


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("cal", [
    np.full(500, 3.0),                     # zero variance
    np.array([1.0, 2.0]),                  # very few points
    np.array([0.5, 0.5, 0.7]),
    np.r_[np.zeros(95), np.ones(5)],       # top values tied: no excess over t
    np.r_[np.zeros(90), np.full(10, 5.0)], # all excesses equal
], ids=["constant", "two", "three", "tied-top", "equal-peaks"])
def test_degenerate_calibration_gives_finite_thresholds(kind, cal):
    th = make_threshold(kind, **({"depth": 10} if kind == "dspot" else {}))
    th.calibrate(cal)
    rng = np.random.default_rng(10)
    xs = np.r_[np.full(50, np.median(cal)), rng.normal(cal.mean(), 1.0, 500), [1e9]]
    thresholds, alarms = th.step(xs)
    assert np.isfinite(thresholds).all()
    assert not alarms[:50].any()           # more of the typical calibration level is no anomaly
    assert alarms[-1]
    json.dumps(th.to_state(), allow_nan=False)


@pytest.mark.parametrize("kind", ["spot", "percentile"])
def test_single_calibration_point(kind):
    th = make_threshold(kind)
    th.calibrate(np.array([2.0]))
    thresholds, alarms = th.step(np.array([2.0, 1.0, 100.0]))
    assert np.isfinite(thresholds).all()
    assert alarms.tolist() == [False, False, True]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_non_finite_scores(kind):
    th = make_threshold(kind)
    th.calibrate(np.random.default_rng(7).normal(size=1000))
    state = th.to_state()
    thresholds, alarms = th.step(np.array([np.nan, -np.inf, np.inf, 1e12]))
    assert alarms.tolist() == [False, False, True, True]
    assert np.isfinite(thresholds).all()
    if kind == "percentile":  # alarms are learnt capped at their threshold; NaN and -inf are not
        assert th.to_state()["values"] == (state["values"] + thresholds[2:].tolist())[-th.window:]
    else:
        assert th.to_state() == state      # none of them was learnt from


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_step_before_calibration_raises(kind):
    th = make_threshold(kind)
    assert not th.ready and th.threshold is None
    with pytest.raises(RuntimeError):
        th.step(np.array([1.0]))
    restored = threshold_from_state(_json_roundtrip(th.to_state()))
    assert not restored.ready


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("bad", [np.array([]), np.array([1.0, np.nan, 2.0]), np.ones((3, 2))],
                         ids=["empty", "nan", "2d"])
def test_bad_calibration_data_raises(kind, bad):
    with pytest.raises(ValueError):
        make_threshold(kind).calibrate(bad)


def test_dspot_needs_two_calibration_points():
    with pytest.raises(ValueError):
        make_threshold("dspot").calibrate(np.array([1.0]))


@pytest.mark.parametrize("kind,params", [
    ("spot", {"q": 0.0}),
    ("spot", {"q": 0.05}),                 # q must be below 1 - level = 0.02
    ("spot", {"q": float("nan")}),
    ("spot", {"q": "0.001"}),
    ("spot", {"level": 1.0}),
    ("spot", {"level": 0.0}),
    ("spot", {"level": True}),
    ("spot", {"max_excess": 0}),
    ("spot", {"max_excess": 2.5}),
    ("spot", {"refit_every": 0}),
    ("spot", {"window": 100}),             # not a SPOT parameter
    ("dspot", {"depth": 0}),
    ("dspot", {"q": 0.5}),
    ("percentile", {"q": 1.5}),
    ("percentile", {"q": 0.0}),
    ("percentile", {"window": 0}),
    ("percentile", {"depth": 10}),
])
def test_invalid_params_raise(kind, params):
    with pytest.raises(ValueError):
        make_threshold(kind, **params)


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ValueError, match="dspot.*percentile.*spot"):
        make_threshold("pot")
    with pytest.raises(ValueError):
        threshold_from_state({"kind": "pot"})


def test_integral_float_params_are_accepted():
    # The CLI parses every --threshold-param NAME=VALUE as a float.
    th = make_threshold("dspot", max_excess=500.0, depth=100.0, refit_every=1.0)
    assert th.params["depth"] == 100 and isinstance(th.params["depth"], int)
    assert make_threshold("percentile", window=5000.0).params["window"] == 5000


def _spot_point_by_point(th: SpotThreshold, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The author's loop, one point at a time: the reference for SPOT's stretch-wise _run."""
    thresholds, alarms = np.empty(len(x)), np.zeros(len(x), bool)
    for i, v in enumerate(x.tolist()):
        thresholds[i] = th._z
        if v > th._z:
            alarms[i] = True
        elif math.isfinite(v):
            th._observe(v)
    return thresholds, alarms


@pytest.mark.parametrize("seed", range(6))
def test_spot_skipping_stretches_below_t_changes_nothing(seed):
    rng = np.random.default_rng(seed)
    calib = rng.exponential(size=2000)
    x = rng.exponential(size=5000) * rng.choice([1.0, 3.0], size=5000, p=[0.9, 0.1])
    x[rng.integers(0, 5000, 20)] = np.nan
    x[rng.integers(0, 5000, 5)] = np.inf
    if seed % 2:  # a quiet stretch: q n / Nt above 1, z_q held at t
        x[1000:4000] *= 0.01
    fast, ref = SpotThreshold(q=1e-2), SpotThreshold(q=1e-2)
    fast.calibrate(calib)
    ref.calibrate(calib)
    got = [fast.step(x[lo:hi]) for lo, hi in ((0, 1), (1, 777), (777, 5000))]
    want = _spot_point_by_point(ref, x)
    assert np.array_equal(np.concatenate([g[0] for g in got]), want[0])
    assert np.array_equal(np.concatenate([g[1] for g in got]), want[1])
    assert fast.to_state() == ref.to_state()
