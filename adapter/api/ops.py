"""The operations listener (port 9464): ``/metrics``, ``/healthz``, ``/readyz``, ``/debug/workloads``.

``/metrics`` speaks the Prometheus text format, or OpenMetrics when the scraper asks for it (which is
what carries exemplars). ``/debug/workloads`` lists every workload and every live series with its
current values, CPU and dual-signal decision, and a link to the trace behind each number: the first
place to look when an HPA says a metric is missing or scales for a reason nobody expected. It answers
JSON (the default, and ``?format=json``) or one HTML page when the client prefers ``text/html`` (a
browser) or asks ``?format=html``; the shapes are described in :mod:`adapter.api.debug_page`.

The operations port is plain HTTP with no authentication (Prometheus and the kubelet use it), and the
debug page shows workload names, routes and trace ids, so ``/debug/*`` is off unless asked for
(``server.debug_endpoints``, ``--debug-endpoints``; on by default only with ``--insecure-no-auth``). When
off it answers 404 saying how to turn it on.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from ..provider import MetricsProvider
from ..store import WindowStore
from ..telemetry import Telemetry
from ..traces import TraceSettings, check_url_template
from . import exposition
from .debug_page import HTML_HEADERS, collect, render_html, to_json, wants_html

#: Headers of every /debug/workloads answer: its representation depends on Accept, and it is live data.
_DEBUG_HEADERS = {"Vary": "Accept", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


def build_ops_app(telemetry: Telemetry, store: WindowStore, ready: Callable[[], bool],
                  clock: Callable[[], float], *, provider: MetricsProvider | None = None,
                  traces: TraceSettings | None = None, debug: bool = True) -> web.Application:
    """The operations app. ``provider`` (on ``store``) gives ``/debug/workloads`` its CPU and decisions
    (without one, a provider with no CPU data and the default policy is used); ``traces`` its links;
    ``debug`` False turns ``/debug/*`` off."""
    if provider is None:
        provider = MetricsProvider(store, clock)
    if provider.store is not store:
        raise ValueError("the provider must read the same store")
    # Links are only ever made from a template that passed the configuration's check.
    template = check_url_template("traces.url_template", (traces or TraceSettings()).url_template)
    app = web.Application()

    async def metrics(request: web.Request) -> web.Response:
        telemetry.sync_store_counters()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        # Collected on the loop (collectors read live state), written out in turns of the loop: with
        # thousands of workloads the text is most of a scrape's cost, and the API must not wait for it.
        body = await exposition.encode(encoder, list(telemetry.registry.collect()))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok")
        return web.Response(status=503, text="not ready")

    async def workloads(request: web.Request) -> web.Response:
        if not debug:
            return web.Response(status=404, text="the debug endpoints are off; turn them on with "
                                "--debug-endpoints on (config server.debug_endpoints)\n",
                                headers=_DEBUG_HEADERS)
        try:
            html = wants_html(request.headers.get("Accept", ""), request.query.get("format"))
        except ValueError as exc:
            return web.Response(status=400, text=f"{exc}\n", headers=_DEBUG_HEADERS)
        now = clock()
        store.advance(now)
        snapshot = collect(store, provider.dual, now)
        if html:
            return web.Response(text=render_html(snapshot, template), content_type="text/html",
                                charset="utf-8", headers={**_DEBUG_HEADERS, **HTML_HEADERS})
        body = json.dumps(to_json(snapshot, template), indent=1)
        return web.Response(text=body, content_type="application/json", headers=_DEBUG_HEADERS)

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/debug/workloads", workloads)
    return app
