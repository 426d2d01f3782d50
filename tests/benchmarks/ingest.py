"""OTLP span ingest throughput on one core, end to end, beside decode-only and ingestor-only baselines.

Bodies: pre-serialized ``ExportTraceServiceRequest``s of 512 SERVER spans each, four workloads, eight
routes, a realistic span shape (16-byte trace id, 8-byte span id, name ``GET /cart``, start/end times,
status, resource ``service.name``/``k8s.namespace.name``/``k8s.deployment.name``, span attributes
``http.request.method``, ``url.path``, ``http.route``, ``http.response.status_code``,
``server.address``) and a minimal one (``http.route`` only).

Stages, all on one pinned CPU so the rows compare:

a. decode only: ``ParseFromString`` of the body in a loop;
b. decode + visit every span in a Python loop (kind, start, end);
c. the ingestor alone, no HTTP: ``OtlpIngestor.ingest_traces(body, False, now)``;
d. end to end: the real aiohttp app (``build_otlp_app``) in its own process pinned to one CPU, driven by
   keep-alive aiohttp clients in another process pinned to the other CPU. Server CPU time comes from
   ``/proc/<pid>/stat`` (utime + stime), so the figure is given both per wall-clock second and per second
   of server CPU (the latter is robust to a noisy machine stealing the core);
e. for scale, HTTP alone: a bare aiohttp handler that reads the same bodies and answers an empty 200.

Row a2 (decode with the ingestor's own lean message class) appears when ``adapter.sources.otlp_view``
exists.

(a)-(c) run in a separate process pinned to the server's CPU, best of a few interleaved rounds; they
report spans per CPU-second of that process. Then (c) runs under cProfile for a moment and the top
functions are printed, to guide optimisation.

Goal (DESIGN section 8): >= 1,000,000 spans/s end to end on one core.
"""

from __future__ import annotations

import asyncio
import cProfile
import math
import multiprocessing as mp
import os
import pstats
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from . import Row, print_table, rate

SPANS_PER_REQUEST = 512
GOAL = 1_000_000
ROUTES = ("/cart", "/cart/{id}", "/checkout", "/products", "/products/{id}", "/search", "/login", "/")
WORKLOADS = ("checkout", "catalog", "cart", "frontend")
STAGE_ROUNDS = 5
STAGE_SECONDS = 0.6
E2E_WARMUP = 1.0
E2E_SECONDS = 8.0
E2E_CONNECTIONS = 8
PROFILE_SECONDS = 1.5
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- bodies -------------------------------------------------------------------------------------------


def _kv(attrs: Any, key: str, value: str | int) -> None:
    if isinstance(value, int):
        attrs.add(key=key, value=AnyValue(int_value=value))
    else:
        attrs.add(key=key, value=AnyValue(string_value=value))


def make_body(workload: str, minimal: bool, seed: int, n: int = SPANS_PER_REQUEST) -> bytes:
    """One serialized ExportTraceServiceRequest of ``n`` SERVER spans of one workload."""
    rng = np.random.default_rng(seed)
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    for key, value in (("service.name", workload), ("service.version", "1.4.2"),
                       ("k8s.namespace.name", "shop"), ("k8s.deployment.name", workload),
                       ("k8s.pod.name", f"{workload}-7d9f8c6b5-x2x4z"), ("telemetry.sdk.language", "python")):
        _kv(rs.resource.attributes, key, value)
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.aiohttp_server"
    ss.scope.version = "0.48b0"
    t0 = 1_700_000_000_000_000_000
    durations = (rng.lognormal(math.log(0.080), 0.6, n) * 1e9).astype(np.int64)
    for i in range(n):
        route = ROUTES[int(rng.integers(len(ROUTES)))]
        error = rng.random() < 0.01
        start = t0 + i * 1_000_000
        span = ss.spans.add(
            trace_id=rng.bytes(16), span_id=rng.bytes(8), name=f"GET {route}",
            kind=Span.SPAN_KIND_SERVER, start_time_unix_nano=start,
            end_time_unix_nano=start + int(durations[i]),
        )
        span.status.code = Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET
        if minimal:
            _kv(span.attributes, "http.route", route)
        else:  # http.route in the middle: instrumentations add it wherever routing happens
            _kv(span.attributes, "http.request.method", "GET")
            _kv(span.attributes, "url.path", route.replace("{id}", str(int(rng.integers(10_000)))))
            _kv(span.attributes, "http.route", route)
            _kv(span.attributes, "http.response.status_code", 500 if error else 200)
            _kv(span.attributes, "server.address", f"{workload}.shop.svc.cluster.local")
    return bytes(request.SerializeToString())


