"""Affiliation and VUS-PR against cases computed by hand (the derivations are in the comments).

Affiliation, one labelled event J in its zone E (|.| is a length; index i is the interval [i, i+1)):
  precision of an alarm point at distance d > 0 from J: 1 - (|J| + min(d, m) + d) / |E|, where m is
  the room on J's narrower side of E (a random point of E is at least d away with that probability);
  recall of a point y of J at distance d from the alarms: 1 - (min(d, y - E0, E1 - y) + d) / |E|.
VUS-PR with a constant score predicts everything at every threshold, so each width w contributes
precision = (labelled points + sum of buffer weights) / N with recall 1.
"""
import math

import numpy as np
import pytest

from training.metrics import auc_pr
from training.range_metrics import affiliation, vus_pr


def _series(n, points):
    x = np.zeros(n, int)
    x[list(points)] = 1
    return x


# --- affiliation ------------------------------------------------------------------------------


def test_affiliation_exact_match_is_perfect():
    labels = _series(30, [3, 4, 5, 17, 25, 26])
    a = affiliation(labels.copy(), labels)
    assert a == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_affiliation_single_alarm_at_a_distance():
    # N=10, J=[2,3), E=(0,10) (the only event), m=min(2-0, 10-3)=2. Alarm I=[6,7).
    # Precision: x in [6,7] is d=x-3 in [3,4] from J: 1 - (1 + 2 + d)/10 = (7-d)/10, mean 0.35.
    # Recall: y in [2,3] is d=6-y from I and min(d, y, 10-y) = y: 1 - (y + 6 - y)/10 = 0.4.
    a = affiliation(_series(10, [6]), _series(10, [2]))
    assert a["precision"] == pytest.approx(0.35)
    assert a["recall"] == pytest.approx(0.4)
    assert a["f1"] == pytest.approx(2 * 0.35 * 0.4 / 0.75)


def test_affiliation_half_the_event_detected():
    # N=20, J=[5,9), alarm I=[5,7): precision 1 (all inside J). Recall: [5,7) counts 2; y in
    # [7,9] is d=y-7 from I and min(d, y, 20-y) = d: integral of 1 - 2(y-7)/20 = 2 - 0.2 = 1.8;
    # recall = (2 + 1.8) / 4 = 0.95.
    a = affiliation(_series(20, [5, 6]), _series(20, [5, 6, 7, 8]))
    assert a["precision"] == pytest.approx(1.0)
    assert a["recall"] == pytest.approx(0.95)


def test_affiliation_splits_the_event_between_alarms_on_both_sides():
    # N=20, J=[8,12), E=(0,20), |J|=4, m=8; alarms I1=[5,6) and I2=[13,14).
    # Precision: I1 is d in [2,3] from J, mean of 1 - (4 + 2d)/20 = 0.55; I2 is d in [1,2], 0.65;
    #   equal lengths: 0.6.
    # Recall: J splits at the midpoint (6+13)/2 = 9.5 between the alarms, and min(d, y, 20-y) = d:
    #   [8,9.5] from I1 (d=y-6): integral of 1 - (y-6)/10 = 1.5 - (3.5^2 - 2^2)/20 = 1.0875;
    #   [9.5,12] from I2 (d=13-y): 2.5 - (3.5^2 - 1^2)/20 = 1.9375; recall = 3.025/4 = 0.75625.
    a = affiliation(_series(20, [5, 13]), _series(20, [8, 9, 10, 11]))
    assert a["precision"] == pytest.approx(0.6)
    assert a["recall"] == pytest.approx(0.75625)


