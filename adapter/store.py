"""Sliding-window latency store: per series, a ring of time slices, each a sketch plus counters.

Pure: no clock, no I/O, no asyncio. Every call that depends on time takes ``now`` (seconds since the epoch)
as an argument, so tests drive it with an injected clock and the service drives it with ``time.time()``.

Time is cut into slices of ``slice_seconds`` (default 5 s); slice ``i`` covers
``[i * slice_seconds, (i + 1) * slice_seconds)``. The *window* of a series is the last ``window_seconds /
slice_seconds`` **closed** slices (default 12, i.e. 60 s), kept merged and moved when a slice closes (the
store's ``epoch`` is the id of the last closed slice). :meth:`WindowStore.view` called with ``now`` adds
the open slice so far, which is what the API serves (refreshed once per ``refresh_seconds``): a latency
step reaches the served p95 within a second or two instead of waiting for its slice to close.

Each series keeps a merged window sketch that is updated incrementally when a slice closes (the new
slice is added, the one that left the window is subtracted) and rebuilt from its slices once per
window so rounding never accumulates. Closing a slice is O(1) for the store (the epoch moves); each
series catches up to the epoch on its own (``Series.epoch``), either when it is read or written or
when :meth:`WindowStore.sweep` reaches it. The sweep visits every series once per slice in steps, so
the service can spread the work of ten thousand series over many turns of its event loop instead of
holding it for a second. Memory per active series is the ring of float32 slice sketches
plus one float64 window sketch: about 30 KiB for a typical latency distribution (``make bench`` prints
the figure).

Caps: at most ``max_series`` series in total and ``max_series_per_namespace`` per namespace. A sample for
a new series over a cap is dropped and counted in :attr:`WindowStore.dropped`, never an exception.

Request counts: besides the window, the store keeps per workload (namespace, workload) cumulative counts
of every request it accepted since it started, in the buckets of :data:`REQUEST_BUCKETS`
(:class:`RequestCounts`, read with :meth:`WindowStore.request_counts`; ``/metrics`` exports them as
``latency_adapter_workload_latency_seconds``). They cost nothing on the ingest path: a slice's bins are
turned into bucket counts once, when the slice closes, and the open slice is added at read time. The
request count is exact; a bucket ``le=b`` counts every request at or below ``b`` plus those in the
sketch bin that holds ``b`` (at most about 1 % above ``b``, twice the relative accuracy); the sum is
within the relative accuracy (each request counts as its bin's value). Imported histograms count as
their sketch bins, i.e. their bucket counts spread uniformly inside each source bucket. A workload's
counts stay while it has a series and :data:`REQUEST_COUNTS_RETENTION_SECONDS` (1 h) after its last
series left, then go (a workload that comes back later starts again from 0, which Prometheus reads as a
counter reset); at most ``max_series`` workloads are kept, evicting the longest gone first.

Length: about 650 lines; slices, series and windows are one data structure with one time model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .model import Exemplar, SeriesKey
from .selector import Selector
from .sketch import DEFAULT_RELATIVE_ACCURACY, LatencySketch, merged

#: Exemplar candidates kept per slice; enough to cover a slice's upper tail at a fixed memory cost.
CANDIDATES_PER_SLICE = 16
#: Views kept for the API's current tick at most (:meth:`WindowStore.view_at`); a tick asking about more
#: series groups starts over, which costs time, never memory.
MAX_SHARED_VIEWS = 10_000
#: Upper bounds (seconds) of the per-workload request counts: OpenTelemetry's advisory buckets for
#: ``http.server.request.duration``, so an imported histogram with the usual bounds keeps its buckets.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: A workload's request counts are kept this long after its last series left the store.
REQUEST_COUNTS_RETENTION_SECONDS = 3600


@dataclass(frozen=True)
class StoreSettings:
    window_seconds: int = 60
    slice_seconds: int = 5
    max_series: int = 10_000
    max_series_per_namespace: int = 2_000
    relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY
    #: How often served values are recomputed (closed window + the open slice so far).
    refresh_seconds: float = 1.0

    def __post_init__(self) -> None:
        if self.slice_seconds <= 0 or self.window_seconds <= 0:
            raise ValueError("window_seconds and slice_seconds must be positive")
        if not 0 < self.refresh_seconds <= self.slice_seconds:
            raise ValueError("refresh_seconds must be positive and at most slice_seconds")
        if self.window_seconds % self.slice_seconds:
            raise ValueError("window_seconds must be a whole number of slices")

    @property
    def slices(self) -> int:
        return self.window_seconds // self.slice_seconds


#: Exemplar candidates of a closed slice: latency and the raw 16-byte trace id, 24 bytes each.
CANDIDATE_DTYPE = np.dtype([("seconds", np.float64), ("trace_id", "V16")])  # V: trailing zeros kept
_NO_CANDIDATES = np.zeros(0, dtype=CANDIDATE_DTYPE)
#: Exemplar candidates as writers hand them over: packed already (the span path) or as objects.
Candidates = Sequence[Exemplar] | np.ndarray[Any, Any]


def pack_candidates(candidates: Candidates) -> np.ndarray[Any, Any]:
    """``candidates`` as a ``CANDIDATE_DTYPE`` array (trace ids from hex to their 16 bytes)."""
    if isinstance(candidates, np.ndarray):
        return candidates
    packed = np.zeros(len(candidates), dtype=CANDIDATE_DTYPE)
    packed["seconds"] = [c.seconds for c in candidates]
    packed["trace_id"] = [bytes.fromhex(c.trace_id) for c in candidates]
    return packed


class Slice:
    """One time slice of one series.

    While open it holds a float32 sketch that takes writes. When it closes, :meth:`freeze` keeps only
    what the window needs: the bin array and its first key, the zero count, the counters and the
    exemplar candidates (one small array from the start). A frozen slice is about a quarter of the memory of a
    live sketch object and never changes again, so the window can add it now and subtract it exactly
    later.
    """

    __slots__ = ("bins", "candidates", "count", "error_trace_id", "errors", "offset", "sketch", "slice_id",
                 "zeros")

    def __init__(self, slice_id: int, relative_accuracy: float) -> None:
        self.slice_id = slice_id
        self.sketch: LatencySketch | None = LatencySketch(relative_accuracy, np.float32)
        self.count = 0.0
        self.errors = 0.0
        #: ``CANDIDATE_DTYPE``, never changed in place (a view may hold it): no Python object per request,
        #: so the cyclic collector has nothing to scan here.
        self.candidates: np.ndarray[Any, Any] = _NO_CANDIDATES
        self.error_trace_id = ""
        self.offset = 0
        self.bins: np.ndarray[Any, Any] = _EMPTY_BINS
        self.zeros = 0.0

    def add_candidates(self, candidates: Candidates) -> None:
        """Keep a bounded, evenly spread sample of candidate requests by latency.

        Candidates arrive from the upper part of each batch (p50, p90, p95, p99, max). When the sample
        is full it is thinned by keeping every other one in latency order, which keeps the spread of the
        tail rather than only the newest or the slowest requests.
        """
        assert self.sketch is not None, "a closed slice takes no writes"
        joined = np.concatenate((self.candidates, pack_candidates(candidates)))
        if joined.shape[0] > CANDIDATES_PER_SLICE:
            ordered = joined[np.argsort(joined["seconds"], kind="stable")]
            joined = ordered[1::2] if ordered.shape[0] % 2 == 0 else ordered[::2]
        self.candidates = joined

    def freeze(self) -> None:
        """Close the slice: drop the sketch object, keep its bins."""
        sketch = self.sketch
        if sketch is None:
            return
        store = sketch.store
        self.offset = store.offset
        self.bins = store.bins if store.length() else _EMPTY_BINS
        self.zeros = sketch.zero_count
        self.sketch = None

    def parts(self) -> tuple[int, np.ndarray[Any, Any], float]:
        """(first key, bins, zero count), open or closed."""
        if self.sketch is not None:
            store = self.sketch.store
            return store.offset, store.bins, self.sketch.zero_count
        return self.offset, self.bins, self.zeros

    def nbytes(self) -> int:
        """Bytes held: arrays plus measured object overheads (see ``_OVERHEAD``)."""
        if self.sketch is not None:
            size = self.sketch.nbytes() + _OVERHEAD["open_slice"]
        else:
            size = _OVERHEAD["closed_slice"] + int(self.bins.nbytes)
        if self.candidates.shape[0]:
            size += int(self.candidates.nbytes) + _OVERHEAD["array"]
        return size


_EMPTY_BINS = np.zeros(0, dtype=np.float32)
#: Approximate CPython/numpy object overheads in bytes, measured with tracemalloc on CPython 3.11 and
#: numpy 2 (the memory test keeps this estimate within 25 % of what is really allocated).
_OVERHEAD = {
    "open_slice": 1400,  # Slice + LatencySketch + two ArrayStores + their dicts and arrays
    "closed_slice": 250,  # Slice with slots + one bins array header
    "array": 112,
    "series": 900,  # Series + ring list + window sketch objects + key
    "request_counts": 250,  # RequestCounts with slots + bucket array header + dict entry (+ 8 B a bucket)
}


class Series:
    """The ring of slices of one series plus its merged window."""

    __slots__ = ("_closed", "_closed_bytes", "_closed_until", "covered_from", "epoch", "key", "ring",
                 "window", "window_count", "window_errors")

    def __init__(self, key: SeriesKey, slots: int, relative_accuracy: float, first_seen: float,
                 epoch: int | None = None) -> None:
        self.key = key
        #: The store epoch this series' window reflects (it catches up lazily, see the module doc).
        self.epoch = epoch
        self.ring: list[Slice | None] = [None] * slots
        self.window = LatencySketch(relative_accuracy, np.float64)
        self.window_count = 0.0
        self.window_errors = 0.0
        #: When the series' first data arrived: a rate over a series younger than the window divides by
        #: its age, not by the whole window.
        self.covered_from = first_seen
        self._closed_until: tuple[int, int] | None = None
        self._closed: tuple[np.ndarray[Any, Any], int, str] = (_NO_CANDIDATES, -1, "")
        self._closed_bytes = 0  # the joined array, when it is not a slice's own

    def closed_part(self, first: int, last: int) -> tuple[np.ndarray[Any, Any], int, str]:
        """(candidates joined, id of the newest slice with an error, its error trace id) of the closed
        slices ``[first, last]``.

        Kept until the range moves: closed slices never change, and every view of the series would
        otherwise join the same dozen small arrays again (measured: the joins were 7 % of the adapter's
        CPU with a thousand queries a second).
        """
        if self._closed_until != (first, last):
            parts: list[np.ndarray[Any, Any]] = []
            newest, trace = -1, ""
            for sl in self.slices_in(first, last):
                if sl.candidates.shape[0]:
                    parts.append(sl.candidates)
                if sl.error_trace_id and sl.slice_id > newest:
                    newest, trace = sl.slice_id, sl.error_trace_id
            if len(parts) > 1:
                joined = JoinedCandidates(parts).array()
            else:
                joined = parts[0] if parts else _NO_CANDIDATES
            self._closed, self._closed_until = (joined, newest, trace), (first, last)
            self._closed_bytes = int(joined.nbytes) + _OVERHEAD["array"] if len(parts) > 1 else 0
        return self._closed

    def slices_in(self, first: int, last: int) -> list[Slice]:
        """The slices with ids in ``[first, last]`` that hold data."""
        out = []
        for s in self.ring:
            if s is not None and first <= s.slice_id <= last:
                out.append(s)
        return out

    def nbytes(self) -> int:
        total = self.window.nbytes() + _OVERHEAD["series"] + 8 * len(self.ring)
        for s in self.ring:
            if s is not None:
                total += s.nbytes()
        return total + self._closed_bytes


WorkloadKey = tuple[str, str]


class RequestCounts:
    """Cumulative requests of one workload in the closed slices since the store started.

    ``le[i]`` counts the requests at or below ``REQUEST_BUCKETS[i]`` (see the module docstring for the
    resolution at a bound), ``count`` every request, ``seconds`` their approximate sum. ``series`` is how
    many series of the workload the store holds.
    """

    __slots__ = ("count", "le", "seconds", "series")

    def __init__(self, buckets: int) -> None:
        self.le = np.zeros(buckets, dtype=np.float64)
        self.count = 0.0
        self.seconds = 0.0
        self.series = 0


@dataclass(frozen=True)
class WorkloadRequests:
    """A read-only copy of one workload's cumulative request counts, open slices included."""

    namespace: str
    workload: str
    #: Cumulative counts per bound of :data:`REQUEST_BUCKETS` (requests at or below the bound).
    le: tuple[float, ...]
    count: float
    seconds: float


