"""Sliding-window latency store: per series, a ring of time slices, each a sketch plus counters.

Pure: no clock, no I/O, no asyncio. Every call that depends on time takes ``now`` (seconds since the epoch)
as an argument, so tests drive it with an injected clock and the service drives it with ``time.time()``.

Time is cut into slices of ``slice_seconds`` (default 5 s); slice ``i`` covers
``[i * slice_seconds, (i + 1) * slice_seconds)``. The *window* is the last ``window_seconds /
slice_seconds`` **closed** slices (default 12, i.e. 60 s); the slice being written is not part of it.
So every value served changes only when a slice closes: all requests in between see the same answer, the
API can cache per slice (the ``epoch``), and a latency step reaches the served p95 at the next slice
boundary, within one slice.

Each series keeps a merged window sketch that is updated incrementally when a slice closes (the new
slice is added, the one that left the window is subtracted) and rebuilt from its slices once per
window so rounding never accumulates. Memory per active series is the ring of float32 slice sketches
plus one float64 window sketch: about 30 KiB for a typical latency distribution (``make bench`` prints
the figure).

Caps: at most ``max_series`` series in total and ``max_series_per_namespace`` per namespace. A sample for
a new series over a cap is dropped and counted in :attr:`WindowStore.dropped`, never an exception.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .model import Exemplar, SeriesKey
from .sketch import DEFAULT_RELATIVE_ACCURACY, LatencySketch

#: Exemplar candidates kept per slice; enough to cover a slice's upper tail at a fixed memory cost.
CANDIDATES_PER_SLICE = 16


@dataclass(frozen=True)
class StoreSettings:
    window_seconds: int = 60
    slice_seconds: int = 5
    max_series: int = 10_000
    max_series_per_namespace: int = 2_000
    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY

    def __post_init__(self) -> None:
        if self.slice_seconds <= 0 or self.window_seconds <= 0:
            raise ValueError("window_seconds and slice_seconds must be positive")
        if self.window_seconds % self.slice_seconds:
            raise ValueError("window_seconds must be a whole number of slices")

    @property
    def slices(self) -> int:
        return self.window_seconds // self.slice_seconds


class Slice:
    """One closed or open time slice of one series."""

    __slots__ = ("candidates", "count", "error_trace_id", "errors", "sketch", "slice_id")

    def __init__(self, slice_id: int, relative_accuracy: float) -> None:
        self.slice_id = slice_id
        self.sketch = LatencySketch(relative_accuracy, np.float32)
        self.count = 0.0
        self.errors = 0.0
        self.candidates: list[Exemplar] = []
        self.error_trace_id = ""

    def add_candidates(self, candidates: Iterable[Exemplar]) -> None:
        """Keep a bounded, evenly spread sample of candidate requests by latency.

        Candidates arrive from the upper part of each batch (p50, p90, p95, p99, max). When the list is
        full it is thinned by keeping every other one in latency order, which keeps the spread of the
        tail rather than only the newest or the slowest requests.
        """
        self.candidates.extend(candidates)
        if len(self.candidates) > CANDIDATES_PER_SLICE:
            ordered = sorted(self.candidates, key=lambda e: e.seconds)
            self.candidates = ordered[1::2] if len(ordered) % 2 == 0 else ordered[::2]

    def nbytes(self) -> int:
        return self.sketch.nbytes() + 64 * len(self.candidates) + 200


class Series:
    """The ring of slices of one series plus its merged window."""

    __slots__ = ("covered_from", "key", "ring", "window", "window_count", "window_errors")

    def __init__(self, key: SeriesKey, slots: int, relative_accuracy: float, first_slice: int) -> None:
        self.key = key
        self.ring: list[Slice | None] = [None] * slots
        self.window = LatencySketch(relative_accuracy, np.float64)
        self.window_count = 0.0
        self.window_errors = 0.0
        self.covered_from = first_slice

    def slices_in(self, first: int, last: int) -> list[Slice]:
        """The slices with ids in ``[first, last]`` that hold data."""
        out = []
        for s in self.ring:
            if s is not None and first <= s.slice_id <= last:
                out.append(s)
        return out

    def nbytes(self) -> int:
        total = self.window.nbytes() + 400 + 8 * len(self.ring)
        for s in self.ring:
            if s is not None:
                total += s.nbytes()
        return total


@dataclass(frozen=True)
class WindowView:
    """What the window of one or more series holds at one epoch (a read-only snapshot)."""

    sketch: LatencySketch
    count: float
    errors: float
    seconds: float
    candidates: tuple[Exemplar, ...]
    error_trace_id: str
    labels: dict[str, str]

    def exemplar_near(self, value: float) -> Exemplar | None:
        """The candidate whose latency is nearest ``value``, preferring ones at or above it."""
        if not self.candidates:
            return None
        above = [c for c in self.candidates if c.seconds >= value]
        pool: Sequence[Exemplar] = above if above else self.candidates
        return min(pool, key=lambda c: abs(c.seconds - value))


class WindowStore:
    """All series, their slices and windows. See the module docstring for the time model."""

    def __init__(self, settings: StoreSettings | None = None) -> None:
        self.settings = settings or StoreSettings()
        self._series: dict[SeriesKey, Series] = {}
        self._per_namespace: dict[str, int] = {}
        self.epoch: int | None = None  # id of the last closed slice
        self.dropped: dict[str, int] = {"series_cap": 0, "namespace_series_cap": 0}
        self.rolls = 0

    # -- time --------------------------------------------------------------------------------------

    def slice_id(self, now: float) -> int:
        return math.floor(now / self.settings.slice_seconds)

    def advance(self, now: float) -> bool:
        """Close the slices that ended before ``now`` and move every window. True when the epoch moved.

        Called before every write and by the service's ticker, so windows move even when no data comes.
        """
        epoch = self.slice_id(now) - 1
        if self.epoch is not None and epoch <= self.epoch:
            return False
        previous = self.epoch
        self.epoch = epoch
        self.rolls += 1
        n = self.settings.slices
        rebuild_every = n
        for key in list(self._series):
            series = self._series[key]
            if previous is None or epoch - previous > n or (epoch + hash(key)) % rebuild_every == 0:
                self._rebuild(series, epoch)
            else:
                for s in series.slices_in(previous + 1, epoch):
                    self._window_add(series, s, 1.0)
                for s in series.slices_in(previous - n + 1, epoch - n):
                    self._window_add(series, s, -1.0)
            self._drop_expired(series, epoch - n)
            if series.window_count <= 0 and not series.slices_in(epoch + 1, epoch + 1):
                self._remove(key)
        return True

    def _window_add(self, series: Series, s: Slice, sign: float) -> None:
        store = s.sketch.store
        if store.length():
            series.window.store.add_dense(store.offset, store.bins.astype(np.float64) * sign)
        series.window._zero_count += sign * s.sketch.zero_count
        series.window._refresh_totals()
        series.window_count += sign * s.count
        series.window_errors += sign * s.errors

    def _rebuild(self, series: Series, epoch: int) -> None:
        n = self.settings.slices
        series.window = LatencySketch(self.settings.relative_accuracy, np.float64)
        series.window_count = 0.0
        series.window_errors = 0.0
        for s in series.slices_in(epoch - n + 1, epoch):
            self._window_add(series, s, 1.0)

    def _drop_expired(self, series: Series, last_expired: int) -> None:
        for i, s in enumerate(series.ring):
            if s is not None and s.slice_id <= last_expired:
                series.ring[i] = None

    # -- writes ------------------------------------------------------------------------------------

    def _slice_for(self, key: SeriesKey, now: float) -> Slice | None:
        self.advance(now)
        current = self.slice_id(now)
        assert self.epoch is not None
        current = max(current, self.epoch + 1)  # a clock that stepped back writes to the open slice
        series = self._series.get(key)
        if series is None:
            series = self._admit(key, current)
            if series is None:
                return None
        slot = current % len(series.ring)
        s = series.ring[slot]
        if s is None or s.slice_id != current:
            s = series.ring[slot] = Slice(current, self.settings.relative_accuracy)
        return s

    def _admit(self, key: SeriesKey, current: int) -> Series | None:
        if len(self._series) >= self.settings.max_series:
            self.dropped["series_cap"] += 1
            return None
        in_ns = self._per_namespace.get(key.namespace, 0)
        if in_ns >= self.settings.max_series_per_namespace:
            self.dropped["namespace_series_cap"] += 1
            return None
        series = Series(key, self.settings.slices + 1, self.settings.relative_accuracy, current)
        self._series[key] = series
        self._per_namespace[key.namespace] = in_ns + 1
        return series

    def _remove(self, key: SeriesKey) -> None:
        del self._series[key]
        left = self._per_namespace[key.namespace] - 1
        if left:
            self._per_namespace[key.namespace] = left
        else:
            del self._per_namespace[key.namespace]

    def add_durations(
        self,
        key: SeriesKey,
        seconds: np.ndarray[Any, np.dtype[np.float64]],
        errors: int,
        candidates: Sequence[Exemplar],
        now: float,
        error_trace_id: str = "",
    ) -> bool:
        """Add a batch of request latencies (seconds) of one series. False when dropped by a cap."""
        s = self._slice_for(key, now)
        if s is None:
            return False
        s.sketch.add_many(seconds)
        s.count += float(seconds.shape[0])
        s.errors += float(errors)
        if candidates:
            s.add_candidates(candidates)
        if error_trace_id:
            s.error_trace_id = error_trace_id
        return True

    def add_sketch(
        self,
        key: SeriesKey,
        sketch: LatencySketch,
        errors: float,
        candidates: Sequence[Exemplar],
        now: float,
    ) -> bool:
        """Add pre-aggregated latencies (an imported OTLP histogram point). False when dropped."""
        s = self._slice_for(key, now)
        if s is None:
            return False
        s.sketch.merge_from(sketch)
        s.count += float(sketch.count)
        s.errors += float(errors)
        if candidates:
            s.add_candidates(candidates)
        return True

    # -- reads -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._series)

    def namespaces(self) -> dict[str, int]:
        return dict(self._per_namespace)

    def series_in(self, namespace: str) -> list[Series]:
        return [s for k, s in self._series.items() if k.namespace == namespace]

    def all_series(self) -> list[Series]:
        return list(self._series.values())

    def view(self, series: Sequence[Series]) -> WindowView | None:
        """Merge the windows of ``series`` into one view; None when they hold no requests.

        Several routes of one workload are merged sketch by sketch, so the p95 is that of the union of
        their requests, never an average of p95s.
        """
        if self.epoch is None:
            return None
        live = [s for s in series if s.window_count > 0]
        if not live:
            return None
        n = self.settings.slices
        first = self.epoch - n + 1
        if len(live) == 1:
            sketch = live[0].window
        else:
            sketch = LatencySketch(self.settings.relative_accuracy, np.float64)
            for s in live:
                sketch.merge_from(s.window)
        candidates: list[Exemplar] = []
        error_trace = ""
        newest_error = -1
        covered_from = self.epoch + 1
        for s in live:
            covered_from = min(covered_from, max(s.covered_from, first))
            for sl in s.slices_in(first, self.epoch):
                candidates.extend(sl.candidates)
                if sl.error_trace_id and sl.slice_id > newest_error:
                    newest_error, error_trace = sl.slice_id, sl.error_trace_id
        seconds = float((self.epoch + 1 - covered_from) * self.settings.slice_seconds)
        common = dict(live[0].key.labels())
        for s in live[1:]:
            other = s.key.labels()
            common = {k: v for k, v in common.items() if other.get(k) == v}
        return WindowView(
            sketch=sketch,
            count=sum(s.window_count for s in live),
            errors=sum(s.window_errors for s in live),
            seconds=max(seconds, float(self.settings.slice_seconds)),
            candidates=tuple(candidates),
            error_trace_id=error_trace,
            labels=common,
        )

    def nbytes(self) -> int:
        """Approximate bytes held by all series (sketch arrays plus fixed per-object overheads)."""
        return sum(s.nbytes() for s in self._series.values())
