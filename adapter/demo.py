"""Demo traffic generator: synthetic SERVER spans sent over real OTLP/HTTP.

``make run`` and ``latency-adapter demo`` need latency data flowing into the
adapter without a real cluster workload.  Rather than hand-crafting protobuf,
this module drives the real OpenTelemetry SDK and OTLP/HTTP exporter, so the
demo exercises exactly the ingestion path production telemetry takes
(resource attributes, batching, protobuf encoding, retries).

Two workloads are simulated in one namespace:

* ``checkout`` -- routes ``/cart`` and ``/checkout``, lognormal latency with
  median 80 ms (sigma 0.5).  Periodically it slows down (median x5) so the
  windowed p95 visibly rises and falls and an HPA has something to react to.
* ``catalog`` -- route ``/items``, median 40 ms (sigma 0.4), always steady, as
  a control that should *not* scale.

Spans carry explicit start/end timestamps, so hundreds of requests per second
cost only a few microseconds of CPU each instead of real sleeping.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

logger = logging.getLogger("adapter.demo")

# Generating in small ticks keeps the emitted rate smooth (the adapter's
# windows see a steady stream) while the loop still wakes up rarely.
TICK_SECONDS = 0.2
# A tick that arrives very late (process suspended, debugger, overloaded CI)
# must not trigger a huge catch-up burst; cap the time one tick accounts for.
MAX_TICK_SECONDS = 1.0
ERROR_RATE = 0.01
SLOW_FACTOR = 5.0
# Bounded so shutdown with an unreachable collector does not hang for long.
EXPORT_TIMEOUT_SECONDS = 5.0
FLUSH_TIMEOUT_MILLIS = 5_000
_NS_PER_SECOND = 1_000_000_000
_NS_PER_MS = 1_000_000


@dataclass(frozen=True)
class DemoSettings:
    """Knobs for the generator; defaults match ``make run``."""

    otlp_endpoint: str = "http://127.0.0.1:4318"
    namespace: str = "demo"
    rate: float = 50.0
    slow_period: float = 120.0
    slow_duration: float = 30.0
    seed: int = 1

    def __post_init__(self) -> None:
        # Fail fast on nonsense instead of silently emitting nothing or
        # dividing by zero deep in the loop.
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number, got {self.rate!r}")
        if not (math.isfinite(self.slow_period) and self.slow_period > 0):
            raise ValueError(f"slow_period must be positive, got {self.slow_period!r}")
        if not (0 <= self.slow_duration <= self.slow_period):
            raise ValueError(f"slow_duration must be within [0, slow_period], got {self.slow_duration!r}")


@dataclass(frozen=True)
class _WorkloadSpec:
    name: str
    routes: tuple[str, ...]
    median_ms: float
    sigma: float
    slows_down: bool


WORKLOADS: tuple[_WorkloadSpec, ...] = (
    _WorkloadSpec("checkout", ("/cart", "/checkout"), median_ms=80.0, sigma=0.5, slows_down=True),
    _WorkloadSpec("catalog", ("/items",), median_ms=40.0, sigma=0.4, slows_down=False),
)


class _Workload:
    """One simulated deployment: its own provider, so its own OTLP resource."""

    def __init__(self, spec: _WorkloadSpec, settings: DemoSettings) -> None:
        self.spec = spec
        # The adapter keys series by the resource attributes, exactly as the
        # k8sattributes processor of a collector would set them.
        resource = Resource.create(
            {
                "service.name": spec.name,
                "k8s.namespace.name": settings.namespace,
                "k8s.deployment.name": spec.name,
            }
        )
        exporter = OTLPSpanExporter(
            endpoint=f"{settings.otlp_endpoint.rstrip('/')}/v1/traces",
            timeout=EXPORT_TIMEOUT_SECONDS,
        )
        # Exports run on the processor's worker thread, so a slow or absent
        # collector never stalls generation; the exporter logs failures and
        # retries, and the queue drops spans rather than growing unbounded.
        # Roughly 10 s of traffic fits in the queue; export every second so
        # the demo dashboard reacts promptly.
        processor = BatchSpanProcessor(
            exporter,
            max_queue_size=max(2048, int(settings.rate * 10)),
            schedule_delay_millis=1000,
        )
        # shutdown_on_exit=False: DemoTraffic shuts providers down itself, and
        # a second atexit shutdown would only log "already shutdown" noise.
        self.provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.provider.add_span_processor(processor)
        self.tracer: Tracer = self.provider.get_tracer("adapter.demo")
        # Fractional requests carried between ticks so non-integer
        # rate * tick products still average out to the configured rate.
        self.carry = 0.0


class DemoTraffic:
    """Emits synthetic SERVER spans for the demo workloads over OTLP/HTTP."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        # Seeded so a demo run (and the tests) is reproducible.
        self._rng = random.Random(settings.seed)
        self._workloads = [_Workload(spec, settings) for spec in WORKLOADS]
        self._start_ns: int | None = None
        self._slow = False
        self._closed = False
        self._close_lock = threading.Lock()

    @property
    def workload_names(self) -> Sequence[str]:
        return [w.spec.name for w in self._workloads]

    def slow_now(self, t_seconds: float) -> bool:
        """Whether checkout is in its slow phase ``t_seconds`` after start.

        Slow phases start at every positive multiple of ``slow_period`` and
        last ``slow_duration``; the first period is always normal so the
        adapter (and any HPA) sees a baseline before the first spike.
        """
        s = self.settings
        if t_seconds < s.slow_period or s.slow_duration <= 0:
            return False
        return (t_seconds % s.slow_period) < s.slow_duration

    def emit_tick(self, now_ns: int, seconds: float) -> int:
        """Emit ``seconds`` worth of requests for every workload ending at ``now_ns``.

        The first call fixes the start of the slow-phase schedule. Returns the
        number of spans emitted.
        """
        if self._start_ns is None:
            self._start_ns = now_ns
        slow = self.slow_now((now_ns - self._start_ns) / _NS_PER_SECOND)
        if slow != self._slow:
            self._slow = slow
            if slow:
                logger.info(
                    "checkout entering slow phase: median x%g for %gs",
                    SLOW_FACTOR,
                    self.settings.slow_duration,
                )
            else:
                logger.info("checkout leaving slow phase: latency back to normal")

        seconds = max(0.0, seconds)
        emitted = 0
        for workload in self._workloads:
            workload.carry += self.settings.rate * seconds
            count = int(workload.carry)
            workload.carry -= count
            for _ in range(count):
                self._emit_one(workload, now_ns, slow and workload.spec.slows_down)
            emitted += count
        return emitted

    def _emit_one(self, workload: _Workload, end_ns: int, slow: bool) -> None:
        spec = workload.spec
        median_ms = spec.median_ms * (SLOW_FACTOR if slow else 1.0)
        duration_ms = self._rng.lognormvariate(math.log(median_ms), spec.sigma)
        duration_ns = max(1, int(duration_ms * _NS_PER_MS))
        route = self._rng.choice(spec.routes)
        error = self._rng.random() < ERROR_RATE
        span = workload.tracer.start_span(
            f"GET {route}",
            kind=SpanKind.SERVER,
            start_time=end_ns - duration_ns,
            attributes={
                "http.route": route,
                "http.request.method": "GET",
                "http.response.status_code": 500 if error else 200,
            },
        )
        if error:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_ns)

    def flush(self, timeout_millis: int = FLUSH_TIMEOUT_MILLIS) -> bool:
        """Push all queued spans to the collector now; True if every provider flushed."""
        results = [w.provider.force_flush(timeout_millis) for w in self._workloads]
        return all(results)

    def close(self) -> None:
        """Export what is queued and shut the exporters down; safe to call more than once.

        ``TracerProvider.shutdown`` already drains the batch queue, so no
        separate flush is needed.  Providers are shut down in parallel: with an
        unreachable collector each one can spend up to the export timeout
        retrying, and stopping ``make run`` should not take that long twice.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        threads = [
            threading.Thread(
                target=self._shutdown_provider,
                args=(workload,),
                name=f"demo-shutdown-{workload.spec.name}",
                daemon=True,
            )
            for workload in self._workloads
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    @staticmethod
    def _shutdown_provider(workload: _Workload) -> None:
        try:
            workload.provider.shutdown()
        except Exception:
            # One failing provider must not keep the others from shutting down.
            logger.exception("failed to shut down demo provider for %s", workload.spec.name)

    def run(self, stop: threading.Event) -> None:
        """Generate traffic until ``stop`` is set, then flush and shut down."""
        s = self.settings
        logger.info(
            "demo traffic: sending OTLP traces to %s/v1/traces; workloads %s at %g req/s each; "
            "checkout median x%g for %gs every %gs",
            s.otlp_endpoint.rstrip("/"),
            ", ".join(f"{s.namespace}/{name}" for name in self.workload_names),
            s.rate,
            SLOW_FACTOR,
            s.slow_duration,
            s.slow_period,
        )
        try:
            last = time.monotonic()
            seconds = TICK_SECONDS
            while not stop.is_set():
                try:
                    self.emit_tick(time.time_ns(), seconds)
                except Exception:
                    # A demo that dies silently in a background thread is worse
                    # than one that logs and keeps going.
                    logger.exception("demo traffic tick failed; continuing")
                if stop.wait(TICK_SECONDS):
                    break
                now = time.monotonic()
                # Account for the real elapsed time so the average rate holds
                # even when wake-ups are late.
                seconds = min(now - last, MAX_TICK_SECONDS)
                last = now
        finally:
            self.close()
            logger.info("demo traffic stopped")


def run_demo(settings: DemoSettings, stop: threading.Event) -> None:
    """Run the demo traffic generator in the calling thread until ``stop`` is set."""
    DemoTraffic(settings).run(stop)
