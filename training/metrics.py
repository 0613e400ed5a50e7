"""Detection and localisation metrics, honest ones first.

Point-wise precision/recall/F1 at the threshold the system really used, event-wise F1, AUC-PR and
channel ranking metrics are honest. ``best_f1`` picks its threshold on the labels (an oracle) and
``point_adjusted_f1`` credits a whole anomaly segment for one detected point (inflated, Kim et al.
AAAI 2022): they are here to compare with papers, never to report alone.
"""
from __future__ import annotations

import numpy as np


def segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous runs of 1 as half-open (start, end) index pairs."""
    x = np.concatenate([[0], np.asarray(labels, dtype=np.int8) != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(x))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def prf(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Point-wise precision, recall and F1 of binary predictions."""
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    tp = int((pred & labels).sum())
    p = tp / max(int(pred.sum()), 1)
    r = tp / max(int(labels.sum()), 1)
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def point_adjust(pred: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Mark a whole labelled segment detected when any of its points is (the inflating convention)."""
    out = np.asarray(pred, bool).copy()
    for s, e in segments(labels):
        if out[s:e].any():
            out[s:e] = True
    return out


def point_adjusted_f1(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Inflated: report only beside the honest figures."""
    return prf(point_adjust(pred, labels), labels)


def event_f1(pred: np.ndarray, labels: np.ndarray) -> dict:
    """Event-wise: recall over labelled segments hit by a prediction, precision over predicted
    segments that touch a labelled one."""
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    truth, found = segments(labels), segments(pred)
    recall = sum(pred[s:e].any() for s, e in truth) / max(len(truth), 1)
    precision = sum(labels[s:e].any() for s, e in found) / max(len(found), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def auc_pr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision: precision averaged at the rank of every positive (ties broken stably)."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    if not labels.any():
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float(precision[hits].mean())


def best_f1(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Oracle: the best point-wise F1 over every threshold, chosen on the labels themselves."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, bool)
    order = np.argsort(-scores, kind="stable")
    s, hits = scores[order], labels[order]
    tp = np.cumsum(hits)
    k = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # a threshold sits between distinct scores
    precision, recall = tp / k, tp / max(int(labels.sum()), 1)
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    f1 = np.where(last, f1, -1.0)
    i = int(np.argmax(f1))
    return {"f1": float(f1[i]), "precision": float(precision[i]), "recall": float(recall[i]),
            "threshold": float(s[i]), "oracle": True}


def _k(p: float, n_true: int) -> int:
    return max(1, int(round(p / 100.0 * n_true)))


def _per_labelled_step(channel_scores, channel_labels, p: float, metric) -> float:
    """Average ``metric(relevance of the top k channels, relevance [C], k)`` over the time steps with
    at least one labelled channel, k = round(P% x |labelled|) (TranAD's diagnosis code)."""
    cs, cl = np.asarray(channel_scores, np.float64), np.asarray(channel_labels, bool)
    out = []
    for t in np.flatnonzero(cl.any(1)):
        k = min(_k(p, int(cl[t].sum())), cl.shape[1])
        ranked = cl[t][np.argsort(-cs[t], kind="stable")[:k]].astype(float)
        out.append(metric(ranked, cl[t].astype(float), k))
    return float(np.mean(out)) if out else float("nan")


def hit_rate(channel_scores: np.ndarray, channel_labels: np.ndarray, p: float = 100.0) -> float:
    """HitRate@P%: the share of labelled channels among the top k, averaged over labelled steps."""
    return _per_labelled_step(channel_scores, channel_labels, p, lambda top, rel, k: top.sum() / rel.sum())


def ndcg(channel_scores: np.ndarray, channel_labels: np.ndarray, p: float = 100.0) -> float:
    """NDCG@P%: DCG of the top k over the ideal DCG, binary relevance, discount 1/log2(rank + 1)."""
    def one(top, rel, k):
        discount = 1.0 / np.log2(np.arange(2, k + 2))
        return (top * discount).sum() / (np.sort(rel)[::-1][:k] * discount).sum()
    return _per_labelled_step(channel_scores, channel_labels, p, one)


def channel_label_matrix(n: int, channels: int, interpretation: np.ndarray) -> np.ndarray:
    """SMD's ``interpretation`` rows (start, end, channel), half-open, to a [n, channels] 0/1 matrix."""
    out = np.zeros((n, channels), np.int8)
    for start, end, ch in np.asarray(interpretation, np.int64).reshape(-1, 3):
        out[max(start, 0):min(end, n), ch] = 1
    return out
