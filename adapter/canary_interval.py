"""A 95 % confidence interval for a canary's p95 / its baseline's p95, from each side's sketch.

Why: a p95 from a few hundred requests can be 10 % off by chance, so a bare ``ratio <= 1.10`` promotes
and rolls back on noise. The gate's rule (DESIGN section 5, shared by ``latency-adapter gate``, the Argo
Rollouts template and the Flagger templates) needs a low and a high bound:

* **Rank bounds per side.** Of ``n`` independent requests, the number ``K`` below the true p95 is
  Binomial(n, 0.95). The interval between the ``l``-th and ``u``-th smallest requests holds the true
  p95 exactly when ``l <= K < u``, so ``l`` and ``u`` are binomial quantiles at ``(1 - g) / 2`` and
  ``(1 + g) / 2`` (exact up to :data:`EXACT_UP_TO` requests, normal approximation beyond). No
  assumption about the latency distribution is made.
* **From the sketch.** The sketch answers the value at a rank within its relative accuracy ``a``, so
  each bound is widened by ``1 + a`` (low divided, high multiplied).
* **Two sides.** Each side's 95 % bounds are a distance from its estimate in log space, about 1.96
  standard errors. The sides are independent, so the log of the ratio has the root sum of squares of
  those as its 95 % distance: ``ratio_low = ratio * exp(-sqrt(c_down^2 + b_up^2))`` and
  ``ratio_high = ratio * exp(sqrt(c_up^2 + b_down^2))``. (Dividing one side's bounds by the other's,
  the interval of two intervals, also holds but is far wider than 95 %: it needs twice the requests
  to tell the same regression.) Measured: 95 % coverage in ``tests/unit/test_canary_interval.py``.

Pure: numbers in, numbers out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from .sketch import LatencySketch

#: Joint confidence of the ratio interval.
CONFIDENCE = 0.95
#: Per side; combined in log space (module docstring).
SIDE_CONFIDENCE = CONFIDENCE
#: Largest sample count for which the binomial quantiles are computed exactly (O(n) numpy work).
EXACT_UP_TO = 200_000


@dataclass(frozen=True)
class QuantileBounds:
    """A side's estimate and its bounds, in seconds; ``samples`` requests behind them."""

    value: float
    low: float
    high: float
    samples: int


@dataclass(frozen=True)
class RatioInterval:
    ratio: float
    low: float
    high: float
    canary: QuantileBounds
    baseline: QuantileBounds


def rank_bounds(n: int, q: float = 0.95, confidence: float = SIDE_CONFIDENCE) -> tuple[int, int]:
    """1-based ranks ``(l, u)``: the ``l``-th to ``u``-th smallest of ``n`` samples hold the true
    ``q``-quantile with probability at least ``confidence``. Clamped to ``[1, n]`` (a clamped side is
    then wider than the data can say: too few samples)."""
    if n < 1:
        raise ValueError("no samples")
    alpha = (1.0 - confidence) / 2.0
    if n <= EXACT_UP_TO:
        cdf = _binomial_cdf(n, q)
        # l: the largest j with P(K < j) = cdf[j - 1] <= alpha;
        # u: the smallest j with P(K <= j - 1) >= 1 - alpha.
        low = int(np.searchsorted(cdf, alpha, side="right"))  # cdf[low - 1] <= alpha < cdf[low]
        high = int(np.searchsorted(cdf, 1.0 - alpha, side="left")) + 1
    else:
        z = NormalDist().inv_cdf(1.0 - alpha)
        mean, sd = n * q, math.sqrt(n * q * (1.0 - q))
        low = math.floor(mean - z * sd)
        high = math.ceil(mean + z * sd) + 1
    return max(1, min(low, n)), max(1, min(high, n))


def _binomial_cdf(n: int, q: float) -> np.ndarray:
    """P(K <= k) for k = 0..n, K ~ Binomial(n, q); the pmf built in log space by its ratio recurrence."""
    k = np.arange(n, dtype=np.float64)
    steps = np.log((n - k) / (k + 1.0)) + math.log(q / (1.0 - q))
    log_pmf = np.concatenate(([n * math.log1p(-q)], n * math.log1p(-q) + np.cumsum(steps)))
    pmf = np.exp(log_pmf - log_pmf.max())
    cdf = np.cumsum(pmf)
    return np.asarray(cdf / cdf[-1], dtype=np.float64)


