"""The adapter's own telemetry: Prometheus metrics on the operations port and JSON logs.

Every counter here answers a question an operator asks when autoscaling misbehaves: is telemetry
arriving (``latency_adapter_otlp_items_total``), is it being refused and why
(``latency_adapter_otlp_rejected_total{reason}``: body too large, malformed, series cap, label too long),
how many series are live and how much memory they hold, and how fast the API answers the HPA.

Gauges that describe the store are read at scrape time by a collector, so the hot paths never update
them; so is the per-workload latency histogram with its exemplars (:mod:`adapter.latency_histogram`).
The registry is per service instance (no globals), which lets tests run several services in one process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .dual_signal import CanaryReading
from .gc_policy import pause_histogram
from .latency_histogram import LatencyHistogramCollector
from .limits import LIMITS, LimitHits, MemoryWatch
from .loop_lag import lag_histogram
from .policy import Decision
from .store import WindowStore

if TYPE_CHECKING:
    from .api.security import SecureParts
    from .policy_config import PolicyWatcher
    from .sources.kubernetes import KubernetesCpuSource
    from .sources.prometheus import PrometheusSource

API_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _StoreCollector(Collector):
    def __init__(self, store: WindowStore) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        store = self._store
        active = GaugeMetricFamily(
            "latency_adapter_active_series", "Latency series with data in the current window."
        )
        active.add_metric([], len(store))
        yield active
        by_ns = GaugeMetricFamily(
            "latency_adapter_namespaces", "Namespaces with at least one active latency series."
        )
        by_ns.add_metric([], len(store.namespaces()))
        yield by_ns
        held = GaugeMetricFamily(
            "latency_adapter_store_bytes", "Approximate bytes held by the sketches of all active series "
            "(measured once per slice)."
        )
        held.add_metric([], store.measured_bytes())
        yield held
        epoch = GaugeMetricFamily(
            "latency_adapter_window_end_timestamp_seconds",
            "End of the last closed slice: the time every served value refers to.",
        )
        if store.epoch is not None:
            epoch.add_metric([], (store.epoch + 1) * store.settings.slice_seconds)
        yield epoch


class _SecurityCollector(Collector):
    """Counters kept as plain ints by the TLS watcher and the auth caches, read at scrape time."""

    def __init__(self, parts: SecureParts) -> None:
        self._parts = parts

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        tls = self._parts.tls
        reloads = CounterMetricFamily("latency_adapter_tls_reloads",
                                      "Serving certificate or client CA reloads, by outcome.",
                                      labels=["outcome"])
        reloads.add_metric(["ok"], tls.reloads)
        reloads.add_metric(["failed"], tls.reload_failures)
        yield reloads
        restart = GaugeMetricFamily("latency_adapter_tls_restart_required",
                                    "1 when a TLS change (a removed CA, a new key type) needs a restart.")
        restart.add_metric([], 1.0 if tls.restart_required else 0.0)
        yield restart
        reviews = CounterMetricFamily(
            "latency_adapter_auth_reviews",
            "Delegated reviews by kind (token, access) and result (call, cache_hit, refresh_ahead, error, "
            "stale_use).",
            labels=["kind", "result"])
        for kind, obj in (("token", self._parts.guard.authenticator),
                          ("access", self._parts.guard.authorizer)):
            reviews.add_metric([kind, "call"], obj.reviews)
            reviews.add_metric([kind, "cache_hit"], obj.cache_hits)
            reviews.add_metric([kind, "refresh_ahead"], obj.refreshes)
            reviews.add_metric([kind, "error"], obj.review_errors)
            reviews.add_metric([kind, "stale_use"], obj.stale_uses)
        yield reviews


class _PolicyCollector(Collector):
    """Reloads of the policy part of the config file, read at scrape time."""

    def __init__(self, watcher: PolicyWatcher) -> None:
        self._watcher = watcher

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        w = self._watcher
        reloads = CounterMetricFamily("latency_adapter_config_reloads",
                                      "Policy reloads from the config file, by outcome (failed: the old "
                                      "policy stays; the log says why).", labels=["outcome"])
        reloads.add_metric(["ok"], w.reloads)
        reloads.add_metric(["failed"], w.reload_failures)
        yield reloads
        restart = GaugeMetricFamily("latency_adapter_config_restart_required",
                                    "1 when the config file changed outside the policy sections, which "
                                    "applies only at the next start.")
        restart.add_metric([], 1.0 if w.restart_required else 0.0)
        yield restart


#: Store drop counters that are limits hits, by limit name.
_STORE_LIMITS = {"series_total": "series_cap", "series_namespace": "namespace_series_cap"}


class _LimitCollector(Collector):
    """Every limit hit (one counter for all of them), the memory budget and the ingest queue."""

    def __init__(self, hits: LimitHits, store: WindowStore, memory: MemoryWatch,
                 otlp_inflight: Callable[[], int]) -> None:
        self._hits = hits
        self._store = store
        self._memory = memory
        self._otlp_inflight = otlp_inflight

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        hits = CounterMetricFamily(
            "latency_adapter_limit_hits",
            "Times a limit was hit, by limit (adapter.limits.LIMITS says what each one answers).",
            labels=["limit"])
        for limit in LIMITS:
            store_key = _STORE_LIMITS.get(limit)
            n = self._store.dropped.get(store_key, 0) if store_key else self._hits.counts[limit]
            hits.add_metric([limit], n)
        yield hits
        budget = GaugeMetricFamily(
            "latency_adapter_memory_budget_bytes",
            "Resident memory above which OTLP answers 429 (limits.memory_budget_bytes).")
        budget.add_metric([], self._memory.budget_bytes)
        yield budget
        queue = GaugeMetricFamily("latency_adapter_otlp_inflight_requests",
                                  "OTLP requests being received or applied now (the ingest queue).")
        queue.add_metric([], self._otlp_inflight())
        yield queue


class _CpuSourceCollector(Collector):
    """The Kubernetes CPU poller's plain-int counters, read at scrape time."""

    def __init__(self, source: KubernetesCpuSource) -> None:
        self._source = source

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        src = self._source
        rounds = CounterMetricFamily("latency_adapter_cpu_poll_rounds",
                                     "Rounds of polling metrics-server and pod specs for workload CPU.")
        rounds.add_metric([], src.polls)
        yield rounds
        errors = CounterMetricFamily("latency_adapter_cpu_poll_errors",
                                     "Workload CPU polls that failed (the last reading is kept until stale).")
        errors.add_metric([], src.poll_errors)
        yield errors
        missing = CounterMetricFamily("latency_adapter_cpu_workloads_not_found",
                                      "Polled workloads that are neither a Deployment nor a StatefulSet.")
        missing.add_metric([], src.workloads_not_found)
        yield missing
        without = GaugeMetricFamily(
            "latency_adapter_cpu_pods_without_requests",
            "Ready pods left out of CPU utilisation because they declare no CPU request (0 not exported).",
            labels=["namespace", "workload"])
        for (namespace, workload), n in list(src.pods_without_requests.items())[:MAX_DECISION_SERIES]:
            if n:
                without.add_metric([namespace, workload], n)
        yield without


