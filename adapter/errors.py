"""The adapter's exception tree.

Why a tree of its own: the HTTP layer must turn every failure into a Kubernetes ``Status`` object with
one well-defined ``reason`` and ``code``, and a request must never see a Python traceback. Handlers raise
these exceptions; exactly one function (:func:`status_of`) maps an exception to its reason and code, so no
handler builds a ``Status`` by hand and the mapping cannot drift between routes.

Messages are for humans at 3 a.m.: they name the metric, namespace, selector, key or value involved.
Values quoted from user input are capped at :data:`MAX_QUOTED` characters so a hostile input cannot blow up
a log line or a response.
"""

from __future__ import annotations

from typing import NamedTuple

#: The longest piece of user input quoted verbatim in an error message.
MAX_QUOTED = 200


def quote(value: object) -> str:
    """Quote user input for an error message, capped at :data:`MAX_QUOTED` characters."""
    text = str(value)
    if len(text) > MAX_QUOTED:
        text = text[:MAX_QUOTED] + f"...({len(text) - MAX_QUOTED} more characters)"
    return repr(text)


class AdapterError(Exception):
    """Base of every error the adapter raises on purpose."""


class ConfigError(AdapterError):
    """A setting or config file is invalid. The message names the key path and the bad value."""

    def __init__(self, key: str, value: object, problem: str) -> None:
        self.key = key
        self.value = value
        self.problem = problem
        what = f"flag {key}" if key.startswith("--") else f"config key {key!r}"
        got = "" if value in ("", None) else f" (got {quote(value)})"
        super().__init__(f"{what}: {problem}{got}")


class RequestError(AdapterError):
    """An error answered to an HTTP client; subclasses fix the Kubernetes reason and code."""

    reason = "InternalError"
    code = 500
    #: Who asked, when known (for the log line; never sent to the client beyond the message).
    user = ""


class BadRequest(RequestError):
    reason = "BadRequest"
    code = 400


class BadSelector(BadRequest):
    """A ``labelSelector`` that does not parse."""


class Unauthorized(RequestError):
    """No credential authenticated the request (the identity headers of an unverified client included)."""

    reason = "Unauthorized"
    code = 401


class Forbidden(RequestError):
    """Authenticated, but the delegated authorisation said no."""

    reason = "Forbidden"
    code = 403


class MetricNotFound(RequestError):
    """The metric name is not one this adapter serves."""

    reason = "NotFound"
    code = 404


class NoData(MetricNotFound):
    """A known metric with no current value for that namespace and selector.

    The HPA treats a 404 as "metric unavailable" and holds; a made-up 0 would make it scale down.
    """


class NotFoundPath(RequestError):
    reason = "NotFound"
    code = 404


class MethodNotAllowed(RequestError):
    reason = "MethodNotAllowed"
    code = 405


class PayloadTooLarge(RequestError):
    reason = "RequestEntityTooLarge"
    code = 413


class LimitExceeded(PayloadTooLarge):
    """A 413 that names the limit it hit (the ``limit`` label of ``latency_adapter_limit_hits_total``)."""

    def __init__(self, message: str, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class UnsupportedMediaType(RequestError):
    # Status has no dedicated reason for 415; BadRequest is what the apiserver uses for it too.
    reason = "BadRequest"
    code = 415


class RequestTimeout(RequestError):
    """The client did not send its body in time (a slow client holding a connection)."""

    reason = "Timeout"
    code = 408


class Retryable(RequestError):
    """An answer that tells the client to come back: it carries ``Retry-After`` (seconds)."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyRequests(Retryable):
    """Over a concurrency or back-pressure limit; the client should retry after ``retry_after`` s."""

    reason = "TooManyRequests"
    code = 429


class ServiceUnavailable(RequestError):
    reason = "ServiceUnavailable"
    code = 503


class ShuttingDown(Retryable, ServiceUnavailable):
    """The process is stopping; another replica (or this one after its restart) will take the request."""


class StatusInfo(NamedTuple):
    reason: str
    code: int


def status_of(exc: BaseException) -> StatusInfo:
    """The one place that decides which Kubernetes reason and HTTP code an exception becomes."""
    if isinstance(exc, RequestError):
        return StatusInfo(exc.reason, exc.code)
    return StatusInfo("InternalError", 500)
