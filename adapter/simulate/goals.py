"""The goals the dual-signal policy is held to, per scenario, evaluated on a :class:`SimulationResult`.

* ``burst``: dual-signal has at least 50 % fewer SLO-violation minutes than CPU-only, and its first
  scale-up decision comes at most 20 s after the step.
* ``dependency-slowdown``: dual-signal uses at least 30 % fewer replica-hours than latency-only, with no
  more SLO-violation minutes than latency-only.
* ``cpu-bound``: dual-signal is no worse than CPU-only on SLO-violation minutes and on replica-hours.

Shared by the benchmark (``python -m tests.benchmarks simulate``) and the report
(``python -m adapter.simulate.report``); a goal not met is a result, reported with the figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from .engine import SimulationResult

#: Scenarios with goals, in the order they are reported.
GOAL_SCENARIOS = ("burst", "dependency-slowdown", "cpu-bound")


@dataclass(frozen=True)
class Goal:
    """One goal: what it asks, dual-signal's figure, the other policy's, and whether it is met."""

    scenario: str
    goal: str
    figure: str
    baseline: str
    met: bool


def _fewer(ours: float, theirs: float) -> float | None:
    """How much smaller ``ours`` is than ``theirs`` (0.25 = 25 % fewer, negative = more)."""
    if theirs <= 0:
        return None
    return 1.0 - ours / theirs


def _pct(x: float | None) -> str:
    if x is None:
        return ""
    return f" ({abs(100 * x):.0f} % {'fewer' if x >= 0 else 'more'})"


def timeouts_avoided(result: SimulationResult) -> float | None:
    """The share of CPU-only's timeouts that dual-signal avoided (``None`` when CPU-only had none)."""
    cpu, dual = result.policies.get("cpu"), result.policies.get("dual")
    if cpu is None or dual is None or cpu.timeouts == 0:
        return None
    return 1.0 - dual.timeouts / cpu.timeouts


def goals(result: SimulationResult) -> list[Goal]:
    """The goals of ``result.scenario`` (none for other scenarios)."""
    p = result.policies
    name = result.scenario
    out: list[Goal] = []
    if name == "burst" and {"cpu", "dual"} <= p.keys():
        cpu, dual = p["cpu"], p["dual"]
        fewer = _fewer(dual.slo_violation_minutes, cpu.slo_violation_minutes)
        met = fewer >= 0.5 if fewer is not None else dual.slo_violation_minutes == 0
        out.append(Goal(name, "dual >= 50 % fewer SLO-violation minutes than CPU-only",
                        f"dual {dual.slo_violation_minutes:.2f} min{_pct(fewer)}",
                        f"CPU-only {cpu.slo_violation_minutes:.2f} min", met))
        first = dual.first_scale_up_seconds
        out.append(Goal(name, "dual's first scale-up <= 20 s after the step",
                        "dual: no scale-up" if first is None else f"dual {first:.0f} s",
                        _first("CPU-only", cpu.first_scale_up_seconds), first is not None and first <= 20))
    elif name == "dependency-slowdown" and {"latency", "dual"} <= p.keys():
        lat, dual = p["latency"], p["dual"]
        fewer = _fewer(dual.replica_hours, lat.replica_hours)
        out.append(Goal(name, "dual >= 30 % fewer replica-hours than latency-only",
                        f"dual {dual.replica_hours:.1f}{_pct(fewer)}",
                        f"latency-only {lat.replica_hours:.1f}",
                        fewer is not None and fewer >= 0.3))
        out.append(Goal(name, "dual no more SLO-violation minutes than latency-only",
                        f"dual {dual.slo_violation_minutes:.2f} min",
                        f"latency-only {lat.slo_violation_minutes:.2f} min",
                        dual.slo_violation_minutes <= lat.slo_violation_minutes))
    elif name == "cpu-bound" and {"cpu", "dual"} <= p.keys():
        cpu, dual = p["cpu"], p["dual"]
        fewer = _fewer(dual.slo_violation_minutes, cpu.slo_violation_minutes)
        out.append(Goal(name, "dual no more SLO-violation minutes than CPU-only",
                        f"dual {dual.slo_violation_minutes:.2f} min{_pct(fewer)}",
                        f"CPU-only {cpu.slo_violation_minutes:.2f} min",
                        dual.slo_violation_minutes <= cpu.slo_violation_minutes))
        fewer = _fewer(dual.replica_hours, cpu.replica_hours)
        out.append(Goal(name, "dual no more replica-hours than CPU-only",
                        f"dual {dual.replica_hours:.1f}{_pct(fewer)}", f"CPU-only {cpu.replica_hours:.1f}",
                        dual.replica_hours <= cpu.replica_hours))
    return out


def _first(who: str, seconds: float | None) -> str:
    return f"{who}: no scale-up" if seconds is None else f"{who} {seconds:.0f} s"
