"""Tests for adapter.sources.prometheus: config, templates, answers, error kinds, the cache and serving.

The HTTP client is exercised against small aiohttp servers in this process (a PromQL API that answers
what each test wants); the cache and the provider are driven by a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from adapter.config import settings_from_mapping
from adapter.cpu import CpuSignals
from adapter.errors import ConfigError, NoData
from adapter.model import SeriesKey
from adapter.policy_config import PolicyConfig, policy_from_mapping
from adapter.provider import MetricsProvider
from adapter.selector import parse_selector
from adapter.sources.prometheus import PrometheusCache, PrometheusSource, Sample, quantile_key
from adapter.sources.prometheus_config import PrometheusSettings, align, builtin_queries, expand, placeholders
from adapter.sources.promql import PrometheusClient, PrometheusQueryError, exemplars_of, scalar_of
from adapter.store import WindowStore
from tests.clock import FakeClock

URL = "http://prometheus.example:9090"


def config(prometheus: Any = None, **policy: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"sources": {"prometheus": {"url": URL, **(prometheus or {})}}}
    return {**doc, **policy}


def config_error(doc: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(doc)
    return info.value


# --- config --------------------------------------------------------------------------------------------


def test_section_read_with_defaults_and_every_key() -> None:
    settings = settings_from_mapping(config({
        "refresh_seconds": 15, "query_offset_seconds": 10, "timeout_seconds": 5, "window_seconds": 60,
        "latency_metric": "http_server_request_duration_seconds", "histogram": "native",
        "labels": {"namespace": "k8s_namespace", "workload": "app", "status_code": "code"},
        "error_status_regex": "5..|429", "queries": {"cpu_utilization": "vector($quantile)"},
        "headers": {"X-Scope-OrgID": "tenant-a"}, "ca_file": "/etc/ca.crt",
        "basic_auth": {"username": "u", "password_file": "/etc/pw"}, "max_concurrency": 4}))
    p = settings.prometheus
    assert p is not None
    assert (p.url, p.histogram, p.namespace_label, p.workload_label, p.status_code_label) == (
        URL, "native", "k8s_namespace", "app", "code")
    assert dict(p.headers) == {"X-Scope-OrgID": "tenant-a"}
    assert p.query_offset_seconds == 10.0
    default = settings_from_mapping(config()).prometheus
    assert default is not None and default.query_offset_seconds == 2.0
    assert p.templates()["cpu_utilization"] == "vector($quantile)"
    assert settings_from_mapping({}).prometheus is None


@pytest.mark.parametrize(("prometheus", "key"), [
    ({"url": None}, "sources.prometheus.url"),
    ({"url": "prometheus:9090"}, "sources.prometheus.url"),
    ({"refresh_seconds": 0}, "sources.prometheus.refresh_seconds"),
    ({"timeout_seconds": "5s"}, "sources.prometheus.timeout_seconds"),
    ({"query_offset_seconds": -1}, "sources.prometheus.query_offset_seconds"),
    ({"query_offset_seconds": "2s"}, "sources.prometheus.query_offset_seconds"),
    ({"window_seconds": 1.5}, "sources.prometheus.window_seconds"),
    ({"histogram": "exponential"}, "sources.prometheus.histogram"),
    ({"latency_metric": "http-duration"}, "sources.prometheus.latency_metric"),
    ({"labels": {"pod": "pod"}}, "sources.prometheus.labels.pod"),
    ({"labels": {"workload": "app-name"}}, "sources.prometheus.labels.workload"),
    ({"queries": {"p95": "up"}}, "sources.prometheus.queries.p95"),
    ({"queries": {"request_rate": "sum(rate(x{w=\"$workloads\"}[$window]))"}},
     "sources.prometheus.queries.request_rate"),
    ({"queries": {"request_rate": 3}}, "sources.prometheus.queries.request_rate"),
    ({"headers": {"X-Bad": "a\nb"}}, "sources.prometheus.headers.X-Bad"),
    ({"basic_auth": {"username": "u"}}, "sources.prometheus.basic_auth.password_file"),
    ({"max_concurrency": 0}, "sources.prometheus.max_concurrency"),
    ({"refresh": 15}, "sources.prometheus.refresh"),
])
def test_bad_values_name_the_key_path(prometheus: dict[str, Any], key: str) -> None:
    assert config_error(config(prometheus)).key == key


def test_unknown_placeholder_is_named() -> None:
    error = config_error(config({"queries": {"error_ratio": "sum(x{ns=\"${ns}\"})"}}))
    assert error.key == "sources.prometheus.queries.error_ratio"
    assert "$ns" in str(error) and "$namespace" in str(error)


def test_missing_url_and_unknown_source() -> None:
    assert config_error({"sources": {"prometheus": {}}}).key == "sources.prometheus.url"
    assert config_error({"sources": {"victoriametrics": {}}}).key == "sources.victoriametrics"
    assert config_error({"sources": []}).key == "sources"
    assert config_error({"sources": {"prometheus": "http://x"}}).key == "sources.prometheus"


def test_prometheus_source_needs_the_section() -> None:
    entry = {"namespace": "shop", "workload": "checkout", "source": "prometheus"}
    error = config_error({"workloads": [entry]})
    assert error.key == "workloads[0].source"
    assert config_error({"defaults": {"source": ["otlp", "prometheus"]}}).key == "defaults.source"
    ok = settings_from_mapping(config(workloads=[{"workload": "checkout", "source": "prometheus"}]))
    assert ok.policy.source_of("shop", "checkout") == ("prometheus",)


# --- templates -----------------------------------------------------------------------------------------


def test_builtin_classic_queries() -> None:
    q = builtin_queries(PrometheusSettings(url=URL))
    assert q["latency_quantile"] == (
        'histogram_quantile($quantile, sum by (le) (rate(http_server_request_duration_seconds_bucket'
        '{namespace="$namespace",workload="$workload"}[$window])))')
    assert q["request_rate"] == ('sum(rate(http_server_request_duration_seconds_count'
                                 '{namespace="$namespace",workload="$workload"}[$window]))')
    assert 'http_response_status_code=~"5.."' in q["error_ratio"]
    assert q["cpu_utilization"].startswith(
        'sum(rate(container_cpu_usage_seconds_total{namespace="$namespace",pod=~"$workload-.*",container!=""}'
        '[$window])) / sum(')
    for template in q.values():
        assert set(placeholders(template)) <= {"namespace", "workload", "window", "quantile"}


def test_builtin_native_queries_and_labels() -> None:
    s = PrometheusSettings(url=URL, histogram="native", latency_metric="rpc_seconds", namespace_label="ns",
                           workload_label="app")
    q = builtin_queries(s)
    assert q["latency_quantile"] == 'histogram_quantile($quantile, sum(rate(rpc_seconds{ns="$namespace",' \
                                    'app="$workload"}[$window])))'
    assert q["latency_exemplars"] == 'rpc_seconds{ns="$namespace",app="$workload"}'


def test_expand_fills_and_escapes() -> None:
    text = expand('x{a="$namespace",b="${workload}"}[$window] $quantile', 'we"ird', "a\\b", 60, 0.99)
    assert text == 'x{a="we\\"ird",b="a\\\\b"}[60s] 0.99'


@pytest.mark.parametrize(("now", "refresh", "at"), [
    (1000.0, 15, 990.0), (1004.999, 15, 990.0), (1005.0, 15, 1005.0), (1000.7, 1, 1000.0), (59.9, 60, 0.0),
])
def test_time_is_rounded_down_to_the_refresh_interval(now: float, refresh: float, at: float) -> None:
    assert align(now, refresh) == at


# --- answers -------------------------------------------------------------------------------------------


def vector(*values: str) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector",
                                          "result": [{"metric": {}, "value": [1, v]} for v in values]}}


@pytest.mark.parametrize("raw", ["NaN", "+Inf", "-Inf", "Inf"])
def test_nan_and_inf_are_missing(raw: str) -> None:
    assert scalar_of(vector(raw)) is None


def test_empty_is_missing_and_values_are_read() -> None:
    assert scalar_of(vector()) is None
    assert scalar_of(vector("0.25")) == 0.25
    assert scalar_of(vector("0")) == 0.0
    assert scalar_of({"status": "success", "data": {"resultType": "scalar", "result": [1, "2"]}}) == 2.0


@pytest.mark.parametrize("doc", [
    vector("1", "2"),  # two series: the query does not say which one
    {"status": "error", "errorType": "bad_data"},
    {"status": "success", "data": {"resultType": "matrix", "result": []}},
    {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1]}]}},
    [],
])
def test_unexpected_answers_are_bad_responses(doc: Any) -> None:
    with pytest.raises(PrometheusQueryError) as info:
        scalar_of(doc)
    assert info.value.kind == "bad_response"


def test_exemplars_keep_those_with_a_trace_id() -> None:
    doc = {"status": "success", "data": [{"seriesLabels": {}, "exemplars": [
        {"labels": {"trace_id": "abc"}, "value": "0.4", "timestamp": 1},
        {"labels": {"traceID": "def"}, "value": "0.9", "timestamp": 1},
        {"labels": {"span_id": "x"}, "value": "0.1", "timestamp": 1},
        {"labels": {"trace_id": "nan"}, "value": "NaN", "timestamp": 1}]}]}
    assert [(p.trace_id, p.value) for p in exemplars_of(doc)] == [("abc", 0.4), ("def", 0.9)]


# --- the client and its error kinds ---------------------------------------------------------------------

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def backend() -> AsyncIterator[Callable[..., Any]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/api/v1/query", handler)
        app.router.add_get("/api/v1/query_exemplars", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        server = site._server
        assert server is not None
        port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def classify(url: str, **settings: Any) -> PrometheusQueryError:
    client = PrometheusClient(PrometheusSettings(url=url, timeout_seconds=0.3, **settings))
    try:
        with pytest.raises(PrometheusQueryError) as info:
            await client.query("up", 1000.0)
    finally:
        await client.close()
    assert client.errors[info.value.kind] == 1
    assert sum(client.errors.values()) == 1
    return info.value


async def test_errors_are_classified(backend: Callable[..., Any]) -> None:
    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.json_response(vector("1"))

    async def bad_data(_: web.Request) -> web.Response:
        return web.json_response({"status": "error", "errorType": "bad_data", "error": "parse error"},
                                 status=400)

    async def unavailable(_: web.Request) -> web.Response:
        return web.Response(status=503, text="overloaded")

    async def garbage(_: web.Request) -> web.Response:
        return web.Response(text="<html>")

    async def two_series(_: web.Request) -> web.Response:
        return web.json_response(vector("1", "2"))

    assert (await classify(await backend(slow))).kind == "timeout"
    error = await classify(await backend(bad_data))
    assert (error.kind, error.status, error.error_type) == ("http_status", 400, "bad_data")
    assert (await classify(await backend(unavailable))).kind == "http_status"
    assert (await classify(await backend(garbage))).kind == "bad_response"
    assert (await classify(await backend(two_series))).kind == "bad_response"
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert (await classify(f"http://127.0.0.1:{port}")).kind == "connection"


async def test_requests_carry_time_headers_and_auth(backend: Callable[..., Any], tmp_path: Any) -> None:
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response(vector("0.5"))

    token = tmp_path / "token"
    token.write_text("s3cret\n", encoding="utf-8")
    url = await backend(record)
    client = PrometheusClient(PrometheusSettings(url=url, headers=(("X-Scope-OrgID", "tenant-a"),),
                                                 bearer_token_file=str(token)))
    try:
        assert await client.query('up{job="x"}', 990.0) == 0.5
    finally:
        await client.close()
    request = seen[0]
    assert request.query["time"] == "990.000"
    assert request.query["query"] == 'up{job="x"}'
    assert request.headers["X-Scope-OrgID"] == "tenant-a"
    assert request.headers["Authorization"] == "Bearer s3cret"
    assert client.last_success is not None


async def test_template_that_does_not_parse_is_a_config_error(backend: Callable[..., Any]) -> None:
    async def parser(request: web.Request) -> web.Response:
        if "oops(" in request.query["query"]:
            return web.json_response({"status": "error", "errorType": "bad_data", "error": "unexpected"},
                                     status=400)
        return web.json_response(vector())

    url = await backend(parser)
    settings = PrometheusSettings(url=url, queries=(("error_ratio", "oops($window"),))
    policy = PolicyConfig()
    source = PrometheusSource(settings, PrometheusCache(lambda: policy, 60), CpuSignals(), lambda: policy)
    with pytest.raises(ConfigError) as info:
        await source.check_templates()
    await source.client.close()
    assert info.value.key == "sources.prometheus.queries.error_ratio"
    builtin = dataclasses.replace(settings, queries=())
    ok = PrometheusSource(builtin, source.cache, CpuSignals(), lambda: policy)
    await ok.check_templates()  # every built-in parses
    await ok.client.close()


# --- the cache, fail static, serving --------------------------------------------------------------------


class FakeClient(PrometheusClient):
    """Answers from a table: query substring -> value, None (no data) or an exception."""

    def __init__(self, answers: dict[str, Any]) -> None:
        super().__init__(PrometheusSettings(url=URL))
        self.answers = answers
        self.asked: list[tuple[str, float]] = []

    async def query(self, promql: str, at: float) -> float | None:
        self.asked.append((promql, at))
        for part, answer in self.answers.items():
            if part in promql:
                if isinstance(answer, Exception):
                    raise answer
                return answer  # type: ignore[no-any-return]
        return None

    async def query_exemplars(self, promql: str, start: float, end: float) -> list[Any]:
        from adapter.sources.promql import ExemplarPoint

        return [ExemplarPoint(0.1, "a" * 32), ExemplarPoint(0.42, "b" * 32), ExemplarPoint(2.0, "c" * 32)]


def policy_of(source: Any = "prometheus", stale: float = 10) -> PolicyConfig:
    workloads = [{"namespace": "shop", "workload": "c*", "source": "prometheus"},  # a glob: never queried
                 {"namespace": "shop", "workload": "checkout", "source": source}]
    return policy_from_mapping({"defaults": {"stale_after_seconds": stale, "min_samples": 10},
                                "workloads": workloads})


ANSWERS: dict[str, Any] = {"histogram_quantile(0.95": 0.4, "histogram_quantile(0.5": 0.1,
                           "histogram_quantile(0.99": 0.9, "container_cpu": 0.8, "/ sum(rate": 0.02,
                           "sum(rate(http_server_request_duration_seconds_count": 100.0}


def make(clock: FakeClock, source: Any = "prometheus", answers: dict[str, Any] | None = None,
         ) -> tuple[PrometheusSource, FakeClient, MetricsProvider, CpuSignals, WindowStore]:
    policy = policy_of(source)
    settings = PrometheusSettings(url=URL, refresh_seconds=5, window_seconds=60)
    cache = PrometheusCache(lambda: policy, settings.window_seconds)
    cpu = CpuSignals()
    client = FakeClient(dict(ANSWERS if answers is None else answers))
    src = PrometheusSource(settings, cache, cpu, lambda: policy, clock, client)
    store = WindowStore()
    provider = MetricsProvider(store, clock, cpu, lambda: policy, cache)
    return src, client, provider, cpu, store


def value(provider: MetricsProvider, metric: str, workload: str = "checkout") -> float:
    return provider.reading("shop", metric, parse_selector(f"workload={workload}")).value


async def test_refresh_fills_the_cache_and_serves_every_metric() -> None:
    clock = FakeClock(1003.0)
    src, client, provider, cpu, _ = make(clock)
    assert src.cache.configured() == [("shop", "checkout")]  # the glob entry is not queried
    await src.refresh_once()
    assert {at for _, at in client.asked} == {1000.0}
    reading = provider.reading("shop", "latency_p95_seconds", parse_selector("workload=checkout"))
    assert (reading.value, reading.timestamp, reading.labels) == (0.4, 1000.0, {
        "workload": "checkout", "trace_id": "b" * 32})
    assert value(provider, "latency_p50_seconds") == 0.1
    assert value(provider, "latency_p99_seconds") == 0.9
    assert value(provider, "request_rate") == 100.0
    assert value(provider, "error_ratio") == 0.02
    assert value(provider, "cpu_utilization") == pytest.approx(0.8)
    dual = provider.reading("shop", "dual_signal_ratio", parse_selector("workload=checkout"))
    assert dual.value == pytest.approx(0.4 / 0.25)
    assert dual.labels["reason"] == "latency" and dual.labels["trace_id"] == "b" * 32
    reading_cpu = cpu.reading("shop", "checkout", 1003.0, 60)
    assert reading_cpu is not None and reading_cpu.observed_at == 1000.0


async def test_query_time_stays_the_offset_behind_the_clock() -> None:
    """A scrape that started just before the aligned time may not be stored yet when a replica asks; the
    query time keeps ``query_offset_seconds`` behind the clock, then rounds down to the refresh interval."""
    clock = FakeClock(1003.0)
    src, client, _, _, _ = make(clock)  # refresh 5 s, default offset 2 s
    await src.refresh_once()
    assert {at for _, at in client.asked} == {1000.0}
    clock.now = 1006.5  # 1004.5 rounds down to 1000: 1005 is asked only from 1007 on
    client.asked.clear()
    await src.refresh_once()
    assert {at for _, at in client.asked} == {1000.0}
    clock.now = 1007.0
    client.asked.clear()
    await src.refresh_once()
    assert {at for _, at in client.asked} == {1005.0}


async def test_missing_data_is_missing_at_once() -> None:
    clock = FakeClock(1003.0)
    src, client, provider, _, _ = make(clock)
    await src.refresh_once()
    client.answers["histogram_quantile(0.95"] = None  # NaN/Inf/empty all come back as None
    clock.advance(5)
    await src.refresh_once()
    with pytest.raises(NoData):
        value(provider, "latency_p95_seconds")
    assert value(provider, "latency_p50_seconds") == 0.1


async def test_errors_keep_the_last_value_until_stale() -> None:
    clock = FakeClock(1003.0)
    src, client, provider, _, _ = make(clock)
    await src.refresh_once()
    client.answers = {"": PrometheusQueryError("connection", "refused")}
    clock.advance(5)
    await src.refresh_once()
    assert value(provider, "latency_p95_seconds") == 0.4  # fail static, timestamp of the last success
    assert provider.reading("shop", "latency_p95_seconds",
                            parse_selector("workload=checkout")).timestamp == 1000.0
    clock.now = 1011.2  # 1011 - 1000 > stale_after_seconds (10)
    await src.refresh_once()
    with pytest.raises(NoData):
        value(provider, "latency_p95_seconds")
    with pytest.raises(NoData):
        value(provider, "dual_signal_ratio")


async def test_first_source_with_fresh_data_answers() -> None:
    clock = FakeClock(1003.0)
    src, _, provider, _, store = make(clock, source=["otlp", "prometheus"])
    await src.refresh_once()
    assert value(provider, "latency_p95_seconds") == 0.4  # no OTLP data: Prometheus answers
    store.add_durations(SeriesKey("shop", "checkout", ""), np.full(100, 0.05), 0, [], 1003.0)
    clock.advance(1)
    assert value(provider, "latency_p95_seconds") == pytest.approx(0.05, rel=0.01)
    assert provider.reading("shop", "request_rate", parse_selector("workload=checkout")).window_seconds != 60


async def test_otlp_only_workloads_are_untouched() -> None:
    clock = FakeClock(1003.0)
    src, client, provider, _, store = make(clock, source="otlp")
    await src.refresh_once()
    assert client.asked == []
    store.add_durations(SeriesKey("shop", "checkout", ""), np.full(100, 0.05), 0, [], 1003.0)
    clock.advance(1)
    assert value(provider, "latency_p95_seconds") == pytest.approx(0.05, rel=0.01)


async def test_samples_for_the_policy_are_rate_times_window() -> None:
    clock = FakeClock(1003.0)
    src, client, provider, _, _ = make(clock)
    client.answers["sum(rate(http_server_request_duration_seconds_count"] = 0.1  # 6 requests a minute
    await src.refresh_once()
    handled, signal = src.cache.latency("shop", "checkout", 0.95, 1003.0, False)
    assert handled and signal is not None and signal.samples == 6
    dual = provider.reading("shop", "dual_signal_ratio", parse_selector("workload=checkout"))
    assert dual.labels["reason"] == "cpu_only_low_traffic"  # below min_samples (10): CPU alone
    assert math.isclose(dual.value, 0.8 / 0.6)


def test_cached_sample_freshness_uses_the_workload_policy() -> None:
    policy = policy_of(stale=30)
    cache = PrometheusCache(lambda: policy, 60)
    cache.entry("shop", "checkout").values[quantile_key(0.95)] = Sample(0.3, 1000.0)
    assert cache.fresh("shop", "checkout", quantile_key(0.95), 1030.0) is not None
    assert cache.fresh("shop", "checkout", quantile_key(0.95), 1030.5) is None


async def test_unreadable_credentials_are_connection_errors(tmp_path: Any) -> None:
    missing = str(tmp_path / "missing")
    assert (await classify(URL, bearer_token_file=missing)).kind == "connection"
    basic = await classify(URL, basic_auth_username="u", basic_auth_password_file=missing)
    assert basic.kind == "connection"
    assert (await classify(URL, ca_file=missing)).kind == "connection"


# --- backends without exemplars (VictoriaMetrics 1.79, or no query_exemplars at all) --------------------


class NoExemplarsClient(FakeClient):
    """Values as :class:`FakeClient`; exemplars empty (VictoriaMetrics) or an error (no such endpoint)."""

    def __init__(self, answers: dict[str, Any], error: PrometheusQueryError | None = None) -> None:
        super().__init__(answers)
        self.error = error

    async def query_exemplars(self, promql: str, start: float, end: float) -> list[Any]:
        if self.error is not None:
            raise self.error
        return []


@pytest.mark.parametrize("error", [None, PrometheusQueryError("http_status", "HTTP 404: not found", 404)])
async def test_no_exemplars_serve_values_without_trace_id_and_log_once(
        error: PrometheusQueryError | None, caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from adapter.sources.prometheus import PrometheusCollector

    clock = FakeClock(1003.0)
    policy = policy_of()
    settings = PrometheusSettings(url=URL, refresh_seconds=5, window_seconds=60)
    cache = PrometheusCache(lambda: policy, settings.window_seconds)
    cpu = CpuSignals()
    client = NoExemplarsClient(dict(ANSWERS), error)
    src = PrometheusSource(settings, cache, cpu, lambda: policy, clock, client)
    provider = MetricsProvider(WindowStore(), clock, cpu, lambda: policy, cache)
    with caplog.at_level(logging.INFO, logger="adapter.prometheus"):
        for _ in range(3):
            await src.refresh_once()
            clock.advance(5)
    reading = provider.reading("shop", "latency_p95_seconds", parse_selector("workload=checkout"))
    assert (reading.value, reading.labels) == (0.4, {"workload": "checkout"})
    dual = provider.reading("shop", "dual_signal_ratio", parse_selector("workload=checkout"))
    assert "trace_id" not in dual.labels and dual.value == pytest.approx(0.4 / 0.25)
    assert src.exemplar_misses == 3
    noted = [r for r in caplog.records if "no exemplars" in r.getMessage()]
    assert len(noted) == 1
    families = {f.name: f for f in PrometheusCollector(src).collect()}
    assert families["latency_adapter_prometheus_exemplar_misses"].samples[0].value == 3


async def test_exemplars_found_are_not_misses() -> None:
    src, _, _, _, _ = make(FakeClock(1003.0))
    await src.refresh_once()
    assert src.exemplar_misses == 0


async def test_start_check_skips_a_missing_exemplar_api(backend: Callable[..., Any]) -> None:
    asked: list[str] = []

    async def no_exemplars(request: web.Request) -> web.Response:
        asked.append(request.path)
        if request.path.endswith("query_exemplars"):
            return web.Response(status=404, text="404 page not found")
        if "oops(" in request.query["query"]:
            return web.json_response({"status": "error", "errorType": "bad_data", "error": "unexpected"},
                                     status=400)
        return web.json_response(vector())

    url = await backend(no_exemplars)
    policy = PolicyConfig()
    ok = PrometheusSource(PrometheusSettings(url=url), PrometheusCache(lambda: policy, 60), CpuSignals(),
                          lambda: policy)
    await ok.check_templates()  # the 404 does not stop the start
    await ok.client.close()
    broken = PrometheusSettings(url=url, queries=(("error_ratio", "oops($window"),))
    source = PrometheusSource(broken, PrometheusCache(lambda: policy, 60), CpuSignals(), lambda: policy)
    with pytest.raises(ConfigError):  # and the templates after it are still checked
        await source.check_templates()
    await source.client.close()
    assert "/api/v1/query_exemplars" in asked
