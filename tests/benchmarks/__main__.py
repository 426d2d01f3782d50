"""Run every benchmark (``make bench``): ``python -m tests.benchmarks [name ...]``.

Prints a header (date, Python, CPU), each benchmark's table, then a summary table. A benchmark that
crashes is reported and the others still run; the exit status is non-zero only when one crashed (a goal
not met is a result, not a failure).
"""

from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys
import time
import traceback

from . import Row, print_table, yes_no

BENCHMARKS = ("accuracy", "ingest", "memory", "latency_step", "api", "simulate", "prometheus_source")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def versions() -> str:
    parts = []
    for mod in ("numpy", "google.protobuf", "aiohttp", "ddsketch"):
        try:
            m = importlib.import_module(mod)
            parts.append(f"{mod.split('.')[-1]} {getattr(m, '__version__', '?')}")
        except Exception:  # a missing optional module must not stop the run
            parts.append(f"{mod} missing")
    try:
        from google.protobuf.internal import api_implementation

        parts.append(f"protobuf backend {api_implementation.Type()}")
    except Exception:
        pass
    return ", ".join(parts)


def main(argv: list[str]) -> int:
    names = argv or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
        return 2
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    allowed = len(os.sched_getaffinity(0))
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"latency-adapter benchmarks  {now}  Python {platform.python_version()}  CPU {cpu_model()} "
          f"({os.cpu_count()} CPUs, {allowed} usable)  load average {load}")
    print(f"  {versions()}", flush=True)

    summary: list[Row] = []
    crashed: list[str] = []
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"\n=== {name} " + "=" * (60 - len(name)), flush=True)
        try:
            module = importlib.import_module(f"{__package__}.{name}")
            summary.extend(module.run())
        except Exception as exc:
            traceback.print_exc(file=sys.stdout)
            crashed.append(name)
            summary.append(Row(name, f"CRASHED: {type(exc).__name__}: {exc}"[:70], "", "", None))
        print(f"  ({name}: {time.perf_counter() - t0:.1f} s)", flush=True)

    print_table(
        f"=== summary ({time.perf_counter() - started:.0f} s; goals from DESIGN section 8; every figure "
        "is beside a baseline measured in this run)",
        ["benchmark", "figure", "baseline (same run)", "goal", "met?"],
        [[r.benchmark, r.figure, r.baseline, r.goal, yes_no(r.met)] for r in summary],
    )
    if crashed:
        print(f"\n{len(crashed)} benchmark(s) crashed: {', '.join(crashed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
