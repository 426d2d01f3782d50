"""What counts as a failure for each input surface, the HTTP client of a running adapter, and the
good-traffic check.

Three kinds of failure, kept apart because they mean different things:

* a **crash**: an exception other than the surface's documented error escapes (``BadSelector`` for a
  selector, ``ValueError`` for a quantity, ``ConfigError`` for a config file, ``BadRequest`` and the other
  ``RequestError`` subclasses for OTLP bodies and API requests), or the server drops a connection without
  an answer;
* a **server error**: an HTTP answer of 500 or more, which the HPA reads as "the adapter is broken";
* a **bad answer**: no exception and no 5xx, but a promise broken: a refusal without the documented
  ``Status`` (Kubernetes API) or ``google.rpc.Status`` (OTLP) body saying why, a 200 whose value is not a
  quantity Go can parse, a canonical form that does not parse back to the same thing.

Functions here return ``None`` when all is well and a one-line description otherwise; they let an
undocumented exception propagate, so the caller decides whether that is a crash (the fuzz engine counts
it) or a test failure (pytest shows it).
"""

from __future__ import annotations

import http.client
import json
import math
import ssl
import time
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2  # type: ignore[import-untyped]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from adapter.api import wire
from adapter.config import settings_from_bytes
from adapter.cpu import CpuSignals
from adapter.errors import BadRequest, BadSelector, ConfigError, RequestError
from adapter.model import label_value
from adapter.provider import MetricsProvider
from adapter.quantity import canonical_quantity, format_quantity, milli_value, parse_quantity
from adapter.selector import Selector, parse_selector
from adapter.sources.otlp_ingest import IngestSettings, OtlpIngestor
from adapter.store import StoreSettings, WindowStore
from tests.fuzz import inputs
from tests.helpers_otlp import spans_of, trace_id, trace_request
from tests.integration.process import Response, exchange

#: Named in ConfigError messages; nothing is read from it.
CONFIG_PATH = Path("fuzz-config.yaml")
#: The mirror's clock: fixed, so what it ingested stays in its open slice and every run is repeatable.
MIRROR_NOW = 1_700_000_100.0
#: Label sets every parsed selector is matched against (absent keys, integers for > and <, the keyword key).
SAMPLE_LABELS: tuple[Mapping[str, str], ...] = ({}, {"workload": "checkout", "route": "cart_id"},
                                                {"a": "7", "in": "notin", "x/y/z": "1"})
#: Reasons of the documented refusals of the metrics API (anything else is a bad answer).
API_REASONS = frozenset({"BadRequest", "NotFound"})
OTLP_REFUSALS = frozenset({400, 413, 415})
#: Where Go's canonical quantity stops keeping the value (see :func:`quantity_problem`).
QUANTITY_EXACT_BELOW = Decimal("1e21")
PROTOBUF, JSON_TYPE = "application/x-protobuf", "application/json"


@dataclass(frozen=True)
class Answer:
    """The status of one HTTP exchange, and what was wrong with it (None: as documented)."""

    status: int
    problem: str | None = None


# ---------------------------------------------------------------------------------------------------------
# Parsers, in process.


def parse_checked(text: str) -> tuple[Selector | None, str | None]:
    """``(selector, None)``; ``(None, None)`` when refused with ``BadSelector``; a problem otherwise.

    The promise checked: ``str(selector)`` is a canonical text that parses back equal.
    """
    try:
        selector = parse_selector(text)
    except BadSelector:
        return None, None
    canonical = str(selector)
    try:
        again = parse_selector(canonical)
    except BadSelector as exc:
        return selector, f"canonical text {canonical!r} of {text!r} is refused: {exc}"
    if again != selector:
        return selector, f"canonical text {canonical!r} of {text!r} parses back as {str(again)!r}"
    for labels in SAMPLE_LABELS:
        selector.matches(labels)
    selector.equalities()
    return selector, None


