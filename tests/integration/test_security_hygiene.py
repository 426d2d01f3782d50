"""Security hygiene, end to end and in the code: no secret in the log, TLS >= 1.2, no secret compared with
``==``, token caches keyed by a digest, and ``python -m tests.audit``'s exit status.

* **No secret in the log.** ``latency-adapter serve --log-level debug`` runs in secure mode in front of a
  fake kube-apiserver (:class:`EchoingKubeAPI`, a :class:`~tests.fakes.FakeKubeAPI` whose TokenReview
  answers quote the token, the way a careless API server or proxy might) and gets bearer tokens that are
  accepted, refused, malformed, very long, failing and slow, client certificates, and OTLP and ops requests
  carrying ``Authorization`` headers. Every secret holds a random marker; none may appear in the adapter's
  stderr (nor its ``/metrics`` and ``/debug/workloads``), and neither may the private keys' PEM. The test
  also checks the paths were really taken (debug records present, the fake saw each token, the redacted
  TokenReview messages logged), so it cannot pass vacuously.
* **TLS.** The same listener refuses clients limited to TLS 1.0 or 1.1 and serves TLS 1.2 and 1.3. A control
  handshake against a lax local server proves the old-version client really offers that version (OpenSSL 3
  needs ``@SECLEVEL=0``); where the local OpenSSL cannot offer it at all, that case is skipped and the
  server context's ``minimum_version`` is checked in process instead (``test_serving_context_minimum``).
* **Comparisons.** An AST scan of ``adapter/`` finds no ``==``/``!=``/``in`` comparison of anything named
  like a secret (the only secret handled, the bearer token, is looked up as the SHA-256 digest key of a
  dict), and an in-process :class:`~adapter.api.auth.Authenticator` is shown to hold no token after a
  review: its cache and everything reachable from it hold 32-byte digests only.
* **Audit.** ``python -m tests.audit`` against a local fake OSV service: exit 1 only for a vulnerability
  with a fix, 0 for one without, 0 (quickly, one line) when the service is unreachable or hangs.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import contextlib
import gc
import hashlib
import http.client
import http.server
import json
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web

from adapter.api.auth import Authenticator
from adapter.api.tls import ServingTLS
from adapter.kube import AccessDecision, AccessRequest, TokenReviewResult, UserInfo
from tests.audit import parse_pip_audit_json, report
from tests.fakes import FakeKubeAPI, allow_users
from tests.fakes.kube_api import status_body
from tests.integration.process import wait_for
from tests.integration.test_secure_api import PKI, SecureAdapter, assert_status, tls_flags, value_path

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "hygiene"  # no data: an authorised value request is a 404 NotFound past the guard


def marker(kind: str) -> str:
    """A unique, searchable string inside every secret (32 hex digits survive any JSON escaping)."""
    return f"hyg-{kind}-{uuid.uuid4().hex}"


#: Bearer tokens by what the fake API server does with them.
ACCEPTED = marker("accepted")
ACCEPTED_LOWERCASE_SCHEME = marker("accepted2")
REFUSED = marker("refused")
#: A JWT-sized token and then some (kubelet-projected tokens are about 1 KB); still one valid header line.
LONG = marker("long") + "." + "L" * 6000 + marker("long-tail")
#: The fake answers its TokenReview with a 500 Status quoting it: the message is long enough that the
#: adapter's shortened error line would cut the token in the middle, a prefix must not survive either.
FAILING = marker("failing") + "F" * 400
#: The fake holds its TokenReview longer than the adapter's review timeout (2 s).
SLOW = marker("slow")
#: Malformed or non-bearer credentials: never reviewed, never logged.
BASIC_PASSWORD = marker("basic-password")
MALFORMED = {
    "two words": f"Bearer {marker('two-words')} {marker('second-word')}",
    "double space": f"Bearer  {marker('double-space')}",
    "other scheme": f"Token {marker('other-scheme')}",
    "basic": "Basic " + base64.b64encode(f"someone:{BASIC_PASSWORD}".encode()).decode(),
    "quotes and backslash": f'Bearer {marker("quoted")}"\\\'<>',
    "obs-text byte": f"Bearer {marker('latin1')}\xe9\xff",
}
#: The adapter's own credential towards the (fake) API server, from its kubeconfig.
ADAPTER_CREDENTIAL = marker("adapter-credential")
#: Sent to the OTLP and ops ports, which do not authenticate.
OTLP_TOKEN = marker("otlp")
OPS_TOKEN = marker("ops")
TINA = UserInfo(username="tina", uid="u-tina", groups=("token-group",))


# -- the fake API server and the adapter ------------------------------------------------------------------


class EchoingKubeAPI(FakeKubeAPI):
    """A fake kube-apiserver whose TokenReview answers quote the token (and echo ``spec.token``, as the
    real one does): whatever the adapter logs of an answer, the token must not be in it."""

    async def _token_review(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        token = str((body.get("spec") or {}).get("token", ""))
        if token.startswith("hyg-failing-"):
            self.token_reviews.append(body)
            return web.json_response(status_body(500, f"tokenreview for {token} failed: etcd timeout"),
                                     status=500)
        if token.startswith("hyg-slow-"):
            self.token_reviews.append(body)  # seen now; the adapter gives up before the answer
            await self._hold(lambda: 4.0)
        resp = await super()._token_review(_Replay(request, body))
        doc = json.loads(resp.body)  # type: ignore[arg-type]
        status = doc.get("status") or {}
        if not status.get("authenticated"):
            status["error"] = f"[invalid bearer token {token!r}, token lookup failed]"
        return web.json_response(doc, status=resp.status)


class _Replay:
    """The parts of a request :meth:`FakeKubeAPI._token_review` reads, with the body already read."""

    def __init__(self, request: web.Request, body: dict[str, Any]) -> None:
        self.headers = request.headers
        self.content_type = request.content_type
        self._body = json.dumps(body).encode()

    async def read(self) -> bytes:
        return self._body


@dataclass
class Hygiene:
    proc: SecureAdapter
    fake: EchoingKubeAPI
    pki: PKI
    workdir: Path
    #: Bytes of every private key the adapter or its clients hold (serving pair, client certificates).
    private_keys: list[bytes]


@pytest.fixture(scope="module")
def hygiene(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hygiene]:
    base = tmp_path_factory.mktemp("hygiene")
    pki = PKI()
    fake = EchoingKubeAPI(tokens={ACCEPTED: TINA, ACCEPTED_LOWERCASE_SCHEME: TINA},
                          policy=allow_users("carol", "tina"), adapter_token=ADAPTER_CREDENTIAL)
    fake.start_in_thread()
    workdir = base / "adapter"
    kubeconfig = fake.kubeconfig(base / "kubeconfig")
    (base / "client-ca.crt").write_bytes(pki.client_ca.cert_pem.bytes())
    (base / "front-proxy-ca.crt").write_bytes(pki.proxy_ca.cert_pem.bytes())
    flags = [*tls_flags(workdir, pki.serving), "--log-level", "debug",
             "--client-ca-file", str(base / "client-ca.crt"),
             "--requestheader-client-ca-file", str(base / "front-proxy-ca.crt"),
             "--requestheader-allowed-names", "front-proxy-client",
             "--authentication-kubeconfig", str(kubeconfig), "--authorization-kubeconfig", str(kubeconfig)]
    proc = SecureAdapter(workdir, pki, flags)
    try:
        proc.start()
        keys = [pki.serving.private_key_pem.bytes(), pki.carol.private_key_pem.bytes(),
                pki.bob.private_key_pem.bytes(), pki.rogue_proxy.private_key_pem.bytes()]
        yield Hygiene(proc, fake, pki, workdir, keys)
    finally:
        rc = proc.stop()
        fake.stop()
    assert rc == 0, f"the adapter did not stop cleanly (exit {rc}):\n{proc.stderr_tail()}"


def pem_body_lines(pem: bytes) -> list[str]:
    """The base64 lines of a PEM block (the secret part; the BEGIN/END lines are not)."""
    return [line for line in pem.decode("ascii").splitlines() if line and not line.startswith("-----")]


def markers_in(text: str, secrets: dict[str, str]) -> dict[str, str]:
    """Which secrets (by label) show up in ``text``: their marker, or for long ones any 24-char slice."""
    found: dict[str, str] = {}
    for label, secret in secrets.items():
        for mark in re.findall(r"hyg-[a-z0-9-]+?-[0-9a-f]{32}", secret) or [secret]:
            if mark in text or mark[-32:] in text:
                found[label] = mark
    return found


def all_secrets() -> dict[str, str]:
    secrets = {"accepted": ACCEPTED, "accepted (lower-case scheme)": ACCEPTED_LOWERCASE_SCHEME,
               "refused": REFUSED, "long": LONG, "failing": FAILING, "slow": SLOW,
               "basic password": BASIC_PASSWORD, "adapter credential": ADAPTER_CREDENTIAL,
               "otlp": OTLP_TOKEN, "ops": OPS_TOKEN}
    secrets.update({f"malformed: {label}": value for label, value in MALFORMED.items()})
    return secrets


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


def plain(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers)
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


# -- 1. no secret in the log ---------------------------------------------------------------------------------


def test_no_token_or_key_in_the_debug_log(hygiene: Hygiene) -> None:
    proc, fake, pki = hygiene.proc, hygiene.fake, hygiene.pki
    path = value_path(NAMESPACE)

    # Accepted tokens (twice: the second answer comes from the cache), the scheme in any case.
    for _ in range(2):
        assert_status(proc.api(path, headers=bearer(ACCEPTED)), 404, "NotFound")
    assert_status(proc.api(path, headers=[("Authorization", f"bearer {ACCEPTED_LOWERCASE_SCHEME}")]),
                  404, "NotFound")
    # Refused by TokenReview (the fake's answer quotes the token), a very long one too.
    for token in (REFUSED, LONG):
        doc = assert_status(proc.api(path, headers=bearer(token)), 401, "Unauthorized")
        assert not markers_in(json.dumps(doc), {"token": token}), doc
    # TokenReview fails with a 500 whose message quotes the token: 503, no token in the Status either.
    doc = assert_status(proc.api(path, headers=bearer(FAILING)), 503, "ServiceUnavailable")
    assert not markers_in(json.dumps(doc), {"failing": FAILING}), doc
    # TokenReview slower than the adapter's review timeout: 503.
    assert_status(proc.api(path, headers=bearer(SLOW)), 503, "ServiceUnavailable")
    # Malformed or non-bearer Authorization headers: 401 without a review.
    for label, value in MALFORMED.items():
        resp = proc.api(path, headers=[("Authorization", value)])
        assert_status(resp, 401, "Unauthorized")
        assert not markers_in(resp.text, {label: value}), (label, resp)
    # Client certificates: allowed, denied, with a token besides, untrusted (handshake refused).
    assert_status(proc.api(path, cert=pki.carol), 404, "NotFound")
    assert_status(proc.api(path, cert=pki.bob), 403, "Forbidden")
    assert_status(proc.api(path, cert=pki.bob, headers=bearer(REFUSED)), 403, "Forbidden")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        proc.api(path, cert=pki.rogue_proxy, headers=bearer(REFUSED))
    # OTLP and ops requests carrying credentials (neither port authenticates; none may log them).
    auth = {"Authorization": f"Bearer {OTLP_TOKEN}"}
    assert plain(proc.otlp_port, "POST", "/v1/traces",
                 {**auth, "Content-Type": "application/x-protobuf"}) == 200
    assert plain(proc.otlp_port, "POST", "/v1/traces",
                 {**auth, "Content-Type": "application/x-protobuf"}, b"\xff\xffnot protobuf") == 400
    assert plain(proc.otlp_port, "POST", "/v1/metrics", {**auth, "Content-Type": "application/json"},
                 b'{"resourceMetrics": 7}') == 400
    assert plain(proc.otlp_port, "POST", "/v1/traces", {**auth, "Content-Type": "text/plain"}, b"x") == 415
    assert plain(proc.otlp_port, "POST", "/v1/traces",
                 {**auth, "Content-Type": "application/x-protobuf", "Content-Encoding": "br"}, b"x") == 415
    ops_auth = {"Authorization": f"Bearer {OPS_TOKEN}"}
    assert plain(proc.telemetry_port, "GET", "/metrics", ops_auth) == 200
    # /debug/* is off in secure mode unless --debug-endpoints on: whichever answer, no credential logged.
    assert plain(proc.telemetry_port, "GET", "/debug/workloads?format=json", ops_auth) in (200, 404)

    # The paths were taken: every reviewable token reached the fake, the refusals were logged.
    reviewed = {str((r.get("spec") or {}).get("token")) for r in fake.token_reviews}
    for token in (ACCEPTED, ACCEPTED_LOWERCASE_SCHEME, REFUSED, LONG, FAILING, SLOW):
        assert token in reviewed, f"{token[:40]}... never reached TokenReview"
    assert fake.requests and all(r.bearer == ADAPTER_CREDENTIAL for r in fake.requests
                                 if r.path.endswith("reviews")), "the adapter's own credential was not used"
    wait_for(lambda: sum(e.get("event") == "api_refused" for e in proc.log_events()) >= 4 + len(MALFORMED),
             5.0, "the refusals in the log")
    events = proc.log_events()
    debug = [e for e in events if e.get("level") == "debug"]
    assert debug, "no debug record: the adapter did not log at debug level"
    rejected = [e for e in events if str(e.get("msg", "")).startswith("TokenReview rejected a token")]
    assert rejected and all("<redacted>" in e["msg"] for e in rejected), rejected
    failed = [e for e in events if str(e.get("msg", "")).startswith("TokenReview failed")]
    assert failed and all("<redacted>" in e["msg"] for e in failed), failed
    assert any(str(e.get("msg", "")).startswith("TokenReview timed out") for e in events)

    log = proc.stderr_text()
    assert not markers_in(log, all_secrets()), markers_in(log, all_secrets())
    for pem in hygiene.private_keys:
        leaked = [line for line in pem_body_lines(pem) if line in log]
        assert not leaked, f"private key material in the log: {leaked[:1]}"
    # What the ops port shows holds no credential either.
    for page in ("/metrics", "/debug/workloads?format=json"):
        resp = proc.ops(page)
        assert not markers_in(resp.text, all_secrets()), (page, markers_in(resp.text, all_secrets()))


#: Malformed HTTP (a header line over aiohttp's 8190-byte limit, a control character in a header value)
#: never reaches the adapter's code: aiohttp's parser refuses it and logs the refusal itself.
BAD_HTTP = {
    "over-long Authorization": b"Authorization: Bearer " + marker("overlong").encode() + b"O" * 20000,
    "control character": b"Authorization: Bearer " + marker("control").encode() + b"\x01x",
    "space before colon": b"Authorization : Bearer " + marker("space-colon").encode(),
}


def raw_exchange(port: int, header: bytes, ctx: ssl.SSLContext | None) -> bytes:
    """One request whose header block holds ``header`` verbatim; the first bytes of the answer."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + header + b"\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn = ctx.wrap_socket(sock, server_hostname="127.0.0.1") if ctx is not None else sock
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(4096):
            data += chunk
        return data[:200]


