"""Integration fixtures: the real ``latency-adapter serve`` process and real clients around it.

* :class:`AdapterProcess` starts ``latency-adapter serve`` on free ports (port 0), learns the bound ports
  from the ``listening`` log line, waits for ``/readyz`` and stops it with SIGTERM (then SIGKILL). Its
  stderr goes to a file that is attached to the report of every failing test that used it.
* Its clients: :meth:`AdapterProcess.api` speaks HTTPS and verifies the self-signed certificate the
  adapter wrote into its cert dir (SANs ``localhost``/``127.0.0.1``); :meth:`AdapterProcess.ops` and
  :meth:`AdapterProcess.otlp` speak plain HTTP.
* :class:`SpanSender` sends SERVER spans with the real OpenTelemetry SDK and OTLP/HTTP exporter, with
  explicit start and end times so the latencies are known, and records every trace id it sent.

Values are served per closed slice, so tests use ``slice_seconds: 1`` and wait for the slice their data
landed in to close (:meth:`AdapterProcess.wait_slice_closed`) before polling, never a blind sleep.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ADAPTER_BIN = Path(sys.executable).with_name("latency-adapter")
START_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
API_PREFIX = "/apis/external.metrics.k8s.io/v1beta1"
#: Short slices keep the tests fast; a generous window keeps data visible for the whole module.
DEFAULT_CONFIG: dict[str, Any] = {"store": {"window_seconds": 30, "slice_seconds": 1}}

T = TypeVar("T")


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.headers.get('content-type')!r}, {self.body[:500]!r})"


def _exchange(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None,
              headers: dict[str, str] | None) -> Response:
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Call ``check`` until it returns something other than None/False; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            result = check()
        except (OSError, http.client.HTTPException) as exc:
            result, last = None, exc
        if result is not None and result is not False:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        time.sleep(interval)


def metric_path(namespace: str, metric: str, selector: str | None = None) -> str:
    path = f"{API_PREFIX}/namespaces/{namespace}/{metric}"
    if selector is not None:
        path += "?labelSelector=" + quote(selector, safe="")
    return path


class AdapterProcess:
    """One ``latency-adapter serve`` subprocess on free ports."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None) -> None:
        self.workdir = workdir
        self.config = DEFAULT_CONFIG if config is None else config
        self.cert_dir = workdir / "certs"
        self.stderr_path = workdir / "adapter.stderr"
        self.proc: subprocess.Popen[bytes] | None = None
        self.api_port = self.otlp_port = self.telemetry_port = 0
        self.slice_seconds = int(self.config.get("store", {}).get("slice_seconds", 5))
        self.window_seconds = int(self.config.get("store", {}).get("window_seconds", 60))
        self.listening: dict[str, Any] = {}
        self.returncode: int | None = None
        self.initial_resources: Response | None = None
        self._ssl: ssl.SSLContext | None = None

    # -- life cycle ----------------------------------------------------------------------------------

    def start(self) -> AdapterProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_file = self.workdir / "config.yaml"
        config_file.write_text(yaml.safe_dump(self.config), encoding="utf-8")
        cmd = [str(ADAPTER_BIN), "serve", "--insecure-no-auth", "--bind", "127.0.0.1", "--api-port", "0",
               "--otlp-port", "0", "--telemetry-port", "0", "--cert-dir", str(self.cert_dir),
               "--config", str(config_file)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)
        try:
            self.listening = wait_for(self._listening_line, START_TIMEOUT, "the 'listening' log line")
            self.api_port = int(self.listening["api_port"])
            self.otlp_port = int(self.listening["otlp_port"])
            self.telemetry_port = int(self.listening["telemetry_port"])
            wait_for(lambda: self.ops("/readyz").status == 200, START_TIMEOUT, "/readyz on the ops port")
            # What discovery answers before any data arrived (it must list every metric already).
            self.initial_resources = self.api(API_PREFIX)
        except BaseException:
            self.stop()
            raise
        return self

    def _listening_line(self) -> dict[str, Any] | None:
        for doc in self.log_events():
            if doc.get("event") == "listening":
                return doc
        assert self.proc is not None
        if self.proc.poll() is not None:
            pytest.fail(f"latency-adapter exited with {self.proc.returncode} before listening:\n"
                        + self.stderr_tail())
        return None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after :data:`STOP_TIMEOUT`; returns the exit status."""
        proc = self.proc
        if proc is None or self.returncode is not None:
            return self.returncode
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
        self.returncode = proc.returncode
        return self.returncode

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stderr_tail(self, lines: int = 60) -> str:
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.stderr_text().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out

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
        return _exchange(conn, method, path, body, headers)

    def ops(self, path: str, headers: dict[str, str] | None = None) -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.telemetry_port, timeout=10)
        return _exchange(conn, "GET", path, None, headers)

    def otlp(self, path: str, body: bytes, headers: dict[str, str], method: str = "POST") -> Response:
        conn = http.client.HTTPConnection("127.0.0.1", self.otlp_port, timeout=10)
        return _exchange(conn, method, path, body, headers)

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

    def counter(self, name: str, **labels: str) -> float:
        """The value of one sample of ``/metrics`` (0 when absent), e.g. ``counter(
        "latency_adapter_otlp_items_total", signal="traces", outcome="accepted")``."""
        from prometheus_client.parser import text_string_to_metric_families

        resp = self.metrics_text()
        assert resp.status == 200, resp
        total = 0.0
        for family in text_string_to_metric_families(resp.text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


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