def quantity_problem(text: str) -> str | None:
    """Parsing, the canonical form and the milli value agree on what is refused; the canonical form is
    stable and, below 1e21, parses back to the same value (above, Go prints a decimal-SI exponent it has
    no suffix for as nothing at all: a documented quirk of ``adapter.quantity``); a number Python reads
    is formatted to a quantity that parses to within half a unit."""
    try:
        value = parse_quantity(text)
    except ValueError:
        for other in (canonical_quantity, milli_value):
            try:
                other(text)
            except ValueError:
                continue
            return f"{other.__name__} accepts {text!r}, which parse_quantity refuses"
        return format_problem(text)
    canonical = canonical_quantity(text)
    milli_value(text)
    try:
        again = canonical_quantity(canonical)
    except ValueError:
        return f"canonical form {canonical!r} of {text!r} is refused"
    if again != canonical:
        return f"canonical form {canonical!r} of {text!r} is not stable: it becomes {again!r}"
    if value.copy_abs() < QUANTITY_EXACT_BELOW and parse_quantity(canonical) != value:
        return f"canonical form {canonical!r} of {text!r} is {parse_quantity(canonical)}, not {value}"
    return format_problem(text)


def format_problem(text: str) -> str | None:
    """``format_quantity`` of the float ``text`` spells (if any): refused only when not finite."""
    try:
        number = float(text)
    except ValueError:
        return None
    try:
        formatted = format_quantity(number)
    except ValueError:
        return None if not math.isfinite(number) else f"format_quantity({number!r}) refuses a finite number"
    if not math.isfinite(number):
        return f"format_quantity({number!r}) gives {formatted!r} for a number that is not finite"
    try:
        back = parse_quantity(formatted)
    except ValueError:
        return f"format_quantity({number!r}) gives {formatted!r}, which Go refuses"
    unit = Decimal("1e-9") if 0 < abs(number) < 1e-3 else Decimal("1e-6")
    if abs(back - Decimal(number)) > unit / 2:
        return f"format_quantity({number!r}) gives {formatted!r}, more than half a unit away"
    return None


def config_problem(data: bytes) -> str | None:
    """A config file is either settings or a ``ConfigError`` naming the key; nothing else."""
    try:
        settings_from_bytes(data, CONFIG_PATH)
    except ConfigError as exc:
        if not str(exc):
            return "ConfigError without a message"
    return None


# ---------------------------------------------------------------------------------------------------------
# The mirror: the adapter's ingest and read path in this process, where a coverage-guided fuzzer sees it.


def value_list_problem(doc: Any) -> str | None:
    """A 200 of the metrics API: one item per selector, with a value an HPA (Go) can parse."""
    if not isinstance(doc, dict) or doc.get("kind") != "ExternalMetricValueList":
        return f"200 without an ExternalMetricValueList: {str(doc)[:200]}"
    items = doc.get("items")
    if not isinstance(items, list) or len(items) != 1:
        return f"ExternalMetricValueList with {len(items) if isinstance(items, list) else items!r} items"
    value = items[0].get("value")
    try:
        parse_quantity(value)
    except (ValueError, TypeError):
        return f"served value {value!r} is not a Kubernetes quantity"
    return None


class Mirror:
    """An ingestor, store and provider like the service's, on a fixed clock, holding the seeds' data."""

    def __init__(self) -> None:
        self.store = WindowStore(StoreSettings(window_seconds=30, slice_seconds=1))
        self.cpu = CpuSignals()
        self.ingestor = OtlpIngestor(self.store, IngestSettings(), cpu=self.cpu)
        self.provider = MetricsProvider(self.store, lambda: MIRROR_NOW, self.cpu)
        for is_json in (False, True):
            for seed in inputs.otlp_seeds(is_json):
                self.ingest(seed, is_json)

    def ingest(self, data: bytes, is_json: bool) -> str | None:
        """One framed OTLP input, as the receiver would hand it over; its answer must decode."""
        signal, body, gzipped = inputs.unframe(data)
        if gzipped:
            unzipped = inputs.gunzip_capped(body, 1 << 20)
            if unzipped is None:
                return None  # the receiver refuses it before the ingestor sees it
            body = unzipped
        ingest = self.ingestor.ingest_traces if signal == inputs.TRACES else self.ingestor.ingest_metrics
        try:
            result, payload = ingest(body, is_json, MIRROR_NOW)
        except BadRequest as exc:
            return None if str(exc) else "BadRequest without a message"
        rejected, problem = response_rejections(payload, signal, is_json)
        if problem is None and rejected != result.rejected:
            problem = f"partial_success says {rejected} rejected, the ingestor counted {result.rejected}"
        return problem

    def read(self, namespace: str, metric: str, selector: Selector) -> str | None:
        """What the API would serve, rendered as it would be: a documented refusal or a parseable value."""
        try:
            reading = self.provider.reading(namespace, metric, selector)
        except RequestError:
            return None
        return value_list_problem(json.loads(wire.external_metric_value_list(reading)))


