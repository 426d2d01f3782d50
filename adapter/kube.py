"""The small interface through which the adapter talks to a Kubernetes API server.

Why an interface: the adapter needs only a handful of calls (read the authentication ConfigMap, review
a token, review an access), the ``kubernetes`` client is blocking and large, and tests must run the same
code against a fake server. :class:`ClusterAPI` is what the rest of the adapter depends on;
:mod:`adapter.kube_client` implements it with the ``kubernetes`` client (in a thread, off the event
loop), and ``tests/fakes`` serve the same JSON a real API server does.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

#: ConfigMap ``kube-system/extension-apiserver-authentication`` keys an aggregated API server reads.
AUTH_CONFIGMAP_NAMESPACE = "kube-system"
AUTH_CONFIGMAP_NAME = "extension-apiserver-authentication"


@dataclass(frozen=True)
class UserInfo:
    """Who made a request: the identity a token review or a front-proxy certificate vouches for."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @functools.cached_property
    def review_key(self) -> tuple[object, ...]:
        """Everything an access review depends on, hashable; computed once per object.

        Why cached: a token user is one object reused from the token cache for every request, so the
        authorisation cache key costs nothing after the first request.
        """
        extra = tuple(sorted((key, tuple(values)) for key, values in self.extra.items()))
        return (self.username, self.uid, tuple(self.groups), extra)


@dataclass(frozen=True)
class TokenReviewResult:
    authenticated: bool
    user: UserInfo | None = None
    error: str = ""


@dataclass(frozen=True)
class AccessRequest:
    """The ``SubjectAccessReview`` spec the adapter asks about (``resourceAttributes`` only)."""

    user: UserInfo
    verb: str
    group: str
    resource: str
    namespace: str
    name: str = ""


@dataclass(frozen=True)
class AccessDecision:
    allowed: bool
    denied: bool = False
    reason: str = ""
    evaluation_error: str = ""


class ClusterAPIError(Exception):
    """The API server could not be reached, timed out, or answered with an error."""


class ClusterAPI(Protocol):
    """The calls the adapter makes to the API server. Implementations must not block the event loop."""

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        """The ``data`` of a ConfigMap; raises :class:`ClusterAPIError`."""
        ...

    async def review_token(self, token: str, audiences: tuple[str, ...] = ()) -> TokenReviewResult:
        """``authentication.k8s.io/v1`` TokenReview; raises :class:`ClusterAPIError`."""
        ...

    async def review_access(self, request: AccessRequest) -> AccessDecision:
        """``authorization.k8s.io/v1`` SubjectAccessReview; raises :class:`ClusterAPIError`."""
        ...
