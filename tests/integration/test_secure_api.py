"""The secure external metrics API end to end: real TLS, delegated authentication and authorisation.

``latency-adapter serve`` runs as a subprocess *without* ``--insecure-no-auth``, in front of
:class:`~tests.fakes.FakeKubeAPI` (a TLS fake of kube-apiserver serving the authentication ConfigMap,
``TokenReview`` and ``SubjectAccessReview``, reached through the real ``kubernetes`` client and a kubeconfig).
Certificates come from ``trustme``: a serving CA (the adapter's ``--tls-cert-file``), a client CA (x509 users,
user = CN, groups = O) and a front-proxy CA (the aggregator's request-header certificate).

Two long-lived adapters (plus short-lived ones for the start-up check and the shared-CA case):

* ``secure`` is configured by flags (every CA given on the command line; the fake has no ConfigMap). Its
  fake allows ``alice``, ``carol`` and the token user ``tina``; everyone else is denied.
* ``cm`` takes its CAs from the ConfigMap ``kube-system/extension-apiserver-authentication`` (no CA flag).
  It also carries the two slow stories: the serving certificate is rotated on disk right after it starts
  (``ServingTLS.watch`` looks every 10 s, and the tests in between use that time), and at the end its fake
  API server is made slow and then stopped. The tests touching it are therefore last in this file.

Values exist because spans are sent first with the real OpenTelemetry SDK (``span_sender``), into 1 s slices.

Every probe of a handshake uses a fresh ``SSLContext`` (no session resumption), so it sees what the next
handshake presents. Clients verify the adapter against the serving CA with hostname ``127.0.0.1``.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import trustme
import yaml

from adapter.kube import UserInfo
from adapter.quantity import parse_quantity
from tests.fakes import FakeKubeAPI, allow_users
from tests.integration.process import Response, ServiceProcess, exchange, wait_for
from tests.tooling import require_tool

PREFIX = "/apis/external.metrics.k8s.io/v1beta1"
NAMESPACE = "demo"
METRIC = "latency_p95_seconds"
OTHER_METRIC = "latency_p99_seconds"
WORKLOAD = "checkout"
SELECTOR = f"workload={WORKLOAD}"
#: Short slices so a value exists a second after the spans; a window longer than this module's runtime so
#: the value sent at the start still exists in its last test.
CONFIG: dict[str, Any] = {"store": {"window_seconds": 60, "slice_seconds": 1, "refresh_seconds": 1}}
#: What the spans say: half at 0.1 s, half at 0.4 s, so p95 = 0.4 s (within the sketch's 1 %).
LATENCIES = [0.1] * 50 + [0.4] * 50
P95 = 0.4
FRONT_PROXY_CN = "front-proxy-client"
#: The ``TokenReview`` fake knows this token (user ``tina``); it must never appear in the adapter's log.
TINA_TOKEN = "tina-token-0123456789abcdef"
TINA = UserInfo(username="tina", uid="u-tina", groups=("token-group",))
#: Another token of tina's, used where the first one's TokenReview count must stay untouched.
TINA_OTHER_TOKEN = "tina-other-token-fedcba9876543210"
#: ``ServingTLS.watch`` polls every 10 s: a rotation must show within this much of the write.
ROTATION_DEADLINE = 15.0
#: The authoriser's fresh TTL for an allow decision (AuthSettings.allow_cache_ttl_seconds).
ALLOW_TTL = 10.0
#: The bound the brief sets on an uncached request while the API server is down or slow.
OUTAGE_BOUND = 5.0
UNAUTHORIZED_SAMPLE = "latency_adapter_api_rejected_total"


# -- small plumbing ------------------------------------------------------------------------------------------


def value_path(namespace: str = NAMESPACE, metric: str = METRIC, selector: str = SELECTOR) -> str:
    return f"{PREFIX}/namespaces/{namespace}/{metric}?labelSelector={quote(selector, safe='')}"


def pem_of(leaf: trustme.LeafCert) -> bytes:
    return b"".join(p.bytes() for p in leaf.cert_chain_pems)


def der_of(leaf: trustme.LeafCert) -> bytes:
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode("ascii"))


def write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@dataclass
class PKI:
    """The three CAs of an aggregated API server's world, and the leaf certificates the tests present."""

    server_ca: trustme.CA = field(default_factory=lambda: trustme.CA(organization_name="adapter serving ca"))
    client_ca: trustme.CA = field(default_factory=lambda: trustme.CA(organization_name="client ca"))
    proxy_ca: trustme.CA = field(default_factory=lambda: trustme.CA(organization_name="front-proxy ca"))
    #: Trusted by nobody: its certificates must not get past the handshake.
    rogue_ca: trustme.CA = field(default_factory=lambda: trustme.CA(organization_name="rogue ca"))

    def __post_init__(self) -> None:
        self.serving = self.server_ca.issue_cert("127.0.0.1", "localhost", common_name="latency-adapter")
        #: A new issue of the same CA with another CN: clients keep trusting it, the DER differs.
        self.rotated = self.server_ca.issue_cert("127.0.0.1", "localhost",
                                                 common_name="latency-adapter-rotated")
        self.front_proxy = self.proxy_ca.issue_cert(common_name=FRONT_PROXY_CN,
                                                    organization_name="system:masters")
        self.unlisted_proxy = self.proxy_ca.issue_cert(common_name="not-the-aggregator")
        self.carol = self.client_ca.issue_cert(common_name="carol", organization_name="team-a")
        self.bob = self.client_ca.issue_cert(common_name="bob", organization_name="team-b")
        self.dave = self.client_ca.issue_cert(common_name="dave", organization_name="team-d")
        self.erin = self.client_ca.issue_cert(common_name="erin", organization_name="team-e")
        self.rogue_proxy = self.rogue_ca.issue_cert(common_name=FRONT_PROXY_CN)
        self._contexts: dict[int, ssl.SSLContext] = {}

    def context(self, cert: trustme.LeafCert | None = None, *, fresh: bool = False) -> ssl.SSLContext:
        """A client context trusting the serving CA (hostname checked), presenting ``cert`` if given."""
        key = id(cert)
        if fresh or key not in self._contexts:
            ctx = ssl.create_default_context(cadata=self.server_ca.cert_pem.bytes().decode("ascii"))
            if cert is not None:
                cert.configure_cert(ctx)
            if fresh:
                return ctx
            self._contexts[key] = ctx
        return self._contexts[key]


