"""OTLP payloads into the window store: decoding, series keys, cumulative differencing.

No HTTP here (that is :mod:`adapter.sources.otlp`); this module takes bytes, a content type and ``now``,
and writes into a :class:`~adapter.store.WindowStore`. Decoding uses ``opentelemetry-proto``'s generated
messages (upb underneath), never a hand-written protobuf parser; spans are read through a lean view of
the same schema (:mod:`adapter.sources.otlp_view`) that makes the route a hash lookup.

Spans: every SERVER span gives one latency sample (end - start), its error flag (status ERROR) and, for
a few spans per batch chosen near the upper quantiles, its trace id as an exemplar candidate. The loop
over spans is the hot path of the whole service: it touches only the fields it needs and hands each
series' latencies to the store as one numpy array.

Histograms (``http.server.request.duration`` in seconds, ``http.server.duration`` in milliseconds,
or the unit the metric declares): explicit and exponential, delta and cumulative. A cumulative stream is
differenced against its previous point; a restart (new start time, or any count going down) makes the new
point a delta from zero. The first point of a stream that started before this process is only a baseline
(its counts include requests from before the window); one that started after it counts in full.

CPU (``k8s.pod.cpu.usage``, ``k8s.container.cpu.request``): read by :mod:`adapter.sources.otlp_cpu` into
the :class:`~adapter.cpu.CpuSignals` given to the ingestor (without one they are ignored), with the same
namespace and workload resolution, label limits and rejection accounting.

Series key (DESIGN section 6): ``k8s.namespace.name`` (else the configured default namespace), workload
``k8s.deployment.name`` else ``service.name``, and ``http.route`` when route splitting is on.

Length: about 540 lines; spans and histograms share the series keys, limits and rejection
accounting. CPU has its own module; split the histogram import out too if this one grows further.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Status

from ..cpu import CpuSignals
from ..errors import BadRequest, LimitExceeded
from ..model import Exemplar, SeriesKey, label_value
from ..sketch import LatencySketch, import_explicit_histogram, import_exponential_histogram
from ..store import CANDIDATE_DTYPE, WindowStore
from .otlp_cpu import CPU_METRICS, CpuBatch, CpuImporter
from .otlp_view import LeanTraceRequest, attr_text

log = logging.getLogger("adapter.otlp")

SPAN_KIND_SERVER = 2
STATUS_CODE_ERROR = 2
TEMPORALITY_DELTA = 1
TEMPORALITY_CUMULATIVE = 2

#: Histogram metric names read as request latency, with the unit assumed when the point declares none.
LATENCY_HISTOGRAMS = {"http.server.request.duration": "s", "http.server.duration": "ms"}
UNIT_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0}
STATUS_ATTRIBUTES = ("http.response.status_code", "http.status_code")

#: Quantiles of each batch whose requests become exemplar candidates (see ``Slice.add_candidates``).
CANDIDATE_QUANTILES = (0.5, 0.9, 0.95, 0.99, 1.0)
#: Series keys remembered for (workload, encoded route) pairs before the cache starts over.
MAX_CACHED_KEYS = 50_000
_MIN_POSITIVE = LatencySketch().mapping.min_possible
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class IngestSettings:
    default_namespace: str = "default"
    split_routes: bool = True
    max_label_length: int = 128
    max_streams: int = 100_000


@dataclass
class IngestResult:
    """What one request did: accepted and rejected items, and why things were rejected."""

    accepted: int = 0
    rejected: int = 0
    ignored: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str, n: int = 1) -> None:
        self.rejected += n
        self.reasons[reason] = self.reasons.get(reason, 0) + n

    def message(self) -> str:
        return ", ".join(f"{n} {reason}" for reason, n in sorted(self.reasons.items()))


def _check_items(count: int, limit: int, what: str, key: str) -> None:
    if count > limit:
        raise LimitExceeded(f"request carries {count} {what}, over the limit of {limit} (limits.{key}); "
                            "send smaller batches", "too_many_" + what.split()[-1])


def _is_error_status(raw: bytes) -> bool:
    """Whether an encoded ``Status`` says ERROR (decoded only for spans that carry a status)."""
    try:
        return bool(Status.FromString(raw).code == STATUS_CODE_ERROR)
    except DecodeError:
        return False


def _any_value_str(raw: bytes) -> str:
    try:
        return attr_text(AnyValue.FromString(raw))
    except DecodeError:
        return ""


def _resource_identity(attributes: Iterable[Any]) -> tuple[dict[str, str], tuple[tuple[str, str], ...]]:
    attrs = {a.key: attr_text(a.value) for a in attributes}
    return attrs, tuple(sorted(attrs.items()))


_HEX_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def _hex_ids_to_base64(node: Any) -> None:
    """OTLP/JSON encodes trace and span ids as hex, protobuf's JSON mapping expects base64."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _HEX_ID_FIELDS and isinstance(value, str):
                try:
                    node[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
                except ValueError as exc:
                    raise BadRequest(f"field {key!r} is not a hex id: {value[:64]!r}") from exc
            else:
                _hex_ids_to_base64(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids_to_base64(item)


def decode(body: bytes, is_json: bool, message: Any) -> None:
    """Parse an OTLP protobuf or JSON body into ``message``; a :class:`BadRequest` says what was wrong."""
    if is_json:
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, huge ints
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise BadRequest(f"body is not valid JSON: {reason}") from exc
        if not isinstance(doc, dict):
            raise BadRequest("OTLP/JSON body must be a JSON object")
        _hex_ids_to_base64(doc)
        try:
            json_format.ParseDict(doc, message, ignore_unknown_fields=True)
        except (json_format.ParseError, ValueError, TypeError, binascii.Error, RecursionError) as exc:
            raise BadRequest(f"body is not a valid OTLP/JSON {type(message).__name__}: {exc}") from exc
        return
    try:
        message.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise BadRequest(f"body is not a valid protobuf {type(message).__name__}: {exc}") from exc


def encode_response(message: Any, is_json: bool) -> bytes:
    if is_json:
        text: str = json_format.MessageToJson(message, indent=None)
        return text.encode("utf-8")
    return bytes(message.SerializeToString())


@dataclass
class _SpanBatch:
    """The SERVER spans of one resource, read into lists (see :meth:`OtlpIngestor.prepare_traces`)."""

    attrs: dict[str, str]
    durations: list[int]
    routes: list[bytes]
    spans: list[Any]
    errors: list[int]


@dataclass
class PreparedTraces:
    """A decoded trace export request, not yet applied."""

    is_json: bool = False
    ignored: int = 0
    batches: list[_SpanBatch] = field(default_factory=list)


class _Stream:
    """Last cumulative point of one histogram stream."""

    __slots__ = ("counts", "kind", "offset", "scale", "start", "zero")

    def __init__(self, kind: str, start: int, counts: np.ndarray[Any, Any], scale: int = 0,
                 offset: int = 0, zero: float = 0.0) -> None:
        self.kind = kind
        self.start = start
        self.counts = counts
        self.scale = scale
        self.offset = offset
        self.zero = zero


class OtlpIngestor:
    """Decodes OTLP requests and writes them into the store."""

    def __init__(self, store: WindowStore, settings: IngestSettings | None = None,
                 started_unix_nano: int = 0, cpu: CpuSignals | None = None) -> None:
        self.store = store
        self.settings = settings or IngestSettings()
        self.cpu = cpu
        self.cpu_import = CpuImporter(cpu, self.settings.max_label_length)
        self.started_unix_nano = started_unix_nano
        self._streams: OrderedDict[tuple[Any, ...], _Stream] = OrderedDict()
        self._keys: dict[tuple[tuple[str, str], bytes], SeriesKey] = {}
        self._keys_of = LatencySketch(store.settings.relative_accuracy).keys_of
        self.evicted_streams = 0

    # -- keys --------------------------------------------------------------------------------------

    def _series_base(self, attrs: dict[str, str], result: IngestResult, n: int) -> tuple[str, str] | None:
        namespace = attrs.get("k8s.namespace.name") or self.settings.default_namespace
        workload = attrs.get("k8s.deployment.name") or attrs.get("service.name") or ""
        if not workload:
            result.reject("missing_workload", n)
            return None
        limit = self.settings.max_label_length
        if len(namespace) > limit or len(workload) > limit:
            result.reject("label_too_long", n)
            return None
        return namespace, label_value(workload, "unknown")

    # -- traces ------------------------------------------------------------------------------------

    def ingest_traces(self, body: bytes, is_json: bool, now: float,
                      max_items: int | None = None) -> tuple[IngestResult, bytes]:
        """Apply one export request; over ``max_items`` spans the whole request is refused (413)."""
        return self.apply_traces(self.prepare_traces(body, is_json, max_items), now)

    def prepare_traces(self, body: bytes, is_json: bool, max_items: int | None = None) -> PreparedTraces:
        """Decode one export request and read what the store needs from every span; nothing is applied.

        About half of a request's cost. The receiver lets the event loop run in between this and
        :meth:`apply_traces`, so an API request waits for one half at most, never for the whole body.
        """
        if is_json:
            # OTLP/JSON needs the official messages (its attributes are lists); re-encode for the view.
            official = ExportTraceServiceRequest()
            decode(body, True, official)
            body = official.SerializeToString()
        request = LeanTraceRequest()
        decode(body, False, request)
        if max_items is not None:
            spans = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            _check_items(spans, max_items, "spans", "max_spans_per_request")
        prepared = PreparedTraces(is_json=is_json)
        split_routes = self.settings.split_routes
        for resource_spans in request.resource_spans:
            # Per span only field reads into lists; everything else is per batch (_add_spans).
            kept: list[Any] = []
            for scope_spans in resource_spans.scope_spans:
                server = [span for span in scope_spans.spans if span.kind == SPAN_KIND_SERVER]
                prepared.ignored += len(scope_spans.spans) - len(server)
                kept += server
            durations = [span.end_time_unix_nano - span.start_time_unix_nano for span in kept]
            if not durations:
                continue
            routes = [span.attributes.get("http.route", b"") for span in kept] if split_routes else []
            errors = [i for i, span in enumerate(kept) if span.status and _is_error_status(span.status)]
            attrs, _ = _resource_identity(resource_spans.resource.attributes)
            prepared.batches.append(_SpanBatch(attrs, durations, routes, kept, errors))
        return prepared

    def apply_traces(self, prepared: PreparedTraces, now: float) -> tuple[IngestResult, bytes]:
        """Write a prepared request into the store at ``now``; the result and the encoded response."""
        result = IngestResult(ignored=prepared.ignored)
        for batch in prepared.batches:
            base = self._series_base(batch.attrs, result, len(batch.durations))
            if base is None:
                continue
            self._add_spans(base, batch.durations, batch.routes, batch.spans, batch.errors, now, result)
        response = ExportTraceServiceResponse()
        if result.rejected:
            response.partial_success.rejected_spans = result.rejected
            response.partial_success.error_message = "rejected: " + result.message()
        return result, encode_response(response, is_json=prepared.is_json)

    def _route_key(self, base: tuple[str, str], raw: bytes) -> SeriesKey | None:
        """The series key for an encoded ``http.route`` value (cached: few distinct routes exist)."""
        cache_key = (base, raw)
        key = self._keys.get(cache_key)
        if key is None:
            route = _any_value_str(raw) if raw else ""
            if len(route) > self.settings.max_label_length:
                return None
            if len(self._keys) >= MAX_CACHED_KEYS:
                self._keys.clear()
            key = SeriesKey(base[0], base[1], label_value(route, "root") if route else "")
            self._keys[cache_key] = key
        return key

    def _add_spans(self, base: tuple[str, str], durations: list[int], routes: list[bytes], spans: list[Any],
                   errors: list[int], now: float, result: IngestResult) -> None:
        """Turn one resource's SERVER spans into per-route bin counts with a handful of numpy calls."""
        try:
            ns = np.asarray(durations, dtype=np.int64)
        except OverflowError:  # uint64 timestamps whose difference leaves int64: invalid spans
            ns = np.asarray([d if _INT64_MIN <= d <= _INT64_MAX else -1 for d in durations], dtype=np.int64)
        n = ns.shape[0]
        distinct = list(dict.fromkeys(routes)) if routes else [b""]
        if len(distinct) == 1:
            gid = np.zeros(n, dtype=np.intp)
        else:
            index = {raw: i for i, raw in enumerate(distinct)}
            gid = np.fromiter(map(index.__getitem__, routes), dtype=np.intp, count=n)
        groups = len(distinct)
        seconds = np.multiply(ns, 1e-9, dtype=np.float64)
        positive = seconds > _MIN_POSITIVE
        if positive.all():  # the usual batch: no invalid or zero durations, no masks needed
            per_group = np.bincount(gid, minlength=groups)
            zeros = None
            keys = self._keys_of(seconds)
            pos_gid = gid
            order = np.lexsort((seconds, gid))  # by route, then by latency
        else:
            valid = ns >= 0
            invalid = n - int(np.count_nonzero(valid))
            if invalid:
                result.reject("negative_duration", invalid)
                if errors:
                    errors = [i for i in errors if valid[i]]  # a rejected span is no failed request
            per_group = np.bincount(gid[valid], minlength=groups)
            zeros = np.bincount(gid[valid & ~positive], minlength=groups)
            keys = self._keys_of(seconds[positive])
            pos_gid = gid[positive]
            order = np.lexsort((seconds, ~valid, gid))  # by route, valid first, then by latency
        err_counts = np.bincount(gid[errors], minlength=groups) if errors else None
        # 2-D histogram: row = route, column = sketch key - lo
        if keys.shape[0]:
            lo = int(keys.min())
            width = int(keys.max()) - lo + 1
            flat = np.bincount(pos_gid * width + (keys - lo), minlength=groups * width)
            table = flat.reshape(groups, width).astype(np.float64)
        else:
            lo, table = 0, np.zeros((groups, 0))
        starts = np.zeros(groups, dtype=np.intp)
        np.cumsum(np.bincount(gid, minlength=groups)[:-1], out=starts[1:])
        picks = _candidate_picks(order, starts, per_group)
        last_error: dict[int, int] = {}
        for i in errors:
            last_error[int(gid[i])] = i
        for g, raw in enumerate(distinct):
            count = int(per_group[g])
            if count == 0:
                continue
            key = self._route_key(base, raw)
            if key is None:
                result.reject("label_too_long", count)
                continue
            chosen = [i for i in picks[g] if spans[i].trace_id]
            candidates = np.zeros(len(chosen), dtype=CANDIDATE_DTYPE)  # no object per request (gc_policy)
            candidates["seconds"] = seconds[chosen]
            candidates["trace_id"] = [spans[i].trace_id for i in chosen]
            err = last_error.get(g)
            row = table[g]
            used = np.flatnonzero(row)  # trim to this route's own keys: a slice stays as narrow as its data
            first, row = (int(used[0]), row[used[0] : used[-1] + 1]) if used.shape[0] else (0, row[:0])
            ok = self.store.add_counts(
                key, lo + first, row, float(zeros[g]) if zeros is not None else 0.0, float(count),
                float(err_counts[g]) if err_counts is not None else 0.0,
                candidates, now, spans[err].trace_id.hex() if err is not None else "",
            )
            if ok:
                result.accepted += count
            else:
                result.reject("series_cap", count)

    # -- metrics -----------------------------------------------------------------------------------

    def ingest_metrics(self, body: bytes, is_json: bool, now: float,
                       max_items: int | None = None) -> tuple[IngestResult, bytes]:
        """Apply one export request; over ``max_items`` data points the whole request is refused (413)."""
        request = ExportMetricsServiceRequest()
        decode(body, is_json, request)
        if max_items is not None:
            points = sum(_point_count(metric) for rm in request.resource_metrics
                         for sm in rm.scope_metrics for metric in sm.metrics)
            _check_items(points, max_items, "data points", "max_points_per_request")
        result = IngestResult()
        cpu_batch: CpuBatch | None = None
        for resource_metrics in request.resource_metrics:
            attrs, identity = _resource_identity(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    default_unit = LATENCY_HISTOGRAMS.get(metric.name)
                    kind = metric.WhichOneof("data")
                    if default_unit is None or kind not in ("histogram", "exponential_histogram"):
                        if metric.name in CPU_METRICS and self.cpu_import.accepts(kind):
                            n = _point_count(metric)
                            base = self._series_base(attrs, result, n) if n else None
                            if base is not None:
                                cpu_batch = cpu_batch or CpuBatch()
                                self.cpu_import.add(cpu_batch, base, attrs, metric, result, now)
                            continue
                        result.ignored += _point_count(metric)
                        continue
                    unit = metric.unit or default_unit
                    scale = UNIT_SECONDS.get(unit)
                    if scale is None:
                        result.reject("unknown_unit", _point_count(metric))
                        continue
                    data = getattr(metric, kind)
                    for point in data.data_points:
                        self._add_point(attrs, identity, metric.name, kind, data.aggregation_temporality,
                                        point, scale, now, result)
        if cpu_batch is not None:
            self.cpu_import.commit(cpu_batch, result, now)
        response = ExportMetricsServiceResponse()
        if result.rejected:
            response.partial_success.rejected_data_points = result.rejected
            response.partial_success.error_message = "rejected: " + result.message()
        return result, encode_response(response, is_json)

    def _add_point(self, attrs: dict[str, str], identity: tuple[Any, ...], name: str, kind: str,
                   temporality: int, point: Any, scale: float, now: float, result: IngestResult) -> None:
        point_attrs = {a.key: attr_text(a.value) for a in point.attributes}
        base = self._series_base(attrs, result, 1)
        if base is None:
            return
        route = point_attrs.get("http.route", "") if self.settings.split_routes else ""
        if len(route) > self.settings.max_label_length:
            result.reject("label_too_long")
            return
        if temporality not in (TEMPORALITY_DELTA, TEMPORALITY_CUMULATIVE):
            result.reject("unspecified_temporality")
            return
        sketch = LatencySketch(self.store.settings.relative_accuracy)
        try:
            if kind == "histogram":
                added = self._explicit(identity, name, point_attrs, temporality, point, scale, sketch)
            else:
                added = self._exponential(identity, name, point_attrs, temporality, point, scale, sketch)
        except (ValueError, OverflowError) as exc:
            result.reject("malformed_point")
            log.debug("malformed histogram point", extra={"fields": {
                "event": "malformed_point", "metric": name, "detail": str(exc)[:200]}})
            return
        if added <= 0:
            result.accepted += 1  # a valid point that carried no new requests
            return
        status = next((point_attrs[k] for k in STATUS_ATTRIBUTES if k in point_attrs), "")
        errors = added if status[:1] == "5" and len(status) == 3 else 0.0
        candidates = [
            Exemplar(float(e.as_double if e.HasField("as_double") else e.as_int) * scale, e.trace_id.hex())
            for e in point.exemplars
            if e.trace_id
        ]
        key = SeriesKey(base[0], base[1], label_value(route, "root") if route else "")
        if self.store.add_sketch(key, sketch, errors, candidates, now, requests=added):
            result.accepted += 1
        else:
            result.reject("series_cap")

    def _previous(self, key: tuple[Any, ...]) -> _Stream | None:
        stream = self._streams.get(key)
        if stream is not None:
            self._streams.move_to_end(key)
        return stream

    def _remember(self, key: tuple[Any, ...], stream: _Stream) -> None:
        self._streams[key] = stream
        self._streams.move_to_end(key)
        while len(self._streams) > self.settings.max_streams:
            self._streams.popitem(last=False)
            self.evicted_streams += 1

    def _explicit(self, identity: tuple[Any, ...], name: str, point_attrs: dict[str, str], temporality: int,
                  point: Any, scale: float, sketch: LatencySketch) -> float:
        bounds = list(point.explicit_bounds)
        counts = np.asarray(point.bucket_counts, dtype=np.float64)
        if counts.shape[0] == 0:
            return 0.0
        if counts.shape[0] != len(bounds) + 1:
            raise ValueError(f"{len(bounds)} bounds but {counts.shape[0]} bucket counts")
        if any(b >= a for a, b in zip(bounds[1:], bounds, strict=False)):
            raise ValueError("explicit bounds are not increasing")
        if bounds and not (math.isfinite(bounds[0]) and math.isfinite(bounds[-1])):
            raise ValueError("explicit bounds must be finite")
        if temporality == TEMPORALITY_CUMULATIVE:
            key = (identity, name, tuple(sorted(point_attrs.items())), "explicit", tuple(bounds))
            prev = self._previous(key)
            self._remember(key, _Stream("explicit", point.start_time_unix_nano, counts))
            if prev is None:
                if point.start_time_unix_nano < self.started_unix_nano or not point.start_time_unix_nano:
                    return 0.0
                delta = counts
            elif prev.start != point.start_time_unix_nano or np.any(counts < prev.counts):
                delta = counts
            else:
                delta = counts - prev.counts
        else:
            delta = counts
        if not delta.any():
            return 0.0
        return import_explicit_histogram(
            sketch, bounds, delta.tolist(), scale=scale,
            minimum=point.min if point.HasField("min") and temporality == TEMPORALITY_DELTA else None,
            maximum=point.max if point.HasField("max") and temporality == TEMPORALITY_DELTA else None,
        )

    def _exponential(self, identity: tuple[Any, ...], name: str, point_attrs: dict[str, str],
                     temporality: int, point: Any, scale: float, sketch: LatencySketch) -> float:
        counts = np.asarray(point.positive.bucket_counts, dtype=np.float64)
        offset = int(point.positive.offset)
        exp_scale = int(point.scale)
        zero = float(point.zero_count)
        if not -10 <= exp_scale <= 20:
            raise ValueError(f"exponential histogram scale {exp_scale} outside [-10, 20]")
        if temporality == TEMPORALITY_CUMULATIVE:
            key = (identity, name, tuple(sorted(point_attrs.items())), "exponential")
            prev = self._previous(key)
            self._remember(key, _Stream("exponential", point.start_time_unix_nano, counts, exp_scale,
                                        offset, zero))
            if prev is None:
                if point.start_time_unix_nano < self.started_unix_nano or not point.start_time_unix_nano:
                    return 0.0
            elif prev.start == point.start_time_unix_nano and prev.scale >= exp_scale:
                old = _downscale(prev.counts, prev.offset, prev.scale - exp_scale)
                old_counts, old_offset = old
                lo = min(offset, old_offset)
                hi = max(offset + counts.shape[0], old_offset + old_counts.shape[0])
                cur = np.zeros(hi - lo)
                cur[offset - lo : offset - lo + counts.shape[0]] = counts
                before = np.zeros(hi - lo)
                before[old_offset - lo : old_offset - lo + old_counts.shape[0]] = old_counts
                diff = cur - before
                if not (np.any(diff < 0) or zero < prev.zero):
                    counts, offset, zero = diff, lo, zero - prev.zero
        if not counts.any() and zero <= 0:
            return 0.0
        return import_exponential_histogram(sketch, exp_scale, offset, counts.tolist(), zero, scale)


def _downscale(counts: np.ndarray[Any, Any], offset: int, by: int) -> tuple[np.ndarray[Any, Any], int]:
    """Re-bucket exponential counts to a scale ``by`` steps coarser (index >> by)."""
    if by == 0 or counts.shape[0] == 0:
        return counts, offset
    idx = (np.arange(counts.shape[0]) + offset) >> by
    new_offset = int(idx[0])
    return np.bincount(idx - new_offset, weights=counts), new_offset


def _point_count(metric: Any) -> int:
    kind = metric.WhichOneof("data")
    return len(getattr(metric, kind).data_points) if kind else 0


def _candidate_picks(order: np.ndarray[Any, Any], starts: np.ndarray[Any, Any],
                     counts: np.ndarray[Any, Any]) -> list[list[int]]:
    """Per route, the batch indices of its requests at the upper quantiles (p50, p90, p95, p99, max).

    These are the pool a window's exemplar is chosen from. ``order`` sorts the batch by route, valid
    spans first, then latency; ``starts`` is where each route begins in it and ``counts`` how many valid
    spans it has. One vectorised lookup for all routes.
    """
    q = np.asarray(CANDIDATE_QUANTILES)
    last = np.maximum(counts - 1, 0)[:, None]
    ranks = np.minimum((q[None, :] * last + 0.5).astype(np.intp), last)
    picked = order[starts[:, None] + ranks].tolist()
    return [list(dict.fromkeys(row)) if n else [] for row, n in zip(picked, counts.tolist(), strict=True)]
