"""The OTLP/HTTP receiver under bad input: every refusal is the right status, says why, is counted on
``/metrics`` by reason, and never disturbs good traffic.

Runs its own adapter with small limits (``max_body_bytes: 65536``, ``max_decompressed_bytes: 131072``).
Bodies are built with ``opentelemetry-proto`` (protobuf) or by hand (OTLP/JSON with hex ids); good traffic
comes from the real OpenTelemetry SDK in batches small enough for the limit.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import threading
import time
from collections import Counter
from typing import Any

import numpy as np
import pytest
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from adapter.quantity import parse_quantity

MAX_BODY = 65536
MAX_DECOMPRESSED = 131072
PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON_CT = {"Content-Type": "application/json"}
LIMITS = {
    "store": {"window_seconds": 30, "slice_seconds": 1},
    "otlp": {"max_body_bytes": MAX_BODY, "max_decompressed_bytes": MAX_DECOMPRESSED},
}
@pytest.fixture(scope="module")
def limited(adapter_factory: Any) -> Any:
    return adapter_factory("limits", LIMITS)


@pytest.fixture(scope="module")
def sender(limited: Any, span_sender: Any) -> Any:
    return span_sender(limited.otlp_port)


# ---------------------------------------------------------------------------------------------------------
# Building OTLP requests.


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def trace_request(namespace: str | None, workload: str | None, latencies: list[float],
                  route: str = "/r") -> tuple[ExportTraceServiceRequest, list[str]]:
    """A protobuf export request of SERVER spans ending now; returns it and its trace ids (hex)."""
    end = time.time_ns()
    spans, ids = [], []
    for latency in latencies:
        trace_id = os.urandom(16)
        ids.append(trace_id.hex())
        spans.append(Span(trace_id=trace_id, span_id=os.urandom(8), name="GET", kind=Span.SPAN_KIND_SERVER,
                          start_time_unix_nano=end - round(latency * 1e9), end_time_unix_nano=end,
                          attributes=[_kv("http.route", route)]))
    attributes = []
    if namespace is not None:
        attributes.append(_kv("k8s.namespace.name", namespace))
    if workload is not None:
        attributes.append(_kv("k8s.deployment.name", workload))
    request = ExportTraceServiceRequest(resource_spans=[ResourceSpans(
        resource={"attributes": attributes}, scope_spans=[ScopeSpans(spans=spans)])])
    return request, ids


def json_trace_request(namespace: str, workload: str, latencies: list[float], route: str = "/r",
                       ) -> tuple[bytes, list[str]]:
    """An OTLP/JSON body as the specification writes it: hex ids, int64 times as strings, enum as int."""
    end = time.time_ns()
    spans, ids = [], []
    for latency in latencies:
        trace_id = os.urandom(16).hex()
        ids.append(trace_id)
        spans.append({
            "traceId": trace_id, "spanId": os.urandom(8).hex(), "name": "GET", "kind": 2,
            "startTimeUnixNano": str(end - round(latency * 1e9)), "endTimeUnixNano": str(end),
            "attributes": [{"key": "http.route", "value": {"stringValue": route}}],
            "status": {},
        })
    doc = {"resourceSpans": [{
        "resource": {"attributes": [
            {"key": "k8s.namespace.name", "value": {"stringValue": namespace}},
            {"key": "k8s.deployment.name", "value": {"stringValue": workload}},
        ]},
        "scopeSpans": [{"scope": {"name": "tests"}, "spans": spans}],
    }]}
    return json.dumps(doc).encode(), ids


def rejected(proc: Any) -> dict[str, float]:
    """``latency_adapter_otlp_rejected_total`` of the traces signal, by reason."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(proc.metrics_text().text):
        for s in family.samples:
            if s.name == "latency_adapter_otlp_rejected_total" and s.labels.get("signal") == "traces":
                out[s.labels["reason"]] = out.get(s.labels["reason"], 0.0) + s.value
    return out