def test_no_token_in_the_log_from_malformed_http(hygiene: Hygiene) -> None:
    proc = hygiene.proc
    ctx = hygiene.pki.context(fresh=True)
    for label, header in BAD_HTTP.items():
        for port, tls in ((proc.api_port, ctx), (proc.otlp_port, None), (proc.telemetry_port, None)):
            answer = raw_exchange(port, header, tls)
            assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), (label, port, answer)
    secrets = {label: header.decode("latin-1") for label, header in BAD_HTTP.items()}
    # aiohttp's parser errors quote the offending line; the refusal is logged by its kind only.
    leaking = [e for e in proc.log_events() if markers_in(json.dumps(e), secrets)]
    assert not leaking, leaking
    assert any(e.get("event") == "http_refused" for e in proc.log_events())


# -- 2. TLS >= 1.2 on the real listener ----------------------------------------------------------------------

OLD_VERSIONS = [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]


def old_client(pki: PKI, version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that offers exactly ``version`` (verifying the adapter against the serving CA)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = pki.context(fresh=True)
        ctx.minimum_version = version
        ctx.maximum_version = version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 offers TLS < 1.2 only at security level 0
    return ctx


def handshake(port: int, ctx: ssl.SSLContext) -> str | None:
    """The negotiated version of one fresh handshake (blocking sockets keep OpenSSL's reasons)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        return tls.version()


def lax_server_version(hygiene: Hygiene, client: ssl.SSLContext) -> str | None:
    """The version ``client`` negotiates with a local server allowing TLS 1.0+ (None: it cannot offer it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        lax.minimum_version = ssl.TLSVersion.TLSv1
        lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    lax.load_cert_chain(hygiene.workdir / "tls.crt", hygiene.workdir / "tls.key")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        def accept_one() -> None:
            conn, _ = listener.accept()
            with conn, contextlib.suppress(ssl.SSLError, OSError):
                lax.wrap_socket(conn, server_side=True).close()

        thread = threading.Thread(target=accept_one, daemon=True)
        thread.start()
        try:
            return handshake(listener.getsockname()[1], client)
        except ssl.SSLError:
            return None
        finally:
            thread.join(10)


@pytest.mark.parametrize("version", OLD_VERSIONS, ids=lambda v: v.name)
def test_tls_below_1_2_is_refused(hygiene: Hygiene, version: ssl.TLSVersion) -> None:
    client = old_client(hygiene.pki, version)
    expected = {ssl.TLSVersion.TLSv1: "TLSv1", ssl.TLSVersion.TLSv1_1: "TLSv1.1"}[version]
    negotiated = lax_server_version(hygiene, client)
    if negotiated != expected:
        pytest.skip(f"the local OpenSSL cannot offer {expected} even at @SECLEVEL=0 (control handshake: "
                    f"{negotiated}); test_serving_context_minimum checks the server context instead")
    with pytest.raises(ssl.SSLError) as info:
        handshake(hygiene.proc.api_port, client)
    # The server refused (protocol version alert, or asyncio closing without flushing it), not the client.
    assert isinstance(info.value, ssl.SSLEOFError) or "PROTOCOL_VERSION" in str(info.value), info.value
    assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value), info.value
    assert hygiene.proc.api("/healthz").status == 200  # the listener is fine


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=lambda v: v.name)
def test_tls_1_2_and_1_3_are_served(hygiene: Hygiene, version: ssl.TLSVersion) -> None:
    ctx = hygiene.pki.context(fresh=True)
    ctx.minimum_version = ctx.maximum_version = version
    assert handshake(hygiene.proc.api_port, ctx) == {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                                      ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]
    conn = http.client.HTTPSConnection("127.0.0.1", hygiene.proc.api_port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_serving_context_minimum(tmp_path: Path) -> None:
    """The context the listener serves with (the same ``ServingTLS`` ``serve`` builds) says TLS 1.2."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    (tmp_path / "tls.crt").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    (tmp_path / "tls.key").write_bytes(leaf.private_key_pem.bytes())
    ctx = ServingTLS(tmp_path / "tls.crt", tmp_path / "tls.key").context
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.maximum_version in (ssl.TLSVersion.MAXIMUM_SUPPORTED, ssl.TLSVersion.TLSv1_3)


# -- 3. comparisons and token storage ------------------------------------------------------------------------

#: Names of things that hold a secret. A comparison with ``==``, ``!=``, ``in`` or ``not in`` on such a
#: value leaks, through its timing, how much of a guess matches: use ``hmac.compare_digest`` instead.
SECRET_NAME = re.compile(r"token|secret|passw|credential|api_?key|bearer|authorization|private_?key", re.I)


def _name_of(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript | ast.Starred):
        return _name_of(node.value)
    return None


def secret_comparisons(root: Path) -> list[str]:
    """``file:line: source`` of every equality/membership comparison of a secret-named value under root."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if not isinstance(node, ast.Compare):
                continue
            if not any(isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn) for op in node.ops):
                continue
            names = [_name_of(operand) for operand in (node.left, *node.comparators)]
            if any(name and SECRET_NAME.search(name) for name in names):
                found.append(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_secret_is_compared_with_equality() -> None:
    assert secret_comparisons(REPO / "adapter") == []


def test_the_scan_would_see_a_secret_comparison(tmp_path: Path) -> None:
    """The scan is not blind: the comparisons it must catch, and ``compare_digest`` it must not flag."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "import hmac\n"
        "def check(token, expected_token, settings, password):\n"
        "    a = token == expected_token\n"
        "    b = settings.shared_secret != password\n"
        "    c = hmac.compare_digest(token.encode(), expected_token.encode())\n"
        "    d = token.kind == 3\n", encoding="utf-8")
    assert [line.split(": ", 1)[0] for line in secret_comparisons(pkg)] == ["pkg/m.py:3", "pkg/m.py:4"]


JWT_LIKE = "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJzeXN0ZW06c2EifQ.c2lnbmF0dXJlLXBhcnQtMDEyMzQ1Njc4OQ"


@pytest.mark.parametrize(("label", "text"), [
    ("verbatim", f"token {JWT_LIKE} is unknown"),
    ("cut short", f"tokenreview for {JWT_LIKE[:60]}..."),
    ("glued to a label", f"bad token={JWT_LIKE}; retry"),
    ("python repr", repr(JWT_LIKE + '"\\xe9')),
    ("go %q", json.dumps(JWT_LIKE[:30] + '"' + JWT_LIKE[30:])),
])
def test_scrub_removes_every_form_of_the_token(label: str, text: str) -> None:
    """What the API server or a client library says about a token is not always the token verbatim."""
    from adapter.api.review_cache import scrub
    from adapter.kube_client import _redact

    for redact in (scrub, _redact):
        out = redact(text, JWT_LIKE if label != "python repr" else JWT_LIKE + '"\\xe9')
        assert "<redacted>" in out, (label, out)
        pieces = {JWT_LIKE[i : i + 8] for i in range(len(JWT_LIKE) - 7)}
        assert not any(out[i : i + 8] in pieces for i in range(len(out) - 7)), (label, out)


def test_scrub_keeps_an_ordinary_message() -> None:
    from adapter.api.review_cache import scrub

    message = "[invalid bearer token, square/go-jose: error in cryptographic primitive, token lookup failed]"
    assert scrub(message, JWT_LIKE) == message
    assert scrub("", JWT_LIKE) == "" and scrub(message, "") == message


class _TokenAPI:
    """An in-process ClusterAPI knowing one token, by its digest only (so it holds no token itself)."""

    def __init__(self, token: str) -> None:
        self._known = hashlib.sha256(token.encode()).digest()

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str]:
        return {}

    async def review_token(self, token: str, audiences: tuple[str, ...] = ()) -> TokenReviewResult:
        if hashlib.sha256(token.encode()).digest() == self._known:
            return TokenReviewResult(True, TINA)
        return TokenReviewResult(False, None, "unknown token")

    async def review_access(self, request: AccessRequest) -> AccessDecision:
        return AccessDecision(allowed=True)


def reachable_strings(root: object, limit: int = 200_000) -> Iterator[str | bytes]:
    """Every str/bytes reachable from ``root`` through object references (not through modules, classes
    or functions' globals, which reach the whole program, test constants included)."""
    skip = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, types.CodeType)
    seen: set[int] = set()
    stack: list[object] = [root]
    while stack and len(seen) < limit:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, skip):
            continue
        seen.add(id(obj))
        if isinstance(obj, str | bytes):
            yield obj
            continue
        stack.extend(gc.get_referents(obj))


