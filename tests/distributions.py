"""Latency distributions shared by the accuracy tests and the benchmarks (seconds, seeded generators).

One definition for both, so the benchmark's figures and the tests' bounds speak of the same data.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

Generator = Callable[[np.random.Generator, int], np.ndarray]


def lognormal(rng: np.random.Generator, n: int) -> np.ndarray:
    """A typical service: median 80 ms, sigma 0.6."""
    return rng.lognormal(math.log(0.080), 0.6, n)


def bimodal(rng: np.random.Generator, n: int) -> np.ndarray:
    """85 % cache hits around 15 ms, 15 % misses around 600 ms: p95 sits in the slow mode."""
    slow = rng.random(n) < 0.15
    return np.where(slow, rng.lognormal(math.log(0.600), 0.25, n), rng.lognormal(math.log(0.015), 0.25, n))


def bimodal_wide(rng: np.random.Generator, n: int) -> np.ndarray:
    """70 % around 10 ms, 30 % around 2 s: a wide sketch, the memory worst case."""
    slow = rng.random(n) < 0.3
    return np.where(slow, rng.lognormal(math.log(2.0), 0.3, n), rng.lognormal(math.log(0.010), 0.3, n))


def pareto(rng: np.random.Generator, n: int) -> np.ndarray:
    """Heavy tail: x_min 20 ms, shape 1.5."""
    return 0.020 * (1.0 + rng.pareto(1.5, n))


def step_change(rng: np.random.Generator, n: int) -> np.ndarray:
    """The first half lognormal(80 ms), then lognormal(400 ms), both sigma 0.6."""
    half = n // 2
    fast = rng.lognormal(math.log(0.080), 0.6, half)
    return np.concatenate([fast, rng.lognormal(math.log(0.400), 0.6, n - half)])
