"""The canary gate's queries (``manifests/canary``) against a real Prometheus scraping a real adapter.

A real ``latency-adapter serve`` (a 120 s window of 1 s slices, ``min_samples: 50``) has four canary
pairs named as Flagger names them (canary ``<name>``, baseline ``<name>-primary``; the Argo Rollouts
template takes any names as arguments). The real OpenTelemetry SDK sends SERVER spans with deterministic
latencies (lognormal quantiles, median 80 ms, sigma 0.6, so no run depends on chance):

========  =========  ========  =========  =================================================
pair      requests   canary    canary     p95 verdict
          per side   p95       errors
========  =========  ========  =========  =================================================
steady    4000       x 1.05    2 %        0 pass
slower    4000       x 1.30    5 %        1 regression (``ratio_low`` about 1.22 > 1.10)
few       150        x 2       none       2 inconclusive: ``ratio_low`` > 1.10, but < 200 requests
idle      none                            2 inconclusive: no ratio at all, 0 requests
========  =========  ========  =========  =================================================

A real Prometheus (:mod:`tests.prometheus`) scrapes the adapter every second. Then every query of both
folders, rendered for each pair as Argo Rollouts and Flagger render it
(:func:`tests.contract.test_canary_manifests.gate_queries`), goes through ``/api/v1/query`` at one
instant and must return exactly one sample: the verdict in the table (which is also what
:func:`adapter.gate.verdict`, the rule of ``latency-adapter gate``, makes of the same series), and the
error ratio sent (0 where none). What each controller then does with the number is checked too: the
Argo Rollouts measurement phase from the metric's conditions, Flagger's pass or fail from the Canary's
``thresholdRange``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest

from adapter.gate import INCONCLUSIVE, PASS, REGRESSION, Evidence, Limits, verdict
from tests.contract.test_canary_manifests import (
    ARGO,
    FLAGGER,
    FLAGGER_TEMPLATES,
    PRIMARY_SUFFIX,
    GateQuery,
    argo_metrics,
    gate_queries,
    one,
    render_argo,
    template_args,
)
from tests.integration.conftest import AdapterFactory, AdapterProcess, SpanSender
from tests.integration.process import wait_for
from tests.integration.test_gate import lognormal_quantiles
from tests.tooling import require_tool

if TYPE_CHECKING:  # tests.prometheus is imported below, inside the fixture (it is also a pytest plugin)
    from tests.prometheus import PrometheusServer

NS = "canary-queries"


@dataclass(frozen=True)
class Pair:
    requests: int  # on each side
    slower: float  # canary latencies = baseline latencies x this
    error_every: int | None  # every n-th canary request fails
    verdict: int  # what the p95 query must return: 0 pass, 1 regression, 2 inconclusive

    @property
    def error_ratio(self) -> float:
        return 0.0 if self.error_every is None or not self.requests else 1.0 / self.error_every


PAIRS = {
    "steady": Pair(4000, 1.05, 50, 0),
    "slower": Pair(4000, 1.30, 20, 1),
    "few": Pair(150, 2.0, None, 2),
    "idle": Pair(0, 1.0, None, 2),
}
CONFIG: dict[str, Any] = {
    "store": {"window_seconds": 120, "slice_seconds": 1},
    "defaults": {"min_samples": 50},
    "canaries": [{"namespace": NS, "canary": name, "baseline": name + PRIMARY_SUFFIX} for name in PAIRS],
}
#: ``latency-adapter gate`` exit statuses -> the query's verdict numbers.
GATE_VERDICTS = {PASS: 0, REGRESSION: 1, INCONCLUSIVE: 2}
READY_TIMEOUT = 60.0


@dataclass
class Stack:
    adapter: AdapterProcess
    prometheus: PrometheusServer
    at: float  # every query is evaluated at this instant, once every pair's data is in Prometheus

    def query(self, promql: str) -> list[dict[str, Any]]:
        return self.prometheus.query(promql, at=self.at)

    def value(self, promql: str) -> float:
        """The one sample ``promql`` returns (failing, with the query, on anything else)."""
        result = self.query(promql)
        assert len(result) == 1, f"{len(result)} samples, not one, for\n{promql}\n{result}"
        return float(result[0]["value"][1])

    def series(self, metric: str, name: str, side: str | None = None) -> float | None:
        """An adapter series of pair ``name``; None when it is not exported."""
        selector = f'namespace="{NS}",canary="{name}",baseline="{name}{PRIMARY_SUFFIX}"'
        if side is not None:
            selector += f',side="{side}"'
        result = self.query(f"{metric}{{{selector}}}")
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None


def send_pairs(sender: SpanSender) -> None:
    for name, pair in PAIRS.items():
        if not pair.requests:
            continue
        sender.send(NS, name + PRIMARY_SUFFIX, lognormal_quantiles(pair.requests))
        errors = None if pair.error_every is None else [
            i % pair.error_every == 0 for i in range(pair.requests)]
        sender.send(NS, name, lognormal_quantiles(pair.requests, pair.slower), errors=errors)


def landed(prom: PrometheusServer) -> bool:
    """Every pair's requests, and the ratio of every pair with enough of them, are in Prometheus."""
    def of(metric: str) -> list[dict[str, Any]]:
        return prom.query(f'{metric}{{namespace="{NS}"}}')

    samples = {(r["metric"]["canary"], r["metric"]["side"]): float(r["value"][1])
               for r in of("latency_adapter_canary_samples")}
    wanted = {(name, side): float(pair.requests) for name, pair in PAIRS.items()
              for side in ("canary", "baseline")}
    lows = {r["metric"]["canary"] for r in of("latency_adapter_canary_latency_ratio_low")}
    return samples == wanted and lows == {name for name, pair in PAIRS.items() if pair.requests}


