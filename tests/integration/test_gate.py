"""``latency-adapter gate`` against a running adapter fed by the real OpenTelemetry SDK.

Four canary pairs in one adapter, each with a baseline of the same deterministic latencies (lognormal
quantiles, median 80 ms, sigma 0.6, so no run depends on chance): a canary 5 % slower passes (exit 0),
25 % slower fails (1), one with 5 % errors fails at once (1), one with 50 requests is inconclusive (3).
An unreachable adapter is exit 2 with the URL in the message. The gate reads the adapter directly
(``--server``), which is the same API document the cluster path reads through the aggregator.
"""

from __future__ import annotations

import json
import subprocess
import sys
from statistics import NormalDist
from typing import Any

import pytest
import yaml

from tests.integration.process import ADAPTER_BIN

BASELINE_N = 4000
CANARY_N = 2000
PAIRS = {"pass": 1.05, "slow": 1.25, "errors": 1.0, "few": 1.0}
CONFIG: dict[str, Any] = {
    "store": {"window_seconds": 300, "slice_seconds": 5},
    "defaults": {"min_samples": 20},
    "canaries": [{"namespace": "rel", "canary": f"{name}-canary", "baseline": f"{name}-base"}
                 for name in PAIRS],
}


def lognormal_quantiles(n: int, scale: float = 1.0) -> list[float]:
    """``n`` latencies at evenly spaced quantile levels of lognormal(median 80 ms, sigma 0.6)."""
    dist = NormalDist()
    return [0.08 * scale * 2.718281828459045 ** (0.6 * dist.inv_cdf((i + 0.5) / n)) for i in range(n)]


@pytest.fixture(scope="module")
def released(adapter_factory: Any, span_sender: Any) -> Any:
    proc = adapter_factory("gate", CONFIG)
    sender = span_sender(proc.otlp_port)
    for name, slower in PAIRS.items():
        sender.send("rel", f"{name}-base", lognormal_quantiles(BASELINE_N))
        n = 50 if name == "few" else CANARY_N
        errors = [i % 20 == 0 for i in range(n)] if name == "errors" else None
        sender.send("rel", f"{name}-canary", lognormal_quantiles(n, slower), errors=errors)
    last = sender.sent[-1].sent_at
    proc.wait_value("rel", "latency_p95_baseline_ratio", "workload=few-canary", sent_at=last)
    return proc


def gate(proc: Any, name: str, *extra: str) -> tuple[int, dict[str, Any], str]:
    result = subprocess.run(
        [str(ADAPTER_BIN), "gate", "--namespace", "rel", "--canary", f"{name}-canary", "--baseline",
         f"{name}-base", "--server", f"https://127.0.0.1:{proc.api_port}", "--certificate-authority",
         str(proc.cert_file), "--json", *extra],
        capture_output=True, text=True, timeout=60, check=False)
    doc = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, doc, result.stderr


def test_a_canary_5_percent_slower_passes(released: Any) -> None:
    code, doc, err = gate(released, "pass")
    assert code == 0, (doc, err)
    assert doc["verdict"] == "pass"
    assert doc["ratio"] == pytest.approx(1.05, abs=0.02)
    assert doc["ratio_low"] < doc["ratio"] < doc["ratio_high"]
    assert doc["canary_samples"] == CANARY_N and doc["baseline_samples"] == BASELINE_N
    assert doc["error_ratio"] == 0
    assert len(doc["trace_id"]) == 32  # a real canary request near its p95


def test_a_canary_25_percent_slower_is_a_regression(released: Any) -> None:
    code, doc, err = gate(released, "slow")
    assert code == 1, (doc, err)
    assert doc["verdict"] == "regression" and doc["ratio_low"] > 1.10, doc
    assert doc["ratio"] == pytest.approx(1.25, abs=0.02)


def test_errors_over_the_limit_fail_at_once(released: Any) -> None:
    code, doc, err = gate(released, "errors")
    assert code == 1, (doc, err)
    assert doc["error_ratio"] == pytest.approx(0.05, abs=1e-3) and "error ratio" in doc["reason"]


def test_fifty_requests_are_inconclusive(released: Any) -> None:
    code, doc, err = gate(released, "few")
    assert code == 3, (doc, err)
    assert doc["canary_samples"] == 50 and "too few requests" in doc["reason"]
    # --wait polls while inconclusive and keeps the verdict when time runs out.
    code, doc, _ = gate(released, "few", "--wait", "1s")
    assert code == 3 and doc["verdict"] == "inconclusive"


def test_the_human_line_says_why(released: Any) -> None:
    result = subprocess.run(
        [str(ADAPTER_BIN), "gate", "--namespace", "rel", "--canary", "slow-canary", "--baseline", "slow-base",
         "--server", f"https://127.0.0.1:{released.api_port}", "--insecure-skip-tls-verify"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1
    [line] = result.stdout.splitlines()
    assert line.startswith("regression: slow-canary vs slow-base in rel: p95 ratio 1.2"), line
    assert "beyond doubt" in line and "trace" in line


def test_help_states_every_exit_code() -> None:
    """A pipeline author reads ``gate --help`` to map exit codes to release steps."""
    result = subprocess.run([str(ADAPTER_BIN), "gate", "--help"], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    for phrase in ("exit 0 pass", "1 regression", "3 inconclusive", "2 usage or connection error",
                   "95 % interval"):
        assert phrase in text, text


def test_a_wrong_baseline_or_no_adapter_is_a_usage_error(released: Any) -> None:
    code, _, err = gate(released, "pass", "--baseline", "someone-else")
    assert code == 2 and "compares 'pass-canary' with 'pass-base'" in err, err
    url = "https://127.0.0.1:9"
    result = subprocess.run(
        [str(ADAPTER_BIN), "gate", "--namespace", "rel", "--canary", "a", "--baseline", "b", "--server", url],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert url in result.stderr and "latency-adapter gate:" in result.stderr, result.stderr
    assert sys.executable  # the same interpreter runs the CLI (ADAPTER_BIN sits beside it)


def test_through_a_kubeconfig_as_in_a_pipeline(released: Any, tmp_path: Any) -> None:
    """The default path: the kubernetes client and a kubeconfig. Here the kubeconfig's server is the
    adapter itself, which serves the same external.metrics.k8s.io paths the aggregator forwards."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "ci",
        "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{released.api_port}",
                                               "certificate-authority": str(released.cert_file)}}],
        "users": [{"name": "u", "user": {"token": "pipeline-token"}}],
        "contexts": [{"name": "ci", "context": {"cluster": "c", "user": "u"}}],
    }))
    result = subprocess.run(
        [str(ADAPTER_BIN), "gate", "--namespace", "rel", "--canary", "pass-canary", "--baseline", "pass-base",
         "--kubeconfig", str(kubeconfig), "--json"],
        capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["verdict"] == "pass"
    missing = subprocess.run(
        [str(ADAPTER_BIN), "gate", "--namespace", "rel", "--canary", "a", "--baseline", "b",
         "--kubeconfig", str(tmp_path / "absent")], capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "absent" in missing.stderr, missing.stderr
