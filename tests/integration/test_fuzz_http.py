"""The HTTP fuzz targets against the real ``latency-adapter serve`` on every ``make test``, a few hundred
inputs each: OTLP protobuf and JSON bodies, label selectors, and namespaces and metric names in paths.

Why, next to ``make fuzz``: the long run is on demand; this keeps its oracles in the build. Every answer
must be below 500 and, when a refusal, carry the documented body saying why (a Kubernetes ``Status``
with a matching code and reason, or a ``google.rpc.Status`` for OTLP); after the examples good traffic
must still be served (spans of a fresh workload read back with their p95 and a trace id, and every
workload the examples created readable on ``/debug/workloads`` and the metrics API), and the adapter must
have logged no error. Inputs, oracles and the check come from :mod:`tests.fuzz`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.fuzz import inputs
from tests.fuzz.adapter_process import FUZZ_CONFIG, client_of, logged_errors
from tests.fuzz.oracles import Client
from tests.fuzz.targets import Runner

EXAMPLES = settings(max_examples=300, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
HTTP_TARGETS = {"a": "otlp-protobuf", "b": "otlp-json", "c": "selector", "d": "path"}


@pytest.fixture(scope="module")
def fuzzed(adapter_factory: Any) -> Iterator[tuple[Any, Client]]:
    proc = adapter_factory("fuzz", FUZZ_CONFIG)
    client = client_of(proc, proc.cert_file)
    yield proc, client
    client.close()


@pytest.mark.parametrize("key", sorted(HTTP_TARGETS), ids=HTTP_TARGETS.get)
def test_hostile_requests_are_refused_as_documented(fuzzed: tuple[Any, Client], key: str) -> None:
    proc, client = fuzzed
    runner = Runner(key, client)

    @EXAMPLES
    @given(inputs.STRATEGIES[key]())
    def one(data: bytes) -> None:
        answer = runner.remote(data)
        assert answer.status < 500, answer.problem
        assert answer.problem is None

    one()
    assert runner.good() == []
    assert logged_errors(proc) == []
    assert proc.alive()


def test_encoded_newline_in_an_unknown_path_gets_a_status(fuzzed: tuple[Any, Client]) -> None:
    _, client = fuzzed
    resp = client.api("/apis/x%0Ay")
    assert (resp.status, resp.content_type) == (404, "application/json"), resp
