"""Metrics against hand-computed cases."""
import math

import numpy as np
import pytest

from training.metrics import (
    auc_pr,
    best_f1,
    channel_label_matrix,
    event_f1,
    hit_rate,
    ndcg,
    point_adjusted_f1,
    prf,
    segments,
)


def test_segments_are_half_open_runs():
    assert segments(np.array([0, 1, 1, 0, 1, 0, 0, 1])) == [(1, 3), (4, 5), (7, 8)]
    assert segments(np.zeros(4)) == []


def test_point_adjustment_visibly_inflates_f1():
    labels = np.zeros(100, int)
    labels[10:60] = 1  # one long anomaly of 50 points
    pred = np.zeros(100, bool)
    pred[10] = True  # a single lucky hit
    pred[80:82] = True  # and two false alarms
    honest = prf(pred, labels)
    assert honest["precision"] == pytest.approx(1 / 3) and honest["recall"] == pytest.approx(1 / 50)
    assert honest["f1"] == pytest.approx(2 * (1 / 3) * (1 / 50) / (1 / 3 + 1 / 50))  # 0.0377
    adjusted = point_adjusted_f1(pred, labels)
    assert adjusted["precision"] == pytest.approx(50 / 52) and adjusted["recall"] == 1.0
    assert adjusted["f1"] > 0.95 > 25 * honest["f1"]


def test_event_f1():
    labels = np.array([0, 1, 1, 0, 0, 1, 1, 0, 0, 0])
    pred = np.array([0, 0, 1, 0, 0, 0, 0, 0, 1, 0], bool)
    e = event_f1(pred, labels)
    assert e["recall"] == 0.5 and e["precision"] == 0.5 and e["f1"] == 0.5


def test_auc_pr_hand_computed():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 0, 0])
    assert auc_pr(scores, labels) == pytest.approx((1 / 1 + 2 / 3) / 2)
    assert math.isnan(auc_pr(scores, np.zeros(5)))


def test_best_f1_is_an_oracle_over_thresholds():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 1, 0, 1, 0])
    b = best_f1(scores, labels)
    # top 2: P=1, R=2/3, F1=0.8; top 4: P=3/4, R=1, F1=0.857
    assert b["f1"] == pytest.approx(6 / 7) and b["threshold"] == 0.6 and b["oracle"]


def test_best_f1_does_not_split_ties():
    b = best_f1(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0]))
    assert b["precision"] == 0.5  # both tied points are predicted together


def test_hit_rate_and_ndcg_hand_computed():
    # t0: truth {0, 2}; ranking 2 > 1 > 0 > 3
    # t1: truth {3};    ranking 0 > 3 > 1 > 2
    # t2: no labelled channel: ignored
    scores = np.array([[0.3, 0.5, 0.9, 0.1], [0.9, 0.1, 0.0, 0.5], [1, 1, 1, 1]])
    labels = np.array([[1, 0, 1, 0], [0, 0, 0, 1], [0, 0, 0, 0]])
    # @100%: t0 top2 = {2, 1} -> 1/2; t1 top1 = {0} -> 0
    assert hit_rate(scores, labels, 100) == pytest.approx(0.25)
    # @150%: t0 top3 = {2, 1, 0} -> 2/2; t1 top round(1.5)=2 = {0, 3} -> 1
    assert hit_rate(scores, labels, 150) == pytest.approx(1.0)
    # NDCG@100%: t0 gains [1, 0] -> 1 / (1 + 1/log2 3); t1 gains [0] -> 0
    assert ndcg(scores, labels, 100) == pytest.approx((1 / (1 + 1 / math.log2(3))) / 2)
    # NDCG@150%: t0 gains [1, 0, 1] -> (1 + 1/2) / (1 + 1/log2 3); t1 gains [0, 1] -> (1/log2 3) / 1
    t0 = (1 + 0.5) / (1 + 1 / math.log2(3))
    t1 = 1 / math.log2(3)
    assert ndcg(scores, labels, 150) == pytest.approx((t0 + t1) / 2)


def test_channel_label_matrix_from_smd_interpretation():
    m = channel_label_matrix(6, 3, np.array([[1, 3, 0], [2, 5, 2]]))
    assert m.tolist() == [[0, 0, 0], [1, 0, 0], [1, 0, 1], [0, 0, 1], [0, 0, 1], [0, 0, 0]]