#: Workloads whose current decision is exported at most (one series each); the rest are counted.
MAX_DECISION_SERIES = 2_000


def _canary_families(
        canaries: Mapping[tuple[str, str, str], float | CanaryReading]) -> Iterator[GaugeMetricFamily]:
    """The canary gate's inputs per pair: the ratio, its 95 % interval, and each side's requests (always,
    so a query can tell "too few requests" from "no such pair")."""
    pair = ["namespace", "canary", "baseline"]
    ratio = GaugeMetricFamily(
        "latency_adapter_canary_latency_ratio",
        "A canary's window p95 / its baseline's (latency_p95_baseline_ratio; release gate <= 1.1).",
        labels=pair)
    low = GaugeMetricFamily("latency_adapter_canary_latency_ratio_low",
                            "Low bound of the 95 % interval of the canary p95 ratio (regression: > 1.1).",
                            labels=pair)
    high = GaugeMetricFamily("latency_adapter_canary_latency_ratio_high",
                             "High bound of the 95 % interval of the canary p95 ratio.", labels=pair)
    samples = GaugeMetricFamily("latency_adapter_canary_samples",
                                "Requests in the window on each side of a configured canary pair.",
                                labels=[*pair, "side"])
    for key, value in canaries.items():
        reading = value if isinstance(value, CanaryReading) else CanaryReading(0, 0, value)
        if reading.ratio is not None:
            ratio.add_metric(list(key), reading.ratio)
        if reading.ratio_low is not None and reading.ratio_high is not None:
            low.add_metric(list(key), reading.ratio_low)
            high.add_metric(list(key), reading.ratio_high)
        if isinstance(value, CanaryReading):
            samples.add_metric([*key, "canary"], reading.samples)
            samples.add_metric([*key, "baseline"], reading.baseline_samples)
    yield from (ratio, low, high, samples)


