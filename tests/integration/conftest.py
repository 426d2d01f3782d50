"""Integration fixtures: the real ``latency-adapter serve`` process and real clients around it.

* :class:`AdapterProcess` (a :class:`~tests.integration.process.ServiceProcess`) starts ``latency-adapter
  serve --insecure-no-auth`` on free ports (port 0), learns the bound ports from the ``listening`` log
  line, waits for ``/readyz`` and stops it with SIGTERM (then SIGKILL). Its stderr goes to a file that is
  attached to the report of every failing test that used it.
* Its clients: :meth:`AdapterProcess.api` speaks HTTPS and verifies the self-signed certificate the
  adapter wrote into its cert dir (SANs ``localhost``/``127.0.0.1``); :meth:`AdapterProcess.ops` and
  :meth:`AdapterProcess.otlp` speak plain HTTP.
* :class:`SpanSender` sends SERVER spans with the real OpenTelemetry SDK and OTLP/HTTP exporter, with
  explicit start and end times so the latencies are known, and records every trace id it sent.

Values are served per closed slice, so tests use ``slice_seconds: 1`` and wait for the slice their data
landed in to close (:meth:`AdapterProcess.wait_slice_closed`) before polling, never a blind sleep.
"""

from __future__ import annotations

import http.client
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.integration.process import Response, ServiceProcess, exchange, wait_for

REPO = Path(__file__).resolve().parents[2]
API_PREFIX = "/apis/external.metrics.k8s.io/v1beta1"
#: Short slices keep the tests fast; a generous window keeps data visible for the whole module.
DEFAULT_CONFIG: dict[str, Any] = {"store": {"window_seconds": 30, "slice_seconds": 1}}


def metric_path(namespace: str, metric: str, selector: str | None = None) -> str:
    path = f"{API_PREFIX}/namespaces/{namespace}/{metric}"
    if selector is not None:
        path += "?labelSelector=" + quote(selector, safe="")
    return path


