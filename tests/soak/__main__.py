"""``python -m tests.soak``: run the soak described in :mod:`tests.soak` and print a table per minute.

The driver (this process, on CPU 1 with the load generators) owns the fake Kubernetes API, the adapter,
the OTLP sender process and the wrk runs; a thread samples the adapter's RSS and scrapes ``/metrics``.
Minute boundaries are the wrk runs' own, so each row's API figures and the counters read around them
cover the same seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import multiprocessing as mp
import os
import resource
import shutil
import ssl
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme
from prometheus_client.utils import floatToGoString

from adapter.kube import UserInfo
from tests.benchmarks import table
from tests.benchmarks.api import TOKEN, _start_adapter
from tests.benchmarks.ingest import CLK_TCK, ROUTES, cpus, proc_cpu_seconds
from tests.fakes.kube_api import FakeKubeAPI, allow_users
from tests.integration.process import exchange
from tests.tooling import terminate

from . import GOAL_LOAD_SHARE, GOAL_P99_MS, GOAL_RSS_GROWTH, SIZING_API_RPS, SIZING_SPANS_PER_SECOND
from . import otlp_load as otlp
from .api_load import TIMEOUT, ApiMinute, paths, run_minute, write_script

NAMESPACE = "shop"  # tests.benchmarks.ingest.make_body writes this namespace
SAMPLE_SECONDS = 2.0
SCRAPE_SECONDS = 15.0
BASELINE_SECONDS = 30.0
READY_TIMEOUT = 120.0
#: Other processes' CPU (share of one core) above which the verdict says the machine was not quiet.
QUIET_OTHER_CPU = 0.10
MiB = 1 << 20


# -- sampling -----------------------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def machine_busy_seconds() -> float:
    """CPU seconds spent by everything on the machine (all CPUs, idle and iowait excluded), from
    /proc/stat: what is left after our own processes is other load stealing from the soak."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [float(v) for v in f.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items() if n == name and labels.items() <= dict(ls).items())


def bucket_quantile(before: Samples, after: Samples, name: str, q: float) -> float:
    """The upper bound of the bucket that holds quantile ``q`` of what histogram ``name`` (all its
    series summed) observed between two scrapes: "p99 <= this" (inf above the last bound, nan when
    nothing was observed)."""
    bounds = sorted({float(dict(ls)["le"]) for (n, ls) in after if n == f"{name}_bucket"})
    deltas = [metric(after, f"{name}_bucket", le=floatToGoString(b)) - metric(before, f"{name}_bucket",
                                                                             le=floatToGoString(b))
              for b in bounds]
    if not deltas or deltas[-1] <= 0:
        return float("nan")
    return next(b for b, d in zip(bounds, deltas, strict=True) if d >= q * deltas[-1])


