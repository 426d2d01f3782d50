"""The adapter's own tracing (:mod:`adapter.self_tracing`): when it is on, what its spans say, its logs.

Spans go to the SDK's ``InMemorySpanExporter`` through a ``SimpleSpanProcessor`` (``batch=False``), so
each request's span is there as soon as the response is. The HTTP side is real: aiohttp's test server in
front of the real API and OTLP receiver applications (and a small app for the failure paths), and an
in-process :class:`~adapter.service.Service` for the wiring. Log lines are formatted by the real
:class:`~adapter.telemetry.JsonFormatter`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from adapter import __version__
from adapter.api.routes import build_api_app
from adapter.config import Settings
from adapter.cpu import CpuSignals
from adapter.provider import MetricsProvider
from adapter.self_tracing import (
    TRACE_CONTEXT_FILTER,
    SelfTracing,
    TraceContextFilter,
    TracingMiddleware,
    disabled_reason,
    install_log_filter,
    points_at_receiver,
    self_resource,
    traces_endpoint,
    tracing_enabled,
)
from adapter.service import Service
from adapter.sources.kubernetes import CpuSourceSettings
from adapter.sources.otlp import ReceiverSettings, build_otlp_app
from adapter.sources.otlp_ingest import OtlpIngestor
from adapter.store import StoreSettings, WindowStore
from adapter.telemetry import JsonFormatter, Telemetry
from tests.helpers_otlp import spans_of, trace_request

PREFIX = "/apis/external.metrics.k8s.io/v1beta1"
VALUE_ROUTE = PREFIX + "/namespaces/{namespace}/{metric}"
T0 = 1_700_000_000.0
#: A caller's W3C trace context.
CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"


@pytest.fixture(autouse=True)
def clean_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from an environment without OpenTelemetry settings."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
async def tracing(exporter: InMemorySpanExporter) -> AsyncIterator[SelfTracing]:
    t = SelfTracing(exporter, batch=False)
    yield t
    await t.shutdown()


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    spans = exporter.get_finished_spans()
    assert len(spans) == 1, [s.name for s in spans]
    return spans[0]


def hex_ids(span: ReadableSpan) -> tuple[str, str]:
    assert span.context is not None
    return format(span.context.trace_id, "032x"), format(span.context.span_id, "016x")


# ---------------------------------------------------------------------------------------------------------
# When is it on?


@pytest.mark.parametrize(("env", "enabled"), [
    ({}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
    ({"OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "http://collector:4318/v1/metrics"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "TRUE"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_SDK_DISABLED": "false"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "none"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318", "OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_SERVICE_NAME": "x", "OTEL_TRACES_SAMPLER": "always_on"}, False),
])
def test_enabled_only_when_the_environment_asks(monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                enabled: bool) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing_enabled() is enabled
    assert (disabled_reason() is None) is enabled
    assert tracing_enabled(env) is enabled  # the same answer from an explicit mapping


def test_from_env_is_none_when_off(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="adapter.self_tracing"):
        assert SelfTracing.from_env() is None
    fields = [getattr(r, "fields", {}) for r in caplog.records]
    why = "neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set"
    assert {"event": "self_tracing", "enabled": False, "why": why} in fields


async def test_from_env_exports_otlp_with_the_adapter_resource(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://user:secret@127.0.0.1:9/")
    with caplog.at_level(logging.INFO, logger="adapter.self_tracing"):
        tracing = SelfTracing.from_env()
    assert tracing is not None
    try:
        assert tracing.endpoint == "http://user:secret@127.0.0.1:9/v1/traces"
        attrs = tracing.provider.resource.attributes
        assert attrs["service.name"] == "latency-adapter"
        assert attrs["service.version"] == __version__
        assert "ParentBased" in tracing.provider.sampler.get_description()  # the SDK default
        line = next(getattr(r, "fields", {}) for r in caplog.records
                    if getattr(r, "fields", {}).get("event") == "self_tracing")
        assert line["enabled"] is True
        assert line["endpoint"] == "http://127.0.0.1:9/v1/traces"  # no credentials in the log
    finally:
        await tracing.shutdown(timeout_seconds=1)


def test_traces_endpoint_follows_the_exporter_rules() -> None:
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}) == "http://c:4318/v1/traces"
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}) == "http://c:4318/v1/traces"
    assert traces_endpoint({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://t/x"}) == "https://t/x"


def test_the_environment_overrides_the_resource(monkeypatch: pytest.MonkeyPatch) -> None:
    assert self_resource().attributes["service.name"] == "latency-adapter"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "metrics-adapter-prod")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.version=9.9,deployment.environment.name=prod")
    attrs = self_resource().attributes
    assert attrs["service.name"] == "metrics-adapter-prod"
    assert attrs["service.version"] == "9.9"
    assert attrs["deployment.environment.name"] == "prod"


async def test_the_sampler_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch,
                                                      exporter: InMemorySpanExporter) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tracing = SelfTracing(exporter, batch=False)
    app = web.Application(middlewares=tracing.middlewares("api"))
    app.router.add_get("/x", _ok)
    async with TestClient(TestServer(app)) as client:
        assert (await client.get("/x")).status == 200
    assert exporter.get_finished_spans() == ()
    await tracing.shutdown()


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


@pytest.mark.parametrize(("endpoint", "port", "bind", "ours"), [
    ("http://127.0.0.1:4318/v1/traces", 4318, "0.0.0.0", True),
    ("http://localhost:4318/v1/traces", 4318, "0.0.0.0", True),
    ("http://[::1]:4318/v1/traces", 4318, "::", True),
    ("http://10.1.2.3:4318/v1/traces", 4318, "10.1.2.3", True),
    ("http://127.0.0.1:4319/v1/traces", 4318, "0.0.0.0", False),
    ("http://collector:4318/v1/traces", 4318, "0.0.0.0", False),
    ("http://127.0.0.1/v1/traces", 80, "0.0.0.0", True),
    ("https://localhost/v1/traces", 4318, "0.0.0.0", False),
])
def test_points_at_receiver(endpoint: str, port: int, bind: str, ours: bool) -> None:
    assert points_at_receiver(endpoint, port, bind) is ours


# ---------------------------------------------------------------------------------------------------------
# Spans of the real API application.


@pytest.fixture
async def api(tracing: SelfTracing) -> AsyncIterator[TestClient[Any, Any]]:
    store = WindowStore(StoreSettings(window_seconds=10, slice_seconds=1))
    app = build_api_app(MetricsProvider(store, lambda: T0), Telemetry(store),
                        middlewares=tracing.middlewares("api"))
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_an_api_span_is_named_after_the_route_pattern(api: TestClient[Any, Any],
                                                            exporter: InMemorySpanExporter) -> None:
    resp = await api.get(PREFIX + "/namespaces/shop/latency_p95_seconds",
                         params={"labelSelector": "workload=checkout"}, headers={"User-Agent": "hpa-test"})
    assert resp.status == 404  # no data yet: the API's NotFound Status
    span = only_span(exporter)
    assert span.name == f"GET {VALUE_ROUTE}"
    assert span.kind is SpanKind.SERVER
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "adapter.self_tracing"
    attrs = dict(span.attributes or {})
    assert attrs["http.request.method"] == "GET"
    assert attrs["http.route"] == VALUE_ROUTE
    assert attrs["url.path"] == PREFIX + "/namespaces/shop/latency_p95_seconds"
    assert attrs["url.scheme"] == "http"
    assert attrs["http.response.status_code"] == 404
    assert attrs["server.port"] == api.port
    assert attrs["user_agent.original"] == "hpa-test"
    assert attrs["latency_adapter.namespace"] == "shop"
    assert attrs["latency_adapter.metric"] == "latency_p95_seconds"
    assert attrs["latency_adapter.label_selector"] == "workload=checkout"
    assert span.status.status_code is StatusCode.UNSET  # a 4xx is the client's problem, not the server's
    assert span.parent is None
    assert span.resource.attributes["service.name"] == "latency-adapter"


async def test_names_stay_low_cardinality(api: TestClient[Any, Any], exporter: InMemorySpanExporter) -> None:
    for namespace in ("a", "b", "c"):
        await api.get(PREFIX + f"/namespaces/{namespace}/request_rate")
    await api.get(PREFIX)
    await api.get("/no/such/path/12345")
    await api.post("/apis")
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == [f"GET {VALUE_ROUTE}"] * 3 + [f"GET {PREFIX}", "GET", "POST"]
    unrouted = exporter.get_finished_spans()[-2]
    assert "http.route" not in (unrouted.attributes or {})
    assert (unrouted.attributes or {})["http.response.status_code"] == 404


async def test_an_incoming_traceparent_is_continued(api: TestClient[Any, Any],
                                                    exporter: InMemorySpanExporter) -> None:
    await api.get(PREFIX + "/namespaces/shop/request_rate", headers={"traceparent": TRACEPARENT})
    span = only_span(exporter)
    trace_id, span_id = hex_ids(span)
    assert trace_id == CALLER_TRACE
    assert span_id != CALLER_SPAN
    assert span.parent is not None and span.parent.is_remote
    assert format(span.parent.span_id, "016x") == CALLER_SPAN


async def test_a_bad_traceparent_starts_a_new_trace(api: TestClient[Any, Any],
                                                    exporter: InMemorySpanExporter) -> None:
    await api.get(PREFIX + "/namespaces/shop/request_rate", headers={"traceparent": "00-zz-yy-01"})
    span = only_span(exporter)
    assert span.parent is None and hex_ids(span)[0] != CALLER_TRACE


async def test_log_lines_inside_a_request_carry_its_trace_id(api: TestClient[Any, Any],
                                                             exporter: InMemorySpanExporter) -> None:
    """The API handler's own "api request refused" line (a 404) is written inside the span."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    install_log_filter([handler])
    install_log_filter([handler])  # idempotent
    assert handler.filters.count(TRACE_CONTEXT_FILTER) == 1
    logger = logging.getLogger("adapter")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        logging.getLogger("adapter.test").info("outside any request")
        await api.get(PREFIX + "/namespaces/shop/not-a-metric!", headers={"traceparent": TRACEPARENT})
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    outside = next(x for x in lines if x["msg"] == "outside any request")
    assert "trace_id" not in outside and "span_id" not in outside
    refused = next(x for x in lines if x.get("event") == "api_refused")
    span = only_span(exporter)
    assert (refused["trace_id"], refused["span_id"]) == hex_ids(span)
    assert refused["trace_id"] == CALLER_TRACE


