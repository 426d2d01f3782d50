"""The adapter's own latency histogram, scraped by a real Prometheus: counts, buckets and exemplars.

A real ``latency-adapter serve`` gets 2000 SERVER spans from the real OpenTelemetry SDK (a lognormal body
around 40 ms and an 8 % tail of slow requests, 0.6 to 2 s, on two routes) and one imported OTLP histogram
of another workload. Only then does a real Prometheus start scraping the telemetry port every second
(exemplar storage on); it negotiates OpenMetrics on its own, which is what carries exemplars. So every
exemplar Prometheus stores was chosen from the complete window, and is checked against numpy over what
was sent:

* ``_count`` equals the spans sent, and each bucket the exact count of requests at or below its bound
  (plus, by design, those in the sketch bin that holds the bound; see ``adapter.store``);
* ``/api/v1/query_exemplars`` returns only trace ids that were sent, each with that request's latency as
  its value, on the bucket that holds that latency; the request the API serves as the p95's
  ``trace_id`` is there, at or above the exact p95 minus the sketch error (1 %) and below the p99 (near
  the p95, not merely the slowest or the last request); every exemplar on the p95's bucket or above is
  at or above the exact p95 minus 1 %; each is stored once although Prometheus scraped it many times;
* the full ``/metrics`` (latency data, CPU decisions, rejections, API errors) parses as OpenMetrics with
  exemplars, and ``promtool check metrics`` finds nothing to report in the text format.
"""

from __future__ import annotations

import math
import subprocess
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families

from adapter.store import REQUEST_BUCKETS
from tests.helpers_otlp import DELTA, explicit_metric, explicit_point, metrics_request
from tests.integration.conftest import AdapterFactory, AdapterProcess, SentBatch, SpanSender
from tests.integration.process import wait_for
from tests.integration.test_dual_signal_e2e import send_cpu
from tests.tooling import require_tool

if TYPE_CHECKING:  # imported by pytest as a plugin (fixture, report hook), with assertion rewriting
    from tests.prometheus import PrometheusFactory, PrometheusServer

pytest_plugins = ["tests.prometheus"]

NS = "exemplars"
SPANS = "checkout"  # the workload of the spans
IMPORTED = "catalog"  # the workload of the imported histogram
METRIC = "latency_adapter_workload_latency_seconds"
#: One-second slices keep the test quick; a minute of window keeps the data in view for the whole module.
STORE = {"window_seconds": 60, "slice_seconds": 1}
N_BODY, N_TAIL = 1840, 160
SKETCH_ERROR = 0.01  # the served quantiles are within 1 % of the exact ones
GAMMA = (1 + 0.005) / (1 - 0.005)  # upper / lower edge of a sketch bin (relative accuracy 0.5 %)
#: The imported histogram: one delta point with the adapter's own bounds (counts per bucket, +Inf last).
IMPORTED_COUNTS = [3, 10, 40, 60, 30, 20, 15, 8, 4, 2, 1, 0, 0, 0, 1]
PROTOBUF = {"Content-Type": "application/x-protobuf"}


class Loaded:
    """The adapter and what it was sent."""

    def __init__(self, adapter: AdapterProcess, batch: SentBatch, loaded_at: float) -> None:
        self.adapter = adapter
        self.batch = batch
        self.loaded_at = loaded_at
        self.latency = {s.trace_id: s.seconds for s in batch.spans}
        self.values = np.asarray(batch.latencies())


def slow_tail_latencies(seed: int = 11) -> list[float]:
    rng = np.random.default_rng(seed)
    values = np.concatenate([rng.lognormal(math.log(0.040), 0.5, N_BODY), rng.uniform(0.6, 2.0, N_TAIL)])
    rng.shuffle(values)
    return [float(v) for v in values]


def send_imported_histogram(adapter: AdapterProcess) -> None:
    now_ns = time.time_ns()
    point = explicit_point(REQUEST_BUCKETS, IMPORTED_COUNTS, now_ns - 10**9, now_ns, minimum=0.002,
                           maximum=12.0)
    body = metrics_request({"service.name": IMPORTED, "k8s.namespace.name": NS},
                           [explicit_metric("http.server.request.duration", "s", DELTA, [point])])
    resp = adapter.otlp("/v1/metrics", body.SerializeToString(), PROTOBUF)
    assert resp.status == 200, resp


