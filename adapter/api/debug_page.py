"""``/debug/workloads``: what the adapter knows about each workload, as JSON or as one HTML page.

Pure: no I/O and no clock. :func:`collect` reads the store and the dual-signal policy at a given time;
:func:`to_json` and :func:`render_html` turn that snapshot into a document; :func:`wants_html` does the
content negotiation. :mod:`adapter.api.ops` wires them to the operations port.

The JSON document (all times are Unix seconds, all latencies seconds, ratios plain numbers)::

    {
      "epoch": 200,                      # id of the last closed slice (null before the first one)
      "at": 1000.0,                      # the moment the values were computed for
      "window_seconds": 60,
      "trace_url_template": "https://tempo.example/explore?traceId={trace_id}",   # or null
      "series": [                        # one row per live series, as before (workload, route)
        {"namespace": "shop", "workload": "checkout", "route": "cart",   # no "route" key without one
         <window fields>}
      ],
      "workloads": [                     # one row per (namespace, workload) with latency or CPU data
        {"namespace": "shop", "workload": "checkout",
         "selectable": true,             # false: not a valid label value, no HPA can select it
         <window fields of all the workload's series merged>,
         "cpu_utilization": 0.42, "cpu_pods": 3, "cpu_observed_at": 995.0,   # nulls when unknown
         "latency_target_seconds": 0.25, "cpu_target_utilization": 0.6,     # the workload's policy
         "decision": {"ratio": 1.2, "reason": "latency", "latency_ratio": 1.2, "cpu_ratio": 0.7,
                      "trace_id": "4bf9…", "trace_url": "https://…"},       # null: the HPA holds
         "routes": [{"route": "cart", <window fields>}, …]}                  # [] without route series
      ]
    }

``<window fields>`` (every key always present; ``null`` when the window holds no request)::

    "latency_p50_seconds", "latency_p50_trace_id", "latency_p50_trace_url",
    "latency_p95_seconds", "latency_p95_trace_id", "latency_p95_trace_url",
    "latency_p99_seconds", "latency_p99_trace_id", "latency_p99_trace_url",
    "request_rate", "error_ratio", "error_trace_id", "error_trace_url", "requests_in_window"

A ``*_trace_id`` is a real request near that value (``error_trace_id``: the newest failed request in
the window); its ``*_trace_url`` is the link made from ``traces.url_template`` (``null`` without a
template or a trace id). ``decision`` is what ``dual_signal_ratio`` serves for ``workload=<name>``.

The HTML page (served when the client prefers ``text/html``, or with ``?format=html``) is one table with
the same values: a row per workload, its routes indented below it. It is self-contained (inline style,
no script, no external asset) and every value that comes from data is escaped; a URL is only ever made
from the validated template, with the trace id URL-quoted into it.

Length: about 440 lines, a third of them the inline page style and legend; the JSON and HTML views
are built from one row model so they cannot disagree.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from datetime import UTC, datetime

from ..dual_signal import DualSignal, Selection
from ..errors import BadRequest
from ..policy import CpuSignal, Decision
from ..provider import LATENCY_QUANTILES
from ..selector import Requirement, Selector
from ..store import Series, WindowStore, WindowView
from ..traces import trace_url

#: Headers of the HTML page: nothing may load or run, the type may not be guessed, no referrer leaks.
HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: Values of ``?format=``.
FORMATS = ("html", "json")


# -- the snapshot ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Quantile:
    metric: str  # e.g. latency_p95_seconds
    seconds: float | None
    trace_id: str | None


@dataclass(frozen=True)
class Window:
    """The latency figures of one or more series over the window."""

    quantiles: tuple[Quantile, ...]
    request_rate: float
    error_ratio: float
    error_trace_id: str | None
    requests: float


@dataclass(frozen=True)
class RouteRow:
    namespace: str
    workload: str
    route: str  # "" for the series without a route
    window: Window | None


@dataclass(frozen=True)
class WorkloadRow:
    namespace: str
    workload: str
    selectable: bool
    window: Window | None
    cpu: CpuSignal | None
    decision: Decision | None
    latency_target_seconds: float | None
    cpu_target_utilization: float | None
    routes: tuple[RouteRow, ...]


@dataclass(frozen=True)
class Snapshot:
    at: float
    epoch: int | None
    window_seconds: int
    series: tuple[RouteRow, ...]
    workloads: tuple[WorkloadRow, ...]


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def window_of(view: WindowView | None) -> Window | None:
    """The figures of ``view`` (``None`` for an empty window)."""
    if view is None or view.count <= 0:
        return None
    quantiles = []
    for metric, q in LATENCY_QUANTILES.items():
        value = _finite(view.sketch.quantile(q))
        exemplar = view.exemplar_near(value) if value is not None else None
        quantiles.append(Quantile(metric, value, exemplar.trace_id if exemplar else None))
    return Window(tuple(quantiles), view.count / view.seconds, view.errors / view.count,
                  view.error_trace_id or None, view.count)


def _select(dual: DualSignal, namespace: str, workload: str) -> Selection | None:
    """What ``workload=<workload>`` means to the API, or ``None`` when no selector can name it."""
    try:
        return dual.select(namespace, Selector((Requirement("workload", "=", (workload,)),)))
    except BadRequest:  # not a valid label value (or, impossibly, several policies for one name)
        return None


def collect(store: WindowStore, dual: DualSignal, at: float) -> Snapshot:
    """Every series and every workload (latency or CPU data) with its figures and decision at ``at``.

    The decision and CPU are computed as the API computes them for the selector ``workload=<name>``;
    a workload whose name is no valid label value (no HPA can ask for it) gets neither.
    """
    by_workload: dict[tuple[str, str], list[Series]] = {}
    for series in sorted(store.all_series(), key=lambda s: (s.key.namespace, s.key.workload, s.key.route)):
        by_workload.setdefault((series.key.namespace, series.key.workload), []).append(series)
    rows = {key: [RouteRow(s.key.namespace, s.key.workload, s.key.route, window_of(store.view([s], now=at)))
                  for s in members] for key, members in by_workload.items()}
    workloads = []
    for namespace, workload in sorted(set(by_workload) | dual.cpu.all_workloads()):
        members = by_workload.get((namespace, workload), [])
        selection = _select(dual, namespace, workload)
        cpu = decision = None
        if selection is not None:
            cpu = dual.cpu_signal(namespace, selection, at)
            decision = dual.decision(namespace, selection, at)
        routes = rows.get((namespace, workload), [])
        workloads.append(WorkloadRow(
            namespace=namespace,
            workload=workload,
            selectable=selection is not None,
            window=window_of(store.view(members, now=at)) if members else None,
            cpu=cpu,
            decision=decision,
            latency_target_seconds=selection.settings.latency_target_seconds if selection else None,
            cpu_target_utilization=selection.settings.cpu_target_utilization if selection else None,
            routes=tuple(routes) if any(r.route for r in routes) else (),
        ))
    return Snapshot(at, store.epoch, store.settings.window_seconds,
                    tuple(r for members in rows.values() for r in members), tuple(workloads))


# -- JSON ------------------------------------------------------------------------------------------------


def _trace_key(metric: str) -> str:
    return metric.replace("_seconds", "_trace_id")


def _window_json(window: Window | None, template: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for metric in LATENCY_QUANTILES:
        found = next((q for q in window.quantiles if q.metric == metric), None) if window else None
        trace_id = found.trace_id if found else None
        out[metric] = found.seconds if found else None
        out[_trace_key(metric)] = trace_id
        out[metric.replace("_seconds", "_trace_url")] = trace_url(template, trace_id)
    error_trace = window.error_trace_id if window else None
    out.update({
        "request_rate": _finite(window.request_rate) if window else None,
        "error_ratio": _finite(window.error_ratio) if window else None,
        "error_trace_id": error_trace,
        "error_trace_url": trace_url(template, error_trace),
        "requests_in_window": window.requests if window else None,
    })
    return out


def _series_json(row: RouteRow, template: str) -> dict[str, object]:
    labels: dict[str, object] = {"namespace": row.namespace, "workload": row.workload}
    if row.route:
        labels["route"] = row.route
    return {**labels, **_window_json(row.window, template)}


def _decision_json(decision: Decision | None, template: str) -> dict[str, object] | None:
    if decision is None:
        return None
    return {"ratio": decision.ratio, "reason": decision.reason, "latency_ratio": decision.latency_ratio,
            "cpu_ratio": decision.cpu_ratio, "trace_id": decision.trace_id,
            "trace_url": trace_url(template, decision.trace_id)}


def _workload_json(row: WorkloadRow, template: str) -> dict[str, object]:
    cpu = row.cpu
    return {
        "namespace": row.namespace,
        "workload": row.workload,
        "selectable": row.selectable,
        **_window_json(row.window, template),
        "cpu_utilization": _finite(cpu.utilization) if cpu else None,
        "cpu_pods": cpu.pods if cpu else None,
        "cpu_observed_at": cpu.observed_at if cpu else None,
        "latency_target_seconds": row.latency_target_seconds,
        "cpu_target_utilization": row.cpu_target_utilization,
        "decision": _decision_json(row.decision, template),
        "routes": [{"route": r.route, **_window_json(r.window, template)} for r in row.routes],
    }


def to_json(snapshot: Snapshot, template: str) -> dict[str, object]:
    """The JSON document described in the module docstring (``template``: "" for no trace links)."""
    return {
        "epoch": snapshot.epoch,
        "at": snapshot.at,
        "window_seconds": snapshot.window_seconds,
        "trace_url_template": template or None,
        "series": [_series_json(r, template) for r in snapshot.series],
        "workloads": [_workload_json(w, template) for w in snapshot.workloads],
    }


# -- HTML ------------------------------------------------------------------------------------------------


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _trace(trace_id: str | None, template: str) -> str:
    """A link to the trace when a template is set, else the id as text; "" without an id."""
    if not trace_id:
        return ""
    url = trace_url(template, trace_id)
    if url is None:
        return f'<code class="trace">{_e(trace_id)}</code>'
    return f'<a class="trace" href="{_e(url)}" rel="noreferrer"><code>{_e(trace_id)}</code></a>'


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "&ndash;"
    ms = seconds * 1000.0
    return f"{ms:.3g} ms" if ms < 1000 else f"{seconds:.3g} s"


def _num(value: float | None, digits: int = 3) -> str:
    return "&ndash;" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _pct(value: float | None) -> str:
    return "&ndash;" if value is None or not math.isfinite(value) else f"{value * 100:.2f} %"


def _cell(*parts: str, cls: str = "") -> str:
    attr = f' class="{cls}"' if cls else ""
    return f"<td{attr}>" + "<br>".join(p for p in parts if p) + "</td>"


def _window_cells(window: Window | None, template: str) -> list[str]:
    if window is None:
        return [_cell("&ndash;", cls="num")] * 6
    cells = [_cell(_ms(q.seconds), _trace(q.trace_id, template), cls="num") for q in window.quantiles]
    cells.append(_cell(_num(window.request_rate, 2), cls="num"))
    cells.append(_cell(_pct(window.error_ratio), _trace(window.error_trace_id, template), cls="num"))
    cells.append(_cell(f"{window.requests:.0f}", cls="num"))
    return cells


_COLUMNS = ("Namespace", "Workload / route", "p50", "p95", "p99", "Requests/s", "Errors", "Requests",
            "CPU", "Ratio", "Reason", "Latency ratio", "CPU ratio")

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
h1{font-size:1.3em;margin:0 0 .3em}
p.meta{color:#555;margin:.2em 0 1em}
table{border-collapse:collapse;width:100%}
th,td{border-bottom:1px solid #ddd;padding:.3em .5em;text-align:left;vertical-align:top}
th{background:#f3f3f3;position:sticky;top:0}
td.num{text-align:right;white-space:nowrap}
tr.workload td{border-top:2px solid #bbb;font-weight:600}
tr.workload td .trace,tr.route td{font-weight:normal}
tr.route td{color:#444;font-size:.93em}
tr.route td.name{padding-left:2em}
.trace{font-size:.8em;color:#06c}
code.trace{color:#555}
.reason{font-family:ui-monospace,monospace}
.hold{color:#a60}
dl{margin-top:1.5em;color:#444}
dt{font-weight:600;float:left;clear:left;width:9em}
dd{margin:0 0 .3em 9.5em}
""".strip()

