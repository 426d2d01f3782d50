"""TLS for the external metrics API listener.

The kube-aggregator only speaks HTTPS to an APIService, so the API port is HTTPS always. With no
certificate given, a self-signed one is generated at start (``cryptography``) into ``--cert-dir`` and
reused on the next start while it is valid, so a local ``kubectl`` or ``curl -k`` can talk to it at
once. TLS 1.2 is the minimum.

:class:`ServingTLS` owns the one :class:`ssl.SSLContext` the aiohttp site serves with for its whole life:
the serving pair from ``--tls-cert-file``/``--tls-private-key-file`` (or the self-signed pair), and, when
given, the client CA bundles ``--client-ca-file`` and ``--requestheader-client-ca-file`` as trust anchors
(``CERT_OPTIONAL``: a client without a certificate may still bring a bearer token, a client *with* one must
present one that verifies). Files rotated on disk (cert-manager, kubelet secret volumes) are picked up by
:meth:`ServingTLS.reload_if_changed` / :meth:`ServingTLS.watch` without a restart.

Python 3.11's ``ssl`` cannot say which trust anchor verified a client chain, so
:func:`verified_peer_certificate` and :func:`issued_by` let the authenticator tell a front-proxy
certificate (issued by the request-header CA) from a client-CA certificate.

Length: about 550 lines, one job (the listener's certificates): serving pair, client CA bundles, rotation
with validation, and attribution of a verified client certificate belong together.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import hashlib
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509.oid import NameOID

log = logging.getLogger("adapter.api.tls")

SELF_SIGNED_CERT = "apiserver.crt"
SELF_SIGNED_KEY = "apiserver.key"
#: A generated certificate is replaced when less than this is left of its life.
RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True)
class CertPair:
    cert_file: Path
    key_file: Path
    generated: bool


def _still_valid(cert_file: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except (OSError, ValueError):
        return False
    now = datetime.datetime.now(datetime.UTC)
    return cert.not_valid_after_utc - now > RENEW_BEFORE


def ensure_self_signed(cert_dir: Path, extra_names: tuple[str, ...] = ()) -> CertPair:
    """Return a usable self-signed pair in ``cert_dir``, generating it when absent or near expiry."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert_file = cert_dir / SELF_SIGNED_CERT
    key_file = cert_dir / SELF_SIGNED_KEY
    if cert_file.exists() and key_file.exists() and _still_valid(cert_file):
        return CertPair(cert_file, key_file, generated=False)
    key = ec.generate_private_key(ec.SECP256R1())
    names = ["localhost", socket.gethostname(), "latency-adapter", *extra_names]
    san: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys(names) if n]
    san += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "latency-adapter self-signed")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tmp_key = key_file.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    tmp_key.replace(key_file)
    tmp_cert = cert_file.with_suffix(".tmp")
    tmp_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp_cert.replace(cert_file)
    return CertPair(cert_file, key_file, generated=True)


def _new_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


# --------------------------------------------------------------------------------------------------------
# Serving TLS with rotation
# --------------------------------------------------------------------------------------------------------

_PEM_CERT_BEGIN = b"-----BEGIN CERTIFICATE-----"


class TLSFileError(Exception):
    """A certificate, key or CA file that cannot be used: missing, unreadable, malformed or mismatched."""


def _refuse_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for an encrypted key and block the loop.
    raise TLSFileError("encrypted private keys are not supported")


@dataclass(frozen=True)
class FileState:
    """What one read of a file saw: where the path resolved to, its stat identity and its content hash."""

    resolved: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    sha256: str


def _read_file(path: Path) -> tuple[bytes, FileState]:
    """Read ``path`` once; the stat comes from the opened file, so it describes exactly these bytes."""
    resolved = os.path.realpath(path)
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        data = fh.read()
    return data, FileState(resolved, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
                           hashlib.sha256(data).hexdigest())


