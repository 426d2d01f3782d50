"""The CPU registry: which source wins, pods without requests, ageing out, bounds."""

from __future__ import annotations

import pytest

from adapter import cpu as cpu_module
from adapter.cpu import CpuSignals, WorkloadCpu


def test_otlp_pods_sum_usage_over_requests() -> None:
    s = CpuSignals()
    s.put_pod("shop", "checkout", "a", usage_cores=0.2, request_cores=0.5, observed_at=100)
    s.put_pod("shop", "checkout", "b", usage_cores=0.4, request_cores=0.5, observed_at=101)
    signal = s.signal("shop", "checkout", now=102, stale_after=60)
    assert signal is not None
    assert signal.utilization == pytest.approx(0.6)
    assert (signal.pods, signal.observed_at) == (2, 101)


def test_usage_and_request_may_arrive_separately() -> None:
    s = CpuSignals()
    s.put_pod("shop", "checkout", "a", request_cores=0.5, observed_at=100)
    assert s.signal("shop", "checkout", now=100, stale_after=60) is None  # no usage yet
    s.put_pod("shop", "checkout", "a", usage_cores=0.25, observed_at=101)
    signal = s.signal("shop", "checkout", now=101, stale_after=60)
    assert signal is not None and signal.utilization == pytest.approx(0.5)


def test_pods_without_requests_are_reported_not_divided_by_zero() -> None:
    s = CpuSignals()
    s.put_pod("shop", "checkout", "a", usage_cores=0.3, observed_at=100)
    assert s.signal("shop", "checkout", now=100, stale_after=60) is None
    reading = s.reading("shop", "checkout", now=100, stale_after=60, default_request_cores=1.0)
    assert reading is not None and reading.usage_cores / reading.request_cores == pytest.approx(0.3)
    s.put_pod("shop", "checkout", "b", usage_cores=0.2, request_cores=0.4, observed_at=100)
    reading = s.reading("shop", "checkout", now=100, stale_after=60)
    assert reading is not None
    assert (reading.pods, reading.pods_without_requests) == (1, 1)
    assert reading.usage_cores / reading.request_cores == pytest.approx(0.5)


def test_silent_pods_age_out() -> None:
    s = CpuSignals()
    s.put_pod("shop", "checkout", "old", usage_cores=1.0, request_cores=1.0, observed_at=0)
    s.put_pod("shop", "checkout", "new", usage_cores=0.1, request_cores=1.0, observed_at=50)
    signal = s.signal("shop", "checkout", now=70, stale_after=60)
    assert signal is not None and signal.utilization == pytest.approx(0.1)
    assert s.signal("shop", "checkout", now=200, stale_after=60) is None


def test_cluster_source_preferred_while_fresh_then_otlp() -> None:
    s = CpuSignals()
    s.put_workload("shop", "checkout", WorkloadCpu(usage_cores=1.0, request_cores=2.0, pods=4,
                                                   observed_at=100))
    s.put_pod("shop", "checkout", "a", usage_cores=0.9, request_cores=1.0, observed_at=150)
    signal = s.signal("shop", "checkout", now=120, stale_after=60)
    assert signal is not None and signal.utilization == pytest.approx(0.5)
    signal = s.signal("shop", "checkout", now=170, stale_after=60)  # cluster reading stale: OTLP
    assert signal is not None and signal.utilization == pytest.approx(0.9)


def test_stale_cluster_reading_is_still_returned_for_the_policy_to_judge() -> None:
    s = CpuSignals()
    s.put_workload("shop", "checkout", WorkloadCpu(usage_cores=1.0, request_cores=2.0, pods=4,
                                                   observed_at=100))
    signal = s.signal("shop", "checkout", now=500, stale_after=60)
    assert signal is not None and signal.observed_at == 100  # the policy sees its age and drops it


def test_workloads_listed_per_namespace() -> None:
    s = CpuSignals()
    s.put_workload("shop", "checkout", WorkloadCpu(1.0, 2.0, 1, 0))
    s.put_pod("shop", "catalog", "p", usage_cores=0.1, observed_at=0)
    s.put_pod("other", "x", "p", usage_cores=0.1, observed_at=0)
    assert s.workloads("shop") == {"checkout", "catalog"}
    assert s.all_workloads() == {("shop", "checkout"), ("shop", "catalog"), ("other", "x")}


def test_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cpu_module, "MAX_WORKLOADS", 2)
    monkeypatch.setattr(cpu_module, "MAX_PODS_PER_WORKLOAD", 2)
    s = CpuSignals()
    for pod in ("a", "b", "c"):
        s.put_pod("ns", "w", pod, usage_cores=0.1, observed_at=0)
    for workload in ("w2", "w3"):
        s.put_pod("ns", workload, "a", usage_cores=0.1, observed_at=0)
    assert s.dropped == 2
    assert s.workloads("ns") == {"w", "w2"}
