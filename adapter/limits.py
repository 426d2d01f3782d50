"""The limits that keep one adapter serving under load, faults and hostile input.

The adapter sits in the autoscaling path: if it falls over, every HPA that reads it stops scaling. So
every input has a bound, every bound has a documented answer, and every time a bound is hit it is
counted on ``/metrics`` as ``latency_adapter_limit_hits_total{limit}`` (one counter, so one alert and one
dashboard panel cover them all). Two config sections hold the bounds:

* ``limits`` (:class:`LimitSettings`): what an operator may need to tune during an incident. Applied
  live when the config file changes, like the policy.
* ``server`` (:class:`ServerSettings`): what is fixed when a listener is made (header sizes and
  timeouts, connection caps) or when the process stops. A change needs a restart.

The rest of the limits live with the data they bound: body sizes and label lengths in ``otlp``, series
caps in ``store``, the info metric's budget in ``traces``.
"""

from __future__ import annotations

import logging
import os
import resource
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("adapter.limits")

#: ``server.debug_endpoints``: ``auto`` serves ``/debug/*`` only with ``--insecure-no-auth``.
DEBUG_ENDPOINTS = ("auto", "on", "off")
#: The budget when no cgroup memory limit is found and none is configured.
DEFAULT_MEMORY_BUDGET = 1 << 30
#: Share of a container's memory limit used as the budget: back-pressure starts before the OOM killer.
CGROUP_BUDGET_SHARE = 0.8
#: How long a resident-memory reading is reused (reading it costs a file read).
RSS_MAX_AGE_SECONDS = 0.5

#: Every ``limit`` label value of ``latency_adapter_limit_hits_total``, and what hitting it answers.
LIMITS: dict[str, str] = {
    "content_length": "OTLP: 413 before the body is read (declared Content-Length over otlp.max_body_bytes)",
    "body_too_large": "OTLP: 413 (body over otlp.max_body_bytes)",
    "decompressed_too_large": "OTLP: 413 (gzip body expands past otlp.max_decompressed_bytes)",
    "too_many_spans": "OTLP: 413 (spans in one request over limits.max_spans_per_request)",
    "too_many_points": "OTLP: 413 (data points in one request over limits.max_points_per_request)",
    "body_timeout": "OTLP: 408 (body not received within limits.body_timeout_seconds)",
    "label_too_long": "OTLP: items rejected in partial_success (label over otlp.max_label_length)",
    "series_total": "OTLP: new series rejected in partial_success (store.max_series)",
    "series_namespace": "OTLP: new series rejected in partial_success (store.max_series_per_namespace)",
    "ingest_queue": "OTLP: 429 + Retry-After (requests in flight over limits.otlp_high_water_requests)",
    "memory": "OTLP: 429 + Retry-After (resident memory over limits.memory_budget_bytes)",
    "concurrent_requests": "API: 429 TooManyRequests + Retry-After (over limits.max_concurrent_requests)",
    "header_too_large": "HTTP 400, connection closed (a header over server.max_header_bytes or "
                        "more than server.max_headers)",
    "header_timeout": "connection closed (no complete request within server.header_timeout_seconds)",
    "connections": "connection closed at once (over server.max_connections on one listener)",
    "info_workloads": "workload left out of the info metric (traces.exemplar_info_max_workloads)",
}


@dataclass(frozen=True)
class LimitSettings:
    """Config section ``limits``: applied live when the config file changes."""

    #: External metrics API requests handled at once; beyond, 429 ``TooManyRequests`` + ``Retry-After``.
    max_concurrent_requests: int = 512
    #: High-water mark of the OTLP ingest queue: requests being received or applied at once. Beyond it,
    #: 429 + ``Retry-After`` (OTLP clients retry with back-off) instead of buffering without bound.
    otlp_high_water_requests: int = 32
    #: Resident memory above which OTLP answers 429. 0: 80 % of the container's memory limit (cgroup),
    #: else 1 GiB.
    memory_budget_bytes: int = 0
    #: Spans in one OTLP request (the SDK sends 512 per batch, the Collector 8192 by default).
    max_spans_per_request: int = 65_536
    #: Histogram and CPU data points in one OTLP request.
    max_points_per_request: int = 65_536
    #: An OTLP body must arrive within this many seconds of its headers (slow clients).
    body_timeout_seconds: float = 10.0
    #: ``Retry-After`` sent with 429 and 503 answers.
    retry_after_seconds: int = 1


