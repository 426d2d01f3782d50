"""The running service polls workload CPU from a Kubernetes API server and serves it.

``latency-adapter serve --kubeconfig`` against the fake API server (real Deployment, PodList and
PodMetricsList JSON, reached through the real ``kubernetes`` client): the workloads named in the config
file are polled, their CPU is served through the external metrics API and feeds ``dual_signal_ratio``;
a broken API server leaves the last reading in place until it is stale. Flags that ask for the
Kubernetes source where there is none fail the start with status 2.
"""

from __future__ import annotations

import http.client
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapter.quantity import parse_quantity
from tests.fakes.kube_api import FakeKubeAPI
from tests.integration.conftest import metric_path
from tests.integration.process import ADAPTER_BIN, ServiceProcess, exchange, wait_for

NS = "shop"
STALE_AFTER = 4


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKubeAPI]:
    api = FakeKubeAPI()
    api.add_deployment(NS, "checkout", match_labels={"app": "checkout"},
                       match_expressions=[("tier", "In", ["web", "api"])])
    api.add_pod(NS, "checkout-a", {"app": "checkout", "tier": "web"}, cpu_requests=["500m"])
    api.add_pod(NS, "checkout-b", {"app": "checkout", "tier": "api"}, cpu_requests=["250m", "250m"])
    api.add_pod(NS, "checkout-starting", {"app": "checkout", "tier": "web"}, ready=False)
    api.add_pod(NS, "checkout-no-requests", {"app": "checkout", "tier": "web"}, cpu_requests=[None])
    api.add_pod(NS, "other", {"app": "other", "tier": "web"}, cpu_requests=["100m"])
    api.set_pod_usage(NS, "checkout-a", 0.3)
    api.set_pod_usage(NS, "checkout-b", [0.2, 0.1])
    api.set_pod_usage(NS, "checkout-no-requests", 2.0)
    api.set_pod_usage(NS, "other", 5.0)
    with api.start_in_thread():
        yield api


@pytest.fixture(scope="module")
def adapter(fake: FakeKubeAPI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    base = tmp_path_factory.mktemp("cpu-service")
    kubeconfig = fake.kubeconfig(base / "kubeconfig")
    config = {"store": {"window_seconds": 30, "slice_seconds": 1},
              "defaults": {"stale_after_seconds": STALE_AFTER},
              "workloads": [{"namespace": NS, "workload": "checkout"}]}
    proc = ServiceProcess(base / "adapter", ["--insecure-no-auth", "--kubeconfig", str(kubeconfig),
                                             "--cpu-source", "kubernetes", "--cpu-poll-seconds", "1"], config)
    proc.start()
    yield proc
    assert proc.stop() == 0, proc.stderr_tail()


def value(adapter: ServiceProcess, metric: str) -> dict[str, Any] | None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", adapter.api_port, context=ctx, timeout=10)
    try:
        resp = exchange(conn, metric_path(NS, metric, "workload=checkout"))
    finally:
        conn.close()
    return dict(resp.json()["items"][0]) if resp.status == 200 else None


def test_polled_cpu_is_served(adapter: ServiceProcess) -> None:
    item = wait_for(lambda: value(adapter, "cpu_utilization"), 15.0, "cpu_utilization from the poller")
    # Ready pods with requests only: (0.3 + 0.3) cores used of (0.5 + 0.5) requested.
    assert float(parse_quantity(item["value"])) == pytest.approx(0.6, rel=1e-6)
    dual = value(adapter, "dual_signal_ratio")
    assert dual is not None
    assert dual["metricLabels"]["reason"] == "cpu_only_low_traffic"
    assert float(parse_quantity(dual["value"])) == pytest.approx(1.0, rel=1e-6)
    assert adapter.counter("latency_adapter_cpu_poll_rounds_total") >= 1
    assert adapter.ops("/metrics").text.count(
        'latency_adapter_cpu_pods_without_requests{namespace="shop",workload="checkout"} 1.0') == 1
    events = [e["event"] for e in adapter.log_events()]
    assert "cpu_pods_without_requests" in events and "cpu_source" in events


def test_api_errors_fail_static_then_missing(adapter: ServiceProcess, fake: FakeKubeAPI) -> None:
    wait_for(lambda: value(adapter, "cpu_utilization"), 15.0, "cpu_utilization from the poller")
    errors_before = adapter.counter("latency_adapter_cpu_poll_errors_total")
    fake.cpu_fail_with = 500
    try:
        wait_for(lambda: adapter.counter("latency_adapter_cpu_poll_errors_total") > errors_before or None,
                 10.0, "a failed poll")
        assert value(adapter, "cpu_utilization") is not None  # the last reading still serves
        wait_for(lambda: value(adapter, "cpu_utilization") is None or None, STALE_AFTER + 10.0,
                 "the reading to go stale")
        assert value(adapter, "dual_signal_ratio") is None  # no latency either: 404, the HPA holds
    finally:
        fake.cpu_fail_with = None
    wait_for(lambda: value(adapter, "cpu_utilization"), 15.0, "CPU back after the API server recovered")


def test_kubernetes_source_without_an_api_server_fails_the_start(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(ADAPTER_BIN), "serve", "--insecure-no-auth", "--bind", "127.0.0.1", "--api-port", "0",
         "--otlp-port", "0", "--telemetry-port", "0", "--cert-dir", str(tmp_path / "certs"),
         "--cpu-source", "kubernetes", "--kubeconfig", str(tmp_path / "missing-kubeconfig")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 2, result.stderr
    assert "flag --kubeconfig" in result.stderr and "missing-kubeconfig" in result.stderr, result.stderr
