#!/usr/bin/env python3
"""The adapter's Prometheus recording and alerting rules: the one source both rule files are made from.

Run from anywhere (needs only Python 3.11 and PyYAML, which the adapter itself requires)::

    python manifests/alerts/generate.py            # rewrite rules.yaml and prometheusrule.yaml here
    python manifests/alerts/generate.py --check    # exit 1 when either file is not what this script makes
    python manifests/alerts/generate.py --error-ratio-threshold 0.05 --output-dir /tmp/my-rules

Outputs, next to this file:

* ``rules.yaml``: a plain Prometheus rule file (``groups:``), for ``rule_files:`` in prometheus.yml;
* ``prometheusrule.yaml``: the same groups as a Prometheus Operator ``PrometheusRule`` (namespace
  ``latency-adapter``), applied with ``kubectl apply -k manifests/alerts``.

Both are generated: edit this file, never them. ``tests/contract/test_alert_rules.py`` fails when they are
out of date, checks them with ``promtool``, runs the unit tests in ``tests/fixtures/rules`` and validates
the PrometheusRule against its CRD.

To change the error ratio threshold (3.2 %, inherited from the system this project grew out of), change
:data:`ERROR_RATIO_THRESHOLD` and run the script, or write your own copy with ``--error-ratio-threshold``
and ``--output-dir`` (the checked-in files and their tests keep the default).

Assumptions (see docs/runbooks.md): Prometheus keeps the adapter's own ``namespace`` label (a
ServiceMonitor needs ``honorLabels: true``, else it becomes ``exported_namespace``), the scrape job's name
contains ``latency-adapter`` (:data:`JOB_SELECTOR`), and replicas of the adapter each see the full stream
(workload alerts take the ``max`` over replicas, so two replicas make one alert, not two).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES_FILE = "rules.yaml"
PROMETHEUS_RULE_FILE = "prometheusrule.yaml"

#: Failed / all requests above which WorkloadErrorRatioHigh fires (3.2 %).
ERROR_RATIO_THRESHOLD = 0.032
#: Canary p95 / baseline p95 above which CanaryLatencyRegression fires (the release gate, 110 %).
CANARY_RATIO_THRESHOLD = 1.1
#: Seconds the window end may lag the scrape before LatencyAdapterMetricStale counts it as stuck.
STALE_AFTER_SECONDS = 60
#: The ``limit`` values of ``latency_adapter_limit_hits_total`` that are OTLP back-pressure (429 +
#: Retry-After, see adapter/limits.py): LatencyAdapterIngestBackpressure.
BACKPRESSURE_LIMITS = ("ingest_queue", "memory")
#: Window of the back-pressure and limit alerts' ``increase()``, and how long it must stay above 0. With a
#: window shorter than ``for``, one burst (a Collector restart flushing its queue, a deploy of many pods)
#: keeps the expression true for at most the window plus the burst and never fires; hits that recur
#: (gaps under the window) for 5 minutes or more do. A 10-minute window with ``for: 10m`` would fire on a
#: single burst or not depending on where the evaluations fall.
LIMIT_WINDOW, LIMIT_FOR = "5m", "10m"
#: Limits another alert already reports, left out of LatencyAdapterLimitsHit so one cause makes one alert:
#: every OTLP refusal below is also counted in ``latency_adapter_otlp_rejected_total`` (by reason), the
#: series caps in ``latency_adapter_series_dropped_total``. The rest (the API's concurrency cap, header,
#: connection and info-metric limits, and any limit added later) go to LatencyAdapterLimitsHit.
LIMITS_ALERTED_ELSEWHERE: dict[str, str] = {
    "content_length": "LatencyAdapterRejectingTelemetry",
    "body_too_large": "LatencyAdapterRejectingTelemetry",
    "decompressed_too_large": "LatencyAdapterRejectingTelemetry",
    "too_many_spans": "LatencyAdapterRejectingTelemetry",
    "too_many_points": "LatencyAdapterRejectingTelemetry",
    "body_timeout": "LatencyAdapterRejectingTelemetry",
    "label_too_long": "LatencyAdapterRejectingTelemetry",
    "series_total": "LatencyAdapterSeriesCapReached",
    "series_namespace": "LatencyAdapterSeriesCapReached",
    **dict.fromkeys(BACKPRESSURE_LIMITS, "LatencyAdapterIngestBackpressure"),
}
#: What hitting each limit left to LatencyAdapterLimitsHit does (its description says it; the contract test
#: checks these are exactly the limits of adapter/limits.py not in LIMITS_ALERTED_ELSEWHERE).
LIMITS_HIT_ANSWERS: dict[str, str] = {
    "concurrent_requests": "external metrics API requests over limits.max_concurrent_requests were "
                           "answered 429 TooManyRequests, so HPA reads failed",
    "header_too_large": "requests with a line over server.max_header_bytes or more than server.max_headers "
                        "header fields were answered 400 and their connections closed",
    "header_timeout": "connections that sent no complete request within server.header_timeout_seconds were "
                      "closed",
    "connections": "connections over server.max_connections on one listener were closed at once",
    "info_workloads": "workloads over traces.exemplar_info_max_workloads got no "
                      "latency_adapter_p95_exemplar_info series (no trace id in alerts and dashboards)",
}
#: The reason of ``latency_adapter_otlp_rejected_total`` LatencyAdapterRejectingTelemetry leaves out: the
#: 429s are LatencyAdapterIngestBackpressure's, and their batches are retried, not lost.
BACKPRESSURE_REASON = "backpressure"
#: Selects the adapter's scrape job: a ServiceMonitor on Service ``latency-adapter`` makes
#: ``job="latency-adapter"``. Change it when your scrape job is called otherwise.
JOB_SELECTOR = 'job=~".*latency-adapter.*"'
#: Where the runbooks are; replace with your fork's or wiki's URL (anchors are the alert names, lower-case).
RUNBOOK_BASE = "https://github.com/latency-adapter/latency-adapter/blob/main/docs/runbooks.md"

NAMESPACE = "latency-adapter"
PROMETHEUS_RULE_NAME = "latency-adapter"
#: Labels of the PrometheusRule, no Helm release baked in. ``prometheus: k8s`` and ``role: alert-rules``
#: are the labels kube-prometheus's own rules carry (its Prometheus selects them, or every rule);
#: kube-prometheus-stack selects ``release: <helm release>`` unless ``ruleSelectorNilUsesHelmValues`` is
#: false: add that label with kustomize ``labels:`` (see manifests/alerts/kustomization.yaml).
PROMETHEUS_RULE_LABELS = {
    "app.kubernetes.io/name": "latency-adapter",
    "app.kubernetes.io/part-of": "latency-adapter",
    "app.kubernetes.io/component": "alerting",
    "prometheus": "k8s",
    "role": "alert-rules",
}

P95_RECORD = "namespace_workload:latency_adapter_workload_latency_seconds:p95_5m"
REQUEST_RATE_RECORD = "namespace_workload:latency_adapter_workload_latency_seconds_count:max_rate5m"

HEADER = """\
# GENERATED by manifests/alerts/generate.py: do not edit. Change generate.py, then run
#   python manifests/alerts/generate.py
# The alerts and what to do about each: docs/runbooks.md.
"""


# --------------------------------------------------------------------------------------------------
# Template pieces (Prometheus alert templating, Go text/template)
# --------------------------------------------------------------------------------------------------


def _percent(ratio: float) -> str:
    """0.032 -> "3.2 %"."""
    return f"{ratio * 100:g} %"


def _minutes(duration: str) -> str:
    """"5m" -> "5 minutes"."""
    assert re.fullmatch(r"\d+m", duration), duration
    return f"{duration[:-1]} minutes"


def _fill(template: str, **values: str) -> str:
    """``template`` with each ``<name>`` replaced by ``values[name]`` (Go templates keep their braces)."""
    for name, value in values.items():
        template = template.replace(f"<{name}>", value)
    assert not re.search(r"<[a-z_]+>", template), template
    return template


def _trace(workload: str = "$labels.workload", what: str = "A request near its p95") -> str:
    """The trace id of ``latency_adapter_p95_exemplar_info`` for (namespace, ``workload``), if any.

    That info series is a plain series (no exemplar storage needed); with several adapter replicas the
    first one found is shown. Nothing is written when there is none (``traces.exemplar_info: false``).
    """
    return _fill('{{ with printf "latency_adapter_p95_exemplar_info{namespace=%q,workload=%q}" '
                 '$labels.namespace <workload> | query }}'
                 '<what>: trace_id {{ . | first | label "trace_id" }}. {{ end }}',
                 workload=workload, what=what)


def _gauge(metric: str, fmt: str, text: str) -> str:
    """``text``, ``<value>`` in it replaced by the value of ``metric`` for the alert's workload, if any."""
    return _fill('{{ with printf "<metric>{namespace=%q,workload=%q}" $labels.namespace $labels.workload '
                 '| query }}<text>{{ end }}', metric=metric,
                 text=_fill(text, value="{{ . | first | value | " + fmt + " }}"))