_LEGEND = (
    ("p50 / p95 / p99", "request latency quantiles over the window; below each, the trace of a real "
                        "request near that value"),
    ("Requests/s", "requests per second over the window (or since the series' first data)"),
    ("Errors", "failed requests / all requests, with the trace of the newest failed request"),
    ("CPU", "CPU usage / CPU requests of the workload's ready pods, and how many pods"),
    ("Ratio", "dual_signal_ratio as served for workload=<name> (an HPA targets value 1); below it, "
              "the trace behind its latency; \u201cno decision\u201d: neither signal usable, the HPA holds"),
    ("Reason", "latency, cpu, dependency_latency (slow but idle: hold), cpu_only_low_traffic, "
               "latency_only_cpu_missing"),
    ("Latency ratio", "p95 (or the policy's quantile) / latency_target_seconds"),
    ("CPU ratio", "CPU utilisation / cpu_target_utilization"),
)


def _workload_html(row: WorkloadRow, template: str) -> list[str]:
    cpu = "&ndash;"
    if row.cpu is not None:
        cpu = f"{_pct(row.cpu.utilization)}<br>{row.cpu.pods} pod{'' if row.cpu.pods == 1 else 's'}"
    d = row.decision
    if d is not None:
        decision = [_cell(_num(d.ratio), _trace(d.trace_id, template), cls="num"),
                    _cell(f'<span class="reason">{_e(d.reason)}</span>'),
                    _cell(_num(d.latency_ratio), cls="num"), _cell(_num(d.cpu_ratio), cls="num")]
    else:
        why = "no decision" if row.selectable else "not a valid label value: no HPA can select it"
        decision = [_cell("&ndash;", cls="num"), _cell(f'<span class="hold">{_e(why)}</span>'),
                    _cell("&ndash;", cls="num"), _cell("&ndash;", cls="num")]
    lines = ['<tr class="workload">' + _cell(_e(row.namespace)) + _cell(_e(row.workload), cls="name")
             + "".join(_window_cells(row.window, template)) + _cell(cpu, cls="num") + "".join(decision)
             + "</tr>"]
    for route in row.routes:
        name = f"\u21b3 {_e(route.route)}" if route.route else "\u21b3 <em>(no route)</em>"
        lines.append('<tr class="route">' + _cell("") + _cell(name, cls="name")
                     + "".join(_window_cells(route.window, template)) + _cell("") * 5 + "</tr>")
    return lines