async def test_token_cache_holds_digests_not_tokens() -> None:
    token = marker("heap") + "." + uuid.uuid4().hex
    unknown = marker("heap-unknown")
    authenticator = Authenticator(_TokenAPI(token))  # type: ignore[arg-type]
    for _ in range(2):
        user = await authenticator.authenticate(authorization=f"Bearer {token}")
        assert user.username == "tina"
    with pytest.raises(Exception, match="Unauthorized"):
        await authenticator.authenticate(authorization=f"Bearer {unknown}")
    await asyncio.sleep(0)  # let the single-flight tasks finish their callbacks
    assert authenticator.reviews == 2 and authenticator.cache_hits == 1
    keys = list(authenticator._cache._data)
    assert sorted(keys) == sorted(hashlib.sha256(t.encode()).digest() for t in (token, unknown))
    assert all(isinstance(k, bytes) and len(k) == 32 for k in keys)
    for text in (repr(authenticator.__dict__), repr(authenticator._cache._data)):
        assert not markers_in(text, {"token": token, "unknown": unknown})
    leaked = [s for s in reachable_strings(authenticator)
              if (s if isinstance(s, str) else s.decode("latin-1")).find("hyg-heap") >= 0]
    assert not leaked, f"a token is reachable from the authenticator: {leaked[:1]!r}"


