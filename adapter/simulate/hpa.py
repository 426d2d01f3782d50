"""A model of the Kubernetes HPA controller (``autoscaling/v2``, Kubernetes 1.30 and later). Pure: time is an
argument, nothing sleeps.

What it follows, from ``pkg/controller/podautoscaler`` (``horizontal.go``, ``replica_calculator.go``) and
``pkg/apis/autoscaling/v2/defaults.go``:

* **One proposal per metric** (:func:`value_replicas`, :func:`average_value_replicas`,
  :func:`utilization_replicas`), each ``None`` when the metric cannot be read. Values are compared as the
  controller reads quantities: in integer thousandths (``MilliValue``), CPU utilisation in integer
  percent. Within the tolerance (``|1 - value/target| <= 0.1``) a proposal is the current replica count.
* **The largest proposal wins.** When every metric is missing, nothing changes; when some are missing
  and the others would scale down, nothing changes either (a missing metric never scales down).
* **Stabilisation** (:meth:`HorizontalPodAutoscaler.reconcile`): every unstabilised recommendation is
  remembered with its time; scale-down takes the highest of those within ``scaleDown``'s window,
  scale-up the lowest within ``scaleUp``'s window (the current one included).
* **Rate limits**: every ``Pods``/``Percent`` policy proposes a limit from the replica count at the
  start of its ``periodSeconds`` (the count now minus the changes made within the period);
  ``selectPolicy`` ``Max`` takes the policy allowing the largest change, ``Min`` the smallest,
  ``Disabled`` allows none. Then ``minReplicas``/``maxReplicas`` clamp.
* **Defaults** when ``behavior`` is absent: scale up by max(100 %, 4 pods) per 15 s without
  stabilisation; scale down by 100 % per 15 s after a 300 s stabilisation window (the controller's
  ``--horizontal-pod-autoscaler-downscale-stabilization`` default). Without ``behavior`` the controller
  takes an older code path (max over 300 s of all recommendations, then at most max(2 x current, 4));
  with one sync every 15 s the two agree except that the old path may keep a scale-up at an earlier,
  higher recommendation; this model always takes the ``behavior`` path.

The float arithmetic is the controller's: a ``Percent`` scale-up limit is ``ceil(start * (1 + v/100))``
in binary floating point, a scale-down limit truncates ``start * (1 - v/100)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

#: The controller's ``--horizontal-pod-autoscaler-tolerance`` default.
TOLERANCE = 0.1
#: The controller's ``--horizontal-pod-autoscaler-sync-period`` default, seconds.
SYNC_PERIOD_SECONDS = 15
#: The controller's ``--horizontal-pod-autoscaler-downscale-stabilization`` default, seconds: the
#: scale-down window when ``behavior.scaleDown.stabilizationWindowSeconds`` is not set.
DOWNSCALE_STABILIZATION_SECONDS = 300
#: The controller's ``--horizontal-pod-autoscaler-cpu-initialization-period`` default, seconds.
CPU_INITIALIZATION_PERIOD_SECONDS = 300

SelectPolicy = Literal["Max", "Min", "Disabled"]
PolicyType = Literal["Pods", "Percent"]
SELECT_POLICIES: tuple[SelectPolicy, ...] = ("Max", "Min", "Disabled")
POLICY_TYPES: tuple[PolicyType, ...] = ("Pods", "Percent")


@dataclass(frozen=True)
class ScalingPolicy:
    """One ``behavior.scaleUp/scaleDown.policies`` entry."""

    type: PolicyType
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    """``behavior.scaleUp`` or ``behavior.scaleDown`` with every field filled.

    ``stabilization_window_seconds`` ``None`` means the controller's flag (300 s; only scale-down leaves
    it unset by default).
    """

    policies: tuple[ScalingPolicy, ...]
    select_policy: SelectPolicy = "Max"
    stabilization_window_seconds: int | None = None


#: ``defaults.go``: scale up by 4 pods or 100 % per 15 s, whichever is more, no stabilisation.
DEFAULT_SCALE_UP = ScalingRules(
    policies=(ScalingPolicy("Pods", 4, 15), ScalingPolicy("Percent", 100, 15)),
    select_policy="Max", stabilization_window_seconds=0)
#: ``defaults.go``: scale down by 100 % per 15 s; the window comes from the controller's flag (300 s).
DEFAULT_SCALE_DOWN = ScalingRules(policies=(ScalingPolicy("Percent", 100, 15),), select_policy="Max",
                                  stabilization_window_seconds=None)


@dataclass(frozen=True)
class Behavior:
    """``spec.behavior``; the defaults are the controller's when the HPA has none."""

    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN


# -- per-metric proposals ---------------------------------------------------------------------------------


def milli(value: float) -> int:
    """``Quantity.MilliValue()`` of a non-negative value: thousandths, rounded up."""
    return math.ceil(round(value * 1000.0, 6))


def within_tolerance(ratio: float, tolerance: float = TOLERANCE) -> bool:
    """The controller's test, in its float arithmetic: ``math.Abs(1.0-usageRatio) <= tolerance``."""
    return abs(1.0 - ratio) <= tolerance