def accepted(proc: Any) -> float:
    return float(proc.counter("latency_adapter_otlp_items_total", signal="traces", outcome="accepted"))


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(before) | set(after)
            if after.get(k, 0.0) != before.get(k, 0.0)}


def status_message(resp: Any) -> str:
    """The message of a google.rpc.Status body (protobuf)."""
    assert resp.content_type == "application/x-protobuf", resp
    status = status_pb2.Status()
    status.ParseFromString(resp.body)
    assert status.code == 3, status  # INVALID_ARGUMENT
    return str(status.message)


def raw_request(port: int, head: bytes, body: bytes = b"", timeout: float = 5.0) -> tuple[int, dict[str, str],
                                                                                          bytes]:
    """Send ``head`` (request line and headers) and ``body`` on a plain socket; read one response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data:
            if time.monotonic() > deadline:
                pytest.fail(f"no response within {timeout}s (the server is waiting for the body?)")
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_blob, _, rest = data.partition(b"\r\n\r\n")
        lines = header_blob.decode("latin-1").split("\r\n")
        code = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
        return code, headers, rest[:length]


# ---------------------------------------------------------------------------------------------------------
# Refusals.


@pytest.mark.parametrize("body", [b"\x0a\x05abc", b"\xff\xff\xff\xff", b"\x0a\x02\x0a\xff"])
def test_malformed_protobuf_is_400_with_a_status_that_explains(limited: Any, body: bytes) -> None:
    before = rejected(limited)
    resp = limited.otlp("/v1/traces", body, PROTOBUF)
    assert resp.status == 400, resp
    message = status_message(resp)
    assert "protobuf" in message and "ExportTraceServiceRequest" in message, message
    assert delta(before, rejected(limited)) == {"malformed": 1}


def test_malformed_metrics_protobuf_is_400_counted_for_the_metrics_signal(limited: Any) -> None:
    before = limited.counter("latency_adapter_otlp_rejected_total", signal="metrics", reason="malformed")
    resp = limited.otlp("/v1/metrics", b"\x0a\x05abc", PROTOBUF)
    assert resp.status == 400, resp
    assert "ExportMetricsServiceRequest" in status_message(resp)
    after = limited.counter("latency_adapter_otlp_rejected_total", signal="metrics", reason="malformed")
    assert after - before == 1


@pytest.mark.parametrize("body,expect", [
    (b'{"resourceSpans": [', "not valid JSON"),
    (b"[]", "JSON object"),
    (b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}', "traceId"),
    (b'{"resourceSpans": "nope"}', "OTLP/JSON"),
    (b"\xff\xfe", "JSON"),
    (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":2,"startTimeUnixNano":"99999999999999999999999"}]}]}]}',
     "OTLP/JSON"),
    (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"kind":2,"startTimeUnixNano":{}}]}]}]}', "OTLP/JSON"),
    (b'{"a":' * 5000 + b"1" + b"}" * 5000, "JSON"),
])
def test_malformed_json_is_400_with_a_json_status(limited: Any, body: bytes, expect: str) -> None:
    before = rejected(limited)
    resp = limited.otlp("/v1/traces", body, JSON_CT)
    assert resp.status == 400, resp
    assert resp.content_type == "application/json", resp
    doc = resp.json()
    assert doc["code"] == 3 and expect in doc["message"], doc
    assert delta(before, rejected(limited)) == {"malformed": 1}


@pytest.mark.parametrize("content_type", ["text/plain", "application/protobuf",
                                          "application/x-www-form-urlencoded"])
def test_wrong_content_type_is_415(limited: Any, content_type: str) -> None:
    request, _ = trace_request("errors", "ct", [0.1])
    before = rejected(limited)
    resp = limited.otlp("/v1/traces", request.SerializeToString(), {"Content-Type": content_type})
    assert resp.status == 415, resp
    assert content_type in status_message(resp)
    assert delta(before, rejected(limited)) == {"unsupported_media_type": 1}


@pytest.mark.parametrize("encoding", [
    "br", "zstd", "deflate", "compress", "x-custom",
])
def test_unsupported_content_encoding_is_415(limited: Any, encoding: str) -> None:
    request, _ = trace_request("errors", "ce", [0.1])
    before = rejected(limited)
    resp = limited.otlp("/v1/traces", request.SerializeToString(), {**PROTOBUF, "Content-Encoding": encoding})
    assert resp.status == 415, resp
    assert encoding in status_message(resp)
    assert delta(before, rejected(limited)) == {"unsupported_media_type": 1}


def test_declared_content_length_over_the_limit_is_413_before_the_body_is_read(limited: Any) -> None:
    before = rejected(limited)
    head = (b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
            b"Content-Length: 10000000\r\n\r\n")
    code, headers, body = raw_request(limited.otlp_port, head)  # no body is ever sent
    assert code == 413, (code, headers, body)
    status = status_pb2.Status()
    status.ParseFromString(body)
    assert "10000000" in status.message and str(MAX_BODY) in status.message, status
    assert headers.get("connection", "").lower() == "close", headers
    assert delta(before, rejected(limited)) == {"body_too_large": 1}


def test_body_over_the_limit_is_413(limited: Any) -> None:
    request, _ = trace_request("errors", "big", [0.1] * 1200)
    body = request.SerializeToString()
    assert len(body) > MAX_BODY
    before = rejected(limited)
    resp = limited.otlp("/v1/traces", body, PROTOBUF)
    assert resp.status == 413, resp
    assert str(MAX_BODY) in status_message_any(resp)
    assert delta(before, rejected(limited)) == {"body_too_large": 1}


def test_chunked_body_over_the_limit_is_413(limited: Any) -> None:
    before = rejected(limited)
    chunk = b"\x00" * 16384
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(6)) + b"0\r\n\r\n"
    head = (b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-protobuf\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    code, _, _ = raw_request(limited.otlp_port, head, body)
    assert code == 413
    assert delta(before, rejected(limited)) == {"body_too_large": 1}


def status_message_any(resp: Any) -> str:
    status = status_pb2.Status()
    status.ParseFromString(resp.body)
    return str(status.message)


def test_gzip_bomb_is_413(limited: Any) -> None:
    bomb = gzip.compress(b"\x00" * (4 * MAX_DECOMPRESSED))
    assert len(bomb) < 2048
    before = rejected(limited)
    resp = limited.otlp("/v1/traces", bomb, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert resp.status == 413, resp
    assert delta(before, rejected(limited)) == {"body_too_large": 1}
    assert limited.alive()


def test_corrupt_gzip_is_400(limited: Any) -> None:
    request, _ = trace_request("errors", "corrupt", [0.1])
    body = gzip.compress(request.SerializeToString())
    corrupt = body[:10] + bytes(b ^ 0x55 for b in body[10:-8]) + body[-8:]
    before = rejected(limited)
    resp = limited.otlp("/v1/traces", corrupt, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert resp.status == 400, resp
    assert "gzip" in status_message(resp)
    assert delta(before, rejected(limited)) == {"malformed": 1}


# ---------------------------------------------------------------------------------------------------------
# Acceptance.


def test_protobuf_body_is_accepted_with_an_empty_response(limited: Any) -> None:
    request, ids = trace_request("errors", "plain", [0.01 * (i + 1) for i in range(20)])
    resp = limited.otlp("/v1/traces", request.SerializeToString(), PROTOBUF)
    assert resp.status == 200 and resp.content_type == "application/x-protobuf", resp
    answer = ExportTraceServiceResponse()
    answer.ParseFromString(resp.body)
    assert not answer.HasField("partial_success"), answer
    doc = limited.wait_value("errors", "latency_p95_seconds", "workload=plain", time.time())
    assert doc["items"][0]["metricLabels"]["trace_id"] in ids


def test_gzip_protobuf_body_is_accepted(limited: Any) -> None:
    latencies = [0.01 * (i + 1) for i in range(100)]
    request, ids = trace_request("errors", "gzipped", latencies)
    resp = limited.otlp("/v1/traces", gzip.compress(request.SerializeToString()),
                        {**PROTOBUF, "Content-Encoding": "gzip"})
    assert resp.status == 200, resp
    doc = limited.wait_value("errors", "latency_p95_seconds", "workload=gzipped", time.time())
    item = doc["items"][0]
    assert float(parse_quantity(item["value"])) == pytest.approx(np.percentile(latencies, 95), rel=0.01)
    assert item["metricLabels"]["trace_id"] in ids


def test_gzip_body_between_the_two_limits_is_accepted(limited: Any) -> None:
    # Compressed well under max_body_bytes, decompressed above it but under max_decompressed_bytes.
    request, _ = trace_request("errors", "gzip-large", [0.05] * 1000)
    raw = request.SerializeToString()
    assert MAX_BODY < len(raw) < MAX_DECOMPRESSED
    resp = limited.otlp("/v1/traces", gzip.compress(raw), {**PROTOBUF, "Content-Encoding": "gzip"})
    assert resp.status == 200, resp


def test_sdk_gzip_compression_is_accepted(limited: Any, sender: Any) -> None:
    # The SDK's exporter records the outcome; SpanSender fails when any batch was not exported.
    sent = sender.send("errors", "sdk-gzip", [0.02] * 50, gzip=True)
    doc = limited.wait_value("errors", "request_rate", "workload=sdk-gzip", sent.sent_at)
    item = doc["items"][0]
    assert float(parse_quantity(item["value"])) * item["window"] == pytest.approx(50, abs=1e-3)


def test_otlp_json_with_hex_ids_is_accepted_and_served(limited: Any) -> None:
    latencies = [0.005 * (i + 1) for i in range(60)]
    body, ids = json_trace_request("errors", "json-client", latencies, route="/api/{id}")
    resp = limited.otlp("/v1/traces", body, JSON_CT)
    assert resp.status == 200, resp
    assert resp.content_type == "application/json", resp
    answer = resp.json()
    assert "partialSuccess" not in answer, answer
    doc = limited.wait_value("errors", "latency_p95_seconds", "workload=json-client", time.time())
    item = doc["items"][0]
    assert item["metricLabels"]["trace_id"] in ids, item  # the hex id round-trips unchanged
    assert item["metricLabels"]["route"] == "api_id", item
    assert float(parse_quantity(item["value"])) == pytest.approx(np.percentile(latencies, 95), rel=0.01)


def test_partial_success_counts_rejected_spans_by_reason(limited: Any) -> None:
    good, _ = trace_request("errors", "partial", [0.01] * 5)
    nameless, _ = trace_request("errors", None, [0.01] * 3)
    backwards, _ = trace_request("errors", "partial", [-0.01] * 2)
    request = ExportTraceServiceRequest(resource_spans=[
        *good.resource_spans, *nameless.resource_spans, *backwards.resource_spans])
    before, before_accepted = rejected(limited), accepted(limited)
    resp = limited.otlp("/v1/traces", request.SerializeToString(), PROTOBUF)
    assert resp.status == 200, resp
    answer = ExportTraceServiceResponse()
    answer.ParseFromString(resp.body)
    assert answer.partial_success.rejected_spans == 5, answer
    assert "missing_workload" in answer.partial_success.error_message, answer
    assert delta(before, rejected(limited)) == {"missing_workload": 3, "negative_duration": 2}
    assert accepted(limited) - before_accepted == 5


# ---------------------------------------------------------------------------------------------------------
# Good traffic keeps flowing through bad traffic.


def test_good_sdk_traffic_is_all_counted_while_bad_requests_are_refused(limited: Any, sender: Any) -> None:
    rng = np.random.default_rng(7)
    batches = [[float(v) for v in rng.lognormal(np.log(0.08), 0.6, 100)] for _ in range(6)]
    good_spans = sum(len(b) for b in batches)
    before, before_accepted = rejected(limited), accepted(limited)

    failures: list[BaseException] = []
    sent: list[Any] = []

    def good_traffic() -> None:
        try:
            for latencies in batches:
                sent.append(sender.send("errors", "steady", latencies, batch_size=50))
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    small, _ = trace_request("errors", "bad", [0.1])
    big, _ = trace_request("errors", "bad", [0.1] * 1200)
    bad_requests = [
        ({**PROTOBUF}, b"\x0a\x05abc", 400, "malformed"),
        ({**JSON_CT}, b"{", 400, "malformed"),
        ({"Content-Type": "text/plain"}, small.SerializeToString(), 415, "unsupported_media_type"),
        ({**PROTOBUF, "Content-Encoding": "deflate"}, small.SerializeToString(), 415,
         "unsupported_media_type"),
        ({**PROTOBUF}, big.SerializeToString(), 413, "body_too_large"),
        ({**PROTOBUF, "Content-Encoding": "gzip"}, gzip.compress(bytes(4 * MAX_DECOMPRESSED)), 413,
         "body_too_large"),
    ]
    thread = threading.Thread(target=good_traffic, name="good-otlp-traffic")
    thread.start()
    expected: Counter[str] = Counter()
    rounds = 0
    try:
        while thread.is_alive() or rounds < 2:
            for headers, body, code, reason in bad_requests:
                resp = limited.otlp("/v1/traces", body, headers)
                assert resp.status == code, (headers, resp)
                expected[reason] += 1
            rounds += 1
    finally:
        thread.join(60)
    assert not thread.is_alive()
    assert not failures, failures
    assert len(sent) == len(batches)

    assert accepted(limited) - before_accepted == good_spans
    assert delta(before, rejected(limited)) == dict(expected)
    assert limited.alive()

    doc = limited.wait_value("errors", "request_rate", "workload=steady", max(b.sent_at for b in sent))
    rate = doc["items"][0]
    assert float(parse_quantity(rate["value"])) * rate["window"] == pytest.approx(good_spans, abs=1e-3)
    all_latencies = [s.seconds for b in sent for s in b.spans]
    p95 = limited.wait_value("errors", "latency_p95_seconds", "workload=steady")["items"][0]
    assert float(parse_quantity(p95["value"])) == pytest.approx(np.percentile(all_latencies, 95), rel=0.01)
    assert p95["metricLabels"]["trace_id"] in {s.trace_id for b in sent for s in b.spans}


def test_every_refusal_is_logged_with_its_reason(limited: Any) -> None:
    limited.otlp("/v1/traces", b"\x0a\x05abc", PROTOBUF)
    events = [e for e in limited.log_events() if e.get("event") == "otlp_refused"]
    assert events, limited.stderr_tail()
    assert {e["reason"] for e in events} >= {"malformed"}
    assert all(e.get("detail") and e.get("code") in (400, 413, 415) for e in events), events


@pytest.mark.parametrize("route_value", [
    AnyValue(int_value=404), AnyValue(bool_value=True), AnyValue(double_value=1.5),
    AnyValue(bytes_value=b"\xff\x00/raw"), AnyValue(string_value=""), AnyValue(string_value="/" * 2000),
    AnyValue(), AnyValue(array_value={"values": [AnyValue(string_value="/a")]}),
    AnyValue(kvlist_value={"values": [_kv("k", "v")]}),
], ids=["int", "bool", "double", "bytes", "empty", "long", "unset", "array", "kvlist"])
def test_odd_route_attributes_never_break_the_receiver(limited: Any, route_value: AnyValue) -> None:
    request, _ = trace_request("errors", "odd-routes", [0.01, 0.02])
    for span in request.resource_spans[0].scope_spans[0].spans:
        del span.attributes[:]
        span.attributes.append(KeyValue(key="http.route", value=route_value))
    before = accepted(limited) + sum(rejected(limited).values())
    resp = limited.otlp("/v1/traces", request.SerializeToString(), PROTOBUF)
    assert resp.status == 200, resp
    answer = ExportTraceServiceResponse()
    answer.ParseFromString(resp.body)
    # Every span is accounted for: accepted, or rejected with a reason.
    assert accepted(limited) + sum(rejected(limited).values()) - before == 2, answer
