"""Seeds, the encodings that turn a fuzzer's bytes into a request, and hypothesis strategies.

Why seeds matter: a mutation-based fuzzer only gets deep when it starts from inputs that already pass the
first checks. So the OTLP seeds are real requests built with ``opentelemetry-proto`` (every span kind,
errors, routes of every attribute type, explicit and exponential histograms in both temporalities,
exemplars, CPU gauges and sums), the selectors cover each operator and the quirks ``adapter.selector``
documents, the configs are the ones shipped in ``manifests/`` and the README, and the quantities are the
kubectl cases of ``tests/fixtures/quantity-cases.json``.

Encodings (how one input of bytes becomes one request), shared by atheris, hypothesis and the tests:

* OTLP: the first byte picks the signal (even: ``/v1/traces``, odd: ``/v1/metrics``; the seeds use ``T``
  and ``M``), the rest is the body; a body starting with the gzip magic byte ``0x1f`` is sent with
  ``Content-Encoding: gzip``, so gzip seeds mutate into broken gzip streams as well.
* Selector: the bytes as UTF-8 (errors replaced), sent URL-encoded as ``labelSelector``.
* Path: the bytes after ``.../namespaces/``; printable ASCII goes into the request line as is (``/``,
  ``?``, ``%`` and ``#`` included, so the fuzzer can split segments, add a query or write broken escapes),
  everything else percent-encoded, since no client can put a raw control byte on the request line.
* Config and quantity: the bytes as the parser takes them (config) or as UTF-8 text (quantity).
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.helpers_otlp import (
    CLIENT,
    CUMULATIVE,
    DELTA,
    INTERNAL,
    SECOND_NS,
    explicit_metric,
    explicit_point,
    exponential_metric,
    exponential_point,
    gauge_metric,
    metrics_request_of,
    number_point,
    otlp_json,
    span,
    spans_of,
    sum_metric,
    trace_id,
    trace_request,
)

REPO = Path(__file__).resolve().parents[2]
API_PREFIX = "/apis/external.metrics.k8s.io/v1beta1"
#: Where the seeds' telemetry lives; the good-traffic check uses a namespace of its own.
FUZZ_NAMESPACE = "fuzz"
GOOD_NAMESPACE = "fuzz-good"
T0_NS = 1_700_000_000 * SECOND_NS
BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: Metrics the selector target asks for (one per input, by a hash of it): the plain quantiles, the
#: rate and the policy metrics that merge several workloads.
SELECTOR_METRICS = ("latency_p95_seconds", "request_rate", "error_ratio", "cpu_utilization",
                    "dual_signal_ratio", "latency_p95_baseline_ratio")

# ---------------------------------------------------------------------------------------------------------
# OTLP.

TRACES, METRICS = "traces", "metrics"
_SIGNAL_BYTE = {TRACES: b"T", METRICS: b"M"}
GZIP_MAGIC = 0x1F


def frame(signal: str, body: bytes) -> bytes:
    return _SIGNAL_BYTE[signal] + body


def unframe(data: bytes) -> tuple[str, bytes, bool]:
    """``(signal, body, gzip)`` of one OTLP input (see the module docstring)."""
    signal = METRICS if data[:1] and data[0] & 1 else TRACES
    body = data[1:]
    return signal, body, body[:1] == bytes([GZIP_MAGIC])


def gunzip_capped(body: bytes, cap: int) -> bytes | None:
    """What the receiver's gunzip would hand the ingestor, or None where it refuses the body."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, cap + 1)
    except zlib.error:
        return None
    return out if len(out) <= cap and d.eof and not d.unconsumed_tail else None


def _kv(key: str, value: AnyValue) -> KeyValue:
    return KeyValue(key=key, value=value)


def _resource(workload: str, namespace: str | None = FUZZ_NAMESPACE) -> dict[str, str]:
    attrs = {"k8s.deployment.name": workload, "service.name": f"{workload}-svc"}
    if namespace is not None:
        attrs["k8s.namespace.name"] = namespace
    return attrs


