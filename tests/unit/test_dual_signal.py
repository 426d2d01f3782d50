"""The policy-based metrics through the provider: what an HPA reads for each row of the policy table."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapter.errors import BadRequest, NoData
from adapter.model import Exemplar, Reading, SeriesKey
from adapter.policy_config import CanaryPair, PolicyConfig, WorkloadOverride
from adapter.provider import MetricsProvider
from adapter.selector import parse_selector
from adapter.store import WindowStore
from adapter.telemetry import Telemetry
from tests.clock import FakeClock

T0 = 1000.0


#: Defaults, a slower target for ``slow-*`` workloads, and one canary pair.
POLICY = PolicyConfig(workloads=(WorkloadOverride("*", "slow-*", (("latency_target_seconds", 1.0),)),),
                      canaries=(CanaryPair("shop", "checkout-canary", "checkout"),))




@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def store() -> WindowStore:
    return WindowStore()


@pytest.fixture
def provider(store: WindowStore, clock: FakeClock) -> MetricsProvider:
    return MetricsProvider(store, clock, policy=lambda: POLICY)


def requests(store: WindowStore, workload: str, seconds: float, n: int, now: float, route: str = "") -> None:
    values = np.full(n, seconds)
    store.add_durations(SeriesKey("shop", workload, route), values, 0, [Exemplar(seconds, "ab" * 16)], now)


def cpu(provider: MetricsProvider, workload: str, utilization: float, now: float, pods: int = 2) -> None:
    for i in range(pods):
        provider.cpu.put_pod("shop", workload, f"{workload}-{i}", usage_cores=utilization * 0.5,
                             request_cores=0.5, observed_at=now)


def read(provider: MetricsProvider, metric: str, selector: str = "workload=checkout") -> Reading:
    return provider.reading("shop", metric, parse_selector(selector))


@pytest.mark.parametrize(("latency", "n", "utilization", "reason", "ratio"), [
    (0.5, 500, 0.6, "latency", 2.0),  # rL 2.0 > rU 1.0
    (0.1, 500, 0.9, "cpu", 1.5),  # rU 1.5 > rL 0.4
    (1.0, 500, 0.1, "dependency_latency", 1.0),  # slow and idle: hold
    (1.0, 10, 0.3, "cpu_only_low_traffic", 0.5),  # 10 requests < min_samples 50
    (0.3, 500, None, "latency_only_cpu_missing", 1.2),
])
def test_each_row_of_the_table(provider: MetricsProvider, store: WindowStore, clock: FakeClock,
                               latency: float, n: int, utilization: float | None, reason: str,
                               ratio: float) -> None:
    requests(store, "checkout", latency, n, T0)
    if utilization is not None:
        cpu(provider, "checkout", utilization, T0)
    clock.now = T0 + 2
    r = read(provider, "dual_signal_ratio")
    assert r.labels["reason"] == reason
    assert r.labels["workload"] == "checkout"
    assert r.value == pytest.approx(ratio, rel=0.01)
    assert r.labels["trace_id"] == "ab" * 16  # a representative request, even at low traffic
    assert "error_trace_id" not in r.labels


def test_every_item_names_a_failed_request_when_the_window_had_errors(
        provider: MetricsProvider, store: WindowStore, clock: FakeClock) -> None:
    store.add_durations(SeriesKey("shop", "checkout"), np.full(100, 0.3), 4, [Exemplar(0.3, "ab" * 16)], T0,
                        error_trace_id="ee" * 16)
    cpu(provider, "checkout", 0.5, T0)
    clock.now = T0 + 2
    for metric in ("cpu_utilization", "cpu_utilization_ratio", "latency_p95_ratio", "dual_signal_ratio"):
        labels = read(provider, metric).labels
        assert (labels["trace_id"], labels["error_trace_id"]) == ("ab" * 16, "ee" * 16), metric


def test_neither_signal_is_404_and_never_zero(provider: MetricsProvider, store: WindowStore,
                                              clock: FakeClock) -> None:
    requests(store, "checkout", 0.2, 5, T0)
    clock.now = T0 + 2
    with pytest.raises(NoData, match="the HPA holds"):
        read(provider, "dual_signal_ratio")
    cpu(provider, "checkout", 0.0, T0 + 2)
    clock.now = T0 + 3
    assert read(provider, "dual_signal_ratio").value == 0.001


def test_cpu_fails_static_until_stale_then_latency_only(provider: MetricsProvider, store: WindowStore,
                                                        clock: FakeClock) -> None:
    cpu(provider, "checkout", 0.9, T0)
    for t in range(0, 75, 5):
        requests(store, "checkout", 0.1, 100, T0 + t)
    clock.now = T0 + 59
    assert read(provider, "dual_signal_ratio").labels["reason"] == "cpu"
    assert read(provider, "cpu_utilization").value == pytest.approx(0.9)
    clock.now = T0 + 62
    assert read(provider, "dual_signal_ratio").labels["reason"] == "latency_only_cpu_missing"
    with pytest.raises(NoData, match="no CPU data"):
        read(provider, "cpu_utilization")


def test_component_metrics(provider: MetricsProvider, store: WindowStore, clock: FakeClock) -> None:
    requests(store, "checkout", 0.5, 200, T0)
    cpu(provider, "checkout", 0.45, T0)
    clock.now = T0 + 2
    assert read(provider, "cpu_utilization").value == pytest.approx(0.45)
    assert read(provider, "cpu_utilization_ratio").value == pytest.approx(0.75)
    lat = read(provider, "latency_p95_ratio")
    assert lat.value == pytest.approx(2.0, rel=0.01)
    assert lat.labels["trace_id"] == "ab" * 16


def test_workload_with_cpu_only_is_found_by_the_selector(provider: MetricsProvider, clock: FakeClock) -> None:
    cpu(provider, "batch", 0.9, T0)
    clock.now = T0 + 1
    r = read(provider, "dual_signal_ratio", "workload=batch")
    assert (r.labels["reason"], r.value) == ("cpu_only_low_traffic", pytest.approx(1.5))
    assert "trace_id" not in r.labels  # no request at all: nothing to point at


def test_per_workload_targets(provider: MetricsProvider, store: WindowStore, clock: FakeClock) -> None:
    requests(store, "slow-report", 0.5, 200, T0)
    clock.now = T0 + 2
    assert read(provider, "latency_p95_ratio", "workload=slow-report").value == pytest.approx(0.5, rel=0.01)


def test_selector_over_workloads_with_different_policies_is_400(provider: MetricsProvider, store: WindowStore,
                                                                clock: FakeClock) -> None:
    requests(store, "checkout", 0.5, 200, T0)
    requests(store, "slow-report", 0.5, 200, T0)
    clock.now = T0 + 2
    with pytest.raises(BadRequest, match="checkout, slow-report"):
        read(provider, "dual_signal_ratio", "workload in (checkout,slow-report)")


def test_route_selector_uses_the_route_latency_and_the_workload_cpu(
        provider: MetricsProvider, store: WindowStore, clock: FakeClock) -> None:
    requests(store, "checkout", 0.05, 200, T0, route="cart")
    requests(store, "checkout", 1.0, 200, T0, route="pay")
    cpu(provider, "checkout", 0.6, T0)
    clock.now = T0 + 2
    r = read(provider, "dual_signal_ratio", "workload=checkout,route=pay")
    assert (r.labels["reason"], r.value) == ("latency", pytest.approx(4.0, rel=0.01))
    r = read(provider, "dual_signal_ratio", "workload=checkout,route=cart")
    assert (r.labels["reason"], r.value) == ("cpu", pytest.approx(1.0))


def test_canary_over_baseline(provider: MetricsProvider, store: WindowStore, clock: FakeClock) -> None:
    rng = np.random.default_rng(7)
    base = rng.lognormal(np.log(0.1), 0.4, 2000)
    canary = base * 1.3
    store.add_durations(SeriesKey("shop", "checkout"), base, 0, [], T0)
    store.add_durations(SeriesKey("shop", "checkout-canary"), canary, 0, [Exemplar(0.3, "cd" * 16)], T0)
    clock.now = T0 + 2
    r = read(provider, "latency_p95_baseline_ratio", "workload=checkout-canary")
    exact = float(np.quantile(canary, 0.95) / np.quantile(base, 0.95))
    assert r.value == pytest.approx(exact, rel=0.02)
    interval = {k: r.labels.pop(k) for k in ("ratio_low", "ratio_high")}
    assert float(interval["ratio_low"]) < r.value < float(interval["ratio_high"])
    assert r.labels == {"workload": "checkout-canary", "baseline": "checkout", "trace_id": "cd" * 16,
                        "samples": "2000", "baseline_samples": "2000"}
    with pytest.raises(NoData, match="not a canary"):
        read(provider, "latency_p95_baseline_ratio", "workload=checkout")


def test_canary_needs_enough_samples_on_both_sides(provider: MetricsProvider, store: WindowStore,
                                                   clock: FakeClock) -> None:
    requests(store, "checkout", 0.1, 500, T0)
    requests(store, "checkout-canary", 0.1, 20, T0)
    clock.now = T0 + 2
    with pytest.raises(NoData, match="'checkout-canary' has 20"):
        read(provider, "latency_p95_baseline_ratio", "workload=checkout-canary")


def test_every_workload_is_evaluated_and_exported(provider: MetricsProvider, store: WindowStore,
                                                  clock: FakeClock) -> None:
    requests(store, "checkout", 1.0, 200, T0)
    cpu(provider, "checkout", 0.1, T0)
    cpu(provider, "batch", 0.9, T0)
    requests(store, "quiet", 0.1, 3, T0)
    clock.now = T0 + 2
    decisions = provider.dual.all_decisions(clock.now)
    assert {k: (d.reason if d else None) for k, d in decisions.items()} == {
        ("shop", "checkout"): "dependency_latency", ("shop", "batch"): "cpu_only_low_traffic",
        ("shop", "quiet"): None}
    telemetry = Telemetry(store)
    telemetry.record_decisions(decisions)
    telemetry.record_decisions(decisions)
    text = generate_latest(telemetry.registry).decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}
    assert got[("latency_adapter_dual_signal_ratio",
                (("namespace", "shop"), ("reason", "dependency_latency"), ("workload", "checkout")))] == 1.0
    assert got[("latency_adapter_latency_ratio", (("namespace", "shop"), ("workload", "checkout")))] == \
        pytest.approx(4.0, rel=0.01)
    assert got[("latency_adapter_decisions_total", (("reason", "none"),))] == 2
    assert got[("latency_adapter_decisions_total", (("reason", "cpu_only_low_traffic"),))] == 2
    assert not any(name == "latency_adapter_dual_signal_ratio" and dict(labels)["workload"] == "quiet"
                   for name, labels in got)


def test_a_workload_name_no_selector_can_hold_does_not_stop_the_others(provider: MetricsProvider,
                                                                       clock: FakeClock) -> None:
    cpu(provider, "checkout", 0.9, T0)
    cpu(provider, "not a label value!", 0.9, T0)
    decisions = provider.dual.all_decisions(T0 + 1)
    assert decisions[("shop", "checkout")] is not None
    assert decisions[("shop", "not a label value!")] is not None  # on /metrics, though no HPA can ask


def test_error_ratios_and_canary_ratios_on_metrics(provider: MetricsProvider, store: WindowStore,
                                                   clock: FakeClock) -> None:
    store.add_durations(SeriesKey("shop", "checkout", "cart"), np.full(300, 0.1), 6, [], T0)
    store.add_durations(SeriesKey("shop", "checkout", "pay"), np.full(100, 0.1), 2, [], T0)
    store.add_durations(SeriesKey("shop", "checkout-canary"), np.full(100, 0.13), 0, [], T0)
    clock.now = T0 + 6  # the slice with the data has closed
    store.advance(clock.now)
    dual = provider.dual
    assert dual.error_ratios() == {("shop", "checkout"): pytest.approx(0.02),
                                   ("shop", "checkout-canary"): 0.0}
    canaries = dual.canary_ratios(clock.now)
    assert canaries == {("shop", "checkout-canary", "checkout"): pytest.approx(1.3, rel=0.02)}
    telemetry = Telemetry(store)
    decisions = dual.all_decisions(clock.now)
    telemetry.record_decisions(decisions, dual.error_ratios(), canaries, dual.latency_targets(decisions))
    text = generate_latest(telemetry.registry).decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for family in text_string_to_metric_families(text) for s in family.samples}
    assert got[("latency_adapter_workload_error_ratio",
                (("namespace", "shop"), ("workload", "checkout")))] == pytest.approx(0.02)
    assert got[("latency_adapter_latency_target_seconds",
                (("namespace", "shop"), ("workload", "checkout")))] == 0.25  # the defaults' target
    canary_labels = (("baseline", "checkout"), ("canary", "checkout-canary"), ("namespace", "shop"))
    assert got[("latency_adapter_canary_latency_ratio", canary_labels)] == pytest.approx(1.3, rel=0.02)
