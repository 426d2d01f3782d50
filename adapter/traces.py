"""Settings for the ways a trace id leaves the adapter, and the link to a trace.

Why a module: the trace link template is used by the debug page, the README and the logs, and the three
ways trace ids are published (exemplars, ``metricLabels``, the info metric) share one set of settings
(config section ``traces``; ``--trace-url-template`` overrides the template).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from .errors import ConfigError

#: The placeholder a trace URL template must contain.
PLACEHOLDER = "{trace_id}"


@dataclass(frozen=True)
class TraceSettings:
    """``url_template``: e.g. ``https://tempo.example/explore?traceId={trace_id}`` ("" = no links).

    ``exemplar_info``: publish ``latency_adapter_p95_exemplar_info``; ``exemplar_info_interval_seconds``:
    a workload's series is replaced at most this often; ``exemplar_info_series_per_hour``: the global
    budget of new series in any rolling hour (over it, rotation stops and is counted);
    ``exemplar_info_max_workloads``: workloads with a series at once (a memory bound; the rest are left
    out and counted).
    """

    url_template: str = ""
    exemplar_info: bool = True
    exemplar_info_interval_seconds: float = 60.0
    exemplar_info_series_per_hour: int = 5000
    exemplar_info_max_workloads: int = 10_000


def check_url_template(key: str, template: str) -> str:
    """The template, or :class:`ConfigError` naming ``key`` when it cannot produce a link."""
    if template == "":
        return template
    if not template.startswith(("http://", "https://")):
        raise ConfigError(key, template, "must be an http:// or https:// URL")
    if PLACEHOLDER not in template:
        raise ConfigError(key, template, f"must contain {PLACEHOLDER} where the trace id goes")
    try:
        template.replace(PLACEHOLDER, "0" * 32).format()
    except (IndexError, KeyError, ValueError):
        raise ConfigError(key, template, f"may contain no braces other than {PLACEHOLDER}") from None
    return template


def trace_url(template: str, trace_id: str | None) -> str | None:
    """The link to ``trace_id`` (URL-quoted into the template), or ``None`` without a template or id."""
    if not template or not trace_id:
        return None
    return template.replace(PLACEHOLDER, quote(trace_id, safe=""))