class JoinedCandidates:
    """The packed candidates of a view's slices, joined into one array the first time they are read.

    Most answers never read them (a request rate, an error ratio): joining hundreds of small structured
    arrays is most of what building a view costs, so it waits until a trace id is wanted.
    """

    __slots__ = ("_joined", "_parts")

    def __init__(self, parts: list[np.ndarray[Any, Any]]) -> None:
        self._parts = parts
        self._joined: np.ndarray[Any, Any] | None = None

    def __len__(self) -> int:
        if self._joined is not None:
            return int(self._joined.shape[0])
        return sum(int(part.shape[0]) for part in self._parts)

    def array(self) -> np.ndarray[Any, Any]:
        joined = self._joined
        if joined is None:
            # Into one preallocated array: np.concatenate would re-derive the structured dtype per part.
            joined = np.empty(len(self), dtype=CANDIDATE_DTYPE)
            at = 0
            for part in self._parts:
                n = int(part.shape[0])
                joined[at:at + n] = part
                at += n
            self._joined, self._parts = joined, []
        return joined


@dataclass(frozen=True, eq=False)  # a snapshot with arrays: compared by identity, never by value
class WindowView:
    """What the window of one or more series holds at one moment (a read-only snapshot)."""

    sketch: LatencySketch
    count: float
    errors: float
    seconds: float
    #: Candidate requests: packed (``CANDIDATE_DTYPE``; the store builds views with them joined only
    #: when read, and unpacked only for the one request picked) or a tuple of :class:`Exemplar`.
    candidates: tuple[Exemplar, ...] | np.ndarray[Any, Any] | JoinedCandidates
    error_trace_id: str
    labels: dict[str, str]

    def _candidates(self) -> tuple[Exemplar, ...] | np.ndarray[Any, Any]:
        candidates = self.candidates
        return candidates.array() if isinstance(candidates, JoinedCandidates) else candidates

    def exemplars(self) -> tuple[Exemplar, ...]:
        """Every candidate request as an :class:`Exemplar` (unpacked on demand: debugging and tests)."""
        candidates = self._candidates()
        if not isinstance(candidates, np.ndarray):
            return tuple(candidates)
        return tuple(Exemplar(float(sec), bytes(tid).hex()) for sec, tid in zip(
            candidates["seconds"].tolist(), candidates["trace_id"].tolist(), strict=True))

    def exemplar_near(self, value: float,
                      tolerance: float = 2 * DEFAULT_RELATIVE_ACCURACY) -> Exemplar | None:
        """A real request near ``value``: the nearest candidate at or above ``value * (1 - tolerance)``.

        The sketch reports a quantile within its relative accuracy, so a request a hair below the served
        value may be the true p95 request; beyond that tolerance a slower request is preferred to a
        faster one, because "this request was at least this slow" is what an engineer follows.
        """
        candidates = self._candidates()
        if len(candidates) == 0:
            return None
        floor = value * (1.0 - tolerance)
        if isinstance(candidates, np.ndarray):  # vectorised: a window holds hundreds of candidates
            seconds = candidates["seconds"]
            pool = np.flatnonzero(seconds >= floor)
            if pool.size == 0:
                pool = np.arange(seconds.shape[0])
            i = int(pool[np.argmin(np.abs(seconds[pool] - value))])
            return Exemplar(float(seconds[i]), bytes(candidates["trace_id"][i]).hex())
        listed: Sequence[Exemplar] = [c for c in candidates if c.seconds >= floor] or candidates
        return min(listed, key=lambda c: abs(c.seconds - value))


