"""Mergeable relative-error quantile sketch for latencies, built on the ``ddsketch`` package.

Why not a histogram with fixed buckets: Prometheus' default buckets and ``histogram_quantile`` err by
about 12 % at the p95 of a typical lognormal latency; a DDSketch bounds the *relative* error of every
quantile by ``alpha`` whatever the distribution, and two sketches merge exactly (the p95 of a union of
routes or time slices is the p95 of the merged sketch, never an average of p95s).

What comes from ``ddsketch``: the key mapping (:class:`ddsketch.mapping.LogarithmicMapping`), the
quantile and merge logic (:class:`ddsketch.ddsketch.BaseDDSketch`) and the store contract
(:class:`ddsketch.store.Store`). What is ours: :class:`ArrayStore`, a store that keeps its bins in one
contiguous numpy array. The stock ``DenseStore`` keeps a Python list of float objects (about 32 bytes a
bin); a window of twelve slices of those costs well over the 64 KiB per series budget, and adding values
one by one in Python caps ingest below 1M spans/s. ``ArrayStore`` costs 4 or 8 bytes a bin and takes a
whole batch of keys in one ``numpy`` call (:meth:`LatencySketch.add_many`).

The module also imports OTLP histograms into a sketch: explicit-bucket histograms (each bucket's count is
spread over the sketch bins inside its bounds) and exponential histograms (each bucket maps onto the
sketch bins it covers; when the source buckets are finer than the sketch's, nothing is lost beyond the
sketch's own bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from ddsketch.ddsketch import BaseDDSketch
from ddsketch.mapping import LogarithmicMapping
from ddsketch.store import Store

#: Relative accuracy of every sketch. 0.5 % keeps the p95 within 1 % of the exact order statistic with
#: margin (the guarantee is on the value at the rank; interpolation between ranks adds a little).
DEFAULT_RELATIVE_ACCURACY = 0.005

FloatArray = npt.NDArray[np.float64]

#: Lower edge of an explicit histogram's first bucket, as a fraction of its upper bound, when the point
#: carries no ``min``.
FIRST_BUCKET_FLOOR = 1e-3
#: Latencies the sketch accepts from histograms, in seconds: 1 ns to about 12 days. A bucket outside is
#: a malformed point, not a reason to allocate millions of bins.
LATENCY_RANGE = (1e-9, 1e6)


class ArrayStore(Store):
    """A dense DDSketch store backed by one numpy array, sized exactly to ``[min_key, max_key]``.

    ``dtype`` is ``float32`` for the many short-lived slice sketches (counts stay exact below 2**24 a
    bin) and ``float64`` for merged window sketches.
    """

    __slots__ = ("bins", "count", "dtype", "max_key", "min_key", "offset")

    def __init__(self, dtype: type[np.floating[Any]] = np.float64) -> None:
        self.count: float = 0.0
        self.dtype = dtype
        self.offset = 0
        self.min_key = 0
        self.max_key = -1
        self.bins: npt.NDArray[Any] = np.zeros(0, dtype=dtype)

    def length(self) -> int:
        return int(self.bins.shape[0])

    def copy(self, store: ArrayStore) -> None:
        self.bins = store.bins.astype(self.dtype, copy=True)
        self.count = store.count
        self.offset = store.offset
        self.min_key = store.min_key
        self.max_key = store.max_key

    def _ensure(self, lo: int, hi: int) -> None:
        """Grow the array so keys ``lo..hi`` fit; existing bins keep their keys."""
        if self.bins.shape[0] == 0:
            self.bins = np.zeros(hi - lo + 1, dtype=self.dtype)
            self.offset = self.min_key = lo
            self.max_key = hi
            return
        new_lo = min(lo, self.offset)
        new_hi = max(hi, self.offset + self.bins.shape[0] - 1)
        if new_lo != self.offset or new_hi != self.offset + self.bins.shape[0] - 1:
            grown = np.zeros(new_hi - new_lo + 1, dtype=self.dtype)
            start = self.offset - new_lo
            grown[start : start + self.bins.shape[0]] = self.bins
            self.bins = grown
            self.offset = new_lo
        self.min_key = min(self.min_key, lo)
        self.max_key = max(self.max_key, hi)

    def add(self, key: int, weight: float = 1.0) -> None:
        self._ensure(key, key)
        self.bins[key - self.offset] += weight
        self.count += weight

    def add_keys(self, keys: npt.NDArray[np.int64], weights: FloatArray | None = None) -> None:
        """Add many keys at once (one ``bincount``), the path every OTLP batch takes."""
        if keys.shape[0] == 0:
            return
        lo = int(keys.min())
        hi = int(keys.max())
        counts = np.bincount(keys - lo, weights=weights, minlength=hi - lo + 1)
        self.add_dense(lo, counts)

    def add_dense(self, lo: int, counts: npt.NDArray[Any]) -> None:
        """Add a run of bin counts that starts at key ``lo``."""
        if counts.shape[0] == 0:
            return
        hi = lo + counts.shape[0] - 1
        self._ensure(lo, hi)
        start = lo - self.offset
        self.bins[start : start + counts.shape[0]] += counts
        self.count += float(counts.sum())

    def key_at_rank(self, rank: float, lower: bool = True) -> int:
        cumulative = np.cumsum(self.bins, dtype=np.float64)
        if lower:
            index = int(np.searchsorted(cumulative, rank, side="right"))
        else:
            index = int(np.searchsorted(cumulative, rank + 1, side="left"))
        if index >= cumulative.shape[0]:
            return int(self.max_key)
        return index + self.offset

    def merge(self, store: ArrayStore) -> None:
        if store.count == 0:
            return
        self.add_dense(store.offset, store.bins)

    def nbytes(self) -> int:
        return int(self.bins.nbytes)


class LatencySketch(BaseDDSketch):
    """A DDSketch of non-negative latencies in seconds with array-backed stores and batch adds."""

    def __init__(
        self,
        relative_accuracy: float = DEFAULT_RELATIVE_ACCURACY,
        dtype: type[np.floating[Any]] = np.float64,
    ) -> None:
        mapping = _mapping(relative_accuracy)
        super().__init__(
            mapping=mapping, store=ArrayStore(dtype), negative_store=ArrayStore(dtype), zero_count=0.0
        )

    @property
    def mapping(self) -> LogarithmicMapping:
        return self._mapping

    @property
    def store(self) -> ArrayStore:
        store: ArrayStore = self._store
        return store

    @property
    def relative_accuracy(self) -> float:
        return float(self._relative_accuracy)

    @property
    def zero_count(self) -> float:
        return float(self._zero_count)

    def keys_of(self, values: FloatArray) -> npt.NDArray[np.int64]:
        """Vectorised ``mapping.key``; values must be > ``min_possible``."""
        m = self._mapping
        raw = np.ceil(np.log2(values) * m._multiplier) + m._offset
        return raw.astype(np.int64)

    def add_many(self, values: FloatArray, weights: FloatArray | None = None) -> None:
        """Add a batch of latencies (seconds) with optional per-value weights."""
        if values.shape[0] == 0:
            return
        tiny = values <= self._mapping.min_possible
        if tiny.any():
            if weights is None:
                self._zero_count += float(tiny.sum())
            else:
                self._zero_count += float(weights[tiny].sum())
                weights = weights[~tiny]
            values = values[~tiny]
        if values.shape[0]:
            self.store.add_keys(self.keys_of(values), weights)
        self._refresh_totals()

    def add_weighted_keys(self, lo: int, counts: FloatArray) -> None:
        """Add a run of per-key counts (used by histogram import)."""
        self.store.add_dense(lo, counts)
        self._refresh_totals()

    def _refresh_totals(self) -> None:
        self._count = self._negative_store.count + self._zero_count + self._store.count

    def merge_from(self, other: LatencySketch) -> None:
        """Merge ``other`` into this sketch (``BaseDDSketch.merge`` with array stores)."""
        if other._count == 0:
            return
        self._store.merge(other._store)
        self._negative_store.merge(other._negative_store)
        self._zero_count += other._zero_count
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)

    def quantile(self, q: float) -> float | None:
        """The value at quantile ``q`` or ``None`` when empty (never a made-up 0)."""
        value = self.get_quantile_value(q)
        return None if value is None else float(value)

    def rank_of(self, value: float) -> float:
        """How many values the sketch holds at or below ``value`` (bin resolution)."""
        if value <= self._mapping.min_possible:
            return self._zero_count
        key = self._mapping.key(value)
        store = self.store
        below = float(np.sum(store.bins[: max(0, key - store.offset + 1)], dtype=np.float64))
        return float(self._zero_count) + below

    def nbytes(self) -> int:
        negative: ArrayStore = self._negative_store
        return self.store.nbytes() + negative.nbytes()


_MAPPINGS: dict[float, LogarithmicMapping] = {}


def _mapping(relative_accuracy: float) -> LogarithmicMapping:
    """Mappings are immutable; one per accuracy saves a little memory per sketch."""
    mapping = _MAPPINGS.get(relative_accuracy)
    if mapping is None:
        mapping = _MAPPINGS[relative_accuracy] = LogarithmicMapping(relative_accuracy)
    return mapping


def merged(sketches: Sequence[LatencySketch], relative_accuracy: float | None = None) -> LatencySketch:
    """A new float64 sketch holding the union of ``sketches``."""
    acc = relative_accuracy if relative_accuracy is not None else (
        sketches[0].relative_accuracy if sketches else DEFAULT_RELATIVE_ACCURACY
    )
    out = LatencySketch(acc, np.float64)
    for sketch in sketches:
        out.merge_from(sketch)
    return out


# --- OTLP histogram import -----------------------------------------------------------------------------


def _spread_linear(sketch: LatencySketch, lo: float, hi: float, count: float) -> None:
    """Spread ``count`` uniformly (in value) over ``(lo, hi]``, split across the sketch keys it covers.

    Uniform within a bucket is the same assumption ``histogram_quantile`` makes, so an imported
    explicit-bucket histogram is never less accurate than Prometheus' own estimate of it.
    """
    if count <= 0:
        return
    m = sketch.mapping
    lo = max(lo, m.min_possible)
    if hi <= lo:
        sketch.add_many(np.array([max(hi, m.min_possible * 2)]), np.array([count]))
        return
    k_lo = m.key(lo)
    k_hi = m.key(hi)
    if k_lo == k_hi:
        sketch.add_weighted_keys(k_lo, np.array([count]))
        return
    keys = np.arange(k_lo, k_hi + 1, dtype=np.int64)
    # key k covers (gamma**(k-1-offset), gamma**(k-offset)]
    upper = np.power(2.0, (keys - m._offset) / m._multiplier)
    lower = np.power(2.0, (keys - 1 - m._offset) / m._multiplier)
    overlap = np.minimum(upper, hi) - np.maximum(lower, lo)
    overlap = np.clip(overlap, 0.0, None)
    total = float(overlap.sum())
    if total <= 0:
        sketch.add_weighted_keys(k_hi, np.array([count]))
        return
    sketch.add_weighted_keys(k_lo, overlap * (count / total))


def import_explicit_histogram(
    sketch: LatencySketch,
    bounds: Sequence[float],
    counts: Sequence[float],
    scale: float = 1.0,
    minimum: float | None = None,
    maximum: float | None = None,
) -> float:
    """Add an OTLP explicit-bucket histogram (``len(counts) == len(bounds) + 1``) to ``sketch``.

    ``scale`` converts the histogram's unit to seconds (0.001 for ``ms``). The first bucket's lower edge
    is the point's ``min`` when known, else 0; the overflow bucket lies between the last bound and the
    point's ``max`` when known, else it is put at the last bound (``histogram_quantile`` does the same).
    Returns the number of observations added.
    """
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"explicit histogram has {len(bounds)} bounds but {len(counts)} counts")
    if bounds and (bounds[-1] * scale > LATENCY_RANGE[1] or not math.isfinite(bounds[0])):
        raise ValueError(f"explicit bounds reach {bounds[-1] * scale:.3g}s, beyond {LATENCY_RANGE[1]:g}s")
    added = 0.0
    edges = [b * scale for b in bounds]
    for i, c in enumerate(counts):
        if c <= 0:
            continue
        if i == 0:
            hi = edges[0] if edges else (maximum * scale if maximum is not None else 0.0)
            # Without a min the bucket reaches down to 0; uniform density puts 0.1 % of it below
            # hi/1000, so the spread starts there instead of at 1e-308 (70,000 bins for nothing).
            lo = minimum * scale if minimum is not None else hi * FIRST_BUCKET_FLOOR
            lo = min(lo, hi)
        elif i == len(edges):
            lo = edges[-1]
            hi = maximum * scale if maximum is not None and maximum * scale > lo else lo
        else:
            lo, hi = edges[i - 1], edges[i]
        _spread_linear(sketch, lo, hi, float(c))
        added += float(c)
    return added


def import_exponential_histogram(
    sketch: LatencySketch,
    scale_exp: int,
    offset: int,
    counts: Sequence[float],
    zero_count: float = 0.0,
    unit_scale: float = 1.0,
) -> float:
    """Add the positive buckets of an OTLP exponential histogram to ``sketch``.

    Bucket ``offset + i`` covers ``(base**(offset+i), base**(offset+i+1)]`` with ``base = 2**(2**-scale)``.
    Each bucket is spread log-uniformly over the sketch keys it overlaps; a bucket narrower than a sketch
    bin lands in one bin, which is exactly what adding its values one by one would have done within the
    sketch's bound. Returns the number of observations added.
    """
    added = 0.0
    if zero_count > 0:
        sketch._zero_count += float(zero_count)
        sketch._refresh_totals()
        added += float(zero_count)
    if not counts:
        return added
    arr = np.asarray(counts, dtype=np.float64)
    nz = np.nonzero(arr > 0)[0]
    if nz.shape[0] == 0:
        return added
    m = sketch.mapping
    log2_base = 2.0 ** (-scale_exp)
    idx = nz + offset
    log2_lo = idx * log2_base + math.log2(unit_scale)
    log2_hi = log2_lo + log2_base
    if log2_lo[0] < math.log2(LATENCY_RANGE[0]) or log2_hi[-1] > math.log2(LATENCY_RANGE[1]):
        raise ValueError(f"exponential buckets span 2**{log2_lo[0]:.4g}s to 2**{log2_hi[-1]:.4g}s, "
                         f"outside the latency range {LATENCY_RANGE[0]:g}s to {LATENCY_RANGE[1]:g}s")
    # sketch key k covers log2 range ((k-1-off)/mult, (k-off)/mult]
    k_lo = np.ceil(log2_lo * m._multiplier + m._offset).astype(np.int64)
    k_hi = np.ceil(log2_hi * m._multiplier + m._offset).astype(np.int64)
    single = k_lo == k_hi
    if single.any():
        sketch.store.add_keys(k_lo[single], arr[nz][single])
    for j in np.nonzero(~single)[0]:
        keys = np.arange(k_lo[j], k_hi[j] + 1, dtype=np.int64)
        upper = (keys - m._offset) / m._multiplier
        lower = upper - 1.0 / m._multiplier
        overlap = np.clip(np.minimum(upper, log2_hi[j]) - np.maximum(lower, log2_lo[j]), 0.0, None)
        total = float(overlap.sum())
        if total > 0:
            sketch.store.add_dense(int(keys[0]), overlap * (arr[nz[j]] / total))
    sketch._refresh_totals()
    added += float(arr[nz].sum())
    return added
