"""OTLP CPU metrics (``k8s.pod.cpu.usage``, ``k8s.container.cpu.request``) into :class:`CpuSignals`.

Requests are built with the official ``opentelemetry.proto`` messages (protobuf bytes and OTLP/JSON), as
an SDK or a Collector would send them, ingested at an injected ``now``, and read back from the registry.
"""

from __future__ import annotations

import math

import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse

import adapter.cpu
from adapter.cpu import CpuSignals, WorkloadCpu
from adapter.sources.otlp import JSON_TYPE, PROTOBUF, ReceiverSettings, build_otlp_app
from adapter.sources.otlp_cpu import CPU_REQUEST, CPU_USAGE
from adapter.sources.otlp_ingest import IngestResult, IngestSettings, OtlpIngestor
from adapter.store import WindowStore
from adapter.telemetry import Telemetry
from tests.helpers_otlp import (
    DELTA,
    SECOND_NS,
    explicit_metric,
    explicit_point,
    gauge_metric,
    metrics_request,
    metrics_request_of,
    number_point,
    otlp_json,
    sum_metric,
)
from tests.unit.test_otlp_ingest import metrics_response

NOW = 1_700_000_100.0  # ingest clock, unix seconds
T = 1_700_000_090 * SECOND_NS  # point time, 10 s before NOW
STALE = 60.0
WORKLOAD = {"k8s.namespace.name": "shop", "k8s.deployment.name": "checkout", "service.name": "checkout-svc"}


def pod_resource(pod: str, **extra: str) -> dict[str, str]:
    return {**WORKLOAD, "k8s.pod.name": pod, **extra}


def make(cpu: CpuSignals | None = None, **settings: object) -> tuple[OtlpIngestor, CpuSignals]:
    registry = CpuSignals() if cpu is None else cpu
    ingestor = OtlpIngestor(WindowStore(), IngestSettings(**settings), cpu=registry)  # type: ignore[arg-type]
    return ingestor, registry


def send(ingestor: OtlpIngestor, request: object, as_json: bool = False,
         now: float = NOW) -> tuple[IngestResult, ExportMetricsServiceResponse]:
    body = otlp_json(request) if as_json else request.SerializeToString()  # type: ignore[attr-defined]
    result, payload = ingestor.ingest_metrics(body, as_json, now)
    return result, metrics_response(payload, as_json)


def usage_of(pod: str, value: float, time_ns: int = T) -> object:
    """A request with one pod's usage (the pod as a resource attribute, as kubeletstats sends it)."""
    point = number_point(value, time_ns)
    return metrics_request(pod_resource(pod), [gauge_metric(CPU_USAGE, "{cpu}", [point])])


def reading(cpu: CpuSignals, namespace: str = "shop", workload: str = "checkout",
            now: float = NOW) -> WorkloadCpu | None:
    return cpu.reading(namespace, workload, now, STALE)


def pod_request(pod: str, containers: dict[str, float | int], time_ns: int = T) -> object:
    """One pod's resource with a request point per container (a Sum, as the conventions define it)."""
    points = [number_point(v, time_ns, {"k8s.container.name": c}) for c, v in containers.items()]
    return pod_resource(pod), [sum_metric(CPU_REQUEST, "{cpu}", points)]


# === usage and requests ====================================================================================