class WindowStore:
    """All series, their slices and windows. See the module docstring for the time model."""

    def __init__(self, settings: StoreSettings | None = None) -> None:
        self.settings = settings or StoreSettings()
        self._series: dict[SeriesKey, Series] = {}
        #: The same series by (namespace, workload): a selector naming the workload (what every HPA
        #: sends) finds its series without scanning the namespace.
        self._by_workload: dict[WorkloadKey, dict[SeriesKey, Series]] = {}
        self._per_namespace: dict[str, int] = {}
        self.epoch: int | None = None  # id of the last closed slice
        #: The epoch the last complete :meth:`sweep` started at (series that emptied before it are gone).
        self._swept_epoch: int | None = None
        self._swept_bytes: int | None = None
        #: Times closed slices moved into the request counts (see :meth:`iter_request_counts`).
        self._moves = 0
        self.dropped: dict[str, int] = {"series_cap": 0, "namespace_series_cap": 0}
        self.rolls = 0
        # Request counts per workload (module docstring); _departed: workloads without series, by the
        # epoch their last series left, oldest first.
        self._requests: dict[WorkloadKey, RequestCounts] = {}
        self._departed: dict[WorkloadKey, int] = {}
        #: Workloads whose request counts were dropped early to stay within ``max_series`` workloads.
        self.request_counts_evicted = 0
        #: Views of the API's current tick, by the keys of their series (see :meth:`view_at`).
        self._shared_views: dict[tuple[SeriesKey, ...], WindowView | None] = {}
        self._shared_at: float | None = None
        sketch = LatencySketch(self.settings.relative_accuracy)
        mapping = sketch.mapping
        self._bucket_keys = sketch.keys_of(np.asarray(REQUEST_BUCKETS, dtype=np.float64))
        self._key_offset = float(mapping._offset)
        self._key_multiplier = float(mapping._multiplier)
        self._key_value = 2.0 / (1.0 + float(mapping.gamma))  # bin value = upper edge * this (ddsketch)

    # -- time --------------------------------------------------------------------------------------

    def slice_id(self, now: float) -> int:
        return math.floor(now / self.settings.slice_seconds)

    def advance(self, now: float) -> bool:
        """Close the slices that ended before ``now``. True when the epoch moved.

        Called before every write and by the service's ticker, so windows move even when no data comes.
        O(1) in the number of series: each series' window follows on its next read, write or sweep.
        """
        epoch = self.slice_id(now) - 1
        if self.epoch is not None and epoch <= self.epoch:
            return False
        self.epoch = epoch
        self.rolls += 1
        self._forget_departed(epoch)
        return True

    def sweep(self, step: int = 256) -> Iterable[int]:
        """Bring every series to the epoch and remove those whose window emptied, ``step`` at a time.

        A generator: it yields the number of series done after each step, so a caller on an event loop
        can let other work run in between (data written meanwhile is not lost: a series written or read
        before its turn catches up first). Run once per slice by the service's ticker.
        """
        done = 0
        held = 0
        started_at = self.epoch
        for key in list(self._series):
            series = self._series.get(key)
            if series is None:
                continue
            self._sync(series)
            # Counts are whole requests; < 0.5 is an empty window whatever float rounding left behind.
            open_id = (series.epoch if series.epoch is not None else -1) + 1
            if series.window_count < 0.5 and not series.slices_in(open_id, open_id):
                self._remove(key)
            else:
                held += series.nbytes()
            done += 1
            if done % step == 0:
                yield done
        self._swept_epoch = started_at
        self._swept_bytes = held + self._request_counts_bytes()
        yield done

    def sync_all(self) -> None:
        """:meth:`sweep` in one go (tests, tools and anything not on an event loop)."""
        for _ in self.sweep():
            pass

    def _sync(self, series: Series) -> None:
        """Move ``series``' window to the store's epoch: add closed slices, subtract expired ones."""
        epoch = self.epoch
        previous = series.epoch
        if epoch is None or previous == epoch:
            return
        series.epoch = epoch
        n = self.settings.slices
        moved = n + 1 if previous is None else epoch - previous
        # Rebuilt when it fell a window behind, and once per window otherwise (an epoch e in
        # (previous, epoch] with (e + hash) % n == 0), so float rounding never accumulates.
        if moved > n or (epoch + hash(series.key)) % n < moved:
            self._rebuild(series, epoch)
        else:
            assert previous is not None
            for s in series.slices_in(previous + 1, epoch):
                self._window_add(series, s, 1.0)
            for s in series.slices_in(previous - n + 1, epoch - n):
                self._window_add(series, s, -1.0)
        if previous is not None:
            self._count_closed(series, previous + 1, epoch)
        self._drop_expired(series, epoch - n)

    def window_totals(self, series: Series) -> tuple[float, float]:
        """(requests, errors) in ``series``' closed window, brought up to the epoch first."""
        self._sync(series)
        return series.window_count, series.window_errors

    def _window_add(self, series: Series, s: Slice, sign: float) -> None:
        s.freeze()
        offset, bins, zeros = s.parts()
        if bins.shape[0]:
            series.window.store.add_dense(offset, bins.astype(np.float64) * sign)
        series.window._zero_count += sign * zeros
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

    def _count_closed(self, series: Series, first: int, last: int) -> None:
        """Add the slices of ``series`` that closed (ids ``first..last``) to its workload's request counts.

        Each slice closes in exactly one call of :meth:`advance`, so each is counted once, also when the
        clock jumped past the whole window.
        """
        closed = series.slices_in(first, last)
        if not closed:
            return
        self._moves += 1
        counts = self._requests[(series.key.namespace, series.key.workload)]
        for s in closed:
            le, seconds = self._bucket_counts(*s.parts())
            counts.le += le
            counts.count += s.count
            counts.seconds += seconds

    def _bucket_counts(self, offset: int, bins: np.ndarray[Any, Any],
                       zeros: float) -> tuple[np.ndarray[Any, np.dtype[np.float64]], float]:
        """(requests at or below each bound of :data:`REQUEST_BUCKETS`, their approximate sum) of a run
        of sketch bins starting at key ``offset``: a bin counts towards a bound when its key is at most
        the bound's key (the bin holding the bound is counted as below it)."""
        n = bins.shape[0]
        if n == 0:
            return np.full(self._bucket_keys.shape[0], float(zeros)), 0.0
        cumulative = np.cumsum(bins, dtype=np.float64)
        at = self._bucket_keys - offset
        le = np.where(at < 0, 0.0, cumulative[np.clip(at, 0, n - 1)]) + float(zeros)
        upper = np.exp2((np.arange(offset, offset + n, dtype=np.float64) - self._key_offset)
                        / self._key_multiplier)
        return le, float(np.dot(bins.astype(np.float64), upper)) * self._key_value

    def _forget_departed(self, epoch: int) -> None:
        """Drop the request counts of workloads whose last series left more than the retention ago."""
        horizon = epoch - math.ceil(REQUEST_COUNTS_RETENTION_SECONDS / self.settings.slice_seconds)
        departed = self._departed
        while departed:
            workload, left = next(iter(departed.items()))
            if left > horizon:
                break
            del departed[workload]
            del self._requests[workload]

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
            series = self._admit(key, now)
            if series is None:
                return None
        elif series.epoch != self.epoch:
            self._sync(series)  # the slot written next may hold a slice the window must still drop
        slot = current % len(series.ring)
        s = series.ring[slot]
        if s is None or s.slice_id != current:
            s = series.ring[slot] = Slice(current, self.settings.relative_accuracy)
        return s

    def _admit(self, key: SeriesKey, now: float) -> Series | None:
        if self._swept_epoch != self.epoch and (
                len(self._series) >= self.settings.max_series
                or self._per_namespace.get(key.namespace, 0) >= self.settings.max_series_per_namespace):
            self.sync_all()  # at a cap: free what expired first (at most one full sweep per slice)
        if len(self._series) >= self.settings.max_series:
            self.dropped["series_cap"] += 1
            return None
        in_ns = self._per_namespace.get(key.namespace, 0)
        if in_ns >= self.settings.max_series_per_namespace:
            self.dropped["namespace_series_cap"] += 1
            return None
        series = Series(key, self.settings.slices + 1, self.settings.relative_accuracy, now, self.epoch)
        self._series[key] = series
        self._by_workload.setdefault((key.namespace, key.workload), {})[key] = series
        self._per_namespace[key.namespace] = in_ns + 1
        workload = (key.namespace, key.workload)
        counts = self._requests.get(workload)
        if counts is None:
            if len(self._requests) >= self.settings.max_series and self._departed:
                oldest = next(iter(self._departed))  # the workload gone longest
                del self._departed[oldest]
                del self._requests[oldest]
                self.request_counts_evicted += 1
            counts = self._requests[workload] = RequestCounts(len(REQUEST_BUCKETS))
        self._departed.pop(workload, None)
        counts.series += 1
        return series

    def _remove(self, key: SeriesKey) -> None:
        del self._series[key]
        owner = (key.namespace, key.workload)
        members = self._by_workload[owner]
        del members[key]
        if not members:
            del self._by_workload[owner]
        left = self._per_namespace[key.namespace] - 1
        if left:
            self._per_namespace[key.namespace] = left
        else:
            del self._per_namespace[key.namespace]
        workload = (key.namespace, key.workload)
        counts = self._requests[workload]
        counts.series -= 1
        if counts.series == 0:
            assert self.epoch is not None
            self._departed[workload] = self.epoch

    def add_durations(
        self,
        key: SeriesKey,
        seconds: np.ndarray[Any, np.dtype[np.float64]],
        errors: int,
        candidates: Candidates,
        now: float,
        error_trace_id: str = "",
    ) -> bool:
        """Add a batch of request latencies (seconds) of one series. False when dropped by a cap."""
        s = self._slice_for(key, now)
        if s is None or s.sketch is None:
            return False
        s.sketch.add_many(seconds)
        s.count += float(seconds.shape[0])
        s.errors += float(errors)
        if len(candidates):
            s.add_candidates(candidates)
        if error_trace_id:
            s.error_trace_id = error_trace_id
        return True

    def add_counts(
        self,
        key: SeriesKey,
        lo: int,
        counts: np.ndarray[Any, np.dtype[np.float64]],
        zeros: float,
        n: float,
        errors: float,
        candidates: Candidates,
        now: float,
        error_trace_id: str = "",
    ) -> bool:
        """Add latencies already binned by sketch key (``counts[i]`` for key ``lo + i``), the span path.

        ``zeros`` counts requests too short for the sketch to tell from 0. False when dropped by a cap.
        """
        s = self._slice_for(key, now)
        if s is None or s.sketch is None:
            return False
        s.sketch.add_weighted_keys(lo, counts)
        if zeros:
            s.sketch._zero_count += zeros
            s.sketch._refresh_totals()
        s.count += n
        s.errors += errors
        if len(candidates):
            s.add_candidates(candidates)
        if error_trace_id:
            s.error_trace_id = error_trace_id
        return True

    def add_sketch(
        self,
        key: SeriesKey,
        sketch: LatencySketch,
        errors: float,
        candidates: Candidates,
        now: float,
        requests: float | None = None,
    ) -> bool:
        """Add pre-aggregated latencies (an imported OTLP histogram point). False when dropped.

        ``requests`` is the exact request count when known: an imported histogram spreads counts over
        bins in fractions, and its sketch total can be off by a rounding error.
        """
        s = self._slice_for(key, now)
        if s is None or s.sketch is None:
            return False
        s.sketch.merge_from(sketch)
        s.count += float(sketch.count if requests is None else requests)
        s.errors += float(errors)
        if len(candidates):
            s.add_candidates(candidates)
        return True

    # -- reads -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._series)

    def namespaces(self) -> dict[str, int]:
        return dict(self._per_namespace)

    def series_in(self, namespace: str) -> list[Series]:
        return [s for k, s in self._series.items() if k.namespace == namespace]

    def series_of(self, namespace: str, workload: str) -> list[Series]:
        """The series of one workload (an index lookup)."""
        return list(self._by_workload.get((namespace, workload), {}).values())

    def matching(self, namespace: str, selector: Selector) -> list[Series]:
        """The series of ``namespace`` whose labels ``selector`` matches; an index lookup when the
        selector pins ``workload`` (``workload=x`` or ``workload in (x)``), else a scan."""
        workload = selector.equalities().get("workload")
        if workload is not None:
            candidates = self.series_of(namespace, workload)
        else:
            candidates = self.series_in(namespace)
        return [s for s in candidates if selector.matches(s.key.labels())]

    def all_series(self) -> list[Series]:
        return list(self._series.values())

    def workloads(self) -> dict[WorkloadKey, list[Series]]:
        """The series of every workload, by (namespace, workload)."""
        out: dict[WorkloadKey, list[Series]] = {}
        for key, series in self._series.items():
            out.setdefault((key.namespace, key.workload), []).append(series)
        return out

    def request_counts(self) -> list[WorkloadRequests]:
        """Every workload's cumulative request counts since the store started, the open slice included.

        Between two calls a workload's numbers never go down (a slice's counts move from the open part
        to the closed part when it closes); a workload is absent once its retention ran out.
        """
        return [row for row in self.iter_request_counts() if row is not None]

    def iter_request_counts(self, step: int = 64) -> Iterator[WorkloadRequests | None]:
        """:meth:`request_counts` with a ``None`` every ``step`` series read, where a caller on an event
        loop may pause, then every workload's counts.

        Consistency across pauses: a slice counted here as not yet closed must not also be counted as
        closed. A series catching up meanwhile moves closed slices into the workload counts, so when any
        did, the pass is redone without pausing; the workload counts are then read in one go.
        """
        pending: dict[WorkloadKey, tuple[np.ndarray[Any, np.dtype[np.float64]], float, float]] = {}
        while self.epoch is not None:
            moves = self._moves
            open_id = self.epoch + 1
            pending = {}
            for i, (key, series) in enumerate(list(self._series.items())):
                if i % step == step - 1:
                    yield None
                # The open slice, and the closed ones this series has not counted yet.
                since = open_id if series.epoch is None else series.epoch + 1
                for s in series.slices_in(since, open_id):
                    if s.count <= 0:
                        continue
                    le, seconds = self._bucket_counts(*s.parts())
                    owner = (key.namespace, key.workload)
                    before = pending.get(owner)
                    if before is not None:
                        le, seconds, count = le + before[0], seconds + before[1], s.count + before[2]
                    else:
                        count = s.count
                    pending[owner] = (le, seconds, count)
            if self._moves == moves and open_id == self.epoch + 1:
                break
            step = 1 << 62  # something closed meanwhile: once more, without pausing
        rows = []
        for (namespace, workload), counts in self._requests.items():
            le, seconds, count = counts.le, counts.seconds, counts.count
            extra = pending.get((namespace, workload))
            if extra is not None:
                le, seconds, count = le + extra[0], seconds + extra[1], count + extra[2]
            rows.append(WorkloadRequests(namespace, workload, tuple(le.tolist()), count, seconds))
        yield from rows

    def view(self, series: Sequence[Series], now: float | None = None) -> WindowView | None:
        """Merge the windows of ``series`` into one view; None when they hold no requests.

        Without ``now`` the view is the closed window. With ``now`` it also holds the open slice up to
        that moment, which is what the API serves: a latency step then shows within about a second
        instead of waiting for its slice to close.

        Several routes of one workload are merged sketch by sketch, so the p95 is that of the union of
        their requests, never an average of p95s.
        """
        if self.epoch is None:
            return None
        for one in series:
            if one.epoch != self.epoch:
                self._sync(one)
        open_id = self.epoch + 1
        opened = {}
        if now is not None:
            for s in series:
                sl = s.ring[open_id % len(s.ring)]
                if sl is not None and sl.slice_id == open_id and sl.count > 0:
                    opened[id(s)] = sl
        live = [s for s in series if s.window_count >= 0.5 or id(s) in opened]
        if not live:
            return None
        n = self.settings.slices
        first = self.epoch - n + 1
        if len(live) == 1 and not opened:
            sketch = live[0].window
        else:
            sketch = merged([s.window for s in live], self.settings.relative_accuracy)
            for sl in opened.values():
                offset, bins, zeros = sl.parts()
                if bins.shape[0]:
                    sketch.store.add_dense(offset, bins)
                sketch._zero_count += zeros
            sketch._refresh_totals()
        packed: list[np.ndarray[Any, Any]] = []
        error_trace = ""
        newest_error = -1
        slice_seconds = self.settings.slice_seconds
        end = float(open_id * slice_seconds)
        if now is not None:
            end += min(max(now - end, 0.0), float(slice_seconds))
        covered_from = end
        for s in live:
            covered_from = min(covered_from, max(s.covered_from, first * slice_seconds))
            closed, newest, trace = s.closed_part(first, self.epoch)
            if closed.shape[0]:
                packed.append(closed)
            if newest > newest_error:
                newest_error, error_trace = newest, trace
            sl = opened.get(id(s))
            if sl is not None:
                if sl.candidates.shape[0]:
                    packed.append(sl.candidates)
                if sl.error_trace_id and sl.slice_id > newest_error:
                    newest_error, error_trace = sl.slice_id, sl.error_trace_id
        seconds = end - covered_from
        common = dict(live[0].key.labels())
        for s in live[1:]:
            other = s.key.labels()
            common = {k: v for k, v in common.items() if other.get(k) == v}
        return WindowView(
            sketch=sketch,
            count=sum(s.window_count for s in live) + sum(sl.count for sl in opened.values()),
            errors=sum(s.window_errors for s in live) + sum(sl.errors for sl in opened.values()),
            seconds=max(seconds, 1.0),
            candidates=JoinedCandidates(packed) if packed else _NO_CANDIDATES,
            error_trace_id=error_trace,
            labels=common,
        )

    def view_at(self, series: Sequence[Series], at: float) -> WindowView | None:
        """``view(series, now=at)``, built once for every caller asking about the same series at the same
        ``at``, until a caller asks about another ``at``.

        The API answers a refresh tick at the tick's start time: an HPA's p95, request rate, error ratio
        and dual-signal ratio of one workload then read one view instead of building four, and they are
        computed from the same data. Callers with a clock reading of their own use :meth:`view`.
        """
        if at != self._shared_at or len(self._shared_views) >= MAX_SHARED_VIEWS:
            self._shared_views.clear()
            self._shared_at = at
        key = tuple(s.key for s in series)
        try:
            return self._shared_views[key]
        except KeyError:
            built = self._shared_views[key] = self.view(series, now=at)
            return built

    def nbytes(self) -> int:
        """Approximate bytes held by all series (sketch arrays plus fixed per-object overheads) and by the
        per-workload request counts."""
        return sum(s.nbytes() for s in self._series.values()) + self._request_counts_bytes()

    def _request_counts_bytes(self) -> int:
        return len(self._requests) * (_OVERHEAD["request_counts"] + 8 * len(REQUEST_BUCKETS))

    def measured_bytes(self) -> int:
        """:meth:`nbytes` as the last :meth:`sweep` measured it (now, when nothing has swept yet).

        What ``/metrics`` shows: summing every slice of thousands of series costs tens of milliseconds,
        too long for a scrape to hold the event loop; the sweep measures in its turns once per slice.
        """
        return self.nbytes() if self._swept_bytes is None else self._swept_bytes