@dataclass(frozen=True)
class ServerSettings:
    """Config section ``server``: fixed for the life of the process (a change needs a restart)."""

    #: A connection must deliver a complete request line and headers within this many seconds of opening
    #: (TLS handshake included) and of its previous request; else it is closed (slowloris).
    header_timeout_seconds: float = 10.0
    #: Longest request line or header line, in bytes (the aggregator's X-Remote-Group lines can be long).
    max_header_bytes: int = 16384
    #: Most header fields in one request.
    max_headers: int = 128
    #: Open connections per listener; further ones are closed at once.
    max_connections: int = 4096
    #: SIGTERM to exit, at most (below Kubernetes' default 30 s grace period).
    shutdown_timeout_seconds: float = 20.0
    #: After SIGTERM, keep serving the API (readiness already false) this long before closing listeners,
    #: so endpoints and the aggregator stop sending first. Part of ``shutdown_timeout_seconds``.
    shutdown_delay_seconds: float = 0.0
    #: ``/debug/*`` on the operations port: ``auto`` (only with ``--insecure-no-auth``), ``on`` or ``off``.
    debug_endpoints: str = "auto"


class LimitHits:
    """Counts of limits hit, by :data:`LIMITS` name (exported by the telemetry collector)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = dict.fromkeys(LIMITS, 0)
        self._lock = threading.Lock()  # OTLP handlers and the header-timeout timers run on the loop only,
        # but the tracing exporter and tests may count from other threads.

    def hit(self, limit: str, n: int = 1) -> None:
        if limit not in self.counts:
            raise KeyError(f"unknown limit {limit!r}")
        with self._lock:
            self.counts[limit] += n


def cgroup_memory_limit(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The container's memory limit in bytes (cgroup v2, else v1), or None when unlimited or unknown."""
    for name in ("memory.max", "memory/memory.limit_in_bytes"):
        try:
            text = (root / name).read_text().strip()
        except OSError:
            continue
        if text == "max":
            return None
        try:
            value = int(text)
        except ValueError:
            continue
        # cgroup v1 reports "no limit" as a huge number (page-rounded LONG_MAX).
        return value if 0 < value < 1 << 60 else None
    return None


def memory_budget(configured: int, cgroup_limit: int | None) -> int:
    """The effective budget: the configured one, else a share of the cgroup limit, else 1 GiB."""
    if configured > 0:
        return configured
    if cgroup_limit is not None:
        return int(cgroup_limit * CGROUP_BUDGET_SHARE)
    return DEFAULT_MEMORY_BUDGET


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``; 0 where there is no procfs)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MemoryWatch:
    """Whether resident memory is over budget, read at most every :data:`RSS_MAX_AGE_SECONDS`."""

    def __init__(self, budget_bytes: int, *, rss: Callable[[], int] = resident_bytes,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.budget_bytes = budget_bytes
        self._rss = rss
        self._clock = clock
        self._read_at = -1e18
        self.last_rss = 0

    def over_budget(self) -> bool:
        now = self._clock()
        if now - self._read_at >= RSS_MAX_AGE_SECONDS:
            self._read_at = now
            self.last_rss = self._rss()
        return self.last_rss > self.budget_bytes


def raise_open_file_limit() -> tuple[int, int, int]:
    """Raise the soft open-file limit to the hard one: every connection is a file descriptor.

    Returns (soft before, soft after, hard); logged once at start so a "too many open files" at 3 a.m.
    can be checked against the limit the process actually had.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    after = soft
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            after = target
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit", extra={"fields": {
                "event": "open_files_limit_error", "soft": soft, "hard": hard, "error": str(exc)}})
    log.info("open-file limit", extra={"fields": {
        "event": "open_files_limit", "soft_before": soft, "soft": after,
        "hard": hard if hard != resource.RLIM_INFINITY else "unlimited"}})
    return soft, after, hard
