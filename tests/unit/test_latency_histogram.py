"""Tests for the per-workload latency histogram: the store's request counts (adapter.store) and the
collector that exports them with exemplars (adapter.latency_histogram).

Everything runs on an injected clock: the store takes ``now`` and the collector a :class:`FakeClock`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from adapter.latency_histogram import (
    BUCKET_LABELS,
    NAME,
    LatencyHistogramCollector,
    bucket_index,
    bucket_samples,
    choose_exemplars,
)
from adapter.model import Exemplar, SeriesKey
from adapter.sketch import DEFAULT_RELATIVE_ACCURACY, LatencySketch, import_explicit_histogram
from adapter.sources.otlp_ingest import OtlpIngestor
from adapter.store import (
    REQUEST_BUCKETS,
    REQUEST_COUNTS_RETENTION_SECONDS,
    StoreSettings,
    WindowStore,
    WindowView,
    WorkloadRequests,
)
from tests.clock import FakeClock
from tests.helpers_otlp import spans_of, trace_id, trace_request

T0 = 1000.0  # a slice boundary (slice 200 of 5 s)
BOUNDS = np.asarray(REQUEST_BUCKETS)
ALPHA = DEFAULT_RELATIVE_ACCURACY
GAMMA = (1 + ALPHA) / (1 - ALPHA)  # ratio of a sketch bin's upper to lower edge
RESOURCE = {"service.name": "checkout", "k8s.namespace.name": "shop"}


def exact_le(values: np.ndarray) -> np.ndarray:
    """Requests at or below each bound, counted one by one."""
    return np.searchsorted(np.sort(values), BOUNDS, side="right").astype(float)


def away_from_bounds(values: np.ndarray) -> np.ndarray:
    """``values`` without those in a bound's own sketch bin, ``(b, b * gamma]``: those are exact."""
    near = np.zeros(values.shape[0], dtype=bool)
    for b in REQUEST_BUCKETS:
        near |= (values > b) & (values <= b * GAMMA * 1.0001)
    return values[~near]


def sweep_to(store: WindowStore, now: float) -> None:
    """Advance and sweep, as the service's ticker does once per slice."""
    store.advance(now)
    store.sync_all()


def counts_of(store: WindowStore, namespace: str = "shop", workload: str = "checkout") -> WorkloadRequests:
    found = [c for c in store.request_counts() if (c.namespace, c.workload) == (namespace, workload)]
    assert len(found) == 1, store.request_counts()
    return found[0]


def ingest_spans(ingestor: OtlpIngestor, durations: np.ndarray, now: float, first: int = 0,
                 routes: tuple[str, ...] = ("/cart", "/checkout")) -> None:
    """The real span path: an OTLP body through the ingestor (which bins per batch into sketch keys)."""
    spans = []
    for r, route in enumerate(routes):
        part = durations[r :: len(routes)]
        spans += spans_of(part, first=first + r * len(durations), route=route)
    body = trace_request([(RESOURCE, spans)]).SerializeToString()
    result, _ = ingestor.ingest_traces(body, False, now)
    assert result.accepted == durations.shape[0], result


# --- bucket counting -------------------------------------------------------------------------------------


def test_bucket_labels_are_canonical_and_cover_5ms_to_10s() -> None:
    assert BUCKET_LABELS[-1] == "+Inf"
    assert list(BUCKET_LABELS[:-1]) == [floatToGoString(b) for b in REQUEST_BUCKETS]
    assert REQUEST_BUCKETS[0] == 0.005 and REQUEST_BUCKETS[-1] == 10.0
    assert list(REQUEST_BUCKETS) == sorted(REQUEST_BUCKETS) and len(REQUEST_BUCKETS) == 14


