"""Builders of real OTLP messages (``opentelemetry.proto``) for the unit tests.

Everything here produces what an OpenTelemetry SDK or Collector would send: protobuf messages, their
wire bytes, and OTLP/JSON (lowerCamelCase keys, int64 as strings, enums as integers, trace and span ids
as hex, as the OTLP specification requires, not protobuf's base64 JSON mapping).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

SECOND_NS = 1_000_000_000
SERVER = Span.SpanKind.SPAN_KIND_SERVER
CLIENT = Span.SpanKind.SPAN_KIND_CLIENT
INTERNAL = Span.SpanKind.SPAN_KIND_INTERNAL
ERROR = Status.StatusCode.STATUS_CODE_ERROR
OK = Status.StatusCode.STATUS_CODE_OK
DELTA = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
CUMULATIVE = metrics_pb2.AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE

AttrValue = str | int | float | bool


def set_attributes(target: Any, attrs: Mapping[str, AttrValue]) -> None:
    """Append ``attrs`` to a repeated ``KeyValue`` field, using the AnyValue variant of each Python type."""
    for key, value in attrs.items():
        kv: KeyValue = target.add()
        kv.key = key
        if isinstance(value, bool):
            kv.value.bool_value = value
        elif isinstance(value, int):
            kv.value.int_value = value
        elif isinstance(value, float):
            kv.value.double_value = value
        else:
            kv.value.string_value = value


def trace_id(n: int) -> bytes:
    """A distinct, valid 16-byte trace id for request number ``n``."""
    return (0x0AF7651916CD43DD8448EB211C80319C + n).to_bytes(16, "big")


def span(
    n: int,
    start_ns: int,
    duration_ns: int,
    kind: int = SERVER,
    error: bool = False,
    route: str | None = None,
    attrs: Mapping[str, AttrValue] | None = None,
) -> Span:
    s = Span()
    s.trace_id = trace_id(n)
    s.span_id = (n + 1).to_bytes(8, "big")
    s.name = "GET"
    s.kind = kind  # type: ignore[assignment]
    s.start_time_unix_nano = start_ns
    s.end_time_unix_nano = start_ns + duration_ns
    if error:
        s.status.code = ERROR
    else:
        s.status.code = OK
    all_attrs: dict[str, AttrValue] = dict(attrs or {})
    if route is not None:
        all_attrs["http.route"] = route
    set_attributes(s.attributes, all_attrs)
    return s


def trace_request(
    resources: Iterable[tuple[Mapping[str, AttrValue], Sequence[Span]]],
) -> ExportTraceServiceRequest:
    """One ``ResourceSpans`` per ``(resource attributes, spans)`` pair, one scope each."""
    request = ExportTraceServiceRequest()
    for attrs, spans in resources:
        rs = request.resource_spans.add()
        set_attributes(rs.resource.attributes, attrs)
        ss = rs.scope_spans.add()
        ss.scope.name = "tests"
        ss.spans.extend(spans)
    return request


def spans_of(
    durations_s: Sequence[float] | np.ndarray,
    start_ns: int = 1_700_000_000 * SECOND_NS,
    first: int = 0,
    **kwargs: Any,
) -> list[Span]:
    """SERVER spans (by default) with the given durations in seconds, trace ids numbered from ``first``."""
    return [
        span(first + i, start_ns + i * 1000, round(float(d) * SECOND_NS), **kwargs)
        for i, d in enumerate(durations_s)
    ]


# --- metrics ---------------------------------------------------------------------------------------------


def metrics_request(
    resource: Mapping[str, AttrValue], metrics: Sequence[metrics_pb2.Metric]
) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    set_attributes(rm.resource.attributes, resource)
    sm = rm.scope_metrics.add()
    sm.scope.name = "tests"
    sm.metrics.extend(metrics)
    return request


def explicit_metric(
    name: str,
    unit: str,
    temporality: int,
    points: Sequence[metrics_pb2.HistogramDataPoint],
) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    metric.histogram.aggregation_temporality = temporality  # type: ignore[assignment]
    metric.histogram.data_points.extend(points)
    return metric


def explicit_point(
    bounds: Sequence[float],
    counts: Sequence[int],
    start_ns: int,
    time_ns: int,
    attrs: Mapping[str, AttrValue] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exemplars: Sequence[tuple[float, bytes]] = (),
) -> metrics_pb2.HistogramDataPoint:
    point = metrics_pb2.HistogramDataPoint(
        start_time_unix_nano=start_ns,
        time_unix_nano=time_ns,
        count=int(sum(counts)),
        explicit_bounds=list(bounds),
        bucket_counts=[int(c) for c in counts],
    )
    if minimum is not None:
        point.min = minimum
    if maximum is not None:
        point.max = maximum
    set_attributes(point.attributes, attrs or {})
    for value, tid in exemplars:
        ex = point.exemplars.add()
        ex.as_double = value
        ex.trace_id = tid
        ex.span_id = b"\x00" * 7 + b"\x01"
        ex.time_unix_nano = time_ns
    return point


def exponential_metric(
    name: str,
    unit: str,
    temporality: int,
    points: Sequence[metrics_pb2.ExponentialHistogramDataPoint],
) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    metric.exponential_histogram.aggregation_temporality = temporality  # type: ignore[assignment]
    metric.exponential_histogram.data_points.extend(points)
    return metric


def exponential_point(
    scale: int,
    offset: int,
    counts: Sequence[int],
    start_ns: int,
    time_ns: int,
    zero_count: int = 0,
    attrs: Mapping[str, AttrValue] | None = None,
) -> metrics_pb2.ExponentialHistogramDataPoint:
    point = metrics_pb2.ExponentialHistogramDataPoint(
        start_time_unix_nano=start_ns,
        time_unix_nano=time_ns,
        count=int(sum(counts)) + zero_count,
        scale=scale,
        zero_count=zero_count,
    )
    point.positive.offset = offset
    point.positive.bucket_counts.extend(int(c) for c in counts)
    set_attributes(point.attributes, attrs or {})
    return point


def explicit_counts(values: np.ndarray, bounds: Sequence[float]) -> list[int]:
    """OTLP explicit bucket counts (``len(bounds) + 1``): bucket i holds ``bounds[i-1] < v <= bounds[i]``."""
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    return [int(c) for c in np.bincount(idx, minlength=len(bounds) + 1)]


def exponential_buckets(values: np.ndarray, scale: int) -> tuple[int, list[int]]:
    """(offset, counts) of positive values at ``scale``: bucket i holds ``base**i < v <= base**(i+1)``."""
    idx = (np.ceil(np.log2(values) * 2.0**scale) - 1).astype(np.int64)
    offset = int(idx.min())
    return offset, [int(c) for c in np.bincount(idx - offset)]


def exponential_bucket_of(value: float, scale: int) -> tuple[float, float]:
    """The bounds ``(lo, hi]`` of the exponential bucket at ``scale`` that holds ``value``."""
    i = math.ceil(math.log2(value) * 2.0**scale) - 1
    base = 2.0 ** (2.0**-scale)
    return base**i, base ** (i + 1)


# --- OTLP/JSON -------------------------------------------------------------------------------------------

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _ids_to_hex(node: Any) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_to_hex(item)


def otlp_json(message: Any) -> bytes:
    """OTLP/JSON bytes of ``message``: camelCase keys, integer enums, int64 strings, hex ids."""
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)
    _ids_to_hex(doc)
    return json.dumps(doc).encode("utf-8")


# --- number metrics (gauges and sums) --------------------------------------------------------------------


def number_point(
    value: float | int,
    time_ns: int,
    attrs: Mapping[str, AttrValue] | None = None,
    start_ns: int = 0,
    flags: int = 0,
) -> metrics_pb2.NumberDataPoint:
    """A gauge or sum point: ``as_int`` for a Python int, ``as_double`` for a float."""
    point = metrics_pb2.NumberDataPoint(time_unix_nano=time_ns, start_time_unix_nano=start_ns, flags=flags)
    if isinstance(value, int):
        point.as_int = value
    else:
        point.as_double = value
    set_attributes(point.attributes, attrs or {})
    return point


def gauge_metric(name: str, unit: str, points: Sequence[metrics_pb2.NumberDataPoint]) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    metric.gauge.data_points.extend(points)
    return metric


def sum_metric(
    name: str,
    unit: str,
    points: Sequence[metrics_pb2.NumberDataPoint],
    temporality: int = CUMULATIVE,
    monotonic: bool = False,
) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name, unit=unit)
    metric.sum.aggregation_temporality = temporality  # type: ignore[assignment]
    metric.sum.is_monotonic = monotonic
    metric.sum.data_points.extend(points)
    return metric


def metrics_request_of(
    resources: Iterable[tuple[Mapping[str, AttrValue], Sequence[metrics_pb2.Metric]]],
) -> ExportMetricsServiceRequest:
    """One ``ResourceMetrics`` per ``(resource attributes, metrics)`` pair, one scope each."""
    request = ExportMetricsServiceRequest()
    for attrs, metrics in resources:
        rm = request.resource_metrics.add()
        set_attributes(rm.resource.attributes, attrs)
        sm = rm.scope_metrics.add()
        sm.scope.name = "tests"
        sm.metrics.extend(metrics)
    return request