def request(pki: PKI, port: int, path: str, *, cert: trustme.LeafCert | None = None,
            headers: Sequence[tuple[str, str]] = (), timeout: float = 15.0) -> Response:
    """One HTTPS GET on a new connection."""
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=pki.context(cert), timeout=timeout)
    return exchange(conn, path, headers, close=True)


def presented_der(pki: PKI, port: int) -> bytes:
    """The serving certificate (DER) a brand-new TLS handshake gets, verified against the serving CA."""
    ctx = pki.context(fresh=True)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock, \
            ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def assert_status(resp: Response, code: int, reason: str) -> dict[str, Any]:
    assert resp.status == code, resp
    assert resp.headers.get("content-type", "").startswith("application/json"), resp
    doc: dict[str, Any] = resp.json()
    assert doc["kind"] == "Status" and doc["apiVersion"] == "v1", doc
    assert doc["status"] == "Failure" and doc["code"] == code and doc["reason"] == reason, doc
    return doc


def reviews_since(fake: FakeKubeAPI, start: int, user: str | None = None) -> list[dict[str, Any]]:
    """The ``spec`` of every SubjectAccessReview the fake answered after the first ``start`` (for ``user``).

    Filter by user where other users' cached decisions may be refreshed ahead of expiry meanwhile.
    """
    specs = [dict(r.get("spec") or {}) for r in fake.access_reviews[start:]]
    return [s for s in specs if user is None or s.get("user") == user]


def check_metric_review(spec: dict[str, Any], user: str, namespace: str = NAMESPACE,
                        metric: str = METRIC) -> None:
    assert spec.get("user") == user, spec
    assert spec.get("resourceAttributes") == {"verb": "get", "group": "external.metrics.k8s.io",
                                              "resource": metric, "namespace": namespace}, spec


# -- the adapter process ------------------------------------------------------------------------------------


