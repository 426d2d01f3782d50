"""Prometheus (any PromQL backend) as a source of p95, request rate, error ratio and CPU.

```yaml
sources:
  prometheus:
    url: http://prometheus.monitoring:9090
    refresh_seconds: 15
    query_offset_seconds: 2       # query this far behind the clock (late samples settle first)
    timeout_seconds: 5
    window_seconds: 60
    latency_metric: http_server_request_duration_seconds   # classic: <name>_bucket
    histogram: classic            # or native
    labels: {namespace: namespace, workload: workload, status_code: http_response_status_code}
    error_status_regex: "5.."
    queries: {}                   # optional full templates, by key (see QUERY_KEYS)
    headers: {X-Scope-OrgID: tenant-a}
    bearer_token_file: /var/run/secrets/prometheus/token
    basic_auth: {username: adapter, password_file: /etc/prometheus-auth/password}
    ca_file: /etc/prometheus-ca/ca.crt
    max_concurrency: 8
defaults: {source: otlp}
workloads:
  - {namespace: shop, workload: checkout, source: prometheus}
```

How it works: a background loop (:meth:`PrometheusSource.run`) queries every configured workload whose
``source`` includes ``prometheus`` (exact names from ``workloads`` entries, no globs) every
``refresh_seconds``, at a ``time=`` ``query_offset_seconds`` behind the clock and rounded *down* to the
refresh interval, so that replicas ask the same question and get the same answer (the offset lets a
scrape that started just before that time be stored before anyone asks). Results go into
:class:`PrometheusCache` with that time; API requests read the cache only and never start a query. CPU
utilisation also goes into the CPU registry (:meth:`~adapter.cpu.CpuSignals.put_workload`, as usage =
utilisation, request = 1 core), so ``cpu_utilization`` and ``dual_signal_ratio`` work unchanged through
the policy.

Missing data is missing: an empty result, ``NaN`` or ``±Inf`` is never a value (the API answers 404). A
failed query (timeout, connection, HTTP status, bad response; each counted by kind) keeps the last value
(fail static) until it is older than the workload's ``stale_after_seconds``.

Templates: ``$namespace``, ``$workload``, ``$window`` (e.g. ``60s``) and ``$quantile`` (``${name}`` also
works). Placeholders are checked when the config is read (an unknown one is a :class:`ConfigError` naming
``sources.prometheus.queries.<key>``, exit status 2). Whether a query *parses* is asked of the backend
at start (:meth:`PrometheusSource.check_templates`): each template expanded for a dummy workload is sent
to ``/api/v1/query``; a ``400 bad_data`` answer means it does not parse and start fails (exit status 2).
When the backend cannot be reached at start the check is skipped with a warning (the backend being down
must not keep the adapter down).
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..cpu import CpuSignals, WorkloadCpu
from ..errors import ConfigError
from ..policy import LatencySignal

if TYPE_CHECKING:
    from ..policy_config import PolicyConfig

from .prometheus_config import (
    CHECK_NAMESPACE,
    CHECK_WORKLOAD,
    ERROR_KINDS,
    QUANTILES,
    PrometheusSettings,
    align,
    expand,
)
from .promql import (
    ExemplarPoint,
    PrometheusClient,
    PrometheusQueryError,
    nearest,
)

log = logging.getLogger("adapter.prometheus")

# --------------------------------------------------------------------------------------------------------
# The cache and which source answers
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    value: float
    observed_at: float
    trace_id: str | None = None


@dataclass
class CachedWorkload:
    """The last answers for one workload, by metric (``latency_q<quantile>``, ``request_rate``, ...)."""

    values: dict[str, Sample] = field(default_factory=dict)


def quantile_key(q: float) -> str:
    return f"latency_q{q:g}"


#: Served metric -> cache key.
SERVED = {"latency_p50_seconds": quantile_key(0.5), "latency_p95_seconds": quantile_key(0.95),
          "latency_p99_seconds": quantile_key(0.99), "request_rate": "request_rate",
          "error_ratio": "error_ratio"}


class PrometheusCache:
    """What the refresh loop last got, and which source answers for a workload (``source`` policy key)."""

    def __init__(self, policy: Callable[[], PolicyConfig], window_seconds: int) -> None:
        self._policy = policy
        self.window_seconds = window_seconds
        self._entries: dict[tuple[str, str], CachedWorkload] = {}

    def configured(self) -> list[tuple[str, str]]:
        """Workloads to query: exact names of ``workloads`` entries whose source includes prometheus."""
        policy = self._policy()
        out: set[tuple[str, str]] = set()
        for override in policy.workloads:
            if any(c in override.namespace + override.workload for c in "*?["):
                continue
            if "prometheus" in policy.source_of(override.namespace, override.workload):
                out.add((override.namespace, override.workload))
        return sorted(out)

    def workloads(self, namespace: str) -> set[str]:
        return {w for (ns, w) in self.configured() if ns == namespace}

    def all_workloads(self) -> set[tuple[str, str]]:
        return set(self.configured())

    def entry(self, namespace: str, workload: str) -> CachedWorkload:
        return self._entries.setdefault((namespace, workload), CachedWorkload())

    def forget_others(self, keep: set[tuple[str, str]]) -> None:
        for key in [k for k in self._entries if k not in keep]:
            del self._entries[key]

    def fresh(self, namespace: str, workload: str, key: str, now: float) -> Sample | None:
        """The cached value of ``key`` while younger than the workload's ``stale_after_seconds``."""
        entry = self._entries.get((namespace, workload))
        sample = entry.values.get(key) if entry is not None else None
        if sample is None:
            return None
        stale_after = self._policy().for_workload(namespace, workload).stale_after_seconds
        return sample if now - sample.observed_at <= stale_after else None

    def route(self, namespace: str, workload: str, key: str, now: float,
              has_otlp: bool) -> tuple[str, Sample | None]:
        """Which source answers ``key``: ``("store", None)``, ``("prometheus", sample)`` or
        ``("missing", None)``; the first source in the workload's ``source`` list with fresh data."""
        sources = self._policy().source_of(namespace, workload)
        for source in sources:
            if source == "otlp" and has_otlp:
                return "store", None
            if source == "prometheus":
                sample = self.fresh(namespace, workload, key, now)
                if sample is not None:
                    return "prometheus", sample
        return ("store", None) if "otlp" in sources else ("missing", None)

    def latency(self, namespace: str, workload: str, quantile: float, now: float,
                has_otlp: bool) -> tuple[bool, LatencySignal | None]:
        """For the dual-signal metrics: ``(False, None)`` when the store answers, else ``(True, signal)``
        with the cached quantile (p95 when that quantile is not cached) and samples = rate x window."""
        if "prometheus" not in self._policy().source_of(namespace, workload):
            return False, None
        key = quantile_key(quantile)
        if self.fresh(namespace, workload, key, now) is None:
            key = quantile_key(0.95)
        where, sample = self.route(namespace, workload, key, now, has_otlp)
        if where == "store":
            return False, None
        if sample is None:
            return True, None
        rate = self.fresh(namespace, workload, "request_rate", now)
        samples = round(rate.value * self.window_seconds) if rate is not None else 0
        return True, LatencySignal(sample.value, samples, sample.observed_at, sample.trace_id)


