"""The running service: ``latency_adapter_p95_exemplar_info`` on ``/metrics``, from real OTel SDK spans.

Two adapters of this module's own: one with the info metric on (a custom budget, to see the config reach
``/metrics``) and one with ``traces: {exemplar_info: false}``. Each workload's data is sent in one OTLP
request, so the first tick after it arrived already sees all of it: the published trace id must be one
that was sent, near the p95 of what was sent, and the one the API serves for ``latency_p95_seconds``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import AdapterFactory, AdapterProcess, SentBatch, SpanSender
from tests.integration.process import wait_for
from tests.tooling import require_tool

NS = "exinfo"
INFO = "latency_adapter_p95_exemplar_info"
BUDGET = 1234
STORE = {"window_seconds": 30, "slice_seconds": 1}
#: The adapter with the info metric on, and what each workload was sent.
Running = tuple[AdapterProcess, dict[str, SentBatch]]
#: workload -> the exact p95 of what it is sent (370 fast requests, 20 at the p95, 10 at 1 s).
P95 = {"w-a": 0.3, "w-b": 0.6}


def latencies(p95: float) -> list[float]:
    return [float(v) for v in [*np.linspace(0.05, 0.15, 370), *([p95] * 20), *([1.0] * 10)]]


def info_samples(adapter: AdapterProcess) -> dict[str, list[tuple[dict[str, str], float]]]:
    resp = adapter.metrics_text()
    assert resp.status == 200, resp
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            if sample.name.startswith(INFO):
                out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


@pytest.fixture(scope="module")
def on(adapter_factory: AdapterFactory, span_sender: type[SpanSender]) -> Iterator[Running]:
    proc = adapter_factory("exemplar-info-on", {
        "store": STORE, "traces": {"exemplar_info": True, "exemplar_info_series_per_hour": BUDGET}})
    sender = span_sender(proc.otlp_port)
    sent = {
        "w-a": sender.send(NS, "w-a", latencies(P95["w-a"])),
        # Two routes: still one series for the workload, from the merged window.
        "w-b": sender.send(NS, "w-b", latencies(P95["w-b"]), routes=["/a", "/b"] * 200),
    }
    yield proc, sent
    assert proc.stop() == 0, proc.stderr_tail()


def test_one_info_series_per_workload_with_a_trace_id_near_the_p95(on: Running) -> None:
    proc, sent = on

    def published() -> dict[str, str] | None:
        rows = [labels for labels, _ in info_samples(proc).get(INFO, []) if labels["namespace"] == NS]
        got = {labels["workload"]: labels["trace_id"] for labels in rows}
        return got if set(got) == set(sent) else None

    got = wait_for(published, 15, "an info series for every workload")
    samples = info_samples(proc)
    rows = [(labels, value) for labels, value in samples[INFO] if labels["namespace"] == NS]
    assert len(rows) == len(sent), rows  # one series per workload, not per route
    assert all(value == 1.0 for _, value in rows), rows
    for workload, batch in sent.items():
        trace_id = got[workload]
        by_id = {s.trace_id: s.seconds for s in batch.spans}
        assert trace_id in by_id, f"{workload}: trace_id {trace_id} was never sent"
        exact = float(np.percentile(batch.latencies(), 95))
        assert exact == pytest.approx(P95[workload])
        assert by_id[trace_id] == pytest.approx(exact, rel=0.05), (workload, by_id[trace_id], exact)
        # The same request the API names for the workload's p95.
        item = proc.wait_value(NS, "latency_p95_seconds", f"workload={workload}", batch.sent_at)["items"][0]
        assert item["metricLabels"]["trace_id"] == trace_id, (workload, item)
    assert samples[f"{INFO}_series_budget"] == [({}, float(BUDGET))]
    assert samples[f"{INFO}_rotations_total"] == [({}, 0.0)]  # the interval (60 s) has not passed
    assert samples[f"{INFO}_skipped_total"] == [({}, 0.0)]
    assert samples[f"{INFO}_series_created_last_hour"] == [({}, float(len(sent)))]


def test_info_families_pass_promtool_and_parse_as_openmetrics(on: Running) -> None:
    proc, sent = on
    wait_for(lambda: len([1 for labels, _ in info_samples(proc).get(INFO, [])
                          if labels["namespace"] == NS]) == len(sent), 15, "the info series")
    text = proc.metrics_text().text
    heads = (f"# HELP {INFO}", f"# TYPE {INFO}")
    mine = "".join(line + "\n" for line in text.splitlines()
                   if line.split(" ")[0].startswith(INFO) or line.startswith(heads))
    assert f"# TYPE {INFO} gauge" in mine
    promtool = require_tool("promtool")
    check = subprocess.run([promtool, "check", "metrics"], input=mine.encode(), capture_output=True,
                           timeout=30)
    assert check.returncode == 0 and not (check.stdout + check.stderr).strip(), (
        (check.stdout + check.stderr).decode(), mine)
    openmetrics = proc.metrics_text(openmetrics=True)
    assert openmetrics.status == 200, openmetrics
    families: dict[str, Any] = {f.name: f for f in openmetrics_families(openmetrics.text)}
    assert families[INFO].type == "gauge"
    assert families[f"{INFO}_rotations"].type == "counter"
    assert families[f"{INFO}_skipped"].type == "counter"


def test_switched_off_there_is_no_info_series(adapter_factory: AdapterFactory,
                                              span_sender: type[SpanSender]) -> None:
    proc = adapter_factory("exemplar-info-off", {"store": STORE, "traces": {"exemplar_info": False}})
    try:
        batch = span_sender(proc.otlp_port).send(NS, "w-off", latencies(0.3))
        # Served as usual (the trace id is still in metricLabels), yet never becomes an info series.
        item = proc.wait_value(NS, "latency_p95_seconds", "workload=w-off", batch.sent_at)["items"][0]
        assert item["metricLabels"]["trace_id"] in batch.trace_ids
        proc.wait_slice_closed(batch.sent_at + 1)  # at least one more tick ran after the data arrived
        text = proc.metrics_text().text
        assert INFO not in text, [line for line in text.splitlines() if INFO in line]
    finally:
        assert proc.stop() == 0, proc.stderr_tail()
