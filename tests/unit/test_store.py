"""Tests for adapter.store: the sliding window driven by an injected clock (every call takes ``now``).

Time model (adapter/store.py docstring): slice ``i`` covers ``[i*5, (i+1)*5)``; the window is the last 12
*closed* slices, moved when a slice closes (``store.epoch`` is the last closed slice). ``view(series)`` is
the closed window; ``view(series, now)`` adds the open slice so far (what the API serves).
"""

from __future__ import annotations

import gc
import math
import tracemalloc
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.model import Exemplar, SeriesKey
from adapter.sketch import DEFAULT_RELATIVE_ACCURACY, LatencySketch, import_explicit_histogram
from adapter.store import CANDIDATES_PER_SLICE, Series, StoreSettings, WindowStore, WindowView

ALPHA = DEFAULT_RELATIVE_ACCURACY
KEY = SeriesKey("shop", "checkout")
T0 = 1000.0  # a slice boundary (slice 200)


def lognormal(rng: np.random.Generator, n: int, median: float = 0.080) -> np.ndarray:
    return rng.lognormal(math.log(median), 0.6, n)


def batch_candidates(values: np.ndarray, first_id: int) -> list[Exemplar]:
    """What the OTLP ingestor offers per batch: the requests at the batch's p50/p90/p95/p99/max."""
    order = np.argsort(values)
    n = values.shape[0]
    picks = sorted({int(order[min(n - 1, int(q * (n - 1) + 0.5))]) for q in (0.5, 0.9, 0.95, 0.99, 1.0)})
    return [Exemplar(float(values[i]), f"{first_id + i:032x}") for i in picks]


def view_now(store: WindowStore, now: float, series: list[Series] | None = None) -> WindowView | None:
    """Advance to ``now`` and sweep, as the service's ticker does, then view the window."""
    store.advance(now)
    store.sync_all()
    return store.view(store.all_series() if series is None else series)


def bins_of(sketch: LatencySketch) -> dict[int, float]:
    store = sketch.store
    return {store.offset + int(i): float(store.bins[i]) for i in np.nonzero(store.bins)[0]}


def sketch_of(values: np.ndarray) -> LatencySketch:
    s = LatencySketch()
    s.add_many(values)
    return s


# --- settings --------------------------------------------------------------------------------------------


def test_settings_validation() -> None:
    assert StoreSettings().slices == 12
    assert StoreSettings(window_seconds=120, slice_seconds=10).slices == 12
    with pytest.raises(ValueError, match="whole number of slices"):
        StoreSettings(window_seconds=62, slice_seconds=5)
    with pytest.raises(ValueError, match="positive"):
        StoreSettings(window_seconds=60, slice_seconds=0)
    with pytest.raises(ValueError, match="positive"):
        StoreSettings(window_seconds=-60, slice_seconds=5)


# --- epochs ----------------------------------------------------------------------------------------------


def test_values_appear_only_after_their_slice_closes() -> None:
    store = WindowStore()
    rng = np.random.default_rng(1)
    assert store.add_durations(KEY, lognormal(rng, 100), 0, [], T0 + 1.0)
    assert view_now(store, T0 + 4.999) is None  # slice 200 still open
    assert store.epoch == 199

    view = view_now(store, T0 + 5.0)  # slice 200 closed
    assert view is not None and view.count == 100
    assert store.epoch == 200

    store.add_durations(KEY, lognormal(rng, 30), 0, [], T0 + 6.0)
    view = view_now(store, T0 + 9.9)
    assert view is not None and view.count == 100  # the open slice is not served
    view = view_now(store, T0 + 10.0)
    assert view is not None and view.count == 130


def test_advance_reports_whether_the_epoch_moved() -> None:
    store = WindowStore()
    assert store.advance(T0 + 0.1) is True
    assert store.advance(T0 + 4.9) is False
    assert store.advance(T0 + 5.0) is True
    assert store.advance(T0 + 2.0) is False  # backwards: no change
    assert store.epoch == 200


