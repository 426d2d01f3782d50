"""The event-loop lag probe (adapter.loop_lag): a block of work on the loop shows as the lateness of the
probe's next wake-up, and a free loop shows none to speak of."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CollectorRegistry

from adapter.loop_lag import NAME, lag_histogram, probe


async def test_a_block_on_the_loop_is_observed_as_lag() -> None:
    seen: list[float] = []
    task = asyncio.create_task(probe(seen.append, interval=0.01))
    try:
        await asyncio.sleep(0.1)
        free = list(seen)
        time.sleep(0.12)  # what a long piece of work on the loop does to everyone else
        await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert free and max(free) < 0.05, free  # generous: a busy test machine, but no 120 ms block
    assert max(seen) >= 0.1, seen


def test_the_histogram_is_exported_with_its_buckets() -> None:
    registry = CollectorRegistry()
    histogram = lag_histogram(registry)
    histogram.observe(0.03)
    assert registry.get_sample_value(f"{NAME}_count") == 1.0
    assert registry.get_sample_value(f"{NAME}_bucket", {"le": "0.02"}) == 0.0
    assert registry.get_sample_value(f"{NAME}_bucket", {"le": "0.05"}) == 1.0