def trace_seed_requests() -> list[ExportTraceServiceRequest]:
    """Requests of every shape the span path reads: kinds, errors, odd routes, odd resources."""
    server = (spans_of([0.012, 0.05, 0.2, 1.5], T0_NS, route="/cart/{id}")
              + spans_of([0.3, 0.31], T0_NS, first=10, error=True, route="/")
              + spans_of([0.01], T0_NS, first=20, kind=CLIENT)
              + spans_of([0.002], T0_NS, first=30, kind=INTERNAL))
    backwards = span(40, T0_NS + 5_000_000, 0, route="/pay")
    backwards.end_time_unix_nano = T0_NS  # ends before it starts
    typed = span(41, T0_NS, 80_000_000, attrs={"http.route": 7, "http.response.status_code": 503})
    array_route = span(42, T0_NS, 1_000)
    array_route.attributes.append(_kv("http.route", AnyValue(array_value={"values": [
        AnyValue(string_value="/a"), AnyValue(int_value=1)]})))
    short_ids = span(43, T0_NS, 5_000_000, route="/x")
    short_ids.trace_id = b"\x01\x02"
    return [
        trace_request([(_resource("checkout"), [*server, backwards, typed, array_route, short_ids])]),
        trace_request([(_resource("catalog", None), spans_of([0.04] * 8, T0_NS, first=50, route="/item")),
                       ({"service.name": "only-service"}, spans_of([0.02], T0_NS, first=60)),
                       ({}, spans_of([0.5], T0_NS, first=70))]),
        trace_request([(_resource("checkout-canary"),
                        spans_of([0.25] * 4, T0_NS, first=80, route="/cart/{id}"))]),
    ]


def metrics_seed_requests() -> list[ExportMetricsServiceRequest]:
    """Histograms in seconds and milliseconds, both temporalities, exemplars, CPU, and noise to ignore."""
    t1, t2 = T0_NS + 10 * SECOND_NS, T0_NS + 20 * SECOND_NS
    counts = [0, 1, 3, 5, 9, 4, 2, 1, 0, 0, 0, 0]
    errors = {"http.route": "/cart/{id}", "http.response.status_code": 500}
    explicit = explicit_metric("http.server.request.duration", "s", DELTA, [
        explicit_point(BOUNDS, counts, T0_NS, t1, {"http.route": "/cart/{id}"}, minimum=0.004, maximum=1.2,
                       exemplars=[(0.3, trace_id(1)), (0.02, trace_id(2))]),
        explicit_point(BOUNDS, [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0], T0_NS, t1, errors)])
    cumulative = explicit_metric("http.server.duration", "ms", CUMULATIVE, [
        explicit_point([5.0, 50.0, 500.0], [1, 2, 1, 0], T0_NS, t1, {"http.route": "/"}),
        explicit_point([5.0, 50.0, 500.0], [2, 5, 3, 1], T0_NS, t2, {"http.route": "/"})])
    exponential = exponential_metric("http.server.request.duration", "", DELTA, [
        exponential_point(3, -40, [1, 2, 3, 2, 1], T0_NS, t1, zero_count=1, attrs={"http.route": "/exp"})])
    exp_cumulative = exponential_metric("http.server.request.duration", "s", CUMULATIVE, [
        exponential_point(2, -20, [1, 1], T0_NS, t1), exponential_point(1, -10, [2, 3, 1], T0_NS, t2)])
    cpu = [gauge_metric("k8s.pod.cpu.usage", "{cpu}", [
               number_point(0.25, 0, {"k8s.pod.name": "checkout-1"})]),
           sum_metric("k8s.container.cpu.request", "{cpu}", [
               number_point(1, 0, {"k8s.pod.name": "checkout-1", "k8s.container.name": "app"}),
               number_point(0.5, 0, {"k8s.pod.name": "checkout-1", "k8s.container.name": "sidecar"})])]
    noise = [gauge_metric("queue.depth", "1", [number_point(3, t1)])]
    return [
        metrics_request_of([(_resource("checkout"), [explicit, cumulative])]),
        metrics_request_of([(_resource("catalog"), [exponential, exp_cumulative]),
                            ({"k8s.namespace.name": FUZZ_NAMESPACE}, [explicit])]),
        metrics_request_of([(_resource("checkout"), cpu + noise)]),
    ]


def otlp_bodies(message: Any, is_json: bool) -> bytes:
    return otlp_json(message) if is_json else bytes(message.SerializeToString())


