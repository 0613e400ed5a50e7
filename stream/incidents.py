"""Incident lifecycle: open on the first alarm, update while it lasts, close after a quiet spell.

An incident's ``alert_id`` is a hash of the entity and the incident's first timestamp, so processing
the same readings twice gives the same id. Channels are ranked by their scores summed over the
incident's alarm points: a sustained fault outranks a channel that flickered once.
"""
from __future__ import annotations

import hashlib

import numpy as np

from .fusion import top_channels


def alert_id(entity: str, start: float) -> str:
    return hashlib.blake2b(f"{entity}|{start!r}".encode(), digest_size=8).hexdigest()


class IncidentTracker:
    def __init__(self, entity: str, close_after: int = 10, update_every: int = 30, top_k: int = 3):
        self.entity = entity
        self.close_after, self.update_every, self.top_k = close_after, update_every, top_k
        self.open: dict | None = None

    def observe(self, ts, score, threshold, alarm, channel, recon, divergence, names, model) -> list[dict]:
        """Feed points in order; return the alert messages they cause."""
        if self.open is None and not alarm.any():
            return []
        out = []
        for i in range(len(ts)):
            inc = self.open
            if alarm[i]:
                if inc is None:
                    inc = self.open = {
                        "alert_id": alert_id(self.entity, float(ts[i])), "start": float(ts[i]),
                        "end": float(ts[i]), "peak": -np.inf, "threshold": None, "recon": None,
                        "div": None, "channel_sum": np.zeros(channel.shape[1]), "quiet": 0,
                        "since_update": 0, "top": []}
                inc["end"] = float(ts[i])
                inc["channel_sum"] = inc["channel_sum"] + channel[i]
                inc["quiet"] = 0
                if score[i] > inc["peak"]:
                    inc["peak"], inc["threshold"] = float(score[i]), float(threshold[i])
                    inc["recon"] = float(recon[i])
                    inc["div"] = None if divergence is None else float(divergence[i])
                if not inc["top"]:
                    out.append(self._message(inc, "open", ts[i], names, model))
                else:
                    inc["since_update"] += 1
                    if inc["since_update"] >= self.update_every:
                        top = [c["channel"] for c in top_channels(inc["channel_sum"], names, self.top_k)]
                        if top != inc["top"]:
                            out.append(self._message(inc, "update", ts[i], names, model))
            elif inc is not None:
                inc["quiet"] += 1
                if inc["quiet"] >= self.close_after:
                    out.append(self._message(inc, "close", ts[i], names, model))
                    self.open = None
        return out

    def _message(self, inc: dict, state: str, ts, names, model) -> dict:
        channels = top_channels(inc["channel_sum"], names, self.top_k)
        inc["top"] = [c["channel"] for c in channels]
        inc["since_update"] = 0
        return {"alert_id": inc["alert_id"], "entity": self.entity, "state": state, "ts": float(ts),
                "start": inc["start"], "end": inc["end"], "score": round(inc["peak"], 6),
                "threshold": round(inc["threshold"], 6), "channels": channels, "model": model,
                "detail": {"reconstruction": inc["recon"], "divergence": inc["div"]}}

    def to_state(self) -> dict | None:
        if self.open is None:
            return None
        return {**self.open, "channel_sum": self.open["channel_sum"].tolist()}

    def load_state(self, state: dict | None) -> "IncidentTracker":
        self.open = None if state is None else {**state, "channel_sum": np.asarray(state["channel_sum"])}
        return self