def _raw(metric: str) -> str:
    """The ``kubectl get --raw`` command that shows what the HPA is served for the alert's workload."""
    return _fill("kubectl get --raw '/apis/external.metrics.k8s.io/v1beta1/namespaces/"
                 "{{ $labels.namespace }}/<metric>?labelSelector=workload%3D{{ $labels.workload }}'",
                 metric=metric)


def _by_limit(texts: dict[str, str], otherwise: str) -> str:
    """A template that says ``texts[$labels.limit]``, or ``otherwise`` for a limit not listed."""
    branches = "{{ else if ".join(f'eq $labels.limit "{limit}" }}}}{text}' for limit, text in texts.items())
    return f"{{{{ if {branches}{{{{ else }}}}{otherwise}{{{{ end }}}}"


def _alert(name: str, expr: str, severity: str, summary: str, description: str,
           for_: str | None = None) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_ is not None:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": f"{RUNBOOK_BASE}#{name.lower()}",
    }
    return rule


# --------------------------------------------------------------------------------------------------
# The rules
# --------------------------------------------------------------------------------------------------


def recording_rules() -> list[dict[str, Any]]:
    return [
        {"record": P95_RECORD,
         "expr": "histogram_quantile(0.95,\n"
                 "  sum by (namespace, workload, le) (\n"
                 "    rate(latency_adapter_workload_latency_seconds_bucket[5m])))"},
        # Replicas each see the full stream (see the README), so the rate is the largest, not the sum.
        {"record": REQUEST_RATE_RECORD,
         "expr": "max by (namespace, workload) (\n"
                 "  rate(latency_adapter_workload_latency_seconds_count[5m]))"},
    ]