def test_the_filter_leaves_records_alone_without_a_span() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert TraceContextFilter().filter(record) is True
    assert not hasattr(record, "trace_id")


def test_install_log_filter_defaults_to_the_root_handlers() -> None:
    handler = logging.NullHandler()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        install_log_filter()
        assert TRACE_CONTEXT_FILTER in handler.filters
    finally:
        root.removeHandler(handler)


def test_without_tracing_the_api_app_has_no_middleware() -> None:
    store = WindowStore(StoreSettings())
    app = build_api_app(MetricsProvider(store, lambda: T0), Telemetry(store))
    assert list(app.middlewares) == []


# ---------------------------------------------------------------------------------------------------------
# Failure paths (a small app) and the OTLP receiver.


async def _fail(request: web.Request) -> web.Response:
    logging.getLogger("adapter.test").error("about to answer 503")
    return web.Response(status=503, text="busy")


async def _raise(request: web.Request) -> web.Response:
    raise RuntimeError("handler bug")


async def _http_error(request: web.Request) -> web.Response:
    raise web.HTTPBadGateway()


@pytest.fixture
async def failing(tracing: SelfTracing) -> AsyncIterator[TestClient[Any, Any]]:
    app = web.Application(middlewares=tracing.middlewares("api"))
    app.router.add_get("/items/{item}/fail", _fail)
    app.router.add_get("/raise", _raise)
    app.router.add_get("/bad-gateway", _http_error)
    async with TestClient(TestServer(app)) as client:
        yield client