@pytest.mark.parametrize("as_json", [False, True])
def test_gauge_usage_and_summed_container_requests(as_json: bool) -> None:
    ingestor, cpu = make()
    request = metrics_request_of([
        (pod_resource("checkout-1"), [
            gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.3, T)]),
            sum_metric(CPU_REQUEST, "{cpu}", [number_point(0.4, T, {"k8s.container.name": "app"}),
                                              number_point(0.1, T, {"k8s.container.name": "proxy"})]),
        ]),
        (pod_resource("checkout-2"), [
            gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)]),
            sum_metric(CPU_REQUEST, "{cpu}", [number_point(0.5, T, {"k8s.container.name": "app"})]),
        ]),
    ])
    result, response = send(ingestor, request, as_json)
    assert (result.accepted, result.rejected, result.ignored) == (5, 0, 0)
    assert not response.HasField("partial_success")
    got = reading(cpu)
    assert got is not None
    assert got.usage_cores == pytest.approx(0.5)
    assert got.request_cores == pytest.approx(1.0)
    assert got.pods == 2
    assert got.observed_at == pytest.approx(T / 1e9)
    signal = cpu.signal("shop", "checkout", NOW, STALE)
    assert signal is not None and signal.utilization == pytest.approx(0.5)


@pytest.mark.parametrize("as_json", [False, True])
def test_int_points_are_cores(as_json: bool) -> None:
    ingestor, cpu = make()
    request = metrics_request(pod_resource("p"), [
        gauge_metric(CPU_USAGE, "{cpu}", [number_point(1, T)]),
        gauge_metric(CPU_REQUEST, "{cpu}", [number_point(2, T, {"k8s.container.name": "app"})]),
    ])
    result, _ = send(ingestor, request, as_json)
    assert result.accepted == 2
    got = reading(cpu)
    assert got is not None and (got.usage_cores, got.request_cores) == (1.0, 2.0)


@pytest.mark.parametrize("temporality", [DELTA, 2])
@pytest.mark.parametrize("monotonic", [False, True])
def test_sums_are_current_values_never_differenced(temporality: int, monotonic: bool) -> None:
    ingestor, cpu = make()
    reports = ((0.5, 1.0, T), (0.3, 1.0, T + 5 * SECOND_NS), (0.3, 1.0, T + 10 * SECOND_NS))
    for value, request_cores, t in reports:
        send(ingestor, metrics_request(pod_resource("p"), [
            sum_metric(CPU_USAGE, "{cpu}", [number_point(value, t, start_ns=T - SECOND_NS)],
                       temporality, monotonic),
            sum_metric(CPU_REQUEST, "{cpu}", [number_point(request_cores, t, {"k8s.container.name": "app"},
                                                           start_ns=T - SECOND_NS)], temporality, monotonic),
        ]))
    got = reading(cpu)
    assert got is not None
    assert (got.usage_cores, got.request_cores) == (0.3, 1.0)


def test_repeated_request_reports_are_not_double_counted() -> None:
    ingestor, cpu = make()
    usage_point = (pod_resource("p"), [gauge_metric(CPU_USAGE, "", [number_point(0.2, T)])])
    send(ingestor, metrics_request_of([usage_point, pod_request("p", {"app": 0.4, "proxy": 0.1})]))
    for i in range(3):  # every export reports every container again
        send(ingestor, metrics_request_of([pod_request("p", {"app": 0.4, "proxy": 0.1}, T + i)]))
    got = reading(cpu)
    assert got is not None and got.request_cores == pytest.approx(0.5)
    # One container reported alone changes only its own part of the pod's request.
    send(ingestor, metrics_request_of([pod_request("p", {"app": 0.9}, T + 10)]))
    got = reading(cpu)
    assert got is not None and got.request_cores == pytest.approx(1.0)


def test_the_same_container_twice_in_one_request_keeps_the_newest() -> None:
    ingestor, cpu = make()
    points = [number_point(0.7, T + 2 * SECOND_NS, {"k8s.container.name": "app"}),
              number_point(0.4, T + SECOND_NS, {"k8s.container.name": "app"})]
    send(ingestor, metrics_request(pod_resource("p"), [
        gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.1, T)]), sum_metric(CPU_REQUEST, "{cpu}", points)]))
    got = reading(cpu)
    assert got is not None and got.request_cores == pytest.approx(0.7)


