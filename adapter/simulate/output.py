"""What a simulation prints: the ``--json`` document, the ``rich`` tables and the ``--plot`` PNG.

The JSON document (names are a contract)::

    {"scenario", "seed", "slo_seconds",
     "policies": {"cpu" | "latency" | "dual": {
         "slo_violation_minutes", "replica_hours", "first_scale_up_seconds" (null if none),
         "max_replicas", "scale_events", "timeouts",
         "timeline": [{"t", "rps", "replicas", "ready", "p95_seconds"}, ...]}}}

one ``timeline`` entry per HPA sync (every 15 s from ``t = 0``): ``replicas`` is what the HPA decided at
that sync, ``ready`` the pods taking traffic then, ``p95_seconds`` the true p95 of the requests completed
since the previous sync (``null`` at ``t = 0``). Numbers are rounded (rates to 0.001, p95 to 1 µs,
minutes to 0.01, replica-hours to 0.0001) so the same seed gives byte-identical output.

matplotlib is optional (``pip install 'latency-adapter[plot]'``) and imported only by :func:`plot`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .engine import POLICY_TITLES, PolicyResult, SimulationResult, TimelinePoint
from .goals import timeouts_avoided

COLORS = {"cpu": "#d62728", "latency": "#1f77b4", "dual": "#2ca02c"}


class PlotUnavailable(RuntimeError):
    """matplotlib is not installed."""


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def policy_document(result: PolicyResult) -> dict[str, Any]:
    first = result.first_scale_up_seconds
    return {
        "slo_violation_minutes": round(result.slo_violation_minutes, 2),
        "replica_hours": round(result.replica_hours, 4),
        "first_scale_up_seconds": None if first is None else _number(round(first, 3)),
        "max_replicas": result.max_replicas,
        "scale_events": result.scale_events,
        "timeouts": result.timeouts,
        "timeline": [
            {"t": p.t, "rps": _number(round(p.rps, 3)), "replicas": p.replicas, "ready": p.ready,
             "p95_seconds": None if p.p95_seconds is None else round(p.p95_seconds, 6)}
            for p in result.timeline
        ],
    }


def document(result: SimulationResult) -> dict[str, Any]:
    return {
        "scenario": result.scenario,
        "seed": result.seed,
        "slo_seconds": result.slo_seconds,
        "policies": {name: policy_document(r) for name, r in result.policies.items()},
    }


def dumps(result: SimulationResult) -> str:
    return json.dumps(document(result), separators=(",", ":"))


# -- tables -------------------------------------------------------------------------------------------------


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:.0f}h"
    if seconds >= 3600:
        return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}"
    return f"{int(seconds // 60)}:{int(seconds % 60):02d}"


def _span(values: Sequence[int]) -> str:
    low, high = min(values), max(values)
    return str(low) if low == high else f"{low}-{high}"


def _rate_span(values: Sequence[float]) -> str:
    low, high = min(values), max(values)
    return f"{low:,.0f}" if round(low) == round(high) else f"{low:,.0f}-{high:,.0f}"


def timeline_rows(points: Sequence[TimelinePoint], slo: float, rows: int = 16) -> list[list[str]]:
    """The timeline in at most ``rows`` periods: load, replicas, ready pods, worst p95, SLO."""
    if not points:
        return []
    per = max(1, -(-len(points) // rows))
    out = []
    for start in range(0, len(points), per):
        chunk = points[start : start + per]
        p95s = [p.p95_seconds for p in chunk if p.p95_seconds is not None]
        worst = max(p95s) if p95s else None
        out.append([
            f"{_duration(chunk[0].t)}-{_duration(chunk[-1].t)}",
            _rate_span([p.rps for p in chunk]),
            _span([p.replicas for p in chunk]),
            _span([p.ready for p in chunk]),
            "-" if worst is None else f"{worst:.3f}",
            "-" if worst is None else ("[red]over[/red]" if worst > slo else "ok"),
        ])
    return out


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def comparison_rows(result: SimulationResult) -> list[list[str]]:
    names = list(result.policies)
    p = result.policies
    rows = [
        ["SLO-violation minutes"] + [f"{p[n].slo_violation_minutes:.2f}" for n in names],
        ["replica-hours"] + [f"{p[n].replica_hours:.2f}" for n in names],
        ["first scale-up, s after the load changed"] + [_seconds(p[n].first_scale_up_seconds) for n in names],
        ["max replicas"] + [str(p[n].max_replicas) for n in names],
        ["scale events"] + [str(p[n].scale_events) for n in names],
        ["timeouts"] + [f"{p[n].timeouts:,}" for n in names],
    ]
    return rows


def print_tables(result: SimulationResult, console: Console) -> None:
    """One table per policy (its timeline, condensed) and the comparison."""
    slo = result.slo_seconds
    traffic = result.traffic
    console.print(f"[bold]{result.scenario}[/bold]: {traffic.description or traffic.name}; "
                  f"{_duration(traffic.duration)} simulated, seed {result.seed}, SLO p95 <= {slo:g} s")
    for name, res in result.policies.items():
        table = Table(title=f"{POLICY_TITLES[name]} ({name})", title_justify="left")
        for header in ("time", "requests/s", "replicas", "ready", "worst p95 (s)", "SLO"):
            table.add_column(header, justify="left" if header in ("time", "SLO") else "right")
        for row in timeline_rows(res.timeline, slo):
            table.add_row(*row)
        console.print(table)
    table = Table(title="comparison", title_justify="left")
    table.add_column("")
    for name in result.policies:
        table.add_column(POLICY_TITLES[name], justify="right")
    for row in comparison_rows(result):
        table.add_row(*row)
    console.print(table)
    avoided = timeouts_avoided(result)
    if avoided is not None:
        console.print(f"dual-signal avoided {100 * avoided:.0f} % of CPU-only's timeouts")


# -- plot ---------------------------------------------------------------------------------------------------


def check_plot_available() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotUnavailable("--plot needs matplotlib, which is not installed: "
                              "pip install 'latency-adapter[plot]' (or pip install matplotlib)") from None


def plot(results: Sequence[SimulationResult], path: Path) -> None:
    """A PNG: per scenario (column), load, p95 against the SLO and replicas per policy on one time axis."""
    check_plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import FuncFormatter, NullFormatter

    plain = FuncFormatter(lambda v, _: f"{v:g}")
    cols = len(results)
    fig, axes = plt.subplots(3, cols, figsize=(5.5 * cols + 1, 9), sharex="col", squeeze=False)
    for c, result in enumerate(results):
        traffic = result.traffic
        hours = traffic.duration > 3 * 3600
        scale, unit = (3600.0, "hours") if hours else (60.0, "minutes")
        load, p95, reps = axes[0][c], axes[1][c], axes[2][c]
        grid = np.arange(0.0, traffic.duration + 1.0, max(1.0, traffic.duration / 2000.0))
        load.plot(grid / scale, traffic.rps_at(grid), color="black", linewidth=1.2, label="requests/s")
        load.set_ylim(bottom=0, top=max(1.0, float(traffic.rps.max())) * 1.15)
        load.set_title(result.scenario)
        extra = traffic.extra_at(grid)
        if float(extra.max()) > 0:
            twin = load.twinx()
            twin.fill_between(grid / scale, extra, color="#9467bd", alpha=0.25, step="post")
            twin.set_ylim(bottom=0, top=float(extra.max()) * 2.5)
            twin.set_ylabel("extra dependency latency (s)", color="#9467bd")
        styles = {"cpu": "-", "latency": "--", "dual": "-"}
        for name, res in result.policies.items():
            t = [p.t / scale for p in res.timeline]
            p95.plot(t, [float("nan") if p.p95_seconds is None else p.p95_seconds for p in res.timeline],
                     color=COLORS.get(name), linestyle=styles.get(name, "-"), label=POLICY_TITLES[name],
                     linewidth=1.1)
            reps.step(t, [p.replicas for p in res.timeline], where="post", color=COLORS.get(name),
                      linestyle=styles.get(name, "-"), label=POLICY_TITLES[name], linewidth=1.3)
        p95.axhline(result.slo_seconds, color="gray", linestyle=":", linewidth=1.2,
                    label=f"SLO {result.slo_seconds:g} s")
        p95.set_yscale("log")
        p95.yaxis.set_major_formatter(plain)
        p95.yaxis.set_minor_formatter(NullFormatter())
        p95.set_yticks([0.1, 0.2, 0.5, 1.0, 2.0])
        reps.set_ylim(bottom=0)
        reps.set_xlabel(f"time ({unit})")
        if c == 0:
            load.set_ylabel("requests/s")
            p95.set_ylabel("true p95 per 15 s (s)")
            reps.set_ylabel("replicas (HPA decision)")
            p95.legend(loc="upper right", fontsize="small")
        for ax in (load, p95, reps):
            ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
