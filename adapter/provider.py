"""Answers "metric M in namespace N for selector S" from the store, and owns the answer cache.

The HPA controller asks every HPA's metrics every 15 s, and the aggregator's availability probe asks for
the resource list even more often; a request must never start expensive work. Served values are
refreshed on a fixed tick (``store.refresh_seconds``, 1 s by default): every answer is computed at most
once per tick, from the closed window plus the open slice up to the tick, and then served from a cache
keyed by ``(namespace, metric, canonical selector)``. All requests within one tick get the same answer
with the same timestamp, and a latency step reaches the served p95 within a couple of seconds.

Errors are exceptions from :mod:`adapter.errors`: an unknown metric is :class:`MetricNotFound`, a known
metric with no data for the selector is :class:`NoData` (404, the HPA holds), never a made-up 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .cpu import CpuSignals
from .dual_signal import DUAL_SIGNAL_HELP, DualSignal, PolicyLookup
from .errors import BadRequest, MetricNotFound, NoData, quote
from .model import Reading
from .policy_config import PolicyConfig
from .selector import Selector
from .store import Series, WindowStore, WindowView

if TYPE_CHECKING:
    from .sources.prometheus import PrometheusCache

#: Latency quantile metrics and the quantile each serves.
LATENCY_QUANTILES: dict[str, float] = {
    "latency_p50_seconds": 0.50,
    "latency_p95_seconds": 0.95,
    "latency_p99_seconds": 0.99,
}

#: One-line meaning of every served metric (used by the README generator check and ``/debug``).
METRIC_HELP: dict[str, str] = {
    "latency_p50_seconds": "median request latency over the window, seconds",
    "latency_p95_seconds": "95th percentile request latency over the window, seconds",
    "latency_p99_seconds": "99th percentile request latency over the window, seconds",
    "request_rate": "requests per second over the window",
    "error_ratio": "failed requests / all requests over the window (0..1)",
    **DUAL_SIGNAL_HELP,
}

#: Cached answers kept at most; the cache is cleared when it grows past this (one tick's worth).
MAX_CACHED = 20_000


@dataclass(frozen=True)
class _Cached:
    tick: int
    reading: Reading | None
    error: NoData | BadRequest | None


def _value_of(metric: str, view: WindowView) -> tuple[float, dict[str, str]]:
    """The value and the trace labels: every item names the request near the value it serves (for
    latency, the quantile; otherwise the p95) and, when the window had errors, a failed request."""
    labels: dict[str, str] = {}
    q = LATENCY_QUANTILES.get(metric)
    if q is None and metric not in ("request_rate", "error_ratio"):
        raise MetricNotFound(f"metric {metric!r} is not served by this adapter")
    near = view.sketch.quantile(q if q is not None else 0.95)
    if near is None:
        raise ValueError("empty sketch")
    exemplar = view.exemplar_near(near)
    if exemplar is not None:
        labels["trace_id"] = exemplar.trace_id
    if view.errors > 0 and view.error_trace_id:
        labels["error_trace_id"] = view.error_trace_id
    if q is not None:
        return near, labels
    if metric == "request_rate":
        return view.count / view.seconds, labels
    return view.errors / view.count, labels


class MetricsProvider:
    """Computes and caches :class:`Reading` values for the external metrics API."""

    def __init__(self, store: WindowStore, clock: Callable[[], float], cpu: CpuSignals | None = None,
                 policy: Callable[[], PolicyLookup] | None = None,
                 prometheus: PrometheusCache | None = None) -> None:
        self.store = store
        self._clock = clock
        self.cpu = cpu if cpu is not None else CpuSignals()
        #: Cached PromQL answers for workloads whose ``source`` includes prometheus (asked first).
        self.prometheus = prometheus
        default = PolicyConfig()
        self.dual = DualSignal(store, self.cpu, policy or (lambda: default), prometheus)
        self._cache: dict[tuple[str, str, str], _Cached] = {}
        self.computed = 0

    def metric_names(self) -> list[str]:
        """Every metric name this adapter can serve; listed even before any data arrives."""
        return sorted(METRIC_HELP)

    def tick_time(self) -> float:
        """Start of the current refresh tick: the timestamp of every value computed in it."""
        now = self._clock()
        self.store.advance(now)
        refresh = self.store.settings.refresh_seconds
        return math.floor(now / refresh) * refresh

    def reading(self, namespace: str, metric: str, selector: Selector) -> Reading:
        if metric not in METRIC_HELP:
            raise MetricNotFound(
                f"metric {quote(metric)} is not served by this adapter; served metrics: "
                + ", ".join(self.metric_names())
            )
        now = self._clock()
        self.store.advance(now)
        refresh = self.store.settings.refresh_seconds
        tick = math.floor(now / refresh)
        key = (namespace, metric, str(selector))
        cached = self._cache.get(key)
        if cached is None or cached.tick != tick:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            cached = self._compute(namespace, metric, selector, tick, tick * refresh)
            self._cache[key] = cached
        if cached.error is not None:
            # A fresh exception per request: re-raising the cached one would grow its traceback forever.
            raise type(cached.error)(str(cached.error))
        assert cached.reading is not None
        return cached.reading

    def _compute(self, namespace: str, metric: str, selector: Selector, tick: int, at: float) -> _Cached:
        self.computed += 1
        if metric in DUAL_SIGNAL_HELP:
            try:
                served = self.dual.value(metric, namespace, selector, at, shared=True)
            except NoData as exc:
                return _Cached(tick, None, NoData(f"no value for metric {metric!r}: {exc}"))
            except BadRequest as exc:
                return _Cached(tick, None, exc)
            return _Cached(tick, Reading(metric, served.value, at, self.store.settings.window_seconds,
                                         served.labels), None)
        matched = self.store.matching(namespace, selector)
        view = self.store.view_at(matched, at)
        if self.prometheus is not None:
            routed = self._from_prometheus(namespace, metric, selector, matched, view is not None, tick, at)
            if routed is not None:
                return routed
        settings = self.store.settings
        if view is None:
            what = f"selector {str(selector)!r}" if not selector.is_empty() else "an empty selector"
            return _Cached(tick, None, NoData(
                f"no data for metric {metric!r} in namespace {namespace!r} matching {what} "
                f"in the last {settings.window_seconds}s"
                + ("" if matched else " (no series matched)")
            ))
        value, extra = _value_of(metric, view)
        if not math.isfinite(value):
            return _Cached(tick, None, NoData(f"metric {metric!r} has no finite value in {namespace!r}"))
        labels = {**view.labels, **extra}
        reading = Reading(
            metric=metric,
            value=value,
            timestamp=at,
            window_seconds=max(1, round(view.seconds)),
            labels=labels,
        )
        return _Cached(tick, reading, None)

    def _from_prometheus(self, namespace: str, metric: str, selector: Selector, matched: list[Series],
                         has_otlp: bool, tick: int, at: float) -> _Cached | None:
        """The answer from the Prometheus cache when the selector means one workload configured for it
        and its ``source`` list picks Prometheus (``None``: the store answers as usual)."""
        from .sources.prometheus import SERVED

        assert self.prometheus is not None
        names = sorted(w for w in self.prometheus.workloads(namespace) if selector.matches({"workload": w}))
        if len(names) != 1 or any(s.key.workload != names[0] for s in matched):
            return None  # none, or a question the per-workload PromQL answers cannot add up
        workload = names[0]
        where, sample = self.prometheus.route(namespace, workload, SERVED[metric], at, has_otlp)
        if where == "store":
            return None
        if sample is None:
            return _Cached(tick, None, NoData(
                f"no fresh Prometheus value for metric {metric!r} of workload {workload!r} in namespace "
                f"{namespace!r} (source: prometheus; missing data, or the backend failed for longer "
                "than stale_after_seconds)"))
        labels = {"workload": workload}
        traced = sample if metric in LATENCY_QUANTILES else self.prometheus.fresh(
            namespace, workload, SERVED["latency_p95_seconds"], at)
        if traced is not None and traced.trace_id:
            labels["trace_id"] = traced.trace_id
        return _Cached(tick, Reading(metric, sample.value, sample.observed_at,
                                     self.prometheus.window_seconds, labels), None)
