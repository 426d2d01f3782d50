"""The gate in front of every API handler: who is asking (authentication) and may they (authorisation).

The TLS layer verified any client certificate against the trust store holding both client CA bundles;
this module attributes a verified certificate to the front-proxy CA or the client CA (the attribution is
cached per certificate, since every request of a keep-alive connection carries the same one), then hands
the plain facts to :class:`~adapter.api.auth.Authenticator` and :class:`~adapter.api.auth.Authorizer`.

Health paths need neither (the kubelet probes them without credentials). Discovery paths need an
authenticated user but no access review: every authenticated user may discover APIs in Kubernetes
(``system:discovery``). Values need ``get`` on the metric in the namespace.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import NameOID

from ..kube import UserInfo
from .auth import Authenticator, Authorizer
from .tls import ServingTLS, issued_by

CertKind = Literal["front-proxy", "client-ca"]
#: Distinct client certificates whose attribution is remembered.
MAX_CACHED_CERTS = 1024


@dataclass(frozen=True)
class PeerIdentity:
    kind: CertKind | None
    cn: str | None
    orgs: tuple[str, ...]


_ANONYMOUS = PeerIdentity(None, None, ())


class RequestGuard:
    """Authenticates and authorises API requests; raises the :mod:`adapter.errors` 401/403/503."""

    def __init__(self, tls: ServingTLS, authenticator: Authenticator, authorizer: Authorizer) -> None:
        self.tls = tls
        self.authenticator = authenticator
        self.authorizer = authorizer
        self._peers: OrderedDict[bytes, PeerIdentity] = OrderedDict()

    def peer(self, request: web.Request) -> PeerIdentity:
        """What the verified client certificate of ``request`` says, if the handshake verified one."""
        if self.tls.context.verify_mode == ssl.CERT_NONE or request.transport is None:
            return _ANONYMOUS
        obj = request.transport.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if isinstance(obj, ssl.SSLObject | ssl.SSLSocket) else None
        if not der:
            return _ANONYMOUS
        known = self._peers.get(der)
        if known is not None:
            return known
        cert = x509.load_der_x509_certificate(der)
        kind: CertKind | None = None
        if self.tls.requestheader_cas and issued_by(cert, self.tls.requestheader_cas):
            kind = "front-proxy"
        elif self.tls.client_cas and issued_by(cert, self.tls.client_cas):
            kind = "client-ca"
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        identity = PeerIdentity(kind, str(cns[0].value) if cns else None, tuple(str(o.value) for o in orgs))
        self._peers[der] = identity
        if len(self._peers) > MAX_CACHED_CERTS:
            self._peers.popitem(last=False)
        return identity

    async def authenticate(self, request: web.Request) -> UserInfo:
        peer = self.peer(request)
        return await self.authenticator.authenticate(
            cert_cn=peer.cn, cert_orgs=peer.orgs, cert_kind=peer.kind, headers=request.headers,
            authorization=request.headers.get("Authorization"),
        )

    async def check_value(self, request: web.Request, metric: str, namespace: str) -> UserInfo:
        user = await self.authenticate(request)
        await self.authorizer.authorize(user, verb="get", resource=metric, namespace=namespace,
                                        path=request.path)
        return user
