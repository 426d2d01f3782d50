"""Tests for adapter.sources.otlp_ingest: real OTLP messages (protobuf bytes and OTLP/JSON) into the store.

Each test builds the request an OpenTelemetry SDK or Collector would send with the official
``opentelemetry.proto`` classes, ingests it at an injected ``now``, closes the slice and reads what the
store would serve.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from adapter.errors import BadRequest
from adapter.model import SeriesKey
from adapter.sketch import DEFAULT_RELATIVE_ACCURACY
from adapter.sources.otlp_ingest import IngestResult, IngestSettings, OtlpIngestor
from adapter.store import StoreSettings, WindowStore, WindowView
from tests.helpers_otlp import (
    CLIENT,
    CUMULATIVE,
    DELTA,
    INTERNAL,
    SECOND_NS,
    explicit_counts,
    explicit_metric,
    explicit_point,
    exponential_bucket_of,
    exponential_buckets,
    exponential_metric,
    exponential_point,
    metrics_request,
    otlp_json,
    span,
    spans_of,
    trace_id,
    trace_request,
)

ALPHA = DEFAULT_RELATIVE_ACCURACY
T0 = 1000.0  # store time (seconds), a slice boundary
STARTED = 1_700_000_000 * SECOND_NS  # when the ingestor (this process) started, unix ns
RESOURCE = {"k8s.namespace.name": "shop", "k8s.deployment.name": "checkout", "service.name": "checkout-svc"}
KEY = SeriesKey("shop", "checkout")
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SECONDS_METRIC = "http.server.request.duration"


def within(value: float | None, lo: float, hi: float) -> bool:
    """``value`` lies in ``[lo, hi]`` up to the sketch's relative accuracy."""
    assert value is not None
    slack = ALPHA * (1 + 1e-9)
    return lo * (1 - slack) <= value <= hi * (1 + slack)


def make(split_routes: bool = True, store_settings: StoreSettings | None = None,
         **kwargs: object) -> OtlpIngestor:
    settings = IngestSettings(split_routes=split_routes, **kwargs)  # type: ignore[arg-type]
    return OtlpIngestor(WindowStore(store_settings), settings, started_unix_nano=STARTED)


def served(ingestor: OtlpIngestor, key: SeriesKey | None = None, now: float = T0 + 5.0) -> WindowView | None:
    """What the store serves for ``key`` (default: every series) once the slice written at T0 closed."""
    store = ingestor.store
    store.advance(now)
    series = [s for s in store.all_series() if key is None or s.key == key]
    return store.view(series)


def keys_of(ingestor: OtlpIngestor) -> set[SeriesKey]:
    return {s.key for s in ingestor.store.all_series()}


def send_traces(ingestor: OtlpIngestor, request: object, as_json: bool = False,
                now: float = T0) -> tuple[IngestResult, bytes]:
    body = otlp_json(request) if as_json else request.SerializeToString()  # type: ignore[attr-defined]
    return ingestor.ingest_traces(body, as_json, now)


def send_metrics(ingestor: OtlpIngestor, request: object, as_json: bool = False,
                 now: float = T0) -> tuple[IngestResult, bytes]:
    body = otlp_json(request) if as_json else request.SerializeToString()  # type: ignore[attr-defined]
    return ingestor.ingest_metrics(body, as_json, now)


def trace_response(payload: bytes, as_json: bool) -> ExportTraceServiceResponse:
    response = ExportTraceServiceResponse()
    if as_json:
        json_format.Parse(payload.decode("utf-8"), response)
    else:
        response.ParseFromString(payload)
    return response


def metrics_response(payload: bytes, as_json: bool) -> ExportMetricsServiceResponse:
    response = ExportMetricsServiceResponse()
    if as_json:
        json_format.Parse(payload.decode("utf-8"), response)
    else:
        response.ParseFromString(payload)
    return response


# === traces ===============================================================================================


@pytest.mark.parametrize("as_json", [False, True])
def test_server_spans_are_counted_and_other_kinds_ignored(as_json: bool) -> None:
    ingestor = make()
    spans = [
        span(0, STARTED, 100_000_000),
        span(1, STARTED, 200_000_000),
        span(2, STARTED, 5_000_000_000, kind=CLIENT),  # the slow downstream call is not this server's latency
        span(3, STARTED, 5_000_000_000, kind=INTERNAL),
        span(4, STARTED, 5_000_000_000, kind=0),  # unspecified
    ]
    result, payload = send_traces(ingestor, trace_request([(RESOURCE, spans)]), as_json)
    assert (result.accepted, result.ignored, result.rejected) == (2, 3, 0)
    view = served(ingestor)
    assert view is not None and view.count == 2
    assert (view.sketch.quantile(1.0) or 0) == pytest.approx(0.2, rel=1.01 * ALPHA)
    response = trace_response(payload, as_json)
    assert not response.HasField("partial_success")  # full success: an empty response


