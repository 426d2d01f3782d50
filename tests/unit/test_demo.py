"""The demo generator must produce real OTLP/HTTP that a collector would accept.

A tiny local HTTP server stands in for the adapter's OTLP receiver and
decodes requests with the official protobuf definitions, so these tests catch
encoding, endpoint-path and resource-attribute mistakes, not just logic.
Metric requests also go through the adapter's own ingestor into a
``CpuSignals``, so the CPU the demo sends is the CPU the adapter reads.
"""

from __future__ import annotations

import gzip
import logging
import math
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from adapter.cpu import CpuSignals, WorkloadCpu
from adapter.demo import WORKLOADS, DemoSettings, DemoTraffic
from adapter.policy import LatencySignal, PolicySettings, decide
from adapter.sources.otlp_ingest import IngestResult, OtlpIngestor
from adapter.store import WindowStore

SECOND_NS = 1_000_000_000


@dataclass
class Received:
    resource: dict[str, Any]
    span: Any  # opentelemetry.proto.trace.v1.trace_pb2.Span

    @property
    def workload(self) -> str:
        return str(self.resource["k8s.deployment.name"])

    @property
    def duration_ms(self) -> float:
        return float(self.span.end_time_unix_nano - self.span.start_time_unix_nano) / 1e6

    @property
    def attrs(self) -> dict[str, Any]:
        return {kv.key: _any_value(kv.value) for kv in self.span.attributes}


def _any_value(v: Any) -> Any:
    return getattr(v, v.WhichOneof("value"))


@dataclass
class MetricPoint:
    resource: dict[str, Any]
    name: str
    kind: str  # "gauge" or "sum"
    unit: str
    attrs: dict[str, Any]
    value: float


class Collector:
    """Records every span POSTed to /v1/traces and every metric point POSTed to /v1/metrics.

    Metric requests are also ingested by the adapter's ``OtlpIngestor`` into ``cpu``.
    """

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.points: list[MetricPoint] = []
        self.paths: list[str] = []
        self.cpu = CpuSignals()
        self.ingested: list[IngestResult] = []
        self._ingestor = OtlpIngestor(WindowStore(), cpu=self.cpu)
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with collector._lock:
                    collector.paths.append(self.path)
                if self.path == "/v1/metrics":
                    self._metrics(body)
                    return
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.end_headers()
                    return
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                got = [
                    Received({kv.key: _any_value(kv.value) for kv in rs.resource.attributes}, span)
                    for rs in req.resource_spans
                    for ss in rs.scope_spans
                    for span in ss.spans
                ]
                with collector._lock:
                    collector.spans.extend(got)
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _metrics(self, body: bytes) -> None:
                req = ExportMetricsServiceRequest()
                req.ParseFromString(body)
                got = []
                for rm in req.resource_metrics:
                    resource = {kv.key: _any_value(kv.value) for kv in rm.resource.attributes}
                    for sm in rm.scope_metrics:
                        for metric in sm.metrics:
                            kind = metric.WhichOneof("data")
                            for point in getattr(metric, kind).data_points:
                                got.append(MetricPoint(
                                    resource, metric.name, kind, metric.unit,
                                    {kv.key: _any_value(kv.value) for kv in point.attributes},
                                    _any_value(point) if kind in ("gauge", "sum") else math.nan,
                                ))
                with collector._lock:
                    collector.points.extend(got)
                    result, payload = collector._ingestor.ingest_metrics(body, False, time.time())
                    collector.ingested.append(result)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # A short poll interval keeps server.shutdown() (fixture teardown) fast.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    def take(self) -> list[Received]:
        with self._lock:
            got, self.spans = self.spans, []
        return got

    def take_points(self) -> list[MetricPoint]:
        with self._lock:
            got, self.points = self.points, []
        return got

    def reading(self, workload: str) -> WorkloadCpu | None:
        """The CPU the adapter would use for ``demo/<workload>`` now."""
        with self._lock:
            return self.cpu.reading("demo", workload, time.time(), 60.0)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


