"""The adapter's own /metrics: the secure listener's counters appear once secure mode is built."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from adapter.store import WindowStore
from adapter.telemetry import Telemetry


def samples(telemetry: Telemetry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(telemetry.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def counters(**values: int) -> Any:
    return SimpleNamespace(reviews=0, cache_hits=0, refreshes=0, review_errors=0, stale_uses=0, **values)


def test_security_counters_are_exported_from_the_live_objects() -> None:
    telemetry = Telemetry(WindowStore())
    assert not any(name.startswith("latency_adapter_tls") for name, _ in samples(telemetry))
    tls = SimpleNamespace(reloads=2, reload_failures=1, restart_required=False)
    authn = counters()
    authz = counters()
    telemetry.watch_security(SimpleNamespace(tls=tls, guard=SimpleNamespace(authenticator=authn,
                                                                            authorizer=authz)))
    authn.reviews, authn.cache_hits, authz.review_errors, authz.stale_uses = 3, 40, 2, 5
    authn.refreshes = 4
    tls.restart_required = True
    got = samples(telemetry)
    assert got[("latency_adapter_tls_reloads_total", (("outcome", "ok"),))] == 2
    assert got[("latency_adapter_tls_reloads_total", (("outcome", "failed"),))] == 1
    assert got[("latency_adapter_tls_restart_required", ())] == 1
    assert got[("latency_adapter_auth_reviews_total", (("kind", "token"), ("result", "call")))] == 3
    assert got[("latency_adapter_auth_reviews_total", (("kind", "token"), ("result", "cache_hit")))] == 40
    assert got[("latency_adapter_auth_reviews_total", (("kind", "access"), ("result", "error")))] == 2
    assert got[("latency_adapter_auth_reviews_total", (("kind", "access"), ("result", "stale_use")))] == 5
    assert got[("latency_adapter_auth_reviews_total", (("kind", "token"), ("result", "refresh_ahead")))] == 4