def test_affiliation_alarms_everywhere_is_not_rewarded():
    # N=4, J=[1,2), E=(0,4), m=min(1, 2)=1, precision integrand 1 - (1 + min(d,1) + d)/4.
    # Left [0,1]: d in [0,1], (3-2d)/4 integrates to 0.5. Inside: 1. Right [2,4]: d in [0,1] gives
    # 0.5, d in [1,2] gives integral of (2-d)/4 = 0.125. Precision = (0.5 + 1 + 0.625)/4 = 0.53125.
    a = affiliation(np.ones(4, int), _series(4, [1]))
    assert a["precision"] == pytest.approx(0.53125)
    assert a["recall"] == 1.0


def test_affiliation_averages_precision_over_zones_with_alarms_only():
    # Two events, alarms on the first only: its zone has precision 1, the other zone is undefined
    # and left out; recall is averaged over both events: (1 + 0)/2.
    labels = _series(20, [2, 12])
    a = affiliation(_series(20, [2]), labels)
    assert a["precision"] == 1.0
    assert a["recall"] == 0.5
    assert a["f1"] == pytest.approx(2 / 3)


def test_affiliation_cuts_alarms_at_zone_boundaries():
    # Events J1=[2,3), J2=[12,13), N=20: boundary (3+12)/2 = 7.5. One alarm [2,13) is cut in two.
    # Zone 1: E=(0,7.5), m=min(2, 4.5)=2. Piece [2,7.5]: inside 1; after J1 d in [0,4.5]:
    #   4.5 - (4.5*1 + integral of min(d,2)+d = 2 + 5 + 10.125)/7.5 = 97/60; precision (1+97/60)/5.5.
    # Zone 2: E=(7.5,20), m=min(4.5, 7)=4.5. Piece [7.5,13]: inside 1; before J2 d in [0,4.5]:
    #   4.5 - (4.5 + 20.25)/12.5 = 2.52; precision 3.52/5.5 = 0.64. Recall 1 in both zones.
    a = affiliation(np.r_[np.zeros(2, int), np.ones(11, int), np.zeros(7, int)], _series(20, [2, 12]))
    assert a["precision"] == pytest.approx(((1 + 97 / 60) / 5.5 + 0.64) / 2)
    assert a["recall"] == pytest.approx(1.0)


def test_affiliation_edge_cases():
    nothing = affiliation(_series(10, [3]), np.zeros(10, int))
    assert all(math.isnan(v) for v in nothing.values())
    silent = affiliation(np.zeros(10, int), _series(10, [3]))
    assert math.isnan(silent["precision"]) and silent["recall"] == 0.0 and silent["f1"] == 0.0
    with pytest.raises(ValueError):
        affiliation(np.zeros(9, int), np.zeros(10, int))


# --- VUS-PR -----------------------------------------------------------------------------------


def test_vus_pr_perfect_scores_give_one():
    labels = _series(40, [3, 4, 5, 20, 33, 34])
    for window in (0, 3, 10):
        assert vus_pr(labels.astype(float), labels, max_window=window) == pytest.approx(1.0)


def test_vus_pr_without_buffer_is_average_precision_weighted_by_events_hit():
    # One event {1,2}; ranking 1 (hit), 3 (miss), 2 (hit): AP = 1*(1/2) + (2/3)*(1/2) = 5/6.
    # The 250 quantile thresholds of 6 points are the 6 scores themselves.
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.05])
    labels = np.array([0, 1, 1, 0, 0, 0])
    assert vus_pr(scores, labels, max_window=0) == pytest.approx(5 / 6)
    assert vus_pr(scores, labels, max_window=0) == pytest.approx(auc_pr(scores, labels))
    # Two events {0} and {4,5}; ranking 4, 1, 0, 5. Recall is (hits/3) x (events hit / 2):
    # top 1: 1/6 at precision 1; top 3: 2/3 at 2/3; top 4: 1 at 3/4.
    # AP = 1/6 + (2/3 - 1/6)(2/3) + (1 - 2/3)(3/4) = 3/4, below plain AUC-PR (1 + 2/3 + 3/4)/3.
    scores = np.array([0.7, 0.8, 0.5, 0.4, 0.9, 0.6])
    labels = np.array([1, 0, 0, 0, 1, 1])
    assert vus_pr(scores, labels, max_window=0) == pytest.approx(3 / 4)
    assert auc_pr(scores, labels) == pytest.approx(29 / 36)
    assert vus_pr(scores, labels, max_window=1) == pytest.approx(3 / 4)  # w = 1 has no buffer either


