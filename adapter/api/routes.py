"""Request handlers of the external metrics API (the HTTPS listener the kube-aggregator calls).

Paths and shapes: DESIGN section 4. Handlers raise :mod:`adapter.errors` exceptions; :func:`_respond`
turns each into a ``Status`` through :func:`adapter.errors.status_of`, so no handler builds a ``Status``
by hand and a client never sees a traceback (the log line has the detail).

The value path is hot (every HPA, every 15 s, and the benchmark's 10,000 requests/s): the answer for a
``(namespace, metric, selector)`` is computed once per refresh tick by the provider, and its JSON
bytes are cached here next to the reading they came from.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import unquote

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..errors import (
    BadRequest,
    MethodNotAllowed,
    NotFoundPath,
    RequestError,
    Retryable,
    TooManyRequests,
    quote,
    status_of,
)
from ..limits import LimitHits, LimitSettings
from ..model import Reading
from ..provider import MetricsProvider
from ..selector import parse_selector
from ..telemetry import Telemetry
from . import wire
from .guard import RequestGuard

log = logging.getLogger("adapter.api")

PREFIX = f"/apis/{wire.GROUP}/{wire.VERSION}"
#: A namespace is a DNS-1123 label, as the apiserver validates it.
NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
METRIC_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
JSON = "application/json"
MAX_RENDERED = 20_000

provider_key = web.AppKey("provider", MetricsProvider)
telemetry_key = web.AppKey("telemetry", Telemetry)

Handler = Callable[[web.Request], Awaitable[web.Response]]


class ApiHandlers:
    """The handlers, with the caches of static documents and rendered values they share."""

    def __init__(self, provider: MetricsProvider, telemetry: Telemetry, guard: RequestGuard | None,
                 limits: Callable[[], LimitSettings] = LimitSettings, hits: LimitHits | None = None) -> None:
        self.provider = provider
        self.telemetry = telemetry
        #: The live ``limits`` section (re-read per request: a config reload applies at once).
        self.limits = limits
        self.hits = hits or LimitHits()
        #: Requests being handled now (they wait only on access reviews, so this is the review backlog).
        self.inflight = 0
        #: None only with --insecure-no-auth: then nobody is asked who they are.
        self.guard = guard
        self._group_list = wire.api_group_list()
        self._group = wire.api_group()
        self._resources = wire.api_resource_list(provider.metric_names())
        self._rendered: dict[str, tuple[Reading, bytes]] = {}
        self._observe = {
            route: telemetry.api_requests.labels(route, "200")
            for route in ("discovery", "resources", "value")
        }

    def _respond(self, route: str, started: float, body: bytes) -> web.Response:
        self._observe[route].observe(time.perf_counter() - started)
        return web.Response(body=body, content_type=JSON)

    def _fail(self, request: web.Request, route: str, started: float, exc: BaseException) -> web.Response:
        reason, code = status_of(exc)
        message = str(exc) if isinstance(exc, RequestError) else "internal error; see the adapter's log"
        if isinstance(exc, RequestError):
            log.info("api request refused", extra={"fields": {
                "event": "api_refused", "path": request.path_qs[:512], "code": code, "reason": reason,
                "user": exc.user or None, "detail": message}})
        else:
            log.error("api request failed", exc_info=exc, extra={"fields": {
                "event": "api_error", "path": request.path_qs[:512]}})
        self.telemetry.api_requests.labels(route, str(code)).observe(time.perf_counter() - started)
        self.telemetry.api_rejected.labels(reason).inc()
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Retryable) else None
        return web.Response(status=code, body=wire.status(code, reason, message), content_type=JSON,
                            headers=headers)

    def limited(self, route: str, handler: Handler) -> Handler:
        """``handler`` behind ``limits.max_concurrent_requests``: beyond it, 429 with ``Retry-After``.

        Like kube-apiserver's max-in-flight limit: a backlog of access reviews (a slow API server) must
        not pile up requests, and their memory, without bound.
        """
        async def bounded(request: web.Request) -> web.Response:
            limits = self.limits()
            if self.inflight >= limits.max_concurrent_requests:
                self.hits.hit("concurrent_requests")
                return self._fail(request, route, time.perf_counter(), TooManyRequests(
                    f"more than {limits.max_concurrent_requests} requests in flight "
                    "(limits.max_concurrent_requests); retry shortly", limits.retry_after_seconds))
            self.inflight += 1
            try:
                return await handler(request)
            finally:
                self.inflight -= 1
        return bounded

    async def _discovery(self, request: web.Request, route: str, body: bytes) -> web.Response:
        started = time.perf_counter()
        try:
            if self.guard is not None:
                await self.guard.authenticate(request)
        except Exception as exc:
            return self._fail(request, route, started, exc)
        return self._respond(route, started, body)

    async def group_list(self, request: web.Request) -> web.Response:
        return await self._discovery(request, "discovery", self._group_list)

    async def group(self, request: web.Request) -> web.Response:
        return await self._discovery(request, "discovery", self._group)

    async def resources(self, request: web.Request) -> web.Response:
        return await self._discovery(request, "resources", self._resources)

    async def value(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            namespace = request.match_info["namespace"]
            metric = request.match_info["metric"]
            if not NAMESPACE_RE.match(namespace) or len(namespace) > 63:
                raise BadRequest(f"namespace {quote(namespace)} is not a valid namespace name")
            if not METRIC_RE.match(metric):
                raise NotFoundPath(f"metric {quote(metric)} is not a valid metric name")
            # client-go lower-cases metric names; accept any case, serve lower-case.
            metric = metric.lower()
            if self.guard is not None:
                await self.guard.check_value(request, metric, namespace)
            # Fast path: the same URL within the same refresh tick gets the same bytes; no query parsing,
            # no selector, no provider lookup. Authorisation above has already run for this request.
            key = request.raw_path
            tick_time = self.provider.tick_time()
            rendered = self._rendered.get(key)
            if rendered is not None and rendered[0].timestamp == tick_time:
                return self._respond("value", started, rendered[1])
            selector = parse_selector(request.query.get("labelSelector", ""))
            reading = self.provider.reading(namespace, metric, selector)
            if len(self._rendered) >= MAX_RENDERED:
                self._rendered.clear()
            rendered = (reading, wire.external_metric_value_list(reading))
            self._rendered[key] = rendered
            return self._respond("value", started, rendered[1])
        except Exception as exc:
            return self._fail(request, "value", started, exc)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def fallback(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        path = unquote(request.path)
        exc: RequestError
        if request.method not in ("GET", "HEAD"):
            exc = MethodNotAllowed(
                f"method {request.method} is not allowed on {path!r}; this API is read-only")
        else:
            exc = NotFoundPath(f"the server could not find the requested resource {quote(path)}")
        return self._fail(request, "other", started, exc)


def add_routes(app: web.Application, handlers: ApiHandlers) -> None:
    app.router.add_get("/apis", handlers.limited("discovery", handlers.group_list))
    app.router.add_get(f"/apis/{wire.GROUP}", handlers.limited("discovery", handlers.group))
    app.router.add_get(PREFIX, handlers.limited("resources", handlers.resources))
    app.router.add_get(PREFIX + "/namespaces/{namespace}/{metric}", handlers.limited("value", handlers.value))
    for path in ("/healthz", "/livez", "/readyz"):
        app.router.add_get(path, handlers.health)
    app.router.add_route("*", "/{tail:(?s:.*)}", handlers.fallback)  # (?s): an encoded newline too


def build_api_app(provider: MetricsProvider, telemetry: Telemetry,
                  guard: RequestGuard | None = None, *,
                  middlewares: Iterable[Middleware] = (),
                  limits: Callable[[], LimitSettings] = LimitSettings,
                  hits: LimitHits | None = None) -> web.Application:
    """The API application; ``guard`` None serves everyone (``--insecure-no-auth`` only).

    ``middlewares``: none by default (the value path is hot); the adapter's own tracing adds one.
    ``limits`` returns the live ``limits`` section; ``hits`` counts the limits hit.
    """
    app = web.Application(middlewares=middlewares)
    app[provider_key] = provider
    app[telemetry_key] = telemetry
    add_routes(app, ApiHandlers(provider, telemetry, guard, limits, hits))
    return app