# -- 4. python -m tests.audit --------------------------------------------------------------------------------


class FakeOSV:
    """A local OSV query endpoint: ``vulns`` maps a canonical package name to its OSV records."""

    def __init__(self, vulns: dict[str, list[dict[str, Any]]], delay: float = 0.0) -> None:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.queries += 1
                if fake.delay:
                    time.sleep(fake.delay)
                name = query["package"]["name"]
                body = json.dumps({"vulns": fake.vulns[name]} if name in fake.vulns else {}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.vulns, self.delay, self.queries = vulns, delay, 0
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/query"

    def __enter__(self) -> FakeOSV:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def osv_record(vuln_id: str, package: str, fixed: str | None) -> dict[str, Any]:
    events: list[dict[str, str]] = [{"introduced": "0"}] + ([{"fixed": fixed}] if fixed else [])
    return {"id": vuln_id, "summary": f"test advisory {vuln_id}", "aliases": [f"CVE-2099-{vuln_id[-4:]}"],
            "affected": [{"package": {"name": package, "ecosystem": "PyPI"},
                          "ranges": [{"type": "ECOSYSTEM", "events": events}]}]}


def run_audit(*args: str, timeout: float = 120.0) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "tests.audit", *args], capture_output=True, text=True,
                            timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL)
    return result, time.monotonic() - started