@pytest.fixture
def make_traffic(collector: Collector) -> Iterator[Any]:
    created: list[DemoTraffic] = []

    def make(**kw: Any) -> DemoTraffic:
        t = DemoTraffic(DemoSettings(otlp_endpoint=collector.url, **kw))
        created.append(t)
        return t

    yield make
    for t in created:
        t.close()


def _by_workload(spans: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for r in spans:
        out.setdefault(r.workload, []).append(r)
    return out


def test_spans_reach_collector_with_resource_and_server_attributes(
    collector: Collector, make_traffic: Any
) -> None:
    traffic = make_traffic(rate=500.0, seed=7)
    now = time.time_ns()
    emitted = sum(traffic.emit_tick(now + i * SECOND_NS // 5, 0.2) for i in range(5))
    assert emitted == 2 * 500  # 500/s * 1 s for each of two workloads
    assert traffic.flush()

    spans = collector.take()
    assert len(spans) == emitted
    assert set(collector.paths) == {"/v1/traces", "/v1/metrics"}
    by = _by_workload(spans)
    assert set(by) == {"checkout", "catalog"}
    assert len(by["checkout"]) == len(by["catalog"]) == 500

    routes = {"checkout": {"/cart", "/checkout"}, "catalog": {"/items"}}
    for name, recs in by.items():
        for r in recs:
            assert r.resource["service.name"] == name
            assert r.resource["k8s.namespace.name"] == "demo"
            assert r.resource["k8s.deployment.name"] == name
            assert r.span.kind == Span.SpanKind.SPAN_KIND_SERVER
            attrs = r.attrs
            assert attrs["http.route"] in routes[name]
            assert attrs["http.request.method"] == "GET"
            assert r.span.name == f"GET {attrs['http.route']}"
            assert r.duration_ms > 0
        # Both checkout routes are actually used.
        assert {r.attrs["http.route"] for r in recs} == routes[name]

    assert 65 < statistics.median(r.duration_ms for r in by["checkout"]) < 95
    assert 33 < statistics.median(r.duration_ms for r in by["catalog"]) < 47


def test_errors_are_rare_and_marked(collector: Collector, make_traffic: Any) -> None:
    traffic = make_traffic(rate=1000.0, seed=3)
    traffic.emit_tick(time.time_ns(), 1.0)
    assert traffic.flush()
    spans = collector.take()
    errors = [r for r in spans if r.attrs["http.response.status_code"] == 500]
    assert 0 < len(errors) < 0.03 * len(spans)
    for r in spans:
        if r.attrs["http.response.status_code"] == 500:
            assert r.span.status.code == Status.StatusCode.STATUS_CODE_ERROR
        else:
            assert r.attrs["http.response.status_code"] == 200
            assert r.span.status.code == Status.StatusCode.STATUS_CODE_UNSET


def test_checkout_slows_down_during_slow_phase(
    collector: Collector, make_traffic: Any, caplog: pytest.LogCaptureFixture
) -> None:
    traffic = make_traffic(rate=500.0, seed=11)
    t0 = time.time_ns()
    caplog.set_level(logging.INFO, logger="adapter.demo")
    traffic.emit_tick(t0, 0.001)  # fixes the schedule's start
    traffic.emit_tick(t0 + 125 * SECOND_NS, 1.0)  # inside the first slow phase (120-150 s)
    assert traffic.flush()
    by = _by_workload(collector.take())
    assert 320 < statistics.median(r.duration_ms for r in by["checkout"]) < 480
    # The control workload is unaffected.
    assert 33 < statistics.median(r.duration_ms for r in by["catalog"]) < 47
    assert any("entering slow phase" in m for m in caplog.messages)

    traffic.emit_tick(t0 + 155 * SECOND_NS, 1.0)  # back to normal
    assert traffic.flush()
    by = _by_workload(collector.take())
    assert 65 < statistics.median(r.duration_ms for r in by["checkout"]) < 95
    assert any("leaving slow phase" in m for m in caplog.messages)


def test_seeded_generation_is_reproducible(collector: Collector, make_traffic: Any) -> None:
    now = time.time_ns()
    runs = []
    for _ in range(2):
        traffic = make_traffic(rate=100.0, seed=5)
        traffic.emit_tick(now, 0.5)
        assert traffic.flush()
        runs.append(sorted((r.workload, r.attrs["http.route"], r.duration_ms) for r in collector.take()))
    assert runs[0] == runs[1]
    assert len(runs[0]) == 100


def test_fractional_rate_is_carried_between_ticks(collector: Collector, make_traffic: Any) -> None:
    traffic = make_traffic(rate=3.0)
    now = time.time_ns()
    # 3/s * 0.2 s = 0.6 spans per tick per workload; over 10 ticks that is 6 each.
    total = sum(traffic.emit_tick(now + i * SECOND_NS // 5, 0.2) for i in range(10))
    assert total == 12


def test_slow_now_follows_schedule() -> None:
    traffic = DemoTraffic(DemoSettings(otlp_endpoint="http://127.0.0.1:9"))
    try:
        # Defaults: every 120 s, checkout is slow for 30 s; the first period is baseline.
        assert not traffic.slow_now(0)
        assert not traffic.slow_now(29)
        assert not traffic.slow_now(119.9)
        assert traffic.slow_now(120)
        assert traffic.slow_now(149.9)
        assert not traffic.slow_now(150)
        assert not traffic.slow_now(239.9)
        assert traffic.slow_now(240)
        assert traffic.slow_now(265)
        assert not traffic.slow_now(270)
    finally:
        traffic.close()

    custom = DemoTraffic(DemoSettings(otlp_endpoint="http://127.0.0.1:9", slow_period=10, slow_duration=2))
    try:
        assert [custom.slow_now(t) for t in (5, 10, 11.5, 12, 20, 21, 22)] == [
            False,
            True,
            True,
            False,
            True,
            True,
            False,
        ]
    finally:
        custom.close()


def test_zero_slow_duration_disables_slowdown() -> None:
    traffic = DemoTraffic(DemoSettings(otlp_endpoint="http://127.0.0.1:9", slow_duration=0))
    try:
        assert not any(traffic.slow_now(t) for t in (0, 120, 121, 240))
    finally:
        traffic.close()


@pytest.mark.parametrize(
    "kw",
    [
        {"rate": 0.0},
        {"rate": -1.0},
        {"slow_period": 0.0},
        {"slow_duration": -1.0},
        {"slow_period": 10.0, "slow_duration": 11.0},
        {"metrics_interval": 0.0},
        {"metrics_interval": math.inf},
    ],
)
def test_invalid_settings_rejected(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        DemoSettings(**kw)  # type: ignore[arg-type]


def test_run_until_stopped_flushes_on_exit(collector: Collector, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapter.demo")
    traffic = DemoTraffic(DemoSettings(otlp_endpoint=collector.url, rate=100.0))
    stop = threading.Event()
    thread = threading.Thread(target=traffic.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(0.5)
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()

    # run() flushed and shut down on exit, so everything emitted has arrived
    # without waiting for the batch processor's schedule.
    by = _by_workload(collector.take())
    assert set(by) == {"checkout", "catalog"}
    assert all(len(v) >= 20 for v in by.values())
    start_lines = [m for m in caplog.messages if "demo traffic: sending OTLP traces" in m]
    assert len(start_lines) == 1
    assert collector.url in start_lines[0]
    assert "demo/checkout" in start_lines[0] and "demo/catalog" in start_lines[0]
    assert f"{collector.url}/v1/metrics" in start_lines[0]
    # The meter providers' shutdown exported a last collection: CPU for both workloads.
    for name, pods in (("checkout", 3), ("catalog", 2)):
        got = collector.reading(name)
        assert got is not None and got.pods == pods, name
    traffic.close()  # idempotent


# --- CPU metrics ------------------------------------------------------------------------------------------


def _utilization(collector: Collector, workload: str) -> float:
    got = collector.reading(workload)
    assert got is not None, workload
    return got.usage_cores / got.request_cores


def test_cpu_metrics_reach_the_adapter_for_every_pod(collector: Collector, make_traffic: Any) -> None:
    traffic = make_traffic(rate=50.0)
    traffic.emit_tick(time.time_ns(), 0.2)
    assert traffic.flush()

    points = collector.take_points()
    assert {p.name for p in points} == {"k8s.pod.cpu.usage", "k8s.container.cpu.request"}
    for p in points:
        assert p.resource["k8s.namespace.name"] == "demo"
        assert p.resource["k8s.deployment.name"] == p.resource["service.name"]
        assert p.unit == "{cpu}"
        assert p.attrs["k8s.pod.name"].startswith(p.resource["k8s.deployment.name"] + "-")
        assert p.kind == ("gauge" if p.name == "k8s.pod.cpu.usage" else "sum")
        assert ("k8s.container.name" in p.attrs) == (p.name == "k8s.container.cpu.request")
        assert p.value > 0
    usage_pods = {(p.resource["k8s.deployment.name"], p.attrs["k8s.pod.name"])
                  for p in points if p.name == "k8s.pod.cpu.usage"}
    assert sorted(w for w, _ in usage_pods) == ["catalog", "catalog", "checkout", "checkout", "checkout"]

    # The adapter's ingestor took every point, and reads whole workloads from them.
    assert all(r.rejected == 0 and r.ignored == 0 for r in collector.ingested)
    checkout, catalog = collector.reading("checkout"), collector.reading("catalog")
    assert checkout is not None and catalog is not None
    assert (checkout.pods, catalog.pods) == (3, 2)
    assert checkout.request_cores == pytest.approx(1.5)  # 3 pods x (app 0.4 + istio-proxy 0.1)
    assert catalog.request_cores == pytest.approx(2.0)  # 2 pods x (app 0.9 + istio-proxy 0.1)
    assert abs(checkout.observed_at - time.time()) < 5

    # Reported again: requests are per container, never counted twice.
    assert traffic.flush()
    checkout = collector.reading("checkout")
    assert checkout is not None and checkout.request_cores == pytest.approx(1.5)


def test_no_cpu_is_reported_before_the_first_tick(collector: Collector, make_traffic: Any) -> None:
    traffic = make_traffic()
    assert traffic.flush()
    assert collector.take_points() == []
    assert collector.cpu.all_workloads() == set()


def _p95_seconds(spans: list[Received]) -> float:
    return statistics.quantiles([r.duration_ms for r in spans], n=20)[18] / 1e3


def test_cpu_tells_the_dual_signal_story(collector: Collector, make_traffic: Any) -> None:
    """Normal, catalog busy (CPU-bound), checkout slow (a dependency), normal: the policy's reasons."""
    traffic = make_traffic(rate=500.0, seed=2)
    policy = PolicySettings()  # p95 target 250 ms, CPU target 60 %, floor 30 %
    t0 = time.time_ns()
    expected = [
        # (t, checkout utilisation, reason; catalog utilisation, reason)
        (0, 0.35, "latency", 0.12, "latency"),
        (65, 0.35, "latency", 0.9, "cpu"),  # catalog's busy phase: 60-90 s
        (125, 0.12, "dependency_latency", 0.12, "latency"),  # checkout's slow phase: 120-150 s
        (155, 0.35, "latency", 0.12, "latency"),
    ]
    for t, checkout_cpu, checkout_reason, catalog_cpu, catalog_reason in expected:
        traffic.emit_tick(t0 + t * SECOND_NS, 1.0)
        assert traffic.flush()
        spans = _by_workload(collector.take())
        now = time.time()
        for name, cpu, reason in (("checkout", checkout_cpu, checkout_reason),
                                  ("catalog", catalog_cpu, catalog_reason)):
            assert _utilization(collector, name) == pytest.approx(cpu, rel=0.06), (t, name)
            signal = collector.cpu.signal("demo", name, now, policy.stale_after_seconds)
            latency = LatencySignal(_p95_seconds(spans[name]), len(spans[name]), now)
            decision = decide(latency, signal, policy, now)
            assert decision is not None and decision.reason == reason, (t, name, decision)
            if reason == "dependency_latency":
                assert decision.ratio == 1.0  # hold
            if reason == "cpu":
                assert decision.ratio == pytest.approx(1.5, rel=0.06)


def test_pod_usage_is_spread_around_the_workload_and_reproducible() -> None:
    traffic = DemoTraffic(DemoSettings(otlp_endpoint="http://127.0.0.1:9"))
    other = DemoTraffic(DemoSettings(otlp_endpoint="http://127.0.0.1:9"))
    try:
        for spec, workload in zip(WORKLOADS, traffic._workloads, strict=True):
            for t in (0.0, 7.5, 65.0, 125.0):
                usage = workload.pod_usage(t)
                assert len(usage) == spec.pods and len(set(usage)) == spec.pods
                total = sum(usage) / (spec.pod_request * spec.pods)
                assert total == pytest.approx(traffic.cpu_utilization(spec.name, t), rel=0.05)
                assert usage == other._workloads[WORKLOADS.index(spec)].pod_usage(t)
    finally:
        traffic.close()
        other.close()


def test_busy_phase_follows_schedule() -> None:
    traffic = DemoTraffic(DemoSettings(otlp_endpoint="http://127.0.0.1:9"))
    try:
        # Defaults: catalog is busy for 30 s half a period (60 s) after each checkout slowdown.
        assert [traffic.busy_now(t) for t in (0, 59.9, 60, 89.9, 90, 179.9, 180, 209.9, 210)] == [
            False, False, True, True, False, False, True, True, False]
        assert not any(traffic.busy_now(t) and traffic.slow_now(t) for t in range(0, 1000))
        assert traffic.cpu_utilization("catalog", 70) == 0.9
        assert traffic.cpu_utilization("catalog", 130) == 0.12
        assert traffic.cpu_utilization("checkout", 130) == 0.12
        assert traffic.cpu_utilization("checkout", 70) == 0.35
    finally:
        traffic.close()
    quiet = DemoTraffic(DemoSettings(otlp_endpoint="http://127.0.0.1:9", slow_duration=0))
    try:
        assert not any(quiet.busy_now(t) for t in (0, 60, 61, 180))
    finally:
        quiet.close()


def test_catalog_busy_phase_is_logged(make_traffic: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="adapter.demo")
    traffic = make_traffic(rate=1.0)
    t0 = time.time_ns()
    traffic.emit_tick(t0, 0.0)
    traffic.emit_tick(t0 + 61 * SECOND_NS, 0.0)
    traffic.emit_tick(t0 + 91 * SECOND_NS, 0.0)
    assert any("catalog entering busy phase" in m for m in caplog.messages)
    assert any("catalog leaving busy phase" in m for m in caplog.messages)


def test_close_with_an_unreachable_collector_after_traffic_is_bounded() -> None:
    traffic = DemoTraffic(DemoSettings(otlp_endpoint="http://127.0.0.1:9"))
    traffic.emit_tick(time.time_ns(), 0.1)
    started = time.monotonic()
    traffic.close()
    # Every provider shuts down in parallel, each bounded by the export timeout (5 s).
    assert time.monotonic() - started < 8.0
