"""The adapter's own telemetry: Prometheus metrics on the operations port and JSON logs.

Every counter here answers a question an operator asks when autoscaling misbehaves: is telemetry
arriving (``latency_adapter_otlp_items_total``), is it being refused and why
(``latency_adapter_otlp_rejected_total{reason}``: body too large, malformed, series cap, label too long),
how many series are live and how much memory they hold, and how fast the API answers the HPA.

Gauges that describe the store are read at scrape time by a collector, so the hot paths never update
them. The registry is per service instance (no globals), which lets tests run several services in one
process.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .store import WindowStore

if TYPE_CHECKING:
    from .api.security import SecureParts

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
            "latency_adapter_store_bytes", "Approximate bytes held by the sketches of all active series."
        )
        held.add_metric([], store.nbytes())
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


class Telemetry:
    """Metrics of one running service."""

    def __init__(self, store: WindowStore) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
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
        r.register(_StoreCollector(store))
        self._store = store
        self._dropped_seen: dict[str, int] = {}

    def watch_security(self, parts: SecureParts) -> None:
        """Export the secure listener's TLS and auth counters (called once secure mode is built)."""
        self.registry.register(_SecurityCollector(parts))

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
    root.setLevel(level.upper())

