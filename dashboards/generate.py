"""Generate the Grafana dashboards from code: ``python -m dashboards.generate`` (``make dashboards``).

Two dashboards, built with grafana-foundation-sdk (its builders and typed models for Grafana 11.6, which
emit ``schemaVersion`` 41) and written as canonical JSON (sorted keys, two-space indent, one newline at
the end), so a change to a panel is a reviewable diff and ``tests/contract/test_dashboards.py`` can
check byte for byte that the committed files are what this module makes:

* ``latency-autoscaling.json``: what the HPA is served for one workload and why (latency quantiles with
  exemplars, the dual-signal ratio and its reason, CPU, traffic, errors, canary gate, replicas, traces).
* ``latency-adapter-health.json``: the adapter itself (ingest, caps, API, auth, config, freshness, and
  a row of limits and back-pressure).

Both are importable by file (Dashboards -> New -> Import): ``__inputs`` asks for the Prometheus data
source (``DS_PROMETHEUS``), which becomes the default of the ``datasource`` variable; every query and
panel refers to ``${datasource}`` (or ``${trace_datasource}``), never to a data source UID.

``python -m dashboards.generate --check`` exits 1 when a committed file differs from the generated one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_b
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat, QueryEditorMode

from adapter.policy import REASONS

OUT_DIR = Path(__file__).resolve().parent
#: The Grafana release the SDK's types are generated for (also written to ``__requires``).
GRAFANA_VERSION = "11.6.0"
#: Default range and refresh of both dashboards.
TIME_FROM, REFRESH = "now-1h", "30s"
TAGS = ["latency-adapter"]

PROMETHEUS = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
TRACE_TYPE = "tempo"
#: A field override: which fields, and the properties set on them.
Override = tuple[model.MatcherConfig, list[model.DynamicConfigValue]]

# Metric names, as the adapter exposes them on its telemetry port (9464) ----------------------------------
LATENCY = "latency_adapter_workload_latency_seconds"
LATENCY_RATIO = "latency_adapter_latency_ratio"
LATENCY_TARGET = "latency_adapter_latency_target_seconds"
CPU_RATIO = "latency_adapter_cpu_ratio"
DUAL_RATIO = "latency_adapter_dual_signal_ratio"
ERROR_RATIO = "latency_adapter_workload_error_ratio"
CANARY_RATIO = "latency_adapter_canary_latency_ratio"
EXEMPLAR_INFO = "latency_adapter_p95_exemplar_info"
# ... and by kube-state-metrics (HorizontalPodAutoscaler metrics).
KSM_INFO = "kube_horizontalpodautoscaler_info"
KSM_DESIRED = "kube_horizontalpodautoscaler_status_desired_replicas"
KSM_CURRENT = "kube_horizontalpodautoscaler_status_current_replicas"
KSM_MAX = "kube_horizontalpodautoscaler_spec_max_replicas"

WORKLOAD_SELECTOR = 'namespace="$namespace", workload="$workload"'
#: Thresholds drawn as lines: the error-ratio alert level and the canary release gate.
ERROR_RATIO_THRESHOLD = 0.032
CANARY_GATE = 1.1
#: The store's default series cap (config ``store.max_series``); drawn as a line on the health dashboard.
DEFAULT_MAX_SERIES = 10_000
#: The default OTLP high-water mark (config ``limits.otlp_high_water_requests``): beyond it, OTLP answers 429.
DEFAULT_OTLP_HIGH_WATER = 32
#: Window staleness (seconds) drawn as a line: far above a healthy slice (5 s) plus a scrape interval.
STALENESS_LINE_SECONDS = 30
#: Colours of the decision reasons on the state timeline (a reason missing here is a test failure).
REASON_COLORS = {
    "latency": "green",
    "cpu": "blue",
    "dependency_latency": "purple",
    "cpu_only_low_traffic": "yellow",
    "latency_only_cpu_missing": "orange",
}
OTHER_REASON = "other (newer adapter)"

EXEMPLAR_HELP = (
    "Exemplars: the p95 query has exemplars on; each diamond is a real request near the window's p50, p95 or "
    "p99 (label trace_id). To open its trace from the diamond, set on the Prometheus data source: "
    "Exemplars -> Add -> Internal link on, Data source = your Tempo data source, URL label / label name = "
    "trace_id. The data link on the trace_id field of this panel opens the same trace in Explore with the "
    "dashboard's trace data source (${trace_datasource})."
)


# Small typed helpers over the SDK builders ---------------------------------------------------------------


def query(expr: str, ref: str, legend: str = "", *, instant: bool = False,
          exemplar: bool = False) -> prometheus.Dataquery:
    """A Prometheus query on ``${datasource}``, in code mode; instant queries come as a table."""
    q = (prometheus.Dataquery().datasource(PROMETHEUS).expr(expr).ref_id(ref)
         .editor_mode(QueryEditorMode.CODE))
    if legend:
        q = q.legend_format(legend)
    q = q.instant().format(PromQueryFormat.TABLE) if instant else q.range()
    if exemplar:
        q = q.exemplar(True)
    return q


def thresholds(*steps: tuple[float, str]) -> dash.ThresholdsConfig:
    """Absolute thresholds: a transparent base, then ``(value, colour)`` steps."""
    base = [model.Threshold(value=None, color="transparent")]
    return (dash.ThresholdsConfig().mode(model.ThresholdsMode.ABSOLUTE)
            .steps(base + [model.Threshold(value=v, color=c) for v, c in steps]))


def legend() -> common_b.VizLegendOptions:
    return (common_b.VizLegendOptions().display_mode(common.LegendDisplayMode.LIST)
            .placement(common.LegendPlacement.BOTTOM).show_legend(True).calcs([]))


def tooltip() -> common_b.VizTooltipOptions:
    return (common_b.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI)
            .sort(common.SortOrder.DESCENDING))


def trace_link(title: str) -> dict[str, object]:
    """A data link that opens the clicked trace id in Explore with the ``${trace_datasource}`` data source.

    A URL, not an ``internal`` link object: Grafana interpolates dashboard variables in a link's URL but
    uses an internal link's ``datasourceUid`` as written, so ``${trace_datasource}`` would not resolve.
    """
    pane = {
        "trace": {
            "datasource": "${trace_datasource}",
            "queries": [{"refId": "A", "datasource": {"type": TRACE_TYPE, "uid": "${trace_datasource}"},
                         "queryType": "traceql", "query": "${__value.raw}"}],
            "range": {"from": "${__from}", "to": "${__to}"},
        }
    }
    panes = json.dumps(pane, separators=(",", ":"), sort_keys=True)
    return {"title": title, "url": f"/explore?schemaVersion=1&panes={panes}", "targetBlank": True}


def links_on_trace_id(title: str) -> Override:
    return (model.MatcherConfig(id_val="byName", options="trace_id"),
            [model.DynamicConfigValue(id_val="links", value=[trace_link(title)])])


class Layout:
    """Places panels left to right on Grafana's 24-column grid, starting a new row when one is full."""

    def __init__(self) -> None:
        self.x = self.y = self.row_height = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> tuple[int, model.GridPos]:
        if self.x + w > 24:
            self.x, self.y, self.row_height = 0, self.y + self.row_height, 0
        pos = model.GridPos(h=h, w=w, x=self.x, y=self.y)
        self.x += w
        self.row_height = max(self.row_height, h)
        panel_id, self.next_id = self.next_id, self.next_id + 1
        return panel_id, pos

    def row(self, title: str) -> dash.Row:
        """A row header across the grid, on a line of its own; the panels placed after it belong to it."""
        panel_id, pos = self.place(24, 1)
        return dash.Row(title).id(panel_id).grid_pos(pos).collapsed(False)


