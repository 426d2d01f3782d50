"""``latency_adapter_p95_exemplar_info``: one series per workload, rotated at most once per interval,
within a budget of new series per rolling hour, dropped one interval after its data went away.

The rule is driven with a simulated clock (``now`` is an argument): 500 workloads whose p95 trace id
changes every 5 s slice for an hour must never export more distinct series than the budget and the
stated worst case, ``min(N * ceil(3600 / I), B)``.
"""

from __future__ import annotations

import math
import subprocess
from collections.abc import Iterator, Mapping

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapter.config import Settings
from adapter.exemplar_info import (
    ExemplarInfo,
    ExemplarInfoCollector,
    P95TraceIds,
    WorkloadKey,
    worst_case_series_per_hour,
)
from adapter.model import Exemplar, SeriesKey
from adapter.service import Service
from adapter.store import StoreSettings, WindowStore
from adapter.traces import TraceSettings
from tests.tooling import require_tool

T0 = 1_800_000_000.0
SLICE = 5.0
INFO = "latency_adapter_p95_exemplar_info"
A: WorkloadKey = ("shop", "checkout")
B: WorkloadKey = ("shop", "catalog")


def workloads(n: int) -> list[WorkloadKey]:
    return [(f"ns-{i % 10}", f"w-{i}") for i in range(n)]


def trace_id(i: int, step: int) -> str:
    """A different 32-hex-digit trace id for every workload and slice."""
    return f"{i:08x}{step:024x}"


