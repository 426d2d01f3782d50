"""The canary ratio's 95 % interval and the gate's rule.

The interval is checked the way it is used: canary and baseline samples with a known true p95 ratio go
through the adapter's own sketches; over 1,000 seeded trials the interval must hold the truth in at
least 93 % of them (95 % nominal), and it must narrow as requests grow.
"""

from __future__ import annotations

import numpy as np
import pytest

from adapter.canary_interval import (
    EXACT_UP_TO,
    lognormal_interval,
    rank_bounds,
    ratio_interval,
)
from adapter.gate import INCONCLUSIVE, PASS, REGRESSION, Evidence, Limits, parse_duration, verdict
from adapter.sketch import LatencySketch


def sketch_of(values: np.ndarray) -> LatencySketch:
    sketch = LatencySketch()
    sketch.add_many(values)
    return sketch


@pytest.mark.parametrize(("canary_n", "true_ratio"), [(300, 1.0), (1000, 1.1), (3000, 1.25)])
def test_the_interval_covers_the_true_ratio_in_at_least_93_percent_of_1000_trials(
        canary_n: int, true_ratio: float) -> None:
    rng = np.random.default_rng(canary_n)
    covered = 0
    for _ in range(1000):
        canary = sketch_of(rng.lognormal(np.log(0.08), 0.6, canary_n) * true_ratio)
        baseline = sketch_of(rng.lognormal(np.log(0.08), 0.6, canary_n * 4))
        interval = ratio_interval(canary, baseline)
        assert interval is not None
        covered += interval.low <= true_ratio <= interval.high
    assert covered >= 930, covered


def test_the_interval_narrows_as_requests_grow() -> None:
    rng = np.random.default_rng(7)
    widths = []
    for n in (100, 400, 1600, 6400):
        trials = []
        for _ in range(50):
            interval = ratio_interval(sketch_of(rng.lognormal(np.log(0.08), 0.6, n)),
                                      sketch_of(rng.lognormal(np.log(0.08), 0.6, n)))
            assert interval is not None
            trials.append(interval.high / interval.low)
        widths.append(float(np.median(trials)))
    assert widths == sorted(widths, reverse=True), widths
    assert widths[-1] < 1.15 < widths[0], widths  # 4x the requests: about half the width, each time
    low, high = lognormal_interval(1000, 1000)
    assert low < 1 < high and lognormal_interval(4000, 4000)[1] < high


def test_rank_bounds_match_the_binomial_and_switch_to_normal_smoothly() -> None:
    low, high = rank_bounds(1000, 0.95, 0.95)
    # P(l <= K < u) for K ~ Binomial(1000, 0.95), computed by brute force.
    k = np.arange(1001)
    from math import comb
    pmf = np.array([comb(1000, int(i)) * 0.95 ** int(i) * 0.05 ** (1000 - int(i)) for i in k])
    assert pmf[low:high].sum() >= 0.95
    assert pmf[low + 1:high].sum() < 0.95 or pmf[low:high - 1].sum() < 0.95  # no slack on both ends
    exact = rank_bounds(EXACT_UP_TO)
    normal = rank_bounds(EXACT_UP_TO + 1)
    assert abs(exact[0] - normal[0]) <= 2 and abs(exact[1] - normal[1]) <= 3
    assert rank_bounds(3)[1] == 3  # clamped at the largest: three requests cannot bound a p95 from above
    with pytest.raises(ValueError):
        rank_bounds(0)


def test_no_interval_without_data() -> None:
    assert ratio_interval(LatencySketch(), sketch_of(np.full(10, 0.1))) is None


LIMITS = Limits(max_ratio=1.10, max_error_ratio=0.032, min_samples=200)


@pytest.mark.parametrize(("evidence", "expected"), [
    (Evidence(1.05, 0.98, 1.12, 500, 5000, 0.0, "t"), PASS),
    (Evidence(1.10, 1.01, 1.19, 500, 5000, 0.0, "t"), PASS),  # at the limit
    (Evidence(1.30, 1.15, 1.45, 500, 5000, 0.0, "t"), REGRESSION),  # slower beyond doubt
    (Evidence(1.20, 1.05, 1.36, 500, 5000, 0.0, "t"), INCONCLUSIVE),  # maybe slower, maybe noise
    (Evidence(1.00, 0.90, 1.10, 150, 5000, 0.0, "t"), INCONCLUSIVE),  # too few canary requests
    (Evidence(None, None, None, 40, 5000, None, None), INCONCLUSIVE),  # not served yet
    (Evidence(1.00, 0.90, 1.10, 30, 5000, 0.05, "t"), REGRESSION),  # errors abort at once
    (Evidence(1.20, None, None, 500, 5000, 0.0, None), INCONCLUSIVE),  # no interval (PromQL source)
])
def test_the_gate_rule(evidence: Evidence, expected: int) -> None:
    code, why = verdict(evidence, LIMITS)
    assert code == expected, why
    assert why


def test_durations() -> None:
    assert parse_duration("90") == 90 and parse_duration("5m") == 300 and parse_duration("1.5h") == 5400
    assert parse_duration("500ms") == 0.5
    with pytest.raises(Exception, match="not a duration"):
        parse_duration("soon")
