"""VictoriaMetrics as the PromQL backend, end to end: the same value checks as the Prometheus test.

The test exporter (:mod:`tests.promql_exporter`) is scraped every second by a real single-node
VictoriaMetrics; the adapter's p95 and CPU utilisation must equal what VictoriaMetrics' own PromQL
(MetricsQL) answers for the same query at the time the adapter's answer carries, within 1 %.

Exemplars: VictoriaMetrics 1.79 stores none; its ``/api/v1/query_exemplars`` answers
``{"status":"success","data":[]}``. The source must degrade gracefully: values without ``trace_id``,
no query error counted (a refresh without exemplars counts in
``latency_adapter_prometheus_exemplar_misses_total`` and is logged once), never a missing value.

Then VictoriaMetrics is stopped: the adapter keeps serving the last value until the workload's
``stale_after_seconds``, then answers 404, and counts the failed queries by kind; VictoriaMetrics starts
again on the same port and data directory, and values come back without restarting the adapter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from adapter.sources.prometheus_config import PrometheusSettings, builtin_queries, expand
from tests.integration.conftest import AdapterFactory
from tests.integration.process import wait_for
from tests.promql_exporter import (
    NS,
    SELECTOR,
    STALE_AFTER,
    WINDOW,
    WORKLOAD,
    number,
    serve_exporter,
    timestamp,
    window_full,
)

if TYPE_CHECKING:
    from tests.victoria import VictoriaFactory

pytest_plugins = ["tests.victoria"]


@pytest.fixture
def exporter() -> Iterator[int]:
    with serve_exporter() as port:
        yield port


def test_victoria_metrics_source(exporter: int, victoria_factory: VictoriaFactory,
                                 adapter_factory: AdapterFactory) -> None:
    vm = victoria_factory([f"127.0.0.1:{exporter}"])
    status, doc = vm.get("/api/v1/query_exemplars", {"query": "up", "start": "0", "end": "1"})
    assert (status, doc) == (200, {"status": "success", "data": []}), (status, doc)

    wait_for(lambda: window_full(vm.query, WINDOW - 1, 1), WINDOW + 30, "a full window of scrapes",
             interval=0.5)
    config = {
        "store": {"window_seconds": 30, "slice_seconds": 1},
        "sources": {"prometheus": {"url": vm.url(""), "refresh_seconds": 1, "timeout_seconds": 2,
                                   "window_seconds": WINDOW}},
        "defaults": {"stale_after_seconds": STALE_AFTER, "min_samples": 10},
        "workloads": [{"namespace": NS, "workload": WORKLOAD, "source": "prometheus"}],
    }
    adapter = adapter_factory("victoria-source", config)
    queries = builtin_queries(PrometheusSettings(url=vm.url(""), window_seconds=WINDOW))

    item = adapter.wait_value(NS, "latency_p95_seconds", SELECTOR, timeout=30)["items"][0]
    promql = expand(queries["latency_quantile"], NS, WORKLOAD, WINDOW, 0.95)
    expected = float(vm.query(promql, timestamp(item))[0]["value"][1])
    assert number(item) == pytest.approx(expected, rel=0.01), (item, expected)
    assert expected == pytest.approx(0.25 + 0.25 * (95 * 102 / 100 - 92) / 6, rel=0.05)
    assert "trace_id" not in item["metricLabels"], item  # no exemplars: no trace id, still a value

    adapter.wait_value(NS, "cpu_utilization", SELECTOR, timeout=15)
    row = next(w for w in adapter.ops("/debug/workloads?format=json").json()["workloads"]
               if (w["namespace"], w["workload"]) == (NS, WORKLOAD))
    cpu_expected = float(vm.query(expand(queries["cpu_utilization"], NS, WORKLOAD, WINDOW),
                                  row["cpu_observed_at"])[0]["value"][1])
    assert row["cpu_utilization"] == pytest.approx(cpu_expected, rel=0.01), (row, cpu_expected)
    assert cpu_expected == pytest.approx(0.8, rel=0.1)

    rate = adapter.wait_value(NS, "request_rate", SELECTOR)["items"][0]
    rate_expected = float(vm.query(expand(queries["request_rate"], NS, WORKLOAD, WINDOW),
                                   timestamp(rate))[0]["value"][1])
    assert number(rate) == pytest.approx(rate_expected, rel=0.01), (rate, rate_expected)
    dual = adapter.wait_value(NS, "dual_signal_ratio", SELECTOR)["items"][0]
    assert number(dual) > 0, dual

    # The exemplar query was asked and answered (empty): nothing counted as an error.
    assert adapter.counter("latency_adapter_prometheus_queries_total") > 0
    for kind in ("timeout", "connection", "http_status", "bad_response"):
        assert adapter.counter("latency_adapter_prometheus_query_errors_total", kind=kind) == 0, kind
    assert adapter.counter("latency_adapter_prometheus_exemplar_misses_total") > 0

    # The backend goes away: the last value is served until stale_after_seconds, then 404.
    vm.stop()
    stopped = time.monotonic()
    assert adapter.value(NS, "latency_p95_seconds", SELECTOR).status == 200

    def missing() -> bool:
        return adapter.value(NS, "latency_p95_seconds", SELECTOR).status == 404

    wait_for(missing, STALE_AFTER + 10, "the p95 to go missing after stale_after_seconds", interval=0.2)
    assert time.monotonic() - stopped >= STALE_AFTER - 2.5
    assert adapter.counter("latency_adapter_prometheus_query_errors_total", kind="connection") > 0
    last_success = adapter.counter("latency_adapter_prometheus_last_success_timestamp_seconds")
    assert 0 < last_success < time.time() - 1

    # It comes back on the same port and data directory: values return, the adapter was not restarted.
    port = vm.port
    vm.restart()
    assert vm.port == port
    pid = adapter.proc.pid if adapter.proc is not None else None
    again = adapter.wait_value(NS, "latency_p95_seconds", SELECTOR, timeout=30)["items"][0]
    assert number(again) == pytest.approx(expected, rel=0.05), (again, expected)
    assert adapter.proc is not None and adapter.proc.pid == pid and adapter.alive()
