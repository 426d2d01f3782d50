"""``python -m tests.fuzz [--inputs N] [--targets a,b] [--batch N] [--jobs N] [--engine E] [--seed N]``.

Runs the targets (see :mod:`tests.fuzz.engine`), ``--jobs`` at a time, costliest first: an HTTP target
keeps about one core busy between its worker and its adapter, which take turns, so two run side by side
on two cores. Prints a line per batch, then one table and
every distinct finding with the file holding its input. Exit status 1 when any target had a crash, a
response of 500 or more, a bad answer or a failed good-traffic check, or fell short of its inputs; 0
otherwise. The work directory (corpora, libFuzzer logs, the adapters' logs, reproducers) is removed after
a clean run unless ``--keep``, and always kept when something was found.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.fuzz.engine import Result, default_engine, run_target, worker
from tests.fuzz.specs import SPECS, Spec, select


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n\n")[1])
    p.add_argument("--inputs", type=int, default=100_000, help="inputs per target (default 100,000)")
    p.add_argument("--targets", default=",".join(s.key for s in SPECS),
                   help="keys or names, comma-separated: " + ", ".join(f"{s.key}={s.name}" for s in SPECS))
    p.add_argument("--batch", type=int, default=10_000, help="inputs between good-traffic checks")
    p.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)),
                   help="targets run at the same time (default: the CPUs this process may use)")
    p.add_argument("--engine", choices=("auto", "atheris", "hypothesis"), default="auto")
    p.add_argument("--seed", type=int, default=1, help="libFuzzer's or hypothesis' seed")
    p.add_argument("--workdir", help="where corpora, logs and reproducers go (default: a new temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the work directory after a clean run")
    # Internal: one target in this process (started by the parent).
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--ports", help=argparse.SUPPRESS)
    p.add_argument("--cert", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.inputs, args.batch, args.jobs) < 1:
        p.error("--inputs, --batch and --jobs must be at least 1")
    try:
        args.specs = select(args.targets)
    except KeyError as exc:
        p.error(f"unknown target {exc}")
    return args


def table(results: list[Result]) -> str:
    from tests.benchmarks import table as render

    rows = [(r.target, r.engine, f"{r.inputs:,}", r.crashes, r.server_errors if r.http else "-",
             r.bad_answers, f"{r.checks_passed}/{r.checks}", f"{r.seconds:.1f}",
             f"{r.inputs / r.seconds:,.0f}" if r.seconds else "-")
            for r in results]
    return render(("target", "engine", "inputs", "crashes", "responses>=500", "bad answers",
                   "good-traffic checks passed", "seconds", "inputs/s"), rows)


def findings(results: list[Result]) -> list[str]:
    lines = []
    for r in results:
        for signature, f in r.findings.items():
            where = f" (input: {f['reproducer']})" if f["reproducer"] else ""
            lines.append(f"[{r.target}] {f['kind']} x{f['count']}: {signature}{where}\n    "
                         + f["detail"].rstrip().replace("\n", "\n    "))
    return lines


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    engine = default_engine() if args.engine == "auto" else args.engine
    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="latency-adapter-fuzz-"))
    print(f"fuzzing {', '.join(s.name for s in args.specs)}: {args.inputs:,} inputs each, engine {engine}, "
          f"good-traffic check every {args.batch:,}; work directory {base}", flush=True)
    started = time.monotonic()

    def run(spec: Spec) -> Result:
        print(f"{spec.key}) {spec.name}: {spec.surface}", flush=True)
        return run_target(spec, args.inputs, args.batch, engine, args.seed, base)

    with ThreadPoolExecutor(max_workers=min(args.jobs, len(args.specs))) as pool:
        futures = {s.key: pool.submit(run, s) for s in sorted(args.specs, key=lambda s: -s.cost)}
        results = [futures[s.key].result() for s in args.specs]
    print(f"\nfuzz summary ({time.monotonic() - started:.0f} s in all)")
    print(table(results))
    failed = any(r.failed for r in results)
    found = findings(results)
    if found:
        print("\nfindings:\n" + "\n".join(found))
    if failed or found or args.keep:
        print(f"\nwork directory kept: {base}")
    else:
        shutil.rmtree(base, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
