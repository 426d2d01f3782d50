"""What the HPA would have done with CPU only, latency only and dual-signal, on every scenario.

Runs ``latency-adapter simulate``'s engine (seed 1, default settings, Kubernetes' default HPA
``behavior``) on each built-in scenario (``burst``, ``diurnal``, ``dependency-slowdown``, ``cpu-bound``)
and prints, per scenario, the figures of the three policies side by side (the two other policies are the
baselines, simulated in the same run on the same random stream), the share of CPU-only's timeouts that
dual-signal avoided, and the goals (:mod:`adapter.simulate.goals`) met or not:

* ``burst``: dual-signal >= 50 % fewer SLO-violation minutes than CPU-only; its first scale-up <= 20 s
  after the step.
* ``dependency-slowdown``: dual-signal >= 30 % fewer replica-hours than latency-only, and no more
  SLO-violation minutes.
* ``cpu-bound``: dual-signal no worse than CPU-only on both.

The scenarios are the real ones (not shortened); the whole run takes about a minute, most of it the
simulated day of ``diurnal``.
"""

from __future__ import annotations

from adapter.simulate.engine import POLICY_TITLES
from adapter.simulate.goals import goals, timeouts_avoided
from adapter.simulate.output import comparison_rows
from adapter.simulate.report import run_all

from . import Row, print_table, yes_no


def run() -> list[Row]:
    results = run_all(seed=1)
    summary: list[Row] = []
    goal_rows = []
    for result in results:
        headers = ["", *[POLICY_TITLES[p] for p in result.policies]]
        print_table(f"simulate {result.scenario}: {result.traffic.description} (seed {result.seed}, "
                    f"SLO p95 <= {result.slo_seconds:g} s)", headers, comparison_rows(result))
        avoided = timeouts_avoided(result)
        if avoided is not None:
            print(f"  dual-signal avoided {100 * avoided:.0f} % of CPU-only's timeouts "
                  f"({result.policies['dual'].timeouts:,} vs {result.policies['cpu'].timeouts:,})")
            summary.append(Row(f"simulate {result.scenario}: timeouts avoided",
                               f"dual {result.policies['dual'].timeouts:,}",
                               f"CPU-only {result.policies['cpu'].timeouts:,}",
                               f"{100 * avoided:.0f} % of CPU-only's avoided", None))
        for g in goals(result):
            goal_rows.append([g.scenario, g.goal, g.figure, g.baseline, yes_no(g.met)])
            summary.append(Row(f"simulate {g.scenario}", g.figure, g.baseline, g.goal, g.met))
    print_table("simulate: goals", ["scenario", "goal", "dual-signal", "baseline (same run)", "met?"],
                goal_rows)
    return summary


if __name__ == "__main__":
    run()
