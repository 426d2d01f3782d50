"""The JSON shapes of the external metrics API, as bytes. Pure: values in, JSON out, nothing else.

Shapes follow ``k8s.io/metrics/pkg/apis/external_metrics/v1beta1`` and ``meta/v1`` as client-go decodes
them (schemas in ``tests/fixtures``). Quantities go through :func:`adapter.quantity.format_quantity`, so a
value the Go parser would reject (NaN, Inf) can never be written.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

from ..model import Reading
from ..quantity import format_quantity

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
#: Kubernetes caps nothing here, but metricLabels values are kept short so trace ids and names fit.
MAX_LABEL_VALUE = 128


def _dump(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def rfc3339(ts: float) -> str:
    """UTC, whole seconds, ``Z``: the form client-go's ``metav1.Time`` reads."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ts)))


def api_group_list() -> bytes:
    gv = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return _dump({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{"name": GROUP, "versions": [gv], "preferredVersion": gv}],
    })


def api_group() -> bytes:
    gv = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return _dump({"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [gv],
                  "preferredVersion": gv})


def api_resource_list(metric_names: Iterable[str]) -> bytes:
    return _dump({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {"name": name, "singularName": "", "namespaced": True, "kind": "ExternalMetricValueList",
             "verbs": ["get"]}
            for name in metric_names
        ],
    })


def external_metric_value_list(reading: Reading) -> bytes:
    """One item per selector: the HPA sums items, so several would double-count."""
    labels = {k: v[:MAX_LABEL_VALUE] for k, v in reading.labels.items()}
    return _dump({
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": [{
            "metricName": reading.metric,
            "metricLabels": labels,
            "timestamp": rfc3339(reading.timestamp),
            "window": max(1, reading.window_seconds),
            "value": format_quantity(reading.value),
        }],
    })


def status(code: int, reason: str, message: str) -> bytes:
    return _dump({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    })