# ---------------------------------------------------------------------------------------------------------
# Answers over HTTP.


def response_rejections(payload: bytes, signal: str, is_json: bool) -> tuple[int, str | None]:
    """``(rejected count, problem)`` of an ``Export*ServiceResponse`` in the request's encoding."""
    message = ExportTraceServiceResponse() if signal == inputs.TRACES else ExportMetricsServiceResponse()
    try:
        if is_json:
            json_format.Parse(payload, message)
        else:
            message.ParseFromString(payload)
    except (json_format.ParseError, DecodeError, ValueError) as exc:
        return 0, f"the success answer is not an {type(message).__name__}: {exc}"
    partial = message.partial_success
    rejected = partial.rejected_spans if signal == inputs.TRACES else partial.rejected_data_points
    if rejected and not partial.error_message:
        return rejected, "partial_success without an error_message"
    return rejected, None


def otlp_answer(resp: Response, signal: str, is_json: bool) -> Answer:
    """200 with an ``Export*ServiceResponse``, or 400/413/415 with a ``google.rpc.Status`` saying why."""
    expected_type = JSON_TYPE if is_json else PROTOBUF
    if resp.status >= 500:
        return Answer(resp.status, f"HTTP {resp.status}: {resp.body[:300]!r}")
    if resp.content_type != expected_type:
        return Answer(resp.status, f"HTTP {resp.status} answered {resp.content_type!r}, not {expected_type}")
    if resp.status == 200:
        return Answer(200, response_rejections(resp.body, signal, is_json)[1])
    if resp.status not in OTLP_REFUSALS:
        return Answer(resp.status, f"undocumented status {resp.status}: {resp.body[:200]!r}")
    try:
        if is_json:
            message = json.loads(resp.body).get("message")
        else:
            message = status_pb2.Status.FromString(resp.body).message
    except (ValueError, AttributeError, DecodeError) as exc:
        return Answer(resp.status, f"HTTP {resp.status} body is not a google.rpc.Status: {exc}")
    return Answer(resp.status, None if message else f"HTTP {resp.status} without a message")


def api_answer(resp: Response) -> Answer:
    """200 with a value list, or 400/404 with a Kubernetes ``Status`` whose code and reason say why."""
    if resp.status >= 500:
        return Answer(resp.status, f"HTTP {resp.status}: {resp.body[:300]!r}")
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return Answer(resp.status, f"HTTP {resp.status} without a JSON body: {resp.body[:200]!r}")
    if resp.status == 200:
        return Answer(200, value_list_problem(doc))
    if not isinstance(doc, dict) or doc.get("kind") != "Status" or doc.get("code") != resp.status:
        return Answer(resp.status, f"HTTP {resp.status} without a matching Status: {resp.body[:200]!r}")
    if doc.get("reason") not in API_REASONS or not doc.get("message"):
        return Answer(resp.status, f"HTTP {resp.status} reason {doc.get('reason')!r}: {resp.body[:200]!r}")
    return Answer(resp.status)


