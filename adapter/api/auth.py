"""Authentication and authorisation of a delegated extension API server.

Why this module exists: behind the kube-aggregator the adapter is an *extension API server*. It does not
own users; it trusts three kinds of credentials the way every aggregated API server does
(``k8s.io/apiserver``'s delegating authenticator), in this order:

1. **request-header (front-proxy)**: the aggregator proxies the request with a client certificate signed by
   the ``requestheader-client-ca`` and names the real user in ``X-Remote-User`` / ``X-Remote-Group`` /
   ``X-Remote-Extra-*``. The headers are only believed because of that certificate: on any other request
   they are ignored, otherwise anyone could claim to be ``system:admin`` with a header.
2. **x509 client certificates** signed by ``client-ca-file``: user = CN, groups = O.
3. **bearer tokens**, checked by a ``TokenReview`` against the API server.

Authorisation is delegated the same way: a ``SubjectAccessReview`` per (user, verb, resource, namespace).

The TTL cache, single flight, the bound on each review and the stale fallback both reviewers share live in
:mod:`adapter.api.review_cache`.

Why no TLS or HTTP here: the HTTP layer verifies the peer chain and classifies the certificate
(``cert_kind``); this module receives plain values, so every rule is unit-tested without sockets, and the
hot path (10,000 req/s) costs a dictionary lookup: both reviews are cached (positive and negative answers,
short TTLs), concurrent identical reviews are coalesced into one call (single flight), and each review is
bounded by a timeout so a slow API server costs a request at most ``review_timeout_seconds``.

Secrets: the token cache is keyed by the SHA-256 of the token, never the token itself, and no message or
log line contains a token.

Length: about 570 lines, one job (who is asking and may they): the union authenticator's three
credential kinds and the authoriser share settings, messages and counters; the caches live apart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal, Protocol, cast
from urllib.parse import unquote

from adapter.api.review_cache import CachedReviewer, Clock, scrub
from adapter.errors import MAX_QUOTED, Forbidden, ServiceUnavailable, Unauthorized
from adapter.kube import AccessDecision, AccessRequest, ClusterAPI, ClusterAPIError, UserInfo

log = logging.getLogger("adapter.auth")

#: The API group every SubjectAccessReview of this adapter asks about.
EXTERNAL_METRICS_GROUP = "external.metrics.k8s.io"


CertKind = Literal["front-proxy", "client-ca"]


# --------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class AuthSettings:
    """Everything the authenticator and the authoriser need to know, with kube-apiserver's defaults.

    The header names and allowed names normally come from the ConfigMap
    ``kube-system/extension-apiserver-authentication`` (see :func:`settings_from_configmap`), flags override
    them for local runs. The TTLs are short on purpose: a revoked token or a removed RoleBinding must stop
    working within seconds, while the HPA's 15 s polling still hits the cache almost always.
    """

    #: CNs a front-proxy certificate may carry; empty = any CN signed by the front-proxy CA (as Kubernetes).
    requestheader_allowed_names: tuple[str, ...] = ()
    requestheader_username_headers: tuple[str, ...] = ("X-Remote-User",)
    requestheader_group_headers: tuple[str, ...] = ("X-Remote-Group",)
    requestheader_extra_headers_prefix: tuple[str, ...] = ("X-Remote-Extra-",)
    token_cache_ttl_seconds: float = 10.0
    token_negative_cache_ttl_seconds: float = 10.0
    allow_cache_ttl_seconds: float = 10.0
    deny_cache_ttl_seconds: float = 10.0
    #: How long an expired cached *authorisation* decision may still be used while the API server is
    #: unreachable: an API server restart must not turn every HPA read into a 503.
    stale_grace_seconds: float = 60.0
    #: The same for cached *token* reviews. 0 (the default) keeps Kubernetes' behaviour: an expired token
    #: answer is never reused, so a revoked token stops working after the TTL even during an outage.
    token_stale_grace_seconds: float = 0.0
    review_timeout_seconds: float = 2.0
    #: Paths that skip authorisation (still authenticated). A trailing ``*`` makes a prefix, as in
    #: ``--authorization-always-allow-paths``.
    always_allow_paths: tuple[str, ...] = ("/healthz", "/readyz", "/livez")
    #: Bound of each cache, so a flood of distinct tokens cannot grow memory without limit.
    max_cache_entries: int = 10_000

    def __post_init__(self) -> None:
        for name in (
            "token_cache_ttl_seconds",
            "token_negative_cache_ttl_seconds",
            "allow_cache_ttl_seconds",
            "deny_cache_ttl_seconds",
            "stale_grace_seconds",
            "token_stale_grace_seconds",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"AuthSettings.{name} must be >= 0, got {getattr(self, name)!r}")
        if self.review_timeout_seconds <= 0:
            raise ValueError(
                f"AuthSettings.review_timeout_seconds must be > 0, got {self.review_timeout_seconds!r}"
            )
        if self.max_cache_entries < 1:
            raise ValueError(f"AuthSettings.max_cache_entries must be >= 1, got {self.max_cache_entries!r}")


@dataclass(frozen=True)
class AuthenticationConfig:
    """What the ConfigMap ``kube-system/extension-apiserver-authentication`` says.

    The CA bundles are PEM text (``None`` when the key is absent: that kind of client certificate is then
    not accepted). The header lists are empty when the key is absent; :meth:`apply_to` then keeps the
    defaults of :class:`AuthSettings`.
    """

    client_ca_pem: str | None = None
    requestheader_client_ca_pem: str | None = None
    requestheader_allowed_names: tuple[str, ...] = ()
    requestheader_username_headers: tuple[str, ...] = ()
    requestheader_group_headers: tuple[str, ...] = ()
    requestheader_extra_headers_prefix: tuple[str, ...] = ()

    def apply_to(self, settings: AuthSettings) -> AuthSettings:
        """``settings`` with the ConfigMap's request-header values.

        The allowed names are taken as they are (an empty list *means* "any CN"); an empty header list is
        treated as "not set" and keeps the settings' value, because a request-header authenticator without
        a username header could never authenticate anyone.
        """
        return replace(
            settings,
            requestheader_allowed_names=self.requestheader_allowed_names,
            requestheader_username_headers=self.requestheader_username_headers
            or settings.requestheader_username_headers,
            requestheader_group_headers=self.requestheader_group_headers
            or settings.requestheader_group_headers,
            requestheader_extra_headers_prefix=self.requestheader_extra_headers_prefix
            or settings.requestheader_extra_headers_prefix,
        )


_LIST_KEYS = (
    "requestheader-allowed-names",
    "requestheader-username-headers",
    "requestheader-group-headers",
    "requestheader-extra-headers-prefix",
)


def _json_strings(data: Mapping[str, str], key: str) -> tuple[str, ...]:
    """A JSON array of strings stored in a string, the way kube-apiserver writes the list-valued keys."""
    raw = data.get(key, "")
    if not raw.strip():
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"configmap extension-apiserver-authentication key {key!r}: not valid JSON ({exc.msg} at "
            f'position {exc.pos}); expected a JSON array of strings such as ["front-proxy-client"]'
        ) from exc
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(
            f"configmap extension-apiserver-authentication key {key!r}: expected a JSON array of strings, "
            f"got {raw[:MAX_QUOTED]!r}"
        )
    if key != "requestheader-allowed-names" and any(not item for item in value):
        # An empty header name (or prefix) would match nothing (or every header): certainly a mistake.
        raise ValueError(
            f"configmap extension-apiserver-authentication key {key!r}: header names must not be empty, "
            f"got {raw[:MAX_QUOTED]!r}"
        )
    return tuple(value)


def settings_from_configmap(data: Mapping[str, str]) -> AuthenticationConfig:
    """Parse the ``data`` of ``kube-system/extension-apiserver-authentication``.

    Raises :class:`ValueError` naming the key when a list-valued key is not a JSON array of strings, so a
    broken cluster configuration fails the start with a message that points at the culprit.
    """
    lists = {key: _json_strings(data, key) for key in _LIST_KEYS}
    return AuthenticationConfig(
        client_ca_pem=data.get("client-ca-file") or None,
        requestheader_client_ca_pem=data.get("requestheader-client-ca-file") or None,
        requestheader_allowed_names=lists["requestheader-allowed-names"],
        requestheader_username_headers=lists["requestheader-username-headers"],
        requestheader_group_headers=lists["requestheader-group-headers"],
        requestheader_extra_headers_prefix=lists["requestheader-extra-headers-prefix"],
    )


# --------------------------------------------------------------------------------------------- helpers


class MultiHeaders(Protocol):
    """The part of aiohttp's ``CIMultiDictProxy`` the request-header authenticator needs.

    ``getall`` must be case-insensitive (HTTP header names are) and return every value of a repeated
    header; ``items`` yields every (name, value) pair once.
    """

    def getall(self, key: str, default: list[str], /) -> list[str]: ...

    def items(self) -> Iterable[tuple[str, str]]: ...


Headers = Mapping[str, str] | MultiHeaders


class _HeaderView:
    """Case-insensitive, multi-valued access to either a multi-dict or a plain mapping."""

    __slots__ = ("_by_lower", "_multi", "_pairs")

    def __init__(self, headers: Headers) -> None:
        self._multi: MultiHeaders | None = None
        self._by_lower: dict[str, list[str]] = {}
        self._pairs: list[tuple[str, str]] = []
        if hasattr(headers, "getall"):
            self._multi = cast(MultiHeaders, headers)
        else:
            self._pairs = list(headers.items())
            for name, value in self._pairs:
                self._by_lower.setdefault(name.lower(), []).append(value)

    def getall(self, name: str) -> list[str]:
        if self._multi is not None:
            return list(self._multi.getall(name, []))
        return self._by_lower.get(name.lower(), [])

    def items(self) -> Iterable[tuple[str, str]]:
        return self._multi.items() if self._multi is not None else self._pairs


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _unescape_extra_key(encoded: str) -> str:
    """Go's ``url.PathUnescape`` as Kubernetes uses it: on a malformed escape keep the key as it came.

    Extra keys may contain characters a header name cannot (``/``, ``:``), so the front proxy %-encodes them.
    ``+`` stays ``+`` (path, not query, unescaping).
    """
    if "%" not in encoded:
        return encoded
    if _BAD_ESCAPE.search(encoded):
        return encoded
    try:
        return unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        return encoded


def _q(value: str) -> str:
    """Double-quote a value for a message (Go's ``%q`` look), capped so hostile input cannot bloat it."""
    if len(value) > MAX_QUOTED:
        value = value[:MAX_QUOTED] + "..."
    return json.dumps(value)


# --------------------------------------------------------------------------------------------- authentication


@dataclass(frozen=True, slots=True)
class _TokenVerdict:
    user: UserInfo | None  # None: the API server said "not authenticated"


class Authenticator(CachedReviewer[bytes, _TokenVerdict]):
    """The union authenticator of a delegated extension API server (request-header, x509, token).

    Counters beyond the shared ones (:class:`~adapter.api.review_cache.CachedReviewer`):
    ``front_proxy_authenticated``, ``x509_authenticated``, ``token_authenticated``, ``unauthorized``.
    """

    def __init__(
        self,
        api: ClusterAPI,
        settings: AuthSettings | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else AuthSettings()
        super().__init__(api, self.settings.max_cache_entries, self.settings.review_timeout_seconds, clock)
        self._allowed_names = frozenset(self.settings.requestheader_allowed_names)
        self.front_proxy_authenticated = 0
        self.x509_authenticated = 0
        self.token_authenticated = 0
        self.unauthorized = 0

    async def authenticate(
        self,
        *,
        cert_cn: str | None = None,
        cert_orgs: tuple[str, ...] = (),
        cert_kind: CertKind | None = None,
        headers: Headers | None = None,
        authorization: str | None = None,
    ) -> UserInfo:
        """Who sent the request, or :class:`Unauthorized` (401) / :class:`ServiceUnavailable` (503).

        ``cert_kind`` is the HTTP layer's verdict on the peer certificate: ``"front-proxy"`` when its chain
        verified against the requestheader CA, ``"client-ca"`` when against the client CA, ``None`` when there
        was no certificate or it verified against neither. ``cert_cn``/``cert_orgs`` are its subject's CN
        and O values. ``authorization`` is the ``Authorization`` header.

        Order as kube-apiserver's union authenticator: front-proxy, then x509, then bearer token; a
        credential that does not authenticate falls through to the next one.
        """
        view = _HeaderView(headers) if headers is not None and cert_kind == "front-proxy" else None
        # 1. request-header: the headers are an identity only because of the front-proxy certificate.
        if view is not None and (not self._allowed_names or (cert_cn or "") in self._allowed_names):
            user = self._from_request_headers(view)
            if user is not None:
                self.front_proxy_authenticated += 1
                return user
        # 2. x509 client certificate: the identity is the certificate's subject; headers play no part.
        elif cert_kind == "client-ca" and cert_cn:
            self.x509_authenticated += 1
            return UserInfo(username=cert_cn, groups=tuple(cert_orgs))
        # 3. bearer token through a delegated TokenReview.
        token = _bearer_token(authorization)
        if token is not None:
            verdict = await self._review_token(token)
            if verdict.user is not None:
                self.token_authenticated += 1
                return verdict.user
        self.unauthorized += 1
        raise Unauthorized(
            "Unauthorized: no credential authenticated the request (tried: "
            + "; ".join(self._tried(cert_cn, cert_kind, headers, authorization, token)) + ")"
        )

    def _tried(self, cert_cn: str | None, cert_kind: CertKind | None, headers: Headers | None,
               authorization: str | None, token: str | None) -> list[str]:
        """Why each credential of a refused request did not authenticate it, for the 401 message.

        Built only on refusal, so the accepted path allocates nothing for it.
        """
        tried: list[str] = []
        view = _HeaderView(headers) if headers is not None else None
        if cert_kind == "front-proxy":
            if self._allowed_names and (cert_cn or "") not in self._allowed_names:
                tried.append(
                    f"front-proxy certificate with CN {_q(cert_cn or '')} "
                    "(not in requestheader-allowed-names, identity headers ignored)"
                )
            else:
                tried.append(
                    "front-proxy certificate without a username header "
                    f"({', '.join(self.settings.requestheader_username_headers)})"
                )
        elif cert_kind == "client-ca":
            tried.append("client certificate without a CN")
        else:
            tried.append("no verified client certificate")
            if view is not None and self._has_identity_headers(view):
                tried.append(
                    "identity headers ignored (only a verified front-proxy certificate makes them count)"
                )
        if token is None:
            tried.append(
                "no bearer token" if not authorization else "Authorization header is not a bearer token"
            )
        else:
            tried.append("bearer token rejected by TokenReview")
        return tried

    # -- request-header

    def _from_request_headers(self, view: _HeaderView) -> UserInfo | None:
        """The user the front proxy names, or ``None`` when it names none (then the request falls through)."""
        s = self.settings
        username = ""
        for name in s.requestheader_username_headers:
            # Kubernetes uses http.Header.Get: the first value of each header, first non-empty header wins.
            values = view.getall(name)
            if values and values[0]:
                username = values[0]
                break
        if not username:
            return None
        groups = tuple(
            value for name in s.requestheader_group_headers for value in view.getall(name) if value
        )
        extra: dict[str, list[str]] = {}
        if s.requestheader_extra_headers_prefix:
            prefixes = [p.lower() for p in s.requestheader_extra_headers_prefix]
            items = list(view.items())
            # Prefixes first, then headers: the order Kubernetes builds the value lists in.
            for prefix in prefixes:
                for header, value in items:
                    lowered = header.lower()
                    if lowered.startswith(prefix):
                        extra.setdefault(_unescape_extra_key(lowered[len(prefix) :]), []).append(value)
        return UserInfo(
            username=username,
            groups=groups,
            extra={key: tuple(values) for key, values in extra.items()},
        )

    def _has_identity_headers(self, view: _HeaderView) -> bool:
        return any(view.getall(name) for name in self.settings.requestheader_username_headers)

    # -- token

    async def _review_token(self, token: str) -> _TokenVerdict:
        key = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        try:
            verdict, stale = await self._cached(key, lambda: self._call_token_review(key, token))
        except (ClusterAPIError, TimeoutError) as exc:
            raise ServiceUnavailable(
                "cannot authenticate the bearer token: the TokenReview failed "
                f"({_describe(exc, token, self)})"
            ) from None
        if stale and self._stale_log.ready():
            log.warning(
                "TokenReview unavailable; using an expired cached token review (stale uses: %d)",
                self.stale_uses,
            )
        return verdict

    async def _call_token_review(self, key: bytes, token: str) -> _TokenVerdict:
        """One TokenReview, bounded by the timeout; its answer (positive or negative) goes into the cache."""
        s = self.settings
        result = await self._bounded("TokenReview", self._api.review_token(token), secret=token)
        now = self._clock()
        if result.authenticated and result.user is not None and result.user.username:
            verdict = _TokenVerdict(result.user)
            self._cache.put(key, verdict, now, s.token_cache_ttl_seconds, s.token_stale_grace_seconds)
        else:
            if result.error:
                log.debug("TokenReview rejected a token: %s", scrub(result.error, token)[:MAX_QUOTED])
            verdict = _TokenVerdict(None)
            self._cache.put(
                key, verdict, now, s.token_negative_cache_ttl_seconds, s.token_stale_grace_seconds
            )
        return verdict


def _bearer_token(authorization: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>`` (scheme case-insensitive, as Kubernetes), else None."""
    if not authorization:
        return None
    parts = authorization.strip().split(" ", 2)
    if len(parts) < 2 or parts[0].lower() != "bearer" or not parts[1]:
        return None
    return parts[1]


def _describe(exc: BaseException, secret: str, owner: Authenticator | Authorizer) -> str:
    """A short, secret-free description of a review failure for a 503 message."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {owner.settings.review_timeout_seconds:g}s"
    text = scrub(str(exc), secret) if secret else str(exc)
    if len(text) > MAX_QUOTED:
        text = text[:MAX_QUOTED] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------- authorisation

#: (the user's identity, verb, resource, namespace).
_AccessKey = tuple[tuple[object, ...], str, str, str]


class Authorizer(CachedReviewer[_AccessKey, AccessDecision]):
    """Delegated authorisation through ``SubjectAccessReview``, cached, coalesced, bounded, stale-tolerant.

    Counters beyond the shared ones (:class:`~adapter.api.review_cache.CachedReviewer`): ``always_allowed``,
    ``allowed``, ``denied``.
    """

    def __init__(
        self,
        api: ClusterAPI,
        settings: AuthSettings | None = None,
        *,
        clock: Clock = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else AuthSettings()
        super().__init__(api, self.settings.max_cache_entries, self.settings.review_timeout_seconds, clock)
        exact: set[str] = set()
        prefixes: list[str] = []
        for path in self.settings.always_allow_paths:
            if path.endswith("*"):
                prefixes.append(path[:-1])
            else:
                exact.add(path)
        self._allow_exact = frozenset(exact)
        self._allow_prefixes = tuple(prefixes)
        self.always_allowed = 0
        self.allowed = 0
        self.denied = 0

    def always_allows(self, path: str) -> bool:
        """Whether ``path`` skips authorisation (health probes must work while the API server is down)."""
        if path in self._allow_exact:
            return True
        return bool(self._allow_prefixes) and path.startswith(self._allow_prefixes)

    async def authorize(self, user: UserInfo, *, verb: str, resource: str, namespace: str, path: str) -> None:
        """Return when ``user`` may ``verb`` the metric ``resource`` in ``namespace``; raise otherwise.

        Raises :class:`Forbidden` (403) when the SubjectAccessReview does not allow it, and
        :class:`ServiceUnavailable` (503) when the API server cannot be asked and no cached decision (fresh,
        or expired less than ``stale_grace_seconds`` ago) exists.
        """
        if self.always_allows(path):
            self.always_allowed += 1
            return
        key: _AccessKey = (user.review_key, verb, resource, namespace)
        try:
            decision, stale = await self._cached(
                key, lambda: self._call_access_review(key, user, verb, resource, namespace))
        except (ClusterAPIError, TimeoutError) as exc:
            raise ServiceUnavailable(
                f"cannot authorize user {_q(user.username)}: the SubjectAccessReview failed "
                f"({_describe(exc, '', self)})"
            ) from None
        if stale and self._stale_log.ready():
            log.warning(
                "SubjectAccessReview unavailable; using an expired cached decision for user %s "
                "(stale uses so far: %d)",
                _q(user.username),
                self.stale_uses,
            )
        if _allows(decision):
            self.allowed += 1
            return
        self.denied += 1
        raise Forbidden(_forbidden_message(user.username, verb, resource, namespace, decision.reason))

    async def _call_access_review(self, key: _AccessKey, user: UserInfo, verb: str, resource: str,
                                  namespace: str) -> AccessDecision:
        """One SubjectAccessReview, bounded by the timeout; allow and deny are cached with their own TTLs."""
        s = self.settings
        request = AccessRequest(
            user=user, verb=verb, group=EXTERNAL_METRICS_GROUP, resource=resource, namespace=namespace
        )
        decision = await self._bounded("SubjectAccessReview", self._api.review_access(request))
        if decision.evaluation_error:
            log.debug("SubjectAccessReview evaluation error: %s", decision.evaluation_error[:MAX_QUOTED])
        ttl = s.allow_cache_ttl_seconds if _allows(decision) else s.deny_cache_ttl_seconds
        self._cache.put(key, decision, self._clock(), ttl, s.stale_grace_seconds)
        return decision


def _allows(decision: AccessDecision) -> bool:
    """Allowed and not denied: "both" and "no opinion" are denials, as in the webhook authorizer."""
    return decision.allowed and not decision.denied


def _forbidden_message(username: str, verb: str, resource: str, namespace: str, reason: str) -> str:
    """Kubernetes' wording, so operators recognise it: who, which verb, which resource, where, and why."""
    where = f"in the namespace {_q(namespace)}" if namespace else "at the cluster scope"
    message = (
        f"user {_q(username)} cannot {verb} resource {_q(resource)} in API group "
        f"{_q(EXTERNAL_METRICS_GROUP)} {where}"
    )
    if reason:
        message += f": {reason[:MAX_QUOTED]}"
    return message
