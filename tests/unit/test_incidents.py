import numpy as np

from scoring.incidents import IncidentTracker, alert_id


def run(tracker, alarm, channel=None):
    n = len(alarm)
    ts = np.arange(n, dtype=float) + 100
    score = np.where(alarm, 5.0, 0.5)
    channel = channel if channel is not None else np.tile([0.1, 3.0, 0.2], (n, 1))
    return tracker.observe(ts, score, np.ones(n), np.asarray(alarm, bool), channel, score, None, ["a", "b", "c"], "pca@1")


def test_one_lifecycle_per_incident():
    t = IncidentTracker("e", close_after=3, update_every=100, open_after=1)
    alerts = run(t, [0, 1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0])
    states = [a["state"] for a in alerts]
    assert states == ["open", "close", "open", "close"]
    first, close = alerts[0], alerts[1]
    assert first["alert_id"] == close["alert_id"] == alert_id("e", 101.0)
    assert close["start"] == 101 and close["end"] == 104  # the gap of one point did not split it
    assert first["channels"][0]["channel"] == "b"
    assert alerts[2]["alert_id"] != first["alert_id"]


def test_same_input_same_ids_and_state_round_trip():
    alarm = [0, 1, 1, 1, 0, 0]
    a = IncidentTracker("e", close_after=5)
    out_a = run(a, alarm)
    b = IncidentTracker("e", close_after=5).load_state(a.to_state())
    assert b.open is not None and b.open["alert_id"] == out_a[0]["alert_id"] == alert_id("e", 101.0)
    assert run(IncidentTracker("e", close_after=5), alarm) == out_a


def test_update_when_ranking_changes():
    t = IncidentTracker("e", close_after=50, update_every=2, top_k=1, open_after=1)
    n = 10
    channel = np.tile([0.1, 3.0, 0.2], (n, 1))
    channel[3:, 0] = 50.0  # channel a takes over
    alerts = run(t, [1] * n, channel)
    assert [a["state"] for a in alerts][:2] == ["open", "update"]
    assert alerts[1]["channels"][0]["channel"] == "a"


def test_quiet_stream_costs_nothing():
    t = IncidentTracker("e")
    assert run(t, [0] * 50) == [] and t.open is None


def test_a_lone_alarm_opens_nothing_but_two_close_together_do():
    t = IncidentTracker("e", close_after=3, open_after=2, open_window=5)
    alerts = run(t, [0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0])
    assert [a["state"] for a in alerts] == ["open", "close"]
    assert alerts[0]["start"] == 107 and alerts[0]["ts"] == 110  # starts at the first of the two alarms


def test_candidates_survive_a_restart_between_messages():
    alarm = [0, 1, 0, 1, 0, 0, 0, 0]
    whole = run(IncidentTracker("e", close_after=3), alarm)
    a = IncidentTracker("e", close_after=3)
    n = 2
    ts = np.arange(len(alarm), dtype=float) + 100
    sc = np.where(alarm, 5.0, 0.5)
    ch = np.tile([0.1, 3.0, 0.2], (len(alarm), 1))
    al = np.asarray(alarm, bool)
    first = a.observe(ts[:n], sc[:n], np.ones(n), al[:n], ch[:n], sc[:n], None, ["a", "b", "c"], "pca@1")
    b = IncidentTracker("e", close_after=3).load_state(a.to_state())
    rest = b.observe(ts[n:], sc[n:], np.ones(len(ts) - n), al[n:], ch[n:], sc[n:], None, ["a", "b", "c"], "pca@1")
    assert first + rest == whole and [x["state"] for x in whole] == ["open", "close"]


def test_alerts_do_not_depend_on_how_points_are_batched():
    """Python jumps over quiet stretches; fed one point at a time it cannot: both must agree."""
    rng = np.random.default_rng(5)
    n, names = 3000, ["a", "b", "c", "d"]
    ts = 1.7e9 + np.arange(n, dtype=np.float64)
    alarm = rng.random(n) < 0.03
    alarm[500:560] = rng.random(60) < 0.7  # incidents with gaps shorter and longer than close_after
    alarm[2000:2100] = True
    score = rng.exponential(size=n) + 5 * alarm
    channel = rng.exponential(size=(n, 4))
    args = lambda lo, hi: (ts[lo:hi], score[lo:hi], np.full(hi - lo, 5.0), alarm[lo:hi], channel[lo:hi],  # noqa: E731
                           score[lo:hi], None, names, "m@1")
    whole = IncidentTracker("e", open_after=3, open_window=14).observe(*args(0, n))
    one = IncidentTracker("e", open_after=3, open_window=14)
    single = [a for i in range(n) for a in one.observe(*args(i, i + 1))]
    assert whole == single
    assert [a["state"] for a in whole].count("open") >= 5 and whole[-1]["state"] == "close"


def test_a_long_fault_that_dips_under_the_threshold_stays_one_incident():
    # 300 alarm points, then 25 quiet (a dip: under a tenth of them), 100 more alarms, then quiet: one
    # incident, closed 40 quiet points after its last alarm (a tenth of its 400 alarms); a short incident
    # still closes after close_after
    t = IncidentTracker("e", close_after=10, open_after=1)
    alarm = [1] * 300 + [0] * 25 + [1] * 100 + [0] * 60
    alerts = run(t, alarm)
    assert [a["state"] for a in alerts if a["state"] != "update"] == ["open", "close"]
    close = alerts[-1]
    assert close["end"] == 100 + 424 and close["ts"] == 100 + 424 + 40
    # fed in pieces, or from a checkpoint: the same
    t2, out = IncidentTracker("e", close_after=10, open_after=1), []
    ts = np.arange(len(alarm), dtype=float) + 100
    for lo in range(0, len(alarm), 37):
        t2 = IncidentTracker("e", close_after=10, open_after=1).load_state(t2.to_state())
        a = np.asarray(alarm[lo:lo + 37], bool)
        out += t2.observe(ts[lo:lo + 37], np.where(a, 5.0, 0.5), np.ones(len(a)), a, np.tile([0.1, 3.0, 0.2], (len(a), 1)),
                          np.where(a, 5.0, 0.5), None, ["a", "b", "c"], "pca@1")
    assert [(a["state"], a["ts"]) for a in out] == [(a["state"], a["ts"]) for a in alerts]
    short = run(IncidentTracker("e", close_after=10, open_after=1), [1] * 5 + [0] * 20)
    assert short[-1]["state"] == "close" and short[-1]["ts"] == 100 + 4 + 10