def installed_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def test_audit_fails_only_on_a_fixable_vulnerability() -> None:
    requests_version = installed_version("requests")
    with FakeOSV({"requests": [osv_record("GHSA-test-0001", "requests", "999.0")],
                  "idna": [osv_record("PYSEC-test-0002", "idna", None)]}) as osv:
        result, _ = run_audit("--service", "osv", "--osv-url", osv.url)
    assert result.returncode == 1, result
    out = result.stdout
    assert f"requests {requests_version}: " in out and "GHSA-test-0001" in out, out
    assert "fixed in 999.0" in out, out
    assert "PYSEC-test-0002" in out and "no fix released yet" in out, out
    assert "upgrade requests>=999.0" in out, out
    assert "latency-adapter" not in out  # the editable project is not audited
    assert osv.queries > 50  # every installed package was asked about


def test_audit_reports_but_passes_a_vulnerability_without_a_fix() -> None:
    with FakeOSV({"idna": [osv_record("PYSEC-test-0003", "idna", None)]}) as osv:
        result, _ = run_audit("--service", "osv", "--osv-url", osv.url)
    assert result.returncode == 0, result
    assert "PYSEC-test-0003" in result.stdout and "no fix released yet" in result.stdout, result.stdout
    assert "not a lint failure" in result.stdout, result.stdout


