"""The Prometheus rules in ``manifests/alerts``: made from one source, checked by the tools that load them.

What is checked, and why:

* **One source.** ``manifests/alerts/generate.py`` makes ``rules.yaml`` (a plain rule file) and
  ``prometheusrule.yaml`` (a ``PrometheusRule``); both files must be exactly what it makes now (so an edit
  of a generated file, or of the source without regenerating, fails here) and carry the same groups.
* **promtool.** ``promtool check rules`` accepts ``rules.yaml`` and the ``spec`` of the PrometheusRule
  (extracted to a file); ``promtool test rules`` runs the unit tests in ``tests/fixtures/rules`` against
  each of the two. Those tests make every alert fire and not fire at its edges (error ratio 3.3 % vs
  3.1 % and 3.2 %, canary 111 % vs 109 %, a dependency hold of 11 vs 9 minutes, a window end that stops,
  a target that goes down or is missing, rejections that last or stop (back-pressure 429s left out), the
  first and later series-cap drops, back-pressure and other limit hits that last against a single burst
  or sporadic hits, limits other alerts report left out), check labels and every annotation (values,
  namespace and workload, the trace id from a ``latency_adapter_p95_exemplar_info`` series), and the
  recording rules' values. The same tests against
  rules generated with another error ratio threshold fail, so they are not vacuous.
* **The contract.** The alert names, severities, ``for`` durations and runbook links (each to a section
  of ``docs/runbooks.md`` that exists); recording rule names follow ``level:metric:operations``; every
  metric a rule reads is ``up`` or one of the adapter's, and every recorded series it reads is recorded;
  every ``limit`` of ``latency_adapter_limit_hits_total`` (``adapter.limits.LIMITS``) is reported by
  exactly one alert, and the runbook of LatencyAdapterLimitsHit lists them all.
* **Kubernetes.** The PrometheusRule validates against the real CRD (``tests/fixtures/crds``, strict, with
  ``tests/contract/test_manifests.py``'s helpers) and ``kubectl kustomize manifests/alerts`` renders it.

That the metrics the rules read exist on a running adapter's ``/metrics`` is checked by
``tests/integration/test_alert_metrics.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from adapter.limits import LIMITS
from adapter.provider import METRIC_HELP
from tests.contract.test_manifests import _crd_errors, _crds, _kubectl_kustomize, _python_patterns
from tests.tooling import require_tool

ROOT = Path(__file__).parents[2]
ALERTS_DIR = ROOT / "manifests" / "alerts"
RULES = ALERTS_DIR / "rules.yaml"
PROMETHEUS_RULE = ALERTS_DIR / "prometheusrule.yaml"
GENERATOR = ALERTS_DIR / "generate.py"
UNIT_TESTS_DIR = ROOT / "tests" / "fixtures" / "rules"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

#: The alerts, their severity and ``for`` (None: fires at once). The names are a contract: routes,
#: silences and inhibitions in Alertmanager refer to them.
ALERTS: dict[str, tuple[str, str | None]] = {
    "WorkloadErrorRatioHigh": ("warning", "5m"),
    "WorkloadLatencyP95AboveTarget": ("warning", "10m"),
    "WorkloadScalingHeldForDependency": ("warning", "10m"),
    "CanaryLatencyRegression": ("warning", "5m"),
    "LatencyAdapterMetricStale": ("critical", "2m"),
    "LatencyAdapterDown": ("critical", "2m"),
    "LatencyAdapterAbsent": ("critical", "5m"),
    "LatencyAdapterRejectingTelemetry": ("warning", "10m"),
    "LatencyAdapterSeriesCapReached": ("warning", None),
    "LatencyAdapterIngestBackpressure": ("warning", "10m"),
    "LatencyAdapterLimitsHit": ("warning", "10m"),
}
RUNBOOK_BASE = "https://github.com/latency-adapter/latency-adapter/blob/main/docs/runbooks.md"
#: Labels the workload alerts keep (one alert per workload or canary pair, whatever the replicas).
WORKLOAD_LABELS = {
    "WorkloadErrorRatioHigh": {"namespace", "workload"},
    "WorkloadLatencyP95AboveTarget": {"namespace", "workload"},
    "WorkloadScalingHeldForDependency": {"namespace", "workload"},
    "CanaryLatencyRegression": {"namespace", "canary", "baseline"},
}


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


@functools.cache
def generator() -> ModuleType:
    """``manifests/alerts/generate.py`` as a module (it is a script, not part of a package)."""
    spec = importlib.util.spec_from_file_location("latency_adapter_alerts_generate", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def rule_groups() -> list[dict[str, Any]]:
    """The groups of ``rules.yaml``."""
    groups: list[dict[str, Any]] = load_yaml(RULES)["groups"]
    return groups


def all_rules() -> list[dict[str, Any]]:
    return [rule for group in rule_groups() for rule in group["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in all_rules() if "alert" in rule}


def recorded() -> set[str]:
    return {rule["record"] for rule in all_rules() if "record" in rule}


# --------------------------------------------------------------------------------------------------
# Metric names in PromQL (also used by tests/integration/test_alert_metrics.py)
# --------------------------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_DURATION = re.compile(r"(?<![\w:.])\d+(?:\.\d+)?(?:ms|[smhdwy])\b")
_IDENTIFIER = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                       "unless", "offset", "inf", "nan", "atan2", "start", "end"})
#: A query in an alert template: ``printf "metric{...}" ... | query`` or ``query "metric{...}"``.
_TEMPLATE_QUERY = re.compile(r'(?:printf|query)\s+"([a-zA-Z_:][a-zA-Z0-9_:]*)')


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords and label names left out)."""
    text = _STRING.sub(" ", promql)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _DURATION.sub(" ", text)
    names = {m.group(1) for m in _IDENTIFIER.finditer(text)}
    return {n for n in names if n.lower() not in _KEYWORDS}