def make_bodies(minimal: bool) -> list[bytes]:
    return [make_body(w, minimal, seed=i) for i, w in enumerate(WORKLOADS)]


# -- process helpers ----------------------------------------------------------------------------------


def cpus() -> tuple[int, int]:
    """(server CPU, client CPU): two distinct CPUs when the affinity mask allows."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[1] if len(allowed) > 1 else allowed[0]


def _pin(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process from /proc/<pid>/stat, in seconds."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # after "pid (comm)": state is field 3, utime 14, stime 15 (1-based) -> 11, 12 here
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# -- single-process stages ----------------------------------------------------------------------------


def _decode(body: bytes) -> int:
    ExportTraceServiceRequest().ParseFromString(body)
    return SPANS_PER_REQUEST


def _decode_visit(body: bytes) -> int:
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    n = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                if span.kind == 2 and span.end_time_unix_nano >= span.start_time_unix_nano:
                    n += 1
    return n


def _ingestor() -> Callable[[bytes], int]:
    from adapter.sources.otlp_ingest import OtlpIngestor
    from adapter.store import WindowStore

    ingestor = OtlpIngestor(WindowStore(), started_unix_nano=time.time_ns())

    def ingest(body: bytes) -> int:
        result, _ = ingestor.ingest_traces(body, False, time.time())
        return result.accepted

    return ingest


def _decode_lean() -> Callable[[bytes], int] | None:
    """Decode with the ingestor's own message class when it has one (``adapter.sources.otlp_view``)."""
    try:
        from adapter.sources.otlp_view import LeanTraceRequest
    except ImportError:
        return None

    def decode(body: bytes) -> int:
        LeanTraceRequest().ParseFromString(body)
        return SPANS_PER_REQUEST

    return decode


STAGE_DECODE = "a. decode only"
STAGE_INGESTOR = "c. ingestor alone (no HTTP)"


def _stage_fns() -> list[tuple[str, Callable[[bytes], int]]]:
    fns: list[tuple[str, Callable[[bytes], int]]] = [(STAGE_DECODE, _decode)]
    lean = _decode_lean()
    if lean is not None:
        fns.append(("a2. decode only, ingestor's lean view", lean))
    fns += [("b. decode + visit spans", _decode_visit), (STAGE_INGESTOR, _ingestor())]
    return fns


def _measure(fn: Callable[[bytes], int], bodies: list[bytes], seconds: float) -> tuple[int, float, float]:
    spans = 0
    i = 0
    w0, c0 = time.perf_counter(), time.process_time()
    while True:
        spans += fn(bodies[i % len(bodies)])
        i += 1
        if i % 8 == 0 and time.process_time() - c0 >= seconds:
            break
    return spans, time.perf_counter() - w0, time.process_time() - c0


Best = dict[tuple[str, str], tuple[float, float]]


def _stages_main(cpu: int, shapes: dict[str, list[bytes]], conn: Connection) -> None:
    """Child process: every (stage, shape), interleaved rounds, best round kept (by spans per CPU-s)."""
    _pin(cpu)
    fns = _stage_fns()
    best: Best = {}
    for (_, fn), bodies in ((f, b) for f in fns for b in shapes.values()):
        _measure(fn, bodies, 0.1)  # warm up
    for _ in range(STAGE_ROUNDS):
        for stage, fn in fns:
            for shape, bodies in shapes.items():
                spans, wall, cpu_s = _measure(fn, bodies, STAGE_SECONDS)
                per_cpu, per_wall = spans / cpu_s, spans / wall
                if per_cpu > best.get((stage, shape), (0.0, 0.0))[0]:
                    best[(stage, shape)] = (per_cpu, per_wall)
    conn.send(([stage for stage, _ in fns], best))
    conn.close()


