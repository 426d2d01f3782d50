"""Builds the secure API listener's parts from flags, the cluster and defaults, the way aggregated API
servers do (metrics-server, prometheus-adapter): TLS, delegated authentication and authorisation.

Order of sources, as in Kubernetes' generic API server: the ConfigMap
``kube-system/extension-apiserver-authentication`` (read through ``--authentication-kubeconfig`` or the
in-cluster config) gives the client CA bundles and the request-header settings; flags given on the command
line override it (that is how a local run without a cluster is configured). A missing ConfigMap is logged
and the flags alone are used. Authorisation always needs an API server (``--authorization-kubeconfig`` or
in-cluster): without one the service refuses to start rather than letting every authenticated client read
every metric.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..kube import (
    AUTH_CONFIGMAP_NAME,
    AUTH_CONFIGMAP_NAMESPACE,
    AccessDecision,
    AccessRequest,
    ClusterAPI,
    ClusterAPIError,
    TokenReviewResult,
)
from .auth import Authenticator, Authorizer, AuthSettings, settings_from_configmap
from .guard import RequestGuard
from .tls import ServingTLS, TLSFileError, ensure_self_signed

log = logging.getLogger("adapter.security")


@dataclass(frozen=True)
class SecuritySettings:
    """The flags every aggregated API server takes, with their Kubernetes names (``--tls-cert-file``...).

    ``None`` means "not given on the command line": the ConfigMap or the default decides.
    """

    tls_cert_file: Path | None = None
    tls_private_key_file: Path | None = None
    client_ca_file: Path | None = None
    requestheader_client_ca_file: Path | None = None
    requestheader_allowed_names: tuple[str, ...] | None = None
    requestheader_username_headers: tuple[str, ...] | None = None
    requestheader_group_headers: tuple[str, ...] | None = None
    requestheader_extra_headers_prefix: tuple[str, ...] | None = None
    authentication_kubeconfig: Path | None = None
    authorization_kubeconfig: Path | None = None
    authorization_always_allow_paths: tuple[str, ...] = ("/healthz", "/readyz", "/livez")


class _NoTokenReview:
    """Stands in for the API server when there is none for authentication: tokens are simply unknown."""

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        raise ClusterAPIError("no API server configured for authentication")

    async def review_token(self, token: str, audiences: tuple[str, ...] = ()) -> TokenReviewResult:
        return TokenReviewResult(False, None, "token authentication needs --authentication-kubeconfig "
                                              "or in-cluster config")

    async def review_access(self, request: AccessRequest) -> AccessDecision:
        raise ClusterAPIError("no API server configured for authorisation")


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


def _cluster_api(path: Path | None, flag: str) -> ClusterAPI | None:
    from ..kube_client import KubernetesClusterAPI  # the kubernetes client is imported only when needed

    if path is None and not in_cluster():
        return None
    try:
        return KubernetesClusterAPI.from_kubeconfig(str(path) if path else None)
    except Exception as exc:  # the kubernetes client raises many kinds for a bad kubeconfig
        raise ConfigError(flag, str(path) if path else "<in-cluster>", f"cannot be loaded: {exc}") from exc


def _write_pem(cert_dir: Path, name: str, pem: str) -> Path:
    cert_dir.mkdir(parents=True, exist_ok=True)
    path = cert_dir / name
    tmp = path.with_suffix(".tmp")
    tmp.write_text(pem, encoding="utf-8")
    tmp.replace(path)
    return path


def build_tls(flags: SecuritySettings, cert_dir: Path, client_ca: Path | None = None,
              front_proxy_ca: Path | None = None) -> ServingTLS:
    """The serving TLS of the API: the given pair (re-read when it changes) or a self-signed one."""
    if (flags.tls_cert_file is None) != (flags.tls_private_key_file is None):
        missing = "--tls-private-key-file" if flags.tls_private_key_file is None else "--tls-cert-file"
        raise ConfigError(missing, "", "--tls-cert-file and --tls-private-key-file go together")
    try:
        if flags.tls_cert_file is not None and flags.tls_private_key_file is not None:
            return ServingTLS(flags.tls_cert_file, flags.tls_private_key_file, client_ca_file=client_ca,
                              requestheader_client_ca_file=front_proxy_ca)
        return ServingTLS.from_pair(ensure_self_signed(cert_dir), client_ca_file=client_ca,
                                    requestheader_client_ca_file=front_proxy_ca)
    except TLSFileError as exc:
        raise ConfigError("--tls-cert-file", str(flags.tls_cert_file or cert_dir), str(exc)) from exc


@dataclass
class SecureParts:
    tls: ServingTLS
    guard: RequestGuard
    authn_api: ClusterAPI
    authz_api: ClusterAPI


async def build_secure(flags: SecuritySettings, cert_dir: Path) -> SecureParts:
    """Everything the secure listener needs; raises :class:`ConfigError` naming the flag at fault."""
    authn_api = _cluster_api(flags.authentication_kubeconfig, "--authentication-kubeconfig")
    authz_api = _cluster_api(flags.authorization_kubeconfig, "--authorization-kubeconfig")
    if authz_api is None:
        raise ConfigError("--authorization-kubeconfig", "", "is required outside a cluster: every request "
                          "is authorised with a SubjectAccessReview (for local development without a cluster "
                          "use --insecure-no-auth)")
    settings = AuthSettings(always_allow_paths=flags.authorization_always_allow_paths)
    client_ca = flags.client_ca_file
    front_proxy_ca = flags.requestheader_client_ca_file
    if authn_api is not None:
        try:
            data = await authn_api.read_config_map(AUTH_CONFIGMAP_NAMESPACE, AUTH_CONFIGMAP_NAME)
        except ClusterAPIError as exc:
            log.warning("cannot read the authentication ConfigMap; using flags only", extra={"fields": {
                "event": "auth_configmap_unavailable", "configmap":
                f"{AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP_NAME}", "error": str(exc)}})
        else:
            try:
                found = settings_from_configmap(data)
            except ValueError as exc:
                raise ConfigError(f"configmap {AUTH_CONFIGMAP_NAMESPACE}/{AUTH_CONFIGMAP_NAME}", "",
                                  str(exc)) from exc
            settings = found.apply_to(settings)
            if client_ca is None and found.client_ca_pem:
                client_ca = _write_pem(cert_dir, "client-ca.crt", found.client_ca_pem)
            if front_proxy_ca is None and found.requestheader_client_ca_pem:
                front_proxy_ca = _write_pem(cert_dir, "requestheader-client-ca.crt",
                                            found.requestheader_client_ca_pem)
    overrides: dict[str, Any] = {
        "requestheader_allowed_names": flags.requestheader_allowed_names,
        "requestheader_username_headers": flags.requestheader_username_headers,
        "requestheader_group_headers": flags.requestheader_group_headers,
        "requestheader_extra_headers_prefix": flags.requestheader_extra_headers_prefix,
    }
    settings = dataclasses.replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if authn_api is None and client_ca is None and front_proxy_ca is None:
        raise ConfigError("--client-ca-file", "", "no way to authenticate anyone: give --client-ca-file "
                          "or --requestheader-client-ca-file, or --authentication-kubeconfig "
                          "(or run in-cluster)")
    tls = build_tls(flags, cert_dir, client_ca, front_proxy_ca)
    token_api: ClusterAPI = authn_api if authn_api is not None else _NoTokenReview()
    guard = RequestGuard(tls, Authenticator(token_api, settings), Authorizer(authz_api, settings))
    log.info("authentication and authorisation", extra={"fields": {
        "event": "auth_configured",
        "client_ca": str(client_ca) if client_ca else None,
        "requestheader_client_ca": str(front_proxy_ca) if front_proxy_ca else None,
        "requestheader_allowed_names": list(settings.requestheader_allowed_names),
        "token_review": authn_api is not None,
        "always_allow_paths": list(settings.always_allow_paths)}})
    return SecureParts(tls, guard, token_api, authz_api)