class Sampler(threading.Thread):
    """RSS every :data:`SAMPLE_SECONDS`; a ``/metrics`` scrape every :data:`SCRAPE_SECONDS` (as
    Prometheus would: the scrape is part of the load, and a failed one is an error)."""

    def __init__(self, pid: int, telemetry_port: int) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.pid, self.port = pid, telemetry_port
        self.samples: list[tuple[float, int]] = []
        self.scrape_errors: list[str] = []
        self.scrape_seconds: list[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        next_scrape = time.monotonic()
        while not self.stopping.is_set():
            now = time.monotonic()
            try:
                self.samples.append((now, rss_bytes(self.pid)))
            except (OSError, RuntimeError):
                return  # the adapter is gone; the driver notices and reports it
            if now >= next_scrape:
                next_scrape += SCRAPE_SECONDS
                try:
                    scrape(self.port)
                    self.scrape_seconds.append(time.monotonic() - now)
                except OSError as exc:
                    self.scrape_errors.append(repr(exc))
            self.stopping.wait(SAMPLE_SECONDS)

    def rss_between(self, t0: float, t1: float) -> list[int]:
        return [rss for t, rss in self.samples if t0 <= t <= t1]


# -- one minute ---------------------------------------------------------------------------------------


@dataclass
class Minute:
    label: str
    api: ApiMinute
    seconds: float
    counters: list[float]  # OTLP sender counters over the minute (deltas)
    adapter_cpu: float  # CPU seconds per second: 1.0 is one core
    generator_cpu: float  # the OTLP sender, wrk and this driver (with the fake API server)
    other_cpu: float  # every other process on the machine
    rss: list[int]
    store_bytes: float  # the adapter's own estimate of its window store at the end of the minute
    #: Seen by the adapter itself (bucket bounds, "p99 <= this"): how late its event loop ran what was
    #: due, and how long its API handlers took. wrk's p99 minus these is waiting outside the handler.
    loop_lag_p99: float = float("nan")
    handler_p99: float = float("nan")

    @property
    def spans_per_second(self) -> float:
        return self.counters[otlp.ACCEPTED] / self.seconds

    @property
    def otlp_errors(self) -> int:
        c = self.counters
        return int(c[otlp.HTTP_ERRORS] + c[otlp.CONN_ERRORS] + c[otlp.CPU_ERRORS])

    @property
    def rss_mean(self) -> float:
        return sum(self.rss) / len(self.rss) if self.rss else float("nan")


@dataclass
class Rig:
    """Everything a minute needs to measure itself."""

    url: str
    script: Path
    adapter: Any  # subprocess.Popen
    sender_pid: int
    counters: Any  # the sender's shared array
    sampler: Sampler
    client_cpu: int
    seconds: int
    telemetry_port: int

    def _cpu(self) -> tuple[float, float, float]:
        """(adapter, generators, whole machine) CPU seconds so far; wrk counts once it has exited."""
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        generators = proc_cpu_seconds(self.sender_pid) + time.process_time() + children.ru_utime \
            + children.ru_stime
        return proc_cpu_seconds(self.adapter.pid), generators, machine_busy_seconds()

    def minute(self, label: str) -> Minute:
        if self.adapter.poll() is not None:
            raise RuntimeError(f"the adapter exited with {self.adapter.returncode} before {label}")
        s0 = scrape(self.telemetry_port)
        c0, cpu0, t0 = list(self.counters), self._cpu(), time.monotonic()
        api = run_minute(self.url, self.script, TOKEN, self.seconds, self.client_cpu)
        c1, cpu1, t1 = list(self.counters), self._cpu(), time.monotonic()
        adapter, generators, machine = ((b - a) / (t1 - t0) for a, b in zip(cpu0, cpu1, strict=True))
        s1 = scrape(self.telemetry_port)
        store = metric(s1, "latency_adapter_store_bytes")
        return Minute(label, api, t1 - t0, [b - a for a, b in zip(c0, c1, strict=True)], adapter, generators,
                      max(machine - adapter - generators, 0.0), self.sampler.rss_between(t0, t1), store,
                      bucket_quantile(s0, s1, "latency_adapter_event_loop_lag_seconds", 0.99),
                      bucket_quantile(s0, s1, "latency_adapter_api_request_duration_seconds", 0.99))


# -- report -------------------------------------------------------------------------------------------


HEADERS = ["minute", "API req/s", "p50 ms", "p99 ms", "max ms", "loop lag p99 ms <=", "handler p99 ms <=",
           "API errors", "spans/s accepted",
           "OTLP errors", "429s", "adapter CPU", "generators CPU", "other CPU", "RSS MiB", "RSS growth",
           "store MiB"]


def row(m: Minute, baseline: float | None) -> list[str]:
    growth = "" if baseline is None else f"{(m.rss_mean - baseline) / baseline * 100:+.2f} %"
    return [m.label, f"{m.api.rps:,.0f}", f"{m.api.p50_ms:.2f}", f"{m.api.p99_ms:.2f}", f"{m.api.max_ms:.1f}",
            f"{m.loop_lag_p99 * 1000:g}", f"{m.handler_p99 * 1000:g}", str(m.api.errors),
            f"{m.spans_per_second:,.0f}", str(m.otlp_errors), str(int(m.counters[otlp.THROTTLED])),
            *(f"{c * 100:.0f} %" for c in (m.adapter_cpu, m.generator_cpu, m.other_cpu)),
            f"{m.rss_mean / MiB:.1f}", growth, f"{m.store_bytes / MiB:.1f}"]


def progress(m: Minute, baseline: float | None) -> None:
    """One line per minute while the soak runs (the aligned table comes at the end)."""
    print(" | ".join(f"{h} {v}" for h, v in zip(HEADERS, row(m, baseline), strict=True) if v), flush=True)


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join([*lines, *("| " + " | ".join(r) + " |" for r in rows)])


@dataclass
class Verdict:
    lines: list[str]
    met: bool


def verdict(warmup: list[Minute], soak: list[Minute], baseline: float, spans_target: float,
            api_target: float, extra_errors: Sequence[str]) -> Verdict:
    everything = warmup + soak
    api_errors = sum(m.api.errors for m in everything)
    statuses: dict[str, int] = {}
    for m in everything:
        for code, n in m.api.statuses.items():
            statuses[code] = statuses.get(code, 0) + n
    otlp_errors = sum(m.otlp_errors for m in everything)
    rejected = int(sum(m.counters[otlp.REJECTED] for m in everything))
    throttled = int(sum(m.counters[otlp.THROTTLED] for m in everything))
    errors_ok = api_errors == otlp_errors == rejected == throttled == 0 and not extra_errors
    growth = max((m.rss_mean - baseline) / baseline for m in soak)
    worst = max(everything, key=lambda m: m.api.p99_ms)
    p99_ok = worst.api.p99_ms < GOAL_P99_MS
    short = [m.label for m in everything if m.api.rps < GOAL_LOAD_SHARE * api_target
             or m.spans_per_second < GOAL_LOAD_SHARE * spans_target]
    checks = [
        (errors_ok, f"0 errors: API {api_errors} (non-2xx by status {statuses or '{}'}, socket errors "
                    f"{sum(m.api.socket_errors for m in everything)} of which "
                    f"{sum(m.api.timeouts for m in everything)} timeouts after {TIMEOUT}); "
                    f"OTLP {otlp_errors} failed requests, {rejected:,} spans refused, {throttled} 429s"
                    + "".join(f"; {e}" for e in extra_errors)),
        (growth < GOAL_RSS_GROWTH, f"RSS growth < {GOAL_RSS_GROWTH:.0%} after warm-up: worst minute "
                                   f"{growth * 100:+.2f} % against the baseline {baseline / MiB:.1f} MiB "
                                   f"(mean RSS over the last {BASELINE_SECONDS:.0f} s of warm-up)"),
        (p99_ok, f"API p99 < {GOAL_P99_MS:g} ms in every minute: worst {worst.api.p99_ms:.2f} ms "
                 f"({worst.label})"),
        (not short, f"load held (>= {GOAL_LOAD_SHARE:.0%} of {api_target:,.0f} req/s and {spans_target:,.0f} "
                    f"spans/s every minute): " + (f"NOT in {', '.join(short)}" if short else "yes")),
    ]
    lines = [f"  [{'PASS' if ok else 'FAIL'}] {text}" for ok, text in checks]
    met = all(ok for ok, _ in checks)
    other = max(m.other_cpu for m in everything)
    if other > QUIET_OTHER_CPU:
        lines.append(f"  [NOTE] the machine was not quiet: other processes took up to {other:.0%} of a core "
                     "in a minute, time the adapter and the generators could not have; rerun on an idle "
                     "machine before blaming the adapter for latency or a load not held")
    lines.append(f"  verdict: {'PASS' if met else 'FAIL'}")
    return Verdict(lines, met)


# -- run ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def sender(port: int, spans_per_second: float, workloads: Sequence[str], cpu: int) -> Iterator[Any]:
    """The OTLP sender process, stopped (then killed if need be) on the way out."""
    ctx = mp.get_context("spawn")
    counters = ctx.Array("d", otlp.COUNTERS, lock=False)
    stop = ctx.Event()
    proc = ctx.Process(target=otlp.sender_main, name="soak-otlp",
                       args=(port, spans_per_second, NAMESPACE, list(workloads), cpu, counters, stop))
    proc.start()
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not counters[otlp.READY]:
            if not proc.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the OTLP sender did not get ready")
            time.sleep(0.2)
        yield counters, proc.pid
    finally:
        stop.set()
        proc.join(30)
        if proc.is_alive():
            proc.kill()
            proc.join(5)


def wait_all_served(port: int, queries: Sequence[str], ctx: ssl.SSLContext, counters: Any,
                    telemetry_port: int) -> None:
    """Until every query answers 200: from then on a 404 (no data) is an error, not a slow start."""
    pending = list(queries)
    deadline = time.monotonic() + READY_TIMEOUT
    last: Any = None
    while pending:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
        for q in list(pending):
            last = exchange(conn, q, {"Authorization": f"Bearer {TOKEN}"})
            if last.status == 200:
                pending.remove(q)
        conn.close()
        if pending and time.monotonic() > deadline:
            series = metric(scrape(telemetry_port), "latency_adapter_active_series")
            raise RuntimeError(f"{len(pending)} queries still unanswered after {READY_TIMEOUT:.0f} s (sender "
                               f"counters {list(counters)}, {series:.0f} active series), e.g. {last}")
        if pending:
            time.sleep(1)


def log_summary(log: Path) -> tuple[int, list[str]]:
    """(lines, "count x level event" for the commonest events) of the adapter's JSON log: warnings and
    errors are findings, and a chatty info event is log volume an operator pays for."""
    import json

    lines = 0
    counts: dict[str, int] = {}
    for line in log.read_text(errors="replace").splitlines():
        lines += 1
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        key = " ".join([str(doc.get("level", "?")), str(doc.get("event", doc.get("msg", "?"))),
                        *(f"{k}={doc[k]}" for k in ("code", "reason") if k in doc)])
        counts[key] = counts.get(key, 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (not kv[0].startswith(("warning", "error", "critical")),
                                                    -kv[1]))
    return lines, [f"{n:,} x {k}" for k, n in ranked[:8]]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=10, help="measured minutes after warm-up (10)")
    parser.add_argument("--warmup-minutes", type=int, default=2, help="not in the RSS baseline (2)")
    parser.add_argument("--spans-per-second", type=float, default=2 * SIZING_SPANS_PER_SECOND)
    parser.add_argument("--api-rps", type=float, default=2 * SIZING_API_RPS)
    parser.add_argument("--workloads", type=int, default=200)
    parser.add_argument("--minute-seconds", type=int, default=60, help="length of a 'minute' (debugging)")
    parser.add_argument("--out", type=Path, help="also write the table and verdict here, as Markdown")
    args = parser.parse_args(argv)
    if args.minutes < 1 or args.warmup_minutes < 1:
        parser.error("--minutes and --warmup-minutes must be at least 1")
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (make soak installs wrk when root)", file=sys.stderr)
            return 2

    server_cpu, client_cpu = cpus()
    os.sched_setaffinity(0, {client_cpu})
    workloads = [f"app-{i:03d}" for i in range(args.workloads)]
    queries = paths(NAMESPACE, workloads, ROUTES)
    print(f"soak: {args.spans_per_second:,.0f} spans/s ({args.spans_per_second / SIZING_SPANS_PER_SECOND:g}x "
          f"sizing) + {args.api_rps:,.0f} API req/s ({args.api_rps / SIZING_API_RPS:g}x sizing), "
          f"{args.workloads} workloads x {len(ROUTES)} routes, {len(queries)} distinct queries; "
          f"{args.warmup_minutes} min warm-up + {args.minutes} min; adapter (secure mode, TLS + token) on "
          f"CPU {server_cpu}, load generators on CPU {client_cpu}", flush=True)

    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost")
    users = {TOKEN: UserInfo("soak", groups=("system:authenticated",))}
    warmup: list[Minute] = []
    soak: list[Minute] = []
    with tempfile.TemporaryDirectory(prefix="soak-") as tmpdir, \
            FakeKubeAPI(tokens=users, policy=allow_users("soak")).start_in_thread() as fake:
        tmp = Path(tmpdir)
        adapter, ports = _start_adapter(tmp, fake, server, client_ca)
        sampler = Sampler(adapter.pid, ports["telemetry_port"])
        try:
            ctx = ssl.create_default_context()
            server_ca.configure_trust(ctx)
            base_url = f"https://127.0.0.1:{ports['api_port']}"
            otlp_port = ports["otlp_port"]
            with sender(otlp_port, args.spans_per_second, workloads, client_cpu) as (counters, sender_pid):
                wait_all_served(ports["api_port"], queries, ctx, counters, ports["telemetry_port"])
                sampler.start()
                script = write_script(tmp, queries, args.api_rps)
                rig = Rig(base_url + "/", script, adapter, sender_pid, counters, sampler, client_cpu,
                          args.minute_seconds, ports["telemetry_port"])
                for k in range(args.warmup_minutes):
                    warmup.append(rig.minute(f"warm-up {k + 1}"))
                    progress(warmup[-1], None)
                end = time.monotonic()
                recent = sampler.rss_between(end - BASELINE_SECONDS, end)
                baseline = sum(recent) / len(recent)
                for k in range(args.minutes):
                    soak.append(rig.minute(str(k + 1)))
                    progress(soak[-1], baseline)
                sent_accepted = counters[otlp.ACCEPTED]  # first: the adapter's count then includes it
                final = scrape(ports["telemetry_port"])
        finally:
            sampler.stopping.set()
            terminate(adapter, 30)
        log_lines, log_events = log_summary(tmp / "adapter.log")

    rows = [row(m, None) for m in warmup] + [row(m, baseline) for m in soak]
    adapter_accepted = metric(final, "latency_adapter_otlp_items_total", signal="traces", outcome="accepted")
    limit_hits = {dict(ls)["limit"]: v for (n, ls), v in final.items()
                  if n == "latency_adapter_limit_hits_total" and v > 0}
    extra = [f"{len(sampler.scrape_errors)} failed /metrics scrapes"] if sampler.scrape_errors else []
    if limit_hits:
        extra.append(f"limits hit: {limit_hits}")
    result = verdict(warmup, soak, baseline, args.spans_per_second, args.api_rps, extra)
    notes = [
        f"  spans accepted: the sender counted {sent_accepted:,.0f}, the adapter's /metrics "
        f"{adapter_accepted:,.0f} (read just after); active series "
        f"{metric(final, 'latency_adapter_active_series'):,.0f}",
        f"  /metrics scrapes every {SCRAPE_SECONDS:.0f} s: {len(sampler.scrape_seconds)}, slowest "
        f"{max(sampler.scrape_seconds, default=0) * 1000:.0f} ms",
        f"  API p99.9 per minute (ms): {', '.join(f'{m.api.p999_ms:.1f}' for m in warmup + soak)}",
        f"  adapter log: {log_lines:,} lines; " + "; ".join(log_events),
    ]
    title = (f"Soak: {args.spans_per_second:,.0f} spans/s + {args.api_rps:,.0f} API req/s, "
             f"{args.workloads} workloads, {args.warmup_minutes} min warm-up + {args.minutes} min")
    print(f"\n{title}\n{table(HEADERS, rows)}\n" + "\n".join(notes))
    print("\nverdict:\n" + "\n".join(result.lines), flush=True)
    if args.out is not None:
        args.out.write_text(f"# {title}\n\n{markdown(HEADERS, rows)}\n\n"
                            + "\n".join(f"- {n.strip()}" for n in notes) + "\n\n"
                            + "\n".join(f"- {v.strip()}" for v in result.lines) + "\n", encoding="utf-8")
    return 0 if result.met else 1


if __name__ == "__main__":
    sys.exit(main())