@cache
def otlp_seeds(is_json: bool) -> tuple[bytes, ...]:
    """Framed seeds of one encoding; the first request of each signal also gzipped."""
    out: list[bytes] = []
    for signal, requests in ((TRACES, trace_seed_requests()), (METRICS, metrics_seed_requests())):
        bodies = [otlp_bodies(r, is_json) for r in requests]
        out += [frame(signal, b) for b in bodies]
        out.append(frame(signal, gzip.compress(bodies[0], mtime=0)))
    return tuple(out)


def otlp_tokens(is_json: bool) -> list[bytes]:
    """libFuzzer dictionary entries: the JSON keys of the seeds, or the attribute and metric names."""
    words = {b"k8s.namespace.name", b"k8s.deployment.name", b"service.name", b"http.route",
             b"http.response.status_code", b"http.status_code", b"k8s.pod.name", b"k8s.container.name",
             b"http.server.request.duration", b"http.server.duration", b"k8s.pod.cpu.usage",
             b"k8s.container.cpu.request", b"ms", b"us", b"{cpu}"}
    if is_json:
        for seed in otlp_seeds(True):
            if seed[1:2] == b"{":
                words |= {m.encode() for m in re.findall(r'"([A-Za-z]+)":', seed[1:].decode())}
        words |= {b'"NaN"', b'"Infinity"', b'"-Infinity"', b'"18446744073709551616"', b"1e999", b"[]", b"{}",
                  b"null"}
    return sorted(words)


# ---------------------------------------------------------------------------------------------------------
# Selectors, paths, configs, quantities.

SELECTOR_SEEDS = (
    "", "workload=checkout", "workload==checkout", "workload!=checkout", "workload in (checkout,catalog)",
    "workload notin ()", "route in (cart_id,root),workload=checkout", "!route", "route",
    "example.com/tier=web", "a>5", "a<-1", "a<9223372036854775808", "a>007", "in in (notin)",
    " workload = checkout , route != root ", "a in (x,,y)", "a in (x,,)", "!a=b", "a=b,a=c",
    "workload in (checkout,checkout-canary)", "workload=only-service,route=", "x/y/z=1", "a=" + "b" * 64,
)
SELECTOR_TOKENS = ("in", "notin", "!=", "==", "=", "!", "(", ")", ",", ">", "<", "workload", "route",
                   "example.com/", "9223372036854775807", " ")


def selector_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def selector_metric(data: bytes) -> str:
    """The metric one selector input asks for: fixed per input, so a reproducer reproduces."""
    return SELECTOR_METRICS[zlib.crc32(data) % len(SELECTOR_METRICS)]


def metric_path(namespace: str, metric: str, selector: str | None = None) -> str:
    path = f"{API_PREFIX}/namespaces/{namespace}/{metric}"
    return path if selector is None else path + "?labelSelector=" + quote(selector, safe="")


PATH_SEEDS = (
    b"fuzz/latency_p95_seconds", b"fuzz/LATENCY_P99_SECONDS", b"fuzz-good/error_ratio",
    b"fuzz/dual_signal_ratio?labelSelector=workload", b"fuzz/request_rate?labelSelector=workload%3Dcheckout",
    b"fuzz/cpu_utilization_ratio", b"fuzz/latency_p95_baseline_ratio", b"Fuzz/latency_p50_seconds",
    b"fuzz/no_such_metric", b"fuzz/9metric", b"-fuzz/request_rate", b"fuzz/latency_p95_seconds/extra",
    b"fuzz/../../apis", b"fuzz/latency%2Fp95", b"fuzz/%6Catency_p95_seconds", b"%00/x",
    b"fuzz/request_rate?labelSelector=%ZZ&labelSelector=a", b"a" * 64 + b"/request_rate",
    b"fuzz/\xc3\xa9t\xc3\xa9",
)
#: Printable ASCII but space: what a client can write on the request line unencoded.
_REQUEST_LINE_SAFE = "".join(chr(c) for c in range(0x21, 0x7F))


def path_of(data: bytes) -> str:
    return f"{API_PREFIX}/namespaces/" + quote(data, safe=_REQUEST_LINE_SAFE)