def test_audit_passes_quickly_when_the_service_is_unreachable() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result, elapsed = run_audit("--service", "osv", "--osv-url", f"http://127.0.0.1:{port}/v1/query")
    assert result.returncode == 0, result
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "could not be audited" in lines[0] and "connection refused" in lines[0], lines
    assert re.search(r"\b\d+ installed packages\b", lines[0]), lines
    assert elapsed < 5.0, elapsed


def test_audit_does_not_hang_on_a_silent_service() -> None:
    with FakeOSV({}, delay=30.0) as osv:
        result, elapsed = run_audit("--service", "osv", "--osv-url", osv.url, "--timeout", "1")
    assert result.returncode == 0, result
    assert "could not be audited" in result.stdout and "no answer in time" in result.stdout, result.stdout
    assert elapsed < 6.0, elapsed


def test_audit_report_of_an_unaudited_environment() -> None:
    """What pip-audit says when PyPI's JSON API is missing (a simple-index mirror): nothing fails."""
    missing = "Dependency not found on PyPI and could not be audited"
    doc = {"dependencies": [
        {"name": "aiohttp", "skip_reason": f"{missing}: aiohttp (3.1)"},
        {"name": "yarl", "skip_reason": f"{missing}: yarl (1.0)"},
        {"name": "latency-adapter", "skip_reason": "distribution marked as editable"},
    ], "fixes": []}
    lines: list[str] = []

    class Out:
        def write(self, text: str) -> None:
            lines.append(text)

    assert report(parse_pip_audit_json(doc, "pypi"), Out()) == 0
    text = "".join(lines)
    assert "2 packages could not be audited: Dependency not found on PyPI and could not be audited" in text
    assert "latency-adapter" not in text and "nothing was audited" in text, text