@pytest.fixture(scope="module")
def loaded(adapter_factory: AdapterFactory, span_sender: type[SpanSender]) -> Iterator[Loaded]:
    adapter = adapter_factory("exemplars-prometheus", {"store": STORE})
    batch = span_sender(adapter.otlp_port).send(NS, SPANS, slow_tail_latencies(),
                                                routes=["/cart", "/pay"] * 1000, batch_size=250)
    send_imported_histogram(adapter)
    send_cpu(adapter.otlp_port, NS, SPANS, 0.7)  # a CPU signal: the decision has a cpu_ratio
    # Refusals, so their families are on /metrics too: a malformed OTLP body and an API 404.
    assert adapter.otlp("/v1/traces", b"\x0a\x05abc", PROTOBUF).status == 400
    assert adapter.value(NS, "latency_p95_seconds", "workload=nobody").status == 404
    adapter.wait_slice_closed(time.time())
    yield Loaded(adapter, batch, time.time())
    assert adapter.stop() == 0, adapter.stderr_tail()


def served_trace_id(loaded: Loaded, metric: str) -> str:
    """The ``trace_id`` the external metrics API serves with ``metric`` for the spans' workload."""
    item = loaded.adapter.wait_value(NS, metric, f"workload={SPANS}")["items"][0]
    trace_id: str = item["metricLabels"]["trace_id"]
    return trace_id


def vector(prom: PrometheusServer, promql: str) -> dict[str, float]:
    """An instant vector as ``{le or "": value}``."""
    return {r["metric"].get("le", ""): float(r["value"][1]) for r in prom.query(promql)}


def stored_exemplars(prom: PrometheusServer, start: float) -> list[tuple[str, str, float, float]]:
    """(le, trace_id, value, timestamp) of every exemplar Prometheus holds for the spans' workload."""
    result = prom.query_exemplars(f'{METRIC}_bucket{{namespace="{NS}",workload="{SPANS}"}}',
                                  start, time.time() + 60)
    out = []
    for series in result:
        assert series["seriesLabels"]["__name__"] == f"{METRIC}_bucket", series
        for e in series["exemplars"]:
            out.append((series["seriesLabels"]["le"], e["labels"]["trace_id"], float(e["value"]),
                        float(e["timestamp"])))
    return out


