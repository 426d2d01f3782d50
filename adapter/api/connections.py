"""Connection-level bounds for every listener: slow clients, too many connections, oversized headers.

aiohttp parses requests itself, so these bounds sit around its server object rather than in handlers:

* **Slow clients (slowloris).** A connection must deliver its first complete request line and headers
  within ``server.header_timeout_seconds`` of opening; the TLS handshake has the same bound. Later
  requests on a keep-alive connection get aiohttp's keep-alive timeout, set to the same value, which
  also closes a connection idle or trickling between requests. A connection closed by the first timer
  is counted as ``header_timeout``.
* **Connections.** At most ``server.max_connections`` open per listener; one more is closed at once
  and counted as ``connections``. Open files are the real limit behind this (the process raises its
  soft limit to the hard one at start).
* **Header size.** aiohttp answers 400 and closes the connection for a line over
  ``server.max_header_bytes`` or more than ``server.max_headers`` fields. It would log each with a
  traceback; :class:`HttpErrorLog` counts them as ``header_too_large`` and writes at most one short line
  per kind every :data:`LOG_EVERY_SECONDS`, so a flood of bad requests cannot flood the log.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable, MutableMapping
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong

from ..limits import LimitHits, ServerSettings

log = logging.getLogger("adapter.http")

#: At most one log line per kind of malformed request in this many seconds (the rest are counted).
LOG_EVERY_SECONDS = 10.0


def runner_options(server: ServerSettings, listener: str, hits: LimitHits) -> dict[str, Any]:
    """``AppRunner`` keyword arguments that apply ``server`` to aiohttp's own request parser."""
    return {
        "keepalive_timeout": server.header_timeout_seconds,
        "max_line_size": server.max_header_bytes,
        "max_field_size": server.max_header_bytes,
        "max_headers": server.max_headers,
        "logger": HttpErrorLog(listener, hits),
    }


class HttpErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger for one listener: counts and briefly logs requests it could not parse."""

    def __init__(self, listener: str, hits: LimitHits, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.listener = listener
        self.hits = hits
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        return msg, kwargs

    def exception(self, msg: object, *args: object, exc_info: Any = True, **kwargs: Any) -> None:
        exc = exc_info if isinstance(exc_info, BaseException) else None
        if not isinstance(exc, BadHttpMessage):  # not a parse failure: keep aiohttp's full report
            self.logger.error(msg, *args, exc_info=exc_info, **kwargs)
            return
        kind = "header_too_large" if _is_header_limit(exc) else "bad_request"
        if kind == "header_too_large":
            self.hits.hit("header_too_large")
        self._brief(kind, exc)

    def debug(self, msg: object, *args: object, exc_info: Any = None, **kwargs: Any) -> None:
        # aiohttp logs a non-HTTP first line (TLS to a plain port, scanners) at debug with a traceback.
        if isinstance(exc_info, BadHttpMessage):
            self._brief("bad_request", exc_info)
            return
        self.logger.debug(msg, *args, exc_info=exc_info, **kwargs)

    def _brief(self, kind: str, exc: BaseException) -> None:
        now = self._clock()
        if now - self._last.get(kind, -1e18) < LOG_EVERY_SECONDS:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        suppressed = self._suppressed.pop(kind, 0)
        # Only the kind of error: aiohttp's messages quote the offending bytes, which may hold a token.
        log.warning("http request refused by the parser", extra={"fields": {
            "event": "http_refused", "listener": self.listener, "reason": kind,
            "error": type(exc).__name__, "suppressed_since_last": suppressed}})


def _is_header_limit(exc: BadHttpMessage) -> bool:
    return isinstance(exc, LineTooLong) or "too many headers" in str(exc).lower()


class ConnectionGuard:
    """Header timeout and connection cap for one listener's aiohttp ``Server``.

    Hooks the server's ``connection_made``/``connection_lost`` and its request factory (public
    attributes of ``aiohttp.web.Server``); a connection's timer stops when its first request is parsed.
    """

    def __init__(self, listener: str, settings: ServerSettings, hits: LimitHits) -> None:
        self.listener = listener
        self.settings = settings
        self.hits = hits
        self._timers: dict[object, asyncio.TimerHandle] = {}
        self.open = 0

    def install(self, server: web.Server) -> None:
        made, lost, factory = server.connection_made, server.connection_lost, server.request_factory
        loop = asyncio.get_running_loop()
        timeout = self.settings.header_timeout_seconds

        def connection_made(handler: web.RequestHandler, transport: asyncio.Transport) -> None:
            made(handler, transport)
            self.open += 1
            if self.open > self.settings.max_connections:
                self.hits.hit("connections")
                transport.close()
                return
            self._timers[handler] = loop.call_later(timeout, self._expire, handler)

        def connection_lost(handler: web.RequestHandler, exc: BaseException | None = None) -> None:
            self.open -= 1
            timer = self._timers.pop(handler, None)
            if timer is not None:
                timer.cancel()
            lost(handler, exc)

        def request_factory(message: Any, payload: Any, protocol: web.RequestHandler, writer: Any,
                            task: Any) -> web.BaseRequest:
            timer = self._timers.pop(protocol, None)
            if timer is not None:
                timer.cancel()
            return factory(message, payload, protocol, writer, task)

        server.connection_made = connection_made  # type: ignore[method-assign]
        server.connection_lost = connection_lost  # type: ignore[method-assign]
        server.request_factory = request_factory

    def _expire(self, handler: web.RequestHandler) -> None:
        if self._timers.pop(handler, None) is None:
            return
        self.hits.hit("header_timeout")
        handler.force_close()


class BoundedTCPSite(web.TCPSite):
    """A TCP site whose TLS handshake must finish within the header timeout (asyncio's default is 60 s)."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, handshake_timeout: float,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 1024) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=backlog, reuse_address=True)
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address,
            ssl_handshake_timeout=self._handshake_timeout if self._ssl_context is not None else None)
