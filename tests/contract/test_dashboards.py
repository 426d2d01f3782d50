"""Contract: the Grafana dashboards in ``dashboards/`` are generated, valid, importable, their PromQL parses.

* The committed JSON is exactly what ``dashboards/generate.py`` makes (canonical text, byte for byte).
* Each dashboard decodes into grafana-foundation-sdk's typed models (panel options, field config and
  Prometheus queries included, with the SDK's plugins registered) and encodes back to the same JSON, so
  no key is unknown to the Grafana 11.6 types; and it validates against the dashboard kind's JSON schema
  from the same SDK release (``tests/fixtures/grafana/``, with the four documented corrections), each
  panel's ``options`` and ``fieldConfig.defaults.custom`` against its panel plugin's schema, and every
  query against the Prometheus query schema.
* Importable by file: ``__inputs`` asks for ``DS_PROMETHEUS`` (the default of the ``datasource``
  variable), ``__requires`` names every plugin used, no data source UID but ``${datasource}`` and
  ``${trace_datasource}``, a stable ``uid``, a current ``schemaVersion``, last hour / 30 s refresh, every
  panel described (what to look for), unique panel ids, a grid without overlaps; row headers (built-in,
  no query, no plugin) span the grid and are not collapsed, so the panels after each are checked as they
  are shown.
* Every PromQL expression (panels and variables, with Grafana's variables substituted) parses with
  ``promtool check rules`` (each one a recording rule), and every metric it names is the adapter's (its
  name is in ``adapter/``) or one of :data:`EXTERNAL_METRICS`.

Helpers here (:func:`panel_queries`, :func:`substitute`, :func:`metric_names`) are shared with
``tests/integration/test_dashboard_queries.py``, which runs every query against a real Prometheus.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from adapter.limits import LimitSettings
from adapter.policy import REASONS
from tests.tooling import require_tool

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "dashboards"
SCHEMA_DIR = REPO / "tests" / "fixtures" / "grafana"
ADAPTER_DIR = REPO / "adapter"

#: File -> the stable uid it must keep (links and provisioning refer to it).
DASHBOARDS = {
    "latency-autoscaling.json": "latency-autoscaling",
    "latency-adapter-health.json": "latency-adapter-health",
}
#: Metrics the dashboards read that the adapter does not export: kube-state-metrics' HPA metrics
#: (https://github.com/kubernetes/kube-state-metrics/blob/main/docs/metrics/workload/horizontalpodautoscaler-metrics.md).
EXTERNAL_METRICS = frozenset({
    "kube_horizontalpodautoscaler_info",
    "kube_horizontalpodautoscaler_status_desired_replicas",
    "kube_horizontalpodautoscaler_status_current_replicas",
    "kube_horizontalpodautoscaler_spec_max_replicas",
})
#: Served by the adapter through prometheus_client's ProcessCollector (adapter/telemetry.py).
PROCESS_METRICS = frozenset({"process_resident_memory_bytes"})
#: Values for Grafana's variables when an expression is checked without Grafana.
PARSE_VALUES = {
    "namespace": "shop", "workload": "checkout", "instance": ".*",
    "__rate_interval": "1m", "__interval": "30s", "__range": "1h", "__range_s": "3600",
}
#: Data source references a dashboard may hold: the variables, never a UID of one Grafana.
DATASOURCE_UIDS = {"${datasource}", "${trace_datasource}"}
#: The schemaVersion grafana-foundation-sdk 11.6 emits; Grafana migrates anything older on load.
MIN_SCHEMA_VERSION = 39

_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
_METRIC = re.compile(r"\b((?:latency_adapter|kube|process)_[a-zA-Z0-9_]+)\b")


# Shared helpers -------------------------------------------------------------------------------------------


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((DASHBOARD_DIR / name).read_text(encoding="utf-8"))
    return doc


def is_row(panel: Mapping[str, Any]) -> bool:
    return bool(panel.get("type") == "row")


def panels(doc: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those inside rows included (row headers too: see :func:`is_row`)."""
    for panel in doc.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str  # the panel title: what a failure names
    panel_id: int
    ref_id: str
    expr: str

    @property
    def name(self) -> str:
        return f"{self.dashboard}: {self.panel} [{self.ref_id}]"


def panel_queries(name: str) -> list[PanelQuery]:
    doc = load(name)
    return [PanelQuery(name, p["title"], p["id"], t["refId"], t["expr"])
            for p in panels(doc) for t in p.get("targets", []) if t.get("expr")]


