"""End to end through a real broker: simulated plant in, localised alerts and dead letters out."""
import collections

import numpy as np
import orjson
import pytest

from producers.simulate import simulate_plant
from scoring.codec import encode_readings

from .support import WORKER_FAST, match_events, read_topic, scored_points, send, train_models, wait_until

pytestmark = pytest.mark.integration

ENTITIES, CHANNELS, POINTS, SEED, START = 3, 8, 2600, 7, 1_700_000_000.0


def bad_messages(entity, channels, ts_prev, ts_prev2):
    """One message of every kind that cannot be used, with the reason code it must get."""
    row = [1.0] * channels
    ts_prev, ts_prev2 = float(ts_prev), float(ts_prev2)
    return [
        (b'{"entity": "' + entity.encode() + b'", "ts": ', "malformed"),
        (orjson.dumps({"entity": entity, "values": row}), "missing_field"),
        (orjson.dumps({"entity": entity, "ts": "yesterday", "values": row}), "bad_type"),
        (orjson.dumps({"entity": entity, "ts": ts_prev + 0.5, "values": row + [1.0, 2.0]}), "too_many_values"),
        (b'{"entity":"' + entity.encode() + b'","ts":' + str(ts_prev + 0.5).encode() + b',"values":[1e999'
         + b',1' * (channels - 1) + b']}', "non_finite"),
        (orjson.dumps({"entity": entity, "ts": ts_prev2, "values": row}), "out_of_order"),
        (orjson.dumps({"entity": entity, "ts": ts_prev, "values": row}), "duplicate_ts"),
        (orjson.dumps({"entity": entity, "ts": ts_prev + 0.5, "values": row, "pad": "x" * (1 << 20)}), "oversized"),
    ]


def test_alerts_localise_injected_anomalies_and_bad_input_is_dead_lettered(broker, procs, tmp_path):
    plant = simulate_plant(ENTITIES, CHANNELS, POINTS, START, SEED)
    models = train_models([s.entity for s in plant], CHANNELS, START, SEED, tmp_path / "models")
    messages, expected_dlq = [], []
    first, others = plant[0], plant[1:]
    # entity 1: single readings with named channels, bad messages injected mid-stream, one null value
    for i in range(POINTS):
        values = first.values[i].astype(float).tolist()
        named = dict(zip(first.channels, values))
        if i == 1000:
            named[first.channels[2]] = None
        messages.append((first.entity.encode(), orjson.dumps({"entity": first.entity, "ts": float(first.ts[i]),
                                                               "values": named})))
        if i == 1500:
            for raw, code in bad_messages(first.entity, CHANNELS, first.ts[i], first.ts[i - 1]):
                messages.append((first.entity.encode(), raw))
                expected_dlq.append(code)
    # the others: the batch form, 50 rows a message
    for s in others:
        for j in range(0, POINTS, 50):
            messages.append((s.entity.encode(), encode_readings(s.entity, s.ts[j:j + 50], s.values[j:j + 50],
                                                                s.channels)))
    # an entity nobody trained a model for: scored by the cold-start detector
    rng = np.random.default_rng(0)
    for i in range(400):
        messages.append((b"newcomer", orjson.dumps({"entity": "newcomer", "ts": START + i,
                                                     "values": rng.normal(size=4).tolist()})))
    procs.vigil("worker", "--broker", broker, *models, *WORKER_FAST, name="worker")
    send(broker, messages)

    expected_points = ENTITIES * POINTS + 400

    def all_scored():
        return len(set(scored_points(read_topic(broker, "vigil.scores", 4)))) >= expected_points

    wait_until(all_scored, 180, 2, lambda: procs.log("worker")[-3000:])
    scores = read_topic(broker, "vigil.scores", 4)
    points = scored_points(scores)
    counts = collections.Counter(points)
    assert len(counts) == expected_points, "every valid point is scored"
    assert max(counts.values()) == 1, "no point is scored twice"
    assert {m["model"] for m in scores if m["entity"] == "newcomer"} == {"coldstart@2"}

    dlq = read_topic(broker, "vigil.dlq", 4)
    assert sorted(d["code"] for d in dlq) == sorted(expected_dlq)
    for d in dlq:
        assert d["reason"] and d["topic"] == "vigil.readings" and d["value"] is not None

    # let incidents close, then measure event-level quality
    labels = [a.to_json() for s in plant for a in s.anomalies]
    alerts = read_topic(broker, "vigil.alerts", 4)
    alerts = [a for a in alerts if a["entity"] != "newcomer"]
    opened = collections.Counter(a["alert_id"] for a in alerts if a["state"] == "open")
    assert max(opened.values()) == 1, "one open per incident"
    recall, precision, channel_hit, n_open = match_events(alerts, labels)
    print(f"\nevent recall {recall:.2f} precision {precision:.2f} channel hit@3 {channel_hit:.2f} "
          f"({len(labels)} injected anomalies, {n_open} incidents)")
    assert recall >= 0.8
    assert precision >= 0.7
    assert channel_hit >= 0.7
