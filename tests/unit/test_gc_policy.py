"""The collector schedule while serving: young collections only, a periodic full one, pauses observed."""

from __future__ import annotations

import asyncio
import gc
import itertools
import weakref
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from adapter import gc_policy


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    callbacks = list(gc.callbacks)
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    gc.callbacks[:] = callbacks


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def _cycle_in_an_older_generation() -> weakref.ref[_Node]:
    """A reference cycle that outlived a young collection and became garbage after it."""
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    gc.collect(0)  # still referenced: moves on to the next generation
    del a, b
    return ref


def test_tune_keeps_young_collections_only(restore_gc: None) -> None:
    gc_policy.tune(young_threshold=1234)
    assert gc.get_threshold() == (1234, gc_policy.NEVER, gc_policy.NEVER)
    assert gc.get_freeze_count() > 0  # start-up's objects are never scanned again
    ref = _cycle_in_an_older_generation()
    for _ in range(3):
        gc.collect(0)
    assert ref() is not None, "a young collection must not scan older objects"


def test_periodic_full_collection_frees_older_cycles(restore_gc: None) -> None:
    gc_policy.tune()
    ref = _cycle_in_an_older_generation()

    async def run() -> None:
        task = asyncio.create_task(gc_policy.collect_periodically(every=0.01))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if ref() is None:
                break
        task.cancel()

    asyncio.run(run())
    assert ref() is None


def test_pauses_are_observed_by_generation_while_installed(restore_gc: None) -> None:
    registry = CollectorRegistry()
    ticks = itertools.count()
    observer = gc_policy.PauseObserver(gc_policy.pause_histogram(registry),
                                       clock=lambda: next(ticks) * 0.003)  # each pause: 3 ms

    def count(generation: str) -> float:
        return registry.get_sample_value(f"{gc_policy.NAME}_count", {"generation": generation}) or 0.0

    observer.install()
    observer.install()  # idempotent: one observation per collection
    gc.collect(0)
    gc.collect()
    assert count("0") == 1 and count("2") == 1
    assert registry.get_sample_value(f"{gc_policy.NAME}_sum", {"generation": "2"}) == pytest.approx(0.003)
    assert registry.get_sample_value(f"{gc_policy.NAME}_bucket",
                                     {"generation": "0", "le": "0.0025"}) == 0.0
    assert registry.get_sample_value(f"{gc_policy.NAME}_bucket",
                                     {"generation": "0", "le": "0.005"}) == 1.0
    observer.remove()
    gc.collect()
    assert count("2") == 1
