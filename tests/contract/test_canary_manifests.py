"""The canary gate in ``manifests/canary``: Argo Rollouts and Flagger objects, checked by their own tools.

What is checked, and why:

* **Rendering.** ``kubectl kustomize`` builds ``manifests/canary/argo-rollouts`` and
  ``manifests/canary/flagger``, and each kustomization lists every YAML file of its folder (so no file
  escapes the checks below).
* **Schemas.** Every object validates against the ``openAPIV3Schema`` of its real CRD
  (``tests/fixtures/crds``: Argo Rollouts v1.9.1, Flagger v1.44.0; pinned by hash in
  ``tests/contract/test_manifests.py``), strict as there (unknown fields are errors), with
  ``test_manifests``'s helpers; a misspelt field of each kind is shown to be caught.
* **Templating.** The queries are rendered the way each controller renders them: Argo Rollouts
  substitutes ``{{args.<name>}}`` (and fails on any other ``{{...}}``) with the Rollout's arguments over
  the template's defaults; Flagger's Go templates call ``{{ namespace }}`` and ``{{ target }}``. A
  placeholder neither knows fails the test.
* **promtool.** Every rendered query parses with the real PromQL parser (``promtool check rules``).
* **One rule.** The Argo Rollouts and Flagger queries are the same text once rendered for the same pair
  (Flagger's baseline is ``<target>-primary``), and their limits are ``latency-adapter gate``'s defaults
  (:class:`adapter.gate.Limits`): ratio 1.10, 200 requests per side, error ratio 3.2 %. Conditions and
  thresholds turn the verdict 0/1/2 into pass/fail/inconclusive (Argo) and pass/fail (Flagger), and the
  error check aborts at its first failure in Argo.
* **Wiring.** The example Rollout runs the ClusterAnalysisTemplate with every argument it requires, read
  from the Rollout's own fields (resolved here as Argo Rollouts resolves ``fieldRef``), to the names its
  canary and stable pods carry; the example Canary refers to the MetricTemplates by name and namespace.
* **Metrics.** Every metric a query reads is defined in ``adapter/``.

That the queries return the expected verdicts from a running adapter is checked by
``tests/integration/test_canary_queries.py``.
"""

from __future__ import annotations

import copy
import functools
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from adapter.gate import Limits
from tests.contract.test_alert_rules import metric_names
from tests.contract.test_manifests import _crd_errors, _crds, _group_version, _kubectl_kustomize
from tests.tooling import require_tool

ROOT = Path(__file__).parents[2]
CANARY_DIR = ROOT / "manifests" / "canary"
ARGO, FLAGGER = "argo-rollouts", "flagger"
FOLDERS = (ARGO, FLAGGER)
#: The kinds each folder holds.
KINDS = {ARGO: {"ClusterAnalysisTemplate", "Rollout"}, FLAGGER: {"MetricTemplate", "Canary"}}
TEMPLATE_NAME = "latency-canary-gate"
#: The gate's two checks: Argo Rollouts metric names, Flagger MetricTemplate names.
CHECKS = ("p95-ratio", "error-ratio")
FLAGGER_TEMPLATES = {f"latency-canary-{check}": check for check in CHECKS}
#: Flagger's copy of the approved version, the baseline during an analysis.
PRIMARY_SUFFIX = "-primary"
#: Fixture CRDs of these groups that no object here uses: Flagger ships its three CRDs in one file.
UNUSED_CRDS = {("flagger.app", "AlertProvider")}
LIMITS = Limits()


# --------------------------------------------------------------------------------------------------
# Loading and rendering (also used by tests/integration/test_canary_queries.py)
# --------------------------------------------------------------------------------------------------


@functools.cache
def _built(folder: str) -> tuple[dict[str, Any], ...]:
    return tuple(_kubectl_kustomize(CANARY_DIR / folder))


def objects(folder: str) -> list[dict[str, Any]]:
    """The rendered objects of ``manifests/canary/<folder>`` (``kubectl kustomize``, so kubectl is needed);
    copies: callers may edit them."""
    return copy.deepcopy(list(_built(folder)))


def one(folder: str, kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects(folder) if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''} in {folder}, found {len(found)}"
    return found[0]


_TAG = re.compile(r"\{\{(.*?)\}\}", re.S)