def quantile_bounds(sketch: LatencySketch, q: float = 0.95,
                    confidence: float = SIDE_CONFIDENCE) -> QuantileBounds | None:
    """The ``q``-quantile of the requests in ``sketch`` and its bounds (None when it holds none)."""
    n = round(sketch.count)
    value = sketch.quantile(q)
    if n < 1 or value is None:
        return None

    def at(rank: int) -> float:
        found = sketch.quantile((rank - 1) / (n - 1)) if n > 1 else value
        return value if found is None else found

    low_rank, high_rank = rank_bounds(n, q, confidence)
    accuracy = sketch.relative_accuracy
    return QuantileBounds(value=value, low=at(low_rank) / (1.0 + accuracy),
                          high=at(high_rank) * (1.0 + accuracy), samples=n)


def ratio_interval(canary: LatencySketch, baseline: LatencySketch, q: float = 0.95) -> RatioInterval | None:
    """Canary quantile / baseline quantile and its interval at :data:`CONFIDENCE` (None without data)."""
    mine, theirs = quantile_bounds(canary, q), quantile_bounds(baseline, q)
    if mine is None or theirs is None or min(mine.value, mine.low, theirs.value, theirs.low) <= 0:
        return None
    ratio = mine.value / theirs.value
    down, up = combined(mine, theirs)
    return RatioInterval(ratio=ratio, low=ratio * math.exp(-down), high=ratio * math.exp(up),
                         canary=mine, baseline=theirs)


def combined(canary: QuantileBounds, baseline: QuantileBounds) -> tuple[float, float]:
    """Log distances of the ratio's low and high bound from the ratio (root sum of squares)."""
    def log_gap(a: float, b: float) -> float:
        return max(0.0, math.log(a / b))

    down = math.hypot(log_gap(canary.value, canary.low), log_gap(baseline.high, baseline.value))
    up = math.hypot(log_gap(canary.high, canary.value), log_gap(baseline.value, baseline.low))
    return down, up


def lognormal_interval(samples: int, baseline_samples: int, sigma: float = 0.6,
                       q: float = 0.95) -> tuple[float, float]:
    """The ratio interval a canary exactly as fast as its baseline would get, for lognormal latencies of
    shape ``sigma``: rank bounds turned into quantile levels. What the README's table prints."""
    dist = NormalDist()
    z = dist.inv_cdf(q)

    def level(rank: int, n: int) -> float:
        return min(max((rank - 1) / max(n - 1, 1), 1e-9), 1 - 1e-9)

    def side(n: int) -> QuantileBounds:
        low, high = rank_bounds(n, q)
        return QuantileBounds(1.0, math.exp(sigma * (dist.inv_cdf(level(low, n)) - z)),
                              math.exp(sigma * (dist.inv_cdf(level(high, n)) - z)), n)

    down, up = combined(side(samples), side(baseline_samples))
    return math.exp(-down), math.exp(up)


#: Canary sizes in the README's table, and the share of traffic the canary gets.
TABLE_SIZES = (100, 200, 500, 1000, 2000, 5000, 10000)
TABLE_SPLIT = 0.05


def requests_table(limit: float = 1.10, sigma: float = 0.6) -> str:
    """The README's table: per canary size at a 5 % split, the interval an equally fast canary gets and
    how much slower a canary must be before ``ratio_low`` clears ``limit`` (a regression verdict)."""
    lines = ["| canary requests | baseline requests | 95 % interval, equally fast canary | "
             "flagged as a regression from |",
             "|---:|---:|---|---:|"]
    for n in TABLE_SIZES:
        baseline = round(n * (1 - TABLE_SPLIT) / TABLE_SPLIT)
        low, high = lognormal_interval(n, baseline, sigma)
        upper = f"{high:.3f}" if high < 10 else "unbounded"
        lines.append(f"| {n:,} | {baseline:,} | {low:.3f} to {upper} | {limit / low - 1:+.0%} slower |")
    return "\n".join(lines)
