"""Typed settings and the config file.

The config file is YAML. Every section maps onto a frozen settings dataclass of the module that owns
it, and every key is checked for name, type and range at start: a bad file fails at once with the key
path and the bad value quoted (exit status 2), never later in the middle of the night. Unknown keys are
errors too, because a typo (``window_second``) silently ignored is a default silently served.

```yaml
store:  {window_seconds: 60, slice_seconds: 5, refresh_seconds: 1, max_series: 10000,
         max_series_per_namespace: 2000}
otlp:   {max_body_bytes: 8388608, max_decompressed_bytes: 33554432, default_namespace: default,
         split_routes: true, max_label_length: 128}
cpu:    {source: auto, poll_seconds: 15}
traces: {url_template: "https://tempo.example/explore?traceId={trace_id}", exemplar_info: true,
         exemplar_info_interval_seconds: 60, exemplar_info_series_per_hour: 5000,
         exemplar_info_max_workloads: 10000}
limits: {max_concurrent_requests: 512, otlp_high_water_requests: 32, memory_budget_bytes: 0,
         max_spans_per_request: 65536, max_points_per_request: 65536, body_timeout_seconds: 10,
         retry_after_seconds: 1}                                   # adapter.limits; applied live
server: {header_timeout_seconds: 10, max_header_bytes: 16384, max_headers: 128, max_connections: 4096,
         shutdown_timeout_seconds: 20, shutdown_delay_seconds: 0, debug_endpoints: auto}
sources:
  prometheus: {url: "http://prometheus.monitoring:9090", refresh_seconds: 15}   # adapter.sources.prometheus
log_level: info
defaults: {latency_target_seconds: 0.25, cpu_target_utilization: 0.6, min_samples: 50,
           cpu_floor: 0.3, stale_after_seconds: 60, quantile: p95}
workloads:
  - {namespace: shop, workload: "checkout*", latency_target_seconds: 0.4}
canaries:
  - {namespace: shop, canary: checkout-canary, baseline: checkout}
```
Command-line flags (ports, bind address, certificate directory) override the file.

``defaults``, ``workloads`` and ``canaries`` are the policy (:mod:`adapter.policy_config`, which checks
them and documents the override rule: matching ``workloads`` entries apply in file order on top of
``defaults``, later ones overriding earlier ones key by key). They, ``limits`` and ``log_level`` are the
sections applied while running (:class:`~adapter.policy_config.PolicyWatcher`); a change to any other
section needs a restart.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .api.security import SecuritySettings
from .errors import ConfigError
from .limits import DEBUG_ENDPOINTS, LimitSettings, ServerSettings
from .policy_config import POLICY_SECTIONS, PolicyConfig, policy_from_mapping
from .sources.kubernetes import CPU_SOURCES, CpuSourceSettings
from .sources.otlp import ReceiverSettings
from .sources.otlp_ingest import IngestSettings
from .sources.prometheus_config import PrometheusSettings, prometheus_settings_from_mapping
from .store import StoreSettings
from .traces import TraceSettings, check_url_template

LOG_LEVELS = ("debug", "info", "warning", "error")


def default_cert_dir() -> Path:
    return Path(tempfile.gettempdir()) / "latency-adapter" / "certs"


@dataclass(frozen=True)
class Settings:
    bind: str = "0.0.0.0"
    api_port: int = 6443
    otlp_port: int = 4318
    telemetry_port: int = 9464
    cert_dir: Path = field(default_factory=default_cert_dir)
    insecure_no_auth: bool = False
    log_level: str = "info"
    demo: bool = False
    security: SecuritySettings = field(default_factory=SecuritySettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    receiver: ReceiverSettings = field(default_factory=ReceiverSettings)
    cpu: CpuSourceSettings = field(default_factory=CpuSourceSettings)
    traces: TraceSettings = field(default_factory=TraceSettings)
    #: Bounds applied live (``limits``) and fixed at start (``server``): :mod:`adapter.limits`.
    limits: LimitSettings = field(default_factory=LimitSettings)
    server: ServerSettings = field(default_factory=ServerSettings)
    #: kubeconfig for reading workloads, pods and PodMetrics (``None``: in-cluster when in a pod).
    kubeconfig: Path | None = None
    #: Per-workload targets and canary pairs (``defaults``, ``workloads``, ``canaries``).
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    #: ``sources.prometheus`` (``None``: not configured, no refresh loop, no workload may use it).
    prometheus: PrometheusSettings | None = None
    #: The file these settings were read from (``None``: built-in defaults). Not part of equality:
    #: where settings came from does not change what they are.
    config_path: Path | None = field(default=None, compare=False)


#: Extra range checks: key -> (predicate, what it must be).
_CHECKS: dict[str, tuple[Any, str]] = {
    "store.window_seconds": (lambda v: 1 <= v <= 3600, "between 1 and 3600"),
    "store.slice_seconds": (lambda v: 1 <= v <= 600, "between 1 and 600"),
    "store.max_series": (lambda v: v >= 1, "at least 1"),
    "store.max_series_per_namespace": (lambda v: v >= 1, "at least 1"),
    "store.relative_accuracy": (lambda v: 0.0001 <= v <= 0.05, "between 0.0001 and 0.05"),
    "store.refresh_seconds": (lambda v: 0.1 <= v <= 600, "between 0.1 and 600"),
    "otlp.max_body_bytes": (lambda v: 1024 <= v <= 1 << 30, "between 1024 and 1073741824"),
    "otlp.max_decompressed_bytes": (lambda v: 1024 <= v <= 1 << 31, "between 1024 and 2147483648"),
    "otlp.max_label_length": (lambda v: 1 <= v <= 1024, "between 1 and 1024"),
    "otlp.max_streams": (lambda v: v >= 1, "at least 1"),
    "otlp.default_namespace": (lambda v: 0 < len(v) <= 63, "a namespace name (1 to 63 characters)"),
    "cpu.source": (lambda v: v in CPU_SOURCES, "one of " + ", ".join(CPU_SOURCES)),
    "cpu.poll_seconds": (lambda v: 1 <= v <= 3600, "between 1 and 3600"),
    "traces.exemplar_info_interval_seconds": (lambda v: 1 <= v <= 86400, "between 1 and 86400"),
    "traces.exemplar_info_series_per_hour": (lambda v: v >= 1, "at least 1"),
    "traces.exemplar_info_max_workloads": (lambda v: v >= 1, "at least 1"),
    "limits.max_concurrent_requests": (lambda v: 1 <= v <= 100_000, "between 1 and 100000"),
    "limits.otlp_high_water_requests": (lambda v: 1 <= v <= 100_000, "between 1 and 100000"),
    "limits.memory_budget_bytes": (lambda v: v == 0 or v >= 64 << 20,
                                   "0 (80 % of the container's memory limit) or at least 67108864"),
    "limits.max_spans_per_request": (lambda v: v >= 1, "at least 1"),
    "limits.max_points_per_request": (lambda v: v >= 1, "at least 1"),
    "limits.body_timeout_seconds": (lambda v: 0.1 <= v <= 300, "between 0.1 and 300"),
    "limits.retry_after_seconds": (lambda v: 1 <= v <= 300, "between 1 and 300"),
    "server.header_timeout_seconds": (lambda v: 0.1 <= v <= 300, "between 0.1 and 300"),
    "server.max_header_bytes": (lambda v: 1024 <= v <= 1 << 20, "between 1024 and 1048576"),
    "server.max_headers": (lambda v: 8 <= v <= 10_000, "between 8 and 10000"),
    "server.max_connections": (lambda v: 1 <= v <= 1_000_000, "between 1 and 1000000"),
    "server.shutdown_timeout_seconds": (lambda v: 1 <= v <= 600, "between 1 and 600"),
    "server.shutdown_delay_seconds": (lambda v: 0 <= v <= 600, "between 0 and 600"),
    "server.debug_endpoints": (lambda v: v in DEBUG_ENDPOINTS, "one of " + ", ".join(DEBUG_ENDPOINTS)),
}

#: File section -> (settings attribute, dataclass). ``otlp`` feeds two dataclasses.
_SECTIONS: dict[str, tuple[tuple[str, type[Any]], ...]] = {
    "store": (("store", StoreSettings),),
    "otlp": (("ingest", IngestSettings), ("receiver", ReceiverSettings)),
    "cpu": (("cpu", CpuSourceSettings),),
    "traces": (("traces", TraceSettings),),
    "limits": (("limits", LimitSettings),),
    "server": (("server", ServerSettings),),
}


def _check_type(path: str, value: Any, expected: Any) -> Any:
    kind = expected if isinstance(expected, type) else type(expected)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, value, "must be true or false")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, value, "must be a whole number")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(path, value, "must be a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(path, value, "must be a string")
        return value
    raise ConfigError(path, value, f"has an unsupported type {kind.__name__}")


def _check_store(current: StoreSettings, changes: dict[str, Any]) -> None:
    """Cross-key rules of ``store``, reported with the key path and the effective values."""
    window = changes.get("window_seconds", current.window_seconds)
    slice_seconds = changes.get("slice_seconds", current.slice_seconds)
    refresh = changes.get("refresh_seconds", current.refresh_seconds)
    if window % slice_seconds:
        raise ConfigError("store.window_seconds", window,
                          f"must be a whole number of slices (store.slice_seconds is {slice_seconds})")
    if refresh > slice_seconds:
        raise ConfigError("store.refresh_seconds", refresh,
                          f"must be at most store.slice_seconds ({slice_seconds})")


def _field_defaults(cls: type[Any]) -> dict[str, Any]:
    instance = cls()
    return {f.name: getattr(instance, f.name) for f in dataclasses.fields(cls)}


def settings_from_mapping(doc: Any, base: Settings | None = None) -> Settings:
    """Validate a parsed config document and return settings; raises :class:`ConfigError`."""
    base = base or Settings()
    if doc is None:
        return base
    if not isinstance(doc, dict):
        raise ConfigError("<root>", doc, "the config file must be a mapping of sections")
    updates: dict[str, Any] = {}
    for section, body in doc.items():
        if section in POLICY_SECTIONS:
            continue  # checked together below
        if section == "sources":
            updates["prometheus"] = _sources(body)
            continue
        if section == "log_level":
            level = _check_type("log_level", body, str).lower()
            if level not in LOG_LEVELS:
                raise ConfigError("log_level", body, "must be one of " + ", ".join(LOG_LEVELS))
            updates["log_level"] = level
            continue
        targets = _SECTIONS.get(str(section))
        if targets is None:
            raise ConfigError(str(section), body, "is not a known section; known: "
                              + ", ".join(sorted([*_SECTIONS, "log_level", "sources", *POLICY_SECTIONS])))
        if not isinstance(body, dict):
            raise ConfigError(str(section), body, "must be a mapping")
        known: dict[str, tuple[str, type[Any]]] = {}
        for attr, cls in targets:
            for name in _field_defaults(cls):
                known[name] = (attr, cls)
        per_target: dict[str, dict[str, Any]] = {attr: {} for attr, _ in targets}
        for key, value in body.items():
            path = f"{section}.{key}"
            if key not in known:
                raise ConfigError(path, value, "is not a known key; known: " + ", ".join(sorted(known)))
            attr, cls = known[key]
            value = _check_type(path, value, type(_field_defaults(cls)[key]))
            check = _CHECKS.get(path)
            if check is not None and not check[0](value):
                raise ConfigError(path, value, f"must be {check[1]}")
            if path == "traces.url_template":
                check_url_template(path, value)
            per_target[attr][key] = value
        for attr, _cls in targets:
            current = getattr(base, attr)
            if attr == "store":
                _check_store(current, per_target[attr])
            updates[attr] = dataclasses.replace(current, **per_target[attr])
    server = updates.get("server", base.server)
    if server.shutdown_delay_seconds >= server.shutdown_timeout_seconds:
        raise ConfigError("server.shutdown_delay_seconds", server.shutdown_delay_seconds,
                          f"must be less than server.shutdown_timeout_seconds "
                          f"({server.shutdown_timeout_seconds:g})")
    receiver = updates.get("receiver", base.receiver)
    if receiver.max_decompressed_bytes < receiver.max_body_bytes:
        raise ConfigError("otlp.max_decompressed_bytes", receiver.max_decompressed_bytes,
                          "must be at least otlp.max_body_bytes")
    updates["policy"] = policy = policy_from_mapping(doc, base.policy)
    if updates.get("prometheus", base.prometheus) is None:
        _check_no_prometheus(policy)
    return dataclasses.replace(base, **updates)


#: Sources configured under ``sources:``.
SOURCE_SECTIONS = ("prometheus",)


def _sources(body: Any) -> PrometheusSettings | None:
    if not isinstance(body, dict):
        raise ConfigError("sources", body, "must be a mapping (e.g. sources: {prometheus: {url: ...}})")
    for key, value in body.items():
        if key not in SOURCE_SECTIONS:
            raise ConfigError(f"sources.{key}", value,
                              "is not a known source; known: " + ", ".join(SOURCE_SECTIONS))
    if "prometheus" not in body:
        return None
    return prometheus_settings_from_mapping("sources.prometheus", body["prometheus"])


def _check_no_prometheus(policy: PolicyConfig) -> None:
    """A workload may name ``source: prometheus`` only when ``sources.prometheus`` is configured."""
    if "prometheus" in policy.default_source:
        raise ConfigError("defaults.source", list(policy.default_source),
                          "names prometheus, but sources.prometheus is not configured")
    for i, override in enumerate(policy.workloads):
        if override.source is not None and "prometheus" in override.source:
            raise ConfigError(f"workloads[{i}].source", list(override.source),
                              "names prometheus, but sources.prometheus is not configured")


def settings_from_bytes(data: bytes, path: Path, base: Settings | None = None) -> Settings:
    """Validate the bytes of the config file at ``path`` (named in messages); raises :class:`ConfigError`.

    The one parser of the file, used at start, by ``check-config`` and by every live reload.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        problem = f"is not UTF-8 text: {exc.reason} at byte {exc.start}"
        raise ConfigError("--config", str(path), problem) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("--config", str(path), f"is not valid YAML: {exc}") from exc
    except RecursionError as exc:
        raise ConfigError("--config", str(path), "is not valid YAML: nested too deeply") from exc
    except Exception as exc:  # a tagged scalar PyYAML cannot convert (!!timestamp x) raises anything
        raise ConfigError("--config", str(path), f"is not valid YAML: {type(exc).__name__}: {exc}") from exc
    return dataclasses.replace(settings_from_mapping(doc, base), config_path=path)


def load_settings(path: Path | None, base: Settings | None = None) -> Settings:
    """Read and validate the config file at ``path`` (``None``: built-in defaults)."""
    if path is None:
        return base or Settings()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("--config", str(path), f"cannot be read: {exc.strerror or exc}") from exc
    return settings_from_bytes(data, path, base)