def test_vus_pr_constant_score_is_the_buffered_base_rate():
    # N=10, event {4,5}. Buffer of width w: w//2 points each side weighted sqrt(1 - d/w).
    # w=0,1: none; w=2: points 3,6 at d=1; w=3: same with w=3; w=4: d=1 and d=2 on each side.
    s = math.sqrt
    buffer = [0, 0, 2 * s(1 / 2), 2 * s(2 / 3), 2 * (s(3 / 4) + s(1 / 2))]
    expected = np.mean([(2 + b) / 10 for b in buffer])
    assert vus_pr(np.full(10, 0.3), _series(10, [4, 5]), max_window=4) == pytest.approx(expected)
    # Events {3} and {5}, N=9: point 4 is in reach of both and its weight is clipped at 1;
    # w=2,3: points 2, 6 at d=1 and 4 -> 1; w=4: points 1, 7 at d=2, 2, 6 at d=1, 4 -> 1.
    buffer = [0, 0, 2 * s(1 / 2) + 1, 2 * s(2 / 3) + 1, 2 * (s(1 / 2) + s(3 / 4)) + 1]
    expected = np.mean([(2 + b) / 9 for b in buffer])
    assert vus_pr(np.zeros(9), _series(9, [3, 5]), max_window=4) == pytest.approx(expected)


def test_vus_pr_buffer_credits_a_near_miss():
    # N=8, event {3}; the top score sits one step late at 4, the event itself is second.
    # w=0,1: top 1 gains nothing, top 2 gains recall 1 at precision 1/2: AP 1/2.
    # w=2: point 4 weighs s = sqrt(1/2). Top 1: TP = s, recall s/(1 + s/2) = r, precision s.
    # Top 2: TP = 1 + s, recall 1, precision (1 + s)/2. AP = r*s + (1 - r)(1 + s)/2.
    scores = np.zeros(8)
    scores[4], scores[3] = 1.0, 0.5
    labels = _series(8, [3])
    s = math.sqrt(1 / 2)
    r = s / (1 + s / 2)
    assert vus_pr(scores, labels, max_window=0) == pytest.approx(0.5)
    assert vus_pr(scores, labels, max_window=2) == pytest.approx((0.5 + 0.5 + r * s + (1 - r) * (1 + s) / 2) / 3)


def test_vus_pr_random_is_low_and_perfect_is_one_on_a_long_series():
    rng = np.random.default_rng(7)
    n = 20_000
    labels = np.zeros(n, int)
    for start in rng.choice(n - 50, 40, replace=False):
        labels[start:start + rng.integers(1, 20)] = 1
    assert vus_pr(labels.astype(float), labels) == pytest.approx(1.0)
    # Random scores sit at the constant-score value: 2% labelled plus the buffers' partial credit
    # (about 0.1 here, where plain AUC-PR would give the 2% base rate).
    baseline = vus_pr(np.zeros(n), labels)
    noise = vus_pr(rng.random(n), labels)
    assert noise < 0.15 and abs(noise - baseline) < 0.02
    informative = vus_pr(labels + rng.normal(0, 0.5, n), labels)
    assert 0.3 < informative < 1.0


def test_vus_pr_edge_cases():
    assert math.isnan(vus_pr(np.arange(5.0), np.zeros(5, int)))
    with pytest.raises(ValueError):
        vus_pr(np.array([0.1, np.nan, 0.3]), np.array([0, 1, 0]))
    with pytest.raises(ValueError):
        vus_pr(np.zeros(4), np.zeros(5, int))
