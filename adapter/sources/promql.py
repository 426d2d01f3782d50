"""An async PromQL client: ``/api/v1/query`` and ``/api/v1/query_exemplars``, with auth, TLS and errors.

Why its own module: it speaks the HTTP API any PromQL backend offers (Prometheus, Thanos, Mimir,
VictoriaMetrics) and classifies every failure by kind; what is asked and what is cached is the
source's business (:mod:`adapter.sources.prometheus`).
"""

from __future__ import annotations

import json
import math
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    pass

from .prometheus_config import (
    ERROR_KINDS,
    PrometheusSettings,
)

# --------------------------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------------------------


class PrometheusQueryError(Exception):
    """A query that gave no answer, classified by :data:`ERROR_KINDS`."""

    def __init__(self, kind: str, message: str, status: int | None = None, error_type: str = "") -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.error_type = error_type


def scalar_of(doc: Any) -> float | None:
    """The one value of a successful ``/api/v1/query`` answer; ``None`` for empty, NaN or ±Inf."""
    if not isinstance(doc, dict) or doc.get("status") != "success" or not isinstance(doc.get("data"), dict):
        raise PrometheusQueryError("bad_response", f"not a successful query answer: {str(doc)[:200]}")
    data = doc["data"]
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar":
        pair = result
    elif kind == "vector" and isinstance(result, list):
        if not result:
            return None
        if len(result) > 1:
            raise PrometheusQueryError("bad_response",
                                       f"the query returned {len(result)} series, expected one")
        pair = result[0].get("value") if isinstance(result[0], dict) else None
    else:
        raise PrometheusQueryError("bad_response", f"unexpected result type {kind!r}")
    try:
        value = float(pair[1])
    except (TypeError, ValueError, IndexError, KeyError) as exc:
        raise PrometheusQueryError("bad_response", f"unexpected sample {str(pair)[:100]}") from exc
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class ExemplarPoint:
    value: float
    trace_id: str


def exemplars_of(doc: Any) -> list[ExemplarPoint]:
    """The exemplars with a trace id of a ``/api/v1/query_exemplars`` answer."""
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise PrometheusQueryError("bad_response", f"not a successful exemplar answer: {str(doc)[:200]}")
    out: list[ExemplarPoint] = []
    for series in doc.get("data") or []:
        for ex in (series.get("exemplars") or []) if isinstance(series, dict) else []:
            labels = ex.get("labels") or {}
            trace_id = labels.get("trace_id") or labels.get("traceID") or labels.get("traceId")
            try:
                value = float(ex.get("value"))
            except (TypeError, ValueError):
                continue
            if trace_id and math.isfinite(value):
                out.append(ExemplarPoint(value, str(trace_id)))
    return out


def nearest(points: list[ExemplarPoint], value: float) -> ExemplarPoint:
    """The exemplar whose latency is nearest ``value`` (``points`` must not be empty)."""
    return min(points, key=lambda p: abs(p.value - value))


class PrometheusClient:
    """``/api/v1/query`` and ``/api/v1/query_exemplars`` with auth, headers and a timeout per query."""

    def __init__(self, settings: PrometheusSettings, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None
        self.queries = 0
        self.errors: dict[str, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.last_success: float | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if self.settings.ca_file:
            return ssl.create_default_context(cafile=self.settings.ca_file)
        return True

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            s = self.settings
            auth = None
            if s.basic_auth_username is not None and s.basic_auth_password_file is not None:
                password = Path(s.basic_auth_password_file).read_text(encoding="utf-8").strip()
                auth = aiohttp.BasicAuth(s.basic_auth_username, password)
            self._session = aiohttp.ClientSession(
                headers=dict(s.headers), auth=auth, connector=aiohttp.TCPConnector(ssl=self._ssl()),
                timeout=aiohttp.ClientTimeout(total=s.timeout_seconds))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _headers(self) -> dict[str, str]:
        token_file = self.settings.bearer_token_file
        if token_file is None:
            return {}
        try:  # read per request: projected tokens rotate
            token = Path(token_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise PrometheusQueryError("connection", f"cannot read bearer_token_file: {exc}") from exc
        return {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, params: dict[str, str]) -> Any:
        """One GET of the API; the decoded JSON document, or :class:`PrometheusQueryError` (counted)."""
        self.queries += 1
        try:
            doc = await self._get(path, params)
        except PrometheusQueryError as exc:
            self.errors[exc.kind] = self.errors.get(exc.kind, 0) + 1
            raise
        self.last_success = self._clock()
        return doc

    async def _get(self, path: str, params: dict[str, str]) -> Any:
        url = self.settings.url + path
        try:
            session = self.session()
        except (OSError, ssl.SSLError) as exc:  # password_file or ca_file unreadable or invalid
            raise PrometheusQueryError("connection", f"cannot set up the client: {exc}") from exc
        try:
            async with session.get(url, params=params, headers=self._headers()) as resp:
                body = await resp.read()
                status = resp.status
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise PrometheusQueryError(
                "timeout", f"no answer within {self.settings.timeout_seconds:g}s") from exc
        except aiohttp.ClientError as exc:
            raise PrometheusQueryError("connection", f"{type(exc).__name__}: {exc}") from exc
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if status != 200:
            error_type = doc.get("errorType", "") if isinstance(doc, dict) else ""
            error = doc.get("error", "") if isinstance(doc, dict) else body[:200].decode("utf-8", "replace")
            raise PrometheusQueryError("http_status", f"HTTP {status}: {error_type} {error}".strip(),
                                       status, str(error_type))
        if doc is None:
            raise PrometheusQueryError("bad_response", f"body is not JSON: {body[:100]!r}")
        return doc

    async def query(self, promql: str, at: float) -> float | None:
        """An instant query's one value at ``at``; ``None`` when the answer is empty, NaN or ±Inf."""
        doc = await self.get("/api/v1/query", {"query": promql, "time": f"{at:.3f}"})
        try:
            return scalar_of(doc)
        except PrometheusQueryError as exc:
            self.errors[exc.kind] += 1
            raise

    async def query_exemplars(self, promql: str, start: float, end: float) -> list[ExemplarPoint]:
        doc = await self.get("/api/v1/query_exemplars",
                             {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}"})
        try:
            return exemplars_of(doc)
        except PrometheusQueryError as exc:
            self.errors[exc.kind] += 1
            raise
