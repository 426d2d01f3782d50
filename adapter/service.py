"""Wires the pieces into one running service: three listeners and the background tasks.

One aiohttp application per listener (API on HTTPS, OTLP receiver, operations), each started with its
own ``AppRunner`` behind the connection bounds of :mod:`adapter.api.connections`; background work
(closing slices on time, reloads, the insecure-mode reminder) runs in tasks owned by :class:`Service`
and cancelled on stop. Port 0 picks a free port; the ports actually bound are logged in one
``listening`` line, which is also how tests and scripts find them.

Stopping (SIGTERM from the kubelet, or Ctrl-C) is graceful and bounded, see :meth:`Service.shutdown`:
readiness goes false at once, new OTLP requests get 503 + ``Retry-After``, accepted batches are
applied, open API requests finish, and the process exits within ``server.shutdown_timeout_seconds``
(20 s, below Kubernetes' 30 s grace period). Its last log line is ``{"event": "shutdown", ...}`` with
the totals it applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import gc_policy, loop_lag
from .api.connections import BoundedTCPSite, ConnectionGuard
from .api.connections import runner_options as runner_options_for
from .api.ops import build_ops_app
from .api.routes import build_api_app
from .api.security import SecureParts, build_secure, build_tls, in_cluster
from .config import Settings
from .cpu import CpuSignals
from .errors import ConfigError
from .exemplar_info import ExemplarInfo, ExemplarInfoCollector, P95TraceIds
from .limits import (
    LimitHits,
    LimitSettings,
    MemoryWatch,
    cgroup_memory_limit,
    memory_budget,
    raise_open_file_limit,
)
from .pacing import Pacer
from .policy import Decision
from .policy_config import PolicyConfig, PolicyWatcher
from .provider import MetricsProvider
from .self_tracing import SelfTracing, install_log_filter
from .sources.kubernetes import KubernetesCpuSource
from .sources.otlp import OTLP_RUNNER_OPTIONS, OtlpReceiver, build_otlp_app, receiver_key
from .sources.otlp_ingest import OtlpIngestor
from .sources.prometheus import PrometheusCache, PrometheusSource
from .store import WindowStore
from .telemetry import Telemetry, set_log_level

if TYPE_CHECKING:
    from .kube_client import KubernetesClusterAPI

log = logging.getLogger("adapter.service")

#: Where in each slice (a fraction of it) the ticker sweeps the store and rebuilds the per-slice
#: figures. Measured in the soak: with the work at the top of the slice the loop was saturated for the
#: first second after each boundary.
TICK_WORK_AT = 0.4

#: How often insecure mode is announced again while it lasts.
INSECURE_REMINDER_SECONDS = 60.0


@dataclass(frozen=True)
class BoundPorts:
    api: int
    otlp: int
    telemetry: int


def _port_of(site: web.TCPSite) -> int:
    server = site._server  # aiohttp exposes bound sockets only through the server object
    assert server is not None
    sockets = getattr(server, "sockets", None) or []
    for sock in sockets:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            return int(sock.getsockname()[1])
    raise RuntimeError("listener has no socket")


@dataclass(frozen=True)
class ShutdownReport:
    """What a graceful stop did: the fields of the last log line."""

    spans_accepted: int
    points_accepted: int
    seconds: float
    clean: bool


class Service:
    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.clock = clock
        self.store = WindowStore(settings.store)
        self.telemetry = Telemetry(self.store)
        #: The live ``limits`` section (replaced when the config file changes) and every limit hit.
        self.limits: LimitSettings = settings.limits
        self.hits = LimitHits()
        self.memory = MemoryWatch(memory_budget(settings.limits.memory_budget_bytes, cgroup_memory_limit()))
        self.receiver: OtlpReceiver | None = None
        #: latency_adapter_workload_latency_seconds with exemplars, rebuilt by the ticker once per slice.
        self.latency_histogram = self.telemetry.watch_latency(clock)
        #: latency_adapter_p95_exemplar_info (config traces.exemplar_info); None when off: no series, no work.
        self.exemplar_info: ExemplarInfo | None = None
        if settings.traces.exemplar_info:
            self.exemplar_info = ExemplarInfo.from_settings(settings.traces)
            self.telemetry.registry.register(ExemplarInfoCollector(self.exemplar_info))
        self.cpu = CpuSignals()
        self.ingestor = OtlpIngestor(self.store, settings.ingest, started_unix_nano=int(clock() * 1e9),
                                     cpu=self.cpu)
        self.policy: PolicyConfig = settings.policy
        self.policy_watcher: PolicyWatcher | None = None
        self.cpu_source: KubernetesCpuSource | None = None
        self._kube: KubernetesClusterAPI | None = None
        #: The Prometheus source (config ``sources.prometheus``); None when not configured: no loop.
        self.prometheus: PrometheusSource | None = None
        if settings.prometheus is not None:
            cache = PrometheusCache(lambda: self.policy, settings.prometheus.window_seconds)
            self.prometheus = PrometheusSource(settings.prometheus, cache, self.cpu, lambda: self.policy,
                                               clock)
        self.provider = MetricsProvider(self.store, clock, self.cpu, lambda: self.policy,
                                        self.prometheus.cache if self.prometheus is not None else None)
        self._reasons: dict[tuple[str, str], str] = {}
        self._runners: list[web.AppRunner] = []
        self.secure: SecureParts | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ports: BoundPorts | None = None
        self._ready = False
        #: The adapter's own tracing; None until start, and after it when the OTel environment asks for
        #: none. A test may set one (e.g. with an in-memory exporter) before start.
        self.tracing: SelfTracing | None = None

    async def start(self) -> BoundPorts:
        """Bind every listener and start the background tasks; raises ConfigError for bad security flags."""
        s = self.settings
        if self.prometheus is not None:  # a template that does not parse fails the start (exit 2)
            try:
                await self.prometheus.check_templates()
            except ConfigError:
                await self.prometheus.client.close()
                raise
        guard = None
        if s.insecure_no_auth:
            tls = build_tls(s.security, s.cert_dir)
        else:
            self.secure = await build_secure(s.security, s.cert_dir)
            tls, guard = self.secure.tls, self.secure.guard
            self.telemetry.watch_security(self.secure)
        cert = tls.serving_certificate
        log.info("tls certificate", extra={"fields": {
            "event": "tls_certificate", "subject": cert.subject.rfc4514_string(),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "cert_file": str(s.security.tls_cert_file or s.cert_dir),
            "self_signed": s.security.tls_cert_file is None}})
        if self.tracing is None:
            self.tracing = SelfTracing.from_env()  # None unless OTEL_EXPORTER_OTLP_*ENDPOINT asks for it
        if self.tracing is not None:
            install_log_filter()  # JSON log lines written inside a traced request carry its trace_id
        tracing = self.tracing
        limits = self._current_limits
        api_app = build_api_app(self.provider, self.telemetry, guard,
                                middlewares=tracing.middlewares("api") if tracing else (),
                                limits=limits, hits=self.hits)
        context = tls.context
        self._tasks.append(asyncio.create_task(tls.watch(), name="tls-watch"))
        api = await self._listen("api", api_app, s.api_port, context)
        otlp_app = build_otlp_app(self.ingestor, self.telemetry, s.receiver, self.clock,
                                  middlewares=tracing.middlewares("otlp") if tracing else (),
                                  limits=limits, hits=self.hits, memory=self.memory)
        self.receiver = receiver = otlp_app[receiver_key]
        self.telemetry.watch_limits(self.hits, self.memory, lambda: receiver.inflight)
        otlp = await self._listen("otlp", otlp_app, s.otlp_port, runner_options=OTLP_RUNNER_OPTIONS)
        if tracing is not None:
            tracing.guard_own_receiver(otlp, s.bind)  # no receiver spans for our own exports
        debug = {"on": True, "off": False}.get(s.server.debug_endpoints, s.insecure_no_auth)
        ops = await self._listen("ops", build_ops_app(self.telemetry, self.store, lambda: self._ready,
                                                      self.clock, provider=self.provider, traces=s.traces,
                                                      debug=debug),
                                 s.telemetry_port)
        self.ports = BoundPorts(api, otlp, ops)
        self._tasks.append(asyncio.create_task(self._tick(), name="slice-ticker"))
        self._tasks.append(asyncio.create_task(loop_lag.probe(self.telemetry.loop_lag.observe),
                                               name="loop-lag-probe"))
        if s.config_path is not None:
            self.policy_watcher = PolicyWatcher(s.config_path, s.policy)
            self.telemetry.watch_policy(self.policy_watcher)
            self._tasks.append(asyncio.create_task(
                self.policy_watcher.watch(self._apply_policy, apply_settings=self._apply_settings),
                name="policy-watch"))
        self._start_cpu_source()
        if self.prometheus is not None:
            self.telemetry.watch_prometheus(self.prometheus)
            self._tasks.append(asyncio.create_task(self.prometheus.run(), name="prometheus-refresh"))
        if s.insecure_no_auth:
            self._tasks.append(asyncio.create_task(self._insecure_reminder(), name="insecure-reminder"))
        self._ready = True
        log.info("listening", extra={"fields": {
            "event": "listening", "bind": s.bind, "api_port": api, "otlp_port": otlp,
            "telemetry_port": ops, "insecure_no_auth": s.insecure_no_auth,
            "window_seconds": s.store.window_seconds, "slice_seconds": s.store.slice_seconds,
            "memory_budget_bytes": self.memory.budget_bytes, "debug_endpoints": debug}})
        return self.ports

    def _current_limits(self) -> LimitSettings:
        return self.limits

    def _apply_policy(self, policy: PolicyConfig) -> None:
        self.policy = policy

    def _apply_settings(self, settings: Settings) -> None:
        """The live sections of a changed config file: ``limits`` and ``log_level``."""
        self.limits = settings.limits
        self.memory.budget_bytes = memory_budget(settings.limits.memory_budget_bytes, cgroup_memory_limit())
        set_log_level(settings.log_level)

    def _start_cpu_source(self) -> None:
        """Poll workload CPU from the Kubernetes API when there is one (``cpu.source``, ``--kubeconfig``)."""
        s = self.settings
        wanted = s.cpu.source == "kubernetes" or (
            s.cpu.source == "auto" and (s.kubeconfig is not None or in_cluster()))
        if not wanted:
            log.info("workload CPU from OTLP metrics only", extra={"fields": {
                "event": "cpu_source", "source": "otlp", "why": (
                    "cpu.source is otlp" if s.cpu.source == "otlp"
                    else "not in a cluster and no --kubeconfig")}})
            return
        from .kube_client import KubernetesClusterAPI  # the kubernetes client is imported only when needed

        try:
            self._kube = KubernetesClusterAPI.from_kubeconfig(str(s.kubeconfig) if s.kubeconfig else None)
        except Exception as exc:  # the kubernetes client raises many kinds for a bad kubeconfig
            raise ConfigError("--kubeconfig", str(s.kubeconfig or "<in-cluster>"),
                              f"cannot be loaded for the CPU source: {exc}") from exc
        self.cpu_source = KubernetesCpuSource(self._kube, self.cpu, interval_seconds=s.cpu.poll_seconds,
                                              clock=self.clock)
        self.telemetry.watch_cpu_source(self.cpu_source)
        self._tasks.append(asyncio.create_task(self.cpu_source.run(self._workloads_to_poll),
                                               name="cpu-poller"))
        log.info("workload CPU from the Kubernetes API", extra={"fields": {
            "event": "cpu_source", "source": "kubernetes", "poll_seconds": s.cpu.poll_seconds,
            "kubeconfig": str(s.kubeconfig or "<in-cluster>")}})

    def _workloads_to_poll(self) -> list[tuple[str, str]]:
        """Workloads with latency data, plus every workload the config names without a glob."""
        found = {(x.key.namespace, x.key.workload) for x in self.store.all_series()}
        for override in self.policy.workloads:
            if not any(c in override.namespace + override.workload for c in "*?["):
                found.add((override.namespace, override.workload))
        for pair in self.policy.canaries:
            found.update({(pair.namespace, pair.canary), (pair.namespace, pair.baseline)})
        return sorted(found)

    async def _listen(self, name: str, app: web.Application, port: int, ssl_context: object = None,
                      runner_options: dict[str, Any] | None = None) -> int:
        server = self.settings.server
        options = {**runner_options_for(server, name, self.hits), **(runner_options or {})}
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=server.shutdown_timeout_seconds, **options)
        await runner.setup()
        assert runner.server is not None
        ConnectionGuard(name, server, self.hits).install(runner.server)
        site = BoundedTCPSite(runner, self.settings.bind, port, ssl_context=ssl_context,  # type: ignore[arg-type]
                              handshake_timeout=server.header_timeout_seconds)
        await site.start()
        self._runners.append(runner)
        return _port_of(site)

    async def _tick(self) -> None:
        """Close slices on time even when no data arrives, so windows slide and stale data ages out."""
        slice_seconds = self.settings.store.slice_seconds
        while True:
            now = self.clock()
            delay = slice_seconds - (now % slice_seconds) + 0.01
            await asyncio.sleep(delay)
            try:
                self.store.advance(self.clock())
                # The rest waits for the middle of the slice: just after the boundary, every series'
                # first read or write catches its window up, and the loop is busiest then.
                await asyncio.sleep(slice_seconds * TICK_WORK_AT)
                now = self.clock()
                pacer = Pacer()  # ten thousand series are seconds of work: in turns, never in one block
                for _ in self.store.sweep(step=1):
                    await pacer.turn()
                self.telemetry.sync_store_counters()
                await self._publish_decisions(now, pacer)
                await self.latency_histogram.refresh(now, pacer)
                if self.exemplar_info is not None:  # trace ids are computed lazily, only where needed
                    for _ in self.exemplar_info.update_steps(now, P95TraceIds(self.store, now)):
                        await pacer.turn()
                    if self.exemplar_info.left_out:
                        self.hits.hit("info_workloads", self.exemplar_info.left_out)
            except Exception:  # keep ticking: a bug here must not freeze every window
                log.exception("slice ticker failed")

    async def _publish_decisions(self, now: float, pacer: Pacer) -> None:
        """Evaluate the policy for every workload once per slice: ``/metrics`` and a log line per change."""
        dual = self.provider.dual
        decisions: dict[tuple[str, str], Decision | None] = {}
        for key, decision in dual.iter_decisions(now):
            decisions[key] = decision
            await pacer.turn()
        self.telemetry.record_decisions(decisions, dual.error_ratios(), dual.canary_readings(now),
                                        dual.latency_targets(decisions))
        reasons = {key: (d.reason if d is not None else "none") for key, d in decisions.items()}
        for (namespace, workload), reason in reasons.items():
            before = self._reasons.get((namespace, workload))
            if before != reason:
                decision = decisions[(namespace, workload)]
                log.info("dual-signal decision changed", extra={"fields": {
                    "event": "decision_changed", "namespace": namespace, "workload": workload,
                    "reason": reason, "previous": before,
                    "ratio": round(decision.ratio, 4) if decision else None,
                    "latency_ratio": _rounded(decision.latency_ratio if decision else None),
                    "cpu_ratio": _rounded(decision.cpu_ratio if decision else None),
                    "trace_id": decision.trace_id if decision else None}})
        self._reasons = reasons

    async def _insecure_reminder(self) -> None:
        while True:
            log.warning(
                "insecure mode: the external metrics API accepts requests without authentication or "
                "authorisation (--insecure-no-auth); never run this way in a cluster",
                extra={"fields": {"event": "insecure_no_auth"}})
            await asyncio.sleep(INSECURE_REMINDER_SECONDS)

    def begin_shutdown(self) -> None:
        """The first step of stopping, at once: not ready, and new OTLP requests get 503."""
        self._ready = False
        if self.receiver is not None:
            self.receiver.draining = True

    async def shutdown(self, signal_name: str = "SIGTERM") -> ShutdownReport:
        """Stop gracefully within ``server.shutdown_timeout_seconds``; the caller logs the report.

        Readiness is false and OTLP refuses new requests from the first instant; the API keeps serving
        for ``server.shutdown_delay_seconds`` (the aggregator and endpoints catch up meanwhile); then the
        listeners close, requests already accepted finish (their batches are applied before their 200),
        and background tasks stop. Whatever is still running at the bound is abandoned.
        """
        started = time.monotonic()
        server = self.settings.server
        self.begin_shutdown()
        log.info("stopping", extra={"fields": {
            "event": "stopping", "signal": signal_name,
            "delay_seconds": server.shutdown_delay_seconds,
            "timeout_seconds": server.shutdown_timeout_seconds}})
        clean = True
        try:
            async with asyncio.timeout(server.shutdown_timeout_seconds - 0.5):
                if server.shutdown_delay_seconds > 0:
                    await asyncio.sleep(server.shutdown_delay_seconds)
                await self.stop()
        except TimeoutError:
            clean = False
            log.error("shutdown did not finish in time; exiting anyway", extra={"fields": {
                "event": "shutdown_timeout", "timeout_seconds": server.shutdown_timeout_seconds}})
        receiver = self.receiver
        return ShutdownReport(
            spans_accepted=receiver.accepted["traces"] if receiver else 0,
            points_accepted=receiver.accepted["metrics"] if receiver else 0,
            seconds=round(time.monotonic() - started, 3), clean=clean)

    async def stop(self) -> None:
        self._ready = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in reversed(self._runners):
            await runner.cleanup()
        self._runners.clear()
        self._tasks.clear()
        if self._kube is not None:
            self._kube.close()
            self._kube = None
        if self.tracing is not None:  # after the listeners, so the last requests' spans are exported
            await self.tracing.shutdown()
            self.tracing = None


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _start_demo(endpoint: str, stop: threading.Event) -> threading.Thread:
    from .demo import DemoSettings, run_demo

    thread = threading.Thread(target=run_demo, args=(DemoSettings(otlp_endpoint=endpoint), stop),
                              name="demo-traffic", daemon=True)
    thread.start()
    return thread


def _print_demo_help(ports: BoundPorts) -> None:
    base = f"https://127.0.0.1:{ports.api}/apis/external.metrics.k8s.io/v1beta1/namespaces/demo"
    lines = [
        "",
        "latency-adapter is running with demo traffic "
        "(namespace 'demo', workloads 'checkout' and 'catalog').",
        "Values appear once the first slice closes (a few seconds). Try:",
        "",
        f"  curl -sk '{base}/latency_p95_seconds?labelSelector=workload%3Dcheckout'",
        f"  curl -sk '{base}/latency_p95_seconds?labelSelector=workload%3Dcatalog'",
        f"  curl -sk '{base}/request_rate?labelSelector=workload%3Dcheckout'",
        f"  curl -sk '{base}/error_ratio?labelSelector=workload%3Dcheckout'",
        f"  curl -sk '{base}/dual_signal_ratio?labelSelector=workload%3Dcheckout'",
        f"  curl -sk '{base}/cpu_utilization?labelSelector=workload%3Dcatalog'",
        f"  curl -s  'http://127.0.0.1:{ports.telemetry}/debug/workloads'",
        f"  curl -s  'http://127.0.0.1:{ports.telemetry}/metrics'",
        "",
        "The trace_id in metricLabels is a real request near the p95. Every 2 minutes checkout slows "
        "down for 30 s on a slow dependency (dual_signal_ratio reason: dependency_latency) and catalog "
        "gets a CPU-bound busy phase (reason: cpu). Ctrl-C stops everything.",
        "",
    ]
    print("\n".join(lines), flush=True)


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then stop gracefully (:meth:`Service.shutdown`) within the bound.

    A second signal while stopping exits at once. A watchdog thread ends the process at the bound
    even if something (a thread blocked in a client call, say) would hold the interpreter's exit.
    """
    raise_open_file_limit()
    service = Service(settings)
    ports = await service.start()
    gc_policy.tune()
    pauses = gc_policy.PauseObserver(service.telemetry.gc_pauses)
    pauses.install()
    collector = asyncio.create_task(gc_policy.collect_periodically(), name="gc-full-collection")
    stop = asyncio.Event()
    received: list[str] = []
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if received:
            log.warning("second signal while stopping; exiting now", extra={"fields": {
                "event": "shutdown_forced", "signal": sig.name}})
            os._exit(1)
        received.append(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    demo_stop = threading.Event()
    demo_thread = None
    if settings.demo:
        demo_thread = _start_demo(f"http://127.0.0.1:{ports.otlp}", demo_stop)
        _print_demo_help(ports)
    try:
        await stop.wait()
    finally:
        bound = settings.server.shutdown_timeout_seconds
        watchdog = threading.Timer(bound, _exit_at_bound, args=(bound,))
        watchdog.daemon = True
        watchdog.start()
        demo_stop.set()
        if demo_thread is not None:  # the demo's last batches go in before the receiver starts refusing
            await asyncio.to_thread(demo_thread.join, min(5.0, bound / 4))
        service.begin_shutdown()
        report = await service.shutdown(received[0] if received else "cancelled")
        collector.cancel()
        pauses.remove()
        # The last line the process writes: what it applied, for reconciling with what clients sent.
        log.info("stopped", extra={"fields": {"event": "shutdown", **dataclasses.asdict(report)}})
        logging.shutdown()


def _exit_at_bound(bound: float) -> None:
    log.error("shutdown bound reached; exiting", extra={"fields": {
        "event": "shutdown_timeout", "timeout_seconds": bound}})
    os._exit(1)