def test_prepared_traces_are_applied_only_by_apply_and_at_its_time() -> None:
    """The receiver decodes, lets the loop run, then applies: nothing may reach the store in between."""
    ingestor = make()
    request = trace_request([(RESOURCE, spans_of([0.1, 0.2, 0.3], route="/cart"))])
    prepared = ingestor.prepare_traces(request.SerializeToString(), False)
    assert len(ingestor.store) == 0
    result, payload = ingestor.apply_traces(prepared, T0 + 5.5)  # applied in the slice of its own time
    assert result.accepted == 3 and not trace_response(payload, False).HasField("partial_success")
    assert served(ingestor, now=T0 + 5.5) is None  # that slice is still open at T0 + 5.5
    view = served(ingestor, now=T0 + 10.0)
    assert view is not None and view.count == 3


def test_duration_is_end_minus_start() -> None:
    ingestor = make()
    durations = [0.001, 0.010, 0.100, 1.0, 10.0]
    spans = [span(i, STARTED + i * 7 * SECOND_NS, int(d * SECOND_NS)) for i, d in enumerate(durations)]
    send_traces(ingestor, trace_request([(RESOURCE, spans)]))
    view = served(ingestor)
    assert view is not None
    for q, expected in zip((0.0, 0.25, 0.5, 0.75, 1.0), durations, strict=True):
        assert view.sketch.quantile(q) == pytest.approx(expected, rel=1.01 * ALPHA)


def test_zero_duration_span_counts_as_zero_latency() -> None:
    ingestor = make()
    send_traces(ingestor, trace_request([(RESOURCE, [span(0, STARTED, 0), span(1, STARTED, 50_000_000)])]))
    view = served(ingestor)
    assert view is not None and view.count == 2
    assert view.sketch.quantile(0.0) == 0.0


@pytest.mark.parametrize("as_json", [False, True])
def test_error_status_counts_as_error_with_its_trace_id(as_json: bool) -> None:
    ingestor = make()
    spans = [span(i, STARTED, 50_000_000, error=i in (3, 7)) for i in range(10)]
    send_traces(ingestor, trace_request([(RESOURCE, spans)]), as_json)
    view = served(ingestor)
    assert view is not None
    assert view.count == 10 and view.errors == 2
    assert view.error_trace_id in {trace_id(3).hex(), trace_id(7).hex()}


@pytest.mark.parametrize("as_json", [False, True])
def test_trace_id_is_kept_as_lower_case_hex_exemplar(as_json: bool) -> None:
    ingestor = make()
    send_traces(ingestor, trace_request([(RESOURCE, [span(5, STARTED, 123_000_000)])]), as_json)
    view = served(ingestor)
    assert view is not None
    expected = trace_id(5).hex()
    assert len(expected) == 32 and expected == expected.lower()
    assert [c.trace_id for c in view.exemplars()] == [expected]
    assert view.exemplars()[0].seconds == pytest.approx(0.123)
    exemplar = view.exemplar_near(view.sketch.quantile(0.95) or 0)
    assert exemplar is not None and exemplar.trace_id == expected


def test_exemplar_candidates_come_from_the_batch_tail() -> None:
    ingestor = make()
    rng = np.random.default_rng(3)
    durations = rng.lognormal(math.log(0.08), 0.6, 500)
    spans = spans_of(durations, STARTED)
    by_trace = {s.trace_id.hex(): (s.end_time_unix_nano - s.start_time_unix_nano) / SECOND_NS for s in spans}
    send_traces(ingestor, trace_request([(RESOURCE, spans)]))
    view = served(ingestor)
    assert view is not None and len(view.candidates)
    for c in view.exemplars():
        assert by_trace[c.trace_id] == pytest.approx(c.seconds)  # real requests with their own latencies
    seconds = sorted(c.seconds for c in view.exemplars())
    assert seconds[-1] == pytest.approx(float(durations.max()))  # the slowest request is offered
    for q in (0.5, 0.95, 0.99):  # and one at each upper quantile of the batch
        exact = float(np.percentile(durations, q * 100))
        assert min(abs(s - exact) / exact for s in seconds) <= 0.01, q