def test_container_name_from_the_resource_and_unnamed_container() -> None:
    ingestor, cpu = make()
    send(ingestor, metrics_request_of([
        (pod_resource("p", **{"k8s.container.name": "app"}), [
            gauge_metric(CPU_REQUEST, "{cpu}", [number_point(0.25, T)])]),
        (pod_resource("p", **{"k8s.container.name": "proxy"}), [
            gauge_metric(CPU_REQUEST, "{cpu}", [number_point(0.05, T)])]),
        (pod_resource("q"), [gauge_metric(CPU_REQUEST, "{cpu}", [number_point(0.5, T)])]),  # no container
        (pod_resource("p"), [gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.1, T)])]),
        (pod_resource("q"), [gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.1, T)])]),
    ]))
    got = reading(cpu)
    assert got is not None and got.pods == 2
    assert got.request_cores == pytest.approx(0.8)


@pytest.mark.parametrize(("unit", "value", "cores"), [
    ("", 0.5, 0.5), ("1", 0.5, 0.5), ("{cpu}", 2, 2.0), ("m", 250, 0.25), ("{millicpu}", 250.0, 0.25),
    ("n", 250_000_000, 0.25),
])
def test_units(unit: str, value: float | int, cores: float) -> None:
    ingestor, cpu = make()
    send(ingestor, metrics_request(pod_resource("p"), [
        gauge_metric(CPU_USAGE, unit, [number_point(value, T)]),
        gauge_metric(CPU_REQUEST, unit, [number_point(value, T, {"k8s.container.name": "app"})]),
    ]))
    got = reading(cpu)
    assert got is not None
    assert got.usage_cores == pytest.approx(cores) and got.request_cores == pytest.approx(cores)


@pytest.mark.parametrize("as_json", [False, True])
def test_unknown_unit_is_rejected_with_reason(as_json: bool) -> None:
    ingestor, cpu = make()
    result, response = send(ingestor, metrics_request(pod_resource("p"), [
        gauge_metric(CPU_USAGE, "s", [number_point(0.5, T), number_point(0.5, T)])]), as_json)
    assert result.reasons == {"unknown_unit": 2}
    assert response.partial_success.rejected_data_points == 2
    assert cpu.all_workloads() == set()


# === pods, namespaces, workloads ==========================================================================


@pytest.mark.parametrize(("resource", "point", "pod"), [
    ({"k8s.pod.name": "res-pod", "service.instance.id": "inst"}, {"k8s.pod.name": "point-pod"}, "res-pod"),
    ({"service.instance.id": "inst"}, {"k8s.pod.name": "point-pod"}, "point-pod"),
    ({"service.instance.id": "inst"}, {"service.instance.id": "point-inst"}, "inst"),
    ({}, {"service.instance.id": "point-inst"}, "point-inst"),
])
def test_pod_name_fallbacks(resource: dict[str, str], point: dict[str, str], pod: str) -> None:
    ingestor, cpu = make()
    result, _ = send(ingestor, metrics_request({**WORKLOAD, **resource}, [
        gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T, point)]),
        gauge_metric(CPU_REQUEST, "{cpu}", [number_point(1.0, T, {**point, "k8s.container.name": "app"})]),
    ]))
    assert result.accepted == 2
    assert cpu._pods[("shop", "checkout")].keys() == {pod}


def test_many_pods_as_point_attributes_of_one_resource() -> None:
    """The demo's shape: one resource per workload, pods (and containers) as point attributes."""
    ingestor, cpu = make()
    usage_points = [number_point(0.1 * (i + 1), T, {"k8s.pod.name": f"c-{i}"}) for i in range(3)]
    request_points = [number_point(0.25, T, {"k8s.pod.name": f"c-{i}", "k8s.container.name": c})
                      for i in range(3) for c in ("app", "proxy")]
    result, _ = send(ingestor, metrics_request(WORKLOAD, [
        gauge_metric(CPU_USAGE, "{cpu}", usage_points), sum_metric(CPU_REQUEST, "{cpu}", request_points)]))
    assert result.accepted == 9
    got = reading(cpu)
    assert got is not None
    assert (got.pods, got.usage_cores, got.request_cores) == (3, pytest.approx(0.6), pytest.approx(1.5))


