"""The alert rules against a real adapter: every metric they read is on ``/metrics``, and a real Prometheus
evaluates them without error.

A real ``latency-adapter serve`` (its own, with ``min_samples: 10``, a canary pair and a per-namespace
series cap of 3) gets SERVER spans from the real OpenTelemetry SDK: a baseline workload slower than its
target with 5 % failed requests and idle CPU (OTLP CPU gauges: reason ``dependency_latency``), its canary
20 % slower still, four workloads in a namespace that only holds three series (one is dropped), and a
malformed OTLP body. Then:

* every ``latency_adapter_*`` metric any rule reads (names taken from the rules' PromQL and template
  queries, not from a list written here) is a sample on ``/metrics``, with the labels the rules use;
* a real Prometheus scrapes the adapter under job ``latency-adapter`` with ``manifests/alerts/rules.yaml``
  loaded: every rule evaluates with health ``ok``, the recording rules produce the workload's series, the
  workload alerts are pending for exactly the workloads the data makes them for (their descriptions name
  a trace id that was sent), the series-cap alert fires, and the alerts about a broken adapter stay quiet.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.contract.test_alert_rules import RULES, recorded, referenced_adapter_metrics
from tests.integration.conftest import AdapterFactory, AdapterProcess, SpanSender
from tests.integration.process import wait_for
from tests.integration.test_dual_signal_e2e import send_cpu
from tests.tooling import require_tool

if TYPE_CHECKING:  # imported by pytest as a plugin (with assertion rewriting), so not imported here first
    from tests.prometheus import PrometheusServer

pytest_plugins = ["tests.prometheus"]

NS = "alert-metrics"
CAPPED = "alert-capped"
BASELINE, CANARY = "checkout", "checkout-canary"
CONFIG: dict[str, Any] = {
    "store": {"window_seconds": 60, "slice_seconds": 1, "max_series_per_namespace": 3},
    "defaults": {"min_samples": 10},
    "canaries": [{"namespace": NS, "canary": CANARY, "baseline": BASELINE}],
}
#: Latencies (the default target is 0.25 s): the baseline 1.2 times its target, the canary 1.2 times it.
BASELINE_SECONDS, CANARY_SECONDS = 0.3, 0.36
REQUESTS, FAILED = 100, 5
#: CPU utilisation of the baseline: below the default cpu_floor (0.3), so it is slow with idle CPU.
BASELINE_CPU = 0.1
PROTOBUF = {"Content-Type": "application/x-protobuf"}
MALFORMED = b"\x0a\x05abc"

#: Labels the rules group by, match on or print, per metric they read. Every metric the rules read must
#: be here (so a new one is checked too).
LABELS: dict[str, set[str]] = {
    "latency_adapter_limit_hits_total": {"limit"},
    "latency_adapter_workload_error_ratio": {"namespace", "workload"},
    "latency_adapter_latency_ratio": {"namespace", "workload"},
    "latency_adapter_cpu_ratio": {"namespace", "workload"},
    "latency_adapter_dual_signal_ratio": {"namespace", "workload", "reason"},
    "latency_adapter_canary_latency_ratio": {"namespace", "canary", "baseline"},
    "latency_adapter_p95_exemplar_info": {"namespace", "workload", "trace_id"},
    "latency_adapter_workload_latency_seconds_bucket": {"namespace", "workload", "le"},
    "latency_adapter_workload_latency_seconds_count": {"namespace", "workload"},
    "latency_adapter_window_end_timestamp_seconds": set(),
    "latency_adapter_otlp_rejected_total": {"signal", "reason"},
    "latency_adapter_series_dropped_total": {"cap"},
}


@dataclass
class Loaded:
    adapter: AdapterProcess
    sender: SpanSender
    trace_ids: set[str]


def send_workloads(sender: SpanSender) -> set[str]:
    """The baseline (5 % failed), its canary, and idle CPU for the baseline; returns the trace ids sent."""
    errors = [i < FAILED for i in range(REQUESTS)]
    baseline = sender.send(NS, BASELINE, [BASELINE_SECONDS] * REQUESTS, errors=errors)
    canary = sender.send(NS, CANARY, [CANARY_SECONDS] * REQUESTS)
    send_cpu(sender.otlp_port, NS, BASELINE, BASELINE_CPU)
    return baseline.trace_ids | canary.trace_ids


@pytest.fixture(scope="module")
def loaded(adapter_factory: AdapterFactory, span_sender: type[SpanSender]) -> Iterator[Loaded]:
    adapter = adapter_factory("alert-metrics", CONFIG)
    sender = span_sender(adapter.otlp_port)
    trace_ids = send_workloads(sender)
    for i in range(4):  # the namespace holds 3 series: the fourth workload's samples are dropped
        sender.send(CAPPED, f"w{i}", [0.05])
    assert adapter.otlp("/v1/traces", MALFORMED, PROTOBUF).status == 400
    adapter.wait_slice_closed(time.time())
    yield Loaded(adapter, sender, trace_ids)
    assert adapter.stop() == 0, adapter.stderr_tail()


def samples(adapter: AdapterProcess) -> dict[str, list[dict[str, str]]]:
    """Sample name -> the label sets of its samples, from ``/metrics`` (Prometheus text format)."""
    resp = adapter.metrics_text()
    assert resp.status == 200, resp
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


def test_every_metric_the_rules_read_is_on_metrics(loaded: Loaded) -> None:
    wanted = referenced_adapter_metrics()
    assert len(wanted) >= 10 and set(LABELS) == wanted, (
        f"LABELS must list exactly the metrics the rules read: {sorted(wanted ^ set(LABELS))}")

    deadline = time.monotonic() + 20  # the per-workload gauges appear at the first tick after the data
    found = samples(loaded.adapter)
    while not wanted <= set(found) and time.monotonic() < deadline:
        time.sleep(0.1)
        found = samples(loaded.adapter)
    missing = wanted - set(found)
    assert not missing, f"the rules read metrics the adapter does not export: {sorted(missing)}"
    for name in sorted(wanted):
        for labels in found[name]:
            assert LABELS[name] <= set(labels), f"{name}{labels} lacks a label the rules use"
    # The per-workload series are there for the workloads of this test, with the values the data makes.
    workloads = {(labels.get("namespace"), labels.get("workload")) for labels in
                 found["latency_adapter_workload_error_ratio"]}
    assert (NS, BASELINE) in workloads
    assert {"reason": "dependency_latency", "namespace": NS, "workload": BASELINE} in [
        {k: v for k, v in labels.items() if k in {"reason", "namespace", "workload"}}
        for labels in found["latency_adapter_dual_signal_ratio"]]
    assert {"namespace": NS, "canary": CANARY, "baseline": BASELINE} in found[
        "latency_adapter_canary_latency_ratio"]
    assert {"cap": "namespace_series_cap"} in found["latency_adapter_series_dropped_total"]
    assert {"signal": "traces", "reason": "malformed"} in found["latency_adapter_otlp_rejected_total"]


# --------------------------------------------------------------------------------------------------
# A real Prometheus with the rules loaded
# --------------------------------------------------------------------------------------------------


def rules_prometheus(binary: str, workdir: Path, target: str, rule_files: list[Path]) -> PrometheusServer:
    """A :class:`~tests.prometheus.PrometheusServer` with ``rule_files`` (evaluated every second), scraping
    ``target`` as job ``latency-adapter`` (the job a ServiceMonitor on Service latency-adapter gets)."""
    from tests.prometheus import PrometheusServer

    class RulesPrometheus(PrometheusServer):
        def config(self) -> dict[str, Any]:
            return {**super().config(), "rule_files": [str(p) for p in rule_files]}

    return RulesPrometheus(binary, workdir, [target], job="latency-adapter")


@pytest.fixture
def prometheus(loaded: Loaded, tmp_path: Path) -> Iterator[PrometheusServer]:
    server = rules_prometheus(require_tool("prometheus"), tmp_path / "prometheus",
                              f"127.0.0.1:{loaded.adapter.telemetry_port}", [RULES])
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _alerts(prom: PrometheusServer) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = prom.api("alerts")["alerts"]
    return found


def _rules(prom: PrometheusServer) -> list[dict[str, Any]]:
    return [rule for group in prom.api("rules")["groups"] for rule in group["rules"]]


#: The Prometheus p95 the latency alert quotes: in the bucket (0.25, 0.5] that holds 0.3 s.
P95_QUOTED = re.compile(
    r"p95 over the last 5 minutes in Prometheus: (2[5-9][0-9]|[34][0-9][0-9])(\.[0-9]+)?ms\. ")


def test_prometheus_evaluates_the_rules_on_real_data(loaded: Loaded, prometheus: PrometheusServer) -> None:
    prom = prometheus
    try:
        prom.wait_scraped()
        # Counters and histograms need increases while Prometheus watches: more of the same traffic, and
        # another malformed export.
        trace_ids = loaded.trace_ids | send_workloads(loaded.sender)
        assert loaded.adapter.otlp("/v1/traces", MALFORMED, PROTOBUF).status == 400

        # Every rule loaded and evaluates without error (no vector matching or template problems).
        def evaluated() -> list[dict[str, Any]] | None:
            rules = _rules(prom)
            done = all(r.get("lastEvaluation", "").startswith("20") for r in rules)
            return rules if rules and done else None

        rules = wait_for(evaluated, 20, "every rule evaluated once", interval=0.2)
        assert len(rules) == len([r for g in _load_groups() for r in g["rules"]])
        assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), [
            (r["name"], r["health"], r.get("lastError")) for r in rules]

        # The recording rules have the workload's series.
        for record in recorded():
            def has_series(record: str = record) -> list[dict[str, Any]] | None:
                result = prom.query(f'{record}{{namespace="{NS}",workload="{BASELINE}"}} > 0')
                return result or None

            wait_for(has_series, 20, f"{record} for {NS}/{BASELINE}", interval=0.2)
        [p95] = prom.query(f'namespace_workload:latency_adapter_workload_latency_seconds:p95_5m'
                           f'{{namespace="{NS}",workload="{BASELINE}"}}')
        assert 0.25 <= float(p95["value"][1]) <= 0.5  # the bucket (0.25, 0.5] that holds 0.3 s

        # The alerts the data makes, pending (their "for" is minutes) or firing; no others.
        expected = {
            ("WorkloadErrorRatioHigh", BASELINE), ("WorkloadLatencyP95AboveTarget", BASELINE),
            ("WorkloadLatencyP95AboveTarget", CANARY), ("WorkloadScalingHeldForDependency", BASELINE),
            ("CanaryLatencyRegression", CANARY), ("LatencyAdapterSeriesCapReached", None),
            ("LatencyAdapterRejectingTelemetry", None),
        }

        def active() -> dict[tuple[str, str | None], dict[str, Any]] | None:
            got = {(a["labels"]["alertname"], a["labels"].get("workload") or a["labels"].get("canary")): a
                   for a in _alerts(prom)}
            if not set(got) >= expected:
                return None
            # Annotations are expanded at each evaluation: wait for one that saw the recorded series.
            error = got[("WorkloadErrorRatioHigh", BASELINE)]["annotations"]["description"]
            latency = got[("WorkloadLatencyP95AboveTarget", BASELINE)]["annotations"]["description"]
            # Until the recording rule has two scrapes of the increase its p95 is NaN, and an evaluation
            # then quotes "NaN"; the next one quotes the number.
            return got if " requests/s, " in error and P95_QUOTED.search(latency) else None

        got = wait_for(active, 30, "the alerts the data makes", interval=0.2)
        assert set(got) == expected, sorted(set(got) ^ expected)
        assert got[("LatencyAdapterSeriesCapReached", None)]["state"] == "firing"
        assert got[("LatencyAdapterSeriesCapReached", None)]["labels"]["cap"] == "namespace_series_cap"
        assert got[("LatencyAdapterRejectingTelemetry", None)]["labels"]["reason"] == "malformed"
        for key in expected - {("LatencyAdapterSeriesCapReached", None)}:
            assert got[key]["state"] == "pending", got[key]

        error = got[("WorkloadErrorRatioHigh", BASELINE)]
        assert error["labels"]["namespace"] == NS
        assert error["annotations"]["summary"] == f"{NS}/{BASELINE}: 5% of requests fail (threshold 3.2 %)"
        for key in (("WorkloadErrorRatioHigh", BASELINE), ("WorkloadScalingHeldForDependency", BASELINE),
                    ("CanaryLatencyRegression", CANARY)):
            description = got[key]["annotations"]["description"]
            quoted = re.findall(r"trace_id ([0-9a-f]{32})\.", description)
            assert quoted and set(quoted) <= trace_ids, f"{key}: {description}"
        assert re.search(r" at [0-9.]+ requests/s, ", error["annotations"]["description"])
        latency_alert = got[("WorkloadLatencyP95AboveTarget", BASELINE)]
        assert P95_QUOTED.search(latency_alert["annotations"]["description"])
        assert "CPU ratio 0.17. " in got[("WorkloadScalingHeldForDependency", BASELINE)]["annotations"][
            "description"]
    except BaseException:  # assertion, PrometheusError or a wait_for failure: show Prometheus's view
        print(prom.log_tail(40))
        raise


def _load_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return groups