def render_argo(text: str, args: Mapping[str, str]) -> str:
    """``text`` with ``{{args.<name>}}`` substituted as Argo Rollouts does (``utils/template``: every
    ``{{...}}`` tag, trimmed, must be a supplied argument, or the AnalysisRun errors)."""

    def substitute(match: re.Match[str]) -> str:
        tag = match.group(1).strip()
        name = tag.removeprefix("args.")
        assert tag.startswith("args.") and name in args, f"Argo Rollouts cannot resolve {{{{{tag}}}}}"
        return args[name]

    return _TAG.sub(substitute, text)


def render_flagger(text: str, namespace: str, target: str) -> str:
    """``text`` as Flagger's Go template renders it for a Canary of ``target`` in ``namespace`` (only the
    two functions this project uses are known: any other action fails)."""
    values = {"namespace": namespace, "target": target}

    def substitute(match: re.Match[str]) -> str:
        action = match.group(1).strip()
        assert action in values, f"unexpected template action {{{{{action}}}}}"
        return values[action]

    return _TAG.sub(substitute, text)


def template_args(overrides: Mapping[str, str]) -> dict[str, str]:
    """The ClusterAnalysisTemplate's argument defaults with ``overrides`` on top; every argument without a
    default must be in ``overrides``."""
    declared = one(ARGO, "ClusterAnalysisTemplate")["spec"]["args"]
    args = {a["name"]: a["value"] for a in declared if "value" in a}
    args.update(overrides)
    return args


def argo_metrics() -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in one(ARGO, "ClusterAnalysisTemplate", TEMPLATE_NAME)["spec"]["metrics"]}


@dataclass(frozen=True)
class GateQuery:
    """One query of the gate: which folder and check, and its text before rendering."""

    folder: str
    check: str  # one of CHECKS
    template: str

    @property
    def name(self) -> str:
        return f"{self.folder}/{self.check}"

    def render(self, namespace: str, canary: str) -> str:
        """The query for canary ``canary`` and its baseline ``<canary>-primary`` (Flagger's naming, which
        Argo Rollouts can use too), with the default limits."""
        if self.folder == FLAGGER:
            return render_flagger(self.template, namespace, canary)
        args = template_args({"namespace": namespace, "canary": canary, "baseline": canary + PRIMARY_SUFFIX})
        return render_argo(self.template, args)


def gate_queries() -> list[GateQuery]:
    """Every query of both folders."""
    found = [GateQuery(ARGO, name, metric["provider"]["prometheus"]["query"])
             for name, metric in argo_metrics().items()]
    for template in (o for o in objects(FLAGGER) if o["kind"] == "MetricTemplate"):
        check = FLAGGER_TEMPLATES[template["metadata"]["name"]]
        found.append(GateQuery(FLAGGER, check, template["spec"]["query"]))
    return found


def _flat(promql: str) -> str:
    return " ".join(promql.split())