def referenced_metrics(rule: dict[str, Any]) -> set[str]:
    """Metric names ``rule`` reads: in its expression and in the queries of its annotation templates."""
    names = metric_names(str(rule["expr"]))
    for text in (rule.get("annotations") or {}).values():
        names |= set(_TEMPLATE_QUERY.findall(text))
    return names


def referenced_adapter_metrics() -> set[str]:
    """Every ``latency_adapter_*`` metric the rules read (what a running adapter must export)."""
    names: set[str] = set()
    for rule in all_rules():
        names |= {n for n in referenced_metrics(rule) if n.startswith("latency_adapter_")}
    return names


def test_metric_name_extraction() -> None:
    assert metric_names('max by (namespace, workload) (latency_adapter_dual_signal_ratio{reason="x"}) > 1') \
        == {"latency_adapter_dual_signal_ratio"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(a_bucket{x=~\"a|b\"}[5m])))") \
        == {"a_bucket"}
    assert metric_names("sum without (instance) ((b unless b offset 10m) or increase(b[10m])) > 0") == {"b"}
    assert metric_names("timestamp(c) - c > 60 and on (job) up{job=~\".*\"} == 0") == {"c", "up"}
    assert metric_names("absent(up{job=\"x\"})") == {"up"}
    assert metric_names("level:metric:rate5m * 2 > bool 1e3") == {"level:metric:rate5m"}
    template = '{{ with printf "latency_adapter_p95_exemplar_info{namespace=%q}" $labels.namespace | query }}'
    assert referenced_metrics({"expr": "up", "annotations": {"d": template}}) == {
        "up", "latency_adapter_p95_exemplar_info"}


# --------------------------------------------------------------------------------------------------
# One source
# --------------------------------------------------------------------------------------------------


def test_generated_files_are_up_to_date() -> None:
    out_of_date = generator().stale()
    assert not out_of_date, (f"{out_of_date} differ from what manifests/alerts/generate.py makes: edit "
                             "generate.py (never the generated files) and run "
                             "python manifests/alerts/generate.py")


def test_generator_check_mode(tmp_path: Path) -> None:
    """The script's own ``--check`` agrees, and catches a hand edit and a missing file."""
    run = [sys.executable, str(GENERATOR), "--check"]
    result = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr

    for name in ("rules.yaml", "prometheusrule.yaml"):
        shutil.copy(ALERTS_DIR / name, tmp_path / name)
    edited = (tmp_path / "rules.yaml").read_text(encoding="utf-8").replace("> 0.032", "> 0.05")
    (tmp_path / "rules.yaml").write_text(edited, encoding="utf-8")
    (tmp_path / "prometheusrule.yaml").unlink()
    result = subprocess.run([*run, "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 1
    assert "rules.yaml is out of date" in result.stderr
    assert "prometheusrule.yaml is out of date" in result.stderr


def test_both_files_carry_the_same_groups() -> None:
    plain = load_yaml(RULES)
    operator = load_yaml(PROMETHEUS_RULE)
    assert set(plain) == {"groups"}
    assert plain["groups"] == operator["spec"]["groups"] == generator().groups()
    assert operator["apiVersion"] == "monitoring.coreos.com/v1" and operator["kind"] == "PrometheusRule"
    meta = operator["metadata"]
    assert meta["namespace"] == "latency-adapter" and meta["name"] == "latency-adapter"
    # Release-agnostic: no Helm release label baked in (users add theirs with kustomize, see the docs).
    assert "release" not in meta["labels"]
    assert meta["labels"]["app.kubernetes.io/name"] == "latency-adapter"


def test_the_threshold_is_one_constant(tmp_path: Path) -> None:
    """ERROR_RATIO_THRESHOLD drives the expression and the text; --error-ratio-threshold writes a copy."""
    gen = generator()
    assert gen.ERROR_RATIO_THRESHOLD == 0.032
    rule = alerts()["WorkloadErrorRatioHigh"]
    assert rule["expr"].endswith("> 0.032")
    assert "3.2 %" in rule["annotations"]["summary"] and "3.2 %" in rule["annotations"]["description"]

    result = subprocess.run([sys.executable, str(GENERATOR), "--error-ratio-threshold", "0.05",
                             "--output-dir", str(tmp_path)], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    [changed] = [r for g in load_yaml(tmp_path / "rules.yaml")["groups"] for r in g["rules"]
                 if r.get("alert") == "WorkloadErrorRatioHigh"]
    assert changed["expr"].endswith("> 0.05") and "(threshold 5 %)" in changed["annotations"]["summary"]
    assert load_yaml(tmp_path / "prometheusrule.yaml")["spec"]["groups"] == load_yaml(
        tmp_path / "rules.yaml")["groups"]


# --------------------------------------------------------------------------------------------------
# The contract
# --------------------------------------------------------------------------------------------------


def _github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_alert_names_severities_and_durations() -> None:
    found = alerts()
    assert set(found) == set(ALERTS)
    assert len([r for r in all_rules() if "alert" in r]) == len(ALERTS), "an alert name is used twice"
    for name, (severity, duration) in ALERTS.items():
        rule = found[name]
        assert rule["labels"] == {"severity": severity}, name
        assert rule.get("for") == duration, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description", "runbook_url"}, name
        assert annotations["runbook_url"] == f"{RUNBOOK_BASE}#{name.lower()}"


def test_every_runbook_link_has_its_section() -> None:
    text = RUNBOOKS.read_text(encoding="utf-8")
    anchors = {_github_anchor(h) for h in re.findall(r"^#{2,3} (.+)$", text, re.M)}
    for name, rule in alerts().items():
        anchor = rule["annotations"]["runbook_url"].rsplit("#", 1)[1]
        assert anchor in anchors, f"docs/runbooks.md has no section '## {name}'"
        section = text.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        for part in ("Meaning", "Look", "Act"):
            assert f"**{part}" in section, f"the runbook of {name} says nothing under {part}"


def test_workload_alerts_are_one_per_workload_and_name_it() -> None:
    for name, labels in WORKLOAD_LABELS.items():
        rule = alerts()[name]
        grouping = re.search(r"^max by \(([^)]*)\)", rule["expr"])
        assert grouping, f"{name}: aggregate the replicas away ({rule['expr']})"
        assert {g.strip() for g in grouping.group(1).split(",")} == labels
        text = rule["annotations"]["summary"] + rule["annotations"]["description"]
        for label in labels:
            assert f"$labels.{label}" in text, f"{name} does not say its {label}"
        assert "latency_adapter_p95_exemplar_info" in rule["annotations"]["description"], \
            f"{name} gives no trace id"


def test_runbook_commands_name_served_metrics() -> None:
    for rule in alerts().values():
        for metric in re.findall(r"/namespaces/[^/]+/(\w+)\?", rule["annotations"]["description"]):
            assert metric in METRIC_HELP, metric


def test_recording_rules_follow_the_naming_convention() -> None:
    names = recorded()
    assert names == {"namespace_workload:latency_adapter_workload_latency_seconds:p95_5m",
                     "namespace_workload:latency_adapter_workload_latency_seconds_count:max_rate5m"}
    for name in names:
        level, metric, operations = name.split(":")
        # level: the labels kept; metric: the source metric (with _count kept, _total stripped).
        assert level == "namespace_workload" and metric.startswith("latency_adapter_")
        assert re.fullmatch(r"[a-z0-9_]+", operations), name


def test_rules_read_only_the_adapters_metrics_and_recorded_series() -> None:
    names = recorded()
    for rule in all_rules():
        for metric in referenced_metrics(rule):
            assert metric == "up" or metric.startswith("latency_adapter_") or metric in names, (
                f"{rule.get('alert') or rule.get('record')} reads {metric}, which neither the adapter, "
                "Prometheus nor a recording rule here makes")
    assert referenced_adapter_metrics() == {
        "latency_adapter_workload_error_ratio", "latency_adapter_latency_ratio", "latency_adapter_cpu_ratio",
        "latency_adapter_dual_signal_ratio", "latency_adapter_canary_latency_ratio",
        "latency_adapter_p95_exemplar_info", "latency_adapter_workload_latency_seconds_bucket",
        "latency_adapter_workload_latency_seconds_count", "latency_adapter_window_end_timestamp_seconds",
        "latency_adapter_otlp_rejected_total", "latency_adapter_series_dropped_total",
        "latency_adapter_limit_hits_total",
    }


def _limit_matcher(rule: dict[str, Any], op: str) -> set[str]:
    [values] = re.findall(rf'\blimit{re.escape(op)}"([^"]*)"', rule["expr"])
    return set(values.split("|"))


def test_every_limit_is_reported_by_exactly_one_alert() -> None:
    """Each ``limit`` of ``latency_adapter_limit_hits_total`` has one alert: back-pressure, the catch-all
    (whose description explains each limit it takes), or an alert on another counter of the same event."""
    gen = generator()
    limits = set(LIMITS)
    elsewhere = gen.LIMITS_ALERTED_ELSEWHERE
    assert set(elsewhere) <= limits, f"unknown limits: {set(elsewhere) - limits}"
    assert set(elsewhere.values()) <= set(ALERTS) - {"LatencyAdapterLimitsHit"}
    assert set(gen.BACKPRESSURE_LIMITS) == {k for k, v in elsewhere.items()
                                            if v == "LatencyAdapterIngestBackpressure"}
    assert set(gen.LIMITS_HIT_ANSWERS) == limits - set(elsewhere), (
        "LIMITS_HIT_ANSWERS must describe exactly the limits LatencyAdapterLimitsHit reports")

    found = alerts()
    assert _limit_matcher(found["LatencyAdapterIngestBackpressure"], "=~") == set(gen.BACKPRESSURE_LIMITS)
    assert _limit_matcher(found["LatencyAdapterLimitsHit"], "!~") == set(elsewhere)
    for name in ("LatencyAdapterIngestBackpressure", "LatencyAdapterLimitsHit"):
        assert "latency_adapter_limit_hits_total{" in found[name]["expr"], name
    description = found["LatencyAdapterLimitsHit"]["annotations"]["description"]
    for limit in gen.LIMITS_HIT_ANSWERS:
        assert f'eq $labels.limit "{limit}"' in description, limit
    # The 429s are back-pressure's alone, not also a rejection.
    assert 'reason!="backpressure"' in found["LatencyAdapterRejectingTelemetry"]["expr"]

    section = RUNBOOKS.read_text(encoding="utf-8").split("## LatencyAdapterLimitsHit\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    for limit in limits:
        assert f"`{limit}`" in section, f"the runbook of LatencyAdapterLimitsHit does not list {limit}"


# --------------------------------------------------------------------------------------------------
# promtool
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


@pytest.fixture(scope="module")
def rule_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``rules.yaml`` and the PrometheusRule's ``spec`` written as a rule file of its own."""
    directory = tmp_path_factory.mktemp("prometheusrule-spec")
    spec = directory / "prometheusrule-spec.yaml"
    spec.write_text(yaml.safe_dump(load_yaml(PROMETHEUS_RULE)["spec"], sort_keys=False), encoding="utf-8")
    return {"rules.yaml": RULES, "prometheusrule.spec": spec}


def _promtool(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("which", ["rules.yaml", "prometheusrule.spec"])
def test_promtool_check_rules(promtool: str, rule_files: dict[str, Path], which: str) -> None:
    result = _promtool(promtool, "check", "rules", str(rule_files[which]))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(all_rules())} rules found" in result.stdout, result.stdout


def test_promtool_check_rules_is_not_vacuous(promtool: str, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    groups = rule_groups()
    groups[1]["rules"][0]["expr"] = "max by (namespace (latency_adapter_workload_error_ratio) > 0.032"
    broken.write_text(yaml.safe_dump({"groups": groups}), encoding="utf-8")
    assert _promtool(promtool, "check", "rules", str(broken)).returncode != 0


def unit_test_files() -> list[Path]:
    return sorted(UNIT_TESTS_DIR.glob("*.test.yaml"))


def _unit_tests_against(rules: Path, directory: Path) -> list[Path]:
    """Copies of the unit test files whose ``rule_files`` is ``rules`` (an absolute path)."""
    copies = []
    for path in unit_test_files():
        doc = load_yaml(path)
        assert [(path.parent / f).resolve() for f in doc["rule_files"]] == [RULES], \
            f"{path.name} must test manifests/alerts/rules.yaml"
        doc["rule_files"] = [str(rules)]
        copy = directory / path.name
        copy.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        copies.append(copy)
    return copies


def _run_unit_tests(promtool: str, files: list[Path]) -> subprocess.CompletedProcess[str]:
    return _promtool(promtool, "test", "rules", *(str(f) for f in files))


def test_promtool_unit_tests_as_checked_in(promtool: str) -> None:
    """The fixtures as a developer runs them: ``promtool test rules tests/fixtures/rules/*.test.yaml``."""
    files = unit_test_files()
    assert len(files) >= 2
    result = subprocess.run([promtool, "test", "rules", *(f.name for f in files)], cwd=UNIT_TESTS_DIR,
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("SUCCESS") == len(files), result.stdout


@pytest.mark.parametrize("which", ["rules.yaml", "prometheusrule.spec"])
def test_promtool_unit_tests(promtool: str, rule_files: dict[str, Path], which: str, tmp_path: Path) -> None:
    files = _unit_tests_against(rule_files[which], tmp_path)
    result = _run_unit_tests(promtool, files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_are_not_vacuous(promtool: str, tmp_path: Path) -> None:
    """Rules with a 3.4 % threshold fail the tests (3.3 % must fire); so do rules without a trace id."""
    gen = generator()
    other = tmp_path / "other.yaml"
    other.write_text(gen.render_rules(gen.groups(error_ratio_threshold=0.034)), encoding="utf-8")
    result = _run_unit_tests(promtool, _unit_tests_against(other, tmp_path))
    assert result.returncode != 0
    assert "WorkloadErrorRatioHigh" in result.stdout + result.stderr

    groups = gen.groups()
    for group in groups:
        for rule in group["rules"]:
            if "annotations" in rule:
                rule["annotations"]["description"] = rule["annotations"]["description"].replace(
                    'label "trace_id"', 'label "span_id"')
    other.write_text(gen.render_rules(groups), encoding="utf-8")
    result = _run_unit_tests(promtool, _unit_tests_against(other, tmp_path))
    assert result.returncode != 0
    assert "CanaryLatencyRegression" in result.stdout + result.stderr


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    exprs: set[str] = set()
    for path in unit_test_files():
        for case in load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test") or ():
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
                for alert in check.get("exp_alerts") or ():
                    name = check["alertname"]
                    assert set(alert["exp_annotations"]) == {"summary", "description", "runbook_url"}, name
                    assert alert["exp_labels"]["severity"] == ALERTS[name][0], name
            exprs |= {t["expr"] for t in case.get("promql_expr_test") or ()}
    assert firing == set(ALERTS), f"never seen firing: {set(ALERTS) - firing}"
    assert quiet == set(ALERTS), f"never seen quiet: {set(ALERTS) - quiet}"
    assert recorded() <= exprs, f"recording rules without a promql_expr_test: {recorded() - exprs}"


# --------------------------------------------------------------------------------------------------
# Kubernetes: the CRD and kustomize
# --------------------------------------------------------------------------------------------------

@pytest.fixture
def crd_errors() -> Callable[[dict[str, Any]], list[str]]:
    """``test_manifests._crd_errors``: the CRD schema, strict, plus metadata as a strict ObjectMeta."""
    return _crd_errors


def test_the_crd_fixture_is_prometheus_operators() -> None:
    crd = _crds()[("monitoring.coreos.com", "PrometheusRule")]
    assert crd["metadata"]["annotations"]["operator.prometheus.io/version"] == "0.93.0"
    assert _python_patterns({"pattern": "^(?i)(abort|warn)?$"}) == {"pattern": "(?i)^(abort|warn)?$"}


def test_prometheusrule_validates_against_its_crd(crd_errors: Callable[[dict[str, Any]], list[str]]) -> None:
    obj = load_yaml(PROMETHEUS_RULE)
    errors = crd_errors(obj)
    assert not errors, "prometheusrule.yaml does not match its CRD:\n" + "\n".join(errors)


def test_crd_validation_catches_mistakes(crd_errors: Callable[[dict[str, Any]], list[str]]) -> None:
    obj = load_yaml(PROMETHEUS_RULE)
    rule = obj["spec"]["groups"][1]["rules"][0]
    rule["annotation"] = rule.pop("annotations")
    assert any("annotation" in e for e in crd_errors(obj))

    obj = load_yaml(PROMETHEUS_RULE)
    obj["spec"]["groups"][1]["rules"][0]["for"] = "5 minutes"
    assert any("for" in e for e in crd_errors(obj))

    obj = load_yaml(PROMETHEUS_RULE)
    obj["spec"]["groups"][0]["partial_response_strategy"] = "ABORT"  # case-insensitive, as in RE2
    assert not crd_errors(obj)
    obj["spec"]["groups"][0]["partial_response_strategy"] = "sometimes"
    assert any("partial_response_strategy" in e for e in crd_errors(obj))

    obj = load_yaml(PROMETHEUS_RULE)
    obj["metadata"]["lables"] = obj["metadata"].pop("labels")
    assert any("lables" in e for e in crd_errors(obj))


@pytest.mark.needs_kubectl
def test_kustomize_renders_the_prometheusrule() -> None:
    kustomization = load_yaml(ALERTS_DIR / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization" and kustomization["resources"] == ["prometheusrule.yaml"]
    assert _kubectl_kustomize(ALERTS_DIR) == [load_yaml(PROMETHEUS_RULE)]
