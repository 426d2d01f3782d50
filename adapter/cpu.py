"""CPU utilisation per workload, as the sources last saw it. Pure: time is an argument.

Two sources write here. The Kubernetes source (metrics-server ``PodMetrics`` and pod CPU requests,
polled in the background) reports whole workloads; OTLP metrics (``k8s.pod.cpu.usage`` and
``k8s.container.cpu.request``) report single pods as they arrive. The provider reads one
:class:`~adapter.policy.CpuSignal` per workload, preferring the Kubernetes source while it is fresh.

Fail static lives here: a workload keeps its last reading (with the time it was taken) when a poll
fails, and the policy stops using it once it is older than ``stale_after_seconds``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .policy import CpuSignal

#: Workloads and pods remembered at most (a bound, like the store's series cap).
MAX_WORKLOADS = 10_000
MAX_PODS_PER_WORKLOAD = 2_000


@dataclass(frozen=True)
class WorkloadCpu:
    """One workload's CPU as a source measured it: sums over the pods that count."""

    usage_cores: float
    request_cores: float
    pods: int
    observed_at: float
    #: Ready pods left out because they have no CPU request (reported, never divided by zero).
    pods_without_requests: int = 0


@dataclass(frozen=True)
class PodCpu:
    usage_cores: float | None
    request_cores: float | None
    observed_at: float


class CpuSignals:
    """The latest CPU reading of every workload, by source."""

    def __init__(self) -> None:
        self._cluster: dict[tuple[str, str], WorkloadCpu] = {}
        self._pods: dict[tuple[str, str], dict[str, PodCpu]] = {}
        self.dropped = 0

    def put_workload(self, namespace: str, workload: str, reading: WorkloadCpu) -> None:
        """A whole-workload reading from the Kubernetes source (replaces the previous one)."""
        key = (namespace, workload)
        if key not in self._cluster and len(self._cluster) >= MAX_WORKLOADS:
            self.dropped += 1
            return
        self._cluster[key] = reading

    def put_pod(self, namespace: str, workload: str, pod: str, *, usage_cores: float | None = None,
                request_cores: float | None = None, observed_at: float) -> None:
        """One pod's usage and/or request from OTLP; a value not given keeps the pod's previous one."""
        key = (namespace, workload)
        pods = self._pods.get(key)
        if pods is None:
            if len(self._pods) >= MAX_WORKLOADS:
                self.dropped += 1
                return
            pods = self._pods[key] = {}
        old = pods.get(pod)
        if old is None and len(pods) >= MAX_PODS_PER_WORKLOAD:
            self.dropped += 1
            return
        pods[pod] = PodCpu(
            usage_cores if usage_cores is not None else (old.usage_cores if old else None),
            request_cores if request_cores is not None else (old.request_cores if old else None),
            observed_at,
        )

    def workloads(self, namespace: str) -> set[str]:
        """Workloads with any CPU data in ``namespace``."""
        return {w for (ns, w) in self._cluster if ns == namespace} | {
            w for (ns, w) in self._pods if ns == namespace}

    def all_workloads(self) -> set[tuple[str, str]]:
        return set(self._cluster) | set(self._pods)

    def reading(self, namespace: str, workload: str, now: float, stale_after: float,
                default_request_cores: float | None = None) -> WorkloadCpu | None:
        """The freshest usable reading: the Kubernetes source while fresh, else the OTLP pods.

        OTLP pods older than ``stale_after`` are left out (a pod that stopped reporting has gone); a pod
        without a request uses ``default_request_cores`` (the policy's ``cpu_request_cores``) or is
        counted in ``pods_without_requests``.
        """
        cluster = self._cluster.get((namespace, workload))
        if cluster is not None and now - cluster.observed_at <= stale_after and cluster.request_cores > 0:
            return cluster
        otlp = self._from_pods(namespace, workload, now, stale_after, default_request_cores)
        if otlp is not None:
            return otlp
        return cluster if cluster is not None and cluster.request_cores > 0 else None

    def signal(self, namespace: str, workload: str, now: float, stale_after: float,
               default_request_cores: float | None = None) -> CpuSignal | None:
        reading = self.reading(namespace, workload, now, stale_after, default_request_cores)
        if reading is None:
            return None
        return CpuSignal(reading.usage_cores / reading.request_cores, reading.observed_at, reading.pods)

    def _from_pods(self, namespace: str, workload: str, now: float, stale_after: float,
                   default_request_cores: float | None) -> WorkloadCpu | None:
        pods = self._pods.get((namespace, workload))
        if not pods:
            return None
        usage = request = 0.0
        counted = without = 0
        newest = float("-inf")
        for name in [n for n, p in pods.items() if now - p.observed_at > stale_after]:
            del pods[name]
        for pod in pods.values():
            if pod.usage_cores is None:
                continue
            req = pod.request_cores if pod.request_cores is not None else default_request_cores
            if req is None or req <= 0:
                without += 1
                continue
            usage += pod.usage_cores
            request += req
            counted += 1
            newest = max(newest, pod.observed_at)
        if counted == 0:
            return None
        return WorkloadCpu(usage, request, counted, newest, without)
