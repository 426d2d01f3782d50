"""``/debug/workloads`` on the ops app: JSON shape, decisions, trace links, HTML escaping, negotiation.

A real store, CPU registry and provider, a fake clock, and aiohttp's test client against
:func:`adapter.api.ops.build_ops_app`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from html.parser import HTMLParser
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from adapter.api.debug_page import wants_html
from adapter.api.ops import build_ops_app
from adapter.cpu import CpuSignals, WorkloadCpu
from adapter.errors import ConfigError
from adapter.model import Exemplar, SeriesKey
from adapter.provider import MetricsProvider
from adapter.store import WindowStore
from adapter.telemetry import Telemetry
from adapter.traces import TraceSettings, check_url_template, trace_url
from tests.clock import FakeClock

T0 = 1000.0
TEMPLATE = "https://tempo.example/explore?traceId={trace_id}"
SLOW_TRACE = "ab" * 16
FAST_TRACE = "12" * 16
ERROR_TRACE = "cd" * 16
BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,*/*;q=0.8"

HOSTILE_WORKLOAD = "<script>alert(1)</script>"
HOSTILE_ROUTE = "<img src=x onerror=alert(2)>"
HOSTILE_TRACE = '"><script>alert(3)</script>'

WINDOW_FIELDS = {
    "latency_p50_seconds", "latency_p50_trace_id", "latency_p50_trace_url",
    "latency_p95_seconds", "latency_p95_trace_id", "latency_p95_trace_url",
    "latency_p99_seconds", "latency_p99_trace_id", "latency_p99_trace_url",
    "request_rate", "error_ratio", "error_trace_id", "error_trace_url", "requests_in_window",
}


class World:
    def __init__(self) -> None:
        self.clock = FakeClock(T0)
        self.store = WindowStore()
        self.cpu = CpuSignals()
        self.provider = MetricsProvider(self.store, self.clock, self.cpu)

    def requests(self, key: SeriesKey, seconds: Sequence[float], errors: int = 0,
                 candidates: Sequence[Exemplar] = (), error_trace_id: str = "") -> None:
        assert self.store.add_durations(key, np.asarray(seconds, dtype=np.float64), errors, candidates,
                                        self.clock(), error_trace_id=error_trace_id)

    def app(self, template: str = "") -> web.Application:
        return build_ops_app(Telemetry(self.store), self.store, lambda: True, self.clock,
                             provider=self.provider, traces=TraceSettings(url_template=template))


def shop(world: World) -> None:
    """checkout: routes cart (slow, errors) and pay (fast), 200 requests; CPU at 45 % of 3 pods' requests."""
    world.requests(SeriesKey("shop", "checkout", "cart"), [0.5] * 100, errors=10,
                   candidates=[Exemplar(0.5, SLOW_TRACE)], error_trace_id=ERROR_TRACE)
    world.requests(SeriesKey("shop", "checkout", "pay"), [0.01] * 100,
                   candidates=[Exemplar(0.01, FAST_TRACE)])
    world.cpu.put_workload("shop", "checkout", WorkloadCpu(1.35, 3.0, 3, T0))
    world.clock.advance(2.0)



@pytest.fixture
def world() -> World:
    return World()


@pytest.fixture
async def client(world: World) -> AsyncIterator[Callable[[str], Any]]:
    """``await client(template)``: a test client on the ops app with that trace URL template."""
    opened: list[TestClient[Any, Any]] = []

    async def make(template: str = "") -> TestClient[Any, Any]:
        c: TestClient[Any, Any] = TestClient(TestServer(world.app(template)))
        await c.start_server()
        opened.append(c)
        return c

    yield make
    for c in opened:
        await c.close()


