"""Immutable value objects shared by the core, the sources and the API. No I/O here.

The API layer turns a :class:`Reading` into JSON; the store and sources produce :class:`SeriesKey` and
:class:`Exemplar` values. Keeping them frozen means a value cached for one request can be handed to the
next without copying and without anyone changing it underneath.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_INVALID = re.compile(r"[^A-Za-z0-9._-]+")
_EDGES = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")
#: Kubernetes label values are at most this long.
LABEL_VALUE_MAX = 63


def label_value(text: str, empty: str = "") -> str:
    """Map any string onto a valid Kubernetes label value, so an HPA selector can name it.

    An HPA's ``metric.selector`` is validated by the apiserver as a label selector, so ``/cart/{id}``
    could never be asked for. Runs of other characters become ``_``, leading and trailing
    non-alphanumerics go, and the result is cut to 63 characters: ``/cart/{id}`` -> ``cart_id``,
    ``/`` -> ``empty`` (the caller's choice, ``root`` for routes).
    """
    value = _EDGES.sub("", _INVALID.sub("_", text))
    if len(value) > LABEL_VALUE_MAX:
        value = _EDGES.sub("", value[:LABEL_VALUE_MAX])
    return value or empty


@dataclass(frozen=True, slots=True)
class SeriesKey:
    """One latency series: a workload in a namespace, optionally split by HTTP route.

    ``route`` is ``""`` when the data carried no ``http.route`` (or route splitting is off); such a
    series has no ``route`` label, so the selector ``route`` (exists) does not match it. Workload and
    route are already label values (see :func:`label_value`).
    """

    namespace: str
    workload: str
    route: str = ""

    def labels(self) -> dict[str, str]:
        """The labels a label selector is matched against (the namespace comes from the path)."""
        if self.route:
            return {"workload": self.workload, "route": self.route}
        return {"workload": self.workload}


@dataclass(frozen=True, slots=True)
class Exemplar:
    """A real request: its latency in seconds and its trace id (32 lower-case hex digits)."""

    seconds: float
    trace_id: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One value ready to be served for a metric and selector.

    ``labels`` is what goes into ``metricLabels``: the labels every merged series shares, plus
    ``trace_id`` of a representative request where one is known.
    """

    metric: str
    value: float
    timestamp: float
    window_seconds: int
    labels: dict[str, str] = field(default_factory=dict)
