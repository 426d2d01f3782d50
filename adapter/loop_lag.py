"""How late the event loop runs what is ready: the wait every API request adds to its own work.

One event loop serves the API, ingests OTLP and runs the per-slice work. A request's handler may be fast
and the request still slow, because it waited for the loop behind other work; the handler's duration
(``latency_adapter_api_request_duration_seconds``) cannot show that wait. A probe that asks to be woken
every :data:`PROBE_SECONDS` and measures how late it was woken can, and it costs twenty wake-ups a
second. Exported as ``latency_adapter_event_loop_lag_seconds`` (a histogram): a p99 of a few
milliseconds means the loop keeps up; tens of milliseconds means requests queue behind other work
(too much ingest for one core, or a long block of work somewhere).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Histogram

#: How often the probe asks to be woken.
PROBE_SECONDS = 0.05
#: Upper bounds (seconds) of the lag histogram: from a loop that keeps up to one that stalls.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
NAME = "latency_adapter_event_loop_lag_seconds"


def lag_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(NAME, "How late the event loop ran a callback that was due: the wait for the loop "
                           "that every request adds to its own handling time.",
                     buckets=LAG_BUCKETS, registry=registry)


async def probe(observe: Callable[[float], None], interval: float = PROBE_SECONDS,
                clock: Callable[[], float] = time.monotonic) -> None:
    """Observe each wake-up's lateness until cancelled."""
    while True:
        due = clock() + interval
        await asyncio.sleep(interval)
        observe(max(0.0, clock() - due))