WORKLOAD = "{{ $labels.namespace }}/{{ $labels.workload }}"
IN_NAMESPACE = "workload {{ $labels.workload }} in namespace {{ $labels.namespace }}"


def workload_alerts(error_ratio_threshold: float = ERROR_RATIO_THRESHOLD) -> list[dict[str, Any]]:
    threshold = _percent(error_ratio_threshold)
    return [
        _alert(
            "WorkloadErrorRatioHigh",
            f"max by (namespace, workload) (latency_adapter_workload_error_ratio)"
            f" > {error_ratio_threshold:g}",
            "warning",
            _fill("<w>: {{ $value | humanizePercentage }} of requests fail (threshold <t>)",
                  w=WORKLOAD, t=threshold),
            _fill("{{ $value | humanizePercentage }} of the requests of <in> failed over the adapter's "
                  "window<rate>, above <t> for 5 minutes. <trace>A failed request is named by "
                  "error_trace_id in <raw>.", **{
                      "in": IN_NAMESPACE, "t": threshold, "trace": _trace(), "raw": _raw("error_ratio"),
                      "rate": _gauge(REQUEST_RATE_RECORD, 'printf "%.3g"', " at <value> requests/s")}),
            "5m"),
        _alert(
            "WorkloadLatencyP95AboveTarget",
            "max by (namespace, workload) (latency_adapter_latency_ratio) > 1",
            "warning",
            _fill('<w>: latency {{ $value | printf "%.2f" }} times its target', w=WORKLOAD),
            _fill('The latency quantile of <in> (p95 unless its policy sets another quantile) has been '
                  '{{ $value | printf "%.2f" }} times its latency target for 10 minutes. <p95><trace>'
                  'Served value: <raw>.', **{
                      "in": IN_NAMESPACE, "trace": _trace(), "raw": _raw("latency_p95_ratio"),
                      "p95": _gauge(P95_RECORD, "humanizeDuration",
                                    "p95 over the last 5 minutes in Prometheus: <value>. ")}),
            "10m"),
        _alert(
            "WorkloadScalingHeldForDependency",
            'max by (namespace, workload) (latency_adapter_dual_signal_ratio{reason="dependency_latency"})',
            "warning",
            _fill("<w>: slow with idle CPU for 10 minutes, scaling held (a dependency is slow)", w=WORKLOAD),
            _fill('For 10 minutes <in> has been slower than its latency target while its CPU stayed '
                  'below cpu_floor, so the adapter holds its HPA (dual_signal_ratio '
                  '{{ $value | printf "%.2f" }}, reason dependency_latency): more replicas would not help. '
                  '<latency><cpu><trace>Look at what it calls (database, downstream services).', **{
                      "in": IN_NAMESPACE, "trace": _trace(),
                      "latency": _gauge("latency_adapter_latency_ratio", 'printf "%.2f"',
                                        "Latency ratio <value>. "),
                      "cpu": _gauge("latency_adapter_cpu_ratio", 'printf "%.2f"', "CPU ratio <value>. ")}),
            "10m"),
        _alert(
            "CanaryLatencyRegression",
            "max by (namespace, canary, baseline) (latency_adapter_canary_latency_ratio)"
            f" > {CANARY_RATIO_THRESHOLD:g}",
            "warning",
            "{{ $labels.namespace }}/{{ $labels.canary }}: canary p95 is {{ $value | humanizePercentage }} "
            "of baseline {{ $labels.baseline }}",
            _fill("The p95 latency of canary {{ $labels.canary }} in namespace {{ $labels.namespace }} has "
                  "been {{ $value | humanizePercentage }} of its baseline {{ $labels.baseline }}'s for 5 "
                  "minutes (release gate: at most <gate>). <canary><baseline>Hold or roll back the canary.",
                  gate=_percent(CANARY_RATIO_THRESHOLD),
                  canary=_trace("$labels.canary", "Canary request near its p95"),
                  baseline=_trace("$labels.baseline", "Baseline request near its p95")),
            "5m"),
    ]