@pytest.fixture(scope="module")
def stack(adapter_factory: AdapterFactory, span_sender: type[SpanSender],
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from tests.prometheus import PrometheusFactory

    adapter = adapter_factory("canary-queries", CONFIG)
    send_pairs(span_sender(adapter.otlp_port))
    factory = PrometheusFactory(tmp_path_factory.mktemp("prometheus"), require_tool("prometheus"))
    try:
        prom = factory([f"127.0.0.1:{adapter.telemetry_port}"])
        prom.wait_scraped()
        wait_for(lambda: landed(prom), READY_TIMEOUT, "every canary pair's series in Prometheus", 0.5)
        yield Stack(adapter, prom, time.time())
    finally:
        factory.stop_all()
    assert adapter.stop() == 0, adapter.stderr_tail()


def queries(check: str) -> list[GateQuery]:
    found = [q for q in gate_queries() if q.check == check]
    assert {q.folder for q in found} == {ARGO, FLAGGER}
    return found


def argo_phase(check: str, value: float) -> str:
    """The phase Argo Rollouts gives a measurement of ``value`` (conditions rendered with the defaults):
    Failed when the failure condition holds, else Successful when the success condition does, else
    Inconclusive."""
    metric = argo_metrics()[check]

    def holds(condition: str) -> bool:
        match = re.fullmatch(r"result\[0\] (==|<=|>) ([0-9.]+)", render_argo(condition, template_args({})))
        assert match, condition
        op, limit = match.group(1), float(match.group(2))
        return {"==": value == limit, "<=": value <= limit, ">": value > limit}[op]

    if holds(metric["failureCondition"]):
        return "Failed"
    return "Successful" if holds(metric["successCondition"]) else "Inconclusive"


def flagger_passes(check: str, value: float) -> bool:
    """Whether the example Canary's check passes with ``value`` (Flagger's thresholdRange)."""
    [metric] = [m for m in one(FLAGGER, "Canary")["spec"]["analysis"]["metrics"]
                if FLAGGER_TEMPLATES[m["templateRef"]["name"]] == check]
    bounds = metric["thresholdRange"]
    return bool(bounds.get("min", -math.inf) <= value <= bounds.get("max", math.inf))


def test_the_verdict_queries_return_the_gates_verdict(stack: Stack) -> None:
    failures = []
    for name, pair in PAIRS.items():
        for q in queries("p95-ratio"):
            got = stack.value(q.render(NS, name))
            if got != pair.verdict:
                failures.append(f"{q.name} for {name}: {got}, not {pair.verdict}\n{q.render(NS, name)}")
    assert not failures, "\n".join(failures)
    phases = {v: argo_phase("p95-ratio", v) for v in (0, 1, 2)}
    assert phases == {0: "Successful", 1: "Failed", 2: "Inconclusive"}
    assert [flagger_passes("p95-ratio", v) for v in (0, 1, 2)] == [True, False, False]


def test_the_verdict_is_what_latency_adapter_gate_decides(stack: Stack) -> None:
    """The same series through the gate's own rule (error ratio left out: it is a check of its own)."""
    for name, pair in PAIRS.items():
        ratio, low, high = (stack.series(f"latency_adapter_canary_latency_ratio{suffix}", name)
                            for suffix in ("", "_low", "_high"))
        sides = [stack.series("latency_adapter_canary_samples", name, side)
                 for side in ("canary", "baseline")]
        assert sides == [pair.requests, pair.requests], (name, sides)
        evidence = Evidence(ratio, low, high, int(sides[0] or 0), int(sides[1] or 0), None, None)
        code, why = verdict(evidence, Limits())
        assert GATE_VERDICTS[code] == pair.verdict, (name, evidence, why)
        if name == "few":  # slower beyond doubt, but too few requests: the gate checks samples first
            assert low is not None and low > Limits().max_ratio, evidence
        if name == "idle":
            assert ratio is None and low is None, evidence
    steady = stack.series("latency_adapter_canary_latency_ratio", "steady")
    slower = stack.series("latency_adapter_canary_latency_ratio", "slower")
    assert steady == pytest.approx(1.05, abs=0.02) and slower == pytest.approx(1.30, abs=0.02)


def test_the_error_ratio_queries_return_the_ratio_sent(stack: Stack) -> None:
    limit = Limits().max_error_ratio
    for name, pair in PAIRS.items():
        for q in queries("error-ratio"):
            got = stack.value(q.render(NS, name))
            assert got == pytest.approx(pair.error_ratio, abs=1e-9), (q.name, name, got)
            over = pair.error_ratio > limit
            assert argo_phase("error-ratio", got) == ("Failed" if over else "Successful"), (name, got)
            assert flagger_passes("error-ratio", got) is not over, (name, got)
    assert PAIRS["slower"].error_ratio > limit > PAIRS["steady"].error_ratio > 0