def test_spans_through_the_ingestor_are_counted_exactly_away_from_bounds() -> None:
    rng = np.random.default_rng(3)
    values = away_from_bounds(np.concatenate([rng.lognormal(math.log(0.08), 0.9, 4000),
                                              rng.uniform(0.5, 12.0, 300)]))
    ingestor = OtlpIngestor(WindowStore(), started_unix_nano=0)
    ingest_spans(ingestor, values[:2000], T0 + 1)
    ingest_spans(ingestor, values[2000:], T0 + 7, first=10_000)  # next slice: one closed, one open
    counts = counts_of(ingestor.store)
    assert counts.count == values.shape[0]
    assert np.array_equal(np.asarray(counts.le), exact_le(values))
    assert counts.seconds == pytest.approx(values.sum(), rel=ALPHA)


def test_add_durations_counts_exactly_away_from_bounds_and_sums_within_accuracy() -> None:
    rng = np.random.default_rng(4)
    values = away_from_bounds(rng.lognormal(math.log(0.2), 1.2, 5000))
    store = WindowStore()
    store.add_durations(SeriesKey("shop", "checkout", "a"), values[:3000], 0, [], T0 + 1)
    store.add_durations(SeriesKey("shop", "checkout", "b"), values[3000:], 0, [], T0 + 2)
    counts = counts_of(store)
    assert counts.count == values.shape[0]
    assert np.array_equal(np.asarray(counts.le), exact_le(values))
    assert counts.seconds == pytest.approx(values.sum(), rel=ALPHA)


def test_a_request_at_a_bound_is_in_its_bucket_and_one_bin_above_is_not() -> None:
    store = WindowStore()
    at = BOUNDS
    above = BOUNDS * (1 + 1.001 * (GAMMA - 1))  # past the bin that holds the bound
    store.add_durations(SeriesKey("shop", "checkout"), np.concatenate([at, above]), 0, [], T0 + 1)
    counts = counts_of(store)
    # bound i: the i + 1 requests at bounds 0..i and the i requests just above bounds 0..i-1
    assert list(counts.le) == [2.0 * i + 1 for i in range(len(REQUEST_BUCKETS))]
    assert counts.count == 2 * len(REQUEST_BUCKETS)


def test_the_documented_resolution_at_a_bound_is_at_most_one_bin() -> None:
    """A request within the bound's own bin (at most ~1 % above it) may count below the bound."""
    store = WindowStore()
    values = BOUNDS * (1 + 0.5 * (GAMMA - 1))
    store.add_durations(SeriesKey("shop", "checkout"), values, 0, [], T0 + 1)
    le = np.asarray(counts_of(store).le)
    exact = exact_le(values)
    assert np.all(le >= exact) and np.all(le - exact <= 1)


def test_zero_and_tiny_latencies_count_in_every_bucket() -> None:
    store = WindowStore()
    store.add_durations(SeriesKey("shop", "checkout"), np.array([0.0, 1e-320, 0.001]), 0, [], T0 + 1)
    counts = counts_of(store)
    assert list(counts.le) == [3.0] * len(REQUEST_BUCKETS) and counts.count == 3


def test_counts_are_cumulative_across_slices_window_expiry_and_series_removal() -> None:
    store = WindowStore()
    key = SeriesKey("shop", "checkout")
    store.add_durations(key, np.full(10, 0.02), 0, [], T0 + 1)
    store.add_durations(key, np.full(5, 0.2), 0, [], T0 + 6)
    seen = []
    for t in (T0 + 6.5, T0 + 11, T0 + 30, T0 + 64, T0 + 70, T0 + 200):
        sweep_to(store, t)
        counts = counts_of(store)
        seen.append((counts.count, counts.le))
    assert len(store) == 0  # the series left the store (nothing in its window) ...
    assert all(s == (15.0, seen[0][1]) for s in seen)  # ... its counts stay and never move
    assert seen[0][1][bucket_index(0.02)] == 10 and seen[0][1][bucket_index(0.2)] == 15


def test_a_clock_jump_past_the_window_still_counts_every_slice_once() -> None:
    store = WindowStore()
    key = SeriesKey("shop", "checkout")
    for i in range(4):
        store.add_durations(key, np.full(10, 0.05), 0, [], T0 + 5 * i + 1)
    sweep_to(store, T0 + 10_000)  # far beyond the window: every slice closes and expires in one step
    store.add_durations(key, np.full(3, 0.05), 0, [], T0 + 10_001)
    sweep_to(store, T0 + 20_000)
    assert counts_of(store).count == 43


