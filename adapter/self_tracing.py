"""Optional OpenTelemetry tracing of the adapter's own request handling, and trace ids in its log lines.

Off unless the standard OpenTelemetry environment asks for it (:func:`disabled_reason`):
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT`` set, ``OTEL_SDK_DISABLED`` not
``true`` and ``OTEL_TRACES_EXPORTER`` not ``none``. When off nothing here runs on a request: no
middleware is installed, the SDK and the exporter are not even imported, and log records are untouched.

When on (:class:`SelfTracing`): a private ``TracerProvider`` (never the global one, so several services
can run in one process, as the tests do) with resource ``service.name=latency-adapter`` and
``service.version`` (``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` override both), the SDK's
default sampler (``OTEL_TRACES_SAMPLER``, ``OTEL_TRACES_SAMPLER_ARG``), a ``BatchSpanProcessor``
(``OTEL_BSP_*``) and the OTLP/HTTP protobuf exporter, which reads its endpoint, headers, timeout,
compression and certificates from the standard variables itself. :meth:`SelfTracing.shutdown` flushes
what is queued, bounded in time, when the service stops.

What is traced (:class:`TracingMiddleware`): one SERVER span per request on the API listener and one per
*export request* on the OTLP receiver (never one per span received: a receiver span per ingested span
would multiply traffic, and would feed on itself when the adapter exports to its own receiver). The
operations listener (probes, ``/metrics`` scrapes) is not traced. Span names are low-cardinality:
``{method} {route pattern}`` (``GET /apis/external.metrics.k8s.io/v1beta1/namespaces/{namespace}/{metric}``),
or just ``{method}`` for a request no route matched. A W3C ``traceparent`` from the caller is continued.

Exporting to the adapter's own OTLP receiver is allowed (then the adapter also serves its own latency, as
workload ``latency-adapter``), but each export is itself a received request; when the endpoint plainly
is this process's receiver (loopback, the bind address or the host name, and the OTLP port) receiver
requests are not traced, so exports never produce further spans (:meth:`SelfTracing.guard_own_receiver`).

Logs (:class:`TraceContextFilter`, :func:`install_log_filter`): while a span is current, every log record
gets ``trace_id`` (32 hex digits) and ``span_id`` (16), which :class:`~adapter.telemetry.JsonFormatter`
writes into the JSON line.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import threading
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from aiohttp import web
from aiohttp.typedefs import Handler
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger("adapter.self_tracing")

SERVICE_NAME = "latency-adapter"
#: The instrumentation scope of the adapter's own spans.
SCOPE = "adapter.self_tracing"
#: How long stopping the service waits for queued spans to be exported.
SHUTDOWN_SECONDS = 5.0
#: Attribute values taken from the request are cut to this many characters.
MAX_VALUE = 256
#: Route patterns that are catch-alls: a request they match is reported as matched by no route.
CATCH_ALL_ROUTES = frozenset({"/{tail}"})
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
                           "QUERY"})
#: What the API spans record of the request, beside the HTTP attributes: route parameter -> attribute.
API_ROUTE_PARAMS: Mapping[str, str] = {"namespace": "latency_adapter.namespace",
                                       "metric": "latency_adapter.metric"}
API_QUERY_PARAMS: Mapping[str, str] = {"labelSelector": "latency_adapter.label_selector"}

_PROPAGATOR = TraceContextTextMapPropagator()


# ---------------------------------------------------------------------------------------------------------
# Is it wanted?


def disabled_reason(env: Mapping[str, str] | None = None) -> str | None:
    """None when the environment asks for self tracing, else why it stays off (for the log line)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return "OTEL_SDK_DISABLED is true"
    exporters = {x.strip().lower() for x in env.get("OTEL_TRACES_EXPORTER", "").split(",") if x.strip()}
    if "none" in exporters:
        return "OTEL_TRACES_EXPORTER is none"
    if not (env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            or env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()):
        return "neither OTEL_EXPORTER_OTLP_ENDPOINT nor OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set"
    return None


def tracing_enabled(env: Mapping[str, str] | None = None) -> bool:
    return disabled_reason(env) is None


def traces_endpoint(env: Mapping[str, str] | None = None) -> str:
    """The URL the OTLP/HTTP exporter posts to, by the exporter's own rules."""
    env = os.environ if env is None else env
    signal = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if signal:
        return signal
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or "http://localhost:4318"
    return base.removesuffix("/") + "/v1/traces"


