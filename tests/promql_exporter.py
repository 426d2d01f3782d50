"""The test exporter shared by the PromQL-backend tests (Prometheus, VictoriaMetrics, replicas, benchmark).

It serves (prometheus-client, in this process) a classic histogram
``http_server_request_duration_seconds{namespace,workload,http_response_status_code}`` with an exemplar on
every bucket (OpenMetrics, which Prometheus negotiates on its own), plus cAdvisor's
``container_cpu_usage_seconds_total`` and kube-state-metrics' ``kube_pod_container_resource_requests``.
Its counters grow in whole batches of a fixed shape (ten batches a second), so every bucket grows in the
same proportion and the p95 PromQL computes is the same whichever samples a window holds; the CPU counters
grow linearly, so the utilisation is the same too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from adapter.quantity import parse_quantity
from adapter.sources.prometheus_config import PrometheusSettings
from tests.scraping_server import free_port

NS, WORKLOAD = "shop", "checkout"
SELECTOR = f"workload={WORKLOAD}"
METRIC = "http_server_request_duration_seconds"
#: Short, so that the window is full soon: rate() over a window the data only partly covers is lower.
WINDOW = 10
STALE_AFTER = 6.0
BOUNDS = ("0.05", "0.1", "0.25", "0.5", "1.0", "+Inf")
#: Requests per batch in each bucket (not cumulative), by status code; ten batches a second.
BATCH = {"200": (50, 30, 12, 5, 2, 1), "500": (0, 0, 0, 1, 1, 0)}
BATCHES_PER_SECOND = 10
#: The exemplar of each bucket: a trace id and a latency inside the bucket.
EXEMPLARS = [(f"{0xAB00 + i:032x}", value) for i, value in enumerate((0.03, 0.08, 0.2, 0.41, 0.9, 2.5))]
#: CPU usage (cores) of each pod and each pod's CPU request: utilisation 0.8.
PODS = {"checkout-7d9f-a": 0.3, "checkout-7d9f-b": 0.5}
REQUEST_CORES = 0.5


class Exporter(Collector):
    def __init__(self) -> None:
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        elapsed = time.time() - self.started
        batches = int(elapsed * BATCHES_PER_SECOND)
        last_batch = self.started + batches / BATCHES_PER_SECOND
        hist = HistogramMetricFamily(METRIC, "Request latency.",
                                     labels=["namespace", "workload", "http_response_status_code"])
        for code, shape in BATCH.items():
            cumulative, buckets = 0, []
            for bound, n, (trace_id, value) in zip(BOUNDS, shape, EXEMPLARS, strict=True):
                cumulative += n * batches
                # Timestamped at the last batch: Prometheus drops an exemplar equal to the one before it,
                # and without a timestamp each scrape's would be equal, so only the first would be kept.
                exemplar = Exemplar({"trace_id": trace_id}, value, last_batch) \
                    if code == "200" and batches else None
                count = float(cumulative)
                buckets.append((bound, count, exemplar) if exemplar else (bound, count))
            hist.add_metric([NS, WORKLOAD, code], buckets, sum_value=0.1 * cumulative)  # type: ignore[arg-type]
        yield hist
        usage = CounterMetricFamily("container_cpu_usage_seconds_total", "CPU seconds used.",
                                    labels=["namespace", "pod", "container"])
        requests = GaugeMetricFamily("kube_pod_container_resource_requests", "Requested resources.",
                                     labels=["namespace", "pod", "container", "resource", "unit"])
        for pod, cores in PODS.items():
            usage.add_metric([NS, pod, "app"], cores * elapsed)
            usage.add_metric([NS, pod, ""], 10 * cores * elapsed)  # the pod cgroup: left out by container!=""
            requests.add_metric([NS, pod, "app", "cpu", "core"], REQUEST_CORES)
        yield usage
        yield requests




@contextlib.contextmanager
def serve_exporter() -> Iterator[int]:
    """Serve :class:`Exporter` on a free port of 127.0.0.1 (prometheus-client's own server, a thread)."""
    registry = CollectorRegistry()
    registry.register(Exporter())
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def window_full(query: Callable[[str, float | None], list[dict[str, Any]]], full: int,
                refresh_seconds: float) -> bool:
    """Whether every pod's CPU counter has ``full`` samples in the window the adapter will ask about:
    the adapter queries ``query_offset_seconds`` (2 s by default) behind the clock, rounded down to its
    refresh interval, and a rate over a window the data only partly covers is lower."""
    at = time.time() - PrometheusSettings.query_offset_seconds - refresh_seconds
    counts = query(f'count_over_time(container_cpu_usage_seconds_total{{container="app"}}[{WINDOW}s])', at)
    return len(counts) == len(PODS) and all(float(c["value"][1]) >= full for c in counts)


def number(item: dict[str, Any]) -> float:
    return float(parse_quantity(item["value"]))


def timestamp(item: dict[str, Any]) -> float:
    return datetime.fromisoformat(item["timestamp"].replace("Z", "+00:00")).timestamp()
