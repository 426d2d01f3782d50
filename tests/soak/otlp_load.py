"""The OTLP half of the soak: one process posting span batches at a fixed rate, open loop.

Why open loop: a closed loop (send, wait, send) slows down when the adapter does, so a struggling
adapter would be fed less and look healthy. Here request *n* is due at ``n / rate`` seconds after the
start whatever happened before; a request that cannot go out on time (every connection busy) goes out
as soon as one frees, and the shortfall shows as fewer spans accepted in that minute.

Why pre-encoded bodies: encoding 512 spans in Python costs about 15 ms, so a generator encoding on the
fly could not reach 200,000 spans/s on the one core it shares with ``wrk``. The bodies are
:func:`tests.benchmarks.ingest.make_body` (realistic attributes, lognormal latencies, 1 % errors), two
per workload, made once; before every send the 16-byte trace ids are overwritten in place with random
bytes, so every span carries a trace id never seen before (the exemplar candidates never repeat), at
about 50 us a body.

CPU readings for every workload (``k8s.pod.cpu.usage`` and ``k8s.container.cpu.request`` of two pods
each, point time 0 = the adapter's ingest clock) go out every :data:`CPU_EVERY_SECONDS`, as a
kubeletstats receiver would send them, so ``dual_signal_ratio`` is computed from both signals.

The counters are a shared array the driver reads at the minute boundaries (one writer, no lock).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Sequence
from multiprocessing.synchronize import Event
from typing import Any

import numpy as np

#: Slots of the shared counter array.
SENT, OK, ACCEPTED, REJECTED, HTTP_ERRORS, THROTTLED, CONN_ERRORS, LAST_STATUS, READY, CPU_OK, CPU_ERRORS = \
    range(11)
COUNTERS = 11
CONNECTIONS = 16  # below the adapter's limits.otlp_high_water_requests (32): no 429 by design
BODIES_PER_WORKLOAD = 2
CPU_EVERY_SECONDS = 10.0
PODS_PER_WORKLOAD = 2
TICK_SECONDS = 0.002
TIMEOUT_SECONDS = 10.0


class Body:
    """A serialized ``ExportTraceServiceRequest`` whose trace ids are rewritten before each send."""

    def __init__(self, encoded: bytes) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        request = ExportTraceServiceRequest()
        request.ParseFromString(encoded)
        offsets = []
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    at = encoded.find(span.trace_id)
                    # field 1 (trace_id), wire type 2, length 16: the bytes must be that field's value
                    assert at >= 2 and encoded[at - 2:at] == b"\x0a\x10", "trace id not found in the body"
                    offsets.append(at)
        self.spans = len(offsets)
        self.buffer = bytearray(encoded)
        self.view = np.frombuffer(self.buffer, dtype=np.uint8)
        self.index = (np.asarray(offsets)[:, None] + np.arange(16)).ravel()

    def fresh(self, rng: np.random.Generator) -> bytes:
        self.view[self.index] = rng.integers(0, 256, self.index.size, dtype=np.uint8)
        return bytes(self.buffer)


def cpu_body(namespace: str, workloads: Sequence[str]) -> bytes:
    """Pod CPU usage and requests for every workload, with time 0 so one encoding serves the whole run."""
    from tests.helpers_otlp import gauge_metric, metrics_request_of, number_point

    rng = np.random.default_rng(7)
    resources = []
    for workload in workloads:
        for pod in range(PODS_PER_WORKLOAD):
            attrs = {"k8s.namespace.name": namespace, "k8s.deployment.name": workload,
                     "k8s.pod.name": f"{workload}-7d9f8c6b5-{pod:05d}"}
            resources.append((attrs, [
                gauge_metric("k8s.pod.cpu.usage", "{cpu}", [number_point(float(rng.uniform(0.2, 0.5)), 0)]),
                gauge_metric("k8s.container.cpu.request", "{cpu}",
                             [number_point(0.5, 0, {"k8s.container.name": "app"})]),
            ]))
    return bytes(metrics_request_of(resources).SerializeToString())


def sender_main(port: int, spans_per_second: float, namespace: str, workloads: Sequence[str], cpu: int,
                counters: Any, stop: Event) -> None:
    """Child process: make the bodies, set ``READY``, then post at ``spans_per_second`` until ``stop``."""
    os.sched_setaffinity(0, {cpu})
    from tests.benchmarks.ingest import make_body

    assert namespace == "shop", "make_body writes namespace shop"
    bodies = [Body(make_body(w, False, seed=1000 * k + i)) for k in range(BODIES_PER_WORKLOAD)
              for i, w in enumerate(workloads)]
    cpu_payload = cpu_body(namespace, workloads)
    counters[READY] = 1
    asyncio.run(_send(port, spans_per_second / bodies[0].spans, bodies, cpu_payload, counters, stop))


async def _send(port: int, requests_per_second: float, bodies: list[Body], cpu_payload: bytes,
                counters: Any, stop: Event) -> None:
    import aiohttp
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    url = f"http://127.0.0.1:{port}"
    headers = {"Content-Type": "application/x-protobuf"}
    rng = np.random.default_rng(int(time.time()))
    tasks: set[asyncio.Task[None]] = set()

    async def post(body: bytes, spans: int) -> None:
        try:
            async with session.post(url + "/v1/traces", data=body, headers=headers) as resp:
                payload = await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            counters[CONN_ERRORS] += 1
            return
        if resp.status == 200:
            rejected = 0
            if payload:  # an empty answer is full success; otherwise partial_success says what was dropped
                answer = ExportTraceServiceResponse()
                answer.ParseFromString(payload)
                rejected = answer.partial_success.rejected_spans
            counters[OK] += 1
            counters[ACCEPTED] += spans - rejected
            counters[REJECTED] += rejected
        else:
            counters[THROTTLED if resp.status == 429 else HTTP_ERRORS] += 1
            counters[LAST_STATUS] = resp.status

    async def post_cpu() -> None:
        while True:
            try:
                async with session.post(url + "/v1/metrics", data=cpu_payload, headers=headers) as resp:
                    await resp.read()
                    counters[CPU_OK if resp.status == 200 else CPU_ERRORS] += 1
            except (TimeoutError, aiohttp.ClientError):
                counters[CPU_ERRORS] += 1
            await asyncio.sleep(CPU_EVERY_SECONDS)

    connector = aiohttp.TCPConnector(limit=CONNECTIONS + 1)
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        cpu_task = asyncio.create_task(post_cpu())
        pool = itertools.cycle(bodies)
        loop = asyncio.get_running_loop()
        start, sent = loop.time(), 0
        while not stop.is_set():
            due = int((loop.time() - start) * requests_per_second) + 1
            while sent < due and len(tasks) < CONNECTIONS:
                body = next(pool)
                task = asyncio.create_task(post(body.fresh(rng), body.spans))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                sent += 1
                counters[SENT] = sent
            await asyncio.sleep(TICK_SECONDS)
        cpu_task.cancel()
        await asyncio.gather(cpu_task, *tasks, return_exceptions=True)
