"""The limits' building blocks: memory budget, open files, parser-error accounting, pacing, and the API's
concurrency cap (with a guard that waits, as a slow access review does)."""

from __future__ import annotations

import asyncio
import logging
import resource
from pathlib import Path
from typing import Any

import pytest
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.test_utils import TestClient, TestServer

from adapter.api.connections import HttpErrorLog
from adapter.api.routes import build_api_app
from adapter.limits import (
    CGROUP_BUDGET_SHARE,
    DEFAULT_MEMORY_BUDGET,
    LIMITS,
    LimitHits,
    LimitSettings,
    MemoryWatch,
    cgroup_memory_limit,
    memory_budget,
    raise_open_file_limit,
    resident_bytes,
)
from adapter.pacing import Pacer
from adapter.provider import MetricsProvider
from adapter.store import WindowStore
from adapter.telemetry import Telemetry
from tests.clock import FakeClock


def test_cgroup_v2_and_v1_limits_are_read(tmp_path: Path) -> None:
    (tmp_path / "memory.max").write_text("536870912\n")
    assert cgroup_memory_limit(tmp_path) == 512 << 20
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    assert cgroup_memory_limit(v1) is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("268435456\n")
    assert cgroup_memory_limit(v1) == 256 << 20
    assert cgroup_memory_limit(tmp_path / "absent") is None


def test_memory_budget_prefers_the_configured_value_then_the_container_limit() -> None:
    assert memory_budget(300 << 20, 512 << 20) == 300 << 20
    assert memory_budget(0, 512 << 20) == int((512 << 20) * CGROUP_BUDGET_SHARE)
    assert memory_budget(0, None) == DEFAULT_MEMORY_BUDGET


def test_memory_watch_reads_rss_at_most_every_half_second() -> None:
    clock = FakeClock(100.0)
    readings = iter([10, 30, 5])
    calls: list[int] = []

    def rss() -> int:
        calls.append(1)
        return next(readings)

    watch = MemoryWatch(20, rss=rss, clock=clock)
    assert not watch.over_budget()
    clock.advance(0.1)
    assert not watch.over_budget() and len(calls) == 1  # the same reading
    clock.advance(0.5)
    assert watch.over_budget() and watch.last_rss == 30
    assert resident_bytes() > 1 << 20  # this process, from /proc


def test_limit_hits_know_every_limit_and_refuse_a_typo() -> None:
    hits = LimitHits()
    hits.hit("memory", 3)
    assert hits.counts["memory"] == 3 and set(hits.counts) == set(LIMITS)
    with pytest.raises(KeyError):
        hits.hit("memroy")


def test_open_file_limit_is_raised_to_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        if soft == hard and hard > 256:
            resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        before, after, reported_hard = raise_open_file_limit()
        assert reported_hard == hard
        assert after == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert after == hard or hard == resource.RLIM_INFINITY
        assert before <= after
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]),
                                                    hard))


def test_parser_errors_are_counted_and_logged_briefly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    clock = FakeClock(0.0)
    hits = LimitHits()
    logger = HttpErrorLog("otlp", hits, clock=clock)
    secret = "Bearer s3cr3t-t0ken-value"
    for _ in range(5):
        logger.exception("Error handling request", exc_info=LineTooLong(secret, "8190"))
    logger.exception("Error handling request", exc_info=BadHttpMessage(f"Invalid header {secret}"))
    assert hits.counts["header_too_large"] == 5
    lines = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "http_refused"]
    assert [r.fields["reason"] for r in lines] == ["header_too_large", "bad_request"]  # type: ignore[attr-defined]
    assert all("s3cr3t" not in r.getMessage() + str(r.fields) for r in lines)  # type: ignore[attr-defined]
    clock.advance(11)
    logger.exception("Error handling request", exc_info=LineTooLong("x", "8190"))
    last = [r for r in caplog.records if getattr(r, "fields", {}).get("event") == "http_refused"][-1]
    assert last.fields["suppressed_since_last"] == 4  # type: ignore[attr-defined]


def test_other_server_errors_keep_their_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logger = HttpErrorLog("api", LimitHits())
    try:
        raise RuntimeError("a bug")
    except RuntimeError as exc:
        logger.exception("Error handling request", exc_info=exc)
    [record] = [r for r in caplog.records if r.name == "aiohttp.server"]
    assert record.exc_info is not None and record.levelno == logging.ERROR


async def test_pacer_gives_the_loop_back_once_a_turn_is_used() -> None:
    clock = FakeClock(0.0)
    pacer = Pacer(0.005, clock=clock)
    ran: list[int] = []

    async def other() -> None:
        ran.append(1)

    task = asyncio.ensure_future(other())
    await pacer.turn()  # within the turn: no yield, the other task has not run
    assert not ran and pacer.yields == 0
    clock.advance(0.006)
    await pacer.turn()
    assert ran and pacer.yields == 1
    await task


class _SlowGuard:
    """A guard whose access review waits until released (a slow API server)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def authenticate(self, request: Any) -> None:
        await self.release.wait()

    async def check_value(self, request: Any, metric: str, namespace: str) -> None:
        await self.release.wait()


async def test_api_requests_over_the_concurrency_limit_get_429_with_retry_after() -> None:
    store = WindowStore()
    clock = FakeClock(1_700_000_000.0)
    hits = LimitHits()
    guard = _SlowGuard()
    limits = LimitSettings(max_concurrent_requests=3, retry_after_seconds=2)
    app = build_api_app(MetricsProvider(store, clock), Telemetry(store), guard,  # type: ignore[arg-type]
                        limits=lambda: limits, hits=hits)
    async with TestClient(TestServer(app)) as client:
        path = "/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/latency_p95_seconds"
        waiting = [asyncio.ensure_future(client.get(path)) for _ in range(3)]
        await asyncio.sleep(0.1)
        refused = await client.get(path)
        assert refused.status == 429
        assert refused.headers["Retry-After"] == "2"
        doc = await refused.json()
        assert doc["reason"] == "TooManyRequests" and "limits.max_concurrent_requests" in doc["message"]
        assert hits.counts["concurrent_requests"] == 1
        guard.release.set()
        answers = await asyncio.gather(*waiting)
        assert [a.status for a in answers] == [404, 404, 404]  # served once the reviews answered
        assert (await client.get(path)).status == 404