@pytest.mark.parametrize(("resource", "namespace", "workload"), [
    ({"k8s.namespace.name": "shop", "k8s.deployment.name": "checkout", "service.name": "x"}, "shop",
     "checkout"),
    ({"k8s.namespace.name": "shop", "service.name": "cart"}, "shop", "cart"),
    ({"k8s.deployment.name": "checkout"}, "fallback", "checkout"),
    ({"service.name": "Cart Service"}, "fallback", "Cart_Service"),  # a label value, as latency series
])
def test_namespace_and_workload_like_latency_series(resource: dict[str, str], namespace: str,
                                                    workload: str) -> None:
    ingestor, cpu = make(default_namespace="fallback")
    send(ingestor, metrics_request({**resource, "k8s.pod.name": "p"}, [
        gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)])]))
    assert cpu.all_workloads() == {(namespace, workload)}


@pytest.mark.parametrize("as_json", [False, True])
def test_refused_points_are_counted_and_reported(as_json: bool) -> None:
    ingestor, cpu = make()
    request = metrics_request_of([
        (pod_resource("p"), [gauge_metric(CPU_USAGE, "{cpu}", [
            number_point(-0.1, T), number_point(math.nan, T), number_point(math.inf, T),
            number_point(0.2, T),  # the good one
        ]), sum_metric(CPU_REQUEST, "{cpu}", [number_point(-1, T, {"k8s.container.name": "app"}),
                                             number_point(1.0, T, {"k8s.container.name": "app"})])]),
        ({**WORKLOAD}, [gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)])]),  # no pod
        ({"k8s.pod.name": "p"}, [gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)])]),  # no workload
    ])
    result, response = send(ingestor, request, as_json)
    assert result.reasons == {"invalid_value": 4, "missing_pod": 1, "missing_workload": 1}
    assert (result.accepted, result.rejected) == (2, 6)
    assert response.partial_success.rejected_data_points == 6
    message = response.partial_success.error_message
    assert "4 invalid_value" in message and "1 missing_pod" in message and "1 missing_workload" in message
    got = reading(cpu)
    assert got is not None and (got.usage_cores, got.request_cores) == (0.2, 1.0)


def test_point_without_a_value_is_refused() -> None:
    ingestor, cpu = make()
    metric = gauge_metric(CPU_USAGE, "{cpu}", [])
    metric.gauge.data_points.add(time_unix_nano=T)
    result, _ = send(ingestor, metrics_request(pod_resource("p"), [metric]))
    assert result.reasons == {"missing_value": 1}
    assert cpu.all_workloads() == set()


def test_no_recorded_value_points_are_ignored() -> None:
    ingestor, cpu = make()
    result, response = send(ingestor, metrics_request(pod_resource("p"), [
        gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.0, T, flags=1)])]))
    assert (result.accepted, result.rejected, result.ignored) == (0, 0, 1)
    assert not response.HasField("partial_success")
    assert cpu.all_workloads() == set()


def test_label_length_caps() -> None:
    ingestor, cpu = make(max_label_length=16)
    result, _ = send(ingestor, metrics_request_of([
        (pod_resource("p" * 17), [gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)])]),
        ({**WORKLOAD, "k8s.namespace.name": "n" * 17, "k8s.pod.name": "p"},
         [gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)])]),
        (pod_resource("p"), [gauge_metric(CPU_REQUEST, "{cpu}", [
            number_point(0.2, T, {"k8s.container.name": "c" * 17})])]),
        (pod_resource("p" * 16), [gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)])]),  # at the cap
    ]))
    assert result.reasons == {"label_too_long": 3}
    assert result.accepted == 1
    assert cpu._pods[("shop", "checkout")].keys() == {"p" * 16}


# === time =================================================================================================


