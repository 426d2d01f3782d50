"""Tests for adapter.sketch: quantile accuracy, exact merges, key mapping, OTLP histogram import.

The reference is always ``numpy.percentile`` on the very samples that went into the sketch. The DESIGN
bar (section 8) is a p95 relative error of at most 1 % on lognormal, bimodal, Pareto and step-change data.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.sketch import (
    DEFAULT_RELATIVE_ACCURACY,
    LatencySketch,
    import_explicit_histogram,
    import_exponential_histogram,
    merged,
)
from tests.distributions import Generator, bimodal, lognormal, pareto, step_change
from tests.helpers_otlp import explicit_counts, exponential_bucket_of, exponential_buckets

ALPHA = DEFAULT_RELATIVE_ACCURACY
GOAL = 0.01  # DESIGN section 8
QUANTILES = (0.50, 0.95, 0.99)
#: Prometheus client libraries' default buckets (seconds); +Inf is implicit.
PROMETHEUS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)











DISTRIBUTIONS: dict[str, Generator] = {
    "lognormal": lognormal,
    "bimodal": bimodal,
    "pareto": pareto,
    "step": step_change,
}


def sketch_of(values: np.ndarray, dtype: type[np.floating] = np.float64) -> LatencySketch:
    s = LatencySketch(dtype=dtype)
    s.add_many(np.asarray(values, dtype=np.float64))
    return s


def bins_of(sketch: LatencySketch) -> dict[int, float]:
    """The sketch's non-empty positive bins as ``{key: count}`` (independent of array offsets)."""
    store = sketch.store
    return {store.offset + int(i): float(store.bins[i]) for i in np.nonzero(store.bins)[0]}


def rel_err(estimate: float | None, exact: float) -> float:
    assert estimate is not None
    return abs(estimate - exact) / exact


# --- accuracy --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10_000, 200_000])
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_quantiles_within_one_percent_of_numpy(name: str, n: int) -> None:
    for seed in (1, 2, 3):
        values = DISTRIBUTIONS[name](np.random.default_rng(seed), n)
        sketch = sketch_of(values)
        for q in QUANTILES:
            exact = float(np.percentile(values, q * 100))
            err = rel_err(sketch.quantile(q), exact)
            assert err <= GOAL, f"{name} n={n} seed={seed} q={q}: {sketch.quantile(q)} vs {exact} ({err:.2%})"


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_quantiles_hold_when_added_in_batches_into_float32_slices(name: str) -> None:
    """The serving path: many small float32 slice sketches (one per batch) merged into a window."""
    values = DISTRIBUTIONS[name](np.random.default_rng(11), 50_000)
    slices = []
    for chunk in np.array_split(values, 120):
        slices.append(sketch_of(chunk, np.float32))
    window = merged(slices)
    assert window.count == pytest.approx(values.shape[0])
    for q in QUANTILES:
        exact = float(np.percentile(values, q * 100))
        assert rel_err(window.quantile(q), exact) <= GOAL


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_small_samples_are_within_accuracy_of_the_order_statistic(name: str) -> None:
    """With 200 samples the gap between neighbouring order statistics in a tail can be several percent,
    so "the exact p95" depends on the interpolation rule. The sketch returns the order statistic at rank
    ``floor(q * (n - 1))`` (numpy's ``method="lower"``) within its relative accuracy; that is checked
    here, and that the answer lies between the two order statistics numpy's default interpolates.
    """
    for seed in range(20):
        values = DISTRIBUTIONS[name](np.random.default_rng(100 + seed), 200)
        sketch = sketch_of(values)
        for q in QUANTILES:
            lower = float(np.percentile(values, q * 100, method="lower"))
            higher = float(np.percentile(values, q * 100, method="higher"))
            est = sketch.quantile(q)
            assert est is not None
            assert rel_err(est, lower) <= ALPHA * (1 + 1e-9), (name, seed, q)
            assert lower * (1 - ALPHA) <= est <= higher * (1 + ALPHA)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.floats(min_value=1e-7, max_value=1e4, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0]),
)
def test_any_data_quantile_within_relative_accuracy(values: list[float], q: float) -> None:
    arr = np.asarray(values)
    est = sketch_of(arr).quantile(q)
    exact = float(np.percentile(arr, q * 100, method="lower"))
    assert est is not None
    assert abs(est - exact) <= ALPHA * exact * (1 + 1e-9)