class SecureAdapter(ServiceProcess):
    """``latency-adapter serve`` in secure mode (the default: no ``--insecure-no-auth``) on free ports."""

    drop_env = ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")
    tail_lines = 80

    def __init__(self, workdir: Path, pki: PKI, flags: Sequence[str]) -> None:
        super().__init__(workdir, flags, CONFIG)
        self.pki = pki
        self.flags = list(flags)

    def ready(self) -> None:
        assert self.listening.get("insecure_no_auth") is False, self.listening
        super().ready()

    # -- clients

    def api(self, path: str, *, cert: trustme.LeafCert | None = None,
            headers: Sequence[tuple[str, str]] = (), timeout: float = 15.0) -> Response:
        return request(self.pki, self.api_port, path, cert=cert, headers=headers, timeout=timeout)

    def wait_value(self, cert: trustme.LeafCert, timeout: float = 10.0) -> dict[str, Any]:
        """The ExternalMetricValueList for :data:`SELECTOR` once it exists (404 until a slice closed)."""

        def check() -> dict[str, Any] | None:
            resp = self.api(value_path(), cert=cert)
            if resp.status == 200:
                doc: dict[str, Any] = resp.json()
                return doc
            assert resp.status == 404, resp
            return None

        return wait_for(check, timeout, f"{METRIC} for {SELECTOR}", interval=0.2)


def assert_p95(doc: dict[str, Any]) -> None:
    assert doc["kind"] == "ExternalMetricValueList", doc
    (item,) = doc["items"]
    assert item["metricName"] == METRIC, item
    assert item["metricLabels"]["workload"] == WORKLOAD, item
    served = float(parse_quantity(item["value"]))
    assert abs(served - P95) <= 0.02 * P95, item


def tls_flags(workdir: Path, leaf: trustme.LeafCert) -> list[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    cert, key = workdir / "tls.crt", workdir / "tls.key"
    write_atomically(cert, pem_of(leaf))
    write_atomically(key, leaf.private_key_pem.bytes())
    return ["--tls-cert-file", str(cert), "--tls-private-key-file", str(key)]


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki() -> PKI:
    return PKI()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("secure-api")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeKubeAPI]:
    api = FakeKubeAPI(tokens={TINA_TOKEN: TINA, TINA_OTHER_TOKEN: TINA},
                      policy=allow_users("alice", "carol", "tina"))
    api.start_in_thread()
    yield api
    api.stop()


@pytest.fixture(scope="module")
def secure(pki: PKI, fake: FakeKubeAPI, base: Path, span_sender: Any) -> Iterator[SecureAdapter]:
    """Configured by flags only: every CA on the command line, the fake for TokenReview and SAR."""
    workdir = base / "secure"
    kubeconfig = fake.kubeconfig(base / "secure.kubeconfig")
    (base / "client-ca.crt").write_bytes(pki.client_ca.cert_pem.bytes())
    (base / "front-proxy-ca.crt").write_bytes(pki.proxy_ca.cert_pem.bytes())
    flags = [*tls_flags(workdir, pki.serving),
             "--client-ca-file", str(base / "client-ca.crt"),
             "--requestheader-client-ca-file", str(base / "front-proxy-ca.crt"),
             "--requestheader-allowed-names", FRONT_PROXY_CN,
             "--authentication-kubeconfig", str(kubeconfig),
             "--authorization-kubeconfig", str(kubeconfig)]
    proc = SecureAdapter(workdir, pki, flags).start()
    try:
        sent = span_sender(proc.otlp_port).send(NAMESPACE, WORKLOAD, LATENCIES, routes="/pay")
        assert len(sent.spans) == len(LATENCIES)
        assert_p95(proc.wait_value(pki.carol))
        yield proc
    finally:
        rc = proc.stop()
    assert rc == 0, f"the secure adapter did not stop cleanly (exit {rc}):\n{proc.stderr_tail()}"


@dataclass
class ConfigMapAdapter:
    """The adapter configured from the ConfigMap, with the timeline its slow tests need."""

    proc: SecureAdapter
    fake: FakeKubeAPI
    #: When dave's allow decision (p95 in demo) was cached at the latest (monotonic): updated after every
    #: request of his that could have refreshed it while the fake API server was healthy.
    dave_cached_at: float
    #: When the rotated serving pair was written (monotonic).
    rotated_at: float
    initial_der: bytes


