"""Deterministic plant simulator: N entities x C named channels at 1 Hz, with labelled anomalies.

Why it looks the way it does:

* Each entity has fixed "plant physics" (channel means and scales, groups of strongly correlated
  channels, factor loadings, noise levels) drawn from (entity, seed, channel count) only, so a
  model trained on ``normal_history`` of an entity sees the same structure as its live series.
* Each channel is ``mean + scale * (signal + noise)`` where ``signal`` mixes a few latent factors:
  a per-group process cycle (period 60-160 s, with a harmonic), a per-group AR(1) load factor,
  and a plant-wide operating point (slow AR(1) plus the daily cycle evaluated at the timestamp).
  Channels of one group share their cycle and load factor, hence |corr| ~0.7-0.95 within a
  group; the latent dimension is ``2 * groups + 1``.
* Noise, factor paths and the anomaly schedule come from separate random streams seeded by
  (seed, crc32(entity), purpose, start_ts), so ``anomalies=False`` gives exactly the counterfactual
  of the same call with anomalies, and history and live never share a noise realisation.
* Anomaly magnitudes are multiples of the channel's noise std, so detectability does not depend
  on which channel or unit was hit.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

# (name, typical mean, typical std of the signal part) -- units differ on purpose.
_CHANNEL_SPECS = [
    ("temp_in", 60.0, 5.0),        # degC
    ("temp_out", 75.0, 6.0),       # degC
    ("pressure", 3.0, 0.2),        # bar
    ("flow", 120.0, 15.0),         # m3/h
    ("vibration", 2.5, 0.4),       # mm/s
    ("current", 45.0, 4.0),        # A
    ("speed", 1500.0, 50.0),       # rpm
    ("level", 55.0, 8.0),          # %
    ("power", 250.0, 20.0),        # kW
    ("torque", 300.0, 25.0),       # Nm
    ("valve_pos", 50.0, 10.0),     # %
    ("ph", 7.2, 0.15),             # pH
    ("humidity", 40.0, 5.0),       # %RH
    ("voltage", 400.0, 5.0),       # V
    ("density", 1.05, 0.02),       # kg/l
    ("conductivity", 800.0, 60.0), # uS/cm
]
CHANNEL_BASES = [name for name, _, _ in _CHANNEL_SPECS]

KINDS = ("level_shift", "drift", "stuck", "correlation_break", "spike")
MIN_GAP = 100          # guaranteed number of normal points between two anomalies
DAY = 86400.0
_OP_PHI = 0.998        # plant operating point: time constant ~500 s
_GROUP_PHI = 0.99      # per-group load factor: time constant ~100 s
_MASK64 = (1 << 64) - 1
_PURPOSES = {"physics": 1, "live": 2, "history": 3, "anomalies": 4}


def channel_names(n: int) -> list[str]:
    """n distinct readable names; bases repeat with a "_2", "_3", ... suffix past the base list."""
    nb = len(CHANNEL_BASES)
    return [CHANNEL_BASES[i % nb] + ("" if i < nb else f"_{i // nb + 1}") for i in range(n)]


@dataclass(frozen=True)
class Anomaly:
    entity: str
    start: float          # ts of the first anomalous point
    end: float            # ts of the last anomalous point (inclusive)
    channels: list[str] = field(hash=False)  # ground-truth causes, highest impact first
    kind: str

    def to_json(self) -> dict:
        return {"entity": self.entity, "start": float(self.start), "end": float(self.end),
                "channels": list(self.channels), "kind": self.kind}


@dataclass
class EntitySeries:
    entity: str
    channels: list[str]
    ts: np.ndarray        # float64 [P], start_ts + arange(P)
    values: np.ndarray    # float32 [P, C]
    anomalies: list[Anomaly]
    labels: np.ndarray    # int8 [P], 1 inside any anomaly (inclusive ends)


@dataclass(frozen=True)
class _Physics:
    """Per-entity constants; all arrays are [C] unless noted. Signal space is unitless."""
    group: np.ndarray      # int group of each channel
    period: np.ndarray     # [G] process-cycle period, s
    phase: np.ndarray      # [G]
    phase2: np.ndarray     # [G] phase of the cycle's 2nd harmonic
    daily_phase: float
    w_cyc: np.ndarray      # signed loading on the group cycle
    w_grp: np.ndarray      # signed loading on the group load factor (same sign as w_cyc)
    w_op: np.ndarray       # signed loading on the plant operating point
    sigma: np.ndarray      # noise std in signal units
    mean: np.ndarray       # physical units
    scale: np.ndarray      # physical units per signal unit


def _rng(seed: int, entity: str, purpose: str, extra: int = 0) -> np.random.SeedSequence:
    """Stable seed material; Python's hash() is salted per process, crc32 is not."""
    return np.random.SeedSequence([seed & _MASK64, zlib.crc32(entity.encode()), _PURPOSES[purpose],
                                   extra & _MASK64])