# -- end to end ---------------------------------------------------------------------------------------


def _server_main(cpu: int, conn: Connection, bare: bool) -> None:
    """Child process: the real OTLP app on 127.0.0.1, pinned to ``cpu``, until the parent says stop.

    ``bare`` serves a plain aiohttp handler instead (read the body, answer an empty 200 protobuf): the
    cost of HTTP alone, the ceiling any ingestor behind aiohttp can reach.
    """
    _pin(cpu)
    from aiohttp import web

    from adapter import gc_policy
    from adapter.sources.otlp import OTLP_RUNNER_OPTIONS, ReceiverSettings, build_otlp_app
    from adapter.sources.otlp_ingest import OtlpIngestor
    from adapter.store import WindowStore
    from adapter.telemetry import Telemetry

    async def main() -> None:
        store = WindowStore()
        telemetry = Telemetry(store)
        ingestor = OtlpIngestor(store, started_unix_nano=time.time_ns())
        app = build_otlp_app(ingestor, telemetry, ReceiverSettings())
        if bare:
            bare_count = [0]

            async def handler(request: web.Request) -> web.Response:
                body = await request.read()
                bare_count[0] += SPANS_PER_REQUEST if body else 0
                return web.Response(body=b"", content_type="application/x-protobuf")

            app = web.Application(client_max_size=ReceiverSettings().max_body_bytes + 1)
            app.router.add_post("/v1/traces", handler)
        options = {} if bare else OTLP_RUNNER_OPTIONS
        runner = web.AppRunner(app, access_log=None, handle_signals=False, **options)  # as the service
        await runner.setup()
        gc_policy.tune()  # as adapter.service.serve does once listening
        site = web.TCPSite(runner, "127.0.0.1", 0, reuse_address=True, backlog=1024)
        await site.start()
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        stop = asyncio.Event()
        asyncio.get_running_loop().add_reader(conn.fileno(), stop.set)
        conn.send(port)
        await stop.wait()
        conn.recv()
        accepted = telemetry.registry.get_sample_value(
            "latency_adapter_otlp_items_total", {"signal": "traces", "outcome": "accepted"}) or 0.0
        if bare:
            accepted = float(bare_count[0])
        await runner.cleanup()
        conn.send({"accepted": accepted, "series": len(store)})

    asyncio.run(main())


@dataclass
class E2E:
    requests: int
    errors: int
    wall: float
    server_cpu: float
    client_cpu: float
    accepted_total: float
    sent_total: int

    @property
    def spans(self) -> int:
        return self.requests * SPANS_PER_REQUEST

    @property
    def per_wall(self) -> float:
        return self.spans / self.wall

    @property
    def per_server_cpu(self) -> float:
        return self.spans / self.server_cpu if self.server_cpu > 0 else math.nan


def _client_main(cpu: int, port: int, server_pid: int, bodies: list[bytes], conn: Connection) -> None:
    """Child process: keep-alive aiohttp clients posting pre-serialized bodies; measures the window."""
    _pin(cpu)
    import aiohttp

    async def main() -> dict[str, float]:
        url = f"http://127.0.0.1:{port}/v1/traces"
        headers = {"Content-Type": "application/x-protobuf"}
        done = [0, 0]  # requests completed, non-200 answers
        stop = False

        async def worker(session: aiohttp.ClientSession, k: int) -> None:
            i = k
            while not stop:
                async with session.post(url, data=bodies[i % len(bodies)], headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        done[1] += 1
                done[0] += 1
                i += 1

        connector = aiohttp.TCPConnector(limit=E2E_CONNECTIONS)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(worker(session, k)) for k in range(E2E_CONNECTIONS)]
            await asyncio.sleep(E2E_WARMUP)
            r0, e0 = done
            s0, c0, w0 = proc_cpu_seconds(server_pid), time.process_time(), time.perf_counter()
            await asyncio.sleep(E2E_SECONDS)
            r1, e1 = done
            s1, c1, w1 = proc_cpu_seconds(server_pid), time.process_time(), time.perf_counter()
            stop = True
            await asyncio.gather(*tasks, return_exceptions=True)
            sent = done[0]
        return {"requests": r1 - r0, "errors": e1 - e0, "wall": w1 - w0, "server_cpu": s1 - s0,
                "client_cpu": c1 - c0, "sent_total": sent}

    conn.send(asyncio.run(main()))
    conn.close()


