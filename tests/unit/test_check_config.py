"""``latency-adapter check-config FILE`` run as the real console script, as operators and CI run it.

Exit 0 with one ``ok`` line on stdout for a valid file; exit 2 with the message (key path and value) on
stderr for an invalid, missing or unreadable one. Every section is validated, the policy included.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(sys.executable).parent / "latency-adapter"

VALID = """
store: {window_seconds: 60, slice_seconds: 5}
log_level: info
defaults: {latency_target_seconds: 0.25, cpu_target_utilization: 0.6, min_samples: 50,
           cpu_floor: 0.3, stale_after_seconds: 60, quantile: p95}
workloads:
  - {workload: "*", min_samples: 20}
  - {namespace: shop, workload: "checkout*", latency_target_seconds: 0.4}
  - {namespace: shop, workload: checkout-canary, cpu_request_cores: 0.5}
canaries:
  - {namespace: shop, canary: checkout-canary, baseline: checkout}
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"{SCRIPT} is missing: install the project in this environment (pip install -e .)"
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=60,
                          check=False)


def test_valid_file_exits_0_with_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(VALID, encoding="utf-8")
    result = run("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{path}: ok: 3 workload overrides, 1 canary pair\n"
    assert result.stderr == ""


def test_empty_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    result = run("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"{path}: ok: 0 workload overrides, 0 canary pairs\n"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID.replace("latency_target_seconds: 0.4", "latency_target_seconds: -1"),
         "config key 'workloads[1].latency_target_seconds': must be a number greater than 0 and at most 3600 "
         "(got '-1')"),
        (VALID.replace("cpu_request_cores: 0.5", "color: red"),
         "config key 'workloads[2].color': is not a known key; known: "),
        (VALID.replace("baseline: checkout", "baseline: checkout-canary"),
         "config key 'canaries[0].baseline': must differ from canary (got 'checkout-canary')"),
        ("defaults: 3\n", "config key 'defaults': must be a mapping (got '3')"),
        ("workloads: {workload: a}\n", "config key 'workloads': must be a list"),
        ("workloads: [{workload: ''}]\n", "config key 'workloads[0].workload': must be a non-empty glob"),
        (VALID.replace("window_seconds: 60", "window_seconds: 0"), "config key 'store.window_seconds'"),
        ("workloads: [\n", "is not valid YAML"),
    ],
)
def test_invalid_file_exits_2_with_the_message_on_stderr(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text, encoding="utf-8")
    result = run("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"{path}: invalid: ")
    assert expected in result.stderr
    assert len(result.stderr.splitlines()) == 1 or "YAML" in expected  # one line, no traceback
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_missing_or_unreadable_file_exits_2(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "absent.yaml" if kind == "missing" else tmp_path
    result = run("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert str(path) in result.stderr and "cannot be read" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_file_argument_is_a_usage_error(tmp_path: Path) -> None:
    result = run("check-config", cwd=tmp_path)
    assert result.returncode == 2
    assert "file" in result.stderr
