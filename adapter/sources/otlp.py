"""The OTLP/HTTP receiver (port 4318): ``POST /v1/traces`` and ``POST /v1/metrics``.

Follows the OTLP/HTTP specification: protobuf (``application/x-protobuf``) and JSON
(``application/json``) bodies, ``Content-Encoding: gzip``, a full success answered with an empty
``Export*ServiceResponse`` in the request's encoding, a partial success with ``partial_success`` and the
rejected count, and a bad request answered 400 with a ``google.rpc.Status`` whose message says what was
wrong. The service keeps serving whatever a client sends: every rejection is counted on ``/metrics`` by
reason and logged once.

Limits (each counted in ``latency_adapter_limit_hits_total{limit}``, see :mod:`adapter.limits`): a
declared ``Content-Length`` over ``max_body_bytes`` is refused (413) before the body is read; a gzip
body is decompressed with a cap, so a small "gzip bomb" never expands past ``max_decompressed_bytes``; a
body must arrive within ``limits.body_timeout_seconds`` (408); spans and data points per request are
capped (413, which OTLP clients do not retry: the batch is too big to ever fit).

Back-pressure, as the OTLP specification asks of a server that cannot keep up: when more requests are in
flight than ``limits.otlp_high_water_requests``, or resident memory is over its budget, a new request is
answered 429 with ``Retry-After`` before its body is read, and the client retries with back-off. Nothing
is buffered beyond that: a 200 means the batch is already in the store. While the process is stopping,
new requests get 503 with ``Retry-After`` (retryable too) and the ones already accepted are finished.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from google.rpc import status_pb2  # type: ignore[import-untyped]

from ..errors import (
    BadRequest,
    LimitExceeded,
    RequestError,
    RequestTimeout,
    Retryable,
    ShuttingDown,
    TooManyRequests,
    UnsupportedMediaType,
)
from ..limits import LimitHits, LimitSettings, MemoryWatch
from ..telemetry import Telemetry
from .otlp_ingest import IngestResult, OtlpIngestor

log = logging.getLogger("adapter.otlp")

PROTOBUF = "application/x-protobuf"
JSON_TYPE = "application/json"
#: gRPC code INVALID_ARGUMENT, as OTLP/HTTP's Status body uses for 400.
GRPC_INVALID_ARGUMENT = 3


@dataclass(frozen=True)
class ReceiverSettings:
    max_body_bytes: int = 8 * 1024 * 1024
    max_decompressed_bytes: int = 32 * 1024 * 1024


ingestor_key = web.AppKey("ingestor", OtlpIngestor)

#: Options for the receiver's ``AppRunner``. aiohttp would otherwise gunzip request bodies itself,
#: without our cap, before the handler could count or limit them; decompression is ours alone.
OTLP_RUNNER_OPTIONS: dict[str, object] = {"auto_decompress": False}


def _gunzip(data: bytes, cap: int) -> bytes:
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(data, cap + 1)
    except zlib.error as exc:
        raise BadRequest(f"body is not valid gzip: {exc}") from exc
    if len(out) > cap or d.unconsumed_tail:
        raise LimitExceeded(f"decompressed body exceeds the limit of {cap} bytes "
                            "(otlp.max_decompressed_bytes)", "decompressed_too_large")
    if not d.eof:
        raise BadRequest("gzip body is truncated")
    return out


def _error_body(message: str, code: int, is_json: bool) -> bytes:
    grpc_code = GRPC_INVALID_ARGUMENT if code < 500 else 14
    if is_json:
        return json.dumps({"code": grpc_code, "message": message}).encode()
    return bytes(status_pb2.Status(code=grpc_code, message=message).SerializeToString())


class OtlpReceiver:
    """aiohttp handlers for both OTLP signals, with the receiver's limits and back-pressure."""

    def __init__(self, ingestor: OtlpIngestor, telemetry: Telemetry, settings: ReceiverSettings,
                 clock: Callable[[], float] = time.time, *,
                 limits: Callable[[], LimitSettings] = LimitSettings, hits: LimitHits | None = None,
                 memory: MemoryWatch | None = None) -> None:
        self.ingestor = ingestor
        self.telemetry = telemetry
        self.settings = settings
        self.clock = clock
        #: The live ``limits`` section, read per request (a config reload applies at once).
        self.limits = limits
        self.hits = hits or LimitHits()
        self.memory = memory
        #: Requests received but not yet answered: the ingest queue that back-pressure bounds.
        self.inflight = 0
        #: One body is applied per turn of the event loop, and a waiting one resumes only after the
        #: loop's other ready work: bodies that arrive together then take turns with the API's requests
        #: instead of holding the loop for all of them in a row (sixteen 512-span bodies: about 40 ms).
        self._lane = asyncio.Lock()
        #: Set when the process starts stopping: new requests get 503 + Retry-After.
        self.draining = False
        #: Items in requests answered 200 since start (the totals of the shutdown log line).
        self.accepted: dict[str, int] = {"traces": 0, "metrics": 0}

    async def traces(self, request: web.Request) -> web.Response:
        return await self._handle(request, "traces")

    async def metrics(self, request: web.Request) -> web.Response:
        return await self._handle(request, "metrics")

    def _admit(self, limits: LimitSettings) -> None:
        """Refuse before reading anything when stopping or saturated (raises a retryable error)."""
        retry = limits.retry_after_seconds
        if self.draining:
            raise ShuttingDown("the adapter is shutting down; retry against another replica", retry)
        if self.inflight >= limits.otlp_high_water_requests:
            self.hits.hit("ingest_queue")
            raise TooManyRequests(f"ingest is saturated: {self.inflight} requests in flight "
                                  "(limits.otlp_high_water_requests); retry later", retry)
        if self.memory is not None and self.memory.over_budget():
            self.hits.hit("memory")
            raise TooManyRequests(f"memory is over budget ({self.memory.last_rss} bytes resident, budget "
                                  f"{self.memory.budget_bytes}: limits.memory_budget_bytes); retry later",
                                  retry)

    async def _handle(self, request: web.Request, signal: str) -> web.Response:
        content_type = request.content_type
        is_json = content_type == JSON_TYPE
        limits = self.limits()
        try:
            self._admit(limits)
        except RequestError as exc:
            return self._refuse(request, signal, exc, is_json)
        self.inflight += 1
        try:
            if content_type not in (PROTOBUF, JSON_TYPE):
                raise UnsupportedMediaType(
                    f"unsupported Content-Type {content_type!r}; use {PROTOBUF} or {JSON_TYPE}")
            encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("gzip", "identity", ""):
                raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}; use gzip or none")
            declared = request.content_length
            if declared is not None and declared > self.settings.max_body_bytes:
                raise LimitExceeded(f"body of {declared} bytes exceeds the limit of "
                                    f"{self.settings.max_body_bytes} bytes (otlp.max_body_bytes)",
                                    "content_length")
            try:
                async with asyncio.timeout(limits.body_timeout_seconds):
                    body = await self._read(request)
            except TimeoutError:
                self.hits.hit("body_timeout")
                raise RequestTimeout(f"body not received within {limits.body_timeout_seconds:g} s "
                                     "(limits.body_timeout_seconds)") from None
            async with self._lane:
                if encoding == "gzip":
                    body = _gunzip(body, self.settings.max_decompressed_bytes)
                if signal == "traces":
                    prepared = self.ingestor.prepare_traces(body, is_json,
                                                            max_items=limits.max_spans_per_request)
                    # Decoding and applying are two turns of the loop: a request of the API that
                    # arrives meanwhile waits for half of a body's work, not all of it.
                    await asyncio.sleep(0)
                    result, payload = self.ingestor.apply_traces(prepared, self.clock())
                else:
                    result, payload = self.ingestor.ingest_metrics(body, is_json, self.clock(),
                                                                   max_items=limits.max_points_per_request)
                # Keep the lane through one turn of the loop: a body that arrived with this one waits
                # behind whatever else is ready by now, the API's requests included.
                await asyncio.sleep(0)
        except RequestError as exc:
            return self._refuse(request, signal, exc, is_json)
        finally:
            self.inflight -= 1
        self._count(signal, result)
        self.accepted[signal] += result.accepted
        self.telemetry.otlp_requests.labels(signal, "200").inc()
        return web.Response(body=payload, content_type=JSON_TYPE if is_json else PROTOBUF)

    async def _read(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise LimitExceeded(f"body exceeds the limit of {limit} bytes (otlp.max_body_bytes)",
                                    "body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    def _count(self, signal: str, result: IngestResult) -> None:
        t = self.telemetry
        if result.accepted:
            t.otlp_items.labels(signal, "accepted").inc(result.accepted)
        if result.ignored:
            t.otlp_items.labels(signal, "ignored").inc(result.ignored)
        if result.rejected:
            t.otlp_items.labels(signal, "rejected").inc(result.rejected)
            for reason, n in result.reasons.items():
                t.otlp_rejected.labels(signal, reason).inc(n)
            if "label_too_long" in result.reasons:
                self.hits.hit("label_too_long", result.reasons["label_too_long"])

    def _refuse(self, request: web.Request, signal: str, exc: RequestError, is_json: bool) -> web.Response:
        limit = getattr(exc, "limit", None)
        if limit is not None:
            self.hits.hit(limit)
        # Reasons predate the limit names; size limits keep "body_too_large", new limits add their own.
        reason = limit if limit in ("too_many_spans", "too_many_points") else {
            408: "body_timeout",
            413: "body_too_large",
            415: "unsupported_media_type",
            429: "backpressure",
            503: "shutting_down",
        }.get(exc.code, "malformed")
        self.telemetry.otlp_rejected.labels(signal, reason).inc()
        self.telemetry.otlp_requests.labels(signal, str(exc.code)).inc()
        # Refusals of a flood (429, 503) are counted, not logged one by one.
        level = logging.DEBUG if exc.code in (429, 503) else logging.WARNING
        log.log(level, "otlp request refused", extra={"fields": {
            "event": "otlp_refused", "signal": signal, "code": exc.code, "reason": reason,
            "detail": str(exc), "remote": request.remote}})
        headers: dict[str, str] = {}
        if isinstance(exc, Retryable):
            headers["Retry-After"] = str(exc.retry_after)
        if exc.code in (408, 413, 429, 503) and not request.content.at_eof():
            headers["Connection"] = "close"  # the unread body must not be parsed as the next request
        return web.Response(status=exc.code, body=_error_body(str(exc), exc.code, is_json),
                            content_type=JSON_TYPE if is_json else PROTOBUF, headers=headers or None)


receiver_key = web.AppKey("receiver", OtlpReceiver)


def build_otlp_app(ingestor: OtlpIngestor, telemetry: Telemetry, settings: ReceiverSettings,
                   clock: Callable[[], float] = time.time, *,
                   middlewares: Iterable[Middleware] = (),
                   limits: Callable[[], LimitSettings] = LimitSettings, hits: LimitHits | None = None,
                   memory: MemoryWatch | None = None) -> web.Application:
    """The receiver application; ``middlewares`` none by default (the adapter's own tracing adds one).

    ``limits`` returns the live ``limits`` section, ``hits`` counts limits hit, ``memory`` (optional)
    turns on back-pressure by resident memory. The receiver is ``app[receiver_key]``.
    """
    # aiohttp's own body cap sits a little above ours so our handler produces the 413 and counts it.
    app = web.Application(client_max_size=settings.max_body_bytes + 1, middlewares=middlewares)
    app[ingestor_key] = ingestor
    receiver = OtlpReceiver(ingestor, telemetry, settings, clock, limits=limits, hits=hits, memory=memory)
    app[receiver_key] = receiver
    app.router.add_post("/v1/traces", receiver.traces)
    app.router.add_post("/v1/metrics", receiver.metrics)
    return app
