"""``latency-adapter simulate``: run the scenario or traffic file through the three policies and print.

Exit statuses: 0 done; 2 bad input (an unknown scenario, a bad ``--traffic`` file naming its line, a bad
``--config``, an SLO or duration out of range, ``--plot`` without matplotlib or into a missing
directory); 1 the plot could not be written.
"""

from __future__ import annotations

import argparse
import math
import sys

from ..errors import ConfigError
from .engine import POLICY_TITLES, simulate
from .output import PlotUnavailable, check_plot_available, dumps, plot, print_tables
from .settings import load_simulation_config
from .traffic import MIN_DURATION_SECONDS, Traffic, TrafficError, load_traffic, scenario

EXIT_USAGE = 2
#: Policy-steps above which a progress bar is shown (on a terminal, without --json).
PROGRESS_ABOVE = 20_000


def _fail(message: str) -> int:
    print(f"latency-adapter simulate: {message}", file=sys.stderr)
    return EXIT_USAGE


def run(args: argparse.Namespace) -> int:
    slo = args.slo
    if not (math.isfinite(slo) and 0 < slo <= 3600):
        return _fail(f"--slo must be a number of seconds greater than 0 and at most 3600, got {slo:g}")
    if args.duration is not None and not (math.isfinite(args.duration)
                                          and args.duration >= MIN_DURATION_SECONDS):
        return _fail(f"--duration must be at least {MIN_DURATION_SECONDS:g} seconds, got {args.duration:g}")
    if args.plot is not None:
        try:
            check_plot_available()
        except PlotUnavailable as exc:
            return _fail(str(exc))
        parent = args.plot.resolve().parent
        if not parent.is_dir():
            return _fail(f"--plot: directory {str(parent)!r} does not exist")
    try:
        config = load_simulation_config(args.config)
    except ConfigError as exc:
        return _fail(f"invalid configuration: {exc}")
    traffic: Traffic
    if args.traffic is not None:
        try:
            traffic = load_traffic(args.traffic)
        except TrafficError as exc:
            return _fail(f"bad --traffic file: {exc}")
        name = str(args.traffic)
    else:
        traffic = scenario(args.scenario, args.seed)
        name = args.scenario
    if args.duration is not None:
        traffic = traffic.truncated(args.duration)

    steps = 3 * math.ceil(traffic.duration)
    show_progress = not args.json and steps > PROGRESS_ABOVE and sys.stderr.isatty()
    if show_progress:
        from rich.console import Console
        from rich.progress import Progress

        with Progress(console=Console(stderr=True), transient=True) as bar:
            tasks = {p: bar.add_task(f"{POLICY_TITLES[p]:>12}", total=math.ceil(traffic.duration))
                     for p in POLICY_TITLES}

            def progress(policy: str, done: int, total: int) -> None:
                bar.update(tasks[policy], completed=done)

            result = simulate(traffic, config, args.seed, slo, progress=progress, scenario=name)
    else:
        result = simulate(traffic, config, args.seed, slo, scenario=name)

    if args.json:
        sys.stdout.write(dumps(result) + "\n")
    else:
        from rich.console import Console

        print_tables(result, Console())
        hpa = config.hpa
        behavior = "from the config file" if hpa.behavior_from_config else "Kubernetes' default (none set)"
        print(f"HPA: {hpa.min_replicas} to {hpa.max_replicas} replicas, behavior {behavior}; pods take "
              f"traffic {hpa.startup_seconds:g} s after creation; timeout {hpa.timeout_seconds:g} s")
    if args.plot is not None:
        try:
            plot([result], args.plot)
        except OSError as exc:
            print(f"latency-adapter simulate: cannot write {args.plot}: {exc.strerror or exc}",
                  file=sys.stderr)
            return 1
        if not args.json:
            print(f"plot written to {args.plot}")
    return 0
