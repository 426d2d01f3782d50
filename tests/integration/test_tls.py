"""Real TLS against :class:`adapter.api.tls.ServingTLS`: rotation without restart, client certificates.

A tiny aiohttp app is served over ``ServingTLS.context`` on 127.0.0.1 (port 0). Every probe is a NEW
connection (raw asyncio streams, ``Connection: close``, no session resumption), so what it sees is what the
next handshake presents. Certificates come from ``trustme``: a server CA, a client CA, a front-proxy
(request-header) CA and a rogue CA nobody trusts.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import socket
import ssl
import warnings
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from adapter.api.tls import (
    ServingTLS,
    TLSFileError,
    ensure_self_signed,
    issued_by,
    load_ca_bundle,
    transport_peer_certificate,
    verified_peer_certificate,
)

TIMEOUT = 5.0
TLS_KEY = web.AppKey("tls", ServingTLS)
CA_FILES_KEY = web.AppKey("ca_files", dict[str, Path])


# -- certificates ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_ca() -> trustme.CA:
    return trustme.CA(organization_name="server ca")


@pytest.fixture(scope="module")
def client_ca() -> trustme.CA:
    return trustme.CA(organization_name="client ca")


@pytest.fixture(scope="module")
def proxy_ca() -> trustme.CA:
    return trustme.CA(organization_name="front-proxy ca")


@pytest.fixture(scope="module")
def rogue_ca() -> trustme.CA:
    return trustme.CA(organization_name="rogue ca")


def der_of(leaf: trustme.LeafCert) -> bytes:
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    return cert.public_bytes(serialization.Encoding.DER)


def write_pair(d: Path, leaf: trustme.LeafCert) -> None:
    (d / "tls.crt").write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    (d / "tls.key").write_bytes(leaf.private_key_pem.bytes())


# -- a tiny app over ServingTLS ----------------------------------------------------------------------------


@dataclass
class Served:
    tls: ServingTLS
    port: int
    dir: Path
    server_ca: trustme.CA


async def whoami(request: web.Request) -> web.Response:
    """Echo what the TLS layer verified about the client, classified with ``issued_by``."""
    tls = request.app[TLS_KEY]
    cert = transport_peer_certificate(request.transport)
    body: dict[str, Any] = {"cn": None, "client_ca": False, "front_proxy": False}
    if cert is not None:
        body["cn"] = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)[0].value
        body["client_ca"] = issued_by(cert, tls.client_cas)
        body["front_proxy"] = issued_by(cert, tls.requestheader_cas)
        files = request.app[CA_FILES_KEY]
        if "client" in files:  # the path form (cached bundle) must agree with the in-memory form
            assert issued_by(cert, files["client"]) == body["client_ca"]
        if "proxy" in files:
            assert issued_by(cert, str(files["proxy"])) == body["front_proxy"]
    return web.json_response(body)


async def serve(tls: ServingTLS, d: Path, ca: trustme.CA,
                ca_files: dict[str, Path] | None = None) -> tuple[Served, web.AppRunner]:
    app = web.Application()
    app[TLS_KEY] = tls
    app[CA_FILES_KEY] = ca_files or {}
    app.router.add_get("/", whoami)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    server = site._server
    assert server is not None
    port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return Served(tls, port, d, ca), runner


@pytest.fixture
async def served(tmp_path: Path, server_ca: trustme.CA) -> AsyncIterator[Served]:
    write_pair(tmp_path, server_ca.issue_cert("localhost", "127.0.0.1", common_name="first"))
    tls = ServingTLS(tmp_path / "tls.crt", tmp_path / "tls.key")
    s, runner = await serve(tls, tmp_path, server_ca)
    yield s
    await runner.cleanup()


@pytest.fixture
async def served_mtls(tmp_path: Path, server_ca: trustme.CA, client_ca: trustme.CA,
                      proxy_ca: trustme.CA) -> AsyncIterator[Served]:
    write_pair(tmp_path, server_ca.issue_cert("localhost", common_name="mtls"))
    client_ca.cert_pem.write_to_path(str(tmp_path / "client-ca.crt"))
    proxy_ca.cert_pem.write_to_path(str(tmp_path / "front-proxy-ca.crt"))
    tls = ServingTLS(tmp_path / "tls.crt", tmp_path / "tls.key", client_ca_file=tmp_path / "client-ca.crt",
                     requestheader_client_ca_file=tmp_path / "front-proxy-ca.crt")
    s, runner = await serve(tls, tmp_path, server_ca, {"client": tmp_path / "client-ca.crt",
                                                        "proxy": tmp_path / "front-proxy-ca.crt"})
    yield s
    await runner.cleanup()


# -- the client: one fresh connection per probe -----------------------------------------------------------


def client_context(ca: trustme.CA, cert: trustme.LeafCert | None = None,
                   max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


@dataclass
class Probe:
    peer_der: bytes
    version: str
    body: dict[str, Any]


async def probe(port: int, ctx: ssl.SSLContext) -> Probe:
    async def go() -> Probe:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx,
                                                       server_hostname="localhost")
        try:
            sslobj = writer.get_extra_info("ssl_object")
            der = sslobj.getpeercert(binary_form=True)
            version = sslobj.version()
            writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            await writer.drain()
            raw = await reader.read()
        finally:
            writer.close()
            with contextlib.suppress(ssl.SSLError, ConnectionError):
                await writer.wait_closed()
        head, _, body = raw.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise ConnectionError(f"no HTTP 200: {raw[:200]!r}")
        return Probe(der, version, json.loads(body))

    return await asyncio.wait_for(go(), TIMEOUT)


#: What a client sees when the server refuses its TLS (during the handshake, or, in TLS 1.3, right
#: after the client thinks the handshake is done, when the server's alert arrives).
REFUSED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)


# -- serving certificate and rotation ----------------------------------------------------------------------


async def test_serves_certificate_with_tls12_minimum(served: Served) -> None:
    assert served.tls.context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert served.tls.context.verify_mode == ssl.CERT_NONE  # no client CA configured
    got = await probe(served.port, client_context(served.server_ca))
    assert got.peer_der == served.tls.serving_certificate.public_bytes(serialization.Encoding.DER)
    assert got.body == {"cn": None, "client_ca": False, "front_proxy": False}
    tls12 = await probe(served.port, client_context(served.server_ca, max_version=ssl.TLSVersion.TLSv1_2))
    assert tls12.version == "TLSv1.2"


async def test_tls11_client_is_refused_by_the_server(served: Served) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = client_context(served.server_ca)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client really offer TLS 1.1 on OpenSSL 3
        # Control: a server that still allows TLS 1.1 negotiates it with this client...
        lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        lax.minimum_version = ssl.TLSVersion.TLSv1
        lax.set_ciphers("DEFAULT:@SECLEVEL=0")
    lax.load_cert_chain(served.dir / "tls.crt", served.dir / "tls.key")

    def handshake(port: int) -> str | None:  # blocking sockets keep OpenSSL's reasons
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw, \
                old.wrap_socket(raw, server_hostname="localhost") as tls:
            return tls.version()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        def accept_one() -> None:
            conn, _ = listener.accept()
            with lax.wrap_socket(conn, server_side=True):
                pass

        server = asyncio.create_task(asyncio.to_thread(accept_one))
        assert await asyncio.to_thread(handshake, listener.getsockname()[1]) == "TLSv1.1"
        await server

    # ... and ServingTLS refuses it (asyncio's server closes without flushing the alert: EOF or alert).
    with pytest.raises(ssl.SSLError) as info:
        await asyncio.to_thread(handshake, served.port)
    assert isinstance(info.value, ssl.SSLEOFError) or "PROTOCOL_VERSION" in str(info.value), info.value
    assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value)


async def test_reload_presents_new_certificate_on_next_handshake(served: Served) -> None:
    ctx = client_context(served.server_ca)
    first = await probe(served.port, ctx)
    assert served.tls.reload_if_changed() is False  # nothing changed yet
    context_before = served.tls.context

    new = served.server_ca.issue_cert("localhost", "127.0.0.1", common_name="second")
    write_pair(served.dir, new)
    assert served.tls.reload_if_changed() is True
    second = await probe(served.port, ctx)
    assert second.peer_der == der_of(new) != first.peer_der
    assert served.tls.context is context_before  # the site's context object is the same, only refreshed
    assert (served.tls.reloads, served.tls.reload_failures) == (1, 0)
    assert served.tls.reload_if_changed() is False  # same content again: no second reload
    assert served.tls.reloads == 1


async def test_same_size_rewrite_within_one_mtime_tick_is_seen(served: Served) -> None:
    """Stat alone misses an in-place rewrite that keeps size and mtime; the content hash does not."""
    ctx = client_context(served.server_ca)
    crt, key = served.dir / "tls.crt", served.dir / "tls.key"
    before = {p: os.stat(p) for p in (crt, key)}
    for _ in range(50):  # find a new pair whose PEM sizes equal the old ones (serials vary in length)
        new = served.server_ca.issue_cert("localhost", "127.0.0.1", common_name="first")
        cert_pem = b"".join(p.bytes() for p in new.cert_chain_pems)
        key_pem = new.private_key_pem.bytes()
        if len(cert_pem) == before[crt].st_size and len(key_pem) == before[key].st_size:
            break
    else:
        pytest.skip("no same-size certificate found")
    for path, data in ((crt, cert_pem), (key, key_pem)):
        with open(path, "r+b") as fh:  # in place: same inode
            fh.write(data)
        os.utime(path, ns=(before[path].st_atime_ns, before[path].st_mtime_ns))
        st = os.stat(path)
        assert (st.st_ino, st.st_size, st.st_mtime_ns) == (before[path].st_ino, before[path].st_size,
                                                            before[path].st_mtime_ns)
    assert served.tls.reload_if_changed() is True
    assert (await probe(served.port, ctx)).peer_der == der_of(new)


async def test_symlink_swap_like_kubelet_is_picked_up(tmp_path: Path, server_ca: trustme.CA) -> None:
    """Secret volumes: tls.crt -> ..data/tls.crt, and ..data is atomically re-pointed at a new directory."""
    def version_dir(name: str, leaf: trustme.LeafCert) -> None:
        (tmp_path / name).mkdir()
        write_pair(tmp_path / name, leaf)

    def point_data_at(name: str) -> None:
        tmp_link = tmp_path / "..data_tmp"
        tmp_link.symlink_to(name)
        tmp_link.replace(tmp_path / "..data")  # rename(2): atomic swap

    old = server_ca.issue_cert("localhost", common_name="v1")
    version_dir("..v1", old)
    point_data_at("..v1")
    for name in ("tls.crt", "tls.key"):
        (tmp_path / name).symlink_to(f"..data/{name}")
    tls = ServingTLS(tmp_path / "tls.crt", tmp_path / "tls.key")
    s, runner = await serve(tls, tmp_path, server_ca)
    try:
        ctx = client_context(server_ca)
        assert (await probe(s.port, ctx)).peer_der == der_of(old)
        new = server_ca.issue_cert("localhost", common_name="v2")
        version_dir("..v2", new)
        point_data_at("..v2")
        assert tls.reload_if_changed() is True
        assert (await probe(s.port, ctx)).peer_der == der_of(new)
    finally:
        await runner.cleanup()


async def test_watch_reloads_in_the_background(served: Served) -> None:
    ctx = client_context(served.server_ca)
    task = asyncio.create_task(served.tls.watch(interval=0.05))
    try:
        new = served.server_ca.issue_cert("localhost", "127.0.0.1", common_name="watched")
        write_pair(served.dir, new)
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while (await probe(served.port, ctx)).peer_der != der_of(new):
            assert asyncio.get_running_loop().time() < deadline, "watch never loaded the new certificate"
            await asyncio.sleep(0.05)
        assert served.tls.reloads == 1
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_mismatched_pair_is_refused_then_completed_pair_is_loaded(served: Served) -> None:
    """A non-atomic writer: the new cert lands before its key. Never break serving in between."""
    ctx = client_context(served.server_ca)
    old_der = (await probe(served.port, ctx)).peer_der
    new = served.server_ca.issue_cert("localhost", "127.0.0.1", common_name="half-written")
    (served.dir / "tls.crt").write_bytes(b"".join(p.bytes() for p in new.cert_chain_pems))  # key still old

    assert served.tls.reload_if_changed() is False
    assert served.tls.reload_failures == 1 and served.tls.reloads == 0
    assert served.tls.last_error and "pair" in served.tls.last_error
    assert (await probe(served.port, ctx)).peer_der == old_der
    assert served.tls.reload_if_changed() is False
    assert served.tls.reload_failures == 1  # the same bad content is reported once

    (served.dir / "tls.key").write_bytes(new.private_key_pem.bytes())
    assert served.tls.reload_if_changed() is True
    assert (await probe(served.port, ctx)).peer_der == der_of(new)
    assert (served.tls.reloads, served.tls.reload_failures) == (1, 1)


@pytest.mark.parametrize("damage", ["truncated-cert", "truncated-key", "empty-cert", "missing-key"])
async def test_broken_pair_keeps_the_old_certificate(served: Served, damage: str) -> None:
    ctx = client_context(served.server_ca)
    old_der = (await probe(served.port, ctx)).peer_der
    new = served.server_ca.issue_cert("localhost", "127.0.0.1", common_name="broken")
    write_pair(served.dir, new)
    crt, key = served.dir / "tls.crt", served.dir / "tls.key"
    if damage == "truncated-cert":
        crt.write_bytes(crt.read_bytes()[: crt.stat().st_size // 2])
    elif damage == "truncated-key":
        key.write_bytes(key.read_bytes()[: key.stat().st_size // 2])
    elif damage == "empty-cert":
        crt.write_bytes(b"")
    else:
        key.unlink()
    assert served.tls.reload_if_changed() is False
    assert served.tls.reload_failures == 1
    for _ in range(2):
        assert (await probe(served.port, ctx)).peer_der == old_der
    write_pair(served.dir, new)  # repaired
    assert served.tls.reload_if_changed() is True
    assert (await probe(served.port, ctx)).peer_der == der_of(new)


async def test_key_type_change_is_refused_and_flags_restart(served: Served) -> None:
    """OpenSSL keeps one certificate per key type: loading RSA next to ECDSA would keep the old one live."""
    ctx = client_context(served.server_ca)
    old_der = (await probe(served.port, ctx)).peer_der
    rsa = served.server_ca.issue_cert("localhost", "127.0.0.1", key_type=trustme.KeyType.RSA)
    write_pair(served.dir, rsa)
    assert served.tls.reload_if_changed() is False
    assert served.tls.restart_required and served.tls.reload_failures == 1
    assert (await probe(served.port, ctx)).peer_der == old_der


def test_constructor_rejects_unusable_files(tmp_path: Path, server_ca: trustme.CA) -> None:
    a = server_ca.issue_cert("localhost")
    b = server_ca.issue_cert("localhost")
    (tmp_path / "a.crt").write_bytes(a.cert_chain_pems[0].bytes())
    (tmp_path / "b.key").write_bytes(b.private_key_pem.bytes())
    with pytest.raises(TLSFileError):
        ServingTLS(tmp_path / "a.crt", tmp_path / "b.key")
    with pytest.raises(TLSFileError):
        ServingTLS(tmp_path / "a.crt", tmp_path / "absent.key")
    (tmp_path / "garbage.crt").write_text("not a certificate\n")
    with pytest.raises(TLSFileError):
        ServingTLS(tmp_path / "a.crt", tmp_path / "b.key", client_ca_file=tmp_path / "garbage.crt")


async def test_self_signed_pair_is_served(tmp_path: Path) -> None:
    pair = ensure_self_signed(tmp_path / "certs")
    tls = ServingTLS.from_pair(pair)
    app = web.Application()
    async def ok(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.router.add_get("/", ok)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        ctx = ssl.create_default_context(cafile=str(pair.cert_file))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        assert der == tls.serving_certificate.public_bytes(serialization.Encoding.DER)
    finally:
        await runner.cleanup()


# -- client certificates -----------------------------------------------------------------------------------


async def test_client_ca_certificate_is_verified_and_attributed(served_mtls: Served,
                                                                client_ca: trustme.CA) -> None:
    assert served_mtls.tls.context.verify_mode == ssl.CERT_OPTIONAL
    alice = client_ca.issue_cert("alice@example.com", common_name="alice", organization_name="team-a")
    got = await probe(served_mtls.port, client_context(served_mtls.server_ca, alice))
    assert got.body == {"cn": "alice", "client_ca": True, "front_proxy": False}


async def test_front_proxy_certificate_is_attributed_to_requestheader_ca(served_mtls: Served,
                                                                         proxy_ca: trustme.CA) -> None:
    proxy = proxy_ca.issue_cert("front-proxy-client", common_name="front-proxy-client")
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        got = await probe(served_mtls.port, client_context(served_mtls.server_ca, proxy, max_version=version))
        assert got.body == {"cn": "front-proxy-client", "client_ca": False, "front_proxy": True}


async def test_no_client_certificate_still_connects(served_mtls: Served) -> None:
    got = await probe(served_mtls.port, client_context(served_mtls.server_ca))
    assert got.body == {"cn": None, "client_ca": False, "front_proxy": False}


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_unknown_ca_client_certificate_fails_the_handshake(served_mtls: Served, rogue_ca: trustme.CA,
                                                                 version: ssl.TLSVersion) -> None:
    mallory = rogue_ca.issue_cert("mallory", common_name="front-proxy-client")
    with pytest.raises(REFUSED):
        await probe(served_mtls.port, client_context(served_mtls.server_ca, mallory, max_version=version))
    # ... and the listener is fine afterwards.
    assert (await probe(served_mtls.port, client_context(served_mtls.server_ca))).body["cn"] is None


async def test_client_ca_rotation_adds_live_and_flags_removal(served_mtls: Served, client_ca: trustme.CA,
                                                              rogue_ca: trustme.CA) -> None:
    tls, ca_file = served_mtls.tls, served_mtls.dir / "client-ca.crt"
    newcomer = trustme.CA(organization_name="new client ca")
    bob = newcomer.issue_cert("bob", common_name="bob")
    with pytest.raises(REFUSED):
        await probe(served_mtls.port, client_context(served_mtls.server_ca, bob))

    # Addition: live, no restart.
    ca_file.write_bytes(client_ca.cert_pem.bytes() + newcomer.cert_pem.bytes())
    assert tls.reload_if_changed() is True
    assert not tls.restart_required
    got = await probe(served_mtls.port, client_context(served_mtls.server_ca, bob))
    assert got.body == {"cn": "bob", "client_ca": True, "front_proxy": False}

    # A broken bundle is refused and changes nothing.
    ca_file.write_bytes(client_ca.cert_pem.bytes() + newcomer.cert_pem.bytes()[:100])
    assert tls.reload_if_changed() is False and tls.reload_failures == 1
    assert len(tls.client_cas) == 2

    # Removal: the handshake still trusts the old CA until restart, but attribution stops at once.
    ca_file.write_bytes(newcomer.cert_pem.bytes())
    assert tls.reload_if_changed() is True
    assert tls.restart_required
    alice = client_ca.issue_cert("alice", common_name="alice")
    got = await probe(served_mtls.port, client_context(served_mtls.server_ca, alice))
    assert got.body == {"cn": "alice", "client_ca": False, "front_proxy": False}


# -- the helpers on their own ------------------------------------------------------------------------------


def test_issued_by_tells_the_cas_apart(tmp_path: Path, client_ca: trustme.CA, proxy_ca: trustme.CA) -> None:
    def cert(leaf: trustme.LeafCert) -> x509.Certificate:
        return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())

    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(proxy_ca.cert_pem.bytes() + client_ca.cert_pem.bytes())
    from_client = cert(client_ca.issue_cert("a"))
    from_proxy = cert(proxy_ca.issue_cert("b"))
    proxy_only = x509.load_pem_x509_certificate(proxy_ca.cert_pem.bytes())
    assert issued_by(from_client, bundle) and issued_by(from_proxy, bundle)
    assert issued_by(from_proxy, [proxy_only]) and not issued_by(from_client, [proxy_only])
    assert not issued_by(from_client, [])

    # Same subject, different key: a name match is not enough.
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    impostor_ca = (
        x509.CertificateBuilder().subject_name(proxy_only.subject).issuer_name(proxy_only.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    assert not issued_by(from_proxy, [impostor_ca])

    # The bundle cache follows the file (here: a symlink swap to another inode).
    first = load_ca_bundle(bundle)
    assert load_ca_bundle(bundle) is first
    other = tmp_path / "other.crt"
    other.write_bytes(client_ca.cert_pem.bytes())
    link = tmp_path / "link.crt"
    link.symlink_to(bundle)
    assert issued_by(from_proxy, link)
    tmp_link = tmp_path / "link.tmp"
    tmp_link.symlink_to(other)
    tmp_link.replace(link)
    assert not issued_by(from_proxy, link) and issued_by(from_client, link)


def test_verified_peer_certificate_without_ssl() -> None:
    assert verified_peer_certificate(None) is None
    assert transport_peer_certificate(None) is None

    class Unverified:
        def getpeercert(self, binary_form: bool = False) -> Any:
            return b"\x30\x00" if binary_form else {}  # received but not validated

    fake: Callable[[], Any] = Unverified
    assert verified_peer_certificate(fake()) is None