def timeseries_panel(layout: Layout, title: str, description: str, targets: Sequence[prometheus.Dataquery],
                     *, unit: str, w: int = 12, h: int = 8, decimals: float | None = None,
                     min_value: float | None = 0, line_at: Sequence[tuple[float, str]] = (),
                     overrides: Sequence[Override] = (),
                     stack: bool = False) -> timeseries.Panel:
    panel_id, pos = layout.place(w, h)
    p = (timeseries.Panel().id(panel_id).title(title).description(description).datasource(PROMETHEUS)
         .grid_pos(pos).targets(list(targets)).unit(unit).legend(legend()).tooltip(tooltip())
         .line_width(1).fill_opacity(10).show_points(common.VisibilityMode.NEVER)
         .span_nulls(False))
    if decimals is not None:
        p = p.decimals(decimals)
    if min_value is not None:
        p = p.min(min_value)
    if line_at:
        p = (p.thresholds(thresholds(*line_at))
             .thresholds_style(common_b.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.DASHED)))
    else:
        p = p.thresholds(thresholds())
    if stack:
        p = p.stacking(common_b.StackingConfig().mode(common.StackingMode.NORMAL)).fill_opacity(40)
    for matcher, properties in overrides:
        p = p.with_override(matcher, properties)
    return p


def by_ref(ref: str, *properties: tuple[str, object]) -> Override:
    """Field overrides for the series of one query."""
    return (model.MatcherConfig(id_val="byFrameRefID", options=ref),
            [model.DynamicConfigValue(id_val=key, value=value) for key, value in properties])


DASHED_RED = (("custom.lineStyle", {"fill": "dash", "dash": [10, 10]}),
              ("color", {"mode": "fixed", "fixedColor": "red"}))