class _DecisionCollector(Collector):
    """The policy's latest decision per workload: one series each, whose ``reason`` label follows it."""

    def __init__(self) -> None:
        self.current: dict[tuple[str, str], Decision | None] = {}
        self.error_ratios: dict[tuple[str, str], float] = {}
        self.latency_targets: dict[tuple[str, str], float] = {}
        self.canaries: dict[tuple[str, str, str], float | CanaryReading] = {}
        self.left_out = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        ratio = GaugeMetricFamily(
            "latency_adapter_dual_signal_ratio",
            "The dual_signal_ratio the HPA is served, per workload, with the reason of the decision.",
            labels=["namespace", "workload", "reason"])
        latency = GaugeMetricFamily(
            "latency_adapter_latency_ratio", "Latency quantile / latency target behind the decision.",
            labels=["namespace", "workload"])
        cpu = GaugeMetricFamily(
            "latency_adapter_cpu_ratio", "CPU utilisation / CPU target behind the decision.",
            labels=["namespace", "workload"])
        for (namespace, workload), decision in self.current.items():
            if decision is None:
                continue
            ratio.add_metric([namespace, workload, decision.reason], decision.ratio)
            if decision.latency_ratio is not None:
                latency.add_metric([namespace, workload], decision.latency_ratio)
            if decision.cpu_ratio is not None:
                cpu.add_metric([namespace, workload], decision.cpu_ratio)
        yield ratio
        yield latency
        yield cpu
        targets = GaugeMetricFamily(
            "latency_adapter_latency_target_seconds",
            "The workload's latency_target_seconds from the policy config (defaults plus overrides).",
            labels=["namespace", "workload"])
        for (namespace, workload), value in self.latency_targets.items():
            targets.add_metric([namespace, workload], value)
        yield targets
        errors = GaugeMetricFamily(
            "latency_adapter_workload_error_ratio",
            "Failed / all requests of the workload over the closed window (what error_ratio serves).",
            labels=["namespace", "workload"])
        for (namespace, workload), value in self.error_ratios.items():
            errors.add_metric([namespace, workload], value)
        yield errors
        yield from _canary_families(self.canaries)
        left_out = GaugeMetricFamily(
            "latency_adapter_decision_series_left_out",
            f"Workloads beyond the {MAX_DECISION_SERIES} whose decisions are exported (still served).")
        left_out.add_metric([], self.left_out)
        yield left_out