def variable_queries(name: str) -> dict[str, str]:
    """Query variable name -> its ``label_values(...)`` query."""
    return {v["name"]: v["query"] for v in load(name)["templating"]["list"] if v["type"] == "query"}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace ``$var``, ``${var}``, ``${var:fmt}`` and ``[[var]]`` with ``values``; unknown ones raise."""
    def one(match: re.Match[str]) -> str:
        var = next(g for g in match.groups() if g)
        if var not in values:
            raise KeyError(f"no value for Grafana variable ${var} in {expr!r}")
        return values[var]
    return _VARIABLE.sub(one, expr)


def metric_names(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))


def base_metric_name(name: str) -> str:
    """The family name the adapter's code registers (``_total``, ``_bucket``, ... are added on export)."""
    return re.sub(r"_(total|bucket|count|sum|created)$", "", name)


def adapter_source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(ADAPTER_DIR.rglob("*.py")))


def all_queries() -> list[PanelQuery]:
    return [q for name in DASHBOARDS for q in panel_queries(name)]


# The dashboards are what the generator makes --------------------------------------------------------------


def test_committed_dashboards_are_generated() -> None:
    try:
        from dashboards.generate import generate
    except ImportError as exc:  # grafana-foundation-sdk: the `test` and `dashboards` extras
        if os.environ.get("CI") == "true":
            pytest.fail(f"grafana-foundation-sdk is not installed ({exc}); CI must install the test extra",
                        pytrace=False)
        pytest.skip(f"grafana-foundation-sdk is not installed: {exc}")
    generated = generate()
    assert set(generated) == set(DASHBOARDS)
    for name, text in generated.items():
        committed = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
        assert committed == text, f"dashboards/{name} is out of date: run `make dashboards`"


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_committed_text_is_canonical(name: str) -> None:
    text = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
    assert json.dumps(json.loads(text), indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text


# Valid for Grafana ----------------------------------------------------------------------------------------


def dashboard_body(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The dashboard without the import envelope (``__inputs``, ``__elements``, ``__requires``)."""
    return {k: v for k, v in doc.items() if not k.startswith("__")}


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_round_trips_through_the_sdk_typed_models(name: str) -> None:
    pytest.importorskip("grafana_foundation_sdk")
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import prometheus, statetimeline, table, timeseries
    from grafana_foundation_sdk.models.dashboard import Dashboard, RowPanel

    plugins.register_default_plugins()  # typed panel options, field config and Prometheus queries
    body = dashboard_body(load(name))
    model = Dashboard.from_json(body)
    option_types = {"timeseries": timeseries.Options, "state-timeline": statetimeline.Options,
                    "table": table.Options}
    flat = [p for top in model.panels or []
            for p in ([top] if not isinstance(top, RowPanel) else top.panels or [])]
    for panel in flat:
        assert isinstance(panel.options, option_types[panel.type_val]), (panel.title, type(panel.options))
        assert all(isinstance(t, prometheus.Dataquery) for t in panel.targets or []), panel.title
    assert json.loads(JSONEncoder(sort_keys=True).encode(model)) == body


def _schema(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((SCHEMA_DIR / f"{name}.jsonschema.json").read_text(encoding="utf-8"))
    return doc


#: Grafana's data link (``links?: [...]`` in the dashboard CUE); see tests/fixtures/grafana/README.md.
DATA_LINK = {
    "type": "object",
    "required": ["title"],
    "anyOf": [{"required": ["url"]}, {"required": ["internal"]}],
    "properties": {
        "title": {"type": "string", "minLength": 1},
        "url": {"type": "string"},
        "targetBlank": {"type": "boolean"},
        "internal": {"type": "object", "required": ["datasourceUid", "query"]},
        "onBuildUrl": {}, "onClick": {},
    },
    "additionalProperties": False,
}


def dashboard_schema() -> dict[str, Any]:
    """The dashboard kind schema with the four corrections named in tests/fixtures/grafana/README.md."""
    schema = copy.deepcopy(_schema("dashboard"))
    defs = schema["definitions"]
    defs["FieldConfig"]["properties"]["links"]["items"] = DATA_LINK
    defs["DynamicConfigValue"]["properties"]["value"] = {}
    defs["Threshold"]["properties"]["value"] = {"type": ["number", "null"]}
    defs["MatcherConfig"]["properties"]["options"] = {}
    return schema


def schema_errors(schema: Mapping[str, Any], instance: Any, where: str) -> list[str]:
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    out = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        # For a oneOf (panel or row), report the deepest reasons rather than the whole panel.
        leaves = [e for e in error.context or [] if not e.context] or [error]
        out += sorted({f"{where}/{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in leaves})
    return out


def definition(schema: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Schema ``name`` of a schema file's definitions, with the file's definitions to resolve refs."""
    return {"$schema": schema["$schema"], "definitions": schema["definitions"],
            "$ref": f"#/definitions/{name}"}


def test_data_link_correction_is_needed_and_documented() -> None:
    """The corrections exist because the generated schema is narrower than Grafana; if a later SDK fixes
    it, drop the correction (this test then fails and says so)."""
    defs = _schema("dashboard")["definitions"]
    assert defs["FieldConfig"]["properties"]["links"]["items"] == {"$ref": "#/definitions/DashboardLink"}
    assert defs["DynamicConfigValue"]["properties"]["value"]["type"] == "object"
    assert defs["Threshold"]["properties"]["value"]["type"] == "number"
    assert defs["MatcherConfig"]["properties"]["options"]["type"] == "object"
    readme = (SCHEMA_DIR / "README.md").read_text(encoding="utf-8")
    for needle in ("FieldConfig.links", "DynamicConfigValue.value", "Threshold.value",
                   "MatcherConfig.options", "Apache-2.0", "aba721fdefde7979d14dbd551a6ea0d4ed14599f"):
        assert needle in readme


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_validates_against_the_dashboard_schema(name: str) -> None:
    errors = schema_errors(dashboard_schema(), dashboard_body(load(name)), name)
    assert not errors, "\n".join(errors)


PANEL_SCHEMAS = {"timeseries": "timeseries", "state-timeline": "statetimeline", "table": "table"}


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_panels_validate_against_their_plugin_schemas(name: str) -> None:
    query_schema = _schema("prometheus")
    errors: list[str] = []
    for panel in panels(load(name)):
        if is_row(panel):  # a row header has no options or queries; the dashboard schema checks it
            continue
        where = f"{name}: {panel['title']}"
        plugin = _schema(PANEL_SCHEMAS[panel["type"]])
        errors += schema_errors(definition(plugin, "Options"), panel.get("options", {}), f"{where} options")
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
        errors += schema_errors(definition(plugin, "FieldConfig"), custom, f"{where} custom")
        for target in panel.get("targets", []):
            errors += schema_errors(query_schema, target, f"{where} target {target.get('refId')}")
    assert not errors, "\n".join(errors)


def test_schema_validation_catches_mistakes() -> None:
    """The validation is not vacuous: a typo'd key, a bad grid and a bad query are each refused."""
    body = dashboard_body(load("latency-autoscaling.json"))
    broken = copy.deepcopy(body)
    broken["panels"][0]["gridPos"]["w"] = "wide"
    broken["panels"][1]["descripton"] = "typo"
    broken["refreshh"] = "30s"
    errors = schema_errors(dashboard_schema(), broken, "broken")
    assert len(errors) >= 3, errors
    target = dict(body["panels"][0]["targets"][0], exprr="up")
    assert schema_errors(_schema("prometheus"), target, "target")


# Importable -----------------------------------------------------------------------------------------------


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_importable_by_file(name: str) -> None:
    doc = load(name)
    assert doc["uid"] == DASHBOARDS[name]
    assert doc.get("id") is None  # an instance-local id would clash on import
    assert doc["title"] and doc["description"]
    assert doc["__inputs"] == [{
        "name": "DS_PROMETHEUS", "label": "Prometheus", "type": "datasource", "pluginId": "prometheus",
        "pluginName": "Prometheus",
        "description": "Prometheus that scrapes the latency adapter's /metrics and kube-state-metrics"}]
    requires = {(r["type"], r["id"]) for r in doc["__requires"]}
    assert ("grafana", "grafana") in requires and ("datasource", "prometheus") in requires
    assert {("panel", p["type"]) for p in panels(doc) if not is_row(p)} <= requires
    assert doc["schemaVersion"] >= MIN_SCHEMA_VERSION
    assert doc["time"] == {"from": "now-1h", "to": "now"}
    assert doc["refresh"] == "30s"

    variables = {v["name"]: v for v in doc["templating"]["list"]}
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    # The importer replaces ${DS_PROMETHEUS} with the data source chosen in the import dialog: it becomes
    # the variable's default, and is used nowhere else.
    assert ds["current"]["value"] == "${DS_PROMETHEUS}"
    text = json.dumps(doc)
    assert text.count("${DS_PROMETHEUS}") == 1

    refs = [(path, node) for path, node in walk(dashboard_body(doc))
            if isinstance(node, dict) and path.endswith("/datasource")]
    assert refs
    for path, ref in refs:
        assert ref.get("uid") in DATASOURCE_UIDS, f"{path}: {ref} (a hard-coded data source)"
    for p in panels(doc):
        if is_row(p):
            assert "datasource" not in p, p["title"]
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        for t in p.get("targets", []):
            assert t["datasource"] == p["datasource"], (p["title"], t["refId"])
    for v in variables.values():
        if v["type"] == "query":
            assert v["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, v["name"]
    # No data source uid written anywhere else (a link, an override) except through the variables.
    for path, node in walk(dashboard_body(doc)):
        if isinstance(node, dict) and "datasourceUid" in node:
            assert node["datasourceUid"] in DATASOURCE_UIDS, path


@pytest.mark.parametrize("name", list(DASHBOARDS))
def test_every_panel_is_described_and_placed(name: str) -> None:
    doc = load(name)
    ids: list[int] = []
    cells: dict[tuple[int, int], str] = {}
    for p in panels(doc):
        title = p["title"]
        if is_row(p):
            # A header across the grid; open, so the panels after it (up to the next row) are shown in it.
            assert title and p["collapsed"] is False and p["panels"] == [], title
            assert (p["gridPos"]["x"], p["gridPos"]["w"], p["gridPos"]["h"]) == (0, 24, 1), title
        else:
            assert p.get("description", "").strip(), f"{title}: no description"
            assert "look" in p["description"].lower(), f"{title}: the description should say what to look for"
            assert p.get("targets"), f"{title}: no query"
        ids.append(p["id"])
        assert isinstance(p["id"], int) and p["id"] > 0, title
        g = p["gridPos"]
        assert 1 <= g["w"] <= 24 and g["x"] >= 0 and g["x"] + g["w"] <= 24, (title, g)
        assert 1 <= g["h"] <= 30 and g["y"] >= 0, (title, g)
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{title} overlaps {cells[(x, y)]} at {(x, y)}"
                cells[(x, y)] = title
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    # Grafana assigns a panel to the open row above it: every panel after a row header lies below it.
    top = doc.get("panels", [])
    for i, row in enumerate(top):
        if is_row(row):
            for p in top[i + 1:]:
                assert p["gridPos"]["y"] > row["gridPos"]["y"], f"{p['title']} is above row {row['title']}"


def test_health_dashboard_limits_row() -> None:
    """A row "Limits and back-pressure" holds the limit hits by limit, the OTLP ingest queue and memory
    against its budget: what the back-pressure and limit alerts point at."""
    top = load("latency-adapter-health.json")["panels"]
    [start] = [i for i, p in enumerate(top) if is_row(p) and p["title"] == "Limits and back-pressure"]
    in_row = list(itertools.takewhile(lambda p: not is_row(p), top[start + 1:]))
    exprs = {t["expr"] for p in in_row for t in p["targets"]}
    assert ('sum by (limit) (rate(latency_adapter_limit_hits_total{instance=~"$instance"}'
            '[$__rate_interval]))') in exprs
    for metric in ("latency_adapter_otlp_inflight_requests", "latency_adapter_memory_budget_bytes"):
        assert any(metric in e for e in exprs), metric
    by_title = {p["title"]: p for p in in_row}
    queue = by_title["OTLP requests in flight vs high-water mark"]
    steps = [s["value"] for s in queue["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]
    assert steps == [LimitSettings().otlp_high_water_requests], "the line is the default high-water mark"


def test_autoscaling_dashboard_content() -> None:
    """The panels the autoscaling dashboard promises, with the lines and links that make them useful."""
    doc = load("latency-autoscaling.json")
    by_title = {p["title"]: p for p in panels(doc)}
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["namespace"]["query"].startswith("label_values(latency_adapter_")
    assert variables["workload"]["query"].startswith("label_values(latency_adapter_")
    assert '$namespace' in variables["workload"]["query"]
    assert (variables["trace_datasource"]["type"], variables["trace_datasource"]["query"]) == (
        "datasource", "tempo")

    def steps(title: str) -> list[float]:
        p = by_title[title]
        assert p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] in ("line", "dashed"), title
        return [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"][1:]]

    assert steps("Error ratio") == [0.032]
    assert steps("Canary vs baseline p95 ratio") == [1.1]
    assert steps("CPU utilisation ratio vs target (1)") == [1.0]
    assert steps("Dual-signal ratio served to the HPA") == [1.0]

    latency = by_title["Request latency p50 / p95 / p99 vs target"]
    exprs = {t["legendFormat"]: t for t in latency["targets"]}
    for q in ("0.5", "0.95", "0.99"):
        assert any(t["expr"].startswith(f"histogram_quantile({q}, ") for t in latency["targets"]), q
    assert exprs["p95"].get("exemplar") is True
    assert "latency_adapter_latency_target_seconds" in exprs["target"]["expr"]
    for title in ("Request latency p50 / p95 / p99 vs target", "Traces near each workload's p95"):
        p = by_title[title]
        links = [prop["value"] for o in p["fieldConfig"]["overrides"]
                 if o["matcher"] == {"id": "byName", "options": "trace_id"}
                 for prop in o["properties"] if prop["id"] == "links"]
        assert links, f"{title}: no data link on trace_id"
        assert "${trace_datasource}" in links[0][0]["url"] and "${__value.raw}" in links[0][0]["url"]
    assert "Exemplars" in latency["description"] and "trace_id" in latency["description"]
    table = by_title["Traces near each workload's p95"]
    assert table["targets"][0]["instant"] is True and "latency_adapter_p95_exemplar_info" in table[
        "targets"][0]["expr"]
    replicas = " ".join(t["expr"] for t in by_title["HPA replicas: desired vs current"]["targets"])
    assert "kube_horizontalpodautoscaler_status_desired_replicas" in replicas
    assert "kube_horizontalpodautoscaler_status_current_replicas" in replicas


def test_decision_reasons_are_all_mapped() -> None:
    """The state timeline maps every reason the policy can give (adapter.policy.REASONS) to its name."""
    panel = next(p for p in panels(load("latency-autoscaling.json")) if p["type"] == "state-timeline")
    [mapping] = panel["fieldConfig"]["defaults"]["mappings"]
    names = {result["text"] for result in mapping["options"].values()}
    assert set(REASONS) <= names
    expr = panel["targets"][0]["expr"]
    for i, reason in enumerate(REASONS, 1):
        assert f'reason="{reason}"}} * 0 + {i})' in expr
        assert mapping["options"][str(i)]["text"] == reason


# PromQL ---------------------------------------------------------------------------------------------------


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = []
    for q in all_queries():
        slug = re.sub(r"\W", "_", q.dashboard.removesuffix(".json"))
        rules.append({"record": f"dashboard:{slug}:panel{q.panel_id}_{q.ref_id}",
                      "expr": substitute(q.expr, PARSE_VALUES)})
    for name in DASHBOARDS:
        for var, text in variable_queries(name).items():
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
            assert match, f"{name} variable {var}: {text!r} is not label_values(selector, label)"
            rules.append({"record": f"dashboard:variable:{var}",
                          "expr": substitute(match.group(1), PARSE_VALUES)})
    assert len({r["record"] for r in rules}) == len(rules)
    path = tmp_path / "dashboard-queries.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}, sort_keys=False),
                    encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout, result.stdout


def test_promtool_check_is_not_vacuous(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    path = tmp_path / "bad.rules.yml"
    bad = "histogram_quantile(0.95, sum by (le) (rate(latency_adapter_workload_latency_seconds_bucket[1m]))"
    path.write_text(yaml.safe_dump({"groups": [{"name": "bad", "rules": [{"record": "x:y", "expr": bad}]}]}),
                    encoding="utf-8")
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode != 0


def test_substitution_leaves_no_variable() -> None:
    for q in all_queries():
        text = substitute(q.expr, PARSE_VALUES)
        assert "$" not in text and "[[" not in text, q.name
    with pytest.raises(KeyError):
        substitute("up{job=\"$nope\"}", PARSE_VALUES)


def test_metric_names_are_the_adapters_or_documented() -> None:
    source = adapter_source()
    seen: set[str] = set()
    for q in all_queries():
        names = metric_names(q.expr)
        assert names, f"{q.name}: no metric found in {q.expr!r}"
        seen |= names
    for name in DASHBOARDS:
        for text in variable_queries(name).values():
            seen |= metric_names(text)
    for metric in sorted(seen):
        if metric in EXTERNAL_METRICS:
            continue
        if metric in PROCESS_METRICS:
            assert "ProcessCollector(" in source, metric
            continue
        assert metric.startswith("latency_adapter_"), metric
        assert f'"{base_metric_name(metric)}"' in source, f"{metric}: no such metric family in adapter/"
    assert seen >= EXTERNAL_METRICS, "a documented external metric is no longer used: drop it from the list"


def test_generator_check_mode(tmp_path: Path) -> None:
    """``--check`` fails on missing or stale files and writes nothing; a plain run writes them."""
    pytest.importorskip("grafana_foundation_sdk")
    from dashboards.generate import main

    assert main(["--check", "--out", str(tmp_path)]) == 1
    assert not list(tmp_path.iterdir())
    assert main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(DASHBOARDS)
    assert main(["--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "latency-autoscaling.json").write_text("{}\n", encoding="utf-8")
    assert main(["--check", "--out", str(tmp_path)]) == 1
