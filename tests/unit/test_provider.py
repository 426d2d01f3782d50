"""Tests for adapter.provider: what the HPA gets for "metric M, namespace N, selector S", and the cache.

The provider is driven by an injected clock; data goes into the real store (and, where the path matters,
through the real OTLP ingestor). Served values are the closed window plus the open slice, recomputed once
per refresh tick (``store.refresh_seconds``, 1 s by default) and cached within a tick.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from adapter.errors import MetricNotFound, NoData
from adapter.model import Exemplar, Reading, SeriesKey
from adapter.provider import MetricsProvider
from adapter.selector import parse_selector
from adapter.sketch import LatencySketch, import_explicit_histogram
from adapter.sources.otlp_ingest import OtlpIngestor
from adapter.store import WindowStore
from tests.clock import FakeClock
from tests.helpers_otlp import spans_of, trace_request

T0 = 1000.0
WINDOW_METRICS = ["error_ratio", "latency_p50_seconds", "latency_p95_seconds", "latency_p99_seconds",
                  "request_rate"]
SERVED = sorted([*WINDOW_METRICS, "cpu_utilization", "cpu_utilization_ratio", "latency_p95_ratio",
                 "dual_signal_ratio", "latency_p95_baseline_ratio"])




@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> WindowStore:
    return WindowStore()


@pytest.fixture
def provider(store: WindowStore, clock: FakeClock) -> MetricsProvider:
    return MetricsProvider(store, clock)


def feed(store: WindowStore, key: SeriesKey, values: np.ndarray, now: float, errors: int = 0,
         first_id: int = 0, error_trace_id: str = "") -> dict[str, float]:
    """Add one batch with exemplar candidates at its upper quantiles; returns trace id -> latency."""
    order = np.argsort(values)
    n = values.shape[0]
    picks = sorted({int(order[min(n - 1, int(q * (n - 1) + 0.5))]) for q in (0.5, 0.9, 0.95, 0.99, 1.0)})
    candidates = [Exemplar(float(values[i]), f"{first_id + i:032x}") for i in picks]
    assert store.add_durations(key, values, errors, candidates, now, error_trace_id)
    return {c.trace_id: c.seconds for c in candidates}


def read(provider: MetricsProvider, namespace: str, metric: str, selector: str = "") -> Reading:
    return provider.reading(namespace, metric, parse_selector(selector))


def lognormal(rng: np.random.Generator, n: int, median: float) -> np.ndarray:
    return rng.lognormal(math.log(median), 0.6, n)


# --- names and errors ------------------------------------------------------------------------------------


def test_metric_names_are_listed_before_any_data(provider: MetricsProvider) -> None:
    assert provider.metric_names() == SERVED


def test_unknown_metric_lists_the_served_metrics(provider: MetricsProvider) -> None:
    with pytest.raises(MetricNotFound) as info:
        read(provider, "shop", "latency_p96_seconds")
    assert not isinstance(info.value, NoData)
    message = str(info.value)
    assert "latency_p96_seconds" in message
    for name in SERVED:
        assert name in message


@pytest.mark.parametrize("metric", SERVED)
def test_policy_metric_without_data_is_nodata_naming_the_selector(provider: MetricsProvider,
                                                                  metric: str) -> None:
    with pytest.raises(NoData) as info:
        read(provider, "shop", metric, "workload=checkout,route in (cart_id)")
    message = str(info.value)
    assert metric in message and "'shop'" in message
    assert str(parse_selector("workload=checkout,route in (cart_id)")) in message


@pytest.mark.parametrize("metric", WINDOW_METRICS)
def test_known_metric_without_data_is_nodata_naming_the_selector(provider: MetricsProvider,
                                                                 metric: str) -> None:
    with pytest.raises(NoData) as info:
        read(provider, "shop", metric, "workload=checkout,route in (cart_id)")
    message = str(info.value)
    assert metric in message and "'shop'" in message
    assert str(parse_selector("workload=checkout,route in (cart_id)")) in message
    assert "60s" in message


def test_nodata_with_an_empty_selector_says_so(provider: MetricsProvider) -> None:
    with pytest.raises(NoData, match="empty selector"):
        read(provider, "shop", "latency_p95_seconds")


def test_new_data_is_served_from_the_next_refresh_tick(provider: MetricsProvider, store: WindowStore,
                                                       clock: FakeClock) -> None:
    clock.now = T0 + 1.1
    with pytest.raises(NoData):
        read(provider, "shop", "latency_p95_seconds", "workload=checkout")
    feed(store, SeriesKey("shop", "checkout"), np.full(50, 0.1), T0 + 1.2)
    clock.now = T0 + 1.9  # same tick: the cached answer
    with pytest.raises(NoData):
        read(provider, "shop", "latency_p95_seconds", "workload=checkout")
    clock.now = T0 + 2.0  # next tick: served, although its slice closes only at T0 + 5
    reading = read(provider, "shop", "latency_p95_seconds", "workload=checkout")
    assert reading.value == pytest.approx(0.1, rel=0.01)


def test_selector_that_matches_nothing_is_nodata(provider: MetricsProvider, store: WindowStore,
                                                 clock: FakeClock) -> None:
    feed(store, SeriesKey("shop", "checkout"), np.full(50, 0.1), T0)
    clock.now = T0 + 5.0
    with pytest.raises(NoData, match="no series matched"):
        read(provider, "shop", "latency_p95_seconds", "workload=cart")
    with pytest.raises(NoData):
        read(provider, "shop", "latency_p95_seconds", "route")  # checkout has no route label


# --- the namespace wall ----------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [m for m in SERVED if m != "latency_p95_baseline_ratio"])
def test_data_in_one_namespace_is_never_served_for_another(provider: MetricsProvider, store: WindowStore,
                                                           clock: FakeClock, metric: str) -> None:
    feed(store, SeriesKey("team-a", "checkout"), np.full(100, 0.2), T0, errors=5, error_trace_id="e" * 32)
    provider.cpu.put_pod("team-a", "checkout", "p", usage_cores=0.1, request_cores=0.2, observed_at=T0)
    clock.now = T0 + 5.0
    assert read(provider, "team-a", metric, "workload=checkout").value >= 0
    for selector in ("workload=checkout", "", "workload"):
        with pytest.raises(NoData):
            read(provider, "team-b", metric, selector)


# --- values ----------------------------------------------------------------------------------------------


def test_several_routes_give_one_reading_of_the_merged_p95(provider: MetricsProvider, store: WindowStore,
                                                           clock: FakeClock) -> None:
    rng = np.random.default_rng(1)
    sent: dict[str, float] = {}
    all_values = []
    for i in range(20):
        routes = (("cart_id", 0.3, 30), ("health", 0.01, 300), ("", 0.08, 100))
        for j, (route, median, n) in enumerate(routes):
            values = lognormal(rng, n, median)
            all_values.append(values)
            key = SeriesKey("shop", "checkout", route)
            sent.update(feed(store, key, values, T0 + i, first_id=10_000 * j + i * 1000))
    feed(store, SeriesKey("shop", "cart"), np.full(10, 9.0), T0)  # another workload: not selected
    clock.now = T0 + 20.0
    union = np.concatenate(all_values)
    reading = read(provider, "shop", "latency_p95_seconds", "workload=checkout")
    exact = float(np.percentile(union, 95))
    assert abs(reading.value - exact) / exact <= 0.01
    assert reading.metric == "latency_p95_seconds"
    assert set(reading.labels) == {"workload", "trace_id"}  # no route: the routes differ
    assert reading.labels["workload"] == "checkout"
    assert reading.labels["trace_id"] in sent  # a real request ...
    assert abs(sent[reading.labels["trace_id"]] - reading.value) / reading.value <= 0.05  # ... near the p95

    rate = read(provider, "shop", "request_rate", "workload=checkout")
    assert rate.value == pytest.approx(union.shape[0] / 20.0)


@pytest.mark.parametrize(("metric", "q"), [("latency_p50_seconds", 50), ("latency_p95_seconds", 95),
                                           ("latency_p99_seconds", 99)])
def test_latency_quantiles_match_numpy(provider: MetricsProvider, store: WindowStore, clock: FakeClock,
                                       metric: str, q: int) -> None:
    rng = np.random.default_rng(2)
    values = lognormal(rng, 30_000, 0.08)
    for i, chunk in enumerate(np.array_split(values, 60)):
        feed(store, SeriesKey("shop", "checkout"), chunk, T0 + i)
    clock.now = T0 + 60.0
    reading = read(provider, "shop", metric, "workload=checkout")
    exact = float(np.percentile(values, q))
    assert abs(reading.value - exact) / exact <= 0.01


def test_reading_carries_labels_of_a_single_series_and_its_timestamp(
    provider: MetricsProvider, store: WindowStore, clock: FakeClock
) -> None:
    feed(store, SeriesKey("shop", "checkout", "cart_id"), np.full(20, 0.05), T0 + 2)
    clock.now = T0 + 7.4  # slice [1000, 1005) closed, [1005, 1010) open; the tick began at T0 + 7
    reading = read(provider, "shop", "latency_p95_seconds", "route=cart_id")
    assert reading.labels["workload"] == "checkout" and reading.labels["route"] == "cart_id"
    assert "trace_id" in reading.labels
    assert reading.timestamp == T0 + 7.0  # the start of the refresh tick the value was computed for
    assert reading.window_seconds == 5  # from the first request (T0 + 2) to the tick (T0 + 7)


def test_request_rate_is_count_over_the_covered_window(provider: MetricsProvider, store: WindowStore,
                                                       clock: FakeClock) -> None:
    key = SeriesKey("shop", "checkout")
    rng = np.random.default_rng(3)
    for second in range(20):  # 100 req/s for 20 s: four slices
        feed(store, key, lognormal(rng, 100, 0.08), T0 + second)
    clock.now = T0 + 20.0
    reading = read(provider, "shop", "request_rate", "workload=checkout")
    assert reading.value == pytest.approx(100.0)  # 2,000 requests over the 20 s the series exists, not 60 s
    assert reading.window_seconds == 20
    assert len(reading.labels["trace_id"]) == 32  # a representative request (near the p95)
    assert "error_trace_id" not in reading.labels  # no errors
    for second in range(20, 90):
        feed(store, key, lognormal(rng, 50, 0.08), T0 + second)
    clock.now = T0 + 90.0
    reading = read(provider, "shop", "request_rate", "workload=checkout")
    assert reading.value == pytest.approx(50.0)
    assert reading.window_seconds == 60
    for second in range(90, 93):  # the open slice counts with the time it has been open
        feed(store, key, lognormal(rng, 50, 0.08), T0 + second)
    clock.now = T0 + 93.0
    reading = read(provider, "shop", "request_rate", "workload=checkout")
    assert reading.value == pytest.approx(50.0)  # (3,000 + 150) / (60 + 3) s
    assert reading.window_seconds == 63


def test_error_ratio_with_error_trace_id(provider: MetricsProvider, store: WindowStore,
                                         clock: FakeClock) -> None:
    key = SeriesKey("shop", "checkout")
    feed(store, key, np.full(600, 0.05), T0, errors=0)
    feed(store, key, np.full(400, 0.05), T0 + 5, errors=50, error_trace_id="a1" * 16)
    clock.now = T0 + 10.0
    reading = read(provider, "shop", "error_ratio", "workload=checkout")
    assert reading.value == pytest.approx(0.05)
    assert reading.labels["error_trace_id"] == "a1" * 16
    assert set(reading.labels) == {"workload", "trace_id", "error_trace_id"}
    latency = read(provider, "shop", "latency_p95_seconds", "workload=checkout")
    assert latency.labels["error_trace_id"] == "a1" * 16  # every item names a failed request too


def test_error_ratio_without_errors_is_zero_and_has_no_trace(provider: MetricsProvider, store: WindowStore,
                                                             clock: FakeClock) -> None:
    feed(store, SeriesKey("shop", "checkout"), np.full(100, 0.05), T0)
    clock.now = T0 + 5.0
    reading = read(provider, "shop", "error_ratio", "workload=checkout")
    assert reading.value == 0.0  # real data with no failures: a genuine 0
    assert set(reading.labels) == {"workload", "trace_id"}  # no failed request to point at


# --- cache -----------------------------------------------------------------------------------------------


def test_reading_is_cached_within_a_tick_and_recomputed_after(provider: MetricsProvider, store: WindowStore,
                                                               clock: FakeClock) -> None:
    key = SeriesKey("shop", "checkout")
    feed(store, key, np.full(100, 0.1), T0)
    clock.now = T0 + 5.0
    first = read(provider, "shop", "latency_p95_seconds", "workload=checkout")
    computed = provider.computed
    feed(store, key, np.full(100, 0.5), T0 + 5.5)  # new slow requests ...
    clock.now = T0 + 5.99
    # ... are not seen within the tick; the same selector spelled differently hits the same entry.
    again = read(provider, "shop", "latency_p95_seconds", "workload==checkout")
    assert again is first
    assert provider.computed == computed

    clock.now = T0 + 6.0  # the next tick
    moved = read(provider, "shop", "latency_p95_seconds", "workload=checkout")
    assert moved is not first
    assert provider.computed == computed + 1
    assert moved.value == pytest.approx(0.5, rel=0.01)
    assert moved.timestamp == T0 + 6.0
    assert read(provider, "shop", "latency_p95_seconds", "workload=checkout") is moved


def test_cache_keys_keep_metrics_namespaces_and_selectors_apart(provider: MetricsProvider,
                                                                store: WindowStore, clock: FakeClock) -> None:
    feed(store, SeriesKey("shop", "checkout", "a"), np.full(100, 0.1), T0)
    feed(store, SeriesKey("shop", "checkout", "b"), np.full(100, 0.3), T0)
    clock.now = T0 + 5.0
    a = read(provider, "shop", "latency_p95_seconds", "route=a")
    b = read(provider, "shop", "latency_p95_seconds", "route=b")
    rate = read(provider, "shop", "request_rate", "route=a")
    assert a.value == pytest.approx(0.1, rel=0.01) and b.value == pytest.approx(0.3, rel=0.01)
    assert rate.metric == "request_rate"
    with pytest.raises(NoData):
        read(provider, "other", "latency_p95_seconds", "route=a")
    assert provider.computed == 4


def test_nodata_is_cached_within_a_tick_too(provider: MetricsProvider, clock: FakeClock) -> None:
    for _ in range(5):
        with pytest.raises(NoData):
            read(provider, "shop", "latency_p95_seconds", "workload=x")
    assert provider.computed == 1
    clock.now = T0 + 1.0
    with pytest.raises(NoData):
        read(provider, "shop", "latency_p95_seconds", "workload=x")
    assert provider.computed == 2


# --- regressions and known bugs -----------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["latency_p95_seconds", "request_rate", "error_ratio"])
def test_nodata_after_imported_histogram_data_left_the_window(store: WindowStore, clock: FakeClock,
                                                              metric: str) -> None:
    def imported(requests: int) -> LatencySketch:
        sketch = LatencySketch()
        import_explicit_histogram(sketch, [0.05, 0.1, 0.25], [0, requests, 0, 0])
        return sketch

    provider = MetricsProvider(store, clock)
    keys = [SeriesKey("shop", f"w{i}") for i in range(24)]  # some are always between periodic rebuilds
    for key in keys:
        store.add_sketch(key, imported(1), 0, [], T0 + 1.0)
    for key in keys:
        store.add_sketch(key, imported(2), 0, [], T0 + 6.0)
    outcomes: dict[str, int] = {}
    for t in np.arange(T0 + 10.0, T0 + 140.0, 5.0):
        clock.now = float(t)
        store.advance(clock.now)
        if clock.now < T0 + 75.0:
            continue  # both slices are still in the window
        for key in keys:
            try:
                read(provider, "shop", metric, f"workload={key.workload}")
                outcome = "value"
            except NoData:
                outcome = "NoData"
            except Exception as exc:
                outcome = type(exc).__name__
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert set(outcomes) == {"NoData"}, outcomes


@pytest.mark.parametrize("phase", [0.0, 0.3, 2.5, 4.7])
def test_latency_step_shows_in_the_served_p95_within_two_seconds(phase: float) -> None:
    """100 req/s of lognormal(80 ms), then lognormal(400 ms) from a step at any phase of a slice."""
    rng = np.random.default_rng(5)
    store = WindowStore()
    clock = FakeClock()
    provider = MetricsProvider(store, clock)
    step = T0 + 100.0 + phase
    key = SeriesKey("shop", "checkout")
    served: list[tuple[float, float]] = []
    t = T0
    while t < step + 2.5:
        store.add_durations(key, lognormal(rng, 10, 0.080 if t < step else 0.400), 0, [], t)
        t = round(t + 0.1, 6)
        clock.now = t
        served.append((t, read(provider, "shop", "latency_p95_seconds", "workload=checkout").value))
    baseline = [p for now, p in served if now <= step][-1]
    after = next(p for now, p in served if now >= step + 2.0)
    assert after >= 1.1 * baseline, (baseline, after)


def test_trace_id_of_a_single_batch_is_the_request_at_the_p95() -> None:
    far = []
    for seed in range(20):
        durations = np.random.default_rng(seed).lognormal(math.log(0.08), 0.6, 500)
        spans = spans_of(durations)
        latency = {s.trace_id.hex(): (s.end_time_unix_nano - s.start_time_unix_nano) / 1e9 for s in spans}
        ingestor = OtlpIngestor(WindowStore())
        request = trace_request([({"service.name": "svc"}, spans)])
        ingestor.ingest_traces(request.SerializeToString(), False, T0)
        provider = MetricsProvider(ingestor.store, FakeClock(T0 + 5.0))
        reading = read(provider, "default", "latency_p95_seconds")
        error = abs(latency[reading.labels["trace_id"]] / reading.value - 1)
        if error > 0.05:
            far.append((seed, round(error, 3)))
    assert far == []


def test_cached_nodata_does_not_accumulate_tracebacks(provider: MetricsProvider) -> None:
    depths = []
    for _ in range(5):
        try:
            read(provider, "shop", "latency_p95_seconds", "workload=x")
        except NoData as exc:
            tb, depth = exc.__traceback__, 0
            while tb is not None:
                depth += 1
                tb = tb.tb_next
            depths.append(depth)
    assert len(set(depths)) == 1, depths
