"""The running service re-reads the policy when its config file changes, and refuses a bad version.

What an operator does at 3 a.m.: edit a target in the ConfigMap-mounted file. A valid edit changes the
served ratio without a restart; a broken edit is refused (logged with the key and the value, counted)
and the adapter keeps serving with the previous policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter.quantity import parse_quantity
from tests.integration.conftest import AdapterProcess, SpanSender
from tests.integration.process import wait_for

NS = "reload"


def write(path: Path, latency_target: Any) -> None:
    doc = {"store": {"window_seconds": 30, "slice_seconds": 1},
           "defaults": {"min_samples": 10},
           "workloads": [{"namespace": NS, "workload": "api*", "latency_target_seconds": latency_target}]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc), encoding="utf-8")
    tmp.replace(path)  # as kubelet swaps a ConfigMap volume: atomically


def ratio(adapter: AdapterProcess) -> float | None:
    resp = adapter.value(NS, "latency_p95_ratio", "workload=api")
    return float(parse_quantity(resp.json()["items"][0]["value"])) if resp.status == 200 else None


@pytest.fixture
def adapter(tmp_path: Path, span_sender: type[SpanSender]) -> Any:
    proc = AdapterProcess(tmp_path / "adapter", {"store": {"window_seconds": 30, "slice_seconds": 1}})
    config_file = proc.workdir / "config.yaml"
    proc.workdir.mkdir(parents=True)
    write(config_file, 0.5)
    proc.config = None  # the file above is the config: written by the test, not by the harness
    proc.args = [*proc.args, "--config", str(config_file)]
    proc.start()
    sent = span_sender(proc.otlp_port).send(NS, "api", [0.2] * 100)
    proc.wait_slice_closed(sent.sent_at)
    yield proc, config_file
    assert proc.stop() == 0, proc.stderr_tail()


def test_valid_change_applies_and_invalid_change_keeps_the_old_policy(adapter: Any) -> None:
    proc, config_file = adapter
    assert wait_for(ratio_near(proc, 0.4), 10.0, "p95 0.2 s / target 0.5 s")
    write(config_file, 0.1)
    assert wait_for(ratio_near(proc, 2.0), 10.0, "the new target applied without a restart")
    write(config_file, -3)
    wait_for(lambda: proc.counter("latency_adapter_config_reloads_total", outcome="failed") == 1 or None,
             10.0, "the refused reload to be counted")
    refused = [e for e in proc.log_events() if e.get("event") == "policy_reload_failed"]
    assert len(refused) == 1, refused
    assert "workloads[0].latency_target_seconds" in str(refused[0]) and "-3" in str(refused[0])
    assert ratio_near(proc, 2.0)()  # the previous policy still serves
    assert proc.alive()


def ratio_near(proc: AdapterProcess, expected: float) -> Any:
    def check() -> bool | None:
        value = ratio(proc)
        return True if value is not None and abs(value - expected) <= 0.02 * expected else None
    return check