def value_replicas(current: int, ready_pods: int, value_milli: int, target_milli: int,
                   tolerance: float = TOLERANCE) -> int:
    """An External (or Object) metric with a ``Value`` target: ``ceil(ready_pods * value / target)``.

    ``current`` is the scale's ``spec.replicas``; within the tolerance the proposal is ``current``.
    From 0 replicas the proposal is ``ceil(value / target)``.
    """
    ratio = float(value_milli) / float(target_milli)
    if current == 0:
        return math.ceil(ratio)
    if within_tolerance(ratio, tolerance):
        return current
    return math.ceil(ratio * float(ready_pods))


def average_value_replicas(status_replicas: int, total_milli: int, target_per_pod_milli: int,
                           tolerance: float = TOLERANCE) -> int:
    """An External metric with an ``AverageValue`` target: ``ceil(total / target)``.

    Within the tolerance (``total / (target * status_replicas)``) the proposal is ``status_replicas``.
    """
    replicas = status_replicas
    ratio = float(total_milli) / (float(target_per_pod_milli) * float(replicas)) if replicas else math.inf
    if not within_tolerance(ratio, tolerance):
        replicas = math.ceil(float(total_milli) / float(target_per_pod_milli))
    return replicas


@dataclass(frozen=True)
class PodCpu:
    """One pod as the controller groups it for a ``Resource`` CPU metric.

    ``usage_milli`` ``None``: metrics-server has no sample for it (a *missing* pod). ``counted``
    ``False``: an *unready* pod (not ready, or still in its CPU initialisation period with a sample
    whose window began before it became ready).
    """

    request_milli: int
    usage_milli: int | None
    counted: bool = True


def _utilization(usage: Sequence[int], requests: Sequence[int], target_percent: int) -> float:
    """``GetResourceUtilizationRatio``: integer percent of the summed request, over the target."""
    total_request = sum(requests)
    percent = (sum(usage) * 100) // total_request
    return float(percent) / float(target_percent)


