"""SIGTERM during steady ingest, as the kubelet sends it: nothing answered 200 is lost, the process leaves in
time, and its last log line says what it applied.

Four client threads send OTLP batches of varying size without pause. A fifth request is held open
across the signal (its body arrives afterwards): it was accepted before SIGTERM, so it must be applied
and answered 200. After SIGTERM: ``/readyz`` says 503 at once, new OTLP requests get 503 with
``Retry-After`` while the API still answers (``server.shutdown_delay_seconds``), and the process exits 0
well within ``server.shutdown_timeout_seconds``. The spans of every 200 add up to ``spans_accepted``.
"""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time
from typing import Any

from tests.helpers_otlp import spans_of, trace_request
from tests.integration.process import exchange, wait_for

DELAY = 2.0
BOUND = 8.0
CONFIG: dict[str, Any] = {
    "store": {"window_seconds": 30, "slice_seconds": 1},
    "server": {"shutdown_timeout_seconds": BOUND, "shutdown_delay_seconds": DELAY},
    "limits": {"body_timeout_seconds": 10},
}
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def batch(n: int, workload: str) -> bytes:
    request = trace_request([({"k8s.namespace.name": "drain", "k8s.deployment.name": workload},
                              spans_of([0.01 * (1 + i % 7) for i in range(n)], start_ns=time.time_ns()))])
    return request.SerializeToString()


class Sender(threading.Thread):
    """Sends batches until the adapter stops answering; counts the spans of every 200."""

    def __init__(self, port: int, seed: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.seed = seed
        self.accepted = 0
        self.statuses: dict[int, int] = {}
        self.retry_after: set[str] = set()

    def run(self) -> None:
        i = 0
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        while True:
            n = 20 + (self.seed * 37 + i * 11) % 200
            i += 1
            try:
                resp = exchange(conn, "/v1/traces", PROTOBUF, method="POST", body=batch(n, f"w{self.seed}"))
            except (OSError, http.client.HTTPException):
                conn.close()
                try:  # a new connection: refused once the listener is closed
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                    conn.connect()
                except OSError:
                    return
                continue
            self.statuses[resp.status] = self.statuses.get(resp.status, 0) + 1
            if resp.status == 200:
                self.accepted += n
            elif resp.status == 503:
                self.retry_after.add(resp.headers.get("retry-after", ""))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                time.sleep(0.05)


def test_sigterm_during_steady_ingest_applies_everything_answered(adapter_factory: Any) -> None:
    proc = adapter_factory("drain", CONFIG)
    senders = [Sender(proc.otlp_port, seed) for seed in range(4)]
    for s in senders:
        s.start()
    wait_for(lambda: sum(s.accepted for s in senders) > 5000, 20, "steady ingest")
    exposed = proc.ops("/metrics").text
    for generation in "012":  # the serving process observes the collector's pauses (gc_policy)
        assert f'latency_adapter_gc_pause_seconds_count{{generation="{generation}"}}' in exposed

    held_spans = 150
    held_body = batch(held_spans, "held")
    held = socket.create_connection(("127.0.0.1", proc.otlp_port), timeout=10)
    held.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-protobuf\r\n"
                 + f"Content-Length: {len(held_body)}\r\n\r\n".encode() + held_body[:10])
    time.sleep(0.2)  # accepted and waiting for the rest of its body

    assert proc.proc is not None
    signalled = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: proc.ops("/readyz").status == 503, 1.0, "readiness to go false at once")
    refused = proc.otlp("/v1/traces", batch(5, "late"), PROTOBUF)
    assert refused.status == 503 and refused.headers.get("retry-after") == "1", refused
    assert time.monotonic() - signalled < DELAY
    api = proc.api(proc.metric_path("drain", "request_rate", "workload=w0"))
    assert api.status == 200, api  # the API keeps serving during the delay

    held.sendall(held_body[10:])  # the held request completes after the signal: applied, 200
    answer = held.recv(4096)
    held.close()
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]

    proc.proc.wait(timeout=BOUND + 5)
    elapsed = time.monotonic() - signalled
    for s in senders:
        s.join(timeout=10)
    assert proc.proc.returncode == 0, proc.stderr_tail()
    assert elapsed < BOUND, elapsed
    assert all(s.statuses.get(503, 0) > 0 and s.retry_after == {"1"} for s in senders), \
        [(s.statuses, s.retry_after) for s in senders]
    assert all(set(s.statuses) <= {200, 503} for s in senders), [s.statuses for s in senders]

    events = proc.log_events()
    last = events[-1]
    assert last["event"] == "shutdown", last
    sent_ok = sum(s.accepted for s in senders) + held_spans
    assert last["spans_accepted"] == sent_ok, (last, sent_ok)
    assert last["points_accepted"] == 0 and last["clean"] is True
    assert DELAY <= last["seconds"] < BOUND, last