async def test_a_5xx_answer_is_an_error(failing: TestClient[Any, Any],
                                        exporter: InMemorySpanExporter) -> None:
    assert (await failing.get("/items/42/fail")).status == 503
    span = only_span(exporter)
    assert span.name == "GET /items/{item}/fail"
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["http.response.status_code"] == 503
    assert (span.attributes or {})["error.type"] == "503"


async def test_an_exception_is_recorded_as_a_500(failing: TestClient[Any, Any],
                                                 exporter: InMemorySpanExporter) -> None:
    assert (await failing.get("/raise")).status == 500
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["http.response.status_code"] == 500
    assert (span.attributes or {})["error.type"] == "RuntimeError"
    assert [e.name for e in span.events] == ["exception"]


async def test_an_aiohttp_http_exception_keeps_its_status(failing: TestClient[Any, Any],
                                                          exporter: InMemorySpanExporter) -> None:
    assert (await failing.get("/bad-gateway")).status == 502
    span = only_span(exporter)
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["http.response.status_code"] == 502


async def test_an_unknown_method_is_reported_as_other(failing: TestClient[Any, Any],
                                                      exporter: InMemorySpanExporter) -> None:
    await failing.request("PROPFIND", "/raise")
    span = only_span(exporter)
    assert span.name == "HTTP"
    assert (span.attributes or {})["http.request.method"] == "_OTHER"
    assert (span.attributes or {})["http.request.method_original"] == "PROPFIND"


