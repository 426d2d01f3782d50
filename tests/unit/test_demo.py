"""The demo generator must produce real OTLP/HTTP that a collector would accept.

A tiny local HTTP server stands in for the adapter's OTLP receiver and
decodes requests with the official protobuf definitions, so these tests catch
encoding, endpoint-path and resource-attribute mistakes, not just logic.
"""

from __future__ import annotations

import gzip
import logging
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from adapter.demo import DemoSettings, DemoTraffic

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


class Collector:
    """Records every span POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.spans: list[Received] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with collector._lock:
                    collector.paths.append(self.path)
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
    assert set(collector.paths) == {"/v1/traces"}
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
    traffic.close()  # idempotent
