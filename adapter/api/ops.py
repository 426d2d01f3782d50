"""The operations listener (port 9464): ``/metrics``, ``/healthz``, ``/readyz``, ``/debug/workloads``.

``/metrics`` speaks the Prometheus text format, or OpenMetrics when the scraper asks for it (which is
what carries exemplars). ``/debug/workloads`` lists every live series with its current values as JSON,
the first place to look when an HPA says a metric is missing.
"""

from __future__ import annotations

import json
from collections.abc import Callable

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from ..provider import LATENCY_QUANTILES
from ..store import WindowStore
from ..telemetry import Telemetry


def build_ops_app(telemetry: Telemetry, store: WindowStore, ready: Callable[[], bool],
                  clock: Callable[[], float]) -> web.Application:
    app = web.Application()

    async def metrics(request: web.Request) -> web.Response:
        telemetry.sync_store_counters()
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = encoder(telemetry.registry)
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(request: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ok")
        return web.Response(status=503, text="not ready")

    async def workloads(request: web.Request) -> web.Response:
        rows = []
        now = clock()
        store.advance(now)
        ordered = sorted(store.all_series(), key=lambda s: (s.key.namespace, s.key.workload, s.key.route))
        for series in ordered:
            view = store.view([series], now=now)
            row: dict[str, object] = {"namespace": series.key.namespace, **series.key.labels()}
            if view is not None:
                for metric, q in LATENCY_QUANTILES.items():
                    value = view.sketch.quantile(q)
                    row[metric] = value
                    exemplar = view.exemplar_near(value) if value is not None else None
                    row[metric.replace("_seconds", "_trace_id")] = exemplar.trace_id if exemplar else None
                row["request_rate"] = view.count / view.seconds
                row["error_ratio"] = view.errors / view.count
                row["requests_in_window"] = view.count
            rows.append(row)
        body = json.dumps({"epoch": store.epoch, "series": rows}, indent=1)
        return web.Response(text=body, content_type="application/json")

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/livez", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/debug/workloads", workloads)
    return app