def test_otlp_json_written_by_hand_is_understood() -> None:
    """What an OTLP/JSON exporter sends: hex ids, lowerCamelCase keys, int64 as strings, integer enums."""
    tid = "5b8efff798038103d269b633813fc60c"
    doc = {
        "resourceSpans": [{
            "resource": {"attributes": [
                {"key": "k8s.namespace.name", "value": {"stringValue": "shop"}},
                {"key": "service.name", "value": {"stringValue": "cart"}},
            ]},
            "scopeSpans": [{
                "scope": {"name": "manual"},
                "spans": [{
                    "traceId": tid,
                    "spanId": "eee19b7ec3c1b174",
                    "parentSpanId": "",
                    "name": "GET /cart/{id}",
                    "kind": 2,
                    "startTimeUnixNano": "1700000000000000000",
                    "endTimeUnixNano": "1700000000250000000",
                    "attributes": [
                        {"key": "http.route", "value": {"stringValue": "/cart/{id}"}},
                        {"key": "http.response.status_code", "value": {"intValue": "500"}},
                    ],
                    "status": {"code": 2, "message": "boom"},
                }],
            }],
        }],
    }
    ingestor = make()
    result, payload = ingestor.ingest_traces(json.dumps(doc).encode(), True, T0)
    assert result.accepted == 1
    assert keys_of(ingestor) == {SeriesKey("shop", "cart", "cart_id")}
    view = served(ingestor)
    assert view is not None and view.count == 1 and view.errors == 1
    assert view.error_trace_id == tid
    assert view.exemplars()[0].trace_id == tid
    assert view.sketch.quantile(0.5) == pytest.approx(0.25, rel=1.01 * ALPHA)
    assert json.loads(payload) == {}  # an empty ExportTraceServiceResponse, as JSON


# --- series keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        (RESOURCE, SeriesKey("shop", "checkout")),  # deployment name wins over service.name
        ({"k8s.namespace.name": "shop", "service.name": "cart"}, SeriesKey("shop", "cart")),
        ({"service.name": "cart"}, SeriesKey("fallback", "cart")),  # configured default namespace
        ({"k8s.namespace.name": "shop", "service.name": "Cart Service"}, SeriesKey("shop", "Cart_Service")),
        ({"k8s.namespace.name": "shop", "k8s.deployment.name": "", "service.name": "cart"},
         SeriesKey("shop", "cart")),
    ],
)
def test_series_key_from_resource_attributes(resource: dict[str, str], expected: SeriesKey) -> None:
    ingestor = make(default_namespace="fallback")
    result, _ = send_traces(ingestor, trace_request([(resource, [span(0, STARTED, 10_000_000)])]))
    assert result.accepted == 1
    assert keys_of(ingestor) == {expected}


def test_default_namespace_is_default() -> None:
    ingestor = OtlpIngestor(WindowStore())
    request = trace_request([({"service.name": "cart"}, [span(0, STARTED, 1)])])
    ingestor.ingest_traces(request.SerializeToString(), False, T0)
    assert keys_of(ingestor) == {SeriesKey("default", "cart")}


def test_resource_without_workload_is_rejected_with_reason() -> None:
    ingestor = make()
    result, payload = send_traces(ingestor, trace_request([
        ({"k8s.namespace.name": "shop"}, [span(0, STARTED, 1), span(1, STARTED, 1)]),
        (RESOURCE, [span(2, STARTED, 1)]),
    ]))
    assert result.accepted == 1 and result.rejected == 2
    assert result.reasons == {"missing_workload": 2}
    response = trace_response(payload, False)
    assert response.partial_success.rejected_spans == 2
    assert "missing_workload" in response.partial_success.error_message


def test_several_resources_in_one_request_go_to_their_own_series() -> None:
    ingestor = make()
    send_traces(ingestor, trace_request([
        ({"k8s.namespace.name": "a", "service.name": "x"}, spans_of([0.01] * 3, STARTED)),
        ({"k8s.namespace.name": "b", "service.name": "x"}, spans_of([0.02] * 4, STARTED, first=10)),
    ]))
    assert keys_of(ingestor) == {SeriesKey("a", "x"), SeriesKey("b", "x")}
    a = served(ingestor, SeriesKey("a", "x"))
    b = served(ingestor, SeriesKey("b", "x"))
    assert a is not None and a.count == 3
    assert b is not None and b.count == 4


# --- routes ----------------------------------------------------------------------------------------------


def test_http_route_splits_series_with_label_values() -> None:
    ingestor = make()
    spans = [
        span(0, STARTED, 10_000_000, route="/cart/{id}"),
        span(1, STARTED, 20_000_000, route="/cart/{id}"),
        span(2, STARTED, 30_000_000, route="/"),
        span(3, STARTED, 40_000_000, route="/api/v1/items/{item_id}"),
        span(4, STARTED, 50_000_000),  # no route
    ]
    result, _ = send_traces(ingestor, trace_request([(RESOURCE, spans)]))
    assert result.accepted == 5
    assert keys_of(ingestor) == {
        SeriesKey("shop", "checkout", "cart_id"),
        SeriesKey("shop", "checkout", "root"),
        SeriesKey("shop", "checkout", "api_v1_items_item_id"),
        SeriesKey("shop", "checkout", ""),
    }
    cart = served(ingestor, SeriesKey("shop", "checkout", "cart_id"))
    assert cart is not None and cart.count == 2


