"""AUC-PR of every deep detector on the unit tests' small synthetic set (a sanity check, not a benchmark).

Trains each model with the tests' tiny settings on 1500 x 6 correlated channels and scores 1200 points
with ten injected 10-point shifts (base rate 0.042).

    python bench/synthetic_auc.py
"""
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detectors import artefacts  # noqa: E402
from detectors.base import sliding_windows  # noqa: E402
from detectors.torch_base import TorchDetector  # noqa: E402
from tests.unit.test_deep_detectors import TINY, auc_pr  # noqa: E402
from tests.unit.test_detectors import correlated  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    x = correlated(1200, seed=4)
    labels = np.zeros(len(x))
    for start in range(100, 1100, 200):
        x[start:start + 10, start % 6] += 2.5
        labels[start:start + 10] = 1
    print("| model | AUC-PR reconstruction | AUC-PR reconstruction + divergence | base rate |")
    print("|---|---|---|---|")
    for name in artefacts.available():
        if not issubclass(artefacts.model_class(name), TorchDetector):
            continue
        det = artefacts.create(name, [f"c{i}" for i in range(6)], **TINY).fit(correlated(1500), progress=False)
        s = det.score(sliding_windows(x, 16, 16))
        n = s.reconstruction.size
        fused = s.reconstruction if s.divergence is None else s.reconstruction + s.divergence
        print(f"| {name} | {auc_pr(s.reconstruction.reshape(-1), labels[:n]):.3f} | "
              f"{auc_pr(fused.reshape(-1), labels[:n]):.3f} | {labels[:n].mean():.3f} |")


if __name__ == "__main__":
    main()