def _redacted(url: str) -> str:
    """``url`` without user name or password, fit for a log line."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = host if parts.port is None else f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _config_warnings(env: Mapping[str, str]) -> list[str]:
    """Settings this module cannot honour: it always exports OTLP over HTTP with protobuf."""
    warnings = []
    exporters = {x.strip().lower() for x in env.get("OTEL_TRACES_EXPORTER", "").split(",") if x.strip()}
    if exporters - {"otlp"}:
        warnings.append(f"OTEL_TRACES_EXPORTER={env['OTEL_TRACES_EXPORTER']!r}: only otlp is supported")
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = env.get(name, "").strip()
        if value:
            if value != "http/protobuf":
                warnings.append(f"{name}={value!r}: only http/protobuf is supported")
            break
    return warnings


def points_at_receiver(endpoint: str, otlp_port: int, bind: str) -> bool:
    """Whether ``endpoint`` plainly is this process's OTLP receiver (best effort: no DNS lookups)."""
    parts = urlsplit(endpoint)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return False
    if port != otlp_port:
        return False
    host = (parts.hostname or "").lower()
    if host in {"localhost", bind.lower(), socket.gethostname().lower()}:
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def self_resource() -> Resource:
    """``service.name=latency-adapter`` and ``service.version``, unless the environment names them.

    ``Resource.create`` lets explicit attributes win over ``OTEL_SERVICE_NAME`` and
    ``OTEL_RESOURCE_ATTRIBUTES``; defaults the environment sets are therefore left out here.
    """
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource

    defaults = {"service.name": SERVICE_NAME, "service.version": __version__}
    from_env = OTELResourceDetector().detect().attributes
    return Resource.create({k: v for k, v in defaults.items() if k not in from_env})


# ---------------------------------------------------------------------------------------------------------
# The request middleware.


def _cut(value: str) -> str:
    return value if len(value) <= MAX_VALUE else value[:MAX_VALUE]


class TracingMiddleware:
    """One SERVER span per request, current while the handler runs (aiohttp new-style middleware)."""

    __middleware_version__ = 1

    def __init__(self, tracer: trace.Tracer, *, route_params: Mapping[str, str] | None = None,
                 query_params: Mapping[str, str] | None = None, record_body_size: bool = False) -> None:
        self.tracer = tracer
        self.route_params = dict(route_params or {})
        self.query_params = dict(query_params or {})
        self.record_body_size = record_body_size
        #: False makes this middleware pass requests straight through (see guard_own_receiver).
        self.active = True

    async def __call__(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not self.active:
            return await handler(request)
        match_info = request.match_info
        resource = match_info.route.resource
        route = resource.canonical if resource is not None else None
        if route in CATCH_ALL_ROUTES:
            route = None
        method = request.method
        attributes: dict[str, Any] = {
            "url.path": request.rel_url.raw_path[:1024],
            "url.scheme": "https" if request.secure else "http",
        }
        if method in KNOWN_METHODS:
            attributes["http.request.method"] = method
        else:
            attributes["http.request.method"] = "_OTHER"
            attributes["http.request.method_original"] = _cut(method)
            method = "HTTP"
        name = method
        if route is not None:
            name = f"{method} {route}"
            attributes["http.route"] = route
            for key, attribute in self.route_params.items():
                value = match_info.get(key)
                if value is not None:
                    attributes[attribute] = _cut(value)
        if self.query_params:
            query = request.query
            for key, attribute in self.query_params.items():
                value = query.get(key)
                if value is not None:
                    attributes[attribute] = _cut(value)
        sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
        if isinstance(sockname, tuple) and len(sockname) >= 2:
            attributes["server.port"] = sockname[1]
        if request.remote:
            attributes["client.address"] = request.remote
        agent = request.headers.get("User-Agent")
        if agent:
            attributes["user_agent.original"] = _cut(agent)
        if self.record_body_size and request.content_length is not None:
            attributes["http.request.body.size"] = request.content_length
        parent = _PROPAGATOR.extract(request.headers)
        with self.tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER,
                                               attributes=attributes, record_exception=False,
                                               set_status_on_exception=False) as span:
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # aiohttp's own answers (404 of no route, 405, 413, ...)
                _set_status(span, exc.status)
                raise
            except Exception as exc:  # aiohttp answers 500 for anything else a handler raises
                span.record_exception(exc)
                span.set_attribute("http.response.status_code", 500)
                span.set_attribute("error.type", type(exc).__qualname__)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__qualname__}: {exc}"[:MAX_VALUE]))
                raise
            _set_status(span, response.status)
            return response


