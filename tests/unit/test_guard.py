"""RequestGuard: a refusal carries the user it was about, for the one log line that records it."""

from __future__ import annotations

import ssl
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp.test_utils import make_mocked_request

from adapter.api.guard import RequestGuard
from adapter.errors import Forbidden
from adapter.kube import UserInfo


class Authn:
    settings = SimpleNamespace(requestheader_allowed_names=(),
                               requestheader_username_headers=("X-Remote-User",))

    async def authenticate(self, **kwargs: Any) -> UserInfo:
        assert kwargs["cert_kind"] is None  # no client CA configured: certificates are not even asked for
        return UserInfo("bob", groups=("dev",))


class Authz:
    async def authorize(self, user: UserInfo, **kwargs: Any) -> None:
        raise Forbidden(f'user "{user.username}" cannot get resource "{kwargs["resource"]}"')


async def test_forbidden_carries_the_user_for_the_log_line() -> None:
    tls = SimpleNamespace(context=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), asks_client_certificates=False)
    guard = RequestGuard(tls, Authn(), Authz())  # type: ignore[arg-type]
    request = make_mocked_request("GET", "/apis/external.metrics.k8s.io/v1beta1/namespaces/a/m")
    with pytest.raises(Forbidden) as info:
        await guard.check_value(request, "latency_p95_seconds", "a")
    assert info.value.user == "bob"
