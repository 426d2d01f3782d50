"""The dual-signal policy, row by row of DESIGN section 5's table, plus its invariants as properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.policy import (
    MIN_RATIO,
    REASONS,
    CpuSignal,
    LatencySignal,
    PolicySettings,
    decide,
)

NOW = 10_000.0
S = PolicySettings(latency_target_seconds=0.25, cpu_target_utilization=0.6, min_samples=50, cpu_floor=0.3,
                   stale_after_seconds=60.0)


def lat(seconds: float, samples: int = 500, age: float = 0.0,
        trace_id: str | None = "ab" * 16) -> LatencySignal:
    return LatencySignal(seconds, samples, NOW - age, trace_id)


def cpu(utilization: float, age: float = 0.0) -> CpuSignal:
    return CpuSignal(utilization, NOW - age, pods=3)


# ------------------------------------------------------------------------------------------- the table


def test_both_valid_latency_larger() -> None:
    d = decide(lat(0.5), cpu(0.6), S, NOW)  # rL 2.0, rU 1.0
    assert d is not None
    assert (d.reason, d.ratio, d.latency_ratio, d.cpu_ratio) == ("latency", 2.0, 2.0, 1.0)
    assert d.trace_id == "ab" * 16


def test_both_valid_cpu_larger() -> None:
    d = decide(lat(0.1), cpu(0.9), S, NOW)  # rL 0.4, rU 1.5
    assert d is not None
    assert (d.reason, d.ratio) == ("cpu", pytest.approx(1.5))


def test_both_low_scales_down_on_the_larger() -> None:
    d = decide(lat(0.05), cpu(0.12), S, NOW)  # rL 0.2, rU 0.2; CPU under the floor but latency fine
    assert d is not None
    assert d.reason in ("latency", "cpu")
    assert d.ratio == pytest.approx(0.2)


def test_slow_and_idle_is_a_dependency_hold() -> None:
    d = decide(lat(1.0), cpu(0.1), S, NOW)  # rL 4.0, U 0.1 < floor 0.3
    assert d is not None
    assert (d.reason, d.ratio) == ("dependency_latency", 1.0)
    assert d.latency_ratio == 4.0  # the pieces still say what happened
    assert d.trace_id == "ab" * 16  # the trace shows where the time went


def test_dependency_hold_follows_cpu_above_target() -> None:
    # U under the floor yet above its target can only happen with a floor above the target.
    s = PolicySettings(cpu_target_utilization=0.2, cpu_floor=0.5)
    d = decide(lat(1.0), cpu(0.3), s, NOW)
    assert d is not None
    assert (d.reason, d.ratio) == ("dependency_latency", pytest.approx(1.5))


def test_too_few_samples_uses_cpu_only() -> None:
    d = decide(lat(2.0, samples=49), cpu(0.3), S, NOW)
    assert d is not None
    assert (d.reason, d.ratio, d.latency_ratio) == ("cpu_only_low_traffic", pytest.approx(0.5), None)
    assert d.trace_id is None


def test_no_latency_at_all_uses_cpu_only() -> None:
    d = decide(None, cpu(0.9), S, NOW)
    assert d is not None
    assert (d.reason, d.ratio) == ("cpu_only_low_traffic", pytest.approx(1.5))


def test_cpu_missing_uses_latency_only() -> None:
    d = decide(lat(0.3), None, S, NOW)
    assert d is not None
    assert (d.reason, d.ratio, d.cpu_ratio) == ("latency_only_cpu_missing", pytest.approx(1.2), None)


def test_both_missing_is_no_value() -> None:
    assert decide(None, None, S, NOW) is None
    assert decide(lat(0.3, samples=3), None, S, NOW) is None  # too few samples and no CPU


# ------------------------------------------------------------------------------------------- fail static


def test_fail_static_until_stale_after_then_missing() -> None:
    assert decide(lat(0.3), cpu(0.9, age=60.0), S, NOW).reason == "cpu"  # type: ignore[union-attr]
    d = decide(lat(0.3), cpu(0.9, age=60.5), S, NOW)
    assert d is not None and d.reason == "latency_only_cpu_missing"
    d = decide(lat(0.3, age=61), cpu(0.9, age=61), S, NOW)
    assert d is None


def test_stale_latency_falls_back_to_cpu() -> None:
    d = decide(lat(3.0, age=90), cpu(0.45), S, NOW)
    assert d is not None and d.reason == "cpu_only_low_traffic"


def test_bad_numbers_are_missing_not_zero() -> None:
    assert decide(lat(math.nan), cpu(math.inf), S, NOW) is None
    assert decide(lat(-1.0), None, S, NOW) is None


def test_idle_is_never_zero() -> None:
    d = decide(lat(0.0), cpu(0.0), S, NOW)
    assert d is not None and d.ratio == MIN_RATIO


def test_other_quantile_settings_only_change_targets() -> None:
    d = decide(lat(0.8), cpu(0.6), PolicySettings(latency_target_seconds=0.4, quantile=0.99), NOW)
    assert d is not None and d.ratio == pytest.approx(2.0)


# ------------------------------------------------------------------------------------------- properties

seconds = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
utilizations = st.floats(min_value=0.0, max_value=20.0, allow_nan=False)
samples = st.integers(min_value=0, max_value=10_000)
ages = st.floats(min_value=0.0, max_value=200.0)
settings = st.builds(
    PolicySettings,
    latency_target_seconds=st.floats(min_value=0.001, max_value=10.0),
    cpu_target_utilization=st.floats(min_value=0.05, max_value=2.0),
    min_samples=st.integers(min_value=1, max_value=1000),
    cpu_floor=st.floats(min_value=0.0, max_value=2.0),
    stale_after_seconds=st.floats(min_value=1.0, max_value=300.0),
)
maybe_latency = st.none() | st.builds(LatencySignal, seconds, samples, st.builds(lambda a: NOW - a, ages))
maybe_cpu = st.none() | st.builds(CpuSignal, utilizations, st.builds(lambda a: NOW - a, ages))


@given(maybe_latency, maybe_cpu, settings)
def test_never_zero_negative_or_nan(latency: LatencySignal | None, cpu_signal: CpuSignal | None,
                                    s: PolicySettings) -> None:
    d = decide(latency, cpu_signal, s, NOW)
    if d is not None:
        assert math.isfinite(d.ratio) and d.ratio >= MIN_RATIO > 0
        assert d.reason in REASONS


@given(seconds, seconds, samples, utilizations, settings)
def test_higher_p95_never_lowers_the_ratio(a: float, b: float, n: int, u: float, s: PolicySettings) -> None:
    low, high = sorted((a, b))
    fixed_cpu = CpuSignal(u, NOW)
    d_low = decide(LatencySignal(low, n, NOW), fixed_cpu, s, NOW)
    d_high = decide(LatencySignal(high, n, NOW), fixed_cpu, s, NOW)
    assert (d_low is None) == (d_high is None)
    if d_low is not None and d_high is not None:
        assert d_high.ratio >= d_low.ratio


@given(maybe_latency, utilizations, settings)
def test_dependency_latency_never_exceeds_max_of_cpu_ratio_and_one(
        latency: LatencySignal | None, u: float, s: PolicySettings) -> None:
    d = decide(latency, CpuSignal(u, NOW), s, NOW)
    if d is not None and d.reason == "dependency_latency":
        assert d.ratio <= max(u / s.cpu_target_utilization, 1.0) + 1e-12
        assert d.ratio >= 1.0  # a hold never scales down


@given(maybe_latency, maybe_cpu, settings)
def test_missing_only_when_neither_signal_is_usable(
        latency: LatencySignal | None, cpu_signal: CpuSignal | None, s: PolicySettings) -> None:
    d = decide(latency, cpu_signal, s, NOW)
    cpu_ok = cpu_signal is not None and NOW - cpu_signal.observed_at <= s.stale_after_seconds
    lat_ok = (latency is not None and NOW - latency.observed_at <= s.stale_after_seconds
              and latency.samples >= s.min_samples)
    assert (d is None) == (not cpu_ok and not lat_ok)
