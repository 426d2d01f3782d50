"""The adapter traces itself when the OpenTelemetry environment asks for it, and only then.

A real ``latency-adapter serve --insecure-no-auth`` process, with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing
at a tiny collector in this test (a stdlib HTTP server that keeps every ``/v1/traces`` body). After a
few API requests (one carrying a caller's ``traceparent``) and one OTLP export, the collector holds SERVER
spans of service ``latency-adapter`` named after the route patterns, and the adapter's JSON log line for a
refused request carries that request's trace id. Without the variable, or with ``OTEL_SDK_DISABLED=true``
or ``OTEL_TRACES_EXPORTER=none``, the collector receives nothing, even after the process stopped (which
is when queued spans would be flushed).
"""

from __future__ import annotations

import gzip
import http.client
import os
import ssl
import threading
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.integration.process import Response, ServiceProcess, exchange, wait_for

PREFIX = "/apis/external.metrics.k8s.io/v1beta1"
VALUE_ROUTE = PREFIX + "/namespaces/{namespace}/{metric}"
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CALLER_TRACE}-00f067aa0ba902b7-01"
SERVER = 2  # Span.SpanKind.SPAN_KIND_SERVER


class Collector:
    """An OTLP/HTTP trace endpoint that answers 200 and keeps every request it got."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                with collector._lock:
                    collector.paths.append(self.path)
                    collector.requests.append(request)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="collector", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spans(self) -> list[tuple[dict[str, Any], Any]]:
        """Every span received, with its resource's attributes."""
        out: list[tuple[dict[str, Any], Any]] = []
        with self._lock:
            requests = list(self.requests)
        for request in requests:
            for rs in request.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    out.extend((resource, span) for span in ss.spans)
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    c = Collector()
    yield c
    c.close()


class TracedAdapter(ServiceProcess):
    """``latency-adapter serve --insecure-no-auth`` with exactly the OTel environment given."""

    def __init__(self, workdir: Path, env: Mapping[str, str]) -> None:
        config = {"store": {"window_seconds": 30, "slice_seconds": 1}}
        super().__init__(workdir, ["--insecure-no-auth"], config)
        self.drop_env = tuple(name for name in os.environ if name.startswith("OTEL_"))
        self.extra_env = dict(env)
        self._ssl: ssl.SSLContext | None = None

    def api(self, path: str, headers: dict[str, str] | None = None) -> Response:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.cert_dir / "apiserver.crt"))
        conn = http.client.HTTPSConnection("127.0.0.1", self.api_port, context=self._ssl, timeout=10)
        return exchange(conn, path, headers or {}, close=True)

    def otlp_export(self) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.otlp_port, timeout=10)
        return exchange(conn, "/v1/traces", {"Content-Type": "application/x-protobuf"}, method="POST",
                        body=ExportTraceServiceRequest().SerializeToString(), close=True)

    def traffic(self) -> None:
        """The requests every test makes: values, discovery, a refused metric name, one OTLP export."""
        assert self.api(PREFIX + "/namespaces/shop/latency_p95_seconds?labelSelector=workload%3Dcheckout",
                        {"traceparent": TRACEPARENT}).status == 404  # no data: NotFound
        assert self.api(PREFIX + "/namespaces/team-a/request_rate").status == 404
        assert self.api(PREFIX).status == 200
        assert self.api(PREFIX + "/namespaces/shop/not-a-metric!").status == 404
        assert self.otlp_export().status == 200


@pytest.fixture
def started() -> Iterator[list[TracedAdapter]]:
    procs: list[TracedAdapter] = []
    yield procs
    for proc in procs:
        proc.stop()


def test_the_adapter_exports_its_own_spans(tmp_path: Path, collector: Collector,
                                           started: list[TracedAdapter]) -> None:
    adapter = TracedAdapter(tmp_path / "traced", {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.url,
                                                  "OTEL_BSP_SCHEDULE_DELAY": "200"})
    started.append(adapter)
    adapter.start()
    adapter.traffic()

    expected = {f"GET {VALUE_ROUTE}": 3, f"GET {PREFIX}": 1, "POST /v1/traces": 1}

    def all_arrived() -> list[tuple[dict[str, Any], Any]] | None:
        spans = collector.spans()
        names = [s.name for _, s in spans]
        return spans if all(names.count(n) >= k for n, k in expected.items()) else None

    spans = wait_for(all_arrived, 15, f"the adapter's spans {expected} at the collector")
    assert set(collector.paths) == {"/v1/traces"}
    assert {s.name for _, s in spans} == set(expected)  # route patterns; the ops port is not traced
    for resource, span in spans:
        assert resource["service.name"] == "latency-adapter"
        assert resource["service.version"]
        assert span.kind == SERVER
    by_trace = {s.trace_id.hex(): s for _, s in spans}
    continued = by_trace[CALLER_TRACE]  # the caller's trace went on in the adapter
    assert continued.name == f"GET {VALUE_ROUTE}"
    attrs = {a.key: a.value for a in continued.attributes}
    assert attrs["http.route"].string_value == VALUE_ROUTE
    assert attrs["http.response.status_code"].int_value == 404
    assert attrs["server.port"].int_value == adapter.api_port
    assert attrs["latency_adapter.namespace"].string_value == "shop"
    assert attrs["latency_adapter.metric"].string_value == "latency_p95_seconds"

    refused = [e for e in adapter.log_events() if e.get("event") == "api_refused"]
    assert len(refused) == 3, adapter.stderr_tail()
    bad_name = next(e for e in refused if "not-a-metric" in e["path"])
    span = by_trace[bad_name["trace_id"]]  # the log line names the span of its own request
    assert span.span_id.hex() == bad_name["span_id"]
    assert {a.key: a.value.string_value for a in span.attributes}["latency_adapter.metric"] == "not-a-metric!"
    assert not any("trace_id" in e for e in adapter.log_events() if e.get("event") == "listening")
    on = next(e for e in adapter.log_events() if e.get("event") == "self_tracing")
    assert on["enabled"] is True and on["endpoint"] == collector.url + "/v1/traces"

    assert adapter.stop() == 0, adapter.stderr_tail()


@pytest.mark.parametrize("env", [
    {},
    {"OTEL_SDK_DISABLED": "true"},
    {"OTEL_TRACES_EXPORTER": "none"},
], ids=["no-endpoint", "sdk-disabled", "exporter-none"])
def test_without_the_environment_nothing_is_exported(tmp_path: Path, collector: Collector,
                                                     started: list[TracedAdapter],
                                                     env: dict[str, str]) -> None:
    full_env = dict(env)
    if env:  # the endpoint is there, but another variable says no
        full_env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.url
    full_env["OTEL_BSP_SCHEDULE_DELAY"] = "200"
    adapter = TracedAdapter(tmp_path / "quiet", full_env)
    started.append(adapter)
    adapter.start()
    adapter.traffic()
    assert adapter.stop() == 0, adapter.stderr_tail()  # a stop would flush anything queued
    assert collector.requests == []
    off = next(e for e in adapter.log_events() if e.get("event") == "self_tracing")
    assert off["enabled"] is False, off
    assert not any("trace_id" in e for e in adapter.log_events() if e.get("event") == "api_refused")