DASHED_GREY = (("custom.lineStyle", {"fill": "dash", "dash": [4, 8]}),
               ("color", {"mode": "fixed", "fixedColor": "text"}))


def datasource_variable() -> dash.DatasourceVariable:
    return (dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
            .description("Prometheus that scrapes the adapter's /metrics (telemetry port 9464) and "
                         "kube-state-metrics.")
            .current(model.VariableOption(text="Prometheus", value="${DS_PROMETHEUS}")))


def label_variable(name: str, label: str, query_text: str, description: str) -> dash.QueryVariable:
    return (dash.QueryVariable(name).label(label).description(description).datasource(PROMETHEUS)
            .query(query_text).refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC).multi(False).include_all(False))


def base_dashboard(uid: str, title: str, description: str, tooltip_sync: model.DashboardCursorSync,
                   ) -> dash.Dashboard:
    return (dash.Dashboard(title).uid(uid).description(description).tags(TAGS).editable()
            .tooltip(tooltip_sync).time(TIME_FROM, "now").refresh(REFRESH).timezone("browser")
            .link(dash.DashboardLink("Latency adapter").type(model.DashboardLinkType.DASHBOARDS).tags(TAGS)
                  .as_dropdown(True).include_vars(False).keep_time(True).target_blank(False)
                  .icon("external link").tooltip("The other latency-adapter dashboards")))


def reason_expr() -> str:
    """One series whose value is the index (1..n) of the decision reason in :data:`REASONS` (0: other)."""
    sel = f"{DUAL_RATIO}{{{WORKLOAD_SELECTOR}"
    parts = [f'({sel}, reason="{reason}"}} * 0 + {i})' for i, reason in enumerate(REASONS, 1)]
    parts.append(f"({sel}}} * 0)")
    return "max by (workload) (\n  " + "\n  or ".join(parts) + "\n)"


def reason_mappings() -> list[model.ValueMapping]:
    options = {str(i): model.ValueMappingResult(text=reason, color=REASON_COLORS[reason], index=i)
               for i, reason in enumerate(REASONS, 1)}
    options["0"] = model.ValueMappingResult(text=OTHER_REASON, color="text", index=0)
    return [model.ValueMap(options=options)]


def hpa_expr(metric: str) -> str:
    """A kube-state-metrics HPA series of the HPAs whose scale target is ``$workload``."""
    return (f'max by (horizontalpodautoscaler) (\n  {metric}{{namespace="$namespace"}}\n'
            f"  * on (namespace, horizontalpodautoscaler) group_left ()\n"
            f'  group by (namespace, horizontalpodautoscaler) ({KSM_INFO}{{namespace="$namespace", '
            f'scaletargetref_name="$workload"}})\n)')


def quantile_expr(q: str, window: str = "$__rate_interval") -> str:
    return (f"histogram_quantile({q}, sum by (le) (rate({LATENCY}_bucket{{{WORKLOAD_SELECTOR}}}"
            f"[{window}])))")


# The dashboards -------------------------------------------------------------------------------------------