def test_window_slides_old_data_leaves_and_idle_series_go() -> None:
    store = WindowStore()
    rng = np.random.default_rng(2)
    store.add_durations(KEY, lognormal(rng, 100), 0, [], T0 + 1.0)  # slice 200
    store.add_durations(KEY, lognormal(rng, 50), 0, [], T0 + 6.0)  # slice 201

    # Slice 200 is in the window while the epoch is 200..211, i.e. until 60 s after it closed.
    view = view_now(store, T0 + 64.99)
    assert view is not None and view.count == 150
    view = view_now(store, T0 + 65.0)
    assert view is not None and view.count == 50
    assert len(store) == 1

    assert view_now(store, T0 + 70.0) is None  # the window is empty ...
    assert len(store) == 0  # ... and the idle series is gone
    assert store.namespaces() == {}


def test_clock_jump_forward_past_the_window_empties_it() -> None:
    store = WindowStore()
    store.add_durations(KEY, np.full(10, 0.1), 0, [], T0 + 1.0)
    assert view_now(store, T0 + 5.0) is not None
    assert view_now(store, T0 + 3600.0) is None
    assert len(store) == 0


# --- latency step ----------------------------------------------------------------------------------------


def run_traffic(step_at: float, until: float) -> list[tuple[float, float]]:
    """100 req/s in 0.5 s batches; lognormal(80 ms) until ``step_at``, then lognormal(400 ms).

    Returns ``(now, served p95)`` after every batch.
    """
    rng = np.random.default_rng(5)
    store = WindowStore()
    served = []
    t = T0
    while t < until:
        median = 0.080 if t < step_at else 0.400
        store.add_durations(KEY, lognormal(rng, 50, median), 0, [], t)
        t += 0.5
        view = view_now(store, t)
        if view is not None:
            p95 = view.sketch.quantile(0.95)
            assert p95 is not None
            served.append((t, p95))
    return served


def test_latency_step_moves_the_p95_at_the_next_slice_boundary() -> None:
    step_at = T0 + 100.0  # a slice boundary; a full window of 80 ms traffic before it
    served = run_traffic(step_at, step_at + 30.0)
    baseline = next(p for t, p in served if t >= step_at)  # the window of fast slices closed at the step
    assert 0.15 < baseline < 0.30  # p95 of lognormal(80 ms, 0.6) is ~215 ms
    # Nothing changes while the first slow slice is open (answers only change when a slice closes) ...
    assert all(p == baseline for t, p in served if step_at <= t < step_at + 5.0)
    # ... and the p95 moves as soon as it closes: one slice after the step.
    at_boundary = next(p for t, p in served if t >= step_at + 5.0)
    assert at_boundary >= 1.3 * baseline


@pytest.mark.parametrize("offset", [0.5, 2.5, 4.5])
def test_latency_step_inside_a_slice_shows_once_a_whole_slow_slice_closed(offset: float) -> None:
    step_at = T0 + 100.0 + offset
    served = run_traffic(step_at, step_at + 30.0)
    baseline = [p for t, p in served if t <= step_at][-1]
    first_full_slow_slice_closed = (math.floor(step_at / 5) + 2) * 5
    assert first_full_slow_slice_closed - step_at <= 10.0
    p = next(p for t, p in served if t >= first_full_slow_slice_closed)
    assert p >= 1.3 * baseline


# --- incremental window == rebuild -----------------------------------------------------------------------


RawLog = dict[SeriesKey, dict[int, list[np.ndarray]]]


def check_windows_match_raw_data(store: WindowStore, raw: RawLog) -> None:
    """Every series' window equals a sketch rebuilt from the raw values of the slices in the window."""
    assert store.epoch is not None
    store.sync_all()
    n = store.settings.slices
    first, last = store.epoch - n + 1, store.epoch
    expected_live = set()
    for key, by_slice in raw.items():
        if any(first <= sid <= last for sid in by_slice):
            expected_live.add(key)
    by_key = {s.key: s for s in store.all_series()}
    for key in expected_live:
        series = by_key[key]
        values = np.concatenate([v for sid, vs in raw[key].items() if first <= sid <= last for v in vs])
        reference = sketch_of(values)
        assert bins_of(series.window) == bins_of(reference), key
        assert series.window.zero_count == reference.zero_count
        assert series.window_count == values.shape[0]
        view = store.view([series])
        assert view is not None and view.count == values.shape[0]
        assert view.sketch.quantile(0.95) == reference.quantile(0.95)
    for key, series in by_key.items():
        if key not in expected_live:
            assert store.view([series]) is None