def utilization_replicas(current: int, pods: Sequence[PodCpu], target_percent: int,
                         tolerance: float = TOLERANCE) -> int | None:
    """A ``Resource`` CPU metric with a ``Utilization`` target (``GetResourceReplicas``).

    Pods with a sample that count give ``usageRatio``. Without unready or missing pods the proposal is
    ``ceil(usageRatio * ready pods)``. Otherwise, on a scale-up unready and missing pods count as using
    0 % of their request, on a scale-down missing pods count as using max(100 %, target) of it, the
    ratio is computed again, and a proposal that would change direction (or is within the tolerance)
    is ``current``. ``None`` when no counted pod has a sample (the metric is missing).
    """
    ready = [p for p in pods if p.usage_milli is not None and p.counted]
    unready = [p for p in pods if p.usage_milli is not None and not p.counted]
    missing = [p for p in pods if p.usage_milli is None]
    if not ready:
        return None
    usage = [p.usage_milli for p in ready if p.usage_milli is not None]
    requests = [p.request_milli for p in ready]
    if sum(requests) <= 0:
        return None
    ratio = _utilization(usage, requests, target_percent)
    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if within_tolerance(ratio, tolerance):
            return current
        return math.ceil(ratio * float(len(ready)))
    if missing:
        if ratio < 1.0:
            fallback = max(100, target_percent)
            usage += [p.request_milli * fallback // 100 for p in missing]
            requests += [p.request_milli for p in missing]
        elif ratio > 1.0:
            usage += [0] * len(missing)
            requests += [p.request_milli for p in missing]
    if scale_up_with_unready:
        usage += [0] * len(unready)
        requests += [p.request_milli for p in unready]
    new_ratio = _utilization(usage, requests, target_percent)
    if (within_tolerance(new_ratio, tolerance) or (ratio < 1.0 < new_ratio)
            or (ratio > 1.0 > new_ratio)):
        return current
    replicas = math.ceil(new_ratio * float(len(usage)))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return current
    return replicas


# -- the controller ---------------------------------------------------------------------------------------


@dataclass
class _Event:
    at: float
    change: int
    outdated: bool = False


@dataclass
class HorizontalPodAutoscaler:
    """One HPA's controller state: its recommendations and scale events, and :meth:`reconcile`.

    ``reconcile`` is one sync: it takes the scale's ``spec.replicas`` and one proposal per metric and
    returns the new ``spec.replicas`` (equal to the current one when nothing changes). ``reasons``
    keeps the last sync's limiting condition (``ScaleUpLimit``, ``ScaleDownStabilized``, ...) for tests
    and debugging.
    """

    min_replicas: int
    max_replicas: int
    behavior: Behavior = field(default_factory=Behavior)
    downscale_stabilization_seconds: int = DOWNSCALE_STABILIZATION_SECONDS
    _recommendations: list[tuple[float, int]] | None = field(default=None, repr=False)
    _up_events: list[_Event] = field(default_factory=list, repr=False)
    _down_events: list[_Event] = field(default_factory=list, repr=False)
    reason: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"need 1 <= minReplicas ({self.min_replicas}) <= maxReplicas "
                             f"({self.max_replicas})")

    def reconcile(self, now: float, current: int, proposals: Sequence[int | None]) -> int:
        """One sync at ``now``: the new ``spec.replicas`` from the current one and per-metric proposals."""
        if self._recommendations is None:  # recordInitialRecommendation
            self._recommendations = [(now, current)]
        if current == 0:
            self.reason = "ScalingDisabled"
            return 0
        if current > self.max_replicas:
            desired = self.max_replicas
            self.reason = "TooManyReplicas"
        elif current < self.min_replicas:
            desired = self.min_replicas
            self.reason = "TooFewReplicas"
        else:
            valid = [p for p in proposals if p is not None]
            invalid = len(proposals) - len(valid)
            metric_desired = max(valid) if valid else -1
            if invalid >= len(proposals) or (invalid > 0 and metric_desired < current):
                self.reason = "FailedGetMetrics"
                return current
            desired = self._normalize(now, current, max(metric_desired, 0))
        if desired != current:
            self._store_event(now, current, desired)
        return desired

    # -- normalisation (normalizeDesiredReplicasWithBehaviors) ------------------------------------------

    def _windows(self) -> tuple[int, int]:
        up = self.behavior.scale_up.stabilization_window_seconds or 0
        down = self.behavior.scale_down.stabilization_window_seconds
        return up, self.downscale_stabilization_seconds if down is None else down

    def _stabilize(self, now: float, current: int, desired: int) -> int:
        assert self._recommendations is not None
        up_window, down_window = self._windows()
        up_cutoff, down_cutoff = now - up_window, now - down_window
        lowest = highest = desired
        for at, recommendation in self._recommendations:
            if at > up_cutoff:
                lowest = min(lowest, recommendation)
            if at > down_cutoff:
                highest = max(highest, recommendation)
        stabilized = min(max(current, lowest), highest)
        # A recommendation older than both windows never counts again (the controller reuses its slot).
        horizon = min(up_cutoff, down_cutoff)
        self._recommendations = [r for r in self._recommendations if r[0] > horizon]
        self._recommendations.append((now, desired))
        return stabilized

    def _normalize(self, now: float, current: int, desired: int) -> int:
        stabilized = self._stabilize(now, current, desired)
        self.reason = "DesiredWithinRange"
        if stabilized != desired:
            self.reason = "ScaleUpStabilized" if desired >= current else "ScaleDownStabilized"
        if stabilized > current:
            limit = max(self._scale_up_limit(now, current), current)
            allowed = min(self.max_replicas, limit)
            if stabilized > allowed:
                self.reason = "ScaleUpLimit" if allowed == limit else "TooManyReplicas"
                return allowed
        elif stabilized < current:
            limit = min(self._scale_down_limit(now, current), current)
            allowed = max(self.min_replicas, limit)
            if stabilized < allowed:
                self.reason = "ScaleDownLimit" if allowed == limit else "TooFewReplicas"
                return allowed
        return stabilized

    @staticmethod
    def _changed_within(events: Sequence[_Event], now: float, period: int) -> int:
        cutoff = now - period
        return sum(e.change for e in events if e.at > cutoff)

    def _period_start(self, now: float, current: int, period: int) -> int:
        added = self._changed_within(self._up_events, now, period)
        removed = self._changed_within(self._down_events, now, period)
        return current - added + removed

    def _scale_up_limit(self, now: float, current: int) -> int:
        rules = self.behavior.scale_up
        if rules.select_policy == "Disabled" or not rules.policies:
            return current
        proposals = []
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_seconds)
            if policy.type == "Pods":
                proposals.append(start + policy.value)
            else:
                proposals.append(math.ceil(float(start) * (1.0 + float(policy.value) / 100.0)))
        return min(proposals) if rules.select_policy == "Min" else max(proposals)

    def _scale_down_limit(self, now: float, current: int) -> int:
        rules = self.behavior.scale_down
        if rules.select_policy == "Disabled" or not rules.policies:
            return current
        proposals = []
        for policy in rules.policies:
            start = self._period_start(now, current, policy.period_seconds)
            if policy.type == "Pods":
                proposals.append(start - policy.value)
            else:
                proposals.append(math.trunc(float(start) * (1.0 - float(policy.value) / 100.0)))
        return max(proposals) if rules.select_policy == "Min" else min(proposals)

    def _store_event(self, now: float, before: int, after: int) -> None:
        """``storeScaleEvent``: events older than the direction's longest policy period are marked
        outdated and the last of them is overwritten by the new one; until then they still count."""
        rules = self.behavior.scale_up if after > before else self.behavior.scale_down
        longest = max((p.period_seconds for p in rules.policies), default=0)
        events = self._up_events if after > before else self._down_events
        outdated = -1
        for i, event in enumerate(events):
            if event.at < now - longest:
                event.outdated = True
            if event.outdated:
                outdated = i
        new = _Event(now, abs(after - before))
        if outdated >= 0:
            events[outdated] = new
        else:
            events.append(new)
