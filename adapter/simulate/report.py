"""The README's simulation section: every scenario, its figures, the goals and one plot.

``python -m adapter.simulate.report --out docs/simulation.md --plot docs/simulation.png`` (``make
simulation-report``) runs every built-in scenario with the default settings and seed 1 and writes a
Markdown section (tables, the goals met or not with their figures, what dual-signal's ``reason`` was)
and a PNG with one column per scenario. The output depends only on the code and the seed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from .engine import DEFAULT_SLO_SECONDS, POLICY_TITLES, SimulationResult, simulate
from .goals import GOAL_SCENARIOS, goals, timeouts_avoided
from .output import comparison_rows, plot
from .settings import SimulationConfig
from .traffic import SCENARIOS

Log = Callable[[str], None]


def run_all(seed: int = 1, slo: float = DEFAULT_SLO_SECONDS, config: SimulationConfig | None = None,
            names: Sequence[str] = tuple(SCENARIOS), log: Log | None = None) -> list[SimulationResult]:
    """Every scenario in ``names`` with every policy."""
    config = config or SimulationConfig()
    out = []
    for name in names:
        if log is not None:
            log(f"simulating {name}")
        out.append(simulate(SCENARIOS[name](seed), config, seed, slo, scenario=name))
    return out


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def reasons(result: SimulationResult) -> str:
    """How often dual-signal's served value carried each reason, over the syncs of the run."""
    dual = result.policies.get("dual")
    if dual is None:
        return ""
    counts = Counter(p.reason or "no value (404)" for p in dual.timeline if p.t > 0)
    total = sum(counts.values())
    return ", ".join(f"`{r}` {100 * n / total:.0f} %" for r, n in counts.most_common())


def _scale_ups(result: SimulationResult, policy: str) -> list[str]:
    """``t=615 s: 17 -> 30 (reason latency, adapter CPU 0.61)`` for each scale-up after the change."""
    res = result.policies[policy]
    change = result.traffic.change_at() or 0.0
    out = []
    previous = None
    for p in res.timeline:
        if previous is not None and p.replicas > previous and p.t >= change:
            cpu = "" if p.adapter_cpu is None else f", CPU {p.adapter_cpu:.2f}"
            why = f" ({p.reason}{cpu})" if p.reason else ""
            out.append(f"{p.t // 60}:{p.t % 60:02d} {previous}->{p.replicas}{why}")
        previous = p.replicas
    return out


def _clock(t: int) -> str:
    return f"{t // 60}:{t % 60:02d}"


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def why_not_met(result: SimulationResult) -> str:
    """Facts from the run behind dual-signal's replica-hours: how far its ratio took it, when it held,
    and what ratio it served in the last 10 minutes (which sets its scale-down pace)."""
    dual = result.policies.get("dual")
    if dual is None or len(dual.timeline) < 2:
        return ""
    config = result.config
    settings = config.adapter.policy.for_workload("sim", "app")
    hpa = config.hpa
    peak = max(dual.timeline, key=lambda p: p.metric or 0.0)
    facts = [f"dual-signal served ratios up to {peak.metric or 0:.2f} (`{peak.reason}`, at "
             f"{_clock(peak.t)}); the HPA asks for ceil(ready pods x ratio), at most doubling "
             f"per 15 s, so it reached {dual.max_replicas} replicas (maxReplicas {hpa.max_replicas})"]
    held = next((p for p in dual.timeline if p.reason == "dependency_latency"), None)
    if held is not None and float(result.traffic.extra_latency.max()) > 0:
        ups = [(a, b) for a, b in zip(dual.timeline, dual.timeline[1:], strict=False)
               if b.replicas > a.replicas and b.t <= held.t]
        if ups:
            before, last = ups[-1]
            facts.append(
                f"its last scale-up ({_clock(last.t)}, {before.replicas} -> {last.replicas}) still served "
                f"`{last.reason}` because the CPU it saw ({last.adapter_cpu or 0:.2f}) was not yet below "
                f"`cpu_floor` {settings.cpu_floor:g}; it held (`dependency_latency`) from {_clock(held.t)}. "
                f"The HPA keeps CPU near its target {settings.cpu_target_utilization:g}, "
                f"{settings.cpu_target_utilization / settings.cpu_floor:.1f}x the floor, so the pods must "
                "grow that much before a slow dependency is recognised, and the CPU reading trails new pods "
                "by a metrics-server scrape and an adapter poll while each sync multiplies the newly ready "
                "pods by the latency ratio")
    tail = [p for p in dual.timeline if p.t >= dual.timeline[-1].t - 600 and p.metric is not None]
    if tail:
        ratio = _median([p.metric or 0.0 for p in tail])
        why = Counter(p.reason for p in tail).most_common(1)[0][0]
        facts.append(f"in the last 10 minutes it served a median {ratio:.2f} (`{why}`): below 1, but a p95 "
                     "barely falls as pods are added, so the count shrinks by about that factor per "
                     "scale-down stabilisation window rather than down to what CPU asks for")
    return "; ".join(facts) + "."