def test_incremental_window_equals_rebuild_after_many_rolls() -> None:
    rng = np.random.default_rng(7)
    store = WindowStore()
    keys = [SeriesKey("shop", f"w{i}", r) for i in range(4) for r in ("", "cart_id")]
    raw: dict[SeriesKey, dict[int, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    t = T0
    for _ in range(400):
        gaps = [0.3, 1.0, 2.5, 5.0, 7.0, 13.0, 40.0, 75.0]  # within a slice, a few slices, past the window
        t += float(rng.choice(gaps, p=[.3, .2, .15, .15, .08, .06, .04, .02]))
        for key in keys:
            if rng.random() < 0.6:
                n = int(rng.integers(1, 40))
                values = np.concatenate([lognormal(rng, n, float(rng.choice([0.01, 0.08, 1.0]))),
                                         np.zeros(int(rng.integers(0, 2)))])
                assert store.add_durations(key, values, 0, [], t)
                raw[key][store.slice_id(t)].append(values)
        store.advance(t)
        if rng.random() < 0.3:  # between checks, series catch up lazily over several epochs
            check_windows_match_raw_data(store, raw)
    check_windows_match_raw_data(store, raw)
    assert store.rolls > 100


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.floats(min_value=0.0, max_value=70.0), st.integers(1, 30)),
                min_size=1, max_size=60))
def test_incremental_window_equals_rebuild_property(steps: list[tuple[float, int]]) -> None:
    rng = np.random.default_rng(len(steps))
    store = WindowStore()
    raw: dict[SeriesKey, dict[int, list[np.ndarray]]] = defaultdict(lambda: defaultdict(list))
    t = T0
    for dt, n in steps:
        t += dt
        values = lognormal(rng, n)
        store.add_durations(KEY, values, 0, [], t)
        raw[KEY][store.slice_id(t)].append(values)
        store.advance(t)
        check_windows_match_raw_data(store, raw)


# --- caps ------------------------------------------------------------------------------------------------


def test_series_caps_drop_and_count_without_raising() -> None:
    store = WindowStore(StoreSettings(max_series=3, max_series_per_namespace=2))
    one = np.full(5, 0.1)
    assert store.add_durations(SeriesKey("a", "w1"), one, 0, [], T0)
    assert store.add_durations(SeriesKey("a", "w2"), one, 0, [], T0)
    assert not store.add_durations(SeriesKey("a", "w3"), one, 0, [], T0)  # namespace cap
    assert store.add_durations(SeriesKey("b", "w1"), one, 0, [], T0)
    assert not store.add_durations(SeriesKey("c", "w1"), one, 0, [], T0)  # total cap
    sketch = sketch_of(one)
    assert not store.add_sketch(SeriesKey("c", "w2"), sketch, 0, [], T0)  # the histogram path too
    assert store.dropped == {"series_cap": 2, "namespace_series_cap": 1}
    assert len(store) == 3
    assert store.namespaces() == {"a": 2, "b": 1}
    # Series that exist keep accepting data.
    assert store.add_durations(SeriesKey("a", "w1"), one, 0, [], T0 + 1)
    view = view_now(store, T0 + 5.0, store.series_in("a"))
    assert view is not None and view.count == 15
    assert store.series_in("c") == []


def test_caps_free_up_when_series_expire() -> None:
    store = WindowStore(StoreSettings(max_series=1, max_series_per_namespace=1))
    assert store.add_durations(SeriesKey("a", "old"), np.full(3, 0.1), 0, [], T0)
    assert not store.add_durations(SeriesKey("a", "new"), np.full(3, 0.1), 0, [], T0 + 1)
    store.advance(T0 + 70.0)
    assert len(store) == 1  # the old series is swept later (or when a cap needs the room) ...
    assert store.add_durations(SeriesKey("a", "new"), np.full(3, 0.1), 0, [], T0 + 71)  # ... like now
    assert [s.key.workload for s in store.all_series()] == ["new"]


# --- clock steps backwards -------------------------------------------------------------------------------


@pytest.mark.parametrize("back", [1.0, 7.0, 3600.0])
def test_clock_stepping_backwards_keeps_data(back: float) -> None:
    store = WindowStore()
    store.add_durations(KEY, np.full(10, 0.1), 0, [], T0 + 6.0)  # slice 201
    assert store.add_durations(KEY, np.full(20, 0.2), 2, [], T0 + 6.0 - back)  # the clock stepped back
    assert store.epoch == 200  # the epoch never moves backwards
    view = view_now(store, T0 + 10.0)
    assert view is not None
    assert view.count == 30 and view.errors == 2
    assert view.sketch.quantile(1.0) == pytest.approx(0.2, rel=1.01 * ALPHA)