def _readme_config() -> bytes | None:
    """The example config block of the README's "Configuration" section (absent: no seed)."""
    try:
        text = (REPO / "README.md").read_text(encoding="utf-8")
    except OSError:
        return None
    at = text.find("## Configuration")
    match = re.search(r"```yaml\n(.*?)```", text[at:], re.S) if at >= 0 else None
    return match.group(1).encode() if match else None


CONFIG_SNIPPETS = (
    b"",
    b"store: {window_seconds: 10, slice_seconds: 1, refresh_seconds: 0.5, relative_accuracy: 0.01}\n",
    b"otlp: {max_body_bytes: 65536, max_decompressed_bytes: 131072, split_routes: false}\n"
    b"cpu: {source: otlp}\n",
    b"traces: {url_template: 'https://tempo.example/explore?traceId={trace_id}', exemplar_info: false}\n"
    b"log_level: DEBUG\n",
    b"defaults: {quantile: 0.99, min_samples: 1, cpu_floor: 0}\n"
    b"workloads:\n  - {workload: 'batch-*', cpu_request_cores: 1.0}\n"
    b"  - {namespace: shop, workload: checkout, latency_target_seconds: 0.4}\n"
    b"canaries:\n  - {namespace: shop, canary: checkout-canary, baseline: checkout}\n",
    b"sources:\n  prometheus:\n    url: http://prometheus:9090\n    histogram: native\n"
    b"    labels: {namespace: ns, workload: app, status_code: code}\n"
    b"    queries: {request_rate: 'sum(rate(reqs{ns=\"$namespace\",app=\"${workload}\"}[$window]))'}\n"
    b"    headers: {X-Scope-OrgID: tenant-a}\n    basic_auth: {username: u, password_file: /p}\n"
    b"defaults: {source: [otlp, prometheus]}\n"
    b"workloads:\n  - {namespace: shop, workload: cart, source: prometheus}\n",
    b"store: {window_seconds: .inf}\n", b"? [a]\n: b\n", b"&a [*a]\n", b"!!python/object:os.system {}\n",
    b"store: !!binary aGVsbG8=\n", b"- 1\n- 2\n", b"store:\n  <<: {window_seconds: 30}\n",
)
CONFIG_TOKENS = (
    b"store", b"otlp", b"cpu", b"traces", b"sources", b"prometheus", b"log_level", b"defaults", b"workloads",
    b"canaries", b"window_seconds", b"slice_seconds", b"refresh_seconds", b"max_series", b"relative_accuracy",
    b"max_body_bytes", b"max_decompressed_bytes", b"default_namespace", b"split_routes", b"max_label_length",
    b"max_streams", b"source", b"poll_seconds", b"url_template", b"{trace_id}", b"latency_target_seconds",
    b"cpu_target_utilization", b"min_samples", b"cpu_floor", b"stale_after_seconds", b"quantile",
    b"cpu_request_cores", b"namespace", b"workload", b"canary", b"baseline", b"url", b"queries", b"labels",
    b"headers", b"basic_auth", b"histogram", b": ", b"\n  ", b"- ", b"{", b"}", b"[", b"]", b"true", b"null",
    b".nan", b"-.inf", b"0x10", b"1e999", b"&x", b"*x", b"!!str", b"!!float", b"<<",
)


@cache
def config_seeds() -> tuple[bytes, ...]:
    files = [REPO / "manifests/base/config.yaml", REPO / "manifests/overlays/prometheus-source/config.yaml"]
    seeds = [f.read_bytes() for f in files if f.is_file()]
    readme = _readme_config()
    if readme is not None:
        seeds.append(readme)
    return tuple(seeds) + CONFIG_SNIPPETS


@cache
def quantity_cases() -> tuple[tuple[str, str | None], ...]:
    """``(input, what kubectl wrote back, None where it refused)`` from the fixture."""
    doc = json.loads((REPO / "tests/fixtures/quantity-cases.json").read_text(encoding="utf-8"))
    return tuple((c["input"], c["kubectl_canonical"]) for c in doc["cases"])


QUANTITY_EXTRAS = ("1e2147483648", "1e-2147483649", "-0.0005", "9223372036854775807", "9223372036854775808Ki",
                   "8Ei", ".5", "+.e3", "1.5e2", "0.000000001", "1E", "5e+", "1.m", "-0")