def latency_autoscaling() -> dash.Dashboard:
    layout = Layout()
    d = base_dashboard(
        "latency-autoscaling", "Latency autoscaling",
        "What the latency adapter serves to the HPA of one workload, and why: latency quantiles with "
        "exemplars, the dual-signal ratio and its reason, CPU, traffic, errors, the canary gate, replicas "
        "and traces near the p95.", model.DashboardCursorSync.CROSSHAIR)
    d = (d.with_variable(datasource_variable())
         .with_variable(label_variable(
             "namespace", "Namespace", f"label_values({DUAL_RATIO}, namespace)",
             "Namespaces with a dual-signal decision (latency or CPU data)."))
         .with_variable(label_variable(
             "workload", "Workload", f'label_values({DUAL_RATIO}{{namespace="$namespace"}}, workload)',
             "Workloads (Deployments, StatefulSets) of the namespace with a decision."))
         .with_variable(dash.DatasourceVariable("trace_datasource").label("Traces").type(TRACE_TYPE)
                        .description("Trace backend for the trace links (trace ids are 32 hex digits).")))

    d = d.with_panel(timeseries_panel(
        layout, "Request latency p50 / p95 / p99 vs target",
        "Quantiles of the workload's request latency from the adapter's histogram (5 ms to 10 s buckets, "
        "interpolated). Look for p95 crossing the dashed red target: the HPA scales out when the served "
        "latency ratio is above 1. The target line is the workload's latency_target_seconds from the "
        "adapter's policy config (defaults plus its overrides). " + EXEMPLAR_HELP,
        [query(quantile_expr("0.5"), "A", "p50"),
         query(quantile_expr("0.95"), "B", "p95", exemplar=True),
         query(quantile_expr("0.99"), "C", "p99"),
         query(f"max({LATENCY_TARGET}{{{WORKLOAD_SELECTOR}}})", "D", "target")],
        unit="s", w=16, h=9,
        overrides=[by_ref("D", *DASHED_RED), links_on_trace_id("Open trace ${__value.raw}")],
    ))
    d = d.with_panel(timeseries_panel(
        layout, "Request rate",
        "Requests per second the adapter accepted for the workload (spans and imported histograms). Look "
        "for traffic that is too low for the latency signal: below defaults.min_samples requests per window "
        "the policy falls back to CPU (reason cpu_only_low_traffic).",
        [query(f"sum(rate({LATENCY}_count{{{WORKLOAD_SELECTOR}}}[$__rate_interval]))", "A", "requests/s")],
        unit="reqps", w=8, h=9))
    d = d.with_panel(timeseries_panel(
        layout, "Dual-signal ratio served to the HPA",
        "dual_signal_ratio is what an HPA with target value 1 scales on: above 1 it adds pods, below 1 it "
        "removes them. The latency ratio (window quantile / latency target) is drawn for comparison. Look "
        "for the two differing: the decision reason (next panel) says why (CPU was higher, or the policy "
        "holds at 1 because latency is high while CPU is low: a slow dependency); and for a ratio stuck far "
        "above 1 (the HPA is at maxReplicas).",
        [query(f"max without (reason) ({DUAL_RATIO}{{{WORKLOAD_SELECTOR}}})", "A", "dual_signal_ratio"),
         query(f"{LATENCY_RATIO}{{{WORKLOAD_SELECTOR}}}", "B", "latency ratio")],
        unit="none", decimals=2, line_at=[(1.0, "red")]))
    panel_id, pos = layout.place(12, 8)
    d = d.with_panel(
        statetimeline.Panel().id(panel_id).grid_pos(pos).title("Decision reason").datasource(PROMETHEUS)
        .description(
            "The reason of the workload's dual-signal decision over time. latency: scaled on latency. "
            "cpu: CPU was the larger ratio. dependency_latency: latency is over target but CPU is under the "
            "floor, so the policy holds at 1 (adding pods would not help a slow dependency). "
            "cpu_only_low_traffic: too few requests for a latency quantile, CPU decides. "
            "latency_only_cpu_missing: no fresh CPU data. "
            "Look for flapping between reasons, and for long dependency_latency stretches (check the "
            "dependency, not the HPA). Gaps: neither signal usable, the HPA holds.")
        .targets([query(reason_expr(), "A", "{{workload}}")])
        .mappings(reason_mappings()).show_value(common.VisibilityMode.AUTO).row_height(0.8)
        .merge_values(True).legend(legend()).tooltip(tooltip()).fill_opacity(70)
        .color_scheme(dash.FieldColor().mode(model.FieldColorModeId.FIXED).fixed_color("text"))
        .thresholds(thresholds()))
    d = d.with_panel(timeseries_panel(
        layout, "CPU utilisation ratio vs target (1)",
        "CPU utilisation of the workload's ready pods / its CPU target (defaults.cpu_target_utilization). "
        "Above the dashed line at 1 the CPU signal alone would scale out. Look for a latency ratio above 1 "
        "with CPU ratio low: that is a dependency slowing requests down, not load.",
        [query(f"{CPU_RATIO}{{{WORKLOAD_SELECTOR}}}", "A", "cpu ratio")],
        unit="none", decimals=2, line_at=[(1.0, "red")]))
    d = d.with_panel(timeseries_panel(
        layout, "Error ratio",
        "Failed / all requests of the workload over the adapter's closed window (what the error_ratio "
        f"metric serves). Look for the ratio above the dashed line at {ERROR_RATIO_THRESHOLD:.1%}: errors "
        "can make latency look better than it is (fast failures), so read the latency panels with it.",
        [query(f"{ERROR_RATIO}{{{WORKLOAD_SELECTOR}}}", "A", "error ratio")],
        unit="percentunit", decimals=2, line_at=[(ERROR_RATIO_THRESHOLD, "red")]))
    d = d.with_panel(timeseries_panel(
        layout, "Canary vs baseline p95 ratio",
        "For every canary pair of the namespace (config canaries), the canary's window p95 / its baseline's "
        f"p95. Look for a canary above the dashed release gate at {CANARY_GATE:g}: it is more than "
        f"{CANARY_GATE - 1:.0%} slower than the baseline. No series: no canary pair configured, or too few "
        "requests.",
        [query(f'{CANARY_RATIO}{{namespace="$namespace"}}', "A", "{{canary}} / {{baseline}}")],
        unit="none", decimals=2, line_at=[(CANARY_GATE, "red")]))
    d = d.with_panel(timeseries_panel(
        layout, "HPA replicas: desired vs current",
        "From kube-state-metrics, for the HPAs whose scale target is the workload: desired replicas (what "
        "the HPA computed from the served ratio), current replicas, and the maximum. Look for desired "
        "staying at the maximum (the HPA cannot scale further) and for current lagging desired (pods not "
        "starting: quota, scheduling, image pulls).",
        [query(hpa_expr(KSM_DESIRED), "A", "desired ({{horizontalpodautoscaler}})"),
         query(hpa_expr(KSM_CURRENT), "B", "current ({{horizontalpodautoscaler}})"),
         query(hpa_expr(KSM_MAX), "C", "max ({{horizontalpodautoscaler}})")],
        unit="none", decimals=0, overrides=[by_ref("C", *DASHED_GREY)]))
    panel_id, pos = layout.place(24, 8)
    matcher, properties = links_on_trace_id("Open trace ${__value.raw}")
    d = d.with_panel(
        table.Panel().id(panel_id).grid_pos(pos).title("Traces near each workload's p95")
        .datasource(PROMETHEUS)
        .description(
            "latency_adapter_p95_exemplar_info: for every workload of the namespace, one real request near "
            "its window p95 (replaced at most once per traces.exemplar_info_interval_seconds). Click a trace "
            "id to open the trace in Explore with the trace data source selected above. Look here when the "
            "p95 jumps: the trace shows where the time went.")
        .targets([query(f'max by (workload, trace_id) ({EXEMPLAR_INFO}{{namespace="$namespace"}})', "A",
                        instant=True)])
        .with_transformation(model.DataTransformerConfig(
            id_val="organize",
            options={"excludeByName": {"Time": True, "Value": True},
                     "indexByName": {"workload": 0, "trace_id": 1}, "renameByName": {}}))
        .show_header(True).cell_height(common.TableCellHeight.SM).filterable(True)
        .sort_by([common_b.TableSortByFieldState().display_name("workload").desc(False)])
        .footer(common_b.TableFooterOptions().show(False).reducer(["sum"]).count_rows(False))
        .thresholds(thresholds())
        .with_override(matcher, properties))
    return d