class Client:
    """Keep-alive connections to one running adapter: the OTLP, API (HTTPS) and operations ports.

    A connection the server closed between requests is opened again once; a second failure propagates,
    because a request that kills its connection twice is a crash of the server's request handling.
    """

    def __init__(self, api_port: int, otlp_port: int, ops_port: int, cert_file: Path,
                 timeout: float = 30.0) -> None:
        self.ports = {"api": api_port, "otlp": otlp_port, "ops": ops_port}
        self.timeout = timeout
        self._tls = ssl.create_default_context(cafile=str(cert_file))
        self._conns: dict[str, http.client.HTTPConnection] = {}

    def _connection(self, which: str) -> http.client.HTTPConnection:
        conn = self._conns.get(which)
        if conn is None:
            if which == "api":
                conn = http.client.HTTPSConnection("127.0.0.1", self.ports[which], timeout=self.timeout,
                                                   context=self._tls)
            else:
                conn = http.client.HTTPConnection("127.0.0.1", self.ports[which], timeout=self.timeout)
            self._conns[which] = conn
        return conn

    def request(self, which: str, path: str, *, method: str = "GET", body: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        for attempt in (1, 2):
            conn = self._connection(which)
            try:
                return exchange(conn, path, dict(headers or {}), method=method, body=body)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                conn.close()
                del self._conns[which]
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def otlp(self, signal: str, body: bytes, is_json: bool, gzipped: bool = False) -> Response:
        headers = {"Content-Type": JSON_TYPE if is_json else PROTOBUF}
        if gzipped:
            headers["Content-Encoding"] = "gzip"
        return self.request("otlp", f"/v1/{signal}", method="POST", body=body, headers=headers)

    def api(self, path: str) -> Response:
        return self.request("api", path)

    def ops(self, path: str) -> Response:
        return self.request("ops", path)

    def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()


# ---------------------------------------------------------------------------------------------------------
# Good traffic: what every batch of hostile input must leave working.

GOOD_LATENCY = 0.2
GOOD_SPANS = 20


def good_traffic(client: Client, tag: str, timeout: float = 10.0) -> str | None:
    """Send SERVER spans of a fresh workload and read their p95 and trace id back from the metrics API."""
    workload = label_value(f"good-{tag}", "good")
    first = (zlib.crc32(tag.encode()) & 0xFFFFFF) << 8
    request = trace_request([({"k8s.namespace.name": inputs.GOOD_NAMESPACE, "k8s.deployment.name": workload},
                              spans_of([GOOD_LATENCY] * GOOD_SPANS, first=first, route="/good"))])
    sent = {trace_id(first + i).hex() for i in range(GOOD_SPANS)}
    resp = client.otlp(inputs.TRACES, request.SerializeToString(), is_json=False)
    if resp.status != 200 or response_rejections(resp.body, inputs.TRACES, False) != (0, None):
        return f"good spans of {workload} refused: {resp!r}"
    path = inputs.metric_path(inputs.GOOD_NAMESPACE, "latency_p95_seconds", f"workload={workload}")
    deadline = time.monotonic() + timeout
    while True:
        resp = client.api(path)
        if resp.status == 200:
            break
        if resp.status != 404 or time.monotonic() > deadline:
            return f"p95 of {workload} not served: {resp!r}"
        time.sleep(0.05)
    item = resp.json()["items"][0]
    value = float(parse_quantity(item["value"]))
    if abs(value - GOOD_LATENCY) > 0.02 * GOOD_LATENCY or item["metricLabels"].get("trace_id") not in sent:
        return f"p95 of {workload} is {item}, expected {GOOD_LATENCY} s and one of the trace ids sent"
    return None


SURVEYED_METRICS = ("latency_p95_seconds", "error_ratio", "dual_signal_ratio")


def survey(client: Client, metrics: Iterable[str] = SURVEYED_METRICS, limit: int = 12) -> list[str]:
    """Everything the fuzzed data reached must still be readable: ``/debug/workloads`` (JSON and HTML),
    ``/metrics``, and the metrics API for a sample of the workloads it lists."""
    problems = []
    for path in ("/debug/workloads?format=html", "/metrics"):
        resp = client.ops(path)
        if resp.status != 200:
            problems.append(f"ops {path}: {resp!r}")
    listing = client.ops("/debug/workloads?format=json")
    if listing.status != 200:
        return [*problems, f"ops /debug/workloads?format=json: {listing!r}"]
    for row in listing.json().get("workloads", [])[:limit]:
        namespace, workload = str(row.get("namespace")), str(row.get("workload"))
        for metric in metrics:
            path = inputs.metric_path(quote(namespace, safe=""), metric, f"workload={workload}")
            answer = api_answer(client.api(path))
            if answer.problem:
                problems.append(f"{metric} of {namespace}/{workload}: {answer.problem}")
    return problems


def parsers_right() -> str | None:
    """The parsers still give the known answers (the in-process targets' good traffic)."""
    for text, canonical in inputs.quantity_cases():
        try:
            got: str | None = canonical_quantity(text)
        except ValueError:
            got = None
        if got != canonical:
            return f"canonical_quantity({text!r}) is {got!r}, kubectl says {canonical!r}"
    if str(parse_selector(" workload in (b,a), route!=x")) != "route!=x,workload in (a,b)":
        return "parse_selector no longer gives the canonical form of a known selector"
    settings = settings_from_bytes(b"store: {window_seconds: 30, slice_seconds: 5}\n", CONFIG_PATH)
    if (settings.store.window_seconds, settings.store.slice_seconds) != (30, 5):
        return f"a known config reads as {settings.store}"
    return None
