"""A fleet through the pipeline gives the answers of the per-entity pipeline it replaced: random fleets of
PCA, VAR, knn and cold-start entities, single readings and batches, missing values, rejected rows, a
restart and a hot swap (``tests/fleet.py``), against what the per-entity pipeline published
(``tests/golden/``, recorded before issue 32), whatever the micro-batches."""
import numpy as np
import pytest

from ..fleet import read_golden, run_scenario


def by_point(scores: list[dict]) -> dict:
    out = {}
    for m in scores:
        chans = m.get("channels") or [None] * len(m["ts"])
        for t, s, thr, c in zip(m["ts"], m["score"], m["threshold"], chans):
            assert (m["entity"], t) not in out, "a point published twice"
            out[(m["entity"], t)] = (m["model"], s, thr, c)
    return out


def alerts_of(alerts: list[dict]) -> list:
    return sorted((a["entity"], a["ts"], a["state"], a["alert_id"], a["start"], a["end"],
                   tuple(c["channel"] for c in a["channels"]), a["score"], a["threshold"], a["model"],
                   tuple(sorted((k, v) for k, v in a["detail"].items() if isinstance(v, str))))
                  for a in alerts)


def assert_same(got: dict, want: dict) -> None:
    g, w = by_point(got["scores"]), by_point(want["scores"])
    assert g.keys() == w.keys()
    keys = sorted(w)
    assert [g[k][0] for k in keys] == [w[k][0] for k in keys], "the same model served each point"
    for i, name in ((1, "score"), (2, "threshold")):
        a = np.array([np.nan if g[k][i] is None else g[k][i] for k in keys], float)
        b = np.array([np.nan if w[k][i] is None else w[k][i] for k in keys], float)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(np.array([g[k][3] for k in keys], float), np.array([w[k][3] for k in keys], float),
                               rtol=1e-4, atol=1e-5, err_msg="channels")
    ga, wa = alerts_of(got["alerts"]), alerts_of(want["alerts"])
    assert [a[:7] + a[9:] for a in ga] == [a[:7] + a[9:] for a in wa], "the same alerts, ids and channels"
    np.testing.assert_allclose([a[7:9] for a in ga], [a[7:9] for a in wa], rtol=1e-5, atol=1e-6)
    assert sorted((d["offset"], d["code"]) for d in got["dlq"]) == sorted((d["offset"], d["code"]) for d in want["dlq"])


@pytest.mark.parametrize("seed", [1, 2])
def test_a_random_fleet_gets_the_answers_of_the_per_entity_pipeline(seed):
    assert_same(run_scenario(seed), read_golden(seed))