def test_point_time_is_the_observation_time_and_zero_means_now() -> None:
    ingestor, cpu = make()
    send(ingestor, metrics_request_of([
        (pod_resource("timed"), [gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)])]),
        (pod_resource("untimed"), [gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, 0)])]),
        (pod_resource("future"), [gauge_metric(CPU_USAGE, "{cpu}",
                                               [number_point(0.2, int((NOW + 3600) * 1e9))])]),
    ]))
    pods = cpu._pods[("shop", "checkout")]
    assert pods["timed"].observed_at == pytest.approx(T / 1e9)
    assert pods["untimed"].observed_at == NOW
    assert pods["future"].observed_at == NOW  # a sender's clock ahead of ours cannot keep data fresh


def test_requests_alone_do_not_keep_old_usage_fresh() -> None:
    ingestor, cpu = make()
    send(ingestor, usage_of("p", 0.2))
    send(ingestor, metrics_request_of([pod_request("p", {"app": 1.0})]))
    later = T + 100 * SECOND_NS
    send(ingestor, metrics_request_of([pod_request("p", {"app": 2.0}, later)]), now=later / 1e9)
    pod = cpu._pods[("shop", "checkout")]["p"]
    assert pod.request_cores == 2.0
    assert pod.observed_at == pytest.approx(T / 1e9)  # still the usage's time
    assert reading(cpu, now=later / 1e9) is None  # stale: usage stopped 100 s ago


def test_an_older_usage_point_does_not_replace_a_newer_one() -> None:
    ingestor, cpu = make()
    send(ingestor, usage_of("p", 0.4))
    send(ingestor, usage_of("p", 0.9, T - 5 * SECOND_NS))  # a retried export
    pod = cpu._pods[("shop", "checkout")]["p"]
    assert (pod.usage_cores, pod.observed_at) == (0.4, pytest.approx(T / 1e9))


# === registry and other paths =============================================================================


def test_without_a_registry_cpu_metrics_are_ignored() -> None:
    ingestor = OtlpIngestor(WindowStore(), IngestSettings())
    result, response = send(ingestor, metrics_request(pod_resource("p"), [
        gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T), number_point(-1.0, T)]),
        sum_metric(CPU_REQUEST, "{cpu}", [number_point(1.0, T)]),
    ]))
    assert (result.accepted, result.rejected, result.ignored) == (0, 0, 3)
    assert not response.HasField("partial_success")


def test_histograms_of_cpu_names_are_ignored() -> None:
    ingestor, cpu = make()
    histogram = explicit_metric(CPU_USAGE, "{cpu}", DELTA, [explicit_point([0.5], [1, 1], T, T + 1)])
    result, _ = send(ingestor, metrics_request(pod_resource("p"), [histogram]))
    assert (result.accepted, result.rejected, result.ignored) == (0, 0, 1)
    assert cpu.all_workloads() == set()


def test_registry_cap_is_partial_success(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter.cpu, "MAX_WORKLOADS", 1)
    ingestor, cpu = make()
    send(ingestor, usage_of("p", 0.2))
    other = {**WORKLOAD, "k8s.deployment.name": "other", "k8s.pod.name": "o"}
    result, response = send(ingestor, metrics_request(other, [
        gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)]),
        gauge_metric(CPU_REQUEST, "{cpu}", [number_point(0.2, T)]),
    ]))
    assert result.reasons == {"series_cap": 2} and result.accepted == 0
    assert response.partial_success.rejected_data_points == 2
    assert cpu.dropped == 1


def test_remembered_pods_are_bounded() -> None:
    ingestor, _ = make()
    ingestor.cpu_import.max_pods = 2
    for i in range(5):
        send(ingestor, metrics_request_of([pod_request(f"p{i}", {"app": 0.5})]))
    assert ingestor.cpu_import.evicted_pods == 3