def test_clock_stepping_backwards_after_data_is_in_the_window() -> None:
    store = WindowStore()
    store.add_durations(KEY, np.full(10, 0.1), 0, [], T0 + 1.0)
    store.advance(T0 + 30.0)
    store.add_durations(KEY, np.full(5, 0.1), 0, [], T0 + 2.0)  # 28 s back in time
    view = store.view(store.all_series())
    assert view is not None and view.count == 10  # served value unchanged ...
    view = view_now(store, T0 + 35.0)
    assert view is not None and view.count == 15  # ... and the late batch shows when the open slice closes


# --- several routes --------------------------------------------------------------------------------------


def test_routes_merge_into_the_p95_of_the_union_not_an_average() -> None:
    rng = np.random.default_rng(11)
    store = WindowStore()
    fast_key = SeriesKey("shop", "checkout", "health")
    slow_key = SeriesKey("shop", "checkout", "cart_id")
    fast_all, slow_all = [], []
    for i in range(50):
        fast, slow = lognormal(rng, 400, 0.020), lognormal(rng, 40, 0.400)
        store.add_durations(fast_key, fast, 0, [], T0 + i)
        store.add_durations(slow_key, slow, 0, [], T0 + i)
        fast_all.append(fast)
        slow_all.append(slow)
    union = np.concatenate(fast_all + slow_all)
    store.advance(T0 + 50.0)
    views = {s.key: store.view([s]) for s in store.all_series()}
    view = store.view(store.series_in("shop"))
    assert view is not None
    p95 = view.sketch.quantile(0.95)
    exact = float(np.percentile(union, 95))
    assert p95 is not None and abs(p95 - exact) / exact <= 0.01
    assert view.count == union.shape[0]
    per_route = [v.sketch.quantile(0.95) for v in views.values() if v is not None]
    average = float(np.mean(per_route))  # type: ignore[arg-type]
    assert abs(average - exact) / exact > 0.2  # the trap the merge avoids
    assert view.labels == {"workload": "checkout"}  # only the labels both routes share


def test_view_of_series_without_data_is_none() -> None:
    store = WindowStore()
    assert store.view([]) is None  # before any advance, and with nothing
    store.add_durations(KEY, np.full(3, 0.1), 0, [], T0)
    store.advance(T0 + 1.0)
    assert store.view(store.all_series()) is None  # only the open slice holds data


# --- counters, seconds, errors ---------------------------------------------------------------------------


def test_view_seconds_counts_errors_and_newest_error_trace() -> None:
    store = WindowStore()
    for i in range(4):
        store.add_durations(KEY, np.full(100, 0.05), i, [], T0 + 5 * i + 1,
                            error_trace_id=f"{i + 1:032x}" if i else "")
    view = view_now(store, T0 + 20.0)
    assert view is not None
    assert view.count == 400 and view.errors == 0 + 1 + 2 + 3
    assert view.seconds == 19.0  # from its first request (T0 + 1) to the closed window's end, not 60 s
    assert view.error_trace_id == f"{4:032x}"  # the newest slice's failing request
    for i in range(4, 40):
        store.add_durations(KEY, np.full(100, 0.05), 0, [], T0 + 5 * i + 1)
    view = view_now(store, T0 + 200.0)
    assert view is not None
    assert view.seconds == 60.0 and view.count == 1200
    assert view.error_trace_id == ""  # the failing requests have left the window


# --- exemplars -------------------------------------------------------------------------------------------


def test_exemplar_near_p95_is_a_real_request_close_to_it() -> None:
    rng = np.random.default_rng(13)
    store = WindowStore()
    sent: dict[str, float] = {}
    n = 0
    for i in range(130):  # 65 s of 100 req/s in 0.5 s batches
        values = lognormal(rng, 50)
        candidates = batch_candidates(values, n)
        sent.update({c.trace_id: c.seconds for c in candidates})
        n += 50
        store.add_durations(KEY, values, 0, candidates, T0 + 0.5 * i)
    view = view_now(store, T0 + 65.0)
    assert view is not None
    p95 = view.sketch.quantile(0.95)
    assert p95 is not None
    exemplar = view.exemplar_near(p95)
    assert exemplar is not None
    assert sent[exemplar.trace_id] == exemplar.seconds  # a request we really sent, with its latency
    assert abs(exemplar.seconds - p95) / p95 <= 0.03
    # Bounded: at most CANDIDATES_PER_SLICE a slice however many batches arrive.
    assert len(view.candidates) <= store.settings.slices * CANDIDATES_PER_SLICE