class CountingMapping(Mapping[WorkloadKey, str | None]):
    """``current`` as the service passes it: the keys are free, every value read is counted."""

    def __init__(self, values: dict[WorkloadKey, str | None]) -> None:
        self._values = values
        self.reads = 0

    def __getitem__(self, key: WorkloadKey) -> str | None:
        self.reads += 1
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[WorkloadKey]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def exported(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(registry).decode()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def simulate(info: ExemplarInfo, keys: list[WorkloadKey], seconds: float,
             start: float = T0) -> tuple[set[tuple[str, str, str]], list[tuple[float, int]], list[int]]:
    """Every workload's p95 trace id changes every slice. Returns the distinct (namespace, workload,
    trace_id) series ever exported, (time, new series) per update, and the values read per update."""
    seen: set[tuple[str, str, str]] = set()
    created: list[tuple[float, int]] = []
    reads: list[int] = []
    for step in range(int(seconds / SLICE)):
        now = start + step * SLICE
        current = CountingMapping({key: trace_id(i, step) for i, key in enumerate(keys)})
        before = info.series_created
        info.update(now, current)
        created.append((now, info.series_created - before))
        reads.append(current.reads)
        series = info.series()
        assert len(series) <= len(keys)  # one series per workload at any moment
        seen.update((ns, wl, tid) for (ns, wl), tid in series.items())
    return seen, created, reads


def max_in_rolling_hour(created: list[tuple[float, int]]) -> int:
    best = total = 0
    first = 0
    for t, n in created:
        total += n
        while t - created[first][0] >= 3600:
            total -= created[first][1]
            first += 1
        best = max(best, total)
    return best


# ---------------------------------------------------------------------------------------------------------
# The rule.


def test_first_publication_is_immediate_and_counts_against_the_budget() -> None:
    info = ExemplarInfo(interval_seconds=60, series_per_hour=10)
    assert info.series() == {}
    info.update(T0, {A: "a" * 32, B: None})
    assert info.series() == {A: "a" * 32}  # B has no trace id yet: nothing to publish
    assert (info.series_created_last_hour, info.rotations, info.skipped_over_budget) == (1, 0, 0)
    info.update(T0 + 5, {A: "a" * 32, B: "b" * 32})
    assert info.series() == {A: "a" * 32, B: "b" * 32}
    assert info.series_created_last_hour == 2


def test_rotation_needs_the_interval_and_a_different_trace_id() -> None:
    info = ExemplarInfo(interval_seconds=60, series_per_hour=100)
    info.update(T0, {A: "a"})
    for t in np.arange(T0 + 5, T0 + 60, 5):
        info.update(float(t), {A: "b"})
        assert info.series() == {A: "a"}, t
    info.update(T0 + 60, {A: "b"})
    assert info.series() == {A: "b"}
    assert info.rotations == 1
    info.update(T0 + 120, {A: "b"})  # the interval passed but the trace id is the same: no new series
    assert (info.series(), info.rotations, info.series_created_last_hour) == ({A: "b"}, 1, 2)
    info.update(T0 + 125, {A: "c"})
    assert (info.series(), info.rotations) == ({A: "c"}, 2)


def test_an_hour_of_500_workloads_changing_every_slice_stays_within_the_budget() -> None:
    keys = workloads(500)
    info = ExemplarInfo(interval_seconds=60, series_per_hour=5000)
    seen, created, _ = simulate(info, keys, 3600)
    bound = worst_case_series_per_hour(500, 60, 5000)
    assert bound == min(500 * 60, 5000) == 5000
    assert len(seen) <= 5000 and len(seen) <= bound
    assert len(seen) == 5000  # the budget binds: the rest of the hour is refused and counted
    assert max_in_rolling_hour(created) == 5000
    assert info.skipped_over_budget > 0
    assert info.series_created_last_hour == 5000
    # Every workload still has exactly one series (the old one stays over budget).
    assert len(info.series()) == 500


def test_the_budget_holds_in_every_rolling_hour_and_comes_back_as_the_hour_rolls() -> None:
    keys = workloads(500)
    info = ExemplarInfo(interval_seconds=60, series_per_hour=5000)
    _, created, _ = simulate(info, keys, 2.5 * 3600)
    assert max_in_rolling_hour(created) == 5000
    # Creations resume after the first hour (the first 500 publications left the rolling hour).
    assert sum(n for t, n in created if t >= T0 + 3600) >= 5000


def test_without_budget_pressure_the_interval_alone_bounds_the_series() -> None:
    keys = workloads(500)
    info = ExemplarInfo(interval_seconds=60, series_per_hour=10**9)
    seen, created, _ = simulate(info, keys, 3600)
    bound = worst_case_series_per_hour(500, 60, 10**9)
    assert bound == 500 * math.ceil(3600 / 60) == 30_000
    assert len(seen) <= bound
    assert len(seen) >= 0.9 * bound  # the bound is nearly reached: it is the real worst case
    assert max_in_rolling_hour(created) <= bound
    # Per workload: publications at least the interval apart.
    changes: dict[WorkloadKey, list[float]] = {}
    info = ExemplarInfo(interval_seconds=60, series_per_hour=10**9)
    last: dict[WorkloadKey, str] = {}
    for step in range(720):
        now = T0 + step * SLICE
        info.update(now, {key: trace_id(i, step) for i, key in enumerate(keys[:50])})
        for key, tid in info.series().items():
            if last.get(key) != tid:
                changes.setdefault(key, []).append(now)
                last[key] = tid
    for key, times in changes.items():
        gaps = np.diff(times)
        assert gaps.size == 0 or gaps.min() >= 60, (key, gaps.min())
        assert len(times) <= math.ceil(3600 / 60)


@pytest.mark.parametrize(("interval", "budget"), [(60, 600), (30, 600), (300, 5000), (7, 1000), (1, 10**6)])
def test_the_stated_bound_holds_for_other_settings(interval: float, budget: int) -> None:
    keys = workloads(40)
    bound = worst_case_series_per_hour(len(keys), interval, budget)
    seen, _, _ = simulate(ExemplarInfo(interval_seconds=interval, series_per_hour=budget), keys, 3600)
    assert len(seen) <= bound
    _, created, _ = simulate(ExemplarInfo(interval_seconds=interval, series_per_hour=budget), keys, 2 * 3600)
    assert max_in_rolling_hour(created) <= bound


def test_a_tight_budget_is_used_up_then_skipped_rotations_are_counted_and_exported() -> None:
    keys = workloads(500)
    info = ExemplarInfo(interval_seconds=60, series_per_hour=600)
    registry = CollectorRegistry()
    registry.register(ExemplarInfoCollector(info))
    seen, created, reads = simulate(info, keys, 3600)
    assert len(seen) == 600 and info.series_created_last_hour == 600
    assert info.rotations == 100
    assert info.skipped_over_budget > 0
    # Over budget no trace id is even computed: the values read after the budget ran out are 0.
    exhausted = next(i for i, (t, _) in enumerate(created) if sum(n for u, n in created if u <= t) == 600)
    assert sum(reads[exhausted + 1:]) == 0
    got = exported(registry)
    assert got[f"{INFO}_skipped_total"] == [({}, float(info.skipped_over_budget))]
    assert got[f"{INFO}_rotations_total"] == [({}, 100.0)]
    assert got[f"{INFO}_series_budget"] == [({}, 600.0)]
    assert got[f"{INFO}_series_created_last_hour"] == [({}, 600.0)]
    assert len(got[INFO]) == 500


def test_a_workload_without_data_keeps_its_series_for_one_interval_then_is_dropped() -> None:
    info = ExemplarInfo(interval_seconds=60, series_per_hour=100)
    info.update(T0, {A: "a", B: "b"})
    info.update(T0 + 5, {A: "a", B: "b"})  # B's last data
    for t in np.arange(T0 + 10, T0 + 65, 5):
        info.update(float(t), {A: "a"})
        assert info.series() == {A: "a", B: "b"}, t  # kept for one interval after its last data
    created = info.series_created
    info.update(T0 + 65, {A: "a"})
    assert info.series() == {A: "a"}
    assert info.series_created == created  # dropping is not a new series
    info.update(T0 + 70, {A: "a", B: "b2"})  # it came back: published again, a new series
    assert info.series() == {A: "a", B: "b2"}
    assert info.series_created == created + 1


def test_a_workload_whose_trace_id_is_none_counts_as_without_data() -> None:
    info = ExemplarInfo(interval_seconds=60, series_per_hour=100)
    for t in np.arange(T0, T0 + 60, 5):  # last data at T0 + 55
        info.update(float(t), {A: "a"})
    for t in np.arange(T0 + 60, T0 + 115, 5):  # due, so its value is read: None, no data
        info.update(float(t), {A: None})
        assert info.series() == {A: "a"}, t
    info.update(T0 + 115, {A: None})  # one interval after its last data
    assert info.series() == {}


def test_values_are_read_only_when_needed() -> None:
    keys = workloads(120)
    info = ExemplarInfo(interval_seconds=60, series_per_hour=10**6)
    current = CountingMapping({k: "a" for k in keys})
    info.update(T0, current)
    assert current.reads == 120  # first publications: every value is needed
    current = CountingMapping({k: "b" for k in keys})
    info.update(T0 + 5, current)
    assert current.reads == 0  # nobody is due
    # All 120 become due in the same slice: at most ceil(120 * 5 / 60) = 10 are looked at per update,
    # least recently checked first, and every one is rotated within an interval.
    rotated_by: list[int] = []
    for step in range(2, 26):
        current = CountingMapping({k: "b" for k in keys})
        info.update(T0 + step * SLICE, current)
        assert current.reads <= 10
        rotated_by.append(info.rotations)
    assert rotated_by[-1] == 120
    assert info.rotations == 120


def test_a_workload_whose_trace_id_stays_does_not_starve_the_others() -> None:
    keys = workloads(24)
    stable, moving = keys[:12], keys[12:]
    info = ExemplarInfo(interval_seconds=60, series_per_hour=10**6)
    info.update(T0, {k: "a" for k in keys})
    for step in range(1, 40):
        info.update(T0 + step * SLICE, {**{k: "a" for k in stable}, **{k: f"m{step}" for k in moving}})
    series = info.series()
    assert all(series[k] == "a" for k in stable)
    assert all(series[k] != "a" for k in moving)


def test_the_workload_cap_leaves_additions_out() -> None:
    info = ExemplarInfo(interval_seconds=60, series_per_hour=100, max_workloads=2)
    info.update(T0, {A: "a", B: "b", ("shop", "cart"): "c"})
    assert len(info.series()) == 2 and info.left_out == 1


def test_bad_arguments_are_refused() -> None:
    for kwargs in ({"interval_seconds": 0}, {"series_per_hour": 0}, {"max_workloads": 0}):
        with pytest.raises(ValueError):
            ExemplarInfo(**kwargs)


# ---------------------------------------------------------------------------------------------------------
# The collector, the store reader and the service wiring.


def test_collector_exports_one_info_series_per_workload_and_passes_promtool() -> None:
    info = ExemplarInfo(interval_seconds=60, series_per_hour=5000)
    registry = CollectorRegistry()
    registry.register(ExemplarInfoCollector(info))
    info.update(T0, {A: "a" * 32, B: "b" * 32})
    info.update(T0 + 60, {A: "c" * 32, B: "b" * 32})
    got = exported(registry)
    assert sorted(got[INFO], key=lambda s: s[0]["workload"]) == [
        ({"namespace": "shop", "workload": "catalog", "trace_id": "b" * 32}, 1.0),
        ({"namespace": "shop", "workload": "checkout", "trace_id": "c" * 32}, 1.0)]
    assert got[f"{INFO}_rotations_total"] == [({}, 1.0)]
    assert got[f"{INFO}_skipped_total"] == [({}, 0.0)]
    assert got[f"{INFO}_series_budget"] == [({}, 5000.0)]
    text = generate_latest(registry)
    assert b"# TYPE latency_adapter_p95_exemplar_info gauge" in text
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert check.returncode == 0, (check.stdout + check.stderr).decode()
    assert check.stdout.strip() == b"" and check.stderr.strip() == b"", (check.stdout + check.stderr).decode()


def fill(store: WindowStore, key: SeriesKey, latencies: list[float], now: float) -> list[Exemplar]:
    candidates = [Exemplar(s, f"{abs(hash((key, s))) % 16**32:032x}") for s in latencies]
    store.add_durations(key, np.asarray(latencies), 0, candidates, now)
    return candidates


def test_p95_trace_ids_are_the_window_p95_request_per_workload_and_lazy() -> None:
    store = WindowStore(StoreSettings(window_seconds=60, slice_seconds=5))
    now = T0 + 1
    latencies = [i / 1000 for i in range(1, 17)]
    fill(store, SeriesKey("shop", "checkout", "cart"), latencies[:8], now)
    fill(store, SeriesKey("shop", "checkout", "pay"), latencies[8:], now)
    fill(store, SeriesKey("shop", "catalog"), [0.2] * 4, now)
    store.advance(T0 + 6)
    ids = P95TraceIds(store, T0 + 6)
    assert set(ids) == {A, B} and len(ids) == 2
    assert A in ids and ("shop", "nope") not in ids
    assert ids.computed == 0  # listing and membership compute nothing
    merged = store.view([s for s in store.all_series() if s.key.workload == "checkout"], now=T0 + 6)
    assert merged is not None
    p95 = merged.sketch.quantile(0.95)
    assert p95 is not None
    expected = merged.exemplar_near(p95)
    assert expected is not None
    assert ids[A] == expected.trace_id  # routes merged: the p95 of the union, not of one route
    assert ids[A] == ids[A] and ids.computed == 1  # computed once
    assert ids[B] is not None
    with pytest.raises(KeyError):
        ids[("shop", "nope")]


def test_update_steps_yield_after_every_trace_id_computed() -> None:
    """The service runs the update in turns of its loop: one window view per step at most."""
    store = WindowStore(StoreSettings(window_seconds=60, slice_seconds=5))
    for i in range(6):
        fill(store, SeriesKey("shop", f"w{i}"), [0.01 * (j + 1) for j in range(20)], T0 + 1)
    store.advance(T0 + 6)
    info = ExemplarInfo()
    ids = P95TraceIds(store, T0 + 6)
    steps = sum(1 for _ in info.update_steps(T0 + 6, ids))
    assert ids.computed == steps == 6
    assert set(info.series()) == {("shop", f"w{i}") for i in range(6)}


def test_the_service_publishes_only_when_switched_on() -> None:
    on = Service(Settings())
    assert on.exemplar_info is not None
    on.exemplar_info.update(T0, {A: "a" * 32})
    assert any(s[0]["trace_id"] == "a" * 32 for s in exported(on.telemetry.registry)[INFO])

    off = Service(Settings(traces=TraceSettings(exemplar_info=False)))
    assert off.exemplar_info is None
    assert not any(name.startswith(INFO) for name in exported(off.telemetry.registry))
