"""The example HPAs in ``manifests/examples`` are valid Kubernetes objects and say what the README says.

Three checks, each one a way an example could mislead someone who copies it:

* **Schema.** Every example validates with ``kubernetes_validate`` in strict mode (unknown fields are
  errors, so a typo such as ``stabilisationWindowSeconds`` cannot pass as "optional and unset") against
  Kubernetes 1.30 and the newest version the package ships.
* **Semantics.** The facts users rely on: the dual-signal HPA targets ``Value: "1"`` on
  ``dual_signal_ratio`` with ``workload=<its Deployment>``; latency targets are ``Value`` quantities,
  never ``AverageValue``; every HPA has a ``behavior`` (fast up, slow down); every External metric is one
  the adapter serves, selected by labels the adapter has.
* **Rendering.** ``kubectl kustomize manifests/examples`` renders exactly the three examples, unchanged.
"""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from adapter.provider import METRIC_HELP
from adapter.quantity import milli_value
from tests.tooling import require_tool

EXAMPLES_DIR = Path(__file__).parents[2] / "manifests" / "examples"
EXAMPLES = ["hpa-dual-signal.yaml", "hpa-latency-p95.yaml", "hpa-latency-and-cpu.yaml"]

#: Kubernetes versions to validate against: the oldest we document, and the newest the package knows.
OLDEST_VERSION = "1.30"
NEWEST_VERSION = kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())

#: Every metric name the adapter serves (README "Metrics served" and the dual-signal work). Kept here
#: rather than read from ``adapter.provider.METRIC_HELP`` alone because the CPU and dual-signal metrics
#: are being added to the provider in parallel; ``test_adapter_serves_what_the_examples_use`` checks
#: the examples against ``METRIC_HELP`` itself as soon as any of them appears there.
SERVED_METRICS = frozenset({
    "latency_p50_seconds",
    "latency_p95_seconds",
    "latency_p99_seconds",
    "request_rate",
    "error_ratio",
    "cpu_utilization",
    "cpu_utilization_ratio",
    "latency_p95_ratio",
    "dual_signal_ratio",
    "latency_p95_baseline_ratio",
})
#: The metrics of the dual-signal work, not yet in ``METRIC_HELP`` while it is being written.
DUAL_SIGNAL_METRICS = frozenset({
    "cpu_utilization", "cpu_utilization_ratio", "latency_p95_ratio", "dual_signal_ratio",
    "latency_p95_baseline_ratio",
})
#: Series labels an External metric selector can use (README "Metrics served").
SELECTOR_LABELS = frozenset({"workload", "route"})
#: Not meant for HPAs: a canary-vs-baseline release gate.
NOT_FOR_HPAS = frozenset({"latency_p95_baseline_ratio"})
#: The adapter's window: a scale-down decision should see at least this much of the new state.
WINDOW_SECONDS = 60


def load(name: str) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all((EXAMPLES_DIR / name).read_text(encoding="utf-8")) if d]
    assert len(docs) == 1, f"{name}: one HorizontalPodAutoscaler per file, found {len(docs)} documents"
    doc = docs[0]
    assert isinstance(doc, dict)
    return doc


def external_metrics(hpa: dict[str, Any]) -> list[dict[str, Any]]:
    return [m["external"] for m in hpa["spec"]["metrics"] if m["type"] == "External"]


