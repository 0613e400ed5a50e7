"""Vigil's SPOT (scoring/thresholds.py) beside libspot, the SPOT author's C library, on the same streams.

For each score stream both are calibrated on the same first points (q = 1e-2, level 0.98, at most 1,000
peaks kept, anomalies not learnt from: Vigil's serving settings) and then step through the rest. Reported:
threshold agreement (median and max relative difference of z_q over the stream), alarm agreement (the
share of points where both agree, and the alarms of each), updates per second (Vigil's ``step`` on the
whole stream as the worker calls it, once with refit_every 1 like libspot and once as served; libspot's
``step`` per point, its only interface), and whether each can save and restore its state.

    pip install -e .[bench]      # libspot 3.1.0: not a dependency of the product
    python bench/spot_vs_libspot.py [--points 200000]

Streams: exponential, Pareto (heavy tail), Gaussian with a slow drift, and PCA scores of SMD
machine-1-6's test split (when ../shared/data is present).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scoring.thresholds import SpotThreshold  # noqa: E402


def streams(n: int, data_root: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {"exponential": rng.exponential(size=n), "pareto (a=3)": rng.pareto(3.0, size=n) + 1,
           "gaussian + drift": rng.normal(size=n) + np.linspace(0, 2, n)}
    smd = data_root / "smd" / "machine-1-6.npz"
    if smd.exists():
        from detectors.pca import PCADetector

        d = np.load(smd)
        det = PCADetector([f"c{i}" for i in range(d["train"].shape[1])]).fit(d["train"])
        windows = np.concatenate([d["train"], d["test"]])[:, None, :].astype(np.float32)
        out["PCA on SMD machine-1-6"] = det.score(windows).reconstruction[:, 0].astype(np.float64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=200_000)
    ap.add_argument("--calibration", type=int, default=5000)
    ap.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    args = ap.parse_args()
    try:
        import libspot
    except ImportError:
        sys.exit("bench/spot_vs_libspot.py needs libspot: pip install -e .[bench]")

    print("| stream | points | z_q rel. diff median / max | alarms agree | alarms Vigil / libspot "
          "| Vigil updates/s (refit 1 / as served) | libspot updates/s |")
    print("|---|---|---|---|---|---|---|")
    for name, x in streams(args.points, args.data_root).items():
        calib, live = x[:args.calibration], x[args.calibration:]
        ours = {}
        for refit in (1, 50):
            th = SpotThreshold(q=1e-2, level=0.98, max_excess=1000, refit_every=refit)
            th.calibrate(calib)
            t0 = time.perf_counter()
            z, alarm = th.step(live)
            ours[refit] = (z, alarm, len(live) / (time.perf_counter() - t0))
        ref = libspot.Spot(q=1e-2, level=0.98, max_excess=1000)
        ref.fit(calib)
        z_ref, alarm_ref = np.empty(len(live)), np.zeros(len(live), bool)
        t0 = time.perf_counter()
        for i, v in enumerate(live.tolist()):
            z_ref[i] = ref.anomaly_threshold  # the threshold in force before the point, as Vigil reports
            alarm_ref[i] = ref.step(v) == libspot.ANOMALY
        rate_ref = len(live) / (time.perf_counter() - t0)
        z, alarm, _ = ours[1]
        rel = np.abs(z - z_ref) / np.maximum(np.abs(z_ref), 1e-12)
        print(f"| {name} | {len(live):,} | {np.median(rel):.2e} / {rel.max():.2e} | {np.mean(alarm == alarm_ref):.4%} "
              f"| {alarm.mean():.4f} / {alarm_ref.mean():.4f} | {ours[1][2]:,.0f} / {ours[50][2]:,.0f} "
              f"| {rate_ref:,.0f} |")

    th = SpotThreshold(q=1e-2)
    th.calibrate(streams(args.calibration, Path("/nonexistent"))["exponential"])
    restored = SpotThreshold.from_state(th.to_state())
    ref = libspot.Spot(q=1e-2, level=0.98, max_excess=1000)
    print("\nState: Vigil's to_state/from_state round-trips exactly through JSON "
          f"({restored.to_state() == th.to_state()}); libspot {libspot.__name__} 3.1 has as_dict() "
          f"(marked experimental) and no way to build a Spot from it (its counters are read-only: "
          f"{not hasattr(type(ref), '__setstate__')} no __setstate__), so a worker could not checkpoint it.")


if __name__ == "__main__":
    main()