@pytest.fixture
async def receiver(tracing: SelfTracing) -> AsyncIterator[TestClient[Any, Any]]:
    store = WindowStore(StoreSettings(window_seconds=10, slice_seconds=1))
    ingestor = OtlpIngestor(store, Settings().ingest, started_unix_nano=0, cpu=CpuSignals())
    app = build_otlp_app(ingestor, Telemetry(store), ReceiverSettings(), lambda: T0,
                         middlewares=tracing.middlewares("otlp"))
    async with TestClient(TestServer(app, auto_decompress=False)) as client:
        yield client


async def test_the_receiver_gives_one_span_per_export_request(receiver: TestClient[Any, Any],
                                                              exporter: InMemorySpanExporter) -> None:
    request = trace_request([({"k8s.namespace.name": "shop", "service.name": "checkout"},
                              spans_of([0.01] * 50, start_ns=int(T0 * 1e9)))])
    body = request.SerializeToString()
    resp = await receiver.post("/v1/traces", data=body, headers={"Content-Type": "application/x-protobuf"})
    assert resp.status == 200, await resp.text()
    span = only_span(exporter)  # one for the export of 50 spans
    assert span.name == "POST /v1/traces"
    attrs = dict(span.attributes or {})
    assert attrs["http.route"] == "/v1/traces"
    assert attrs["http.request.body.size"] == len(body)
    assert attrs["http.response.status_code"] == 200


async def test_the_loop_guard_stops_receiver_spans(tracing: SelfTracing, receiver: TestClient[Any, Any],
                                                   exporter: InMemorySpanExporter) -> None:
    port = receiver.port
    assert port is not None
    tracing.endpoint = f"http://127.0.0.1:{port}/v1/traces"
    assert tracing.guard_own_receiver(port, "127.0.0.1")
    resp = await receiver.post("/v1/traces", data=ExportTraceServiceRequest().SerializeToString(),
                               headers={"Content-Type": "application/x-protobuf"})
    assert resp.status == 200
    assert exporter.get_finished_spans() == ()


# ---------------------------------------------------------------------------------------------------------
# The service wiring.


def _settings(tmp_path: Path) -> Settings:
    return Settings(bind="127.0.0.1", api_port=0, otlp_port=0, telemetry_port=0, cert_dir=tmp_path / "certs",
                    insecure_no_auth=True, cpu=CpuSourceSettings(source="otlp"))


@pytest.fixture
def no_ssl_check() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture
def quiet_insecure_reminder() -> Iterator[None]:
    logger = logging.getLogger("adapter.service")
    old = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(old)


@pytest.mark.usefixtures("quiet_insecure_reminder")
async def test_the_service_traces_nothing_without_the_environment(tmp_path: Path) -> None:
    service = Service(_settings(tmp_path))
    await service.start()
    try:
        assert service.tracing is None
        middlewares = [m for runner in service._runners if runner.app is not None
                       for m in runner.app.middlewares]
        assert not any(isinstance(m, TracingMiddleware) for m in middlewares)
    finally:
        await service.stop()


@pytest.mark.usefixtures("quiet_insecure_reminder")
async def test_the_service_traces_api_and_receiver_and_flushes_on_stop(
        tmp_path: Path, exporter: InMemorySpanExporter, no_ssl_check: ssl.SSLContext) -> None:
    service = Service(_settings(tmp_path))
    tracing = SelfTracing(exporter)  # batched, as in production: spans arrive when stop flushes
    service.tracing = tracing
    ports = await service.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"https://127.0.0.1:{ports.api}{PREFIX}/namespaces/shop/latency_p95_seconds"
            async with session.get(url, ssl=no_ssl_check, headers={"traceparent": TRACEPARENT}) as resp:
                assert resp.status == 404
            async with session.post(f"http://127.0.0.1:{ports.otlp}/v1/traces",
                                    data=ExportTraceServiceRequest().SerializeToString(),
                                    headers={"Content-Type": "application/x-protobuf"}) as resp:
                assert resp.status == 200
            async with session.get(f"http://127.0.0.1:{ports.telemetry}/healthz") as resp:
                assert resp.status == 200
    finally:
        await service.stop()
    assert service.tracing is None
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {f"GET {VALUE_ROUTE}", "POST /v1/traces"}  # the ops port is not traced
    api_span = spans[f"GET {VALUE_ROUTE}"]
    assert hex_ids(api_span)[0] == CALLER_TRACE
    assert (api_span.attributes or {})["url.scheme"] == "https"
    assert (api_span.attributes or {})["server.port"] == ports.api
