"""End to end: spans and CPU sent with the real OTel SDK -> ``dual_signal_ratio`` read with ``kubectl``.

One workload per row of the policy table (DESIGN section 5), all in one namespace of the shared adapter:
latency and CPU go in through the OTLP receiver exactly as an instrumented application and a Collector
with the kubeletstats receiver would send them, and ``kubectl get --raw`` reads what the HPA reads. The
defaults apply: latency target 0.25 s, CPU target 0.6, min_samples 50, cpu_floor 0.3.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapter.quantity import parse_quantity
from tests.integration.conftest import AdapterProcess, SpanSender
from tests.integration.process import wait_for
from tests.integration.test_kubectl_raw import get_raw, value_path, write_kubeconfig
from tests.tooling import require_tool

pytestmark = pytest.mark.needs_kubectl

NAMESPACE = "dual-e2e"
#: workload -> (latency of every request in seconds, requests, CPU utilisation or None, reason, ratio)
ROWS: dict[str, tuple[float, int, float | None, str, float]] = {
    "w-latency": (0.5, 200, 0.6, "latency", 2.0),
    "w-cpu": (0.05, 200, 0.9, "cpu", 1.5),
    "w-dependency": (1.0, 200, 0.1, "dependency_latency", 1.0),
    "w-low-traffic": (1.0, 10, 0.3, "cpu_only_low_traffic", 0.5),
    "w-no-cpu": (0.3, 200, None, "latency_only_cpu_missing", 1.2),
}
POD_REQUEST_CORES = 0.5


def send_cpu(otlp_port: int, namespace: str, workload: str, utilization: float, pods: int = 2) -> None:
    """Pod CPU usage and container requests as OTel gauges, one SDK resource per pod (as kubeletstats)."""
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.metrics import CallbackOptions, Observation
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource

    for i in range(pods):
        exporter = OTLPMetricExporter(endpoint=f"http://127.0.0.1:{otlp_port}/v1/metrics", timeout=10)
        reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
        resource = Resource.create({"k8s.namespace.name": namespace, "k8s.deployment.name": workload,
                                    "k8s.pod.name": f"{workload}-{i}"})
        provider = MeterProvider(resource=resource, metric_readers=[reader], shutdown_on_exit=False)
        meter = provider.get_meter("tests.integration")

        def usage(_: CallbackOptions) -> list[Observation]:
            return [Observation(utilization * POD_REQUEST_CORES)]

        def request(_: CallbackOptions) -> list[Observation]:
            return [Observation(POD_REQUEST_CORES, {"k8s.container.name": "app"})]

        meter.create_observable_gauge("k8s.pod.cpu.usage", [usage], unit="{cpu}")
        meter.create_observable_gauge("k8s.container.cpu.request", [request], unit="{cpu}")
        try:
            assert provider.force_flush(30_000), "the SDK could not export the CPU gauges"
        finally:
            provider.shutdown()


@pytest.fixture(scope="module")
def kubectl() -> str:
    return require_tool("kubectl")


@pytest.fixture(scope="module")
def sent(adapter: AdapterProcess, spans: SpanSender) -> dict[str, Any]:
    batches = {}
    for workload, (latency, n, utilization, _, _) in ROWS.items():
        if utilization is not None:
            send_cpu(adapter.otlp_port, NAMESPACE, workload, utilization)
        batches[workload] = spans.send(NAMESPACE, workload, [latency] * n)
    send_cpu(adapter.otlp_port, NAMESPACE, "w-cpu-only", 0.9)
    adapter.wait_slice_closed(max(b.sent_at for b in batches.values()))
    return batches


@pytest.fixture(scope="module")
def kubeconfig(adapter: AdapterProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kubeconfig(tmp_path_factory.mktemp("kube-dual") / "config",
                            f"https://127.0.0.1:{adapter.api_port}",
                            {"certificate-authority": str(adapter.cert_file)})


def read(kubectl: str, kubeconfig: Path, metric: str, workload: str) -> dict[str, Any]:
    result = get_raw(kubectl, kubeconfig, value_path(metric, f"workload={workload}", NAMESPACE))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    [item] = doc["items"]
    assert item["metricName"] == metric
    return dict(item)


@pytest.mark.parametrize("workload", list(ROWS))
def test_each_reason_through_kubectl(kubectl: str, kubeconfig: Path, sent: dict[str, Any],
                                     workload: str) -> None:
    _, _, _, reason, ratio = ROWS[workload]
    item = read(kubectl, kubeconfig, "dual_signal_ratio", workload)
    labels = item["metricLabels"]
    assert labels["reason"] == reason, item
    assert labels["workload"] == workload
    assert float(parse_quantity(item["value"])) == pytest.approx(ratio, rel=0.02), item
    assert labels["trace_id"] in sent[workload].trace_ids, item  # even the 10 requests of low traffic


def test_component_metrics_through_kubectl(kubectl: str, kubeconfig: Path, sent: dict[str, Any]) -> None:
    item = read(kubectl, kubeconfig, "cpu_utilization", "w-dependency")
    assert float(parse_quantity(item["value"])) == pytest.approx(0.1)
    item = read(kubectl, kubeconfig, "cpu_utilization_ratio", "w-cpu")
    assert float(parse_quantity(item["value"])) == pytest.approx(1.5)
    item = read(kubectl, kubeconfig, "latency_p95_ratio", "w-dependency")
    assert float(parse_quantity(item["value"])) == pytest.approx(4.0, rel=0.02)
    assert item["metricLabels"]["trace_id"] in sent["w-dependency"].trace_ids


def test_cpu_only_workload_without_spans(kubectl: str, kubeconfig: Path, sent: dict[str, Any]) -> None:
    item = read(kubectl, kubeconfig, "dual_signal_ratio", "w-cpu-only")
    assert item["metricLabels"]["reason"] == "cpu_only_low_traffic"
    assert "trace_id" not in item["metricLabels"]
    assert float(parse_quantity(item["value"])) == pytest.approx(1.5)


def test_no_signal_is_not_found_never_zero(kubectl: str, kubeconfig: Path, sent: dict[str, Any]) -> None:
    result = get_raw(kubectl, kubeconfig, value_path("dual_signal_ratio", "workload=nobody", NAMESPACE))
    assert result.returncode != 0, result.stdout
    assert "NotFound" in result.stderr and "dual_signal_ratio" in result.stderr, result.stderr


def test_decisions_on_metrics(adapter: AdapterProcess, sent: dict[str, Any]) -> None:
    def exported() -> dict[str, float] | None:
        text = adapter.metrics_text().text
        found = {}
        for workload, (_, _, _, reason, _) in ROWS.items():
            needle = (f'latency_adapter_dual_signal_ratio{{namespace="{NAMESPACE}",reason="{reason}",'
                      f'workload="{workload}"}} ')
            for line in text.splitlines():
                if line.startswith(needle):
                    found[workload] = float(line.split()[-1])
        return found if len(found) == len(ROWS) else None

    values = wait_for(exported, 10.0, "every workload's decision on /metrics")
    for workload, (_, _, _, _, ratio) in ROWS.items():
        assert values[workload] == pytest.approx(ratio, rel=0.02)
    assert adapter.counter("latency_adapter_decisions_total", reason="dependency_latency") >= 1
    changes = [e for e in adapter.log_events() if e.get("event") == "decision_changed"
               and e.get("namespace") == NAMESPACE and e.get("workload") == "w-dependency"]
    assert changes and changes[-1]["reason"] == "dependency_latency", changes