# --------------------------------------------------------------------------------------------------
# Rendering and schemas
# --------------------------------------------------------------------------------------------------


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("folder", FOLDERS)
def test_kustomize_builds_every_file_of_the_folder(folder: str) -> None:
    directory = CANARY_DIR / folder
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    files = {p.name for p in directory.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files
    assert {o["kind"] for o in objects(folder)} == KINDS[folder]


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("folder", FOLDERS)
def test_objects_validate_against_their_crds(folder: str) -> None:
    for obj in objects(folder):
        assert (_group_version(obj)[0], obj["kind"]) in _crds(), f"no CRD fixture for {obj['kind']}"
        errors = _crd_errors(obj)
        what = f"{obj['kind']} {obj['metadata']['name']}"
        assert not errors, f"{what} does not match its CRD:\n" + "\n".join(errors)


@pytest.mark.needs_kubectl
def test_crd_validation_catches_misspelt_fields() -> None:
    """Not vacuous: a misspelt field of each kind, deep in the spec, is an error."""
    template = one(ARGO, "ClusterAnalysisTemplate")
    template["spec"]["metrics"][0]["succesCondition"] = template["spec"]["metrics"][0].pop("successCondition")
    rollout = one(ARGO, "Rollout")
    rollout["spec"]["strategy"]["canary"]["steps"][1]["analysis"]["templates"][0]["clusterScoped"] = True
    canary = one(FLAGGER, "Canary")
    canary["spec"]["analysis"]["metrics"][0]["thresholdRange"]["maximum"] = 0
    metric_template = one(FLAGGER, "MetricTemplate", "latency-canary-error-ratio")
    metric_template["spec"]["provider"]["adress"] = metric_template["spec"]["provider"].pop("address")
    for obj, field in ((template, "succesCondition"), (rollout, "clusterScoped"), (canary, "maximum"),
                       (metric_template, "adress")):
        assert any(field in e for e in _crd_errors(obj)), (obj["kind"], field)


@pytest.mark.needs_kubectl
def test_every_gate_crd_fixture_is_used() -> None:
    groups = {"argoproj.io", "flagger.app"}
    fixtures = {key for key in _crds() if key[0] in groups}
    used = {(_group_version(o)[0], o["kind"]) for folder in FOLDERS for o in objects(folder)}
    assert fixtures == used | UNUSED_CRDS


# --------------------------------------------------------------------------------------------------
# Templating and PromQL
# --------------------------------------------------------------------------------------------------


def test_rendering_fails_on_unknown_placeholders() -> None:
    with pytest.raises(AssertionError, match="cannot resolve"):
        render_argo('x{a="{{args.nope}}"}', {"namespace": "shop"})
    with pytest.raises(AssertionError, match="cannot resolve"):
        render_argo('x{a="{{ namespace }}"}', {"namespace": "shop"})
    with pytest.raises(AssertionError, match="unexpected template action"):
        render_flagger('x{a="{{ service }}"}', "shop", "checkout")
    assert render_argo('{{ args.a }}-{{args.b}}', {"a": "1", "b": "2"}) == "1-2"
    assert render_flagger('{{ target }}{{target}}-primary', "shop", "c") == "cc-primary"


@pytest.mark.needs_kubectl
def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    queries = gate_queries()
    assert sorted(q.name for q in queries) == sorted(f"{f}/{c}" for f in FOLDERS for c in CHECKS)
    rules = [{"record": f"check:{q.folder.replace('-', '_')}:{q.check.replace('-', '_')}",
              "expr": q.render("shop", "checkout")} for q in queries]
    for rule in rules:
        assert "{{" not in rule["expr"] and "}}" not in rule["expr"], rule
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "canary", "rules": rules}]}), encoding="utf-8")
    done = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, (done.stdout, done.stderr, rules)
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout, done.stdout


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("check", CHECKS)
def test_argo_and_flagger_run_the_same_query(check: str) -> None:
    by_folder = {q.folder: q for q in gate_queries() if q.check == check}
    argo, flagger = (_flat(by_folder[f].render("shop", "checkout")) for f in (ARGO, FLAGGER))
    assert argo == flagger


@pytest.mark.needs_kubectl
def test_limits_are_the_gates() -> None:
    args = template_args({})
    assert float(args["max-ratio"]) == LIMITS.max_ratio == 1.10
    assert int(args["min-samples"]) == LIMITS.min_samples == 200
    assert float(args["max-error-ratio"]) == LIMITS.max_error_ratio == 0.032
    assert args["prometheus-address"].startswith("http")
    required = {a["name"] for a in one(ARGO, "ClusterAnalysisTemplate")["spec"]["args"] if "value" not in a}
    assert required == {"namespace", "canary", "baseline"}
    # The verdict query uses every limit; the addresses agree between the two folders.
    verdict = one(ARGO, "ClusterAnalysisTemplate")["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    assert {"{{args.max-ratio}}", "{{args.min-samples}}"} <= set(re.findall(r"\{\{args\.[\w-]+\}\}", verdict))
    for template in (o for o in objects(FLAGGER) if o["kind"] == "MetricTemplate"):
        assert template["spec"]["provider"] == {"type": "prometheus", "address": args["prometheus-address"]}


@pytest.mark.needs_kubectl
def test_metrics_read_are_the_adapters() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "adapter").rglob("*.py"))
    names = set().union(*(metric_names(q.render("shop", "checkout")) for q in gate_queries()))
    assert names == {"latency_adapter_canary_samples", "latency_adapter_canary_latency_ratio",
                     "latency_adapter_canary_latency_ratio_low", "latency_adapter_workload_error_ratio"}
    missing = sorted(n for n in names if f'"{n}"' not in source)
    assert not missing, f"not defined in adapter/: {missing}"


# --------------------------------------------------------------------------------------------------
# Argo Rollouts: conditions, limits and the example Rollout
# --------------------------------------------------------------------------------------------------