QUANTITY_TOKENS = ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "e", "e-",
                   "e+", ".", "-", "+", "9223372036854775807", "2147483647")


def quantity_text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


@cache
def quantity_seeds() -> tuple[bytes, ...]:
    return tuple(dict.fromkeys(t.encode() for t, _ in quantity_cases())) + tuple(
        q.encode() for q in QUANTITY_EXTRAS)


# ---------------------------------------------------------------------------------------------------------
# Hypothesis strategies (the pytest tests and the fallback engine).

_MUTATIONS = ("flip", "insert", "delete", "replace", "truncate", "splice", "repeat")


@st.composite
def _mutated(draw: st.DrawFn, seeds: Sequence[bytes], max_size: int) -> bytes:
    """A seed after one to four libFuzzer-like mutations."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(_MUTATIONS))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            i = min(at, len(data) - 1)
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[at:at + draw(st.integers(1, 64))]
        elif op == "replace":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[at:at + len(chunk)] = chunk
        elif op == "truncate":
            del data[at:]
        elif op == "splice":
            other = draw(st.sampled_from(seeds))
            data[at:] = other[draw(st.integers(0, len(other))):]
        elif op == "repeat":
            data[at:at] = data[at:at + draw(st.integers(1, 32))] * draw(st.integers(2, 8))
    return bytes(data[:max_size])


def mutated(seeds: Sequence[bytes], max_size: int = 65536) -> st.SearchStrategy[bytes]:
    return _mutated(tuple(seeds), max_size)


_HOSTILE_TEXT = st.one_of(
    st.sampled_from(["checkout", "", FUZZ_NAMESPACE, "/cart/{id}", "/", "a" * 200, "Ünïcode", "x/y", "\x00",
                     "-lead", "trail-", "UPPER", "a b"]),
    st.text(max_size=40))
_UINT64 = st.one_of(st.sampled_from([0, 1, 2**63 - 1, 2**63, 2**64 - 1]), st.integers(0, 2**64 - 1))
_INT64 = st.one_of(st.sampled_from([0, -1, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
_INT32 = st.one_of(st.integers(-24, 24), st.sampled_from([2**31 - 1, -(2**31)]),
                   st.integers(-(2**31), 2**31 - 1))
_DOUBLE = st.one_of(st.sampled_from([0.0, -0.0, 1e-9, 0.25, math.nan, math.inf, -math.inf, 1e308]),
                    st.floats())
_ATTR_KEYS = ("k8s.namespace.name", "k8s.deployment.name", "service.name", "http.route", "k8s.pod.name",
              "k8s.container.name", "http.response.status_code", "http.status_code", "service.instance.id")


def _any_value(draw: st.DrawFn) -> AnyValue:
    kind = draw(st.sampled_from(("string", "string", "int", "double", "bool", "bytes", "array", "empty")))
    if kind == "string":
        return AnyValue(string_value=draw(_HOSTILE_TEXT))
    if kind == "int":
        return AnyValue(int_value=draw(_INT64))
    if kind == "double":
        return AnyValue(double_value=draw(_DOUBLE))
    if kind == "bool":
        return AnyValue(bool_value=draw(st.booleans()))
    if kind == "bytes":
        return AnyValue(bytes_value=draw(st.binary(max_size=20)))
    if kind == "array":
        return AnyValue(array_value={"values": [AnyValue(string_value=draw(_HOSTILE_TEXT))]})
    return AnyValue()


def _attributes(draw: st.DrawFn) -> list[KeyValue]:
    keys = draw(st.lists(st.one_of(st.sampled_from(_ATTR_KEYS), st.text(max_size=10)), max_size=5))
    return [_kv(k, _any_value(draw)) for k in keys]


def _hostile_span(draw: st.DrawFn) -> Span:
    return Span(trace_id=draw(st.one_of(st.binary(min_size=16, max_size=16), st.binary(max_size=20))),
                span_id=draw(st.binary(max_size=8)), name="op",
                kind=draw(st.one_of(st.integers(0, 5), _INT32)),  # type: ignore[arg-type]
                start_time_unix_nano=draw(_UINT64), end_time_unix_nano=draw(_UINT64),
                attributes=_attributes(draw),
                status={"code": draw(st.one_of(st.integers(0, 2), _INT32))})  # type: ignore[arg-type]


def _hostile_histogram(draw: st.DrawFn, metric: metrics_pb2.Metric) -> None:
    exemplars = [metrics_pb2.Exemplar(as_double=draw(_DOUBLE), trace_id=draw(st.binary(max_size=17)))
                 for _ in range(draw(st.integers(0, 2)))]
    if draw(st.booleans()):
        bounds = draw(st.lists(_DOUBLE, max_size=6))
        n = draw(st.sampled_from([len(bounds) + 1, len(bounds), 0, len(bounds) + 3]))
        metric.histogram.aggregation_temporality = draw(st.integers(0, 3))  # type: ignore[assignment]
        metric.histogram.data_points.append(metrics_pb2.HistogramDataPoint(
            start_time_unix_nano=draw(_UINT64), time_unix_nano=draw(_UINT64), count=draw(_UINT64),
            explicit_bounds=bounds, bucket_counts=draw(st.lists(_UINT64, min_size=n, max_size=n)),
            attributes=_attributes(draw), exemplars=exemplars, sum=draw(_DOUBLE)))
    else:
        metric.exponential_histogram.aggregation_temporality = draw(st.integers(0, 3))  # type: ignore[assignment]
        point = metrics_pb2.ExponentialHistogramDataPoint(
            start_time_unix_nano=draw(_UINT64), time_unix_nano=draw(_UINT64), count=draw(_UINT64),
            scale=draw(_INT32), zero_count=draw(_UINT64), zero_threshold=draw(_DOUBLE),
            attributes=_attributes(draw), exemplars=exemplars)
        point.positive.offset = draw(_INT32)
        point.positive.bucket_counts.extend(draw(st.lists(_UINT64, max_size=8)))
        point.negative.bucket_counts.extend(draw(st.lists(_UINT64, max_size=2)))
        metric.exponential_histogram.data_points.append(point)


def _hostile_number(draw: st.DrawFn, metric: metrics_pb2.Metric) -> None:
    value = draw(st.one_of(_INT64, _DOUBLE))
    point = number_point(value, draw(_UINT64))
    point.attributes.extend(_attributes(draw))
    target = metric.gauge if draw(st.booleans()) else metric.sum
    target.data_points.append(point)


@st.composite
def hostile_requests(draw: st.DrawFn) -> tuple[str, Any]:
    """A well-formed OTLP request full of hostile values: what byte mutation reaches only by luck."""
    signal = draw(st.sampled_from((TRACES, METRICS)))
    resource = _attributes(draw) + [_kv(k, AnyValue(string_value=draw(_HOSTILE_TEXT))) for k in
                                    draw(st.lists(st.sampled_from(_ATTR_KEYS[:3]), max_size=3))]
    if signal == TRACES:
        request = ExportTraceServiceRequest()
        rs = request.resource_spans.add()
        rs.resource.attributes.extend(resource)
        rs.scope_spans.add().spans.extend(_hostile_span(draw) for _ in range(draw(st.integers(0, 4))))
        return signal, request
    mrequest = ExportMetricsServiceRequest()
    rm = mrequest.resource_metrics.add()
    rm.resource.attributes.extend(resource)
    for _ in range(draw(st.integers(0, 3))):
        metric = rm.scope_metrics.add().metrics.add()
        metric.name = draw(st.sampled_from(("http.server.request.duration", "http.server.duration",
                                            "k8s.pod.cpu.usage", "k8s.container.cpu.request", "other")))
        metric.unit = draw(st.sampled_from(("", "s", "ms", "us", "µs", "ns", "min", "h", "{cpu}", "m", "1")))
        (_hostile_number if metric.name.startswith("k8s.") and draw(st.booleans()) else _hostile_histogram)(
            draw, metric)
    return signal, mrequest


def otlp_inputs(is_json: bool) -> st.SearchStrategy[bytes]:
    """Framed OTLP inputs: mutated seeds, hostile well-formed requests, and plain noise."""
    def encode(pair: tuple[str, Any]) -> bytes:
        return frame(pair[0], otlp_bodies(pair[1], is_json))

    return st.one_of(mutated(otlp_seeds(is_json)), hostile_requests().map(encode), st.binary(max_size=256))


def _text_inputs(seeds: Sequence[str], alphabet: str, max_size: int) -> st.SearchStrategy[bytes]:
    encoded = [s.encode() for s in seeds]
    return st.one_of(st.sampled_from(encoded), mutated(encoded, max_size),
                     st.text(alphabet=alphabet, max_size=60).map(str.encode),
                     st.text(max_size=40).map(str.encode), st.binary(max_size=40))


@st.composite
def _requirements(draw: st.DrawFn) -> str:
    """Selectors assembled from keys, operators and values, valid or nearly so, with random spacing."""
    keys = st.sampled_from(("workload", "route", "example.com/tier", "in", "-bad", "a" * 64, "x/y/z", ""))
    values = st.sampled_from(("checkout", "catalog", "", "cart_id", "5", "-1", "007", "a b", "v" * 70))
    space = st.sampled_from(("", " ", "\t", "\n"))
    parts = []
    for _ in range(draw(st.integers(1, 4))):
        key, op = draw(keys), draw(st.sampled_from(("=", "==", "!=", ">", "<", " in ", " notin ", "", "!")))
        if op == "!":
            parts.append(f"!{key}")
        elif op.strip() in ("in", "notin"):
            parts.append(f"{key}{op}({','.join(draw(st.lists(values, max_size=3)))})")
        else:
            parts.append(f"{key}{draw(space)}{op}{draw(space)}{draw(values) if op else ''}")
    return draw(st.sampled_from((",", " , ", ",,"))).join(parts)


def selector_inputs() -> st.SearchStrategy[bytes]:
    return st.one_of(_text_inputs(SELECTOR_SEEDS, " \t\n!=<>(),abinotw-_./0123456789", 8192),
                     _requirements().map(str.encode))


def path_inputs() -> st.SearchStrategy[bytes]:
    metrics = st.one_of(st.sampled_from(SELECTOR_METRICS), _HOSTILE_TEXT)
    built = st.builds(lambda ns, m, sel: (quote(ns, safe="") + "/" + quote(m, safe="") + sel).encode(),
                      _HOSTILE_TEXT, metrics,
                      st.one_of(st.just(""), _requirements().map(lambda s: "?labelSelector=" + quote(s))))
    return st.one_of(st.sampled_from(PATH_SEEDS), mutated(PATH_SEEDS, 4096), built, st.binary(max_size=80))


_CONFIG_KEYS = tuple(t.decode() for t in CONFIG_TOKENS if re.fullmatch(rb"[a-z_]+", t))
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), _DOUBLE, st.text(max_size=20),
                     st.sampled_from(["auto", "otlp", "p95", "0.99", "info", "http://x:9090", "{trace_id}"]))


@st.composite
def _config_documents(draw: st.DrawFn) -> bytes:
    """YAML documents over the real section and key names with values of every type."""
    key = st.one_of(st.sampled_from(_CONFIG_KEYS), st.integers(), st.none(), st.text(max_size=8))
    values = st.recursive(_SCALARS, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(key, inner, max_size=4)), max_leaves=12)
    doc = draw(st.one_of(st.dictionaries(key, values, max_size=5), values))
    return yaml.safe_dump(doc, allow_unicode=draw(st.booleans())).encode("utf-8")


def config_inputs() -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(config_seeds(), 16384), _config_documents(), st.binary(max_size=64))


def quantity_inputs() -> st.SearchStrategy[bytes]:
    shaped = st.from_regex(r"[+-]?[0-9]{0,25}\.?[0-9]{0,12}([eE][+-]?[0-9]{1,12}|[numkMGTPE]i?|Ki|Mi|Gi)?",
                           fullmatch=True)
    return st.one_of(st.sampled_from(quantity_seeds()), mutated(quantity_seeds(), 256),
                     shaped.map(str.encode), st.text(max_size=30).map(str.encode))


#: Per target key: its hypothesis strategy.
STRATEGIES: dict[str, Callable[[], st.SearchStrategy[bytes]]] = {
    "a": lambda: otlp_inputs(False), "b": lambda: otlp_inputs(True), "c": selector_inputs, "d": path_inputs,
    "e": config_inputs, "f": quantity_inputs,
}