def test_route_splitting_off_keeps_one_series() -> None:
    ingestor = make(split_routes=False)
    spans = [span(i, STARTED, 10_000_000, route=r) for i, r in enumerate(["/cart/{id}", "/", "/x"])]
    send_traces(ingestor, trace_request([(RESOURCE, spans)]))
    assert keys_of(ingestor) == {KEY}
    view = served(ingestor)
    assert view is not None and view.count == 3


# --- rejections ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True])
def test_negative_durations_are_rejected_with_reason(as_json: bool) -> None:
    ingestor = make()
    good = span(0, STARTED, 50_000_000)
    bad = span(1, STARTED, 0)
    bad.end_time_unix_nano = STARTED - 1_000_000  # ended before it started
    unset_end = span(2, STARTED, 0)
    unset_end.end_time_unix_nano = 0
    result, payload = send_traces(ingestor, trace_request([(RESOURCE, [good, bad, unset_end])]), as_json)
    assert result.accepted == 1
    assert result.reasons == {"negative_duration": 2}
    response = trace_response(payload, as_json)
    assert response.partial_success.rejected_spans == 2
    assert "negative_duration" in response.partial_success.error_message
    view = served(ingestor)
    assert view is not None and view.count == 1
    # The rejected spans are not exemplars.
    assert [c.trace_id for c in view.exemplars()] == [trace_id(0).hex()]


def test_only_negative_durations_leave_no_series_data() -> None:
    ingestor = make()
    bad = span(1, STARTED, 0)
    bad.end_time_unix_nano = STARTED - 1
    result, _ = send_traces(ingestor, trace_request([(RESOURCE, [bad])]))
    assert result.accepted == 0 and result.reasons == {"negative_duration": 1}
    assert served(ingestor) is None


def test_too_long_labels_are_rejected_with_reason() -> None:
    ingestor = make(max_label_length=40)
    long_workload = {"k8s.namespace.name": "shop", "service.name": "w" * 41}
    spans = [span(0, STARTED, 1, route="/" + "r" * 50), span(1, STARTED, 1, route="/ok")]
    result, payload = send_traces(ingestor, trace_request([
        (long_workload, [span(2, STARTED, 1), span(3, STARTED, 1)]),
        (RESOURCE, spans),
    ]))
    assert result.accepted == 1
    assert result.reasons == {"label_too_long": 3}
    assert keys_of(ingestor) == {SeriesKey("shop", "checkout", "ok")}
    response = trace_response(payload, False)
    assert response.partial_success.rejected_spans == 3
    assert "label_too_long" in response.partial_success.error_message


@pytest.mark.parametrize("as_json", [False, True])
def test_series_cap_becomes_partial_success(as_json: bool) -> None:
    ingestor = make(store_settings=StoreSettings(max_series=1))
    result, payload = send_traces(ingestor, trace_request([
        ({"service.name": "first"}, spans_of([0.01] * 3, STARTED)),
        ({"service.name": "second"}, spans_of([0.01] * 4, STARTED, first=10)),
    ]), as_json)
    assert result.accepted == 3
    assert result.reasons == {"series_cap": 4}
    response = trace_response(payload, as_json)
    assert response.partial_success.rejected_spans == 4
    assert "series_cap" in response.partial_success.error_message
    assert ingestor.store.dropped["series_cap"] == 1
    if as_json:
        assert json.loads(payload)["partialSuccess"]["rejectedSpans"] == "4"  # int64 as a JSON string


# --- malformed bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"\xff\xff\xff\xff", b"\x0a\x05\x01", b"\x08"])
def test_malformed_protobuf_is_a_bad_request(body: bytes) -> None:
    ingestor = make()
    with pytest.raises(BadRequest, match="protobuf ExportTraceServiceRequest"):
        ingestor.ingest_traces(body, False, T0)
    with pytest.raises(BadRequest, match="protobuf ExportMetricsServiceRequest"):
        ingestor.ingest_metrics(body, False, T0)
    assert len(ingestor.store) == 0


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'"resourceSpans"', "JSON object"),
        (b'{"resourceSpans": "nope"}', "OTLP/JSON ExportTraceServiceRequest"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', "traceId"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
         "OTLP/JSON ExportTraceServiceRequest"),
    ],
)
def test_malformed_json_is_a_bad_request_with_a_useful_message(body: bytes, expected: str) -> None:
    ingestor = make()
    with pytest.raises(BadRequest, match=expected):
        ingestor.ingest_traces(body, True, T0)


def test_empty_body_is_an_empty_request() -> None:
    ingestor = make()
    result, payload = ingestor.ingest_traces(b"", False, T0)
    assert (result.accepted, result.rejected) == (0, 0)
    assert not trace_response(payload, False).HasField("partial_success")
    result, payload = ingestor.ingest_traces(b"{}", True, T0)
    assert (result.accepted, result.rejected) == (0, 0)


