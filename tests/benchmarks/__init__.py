"""Benchmarks for the quality bars of DESIGN section 8 (``make bench`` = ``python -m tests.benchmarks``).

Benchmarks are not tests: they never fail the build on speed. Each one prints a small table with its
figure beside a baseline measured in the same run (these machines are noisy, so a figure is only
meaningful next to something measured under the same conditions) and says whether its goal is met.

Every benchmark module exposes ``run() -> list[Row]``; the rows make the final summary table that
``__main__`` prints. A module can also be run alone: ``python -m tests.benchmarks.accuracy``.

This package holds only what the benchmark modules share: the summary row and table printing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Row:
    """One line of the final summary: what was measured, against what, and whether the goal is met."""

    benchmark: str
    figure: str
    baseline: str
    goal: str
    met: bool | None  # None: not applicable or not measurable in this run


def yes_no(met: bool | None) -> str:
    if met is None:
        return "n/a"
    return "yes" if met else "NO"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "  ") -> str:
    """An aligned plain-text table; numbers (and strings that look like numbers) align right."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def numeric(text: str) -> bool:
        t = text.replace(",", "").removesuffix("%").strip().lstrip("+<>=~ ")
        try:
            float(t)
        except ValueError:
            return False
        return True

    lines = []
    for n, r in enumerate(cells):
        parts = []
        for i, c in enumerate(r):
            parts.append(c.rjust(widths[i]) if n and numeric(c) else c.ljust(widths[i]))
        lines.append(indent + "  ".join(parts).rstrip())
        if n == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print(f"\n{title}")
    print(table(headers, rows), flush=True)


def pct(x: float, digits: int = 2) -> str:
    return f"{100.0 * x:.{digits}f} %"


def rate(x: float) -> str:
    """A throughput with thousands separators and no false precision."""
    return f"{x:,.0f}"
