"""OTLP CPU metrics into :class:`~adapter.cpu.CpuSignals`: pod usage and container requests, in cores.

Called by :class:`~adapter.sources.otlp_ingest.OtlpIngestor` for two metric names of the OpenTelemetry
Kubernetes semantic conventions, as a Gauge or a Sum (either temporality: both are the current value, never
a counter to difference), with int or double points:

* ``k8s.pod.cpu.usage``: one point per pod, the CPU the pod uses now.
* ``k8s.container.cpu.request``: one point per container; a pod's request is the sum over its containers.
  Each container's last value is kept, so a pod reported again is summed afresh, never counted twice.

Namespace and workload come from the resource, as for latency (the ingestor resolves them). The pod is
the resource attribute ``k8s.pod.name``, else the point attribute ``k8s.pod.name``, else
``service.instance.id`` (resource, then point); the container is ``k8s.container.name`` (point, then
resource), and a request without one counts as the pod's single unnamed container.

A point's time is ``time_unix_nano`` (the ingest clock when 0, and never later than it). A pod's reading
is written once per request, after all its points are read; a request-only update keeps the time of the
pod's last usage, so a pod whose usage stopped still goes stale even while its requests keep coming.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..cpu import CpuSignals
from .otlp_view import attr_text

if TYPE_CHECKING:
    from .otlp_ingest import IngestResult

CPU_USAGE = "k8s.pod.cpu.usage"
CPU_REQUEST = "k8s.container.cpu.request"
CPU_METRICS = frozenset({CPU_USAGE, CPU_REQUEST})
#: Data kinds read (OTLP ``Metric.data`` oneof names); histograms and summaries of these names are ignored.
CPU_KINDS = frozenset({"gauge", "sum"})
#: Units understood, as the factor to cores. Semantic conventions say ``{cpu}``; no unit means cores.
CORE_UNITS = {
    "": 1.0, "1": 1.0, "{cpu}": 1.0, "{cpus}": 1.0, "{core}": 1.0, "{cores}": 1.0, "cpu": 1.0, "cores": 1.0,
    "m": 1e-3, "{millicpu}": 1e-3, "{millicore}": 1e-3, "{millicores}": 1e-3,
    "n": 1e-9, "{nanocpu}": 1e-9, "{nanocore}": 1e-9, "{nanocores}": 1e-9,
}
#: ``DataPointFlags.NO_RECORDED_VALUE``: the point only says the stream has ended.
FLAG_NO_RECORDED_VALUE = 1
#: Pods whose container requests (and last usage time) are remembered, least recently reported first out.
MAX_PODS = 100_000

PodKey = tuple[str, str, str]


class _Pod:
    """What is remembered of one pod between requests."""

    __slots__ = ("containers", "usage_at")

    def __init__(self) -> None:
        self.containers: dict[str, tuple[float, float]] = {}  # container -> (request cores, observed at)
        self.usage_at: float | None = None


@dataclass
class CpuBatch:
    """The CPU points of one export request, per pod, written out by :meth:`CpuImporter.commit`."""

    usage: dict[PodKey, tuple[float, float]] = field(default_factory=dict)  # (cores, observed at)
    requests: dict[PodKey, float] = field(default_factory=dict)  # newest request point's time
    points: dict[PodKey, int] = field(default_factory=dict)


class CpuImporter:
    """Reads CPU points into ``cpu``; keeps the per-container requests that make up each pod's request."""

    def __init__(self, cpu: CpuSignals | None, max_label_length: int, max_pods: int = MAX_PODS) -> None:
        self.cpu = cpu
        self.max_label_length = max_label_length
        self.max_pods = max_pods
        self._pods: OrderedDict[PodKey, _Pod] = OrderedDict()
        self.evicted_pods = 0

    def accepts(self, kind: str | None) -> bool:
        """Whether a CPU metric of this data kind is read (with no registry, none is: they are ignored)."""
        return self.cpu is not None and kind in CPU_KINDS

    def add(self, batch: CpuBatch, base: tuple[str, str], resource: dict[str, str], metric: Any,
            result: IngestResult, now: float) -> None:
        """Read one CPU metric of the resource whose (namespace, workload) is ``base`` into ``batch``."""
        data = getattr(metric, metric.WhichOneof("data"))
        scale = CORE_UNITS.get(metric.unit)
        if scale is None:
            result.reject("unknown_unit", len(data.data_points))
            return
        usage = metric.name == CPU_USAGE
        limit = self.max_label_length
        for point in data.data_points:
            if point.flags & FLAG_NO_RECORDED_VALUE:
                result.ignored += 1
                continue
            which = point.WhichOneof("value")
            if which is None:
                result.reject("missing_value")
                continue
            cores = (float(point.as_double) if which == "as_double" else float(point.as_int)) * scale
            if not (math.isfinite(cores) and cores >= 0):
                result.reject("invalid_value")
                continue
            attrs = {a.key: attr_text(a.value) for a in point.attributes}
            pod = (resource.get("k8s.pod.name") or attrs.get("k8s.pod.name")
                   or resource.get("service.instance.id") or attrs.get("service.instance.id") or "")
            if not pod:
                result.reject("missing_pod")
                continue
            container = "" if usage else attrs.get("k8s.container.name") or resource.get(
                "k8s.container.name", "")
            if len(pod) > limit or len(container) > limit:
                result.reject("label_too_long")
                continue
            observed = min(point.time_unix_nano / 1e9, now) if point.time_unix_nano else now
            key = (base[0], base[1], pod)
            if usage:
                seen = batch.usage.get(key)
                if seen is None or observed >= seen[1]:
                    batch.usage[key] = (cores, observed)
            else:
                containers = self._pod(key).containers
                seen = containers.get(container)
                if seen is None or observed >= seen[1]:
                    containers[container] = (cores, observed)
                batch.requests[key] = max(observed, batch.requests.get(key, observed))
            batch.points[key] = batch.points.get(key, 0) + 1

    def commit(self, batch: CpuBatch, result: IngestResult, now: float) -> None:
        """Write each pod of ``batch`` to the registry once; its points count as accepted, or as
        ``series_cap`` when the registry is full."""
        cpu = self.cpu
        if cpu is None:
            return
        for key, n in batch.points.items():
            namespace, workload, pod = key
            state = self._pod(key)
            usage = batch.usage.get(key)
            if usage is not None and state.usage_at is not None and usage[1] < state.usage_at:
                usage = None  # older than what the registry has (a retried export): keep the newer
            if usage is not None:
                state.usage_at = usage[1]
            observed = state.usage_at if state.usage_at is not None else batch.requests.get(key, now)
            request: float | None = None
            if key in batch.requests and state.containers:
                request = math.fsum(value for value, _ in state.containers.values())
            dropped = cpu.dropped
            cpu.put_pod(namespace, workload, pod, usage_cores=usage[0] if usage is not None else None,
                        request_cores=request, observed_at=observed)
            if cpu.dropped > dropped:
                result.reject("series_cap", n)
            else:
                result.accepted += n

    def _pod(self, key: PodKey) -> _Pod:
        state = self._pods.get(key)
        if state is None:
            state = self._pods[key] = _Pod()
            while len(self._pods) > self.max_pods:
                self._pods.popitem(last=False)
                self.evicted_pods += 1
        else:
            self._pods.move_to_end(key)
        return state