@pytest.fixture(scope="module", autouse=True)
def cm(pki: PKI, base: Path, span_sender: Any) -> Iterator[ConfigMapAdapter]:
    """Started first (autouse), so the rotation it writes at once is due when its tests come, last."""
    fake = FakeKubeAPI(policy=allow_users("dave"))
    fake.set_auth_config_map(client_ca_pem=pki.client_ca.cert_pem.bytes(),
                             requestheader_client_ca_pem=pki.proxy_ca.cert_pem.bytes(),
                             requestheader_allowed_names=(FRONT_PROXY_CN,))
    fake.start_in_thread()
    workdir = base / "configmap"
    kubeconfig = fake.kubeconfig(base / "configmap.kubeconfig")
    flags = [*tls_flags(workdir, pki.serving),
             "--authentication-kubeconfig", str(kubeconfig),
             "--authorization-kubeconfig", str(kubeconfig)]
    proc = SecureAdapter(workdir, pki, flags)
    try:
        proc.start()
        initial_der = presented_der(pki, proc.api_port)
        # Rotate now: ServingTLS.watch picks it up within 10 s, while the other tests run.
        write_atomically(workdir / "tls.crt", pem_of(pki.rotated))
        write_atomically(workdir / "tls.key", pki.rotated.private_key_pem.bytes())
        rotated_at = time.monotonic()
        span_sender(proc.otlp_port).send(NAMESPACE, WORKLOAD, LATENCIES, routes="/pay")
        # dave's allow decision gets cached by the first of these requests (404 until the slice closed).
        assert_p95(proc.wait_value(pki.dave))
        dave_cached_at = time.monotonic()  # the entry is at most this recent
        yield ConfigMapAdapter(proc, fake, dave_cached_at, rotated_at, initial_der)
    finally:
        rc = proc.stop()
        if fake.running:  # the outage test stops it; a second stop() in thread mode is not a no-op
            fake.stop()
    assert rc == 0, f"the ConfigMap adapter did not stop cleanly (exit {rc}):\n{proc.stderr_tail()}"


@pytest.fixture(scope="module")
def kubectl() -> str:
    return require_tool("kubectl")


def write_kubeconfig(path: Path, pki: PKI, port: int, cert: trustme.LeafCert | None) -> Path:
    """A kubeconfig trusting the serving CA; with ``cert`` its user presents that client certificate.

    Without ``cert`` the user has basic-auth credentials only: kubectl would otherwise prompt for a username
    (client-go does when a user cannot be identified), and a Basic credential is neither a certificate nor a
    bearer token, which is the point.
    """
    user: dict[str, Any] = {"username": "nobody", "password": "not-a-credential-here"}
    if cert is not None:
        user = {"client-certificate-data": base64.b64encode(pem_of(cert)).decode("ascii"),
                "client-key-data": base64.b64encode(cert.private_key_pem.bytes()).decode("ascii")}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "adapter", "cluster": {
            "server": f"https://127.0.0.1:{port}",
            "certificate-authority-data": base64.b64encode(pki.server_ca.cert_pem.bytes()).decode("ascii")}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "adapter", "context": {"cluster": "adapter", "user": "user"}}],
        "current-context": "adapter",
    }
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