def test_quantiles_are_monotone_in_q() -> None:
    sketch = sketch_of(bimodal(np.random.default_rng(5), 20_000))
    qs = np.linspace(0, 1, 101)
    values = [sketch.quantile(float(q)) for q in qs]
    assert all(a is not None and b is not None and a <= b for a, b in itertools.pairwise(values))


# --- merge -----------------------------------------------------------------------------------------------


def test_merge_equals_sketch_of_the_union_exactly() -> None:
    rng = np.random.default_rng(3)
    fast = rng.lognormal(math.log(0.005), 0.3, 5_000)  # lies left of ...
    slow = rng.lognormal(math.log(2.0), 0.3, 7_000)  # ... and right of the other: arrays grow both ways
    zeros = np.zeros(17)
    a = sketch_of(np.concatenate([slow, zeros]))
    b = sketch_of(fast)
    union = sketch_of(np.concatenate([fast, slow, zeros]))

    a.merge_from(b)
    assert bins_of(a) == bins_of(union)
    assert a.zero_count == union.zero_count == 17
    assert a.count == union.count == 12_017
    for q in QUANTILES:
        assert a.quantile(q) == union.quantile(q)


def test_merged_of_many_float32_slices_equals_sketch_of_union() -> None:
    rng = np.random.default_rng(4)
    parts = [pareto(rng, int(rng.integers(1, 500))) for _ in range(30)]
    window = merged([sketch_of(p, np.float32) for p in parts])
    union = sketch_of(np.concatenate(parts))
    assert bins_of(window) == bins_of(union)
    assert window.count == union.count


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e3, allow_nan=False), max_size=200),
    st.lists(st.floats(min_value=0.0, max_value=1e3, allow_nan=False), max_size=200),
)
def test_merge_property(a: list[float], b: list[float]) -> None:
    sa, sb = sketch_of(np.asarray(a)), sketch_of(np.asarray(b))
    sa.merge_from(sb)
    union = sketch_of(np.asarray(a + b))
    assert bins_of(sa) == bins_of(union)
    assert sa.zero_count == union.zero_count
    assert sa.count == union.count
    assert sa.quantile(0.95) == union.quantile(0.95)


def test_merge_with_empty_changes_nothing() -> None:
    s = sketch_of(lognormal(np.random.default_rng(1), 1000))
    before = bins_of(s), s.count
    s.merge_from(LatencySketch())
    assert (bins_of(s), s.count) == before
    empty = LatencySketch()
    empty.merge_from(s)
    assert bins_of(empty) == before[0]


# --- key mapping, empty and zero -------------------------------------------------------------------------


def test_keys_of_agrees_with_ddsketch_mapping_key() -> None:
    rng = np.random.default_rng(9)
    values = np.exp(rng.uniform(math.log(1e-9), math.log(1e6), 50_000))
    sketch = LatencySketch()
    keys = sketch.keys_of(values)
    expected = np.array([sketch.mapping.key(float(v)) for v in values], dtype=np.int64)
    assert np.array_equal(keys, expected)