@pytest.mark.parametrize("body", [
    b'{"resourceSpans": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"resourceSpans": ' + b"1" * 5000 + b"}",
])
def test_hostile_json_is_a_bad_request(body: bytes) -> None:
    with pytest.raises(BadRequest, match="not valid JSON"):
        make().ingest_traces(body, True, T0)
    with pytest.raises(BadRequest, match="not valid JSON"):
        make().ingest_metrics(body, True, T0)


def test_span_times_outside_int64_do_not_fail_the_request() -> None:
    ingestor = make()
    absurd = span(1, 0, 0)
    absurd.end_time_unix_nano = 2**64 - 1
    backwards = span(2, 0, 0)
    backwards.start_time_unix_nano = 2**64 - 1
    request = trace_request([(RESOURCE, [span(0, STARTED, 10_000_000), absurd, backwards])])
    result, payload = send_traces(ingestor, request)
    assert result.accepted == 1  # the good span still counts
    assert result.rejected == 2
    assert trace_response(payload, False).partial_success.rejected_spans == 2
    view = served(ingestor)
    assert view is not None and view.count == 1


def test_rejected_spans_are_not_counted_as_errors() -> None:
    ingestor = make()
    good = span(0, STARTED, 50_000_000)
    bad = [span(i, STARTED, 0, error=True) for i in (1, 2)]
    for b in bad:
        b.end_time_unix_nano = STARTED - 5
    result, _ = send_traces(ingestor, trace_request([(RESOURCE, [good, *bad])]))
    assert result.accepted == 1 and result.reasons == {"negative_duration": 2}
    view = served(ingestor)
    assert view is not None
    assert view.count == 1
    assert view.errors == 0
    assert view.error_trace_id == ""


# === metrics ==============================================================================================


def seconds_histogram(points: list, temporality: int = DELTA, name: str = SECONDS_METRIC,  # type: ignore[type-arg]
                      unit: str = "s") -> object:
    return metrics_request(RESOURCE, [explicit_metric(name, unit, temporality, points)])


def lognormal(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).lognormal(math.log(0.08), 0.6, n)


def p95_bucket(values: np.ndarray, bounds: tuple[float, ...]) -> tuple[float, float]:
    exact = float(np.percentile(values, 95))
    j = int(np.searchsorted(bounds, exact, side="left"))
    edges = (0.0, *bounds, math.inf)
    return edges[j], edges[j + 1]


@pytest.mark.parametrize("as_json", [False, True])
def test_explicit_delta_histogram(as_json: bool) -> None:
    values = lognormal(1, 5_000)
    counts = explicit_counts(values, BUCKETS)
    point = explicit_point(BUCKETS, counts, STARTED, STARTED + 10 * SECOND_NS,
                           minimum=float(values.min()), maximum=float(values.max()))
    ingestor = make()
    result, payload = send_metrics(ingestor, seconds_histogram([point]), as_json)
    assert (result.accepted, result.rejected) == (1, 0)
    assert not metrics_response(payload, as_json).HasField("partial_success")
    view = served(ingestor, KEY)
    assert view is not None
    assert view.count == pytest.approx(5_000)
    lo, hi = p95_bucket(values, BUCKETS)
    assert within(view.sketch.quantile(0.95), lo, hi)


def test_histogram_route_attribute_splits_series() -> None:
    ingestor = make()
    point = explicit_point(BUCKETS, [0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0], STARTED, STARTED + 1,
                           attrs={"http.route": "/cart/{id}", "http.request.method": "GET"})
    send_metrics(ingestor, seconds_histogram([point]))
    assert keys_of(ingestor) == {SeriesKey("shop", "checkout", "cart_id")}


def cumulative(counts: list[int], start: int, t: int) -> object:
    return seconds_histogram([explicit_point(BUCKETS, counts, start, t)], CUMULATIVE)


def window_count(ingestor: OtlpIngestor, now: float) -> float:
    view = served(ingestor, KEY, now)
    return 0.0 if view is None else view.count


