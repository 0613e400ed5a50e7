"""Data helpers shared by unit and integration tests (fixtures live in the conftest files)."""
import numpy as np

from training.data import Dataset

# Deep models small enough for a test on a CPU.
TINY = {"epochs": 2, "window": 16, "stride": 4, "batch_size": 32}


def correlated(n, c=6, seed=0):
    """Two latent factors mixed into c channels (fixed mixing), plus noise drawn from ``seed``."""
    mixing = np.random.default_rng(42).normal(size=(2, c))
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 2)) @ mixing + 0.1 * rng.normal(size=(n, c))).astype(np.float32)


def small_dataset():
    """1500 normal training points; 800 test points with five 10-point shifts on known channels."""
    test, label, interpretation = correlated(800, seed=4), np.zeros(800, np.int8), []
    for i, start in enumerate(range(100, 800, 150)):
        ch = i % 6
        test[start:start + 10, ch] += 2.5
        label[start:start + 10] = 1
        interpretation.append((start, start + 10, ch))
    return Dataset("small", correlated(1500), test, label, [f"c{i}" for i in range(6)], np.array(interpretation))