def _ts_key(start_ts: float) -> int:
    return int(round(start_ts * 1000.0))


def _physics(entity: str, channels: int, seed: int) -> _Physics:
    """Plant physics: a function of (entity, seed, channels) only."""
    if channels < 1:
        raise ValueError("channels must be >= 1")
    r = np.random.default_rng(_rng(seed, entity, "physics", channels))
    c = channels
    g = max(1, round(c / 4))
    group = np.empty(c, np.int64)
    group[r.permutation(c)] = np.arange(c) % g
    sign = r.choice([-1.0, 1.0], size=c)
    base = np.array([_CHANNEL_SPECS[i % len(_CHANNEL_SPECS)][1:] for i in range(c)])
    return _Physics(
        group=group,
        period=r.uniform(60.0, 160.0, g),
        phase=r.uniform(0.0, 2 * np.pi, g),
        phase2=r.uniform(0.0, 2 * np.pi, g),
        daily_phase=float(r.uniform(-0.5, 0.5)),
        w_cyc=sign * r.uniform(0.7, 1.1, c),
        w_grp=sign * r.uniform(0.3, 0.6, c),
        w_op=r.choice([-1.0, 1.0], size=c) * r.uniform(0.2, 0.5, c),
        sigma=r.uniform(0.12, 0.25, c),
        mean=base[:, 0] * r.uniform(0.9, 1.1, c),
        scale=base[:, 1] * r.uniform(0.8, 1.2, c),
    )


def noise_std(entity: str, channels: int, seed: int) -> np.ndarray:
    """Per-channel noise std in physical units (float64 [C]); anomaly magnitudes are multiples of it."""
    ph = _physics(entity, channels, seed)
    return ph.scale * ph.sigma


def _ar1(innov: np.ndarray, phi: float, x0: np.ndarray) -> np.ndarray:
    """x_t = phi x_{t-1} + innov_t, vectorised with a scaled cumsum in chunks short enough that
    phi**-L stays far from overflow and precision loss."""
    out = np.empty_like(innov)
    chunk = max(1, int(20.0 / -math.log(phi)))
    x = x0
    for s in range(0, len(innov), chunk):
        e = innov[s:s + chunk]
        p = phi ** np.arange(1, len(e) + 1, dtype=np.float64)[:, None]
        out[s:s + chunk] = p * (x + np.cumsum(e / p, axis=0))
        x = out[s + len(e) - 1]
    return out


def _cycle_phase(ph: _Physics, ts: np.ndarray) -> np.ndarray:
    """[P, G] phase of each group's process cycle; ts mod period keeps precision at epoch ts."""
    return 2 * np.pi * np.mod(ts[:, None], ph.period) / ph.period + ph.phase