def adapter_health() -> dash.Dashboard:
    layout = Layout()
    inst = 'instance=~"$instance"'
    d = base_dashboard(
        "latency-adapter-health", "Latency adapter health",
        "The latency adapter itself: is telemetry arriving and accepted, are caps hit, how fast and how "
        "often the external metrics API answers, auth and config reloads, and whether served values are "
        "fresh.", model.DashboardCursorSync.CROSSHAIR)
    d = (d.with_variable(datasource_variable())
         .with_variable(
             dash.QueryVariable("instance").label("Adapter instance").datasource(PROMETHEUS)
             .description("Adapter pods (Prometheus instance label) to include.")
             .query("label_values(latency_adapter_active_series, instance)")
             .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(model.VariableSort.ALPHABETICAL_ASC)
             .multi(True).include_all(True).all_value(".*")
             .current(model.VariableOption(text="All", value="$__all", selected=True))))

    def rate(metric: str, by: str) -> str:
        return f"sum by ({by}) (rate({metric}{{{inst}}}[$__rate_interval]))"

    d = d.with_panel(timeseries_panel(
        layout, "OTLP items by outcome",
        "Spans and histogram points received over OTLP per second, by signal and outcome (accepted, "
        "rejected, ignored). Look for accepted dropping to 0 (collectors stopped exporting, network policy) "
        "and for rejected or ignored rising (see the next panel for why).",
        [query(rate("latency_adapter_otlp_items_total", "signal, outcome"), "A", "{{signal}} {{outcome}}")],
        unit="cps", stack=True))
    d = d.with_panel(timeseries_panel(
        layout, "OTLP rejections by reason",
        "Refused OTLP requests or items per second by signal and reason: body or decompressed size limits, "
        "malformed input, series caps, labels too long. Look for any sustained rate: it is data the HPA "
        "does not see; the adapter log has one line per refusal with the detail.",
        [query(rate("latency_adapter_otlp_rejected_total", "signal, reason"), "A", "{{signal}} {{reason}}")],
        unit="cps"))
    d = d.with_panel(timeseries_panel(
        layout, "OTLP export requests by HTTP code",
        "OTLP/HTTP export requests per second by signal and status code. Look for 4xx (the sender's "
        "payloads are refused: fix the sender) and 5xx or 429 (the adapter is overloaded).",
        [query(rate("latency_adapter_otlp_requests_total", "signal, code"), "A", "{{signal}} {{code}}")],
        unit="reqps"))
    d = d.with_panel(timeseries_panel(
        layout, "Active series vs cap",
        "Latency series (namespace, workload, route) with data in the current window, per adapter. The "
        f"dashed line is the default cap, store.max_series = {DEFAULT_MAX_SERIES} (edit the threshold if "
        "your config sets another value; store.max_series_per_namespace, 2000 by default, caps each "
        "namespace). Look for the count approaching the line: at the cap, new series are dropped (next "
        "panel).",
        [query(f"latency_adapter_active_series{{{inst}}}", "A", "active series {{instance}}")],
        unit="short", line_at=[(DEFAULT_MAX_SERIES, "red")]))
    d = d.with_panel(timeseries_panel(
        layout, "Samples dropped by series cap",
        "Samples per second dropped because a series cap was reached (series_cap: store.max_series; "
        "namespace_series_cap: store.max_series_per_namespace). Look for anything above 0: workloads without "
        "a latency signal; raise the cap or cut label cardinality (routes).",
        [query(rate("latency_adapter_series_dropped_total", "cap"), "A", "{{cap}}")],
        unit="cps"))
    d = d.with_panel(timeseries_panel(
        layout, "External metrics API requests by route and code",
        "Requests per second from the kube-aggregator (HPA controller, kubectl) by route (discovery, "
        "resources, value, other) and status code. Every HPA reads every 15 s by default; look for non-200 "
        "codes (next panels) and for the value route going quiet (APIService unavailable).",
        [query(rate("latency_adapter_api_request_duration_seconds_count", "route, code"), "A",
               "{{route}} {{code}}")],
        unit="reqps"))
    d = d.with_panel(timeseries_panel(
        layout, "External metrics API latency p99 by route and code",
        "99th percentile of the API's answer time by route and code (buckets 0.5 ms to 1 s). Values are "
        "served from a cache refreshed every tick, so p99 should stay in the low milliseconds; look for "
        "growth on the value route (event loop busy: too many series or scrapes).",
        [query("histogram_quantile(0.99, sum by (le, route, code) (rate("
               f"latency_adapter_api_request_duration_seconds_bucket{{{inst}}}[$__rate_interval])))", "A",
               "{{route}} {{code}}")],
        unit="s"))
    d = d.with_panel(timeseries_panel(
        layout, "API rejections by reason",
        "API requests answered with an error per second, by Status reason: Unauthorized (401: bad or "
        "expired token), Forbidden (403: RBAC), NotFound (404: no data for the selector, the HPA holds), "
        "BadRequest, ServiceUnavailable. Look for 401/403 after a credential or RBAC change, and for "
        "NotFound on workloads that should have data.",
        [query(rate("latency_adapter_api_rejected_total", "reason"), "A", "{{reason}}")],
        unit="reqps"))
    d = d.with_panel(timeseries_panel(
        layout, "Auth reviews by kind and result (secure mode)",
        "Delegated TokenReviews (kind token) and SubjectAccessReviews (kind access) per second by result: "
        "call (sent to the apiserver), cache_hit, refresh_ahead, error, stale_use. Look for error or "
        "stale_use above 0: the apiserver is not answering and cached decisions are being used. Empty with "
        "--insecure-no-auth.",
        [query(rate("latency_adapter_auth_reviews_total", "kind, result"), "A", "{{kind}} {{result}}")],
        unit="reqps"))
    d = d.with_panel(timeseries_panel(
        layout, "CPU poll rounds and errors (Kubernetes CPU source)",
        "Polls of metrics-server and pod specs per second, and failed polls. Look for errors above 0: the "
        "last CPU reading is kept until it is stale (defaults.stale_after_seconds), then decisions fall back "
        "to latency_only_cpu_missing. Empty when CPU comes over OTLP (cpu.source otlp).",
        [query(f"sum(rate(latency_adapter_cpu_poll_rounds_total{{{inst}}}[$__rate_interval]))", "A",
               "rounds"),
         query(f"sum(rate(latency_adapter_cpu_poll_errors_total{{{inst}}}[$__rate_interval]))", "B",
               "errors")],
        unit="cps", overrides=[by_ref("B", ("color", {"mode": "fixed", "fixedColor": "red"}))]))
    d = d.with_panel(timeseries_panel(
        layout, "Config reloads by outcome",
        "Policy reloads of the --config file (defaults, workloads, canaries) in each interval, by outcome, "
        "and whether a change needs a restart (other sections). Look for failed above 0: the old policy "
        "stays and the adapter log says which key is wrong.",
        [query(f"sum by (outcome) (increase(latency_adapter_config_reloads_total{{{inst}}}"
               "[$__rate_interval]))", "A", "{{outcome}}"),
         query(f"max(latency_adapter_config_restart_required{{{inst}}})", "B", "restart required")],
        unit="short", overrides=[by_ref("B", *DASHED_GREY)]))
    d = d.with_panel(timeseries_panel(
        layout, "Served window staleness",
        "Seconds between now and the end of the last closed slice, the time every served value refers to. "
        "It saw-tooths between 0 and one slice (store.slice_seconds, 5 s by default) plus the scrape "
        f"interval. Look for a steady climb past the dashed line at {STALENESS_LINE_SECONDS} s: the "
        "adapter's ticker stalled and the HPA is being served old values.",
        [query(f"time() - latency_adapter_window_end_timestamp_seconds{{{inst}}}", "A", "{{instance}}")],
        unit="s", line_at=[(STALENESS_LINE_SECONDS, "red")]))
    d = d.with_panel(timeseries_panel(
        layout, "p95 exemplar info: series created vs budget",
        "New latency_adapter_p95_exemplar_info series created in the last rolling hour against the "
        "configured budget (traces.exemplar_info_series_per_hour). Look for created reaching the budget: "
        "trace ids then stop rotating until the hour frees budget (next panel).",
        [query(f"latency_adapter_p95_exemplar_info_series_created_last_hour{{{inst}}}", "A",
               "created last hour {{instance}}"),
         query(f"latency_adapter_p95_exemplar_info_series_budget{{{inst}}}", "B", "budget {{instance}}")],
        unit="short", overrides=[by_ref("B", *DASHED_RED)]))
    d = d.with_panel(timeseries_panel(
        layout, "p95 exemplar info: skipped and rotated",
        "Per second: additions or rotations of p95 trace ids refused because the hourly series budget was "
        "used up (skipped), and trace ids replaced (rotations). Look for skipped above 0: the trace ids "
        "shown are older than the interval; raise the budget or the interval.",
        [query(f"sum(rate(latency_adapter_p95_exemplar_info_skipped_total{{{inst}}}[$__rate_interval]))", "A",
               "skipped"),
         query(f"sum(rate(latency_adapter_p95_exemplar_info_rotations_total{{{inst}}}[$__rate_interval]))",
               "B", "rotations")],
        unit="cps", overrides=[by_ref("A", ("color", {"mode": "fixed", "fixedColor": "red"}))]))
    d = d.with_panel(timeseries_panel(
        layout, "Policy evaluations by reason",
        "Dual-signal policy evaluations per second over all workloads, by reason (none: neither signal "
        "usable, the HPA holds). Look for none or dependency_latency growing across many workloads at once: "
        "a telemetry outage or a shared dependency, not a scaling problem.",
        [query(rate("latency_adapter_decisions_total", "reason"), "A", "{{reason}}")],
        unit="cps", stack=True, w=24))

    # Limits and back-pressure (adapter/limits.py): every limit hit, the OTLP ingest queue, memory.
    d = d.with_row(layout.row("Limits and back-pressure"))
    d = d.with_panel(timeseries_panel(
        layout, "Limit hits by limit",
        "Times per second each limit was hit (latency_adapter_limit_hits_total; README \"How it fails\" "
        "says what each answers). ingest_queue and memory: OTLP answered 429 (back-pressure: senders retry, "
        "data arrives late); concurrent_requests: the external metrics API answered 429 (HPA reads fail); "
        "header_*, connections: connections closed; the OTLP body and series limits also show as "
        "rejections above. Look for any limit above 0 for more than a burst: alerts "
        "LatencyAdapterIngestBackpressure and LatencyAdapterLimitsHit fire after 10 minutes of it.",
        [query(rate("latency_adapter_limit_hits_total", "limit"), "A", "{{limit}}")],
        unit="cps", w=8))
    d = d.with_panel(timeseries_panel(
        layout, "OTLP requests in flight vs high-water mark",
        "OTLP requests being received or applied at the moment of each scrape, per adapter (the ingest "
        f"queue). The dashed line is the default high-water mark, limits.otlp_high_water_requests = "
        f"{DEFAULT_OTLP_HIGH_WATER} (edit the threshold if your config sets another value): above it, new "
        "requests get 429. A scrape sees one instant, so short peaks are missed; limit hits with "
        "limit=ingest_queue (previous panel) count every refusal. Look for the count staying near the "
        "line: the replica does not keep up (CPU) or senders are slow to deliver their bodies.",
        [query(f"latency_adapter_otlp_inflight_requests{{{inst}}}", "A", "in flight {{instance}}")],
        unit="short", w=8, line_at=[(DEFAULT_OTLP_HIGH_WATER, "red")]))
    d = d.with_panel(timeseries_panel(
        layout, "Resident memory vs memory budget",
        "The dashed line is the memory budget in force per adapter (latency_adapter_memory_budget_bytes: "
        "limits.memory_budget_bytes, or 80 % of the container's memory limit): while resident memory "
        "(process_resident_memory_bytes) is above it, OTLP answers 429 (limit=memory). The third line "
        "is the window store's estimate (latency_adapter_store_bytes), the part that grows "
        "with series. Look for resident memory climbing towards the budget: cut series (routes) or raise "
        "the container's memory limit.",
        [query(f"process_resident_memory_bytes{{{inst}}}", "A", "resident {{instance}}"),
         query(f"latency_adapter_memory_budget_bytes{{{inst}}}", "B", "budget {{instance}}"),
         query(f"latency_adapter_store_bytes{{{inst}}}", "C", "store {{instance}}")],
        unit="bytes", w=8, overrides=[by_ref("B", *DASHED_RED)]))
    d = d.with_panel(timeseries_panel(
        layout, "Event-loop lag p99 per adapter",
        "99th percentile of how late each adapter's event loop ran what was due "
        "(latency_adapter_event_loop_lag_seconds, a probe woken every 50 ms): the wait every API request "
        "and OTLP body adds to its own handling time, which the API latency panel above does not show. "
        "Look for tens of milliseconds: the core is close to full (too much ingest for one replica: add "
        "CPU, send histograms instead of spans, or add replicas); seconds: a stall.",
        [query("histogram_quantile(0.99, sum by (le, instance) (rate("
               f"latency_adapter_event_loop_lag_seconds_bucket{{{inst}}}[$__rate_interval])))", "A",
               "{{instance}}")],
        unit="s", w=12))
    d = d.with_panel(timeseries_panel(
        layout, "Garbage-collector pauses p99 per adapter",
        "99th percentile of each adapter's cyclic garbage collector pauses by generation "
        "(latency_adapter_gc_pause_seconds): 0 is a young collection (about a millisecond), 2 the full "
        "collection the adapter runs once a minute, which grows with the number of series. The event "
        "loop, and every request in flight, waits for each. Look for a lag spike beside a generation-2 "
        "pause (the collector, not queueing) and for generation 0 above a few milliseconds.",
        [query("histogram_quantile(0.99, sum by (le, instance, generation) (rate("
               f"latency_adapter_gc_pause_seconds_bucket{{{inst}}}[$__rate_interval])))", "A",
               "{{instance}} generation {{generation}}")],
        unit="s", w=12))
    return d


