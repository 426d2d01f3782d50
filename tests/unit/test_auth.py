"""Delegated authentication and authorisation (``adapter.api.auth``) against an in-memory API server.

Why so many spoofing tests: the request-header scheme is only safe if identity headers count *exclusively*
on a verified front-proxy certificate. Every other combination (client-CA certificate, no certificate,
front-proxy certificate with a CN outside the allowed names) must never yield the header's user.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from adapter.api.auth import (
    EXTERNAL_METRICS_GROUP,
    AuthenticationConfig,
    Authenticator,
    Authorizer,
    AuthSettings,
    settings_from_configmap,
)
from adapter.errors import Forbidden, ServiceUnavailable, Unauthorized, status_of
from adapter.kube import (
    AccessDecision,
    AccessRequest,
    ClusterAPI,
    ClusterAPIError,
    TokenReviewResult,
    UserInfo,
)

TOKEN = "s3cr3t-token-abcdef0123456789"
ALICE = UserInfo(
    username="alice", uid="u-1", groups=("devs", "system:authenticated"), extra={"scopes": ("a",)}
)
HPA = UserInfo(
    username="system:serviceaccount:kube-system:horizontal-pod-autoscaler", groups=("system:serviceaccounts",)
)


class FakeClock:
    """A clock the test moves by hand, so TTLs are exact and tests never sleep for them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeClusterAPI:
    """An in-memory ``ClusterAPI``: records every call; knobs to fail, delay or hold the answers."""

    def __init__(self) -> None:
        self.tokens: dict[str, UserInfo] = {}
        self.access: Callable[[AccessRequest], AccessDecision] = lambda _req: AccessDecision(allowed=True)
        self.token_calls: list[str] = []
        self.access_calls: list[AccessRequest] = []
        self.error: ClusterAPIError | None = None
        self.delay = 0.0
        self.gate: asyncio.Event | None = None

    async def _wait(self) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        await self._wait()
        return {}

    async def review_token(self, token: str, audiences: tuple[str, ...] = ()) -> TokenReviewResult:
        self.token_calls.append(token)
        await self._wait()
        user = self.tokens.get(token)
        if user is None:
            return TokenReviewResult(authenticated=False, error="invalid bearer token")
        return TokenReviewResult(authenticated=True, user=user)

    async def review_access(self, request: AccessRequest) -> AccessDecision:
        self.access_calls.append(request)
        await self._wait()
        return self.access(request)


@pytest.fixture
def api() -> FakeClusterAPI:
    fake = FakeClusterAPI()
    fake.tokens[TOKEN] = ALICE
    _typed: ClusterAPI = fake  # the fake must satisfy the Protocol the adapter depends on
    return fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def authn(api: FakeClusterAPI, clock: FakeClock, **settings: Any) -> Authenticator:
    return Authenticator(api, AuthSettings(**settings), clock=clock)


def authz(api: FakeClusterAPI, clock: FakeClock, **settings: Any) -> Authorizer:
    return Authorizer(api, AuthSettings(**settings), clock=clock)