def adapter_alerts() -> list[dict[str, Any]]:
    up = f"up{{{JOB_SELECTOR}}}"
    window_end = "latency_adapter_window_end_timestamp_seconds"
    dropped = "latency_adapter_series_dropped_total"
    hits = "latency_adapter_limit_hits_total"
    return [
        _alert(
            "LatencyAdapterMetricStale",
            f"timestamp({window_end}) - {window_end} > {STALE_AFTER_SECONDS}",
            "critical",
            "latency-adapter {{ $labels.instance }}: its windows stopped moving "
            "({{ $value | humanizeDuration }} behind)",
            "The end of the last closed slice of latency-adapter {{ $labels.instance }} (job "
            "{{ $labels.job }}) has been {{ $value | humanizeDuration }} behind the time it was scraped "
            "for 2 minutes (normal: under one slice). Every value it serves refers to that moment, so "
            "HPAs reading it see old data, or nothing once it is older than stale_after_seconds.",
            "2m"),
        _alert(
            "LatencyAdapterDown",
            f"{up} == 0",
            "critical",
            "latency-adapter {{ $labels.instance }} cannot be scraped",
            "Prometheus has not been able to scrape latency-adapter {{ $labels.instance }} (job "
            "{{ $labels.job }}) for 2 minutes. If the adapter itself is down, the API server cannot reach "
            "external.metrics.k8s.io and HPAs using its metrics report FailedGetExternalMetric and hold.",
            "2m"),
        _alert(
            "LatencyAdapterAbsent",
            f"absent({up})",
            "critical",
            "No latency-adapter target in Prometheus",
            f"No target matches {up} for 5 minutes: the adapter is not deployed or scaled to zero, "
            "its ServiceMonitor is not selected by this Prometheus, or the scrape job has another name "
            "(then change JOB_SELECTOR in manifests/alerts/generate.py).",
            "5m"),
        _alert(
            "LatencyAdapterRejectingTelemetry",
            "sum without (instance, pod) (\n"
            f'  rate(latency_adapter_otlp_rejected_total{{reason!="{BACKPRESSURE_REASON}"}}[5m])\n'
            ") > 0",
            "warning",
            "latency-adapter rejects OTLP {{ $labels.signal }}: {{ $labels.reason }}",
            "latency-adapter (job {{ $labels.job }}) has been rejecting OTLP {{ $labels.signal }} with "
            "reason {{ $labels.reason }} for 10 minutes, now {{ $value | printf \"%.3g\" }} per second. The "
            "workloads in those exports get no data, so their HPAs see stale values or none.",
            "10m"),
        _alert(
            "LatencyAdapterSeriesCapReached",
            # A counter appears at its first drop with that value already: count a series that did not
            # exist 10 minutes ago as its whole value, or increase() would miss the first drops.
            "sum without (instance, pod) (\n"
            f"  ({dropped} unless {dropped} offset 10m)\n"
            "  or\n"
            f"  increase({dropped}[10m])\n"
            ") > 0",
            "warning",
            "latency-adapter drops samples: {{ $labels.cap }} reached",
            "latency-adapter (job {{ $labels.job }}) dropped {{ $value | printf \"%.0f\" }} samples of new "
            "series because its {{ $labels.cap }} was reached (series_cap: store.max_series, "
            "namespace_series_cap: store.max_series_per_namespace), counted over the last 10 minutes or "
            "since a replica started within them. Workloads or routes over the cap get no data and "
            "their HPAs hold."),
        _alert(
            "LatencyAdapterIngestBackpressure",
            # Per replica (no sum): the queue and the memory are each pod's own, and so is the fix.
            f'increase({hits}{{limit=~"{"|".join(BACKPRESSURE_LIMITS)}"}}[{LIMIT_WINDOW}]) > 0',
            "warning",
            "latency-adapter {{ $labels.instance }} answers OTLP 429: {{ $labels.limit }} back-pressure",
            _fill("For <for> latency-adapter {{ $labels.instance }} (job {{ $labels.job }}) has kept "
                  "refusing OTLP exports with 429 and Retry-After because "
                  '{{ if eq $labels.limit "memory" }}its resident memory is over limits.memory_budget_bytes'
                  "{{ else }}more requests were in flight than limits.otlp_high_water_requests{{ end }}: "
                  '{{ $value | printf "%.0f" }} refused in the last <window>. Senders retry with '
                  "back-off, so data arrives late (HPAs see older windows, or none past "
                  "stale_after_seconds) and is lost when their retries run out. Give the replica more CPU "
                  "or memory, send it less, or raise the limit.", window=_minutes(LIMIT_WINDOW),
                  **{"for": _minutes(LIMIT_FOR)}),
            LIMIT_FOR),
        _alert(
            "LatencyAdapterLimitsHit",
            # Summed over replicas like the rejections: one alert per limit. Warning, not info: what is
            # left here guards the HPA's own path (concurrent_requests answers the aggregator 429, a
            # header or connection limit closes its connections), so sustained hits mean HPA reads
            # failing or a client hammering the adapter, and someone should look the same day; the one
            # harmless limit, info_workloads, cannot be hit with the default caps (store.max_series and
            # traces.exemplar_info_max_workloads are both 10000).
            "sum without (instance, pod) (\n"
            f'  increase({hits}{{limit!~"{"|".join(LIMITS_ALERTED_ELSEWHERE)}"}}[{LIMIT_WINDOW}])\n'
            ") > 0",
            "warning",
            "latency-adapter keeps hitting its {{ $labels.limit }} limit",
            _fill("For <for> latency-adapter (job {{ $labels.job }}) has kept hitting its "
                  '{{ $labels.limit }} limit, {{ $value | printf "%.0f" }} times in the last <window> '
                  "over all replicas: <answers>. Either a client misbehaves (or attacks), or the limit is "
                  "too tight for legitimate load.", window=_minutes(LIMIT_WINDOW),
                  answers=_by_limit(LIMITS_HIT_ANSWERS, "see the runbook for what it answers"),
                  **{"for": _minutes(LIMIT_FOR)}),
            LIMIT_FOR),
    ]