def markdown(results: Sequence[SimulationResult], plot_ref: str | None, command: str) -> str:
    first = results[0]
    config = first.config
    settings = config.adapter.policy.defaults
    hpa = config.hpa
    lines = [
        f"<!-- generated by `{command}`; do not edit by hand -->",
        "",
        "`latency-adapter simulate` replays traffic through a model of the Kubernetes HPA controller "
        "(autoscaling/v2: 15 s syncs, 10 % tolerance, stabilisation windows, scaling policies) three "
        "times: CPU only (`Resource` CPU, `averageUtilization` "
        f"{settings.cpu_target_utilization * 100:.0f}), latency only (`latency_p95_seconds`, `Value` "
        f"{settings.latency_target_seconds:g}) and dual-signal (`dual_signal_ratio`, `Value` 1). The "
        "latency samples go through the adapter's own window store, provider and policy, so the HPA sees "
        "the served p95 with its real lag; CPU comes from a metrics-server model (a sample every 15 s, "
        "unready pods left out as the controller does). Pods queue requests (M/M/c, plus a backlog when "
        "overloaded), take traffic 30 s after the HPA creates them, and a request slower than "
        f"{hpa.timeout_seconds:g} s is a timeout.",
        "",
        f"Seed {first.seed}; SLO p95 <= {first.slo_seconds:g} s, judged on the true p95 of each 15 s; "
        f"policy defaults (`latency_target_seconds` {settings.latency_target_seconds:g}, "
        f"`cpu_target_utilization` {settings.cpu_target_utilization:g}, `cpu_floor` {settings.cpu_floor:g}); "
        f"{hpa.min_replicas} to {hpa.max_replicas} replicas; every HPA with Kubernetes' default `behavior` "
        "(up: max(100 %, 4 pods) per 15 s; down: 100 % per 15 s after a 300 s window). Replica-hours "
        "count starting pods too. Regenerate: `make simulation-report`.",
        "",
    ]
    headers = ["", *[POLICY_TITLES[p] for p in first.policies]]
    for result in results:
        lines += [f"**{result.scenario}**: {result.traffic.description}.", ""]
        lines += _table(headers, comparison_rows(result))
        notes = []
        avoided = timeouts_avoided(result)
        if avoided is not None:
            notes.append(f"dual-signal avoided {100 * avoided:.0f} % of CPU-only's timeouts")
        why = reasons(result)
        if why:
            notes.append(f"dual-signal's `reason` over the syncs: {why}")
        ups = _scale_ups(result, "dual")
        if ups and len(ups) <= 8:
            notes.append("its scale-ups after the load changed (m:ss): " + "; ".join(ups))
        if notes:
            lines += ["", "; ".join(notes) + "."]
        lines.append("")
    rows = []
    for result in results:
        if result.scenario in GOAL_SCENARIOS:
            for g in goals(result):
                rows.append([g.scenario, g.goal, g.figure, g.baseline, "met" if g.met else "**not met**"])
    if rows:
        lines += ["**Goals**", ""]
        lines += _table(["scenario", "goal", "dual-signal", "baseline", "met?"], rows)
        lines.append("")
        for result in results:
            if any(not g.met for g in goals(result)):
                lines += [f"Why not met in **{result.scenario}**: {why_not_met(result)}", ""]
    if plot_ref is not None:
        lines += [f"![Load, true p95 against the SLO, and replicas per policy, per scenario]({plot_ref})", ""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adapter.simulate.report",
                                     description="Write the README's simulation section (and its plot).")
    parser.add_argument("--out", type=Path, required=True, help="Markdown file to write")
    parser.add_argument("--plot", type=Path, help="PNG to write (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--readme", type=Path,
                        help="also replace the block between the simulation markers in this file")
    args = parser.parse_args(argv)
    results = run_all(args.seed, log=lambda m: print(m, file=sys.stderr, flush=True))
    plot_ref = None
    if args.plot is not None:
        plot(results, args.plot)
        plot_ref = Path(os.path.relpath(args.plot.resolve(), args.out.resolve().parent)).as_posix()
    command = "python -m adapter.simulate.report --out " + args.out.as_posix()
    if args.plot is not None:
        command += " --plot " + args.plot.as_posix()
    if args.seed != 1:
        command += f" --seed {args.seed}"
    args.out.write_text(markdown(results, plot_ref, command), encoding="utf-8")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""), file=sys.stderr)
    if args.readme is not None:
        readme_plot = None
        if args.plot is not None:
            readme_plot = Path(os.path.relpath(args.plot.resolve(), args.readme.resolve().parent)).as_posix()
        text = args.readme.read_text(encoding="utf-8")
        args.readme.write_text(embed(text, markdown(results, readme_plot, command)), encoding="utf-8")
        print(f"updated {args.readme}", file=sys.stderr)
    return 0


BEGIN, END = "<!-- simulation:begin -->", "<!-- simulation:end -->"


def embed(document: str, section: str) -> str:
    """``document`` with the text between :data:`BEGIN` and :data:`END` replaced by ``section``."""
    start, end = document.find(BEGIN), document.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"the markers {BEGIN} and {END} are missing")
    return document[:start + len(BEGIN)] + "\n" + section.rstrip("\n") + "\n" + document[end:]


if __name__ == "__main__":
    sys.exit(main())
