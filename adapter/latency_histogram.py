"""``latency_adapter_workload_latency_seconds``: every workload's request latency as a Prometheus histogram,
with exemplars that lead to real requests near the window's p50, p95 and p99.

Why: the external metrics API serves a window's p95; an operator also wants the long history in
Prometheus and, from a point on a Grafana panel, the trace of a request that made that number. The
histogram is the history; the exemplars are the way to the traces.

The numbers come from the store (:meth:`WindowStore.request_counts`): cumulative counts since the
adapter started of every request it accepted per (namespace, workload), spans and imported OTLP
histograms alike, in the buckets of :data:`~adapter.store.REQUEST_BUCKETS` (5 ms to 10 s, OpenTelemetry's
advisory buckets for ``http.server.request.duration``). ``_count`` is exact; a bucket is exact to the
sketch's resolution (a request at most about 1 % above a bound may count in that bound's bucket) and
``_sum`` is within the sketch's relative accuracy (0.5 %); see :mod:`adapter.store`. A workload's series
leaves ``/metrics`` one hour after its last series left the store (about an hour after its last request).

Exemplars (rendered only in OpenMetrics, which Prometheus negotiates on its own; the plain text format
has no place for them), chosen at scrape time per workload from the same view the API serves (all the
workload's routes, the closed window plus the open slice):

* for q in p95, p99, p50: the quantile's value ``v`` from the window sketch, and the request
  :meth:`WindowView.exemplar_near` picks for it (the nearest candidate at or above ``v`` minus the sketch
  tolerance, or the nearest of all when none is: a request at least about as slow as the quantile, not
  just the last request; candidates are each batch's requests at its p50, p90, p95, p99 and max);
* each exemplar goes on the bucket that holds its own latency (the smallest ``le`` at or above it);
  when two land on one bucket the p95 one wins, then p99;
* labels ``{trace_id="<32 hex>"}``, value the request's latency in seconds, timestamp the moment this
  collector first exposed that request for that workload. The timestamp stays the same on every scrape
  while the request is shown, so Prometheus stores it once (a repeated exemplar is a no-op), and a newly
  chosen request always gets a later one (Prometheus drops exemplars older than a bucket's last).

Choosing costs one window view per workload (0.2 to 0.4 ms with a full window). To bound the work a
scrape does on the event loop, at most :data:`MAX_EXEMPLAR_WORKLOADS` workloads get fresh exemplars per
scrape, in turn (round robin); the others show the ones chosen for them the time before, unchanged
(same timestamp, so Prometheus stores nothing new).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator

from prometheus_client import utils as prometheus_utils
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar as PromExemplar

from .model import Exemplar
from .pacing import Pacer
from .store import REQUEST_BUCKETS, Series, WindowStore, WindowView, WorkloadKey, WorkloadRequests

NAME = "latency_adapter_workload_latency_seconds"
HELP = ("Latency of every request the adapter accepted per workload (spans and imported histograms), "
        "cumulative since start; exemplars are requests near the window's p95, p99 and p50.")
_go_float: Callable[[float], str] = prometheus_utils.floatToGoString  # untyped in prometheus_client
#: The ``le`` label of every bucket, in order, ``+Inf`` last (canonical OpenMetrics numbers).
BUCKET_LABELS = (*(_go_float(b) for b in REQUEST_BUCKETS), "+Inf")
#: Quantiles whose requests become exemplars, in order of precedence when two share a bucket.
EXEMPLAR_QUANTILES = (0.95, 0.99, 0.50)
#: Workloads that get exemplars per scrape at most (each costs one window view).
MAX_EXEMPLAR_WORKLOADS = 500
#: The ticker rebuilds the family while a scrape came within this many seconds.
SCRAPED_RECENTLY_SECONDS = 120.0


def bucket_index(seconds: float) -> int:
    """Index of the bucket a latency belongs to: the first bound at or above it (``len`` is +Inf)."""
    return bisect.bisect_left(REQUEST_BUCKETS, seconds)


def choose_exemplars(view: WindowView) -> dict[int, Exemplar]:
    """The requests shown as exemplars, by bucket index (see the module docstring for the rule)."""
    chosen: dict[int, Exemplar] = {}
    for q in EXEMPLAR_QUANTILES:
        value = view.sketch.quantile(q)
        if value is None:
            continue
        exemplar = view.exemplar_near(value)
        if exemplar is not None:
            chosen.setdefault(bucket_index(exemplar.seconds), exemplar)
    return chosen


def bucket_samples(counts: WorkloadRequests) -> list[int]:
    """Whole cumulative counts per bucket, ``+Inf`` (= ``_count``) last.

    Counts from imported histograms may carry fractions (a source bucket is spread over sketch bins);
    rounding keeps them whole as OpenMetrics requires, and never makes a bucket exceed ``_count`` or go
    down between scrapes (rounding preserves order).
    """
    total = round(counts.count)
    return [min(round(v), total) for v in counts.le] + [total]


class LatencyHistogramCollector(Collector):
    """Reads the store's request counts and windows at scrape time; nothing runs on the ingest path."""

    def __init__(self, store: WindowStore, clock: Callable[[], float],
                 max_exemplar_workloads: int = MAX_EXEMPLAR_WORKLOADS) -> None:
        self._store = store
        self._clock = clock
        self._budget = max(1, max_exemplar_workloads)
        self._cursor = 0
        #: Per workload, the exemplars of the last scrape by bucket index (timestamps kept from scrape to
        #: scrape while the same request is shown).
        self._shown: dict[WorkloadKey, dict[int, PromExemplar]] = {}
        #: What scrapes show: built by :meth:`refresh` (or by a scrape when nothing refreshes).
        self._family: HistogramMetricFamily | None = None
        #: Whether the ticker rebuilt the family at the last slice (False before it ever ran, and while
        #: it skips the work because nobody scrapes).
        self._current = False
        self._scraped_at = -1e18

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The family built by the last :meth:`refresh`; built now when it is not current (nothing calls
        :meth:`refresh`, as in tests and tools, or the first scrape after nobody scraped for a while,
        which must not see the counts of minutes ago)."""
        if not self._current or self._family is None:
            for _ in self._build(self._clock()):
                pass
        assert self._family is not None
        self._scraped_at = time.monotonic()
        yield self._family

    async def refresh(self, now: float, pacer: Pacer) -> None:
        """Build the family for the next scrape in turns (the service's ticker, once per slice, while
        something scrapes: none within :data:`SCRAPED_RECENTLY_SECONDS`, no work).

        With ten thousand workloads a scrape would otherwise hold the event loop for a second; built
        here, the numbers a scrape shows are at most one slice old, which a ``rate()`` never notices.
        """
        if time.monotonic() - self._scraped_at > SCRAPED_RECENTLY_SECONDS:
            self._current = False  # nobody scrapes: building would be work for nothing (a scrape will)
            return
        for _ in self._build(now):
            await pacer.turn()
        self._current = True

    def _build(self, now: float) -> Iterator[None]:
        """Build the family into ``self._family``; yields between workloads (pause points)."""
        store = self._store
        store.advance(now)
        series_of = store.workloads()
        rows: list[WorkloadRequests] = []
        for row in store.iter_request_counts():
            if row is None:
                yield None
            else:
                rows.append(row)
        n = len(rows)
        if n <= self._budget:
            fresh = range(n)
        else:  # round robin: the others keep the exemplars chosen for them last time
            fresh = range(self._cursor, self._cursor + self._budget)
            self._cursor = (self._cursor + self._budget) % n
        renew = {i % n for i in fresh}
        family = HistogramMetricFamily(NAME, HELP, labels=["namespace", "workload"], unit="seconds")
        shown: dict[WorkloadKey, dict[int, PromExemplar]] = {}
        for i, counts in enumerate(rows):
            workload = (counts.namespace, counts.workload)
            if i in renew:
                exemplars = self._exemplars(workload, series_of.get(workload, []), now)
            else:
                exemplars = self._shown.get(workload, {})
            if exemplars:
                shown[workload] = exemplars
            buckets: list[tuple[str, float] | tuple[str, float, PromExemplar]] = []
            for j, (le, value) in enumerate(zip(BUCKET_LABELS, bucket_samples(counts), strict=True)):
                exemplar = exemplars.get(j)
                buckets.append((le, value) if exemplar is None else (le, value, exemplar))
            family.add_metric([counts.namespace, counts.workload], buckets, counts.seconds)
            yield None
        self._shown = shown
        self._family = family

    def _exemplars(self, workload: WorkloadKey, series: list[Series], now: float) -> dict[int, PromExemplar]:
        view = self._store.view(series, now=now) if series else None
        if view is None:
            return {}
        since = {e.labels["trace_id"]: e.timestamp for e in self._shown.get(workload, {}).values()}
        return {i: PromExemplar({"trace_id": request.trace_id}, request.seconds,
                                since.get(request.trace_id) or round(now, 3))
                for i, request in choose_exemplars(view).items()}