def _when(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def render_html(snapshot: Snapshot, template: str) -> str:
    """One self-contained page: a table of every workload and its routes (see the module docstring)."""
    if template:
        links = f"trace ids link to <code>{_e(template)}</code>"
    else:
        links = ("trace ids are shown as text; set <code>traces.url_template</code> or "
                 "<code>--trace-url-template</code> to make them links")
    body: list[str] = []
    for row in snapshot.workloads:
        body.extend(_workload_html(row, template))
    if not body:
        body.append(f'<tr><td colspan="{len(_COLUMNS)}">No workload has latency or CPU data in the '
                    "window yet.</td></tr>")
    epoch = "none" if snapshot.epoch is None else str(snapshot.epoch)
    legend = "".join(f"<dt>{_e(term)}</dt><dd>{_e(text)}</dd>" for term, text in _LEGEND)
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>latency-adapter: workloads</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>latency-adapter: workloads</h1>",
        f'<p class="meta">Window {snapshot.window_seconds} s, values at {_e(_when(snapshot.at))} '
        f"(slice epoch {_e(epoch)}); {links}. The same data as JSON: "
        '<a href="?format=json">?format=json</a>.</p>',
        "<table><thead><tr>" + "".join(f"<th>{_e(c)}</th>" for c in _COLUMNS) + "</tr></thead>",
        "<tbody>",
        *body,
        "</tbody></table>",
        f"<dl>{legend}</dl>",
        "</body></html>",
        "",
    ])


# -- content negotiation ---------------------------------------------------------------------------------


def _quality(accept: str, kind: str, subtype: str) -> float:
    """The q the Accept header gives ``kind/subtype`` (most specific matching range wins; 0: none)."""
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        if "/" not in media:
            continue
        have_kind, have_sub = (x.strip().lower() for x in media.split("/", 1))
        if have_kind == kind and have_sub == subtype:
            specificity = 2
        elif have_kind == kind and have_sub == "*":
            specificity = 1
        elif have_kind == "*" and have_sub == "*":
            specificity = 0
        else:
            continue
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value.strip()), 0.0), 1.0)
                except ValueError:
                    q = 0.0
        if specificity > best[0]:
            best = (specificity, q)
    return best[1]


def wants_html(accept: str, fmt: str | None) -> bool:
    """HTML for ``?format=html`` or a client that prefers ``text/html`` to JSON; JSON on a tie or none.

    Raises ``ValueError`` for a ``format`` other than :data:`FORMATS`.
    """
    if fmt is not None:
        chosen = fmt.strip().lower()
        if chosen not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}")
        return chosen == "html"
    return _quality(accept, "text", "html") > _quality(accept, "application", "json")