# --------------------------------------------------------------------------------------------------------
# The refresh loop
# --------------------------------------------------------------------------------------------------------


class PrometheusSource:
    """Queries every configured workload each ``refresh_seconds`` into the cache and the CPU registry."""

    def __init__(self, settings: PrometheusSettings, cache: PrometheusCache, cpu: CpuSignals,
                 policy: Callable[[], PolicyConfig], clock: Callable[[], float] = time.time,
                 client: PrometheusClient | None = None) -> None:
        self.settings = settings
        self.cache = cache
        self.cpu = cpu
        self._policy = policy
        self._clock = clock
        self.client = client or PrometheusClient(settings, clock)
        self.templates = settings.templates()
        self.rounds = 0
        #: Refreshes of a workload with a latency value but no exemplar with a trace id (the exemplar query
        #: failed, or the backend keeps none: VictoriaMetrics answers ``query_exemplars`` with no data).
        self.exemplar_misses = 0
        self._exemplars_noted = False
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)

    async def check_templates(self) -> None:
        """Ask the backend whether every template parses; a ``400 bad_data`` is a :class:`ConfigError`."""
        at = self._query_time(self._clock())
        custom = dict(self.settings.queries)
        for key, template in self.templates.items():
            promql = expand(template, CHECK_NAMESPACE, CHECK_WORKLOAD, self.settings.window_seconds)
            path = "/api/v1/query_exemplars" if key == "latency_exemplars" else "/api/v1/query"
            params = {"query": promql, "time": f"{at:.3f}"} if key != "latency_exemplars" else {
                "query": promql, "start": f"{at - 60:.3f}", "end": f"{at:.3f}"}
            try:
                await self.client.get(path, params)
            except PrometheusQueryError as exc:
                if key == "latency_exemplars" and exc.error_type != "bad_data":
                    continue  # a backend without an exemplar API still serves values (no trace_id)
                if exc.status == 400 and exc.error_type == "bad_data":
                    where = "" if key in custom else " (built-in; check latency_metric, labels)"
                    raise ConfigError(f"sources.prometheus.queries.{key}", template,
                                      f"does not parse at {self.settings.url}{where}: {exc}") from exc
                log.warning("cannot check PromQL templates at start; the refresh loop will retry",
                            extra={"fields": {"event": "prometheus_check_skipped", "key": key,
                                              "kind": exc.kind, "error": str(exc)}})
                return

    def _query_time(self, now: float) -> float:
        """The ``time=`` of the round under way at ``now``: the same on every replica."""
        return align(now, self.settings.refresh_seconds, self.settings.query_offset_seconds)

    async def run(self) -> None:
        """Refresh at every multiple of ``refresh_seconds`` (plus the offset) until cancelled."""
        refresh, offset = self.settings.refresh_seconds, self.settings.query_offset_seconds
        try:
            while True:
                try:
                    await self.refresh_once()
                except Exception:  # the loop must outlive any surprise; values go stale on their own
                    log.exception("prometheus refresh failed")
                now = self._clock()
                await asyncio.sleep(self._query_time(now) + refresh + offset - now + 0.05)
        finally:
            await self.client.close()

    async def refresh_once(self) -> None:
        at = self._query_time(self._clock())
        workloads = self.cache.configured()
        self.cache.forget_others(set(workloads))
        await asyncio.gather(*(self._refresh(ns, w, at) for ns, w in workloads))
        self.rounds += 1

    async def _query(self, key: str, namespace: str, workload: str, at: float,
                     quantile: float = 0.95) -> float | None:
        promql = expand(self.templates[key], namespace, workload, self.settings.window_seconds, quantile)
        async with self._semaphore:
            return await self.client.query(promql, at)

    async def _refresh(self, namespace: str, workload: str, at: float) -> None:
        """One round for one workload; the cache entry changes only once every answer is in, so a
        request never sees a new p95 without its trace id."""
        quantiles = sorted({*QUANTILES, self._policy().for_workload(namespace, workload).quantile})
        jobs: dict[str, Any] = {quantile_key(q): self._query("latency_quantile", namespace, workload, at, q)
                                for q in quantiles}
        for key in ("request_rate", "error_ratio", "cpu_utilization"):
            jobs[key] = self._query(key, namespace, workload, at)
        results = await asyncio.gather(*jobs.values(), return_exceptions=True)
        new: dict[str, Sample | None] = {}  # None: answered "no data"; absent: failed (fail static)
        for key, result in zip(jobs, results, strict=True):
            if isinstance(result, PrometheusQueryError):
                log.debug("prometheus query failed", extra={"fields": {
                    "event": "prometheus_query_failed", "namespace": namespace, "workload": workload,
                    "query": key, "kind": result.kind, "error": str(result)}})
                continue
            if isinstance(result, BaseException):
                raise result
            new[key] = None if result is None else Sample(float(result), at)
        if any(k.startswith("latency_q") and v is not None for k, v in new.items()):
            points = await self._exemplars(namespace, workload, at)
            for key, sample in list(new.items()):
                if key.startswith("latency_q") and sample is not None and points:
                    trace_id = nearest(points, sample.value).trace_id
                    new[key] = Sample(sample.value, sample.observed_at, trace_id)
        entry = self.cache.entry(namespace, workload)
        for key, sample in new.items():
            if sample is None:
                entry.values.pop(key, None)
            else:
                entry.values[key] = sample
        cpu = new.get("cpu_utilization")
        if cpu is not None:
            self.cpu.put_workload(namespace, workload, WorkloadCpu(cpu.value, 1.0, 0, at))

    async def _exemplars(self, namespace: str, workload: str, at: float) -> list[ExemplarPoint]:
        """Exemplars of the latency series over the window (none when the query fails)."""
        promql = expand(self.templates["latency_exemplars"], namespace, workload,
                        self.settings.window_seconds)
        try:
            async with self._semaphore:
                points = await self.client.query_exemplars(promql, at - self.settings.window_seconds, at)
        except PrometheusQueryError as exc:
            self._no_exemplars(f"query_exemplars failed ({exc.kind}): {exc}")
            return []
        if not points:
            self._no_exemplars("query_exemplars answered no exemplar with a trace id")
        return points

    def _no_exemplars(self, why: str) -> None:
        """Count a refresh without exemplars; log the first one only (values are served regardless)."""
        self.exemplar_misses += 1
        if not self._exemplars_noted:
            self._exemplars_noted = True
            log.info("no exemplars from the PromQL backend; values carry no trace_id (logged once)",
                     extra={"fields": {"event": "prometheus_no_exemplars", "reason": why}})


