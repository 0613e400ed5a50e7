"""The retraining service: reads recent history from Kafka, lets ``training.trainer`` decide, publishes.

``vigil trainer`` runs ``run_once`` (``--once``) or ``run_every``. Each round reads the readings and
alerts topics from the Kafka timestamp that bounds ``--history`` and the whole feedback topic, builds
every entity's history (incidents left out unless labelled false alarms; labelled anomalies left out),
retrains (the threshold retuned to the operators' labels, ``training.feedback``) and compares per
entity, and publishes each decision on the models topic, where workers pick promotions up.
"""
from __future__ import annotations

import asyncio
import logging
import time

import orjson

from detectors import artefacts
from scoring.codec import Readings, decode
from scoring.settings import Settings
from training.registry import Registry
from training.trainer import History, TrainerConfig, build_histories, incidents_from_alerts, retrain_entity

from .feedback import read_feedback
from .kafka import offsets_for_time, read_partition, read_topic
from .model_updates import publish

log = logging.getLogger("vigil.trainer")


def read_histories(settings: Settings, history: float, since_wall: float | None = None,
                   known_names: dict[str, list[str]] | None = None,
                   max_incident: float = float("inf")) -> dict[str, History]:
    async def run():
        return await asyncio.gather(read_topic(settings.broker, settings.topics.readings, since_wall),
                                    read_topic(settings.broker, settings.topics.alerts, since_wall),
                                    read_feedback(settings.broker, settings.topics.feedback))
    readings, alerts, labels = asyncio.run(run())
    decoded = [d for d in (decode(r.value, settings.max_message_bytes) for r in readings) if isinstance(d, Readings)]
    return build_histories(decoded, incidents_from_alerts([r.value for r in alerts]), history, known_names,
                           max_incident, labels)


def run_once(settings: Settings, registry: Registry, config: TrainerConfig, entities: list[str] | None = None,
             progress: bool = True, budget: float | None = None) -> list[dict]:
    """One retraining round over every entity with history (or ``entities``); publishes the decisions.

    ``budget``: seconds the round may spend starting entities (None: no bound). Entities without a model
    go first, then those whose champion is oldest; one started runs to its end, the rest wait for the next
    round (logged), so a fleet's round stays bounded however many entities it has."""
    champions = {e: registry.champion(e) for e in {v.entity for v in registry.versions()}}
    names = {e: artefacts.metadata(v.path)["channels"] for e, v in champions.items() if v is not None}
    # Kafka timestamps (wall clock) bound the read; the entity's own clock then picks the history.
    since = time.time() - config.history - config.read_slack
    histories = read_histories(settings, config.history, since, names, config.max_incident)
    todo = sorted((e for e in histories if entities is None or e in entities),
                  key=lambda e: (champions.get(e) is not None, champions[e].created if champions.get(e) else 0.0, e))
    events, started = [], time.monotonic()
    for i, entity in enumerate(todo):
        if budget is not None and time.monotonic() - started >= budget:
            log.warning("round budget of %.0fs spent: %d entities wait for the next round (%s)", budget,
                        len(todo) - i, ", ".join(todo[i:i + 5]) + (", ..." if len(todo) - i > 5 else ""))
            break
        t0 = time.perf_counter()
        e = retrain_entity(histories[entity], registry, config, settings, progress)
        e["seconds"] = round(time.perf_counter() - t0, 1)
        events.append(e)
        log.warning("%s: %s %s", entity, e["event"], e.get("reason", ""))
    if events:
        asyncio.run(publish(settings.broker, settings.topics.models, events))
    return events


def run_every(settings: Settings, registry: Registry, config: TrainerConfig, every: float,
              entities: list[str] | None = None, poll: float = 30.0, budget: float | None = None) -> None:
    """The long-running service: a round every ``every`` seconds (starting entities for at most ``budget``
    seconds, default half the interval), and in between, a round for any entity whose worker raised a
    ``drift`` event (its scores left the level its model was calibrated at: the model no longer describes
    it), checked every ``poll`` seconds."""
    seen = asyncio.run(_alert_ends(settings))  # only drift events from now on
    while True:
        started = time.monotonic()
        try:
            run_once(settings, registry, config, entities, budget=every / 2 if budget is None else budget)
        except Exception:  # noqa: BLE001 - a broker hiccup must not end the service
            log.exception("retraining round failed; the next one is in %.0fs", every)
        while time.monotonic() - started < every:
            time.sleep(min(poll, max(0.0, every - (time.monotonic() - started))))
            try:
                drifted, seen = asyncio.run(_drifted(settings, seen))
                drifted = sorted(e for e in drifted if entities is None or e in entities)
                if drifted:
                    log.warning("drift reported for %s: retraining now", ", ".join(drifted))
                    run_once(settings, registry, config, drifted)
            except Exception:  # noqa: BLE001
                log.exception("checking for drift events failed; next check in %.0fs", poll)


async def _alert_ends(settings: Settings) -> dict[int, int]:
    return await offsets_for_time(settings.broker, settings.topics.alerts, time.time() + 86400)


async def _drifted(settings: Settings, seen: dict[int, int]) -> tuple[set[str], dict[int, int]]:
    """Entities with a ``drift`` event on the alerts topic after the offsets ``seen``, and the new offsets."""
    drifted, seen = set(), dict(seen)
    for p in sorted((await offsets_for_time(settings.broker, settings.topics.alerts, None)).keys()):
        for rec in await read_partition(settings.broker, settings.topics.alerts, p, seen.get(p, 0)):
            seen[p] = rec.offset + 1
            try:
                a = orjson.loads(rec.value)
            except orjson.JSONDecodeError:
                continue
            if isinstance(a, dict) and a.get("state") == "drift":
                drifted.add(a.get("entity"))
    return drifted, seen