def get_raw(kubectl: str, kubeconfig: Path, path: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["HOME"] = str(kubeconfig.parent)  # kubectl's cache stays out of the real home
    return subprocess.run([kubectl, "--kubeconfig", str(kubeconfig), "--request-timeout", "20s",
                           "get", "--raw", path], capture_output=True, text=True, timeout=60, env=env,
                          stdin=subprocess.DEVNULL)


# -- 1. kubectl with an x509 client certificate --------------------------------------------------------------


@pytest.mark.needs_kubectl
def test_kubectl_client_certificate_allowed_denied_and_missing(
        kubectl: str, secure: SecureAdapter, fake: FakeKubeAPI, pki: PKI, tmp_path: Path) -> None:
    start = len(fake.access_reviews)
    allowed = get_raw(kubectl, write_kubeconfig(tmp_path / "carol", pki, secure.api_port, pki.carol),
                      value_path())
    assert allowed.returncode == 0, allowed.stderr
    assert_p95(json.loads(allowed.stdout))

    denied = get_raw(kubectl, write_kubeconfig(tmp_path / "bob", pki, secure.api_port, pki.bob), value_path())
    assert denied.returncode != 0, denied.stdout
    assert "(Forbidden)" in denied.stderr, denied.stderr
    for part in ('user "bob"', "cannot get", f'resource "{METRIC}"', f'namespace "{NAMESPACE}"'):
        assert part in denied.stderr, (part, denied.stderr)
    # The Forbidden Status itself, as any client gets it.
    doc = assert_status(secure.api(value_path(), cert=pki.bob), 403, "Forbidden")
    for part in ('user "bob"', "cannot get", f'resource "{METRIC}"', f'namespace "{NAMESPACE}"'):
        assert part in doc["message"], (part, doc)

    missing = get_raw(kubectl, write_kubeconfig(tmp_path / "nobody", pki, secure.api_port, None),
                      value_path())
    assert missing.returncode != 0, missing.stdout
    assert "Unauthorized" in missing.stderr, missing.stderr
    assert_status(secure.api(value_path()), 401, "Unauthorized")

    # The x509 identity reached the SubjectAccessReview: user = CN, groups = O.
    by_user = {spec["user"]: spec for spec in reviews_since(fake, start)}
    assert set(by_user) <= {"carol", "bob"}, by_user
    check_metric_review(by_user["bob"], "bob")
    assert by_user["bob"].get("groups") == ["team-b"], by_user["bob"]


# -- 2. front-proxy (request-header) authentication ----------------------------------------------------------

ALICE_HEADERS = [("X-Remote-User", "alice"), ("X-Remote-Group", "g1"), ("X-Remote-Group", "g2")]
#: Extras as the aggregator sends them: lower-cased keys, %-escaped characters a header name cannot hold.
EXTRA_HEADERS = [("X-Remote-Extra-Scopes", "read"), ("X-Remote-Extra-Scopes", "write"),
                 ("X-Remote-Extra-Acme.com%2fproject", "p1")]


def test_front_proxy_certificate_with_identity_headers_is_alice(
        secure: SecureAdapter, fake: FakeKubeAPI, pki: PKI) -> None:
    namespace = "proxied"
    start = len(fake.access_reviews)
    resp = secure.api(value_path(namespace), cert=pki.front_proxy, headers=[*ALICE_HEADERS, *EXTRA_HEADERS])
    # Authorised: the namespace has no data, so the answer is the provider's 404, past the guard.
    assert_status(resp, 404, "NotFound")
    specs = reviews_since(fake, start)
    assert len(specs) == 1, specs
    check_metric_review(specs[0], "alice", namespace)
    assert specs[0].get("groups") == ["g1", "g2"], specs[0]
    assert specs[0].get("extra") == {"scopes": ["read", "write"], "acme.com/project": ["p1"]}, specs[0]
    # And with data: the value, as alice.
    resp = secure.api(value_path(), cert=pki.front_proxy, headers=ALICE_HEADERS)
    assert resp.status == 200, resp
    assert_p95(resp.json())
    assert any(s.get("user") == "alice" and s["resourceAttributes"]["namespace"] == NAMESPACE
               for s in reviews_since(fake, start)), reviews_since(fake, start)


def test_front_proxy_connection_carries_many_users(secure: SecureAdapter, fake: FakeKubeAPI,
                                                  pki: PKI) -> None:
    """The aggregator multiplexes users over one keep-alive connection: each request is its own user."""
    conn = http.client.HTTPSConnection("127.0.0.1", secure.api_port, context=pki.context(pki.front_proxy),
                                       timeout=15)
    start = len(fake.access_reviews)
    try:
        first = exchange(conn, value_path(), ALICE_HEADERS)
        assert first.status == 200, first
        doc = assert_status(exchange(conn, value_path(), [("X-Remote-User", "bob")]), 403, "Forbidden")
        assert 'user "bob"' in doc["message"], doc
        assert_status(exchange(conn, value_path(), []), 401, "Unauthorized")
        assert exchange(conn, value_path(), ALICE_HEADERS).status == 200
    finally:
        conn.close()
    bob = [spec for spec in reviews_since(fake, start) if spec.get("user") == "bob"]
    assert len(bob) == 1 and "groups" not in bob[0], bob


def test_identity_headers_without_a_front_proxy_certificate_are_ignored(
        secure: SecureAdapter, fake: FakeKubeAPI, pki: PKI) -> None:
    # A namespace of its own: alice's cached decisions elsewhere cannot hide a review made as alice here.
    namespace = "spoofed"
    path = value_path(namespace)
    start = len(fake.access_reviews)
    unauthorized = secure.counter(UNAUTHORIZED_SAMPLE, reason="Unauthorized")

    # A client-CA certificate: the identity is the certificate's subject, the headers play no part.
    resp = secure.api(path, cert=pki.carol, headers=ALICE_HEADERS)
    assert_status(resp, 404, "NotFound")  # carol is allowed; no data in this namespace
    specs = reviews_since(fake, start)
    assert len(specs) == 1, specs
    check_metric_review(specs[0], "carol", namespace)
    assert specs[0].get("groups") == ["team-a"], specs[0]

    # bob's certificate with alice's headers stays bob: denied, and the Status names bob.
    doc = assert_status(secure.api(path, cert=pki.bob, headers=ALICE_HEADERS), 403, "Forbidden")
    assert 'user "bob"' in doc["message"] and "alice" not in doc["message"], doc

    # A front-proxy certificate whose CN is not in --requestheader-allowed-names: 401.
    doc = assert_status(secure.api(path, cert=pki.unlisted_proxy, headers=ALICE_HEADERS), 401, "Unauthorized")
    assert "not-the-aggregator" in doc["message"], doc
    # The same with a bearer token: the token's user, never the header's.
    resp = secure.api(path, cert=pki.unlisted_proxy,
                      headers=[*ALICE_HEADERS, ("Authorization", f"Bearer {TINA_OTHER_TOKEN}")])
    assert_status(resp, 404, "NotFound")  # tina is allowed; no data in this namespace
    # No certificate at all: 401.
    assert_status(secure.api(path, headers=ALICE_HEADERS), 401, "Unauthorized")
    # A certificate from a CA nobody trusts, even with the aggregator's CN, does not get past the handshake
    # (with TLS 1.3 the client learns it at its first read: an alert or a reset).
    with pytest.raises((ssl.SSLError, ConnectionError)):
        secure.api(path, cert=pki.rogue_proxy, headers=ALICE_HEADERS)
    # The allowed front-proxy certificate without a username header names nobody: 401.
    assert_status(secure.api(path, cert=pki.front_proxy, headers=[("X-Remote-Group", "g1")]),
                  401, "Unauthorized")

    users = [str(spec.get("user")) for spec in reviews_since(fake, start)]
    assert "alice" not in users, users
    assert sorted(set(users)) == ["bob", "carol", "tina"], users  # a refresh ahead may repeat one
    assert secure.counter(UNAUTHORIZED_SAMPLE, reason="Unauthorized") == unauthorized + 3


# -- 3. bearer tokens through TokenReview --------------------------------------------------------------------


def test_bearer_token_via_cached_token_review(secure: SecureAdapter, fake: FakeKubeAPI) -> None:
    def reviews_of(token: str) -> int:
        return sum(1 for r in fake.token_reviews if (r.get("spec") or {}).get("token") == token)

    sar_start = len(fake.access_reviews)
    bearer = [("Authorization", f"Bearer {TINA_TOKEN}")]
    for _ in range(5):
        resp = secure.api(value_path(), headers=bearer)
        assert resp.status == 200, resp
        assert_p95(resp.json())
    assert reviews_of(TINA_TOKEN) == 1, fake.token_reviews
    specs = reviews_since(fake, sar_start)
    assert len(specs) == 1, specs  # the allow decision is cached too
    check_metric_review(specs[0], "tina")
    assert specs[0].get("groups") == ["token-group"] and specs[0].get("uid") == "u-tina", specs[0]

    unknown = "not-a-known-token-9876543210"
    for _ in range(3):
        doc = assert_status(secure.api(value_path(), headers=[("Authorization", f"Bearer {unknown}")]),
                            401, "Unauthorized")
        assert unknown not in doc["message"], doc
    assert reviews_of(unknown) == 1, "the negative answer is cached as well"
    # Tokens never reach the log.
    log = secure.stderr_text()
    assert TINA_TOKEN not in log and unknown not in log


# -- 7. health without credentials, rejections on /metrics ---------------------------------------------------


def test_health_paths_need_no_credentials(secure: SecureAdapter, fake: FakeKubeAPI) -> None:
    start = len(fake.access_reviews), len(fake.token_reviews)
    for path in ("/healthz", "/readyz", "/livez"):
        resp = secure.api(path)
        assert resp.status == 200, (path, resp)
    assert (len(fake.access_reviews), len(fake.token_reviews)) == start


def test_rejections_are_counted_by_reason_and_logged_once(secure: SecureAdapter, pki: PKI) -> None:
    before = {reason: secure.counter(UNAUTHORIZED_SAMPLE, reason=reason)
              for reason in ("Unauthorized", "Forbidden")}
    secret = "nope-0123456789-secret"
    assert_status(secure.api(value_path("counted-401")), 401, "Unauthorized")
    assert_status(secure.api(value_path("counted-401b"), headers=[("Authorization", f"Bearer {secret}")]),
                  401, "Unauthorized")
    assert_status(secure.api(value_path("counted-403"), cert=pki.bob), 403, "Forbidden")
    assert_status(secure.api(PREFIX), 401, "Unauthorized")  # discovery needs an authenticated user too
    after = {reason: secure.counter(UNAUTHORIZED_SAMPLE, reason=reason)
             for reason in ("Unauthorized", "Forbidden")}
    assert after["Unauthorized"] == before["Unauthorized"] + 3, (before, after)
    assert after["Forbidden"] == before["Forbidden"] + 1, (before, after)
    # Discovery with a credential works without any access review.
    assert secure.api(PREFIX, cert=pki.bob).status == 200

    # Each rejection is logged once, with the path (and for a 403 the user), never the token.
    def refusals(namespace: str) -> list[dict[str, Any]]:
        return [e for e in secure.log_events()
                if e.get("event") == "api_refused" and str(e.get("path", "")).startswith(
                    f"{PREFIX}/namespaces/{namespace}/")]

    def logged() -> bool:
        return all(refusals(ns) for ns in ("counted-401", "counted-401b", "counted-403"))

    wait_for(logged, 5.0, "the refusals in the log")
    for namespace, code in (("counted-401", 401), ("counted-401b", 401), ("counted-403", 403)):
        events = refusals(namespace)
        assert len(events) == 1, events
        assert events[0].get("code") == code, events
    assert 'user "bob"' in refusals("counted-403")[0].get("detail", ""), refusals("counted-403")
    assert secret not in secure.stderr_text()


# -- one CA for both kinds of client certificate ----------------------------------------------------------


def test_shared_ca_client_certificate_falls_through_to_x509(pki: PKI, fake: FakeKubeAPI, base: Path) -> None:
    shared = base / "shared-ca.crt"
    shared.write_bytes(pki.proxy_ca.cert_pem.bytes())
    kubeconfig = fake.kubeconfig(base / "shared.kubeconfig")
    workdir = base / "shared-ca"
    proc = SecureAdapter(workdir, pki, [
        *tls_flags(workdir, pki.serving), "--client-ca-file", str(shared),
        "--requestheader-client-ca-file", str(shared), "--requestheader-allowed-names", FRONT_PROXY_CN,
        "--authentication-kubeconfig", str(kubeconfig), "--authorization-kubeconfig", str(kubeconfig)])
    carol = pki.proxy_ca.issue_cert(common_name="carol", organization_name="team-a")
    proc.start()
    try:
        # The front proxy still works.
        resp = proc.api(value_path("shared-ca"), cert=pki.front_proxy, headers=ALICE_HEADERS)
        assert_status(resp, 404, "NotFound")
        # carol's certificate is an x509 client certificate from --client-ca-file: user carol.
        start = len(fake.access_reviews)
        resp = proc.api(value_path("shared-ca"), cert=carol)
        assert_status(resp, 404, "NotFound")  # authorised as carol; no data in this namespace
        (spec,) = reviews_since(fake, start, "carol")
        check_metric_review(spec, "carol", "shared-ca")
    finally:
        proc.stop()


# -- 6. startup ----------------------------------------------------------------------------------------------


def test_secure_mode_without_kubeconfig_exits_2(pki: PKI, base: Path) -> None:
    workdir = base / "no-kubeconfig"
    (base / "client-ca-only.crt").write_bytes(pki.client_ca.cert_pem.bytes())
    proc = SecureAdapter(workdir, pki, [*tls_flags(workdir, pki.serving),
                                        "--client-ca-file", str(base / "client-ca-only.crt")])
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("KUBERNETES_SERVICE_HOST", "KUBECONFIG")}
    result = subprocess.run(proc.command(), capture_output=True, text=True, timeout=30, env=env,
                            stdin=subprocess.DEVNULL, cwd=workdir)
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "--authorization-kubeconfig" in result.stderr, result.stderr
    assert "listening" not in result.stderr