def test_routes_and_namespaces_are_grouped_per_workload() -> None:
    store = WindowStore()
    store.add_durations(SeriesKey("shop", "checkout", "a"), np.full(4, 0.1), 0, [], T0 + 1)
    store.add_durations(SeriesKey("shop", "checkout", "b"), np.full(6, 0.1), 0, [], T0 + 1)
    store.add_durations(SeriesKey("other", "checkout", "a"), np.full(7, 0.1), 0, [], T0 + 1)
    assert counts_of(store, "shop").count == 10
    assert counts_of(store, "other").count == 7
    assert sorted(store.workloads()) == [("other", "checkout"), ("shop", "checkout")]


def test_imported_histograms_count_their_requests_with_bins_spread_inside_buckets() -> None:
    """An OTLP explicit histogram with the same bounds keeps its buckets up to the bin at each bound."""
    source = [12, 30, 80, 150, 90, 60, 40, 20, 8, 5, 2, 1, 0, 0, 1]  # len(bounds) + 1
    sketch = LatencySketch()
    added = import_explicit_histogram(sketch, REQUEST_BUCKETS, source, minimum=0.002, maximum=12.0)
    store = WindowStore()
    store.add_sketch(SeriesKey("shop", "checkout"), sketch, 0, [], T0 + 1, requests=added)
    counts = counts_of(store)
    assert counts.count == sum(source)
    expected = np.cumsum(source[:-1])
    # A source bucket (b, next] spread uniformly leaks into le=b at most the part of it inside the sketch
    # bin that holds b: a fraction b * (gamma - 1) / (next - b) of its count.
    upper = np.asarray([*REQUEST_BUCKETS[1:], 12.0])
    leak = BOUNDS * (GAMMA - 1) / (upper - BOUNDS) * np.asarray(source[1:])
    le = np.asarray(counts.le)
    assert np.all(le >= expected - 1e-6) and np.all(le - expected <= leak + 1e-6), (le - expected, leak)
    samples = bucket_samples(counts)
    assert samples[-1] == sum(source) and samples == sorted(samples)
    assert all(0 <= got - want <= math.ceil(extra)
               for got, want, extra in zip(samples, expected, leak, strict=False))


def test_request_counts_never_go_down_under_random_writes() -> None:
    rng = np.random.default_rng(8)
    store = WindowStore(StoreSettings(window_seconds=10, slice_seconds=2, refresh_seconds=1))
    keys = [SeriesKey("ns", f"w{i % 3}", f"r{i}") for i in range(5)]
    last: dict[tuple[str, str], tuple[float, tuple[float, ...]]] = {}
    sent: dict[tuple[str, str], int] = {}
    t = T0
    for _ in range(300):
        t += float(rng.exponential(1.5))
        key = keys[int(rng.integers(len(keys)))]
        n = int(rng.integers(0, 20))
        store.add_durations(key, rng.lognormal(math.log(0.1), 1.0, n), 0, [], t)
        sent[(key.namespace, key.workload)] = sent.get((key.namespace, key.workload), 0) + n
        for c in store.request_counts():
            before = last.get((c.namespace, c.workload))
            if before is not None:
                assert c.count >= before[0] and all(a >= b for a, b in zip(c.le, before[1], strict=True))
            last[(c.namespace, c.workload)] = (c.count, c.le)
    assert {k: v[0] for k, v in last.items()} == sent


# --- bounded: retention and cap ---------------------------------------------------------------------------