def run_e2e(bodies: list[bytes], bare: bool = False) -> E2E:
    ctx = mp.get_context("spawn")
    server_cpu, client_cpu = cpus()
    s_parent, s_child = ctx.Pipe()
    server = ctx.Process(target=_server_main, args=(server_cpu, s_child, bare),
                         name="bench-otlp-server")
    server.start()
    client = None
    try:
        if not s_parent.poll(60):
            raise RuntimeError("the OTLP server did not start within 60 s")
        port = s_parent.recv()
        assert server.pid is not None
        c_parent, c_child = ctx.Pipe()
        client = ctx.Process(target=_client_main, args=(client_cpu, port, server.pid, bodies, c_child),
                             name="bench-otlp-client")
        client.start()
        if not c_parent.poll(60 + E2E_WARMUP + E2E_SECONDS):
            raise RuntimeError("the load client did not report")
        m = c_parent.recv()
        client.join(30)
        s_parent.send("stop")
        stats = s_parent.recv() if s_parent.poll(30) else {"accepted": math.nan}
        server.join(30)
        return E2E(int(m["requests"]), int(m["errors"]), m["wall"], m["server_cpu"], m["client_cpu"],
                   float(stats["accepted"]), int(m["sent_total"]) * SPANS_PER_REQUEST)
    finally:
        for p in (client, server):
            if p is not None and p.is_alive():
                p.terminate()
                p.join(5)


def run_stages(shapes: dict[str, list[bytes]]) -> tuple[list[str], Best]:
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_stages_main, args=(cpus()[0], shapes, child), name="bench-ingest-stages")
    p.start()
    try:
        if not parent.poll(300):
            raise RuntimeError("stage measurements did not report")
        stages, best = parent.recv()
        p.join(30)
        return stages, best
    finally:
        if p.is_alive():
            p.terminate()
            p.join(5)


# -- profile ------------------------------------------------------------------------------------------


def profile_ingestor(bodies: list[bytes]) -> None:
    ingest = _ingestor()
    for b in bodies:
        ingest(b)
    profiler = cProfile.Profile()
    spans = 0
    t0 = time.process_time()
    profiler.enable()
    i = 0
    while time.process_time() - t0 < PROFILE_SECONDS:
        spans += ingest(bodies[i % len(bodies)])
        i += 1
    profiler.disable()
    stats = pstats.Stats(profiler)
    entries: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = max(v[3] for v in entries.values())

    def name(func: tuple[str, int, str]) -> str:
        filename, line, fn = func
        if filename == "~":
            return fn
        parts = filename.replace(os.sep, "/").split("/")
        short = "/".join(parts[-2:]) if "adapter" in parts or "benchmarks" in parts else parts[-1]
        return f"{short}:{line} {fn}"

    def top(index: int) -> list[list[str]]:
        ordered = sorted(entries.items(), key=lambda kv: kv[1][index], reverse=True)[:10]
        return [[name(func), f"{v[1]:,}", f"{v[2]:.3f}", f"{v[3]:.3f}", f"{v[3] / total * 100:.0f} %",
                 f"{v[index] / spans * 1e9:.0f}"] for func, v in ordered]

    head = ["function", "calls", "tottime s", "cumtime s", "cum %", "ns/span"]
    print_table(f"cProfile of (c), realistic spans, {spans:,} spans in {PROFILE_SECONDS} s CPU "
                "(profiler overhead inflates times): top 10 by cumulative time (ns/span = cumtime/span)",
                head, top(3))
    print_table("  ... and top 10 by own time (ns/span = tottime/span)", head, top(2))


# -- run ----------------------------------------------------------------------------------------------


