"""The OTLP/HTTP receiver (port 4318): ``POST /v1/traces`` and ``POST /v1/metrics``.

Follows the OTLP/HTTP specification: protobuf (``application/x-protobuf``) and JSON
(``application/json``) bodies, ``Content-Encoding: gzip``, a full success answered with an empty
``Export*ServiceResponse`` in the request's encoding, a partial success with ``partial_success`` and the
rejected count, and a bad request answered 400 with a ``google.rpc.Status`` whose message says what was
wrong. The service keeps serving whatever a client sends: every rejection is counted on ``/metrics`` by
reason and logged once.

Limits: a declared ``Content-Length`` over ``max_body_bytes`` is refused (413) before the body is read;
a gzip body is decompressed with a cap, so a small "gzip bomb" never expands past
``max_decompressed_bytes``.
"""

from __future__ import annotations

import json
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware
from google.rpc import status_pb2  # type: ignore[import-untyped]

from ..errors import BadRequest, PayloadTooLarge, RequestError, UnsupportedMediaType
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
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {cap} bytes")
    if not d.eof:
        raise BadRequest("gzip body is truncated")
    return out


def _error_body(message: str, code: int, is_json: bool) -> bytes:
    grpc_code = GRPC_INVALID_ARGUMENT if code < 500 else 14
    if is_json:
        return json.dumps({"code": grpc_code, "message": message}).encode()
    return bytes(status_pb2.Status(code=grpc_code, message=message).SerializeToString())


class OtlpReceiver:
    """aiohttp handlers for both OTLP signals."""

    def __init__(self, ingestor: OtlpIngestor, telemetry: Telemetry, settings: ReceiverSettings,
                 clock: Callable[[], float] = time.time) -> None:
        self.ingestor = ingestor
        self.telemetry = telemetry
        self.settings = settings
        self.clock = clock

    async def traces(self, request: web.Request) -> web.Response:
        return await self._handle(request, "traces")

    async def metrics(self, request: web.Request) -> web.Response:
        return await self._handle(request, "metrics")

    async def _handle(self, request: web.Request, signal: str) -> web.Response:
        content_type = request.content_type
        is_json = content_type == JSON_TYPE
        try:
            if content_type not in (PROTOBUF, JSON_TYPE):
                raise UnsupportedMediaType(
                    f"unsupported Content-Type {content_type!r}; use {PROTOBUF} or {JSON_TYPE}")
            encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
            if encoding not in ("gzip", "identity", ""):
                raise UnsupportedMediaType(f"unsupported Content-Encoding {encoding!r}; use gzip or none")
            declared = request.content_length
            if declared is not None and declared > self.settings.max_body_bytes:
                raise PayloadTooLarge(
                    f"body of {declared} bytes exceeds the limit of {self.settings.max_body_bytes} bytes")
            body = await self._read(request)
            if encoding == "gzip":
                body = _gunzip(body, self.settings.max_decompressed_bytes)
            now = self.clock()
            if signal == "traces":
                result, payload = self.ingestor.ingest_traces(body, is_json, now)
            else:
                result, payload = self.ingestor.ingest_metrics(body, is_json, now)
        except RequestError as exc:
            return self._refuse(request, signal, exc, is_json)
        self._count(signal, result)
        self.telemetry.otlp_requests.labels(signal, "200").inc()
        return web.Response(body=payload, content_type=JSON_TYPE if is_json else PROTOBUF)

    async def _read(self, request: web.Request) -> bytes:
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
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

    def _refuse(self, request: web.Request, signal: str, exc: RequestError, is_json: bool) -> web.Response:
        reason = {
            413: "body_too_large",
            415: "unsupported_media_type",
        }.get(exc.code, "malformed")
        self.telemetry.otlp_rejected.labels(signal, reason).inc()
        self.telemetry.otlp_requests.labels(signal, str(exc.code)).inc()
        log.warning("otlp request refused", extra={"fields": {
            "event": "otlp_refused", "signal": signal, "code": exc.code, "reason": reason,
            "detail": str(exc), "remote": request.remote}})
        headers = {"Connection": "close"} if exc.code == 413 else None
        return web.Response(status=exc.code, body=_error_body(str(exc), exc.code, is_json),
                            content_type=JSON_TYPE if is_json else PROTOBUF, headers=headers)


def build_otlp_app(ingestor: OtlpIngestor, telemetry: Telemetry, settings: ReceiverSettings,
                   clock: Callable[[], float] = time.time, *,
                   middlewares: Iterable[Middleware] = ()) -> web.Application:
    """The receiver application; ``middlewares`` none by default (the adapter's own tracing adds one)."""
    # aiohttp's own body cap sits a little above ours so our handler produces the 413 and counts it.
    app = web.Application(client_max_size=settings.max_body_bytes + 1, middlewares=middlewares)
    app[ingestor_key] = ingestor
    receiver = OtlpReceiver(ingestor, telemetry, settings, clock)
    app.router.add_post("/v1/traces", receiver.traces)
    app.router.add_post("/v1/metrics", receiver.metrics)
    return app