def test_exemplar_near_prefers_at_or_above_and_handles_none() -> None:
    empty = WindowView(LatencySketch(), 0, 0, 5.0, (), "", {})
    assert empty.exemplar_near(0.1) is None

    def near(value: float, *seconds: float) -> float:
        cands = tuple(Exemplar(s, f"{i:032x}") for i, s in enumerate(seconds))
        found = WindowView(LatencySketch(), len(cands), 0, 5.0, cands, "", {}).exemplar_near(value)
        assert found is not None
        return found.seconds

    # A request a sketch-error below the served value is the request at that rank: it wins.
    assert near(0.100, 0.090, 0.0995, 0.130) == 0.0995
    # Beyond that, a slower request is preferred to a faster one ("at least this slow") ...
    assert near(0.100, 0.090, 0.130) == 0.130
    assert near(0.100, 0.095, 0.101, 0.130) == 0.101
    # ... and with nothing at or above, the nearest one.
    assert near(0.200, 0.090, 0.130) == 0.130
    assert near(0.050, 0.090, 0.130) == 0.090


# --- memory ----------------------------------------------------------------------------------------------

BUDGET = 64 * 1024


def fill_full_window(store: WindowStore, keys: list[SeriesKey], pool: np.ndarray) -> float:
    """~100 req/s per series of lognormal(80 ms) for 65 s (1 s batches, each offering its p50..max
    requests as exemplar candidates, as the OTLP ingestor does); returns the final ``now``."""
    j = 0
    t = T0
    for second in range(65):
        t = T0 + second
        for key in keys:
            values = pool[j : j + 100]
            j = (j + 100) % (pool.shape[0] - 100)
            store.add_durations(key, values, 1, batch_candidates(values, j), t, error_trace_id="f" * 32)
    t += 1.0
    store.advance(t)
    return t


def test_memory_per_series_estimate_is_under_budget() -> None:
    store = WindowStore()
    keys = [SeriesKey(f"ns{i % 5}", f"w{i}") for i in range(20)]
    fill_full_window(store, keys, lognormal(np.random.default_rng(17), 200_000))
    assert len(store) == 20
    per_series = store.nbytes() / len(store)
    assert per_series < BUDGET, per_series


def test_measured_bytes_are_the_last_sweeps_figure() -> None:
    """``/metrics`` reads the size the per-slice sweep measured, not a sum over every slice per scrape."""
    store = WindowStore()
    keys = [SeriesKey("ns", f"w{i}") for i in range(10)]
    assert store.measured_bytes() == store.nbytes() == 0  # nothing swept yet: measured now
    t = fill_full_window(store, keys, lognormal(np.random.default_rng(5), 50_000))
    assert store.measured_bytes() == store.nbytes() > 0
    store.sync_all()
    swept = store.measured_bytes()
    assert swept == store.nbytes()
    more = [SeriesKey("ns", f"x{i}") for i in range(5)]
    for key in more:
        store.add_durations(key, lognormal(np.random.default_rng(6), 100), 0, [], t)
    assert store.nbytes() > swept and store.measured_bytes() == swept  # until the next sweep
    store.sync_all()
    assert store.measured_bytes() == store.nbytes() > swept


@pytest.fixture(scope="module")
def measured_200_series() -> tuple[float, float]:
    """(bytes per series allocated as measured by tracemalloc, ``store.nbytes()`` per series)."""
    keys = [SeriesKey(f"ns{i % 10}", f"w{i}") for i in range(200)]
    pool = lognormal(np.random.default_rng(19), 200_000)  # allocated before measuring
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = WindowStore()
        fill_full_window(store, keys, pool)
        gc.collect()
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(store) == 200
    return used / len(store), store.nbytes() / len(store)


def test_memory_per_series_measured_with_tracemalloc(
    measured_200_series: tuple[float, float], record_property: Callable[[str, object], None]
) -> None:
    measured, estimate = measured_200_series
    record_property("bytes_per_series_tracemalloc", round(measured))
    record_property("bytes_per_series_estimate", round(estimate))
    print(f"\nmemory per series (200 series, full window): tracemalloc {measured:.0f} B, "
          f"store.nbytes() {estimate:.0f} B")
    assert measured < BUDGET, measured