def groups(error_ratio_threshold: float = ERROR_RATIO_THRESHOLD) -> list[dict[str, Any]]:
    """The rule groups, exactly as both files carry them."""
    return [
        {"name": "latency-adapter.recording", "rules": recording_rules()},
        {"name": "latency-adapter.workloads", "rules": workload_alerts(error_ratio_threshold)},
        {"name": "latency-adapter.adapter", "rules": adapter_alerts()},
    ]


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block scalars, so the files read like hand-written ones: literal for multi-line strings (PromQL),
    folded for long ones (annotations), no quoting of the templates' quotes."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else ">" if len(value) > 80 and " " in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _dump(document: dict[str, Any]) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True,
                     default_flow_style=False)


def render_rules(rule_groups: list[dict[str, Any]]) -> str:
    return HEADER + _dump({"groups": rule_groups})


def render_prometheus_rule(rule_groups: list[dict[str, Any]]) -> str:
    return HEADER + _dump({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": PROMETHEUS_RULE_NAME, "namespace": NAMESPACE,
                     "labels": dict(PROMETHEUS_RULE_LABELS)},
        "spec": {"groups": rule_groups},
    })


def outputs(error_ratio_threshold: float = ERROR_RATIO_THRESHOLD) -> dict[str, str]:
    """File name -> content."""
    rule_groups = groups(error_ratio_threshold)
    return {RULES_FILE: render_rules(rule_groups), PROMETHEUS_RULE_FILE: render_prometheus_rule(rule_groups)}


