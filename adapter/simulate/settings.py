"""What a simulation runs with: the adapter's own config file, plus an optional ``simulate`` section.

``--config FILE`` is the adapter's config file, read by the adapter's own parser
(:func:`adapter.config.settings_from_mapping`): ``store`` (window and slice lengths: the served p95's
lag), ``cpu.poll_seconds`` (how often the adapter reads metrics-server) and the policy (``defaults`` and
any ``workloads`` entry matching namespace ``sim``, workload ``app``) apply as in ``serve``.

The HPAs of the three policies share one ``behavior`` and one replica range. Without a ``simulate``
section they are the controller's defaults (no ``behavior``) and 2 to 100 replicas. A ``simulate``
section, read only here, changes them (``serve`` and ``check-config`` reject the section, so keep it in
a copy of the file meant for simulations)::

    simulate:
      min_replicas: 2
      max_replicas: 100
      startup_seconds: 30        # a new pod takes traffic this long after the HPA created it
      timeout_seconds: 2         # a request slower than this is a timeout
      behavior:                  # spec.behavior of autoscaling/v2; unset fields take Kubernetes' defaults
        scaleUp:   {stabilizationWindowSeconds: 0, selectPolicy: Max,
                    policies: [{type: Percent, value: 100, periodSeconds: 15},
                               {type: Pods, value: 4, periodSeconds: 15}]}
        scaleDown: {stabilizationWindowSeconds: 300,
                    policies: [{type: Percent, value: 20, periodSeconds: 60}]}

Every key is checked; a bad one is a :class:`~adapter.errors.ConfigError` naming its path
(``simulate.behavior.scaleUp.policies[0].type``), which the command reports with exit status 2.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from ..config import Settings, settings_from_bytes, settings_from_mapping
from ..errors import ConfigError
from .hpa import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    POLICY_TYPES,
    SELECT_POLICIES,
    Behavior,
    PolicyType,
    ScalingPolicy,
    ScalingRules,
    SelectPolicy,
)

SECTION = "simulate"
#: The simulated workload's namespace and name: ``workloads`` entries matching them apply.
NAMESPACE = "sim"
WORKLOAD = "app"


@dataclass(frozen=True)
class HpaSettings:
    """What the three HPAs share (the ``simulate`` section)."""

    min_replicas: int = 2
    max_replicas: int = 100
    startup_seconds: float = 30.0
    timeout_seconds: float = 2.0
    behavior: Behavior = field(default_factory=Behavior)
    #: True when the config file set ``behavior`` (reported beside the results).
    behavior_from_config: bool = False


@dataclass(frozen=True)
class SimulationConfig:
    adapter: Settings = field(default_factory=Settings)
    hpa: HpaSettings = field(default_factory=HpaSettings)


def _int(path: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(path, value, f"must be a whole number from {low} to {high}")
    return value


def _float(path: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise ConfigError(path, value, f"must be a number greater than {low:g} and at most {high:g}")
    return float(value)


def _mapping(path: str, value: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, value, "must be a mapping")
    for key in value:
        if key not in known:
            raise ConfigError(f"{path}.{key}", value[key], "is not a known key; known: " + ", ".join(known))
    return value


def _rules(path: str, body: Any, default: ScalingRules) -> ScalingRules:
    doc = _mapping(path, body, ("stabilizationWindowSeconds", "selectPolicy", "policies"))
    rules = default
    if "stabilizationWindowSeconds" in doc:
        window = _int(f"{path}.stabilizationWindowSeconds", doc["stabilizationWindowSeconds"], 0, 3600)
        rules = dataclasses.replace(rules, stabilization_window_seconds=window)
    if "selectPolicy" in doc:
        select = doc["selectPolicy"]
        if select not in SELECT_POLICIES:
            raise ConfigError(f"{path}.selectPolicy", select, "must be one of " + ", ".join(SELECT_POLICIES))
        rules = dataclasses.replace(rules, select_policy=cast(SelectPolicy, select))
    if "policies" in doc:
        raw = doc["policies"]
        if not isinstance(raw, list) or not raw:
            raise ConfigError(f"{path}.policies", raw, "must be a non-empty list")
        policies = []
        for i, entry in enumerate(raw):
            where = f"{path}.policies[{i}]"
            item = _mapping(where, entry, ("type", "value", "periodSeconds"))
            for key in ("type", "value", "periodSeconds"):
                if key not in item:
                    raise ConfigError(f"{where}.{key}", None, "is required")
            kind = item["type"]
            if kind not in POLICY_TYPES:
                raise ConfigError(f"{where}.type", kind, "must be one of " + ", ".join(POLICY_TYPES))
            value = _int(f"{where}.value", item["value"], 1, 1_000_000)
            period = _int(f"{where}.periodSeconds", item["periodSeconds"], 1, 1800)
            policies.append(ScalingPolicy(cast(PolicyType, kind), value, period))
        rules = dataclasses.replace(rules, policies=tuple(policies))
    return rules


def hpa_from_mapping(body: Any) -> HpaSettings:
    """The ``simulate`` section; raises :class:`ConfigError` naming the key path."""
    doc = _mapping(SECTION, body, ("min_replicas", "max_replicas", "startup_seconds", "timeout_seconds",
                                   "behavior"))
    base = HpaSettings()
    min_replicas = _int(f"{SECTION}.min_replicas", doc.get("min_replicas", base.min_replicas), 1, 10_000)
    max_replicas = _int(f"{SECTION}.max_replicas", doc.get("max_replicas", base.max_replicas), 1, 10_000)
    if max_replicas < min_replicas:
        raise ConfigError(f"{SECTION}.max_replicas", max_replicas,
                          f"must be at least min_replicas ({min_replicas})")
    startup = _float(f"{SECTION}.startup_seconds", doc.get("startup_seconds", base.startup_seconds), 0, 3600)
    timeout = _float(f"{SECTION}.timeout_seconds", doc.get("timeout_seconds", base.timeout_seconds), 0, 600)
    behavior = base.behavior
    if "behavior" in doc:
        b = _mapping(f"{SECTION}.behavior", doc["behavior"], ("scaleUp", "scaleDown"))
        behavior = Behavior(
            scale_up=_rules(f"{SECTION}.behavior.scaleUp", b.get("scaleUp", {}), DEFAULT_SCALE_UP),
            scale_down=_rules(f"{SECTION}.behavior.scaleDown", b.get("scaleDown", {}), DEFAULT_SCALE_DOWN))
    return HpaSettings(min_replicas, max_replicas, startup, timeout, behavior, "behavior" in doc)


def load_simulation_config(path: Path | None) -> SimulationConfig:
    """The adapter settings and the ``simulate`` section of ``path`` (``None``: every default)."""
    if path is None:
        return SimulationConfig()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError("--config", str(path), f"cannot be read: {exc.strerror or exc}") from exc
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        doc = None  # the adapter's parser below reports it in its own words
    if not isinstance(doc, dict) or SECTION not in doc:
        return SimulationConfig(settings_from_bytes(data, path))
    rest = {k: v for k, v in doc.items() if k != SECTION}
    adapter = dataclasses.replace(settings_from_mapping(rest), config_path=path)
    return SimulationConfig(adapter, hpa_from_mapping(doc[SECTION]))