def test_cumulative_explicit_differencing_and_resets() -> None:
    ingestor = make()
    before_us = STARTED - 3600 * SECOND_NS  # the application started an hour before the adapter
    c1 = [0, 5, 10, 20, 40, 20, 5, 1, 0, 0, 0, 0]
    c2 = [0, 6, 12, 25, 50, 22, 6, 1, 1, 0, 0, 0]
    # 1. First point of a stream that started before us: a baseline only (its counts include old requests).
    send_metrics(ingestor, cumulative(c1, before_us, STARTED + 10), now=T0)
    assert window_count(ingestor, T0 + 5) == 0
    # 2. The next point contributes the difference, and only that.
    send_metrics(ingestor, cumulative(c2, before_us, STARTED + 20), now=T0 + 5)
    assert window_count(ingestor, T0 + 10) == pytest.approx(sum(c2) - sum(c1))
    view = served(ingestor, KEY, T0 + 10)
    assert view is not None
    assert within(view.sketch.quantile(1.0), 0.5, 1.0)  # the new 0.5-1 s request
    # 3. A restart (new start time) with smaller counts: the new point counts from zero.
    c3 = [0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0]
    send_metrics(ingestor, cumulative(c3, STARTED + 100, STARTED + 130), now=T0 + 10)
    assert window_count(ingestor, T0 + 15) == pytest.approx(sum(c2) - sum(c1) + sum(c3))
    # 4. Same start time but a count went down: also a reset.
    c4 = [0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]
    send_metrics(ingestor, cumulative(c4, STARTED + 100, STARTED + 140), now=T0 + 15)
    assert window_count(ingestor, T0 + 20) == pytest.approx(sum(c2) - sum(c1) + sum(c3) + sum(c4))
    # 5. The same point again (a retry): nothing new.
    send_metrics(ingestor, cumulative(c4, STARTED + 100, STARTED + 140), now=T0 + 20)
    assert window_count(ingestor, T0 + 25) == pytest.approx(sum(c2) - sum(c1) + sum(c3) + sum(c4))


def test_cumulative_stream_started_after_us_counts_in_full() -> None:
    ingestor = make()
    counts = [0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0]
    result, _ = send_metrics(ingestor, cumulative(counts, STARTED + 5 * SECOND_NS, STARTED + 15 * SECOND_NS))
    assert result.accepted == 1
    assert window_count(ingestor, T0 + 5) == pytest.approx(sum(counts))


def test_cumulative_streams_are_kept_apart_by_attributes() -> None:
    """Two streams of one series (GET and POST on one route) are differenced each against its own past."""
    ingestor = make()
    start = STARTED + 1  # started after us: first points count in full
    get = {"http.route": "/a", "http.request.method": "GET"}
    post = {"http.route": "/a", "http.request.method": "POST"}
    for t, n_get, n_post in ((10, 5, 100), (20, 7, 100)):
        send_metrics(ingestor, seconds_histogram([
            explicit_point(BUCKETS, [0, n_get] + [0] * 10, start, start + t, attrs=get),
            explicit_point(BUCKETS, [0, n_post] + [0] * 10, start, start + t, attrs=post),
        ], CUMULATIVE))
    # GET: 5, then 7 -> 7 requests; POST: 100, then 100 -> 100 requests. Both in series (shop, checkout, a).
    view = served(ingestor, SeriesKey("shop", "checkout", "a"), T0 + 5)
    assert view is not None and view.count == pytest.approx(107)


@pytest.mark.parametrize("unit", ["ms", ""])
def test_http_server_duration_in_milliseconds_is_converted(unit: str) -> None:
    values = lognormal(2, 5_000)
    bounds_ms = (5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0)
    counts = explicit_counts(values * 1000.0, bounds_ms)
    ingestor = make()
    metric = explicit_metric("http.server.duration", unit, DELTA,
                             [explicit_point(bounds_ms, counts, STARTED, STARTED + 1)])
    result, _ = send_metrics(ingestor, metrics_request(RESOURCE, [metric]))
    assert result.accepted == 1
    view = served(ingestor, KEY)
    assert view is not None
    lo, hi = p95_bucket(values, tuple(b / 1000 for b in bounds_ms))
    assert within(view.sketch.quantile(0.95), lo, hi)  # seconds


def test_seconds_metric_without_unit_defaults_to_seconds() -> None:
    ingestor = make()
    send_metrics(ingestor, seconds_histogram([explicit_point([0.1, 0.2], [0, 4, 0], STARTED, STARTED + 1)],
                                             unit=""))
    view = served(ingestor, KEY)
    assert view is not None
    assert within(view.sketch.quantile(0.5), 0.1, 0.2)


@pytest.mark.parametrize("as_json", [False, True])
def test_exponential_delta_histogram(as_json: bool) -> None:
    values = lognormal(3, 20_000)
    offset, counts = exponential_buckets(values, 8)
    ingestor = make()
    metric = exponential_metric(SECONDS_METRIC, "s", DELTA,
                                [exponential_point(8, offset, counts, STARTED, STARTED + 1, zero_count=7)])
    result, _ = send_metrics(ingestor, metrics_request(RESOURCE, [metric]), as_json)
    assert result.accepted == 1
    view = served(ingestor, KEY)
    assert view is not None
    assert view.count == pytest.approx(20_007)
    assert view.sketch.zero_count == 7
    exact = float(np.percentile(np.concatenate([values, np.zeros(7)]), 95))
    assert abs((view.sketch.quantile(0.95) or 0) - exact) / exact <= 0.01