def test_directory_holds_the_examples_and_the_kustomization() -> None:
    assert sorted(p.name for p in EXAMPLES_DIR.iterdir()) == sorted([*EXAMPLES, "kustomization.yaml"])
    kustomization = yaml.safe_load((EXAMPLES_DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["kind"] == "Kustomization"
    assert kustomization["resources"] == EXAMPLES


@pytest.mark.parametrize("version", sorted({OLDEST_VERSION, NEWEST_VERSION}))
@pytest.mark.parametrize("name", EXAMPLES)
def test_example_validates_strictly(name: str, version: str) -> None:
    hpa = load(name)
    try:
        used = kubernetes_validate.validate(hpa, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        pytest.fail(f"{name} is not a valid {hpa['kind']} for Kubernetes {version}: {path}: {err.message}")
    # The package falls back to the newest schema not newer than the one asked for: insist on the one asked.
    assert used == version


@pytest.mark.parametrize("version", sorted({OLDEST_VERSION, NEWEST_VERSION}))
def test_strict_validation_catches_a_misspelt_field(version: str) -> None:
    """Proves the check above is not vacuous: strict mode rejects a field Kubernetes does not know."""
    hpa = copy.deepcopy(load("hpa-dual-signal.yaml"))
    behavior = hpa["spec"]["behavior"]["scaleDown"]
    behavior["stabilisationWindowSeconds"] = behavior.pop("stabilizationWindowSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(hpa, version, strict=True)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_is_an_autoscaling_v2_hpa_of_a_deployment(name: str) -> None:
    hpa = load(name)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["kind"] == "HorizontalPodAutoscaler"
    assert hpa["metadata"]["namespace"] == "shop"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"]) == ("apps/v1", "Deployment")
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def test_examples_target_different_deployments() -> None:
    """Applying the kustomization must not put two HPAs on one Deployment."""
    targets = [load(name)["spec"]["scaleTargetRef"]["name"] for name in EXAMPLES]
    assert len(set(targets)) == len(targets), targets


@pytest.mark.parametrize("name", EXAMPLES)
def test_external_metrics_are_served_and_select_the_target_workload(name: str) -> None:
    hpa = load(name)
    workload = hpa["spec"]["scaleTargetRef"]["name"]
    metrics = external_metrics(hpa)
    assert metrics, f"{name} uses no metric of the adapter"
    for ext in metrics:
        metric = ext["metric"]
        assert metric["name"] in SERVED_METRICS
        assert metric["name"] not in NOT_FOR_HPAS
        selector = metric["selector"]
        assert set(selector) == {"matchLabels"}, "matchLabels only: the adapter's selectors are equalities"
        labels = selector["matchLabels"]
        assert set(labels) <= SELECTOR_LABELS
        # The adapter's `workload` label is k8s.deployment.name: the HPA's own Deployment.
        assert labels["workload"] == workload


def test_adapter_serves_what_the_examples_use() -> None:
    used = {ext["metric"]["name"] for name in EXAMPLES for ext in external_metrics(load(name))}
    if not DUAL_SIGNAL_METRICS & set(METRIC_HELP):
        pytest.xfail("the provider does not serve the dual-signal metrics yet (METRIC_HELP lacks them)")
    assert used <= set(METRIC_HELP), sorted(used - set(METRIC_HELP))


@pytest.mark.parametrize("name", EXAMPLES)
def test_external_targets_are_values_never_average_values(name: str) -> None:
    """A p95 or a ratio describes the whole workload; AverageValue would divide it by the pod count."""
    for ext in external_metrics(load(name)):
        assert ext["target"]["type"] == "Value"
        assert set(ext["target"]) == {"type", "value"}
        assert isinstance(ext["target"]["value"], str), "a quantity: quote it in YAML"


def test_dual_signal_example() -> None:
    hpa = load("hpa-dual-signal.yaml")
    assert hpa["metadata"]["name"] == "checkout"
    assert hpa["spec"]["scaleTargetRef"]["name"] == "checkout"
    assert hpa["spec"]["metrics"] == [{
        "type": "External",
        "external": {
            "metric": {"name": "dual_signal_ratio", "selector": {"matchLabels": {"workload": "checkout"}}},
            "target": {"type": "Value", "value": "1"},
        },
    }]
    # What the HPA compares: 1000 milli-units, "at target".
    assert milli_value("1") == 1000


def test_latency_p95_example() -> None:
    hpa = load("hpa-latency-p95.yaml")
    [metric] = hpa["spec"]["metrics"]
    assert metric["type"] == "External"
    assert metric["external"]["metric"]["name"] == "latency_p95_seconds"
    assert metric["external"]["target"] == {"type": "Value", "value": "250m"}
    assert milli_value("250m") == 250  # 0.25 s


def test_latency_and_cpu_example() -> None:
    hpa = load("hpa-latency-and-cpu.yaml")
    by_type = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert sorted(by_type) == ["External", "Resource"] and len(hpa["spec"]["metrics"]) == 2
    external = by_type["External"]["external"]
    assert external["metric"]["name"] == "latency_p95_seconds"
    assert external["target"] == {"type": "Value", "value": "250m"}
    assert by_type["Resource"]["resource"] == {
        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 60},
    }


@pytest.mark.parametrize("name", EXAMPLES)
def test_behavior_scales_up_fast_and_down_slowly(name: str) -> None:
    behavior = load(name)["spec"].get("behavior")
    assert behavior, f"{name} has no behavior: the defaults scale down by up to 100 % every 15 s"
    up, down = behavior["scaleUp"], behavior["scaleDown"]
    assert up["stabilizationWindowSeconds"] == 0
    assert up["selectPolicy"] == "Max"
    assert {(p["type"], p["value"], p["periodSeconds"]) for p in up["policies"]} == {
        ("Percent", 100, 15), ("Pods", 4, 15),
    }
    # The stabilization window holds several adapter windows, so one quiet window removes nothing.
    assert down["stabilizationWindowSeconds"] >= 5 * WINDOW_SECONDS
    assert down["policies"] == [{"type": "Percent", "value": 20, "periodSeconds": 60}]


@pytest.mark.needs_kubectl
def test_kubectl_kustomize_renders_the_examples() -> None:
    kubectl = require_tool("kubectl")
    result = subprocess.run(
        [kubectl, "kustomize", str(EXAMPLES_DIR)], capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]

    def key(obj: dict[str, Any]) -> tuple[str, str, str]:
        return obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]

    expected = {key(doc): doc for doc in (load(name) for name in EXAMPLES)}
    assert sorted(key(d) for d in rendered) == sorted(expected)
    for doc in rendered:
        assert doc == expected[key(doc)], f"kustomize changed {key(doc)}"
