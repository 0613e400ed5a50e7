"""A trainer round stays bounded: entities without a model first, then the oldest models, until its budget."""
import types

from stream import retraining
from training.trainer import TrainerConfig


def test_a_round_starts_entities_until_its_budget_then_leaves_the_rest_for_the_next(monkeypatch):
    clock = [0.0]
    old = types.SimpleNamespace(created=100.0, path="old")
    new = types.SimpleNamespace(created=200.0, path="new")
    versions = [types.SimpleNamespace(entity="b"), types.SimpleNamespace(entity="c")]
    registry = types.SimpleNamespace(versions=lambda: versions, champion=lambda e: {"b": new, "c": old}.get(e))
    monkeypatch.setattr(retraining.artefacts, "metadata", lambda path: {"channels": ["x"]})
    monkeypatch.setattr(retraining, "read_histories", lambda *a, **k: {e: e for e in ("a", "b", "c", "d")})
    started = []

    def retrain(hist, *a, **k):
        started.append(hist)
        clock[0] += 10.0  # each entity takes 10 s
        return {"entity": hist, "event": "promoted"}
    monkeypatch.setattr(retraining, "retrain_entity", retrain)
    monkeypatch.setattr(retraining.time, "monotonic", lambda: clock[0])
    published = []
    monkeypatch.setattr(retraining, "publish", lambda broker, topic, events: _done(published.extend(events)))
    events = retraining.run_once(retraining.Settings(), registry, TrainerConfig(), budget=25.0)
    # no model yet (a, d) before the oldest model (c) before the newest (b); after 30 s the round stops
    assert started == ["a", "d", "c"] and [e["entity"] for e in events] == started == [e["entity"] for e in published]
    started.clear()
    assert len(retraining.run_once(retraining.Settings(), registry, TrainerConfig())) == 4, "no budget: every entity"


async def _done(_):
    return None