def run() -> list[Row]:
    shapes = {"realistic": make_bodies(minimal=False), "minimal": make_bodies(minimal=True)}
    sizes = {k: sum(len(b) for b in v) / len(v) / 1024 for k, v in shapes.items()}
    server_cpu, client_cpu = cpus()
    print(f"\nOTLP ingest: bodies of {SPANS_PER_REQUEST} SERVER spans, {len(WORKLOADS)} workloads x "
          f"{len(ROUTES)} routes; realistic {sizes['realistic']:.1f} KiB/body, minimal "
          f"{sizes['minimal']:.1f} KiB/body; server/stages pinned to CPU {server_cpu}, client to CPU "
          f"{client_cpu}{' (only one CPU available: client shares it!)' if server_cpu == client_cpu else ''}")
    stages, best = run_stages(shapes)
    e2e = {shape: run_e2e(bodies) for shape, bodies in shapes.items()}
    bare = run_e2e(shapes["realistic"], bare=True)

    rows = []
    for shape in shapes:
        prev = 0.0
        for stage in stages:
            per_cpu, per_wall = best[(stage, shape)]
            ns = 1e9 / per_cpu
            delta = f"+{ns - prev:,.0f}" if prev and not stage.startswith("a2") else ""
            rows.append([stage, shape, rate(per_wall), rate(per_cpu), f"{ns:,.0f}", delta, "", ""])
            if not stage.startswith("a2"):
                prev = ns
        runs = [("d. end to end HTTP", e2e[shape])]
        if shape == "realistic":
            runs.append(("e. HTTP only: bare aiohttp handler", bare))
        for stage, m in runs:
            ns = 1e9 / m.per_server_cpu
            rows.append([stage, shape, rate(m.per_wall), rate(m.per_server_cpu), f"{ns:,.0f}",
                         f"+{ns - prev:,.0f}" if stage.startswith("d") else "",
                         f"{m.server_cpu / m.wall * 100:.0f} %", f"{m.client_cpu / m.wall * 100:.0f} %"])
    print_table(
        "throughput, spans/s (a-c: best of "
        f"{STAGE_ROUNDS} rounds of {STAGE_SECONDS} s CPU; d: {E2E_CONNECTIONS} keep-alive connections, "
        f"{E2E_SECONDS:.0f} s after {E2E_WARMUP:.0f} s warm-up)",
        ["stage", "spans", "spans/s wall", "spans/CPU-s", "ns/span", "vs prev", "server CPU", "client CPU"],
        rows,
    )
    for shape, m in [*e2e.items(), ("bare HTTP", bare)]:
        ok = m.errors == 0 and abs(m.accepted_total - m.sent_total) <= SPANS_PER_REQUEST * E2E_CONNECTIONS
        print(f"  e2e {shape}: {m.requests:,} requests in {m.wall:.2f} s ({m.requests / m.wall:,.0f} req/s), "
              f"{m.errors} non-200; server accepted {m.accepted_total:,.0f} of {m.sent_total:,} spans sent"
              f"{'' if ok else '  <-- MISMATCH'}")
        if m.server_cpu / m.wall < 0.9:
            print(f"    server CPU {m.server_cpu / m.wall * 100:.0f} % busy: the wall figure is bound by the "
                  "client or by other load on the machine; spans/CPU-s is the comparable figure")
    real = e2e["realistic"]
    met = real.per_wall >= GOAL
    print(f"  goal >= {GOAL:,} spans/s end to end on one core: {'met' if met else 'NOT met'} "
          f"(realistic spans: {rate(real.per_wall)} spans/s wall, {rate(real.per_server_cpu)} per server "
          f"CPU-second = {real.per_server_cpu / GOAL * 100:.0f} % of goal)")

    profile_ingestor(shapes["realistic"])

    decode = best[(STAGE_DECODE, "realistic")][0]
    alone = best[(STAGE_INGESTOR, "realistic")][0]
    return [Row("ingest: e2e spans/s, one core",
                f"{rate(real.per_wall)} wall, {rate(real.per_server_cpu)}/CPU-s",
                f"decode {rate(decode)}, ingestor {rate(alone)}/CPU-s", f">= {GOAL:,}", met)]


if __name__ == "__main__":
    run()