@contextlib.contextmanager
def _private_file(data: bytes) -> Iterator[str]:
    """A path holding ``data`` that only this process can read, for APIs that only take file names.

    ``SSLContext.load_cert_chain`` reads files, but a rotation must load exactly the bytes that were
    validated (not whatever the path holds a moment later). On Linux this is a ``memfd`` (no filesystem
    needed, so it works under ``readOnlyRootFilesystem``); elsewhere a 0600 file in a private temp dir.
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir("/proc/self/fd"):
        fd = memfd_create("latency-adapter-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            _write_all(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="latency-adapter-tls-") as tmp:
        path = os.path.join(tmp, "material.pem")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        yield path


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _parse_pem_certificates(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    """Every certificate of a PEM bundle; a bundle with an unparsable or truncated block is refused."""
    try:
        certs = tuple(x509.load_pem_x509_certificates(data))
    except ValueError as exc:
        raise TLSFileError(f"{what}: no valid PEM certificate ({exc})") from exc
    if len(certs) != data.count(_PEM_CERT_BEGIN):
        raise TLSFileError(f"{what}: {data.count(_PEM_CERT_BEGIN)} certificate blocks but only "
                           f"{len(certs)} parse (truncated or half-written file?)")
    return certs


def _load_pair(ctx: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    with _private_file(cert_pem) as cert_path, _private_file(key_pem) as key_path:
        ctx.load_cert_chain(cert_path, key_path, password=_refuse_password)


def _check_pair(cert_pem: bytes, key_pem: bytes, cert_file: Path) -> x509.Certificate:
    """Validate a serving pair in a scratch context; return its leaf. Raises :class:`TLSFileError`."""
    leaf = _parse_pem_certificates(cert_pem, str(cert_file))[0]
    try:
        _load_pair(_new_context(), cert_pem, key_pem)
    except (ssl.SSLError, ValueError, OSError) as exc:
        raise TLSFileError(f"{cert_file}: certificate and key do not form a usable pair ({exc})") from exc
    return leaf


def _key_slot(cert: x509.Certificate) -> str:
    """OpenSSL keeps one certificate per key type in a context; which slot ``cert`` goes into."""
    key = cert.public_key()
    for kind, name in ((rsa.RSAPublicKey, "rsa"), (ec.EllipticCurvePublicKey, "ec"),
                       (ed25519.Ed25519PublicKey, "ed25519"), (ed448.Ed448PublicKey, "ed448"),
                       (dsa.DSAPublicKey, "dsa")):
        if isinstance(key, kind):
            return name
    return type(key).__name__


def _describe(cert: x509.Certificate) -> dict[str, str]:
    return {"subject": cert.subject.rfc4514_string(), "serial": format(cert.serial_number, "x"),
            "not_after": cert.not_valid_after_utc.isoformat(),
            "sha256": cert.fingerprint(hashes.SHA256()).hex()}


@dataclass
class _CABundle:
    label: str
    path: Path
    state: FileState
    certs: tuple[x509.Certificate, ...]
    failed: str | None = None


@dataclass
class _Pair:
    cert_state: FileState
    key_state: FileState
    leaf: x509.Certificate
    failed: str | None = None
    #: What the live context holds, kept to restore it should a load of validated bytes still fail.
    pem: tuple[bytes, bytes] = field(default=(b"", b""), repr=False)

    @property
    def digest(self) -> str:
        return self.cert_state.sha256 + self.key_state.sha256


class ServingTLS:
    """The API listener's one ``SSLContext``, kept current with the certificate files on disk.

    aiohttp's ``TCPSite`` keeps the context object it was given for the life of the listener, so every
    change is made *in place* on :attr:`context`, from the event loop thread (:meth:`watch` runs there):

    * serving pair changed: the new bytes are read once, validated in a scratch context (a half-written,
      truncated or mismatched pair is refused with a warning, counted in :attr:`reload_failures`, and the
      old pair keeps serving; the same bad content is reported once), then exactly those bytes are loaded
      with ``load_cert_chain``: the next handshake presents the new certificate, no restart.
    * CA bundle changed: new certificates are added live with ``load_verify_locations``. An ``SSLContext``
      cannot drop a trust anchor, so a change that *removes* a CA keeps the handshake accepting it until a
      restart: that is logged as an error and :attr:`restart_required` is set. :attr:`client_cas` /
      :attr:`requestheader_cas` follow the file at once, so :func:`issued_by` checks against them already
      stop attributing certificates to a removed CA.
    * a serving certificate with a different key type (e.g. RSA -> ECDSA) cannot be rotated in place either:
      OpenSSL keeps one certificate per key type and would go on offering the old one to some clients. It
      is refused (counted, logged, :attr:`restart_required`).

    Change detection reads each file every poll and compares the content hash (plus the resolved path,
    inode, size and mtime for the log): a same-size rewrite within one mtime tick and a kubelet/cert-manager
    symlink swap (``..data`` -> new directory) are both seen.
    """

    def __init__(self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str], *,
                 client_ca_file: str | os.PathLike[str] | None = None,
                 requestheader_client_ca_file: str | os.PathLike[str] | None = None) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.reloads = 0
        self.reload_failures = 0
        self.restart_required = False
        self.last_error: str | None = None
        ctx = _new_context()
        try:
            cert_pem, cert_state = _read_file(self.cert_file)
            key_pem, key_state = _read_file(self.key_file)
        except OSError as exc:
            raise TLSFileError(f"cannot read the serving certificate or key: {exc}") from exc
        leaf = _check_pair(cert_pem, key_pem, self.cert_file)
        _load_pair(ctx, cert_pem, key_pem)
        self._pair = _Pair(cert_state, key_state, leaf, pem=(cert_pem, key_pem))
        self._cas: dict[str, _CABundle] = {}
        configured = (("client-ca", client_ca_file),
                      ("requestheader-client-ca", requestheader_client_ca_file))
        for label, path in configured:
            if path is None:
                continue
            try:
                data, state = _read_file(Path(path))
            except OSError as exc:
                raise TLSFileError(f"cannot read {label} file: {exc}") from exc
            certs = _parse_pem_certificates(data, str(path))
            ctx.load_verify_locations(cadata=_der_bundle(certs))
            self._cas[label] = _CABundle(label, Path(path), state, certs)
        # CERT_OPTIONAL: a client may come without a certificate (bearer token), but one it presents must
        # verify against the CAs, else the handshake fails.
        ctx.verify_mode = ssl.CERT_OPTIONAL if self._cas else ssl.CERT_NONE
        #: Whether handshakes ask for a client certificate (fixed for the listener's life); a plain bool
        #: because the request path reads it on every request.
        self.asks_client_certificates = bool(self._cas)
        self._context = ctx

    @classmethod
    def from_pair(cls, pair: CertPair, *, client_ca_file: str | os.PathLike[str] | None = None,
                  requestheader_client_ca_file: str | os.PathLike[str] | None = None) -> ServingTLS:
        return cls(pair.cert_file, pair.key_file, client_ca_file=client_ca_file,
                   requestheader_client_ca_file=requestheader_client_ca_file)

    @property
    def context(self) -> ssl.SSLContext:
        """The context to give the aiohttp site, once; it stays the same object for the listener's life."""
        return self._context

    @property
    def serving_certificate(self) -> x509.Certificate:
        """The leaf certificate new handshakes present."""
        return self._pair.leaf

    @property
    def client_cas(self) -> tuple[x509.Certificate, ...]:
        """The certificates of ``--client-ca-file`` as last loaded (empty when not configured)."""
        bundle = self._cas.get("client-ca")
        return bundle.certs if bundle else ()

    @property
    def requestheader_cas(self) -> tuple[x509.Certificate, ...]:
        """The certificates of ``--requestheader-client-ca-file`` as last loaded (empty if not configured)."""
        bundle = self._cas.get("requestheader-client-ca")
        return bundle.certs if bundle else ()

    async def watch(self, interval: float = 10.0) -> None:
        """Check the files every ``interval`` seconds until cancelled; run it as a background task."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.reload_if_changed()
            except Exception:  # the watcher must outlive any surprise; serving goes on with what is loaded
                log.exception("tls reload check failed", extra={"fields": {"event": "tls_reload_error"}})

    def reload_if_changed(self) -> bool:
        """Pick up changed files; True when the live context changed. Call on the event loop thread."""
        changed = self._reload_pair()
        for bundle in self._cas.values():
            changed = self._reload_ca(bundle) or changed
        return changed

    # -- internals ----------------------------------------------------------------------------------------

    def _fail(self, what: str, message: str, *, restart: bool = False) -> None:
        self.reload_failures += 1
        self.last_error = message
        if restart:
            self.restart_required = True
        log.log(logging.ERROR if restart else logging.WARNING,
                "tls reload refused, still serving the previous material", extra={"fields": {
                    "event": "tls_reload_failed", "what": what, "error": message,
                    "restart_required": restart, "reload_failures": self.reload_failures}})

    def _reload_pair(self) -> bool:
        pair = self._pair
        try:
            cert_pem, cert_state = _read_file(self.cert_file)
            key_pem, key_state = _read_file(self.key_file)
        except OSError as exc:
            key = f"unreadable:{exc}"
            if pair.failed != key:
                pair.failed = key
                self._fail("serving-pair", f"cannot read the serving certificate or key: {exc}")
            return False
        digest = cert_state.sha256 + key_state.sha256
        if digest == pair.digest:
            pair.cert_state, pair.key_state, pair.failed = cert_state, key_state, None
            return False
        if digest == pair.failed:
            return False
        try:
            leaf = _check_pair(cert_pem, key_pem, self.cert_file)
        except TLSFileError as exc:
            pair.failed = digest
            self._fail("serving-pair", str(exc))
            return False
        if _key_slot(leaf) != _key_slot(pair.leaf):
            pair.failed = digest
            self._fail("serving-pair", f"{self.cert_file}: key type changed from {_key_slot(pair.leaf)} "
                       f"to {_key_slot(leaf)}; a live context cannot drop the old certificate, restart to "
                       "rotate", restart=True)
            return False
        try:
            _load_pair(self._context, cert_pem, key_pem)
        except (ssl.SSLError, ValueError, OSError) as exc:  # validated bytes, so not expected: restore
            _load_pair(self._context, *pair.pem)
            pair.failed = digest
            self._fail("serving-pair", f"{self.cert_file}: loading the validated pair failed ({exc})")
            return False
        old = pair.leaf
        self._pair = _Pair(cert_state, key_state, leaf, pem=(cert_pem, key_pem))
        self.reloads += 1
        log.info("tls serving certificate reloaded", extra={"fields": {
            "event": "tls_reloaded", "what": "serving-pair", "cert_file": str(self.cert_file),
            "resolved": cert_state.resolved, "old": _describe(old), "new": _describe(leaf),
            "reloads": self.reloads}})
        return True

    def _reload_ca(self, bundle: _CABundle) -> bool:
        try:
            data, state = _read_file(bundle.path)
        except OSError as exc:
            key = f"unreadable:{exc}"
            if bundle.failed != key:
                bundle.failed = key
                self._fail(bundle.label, f"cannot read {bundle.label} file: {exc}")
            return False
        if state.sha256 == bundle.state.sha256:
            bundle.state, bundle.failed = state, None
            return False
        if state.sha256 == bundle.failed:
            return False
        try:
            certs = _parse_pem_certificates(data, str(bundle.path))
            _new_context().load_verify_locations(cadata=_der_bundle(certs))
        except (TLSFileError, ssl.SSLError, ValueError) as exc:
            bundle.failed = state.sha256
            self._fail(bundle.label, str(exc))
            return False
        self._context.load_verify_locations(cadata=_der_bundle(certs))
        removed = [c for c in bundle.certs if c not in certs]
        added = [c for c in certs if c not in bundle.certs]
        bundle.state, bundle.certs, bundle.failed = state, certs, None
        self.reloads += 1
        log.info("tls ca bundle reloaded", extra={"fields": {
            "event": "tls_reloaded", "what": bundle.label, "file": str(bundle.path),
            "resolved": state.resolved, "added": [_describe(c) for c in added],
            "removed": [_describe(c) for c in removed], "reloads": self.reloads}})
        if removed:
            self.restart_required = True
            self.last_error = f"{bundle.label}: {len(removed)} CA certificate(s) removed; restart to distrust"
            log.error("tls trust anchors removed from %s cannot be dropped from the live context: TLS "
                      "handshakes keep accepting them until a restart (certificate authentication already "
                      "ignores them)",
                      bundle.label, extra={"fields": {
                          "event": "tls_restart_required", "what": bundle.label,
                          "removed": [_describe(c) for c in removed]}})
        return True


def _der_bundle(certs: Iterable[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)


# --------------------------------------------------------------------------------------------------------
# Which CA issued a verified client certificate
# --------------------------------------------------------------------------------------------------------


def verified_peer_certificate(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> x509.Certificate | None:
    """The client's leaf certificate, only when the handshake verified it (else None).

    On the server side ``getpeercert()`` is an empty dict for a certificate that was received but not
    validated (``CERT_NONE``), and None when the client sent none.
    """
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der or not ssl_object.getpeercert():
        return None
    return x509.load_der_x509_certificate(der)


def transport_peer_certificate(transport: asyncio.BaseTransport | None) -> x509.Certificate | None:
    """:func:`verified_peer_certificate` of an asyncio/aiohttp transport (``request.transport``)."""
    if transport is None:
        return None
    obj = transport.get_extra_info("ssl_object")
    return verified_peer_certificate(obj if isinstance(obj, ssl.SSLObject | ssl.SSLSocket) else None)


_bundle_lock = threading.Lock()
_bundles: dict[str, tuple[tuple[int, int, int, int], tuple[x509.Certificate, ...]]] = {}


def load_ca_bundle(path: str | os.PathLike[str]) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM bundle, parsed once per (path, device, inode, size, mtime).

    ``os.stat`` follows symlinks, so a symlink swap changes the inode and is seen. Raises ``OSError`` or
    :class:`TLSFileError`. (:class:`ServingTLS` keeps its own copy, compared by content hash.)
    """
    key = os.fspath(path)
    st = os.stat(key)
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _bundle_lock:
        cached = _bundles.get(key)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    with open(key, "rb") as fh:
        st = os.fstat(fh.fileno())
        data = fh.read()
    certs = _parse_pem_certificates(data, key)
    with _bundle_lock:
        _bundles[key] = ((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns), certs)
    return certs


def issued_by(cert: x509.Certificate,
              cas: str | os.PathLike[str] | Iterable[x509.Certificate]) -> bool:
    """Whether ``cert`` was signed directly by one of ``cas`` (a PEM bundle path or certificates).

    A classification, not a verification: apply it only to a :func:`verified_peer_certificate`, whose
    chain the handshake already checked against the trust store that holds both CA bundles. Because
    Python 3.11 cannot show the verified chain, the leaf must be issued directly by a certificate in the
    bundle (put intermediates in the bundle). Results are cached: a signature check costs ~100 us.
    """
    bundle = load_ca_bundle(cas) if isinstance(cas, str | os.PathLike) else tuple(cas)
    return _issued_by(cert, bundle)


@functools.lru_cache(maxsize=4096)
def _issued_by(cert: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    for ca in cas:
        if ca.subject != cert.issuer:
            continue
        try:
            constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is not None and not constraints.ca:
            continue
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return True
    return False