def test_client_ca_from_the_configmap(cm: ConfigMapAdapter, pki: PKI) -> None:
    events = [e for e in cm.proc.log_events() if e.get("event") == "auth_configured"]
    assert events and events[0].get("client_ca"), events
    assert "--client-ca-file" not in cm.proc.flags
    start = len(cm.fake.access_reviews)
    # dave is allowed (cached since start); the CA that verified his certificate came from the ConfigMap.
    assert_p95(cm.proc.wait_value(pki.dave))
    cm.dave_cached_at = time.monotonic()
    doc = assert_status(cm.proc.api(value_path(), cert=pki.carol), 403, "Forbidden")
    assert 'user "carol"' in doc["message"], doc
    (spec,) = reviews_since(cm.fake, start, "carol")
    check_metric_review(spec, "carol")
    # The front-proxy CA and allowed names came from the ConfigMap too.
    resp = cm.proc.api(value_path(), cert=pki.front_proxy, headers=[("X-Remote-User", "dave")])
    assert resp.status == 200, resp
    assert_status(cm.proc.api(value_path(), cert=pki.unlisted_proxy, headers=[("X-Remote-User", "dave")]),
                  401, "Unauthorized")
    assert_status(cm.proc.api(value_path()), 401, "Unauthorized")


# -- 4. serving certificate rotation -------------------------------------------------------------------------


