"""Settings and query templates of the Prometheus source (config section ``sources.prometheus``).

Pure: parsing and checking the settings, the built-in PromQL per workload, placeholder expansion and
the query-time rounding that makes replicas agree. The client is :mod:`adapter.sources.promql`, the
cache and refresh loop :mod:`adapter.sources.prometheus`.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    pass

log = logging.getLogger("adapter.prometheus")

#: Placeholders a template may use.
PLACEHOLDERS = ("namespace", "workload", "window", "quantile")
#: Query keys that ``queries:`` may replace (``latency_exemplars`` is the series ``query_exemplars`` reads).
QUERY_KEYS = ("latency_quantile", "request_rate", "error_ratio", "cpu_utilization", "latency_exemplars")
HISTOGRAMS = ("classic", "native")
#: Quantiles queried for every workload (plus the workload's policy ``quantile``).
QUANTILES = (0.5, 0.95, 0.99)
#: Error kinds counted in ``latency_adapter_prometheus_query_errors_total{kind}``.
ERROR_KINDS = ("timeout", "connection", "http_status", "bad_response")
#: The workload the start-up check expands templates for.
CHECK_NAMESPACE, CHECK_WORKLOAD = "default", "latency-adapter-template-check"

_PLACEHOLDER = re.compile(r"\$(?:\{([A-Za-z_]\w*)\}|([A-Za-z_]\w*))")
_LABEL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_METRIC_NAME = re.compile(r"^[A-Za-z_:][A-Za-z0-9_:]*$")




# --------------------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrometheusSettings:
    url: str
    refresh_seconds: float = 15.0
    #: How far behind the clock the query time stays. A scrape's samples carry the time the scrape
    #: started but become visible only once it is stored (later still through remote write or
    #: VictoriaMetrics' in-memory buffer); querying a moment after the aligned time would let one replica
    #: see a late sample that another replica, asking a few milliseconds earlier, did not.
    query_offset_seconds: float = 2.0
    timeout_seconds: float = 5.0
    window_seconds: int = 60
    latency_metric: str = "http_server_request_duration_seconds"
    histogram: str = "classic"
    namespace_label: str = "namespace"
    workload_label: str = "workload"
    status_code_label: str = "http_response_status_code"
    error_status_regex: str = "5.."
    #: Full templates replacing the built-in query of the same key.
    queries: tuple[tuple[str, str], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()
    bearer_token_file: str | None = None
    basic_auth_username: str | None = None
    basic_auth_password_file: str | None = None
    ca_file: str | None = None
    max_concurrency: int = 8

    def templates(self) -> dict[str, str]:
        """Every query template: the built-ins with ``queries`` applied on top."""
        return {**builtin_queries(self), **dict(self.queries)}


_KEYS = ("url", "refresh_seconds", "query_offset_seconds", "timeout_seconds", "window_seconds",
         "latency_metric", "histogram", "labels", "error_status_regex", "queries", "headers",
         "bearer_token_file", "basic_auth", "ca_file", "max_concurrency")
_LABEL_KEYS = {"namespace": "namespace_label", "workload": "workload_label",
               "status_code": "status_code_label"}


def _number(path: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ConfigError(path, value, f"must be a number between {low:g} and {high:g}")
    return float(value)


def _string(path: str, value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, value, f"must be a non-empty string ({what})")
    return value


def _mapping(path: str, value: Any) -> Mapping[Any, Any]:
    if not isinstance(value, dict):
        raise ConfigError(path, value, "must be a mapping")
    return value


def prometheus_settings_from_mapping(path: str, body: Any) -> PrometheusSettings:
    """Validate ``sources.prometheus``; every problem is a :class:`ConfigError` with its key path."""
    doc = _mapping(path, body)
    for key, value in doc.items():
        if key not in _KEYS:
            raise ConfigError(f"{path}.{key}", value,
                              "is not a known key; known: " + ", ".join(sorted(_KEYS)))
    if "url" not in doc:
        raise ConfigError(f"{path}.url", None, "is required (the PromQL API base URL, e.g. "
                                               "http://prometheus.monitoring:9090)")
    url = _string(f"{path}.url", doc["url"], "an http:// or https:// URL")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"{path}.url", url, "must be an http:// or https:// URL")
    out: dict[str, Any] = {"url": url.rstrip("/")}
    if "refresh_seconds" in doc:
        out["refresh_seconds"] = _number(f"{path}.refresh_seconds", doc["refresh_seconds"], 1, 3600)
    if "query_offset_seconds" in doc:
        out["query_offset_seconds"] = _number(f"{path}.query_offset_seconds", doc["query_offset_seconds"],
                                              0, 3600)
    if "timeout_seconds" in doc:
        out["timeout_seconds"] = _number(f"{path}.timeout_seconds", doc["timeout_seconds"], 0.1, 300)
    if "window_seconds" in doc:
        value = doc["window_seconds"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 86400:
            raise ConfigError(f"{path}.window_seconds", value, "must be a whole number between 1 and 86400")
        out["window_seconds"] = value
    if "max_concurrency" in doc:
        value = doc["max_concurrency"]
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 256:
            raise ConfigError(f"{path}.max_concurrency", value, "must be a whole number between 1 and 256")
        out["max_concurrency"] = value
    if "latency_metric" in doc:
        name = _string(f"{path}.latency_metric", doc["latency_metric"], "a metric name")
        if not _METRIC_NAME.match(name):
            raise ConfigError(f"{path}.latency_metric", name, "must be a Prometheus metric name")
        out["latency_metric"] = name
    if "histogram" in doc:
        if doc["histogram"] not in HISTOGRAMS:
            raise ConfigError(f"{path}.histogram", doc["histogram"],
                              "must be one of " + ", ".join(HISTOGRAMS))
        out["histogram"] = doc["histogram"]
    if "labels" in doc:
        for key, value in _mapping(f"{path}.labels", doc["labels"]).items():
            if key not in _LABEL_KEYS:
                raise ConfigError(f"{path}.labels.{key}", value,
                                  "is not a known key; known: " + ", ".join(sorted(_LABEL_KEYS)))
            name = _string(f"{path}.labels.{key}", value, "a label name")
            if not _LABEL_NAME.match(name):
                raise ConfigError(f"{path}.labels.{key}", name, "must be a Prometheus label name")
            out[_LABEL_KEYS[key]] = name
    if "error_status_regex" in doc:
        regex = _string(f"{path}.error_status_regex", doc["error_status_regex"], "a regular expression")
        if '"' in regex or "\\" in regex:
            raise ConfigError(f"{path}.error_status_regex", regex, "must not contain quotes or backslashes")
        out["error_status_regex"] = regex
    if "queries" in doc:
        queries: list[tuple[str, str]] = []
        for key, value in _mapping(f"{path}.queries", doc["queries"]).items():
            key_path = f"{path}.queries.{key}"
            if key not in QUERY_KEYS:
                raise ConfigError(key_path, value, "is not a known query; known: " + ", ".join(QUERY_KEYS))
            check_template(key_path, _string(key_path, value, "a PromQL template"))
            queries.append((key, value))
        out["queries"] = tuple(queries)
    if "headers" in doc:
        headers: list[tuple[str, str]] = []
        for key, value in _mapping(f"{path}.headers", doc["headers"]).items():
            if not isinstance(key, str) or not re.match(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", key):
                raise ConfigError(f"{path}.headers.{key}", value, "must be named by an HTTP header name")
            if not isinstance(value, str) or "\n" in value or "\r" in value:
                raise ConfigError(f"{path}.headers.{key}", value, "must be a one-line string")
            headers.append((key, value))
        out["headers"] = tuple(headers)
    for key in ("bearer_token_file", "ca_file"):
        if key in doc:
            out[key] = _string(f"{path}.{key}", doc[key], "a file path")
    if "basic_auth" in doc:
        auth = _mapping(f"{path}.basic_auth", doc["basic_auth"])
        for key, value in auth.items():
            if key not in ("username", "password_file"):
                raise ConfigError(f"{path}.basic_auth.{key}", value,
                                  "is not a known key; known: password_file, username")
        for key in ("username", "password_file"):
            if key not in auth:
                raise ConfigError(f"{path}.basic_auth.{key}", None, "is required with basic_auth")
        out["basic_auth_username"] = _string(f"{path}.basic_auth.username", auth["username"], "a user name")
        out["basic_auth_password_file"] = _string(f"{path}.basic_auth.password_file", auth["password_file"],
                                                  "a file path")
    if "bearer_token_file" in out and "basic_auth_username" in out:
        raise ConfigError(f"{path}.basic_auth", doc["basic_auth"],
                          "cannot be combined with bearer_token_file")
    settings = PrometheusSettings(**out)
    for key, template in builtin_queries(settings).items():  # label names and regex end up in these
        check_template(f"{path}.queries.{key}", template)
    return settings


# --------------------------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------------------------


def builtin_queries(s: PrometheusSettings) -> dict[str, str]:
    """The built-in template of every query key, with the configured metric and label names."""
    match = f'{s.namespace_label}="$namespace",{s.workload_label}="$workload"'
    m = s.latency_metric
    if s.histogram == "native":
        quantile = f"histogram_quantile($quantile, sum(rate({m}{{{match}}}[$window])))"
        rate = f"sum(histogram_count(rate({m}{{{match}}}[$window])))"
        errors = (f'sum(histogram_count(rate({m}{{{match},{s.status_code_label}=~"{s.error_status_regex}"}}'
                  f"[$window])))")
        exemplars = f"{m}{{{match}}}"
    else:
        quantile = f"histogram_quantile($quantile, sum by (le) (rate({m}_bucket{{{match}}}[$window])))"
        rate = f"sum(rate({m}_count{{{match}}}[$window]))"
        errors = f'sum(rate({m}_count{{{match},{s.status_code_label}=~"{s.error_status_regex}"}}[$window]))'
        exemplars = f"{m}_bucket{{{match}}}"
    # No error series at all (no failed request yet) is a ratio of 0, not missing data.
    error_ratio = f"({errors} or vector(0)) / {rate}"
    cpu = ('sum(rate(container_cpu_usage_seconds_total{namespace="$namespace",pod=~"$workload-.*",'
           'container!=""}[$window])) / sum(kube_pod_container_resource_requests{namespace="$namespace",'
           'pod=~"$workload-.*",resource="cpu"})')
    return {"latency_quantile": quantile, "request_rate": rate, "error_ratio": error_ratio,
            "cpu_utilization": cpu, "latency_exemplars": exemplars}


def placeholders(template: str) -> list[str]:
    """The placeholder names a template uses, in order."""
    return [a or b for a, b in _PLACEHOLDER.findall(template)]


def check_template(path: str, template: str) -> None:
    unknown = [name for name in placeholders(template) if name not in PLACEHOLDERS]
    if unknown:
        raise ConfigError(path, template, f"uses unknown placeholder ${unknown[0]}; known: "
                          + ", ".join("$" + p for p in PLACEHOLDERS))


def _promql_string(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def expand(template: str, namespace: str, workload: str, window_seconds: int, quantile: float = 0.95) -> str:
    """The template with its placeholders filled in (names escaped for a PromQL string literal)."""
    values = {"namespace": _promql_string(namespace), "workload": _promql_string(workload),
              "window": f"{window_seconds}s", "quantile": repr(float(quantile))}

    def one(match: re.Match[str]) -> str:
        return values[match.group(1) or match.group(2)]

    return _PLACEHOLDER.sub(one, template)


def align(now: float, refresh_seconds: float, offset_seconds: float = 0.0) -> float:
    """``now - offset_seconds`` rounded down to the refresh interval: every replica queries the same time,
    and only data that has had ``offset_seconds`` to become visible."""
    return math.floor((now - offset_seconds) / refresh_seconds) * refresh_seconds