def test_exponential_cumulative_with_scale_decrease() -> None:
    """An SDK downscales a cumulative exponential histogram when a new value does not fit: the next point
    has a smaller scale. The difference must still count only the new requests."""
    first = lognormal(4, 2_000)
    more = np.random.default_rng(5).lognormal(math.log(2.0), 0.3, 500)  # slow requests force the rescale
    start = STARTED + SECOND_NS  # started after us: the first point counts in full
    ingestor = make()

    def send(point: object, now: float) -> None:
        metric = exponential_metric(SECONDS_METRIC, "s", CUMULATIVE, [point])  # type: ignore[list-item]
        result, _ = send_metrics(ingestor, metrics_request(RESOURCE, [metric]), now=now)
        assert result.accepted == 1

    off1, c1 = exponential_buckets(first, 5)
    send(exponential_point(5, off1, c1, start, start + 10 * SECOND_NS, zero_count=2), T0)
    assert window_count(ingestor, T0 + 5) == pytest.approx(2_002)

    both = np.concatenate([first, more])
    off2, c2 = exponential_buckets(both, 3)  # scale 5 -> 3
    # Sent once the first point's slice has left the window, so the window holds the difference alone.
    later = T0 + 70.0
    send(exponential_point(3, off2, c2, start, start + 80 * SECOND_NS, zero_count=3), later)
    view = served(ingestor, KEY, later + 5)
    assert view is not None
    assert view.count == pytest.approx(501)  # the 500 new requests and 1 new zero, not all 2,503
    assert view.sketch.zero_count == pytest.approx(1)
    # All new requests are slow: the difference holds none of the first point's fast ones.
    lo, _ = exponential_bucket_of(float(more.min()), 3)
    assert within(view.sketch.quantile(0.01), lo, math.inf)
    med_lo, med_hi = exponential_bucket_of(float(np.median(more)), 3)
    assert within(view.sketch.quantile(0.5), med_lo, med_hi)


def test_exponential_cumulative_first_point_before_us_is_baseline() -> None:
    ingestor = make()
    off, c = exponential_buckets(lognormal(6, 100), 4)
    p = exponential_point(4, off, c, STARTED - SECOND_NS, STARTED + SECOND_NS)
    result, _ = send_metrics(ingestor, metrics_request(RESOURCE, [exponential_metric(SECONDS_METRIC, "s",
                                                                                     CUMULATIVE, [p])]))
    assert result.accepted == 1 and result.rejected == 0
    assert window_count(ingestor, T0 + 5) == 0


@pytest.mark.parametrize(
    ("attrs", "errors"),
    [
        ({"http.response.status_code": 503}, 10),
        ({"http.response.status_code": 500}, 10),
        ({"http.status_code": "502"}, 10),  # the old attribute name, as a string
        ({"http.response.status_code": 200}, 0),
        ({"http.response.status_code": 404}, 0),
        ({}, 0),
    ],
)
def test_status_code_5xx_counts_as_errors(attrs: dict[str, object], errors: int) -> None:
    ingestor = make()
    point = explicit_point(BUCKETS, [0, 0, 0, 10] + [0] * 8, STARTED, STARTED + 1, attrs=attrs)  # type: ignore[arg-type]
    send_metrics(ingestor, seconds_histogram([point]))
    view = served(ingestor, KEY)
    assert view is not None
    assert view.count == pytest.approx(10)
    assert view.errors == pytest.approx(errors)


@pytest.mark.parametrize("as_json", [False, True])
def test_histogram_exemplars_become_candidates_in_seconds(as_json: bool) -> None:
    ingestor = make()
    bounds_ms = (50.0, 100.0, 250.0)
    point = explicit_point(bounds_ms, [0, 3, 1, 0], STARTED, STARTED + 1,
                           exemplars=[(180.0, trace_id(42)), (60.0, trace_id(43))])
    metric = explicit_metric("http.server.duration", "ms", DELTA, [point])
    send_metrics(ingestor, metrics_request(RESOURCE, [metric]), as_json)
    view = served(ingestor, KEY)
    assert view is not None
    got = sorted((c.trace_id, round(c.seconds, 9)) for c in view.exemplars())
    assert got == [(trace_id(42).hex(), 0.18), (trace_id(43).hex(), 0.06)]


@pytest.mark.parametrize("as_json", [False, True])
def test_other_metrics_are_ignored(as_json: bool) -> None:
    from opentelemetry.proto.metrics.v1 import metrics_pb2

    client = explicit_metric("http.client.request.duration", "s", DELTA,
                             [explicit_point(BUCKETS, [1] * 12, STARTED, STARTED + 1)])
    gauge = metrics_pb2.Metric(name=SECONDS_METRIC, unit="s")
    gauge.gauge.data_points.add(as_double=0.3)
    gauge.gauge.data_points.add(as_double=0.4)
    ingestor = make()
    result, payload = send_metrics(ingestor, metrics_request(RESOURCE, [client, gauge]), as_json)
    assert (result.accepted, result.rejected, result.ignored) == (0, 0, 3)
    assert not metrics_response(payload, as_json).HasField("partial_success")
    assert len(ingestor.store) == 0


