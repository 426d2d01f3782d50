"""External metrics API throughput with TLS and authentication on, beside a bare aiohttp TLS handler.

Setup: the real service (``latency-adapter serve`` in secure mode) in its own process pinned to CPU 0,
authenticating a bearer token through a cached TokenReview and authorising with a cached
SubjectAccessReview, both answered by the fake API server of the tests (in this process, CPU 1). Load:
``wrk -t1 -c32`` (keep-alive, 32 connections) pinned to CPU 1 asking for one value. Baseline, same run:
a bare aiohttp handler on the same TLS certificate returning the same bytes.

``wrk`` cannot present client certificates, so the certificate path is measured differently: an asyncio
client with a client-CA certificate makes requests over 32 connections and the figure is the adapter's
CPU time per request, read from ``/proc``.

Goals (issue 5): >= 10,000 requests/s with p99 < 5 ms, and >= 50 % of the bare handler's rate; the
certificate path <= 100 us of adapter CPU per request.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

import trustme

from adapter.kube import UserInfo
from tests.fakes.kube_api import FakeKubeAPI, allow_users

from . import Row, print_table
from .ingest import proc_cpu_seconds

SECONDS = 8
CONNECTIONS = 32
TOKEN = "bench-token"
GOAL_RPS = 10_000
GOAL_P99_MS = 5.0
GOAL_SHARE = 0.5
GOAL_CERT_US = 100.0
PATH = ("/apis/external.metrics.k8s.io/v1beta1/namespaces/bench/latency_p95_seconds"
        "?labelSelector=workload%3Dapi")

BARE_SERVER = textwrap.dedent("""
    import asyncio, os, ssl, sys
    from aiohttp import web
    os.sched_setaffinity(0, {0})
    body = open(sys.argv[1], "rb").read()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(sys.argv[2], sys.argv[3])
    async def handler(request):
        return web.Response(body=body, content_type="application/json")
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    async def main():
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx, backlog=1024)
        await site.start()
        print(site._server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()
    asyncio.run(main())
""")


def _wrk(url: str) -> tuple[float, float]:
    """(requests/s, p99 ms) from one wrk run on CPU 1."""
    out = subprocess.run(
        ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{SECONDS}s", "--latency",
         "-H", f"Authorization: Bearer {TOKEN}", url],
        capture_output=True, text=True, timeout=SECONDS + 30, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    match = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    assert match is not None, out
    p99 = float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if non2xx:
        raise RuntimeError(f"wrk saw {non2xx.group(1)} error responses:\n{out}")
    return rps, p99


def _start_adapter(tmp: Path, fake: FakeKubeAPI, server: trustme.LeafCert, client_ca: trustme.CA) -> tuple[
        subprocess.Popen[str], dict[str, int]]:
    (tmp / "server.crt").write_bytes(b"".join(b.bytes() for b in server.cert_chain_pems))
    (tmp / "server.key").write_bytes(server.private_key_pem.bytes())
    client_ca.cert_pem.write_to_path(str(tmp / "client-ca.crt"))
    kubeconfig = fake.kubeconfig(tmp / "kubeconfig")
    (tmp / "config.yaml").write_text("store: {window_seconds: 60, slice_seconds: 5}\nlog_level: warning\n")
    exe = shutil.which("latency-adapter", path=str(Path(sys.executable).parent)) or "latency-adapter"
    log = open(tmp / "adapter.log", "w+")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        ["taskset", "-c", "0", exe, "serve", "--config", str(tmp / "config.yaml"), "--bind", "127.0.0.1",
         "--api-port", "0", "--otlp-port", "0", "--telemetry-port", "0", "--cert-dir", str(tmp / "certs"),
         "--tls-cert-file", str(tmp / "server.crt"), "--tls-private-key-file", str(tmp / "server.key"),
         "--client-ca-file", str(tmp / "client-ca.crt"), "--authentication-kubeconfig", str(kubeconfig),
         "--authorization-kubeconfig", str(kubeconfig), "--log-level", "info"],
        stdout=subprocess.DEVNULL, stderr=log, text=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log.seek(0)
        for line in log:
            if '"event": "listening"' in line:
                doc = json.loads(line)
                return proc, {k: int(doc[k]) for k in ("api_port", "otlp_port", "telemetry_port")}
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    log.seek(0)
    raise RuntimeError("adapter did not start:\n" + log.read()[-3000:])


def _send_spans(otlp_port: int) -> None:
    from tests.helpers_otlp import spans_of, trace_request

    request = trace_request([({"k8s.namespace.name": "bench", "k8s.deployment.name": "api"},
                              spans_of([0.05 + 0.001 * i for i in range(200)]))])
    req = urllib.request.Request(f"http://127.0.0.1:{otlp_port}/v1/traces", data=request.SerializeToString(),
                                 headers={"Content-Type": "application/x-protobuf"})
    urllib.request.urlopen(req, timeout=10).read()


def _get(url: str, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _cert_path(url: str, ctx: ssl.SSLContext, pid: int, requests: int = 20_000) -> float:
    """Adapter CPU microseconds per request for clients authenticated by a client certificate."""
    import aiohttp

    connector = aiohttp.TCPConnector(ssl=ctx, limit=CONNECTIONS)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def one() -> None:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"certificate path got {resp.status}")

        await asyncio.gather(*(one() for _ in range(CONNECTIONS)))  # connect and warm the caches
        before = proc_cpu_seconds(pid)
        per_worker = requests // CONNECTIONS

        async def worker() -> None:
            for _ in range(per_worker):
                await one()

        await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
        used = proc_cpu_seconds(pid) - before
    return used / (per_worker * CONNECTIONS) * 1e6


def run() -> list[Row]:
    if shutil.which("wrk") is None or shutil.which("taskset") is None:
        print("  api: wrk or taskset is not installed (make bench installs wrk when root); skipped")
        return [Row("api: req/s with TLS + auth", "not measured (no wrk)", "", f">= {GOAL_RPS:,}", None)]
    os.sched_setaffinity(0, {1})
    server_ca, client_ca = trustme.CA(), trustme.CA()
    server = server_ca.issue_cert("127.0.0.1", "localhost")
    client = client_ca.issue_cert("bench-client@example.com", common_name="bench-client")
    users = {TOKEN: UserInfo("bench", groups=("system:authenticated",))}
    with tempfile.TemporaryDirectory() as tmpdir, \
            FakeKubeAPI(tokens=users, policy=allow_users("bench", "bench-client")).start_in_thread() as fake:
        tmp = Path(tmpdir)
        proc, ports = _start_adapter(tmp, fake, server, client_ca)
        bare = None
        try:
            _send_spans(ports["otlp_port"])
            ctx = ssl.create_default_context()
            server_ca.configure_trust(ctx)
            url = f"https://127.0.0.1:{ports['api_port']}{PATH}"
            deadline = time.monotonic() + 30
            status, body = _get(url, ctx)
            while status != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
                status, body = _get(url, ctx)
            if status != 200:
                raise RuntimeError(f"no value from the adapter: {status} {body[:300]!r}")
            adapter_rps, adapter_p99 = _wrk(url)
            (tmp / "body.json").write_bytes(body)
            bare = subprocess.Popen([sys.executable, "-c", BARE_SERVER, str(tmp / "body.json"),
                                     str(tmp / "server.crt"), str(tmp / "server.key")],
                                    stdout=subprocess.PIPE, text=True)
            assert bare.stdout is not None
            bare_port = int(bare.stdout.readline())
            bare_rps, bare_p99 = _wrk(f"https://127.0.0.1:{bare_port}{PATH}")
            cert_ctx = ssl.create_default_context()
            server_ca.configure_trust(cert_ctx)
            client.configure_cert(cert_ctx)
            cert_us = asyncio.run(_cert_path(url, cert_ctx, proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if bare is not None:
                bare.kill()
                bare.wait()
    share = adapter_rps / bare_rps
    met = adapter_rps >= GOAL_RPS and adapter_p99 < GOAL_P99_MS and share >= GOAL_SHARE
    print_table(
        f"external metrics API, wrk -t1 -c{CONNECTIONS} {SECONDS}s keep-alive; server on CPU 0, wrk on CPU 1",
        ["server", "requests/s", "p99 ms", "vs bare", "goal"],
        [["adapter: TLS + bearer token (cached TokenReview + SAR)", f"{adapter_rps:,.0f}",
          f"{adapter_p99:.2f}", f"{share:.0%}", f">= {GOAL_RPS:,}/s, p99 < {GOAL_P99_MS:g} ms, >= 50 %"],
         ["baseline: bare aiohttp TLS handler, same bytes", f"{bare_rps:,.0f}", f"{bare_p99:.2f}", "100%",
          ""]],
    )
    print(f"  certificate path (client-CA certificate, asyncio client, {CONNECTIONS} connections): "
          f"{cert_us:.0f} us of adapter CPU per request (goal <= {GOAL_CERT_US:g} us)")
    return [
        Row("api: req/s, TLS + token auth", f"{adapter_rps:,.0f}/s, p99 {adapter_p99:.2f} ms ({share:.0%})",
            f"bare TLS {bare_rps:,.0f}/s, p99 {bare_p99:.2f} ms", ">= 10,000, p99 < 5 ms, >= 50 %", met),
        Row("api: CPU per request, cert auth", f"{cert_us:.0f} us", "", "<= 100 us", cert_us <= GOAL_CERT_US),
    ]


if __name__ == "__main__":
    run()
