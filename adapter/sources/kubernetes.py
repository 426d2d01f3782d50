"""CPU utilisation per workload, polled from the Kubernetes API in the background.

Why poll instead of watching: the numbers come from metrics-server, which itself only refreshes every
15 s or so and offers no watch; the HPA polls it the same way. One poll per workload reads the pods
(readiness and CPU requests) and their ``PodMetrics`` (usage) and writes one
:class:`~adapter.cpu.WorkloadCpu` into :class:`~adapter.cpu.CpuSignals`.

What counts, like the HPA's ``Resource`` metric: ready pods that declare a CPU request on every
container and have a metrics sample. A ready pod without requests cannot be given a utilisation, so it
is left out, counted in :attr:`KubernetesCpuSource.pods_without_requests` and logged when that number
changes. Pods still starting or not ready are ignored (their CPU is not steady-state load).

Fail static: when an API call fails or nothing is countable, no reading is written, so the previous one
stays with its old ``observed_at``; :mod:`adapter.cpu` and the policy stop using it once it is stale.
The workload's selector is cached and re-read every few polls, so a steady state costs two list calls
per workload per interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..cpu import CpuSignals, WorkloadCpu
from ..errors import BadSelector
from ..kube import ClusterAPIError, PodInfo, WorkloadAPI, WorkloadSelector

log = logging.getLogger("adapter.cpu")

#: ``(namespace, workload name)``.
Workload = tuple[str, str]

#: Re-read a workload's selector after this many polls (a minute at the default interval): selectors
#: of Deployments and StatefulSets are immutable, but the workload can be deleted and recreated.
RESOLVE_EVERY_POLLS = 4
#: A workload whose polls keep failing is logged at most once per this many seconds.
ERROR_LOG_INTERVAL_SECONDS = 300.0
#: Workloads polled at once: bounds the worker threads and the load on the API server.
MAX_CONCURRENT_WORKLOADS = 4


CPU_SOURCES = ("auto", "kubernetes", "otlp")


@dataclass(frozen=True)
class CpuSourceSettings:
    """Where workload CPU comes from (config section ``cpu``; flags ``--cpu-source``, ``--kubeconfig``).

    ``auto`` polls the Kubernetes API when there is one to poll (in a pod, or ``--kubeconfig`` given)
    and otherwise relies on OTLP CPU metrics alone; ``kubernetes`` makes a missing API a start-up error;
    ``otlp`` never polls. OTLP CPU metrics are accepted in every mode.
    """

    source: str = "auto"
    poll_seconds: float = 15.0


class KubernetesCpuSource:
    """Polls workloads' pods and pod metrics and writes their CPU into :class:`CpuSignals`.

    Counters (read them for ``/metrics``): :attr:`polls` (rounds), :attr:`poll_errors` (failed workload
    polls), :attr:`workloads_not_found` (lookups that found neither a Deployment nor a StatefulSet) and
    :attr:`pods_without_requests` (ready pods left out for want of a CPU request, per workload, as of
    the last successful poll).
    """

    def __init__(self, api: WorkloadAPI, signals: CpuSignals, *, interval_seconds: float = 15.0,
                 clock: Callable[[], float] = time.time,
                 resolve_every_polls: int = RESOLVE_EVERY_POLLS) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        if resolve_every_polls < 1:
            raise ValueError("resolve_every_polls must be at least 1")
        self._api = api
        self._signals = signals
        self._interval = float(interval_seconds)
        self._clock = clock
        self._resolve_every = resolve_every_polls
        self.polls = 0
        self.poll_errors = 0
        self.workloads_not_found = 0
        self.pods_without_requests: dict[Workload, int] = {}
        #: Selector and the poll it was read in.
        self._selectors: dict[Workload, tuple[WorkloadSelector, int]] = {}
        self._missing: set[Workload] = set()
        #: When a failing workload was last logged, and how many failures were not logged since.
        self._failing: dict[Workload, tuple[float, int]] = {}

    @property
    def interval_seconds(self) -> float:
        return self._interval

    async def run(self, workloads: Callable[[], Iterable[Workload]]) -> None:
        """Poll ``workloads()`` (asked afresh every round) every interval, until cancelled.

        The interval is counted from the end of a poll, so a slow API server is never asked more often.
        """
        while True:
            try:
                await self.poll_once(workloads())
            except Exception:  # a bug must not end the loop: the readings would silently go stale
                self.poll_errors += 1
                log.exception("cpu poll round failed", extra={"fields": {"event": "cpu_poll_round_failed"}})
            await asyncio.sleep(self._interval)

    async def poll_once(self, workloads: Iterable[Workload]) -> None:
        """One round over ``workloads``; a failing workload never stops the others."""
        self.polls += 1
        wanted = list(dict.fromkeys(workloads))
        semaphore = asyncio.Semaphore(MAX_CONCURRENT_WORKLOADS)

        async def bounded(key: Workload) -> None:
            async with semaphore:
                await self._poll_workload(key)

        await asyncio.gather(*(bounded(key) for key in wanted))
        # Forget workloads nobody asks about any more, so these tables stay as small as the list.
        keep = set(wanted)
        tables: tuple[dict[Workload, Any], ...] = (self._selectors, self.pods_without_requests, self._failing)
        for table in tables:
            for key in table.keys() - keep:
                del table[key]
        self._missing &= keep

    async def _poll_workload(self, key: Workload) -> None:
        namespace, name = key
        try:
            selector = await self._selector(key)
            if selector is None:
                self._not_found(key)
                return
            query = selector.label_selector()
            pods, usage = await asyncio.gather(self._api.list_pods(namespace, query),
                                               self._api.list_pod_metrics(namespace, query),
                                               return_exceptions=True)
            if isinstance(pods, BaseException):
                raise pods
            if isinstance(usage, BaseException):
                raise usage
        except (ClusterAPIError, BadSelector) as exc:
            self._failed(key, str(exc))
            return
        except Exception as exc:  # not expected; logged with its traceback, handled like an API error
            log.exception("cpu poll failed unexpectedly", extra={"fields": {
                "event": "cpu_poll_failed", "namespace": namespace, "workload": name}})
            self._failed(key, f"unexpected {type(exc).__name__}", logged=True)
            return
        self._recovered(key)
        self._measure(key, selector, pods, usage)

    async def _selector(self, key: Workload) -> WorkloadSelector | None:
        """The workload's selector from the cache, or from the API server when due (and then cached)."""
        cached = self._selectors.get(key)
        if cached is not None and self.polls - cached[1] < self._resolve_every:
            return cached[0]
        selector = await self._api.workload_selector(*key)
        if selector is None:
            self._selectors.pop(key, None)
        else:
            self._selectors[key] = (selector, self.polls)
        return selector

    def _measure(self, key: Workload, selector: WorkloadSelector, pods: list[PodInfo],
                 usage: dict[str, float]) -> None:
        """Sum the pods that count and write the reading; nothing countable writes nothing."""
        usage_cores = request_cores = 0.0
        counted = without = 0
        for pod in pods:
            if not pod.ready:
                continue
            if pod.cpu_request_cores is None:
                without += 1
                continue
            used = usage.get(pod.name)
            if used is None:  # not scraped yet (a new pod): no data is better than a made-up 0
                continue
            usage_cores += used
            request_cores += pod.cpu_request_cores
            counted += 1
        self._report_without_requests(key, selector, without)
        if counted == 0:
            log.debug("no pod to measure", extra={"fields": {
                "event": "cpu_no_pods", "namespace": key[0], "workload": key[1], "pods": len(pods)}})
            return
        self._signals.put_workload(key[0], key[1], WorkloadCpu(
            usage_cores, request_cores, counted, observed_at=self._clock(), pods_without_requests=without))

    def _report_without_requests(self, key: Workload, selector: WorkloadSelector, count: int) -> None:
        """Keep the gauge and log when it changes (not every poll: it is a standing condition)."""
        previous = self.pods_without_requests.get(key, 0)
        self.pods_without_requests[key] = count
        if count == previous:
            return
        fields = {"event": "cpu_pods_without_requests", "namespace": key[0], "workload": key[1],
                  "kind": selector.kind, "pods_without_requests": count}
        if count:
            log.warning("ready pods without a CPU request are left out of CPU utilisation",
                        extra={"fields": fields})
        else:
            log.info("every ready pod has a CPU request again", extra={"fields": fields})

    def _not_found(self, key: Workload) -> None:
        self.workloads_not_found += 1
        self.pods_without_requests.pop(key, None)
        self._recovered(key)
        if key not in self._missing:
            self._missing.add(key)
            log.warning("no Deployment or StatefulSet of this name; no CPU data for it", extra={"fields": {
                "event": "cpu_workload_not_found", "namespace": key[0], "workload": key[1]}})

    def _failed(self, key: Workload, error: str, *, logged: bool = False) -> None:
        """Count, forget the selector (the workload may have been replaced), log at most now and then."""
        self.poll_errors += 1
        self._selectors.pop(key, None)
        now = self._clock()
        last = self._failing.get(key)
        if last is not None and now - last[0] < ERROR_LOG_INTERVAL_SECONDS:
            self._failing[key] = (last[0], last[1] + 1)
            return
        self._failing[key] = (now, 0)
        if not logged:
            log.warning("cpu poll failed, keeping the last reading", extra={"fields": {
                "event": "cpu_poll_failed", "namespace": key[0], "workload": key[1], "error": error,
                "failures_not_logged": last[1] if last else 0}})

    def _recovered(self, key: Workload) -> None:
        if self._failing.pop(key, None) is not None:
            log.info("cpu poll works again", extra={"fields": {
                "event": "cpu_poll_recovered", "namespace": key[0], "workload": key[1]}})