@pytest.mark.parametrize("as_json", [False, True])
def test_unknown_unit_is_rejected_with_reason(as_json: bool) -> None:
    ingestor = make()
    points = [explicit_point(BUCKETS, [1] * 12, STARTED, STARTED + 1) for _ in range(2)]
    result, payload = send_metrics(ingestor, seconds_histogram(points, unit="By"), as_json)
    assert result.rejected == 2 and result.reasons == {"unknown_unit": 2}
    response = metrics_response(payload, as_json)
    assert response.partial_success.rejected_data_points == 2
    assert "unknown_unit" in response.partial_success.error_message
    assert len(ingestor.store) == 0


def test_mismatched_bucket_counts_are_rejected_as_malformed() -> None:
    ingestor = make()
    bad = explicit_point([0.1, 0.2], [1, 2, 3, 4], STARTED, STARTED + 1)
    good = explicit_point([0.1, 0.2], [1, 2, 3], STARTED, STARTED + 1)
    result, payload = send_metrics(ingestor, seconds_histogram([bad, good]))
    assert result.accepted == 1 and result.rejected == 1
    assert result.reasons.get("malformed_point") == 1
    response = metrics_response(payload, False)
    assert response.partial_success.rejected_data_points == 1
    assert "malformed_point" in response.partial_success.error_message


def test_unspecified_temporality_is_rejected() -> None:
    ingestor = make()
    point = explicit_point([0.1], [1, 1], STARTED, STARTED + 1)
    result, _ = send_metrics(ingestor, seconds_histogram([point], temporality=0))
    assert result.reasons == {"unspecified_temporality": 1}


def test_metrics_series_cap_is_partial_success() -> None:
    ingestor = make(store_settings=StoreSettings(max_series=1))
    point = explicit_point([0.1], [1, 1], STARTED, STARTED + 1)
    r1 = metrics_request({"service.name": "a"}, [explicit_metric(SECONDS_METRIC, "s", DELTA, [point])])
    r2 = metrics_request({"service.name": "b"}, [explicit_metric(SECONDS_METRIC, "s", DELTA, [point])])
    send_metrics(ingestor, r1)
    result, payload = send_metrics(ingestor, r2)
    assert result.reasons == {"series_cap": 1}
    assert metrics_response(payload, False).partial_success.rejected_data_points == 1


def test_infinite_bound_is_rejected_as_malformed_point() -> None:
    ingestor = make()
    bad = explicit_point([0.1, math.inf], [1, 1, 1], STARTED, STARTED + 1)
    result, _ = send_metrics(ingestor, seconds_histogram([bad]))
    assert result.rejected == 1 and "malformed_point" in result.reasons


def test_exponential_point_far_outside_any_latency_is_rejected() -> None:
    ingestor = make()
    normal = exponential_point(3, -30, [5] * 10, STARTED, STARTED + 1)
    absurd = exponential_point(0, 2**14, [5], STARTED, STARTED + 1)  # same series as the normal point
    send_metrics(ingestor, metrics_request(RESOURCE, [exponential_metric(SECONDS_METRIC, "s", DELTA,
                                                                         [normal, absurd])]))
    view = served(ingestor)
    assert ingestor.store.nbytes() < 64 * 1024 * len(ingestor.store)
    assert view is not None
    view.sketch.quantile(0.99)  # must not raise


def test_rejection_reasons_are_bounded_codes_with_counts() -> None:
    ingestor = make()
    for n in range(3, 6):  # three different malformed shapes
        valid = explicit_point([0.1, 0.2], [1] * n + [0], STARTED, STARTED + 1)
        send_metrics(ingestor, seconds_histogram([valid]))
        result, _ = send_metrics(ingestor, seconds_histogram([explicit_point([0.1, 0.2], [1] * (n + 1),
                                                                             STARTED, STARTED + 1)]))
        assert all(count > 0 for count in result.reasons.values()), result.reasons
        assert set(result.reasons) == {"malformed_point"}


def test_each_route_slice_holds_only_its_own_latency_range() -> None:
    """Routes binned together in one batch must not widen each other's slices (memory per series)."""
    ingestor = make()
    fast = spans_of(np.full(50, 0.002), route="/fast")
    slow = spans_of(np.full(50, 3.0), first=100, route="/slow")
    result, _ = send_traces(ingestor, trace_request([(RESOURCE, [*fast, *slow])]))
    assert result.accepted == 100
    for series in ingestor.store.all_series():
        [open_slice] = [s for s in series.ring if s is not None]
        _, bins, _ = open_slice.parts()
        assert bins.shape[0] == 1, (series.key, bins.shape)  # one latency value -> one sketch bin
