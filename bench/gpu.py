"""Scoring speed of every model on a GPU, with the CPU beside it: points per second by micro-batch size.

For each model of ``detectors.artefacts.MODELS`` (fitted here on simulated data: 16 channels, a short
training so that the figure is about inference, not quality) and each device (``cpu``, and ``cuda``
when present), ``Detector.score`` is timed on micro-batches of ``--sizes`` windows (window 32; a window
brings ``--hop`` new points in the stream, so points/s = windows/s x hop). Torch models are also timed
after ``torch.compile`` and under bf16 autocast; bf16 is reported as safe where its point scores
keep the fp32 ranking (Spearman >= 0.999) and stay within 1% of them (median relative error).
Isolation forest and HST are CPU models (scikit-learn / river): they are timed on the CPU only.

    python bench/gpu.py [--models pca,lstm_ae,...] [--sizes 64,256,1024,4096] [--preset small|paper]
        [--devices cpu,cuda] [--variants fp32,compile,bf16] [--compile-cpu] [--json bench/results/gpu.json]

On a machine without CUDA it measures the CPU only and says so.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import artefacts  # noqa: E402
from detectors.base import sliding_windows  # noqa: E402
from detectors.torch_base import TorchDetector  # noqa: E402
from producers.simulate import normal_history  # noqa: E402

CPU_ONLY = {"iforest", "hst"}


def timed(fn, repeats: int, budget: float) -> float:
    """Median seconds of ``fn()`` over up to ``repeats`` calls (fewer if they exceed ``budget``)."""
    fn()  # warm-up: lazy initialisation, compilation, cuDNN autotuning
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    times, start = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > budget:
            break
    return float(np.median(times))


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(artefacts.MODELS))
    ap.add_argument("--sizes", default="64,256,1024,4096", help="micro-batch sizes, in windows")
    ap.add_argument("--devices", default=None, help="default: cpu, and cuda when present")
    ap.add_argument("--preset", default="small")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--hop", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--budget", type=float, default=10.0, help="seconds per measurement at most")
    ap.add_argument("--compile-cpu", action="store_true", help="also torch.compile on the CPU (slow to compile)")
    ap.add_argument("--variants", default="fp32,compile,bf16",
                    help="torch models: which of fp32, compile (torch.compile) and bf16 (autocast) to time")
    ap.add_argument("--json", type=Path, default=None, help="write the rows here as JSON")
    ap.add_argument("--stacked", type=int, default=200,
                    help="also: PCA models of this many entities scored as one stack (one call per micro-batch) "
                         "against one call per entity's model; 0: not measured")
    args = ap.parse_args()

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    sizes = [int(s) for s in args.sizes.split(",")]
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()} ({platform.processor() or 'cpu'}), "
          f"GPU: {gpu}", file=sys.stderr)
    if "cuda" in devices and not torch.cuda.is_available():
        sys.exit("bench/gpu.py: --devices names cuda but torch sees no CUDA device")

    hist = normal_history("bench", args.channels, 3000, 1.7e9, 1)
    rng = np.random.default_rng(0)
    series = hist.values + 0.1 * rng.normal(size=hist.values.shape)
    rows = []
    plan = [(m, d) for m in args.models.split(",") for d in devices if not (m in CPU_ONLY and d != "cpu")]
    for model, device in tqdm(plan, desc="models x devices", file=sys.stderr):
        det = artefacts.create(model, hist.channels, **({"preset": args.preset, "epochs": 1}
                                                         if issubclass(artefacts.model_class(model), TorchDetector)
                                                         else {}))
        det.fit(hist.values, progress=False)
        det.to(device)
        window = det.cfg["window"] if isinstance(det, TorchDetector) else 32
        pool = sliding_windows(series, window, 1)
        wanted = args.variants.split(",")
        variants = [("fp32", None)] if "fp32" in wanted or not isinstance(det, TorchDetector) else []
        if isinstance(det, TorchDetector):
            if "compile" in wanted and (device != "cpu" or args.compile_cpu):
                variants.append(("fp32 + torch.compile", "compile"))
            if "bf16" in wanted:
                variants.append(("bf16 autocast", "bf16"))
        reference = det.score(pool[:1024]).reconstruction[:, -1]
        for label, how in variants:
            net = det.net if isinstance(det, TorchDetector) else None
            note = ""
            try:
                if how == "compile":
                    det.net = torch.compile(net)
                for size in sizes:
                    batch = pool[np.arange(size) % len(pool)]
                    infer = det.score
                    if how == "bf16":
                        def infer(w, det=det, device=device):  # noqa: E306
                            with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu",
                                                dtype=torch.bfloat16):
                                return det.score(w)
                    if isinstance(det, TorchDetector):
                        det.infer_chunk = size
                    secs = timed(lambda: infer(batch), args.repeats, args.budget)
                    if how == "bf16" and size == sizes[0]:
                        got = infer(pool[:1024]).reconstruction[:, -1]
                        rel = float(np.median(np.abs(got - reference) / np.maximum(np.abs(reference), 1e-12)))
                        rho = spearman(got, reference)
                        note = f"{'safe' if rho >= 0.999 and rel <= 0.01 else 'NOT safe'}: spearman {rho:.4f}, median rel. err {rel:.2%}"
                    rows.append({"model": model, "device": device, "variant": label, "windows": size,
                                 "seconds": secs, "points_per_s": size * args.hop / secs, "note": note})
            except Exception as exc:  # noqa: BLE001 - a variant that cannot run is a finding, not a crash
                rows.append({"model": model, "device": device, "variant": label, "windows": None,
                             "seconds": None, "points_per_s": None, "note": f"failed: {type(exc).__name__}: {exc}"[:200]})
            finally:
                if net is not None:
                    det.net = net

    print(f"\nScoring speed (Detector.score), {args.channels} channels, window 32 (model's own if fixed), "
          f"hop {args.hop}: points/s = windows/s x {args.hop}. torch {torch.__version__}; GPU: {gpu}. In brackets: "
          f"the ratio to the same model's fp32 on the CPU in this run, or else to PCA's fp32 on the same device.\n")
    print("| model | device | variant | " + " | ".join(f"{s} windows" for s in sizes) + " | note |")
    print("|---|---|---|" + "---|" * len(sizes) + "---|")
    speed = {(r["model"], r["device"], r["variant"], r["windows"]): r["points_per_s"] for r in rows if r["windows"]}

    def cell(model: str, device: str, variant: str, size: int) -> str:
        if (model, device, variant, size) not in speed:
            return "–"
        mine = speed[(model, device, variant, size)]
        base = speed.get((model, "cpu", "fp32", size)) or speed.get(("pca", device, "fp32", size))
        return f"{mine:,.0f}" + (f" ({mine / base:.2f})" if base else "")

    for key in dict.fromkeys((r["model"], r["device"], r["variant"]) for r in rows):
        mine = [r for r in rows if (r["model"], r["device"], r["variant"]) == key]
        note = next((r["note"] for r in mine if r["note"]), "")
        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cell(*key, s) for s in sizes) + f" | {note} |")
    if args.stacked:
        stacked_rows(args, sizes)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"gpu": gpu, "torch": torch.__version__, "rows": rows}, indent=1))


def stacked_rows(args, sizes: list[int]) -> None:
    """A fleet's micro-batch: one new reading each of ``size`` entities, every entity with a PCA model of
    its own (``--stacked`` of them). Scored as one ``Stack`` (the pipeline's path: parameters stacked, one
    batched product) against one ``score`` call per entity's model. The stack is numpy arithmetic on the
    CPU whatever the device (docs/design.md, "Many entities, one call")."""
    from detectors.base import Stack
    from detectors.pca import PCADetector

    n = args.stacked
    groups: dict = {}  # models stack when they keep as many components: the most common count is used
    for i in tqdm(range(2 * n), desc="fitting PCA models", file=sys.stderr):
        h = normal_history(f"e{i}", args.channels, 1000, 1.7e9, 1000 + i)
        det = PCADetector(h.channels).fit(h.values, progress=False)
        groups.setdefault(det.stack_key(), []).append(det)
    dets = max(groups.values(), key=len)[:n]
    n = len(dets)
    stack = Stack()
    for d in dets:
        stack.row(d)
    rng = np.random.default_rng(0)
    print(f"\nA fleet's micro-batch on the CPU: one reading each of W entities, each with a PCA model of its own "
          f"({n} models, {args.channels} channels); points/s (ratio of stacked to one call per entity)\n")
    print("| scoring | " + " | ".join(f"{s} readings" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    cells = {"one call per entity's model": [], "one stacked call (the pipeline)": []}
    for size in sizes:
        owner = rng.integers(0, n, size)
        windows = rng.normal(size=(size, 1, args.channels)).astype(np.float32)
        one = timed(lambda: [dets[o].score(windows[j:j + 1]) for j, o in enumerate(owner)], args.repeats, args.budget)
        both = timed(lambda: stack.score(windows, owner), args.repeats, args.budget)
        cells["one call per entity's model"].append(f"{size / one:,.0f}")
        cells["one stacked call (the pipeline)"].append(f"{size / both:,.0f} ({one / both:.0f}x)")
    for label, row in cells.items():
        print(f"| {label} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