def _cycle(ph: _Physics, ts: np.ndarray) -> np.ndarray:
    """[P, G] process cycle of each group: a sine plus a 2nd harmonic, so it is not a pure tone."""
    ang = _cycle_phase(ph, ts)
    return np.sin(ang) + 0.25 * np.sin(2 * ang + ph.phase2)


def _base(ph: _Physics, entity: str, ts: np.ndarray, seed: int, purpose: str):
    """Anomaly-free (signal, group-driven part of signal, noise), float64 [P, C] in signal units."""
    p, c, g = len(ts), len(ph.group), len(ph.period)
    # One child stream per quantity so each is a prefix-stable function of the length.
    s_op, s_grp, s_noise = _rng(seed, entity, purpose, _ts_key(ts[0]) if p else 0).spawn(3)
    r_op, r_grp, r_noise = (np.random.default_rng(s) for s in (s_op, s_grp, s_noise))

    cyc = _cycle(ph, ts)
    grp0, op0 = r_grp.standard_normal(g), r_op.standard_normal(1)   # stationary start states
    grp = _ar1(r_grp.standard_normal((p, g)) * math.sqrt(1 - _GROUP_PHI**2), _GROUP_PHI, grp0)
    walk = _ar1(r_op.standard_normal((p, 1)) * math.sqrt(1 - _OP_PHI**2), _OP_PHI, op0)[:, 0]
    daily = np.sin(2 * np.pi * np.mod(ts, DAY) / DAY + ph.daily_phase)
    op = 0.5 * daily + 0.8 * walk   # ambient (daily) moves the operating point, like the walk does

    own = ph.w_cyc * cyc[:, ph.group] + ph.w_grp * grp[:, ph.group]
    signal = own + ph.w_op * op[:, None]
    noise = ph.sigma * r_noise.standard_normal((p, c))
    return signal, own, noise