@pytest.mark.needs_kubectl
def test_argo_conditions_map_the_verdicts() -> None:
    metrics = argo_metrics()
    assert list(metrics) == list(CHECKS)
    p95 = metrics["p95-ratio"]
    assert (p95["successCondition"], p95["failureCondition"]) == ("result[0] == 0", "result[0] == 1")
    # Any regression fails the run; more than inconclusiveLimit inconclusive measurements pause it, which
    # must be reachable within count.
    assert p95["failureLimit"] == 0 and 0 <= p95["inconclusiveLimit"] < p95["count"]
    errors = metrics["error-ratio"]
    args = template_args({})
    conditions = [render_argo(errors[k], args) for k in ("successCondition", "failureCondition")]
    assert conditions == ["result[0] <= 0.032", "result[0] > 0.032"]
    assert errors["failureLimit"] == 0  # the first measurement over the limit aborts
    assert errors.get("initialDelay") is None
    # The error check runs as long as the latency check (the step waits for both).
    assert _seconds(errors["interval"]) * errors["count"] >= (
        _seconds(p95.get("initialDelay", "0s")) + _seconds(p95["interval"]) * p95["count"])


def _seconds(duration: str) -> int:
    match = re.fullmatch(r"(\d+)([smh])", duration)
    assert match, duration
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600}[match.group(2)]


def _rollout_field(rollout: dict[str, Any], path: str) -> str:
    """A ``fieldRef.fieldPath`` resolved as Argo Rollouts resolves it (``utils/analysis/factory.go``):
    ``metadata.*`` with Kubernetes' field paths (here only plain fields), anything else by splitting on
    ``.``, ``[`` and ``]`` and walking the Rollout; it must end at a primitive value."""
    node: Any = rollout
    for section in (s for s in re.split(r"[.\[\]]+", path) if s):
        node = node[int(section)] if isinstance(node, list) else node.get(section)
        assert node is not None, f"{path} does not resolve in the Rollout"
    assert not isinstance(node, dict | list), f"{path} must end at a primitive value"
    return str(node)


@pytest.mark.needs_kubectl
def test_the_example_rollout_runs_the_gate_on_the_pods_names() -> None:
    rollout = one(ARGO, "Rollout")
    canary = rollout["spec"]["strategy"]["canary"]
    steps = canary["steps"]
    assert [next(iter(s)) for s in steps] == ["setWeight", "analysis", "setWeight"]
    assert (steps[0]["setWeight"], steps[2]["setWeight"]) == (5, 100)
    analysis = steps[1]["analysis"]
    assert analysis["templates"] == [{"templateName": TEMPLATE_NAME, "clusterScope": True}]
    args = {a["name"]: _rollout_field(rollout, a["valueFrom"]["fieldRef"]["fieldPath"]) if "valueFrom" in a
            else a["value"] for a in analysis["args"]}
    assert args == {"namespace": rollout["metadata"]["namespace"], "canary": "checkout-canary",
                    "baseline": "checkout"}
    # The names are the ephemeral labels of the canary and stable pods (what the Collector reports).
    key = "latency-adapter/workload"
    assert canary["canaryMetadata"]["labels"][key] == args["canary"]
    assert canary["stableMetadata"]["labels"][key] == args["baseline"]
    query = argo_metrics()["p95-ratio"]["provider"]["prometheus"]["query"]
    rendered = render_argo(query, template_args(args))
    assert 'canary="checkout-canary",baseline="checkout"' in rendered


# --------------------------------------------------------------------------------------------------
# Flagger: thresholds and the example Canary
# --------------------------------------------------------------------------------------------------


@pytest.mark.needs_kubectl
def test_the_example_canary_uses_the_templates() -> None:
    canary = one(FLAGGER, "Canary")
    analysis = canary["spec"]["analysis"]
    assert analysis["maxWeight"] == analysis["stepWeight"] == 5
    # Inconclusive verdicts fail checks too: the threshold leaves room for the warm-up.
    assert analysis["threshold"] >= 3
    templates = {o["metadata"]["name"]: o for o in objects(FLAGGER) if o["kind"] == "MetricTemplate"}
    assert set(templates) == set(FLAGGER_TEMPLATES)
    ranges = {}
    for metric in analysis["metrics"]:
        ref = metric["templateRef"]
        template = templates[ref["name"]]
        assert ref.get("namespace", canary["metadata"]["namespace"]) == template["metadata"]["namespace"]
        ranges[FLAGGER_TEMPLATES[ref["name"]]] = metric["thresholdRange"]
    assert ranges == {"p95-ratio": {"max": 0}, "error-ratio": {"max": LIMITS.max_error_ratio}}
    # The Flagger query fixes the limits the Argo Rollouts template takes as arguments.
    p95 = templates["latency-canary-p95-ratio"]["spec"]["query"]
    assert f">= bool {LIMITS.min_samples})" in p95 and p95.count(f"bool {LIMITS.max_ratio:.2f})") == 3
    assert f'baseline="{{{{ target }}}}{PRIMARY_SUFFIX}"' in p95
