"""Two adapter replicas on the same Prometheus, with the same config, serve the same answers.

Each replica refreshes at a query time rounded down to ``refresh_seconds``, so two replicas that refreshed
a moment apart ask Prometheus the same question (same PromQL, same ``time=``) and get the same answer. The
test polls both until, for every metric, the two answers carry the same timestamp (both refreshed in the
same interval), and then requires the same value; this must happen within a bounded time.

The same test runs with a single-node VictoriaMetrics as the PromQL backend (parameter ``backend``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.integration.conftest import AdapterFactory, AdapterProcess
from tests.integration.process import wait_for
from tests.promql_exporter import (
    NS,
    SELECTOR,
    STALE_AFTER,
    WINDOW,
    WORKLOAD,
    serve_exporter,
    timestamp,
    window_full,
)

if TYPE_CHECKING:
    from tests.prometheus import PrometheusFactory
    from tests.victoria import VictoriaFactory

pytest_plugins = ["tests.prometheus", "tests.victoria"]

METRICS = ("latency_p95_seconds", "request_rate", "cpu_utilization", "dual_signal_ratio")
#: How long the two replicas may take to agree once both serve values (a few refresh intervals).
AGREE_WITHIN = 20.0
#: A PromQL backend: its URL, its instant query, the scrape count that makes a full window.
Backend = tuple[str, Callable[[str], list[dict[str, Any]]], int]


@pytest.fixture
def exporter() -> Iterator[int]:
    with serve_exporter() as port:
        yield port


@pytest.fixture(params=["prometheus", "victoria"])
def backend(request: pytest.FixtureRequest, exporter: int) -> Backend:
    """A PromQL backend scraping the exporter: its URL, its instant query and the scrape count of a full
    window (for VictoriaMetrics one less, as in ``test_victoria_source``: its ``count_over_time`` over the
    same window may count one sample fewer)."""
    if request.param == "prometheus":
        prometheus_factory: PrometheusFactory = request.getfixturevalue("prometheus_factory")
        prom = prometheus_factory([f"127.0.0.1:{exporter}"], job="app")
        prom.wait_scraped()
        return prom.url(""), prom.query, WINDOW
    victoria_factory: VictoriaFactory = request.getfixturevalue("victoria_factory")
    vm = victoria_factory([f"127.0.0.1:{exporter}"])
    return vm.url(""), vm.query, WINDOW - 1


def test_two_replicas_serve_the_same_values(
        backend: Backend, adapter_factory: AdapterFactory) -> None:
    url, query, full = backend

    wait_for(lambda: window_full(query, full, 2), WINDOW + 30, "a full window of scrapes", interval=0.5)
    config = {
        "store": {"window_seconds": 30, "slice_seconds": 1},
        "sources": {"prometheus": {"url": url, "refresh_seconds": 2, "timeout_seconds": 1,
                                   "window_seconds": WINDOW}},
        "defaults": {"stale_after_seconds": STALE_AFTER, "min_samples": 10},
        "workloads": [{"namespace": NS, "workload": WORKLOAD, "source": "prometheus"}],
    }
    first = adapter_factory("prometheus-replica-a", config)
    second = adapter_factory("prometheus-replica-b", config)
    for replica in (first, second):
        for metric in METRICS:
            replica.wait_value(NS, metric, SELECTOR, timeout=30)

    def both_from_one_interval() -> tuple[dict[str, Any], dict[str, Any]] | None:
        a, b = snapshot(first), snapshot(second)
        return (a, b) if a is not None and b is not None and a["at"] == b["at"] else None

    started = time.monotonic()
    a, b = wait_for(both_from_one_interval, AGREE_WITHIN,
                    "both replicas to answer from the same refresh interval", interval=0.1)
    assert time.monotonic() - started < AGREE_WITHIN
    assert a["at"] % 2 == pytest.approx(0, abs=1e-3), a  # aligned to refresh_seconds (2 s)
    for metric in METRICS:
        item_a, item_b = a[metric], b[metric]
        # The same query at the same time: the same value, exactly (the same quantity string).
        assert item_a["value"] == item_b["value"], (metric, item_a, item_b)
        assert item_a["metricLabels"] == item_b["metricLabels"], (metric, item_a, item_b)
    for metric in ("latency_p95_seconds", "request_rate"):  # these carry the query time itself
        assert a[metric]["timestamp"] == b[metric]["timestamp"], (metric, a[metric], b[metric])
    assert a["cpu"] == b["cpu"]


def snapshot(replica: AdapterProcess) -> dict[str, Any] | None:
    """Every metric of the workload from one refresh round of ``replica`` (``at``: its query time), or
    None when a refresh happened while we were reading.

    p95 and request rate carry the query time; ``cpu_utilization`` and ``dual_signal_ratio`` carry the
    time of the request, so the CPU reading's query time comes from ``/debug/workloads`` and the p95 is
    read again last: unchanged means no refresh happened in between (a refresh swaps the whole cache
    entry and the CPU reading without yielding to requests).
    """
    items: dict[str, Any] = {}
    for metric in METRICS:
        resp = replica.value(NS, metric, SELECTOR)
        if resp.status != 200:
            return None
        items[metric] = resp.json()["items"][0]
    rows = replica.ops("/debug/workloads?format=json").json()["workloads"]
    row = next(w for w in rows if (w["namespace"], w["workload"]) == (NS, WORKLOAD))
    again = replica.value(NS, "latency_p95_seconds", SELECTOR)
    if again.status != 200:
        return None
    at = timestamp(items["latency_p95_seconds"])
    if not (timestamp(again.json()["items"][0]) == at == timestamp(items["request_rate"])
            == row["cpu_observed_at"]):
        return None
    return {**items, "at": at, "cpu": row["cpu_utilization"]}
