"""``kubectl get --raw`` against the running adapter: a real Go client (client-go's REST client, TLS stack
and ``Status`` decoding) reads what the HPA would read.

The kubeconfig points straight at the adapter's HTTPS port with a dummy token (the adapter runs with
``--insecure-no-auth``). One variant skips TLS verification as a quick local setup would; another trusts
the adapter's self-signed certificate, which proves the certificate is acceptable to Go's verifier.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import yaml

from adapter.quantity import parse_quantity
from tests.tooling import require_tool

pytestmark = pytest.mark.needs_kubectl

PREFIX = "/apis/external.metrics.k8s.io/v1beta1"
NAMESPACE = "kube-raw"


@pytest.fixture(scope="module")
def kubectl() -> str:
    return require_tool("kubectl")


def write_kubeconfig(path: Path, server: str, cluster: dict[str, Any]) -> Path:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "adapter", "cluster": {"server": server, **cluster}}],
        "users": [{"name": "dummy", "user": {"token": "not-a-real-token"}}],
        "contexts": [{"name": "adapter", "context": {"cluster": "adapter", "user": "dummy"}}],
        "current-context": "adapter",
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def kubeconfig(adapter: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_kubeconfig(tmp_path_factory.mktemp("kube") / "config",
                            f"https://127.0.0.1:{adapter.api_port}", {"insecure-skip-tls-verify": True})


def get_raw(kubectl: str, kubeconfig: Path, path: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(kubeconfig.parent)  # keep kubectl's cache out of the real home
    return subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "--request-timeout", "20s",
                           "get", "--raw", path], capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


def value_path(metric: str, selector: str, namespace: str = NAMESPACE) -> str:
    return f"{PREFIX}/namespaces/{namespace}/{metric}?labelSelector={quote(selector, safe='')}"


@pytest.fixture(scope="module")
def web(adapter: Any, spans: Any) -> Any:
    rng = np.random.default_rng(11)
    sent = spans.send(NAMESPACE, "web", [float(v) for v in rng.lognormal(np.log(0.12), 0.5, 300)],
                      routes="/index")
    adapter.wait_value(NAMESPACE, "latency_p95_seconds", "workload=web", sent.sent_at)
    return sent


def test_get_raw_reads_the_p95_with_its_trace_id(kubectl: str, kubeconfig: Path, web: Any) -> None:
    path = value_path("latency_p95_seconds", "workload=web")
    assert "workload%3Dweb" in path
    result = get_raw(kubectl, kubeconfig, path)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["kind"] == "ExternalMetricValueList", doc
    assert len(doc["items"]) == 1, doc
    item = doc["items"][0]
    assert item["metricName"] == "latency_p95_seconds"
    exact = float(np.percentile(web.latencies(), 95))
    served = float(parse_quantity(item["value"]))
    assert abs(served - exact) <= 0.01 * exact, (item["value"], exact)
    assert item["metricLabels"]["trace_id"] in web.trace_ids, item
    assert item["metricLabels"]["workload"] == "web", item


def test_get_raw_verifying_the_self_signed_certificate(adapter: Any, kubectl: str, web: Any,
                                                       tmp_path: Path) -> None:
    for host in ("127.0.0.1", "localhost"):
        config = write_kubeconfig(tmp_path / f"config-{host}", f"https://{host}:{adapter.api_port}",
                                  {"certificate-authority": str(adapter.cert_file)})
        result = get_raw(kubectl, config, value_path("request_rate", "workload=web"))
        assert result.returncode == 0, (host, result.stderr)
        item = json.loads(result.stdout)["items"][0]
        assert float(parse_quantity(item["value"])) * item["window"] == pytest.approx(300, abs=1e-3)


def test_get_raw_discovery_lists_the_metrics(kubectl: str, kubeconfig: Path, adapter: Any) -> None:
    result = get_raw(kubectl, kubeconfig, PREFIX)
    assert result.returncode == 0, result.stderr
    names = {r["name"] for r in json.loads(result.stdout)["resources"]}
    assert {"latency_p95_seconds", "request_rate", "error_ratio"} <= names, names


def test_get_raw_unknown_metric_fails_with_not_found(kubectl: str, kubeconfig: Path, web: Any) -> None:
    result = get_raw(kubectl, kubeconfig, value_path("latency_p42_seconds", "workload=web"))
    assert result.returncode != 0, result.stdout
    assert "NotFound" in result.stderr, result.stderr
    assert "latency_p42_seconds" in result.stderr, result.stderr


def test_get_raw_no_data_names_the_selector(kubectl: str, kubeconfig: Path, web: Any) -> None:
    result = get_raw(kubectl, kubeconfig, value_path("latency_p95_seconds", "workload=nothere"))
    assert result.returncode != 0, result.stdout
    assert "NotFound" in result.stderr and "workload=nothere" in result.stderr, result.stderr


def test_get_raw_bad_selector_is_bad_request(kubectl: str, kubeconfig: Path, web: Any) -> None:
    result = get_raw(kubectl, kubeconfig, value_path("latency_p95_seconds", "workload in (web"))
    assert result.returncode != 0, result.stdout
    assert "BadRequest" in result.stderr, result.stderr
