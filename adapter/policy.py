"""The dual-signal policy: one number an HPA can target with ``value: "1"`` (DESIGN section 5).

Why one metric instead of two HPA metrics: an HPA with a latency metric and a CPU metric already scales
on the larger of the two, but it cannot *hold*: when latency is high only because a dependency (a
database, a downstream API) is slow, CPU stays low, and adding pods helps nobody and often hurts the
dependency. This module sees both signals at once and says so, with a ``reason`` on every decision.

Pure: no clock, no I/O. ``now`` is an argument; signals carry the time they were observed, so "stale"
is decided here, table-tested, and the same inputs always give the same decision.

Never 0: a computed ratio below :data:`MIN_RATIO` is served as :data:`MIN_RATIO`. An idle workload then
still scales down to ``minReplicas``, but a 0 can never be mistaken for (or produced by) missing data;
missing data is ``None`` (the API answers 404 and the HPA holds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

#: The smallest ratio ever served (Kubernetes quantity ``1m``).
MIN_RATIO = 0.001

Reason = Literal["latency", "cpu", "dependency_latency", "cpu_only_low_traffic", "latency_only_cpu_missing"]
#: Every reason a decision can carry, in the order of DESIGN section 5's table.
REASONS: tuple[Reason, ...] = (
    "latency", "cpu", "dependency_latency", "cpu_only_low_traffic", "latency_only_cpu_missing",
)


@dataclass(frozen=True)
class PolicySettings:
    """Targets and thresholds of one workload (``defaults`` plus the matching ``workloads`` overrides).

    ``cpu_request_cores`` is the CPU request of one pod, used only for pods whose OTLP CPU data carries
    no ``k8s.container.cpu.request``; ``None`` means such pods have no known request.
    """

    latency_target_seconds: float = 0.25
    cpu_target_utilization: float = 0.6
    min_samples: int = 50
    cpu_floor: float = 0.3
    stale_after_seconds: float = 60.0
    quantile: float = 0.95
    cpu_request_cores: float | None = None


@dataclass(frozen=True)
class LatencySignal:
    """The window's latency quantile, how many requests it is made of, and when it was observed."""

    seconds: float
    samples: int
    observed_at: float
    trace_id: str | None = None


@dataclass(frozen=True)
class CpuSignal:
    """Σ CPU usage / Σ CPU requests of the workload's ready pods, and when it was observed."""

    utilization: float
    observed_at: float
    pods: int = 0


@dataclass(frozen=True)
class Decision:
    """What the policy serves for one workload, with the pieces it was made of."""

    ratio: float
    reason: Reason
    latency_ratio: float | None
    cpu_ratio: float | None
    trace_id: str | None = None


def _fresh(observed_at: float, now: float, settings: PolicySettings) -> bool:
    return now - observed_at <= settings.stale_after_seconds


def _finite(value: float) -> bool:
    return math.isfinite(value) and value >= 0


def _served(ratio: float) -> float:
    return max(ratio, MIN_RATIO)


def latency_ratio(latency: LatencySignal | None, settings: PolicySettings, now: float) -> float | None:
    """``L / L*`` when the latency signal is usable (fresh, finite, enough samples), else ``None``."""
    if latency is None or not _finite(latency.seconds) or not _fresh(latency.observed_at, now, settings):
        return None
    if latency.samples < settings.min_samples:
        return None
    return latency.seconds / settings.latency_target_seconds


def cpu_ratio(cpu: CpuSignal | None, settings: PolicySettings, now: float) -> float | None:
    """``U / U*`` when the CPU signal is usable (fresh, finite), else ``None``."""
    if cpu is None or not _finite(cpu.utilization) or not _fresh(cpu.observed_at, now, settings):
        return None
    return cpu.utilization / settings.cpu_target_utilization


def decide(latency: LatencySignal | None, cpu: CpuSignal | None, settings: PolicySettings,
           now: float) -> Decision | None:
    """The ``dual_signal_ratio`` decision, or ``None`` when neither signal is usable (serve 404).

    Fail static is the callers' half of the contract: they keep handing in the last good signal with
    its ``observed_at`` until it is older than ``stale_after_seconds``; here it simply stops counting.
    """
    r_lat = latency_ratio(latency, settings, now)
    r_cpu = cpu_ratio(cpu, settings, now)
    trace_id = latency.trace_id if latency is not None and r_lat is not None else None
    if r_lat is not None and r_cpu is not None:
        assert cpu is not None
        if r_lat > 1.0 and cpu.utilization < settings.cpu_floor:
            # Slow but idle: the time is spent waiting on something else. Hold (>= 1 never scales
            # down), and still follow CPU should it rise above its target.
            return Decision(_served(max(r_cpu, 1.0)), "dependency_latency", r_lat, r_cpu, trace_id)
        if r_lat >= r_cpu:
            return Decision(_served(r_lat), "latency", r_lat, r_cpu, trace_id)
        return Decision(_served(r_cpu), "cpu", r_lat, r_cpu, trace_id)
    if r_cpu is not None:
        return Decision(_served(r_cpu), "cpu_only_low_traffic", None, r_cpu, None)
    if r_lat is not None:
        return Decision(_served(r_lat), "latency_only_cpu_missing", r_lat, None, trace_id)
    return None
