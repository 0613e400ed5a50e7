"""Incident lifecycle: open on the first alarms, update while it lasts, close after a quiet spell.

An incident opens when ``open_after`` alarms fall within ``open_window`` points: the default, 2 in 10,
ignores a lone exceedance (the commonest false alarm) at the cost of opening one alarm later. Its
``start`` is the first of those alarms. It closes after ``close_after`` points without an alarm, or a
tenth as many as it has alarmed on when that is more (``HOLD``): a quiet spell that short, inside a
fault that has alarmed for an hour, is the fault dipping under the threshold, not its end, so a
sustained fault stays one incident, updated, not a stream of new ones; faults apart by more than a tenth
of their length stay apart. When a departure lasts long enough to become the entity's new level
(``scoring.conditioning.Level``), the drift record that says so closes the incident it absorbs
(``absorb``), naming it.

An incident's ``alert_id`` is a hash of the entity and its start, so processing the same readings
twice gives the same id. Channels are ranked by their scores summed over the incident's alarm points:
a sustained fault outranks a channel that flickered once.
"""
from __future__ import annotations

import hashlib
import math

import numpy as np

from .codec import Alert
from .fusion import top_channels


HOLD = 0.1  # an open incident closes after max(close_after, HOLD x its alarm points) quiet points


def alert_id(entity: str, start: float) -> str:
    return hashlib.blake2b(f"{entity}|{start!r}".encode(), digest_size=8).hexdigest()


class IncidentTracker:
    # one per entity: slots, not a dict (a fleet of 50,000 holds 50,000 of them)
    __slots__ = ("entity", "close_after", "update_every", "top_k", "open_after", "open_window", "open", "seen",
                 "candidates")

    def __init__(self, entity: str, close_after: int = 10, update_every: int = 30, top_k: int = 3,
                 open_after: int = 2, open_window: int = 10):
        self.entity = entity
        self.close_after, self.update_every, self.top_k = close_after, update_every, top_k
        self.open_after, self.open_window = open_after, open_window
        self.open: dict | None = None
        self.seen = 0  # points observed so far, to age candidate alarms
        # recent alarms while no incident is open: [point no, ts, channels] (none: an empty tuple, shared)
        self.candidates: list[list] | tuple = ()

    def observe(self, ts, score, threshold, alarm, channel, recon, divergence, names, model) -> list[Alert]:
        """Feed points in order; return the alert messages they cause. Python visits the alarms only:
        a quiet stretch is one step (it closes the open incident if it is long enough)."""
        first = self.seen
        self.seen += len(ts)
        if self.open is None and not self.candidates and not alarm.any():
            return []
        out = []
        alarms = np.flatnonzero(alarm).tolist()
        alarms.append(len(ts))  # a sentinel: the stretch after the last alarm
        i = 0
        for nxt in alarms:  # points i .. nxt - 1 are quiet, nxt alarms (unless it is the sentinel)
            inc = self.open
            if inc is not None and nxt > i:
                need = max(self.close_after, math.ceil(HOLD * inc.get("alarms", 0))) - inc["quiet"]
                if nxt - i >= need:  # closes at the quiet point that completes the spell
                    out.append(self._message(inc, "close", ts[i + need - 1], names, model))
                    self.open = inc = None
                else:
                    inc["quiet"] += nxt - i
            if nxt == len(ts):
                break
            i = nxt + 1
            if inc is None:
                inc = self._candidate(first + nxt, float(ts[nxt]), channel[nxt])
                if inc is None:
                    continue
            inc["end"] = float(ts[nxt])
            inc["channel_sum"] = inc["channel_sum"] + channel[nxt]
            inc["quiet"] = 0
            inc["alarms"] = inc.get("alarms", 0) + 1
            if score[nxt] > inc["peak"]:
                inc["peak"], inc["threshold"] = float(score[nxt]), float(threshold[nxt])
                inc["recon"] = float(recon[nxt])
                inc["div"] = None if divergence is None else float(divergence[nxt])
            if not inc["top"]:
                out.append(self._message(inc, "open", ts[nxt], names, model))
            else:
                inc["since_update"] += 1
                if inc["since_update"] >= self.update_every:
                    top = [c["channel"] for c in top_channels(inc["channel_sum"], names, self.top_k)]
                    if top != inc["top"]:
                        out.append(self._message(inc, "update", ts[nxt], names, model))
        return out

    def absorb(self, ts: float, drift_id: str, names, model) -> Alert | None:
        """The open incident closed at ``ts`` because the departure became the entity's new level (a
        drift record, ``drift_id``); None when none is open. Its ``detail`` names the drift."""
        inc, self.open, self.candidates = self.open, None, ()
        if inc is None:
            return None
        msg = self._message(inc, "close", ts, names, model)
        msg["detail"]["absorbed_by"] = drift_id
        return msg

    def _candidate(self, now: int, ts: float, channels: np.ndarray) -> dict | None:
        """Record an alarm while nothing is open; open an incident once enough are recent."""
        self.candidates = [c for c in self.candidates if now - c[0] < self.open_window]
        if len(self.candidates) + 1 < self.open_after:
            self.candidates.append([now, ts, channels.tolist()])
            return None
        earlier = self.candidates
        start = earlier[0][1] if earlier else ts
        channel_sum = np.sum([c[2] for c in earlier], axis=0) if earlier else np.zeros(len(channels))
        self.candidates = ()
        self.open = {"alert_id": alert_id(self.entity, start), "start": start, "end": ts, "peak": -np.inf,
                     "threshold": None, "recon": None, "div": None, "channel_sum": channel_sum,
                     "quiet": 0, "since_update": 0, "top": [], "alarms": len(earlier)}
        return self.open

    def _message(self, inc: dict, state: str, ts, names, model) -> Alert:
        channels = top_channels(inc["channel_sum"], names, self.top_k)
        inc["top"] = [c["channel"] for c in channels]
        inc["since_update"] = 0
        return Alert(alert_id=inc["alert_id"], entity=self.entity, state=state, ts=float(ts), start=inc["start"],
                     end=inc["end"], score=round(inc["peak"], 6), threshold=round(inc["threshold"], 6),
                     channels=channels, model=model,
                     detail={"reconstruction": inc["recon"], "divergence": inc["div"]})

    def to_state(self) -> dict:
        inc = None if self.open is None else {**self.open, "channel_sum": self.open["channel_sum"].tolist()}
        return {"open": inc, "seen": self.seen, "candidates": self.candidates}

    def load_state(self, state: dict) -> "IncidentTracker":
        inc = state["open"]
        self.open = None if inc is None else {**inc, "channel_sum": np.asarray(inc["channel_sum"])}
        self.seen, self.candidates = state["seen"], list(state["candidates"]) or ()
        return self
