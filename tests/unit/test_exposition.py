"""``/metrics`` written in turns: the same bytes as prometheus_client's encoders, in many small pieces."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, Info
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import generate_latest as text_latest
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.samples import Exemplar

from adapter.api import exposition


class _Big(Collector):
    """Families far over one piece, like the per-workload ones of an adapter with many workloads."""

    def collect(self) -> list[GaugeMetricFamily | HistogramMetricFamily]:
        ratio = GaugeMetricFamily("demo_ratio", "A per-workload gauge.", labels=["namespace", "workload"])
        for i in range(3 * exposition.CHUNK_SAMPLES + 7):
            ratio.add_metric(["shop", f"w-{i:04d}"], i / 7)
        latency = HistogramMetricFamily("demo_latency_seconds", "A per-workload histogram.",
                                        labels=["namespace", "workload"], unit="seconds")
        for i in range(90):  # 90 x (4 buckets + count + sum): several pieces, cut inside a workload
            buckets: list[tuple[str, float] | tuple[str, float, Exemplar]] = [
                ("0.1", float(i)), ("0.5", 2.0 * i, Exemplar({"trace_id": f"{i:032x}"}, 0.3, 1700000000.5)),
                ("1.0", 3.0 * i), ("+Inf", 3.0 * i)]
            latency.add_metric(["shop", f"w-{i:04d}"], buckets, 0.25 * i)
        return [ratio, latency]


def _registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(_Big())
    requests = Counter("demo_requests", "A counter with _created samples.", ["code"], registry=registry)
    for code in range(exposition.CHUNK_SAMPLES):  # big, but the library splits its text: never sliced
        requests.labels(str(code)).inc(code)
    Histogram("demo_handler_seconds", "A library histogram.", registry=registry).observe(0.2)
    Info("demo_build", "An info metric.", registry=registry).info({"version": "1"})
    return registry


@pytest.mark.parametrize("encoder", [text_latest, openmetrics_latest], ids=["text", "openmetrics"])
def test_pieces_join_into_the_library_output(encoder: Callable[[CollectorRegistry], bytes]) -> None:
    registry = _registry()
    families = list(registry.collect())
    turns = 0

    class CountingPacer:
        async def turn(self) -> None:
            nonlocal turns
            turns += 1

    written = asyncio.run(exposition.encode(encoder, families, CountingPacer()))  # type: ignore[arg-type]
    assert written == encoder(registry)
    assert turns > len(families) + 3  # the big families went in several pieces, each its own turn


def test_an_empty_registry_is_the_format_trailer_alone() -> None:
    assert asyncio.run(exposition.encode(openmetrics_latest, [])) == b"# EOF\n"
    assert asyncio.run(exposition.encode(text_latest, [])) == b""
