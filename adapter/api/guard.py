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

from ..errors import RequestError
from ..kube import UserInfo
from .auth import Authenticator, Authorizer
from .tls import ServingTLS, issued_by

CertKind = Literal["front-proxy", "client-ca"]
#: Distinct client certificates whose attribution is remembered.
MAX_CACHED_CERTS = 1024


@dataclass(frozen=True)
class PeerIdentity:
    """A verified client certificate: which CA bundles issued it (both, when they share a CA) and names."""

    front_proxy: bool
    client_ca: bool
    cn: str | None
    orgs: tuple[str, ...]


_ANONYMOUS = PeerIdentity(False, False, None, ())


class RequestGuard:
    """Authenticates and authorises API requests; raises the :mod:`adapter.errors` 401/403/503."""

    def __init__(self, tls: ServingTLS, authenticator: Authenticator, authorizer: Authorizer) -> None:
        self.tls = tls
        self.authenticator = authenticator
        self.authorizer = authorizer
        self._peers: OrderedDict[bytes, PeerIdentity] = OrderedDict()

    def peer(self, request: web.Request) -> PeerIdentity:
        """What the verified client certificate of ``request`` says, if the handshake verified one."""
        transport = request.transport
        if not self.tls.asks_client_certificates or transport is None:
            return _ANONYMOUS
        obj = transport.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if isinstance(obj, ssl.SSLObject) else None
        if not der:
            return _ANONYMOUS
        known = self._peers.get(der)
        if known is not None:
            return known
        cert = x509.load_der_x509_certificate(der)
        front = bool(self.tls.requestheader_cas) and issued_by(cert, self.tls.requestheader_cas)
        client = bool(self.tls.client_cas) and issued_by(cert, self.tls.client_cas)
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        identity = PeerIdentity(front, client, str(cns[0].value) if cns else None,
                                tuple(str(o.value) for o in orgs))
        self._peers[der] = identity
        if len(self._peers) > MAX_CACHED_CERTS:
            self._peers.popitem(last=False)
        return identity

    def _kind(self, peer: PeerIdentity, request: web.Request) -> CertKind | None:
        """How the certificate authenticates, in kube-apiserver's union order.

        Request-header authentication first, when it applies (front-proxy CA, allowed CN, a username
        header); otherwise x509 when the client CA issued the certificate. When both bundles hold the
        same CA, a certificate that is not an allowed front proxy is an ordinary x509 client.
        """
        if peer.front_proxy:
            settings = self.authenticator.settings
            allowed = settings.requestheader_allowed_names
            if (not allowed or peer.cn in allowed) and any(
                    request.headers.get(h) for h in settings.requestheader_username_headers):
                return "front-proxy"
        if peer.client_ca:
            return "client-ca"
        return "front-proxy" if peer.front_proxy else None

    async def authenticate(self, request: web.Request) -> UserInfo:
        peer = self.peer(request)
        return await self.authenticator.authenticate(
            cert_cn=peer.cn, cert_orgs=peer.orgs, cert_kind=self._kind(peer, request),
            headers=request.headers, authorization=request.headers.get("Authorization"),
        )

    async def check_value(self, request: web.Request, metric: str, namespace: str) -> UserInfo:
        user = await self.authenticate(request)
        try:
            await self.authorizer.authorize(user, verb="get", resource=metric, namespace=namespace,
                                            path=request.path)
        except RequestError as exc:
            exc.user = user.username
            raise
        return user