def test_cpu_and_latency_in_one_request() -> None:
    ingestor, cpu = make()
    started = int(NOW * 1e9)
    histogram = explicit_metric("http.server.request.duration", "s", DELTA,
                                [explicit_point([0.1, 0.2], [5, 3, 2], started, started + 1)])
    result, _ = send(ingestor, metrics_request(pod_resource("p"), [
        histogram, gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.2, T)])]))
    assert (result.accepted, result.rejected) == (2, 0)
    assert len(ingestor.store) == 1
    assert cpu.all_workloads() == {("shop", "checkout")}


# === through the HTTP receiver ============================================================================


@pytest.mark.parametrize("as_json", [False, True])
async def test_through_the_receiver(as_json: bool) -> None:
    store = WindowStore()
    cpu = CpuSignals()
    telemetry = Telemetry(store)
    ingestor = OtlpIngestor(store, IngestSettings(), cpu=cpu)
    app = build_otlp_app(ingestor, telemetry, ReceiverSettings(), clock=lambda: NOW)
    request = metrics_request(pod_resource("p"), [
        gauge_metric(CPU_USAGE, "{cpu}", [number_point(0.3, T), number_point(-1.0, T)]),
        sum_metric(CPU_REQUEST, "{cpu}", [number_point(0.6, T, {"k8s.container.name": "app"})]),
    ])
    body = otlp_json(request) if as_json else request.SerializeToString()
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/v1/metrics", data=body,
                                     headers={"Content-Type": JSON_TYPE if as_json else PROTOBUF})
        assert response.status == 200
        payload = await response.read()
    answer = metrics_response(payload, as_json)
    assert answer.partial_success.rejected_data_points == 1
    assert "invalid_value" in answer.partial_success.error_message
    signal = cpu.signal("shop", "checkout", NOW, STALE)
    assert signal is not None and signal.utilization == pytest.approx(0.5)
    sample = telemetry.registry.get_sample_value
    assert sample("latency_adapter_otlp_items_total", {"signal": "metrics", "outcome": "accepted"}) == 2
    rejected = {"signal": "metrics", "reason": "invalid_value"}
    assert sample("latency_adapter_otlp_rejected_total", rejected) == 1


def test_a_cpu_metric_without_points_leaves_no_trace() -> None:
    ingestor, cpu = make()
    no_workload = metrics_request({"k8s.pod.name": "p"}, [gauge_metric(CPU_USAGE, "", [])])
    result, response = send(ingestor, no_workload)
    assert (result.accepted, result.rejected, result.ignored, result.reasons) == (0, 0, 0, {})
    assert not response.HasField("partial_success")
    assert cpu.all_workloads() == set()


def test_otlp_json_written_by_hand_is_understood() -> None:
    ingestor, cpu = make()
    body = b"""{"resourceMetrics": [{
      "resource": {"attributes": [
        {"key": "k8s.namespace.name", "value": {"stringValue": "shop"}},
        {"key": "k8s.deployment.name", "value": {"stringValue": "checkout"}},
        {"key": "k8s.pod.name", "value": {"stringValue": "checkout-1"}}]},
      "scopeMetrics": [{"metrics": [
        {"name": "k8s.pod.cpu.usage", "unit": "{cpu}",
         "gauge": {"dataPoints": [{"timeUnixNano": "1700000090000000000", "asDouble": 0.25}]}},
        {"name": "k8s.container.cpu.request", "unit": "{cpu}",
         "sum": {"aggregationTemporality": 2, "dataPoints": [
           {"timeUnixNano": "1700000090000000000", "asInt": "1",
            "attributes": [{"key": "k8s.container.name", "value": {"stringValue": "app"}}]}]}}]}]}]}"""
    result, _ = ingestor.ingest_metrics(body, True, NOW)
    assert (result.accepted, result.rejected) == (2, 0)
    got = reading(cpu)
    assert got is not None
    assert (got.usage_cores, got.request_cores, got.observed_at) == (0.25, 1.0, T / 1e9)