def test_a_workload_without_series_is_dropped_after_the_retention() -> None:
    store = WindowStore()
    gone, kept = SeriesKey("shop", "gone"), SeriesKey("shop", "kept")
    store.add_durations(gone, np.full(3, 0.1), 0, [], T0 + 1)
    left_at = T0 + 70  # the window (60 s) is empty: the series leaves the store
    sweep_to(store, left_at)
    assert len(store) == 0 and counts_of(store, workload="gone").count == 3
    store.add_durations(kept, np.full(2, 0.1), 0, [], left_at + REQUEST_COUNTS_RETENTION_SECONDS - 60)
    sweep_to(store, left_at + REQUEST_COUNTS_RETENTION_SECONDS - 10)
    assert {c.workload for c in store.request_counts()} == {"gone", "kept"}
    sweep_to(store, left_at + REQUEST_COUNTS_RETENTION_SECONDS + 10)
    assert {c.workload for c in store.request_counts()} == {"kept"}  # kept still has its series


def test_a_workload_that_comes_back_within_the_retention_keeps_counting() -> None:
    store = WindowStore()
    key = SeriesKey("shop", "checkout")
    store.add_durations(key, np.full(3, 0.1), 0, [], T0 + 1)
    sweep_to(store, T0 + 100)
    assert len(store) == 0
    store.add_durations(key, np.full(4, 0.1), 0, [], T0 + 1800)
    sweep_to(store, T0 + 100 + REQUEST_COUNTS_RETENTION_SECONDS + 10)  # the series itself left at ~1870
    assert counts_of(store).count == 7


def test_request_counts_are_capped_by_evicting_the_workload_gone_longest() -> None:
    store = WindowStore(StoreSettings(max_series=2, max_series_per_namespace=2))
    store.add_durations(SeriesKey("a", "first"), np.full(1, 0.1), 0, [], T0 + 1)
    store.add_durations(SeriesKey("a", "second"), np.full(1, 0.1), 0, [], T0 + 21)
    sweep_to(store, T0 + 75)  # first left, second still has data in its window
    sweep_to(store, T0 + 95)  # second left too
    assert len(store) == 0 and len(store.request_counts()) == 2
    store.add_durations(SeriesKey("a", "third"), np.full(1, 0.1), 0, [], T0 + 96)
    assert {c.workload for c in store.request_counts()} == {"second", "third"}
    assert store.request_counts_evicted == 1


# --- exemplars -------------------------------------------------------------------------------------------


def view_of(values: np.ndarray, candidates: list[Exemplar]) -> WindowView:
    sketch = LatencySketch()
    sketch.add_many(values)
    return WindowView(sketch=sketch, count=float(values.shape[0]), errors=0.0, seconds=60.0,
                      candidates=tuple(candidates), error_trace_id="", labels={})


def test_bucket_index_is_the_smallest_bound_at_or_above() -> None:
    assert bucket_index(0.0) == 0
    assert bucket_index(0.005) == 0
    assert bucket_index(0.0050001) == 1
    assert bucket_index(10.0) == len(REQUEST_BUCKETS) - 1
    assert bucket_index(10.5) == len(REQUEST_BUCKETS)  # +Inf


def test_exemplars_are_requests_near_p95_p99_and_p50_each_in_its_own_bucket() -> None:
    values = np.concatenate([np.full(900, 0.040), np.full(80, 0.300), np.full(20, 3.0)])
    p50, p95, p99 = (np.quantile(values, q) for q in (0.5, 0.95, 0.99))
    assert (p50, p95, p99) == (0.040, 0.300, 3.0)
    last = Exemplar(0.041, "a" * 32)  # the most recent request: fast, never the p95's exemplar
    candidates = [Exemplar(0.0405, "1" * 32), Exemplar(0.301, "2" * 32), Exemplar(0.9, "3" * 32),
                  Exemplar(3.01, "4" * 32), last]
    chosen = choose_exemplars(view_of(values, candidates))
    assert chosen == {bucket_index(0.301): candidates[1], bucket_index(3.01): candidates[3],
                      bucket_index(0.0405): candidates[0]}


def test_the_p95_exemplar_wins_a_bucket_it_shares() -> None:
    values = np.concatenate([np.full(940, 0.030), np.full(50, 0.2), np.full(10, 0.24)])
    candidates = [Exemplar(0.2, "1" * 32), Exemplar(0.24, "2" * 32), Exemplar(0.03, "3" * 32)]
    chosen = choose_exemplars(view_of(values, candidates))
    assert chosen[bucket_index(0.2)] == candidates[0]  # p95 (0.2) beats p99 (0.24) in le=0.25
    assert chosen[bucket_index(0.03)] == candidates[2]
    assert len(chosen) == 2