def test_rotated_serving_certificate_is_presented(cm: ConfigMapAdapter, pki: PKI) -> None:
    assert cm.initial_der == der_of(pki.serving)
    new = der_of(pki.rotated)
    assert new != cm.initial_der
    remaining = cm.rotated_at + ROTATION_DEADLINE - time.monotonic()
    seen: list[bytes] = []

    def rotated() -> bool:
        der = presented_der(pki, cm.proc.api_port)
        seen.append(der)
        assert der in (cm.initial_der, new), "a handshake presented neither the old nor the new certificate"
        return der == new

    wait_for(rotated, max(remaining, 0.5), "the rotated serving certificate", interval=0.2)
    # Every later handshake presents it, and the service still answers over it.
    assert presented_der(pki, cm.proc.api_port) == new
    assert cm.proc.api("/healthz").status == 200
    assert any(e.get("event") == "tls_reloaded" and e.get("what") == "serving-pair"
               for e in cm.proc.log_events()), cm.proc.stderr_tail()


# -- 5. the API server slow, then down -----------------------------------------------------------------------


def test_api_server_slow_or_down(cm: ConfigMapAdapter, pki: PKI) -> None:
    proc, fake = cm.proc, cm.fake
    assert proc.api("/healthz").status == 200

    # Slow: every review waits far longer than the adapter's review timeout.
    fake.delay_seconds = 30.0
    slow = proc.api(value_path(), cert=pki.erin)  # erin was never reviewed: nothing cached
    assert slow.elapsed < OUTAGE_BOUND, slow
    doc = assert_status(slow, 503, "ServiceUnavailable")
    assert "erin" in doc["message"], doc
    cached = proc.api(value_path(), cert=pki.dave)
    assert cached.status == 200 and cached.elapsed < OUTAGE_BOUND, cached
    # An unseen bearer token cannot be reviewed either: 503, not 401 (the token may well be valid).
    token = proc.api(value_path(), headers=[("Authorization", "Bearer never-reviewed-token-42")])
    assert token.elapsed < OUTAGE_BOUND, token
    assert_status(token, 503, "ServiceUnavailable")
    assert "never-reviewed-token-42" not in token.text

    # Down: the listener is gone, connections are refused.
    fake.stop()
    fake.delay_seconds = 0.0
    # Make sure dave's decision is past its fresh TTL: this exercises the stale grace, not just the cache.
    time.sleep(max(0.0, cm.dave_cached_at + ALLOW_TTL + 0.5 - time.monotonic()))
    for _ in range(3):
        resp = proc.api(value_path(), cert=pki.dave)
        assert resp.status == 200 and resp.elapsed < OUTAGE_BOUND, resp
        assert_p95(resp.json())
    assert "expired cached decision" in proc.stderr_text(), proc.stderr_tail()

    for cert, metric in ((pki.dave, OTHER_METRIC), (pki.erin, METRIC)):
        resp = proc.api(value_path(metric=metric), cert=cert)
        assert resp.elapsed < OUTAGE_BOUND, resp
        assert resp.status in (500, 503), resp
        assert_status(resp, resp.status, "ServiceUnavailable" if resp.status == 503 else "InternalError")

    # The service stays up.
    assert proc.alive()
    for path in ("/healthz", "/readyz", "/livez"):
        assert proc.api(path).status == 200, path
    assert proc.ops("/healthz").status == 200
    resp = proc.api(value_path(), cert=pki.dave)
    assert resp.status == 200, resp