def _set_status(span: trace.Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_attribute("error.type", str(status))
        span.set_status(Status(StatusCode.ERROR))


# ---------------------------------------------------------------------------------------------------------
# The tracer.


class SelfTracing:
    """The adapter's own tracer provider, exporter and middlewares; create one per service."""

    def __init__(self, exporter: SpanExporter | None = None, *, resource: Resource | None = None,
                 batch: bool = True, endpoint: str | None = None) -> None:
        """``exporter`` None: OTLP/HTTP protobuf configured by the environment. ``batch`` False exports
        each span as it ends (tests with an in-memory exporter)."""
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

        if exporter is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        self.endpoint = endpoint
        self.provider: TracerProvider = TracerProvider(
            resource=resource if resource is not None else self_resource(), shutdown_on_exit=False)
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer(SCOPE, __version__)
        self.api = TracingMiddleware(self.tracer, route_params=API_ROUTE_PARAMS,
                                     query_params=API_QUERY_PARAMS)
        self.receiver = TracingMiddleware(self.tracer, record_body_size=True)
        self._stopped = False

    @classmethod
    def from_env(cls) -> SelfTracing | None:
        """A :class:`SelfTracing` exporting where the environment says, or None when it asks for none."""
        why_not = disabled_reason()
        if why_not is not None:
            log.info("self tracing off", extra={"fields": {
                "event": "self_tracing", "enabled": False, "why": why_not}})
            return None
        for warning in _config_warnings(os.environ):
            log.warning("self tracing: exporting OTLP/HTTP protobuf anyway", extra={"fields": {
                "event": "self_tracing_config", "detail": warning}})
        endpoint = traces_endpoint()
        tracing = cls(endpoint=endpoint)
        attrs = tracing.provider.resource.attributes
        log.info("self tracing on", extra={"fields": {
            "event": "self_tracing", "enabled": True, "endpoint": _redacted(endpoint),
            "service_name": attrs.get("service.name"),
            "sampler": tracing.provider.sampler.get_description()}})
        return tracing

    def middlewares(self, listener: str) -> tuple[TracingMiddleware, ...]:
        """The middlewares for one listener: ``api`` or ``otlp`` (the ops listener is not traced)."""
        if listener == "api":
            return (self.api,)
        if listener == "otlp":
            return (self.receiver,)
        return ()

    def guard_own_receiver(self, otlp_port: int, bind: str) -> bool:
        """Stop tracing receiver requests when spans go to this very receiver; True when it did."""
        if self.endpoint is None or not points_at_receiver(self.endpoint, otlp_port, bind):
            return False
        self.receiver.active = False
        log.warning("self tracing exports to this adapter's own OTLP receiver: its API spans are ingested "
                    "as workload latency; receiver requests are not traced", extra={"fields": {
                        "event": "self_tracing_loop", "endpoint": _redacted(self.endpoint),
                        "otlp_port": otlp_port}})
        return True

    def force_flush(self, timeout_seconds: float = SHUTDOWN_SECONDS) -> bool:
        return self.provider.force_flush(int(timeout_seconds * 1000))

    async def shutdown(self, timeout_seconds: float = SHUTDOWN_SECONDS) -> None:
        """Export what is queued and stop, waiting at most ``timeout_seconds`` (an unreachable collector
        must not hold up the stop; the worker threads are daemons)."""
        if self._stopped:
            return
        self._stopped = True
        self.api.active = self.receiver.active = False
        worker = threading.Thread(target=self.provider.shutdown, name="self-tracing-shutdown", daemon=True)
        worker.start()
        await asyncio.to_thread(worker.join, timeout_seconds)
        if worker.is_alive():
            log.warning("self tracing: spans not exported within the stop timeout", extra={"fields": {
                "event": "self_tracing_flush_timeout", "timeout_seconds": timeout_seconds}})


# ---------------------------------------------------------------------------------------------------------
# Logs.


class TraceContextFilter(logging.Filter):
    """Sets ``record.trace_id`` and ``record.span_id`` from the current span when it is valid."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None):
            return True  # already set: by another handler's pass of this filter, or by the caller
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        return True


TRACE_CONTEXT_FILTER = TraceContextFilter()


def install_log_filter(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Add :data:`TRACE_CONTEXT_FILTER` to ``handlers`` (default: the root logger's); idempotent.

    A filter on a handler sees every record the handler writes, from any logger (a logger's own filters
    see only records logged on that very logger).
    """
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        handler.addFilter(TRACE_CONTEXT_FILTER)
