"""Demo traffic generator: synthetic SERVER spans and pod CPU sent over real OTLP/HTTP.

``make run`` and ``latency-adapter demo`` need latency and CPU data flowing
into the adapter without a real cluster workload.  Rather than hand-crafting
protobuf, this module drives the real OpenTelemetry SDK and OTLP/HTTP
exporters, so the demo exercises exactly the ingestion path production
telemetry takes (resource attributes, batching, protobuf encoding, retries).

Two workloads are simulated in one namespace:

* ``checkout`` -- routes ``/cart`` and ``/checkout``, lognormal latency with
  median 80 ms (sigma 0.5); 3 pods of 0.5 cores requested (``app`` 0.4 +
  ``istio-proxy`` 0.1) at 35 % CPU.  Periodically a *dependency* slows down:
  median x5, and CPU *drops* to 12 % because the pods mostly wait.  The
  dual-signal policy calls that ``dependency_latency`` and holds.
* ``catalog`` -- route ``/items``, median 40 ms (sigma 0.4), latency always
  steady; 2 pods of 1 core requested (``app`` 0.9 + ``istio-proxy`` 0.1) at
  12 % CPU.  Half a period after each checkout slowdown it has a CPU-bound
  busy phase of the same length at 90 % CPU: the policy scales on ``cpu``.

With the policy's defaults (p95 target 250 ms, CPU target 60 %, floor 30 %):

======================  ======  ========  =====  ======================
phase                   p95     CPU       ratio  reason
======================  ======  ========  =====  ======================
checkout, normal        ~180ms  35 %      ~0.73  ``latency``
checkout, slow          ~910ms  12 %      1.0    ``dependency_latency``
catalog, normal         ~77ms   12 %      ~0.31  ``latency``
catalog, busy           ~77ms   90 %      1.5    ``cpu``
======================  ======  ========  =====  ======================

CPU goes out as OTLP metrics to ``/v1/metrics`` every ``metrics_interval``
seconds, as the semantic conventions name them (values in cores):
``k8s.pod.cpu.usage`` (an observable gauge, one point per pod) and
``k8s.container.cpu.request`` (an observable up-down counter, so a Sum, one
point per container).  Each workload has one resource (namespace and
deployment, as for its spans); pod and container are point attributes
``k8s.pod.name`` and ``k8s.container.name``.  The values follow the phase of
the latest tick (not the wall clock), so they are reproducible; nothing is
reported before the first tick.

Spans carry explicit start/end timestamps, so hundreds of requests per second
cost only a few microseconds of CPU each instead of real sleeping.

Length: about 440 lines: the traffic story (phases, pods, CPU) and its two OTel pipelines (traces and
metrics) belong to one scenario that tests check end to end.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
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
# Per-pod CPU: pods differ by up to +-10 % around the workload's utilisation,
# and every pod wobbles by +-4 % with a period of WOBBLE_SECONDS (a function of
# the demo's time, so values stay reproducible).
POD_SPREAD = 0.1
WOBBLE = 0.04
WOBBLE_SECONDS = 30.0
POD_SUFFIXES = ("x7k2p", "m4q9t", "c8w3n", "r2d6v", "h5j8s")
CPU_UNIT = "{cpu}"
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
    # How often the CPU metrics are collected and exported.
    metrics_interval: float = 5.0

    def __post_init__(self) -> None:
        # Fail fast on nonsense instead of silently emitting nothing or
        # dividing by zero deep in the loop.
        if not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"rate must be a positive number, got {self.rate!r}")
        if not (math.isfinite(self.slow_period) and self.slow_period > 0):
            raise ValueError(f"slow_period must be positive, got {self.slow_period!r}")
        if not (0 <= self.slow_duration <= self.slow_period):
            raise ValueError(f"slow_duration must be within [0, slow_period], got {self.slow_duration!r}")
        if not (math.isfinite(self.metrics_interval) and self.metrics_interval > 0):
            raise ValueError(f"metrics_interval must be positive, got {self.metrics_interval!r}")


@dataclass(frozen=True)
class _WorkloadSpec:
    name: str
    routes: tuple[str, ...]
    median_ms: float
    sigma: float
    slows_down: bool
    pods: int
    # (container name, CPU request in cores) of every pod.
    containers: tuple[tuple[str, float], ...]
    # CPU usage / request normally, and in the workload's own phase: the
    # slow phase of a workload that slows down, else the busy phase.
    cpu: float
    phase_cpu: float

    @property
    def pod_request(self) -> float:
        return sum(request for _, request in self.containers)


WORKLOADS: tuple[_WorkloadSpec, ...] = (
    _WorkloadSpec("checkout", ("/cart", "/checkout"), median_ms=80.0, sigma=0.5, slows_down=True,
                  pods=3, containers=(("app", 0.4), ("istio-proxy", 0.1)), cpu=0.35, phase_cpu=0.12),
    _WorkloadSpec("catalog", ("/items",), median_ms=40.0, sigma=0.4, slows_down=False,
                  pods=2, containers=(("app", 0.9), ("istio-proxy", 0.1)), cpu=0.12, phase_cpu=0.9),
)


class _Workload:
    """One simulated deployment: its own providers, so its own OTLP resource."""

    def __init__(self, spec: _WorkloadSpec, settings: DemoSettings, traffic: DemoTraffic) -> None:
        self.spec = spec
        self.traffic = traffic
        self.pods = [f"{spec.name}-6d4f9b7c5-{POD_SUFFIXES[i % len(POD_SUFFIXES)]}" for i in range(spec.pods)]
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
        # CPU: collected and exported on the reader's own thread; the
        # callbacks only read the phase the generator last set.
        reader = PeriodicExportingMetricReader(
            OTLPMetricExporter(
                endpoint=f"{settings.otlp_endpoint.rstrip('/')}/v1/metrics",
                timeout=EXPORT_TIMEOUT_SECONDS,
            ),
            export_interval_millis=settings.metrics_interval * 1000,
            export_timeout_millis=EXPORT_TIMEOUT_SECONDS * 1000,
        )
        self.meter_provider = MeterProvider(
            metric_readers=[reader], resource=resource, shutdown_on_exit=False
        )
        meter = self.meter_provider.get_meter("adapter.demo")
        meter.create_observable_gauge(
            "k8s.pod.cpu.usage", callbacks=[self._observe_usage], unit=CPU_UNIT,
            description="Total CPU usage of the pod, in cores.",
        )
        meter.create_observable_up_down_counter(
            "k8s.container.cpu.request", callbacks=[self._observe_requests], unit=CPU_UNIT,
            description="CPU requested by the container, in cores.",
        )
        # Fractional requests carried between ticks so non-integer
        # rate * tick products still average out to the configured rate.
        self.carry = 0.0

    def pod_usage(self, t_seconds: float) -> list[float]:
        """CPU usage of every pod, in cores, ``t_seconds`` after the start."""
        spec = self.spec
        utilization = self.traffic.cpu_utilization(spec.name, t_seconds)
        n = len(self.pods)
        usage = []
        for i in range(n):
            spread = 1.0 + POD_SPREAD * ((2.0 * i / (n - 1) - 1.0) if n > 1 else 0.0)
            wobble = 1.0 + WOBBLE * math.sin(2.0 * math.pi * t_seconds / WOBBLE_SECONDS + i)
            usage.append(utilization * spec.pod_request * spread * wobble)
        return usage

    def _observe_usage(self, options: CallbackOptions) -> Iterable[Observation]:
        t = self.traffic.elapsed
        if t is None:
            return []
        usage = self.pod_usage(t)
        return [Observation(u, {"k8s.pod.name": pod}) for pod, u in zip(self.pods, usage, strict=True)]

    def _observe_requests(self, options: CallbackOptions) -> Iterable[Observation]:
        if self.traffic.elapsed is None:
            return []
        return [
            Observation(request, {"k8s.pod.name": pod, "k8s.container.name": container})
            for pod in self.pods
            for container, request in self.spec.containers
        ]


class DemoTraffic:
    """Emits synthetic SERVER spans and pod CPU metrics for the demo workloads over OTLP/HTTP."""

    def __init__(self, settings: DemoSettings) -> None:
        self.settings = settings
        # Seeded so a demo run (and the tests) is reproducible.
        self._rng = random.Random(settings.seed)
        self._start_ns: int | None = None
        # Seconds from the start to the latest tick; None before the first.
        # Written by the generator, read by the metric readers' callbacks.
        self.elapsed: float | None = None
        self._slow = False
        self._busy = False
        self._workloads = [_Workload(spec, settings, self) for spec in WORKLOADS]
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

    def busy_now(self, t_seconds: float) -> bool:
        """Whether catalog is in its CPU-bound busy phase ``t_seconds`` after start.

        Busy phases are as long as checkout's slow phases and start half a
        period after each of them (and once half a period after the start),
        so the two stories never overlap while ``slow_duration`` is at most
        half of ``slow_period``.
        """
        s = self.settings
        half = s.slow_period / 2.0
        if t_seconds < half or s.slow_duration <= 0:
            return False
        return ((t_seconds - half) % s.slow_period) < s.slow_duration

    def cpu_utilization(self, workload: str, t_seconds: float) -> float:
        """The workload's CPU usage / request ``t_seconds`` after start (before per-pod spread)."""
        spec = next(w for w in WORKLOADS if w.name == workload)
        in_phase = self.slow_now(t_seconds) if spec.slows_down else self.busy_now(t_seconds)
        return spec.phase_cpu if in_phase else spec.cpu

    def emit_tick(self, now_ns: int, seconds: float) -> int:
        """Emit ``seconds`` worth of requests for every workload ending at ``now_ns``.

        The first call fixes the start of the slow-phase schedule. Returns the
        number of spans emitted.
        """
        if self._start_ns is None:
            self._start_ns = now_ns
        elapsed = (now_ns - self._start_ns) / _NS_PER_SECOND
        self.elapsed = elapsed
        slow = self.slow_now(elapsed)
        if slow != self._slow:
            self._slow = slow
            if slow:
                logger.info(
                    "checkout entering slow phase: a dependency is slow, median x%g and CPU low for %gs",
                    SLOW_FACTOR,
                    self.settings.slow_duration,
                )
            else:
                logger.info("checkout leaving slow phase: latency back to normal")
        busy = self.busy_now(elapsed)
        if busy != self._busy:
            self._busy = busy
            if busy:
                logger.info("catalog entering busy phase: CPU-bound for %gs", self.settings.slow_duration)
            else:
                logger.info("catalog leaving busy phase: CPU back to normal")

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
        """Push all queued spans, and the current CPU readings, to the collector now.

        True if every provider flushed.
        """
        results = [w.provider.force_flush(timeout_millis) for w in self._workloads]
        for w in self._workloads:
            try:
                results.append(w.meter_provider.force_flush(timeout_millis))
            except Exception:
                logger.exception("failed to flush demo metrics for %s", w.spec.name)
                results.append(False)
        return all(results)

    def close(self) -> None:
        """Export what is queued and shut the exporters down; safe to call more than once.

        ``TracerProvider.shutdown`` already drains the batch queue, and
        ``MeterProvider.shutdown`` exports one last collection and stops the
        reader's thread, so no separate flush is needed.  Providers are shut
        down in parallel: with an unreachable collector each one can spend up
        to the export timeout retrying, and stopping ``make run`` should not
        take that long several times.
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        threads = [
            threading.Thread(
                target=self._shutdown_provider,
                args=(workload, kind),
                name=f"demo-shutdown-{workload.spec.name}-{kind}",
                daemon=True,
            )
            for workload in self._workloads
            for kind in ("traces", "metrics")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    @staticmethod
    def _shutdown_provider(workload: _Workload, kind: str) -> None:
        try:
            if kind == "traces":
                workload.provider.shutdown()
            else:
                workload.meter_provider.shutdown(timeout_millis=FLUSH_TIMEOUT_MILLIS * 2)
        except Exception:
            # One failing provider must not keep the others from shutting down.
            logger.exception("failed to shut down demo %s provider for %s", kind, workload.spec.name)

    def run(self, stop: threading.Event) -> None:
        """Generate traffic until ``stop`` is set, then flush and shut down."""
        s = self.settings
        logger.info(
            "demo traffic: sending OTLP traces to %s/v1/traces and CPU metrics to %s/v1/metrics "
            "every %gs; workloads %s at %g req/s each; every %gs checkout's dependency slows down "
            "(median x%g, CPU low) and, half a period later, catalog is CPU-bound, each for %gs",
            s.otlp_endpoint.rstrip("/"),
            s.otlp_endpoint.rstrip("/"),
            s.metrics_interval,
            ", ".join(f"{s.namespace}/{name}" for name in self.workload_names),
            s.rate,
            s.slow_period,
            SLOW_FACTOR,
            s.slow_duration,
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