def test_prometheus_scrapes_the_histogram_and_exemplars_near_the_p95(
        loaded: Loaded, prometheus_factory: PrometheusFactory) -> None:
    adapter, values = loaded.adapter, loaded.values
    started = time.time()
    prom = prometheus_factory([f"127.0.0.1:{adapter.telemetry_port}"])
    prom.wait_scraped()

    # Counts: every span once, every bucket exact up to the sketch bin at its bound.
    selector = f'namespace="{NS}",workload="{SPANS}"'
    count = wait_for(lambda: vector(prom, f"{METRIC}_count{{{selector}}}").get(""), 15, "the count")
    assert count == len(loaded.batch.spans) == N_BODY + N_TAIL
    buckets = vector(prom, f"{METRIC}_bucket{{{selector}}}")
    assert buckets.pop("+Inf") == count
    ordered = np.sort(values)
    for bound in REQUEST_BUCKETS:
        exact = int(np.searchsorted(ordered, bound, side="right"))
        in_bin = int(np.count_nonzero((values > bound) & (values <= bound * GAMMA)))
        assert exact <= buckets[repr(bound)] <= exact + in_bin, (bound, buckets, exact, in_bin)
    assert vector(prom, f"{METRIC}_sum{{{selector}}}")[""] == pytest.approx(values.sum(), rel=0.005)
    # The imported histogram: its requests counted exactly, its buckets kept.
    imported = vector(prom, f'{METRIC}_bucket{{namespace="{NS}",workload="{IMPORTED}"}}')
    assert imported["+Inf"] == sum(IMPORTED_COUNTS)
    for bound, want in zip(REQUEST_BUCKETS, np.cumsum(IMPORTED_COUNTS[:-1]), strict=True):
        assert want <= imported[repr(bound)] <= want + 2, (bound, imported)

    # Exemplars: the API's p95 request is among them (same rule), and they are real requests near it.
    p50, p95, p99 = (float(np.quantile(values, q)) for q in (0.5, 0.95, 0.99))
    p95_trace = served_trace_id(loaded, "latency_p95_seconds")
    p50_trace = served_trace_id(loaded, "latency_p50_seconds")

    def both_stored() -> list[tuple[str, str, float, float]] | None:
        found = stored_exemplars(prom, started - 120)
        return found if {p95_trace, p50_trace} <= {t for _, t, _, _ in found} else None

    stored = wait_for(both_stored, 20, "the p95 and p50 requests among Prometheus' exemplars")
    for le, trace_id, value, stamp in stored:
        assert trace_id in loaded.latency, (trace_id, "was never sent")
        assert value == pytest.approx(loaded.latency[trace_id], abs=1e-9)  # that request's own latency
        upper = float(le)
        lower = max([b for b in REQUEST_BUCKETS if b < upper], default=0.0)
        assert lower < value <= upper, (le, value)
        assert loaded.loaded_at - 1 <= stamp <= time.time() + 1, (stamp, loaded.loaded_at)
    by_trace = {t: v for _, t, v, _ in stored}
    assert p95 * (1 - SKETCH_ERROR) <= by_trace[p95_trace] <= p99, (by_trace[p95_trace], p95, p99)
    assert by_trace[p50_trace] == pytest.approx(p50, rel=0.1)
    p95_le = float(next(le for le, t, _, _ in stored if t == p95_trace))
    at_or_above = [(le, v) for le, _, v, _ in stored if float(le) >= p95_le]
    assert at_or_above and all(v >= p95 * (1 - SKETCH_ERROR) for _, v in at_or_above), (at_or_above, p95)

    # Scraped again and again, each exemplar is stored once (its timestamp does not move).
    prom.wait_scraped(after=time.time() + 2.5)
    again = stored_exemplars(prom, started - 120)
    assert sorted(again) == sorted(stored), (again, stored)
    assert len({(le, t) for le, t, _, _ in again}) == len(again)


def test_full_metrics_parse_as_openmetrics_and_pass_promtool(loaded: Loaded) -> None:
    adapter = loaded.adapter
    decision = f'latency_adapter_cpu_ratio{{namespace="{NS}",workload="{SPANS}"}}'

    def with_decision() -> str | None:
        text = adapter.metrics_text().text
        return text if decision in text else None

    text = wait_for(with_decision, 15, "a decision with CPU on /metrics")
    for family in (f"{METRIC}_bucket", "latency_adapter_otlp_rejected_total",
                   "latency_adapter_api_rejected_total", "latency_adapter_dual_signal_ratio",
                   "latency_adapter_active_series"):
        assert family in text, family
    assert "trace_id" not in text.split(f"# HELP {METRIC}")[1].split("# HELP")[0]  # no exemplars here
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True,
                           timeout=30)
    report = (check.stdout + check.stderr).decode()
    assert check.returncode == 0 and not report.strip(), report

    resp = adapter.metrics_text(openmetrics=True)
    assert resp.status == 200 and resp.content_type == "application/openmetrics-text", resp
    families: dict[str, Any] = {f.name: f for f in openmetrics_families(resp.text)}
    histogram = families[METRIC]
    assert histogram.type == "histogram" and histogram.unit == "seconds"
    exemplars = [s.exemplar for s in histogram.samples if s.exemplar is not None]
    assert exemplars and {e.labels["trace_id"] for e in exemplars} <= set(loaded.latency), exemplars
    counts = {s.labels["workload"]: s.value for s in histogram.samples if s.name == f"{METRIC}_count"}
    assert counts[SPANS] == len(loaded.batch.spans) and counts[IMPORTED] == sum(IMPORTED_COUNTS)
