"""Prometheus as a source, end to end: an exporter, a real Prometheus scraping it, a real adapter asking it.

The exporter (prometheus-client, in this process) serves a classic histogram
``http_server_request_duration_seconds{namespace,workload,http_response_status_code}`` with an exemplar on
every bucket (OpenMetrics, which Prometheus negotiates on its own), plus cAdvisor's
``container_cpu_usage_seconds_total`` and kube-state-metrics' ``kube_pod_container_resource_requests``.
Its counters grow in whole batches of a fixed shape (ten batches a second), so every bucket grows in the
same proportion and the p95 PromQL computes is the same whichever samples a window holds; the CPU counters
grow linearly, so the utilisation is the same too. The values the adapter serves are compared with what
PromQL itself answers for the same query at the time the adapter's answer carries.

Then Prometheus is stopped: the adapter keeps serving the last value (fail static) until the workload's
``stale_after_seconds``, then answers 404, and counts the failed queries by kind; Prometheus starts again
on the same port and data directory, and values come back without restarting the adapter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from adapter.sources.prometheus_config import PrometheusSettings, builtin_queries, expand
from tests.integration.conftest import AdapterFactory, AdapterProcess
from tests.integration.process import wait_for
from tests.promql_exporter import (
    BATCHES_PER_SECOND,
    EXEMPLARS,
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
    from tests.prometheus import PrometheusFactory

pytest_plugins = ["tests.prometheus"]


@pytest.fixture
def exporter() -> Iterator[int]:
    with serve_exporter() as port:
        yield port


def test_prometheus_source_end_to_end(exporter: int, prometheus_factory: PrometheusFactory,
                                      adapter_factory: AdapterFactory) -> None:
    prom = prometheus_factory([f"127.0.0.1:{exporter}"], job="app")
    prom.wait_scraped()

    wait_for(lambda: window_full(prom.query, WINDOW, 1), WINDOW + 20, "a full window of scrapes",
             interval=0.5)
    config = {
        "store": {"window_seconds": 30, "slice_seconds": 1},
        "sources": {"prometheus": {"url": prom.url(""), "refresh_seconds": 1, "timeout_seconds": 1,
                                   "window_seconds": WINDOW}},
        "defaults": {"stale_after_seconds": STALE_AFTER, "min_samples": 10},
        "workloads": [{"namespace": NS, "workload": WORKLOAD, "source": "prometheus"}],
    }
    adapter: AdapterProcess = adapter_factory("prometheus-source", config)
    queries = builtin_queries(PrometheusSettings(url=prom.url(""), window_seconds=WINDOW))

    # p95: the adapter's answer is PromQL's own for the same query at the time the answer carries.
    item = adapter.wait_value(NS, "latency_p95_seconds", SELECTOR, timeout=30)["items"][0]
    at = timestamp(item)
    promql = expand(queries["latency_quantile"], NS, WORKLOAD, WINDOW, 0.95)
    expected = float(prom.query(promql, at)[0]["value"][1])
    assert number(item) == pytest.approx(expected, rel=0.01), (item, expected)
    assert expected == pytest.approx(0.25 + 0.25 * (95 * 102 / 100 - 92) / 6, rel=0.02)
    assert item["metricLabels"]["trace_id"] in {t for t, _ in EXEMPLARS}, item
    assert item["metricLabels"]["trace_id"] == EXEMPLARS[3][0]  # 0.41 s: the exemplar nearest the p95

    # CPU through the registry and the policy, and the ratio built on both signals.
    adapter.wait_value(NS, "cpu_utilization", SELECTOR, timeout=15)
    # Compare at the instant the adapter queried (the debug page shows value and time from one reading):
    # a rate over a busy machine's scrapes differs from one instant to the next.
    row = next(w for w in adapter.ops("/debug/workloads?format=json").json()["workloads"]
               if (w["namespace"], w["workload"]) == (NS, WORKLOAD))
    cpu_promql = expand(queries["cpu_utilization"], NS, WORKLOAD, WINDOW)
    cpu_expected = float(prom.query(cpu_promql, row["cpu_observed_at"])[0]["value"][1])
    assert row["cpu_utilization"] == pytest.approx(cpu_expected, rel=0.01), (row, cpu_expected)
    assert cpu_expected == pytest.approx(0.8, rel=0.1)
    rate = adapter.wait_value(NS, "request_rate", SELECTOR)["items"][0]
    rate_expected = float(prom.query(expand(queries["request_rate"], NS, WORKLOAD, WINDOW),
                                     timestamp(rate))[0]["value"][1])
    assert number(rate) == pytest.approx(rate_expected, rel=0.01), (rate, rate_expected)
    # The exporter's own pace (it runs in this busy process) only roughly: PromQL's answer is the reference.
    assert rate_expected == pytest.approx(102 * BATCHES_PER_SECOND, rel=0.25)
    errors = adapter.wait_value(NS, "error_ratio", SELECTOR)["items"][0]
    assert number(errors) == pytest.approx(2 / 102, rel=0.02)
    dual = adapter.wait_value(NS, "dual_signal_ratio", SELECTOR)["items"][0]
    assert dual["metricLabels"]["reason"] == "latency", dual
    assert number(dual) == pytest.approx(expected / 0.25, rel=0.01)

    # The backend goes away: the last value is served until stale_after_seconds, then 404.
    prom.stop()
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
    prom.restart()
    pid = adapter.proc.pid if adapter.proc is not None else None
    again = adapter.wait_value(NS, "latency_p95_seconds", SELECTOR, timeout=30)["items"][0]
    assert number(again) == pytest.approx(expected, rel=0.01)
    assert adapter.proc is not None and adapter.proc.pid == pid and adapter.alive()


def test_template_that_does_not_parse_fails_the_start(exporter: int, prometheus_factory: PrometheusFactory,
                                                      tmp_path: Any) -> None:
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    prom = prometheus_factory([f"127.0.0.1:{exporter}"], job="app")
    broken = 'sum(rate(foo{workload="$workload"}[$window])'  # one parenthesis short
    config = {"sources": {"prometheus": {"url": prom.url(""), "queries": {"request_rate": broken}}},
              "workloads": [{"namespace": NS, "workload": WORKLOAD, "source": "prometheus"}]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    binary = Path(sys.executable).with_name("latency-adapter")
    done = subprocess.run([str(binary), "serve", "--bind", "127.0.0.1", "--insecure-no-auth",
                           "--config", str(path), "--api-port", "0", "--otlp-port", "0",
                           "--telemetry-port", "0",
                           "--cert-dir", str(tmp_path / "certs")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 2, done.stderr
    assert "sources.prometheus.queries.request_rate" in done.stderr
    assert "does not parse" in done.stderr



