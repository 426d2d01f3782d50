"""Every dashboard query returns data from a real Prometheus scraping a real adapter fed by the real OTel SDK.

The setup is what the dashboards see in a cluster, minus the cluster:

* a real ``latency-adapter serve --insecure-no-auth`` with ``--config`` (``defaults: {min_samples: 10}``,
  a canary pair, 1 s slices, a small per-namespace series cap);
* traffic from :func:`adapter.demo.run_demo` (the real OpenTelemetry SDK and OTLP/HTTP exporters: SERVER
  spans of ``checkout`` and ``catalog`` with 1 % errors, and pod CPU as OTLP metrics), plus a flood of
  workloads in another namespace that hits the series cap, one malformed OTLP body, and a steady trickle
  of external metrics API reads (and a 404 now and then);
* a tiny exporter in this test serving kube-state-metrics' HPA series (Prometheus text format) for an HPA
  that scales ``checkout``;
* a real Prometheus (:mod:`tests.prometheus`) scraping both every second.

Then every panel's PromQL, with the dashboard variables set to this namespace and workload and Grafana's
intervals to a few seconds, goes through ``/api/v1/query`` and must return at least one series with a
finite value; a failure names the dashboard and the panel title. Panels whose metrics exist only in
secure mode or with the Kubernetes CPU source are exempted (:data:`EXEMPT`, with the reason), but their
metric families must still be defined in ``adapter/``. Every metric name the dashboards use is on the
adapter's ``/metrics`` (or exempted likewise) or is a documented kube-state-metrics name, served here.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adapter.demo import DemoSettings, run_demo
from tests.contract.test_dashboards import (
    DASHBOARDS,
    EXTERNAL_METRICS,
    PanelQuery,
    adapter_source,
    base_metric_name,
    metric_names,
    panel_queries,
    substitute,
    variable_queries,
)
from tests.integration.conftest import AdapterFactory, AdapterProcess, SpanSender
from tests.integration.process import wait_for
from tests.tooling import require_tool

if TYPE_CHECKING:  # imported by pytest as a plugin (fixture, report hook), with assertion rewriting
    from tests.prometheus import PrometheusFactory, PrometheusServer

pytest_plugins = ["tests.prometheus"]

NS = "dashboards"
WORKLOAD = "checkout"  # a demo workload; the other one, catalog, is configured as its canary
CANARY = "catalog"
FLOOD_NS = "flood"
#: Each namespace keeps at most this many series (the demo makes 3: checkout's two routes and catalog).
SERIES_PER_NAMESPACE = 4
FLOOD_WORKLOADS = 8
CONFIG: dict[str, Any] = {
    "store": {"window_seconds": 30, "slice_seconds": 1,
              "max_series_per_namespace": SERIES_PER_NAMESPACE},
    "cpu": {"source": "otlp"},
    "defaults": {"min_samples": 10},
    "canaries": [{"namespace": NS, "canary": CANARY, "baseline": WORKLOAD}],
}
#: Grafana's variables for this test: a few seconds where Grafana would compute an interval.
VALUES = {
    "namespace": NS, "workload": WORKLOAD, "instance": ".*",
    "__rate_interval": "15s", "__interval": "5s", "__range": "1m", "__range_s": "60",
}
#: (dashboard, panel title) -> why the panel has no data here. Its metrics must still be in adapter/.
EXEMPT = {
    ("latency-adapter-health.json", "Auth reviews by kind and result (secure mode)"):
        "delegated authentication runs only in secure mode; this adapter runs --insecure-no-auth",
    ("latency-adapter-health.json", "CPU poll rounds and errors (Kubernetes CPU source)"):
        "the Kubernetes CPU poller runs only with a Kubernetes API (cpu.source kubernetes/auto in a "
        "cluster); here CPU comes over OTLP",
}
HPA = "checkout-latency"
#: kube-state-metrics' HPA series for an HPA that scales this test's workload (values: replicas).
KSM_SERIES = {
    "kube_horizontalpodautoscaler_info": 1,
    "kube_horizontalpodautoscaler_spec_max_replicas": 10,
    "kube_horizontalpodautoscaler_status_current_replicas": 3,
    "kube_horizontalpodautoscaler_status_desired_replicas": 4,
}
READY_TIMEOUT = 90.0
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def ksm_exposition() -> bytes:
    """The HPA metrics as kube-state-metrics exposes them (text format 0.0.4)."""
    lines = []
    for name, value in KSM_SERIES.items():
        labels = f'namespace="{NS}",horizontalpodautoscaler="{HPA}"'
        if name == "kube_horizontalpodautoscaler_info":
            labels += (',scaletargetref_api_version="apps/v1",scaletargetref_kind="Deployment",'
                       f'scaletargetref_name="{WORKLOAD}"')
        lines += [f"# HELP {name} kube-state-metrics HorizontalPodAutoscaler metric (test double).",
                  f"# TYPE {name} gauge", f"{name}{{{labels}}} {value}"]
    return ("\n".join(lines) + "\n").encode()


class _KsmHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404)
            return
        body = ksm_exposition()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass


@dataclass
class Traffic:
    """Background load: the demo (spans + CPU) and external metrics API reads, until :meth:`stop`."""

    adapter: AdapterProcess
    stop_event: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    api_answers: dict[int, int] = field(default_factory=dict)

    def start(self) -> None:
        settings = DemoSettings(otlp_endpoint=f"http://127.0.0.1:{self.adapter.otlp_port}", namespace=NS,
                                rate=40.0, metrics_interval=1.0)
        self.threads = [threading.Thread(target=run_demo, args=(settings, self.stop_event), daemon=True,
                                         name="dashboard-demo"),
                        threading.Thread(target=self._read_api, daemon=True, name="dashboard-api")]
        for thread in self.threads:
            thread.start()

    def _read_api(self) -> None:
        i = 0
        while not self.stop_event.wait(0.25):
            i += 1
            try:
                if i % 8 == 0:  # a path that does not exist: NotFound, counted by reason
                    resp = self.adapter.api("/apis/external.metrics.k8s.io/v1beta1/nothing/here")
                else:
                    resp = self.adapter.value(NS, "dual_signal_ratio", f"workload={WORKLOAD}")
            except OSError:
                continue
            self.api_answers[resp.status] = self.api_answers.get(resp.status, 0) + 1

    def stop(self) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(30)


@dataclass
class Stack:
    adapter: AdapterProcess
    prometheus: PrometheusServer
    traffic: Traffic


@pytest.fixture(scope="module")
def ksm_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _KsmHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="ksm-exporter")
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.fixture(scope="module")
def prometheus_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusFactory]:
    """The harness of :mod:`tests.prometheus`, for the whole module: one Prometheus serves every test
    (the plugin's report hook still attaches its log to a failing test's report)."""
    from tests.prometheus import PrometheusFactory

    factory = PrometheusFactory(tmp_path_factory.mktemp("prometheus"), require_tool("prometheus"))
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def stack(adapter_factory: AdapterFactory, span_sender: type[SpanSender], ksm_port: int,
          prometheus_factory: PrometheusFactory) -> Iterator[Stack]:
    adapter = adapter_factory("dashboards", CONFIG)
    traffic = Traffic(adapter)
    traffic.start()
    try:
        # More workloads than a namespace may hold: the rest is dropped and counted by cap.
        sender = span_sender(adapter.otlp_port)
        for i in range(FLOOD_WORKLOADS):
            sender.send(FLOOD_NS, f"w{i}", [0.05] * 20)
        # One malformed OTLP body: a rejection by reason.
        assert adapter.otlp("/v1/traces", b"\x0a\x05abc", PROTOBUF).status == 400
        prom = prometheus_factory([f"127.0.0.1:{adapter.telemetry_port}", f"127.0.0.1:{ksm_port}"])
        prom.wait_scraped()
        yield Stack(adapter, prom, traffic)
    finally:
        traffic.stop()
    assert adapter.stop() == 0, adapter.stderr_tail()


def all_queries() -> list[PanelQuery]:
    return [q for name in DASHBOARDS for q in panel_queries(name)]


def exempt(q: PanelQuery) -> bool:
    return (q.dashboard, q.panel) in EXEMPT


def problem(prom: PrometheusServer, q: PanelQuery) -> str | None:
    """None when the query returns at least one series with a finite value, else what it returned."""
    result = prom.query(substitute(q.expr, VALUES))
    if not result:
        return "no series"
    values = [float(r["value"][1]) for r in result]
    if not any(math.isfinite(v) for v in values):
        return f"{len(result)} series, none finite: {values[:5]}"
    return None


def test_every_panel_query_returns_data(stack: Stack) -> None:
    prom = stack.prometheus
    assert set(EXEMPT) <= {(q.dashboard, q.panel) for q in all_queries()}, "EXEMPT names a panel that is gone"
    queries = [q for q in all_queries() if not exempt(q)]
    assert len(queries) >= 30

    def all_answer() -> bool:
        return all(problem(prom, q) is None for q in queries)

    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline and not all_answer():
        time.sleep(1.0)
    failures = [f"{q.name}: {p}\n    {substitute(q.expr, VALUES)}" for q in queries
                if (p := problem(prom, q)) is not None]
    assert not failures, (f"{len(failures)} dashboard queries returned no data after {READY_TIMEOUT:g}s "
                          f"(API answers {stack.traffic.api_answers}):\n" + "\n".join(failures))
    # The exemptions are real: in this mode those panels are empty (an exemption that is no longer needed
    # should be dropped, so the panel is checked like the others).
    for q in all_queries():
        if exempt(q):
            assert prom.query(substitute(q.expr, VALUES)) == [], f"{q.name} has data: drop its exemption"

    # The values mean what the panels say (a sample, not a re-test of the adapter).
    def scalar(expr: str) -> float:
        [row] = prom.query(expr)
        return float(row["value"][1])

    by_title = {q.panel: q for q in queries if q.ref_id == "A"}
    assert scalar(substitute(by_title["HPA replicas: desired vs current"].expr, VALUES)) == 4
    reason = scalar(substitute(by_title["Decision reason"].expr, VALUES))
    assert reason in (1, 2, 3, 4, 5), reason  # a known reason, not "other"
    p95 = next(q for q in queries if q.panel.startswith("Request latency") and q.ref_id == "B")
    assert 0.01 < scalar(substitute(p95.expr, VALUES)) < 5.0
    dropped = prom.query(substitute(by_title["Samples dropped by series cap"].expr, VALUES))
    assert {r["metric"]["cap"] for r in dropped} == {"namespace_series_cap"}


def test_latency_panel_exemplars_carry_trace_ids(stack: Stack) -> None:
    """The target with ``exemplar: true`` gets exemplars from Prometheus, each with a trace_id."""
    prom = stack.prometheus
    [target] = [q for q in panel_queries("latency-autoscaling.json") if q.panel.startswith("Request latency")
                and q.ref_id == "B"]
    expr = substitute(target.expr, VALUES)

    def exemplars() -> list[dict[str, Any]] | None:
        found = [e for series in prom.query_exemplars(expr, time.time() - 600, time.time() + 60)
                 for e in series["exemplars"]]
        return found or None

    found = wait_for(exemplars, READY_TIMEOUT, "exemplars for the p95 query")
    assert all(len(e["labels"]["trace_id"]) == 32 for e in found), found[:3]


def test_variable_queries_list_the_test_workload(stack: Stack) -> None:
    """``label_values(selector, label)`` of every query variable offers this test's namespace/workload."""
    prom = stack.prometheus
    expected = {"namespace": NS, "workload": WORKLOAD,
                "instance": f"127.0.0.1:{stack.adapter.telemetry_port}"}
    for name in DASHBOARDS:
        for var, text in variable_queries(name).items():
            selector, _, label = text.removeprefix("label_values(").removesuffix(")").rpartition(",")
            path = f"label/{label.strip()}/values"
            params = {"match[]": substitute(selector.strip(), VALUES)}
            want = expected[var]

            def values(path: str = path, params: dict[str, str] = params, want: str = want,
                       ) -> list[str] | None:
                found: list[str] = prom.api(path, params)
                return found if want in found else None

            wait_for(values, READY_TIMEOUT, f"{name} variable {var} to offer {want!r}")


def test_metric_names_exist_on_the_adapter_or_are_documented(stack: Stack) -> None:
    def exposed() -> set[str] | None:
        text = stack.adapter.metrics_text().text
        names = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
        return names if "latency_adapter_canary_latency_ratio" in names else None

    on_metrics = wait_for(exposed, READY_TIMEOUT, "every decision family on /metrics (canary included)")
    source = adapter_source()
    exempt_metrics = {m for q in all_queries() if exempt(q) for m in metric_names(q.expr)}
    assert exempt_metrics, "the exempt panels have metrics to check"
    used = {m for q in all_queries() for m in metric_names(q.expr)}
    for name in DASHBOARDS:
        for text in variable_queries(name).values():
            used |= metric_names(text)
    missing = []
    for metric in sorted(used):
        if metric in EXTERNAL_METRICS:
            assert metric in KSM_SERIES, f"{metric}: documented as kube-state-metrics but not served here"
        elif metric in exempt_metrics:
            assert f'"{base_metric_name(metric)}"' in source, f"{metric} (exempt): not defined in adapter/"
        elif metric not in on_metrics:
            missing.append(metric)
    assert not missing, f"not on the adapter's /metrics: {missing}"