class Telemetry:
    """Metrics of one running service."""

    def __init__(self, store: WindowStore) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes (what limits.memory_budget_bytes is compared with), open file
        # descriptors against their limit, CPU seconds: the process's own health, from /proc.
        ProcessCollector(registry=r)
        self.otlp_requests = Counter(
            "latency_adapter_otlp_requests", "OTLP/HTTP export requests by signal and HTTP status code.",
            ["signal", "code"], registry=r,
        )
        self.otlp_items = Counter(
            "latency_adapter_otlp_items",
            "Spans or histogram points received, by outcome (accepted, rejected, ignored).",
            ["signal", "outcome"], registry=r,
        )
        self.otlp_rejected = Counter(
            "latency_adapter_otlp_rejected",
            "Rejected OTLP requests or items by reason (limits hit, malformed input, caps).",
            ["signal", "reason"], registry=r,
        )
        self.api_requests = Histogram(
            "latency_adapter_api_request_duration_seconds",
            "External metrics API request duration by route and HTTP status code.",
            ["route", "code"], buckets=API_BUCKETS, registry=r,
        )
        self.loop_lag = lag_histogram(r)
        self.gc_pauses = pause_histogram(r)
        self.api_rejected = Counter(
            "latency_adapter_api_rejected",
            "External metrics API requests answered with an error, by Status reason "
            "(Unauthorized, Forbidden, NotFound, BadRequest, ServiceUnavailable, ...).",
            ["reason"], registry=r,
        )
        self.store_dropped = Counter(
            "latency_adapter_series_dropped",
            "Samples dropped because a series cap was reached, by cap.", ["cap"], registry=r,
        )
        self.decisions = Counter(
            "latency_adapter_decisions",
            "Dual-signal policy evaluations by reason (none: neither signal usable, the HPA holds).",
            ["reason"], registry=r,
        )
        self._decisions = _DecisionCollector()
        r.register(self._decisions)
        r.register(_StoreCollector(store))
        self._store = store
        self._dropped_seen: dict[str, int] = {}

    def watch_latency(self, clock: Callable[[], float]) -> LatencyHistogramCollector:
        """Export ``latency_adapter_workload_latency_seconds`` with exemplars from the store (once)."""
        collector = LatencyHistogramCollector(self._store, clock)
        self.registry.register(collector)
        return collector

    def watch_policy(self, watcher: PolicyWatcher) -> None:
        """Export the policy file watcher's reload counters."""
        self.registry.register(_PolicyCollector(watcher))

    def watch_limits(self, hits: LimitHits, memory: MemoryWatch, otlp_inflight: Callable[[], int]) -> None:
        """Export ``latency_adapter_limit_hits_total{limit}``, the memory budget and the ingest queue."""
        self.registry.register(_LimitCollector(hits, self._store, memory, otlp_inflight))

    def watch_cpu_source(self, source: KubernetesCpuSource) -> None:
        """Export the Kubernetes CPU poller's counters (called when the poller runs)."""
        self.registry.register(_CpuSourceCollector(source))

    def watch_prometheus(self, source: PrometheusSource) -> None:
        """Export the Prometheus source's query, error (by kind) and last-success metrics."""
        from .sources.prometheus import PrometheusCollector

        self.registry.register(PrometheusCollector(source))

    def watch_security(self, parts: SecureParts) -> None:
        """Export the secure listener's TLS and auth counters (called once secure mode is built)."""
        self.registry.register(_SecurityCollector(parts))

    def record_decisions(self, decisions: dict[tuple[str, str], Decision | None],
                         error_ratios: dict[tuple[str, str], float] | None = None,
                         canaries: Mapping[tuple[str, str, str], float | CanaryReading] | None = None,
                         latency_targets: dict[tuple[str, str], float] | None = None) -> None:
        """Publish one evaluation of every workload: count each by reason, keep the first N for gauges."""
        for decision in decisions.values():
            self.decisions.labels(decision.reason if decision is not None else "none").inc()
        kept = dict(list(decisions.items())[:MAX_DECISION_SERIES])
        self._decisions.current = kept
        self._decisions.left_out = len(decisions) - len(kept)
        if error_ratios is not None:
            self._decisions.error_ratios = dict(list(error_ratios.items())[:MAX_DECISION_SERIES])
        if canaries is not None:
            self._decisions.canaries = dict(list(canaries.items())[:MAX_DECISION_SERIES])
        if latency_targets is not None:
            self._decisions.latency_targets = dict(list(latency_targets.items())[:MAX_DECISION_SERIES])

    def sync_store_counters(self) -> None:
        """Move the store's plain-int drop counts into Prometheus counters (called by the ticker)."""
        for cap, n in self._store.dropped.items():
            seen = self._dropped_seen.get(cap, 0)
            if n > seen:
                self.store_dropped.labels(cap).inc(n - seen)
                self._dropped_seen[cap] = n


class JsonFormatter(logging.Formatter):
    """One JSON object per line: easy to grep at 3 a.m. and to ship to any log backend."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in ("trace_id", "span_id"):  # set by a logging filter when the adapter traces itself
            value = getattr(record, key, None)
            if value:
                doc[key] = value
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    set_log_level(level)


def set_log_level(level: str) -> None:
    """Change the level of every adapter log line (at start, and live when the config file changes)."""
    logging.getLogger().setLevel(level.upper())