def stale(directory: Path = HERE, error_ratio_threshold: float = ERROR_RATIO_THRESHOLD) -> list[str]:
    """The output files in ``directory`` that differ from what this script makes."""
    found = []
    for name, text in outputs(error_ratio_threshold).items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            found.append(name)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Generate the latency-adapter Prometheus rules.")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when a file is missing or out of date")
    parser.add_argument("--output-dir", type=Path, default=HERE,
                        help="where to write rules.yaml and prometheusrule.yaml (default: next to this file)")
    parser.add_argument("--error-ratio-threshold", type=float, default=ERROR_RATIO_THRESHOLD,
                        help=f"WorkloadErrorRatioHigh threshold, 0..1 (default {ERROR_RATIO_THRESHOLD})")
    args = parser.parse_args(argv)
    if not 0 < args.error_ratio_threshold < 1:
        parser.error("--error-ratio-threshold must be between 0 and 1")
    if args.check:
        out_of_date = stale(args.output_dir, args.error_ratio_threshold)
        for name in out_of_date:
            print(f"{args.output_dir / name} is out of date: run python manifests/alerts/generate.py",
                  file=sys.stderr)
        return 1 if out_of_date else 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name, text in outputs(args.error_ratio_threshold).items():
        (args.output_dir / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.output_dir / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