def multi(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Headers as aiohttp hands them over: case-insensitive, repeated names kept."""
    return CIMultiDictProxy(CIMultiDict(pairs))


SPOOF = multi(("X-Remote-User", "system:admin"), ("X-Remote-Group", "system:masters"))


# --------------------------------------------------------------------------------------------- ConfigMap


def test_configmap_parsed_into_config() -> None:
    cfg = settings_from_configmap(
        {
            "client-ca-file": "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n",
            "requestheader-client-ca-file": "-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n",
            "requestheader-allowed-names": '["front-proxy-client","aggregator"]',
            "requestheader-username-headers": '["X-Remote-User"]',
            "requestheader-group-headers": '["X-Remote-Group"]',
            "requestheader-extra-headers-prefix": '["X-Remote-Extra-"]',
        }
    )
    assert cfg.client_ca_pem is not None and "A" in cfg.client_ca_pem
    assert cfg.requestheader_client_ca_pem is not None and "B" in cfg.requestheader_client_ca_pem
    assert cfg.requestheader_allowed_names == ("front-proxy-client", "aggregator")
    assert cfg.requestheader_username_headers == ("X-Remote-User",)
    assert cfg.requestheader_group_headers == ("X-Remote-Group",)
    assert cfg.requestheader_extra_headers_prefix == ("X-Remote-Extra-",)


def test_configmap_missing_keys_are_empty_and_apply_keeps_default_headers() -> None:
    cfg = settings_from_configmap({"client-ca-file": "PEM", "requestheader-allowed-names": "[]"})
    assert cfg == AuthenticationConfig(client_ca_pem="PEM")
    base = AuthSettings(requestheader_allowed_names=("flag-name",), token_cache_ttl_seconds=3.0)
    merged = cfg.apply_to(base)
    assert merged.requestheader_allowed_names == ()  # the ConfigMap's empty list means "any CN"
    assert merged.requestheader_username_headers == ("X-Remote-User",)
    assert merged.token_cache_ttl_seconds == 3.0
    custom = settings_from_configmap({"requestheader-username-headers": '["X-User"]'}).apply_to(base)
    assert custom.requestheader_username_headers == ("X-User",)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("requestheader-allowed-names", "front-proxy-client"),
        ("requestheader-username-headers", '["X-Remote-User"'),
        ("requestheader-group-headers", '{"a": 1}'),
        ("requestheader-extra-headers-prefix", "[1, 2]"),
        ("requestheader-username-headers", '[""]'),
    ],
)
def test_configmap_bad_list_names_the_key(key: str, value: str) -> None:
    with pytest.raises(ValueError, match=key):
        settings_from_configmap({key: value})


def test_settings_validated() -> None:
    with pytest.raises(ValueError, match="token_cache_ttl_seconds"):
        AuthSettings(token_cache_ttl_seconds=-1)
    with pytest.raises(ValueError, match="review_timeout_seconds"):
        AuthSettings(review_timeout_seconds=0)
    with pytest.raises(ValueError, match="max_cache_entries"):
        AuthSettings(max_cache_entries=0)


# --------------------------------------------------------------------------------------------- front-proxy


async def test_front_proxy_allowed_cn_takes_identity_from_headers(
    api: FakeClusterAPI, clock: FakeClock
) -> None:
    a = authn(api, clock, requestheader_allowed_names=("front-proxy-client",))
    headers = multi(
        ("X-Remote-User", "bob"),
        ("X-Remote-Group", "team-a"),
        ("x-remote-group", "team-b"),
        ("X-Remote-Group", "system:authenticated"),
        ("X-Remote-Extra-Scopes", "view"),
        ("X-Remote-Extra-Scopes", "edit"),
        ("X-Remote-Extra-Example.com%2Fteam", "payments"),
        ("X-Remote-Extra-Reason%3Aof%20call", "hpa"),
        ("Accept", "application/json"),
    )
    user = await a.authenticate(
        cert_cn="front-proxy-client", cert_orgs=("ignored-org",), cert_kind="front-proxy", headers=headers
    )
    assert user.username == "bob"
    assert user.groups == ("team-a", "team-b", "system:authenticated")
    assert dict(user.extra) == {
        "scopes": ("view", "edit"),
        "example.com/team": ("payments",),
        "reason:of call": ("hpa",),
    }
    assert a.front_proxy_authenticated == 1
    assert api.token_calls == []


async def test_front_proxy_takes_precedence_over_bearer_token(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock)
    user = await a.authenticate(
        cert_cn="front-proxy-client",
        cert_kind="front-proxy",
        headers=multi(("X-Remote-User", "bob")),
        authorization=f"Bearer {TOKEN}",
    )
    assert user.username == "bob"
    assert api.token_calls == []


async def test_front_proxy_empty_allowed_names_accepts_any_cn(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock, requestheader_allowed_names=())
    user = await a.authenticate(
        cert_cn="whatever-the-ca-signed", cert_kind="front-proxy", headers=multi(("X-Remote-User", "carol"))
    )
    assert user == UserInfo(username="carol")


async def test_front_proxy_disallowed_cn_never_uses_headers(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock, requestheader_allowed_names=("front-proxy-client",))
    with pytest.raises(Unauthorized) as info:
        await a.authenticate(cert_cn="intruder", cert_kind="front-proxy", headers=SPOOF)
    assert "not in requestheader-allowed-names" in str(info.value)
    assert "system:admin" not in str(info.value)
    # With another valid credential, that credential's identity is used, never the header's.
    user = await a.authenticate(
        cert_cn="intruder", cert_kind="front-proxy", headers=SPOOF, authorization=f"Bearer {TOKEN}"
    )
    assert user == ALICE


async def test_front_proxy_without_username_header_falls_through(
    api: FakeClusterAPI, clock: FakeClock
) -> None:
    a = authn(api, clock)
    groups_only = multi(("X-Remote-Group", "system:masters"))
    with pytest.raises(Unauthorized, match="without a username header"):
        await a.authenticate(cert_cn="front-proxy-client", cert_kind="front-proxy", headers=groups_only)
    with pytest.raises(Unauthorized):
        await a.authenticate(cert_cn="front-proxy-client", cert_kind="front-proxy", headers=None)
    user = await a.authenticate(
        cert_cn="front-proxy-client",
        cert_kind="front-proxy",
        headers=groups_only,
        authorization=f"Bearer {TOKEN}",
    )
    assert user == ALICE


async def test_front_proxy_custom_header_names(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(
        api,
        clock,
        requestheader_username_headers=("X-Proxy-User", "X-Remote-User"),
        requestheader_group_headers=("X-Proxy-Group", "X-Proxy-Team"),
        requestheader_extra_headers_prefix=("X-Proxy-Extra-",),
    )
    headers = multi(
        ("X-Proxy-User", ""),  # empty: the next username header is used, as in Kubernetes
        ("X-Remote-User", "dave"),
        ("X-Proxy-Group", "g1"),
        ("X-Proxy-Team", "g2"),
        ("X-Remote-Group", "not-configured"),
        ("X-Proxy-Extra-Site", "eu"),
        ("X-Remote-Extra-Site", "not-configured"),
    )
    user = await a.authenticate(cert_cn="proxy", cert_kind="front-proxy", headers=headers)
    assert user.username == "dave"
    assert user.groups == ("g1", "g2")
    assert dict(user.extra) == {"site": ("eu",)}


async def test_front_proxy_plain_mapping_headers_case_insensitive(
    api: FakeClusterAPI, clock: FakeClock
) -> None:
    a = authn(api, clock)
    user = await a.authenticate(
        cert_cn="front-proxy-client",
        cert_kind="front-proxy",
        headers={"x-remote-user": "erin", "X-REMOTE-GROUP": "ops", "x-remote-extra-bad%zzkey": "v"},
    )
    assert user.username == "erin"
    assert user.groups == ("ops",)
    assert dict(user.extra) == {"bad%zzkey": ("v",)}  # malformed escape kept verbatim, like url.PathUnescape


# --------------------------------------------------------------------------------------------- spoofing


async def test_client_ca_cert_ignores_identity_headers(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock)
    user = await a.authenticate(
        cert_cn="jane", cert_orgs=("qa", "devs"), cert_kind="client-ca", headers=SPOOF
    )
    assert user == UserInfo(username="jane", groups=("qa", "devs"))
    assert a.x509_authenticated == 1


async def test_no_cert_identity_headers_are_401(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock)
    for headers in (SPOOF, {"X-Remote-User": "system:admin"}):
        with pytest.raises(Unauthorized) as info:
            await a.authenticate(cert_cn=None, cert_kind=None, headers=headers)
        message = str(info.value)
        assert "identity headers ignored" in message
        assert "no bearer token" in message
    assert a.unauthorized == 2
    assert status_of(info.value).code == 401


async def test_no_cert_identity_headers_with_token_is_token_user(
    api: FakeClusterAPI, clock: FakeClock
) -> None:
    a = authn(api, clock)
    user = await a.authenticate(headers=SPOOF, authorization=f"Bearer {TOKEN}")
    assert user == ALICE


async def test_unverified_cert_cn_is_not_an_identity(api: FakeClusterAPI, clock: FakeClock) -> None:
    # A certificate that verified against neither CA arrives as cert_kind=None: its CN means nothing.
    a = authn(api, clock)
    with pytest.raises(Unauthorized, match="no verified client certificate"):
        await a.authenticate(cert_cn="front-proxy-client", cert_orgs=("system:masters",), cert_kind=None)


# --------------------------------------------------------------------------------------------- x509


async def test_x509_user_and_groups(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock)
    user = await a.authenticate(cert_cn="kubectl-user", cert_orgs=("system:masters",), cert_kind="client-ca")
    assert user.username == "kubectl-user"
    assert user.groups == ("system:masters",)
    assert user.extra == {}


async def test_x509_precedes_token_and_empty_cn_falls_through(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock)
    user = await a.authenticate(
        cert_cn="kubectl-user", cert_kind="client-ca", authorization=f"Bearer {TOKEN}"
    )
    assert user.username == "kubectl-user"
    assert api.token_calls == []
    with pytest.raises(Unauthorized, match="without a CN"):
        await a.authenticate(cert_cn="", cert_kind="client-ca")
    assert await a.authenticate(cert_cn="", cert_kind="client-ca", authorization=f"Bearer {TOKEN}") == ALICE


# --------------------------------------------------------------------------------------------- tokens


async def test_token_allowed_cached_within_ttl_reviewed_after(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock, token_cache_ttl_seconds=10.0)
    for _ in range(50):
        assert await a.authenticate(authorization=f"Bearer {TOKEN}") == ALICE
        clock.advance(0.1)
    assert api.token_calls == [TOKEN]
    assert (a.reviews, a.cache_misses, a.cache_hits) == (1, 1, 49)
    clock.advance(5.1)  # 10.1 s after the review: expired
    assert await a.authenticate(authorization=f"bearer {TOKEN}") == ALICE  # scheme is case-insensitive
    assert len(api.token_calls) == 2


async def test_token_denied_is_401_and_negatively_cached(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock, token_cache_ttl_seconds=60.0, token_negative_cache_ttl_seconds=2.0)
    for _ in range(5):
        with pytest.raises(Unauthorized, match="rejected by TokenReview") as info:
            await a.authenticate(authorization="Bearer wrong-token-xyz")
        assert "wrong-token-xyz" not in str(info.value)
    assert api.token_calls == ["wrong-token-xyz"]
    clock.advance(2.0)
    api.tokens["wrong-token-xyz"] = HPA  # became valid; seen once the negative entry expires
    assert await a.authenticate(authorization="Bearer wrong-token-xyz") == HPA
    assert len(api.token_calls) == 2


async def test_non_bearer_authorization_is_not_reviewed(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock)
    for header in ("Basic dXNlcjpwYXNz", "Bearer", "Bearer ", "Token abc"):
        with pytest.raises(Unauthorized) as info:
            await a.authenticate(authorization=header)
        assert "dXNlcjpwYXNz" not in str(info.value)
    assert api.token_calls == []


async def test_token_cache_keeps_only_hashes_and_is_bounded(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock, max_cache_entries=2)
    tokens = ["tok-1", "tok-2", "tok-3"]
    for tok in tokens:
        api.tokens[tok] = UserInfo(username=tok.upper())
        await a.authenticate(authorization=f"Bearer {tok}")
    assert a.cache_size == 2
    assert a.cache_evictions == 1
    keys = list(a._cache._data)
    assert keys == [hashlib.sha256(t.encode()).digest() for t in tokens[1:]]
    assert all(tok.encode() not in key for key in keys for tok in tokens)
    # The least recently used (tok-1) was evicted: it needs a new review, tok-3 does not.
    await a.authenticate(authorization="Bearer tok-3")
    await a.authenticate(authorization="Bearer tok-1")
    assert api.token_calls == ["tok-1", "tok-2", "tok-3", "tok-1"]


async def test_token_single_flight(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock)
    api.gate = asyncio.Event()
    tasks = [asyncio.create_task(a.authenticate(authorization=f"Bearer {TOKEN}")) for _ in range(10)]
    await asyncio.sleep(0.01)
    api.gate.set()
    users = await asyncio.gather(*tasks)
    assert users == [ALICE] * 10
    assert api.token_calls == [TOKEN]
    assert a.reviews == 1
    assert a.coalesced == 9


async def test_token_single_flight_survives_first_caller_cancelled(
    api: FakeClusterAPI, clock: FakeClock
) -> None:
    a = authn(api, clock)
    api.gate = asyncio.Event()
    first = asyncio.create_task(a.authenticate(authorization=f"Bearer {TOKEN}"))
    second = asyncio.create_task(a.authenticate(authorization=f"Bearer {TOKEN}"))
    await asyncio.sleep(0.01)
    first.cancel()
    api.gate.set()
    assert await second == ALICE
    assert len(api.token_calls) == 1


async def test_token_review_timeout_is_bounded_503(
    api: FakeClusterAPI, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    a = authn(api, clock, review_timeout_seconds=0.05)
    api.delay = 5.0
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    results = await asyncio.gather(
        *(a.authenticate(authorization=f"Bearer {TOKEN}") for _ in range(5)), return_exceptions=True
    )
    assert time.monotonic() - started < 1.0
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    message = str(results[0])
    assert "no answer within 0.05s" in message
    assert TOKEN not in message
    assert TOKEN not in caplog.text
    assert (a.reviews, a.review_errors, a.review_timeouts) == (1, 1, 1)
    assert isinstance(results[0], ServiceUnavailable)
    assert status_of(results[0]).code == 503
    # Failures are not cached: the next request asks again.
    api.delay = 0.0
    assert await a.authenticate(authorization=f"Bearer {TOKEN}") == ALICE


async def test_token_review_error_is_503_without_token(
    api: FakeClusterAPI, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    a = authn(api, clock)
    api.error = ClusterAPIError(f"connection refused while posting token {TOKEN}")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ServiceUnavailable) as info:
        await a.authenticate(cert_cn=None, headers=SPOOF, authorization=f"Bearer {TOKEN}")
    assert TOKEN not in str(info.value)
    assert "connection refused" in str(info.value)
    assert TOKEN not in caplog.text


async def test_token_expired_entry_not_used_during_outage_by_default(
    api: FakeClusterAPI, clock: FakeClock
) -> None:
    a = authn(api, clock)
    await a.authenticate(authorization=f"Bearer {TOKEN}")
    clock.advance(11)
    api.error = ClusterAPIError("down")
    with pytest.raises(ServiceUnavailable):
        await a.authenticate(authorization=f"Bearer {TOKEN}")
    assert a.stale_uses == 0


async def test_token_stale_grace_is_opt_in(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock, token_stale_grace_seconds=30.0)
    await a.authenticate(authorization=f"Bearer {TOKEN}")
    clock.advance(11)
    api.error = ClusterAPIError("down")
    assert await a.authenticate(authorization=f"Bearer {TOKEN}") == ALICE
    assert a.stale_uses == 1
    clock.advance(30)
    with pytest.raises(ServiceUnavailable):
        await a.authenticate(authorization=f"Bearer {TOKEN}")


async def test_unauthorized_message_lists_what_was_tried(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authn(api, clock)
    with pytest.raises(Unauthorized) as info:
        await a.authenticate()
    assert "no verified client certificate" in str(info.value)
    assert "no bearer token" in str(info.value)
    with pytest.raises(Unauthorized) as info:
        await a.authenticate(authorization="Basic abc")
    assert "not a bearer token" in str(info.value)


# --------------------------------------------------------------------------------------------- authorisation


async def metric_access(
    a: Authorizer,
    user: UserInfo = ALICE,
    *,
    verb: str = "get",
    resource: str = "latency_p95_seconds",
    namespace: str = "shop",
) -> None:
    """The HPA's kind of request: get one metric in one namespace."""
    await a.authorize(user, verb=verb, resource=resource, namespace=namespace, path="/apis/x")


async def test_authorize_allowed_and_sar_contents(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authz(api, clock)
    await a.authorize(
        ALICE,
        verb="get",
        resource="latency_p95_seconds",
        namespace="shop",
        path="/apis/external.metrics.k8s.io/v1beta1/namespaces/shop/latency_p95_seconds",
    )
    assert api.access_calls == [
        AccessRequest(
            user=ALICE,
            verb="get",
            group=EXTERNAL_METRICS_GROUP,
            resource="latency_p95_seconds",
            namespace="shop",
        )
    ]
    sent = api.access_calls[0]
    assert sent.user.username == "alice"
    assert sent.user.uid == "u-1"
    assert sent.user.groups == ("devs", "system:authenticated")
    assert dict(sent.user.extra) == {"scopes": ("a",)}
    assert sent.group == "external.metrics.k8s.io"
    assert a.allowed == 1


async def test_authorize_denied_is_forbidden_with_kubernetes_message(
    api: FakeClusterAPI, clock: FakeClock
) -> None:
    api.access = lambda _r: AccessDecision(allowed=False, denied=True, reason="no RBAC policy matched")
    a = authz(api, clock)
    with pytest.raises(Forbidden) as info:
        await metric_access(a)
    assert str(info.value) == (
        'user "alice" cannot get resource "latency_p95_seconds" in API group "external.metrics.k8s.io" '
        'in the namespace "shop": no RBAC policy matched'
    )
    assert status_of(info.value).code == 403
    api.access = lambda _r: AccessDecision(allowed=False)
    with pytest.raises(Forbidden) as info:
        await metric_access(a, namespace="")
    assert str(info.value).endswith("at the cluster scope")


@pytest.mark.parametrize(
    "decision",
    [
        AccessDecision(allowed=False),
        AccessDecision(allowed=True, denied=True),
        AccessDecision(allowed=False, evaluation_error="x"),
    ],
)
async def test_authorize_no_opinion_or_conflict_is_forbidden(
    api: FakeClusterAPI, clock: FakeClock, decision: AccessDecision
) -> None:
    api.access = lambda _r: decision
    with pytest.raises(Forbidden):
        await metric_access(authz(api, clock))


async def test_authorize_cache_separate_allow_and_deny_ttls(api: FakeClusterAPI, clock: FakeClock) -> None:
    api.access = lambda r: AccessDecision(allowed=r.namespace == "shop", denied=r.namespace != "shop")
    a = authz(api, clock, allow_cache_ttl_seconds=10.0, deny_cache_ttl_seconds=2.0)
    for _ in range(20):
        await metric_access(a)
        with pytest.raises(Forbidden):
            await metric_access(a, namespace="other")
    assert len(api.access_calls) == 2
    assert (a.cache_hits, a.cache_misses) == (38, 2)
    clock.advance(2.0)  # deny expired, allow still fresh
    await metric_access(a)
    with pytest.raises(Forbidden):
        await metric_access(a, namespace="other")
    assert [r.namespace for r in api.access_calls] == ["shop", "other", "other"]
    clock.advance(8.0)  # allow expired
    await metric_access(a)
    assert [r.namespace for r in api.access_calls] == ["shop", "other", "other", "shop"]


async def test_hot_token_is_refreshed_ahead_and_never_waits(api: FakeClusterAPI, clock: FakeClock) -> None:
    """A hit in the last fifth of the TTL answers from the cache at once and reviews in the background."""
    a = authn(api, clock, token_cache_ttl_seconds=10.0)
    assert await a.authenticate(authorization=f"Bearer {TOKEN}") == ALICE
    clock.advance(7.9)
    assert await a.authenticate(authorization=f"Bearer {TOKEN}") == ALICE
    await asyncio.sleep(0)
    assert api.token_calls == [TOKEN] and a.refreshes == 0  # before 80 % of the TTL: plain hit
    api.gate = asyncio.Event()  # the API server answers only when the test says so
    clock.advance(0.2)
    for _ in range(5):  # none of these waits for the review in flight, and only one review starts
        assert await asyncio.wait_for(a.authenticate(authorization=f"Bearer {TOKEN}"), 1.0) == ALICE
        await asyncio.sleep(0)
    assert api.token_calls == [TOKEN, TOKEN] and a.refreshes == 1
    del api.tokens[TOKEN]  # revoked while the refresh is in flight: seen as soon as it answers
    api.gate.set()
    await asyncio.sleep(0.01)
    with pytest.raises(Unauthorized, match="rejected by TokenReview"):
        await a.authenticate(authorization=f"Bearer {TOKEN}")
    assert len(api.token_calls) == 2


async def test_failed_refresh_keeps_the_fresh_decision_until_it_expires(
    api: FakeClusterAPI, clock: FakeClock
) -> None:
    a = authz(api, clock, allow_cache_ttl_seconds=10.0, stale_grace_seconds=0.0)
    await metric_access(a)
    clock.advance(9.0)
    api.error = ClusterAPIError("connection refused")
    await metric_access(a)  # fresh hit; the refresh it starts fails
    await asyncio.sleep(0.01)
    assert (a.refreshes, a.review_errors) == (1, 1)
    clock.advance(0.9)
    await metric_access(a)  # still fresh: served, and one more refresh attempt
    await asyncio.sleep(0.01)
    assert a.review_errors == 2
    clock.advance(0.2)  # expired, no grace: the API server's failure is the answer now
    with pytest.raises(ServiceUnavailable, match="SubjectAccessReview failed"):
        await metric_access(a)


async def test_authorize_cache_key_covers_identity_and_request(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authz(api, clock)
    await metric_access(a)
    await metric_access(a, ALICE)  # same: cached
    variants = [
        UserInfo("alice", "u-1", ("devs",), ALICE.extra),  # fewer groups
        UserInfo("alice", "u-2", ALICE.groups, ALICE.extra),  # other uid
        UserInfo("alice", "u-1", ALICE.groups, {"scopes": ("b",)}),  # other extra
        UserInfo("mallory", "u-1", ALICE.groups, ALICE.extra),
    ]
    for user in variants:
        await metric_access(a, user)
    await metric_access(a, verb="list")
    await metric_access(a, resource="latency_ratio")
    await metric_access(a, namespace="shop2")
    assert len(api.access_calls) == 1 + len(variants) + 3


async def test_authorize_health_paths_bypass(api: FakeClusterAPI, clock: FakeClock) -> None:
    api.error = ClusterAPIError("down")
    a = authz(api, clock, always_allow_paths=("/healthz", "/readyz", "/livez", "/debug/*"))
    anonymous = UserInfo(username="system:anonymous")
    for path in ("/healthz", "/readyz", "/livez", "/debug/pprof"):
        await a.authorize(anonymous, verb="get", resource="", namespace="", path=path)
    assert api.access_calls == []
    assert a.always_allowed == 4
    with pytest.raises(ServiceUnavailable):
        await a.authorize(anonymous, verb="get", resource="m", namespace="n", path="/healthz/extra")


async def test_authorize_stale_grace_then_503(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authz(api, clock, allow_cache_ttl_seconds=10.0, stale_grace_seconds=60.0)
    await metric_access(a)
    api.error = ClusterAPIError("connection refused")
    clock.advance(10.0 + 59.0)  # expired 59 s ago: within the grace
    await metric_access(a)
    assert a.stale_uses == 1
    assert a.review_errors == 1
    clock.advance(1.0)  # expired 60 s ago: beyond
    with pytest.raises(ServiceUnavailable, match="connection refused") as info:
        await metric_access(a)
    assert 'user "alice"' in str(info.value)
    # Never cached at all -> 503 straight away.
    with pytest.raises(ServiceUnavailable):
        await metric_access(a, namespace="never-seen")


async def test_authorize_stale_deny_stays_denied(api: FakeClusterAPI, clock: FakeClock) -> None:
    api.access = lambda _r: AccessDecision(allowed=False, denied=True)
    a = authz(api, clock)
    with pytest.raises(Forbidden):
        await metric_access(a)
    clock.advance(20)
    api.error = ClusterAPIError("down")
    with pytest.raises(Forbidden):
        await metric_access(a)
    assert a.stale_uses == 1


async def test_authorize_healthy_api_refreshes_instead_of_stale(
    api: FakeClusterAPI, clock: FakeClock
) -> None:
    a = authz(api, clock)
    await metric_access(a)
    clock.advance(11)
    api.access = lambda _r: AccessDecision(allowed=False, denied=True, reason="binding removed")
    with pytest.raises(Forbidden, match="binding removed"):
        await metric_access(a)
    assert a.stale_uses == 0


async def test_authorize_timeout_is_bounded_503(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authz(api, clock, review_timeout_seconds=0.05)
    api.delay = 5.0
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable, match=r"no answer within 0\.05s"):
        await metric_access(a)
    assert time.monotonic() - started < 1.0
    assert a.review_timeouts == 1


async def test_authorize_single_flight(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authz(api, clock)
    api.gate = asyncio.Event()
    tasks = [asyncio.create_task(metric_access(a)) for _ in range(10)]
    await asyncio.sleep(0.01)
    api.gate.set()
    await asyncio.gather(*tasks)
    assert len(api.access_calls) == 1
    assert a.coalesced == 9
    assert a.allowed == 10


async def test_authorize_cache_bounded(api: FakeClusterAPI, clock: FakeClock) -> None:
    a = authz(api, clock, max_cache_entries=3)
    for ns in ("a", "b", "c", "d", "e"):
        await metric_access(a, namespace=ns)
    assert a.cache_size == 3
    assert a.cache_evictions == 2


# --------------------------------------------------------------------------------------------- together


async def test_front_proxy_user_is_what_the_sar_is_about(api: FakeClusterAPI, clock: FakeClock) -> None:
    settings = AuthSettings(requestheader_allowed_names=("front-proxy-client",))
    authenticator = Authenticator(api, settings, clock=clock)
    authorizer = Authorizer(api, settings, clock=clock)
    user = await authenticator.authenticate(
        cert_cn="front-proxy-client",
        cert_kind="front-proxy",
        headers=multi(
            ("X-Remote-User", HPA.username),
            ("X-Remote-Group", "system:serviceaccounts"),
            ("X-Remote-Group", "system:authenticated"),
        ),
    )
    await authorizer.authorize(
        user, verb="get", resource="latency_p95_seconds", namespace="demo", path="/apis/x"
    )
    sent = api.access_calls[0]
    assert sent.user.username == HPA.username
    assert sent.user.groups == ("system:serviceaccounts", "system:authenticated")
    assert (sent.verb, sent.group, sent.resource, sent.namespace) == (
        "get",
        "external.metrics.k8s.io",
        "latency_p95_seconds",
        "demo",
    )
