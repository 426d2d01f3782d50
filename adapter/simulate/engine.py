"""One simulated run per policy: traffic -> pods -> the adapter's own signals -> the HPA model -> pods.

Time is simulated in 1 s steps from ``t = 0`` to the end of the profile (nothing sleeps), with these
periodic events at fixed phases:

* every 15 s at ``t % 15 == 0``: the HPA syncs (``t = 0`` included) and pods are created or removed;
* every 15 s at ``t % 15 == 5``: metrics-server scrapes every pod (average CPU since its previous scrape);
* every ``cpu.poll_seconds`` (15) at phase 10: the adapter reads metrics-server for ``dual``, like its
  Kubernetes CPU source: the sum over ready pods that have a sample, observed at the poll.

What each HPA sees, per policy:

* ``cpu``: a ``Resource`` CPU metric, ``averageUtilization`` = ``cpu_target_utilization`` in percent,
  from the latest metrics-server samples, with the controller's grouping of pods (no sample: missing;
  not ready, or ready for less than a sample window within the 5 min CPU initialisation period:
  unready).
* ``latency``: External ``latency_p95_seconds`` with a ``Value`` target of ``latency_target_seconds``.
* ``dual``: External ``dual_signal_ratio`` with a ``Value`` target of 1.

Latency goes through the adapter itself: the sampled requests of each step enter a real
:class:`~adapter.store.WindowStore` (as a weighted :class:`~adapter.sketch.LatencySketch` holding the
step's true request count) when they *complete*, and the HPA reads the value the real
:class:`~adapter.provider.MetricsProvider` serves at the sync, as a quantity string read back in
thousandths. So the served p95 has the store's real window lag, and ``dual_signal_ratio`` is the real
policy's decision (``min_samples``, ``cpu_floor``, staleness included). Missing data (a 404) is a
missing metric for the HPA.

The figures (:class:`PolicyResult`):

* ``slo_violation_minutes``: the sync intervals (15 s) whose true p95 (of the requests completed in
  them, from the samples, not the metric the HPA saw) is above the SLO, in minutes;
* ``replica_hours``: pods in existence (starting ones included: they cost the same) x time;
* ``first_scale_up_seconds``: from the first change of load (:meth:`Traffic.change_at`) to the first
  sync after it that raised the replica count; ``None`` if none did;
* ``max_replicas``, ``scale_events`` (syncs that changed the count), ``timeouts`` (requests slower than
  the timeout, from the weighted samples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..cpu import CpuSignals, WorkloadCpu
from ..errors import BadRequest, NoData
from ..model import SeriesKey
from ..provider import MetricsProvider
from ..quantity import format_quantity, milli_value
from ..selector import parse_selector
from ..sketch import LatencySketch
from ..store import WindowStore
from .hpa import (
    CPU_INITIALIZATION_PERIOD_SECONDS,
    SYNC_PERIOD_SECONDS,
    HorizontalPodAutoscaler,
    PodCpu,
    milli,
    utilization_replicas,
    value_replicas,
)
from .settings import NAMESPACE, WORKLOAD, SimulationConfig
from .traffic import Traffic
from .workload import MAX_SAMPLES_PER_STEP, Fleet, StepSamples

POLICIES = ("cpu", "latency", "dual")
POLICY_TITLES = {"cpu": "CPU only", "latency": "latency only", "dual": "dual-signal"}
#: The SLO the figures are measured against: p95 <= 0.42 s.
DEFAULT_SLO_SECONDS = 0.42
STEP_SECONDS = 1
METRICS_SERVER_PERIOD = 15
METRICS_SERVER_PHASE = 5
ADAPTER_POLL_PHASE = 10
#: Simulated wall-clock time of ``t = 0`` (a whole minute, so store slices line up with the steps).
EPOCH = 1_800_000_000.0

#: ``progress(policy, steps done, steps in all)``.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class TimelinePoint:
    """One HPA sync: the load then, what the HPA decided, the pods taking traffic, and the true p95 of
    the requests completed since the previous sync (``None`` at ``t = 0`` or when none completed)."""

    t: int
    rps: float
    replicas: int
    ready: int
    p95_seconds: float | None
    #: What the HPA read (External metrics; CPU: the utilisation of the pods that counted), ``None``
    #: when missing; the ``reason`` label of ``dual_signal_ratio``; the CPU utilisation the adapter held.
    #: For reports and debugging; not part of the JSON document.
    metric: float | None = None
    reason: str | None = None
    adapter_cpu: float | None = None


@dataclass(frozen=True)
class PolicyResult:
    policy: str
    slo_violation_minutes: float
    replica_hours: float
    first_scale_up_seconds: float | None
    max_replicas: int
    scale_events: int
    timeouts: int
    requests: int
    timeline: tuple[TimelinePoint, ...]


@dataclass(frozen=True)
class SimulationResult:
    scenario: str
    seed: int
    slo_seconds: float
    traffic: Traffic
    config: SimulationConfig
    policies: dict[str, PolicyResult] = field(default_factory=dict)


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float | None:
    """The smallest value with at least ``q`` of the total weight at or below it."""
    if values.shape[0] == 0:
        return None
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
    return float(values[order][min(index, values.shape[0] - 1)])


class _Run:
    """The state of one policy's run (see the module docstring for the schedule)."""

    def __init__(self, traffic: Traffic, config: SimulationConfig, policy: str, seed: int,
                 slo_seconds: float) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
        self.traffic = traffic
        self.config = config
        self.policy = policy
        self.slo = slo_seconds
        self.rng = np.random.default_rng(seed)  # the same stream for every policy
        self.settings = config.adapter.policy.for_workload(NAMESPACE, WORKLOAD)
        hpa = config.hpa
        self.clock = EPOCH
        self.store = WindowStore(config.adapter.store)
        self.cpu_signals = CpuSignals()
        policy_config = config.adapter.policy
        self.provider = MetricsProvider(self.store, lambda: self.clock, self.cpu_signals,
                                        lambda: policy_config)
        self.key = SeriesKey(NAMESPACE, WORKLOAD)
        self.selector = parse_selector(f"workload={WORKLOAD}")
        self.hpa = HorizontalPodAutoscaler(hpa.min_replicas, hpa.max_replicas, hpa.behavior)
        model = traffic.workload
        start = model.pods_for(float(traffic.rps[0]), self.settings.cpu_target_utilization)
        self.replicas = min(max(start, hpa.min_replicas), hpa.max_replicas)
        self.fleet = Fleet(model, self.replicas, hpa.startup_seconds)
        self.poll_period = max(1, round(config.adapter.cpu.poll_seconds))
        self.target_percent = max(1, round(self.settings.cpu_target_utilization * 100))
        self._seen: tuple[float | None, str | None] = (None, None)

    # -- signals -----------------------------------------------------------------------------------------

    def _adapter_poll(self, t: int) -> None:
        """The adapter's Kubernetes CPU source: ready pods with a sample, observed now."""
        fleet = self.fleet
        counted = fleet.ready(t) & np.isfinite(fleet.metric_usage)
        pods = int(counted.sum())
        if pods == 0:
            return  # nothing countable: nothing written (fail static)
        usage = float(fleet.metric_usage[counted].sum())
        request = pods * fleet.model.cpu_request_cores
        self.cpu_signals.put_workload(NAMESPACE, WORKLOAD, WorkloadCpu(usage, request, pods, self.clock))

    def _cpu_pods(self, t: int) -> list[PodCpu]:
        """The pods as the controller groups them for the CPU metric."""
        fleet = self.fleet
        request = milli(fleet.model.cpu_request_cores)
        out = []
        for i in range(fleet.size):
            usage = float(fleet.metric_usage[i])
            if not math.isfinite(usage):
                out.append(PodCpu(request, None))
                continue
            ready_at = float(fleet.ready_at[i])
            if t < ready_at:
                counted = False
            elif t < float(fleet.created[i]) + CPU_INITIALIZATION_PERIOD_SECONDS:
                counted = float(fleet.metric_at[i]) >= ready_at + float(fleet.metric_window[i])
            else:
                counted = True
            out.append(PodCpu(request, milli(usage), counted))
        return out

    def _external(self, metric: str) -> int | None:
        try:
            reading = self.provider.reading(NAMESPACE, metric, self.selector)
        except (NoData, BadRequest):
            return None
        self._seen = (reading.value, reading.labels.get("reason"))
        return milli_value(format_quantity(reading.value))

    def _proposal(self, t: int) -> int | None:
        ready = int(self.fleet.ready(t).sum())
        self._seen = (None, None)
        if self.policy == "cpu":
            pods = self._cpu_pods(t)
            counted = [p for p in pods if p.counted and p.usage_milli is not None]
            if counted:
                used = sum(p.usage_milli or 0 for p in counted)
                self._seen = (used / sum(p.request_milli for p in counted), None)
            return utilization_replicas(self.replicas, pods, self.target_percent)
        if self.policy == "latency":
            value = self._external("latency_p95_seconds")
            target = milli(self.settings.latency_target_seconds)
        else:
            value = self._external("dual_signal_ratio")
            target = 1000
        return None if value is None else value_replicas(self.replicas, ready, value, target)

    def _adapter_cpu(self) -> float | None:
        signal = self.cpu_signals.signal(NAMESPACE, WORKLOAD, self.clock, self.settings.stale_after_seconds)
        return None if signal is None else signal.utilization

    # -- the loop ----------------------------------------------------------------------------------------

    def run(self, progress: Progress | None = None) -> PolicyResult:
        traffic = self.traffic
        end = math.ceil(traffic.duration)
        grid = np.arange(end + 1, dtype=np.float64)
        rps = traffic.rps_at(grid)
        extra = traffic.extra_at(grid)
        timeout = self.config.hpa.timeout_seconds
        change = traffic.change_at()
        pending: dict[int, list[StepSamples]] = {}
        interval_values: list[np.ndarray] = []
        interval_weights: list[np.ndarray] = []
        timeline: list[TimelinePoint] = []
        replica_seconds = 0.0
        timeouts = requests = 0.0
        scale_events = 0
        max_replicas = self.replicas
        first_up: float | None = None
        last_sync = 0
        violation_seconds = 0.0
        report_every = max(1, end // 100)
        for t in range(end + 1):
            self.clock = EPOCH + t
            if t % METRICS_SERVER_PERIOD == METRICS_SERVER_PHASE:
                self.fleet.scrape(t)
            if t % self.poll_period == ADAPTER_POLL_PHASE % self.poll_period:
                self._adapter_poll(t)
            if t % SYNC_PERIOD_SECONDS == 0:
                before = self.replicas
                after = self.hpa.reconcile(self.clock, before, [self._proposal(t)])
                if after != before:
                    scale_events += 1
                    self.fleet.scale_to(after, t)
                    self.replicas = after
                    max_replicas = max(max_replicas, after)
                    if after > before and first_up is None and change is not None and t > change:
                        first_up = t - change
                p95 = None
                if interval_values:
                    p95 = weighted_quantile(np.concatenate(interval_values), np.concatenate(interval_weights),
                                            0.95)
                if p95 is not None and p95 > self.slo:
                    violation_seconds += t - last_sync
                timeline.append(TimelinePoint(t, float(rps[t]), after, int(self.fleet.ready(t).sum()), p95,
                                              self._seen[0], self._seen[1], self._adapter_cpu()))
                interval_values, interval_weights = [], []
                last_sync = t
            if t == end:
                break
            samples = self.fleet.step(float(t), STEP_SECONDS, float(rps[t]), float(extra[t]), timeout,
                                      self.rng, MAX_SAMPLES_PER_STEP)
            timeouts += float(samples.weight[samples.timed_out].sum())
            requests += float(samples.weight.sum())
            if samples.latency.shape[0]:
                offsets = np.floor(samples.done_at / STEP_SECONDS).astype(np.int64)
                for offset in np.unique(offsets).tolist():
                    mask = offsets == offset
                    pending.setdefault(t + int(offset), []).append(StepSamples(
                        samples.latency[mask], samples.weight[mask], samples.done_at[mask],
                        samples.timed_out[mask]))
            done = pending.pop(t, None)
            if done:
                self._record(done, t, interval_values, interval_weights)
            replica_seconds += self.fleet.size * STEP_SECONDS
            if progress is not None and (t % report_every == 0):
                progress(self.policy, t, end)
        if progress is not None:
            progress(self.policy, end, end)
        return PolicyResult(
            policy=self.policy,
            slo_violation_minutes=violation_seconds / 60.0,
            replica_hours=replica_seconds / 3600.0,
            first_scale_up_seconds=first_up,
            max_replicas=max_replicas,
            scale_events=scale_events,
            timeouts=round(timeouts),
            requests=round(requests),
            timeline=tuple(timeline),
        )

    def _record(self, done: Sequence[StepSamples], t: int, values: list[np.ndarray],
                weights: list[np.ndarray]) -> None:
        """Requests that completed in ``[t, t + 1)``: into the adapter's store (as one weighted sketch
        with the true request count) and into the true p95 of the current sync interval."""
        latency = np.concatenate([d.latency for d in done])
        weight = np.concatenate([d.weight for d in done])
        errors = float(sum(float(d.weight[d.timed_out].sum()) for d in done))
        sketch = LatencySketch(self.store.settings.relative_accuracy)
        sketch.add_many(latency, weight)
        self.store.add_sketch(self.key, sketch, errors, (), EPOCH + t + 0.5, requests=float(weight.sum()))
        values.append(latency)
        weights.append(weight)


def run_policy(traffic: Traffic, config: SimulationConfig, policy: str, seed: int,
               slo_seconds: float = DEFAULT_SLO_SECONDS, progress: Progress | None = None) -> PolicyResult:
    """Simulate one policy on ``traffic``; deterministic for a given seed."""
    return _Run(traffic, config, policy, seed, slo_seconds).run(progress)


def simulate(traffic: Traffic, config: SimulationConfig, seed: int, slo_seconds: float = DEFAULT_SLO_SECONDS,
             policies: Sequence[str] = POLICIES, progress: Progress | None = None,
             scenario: str | None = None) -> SimulationResult:
    """Every policy on the same traffic with the same random stream."""
    results = {p: run_policy(traffic, config, p, seed, slo_seconds, progress) for p in policies}
    return SimulationResult(scenario or traffic.name, seed, slo_seconds, traffic, config, results)
