"""Every document the external metrics API serves matches the contract's JSON schemas (Draft 2020-12).

The API application (``adapter.api.routes.build_api_app``) runs in-process on aiohttp's test server, in
front of a real :class:`~adapter.provider.MetricsProvider` and :class:`~adapter.store.WindowStore` filled
directly with ``add_durations`` and driven by an injected clock, so no test waits for a slice to close.
Error paths are checked as carefully as values: the HPA and the aggregator decode every ``Status``.

The second half checks the wire module on its own: timestamp format, integer window, quantity grammar,
one item, bounded label values.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st

from adapter.api import wire
from adapter.api.routes import build_api_app
from adapter.cpu import CpuSignals
from adapter.model import Exemplar, Reading, SeriesKey
from adapter.policy import REASONS, PolicySettings
from adapter.policy_config import CanaryPair, PolicyConfig
from adapter.provider import MetricsProvider
from adapter.quantity import parse_quantity
from adapter.store import StoreSettings, WindowStore
from adapter.telemetry import Telemetry

PREFIX = "/apis/external.metrics.k8s.io/v1beta1"
#: The served metric names: a contract HPAs in clusters depend on (DESIGN section 5).
WINDOW_METRICS = ["latency_p50_seconds", "latency_p95_seconds", "latency_p99_seconds", "request_rate",
                  "error_ratio"]
POLICY_METRICS = ["cpu_utilization", "cpu_utilization_ratio", "latency_p95_ratio", "dual_signal_ratio",
                  "latency_p95_baseline_ratio"]
METRICS = WINDOW_METRICS + POLICY_METRICS
QUANTITY_RE = re.compile(r"^[+-]?[0-9]*(\.[0-9]*)?([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
TIMESTAMP_RE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
#: A slice boundary, so the times below are easy to reason about (slices of 1 s, window of 10 s).
T0 = 1_700_000_000.0
#: First hex digit of the made-up trace ids of each route.
HEX_TAG = {"cart": "c", "pay": "d"}


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0 + 0.25)


@pytest.fixture
def store() -> WindowStore:
    return WindowStore(StoreSettings(window_seconds=10, slice_seconds=1))


@pytest.fixture
async def client(store: WindowStore, clock: FakeClock) -> AsyncIterator[TestClient[Any, Any]]:
    app = build_api_app(MetricsProvider(store, clock), Telemetry(store))
    async with TestClient(TestServer(app)) as c:
        yield c


def fill(store: WindowStore, clock: FakeClock) -> dict[str, list[float]]:
    """Two routes of shop/checkout and one series in another namespace, then close their slice."""
    rng = np.random.default_rng(3)
    data = {
        "cart": list(rng.lognormal(np.log(0.05), 0.5, 300)),
        "pay": list(rng.lognormal(np.log(0.2), 0.4, 100)),
    }
    for route, values in data.items():
        tag = HEX_TAG[route]
        seconds = np.asarray(values)
        order = np.argsort(seconds)
        candidates = [Exemplar(float(seconds[i]), f"{tag}{i:031x}") for i in order[-8:]]
        store.add_durations(SeriesKey("shop", "checkout", route), seconds, errors=len(values) // 10,
                            candidates=candidates, now=clock.now, error_trace_id=f"e{tag}".ljust(32, "0"))
    store.add_durations(SeriesKey("other", "checkout"), np.array([1.0, 2.0]), 0, [Exemplar(2.0, "f" * 32)],
                        now=clock.now)
    clock.now += 1.0  # the slice holding the data closes
    return data


async def get(client: TestClient[Any, Any], path: str, method: str = "GET") -> tuple[int, Any]:
    resp = await client.request(method, path)
    body = await resp.read()
    assert resp.content_type == "application/json", (resp.status, resp.content_type, body[:300])
    return resp.status, json.loads(body)


def value_path(namespace: str, metric: str, selector: str | None) -> str:
    from urllib.parse import quote

    path = f"{PREFIX}/namespaces/{namespace}/{metric}"
    return path if selector is None else f"{path}?labelSelector={quote(selector, safe='')}"


# ---------------------------------------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("metric", WINDOW_METRICS)
@pytest.mark.parametrize("selector", ["workload=checkout", "route=pay", "workload in (checkout),route!=pay",
                                      None, "route", "workload==checkout"])
async def test_values_match_the_schema(client: TestClient[Any, Any], store: WindowStore, clock: FakeClock,
                                       schemas: Any, metric: str, selector: str | None) -> None:
    fill(store, clock)
    status, doc = await get(client, value_path("shop", metric, selector))
    assert status == 200, doc
    schemas.check("value_list", doc)
    [item] = doc["items"]
    assert item["metricName"] == metric
    assert item["timestamp"] == "2023-11-14T22:13:21Z"  # end of the closed slice: T0 + 1
    assert item["window"] == 1
    assert QUANTITY_RE.match(item["value"]) and item["value"] not in ("", "+", "-", ".")


CANARY_POLICY = PolicyConfig(defaults=PolicySettings(min_samples=10),
                             canaries=(CanaryPair("shop", "checkout-canary", "checkout"),))


@pytest.mark.parametrize("metric", POLICY_METRICS)
async def test_policy_values_match_the_schema(store: WindowStore, clock: FakeClock, schemas: Any,
                                              metric: str) -> None:
    cpu = CpuSignals()
    provider = MetricsProvider(store, clock, cpu, lambda: CANARY_POLICY)
    for pod in ("a", "b"):
        cpu.put_pod("shop", "checkout", pod, usage_cores=0.2, request_cores=0.5, observed_at=clock.now)
    fill(store, clock)
    store.add_durations(SeriesKey("shop", "checkout-canary", "cart"), np.full(50, 0.06), 0,
                        [Exemplar(0.06, "a" * 32)], now=clock.now - 1.0)
    workload = "checkout-canary" if metric == "latency_p95_baseline_ratio" else "checkout"
    async with TestClient(TestServer(build_api_app(provider, Telemetry(store)))) as client:
        status, doc = await get(client, value_path("shop", metric, f"workload={workload}"))
    assert status == 200, doc
    schemas.check("value_list", doc)
    [item] = doc["items"]
    assert item["metricName"] == metric
    assert item["metricLabels"]["workload"] == workload
    assert QUANTITY_RE.match(item["value"]) and float(parse_quantity(item["value"])) > 0
    if metric == "dual_signal_ratio":
        assert item["metricLabels"]["reason"] in REASONS
        assert len(item["metricLabels"]["trace_id"]) == 32


async def test_values_over_time(client: TestClient[Any, Any], store: WindowStore, clock: FakeClock,
                                schemas: Any) -> None:
    data = fill(store, clock)
    everything = data["cart"] + data["pay"]
    clock.now += 3.0  # the data arrived at T0 + 0.25; the tick is T0 + 4: 3.75 s covered
    status, doc = await get(client, value_path("shop", "request_rate", "workload=checkout"))
    assert status == 200, doc
    schemas.check("value_list", doc)
    [item] = doc["items"]
    assert item["window"] == 4 and item["timestamp"] == "2023-11-14T22:13:24Z", item
    assert float(parse_quantity(item["value"])) == pytest.approx(len(everything) / 3.75, abs=1e-6)
    assert set(item["metricLabels"]) == {"workload", "trace_id", "error_trace_id"}, item

    status, doc = await get(client, value_path("shop", "latency_p95_seconds", "workload=checkout"))
    schemas.check("value_list", doc)
    [item] = doc["items"]
    assert float(parse_quantity(item["value"])) == pytest.approx(np.percentile(everything, 95), rel=0.01)
    assert re.fullmatch(r"[cd][0-9a-f]{31}", item["metricLabels"]["trace_id"]), item

    status, doc = await get(client, value_path("shop", "error_ratio", "route=pay"))
    schemas.check("value_list", doc)
    [item] = doc["items"]
    assert float(parse_quantity(item["value"])) == pytest.approx(0.1, abs=1e-6)
    labels = item["metricLabels"]
    assert (labels["workload"], labels["route"], labels["error_trace_id"]) == ("checkout", "pay",
                                                                                "ed".ljust(32, "0"))
    assert re.fullmatch(r"d[0-9a-f]{31}", labels["trace_id"]), item  # a request of route pay

    clock.now += 10.0  # the data has left the window: no value, never a made-up 0
    status, doc = await get(client, value_path("shop", "request_rate", "workload=checkout"))
    assert status == 404, doc
    schemas.check("status", doc)


# ---------------------------------------------------------------------------------------------------------
# Discovery.


async def test_resource_list_matches_the_schema_before_any_data(client: TestClient[Any, Any],
                                                                schemas: Any) -> None:
    status, doc = await get(client, PREFIX)
    assert status == 200
    schemas.check("resource_list", doc)
    assert sorted(r["name"] for r in doc["resources"]) == sorted(METRICS)


async def test_group_documents(client: TestClient[Any, Any]) -> None:
    status, groups = await get(client, "/apis")
    assert status == 200
    gv = {"groupVersion": "external.metrics.k8s.io/v1beta1", "version": "v1beta1"}
    assert groups == {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
        {"name": "external.metrics.k8s.io", "versions": [gv], "preferredVersion": gv}]}
    status, group = await get(client, "/apis/external.metrics.k8s.io")
    assert status == 200
    assert group == {"kind": "APIGroup", "apiVersion": "v1", "name": "external.metrics.k8s.io",
                     "versions": [gv], "preferredVersion": gv}


# ---------------------------------------------------------------------------------------------------------
# Every error path is a Status.


ERRORS: list[tuple[str, str, int, str, str]] = [
    # method, path, code, reason, a piece of the message
    ("GET", value_path("shop", "latency_p95_seconds", "workload=("), 400, "BadRequest", "workload=("),
    ("GET", value_path("shop", "latency_p95_seconds", "workload in (a"), 400, "BadRequest", "selector"),
    ("GET", value_path("shop", "latency_p95_seconds", "Workload=%"), 400, "BadRequest", "selector"),
    ("GET", value_path("shop", "latency_p95_seconds", "workload=(" + "x" * 5000), 400, "BadRequest", "limit"),
    ("GET", value_path("Bad_NS", "latency_p95_seconds", "workload=checkout"), 400, "BadRequest", "Bad_NS"),
    ("GET", value_path("shop", "latency_p42_seconds", "workload=checkout"), 404, "NotFound",
     "latency_p42_seconds"),
    ("GET", value_path("shop", "no-such-metric", None), 404, "NotFound", "no-such-metric"),
    ("GET", value_path("shop", "latency_p95_seconds", "workload=nothere"), 404, "NotFound",
     "workload=nothere"),
    ("GET", value_path("shop", "request_rate", "workload=checkout,!route"), 404, "NotFound", "!route"),
    ("GET", value_path("empty", "latency_p95_seconds", None), 404, "NotFound", "empty"),
    ("GET", value_path("other", "error_ratio", "workload=shop"), 404, "NotFound", "workload=shop"),
    ("GET", "/openapi/v2", 404, "NotFound", "/openapi/v2"),
    ("GET", "/openapi/v3", 404, "NotFound", "/openapi/v3"),
    ("GET", f"{PREFIX}/namespaces/shop", 404, "NotFound", "namespaces/shop"),
    ("GET", "/apis/custom.metrics.k8s.io/v1beta2", 404, "NotFound", "custom.metrics"),
    ("GET", "/", 404, "NotFound", "/"),
    ("POST", value_path("shop", "latency_p95_seconds", "workload=checkout"), 405, "MethodNotAllowed", "POST"),
    ("PUT", PREFIX, 405, "MethodNotAllowed", "PUT"),
    ("DELETE", "/apis", 405, "MethodNotAllowed", "DELETE"),
    ("PATCH", "/anything", 405, "MethodNotAllowed", "PATCH"),
    ("POST", "/healthz", 405, "MethodNotAllowed", "POST"),
]


@pytest.mark.parametrize("method,path,code,reason,needle", ERRORS,
                         ids=[f"{m} {p[-60:]}" for m, p, *_ in ERRORS])
async def test_every_error_is_a_status_matching_the_schema(
        client: TestClient[Any, Any], store: WindowStore, clock: FakeClock, schemas: Any,
        method: str, path: str, code: int, reason: str, needle: str) -> None:
    fill(store, clock)
    status, doc = await get(client, path, method)
    schemas.check("status", doc)
    assert (status, doc["code"], doc["reason"]) == (code, code, reason), doc
    assert needle in doc["message"], doc
    assert len(doc["message"]) < 1024, "user input in messages must be capped"
    assert "Traceback" not in doc["message"]


async def test_internal_errors_are_a_status_too(store: WindowStore, clock: FakeClock, schemas: Any) -> None:
    class Broken(MetricsProvider):
        def reading(self, *args: Any) -> Reading:
            raise RuntimeError("disk on fire /secret/path")

    app = build_api_app(Broken(store, clock), Telemetry(store))
    async with TestClient(TestServer(app)) as client:
        status, doc = await get(client, value_path("shop", "latency_p95_seconds", "workload=a"))
    assert status == 500
    schemas.check("status", doc)
    assert doc["reason"] == "InternalError" and "secret" not in doc["message"], doc


@pytest.mark.parametrize("path", ["/healthz", "/livez", "/readyz"])
async def test_probes_answer_ok(client: TestClient[Any, Any], path: str) -> None:
    resp = await client.get(path)
    assert resp.status == 200 and await resp.text() == "ok" and resp.content_type == "text/plain"


# ---------------------------------------------------------------------------------------------------------
# The wire module on its own.


def reading(value: float, **kw: Any) -> Reading:
    fields: dict[str, Any] = {"metric": "latency_p95_seconds", "value": value, "timestamp": T0,
                              "window_seconds": 60, "labels": {"workload": "checkout", "trace_id": "a" * 32}}
    fields.update(kw)
    return Reading(**fields)


@pytest.mark.parametrize("ts,text", [
    (0.0, "1970-01-01T00:00:00Z"),
    (T0, "2023-11-14T22:13:20Z"),
    (T0 + 0.999, "2023-11-14T22:13:20Z"),  # whole seconds: never rounded into the future
    (1_000_000_000.5, "2001-09-09T01:46:40Z"),
])
def test_timestamp_is_rfc3339_utc_whole_seconds(ts: float, text: str, schemas: Any) -> None:
    assert wire.rfc3339(ts) == text
    doc = json.loads(wire.external_metric_value_list(reading(0.2, timestamp=ts)))
    schemas.check("value_list", doc)
    assert doc["items"][0]["timestamp"] == text


@pytest.mark.parametrize("window,served", [(0, 1), (1, 1), (60, 60), (3600, 3600)])
def test_window_is_an_integer_of_at_least_one_second(window: int, served: int, schemas: Any) -> None:
    doc = json.loads(wire.external_metric_value_list(reading(0.2, window_seconds=window)))
    schemas.check("value_list", doc)
    assert doc["items"][0]["window"] == served and type(doc["items"][0]["window"]) is int


@pytest.mark.parametrize("value,text", [
    (0.2143, "214300u"), (0.214, "214m"), (3.0, "3"), (1.1, "1100m"), (0.0, "0"), (-0.0, "0"),
    (2e-7, "200n"), (123456.789, "123456789m"),
])
def test_value_is_a_quantity_keeping_milli_precision(value: float, text: str, schemas: Any) -> None:
    doc = json.loads(wire.external_metric_value_list(reading(value)))
    schemas.check("value_list", doc)
    assert doc["items"][0]["value"] == text


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_never_written(value: float) -> None:
    with pytest.raises(ValueError):
        wire.external_metric_value_list(reading(value))


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.floats(min_value=0, max_value=1e9, allow_nan=False),
                 st.floats(min_value=1e-12, max_value=1e-3)))
def test_any_value_round_trips_through_the_go_grammar(value: float) -> None:
    doc = json.loads(wire.external_metric_value_list(reading(value)))
    text = doc["items"][0]["value"]
    assert QUANTITY_RE.match(text), text
    parsed = parse_quantity(text)
    unit = Decimal("1e-9") if value < 1e-3 else Decimal("1e-6")
    assert abs(parsed - Decimal(value)) <= unit / 2 + Decimal("1e-18"), (value, text)


def test_one_item_and_label_values_bounded(schemas: Any) -> None:
    labels = {"workload": "w" * 300, "trace_id": "b" * 32}
    doc = json.loads(wire.external_metric_value_list(reading(0.5, labels=labels)))
    schemas.check("value_list", doc)
    assert len(doc["items"]) == 1
    item = doc["items"][0]
    assert set(item) == {"metricName", "metricLabels", "timestamp", "window", "value"}
    assert all(len(v) <= 128 for v in item["metricLabels"].values())
    assert item["metricLabels"]["trace_id"] == "b" * 32


def test_status_documents_match_the_schema(schemas: Any) -> None:
    for code, reason in [(400, "BadRequest"), (404, "NotFound"), (405, "MethodNotAllowed"),
                         (500, "InternalError"), (503, "ServiceUnavailable")]:
        doc = json.loads(wire.status(code, reason, "what went wrong"))
        schemas.check("status", doc)
        assert doc["metadata"] == {} and doc["status"] == "Failure"


def test_resource_list_document(schemas: Any) -> None:
    schemas.check("resource_list", json.loads(wire.api_resource_list(METRICS)))
    empty = json.loads(wire.api_resource_list([]))
    assert schemas.errors("resource_list", empty), "an empty resource list must not pass the schema"