class PrometheusCollector(Collector):
    """``latency_adapter_prometheus_*``: queries, errors by kind, last success (read at scrape time)."""

    def __init__(self, source: PrometheusSource) -> None:
        self._source = source

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        client = self._source.client
        queries = CounterMetricFamily("latency_adapter_prometheus_queries",
                                      "PromQL API requests sent by the Prometheus source.")
        queries.add_metric([], client.queries)
        yield queries
        errors = CounterMetricFamily(
            "latency_adapter_prometheus_query_errors",
            "PromQL queries without an answer, by kind (timeout, connection, http_status, bad_response); "
            "the last value is kept until stale.", labels=["kind"])
        for kind in ERROR_KINDS:
            errors.add_metric([kind], client.errors.get(kind, 0))
        yield errors
        last = GaugeMetricFamily("latency_adapter_prometheus_last_success_timestamp_seconds",
                                 "Unix time of the last PromQL API request that was answered.")
        if client.last_success is not None:
            last.add_metric([], client.last_success)
        yield last
        rounds = CounterMetricFamily("latency_adapter_prometheus_refresh_rounds",
                                     "Refresh rounds of the Prometheus source.")
        rounds.add_metric([], self._source.rounds)
        yield rounds
        misses = CounterMetricFamily("latency_adapter_prometheus_exemplar_misses",
                                     "Refreshes of a workload's latency without an exemplar with a trace id "
                                     "(the backend keeps none, or query_exemplars failed).")
        misses.add_metric([], self._source.exemplar_misses)
        yield misses
