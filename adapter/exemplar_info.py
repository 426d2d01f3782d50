"""``latency_adapter_p95_exemplar_info{namespace,workload,trace_id} 1``: the request behind each p95.

Why an info metric: a Grafana table or an alert can link "the request behind this p95" only when the
trace id is a label. A trace id that followed the p95 on every scrape would make a new series every
time and flood Prometheus, so :class:`ExemplarInfo` publishes one series per workload, replaces it at
most once per interval, and keeps a global budget of new series per rolling hour.

The rule (``I`` = ``exemplar_info_interval_seconds``, ``B`` = ``exemplar_info_series_per_hour``), applied
by :meth:`ExemplarInfo.update` once per slice with every workload's current p95 trace id:

* **First publication is immediate.** A workload with data and no series gets one at once; that is a new
  series and is counted against the budget.
* **Rotation.** A workload's series is replaced (one new series) only when at least ``I`` seconds passed
  since its last publication *and* its current p95 trace id differs from the published one.
* **Budget.** New series (first publications and rotations) created in the last rolling hour (one made
  at ``t`` counts while ``now - t < 3600``) never exceed ``B``. Over budget nothing is added or rotated
  and the old series stays. ``skipped_over_budget`` counts, once per update, every workload that was due
  (no series yet, or ``I`` passed since its last publication) when no budget was left; its trace id is
  not even computed then, so an adapter over budget does no per-workload work. When the budget is short,
  workloads without a series come first, then the due workloads checked least recently.
* **No data.** A workload without data (absent from ``current``, or its trace id read as None) keeps its
  last series for ``I`` seconds after it last had data, then the series is dropped. Dropping creates no
  series; a workload that comes back is published again as a new series.
* **Cap.** At most ``max_workloads`` workloads have a series (a memory bound; the store's own series cap,
  10 000 by default, is the same size); beyond it additions are refused and counted in ``left_out``.

Cost. A trace id costs one :meth:`WindowStore.view` of the workload (about 0.2 ms with a full window), so
it is computed only when needed: for a workload without a series, and for due workloads, at most
``ceil(N * dt / I)`` per update (``dt``: time since the previous update), least recently checked first.
That is enough to look at every workload once per interval, and it keeps the steady cost near
``N * dt / I`` views (about 42 for 500 workloads, 5 s slices and ``I`` = 60 s) even when every workload
became due in the same slice or a workload's p95 request stays the same. A due workload not looked at
yet keeps its series and counts as having data, and so does one over budget: a workload that still has
requests but none with a trace id (only imported histograms) is noticed the next time it is looked at.

Worst case. Every creation for one workload (first publication, rotation, publication after a drop) is at
least ``I`` seconds after the one before: a rotation waits ``I`` after the last publication, and a drop
comes ``I`` after the workload was last seen, which is no earlier than its last publication. ``k`` times
spaced ``>= I`` apart inside a rolling hour satisfy ``(k - 1) * I < 3600``, so ``k <= ceil(3600 / I)``.
Hence, for ``N`` workloads (every workload seen in that hour), the new series in any rolling hour number
at most::

    min(N * ceil(3600 / I), B)

With the defaults (``I`` = 60 s, ``B`` = 5000) that is ``min(60 * N, 5000)``: 100 workloads whose p95
request changes all the time would want 6000 new series an hour and get 5000. The first publication
starts a workload's interval like a rotation does, which is why there is no ``+ N`` term. Times are the
adapter's clock (a clock that jumps forward frees budget early). Series present at any moment number at
most ``min(N, max_workloads)``.

Pure: time is an argument, no clock and no I/O. :class:`P95TraceIds` reads the store lazily, and
:class:`ExemplarInfoCollector` exports the state at scrape time.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .store import Series, WindowStore
from .traces import TraceSettings

#: The budget is counted over this rolling period.
HOUR_SECONDS = 3600.0
#: Workloads with a published series at most (the store keeps at most 10 000 series by default).
MAX_WORKLOADS = 10_000
#: The quantile whose request is published.
QUANTILE = 0.95

WorkloadKey = tuple[str, str]


def worst_case_series_per_hour(workloads: int, interval_seconds: float, series_per_hour: int) -> int:
    """The most new series :class:`ExemplarInfo` can create in any rolling hour (see the module doc)."""
    return min(workloads * math.ceil(HOUR_SECONDS / interval_seconds), series_per_hour)


@dataclass
class _Published:
    trace_id: str
    published_at: float  # first publication or last rotation
    checked_at: float  # last time its trace id was read (due workloads are checked oldest first)
    seen_at: float  # last update in which the workload had data


class ExemplarInfo:
    """One trace id per workload, replaced at most once per interval, within an hourly series budget."""

    def __init__(self, interval_seconds: float = 60.0, series_per_hour: int = 5000,
                 max_workloads: int = MAX_WORKLOADS) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        if series_per_hour < 1 or max_workloads < 1:
            raise ValueError("series_per_hour and max_workloads must be at least 1")
        self.interval_seconds = float(interval_seconds)
        self.series_per_hour = series_per_hour
        self.max_workloads = max_workloads
        self._published: dict[WorkloadKey, _Published] = {}
        self._created: deque[tuple[float, int]] = deque()  # (time, series created then), oldest first
        self._created_total = 0  # sum of the counts in _created
        #: Publications that replaced a workload's series (first publications are not rotations).
        self.rotations = 0
        #: Additions and rotations refused because the hour's budget was used up (once per update).
        self.skipped_over_budget = 0
        #: Series created (first publications and rotations) since the start.
        self.series_created = 0
        #: Workloads with data but no series because ``max_workloads`` have one (last update).
        self.left_out = 0
        self._last_update: float | None = None

    @classmethod
    def from_settings(cls, settings: TraceSettings) -> ExemplarInfo:
        return cls(settings.exemplar_info_interval_seconds, settings.exemplar_info_series_per_hour,
                   max_workloads=settings.exemplar_info_max_workloads)

    @property
    def series_created_last_hour(self) -> int:
        """New series created in the rolling hour before the last update (what the budget counts)."""
        return self._created_total

    def series(self) -> dict[WorkloadKey, str]:
        """The published series: (namespace, workload) -> trace id."""
        return {key: p.trace_id for key, p in self._published.items()}

    def update(self, now: float, current: Mapping[WorkloadKey, str | None]) -> None:
        """Apply one evaluation: ``current`` maps every workload with data to its p95 trace id or None.

        Values are read only when needed (see Cost in the module doc), so ``current`` may compute them
        lazily (:class:`P95TraceIds` does). A value read as None counts as no data; a key whose value is
        not read counts as data.
        """
        for _ in self.update_steps(now, current):
            pass

    def update_steps(self, now: float, current: Mapping[WorkloadKey, str | None]) -> Iterator[None]:
        """:meth:`update` as a generator that yields after every value it reads: an event loop can run
        other work between two trace id computations (each is a window view)."""
        self._expire(now)
        interval = self.interval_seconds
        published = self._published
        checks = self._checks(now)
        new: list[WorkloadKey] = []
        due: list[tuple[float, WorkloadKey]] = []
        for key in current:
            mine = published.get(key)
            if mine is None:
                new.append(key)
            elif now - mine.published_at >= interval:
                due.append((mine.checked_at, key))
            else:
                mine.seen_at = now
        room = self.series_per_hour - self._created_total
        created = 0
        self.left_out = 0
        for key in new:  # a workload without a series comes before a rotation
            if len(published) >= self.max_workloads:
                self.left_out += 1
            elif created >= room:
                self.skipped_over_budget += 1
            else:
                trace_id = current[key]
                yield None
                if trace_id:
                    published[key] = _Published(trace_id, now, now, now)
                    created += 1
        due.sort()  # least recently checked first: a workload whose trace id stays starves no other
        for _, key in due:
            mine = published[key]
            if created >= room:
                self.skipped_over_budget += 1
                mine.seen_at = now
                continue
            if checks <= 0:  # checked in a later update
                mine.seen_at = now
                continue
            checks -= 1
            mine.checked_at = now
            trace_id = current[key]
            yield None
            if not trace_id:
                continue
            mine.seen_at = now
            if trace_id != mine.trace_id:
                mine.trace_id = trace_id
                mine.published_at = now
                created += 1
                self.rotations += 1
        # Drop the series of workloads without data for a whole interval (dropping creates no series).
        gone = [key for key, p in published.items() if now - p.seen_at >= interval]
        for key in gone:
            del published[key]
        if created:
            self._created.append((now, created))
            self._created_total += created
            self.series_created += created

    def _checks(self, now: float) -> int:
        """How many due workloads may have their trace id computed in this update.

        Enough to check every published workload once per interval when updates come every ``dt``
        seconds (``N * dt / I``, at least one), so the cost of an update stays about ``N * dt / I`` trace
        id computations even when every workload is due at once (all were published in the same slice)
        or a workload's p95 request stays the same and it stays due.
        """
        last, self._last_update = self._last_update, now
        dt = self.interval_seconds if last is None else min(max(now - last, 0.0), self.interval_seconds)
        return max(1, math.ceil(len(self._published) * dt / self.interval_seconds))

    def _expire(self, now: float) -> None:
        created = self._created
        while created and now - created[0][0] >= HOUR_SECONDS:
            self._created_total -= created.popleft()[1]


class P95TraceIds(Mapping[WorkloadKey, str | None]):
    """Every workload with series in the store -> its window p95 trace id, computed on first access.

    The window is that of the API (routes merged, the open slice up to ``now`` included). Listing the
    workloads is cheap; a value costs one :meth:`WindowStore.view` (unpacking the window's exemplar
    candidates), so it is computed only when :meth:`ExemplarInfo.update` reads it. ``computed`` counts
    the values computed.
    """

    def __init__(self, store: WindowStore, now: float) -> None:
        self._store = store
        self._now = now
        groups: dict[WorkloadKey, list[Series]] = {}
        for series in store.all_series():
            key = (series.key.namespace, series.key.workload)
            group = groups.get(key)
            if group is None:
                groups[key] = [series]
            else:
                group.append(series)
        self._groups = groups
        self._values: dict[WorkloadKey, str | None] = {}
        self.computed = 0

    def __getitem__(self, key: WorkloadKey) -> str | None:
        if key in self._values:
            return self._values[key]
        value = _trace_id_near_p95(self._store, self._groups[key], self._now)
        self._values[key] = value
        self.computed += 1
        return value

    def __contains__(self, key: object) -> bool:
        return key in self._groups

    def __iter__(self) -> Iterator[WorkloadKey]:
        return iter(self._groups)

    def __len__(self) -> int:
        return len(self._groups)


def _trace_id_near_p95(store: WindowStore, group: list[Series], now: float) -> str | None:
    view = store.view(group, now=now)
    if view is None:
        return None
    p95 = view.sketch.quantile(QUANTILE)
    if p95 is None:
        return None
    exemplar = view.exemplar_near(p95)
    return exemplar.trace_id if exemplar is not None else None


class ExemplarInfoCollector(Collector):
    """Exports an :class:`ExemplarInfo` at scrape time."""

    def __init__(self, info: ExemplarInfo) -> None:
        self._info = info

    def describe(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return self._families(())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        return self._families(list(self._info.series().items()))

    def _families(self, series: Iterable[tuple[WorkloadKey, str]],
                  ) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        info = self._info
        current = GaugeMetricFamily(
            "latency_adapter_p95_exemplar_info",
            "A request near the workload's window p95 latency (trace_id label, always 1); replaced at most "
            f"every {info.interval_seconds:g}s, within a budget of new series per hour.",
            labels=["namespace", "workload", "trace_id"])
        for (namespace, workload), trace_id in series:
            current.add_metric([namespace, workload, trace_id], 1.0)
        yield current
        rotations = CounterMetricFamily(
            "latency_adapter_p95_exemplar_info_rotations",
            "Times a workload's p95 exemplar info series was replaced by one with a new trace id.")
        rotations.add_metric([], info.rotations)
        yield rotations
        skipped = CounterMetricFamily(
            "latency_adapter_p95_exemplar_info_skipped",
            "p95 exemplar info additions or rotations refused because the hourly series budget was used "
            "up (counted once per slice while due; the old series stays).")
        skipped.add_metric([], info.skipped_over_budget)
        yield skipped
        budget = GaugeMetricFamily(
            "latency_adapter_p95_exemplar_info_series_budget",
            "Configured budget of new p95 exemplar info series in any rolling hour.")
        budget.add_metric([], info.series_per_hour)
        yield budget
        used = GaugeMetricFamily(
            "latency_adapter_p95_exemplar_info_series_created_last_hour",
            "New p95 exemplar info series created in the last rolling hour (compare with the budget).")
        used.add_metric([], info.series_created_last_hour)
        yield used