# Import envelope and output ------------------------------------------------------------------------------

PANEL_NAMES = {"timeseries": "Time series", "state-timeline": "State timeline", "table": "Table"}


def importable(doc: dict[str, Any]) -> dict[str, Any]:
    """Add what Grafana's "Import dashboard" (by file) reads: the inputs to ask for and the plugins needed."""
    panel_types = sorted({p["type"] for p in doc.get("panels", []) if p["type"] != "row"})  # rows: built in
    variable_types = {v.get("type"): v.get("query") for v in doc["templating"].get("list", [])}
    requires: list[dict[str, str]] = [
        {"type": "grafana", "id": "grafana", "name": "Grafana", "version": GRAFANA_VERSION},
        {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"},
    ]
    if TRACE_TYPE in variable_types.values():
        requires.append({"type": "datasource", "id": TRACE_TYPE, "name": "Tempo", "version": "1.0.0"})
    requires += [{"type": "panel", "id": t, "name": PANEL_NAMES[t], "version": ""} for t in panel_types]
    return {
        "__inputs": [{
            "name": "DS_PROMETHEUS",
            "label": "Prometheus",
            "description": "Prometheus that scrapes the latency adapter's /metrics and kube-state-metrics",
            "type": "datasource",
            "pluginId": "prometheus",
            "pluginName": "Prometheus",
        }],
        "__elements": {},
        "__requires": requires,
        **doc,
    }


def to_document(builder: cogbuilder.Builder[model.Dashboard]) -> dict[str, Any]:
    """The dashboard as plain JSON data (via the SDK's encoder), with the import envelope added."""
    doc: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(builder.build()))
    doc.setdefault("annotations", {"list": []})
    doc["annotations"].setdefault("list", [])
    return importable(doc)


def render(doc: dict[str, Any]) -> str:
    """The canonical text of a dashboard file: sorted keys, two-space indent, a final newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


DASHBOARDS: dict[str, Callable[[], dash.Dashboard]] = {
    "latency-autoscaling.json": latency_autoscaling,
    "latency-adapter-health.json": adapter_health,
}


def generate() -> dict[str, str]:
    """File name -> canonical text of every dashboard."""
    return {name: render(to_document(build())) for name, build in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_DIR,
                        help="directory to write to (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a file differs from what would be generated")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = args.out / name
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            continue
        if args.check:
            stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    if stale:
        print("out of date (run `make dashboards`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