@given(st.floats(min_value=1e-12, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_keys_of_agrees_on_arbitrary_floats(value: float) -> None:
    sketch = LatencySketch()
    assert int(sketch.keys_of(np.array([value]))[0]) == sketch.mapping.key(value)


def test_add_many_bins_equal_one_by_one_ddsketch_adds() -> None:
    from ddsketch.ddsketch import DDSketch

    values = lognormal(np.random.default_rng(2), 3_000)
    ours = sketch_of(values)
    reference = DDSketch(ALPHA)
    for v in values:
        reference.add(float(v))
    for q in QUANTILES:
        assert ours.quantile(q) == pytest.approx(reference.get_quantile_value(q), rel=1e-12)


@pytest.mark.parametrize("q", [0.0, 0.5, 0.95, 1.0])
def test_empty_sketch_has_no_quantile(q: float) -> None:
    s = LatencySketch()
    assert s.quantile(q) is None  # never a made-up 0
    assert s.count == 0


def test_zero_and_near_zero_durations_go_to_zero_count() -> None:
    s = LatencySketch()
    tiny = s.mapping.min_possible
    s.add_many(np.array([0.0, 0.0, 5e-324, tiny, 0.1]))
    assert s.zero_count == 4
    assert s.count == 5
    assert s.store.count == 1
    assert s.quantile(0.0) == 0.0
    assert s.quantile(0.5) == 0.0
    assert s.quantile(1.0) == pytest.approx(0.1, rel=1.01 * ALPHA)


def test_zero_durations_with_weights() -> None:
    s = LatencySketch()
    s.add_many(np.array([0.0, 0.2, 0.0]), np.array([3.0, 2.0, 4.0]))
    assert s.zero_count == 7
    assert s.count == 9
    assert s.quantile(1.0) == pytest.approx(0.2, rel=1.01 * ALPHA)


def test_rank_of_counts_values_at_or_below() -> None:
    values = lognormal(np.random.default_rng(8), 10_000)
    s = sketch_of(np.concatenate([values, np.zeros(5)]))
    assert s.rank_of(0.0) == 5
    for v in (0.03, 0.08, 0.2):
        exact = float(np.sum(values <= v)) + 5
        assert abs(s.rank_of(v) - exact) <= float(np.sum(np.abs(values - v) <= 2 * ALPHA * v))


# --- OTLP explicit-bucket import -------------------------------------------------------------------------


@pytest.mark.parametrize("use_min_max", [True, False])
@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_explicit_import_keeps_counts_and_p95_within_true_bucket(name: str, use_min_max: bool) -> None:
    values = DISTRIBUTIONS[name](np.random.default_rng(21), 50_000)
    counts = explicit_counts(values, PROMETHEUS_BUCKETS)
    s = LatencySketch()
    added = import_explicit_histogram(
        s, PROMETHEUS_BUCKETS, counts,
        minimum=float(values.min()) if use_min_max else None,
        maximum=float(values.max()) if use_min_max else None,
    )
    assert added == sum(counts) == values.shape[0]
    assert s.count == pytest.approx(values.shape[0], rel=1e-9)
    edges = (0.0, *PROMETHEUS_BUCKETS, math.inf)
    for q in QUANTILES:
        exact = float(np.percentile(values, q * 100))
        j = int(np.searchsorted(PROMETHEUS_BUCKETS, exact, side="left"))
        lo, hi = edges[j], edges[j + 1]
        if use_min_max:
            hi = min(hi, float(values.max()))
        est = s.quantile(q)
        assert est is not None
        assert lo * (1 - ALPHA) <= est <= hi * (1 + ALPHA), (q, lo, est, hi)


def test_explicit_import_with_fine_buckets_is_within_two_percent() -> None:
    bounds = np.geomspace(0.001, 10.0, 100).tolist()
    for name, gen in DISTRIBUTIONS.items():
        values = gen(np.random.default_rng(22), 100_000)
        s = LatencySketch()
        import_explicit_histogram(s, bounds, explicit_counts(values, bounds),
                                  minimum=float(values.min()), maximum=float(values.max()))
        for q in QUANTILES:
            exact = float(np.percentile(values, q * 100))
            assert rel_err(s.quantile(q), exact) <= 0.02, (name, q)


def test_explicit_import_converts_units_to_seconds() -> None:
    values = lognormal(np.random.default_rng(23), 20_000)
    bounds_s = np.geomspace(0.002, 5.0, 60).tolist()
    bounds_ms = [b * 1000 for b in bounds_s]
    counts = explicit_counts(values, bounds_s)
    in_s, in_ms = LatencySketch(), LatencySketch()
    import_explicit_histogram(in_s, bounds_s, counts)
    import_explicit_histogram(in_ms, bounds_ms, counts, scale=0.001)
    exact = float(np.percentile(values, 95))
    assert rel_err(in_ms.quantile(0.95), exact) <= 0.03  # seconds, not milliseconds
    assert in_ms.quantile(0.95) == pytest.approx(in_s.quantile(0.95), rel=2 * ALPHA)
    assert in_ms.count == pytest.approx(in_s.count)


@pytest.mark.parametrize(("n_bounds", "n_counts"), [(3, 3), (3, 5), (0, 2), (2, 0)])
def test_explicit_import_rejects_mismatched_lengths(n_bounds: int, n_counts: int) -> None:
    s = LatencySketch()
    with pytest.raises(ValueError, match="bounds"):
        import_explicit_histogram(s, [0.1 * (i + 1) for i in range(n_bounds)], [1] * n_counts)
    assert s.count == 0


def test_explicit_import_of_empty_buckets_adds_nothing() -> None:
    s = LatencySketch()
    assert import_explicit_histogram(s, PROMETHEUS_BUCKETS, [0] * 12) == 0
    assert s.quantile(0.95) is None


def test_explicit_import_overflow_bucket_uses_max_or_last_bound() -> None:
    s = LatencySketch()
    import_explicit_histogram(s, [0.1, 0.2], [0, 0, 10])  # every request above the last bound
    assert s.quantile(0.5) == pytest.approx(0.2, rel=1.01 * ALPHA)  # as histogram_quantile does
    t = LatencySketch()
    import_explicit_histogram(t, [0.1, 0.2], [0, 0, 10], maximum=0.4)
    # Spread between the last bound and the point's max, never beyond the max.
    assert 0.2 * (1 - ALPHA) <= (t.quantile(0.5) or 0) <= 0.4 * (1 + ALPHA)
    assert (t.quantile(1.0) or 0) <= 0.4 * (1 + ALPHA)


def test_explicit_import_without_min_stays_small() -> None:
    # A fast service: many requests under the first bound (5 ms), as with OTel's semconv buckets.
    values = np.random.default_rng(24).lognormal(math.log(0.008), 0.6, 10_000)
    counts = explicit_counts(values, PROMETHEUS_BUCKETS)
    assert counts[0] > 0
    s = LatencySketch()
    import_explicit_histogram(s, PROMETHEUS_BUCKETS, counts)
    assert s.nbytes() <= 64 * 1024


# --- OTLP exponential import -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_exponential_import_at_fine_scale_within_one_percent(name: str) -> None:
    values = DISTRIBUTIONS[name](np.random.default_rng(31), 100_000)
    offset, counts = exponential_buckets(values, 8)  # 2**(1/256): 0.27 % wide, finer than the sketch
    s = LatencySketch()
    added = import_exponential_histogram(s, 8, offset, counts)
    assert added == values.shape[0]
    assert s.count == pytest.approx(values.shape[0], rel=1e-9)
    for q in QUANTILES:
        exact = float(np.percentile(values, q * 100))
        assert rel_err(s.quantile(q), exact) <= GOAL, (name, q)


@pytest.mark.parametrize("scale", [-2, 0, 1, 3])
def test_exponential_import_at_coarse_scale_keeps_counts(scale: int) -> None:
    values = lognormal(np.random.default_rng(32), 30_000)
    offset, counts = exponential_buckets(values, scale)
    s = LatencySketch()
    added = import_exponential_histogram(s, scale, offset, counts)
    assert added == sum(counts) == values.shape[0]
    assert s.count == pytest.approx(values.shape[0], rel=1e-9)
    # The estimate stays inside the source bucket that holds the exact p95.
    exact = float(np.percentile(values, 95))
    lo, hi = exponential_bucket_of(exact, scale)
    est = s.quantile(0.95)
    assert est is not None
    assert lo * (1 - ALPHA) <= est <= hi * (1 + ALPHA)


def test_exponential_import_zero_count() -> None:
    values = lognormal(np.random.default_rng(33), 1_000)
    offset, counts = exponential_buckets(values, 4)
    s = LatencySketch()
    added = import_exponential_histogram(s, 4, offset, counts, zero_count=250)
    assert added == 1_250
    assert s.zero_count == 250
    assert s.count == pytest.approx(1_250)
    assert s.quantile(0.1) == 0.0  # 20 % of the requests took no measurable time
    assert (s.quantile(0.99) or 0) > 0

    only_zero = LatencySketch()
    assert import_exponential_histogram(only_zero, 4, 0, [], zero_count=3) == 3
    assert only_zero.quantile(0.5) == 0.0


def test_exponential_import_unit_scale_ms_to_seconds() -> None:
    values = lognormal(np.random.default_rng(34), 50_000)
    offset, counts = exponential_buckets(values * 1000.0, 8)  # recorded in milliseconds
    s = LatencySketch()
    import_exponential_histogram(s, 8, offset, counts, unit_scale=0.001)
    assert rel_err(s.quantile(0.95), float(np.percentile(values, 95))) <= GOAL


def test_exponential_import_of_all_zero_buckets_adds_nothing() -> None:
    s = LatencySketch()
    assert import_exponential_histogram(s, 3, -40, [0, 0, 0]) == 0
    assert s.quantile(0.5) is None