def test_memory_estimate_is_close_to_what_is_allocated(measured_200_series: tuple[float, float]) -> None:
    measured, estimate = measured_200_series
    assert 0.75 <= estimate / measured <= 1.25, (estimate, measured)


# --- imported histograms, trace ids ---------------------------------------------------------------------


def test_window_is_empty_after_imported_histograms_leave_it() -> None:
    def imported(requests: int) -> LatencySketch:
        sketch = LatencySketch()
        import_explicit_histogram(sketch, [0.05, 0.1, 0.25], [0, requests, 0, 0])
        return sketch

    store = WindowStore()
    # Many series: which epoch rebuilds a series' window depends on hash(key); with 24 of them some are
    # always caught between rebuilds, whatever PYTHONHASHSEED is.
    keys = [SeriesKey("shop", f"w{i}") for i in range(24)]
    for key in keys:
        store.add_sketch(key, imported(1), 0, [], T0 + 1.0)  # slice 200
    for key in keys:
        store.add_sketch(key, imported(2), 0, [], T0 + 6.0)  # slice 201
    phantom, kept = [], []
    for t in np.arange(T0 + 10.0, T0 + 140.0, 5.0):
        store.advance(float(t))
        store.sync_all()
        if t >= T0 + 70.0:  # both slices have left the window (slice 201 leaves at epoch 213)
            phantom += [s.key.workload for s in store.all_series() if store.view([s]) is not None]
            kept.append(len(store))
    assert phantom == []
    assert set(kept) == {0}  # idle series are removed by the next sweep, not at their next rebuild


def test_add_sketch_counts_whole_requests() -> None:
    sketch = LatencySketch()
    added = import_explicit_histogram(sketch, [0.05, 0.1, 0.25], [0, 7, 0, 0])
    store = WindowStore()
    store.add_sketch(KEY, sketch, 0, [], T0, requests=added)
    view = view_now(store, T0 + 5.0)
    assert view is not None and view.count == 7  # exactly, whatever the spread's float rounding




@pytest.mark.parametrize("last_byte", [
    "00", "01", "ff"])
def test_trace_ids_survive_the_slice_closing(last_byte: str) -> None:
    """Candidates are packed when a slice closes; the trace id read back must be the one that came in."""
    trace_ids = [f"{i:030x}{last_byte}" for i in (1, 2, 3)]
    store = WindowStore()
    store.add_durations(KEY, np.array([0.1, 0.2, 0.3]), 0,
                        [Exemplar(s, t) for s, t in zip((0.1, 0.2, 0.3), trace_ids, strict=True)], T0)
    open_view = store.view(store.all_series(), now=T0 + 1.0)
    assert open_view is not None
    assert sorted(c.trace_id for c in open_view.exemplars()) == trace_ids
    view = view_now(store, T0 + 5.0)
    assert view is not None
    assert sorted(c.trace_id for c in view.exemplars()) == trace_ids
    assert sorted(c.seconds for c in view.exemplars()) == [0.1, 0.2, 0.3]


# --- the open slice ----------------------------------------------------------------------------------------


def test_view_with_now_adds_the_open_slice_so_far() -> None:
    store = WindowStore()
    store.add_durations(KEY, np.full(100, 0.1), 0, [], T0 + 1.0)  # slice 200, closes at T0 + 5
    store.add_durations(KEY, np.full(30, 0.4), 3, [Exemplar(0.4, "ab" * 16)], T0 + 6.0)  # slice 201 (open)
    store.advance(T0 + 8.0)
    closed = store.view(store.all_series())
    assert closed is not None
    assert (closed.count, closed.errors, closed.seconds) == (100, 0, 4.0)  # first request at T0 + 1
    live = store.view(store.all_series(), now=T0 + 8.0)
    assert live is not None
    assert (live.count, live.errors) == (130, 3)
    assert live.seconds == pytest.approx(7.0)  # from the first request (T0 + 1) to now (T0 + 8)
    assert live.sketch.quantile(1.0) == pytest.approx(0.4, rel=1.01 * ALPHA)
    assert "ab" * 16 in {c.trace_id for c in live.exemplars()}
    assert closed.sketch.quantile(1.0) == pytest.approx(0.1, rel=1.01 * ALPHA)  # the closed view is untouched


