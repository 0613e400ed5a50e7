"""Range-aware detection metrics: affiliation precision/recall and VUS-PR.

Point-wise scores punish an alarm two steps early as hard as no alarm at all, and point adjustment
rewards one lucky hit with a whole event. The two measures here sit in between and are the ones
recent benchmarks (TSB-AD, Huet et al.) report:

* ``affiliation`` (Huet, Navarro, Rossi, KDD 2022) scores binary alarms by their *distance* to the
  labelled events, calibrated against a random alarm placed in the same zone, so "everything is an
  alarm" scores about 0.5 precision, not 1.
* ``vus_pr`` (Paparrizos et al., VLDB 2022) scores continuous anomaly scores with range-based PR
  curves whose labels get soft buffers of every width 0..L around each event, averaged over widths.

Both reproduce the reference code of the ``vus`` 0.0.6 wheel (its ``affiliation`` package is Huet et
al.'s own; VUS is ``metricor.RangeAUC_volume_opt``, what ``get_metrics(metric='vus', version='opt')``
runs) to float rounding, but in closed form over numpy arrays: the reference loops over events and
thresholds in Python and would take minutes on a 500k-point series.
"""
from __future__ import annotations

import numpy as np

from .metrics import segments

NAN = float("nan")


def _events(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Runs of positive values as float (start, stop) arrays: index i is the interval [i, i + 1)."""
    ev = np.array(segments(np.asarray(x) > 0), np.float64).reshape(-1, 2)
    return ev[:, 0], ev[:, 1]


def _prec_cdf(d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Integral from 0 to d of min(x, m) + x: what the precision survival function loses up to d."""
    return d * d / 2 + np.minimum(d, m) ** 2 / 2 + m * np.maximum(d - m, 0.0)


def _tent(t, lo, hi):
    """Integral from lo to t of min(u - lo, hi - u) (a tent peaking at the midpoint), lo <= t <= hi."""
    c = (lo + hi) / 2
    r = (hi - lo) / 2
    return (np.minimum(t, c) - lo) ** 2 / 2 + (r * r - (hi - np.maximum(t, c)) ** 2) / 2


def affiliation(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Affiliation precision, recall and their harmonic mean F1, as Huet et al.'s ``pr_from_events``
    with ``convert_vector_to_events`` and ``Trange=(0, N)``.

    Each labelled event J owns the zone E of the time axis closer to it than to any other event.
    Precision: for the alarms inside E, the mean over their points x of P(dist(X, J) >= dist(x, J)),
    X uniform on E; averaged over the zones that hold alarms. Recall: for the points y of J, the
    mean of P(dist(y, X) >= dist(y, alarms in E)); a zone without alarms gives 0; averaged over all
    events. A random alarm scores about 0.5 on both, a perfect one 1.

    Edge cases: no labelled event: everything is nan (the reference raises). No alarm: precision
    nan (as the reference: it is an average over no zone), recall 0, F1 0. Alarms everywhere: no
    special case, recall 1 and precision about 0.5. F1 is 0 whenever recall is 0.
    """
    pred, labels = np.asarray(pred), np.asarray(labels)
    if pred.shape != labels.shape or pred.ndim != 1:
        raise ValueError(f"pred {pred.shape} and labels {labels.shape} must be the same 1-D shape")
    js, je = _events(labels)
    if not len(js):
        return {"precision": NAN, "recall": NAN, "f1": NAN}
    ps, pe = _events(pred)
    if not len(ps):
        return {"precision": NAN, "recall": 0.0, "f1": 0.0}
    n_ev = len(js)
    bounds = np.concatenate([[0.0], (je[:-1] + js[1:]) / 2, [float(len(labels))]])
    zl, zr = bounds[:-1], bounds[1:]  # affiliation zone of each labelled event

    # Cut every alarm event at the zone boundaries: piece i is [a, c] inside zone k.
    first = np.searchsorted(zr, ps, side="right")
    count = np.searchsorted(zl, pe, side="left") - first
    ev = np.repeat(np.arange(len(ps)), count)
    k = np.repeat(first, count) + np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count)
    a, c = np.maximum(ps[ev], zl[k]), np.minimum(pe[ev], zr[k])
    s, e, lo, hi = js[k], je[k], zl[k], zr[k]
    size = hi - lo

    # Precision: inside J the survival is 1; at distance d > 0 it is 1 - (|J| + min(d, m) + d)/|E|.
    m = np.minimum(s - lo, hi - e)
    inside = np.maximum(np.minimum(c, e) - np.maximum(a, s), 0.0)
    prec = inside.copy()
    for t0, t1, near, far in ((a, np.minimum(c, s), s - np.minimum(c, s), s - a),  # before J
                              (np.maximum(a, e), c, np.maximum(a, e) - e, c - e)):  # after J
        length = t1 - t0
        part = length * (1 - (e - s) / size) - (_prec_cdf(far, m) - _prec_cdf(near, m)) / size
        prec += np.where(length > 0, part, 0.0)
    weight = np.bincount(k, c - a, n_ev)
    zone_prec = np.bincount(k, prec, n_ev)[weight > 0] / weight[weight > 0]

    # Recall: split J between its zone's pieces (nearest piece wins); a point y of J at distance d
    # from its piece survives with 1 - (min(d, y - lo, hi - y) + d)/|E|. Left of a piece starting at
    # a, min(a - y, y - lo, hi - y) = min(a - y, y - lo): a tent on [lo, a]; right of it likewise.
    same_prev = np.r_[False, k[1:] == k[:-1]]
    same_next = np.r_[k[1:] == k[:-1], False]
    cell_lo = np.where(same_prev, (np.r_[0.0, c[:-1]] + a) / 2, lo)
    cell_hi = np.where(same_next, (c + np.r_[a[1:], 0.0]) / 2, hi)
    rec = np.maximum(np.minimum(e, c) - np.maximum(s, a), 0.0)
    t0, t1 = np.maximum(s, cell_lo), np.minimum(e, a)  # part of J before the piece, pivot a
    part = (t1 - t0) - (_tent(t1, lo, a) - _tent(t0, lo, a) + ((a - t0) ** 2 - (a - t1) ** 2) / 2) / size
    rec += np.where(t1 > t0, part, 0.0)
    t0, t1 = np.maximum(s, c), np.minimum(e, cell_hi)  # part of J after the piece, pivot c
    part = (t1 - t0) - (_tent(t1, c, hi) - _tent(t0, c, hi) + ((t1 - c) ** 2 - (t0 - c) ** 2) / 2) / size
    rec += np.where(t1 > t0, part, 0.0)
    zone_rec = np.bincount(k, rec, n_ev) / (je - js)

    precision = float(zone_prec.mean())
    recall = float(zone_rec.mean())
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def _soft_labels(dl1, dl2, dr1, dr2, w: int) -> np.ndarray:
    """Soft labels of points outside the events for buffer width w, as the reference's ``sequencing``:
    every event within w // 2 steps adds sqrt(1 - d / w) and the sum is clipped at 1, so two events in
    reach give 1 (each adds at least sqrt(1/2)). dl1, dl2 (dr1, dr2): distances to the nearest and
    second-nearest event on the left (right)."""
    h = w // 2
    if h == 0:
        return np.zeros(len(dl1))
    reach = (dl1 <= h).astype(np.int64) + (dl2 <= h) + (dr1 <= h) + (dr2 <= h)
    d = np.minimum(np.minimum(dl1, dr1), h)  # with one event in reach, it is the nearest one
    return np.where(reach >= 2, 1.0, np.where(reach == 1, np.sqrt(1 - d / w), 0.0))


def _event_distances(points, s, e):
    """Distances (in steps, as the reference counts them) from points outside the half-open events
    (s, e) to the nearest and second-nearest event on the left, then on the right; huge if none."""
    left = np.searchsorted(e, points, side="right") - 1  # last event ending at or before the point
    out = []
    for j, right in ((left, False), (left - 1, False), (left + 1, True), (left + 2, True)):
        jj = np.clip(j, 0, len(s) - 1)
        d = s[jj] - points if right else points - (e[jj] - 1)
        out.append(np.where((j >= 0) & (j < len(s)), d, np.iinfo(np.int64).max // 4))
    return out


def vus_pr(scores: np.ndarray, labels: np.ndarray, max_window: int = 100, n_thresholds: int = 250) -> float:
    """Volume under the range-PR surface: the mean over buffer widths w = 0..max_window of the
    range-based average precision, as ``vus.metrics.get_metrics(score, labels, metric='vus',
    slidingWindow=max_window, version='opt', thre=250)['VUS_PR']``.

    For width w every event gets soft labels sqrt(1 - d/w) on the w // 2 points either side; a buffer
    point counts towards TP with that weight when it is predicted. Recall is TP over (events + half
    the predicted buffer) capped at 1, times the share of buffered events hit at all (events whose
    buffers overlap count as one); precision is TP over the predicted points. Thresholds are the
    scores at ``n_thresholds`` evenly spaced ranks (the reference's 250 quantiles) and the PR area
    is the step sum of precision times recall gains.

    ``max_window=100`` is TSB-AD's default ``slidingWindow``; the reference takes it from each
    series' period (``find_length``, 125 when none is found) and fails without one. With 0 or 1
    there is no buffer and this is AUC-PR at the quantile thresholds with recall weighted by the
    share of events hit. No labelled point: nan (the reference raises). Scores must be finite.
    """
    scores = np.asarray(scores, np.float64)
    truth = np.asarray(labels) != 0
    if scores.shape != truth.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {truth.shape} must be the same 1-D shape")
    if not np.isfinite(scores).all():
        raise ValueError("scores must be finite")
    if max_window < 0 or n_thresholds < 1:
        raise ValueError("max_window must be >= 0 and n_thresholds >= 1")
    if not truth.any():
        return NAN
    n = len(scores)
    ev = np.array(segments(truth), np.int64)
    s, e = ev[:, 0], ev[:, 1]  # half-open events
    n_true = int(truth.sum())

    # Threshold j predicts the points with score >= thr[j]; thr is non-increasing, so a point is
    # predicted from the first threshold at or below its score onwards.
    ascending = np.sort(scores)
    thr = ascending[::-1][np.linspace(0, n - 1, n_thresholds).astype(int)]
    n_pred = n - np.searchsorted(ascending, thr, side="left")
    tp_true = n_true - np.searchsorted(np.sort(scores[truth]), thr, side="left")
    first = n_thresholds - np.searchsorted(thr[::-1], scores, side="right")

    # Points within the widest buffer of some event: where soft labels and hit tests can reach.
    half = max_window // 2
    reach = np.zeros(n + 1, np.int64)
    np.add.at(reach, np.maximum(s - half, 0), 1)
    np.add.at(reach, np.minimum(e + half, n), -1)
    near = np.flatnonzero(np.cumsum(reach[:-1]) > 0)
    near_first = np.r_[first[near], n_thresholds]  # sentinel so every reduceat index is in range
    buf = near[~truth[near]]
    dists = _event_distances(buf, s, e)
    buf_first = first[buf]

    volume = 0.0
    for w in range(max_window + 1):
        h = w // 2
        soft = _soft_labels(*dists, w)
        gain = np.cumsum(np.bincount(buf_first, soft, n_thresholds + 1))[:n_thresholds]
        tp = tp_true + gain
        # Events whose buffers overlap merge into one range; a range is hit once any point in it is.
        cut = np.flatnonzero(s[1:] - e[:-1] + 1 > 2 * h)
        r_lo = np.maximum(s[np.r_[0, cut + 1]] - h, 0)
        r_hi = np.minimum(e[np.r_[cut, len(s) - 1]] - 1 + h, n - 1)
        idx = np.stack([np.searchsorted(near, r_lo), np.searchsorted(near, r_hi, side="right")], 1).ravel()
        hit_at = np.minimum.reduceat(near_first, idx)[::2]
        hit = np.cumsum(np.bincount(hit_at, minlength=n_thresholds + 1))[:n_thresholds] / len(r_lo)
        recall = np.minimum(tp / (n_true + gain / 2), 1.0) * hit
        precision = tp / n_pred
        volume += float(np.dot(np.diff(recall, prepend=0.0), precision))
    return volume / (max_window + 1)