def _plan(ph: _Physics, entity: str, ts: np.ndarray, seed: int,
          anomaly_every: int, warmup: int) -> list[tuple[str, int, int, list[int], np.ndarray]]:
    """Anomaly schedule as (kind, start_idx, end_idx_inclusive, channel idx, magnitudes in noise stds).

    The k-th anomaly is nominally at warmup + k*anomaly_every + U[0, anomaly_every/5], pushed later
    if needed to keep MIN_GAP normal points after the previous one; kinds cycle through KINDS.
    The same number of random draws is made per anomaly whatever the series length, so a longer
    series has the schedule of a shorter one as its prefix.
    """
    if anomaly_every < 1:
        raise ValueError("anomaly_every must be >= 1")
    p, c = len(ts), len(ph.group)
    r = np.random.default_rng(_rng(seed, entity, "anomalies", _ts_key(ts[0]) if p else 0))
    snr = np.abs(ph.w_cyc) / ph.sigma                   # how visible the fast cycle is
    by_snr = np.argsort(-snr, kind="stable")
    top = by_snr[:max(1, (c + 1) // 2)]
    sizes = np.bincount(ph.group)
    grouped = [i for i in by_snr if sizes[ph.group[i]] >= 2] or list(by_snr)
    grouped = np.array(grouped[:max(1, (len(grouped) + 1) // 2)])

    plan, prev_end, k = [], -MIN_GAP - 1, 0
    while True:
        kind = KINDS[k % len(KINDS)]
        start = warmup + k * anomaly_every + int(r.integers(0, anomaly_every // 5 + 1))
        start = max(start, prev_end + 1 + MIN_GAP)
        u = r.random(3)                                  # fixed draws per anomaly
        order = r.permutation(c)
        signs = r.choice([-1.0, 1.0], size=3)
        if kind in ("spike", "level_shift", "drift"):
            lo, hi, mlo, mhi = {"spike": (1, 5, 7, 10), "level_shift": (20, 60, 5, 8),
                                "drift": (40, 80, 7, 10)}[kind]
            dur = lo + int(u[0] * (hi - lo + 1))
            n_ch = min(c, 1 + int(u[1] > 0.5) + int(u[1] > 0.8))
            ch = [int(i) for i in order[:n_ch]]
            rel = np.array([1.0, 0.7 - 0.2 * u[1], 0.5 - 0.2 * u[1]])  # secondaries hit less
            mags = (mlo + u[2] * (mhi - mlo)) * rel[:n_ch] * signs[:n_ch]
        else:
            pool = top if kind == "stuck" else grouped
            ch = [int(pool[order[0] % len(pool)])]
            mags = np.zeros(1)                           # the kind itself is the deviation
            g = ph.group[ch[0]]
            period = ph.period[g]
            if kind == "stuck":
                # Freeze at a crest of the group cycle and hold >= half a period, so the frozen value
                # ends up about twice the cycle amplitude away from the truth.
                cand = ts[0] + start + np.arange(math.ceil(period / 2) + 1) if p else np.zeros(1)
                start += int(np.argmax(np.abs(_cycle(ph, cand)[:, g])))
            lo = max(30, math.ceil(period / 2))            # >= half a cycle: the fault is visible
            dur = lo + int(u[0] * (80 - lo + 1))
        end = start + dur - 1
        if end >= p:
            return plan
        plan.append((kind, start, end, ch, mags))
        prev_end, k = end, k + 1


def _series(entity: str, channels: int, ts: np.ndarray, seed: int, purpose: str,
            anomalies: bool, anomaly_every: int = 400, warmup: int = 300) -> EntitySeries:
    ph = _physics(entity, channels, seed)
    names = channel_names(channels)
    signal, own, noise = _base(ph, entity, ts, seed, purpose)
    x = signal + noise
    labels = np.zeros(len(ts), np.int8)
    found: list[Anomaly] = []
    if anomalies:
        for kind, s, e, ch, mags in _plan(ph, entity, ts, seed, anomaly_every, warmup):
            n = e - s + 1
            for j, m in zip(ch, mags):
                if kind == "stuck":
                    x[s:e + 1, j] = x[max(s - 1, 0), j]
                elif kind == "correlation_break":   # follows its group with the opposite sign
                    x[s:e + 1, j] -= 2 * own[s:e + 1, j]
                elif kind == "drift":
                    x[s:e + 1, j] += m * ph.sigma[j] * np.arange(1, n + 1) / n
                else:
                    x[s:e + 1, j] += m * ph.sigma[j]
            labels[s:e + 1] = 1
            found.append(Anomaly(entity, float(ts[s]), float(ts[e]), [names[j] for j in ch], kind))
    values = (ph.mean + ph.scale * x).astype(np.float32)
    return EntitySeries(entity, names, ts, values, found, labels)


def simulate_entity(entity: str, channels: int, points: int, start_ts: float, seed: int,
                    anomalies: bool = True, anomaly_every: int = 400, warmup: int = 300) -> EntitySeries:
    """Live series of one entity; with anomalies=False it is the exact counterfactual (same noise)."""
    ts = float(start_ts) + np.arange(points, dtype=np.float64)
    return _series(entity, channels, ts, seed, "live", anomalies, anomaly_every, warmup)


def simulate_plant(entities: int, channels: int, points: int, start_ts: float, seed: int,
                   anomalies: bool = True, **kw) -> list[EntitySeries]:
    """Entities "plant-01", "plant-02", ...; kw goes to simulate_entity (anomaly_every, warmup)."""
    return [simulate_entity(f"plant-{i + 1:02d}", channels, points, start_ts, seed, anomalies, **kw)
            for i in range(entities)]


def normal_history(entity: str, channels: int, points: int, end_ts: float, seed: int) -> EntitySeries:
    """Anomaly-free training history of the same entity, ts = end_ts - points ... end_ts - 1."""
    ts = float(end_ts) - points + np.arange(points, dtype=np.float64)
    return _series(entity, channels, ts, seed, "history", anomalies=False)