async def get_json(c: TestClient[Any, Any], **headers: str) -> Any:
    resp = await c.get("/debug/workloads", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    return await resp.json()


async def get_html(c: TestClient[Any, Any], query: str = "?format=html") -> str:
    resp = await c.get("/debug/workloads" + query)
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "text/html" and resp.charset == "utf-8"
    text: str = await resp.text()
    return text


# -- JSON ------------------------------------------------------------------------------------------------


async def test_json_workload_row_has_values_cpu_decision_and_trace_urls(world: World, client: Any) -> None:
    shop(world)
    doc = await get_json(await client(TEMPLATE))
    assert doc["epoch"] == world.store.epoch and doc["at"] == T0 + 2.0
    assert doc["window_seconds"] == 60 and doc["trace_url_template"] == TEMPLATE
    [row] = doc["workloads"]
    assert set(row) == WINDOW_FIELDS | {
        "namespace", "workload", "selectable", "cpu_utilization", "cpu_pods", "cpu_observed_at",
        "latency_target_seconds", "cpu_target_utilization", "decision", "routes"}
    assert (row["namespace"], row["workload"], row["selectable"]) == ("shop", "checkout", True)
    # Both routes merged: half the requests at 10 ms, half at 500 ms.
    assert row["latency_p95_seconds"] == pytest.approx(0.5, rel=0.01)
    assert row["latency_p95_trace_id"] == SLOW_TRACE
    assert row["latency_p95_trace_url"] == f"https://tempo.example/explore?traceId={SLOW_TRACE}"
    assert row["latency_p99_trace_url"] == f"https://tempo.example/explore?traceId={SLOW_TRACE}"
    assert row["requests_in_window"] == 200 and row["error_ratio"] == pytest.approx(0.05)
    assert row["request_rate"] > 0
    assert row["error_trace_id"] == ERROR_TRACE
    assert row["error_trace_url"] == f"https://tempo.example/explore?traceId={ERROR_TRACE}"
    assert row["cpu_utilization"] == pytest.approx(0.45) and row["cpu_pods"] == 3
    assert row["cpu_observed_at"] == T0
    assert (row["latency_target_seconds"], row["cpu_target_utilization"]) == (0.25, 0.6)
    decision = row["decision"]
    assert decision["reason"] == "latency"
    assert decision["ratio"] == pytest.approx(2.0, rel=0.01) == decision["latency_ratio"]
    assert decision["cpu_ratio"] == pytest.approx(0.75)
    assert decision["trace_id"] == SLOW_TRACE
    assert decision["trace_url"] == f"https://tempo.example/explore?traceId={SLOW_TRACE}"
    # The routes under the workload, each with its own figures and links.
    assert [r["route"] for r in row["routes"]] == ["cart", "pay"]
    cart, pay = row["routes"]
    assert set(cart) == WINDOW_FIELDS | {"route"}
    assert cart["error_ratio"] == pytest.approx(0.1) and cart["error_trace_id"] == ERROR_TRACE
    assert pay["latency_p95_seconds"] == pytest.approx(0.01, rel=0.01)
    assert pay["latency_p95_trace_url"] == f"https://tempo.example/explore?traceId={FAST_TRACE}"
    assert pay["error_ratio"] == 0 and pay["error_trace_id"] is None and pay["error_trace_url"] is None


async def test_json_keeps_the_per_series_rows(world: World, client: Any) -> None:
    shop(world)
    world.requests(SeriesKey("shop", "catalog"), [0.02] * 10)
    doc = await get_json(await client(TEMPLATE))
    series = {(r["workload"], r.get("route")): r for r in doc["series"]}
    assert sorted(series, key=str) == sorted([("catalog", None), ("checkout", "cart"), ("checkout", "pay")],
                                             key=str)
    assert "route" not in series[("catalog", None)]  # as before: no route label without a route
    cart = series[("checkout", "cart")]
    assert cart["namespace"] == "shop" and set(cart) == WINDOW_FIELDS | {"namespace", "workload", "route"}
    assert cart["latency_p95_trace_id"] == SLOW_TRACE and cart["requests_in_window"] == 100
    assert cart["latency_p95_trace_url"] == f"https://tempo.example/explore?traceId={SLOW_TRACE}"
    # A workload with only one series and no route lists no routes.
    catalog = next(w for w in doc["workloads"] if w["workload"] == "catalog")
    assert catalog["routes"] == [] and catalog["requests_in_window"] == 10
    assert catalog["cpu_utilization"] is None and catalog["cpu_pods"] is None
    assert catalog["decision"] is None  # 10 requests < min_samples and no CPU: the HPA holds


async def test_json_cpu_only_workload(world: World, client: Any) -> None:
    world.cpu.put_workload("shop", "worker", WorkloadCpu(0.9, 1.0, 2, T0))
    doc = await get_json(await client())
    assert doc["series"] == []
    [row] = doc["workloads"]
    assert row["workload"] == "worker" and row["routes"] == []
    assert all(row[f] is None for f in WINDOW_FIELDS)
    assert row["cpu_utilization"] == pytest.approx(0.9) and row["cpu_pods"] == 2
    assert row["decision"]["reason"] == "cpu_only_low_traffic"
    assert row["decision"]["ratio"] == pytest.approx(1.5)
    assert row["decision"]["trace_id"] is None and row["decision"]["trace_url"] is None


async def test_json_without_a_template_has_ids_and_null_urls(world: World, client: Any) -> None:
    shop(world)
    doc = await get_json(await client())
    assert doc["trace_url_template"] is None
    [row] = doc["workloads"]
    assert row["latency_p95_trace_id"] == SLOW_TRACE and row["error_trace_id"] == ERROR_TRACE
    urls = [v for k, v in row.items() if k.endswith("_trace_url")]
    urls += [v for r in row["routes"] for k, v in r.items() if k.endswith("_trace_url")]
    urls += [v for r in doc["series"] for k, v in r.items() if k.endswith("_trace_url")]
    assert len(urls) == 4 + 2 * 4 + 2 * 4 and all(u is None for u in urls)
    assert row["decision"]["trace_id"] == SLOW_TRACE and row["decision"]["trace_url"] is None


async def test_empty_store(client: Any) -> None:
    c = await client(TEMPLATE)
    doc = await get_json(c)
    assert doc["series"] == [] and doc["workloads"] == []
    assert "No workload has latency or CPU data" in await get_html(c)


# -- HTML ------------------------------------------------------------------------------------------------


class Tags(HTMLParser):
    """Every start tag with its attributes, and the page's text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(page: str) -> Tags:
    parser = Tags()
    parser.feed(page)
    parser.close()
    return parser


SAFE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "p", "code", "a", "table", "thead",
             "tbody", "tr", "th", "td", "br", "span", "em", "dl", "dt", "dd"}


def links(page: str) -> list[str]:
    return [str(attrs["href"]) for tag, attrs in parse(page).tags if tag == "a"]


async def test_html_links_every_trace_with_the_exact_url(world: World, client: Any) -> None:
    shop(world)
    page = await get_html(await client(TEMPLATE))
    hrefs = links(page)
    assert "?format=json" in hrefs
    trace_links = [h for h in hrefs if h != "?format=json"]
    assert set(trace_links) == {f"https://tempo.example/explore?traceId={t}"
                                for t in (SLOW_TRACE, FAST_TRACE, ERROR_TRACE)}
    # Workload: p50 (nearest candidate is the fast one), p95, p99, error, decision; cart: p50, p95, p99,
    # error; pay: p50, p95, p99.
    assert len(trace_links) == 5 + 4 + 3
    assert f'href="https://tempo.example/explore?traceId={SLOW_TRACE}"' in page
    text = "".join(parse(page).text)
    for shown in ("latency", "45.00 %", "3 pods", "10 ms", "5.00 %", "0.750"):  # reason, CPU, p50, ...
        assert shown in text, shown
    assert "\u21b3 cart" in text and "\u21b3 pay" in text


async def test_html_link_url_is_attribute_escaped(world: World, client: Any) -> None:
    shop(world)
    template = "https://grafana.example/explore?orgId=1&trace={trace_id}"
    page = await get_html(await client(template))
    assert f'href="https://grafana.example/explore?orgId=1&amp;trace={SLOW_TRACE}"' in page
    assert f"https://grafana.example/explore?orgId=1&trace={SLOW_TRACE}" in links(page)


async def test_html_without_a_template_shows_ids_as_text(world: World, client: Any) -> None:
    shop(world)
    page = await get_html(await client())
    assert links(page) == ["?format=json"]
    assert f'<code class="trace">{SLOW_TRACE}</code>' in page
    assert f'<code class="trace">{ERROR_TRACE}</code>' in page
    assert "--trace-url-template" in page


@pytest.mark.parametrize("template", ["", TEMPLATE])
async def test_html_escapes_names_routes_and_trace_ids(world: World, client: Any, template: str) -> None:
    world.requests(SeriesKey("shop", HOSTILE_WORKLOAD, HOSTILE_ROUTE), [0.1] * 60, errors=1,
                   candidates=[Exemplar(0.1, SLOW_TRACE)], error_trace_id=HOSTILE_TRACE)
    world.requests(SeriesKey("shop", HOSTILE_WORKLOAD, "ok"), [0.1] * 60)
    c = await client(template)
    page = await get_html(c)
    for raw in (HOSTILE_WORKLOAD, HOSTILE_ROUTE, HOSTILE_TRACE, "<script", "<img"):
        assert raw not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "&quot;&gt;&lt;script&gt;alert(3)&lt;/script&gt;" in page
    parsed = parse(page)
    assert {tag for tag, _ in parsed.tags} <= SAFE_TAGS
    assert all(set(attrs) <= {"class", "href", "rel", "charset", "lang", "name", "content", "colspan"}
               for _, attrs in parsed.tags)
    text = "".join(parsed.text)
    assert HOSTILE_WORKLOAD in text and HOSTILE_ROUTE in text and HOSTILE_TRACE in text  # shown as text
    assert "not a valid label value" in text  # no HPA can select it, so no decision
    hostile_url = trace_url(TEMPLATE, HOSTILE_TRACE)
    if template:
        assert hostile_url == ("https://tempo.example/explore?traceId="
                               "%22%3E%3Cscript%3Ealert%283%29%3C%2Fscript%3E")
        assert hostile_url in links(page)
    assert all(h == "?format=json" or h.startswith("https://tempo.example/explore?traceId=")
               for h in links(page))
    # The JSON carries the same strings as data, and says the workload cannot be selected.
    doc = await get_json(c)
    [row] = doc["workloads"]
    assert row["workload"] == HOSTILE_WORKLOAD and row["selectable"] is False and row["decision"] is None
    assert [r["route"] for r in row["routes"]] == [HOSTILE_ROUTE, "ok"]
    assert row["error_trace_id"] == HOSTILE_TRACE
    assert row["error_trace_url"] == (hostile_url if template else None)


async def test_html_headers(world: World, client: Any) -> None:
    shop(world)
    resp = await (await client(TEMPLATE)).get("/debug/workloads", headers={"Accept": BROWSER_ACCEPT})
    assert resp.status == 200 and resp.content_type == "text/html"
    assert resp.headers["Content-Security-Policy"] == "default-src 'none'; style-src 'unsafe-inline'"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Vary"] == "Accept" and resp.headers["Cache-Control"] == "no-store"
    page = await resp.text()
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "src=" not in page


# -- content negotiation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("query", "accept", "html"), [
    ("", None, False),  # aiohttp's default Accept: */*
    ("", "*/*", False),
    ("", "application/json", False),
    ("", BROWSER_ACCEPT, True),
    ("", "text/html", True),
    ("", "text/*", True),
    ("", "text/html;q=0.5, application/json", False),
    ("?format=json", BROWSER_ACCEPT, False),
    ("?format=html", None, True),
    ("?format=HTML", "application/json", True),
])
async def test_content_negotiation(world: World, client: Any, query: str, accept: str | None,
                                   html: bool) -> None:
    shop(world)
    c = await client(TEMPLATE)
    resp = await c.get("/debug/workloads" + query, headers={"Accept": accept} if accept else None)
    assert resp.status == 200
    assert resp.content_type == ("text/html" if html else "application/json")
    assert resp.headers["Vary"] == "Accept"
    assert ("Content-Security-Policy" in resp.headers) is html


async def test_unknown_format_is_a_400(client: Any) -> None:
    resp = await (await client()).get("/debug/workloads?format=xml")
    assert resp.status == 400 and "format must be one of html, json" in await resp.text()


@pytest.mark.parametrize(("accept", "fmt", "html"), [
    ("", None, False),
    ("text/html", None, True),
    ("application/json, text/html", None, False),  # a tie stays JSON
    ("text/html;q=0, */*", None, False),
    ("text/html;q=bogus, application/json;q=0.1", None, False),
    ("TEXT/HTML", None, True),
    ("image/png", None, False),
    ("*/*", " html ", True),
])
def test_wants_html(accept: str, fmt: str | None, html: bool) -> None:
    assert wants_html(accept, fmt) is html


# -- the templates documented in the README --------------------------------------------------------------


GRAFANA_TEMPO = ("https://grafana.example/explore?orgId=1&left=%7B%22datasource%22:%22tempo%22,"
                 "%22queries%22:%5B%7B%22refId%22:%22A%22,%22queryType%22:%22traceql%22,"
                 "%22query%22:%22{trace_id}%22%7D%5D,%22range%22:%7B%22from%22:%22now-1h%22,"
                 "%22to%22:%22now%22%7D%7D")


@pytest.mark.parametrize(("template", "url"), [
    ("https://jaeger.example/trace/{trace_id}", f"https://jaeger.example/trace/{SLOW_TRACE}"),
    ("http://localhost:16686/trace/{trace_id}", f"http://localhost:16686/trace/{SLOW_TRACE}"),
    (GRAFANA_TEMPO, GRAFANA_TEMPO.replace("{trace_id}", SLOW_TRACE)),
    (TEMPLATE, f"https://tempo.example/explore?traceId={SLOW_TRACE}"),
])
def test_documented_templates_are_valid(template: str, url: str) -> None:
    assert check_url_template("traces.url_template", template) == template
    assert trace_url(template, SLOW_TRACE) == url


def test_an_unchecked_template_is_refused_by_the_app(world: World) -> None:
    with pytest.raises(ConfigError):
        world.app("javascript:alert(1)//{trace_id}")
    with pytest.raises(ValueError, match="same store"):
        build_ops_app(Telemetry(world.store), WindowStore(), lambda: True, world.clock,
                      provider=world.provider)