class AdapterProcess(ServiceProcess):
    """One ``latency-adapter serve --insecure-no-auth`` subprocess on free ports."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None) -> None:
        config = DEFAULT_CONFIG if config is None else config
        super().__init__(workdir, ["--insecure-no-auth"], config)
        self.slice_seconds = int(config.get("store", {}).get("slice_seconds", 5))
        self.window_seconds = int(config.get("store", {}).get("window_seconds", 60))
        self.initial_resources: Response | None = None
        self._ssl: ssl.SSLContext | None = None

    def ready(self) -> None:
        super().ready()
        # What discovery answers before any data arrived (it must list every metric already).
        self.initial_resources = self.api(API_PREFIX)

    # -- clients -------------------------------------------------------------------------------------

    @property
    def cert_file(self) -> Path:
        return self.cert_dir / "apiserver.crt"

    def ssl_context(self) -> ssl.SSLContext:
        """Verifies the adapter's own self-signed certificate, hostname included."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.cert_file))
        return self._ssl

    def api(self, path: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None, host: str = "127.0.0.1") -> Response:
        conn = http.client.HTTPSConnection(host, self.api_port, context=self.ssl_context(), timeout=10)
        return exchange(conn, path, headers or {}, method=method, body=body, close=True)

    def otlp(self, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.otlp_port, timeout=10)
        return exchange(conn, path, headers, method=method, body=body, close=True)

    # -- values --------------------------------------------------------------------------------------

    #: Helpers for test modules (which cannot import this conftest): path building and polling.
    metric_path = staticmethod(metric_path)
    wait_for = staticmethod(wait_for)

    def wait_slice_closed(self, t: float) -> None:
        """Sleep until the slice holding wall-clock time ``t`` has closed (same clock as the adapter)."""
        closes = (int(t // self.slice_seconds) + 1) * self.slice_seconds
        delay = closes - time.time() + 0.02
        if delay > 0:
            time.sleep(delay)

    def value(self, namespace: str, metric: str, selector: str | None) -> Response:
        return self.api(metric_path(namespace, metric, selector))

    def wait_value(self, namespace: str, metric: str, selector: str | None, sent_at: float | None = None,
                   timeout: float = 10.0) -> dict[str, Any]:
        """The ExternalMetricValueList once the API answers 200 (data sent at ``sent_at`` included)."""
        if sent_at is not None:
            self.wait_slice_closed(sent_at)

        def check() -> dict[str, Any] | None:
            resp = self.value(namespace, metric, selector)
            if resp.status == 200:
                doc: dict[str, Any] = resp.json()
                return doc
            assert resp.status == 404, resp
            return None

        return wait_for(check, timeout, f"{metric} in {namespace} for {selector!r}")

    def metrics_text(self, openmetrics: bool = False) -> Response:
        headers = {"Accept": "application/openmetrics-text; version=1.0.0"} if openmetrics else None
        return self.ops("/metrics", headers)


# ---------------------------------------------------------------------------------------------------------
# Sending spans with the real OpenTelemetry SDK.


@dataclass(frozen=True)
class SentSpan:
    trace_id: str  # 32 lower-case hex digits
    seconds: float  # end - start, exactly as sent (ns resolution)
    route: str | None
    error: bool


@dataclass
class SentBatch:
    namespace: str
    workload: str
    spans: list[SentSpan]
    sent_at: float  # wall clock after the exporter got its answers

    def latencies(self, route: str | None = None) -> list[float]:
        return [s.seconds for s in self.spans if route is None or s.route == route]

    @property
    def trace_ids(self) -> set[str]:
        return {s.trace_id for s in self.spans}


@dataclass
class SpanSender:
    """Sends SERVER spans through ``TracerProvider`` + ``BatchSpanProcessor`` + ``OTLPSpanExporter``."""

    otlp_port: int
    sent: list[SentBatch] = field(default_factory=list)

    def send(self, namespace: str, workload: str, latencies: Sequence[float],
             routes: str | Sequence[str | None] | None = None, errors: Sequence[bool] | None = None,
             batch_size: int = 512, gzip: bool = False, service_name: str | None = None,
             ) -> SentBatch:
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
        from opentelemetry.trace import SpanKind, Status, StatusCode

        n = len(latencies)
        route_of: Sequence[str | None] = [routes] * n if routes is None or isinstance(routes, str) else routes
        error_of = errors if errors is not None else [False] * n
        assert len(route_of) == n and len(error_of) == n

        results: list[tuple[int, SpanExportResult]] = []

        class RecordingExporter(OTLPSpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                result = super().export(spans)
                results.append((len(spans), result))
                return result

        exporter = RecordingExporter(
            endpoint=f"http://127.0.0.1:{self.otlp_port}/v1/traces", timeout=10,
            compression=Compression.Gzip if gzip else Compression.NoCompression)
        resource = Resource.create({
            "service.name": service_name or workload,
            "k8s.namespace.name": namespace,
            "k8s.deployment.name": workload,
        })
        provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        provider.add_span_processor(BatchSpanProcessor(
            exporter, max_queue_size=max(n, batch_size) + 16, max_export_batch_size=batch_size,
            schedule_delay_millis=60_000))
        tracer = provider.get_tracer("tests.integration")
        end_ns = time.time_ns()
        spans: list[SentSpan] = []
        try:
            for latency, route, error in zip(latencies, route_of, error_of, strict=True):
                duration_ns = max(1, round(latency * 1e9))
                attributes: dict[str, Any] = {"http.request.method": "GET",
                                              "http.response.status_code": 500 if error else 200}
                if route is not None:
                    attributes["http.route"] = route
                span = tracer.start_span(f"GET {route or '/'}", kind=SpanKind.SERVER,
                                         start_time=end_ns - duration_ns, attributes=attributes)
                if error:
                    span.set_status(Status(StatusCode.ERROR))
                span.end(end_time=end_ns)
                spans.append(SentSpan(format(span.get_span_context().trace_id, "032x"), duration_ns / 1e9,
                                      route, error))
            assert provider.force_flush(30_000), "the SDK could not flush its spans"
        finally:
            provider.shutdown()
        exported = sum(k for k, r in results if r is SpanExportResult.SUCCESS)
        assert exported == n, f"exporter results {results}: {exported} of {n} spans exported"
        batch = SentBatch(namespace, workload, spans, time.time())
        self.sent.append(batch)
        return batch


# ---------------------------------------------------------------------------------------------------------
# Fixtures.


class AdapterFactory:
    """Starts adapters (each in its own directory) and stops every one it started."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.started: list[AdapterProcess] = []

    def __call__(self, name: str, config: dict[str, Any] | None = None) -> AdapterProcess:
        adapter = AdapterProcess(self.base / f"{name}-{len(self.started)}", config)
        self.started.append(adapter)
        return adapter.start()

    def stop_all(self) -> list[tuple[AdapterProcess, int | None]]:
        return [(a, a.stop()) for a in self.started]


@pytest.fixture(scope="session")
def adapter_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AdapterFactory]:
    factory = AdapterFactory(tmp_path_factory.mktemp("adapters"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="session")
def adapter(adapter_factory: AdapterFactory) -> Iterator[AdapterProcess]:
    """The shared service (window 30 s of 1 s slices). Tests use their own namespaces/workloads."""
    proc = adapter_factory("shared")
    yield proc
    rc = proc.stop()
    assert rc == 0, f"latency-adapter did not stop cleanly on SIGTERM (exit {rc}):\n{proc.stderr_tail()}"


@pytest.fixture(scope="session")
def spans(adapter: AdapterProcess) -> SpanSender:
    """Sends spans to the shared adapter."""
    return SpanSender(adapter.otlp_port)


@pytest.fixture(scope="session")
def span_sender() -> type[SpanSender]:
    """The :class:`SpanSender` class, for modules that run an adapter of their own."""
    return SpanSender


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Attach the stderr of every adapter a failing test used to its report."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    seen: set[int] = set()
    for value in funcargs.values():
        candidates = value.started if isinstance(value, AdapterFactory) else [value]
        for proc in candidates:
            if isinstance(proc, AdapterProcess) and id(proc) not in seen:
                seen.add(id(proc))
                report.sections.append((f"latency-adapter stderr ({proc.workdir.name})",
                                        proc.stderr_tail(80)))