def test_no_candidates_no_exemplars() -> None:
    assert choose_exemplars(view_of(np.full(10, 0.1), [])) == {}


# --- the collector ---------------------------------------------------------------------------------------


def scrape(collector: LatencyHistogramCollector) -> list[Sample]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = openmetrics_latest(registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    family = families[NAME]
    assert family.type == "histogram" and family.unit == "seconds"
    return list(family.samples)


def bucket_exemplars(samples: list[Sample], workload: str) -> dict[str, Sample]:
    return {s.labels["le"]: s for s in samples
            if s.name.endswith("_bucket") and s.labels["workload"] == workload and s.exemplar}


def stamp(sample: Sample) -> float:
    """The exemplar's timestamp in seconds."""
    assert sample.exemplar is not None and sample.exemplar.timestamp is not None
    return float(sample.exemplar.timestamp)


def test_openmetrics_output_parses_with_counts_sum_and_exemplars_near_p95() -> None:
    rng = np.random.default_rng(5)
    values = np.concatenate([rng.lognormal(math.log(0.05), 0.4, 1840), rng.uniform(0.8, 1.6, 160)])
    ingestor = OtlpIngestor(WindowStore(), started_unix_nano=0)
    clock = FakeClock(T0 + 3)
    for i in range(4):  # four batches, in two slices: the open slice counts too
        ingest_spans(ingestor, values[i * 500 : (i + 1) * 500], T0 + 1 + 2 * i, first=i * 10_000)
    samples = scrape(LatencyHistogramCollector(ingestor.store, clock))
    by_name = {(s.name, s.labels.get("le")): s.value for s in samples}
    assert by_name[(NAME + "_count", None)] == 2000
    assert by_name[(NAME + "_bucket", "+Inf")] == 2000
    assert by_name[(NAME + "_sum", None)] == pytest.approx(values.sum(), rel=ALPHA)
    exemplars = bucket_exemplars(samples, "checkout")
    sent = {trace_id(n).hex(): float(v) for n, v in _numbered(values)}
    p95 = float(np.quantile(values, 0.95))
    assert exemplars, samples
    for le, sample in exemplars.items():
        assert sample.exemplar is not None
        tid = sample.exemplar.labels["trace_id"]
        assert sent[tid] == pytest.approx(sample.exemplar.value, abs=1e-9)  # the request's own latency
        assert sample.exemplar.value <= float(le) and stamp(sample) == clock.now
        assert sample.labels == {"le": le, "namespace": "shop", "workload": "checkout"}
    p95_bucket = BUCKET_LABELS[bucket_index(p95)]
    near_p95 = exemplars[p95_bucket].exemplar
    assert near_p95 is not None and near_p95.value >= p95 * (1 - 2 * ALPHA), (near_p95, p95)


def _numbered(values: np.ndarray) -> list[tuple[int, float]]:
    """(trace number, latency) as :func:`ingest_spans` numbers four batches of 500 over two routes."""
    out = []
    for i in range(4):
        batch = values[i * 500 : (i + 1) * 500]
        for r in range(2):
            for j, v in enumerate(batch[r::2]):
                out.append((i * 10_000 + r * 500 + j, float(v)))
    return out


def test_exemplar_timestamps_stay_while_shown_and_a_new_request_gets_a_later_one() -> None:
    store = WindowStore()
    key = SeriesKey("shop", "checkout")
    clock = FakeClock(T0 + 2)
    store.add_durations(key, np.full(100, 0.2), 0, [Exemplar(0.2, "1" * 32)], T0 + 1)
    collector = LatencyHistogramCollector(store, clock)
    first = bucket_exemplars(scrape(collector), "checkout")
    clock.advance(1.0)
    again = bucket_exemplars(scrape(collector), "checkout")
    assert first == again and stamp(first["0.25"]) == T0 + 2
    # the window moves on: the old request leaves, a slower one is the p95 now
    store.add_durations(key, np.full(1000, 0.6), 0, [Exemplar(0.6, "2" * 32)], T0 + 70)
    clock.now = T0 + 71
    moved = bucket_exemplars(scrape(collector), "checkout")
    assert "0.25" not in moved
    assert moved["0.75"].exemplar is not None
    assert moved["0.75"].exemplar.labels == {"trace_id": "2" * 32}
    assert stamp(moved["0.75"]) == T0 + 71


def test_exemplar_work_per_scrape_is_bounded_round_robin() -> None:
    store = WindowStore()
    clock = FakeClock(T0 + 2)
    for w in range(3):
        store.add_durations(SeriesKey("shop", f"w{w}"), np.full(10, 0.1), 0, [Exemplar(0.1, f"{w + 1:032x}")],
                            T0 + 1)
    collector = LatencyHistogramCollector(store, clock, max_exemplar_workloads=2)
    with_exemplars = []
    for _ in range(3):
        samples = scrape(collector)
        assert sum(1 for s in samples if s.name.endswith("_count")) == 3  # every histogram, every time
        with_exemplars.append({s.labels["workload"] for s in samples if s.exemplar})
    assert with_exemplars == [{"w0", "w1"}, {"w0", "w1", "w2"}, {"w0", "w1", "w2"}]


def test_text_format_has_the_histogram_without_exemplars() -> None:
    from prometheus_client.exposition import generate_latest

    store = WindowStore()
    store.add_durations(SeriesKey("shop", "checkout"), np.full(10, 0.1), 0, [Exemplar(0.1, "1" * 32)], T0 + 1)
    registry = CollectorRegistry()
    registry.register(LatencyHistogramCollector(store, FakeClock(T0 + 2)))
    text = generate_latest(registry).decode()
    assert f'{NAME}_bucket{{le="0.1",namespace="shop",workload="checkout"}} 10.0' in text
    assert f'{NAME}_count{{namespace="shop",workload="checkout"}} 10.0' in text
    assert "trace_id" not in text


def test_fractional_counts_are_rounded_without_passing_the_total() -> None:
    counts = WorkloadRequests("shop", "w", (0.4, 2.6, 9.7, *([10.2] * (len(REQUEST_BUCKETS) - 3))), 10.0, 1.0)
    assert bucket_samples(counts) == [0, 3, 10, *([10] * (len(REQUEST_BUCKETS) - 3)), 10]


def count_sample(samples: list[Sample], workload: str = "checkout") -> float:
    return next(s.value for s in samples if s.name == f"{NAME}_count" and s.labels["workload"] == workload)


async def test_the_first_scrape_after_nobody_scraped_shows_todays_counts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The ticker stops rebuilding while nobody scrapes; the scrape that comes back must not see the
    counts of the last rebuild (a Prometheus that restarted would read a rate that never happened)."""
    from adapter import latency_histogram
    from adapter.pacing import Pacer

    monotonic = [5000.0]
    monkeypatch.setattr(latency_histogram.time, "monotonic", lambda: monotonic[0])
    store = WindowStore()
    key = SeriesKey("shop", "checkout")
    clock = FakeClock(T0 + 2)
    store.add_durations(key, np.full(100, 0.2), 0, [], T0 + 1)
    collector = LatencyHistogramCollector(store, clock)
    await collector.refresh(clock(), Pacer())  # nobody has scraped yet: no work, the scrape builds
    assert count_sample(scrape(collector)) == 100
    store.add_durations(key, np.full(50, 0.2), 0, [], T0 + 2)
    clock.advance(5)
    await collector.refresh(clock(), Pacer())  # scraped just now: rebuilt by the ticker
    assert count_sample(scrape(collector)) == 150
    monotonic[0] += latency_histogram.SCRAPED_RECENTLY_SECONDS + 1  # nobody scrapes for a while
    store.add_durations(key, np.full(25, 0.2), 0, [], T0 + 7)
    clock.advance(5)
    await collector.refresh(clock(), Pacer())  # skipped
    assert count_sample(scrape(collector)) == 175
