"""A PromQL backend that cannot be reached at start: the adapter starts, says so, and keeps trying.

The backend being down must not keep the adapter down (its OTLP workloads and everything else still
serve); the template check is skipped with a warning, the workload on the Prometheus source answers 404
(the HPA holds), and the failed queries are counted by kind.
"""

from __future__ import annotations

import socket

from tests.integration.conftest import AdapterFactory
from tests.integration.process import wait_for


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_backend_at_start(adapter_factory: AdapterFactory) -> None:
    config = {
        "store": {"window_seconds": 30, "slice_seconds": 1},
        "sources": {"prometheus": {"url": f"http://127.0.0.1:{_closed_port()}", "refresh_seconds": 1,
                                   "timeout_seconds": 1}},
        "workloads": [{"namespace": "shop", "workload": "checkout", "source": "prometheus"}],
    }
    adapter = adapter_factory("prometheus-unreachable", config)
    events = [e for e in adapter.log_events() if e.get("event") == "prometheus_check_skipped"]
    assert events and events[0]["kind"] == "connection", adapter.stderr_tail()
    resp = adapter.value("shop", "latency_p95_seconds", "workload=checkout")
    assert resp.status == 404, resp
    wait_for(lambda: adapter.counter("latency_adapter_prometheus_query_errors_total", kind="connection") > 0
             or None, 10.0, "connection errors counted")
    assert adapter.alive()