def test_view_with_now_of_a_series_that_only_has_open_data() -> None:
    store = WindowStore()
    store.advance(T0)
    store.add_durations(KEY, np.full(10, 0.2), 0, [], T0 + 2.0)
    assert store.view(store.all_series()) is None
    live = store.view(store.all_series(), now=T0 + 2.5)
    assert live is not None and live.count == 10


def test_view_candidates_are_every_slice_candidate_joined_when_read() -> None:
    """The view joins its slices' candidates lazily; what it yields is exactly what the slices hold."""
    rng = np.random.default_rng(5)
    store = WindowStore()
    sent: dict[str, float] = {}
    for i in range(30):
        values = lognormal(rng, 40)
        candidates = batch_candidates(values, 40 * i)
        sent.update({c.trace_id: c.seconds for c in candidates})
        store.add_durations(KEY if i % 2 else SeriesKey("shop", "checkout", "/pay"), values, 0, candidates,
                            T0 + 0.5 * i)
    view = store.view(store.series_of("shop", "checkout"), now=T0 + 15.2)
    assert view is not None
    counted = len(view.candidates)
    exemplars = view.exemplars()
    assert counted == len(exemplars) > 0
    assert all(sent[e.trace_id] == e.seconds for e in exemplars)  # every one a request really sent
    assert len({e.trace_id for e in exemplars}) == len(exemplars)


def test_views_follow_the_window_as_it_moves_though_closed_candidates_are_kept() -> None:
    """A series keeps its closed slices' candidates joined until the window moves: every view, before
    and after a boundary, holds exactly the candidates of the slices in its window."""
    rng = np.random.default_rng(8)
    store = WindowStore(StoreSettings(window_seconds=15, slice_seconds=5))
    routes = [KEY, SeriesKey("shop", "checkout", "/pay")]
    slice_of: dict[str, int] = {}
    for step in range(40):  # 0.5 s apart: 20 s of data over 5 slices, two routes
        now = T0 + 0.5 * step
        values = lognormal(rng, 30)
        candidates = batch_candidates(values, 100 * step)
        slice_of.update({c.trace_id: store.slice_id(now) for c in candidates})
        store.add_durations(routes[step % 2], values, 1 if step % 7 == 0 else 0, candidates, now,
                            error_trace_id=f"{step:032x}" if step % 7 == 0 else "")
        if step % 3 == 0:
            view = store.view(store.series_of("shop", "checkout"), now=now)
            assert view is not None
            open_id = store.slice_id(now)
            window = range(open_id - store.settings.slices, open_id + 1)  # closed window + open slice
            seen = {e.trace_id for e in view.exemplars()}
            for trace_id in seen:
                assert slice_of[trace_id] in window, (step, trace_id)
            # everything kept in the window's slices is in the view, nothing else
            kept = {bytes(t).hex() for s in store.series_of("shop", "checkout")
                    for sl in s.slices_in(window.start, window.stop - 1) for t in sl.candidates["trace_id"]}
            assert seen == kept, step
            errors = {i: store.slice_id(T0 + 0.5 * i) for i in range(0, step + 1, 7)}
            newest = max((sid for sid in errors.values() if sid in window), default=None)
            expected = {f"{i:032x}" for i, sid in errors.items() if sid == newest} or {""}
            assert view.error_trace_id in expected, step  # an error of the newest slice with errors


def test_view_at_is_shared_within_a_tick_and_rebuilt_for_the_next() -> None:
    store = WindowStore()
    rng = np.random.default_rng(6)
    store.add_durations(KEY, lognormal(rng, 100), 0, [], T0 + 1)
    series = store.series_of(KEY.namespace, KEY.workload)
    first = store.view_at(series, T0 + 2)
    assert first is not None and first.count == 100
    store.add_durations(KEY, lognormal(rng, 50), 0, [], T0 + 2.5)
    assert store.view_at(series, T0 + 2) is first  # the same tick: the same view, the same data
    later = store.view_at(series, T0 + 3)
    assert later is not None and later is not first and later.count == 150
    fresh = store.view(series, now=T0 + 3)
    assert fresh is not None and fresh.count == later.count
    assert fresh.sketch.quantile(0.95) == later.sketch.quantile(0.95)
