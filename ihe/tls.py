"""Mutual TLS for every node of the affinity domain (ATNA Secure Node, ITI-19), in one place.

Every service takes the same options (:data:`TLS_OPTIONS`): its node certificate and key, the
affinity domain's CA (the trust store) and, optionally, the SHA-256 fingerprints of the only peer
certificates it accepts (pins). With them, every listener (HTTP, MLLP, DICOM) demands a client
certificate issued by that CA, and every client (SOAP, DICOMweb, MLLP, DICOM SCU) presents the
node's certificate and verifies the server's. Without them the node speaks plain TCP.

Failures become one line that says which side, which peer and what was wrong (no certificate,
expired, another CA, not pinned): :func:`explain` on the client side, :func:`describe_refusal` in the
listeners' logs. asyncio logs a failed server-side handshake nowhere (an ``OSError`` goes to its
debug log only), so listeners accept plain TCP and run the handshake themselves
(:class:`GatedServer`): then a refusal is logged, a slow handshake cannot hold the accept loop and
the pins are checked before the application sees a byte.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import logging
import ssl
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ihe.config import Option

log = logging.getLogger(__name__)

TLS_OPTIONS: list[Option] = [
    Option("tls-cert", "this node's certificate (PEM, may hold the chain); with --tls-key and --tls-ca every "
           "listener and client of this service uses mutual TLS; when absent the service speaks plain TCP"),
    Option("tls-key", "the private key (PEM) of --tls-cert"),
    Option("tls-ca", "the affinity domain's CA certificates (PEM): the only issuers whose certificates are "
           "accepted, from clients and from servers"),
    Option("tls-pin", "optional comma-separated SHA-256 fingerprints (hex) of the only peer certificates "
           "accepted, e.g. the nodes this one talks to"),
]

# TLS 1.2 suites: forward secret AEAD only (BCP 195); TLS 1.3's suites are all strong.
STRONG_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS:!SHA1"
HANDSHAKE_TIMEOUT = 10.0  # seconds a peer has to finish the handshake before its connection is dropped


class TlsSetupError(Exception):
    """This node's own TLS material is missing, unreadable or expired: the service cannot start."""


class PeerRefused(ConnectionError):
    """The peer's certificate was refused by a check ssl cannot do (the pins)."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path
    key: Path
    ca: Path
    pins: frozenset[str] = frozenset()  # lower-case hex, no colons

    @classmethod
    def from_settings(cls, settings: Any) -> TlsConfig | None:
        """The TLS configuration of a service's ``tls_*`` settings; None when TLS is off.

        Raises TlsSetupError when only some of cert, key and CA are given."""
        cert, key, ca = (getattr(settings, f"tls_{n}", None) for n in ("cert", "key", "ca"))
        if not (cert or key or ca):
            return None
        missing = [f"--tls-{n}" for n, v in (("cert", cert), ("key", key), ("ca", ca)) if not v]
        if missing:
            raise TlsSetupError(f"TLS needs --tls-cert, --tls-key and --tls-ca together; missing {', '.join(missing)}")
        return cls(Path(cert), Path(key), Path(ca), parse_pins(getattr(settings, "tls_pin", None)))


def parse_pins(text: str | Iterable[str] | None) -> frozenset[str]:
    if not text:
        return frozenset()
    items = text.split(",") if isinstance(text, str) else list(text)
    pins = set()
    for item in items:
        pin = item.strip().replace(":", "").lower()
        if not pin:
            continue
        if len(pin) != 64 or any(c not in "0123456789abcdef" for c in pin):
            raise TlsSetupError(f"--tls-pin {item.strip()!r} is not a SHA-256 fingerprint (64 hex digits)")
        pins.add(pin)
    return frozenset(pins)


def fingerprint(der: bytes) -> str:
    """SHA-256 fingerprint (lower-case hex) of a DER certificate, as --tls-pin takes it."""
    return hashlib.sha256(der).hexdigest()


def _check_own_material(config: TlsConfig) -> None:
    """One clear line before ssl's own (``[SSL] PEM lib``) for the usual mistakes with our own files."""
    from cryptography import x509

    for what, path in (("certificate", config.cert), ("key", config.key), ("CA file", config.ca)):
        if not path.is_file():
            raise TlsSetupError(f"TLS {what} {path} does not exist")
    try:
        certs = x509.load_pem_x509_certificates(config.cert.read_bytes())
    except (ValueError, OSError) as exc:
        raise TlsSetupError(f"TLS certificate {config.cert} is not a PEM certificate: {exc}") from None
    now = dt.datetime.now(dt.UTC)
    leaf = certs[0]
    try:
        cas = x509.load_pem_x509_certificates(config.ca.read_bytes())
    except (ValueError, OSError) as exc:
        raise TlsSetupError(f"TLS CA file {config.ca} holds no PEM certificate: {exc}") from None
    issuers = [*certs[1:], *cas]
    if not any(_issued_by(leaf, ca) for ca in issuers):
        raise TlsSetupError(f"TLS certificate {config.cert} ({leaf.subject.rfc4514_string()}) is not issued by the "
                            f"CA in {config.ca} ({leaf.issuer.rfc4514_string()} is): peers would refuse it")
    if leaf.not_valid_after_utc < now:
        raise TlsSetupError(f"TLS certificate {config.cert} ({leaf.subject.rfc4514_string()}) expired on "
                            f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    if leaf.not_valid_before_utc > now:
        raise TlsSetupError(f"TLS certificate {config.cert} is not valid before "
                            f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")


def _issued_by(cert: Any, issuer: Any) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, or another key type: not this issuer
        return False
    return True


def _base_context(config: TlsConfig, purpose: int) -> ssl.SSLContext:
    _check_own_material(config)
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(STRONG_CIPHERS)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    try:
        ctx.load_cert_chain(config.cert, config.key)
    except ssl.SSLError as exc:
        raise TlsSetupError(f"TLS key {config.key} does not match certificate {config.cert} or is not a "
                            f"PEM key ({exc.reason or exc})") from None
    try:
        ctx.load_verify_locations(cafile=str(config.ca))
    except ssl.SSLError as exc:
        raise TlsSetupError(f"TLS CA file {config.ca} holds no PEM certificate ({exc.reason or exc})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(config: TlsConfig, *, gated: bool = False) -> ssl.SSLContext:
    """For listeners: TLS 1.2+, strong suites, a client certificate from the trusted CA required.

    ``gated`` (only for :class:`GatedServer`): a certificate that is presented must still verify (else
    the handshake fails), but that one is presented at all is checked right after the handshake
    (:func:`check_pins`) instead of by OpenSSL (``CERT_OPTIONAL``): asyncio drops the alert of a failed
    server handshake, so a client would only see the connection close, while after the handshake the
    listener can tell it why in its own protocol (HTTP 403). Never give a gated context to anything else."""
    ctx = _base_context(config, ssl.PROTOCOL_TLS_SERVER)
    if gated:
        ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def client_context(config: TlsConfig) -> ssl.SSLContext:
    """For clients: presents this node's certificate; the server's must chain to the trusted CA and
    name the host connected to."""
    ctx = _base_context(config, ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = True
    return ctx


@dataclass(frozen=True, slots=True)
class NodeTls:
    """A process's TLS identity: both contexts and the pins, built once at start."""

    config: TlsConfig
    server: ssl.SSLContext  # CERT_REQUIRED: for any listener (e.g. ``asyncio.start_server(ssl=...)``)
    client: ssl.SSLContext
    gated: ssl.SSLContext  # for GatedServer only (see server_context)

    @property
    def pins(self) -> frozenset[str]:
        return self.config.pins


_node: NodeTls | None = None


def configure(settings: Any) -> NodeTls | None:
    """Build this process's TLS identity from a service's settings (None: plain TCP) and make it the
    default of every client in the process (:func:`node`). A node has one certificate, so the SOAP,
    MLLP and DICOM clients deep inside a service need no TLS argument threaded through them.
    Raises TlsSetupError with one line for a missing, unreadable or expired file."""
    global _node
    config = TlsConfig.from_settings(settings)
    _node = None if config is None else NodeTls(config, server_context(config), client_context(config),
                                                server_context(config, gated=True))
    return _node


def reset() -> None:
    """Back to plain TCP for this process's clients (tests that configured a TLS identity)."""
    global _node
    _node = None


def startup_problem(settings: Any) -> str | None:
    """:func:`configure`, for a CLI: the one line to print before exiting 2, or None when all is well."""
    try:
        node_tls = configure(settings)
    except TlsSetupError as exc:
        return str(exc)
    if node_tls is not None:
        log.info("TLS: mutual TLS with certificate %s, trusting %s%s", node_tls.config.cert, node_tls.config.ca,
                 f", {len(node_tls.pins)} pinned peers" if node_tls.pins else "")
    return None


def node() -> NodeTls | None:
    """This process's TLS identity, or None when it speaks plain TCP."""
    return _node


def scheme() -> str:
    """The URL scheme of this process's HTTP listeners."""
    return "http" if _node is None else "https"


def client_ssl() -> ssl.SSLContext | None:
    return _node.client if _node is not None else None


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """The verified client certificate of a connection: who the caller is when it carries no XUA assertion."""

    common_name: str | None  # the subject CN, as the region's CA issued it (e.g. "hospital-a-repository (xds-local)")
    sha256: str  # fingerprint (lower-case hex), as --tls-pin and the policy's [[nodes]] take it


def peer_certificate(transport: Any) -> PeerCertificate | None:
    """The certificate the peer of ``transport`` presented (None on plain TCP or without one). Only TLS
    listeners of this module hand out such transports, and their handshake verified the certificate
    against the region's CA (a presented certificate that does not verify fails the handshake)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if not der:
        return None
    try:
        names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        names = []
    cn = names[0].value if names else None
    return PeerCertificate(cn if isinstance(cn, str) else None, fingerprint(der))


def check_pins(ssl_object: Any, pins: frozenset[str], peer: str) -> None:
    """Raise PeerRefused unless the peer presented a certificate (ssl verified it against the CA) and,
    when there are ``pins``, it is one of them."""
    if ssl_object is None:
        return
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        raise PeerRefused(f"{peer} presented no certificate; a certificate of the affinity domain is required")
    if not pins:
        return
    got = fingerprint(der)
    if got not in pins:
        raise PeerRefused(f"certificate of {peer} (SHA-256 {got}) is not one of the pinned certificates")


# --- one line for a refusal ------------------------------------------------------------------------------------

_ALERTS = {  # what the other side's alert means, seen from this side
    "CERTIFICATE_REQUIRED": "the server requires a client certificate and none was presented",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client presented no certificate",
    "ALERT_UNKNOWN_CA": "the peer does not trust the issuer of this node's certificate (not the affinity "
                        "domain's CA)",
    "ALERT_CERTIFICATE_EXPIRED": "the peer refused this node's certificate: it has expired",
    "ALERT_BAD_CERTIFICATE": "the peer refused this node's certificate",
    "ALERT_CERTIFICATE_UNKNOWN": "the peer refused this node's certificate",
    "ALERT_HANDSHAKE_FAILURE": "no common TLS version or cipher suite (TLS 1.2+ with strong ciphers required)",
    "ALERT_PROTOCOL_VERSION": "the peer does not speak TLS 1.2 or newer",
    "UNSUPPORTED_PROTOCOL": "the peer does not speak TLS 1.2 or newer",
    "NO_SHARED_CIPHER": "no common cipher suite (strong ciphers only)",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS (a plain-TCP service or client?)",
    "HTTP_REQUEST": "the peer sent plain HTTP to a TLS port (use https://)",
}


def _verify_reason(exc: ssl.SSLCertVerificationError) -> str:
    code, message = getattr(exc, "verify_code", None), getattr(exc, "verify_message", None) or str(exc)
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return "its certificate has expired"
    if code == 9:
        return "its certificate is not yet valid"
    if code in (2, 18, 19, 20, 21):  # unknown issuer / self-signed / unable to verify
        return f"its certificate is not issued by the affinity domain's CA ({message})"
    if code == 62 or "Hostname mismatch" in message or "IP address mismatch" in message:
        return f"its certificate does not name the host connected to ({message})"
    return message


def _ssl_error(exc: BaseException | None) -> BaseException | None:
    seen = 0
    while exc is not None and seen < 8:
        inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None)  # aiohttp's wrappers
        if isinstance(inner, (ssl.SSLError, PeerRefused)):
            return inner
        if isinstance(exc, (ssl.SSLError, PeerRefused)):
            return exc
        exc = exc.__cause__ or exc.__context__ or next(
            (a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)), None)
        seen += 1
    return None


def reason(exc: BaseException) -> str | None:
    """Why a TLS connection failed, in words, or None when ``exc`` is not about TLS."""
    found = _ssl_error(exc)
    if found is None:
        return None
    if isinstance(found, PeerRefused):
        return str(found)
    if isinstance(found, ssl.SSLCertVerificationError):
        return _verify_reason(found)
    text = f"{getattr(found, 'reason', '') or ''} {found}".upper()
    for key, words in _ALERTS.items():
        if key in text:
            return words
    return str(found)


CLOSED_AFTER_HANDSHAKE = ("the server closed the connection without an answer, as it does when it refuses this "
                          "node's certificate (expired, or not issued by its CA): see the server's log")


def explain(exc: BaseException, peer: str) -> str:
    """Client side: one line saying why the TLS connection to ``peer`` failed."""
    why = reason(exc)
    return f"TLS to {peer} refused: {why}" if why else f"connection to {peer} failed: {exc}"


def describe_refusal(exc: BaseException, peer: str) -> str:
    """Server side: one line for the log, saying why a client's connection was refused."""
    found = _ssl_error(exc)
    if isinstance(found, ssl.SSLCertVerificationError):
        why = _verify_reason(found).replace("its certificate", "the client's certificate")
    elif isinstance(found, PeerRefused):
        why = str(found)
    elif isinstance(exc, TimeoutError):
        why = f"no TLS handshake within {HANDSHAKE_TIMEOUT:g} s"
    else:
        why = reason(exc) or str(exc) or type(exc).__name__
    return f"TLS connection from {peer} refused: {why}"


# --- listeners: the handshake under our control ----------------------------------------------------------------


class _Holding(asyncio.Protocol):
    """Holds what arrives between the end of the handshake and the hand-over to the real protocol."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.eof = False
        self.lost: BaseException | bool | None = False

    def data_received(self, data: bytes) -> None:
        self.data.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = exc if exc is not None else True


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = protocol.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    else:
        protocol.data_received(data)  # type: ignore[attr-defined]


class GatedServer:
    """A TLS listener that accepts plain TCP itself and runs each handshake in a task of its own
    (``loop.connect_accepted_socket``, which raises on a failed handshake where ``create_server(ssl=...)``
    stays silent, on asyncio and uvloop alike): a refusal is logged in one line naming the peer, a slow
    handshake holds nothing but its own task, and the pins are checked before the application's
    protocol sees a byte. Has the parts of ``asyncio.Server`` its users need (``sockets``, ``close``)."""

    def __init__(self, sock: Any, factory: Callable[[], asyncio.BaseProtocol], node_tls: NodeTls,
                 logger: logging.Logger, what: str, tell: Callable[[str], bytes] | None) -> None:
        self.sockets = [sock]
        self._factory, self._node_tls, self._logger, self._what, self._tell = factory, node_tls, logger, what, tell
        self._handshakes: set[asyncio.Task] = set()
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        sock = self.sockets[0]
        while True:
            try:
                conn, address = await loop.sock_accept(sock)
            except OSError as exc:  # e.g. out of file descriptors: wait, do not spin or stop listening
                self._logger.warning("%s: accept failed: %s", self._what, exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._handshake(conn, address))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: Any, address: Any) -> None:
        loop = asyncio.get_running_loop()
        peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        holding = _Holding()
        try:
            transport, _ = await loop.connect_accepted_socket(
                lambda: holding, conn, ssl=self._node_tls.gated, ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self._logger.warning("%s: %s", self._what, describe_refusal(exc, peer))
            conn.close()
            return
        try:
            check_pins(transport.get_extra_info("ssl_object"), self._node_tls.pins, f"client {peer}")
        except PeerRefused as exc:
            line = describe_refusal(exc, peer)
            self._logger.warning("%s: %s", self._what, line)
            if self._tell is not None:  # the handshake succeeded: the client can be told why, in its protocol
                transport.write(self._tell(line))
            transport.close()
            return
        protocol = self._factory()
        transport.set_protocol(protocol)  # type: ignore[arg-type]
        protocol.connection_made(transport)
        for chunk in holding.data:
            _feed(protocol, chunk)
        if holding.eof and not protocol.eof_received():  # type: ignore[attr-defined]
            transport.close()
        if holding.lost is not False:
            protocol.connection_lost(None if holding.lost is True else holding.lost)  # type: ignore[arg-type]

    def is_serving(self) -> bool:
        return not self._accepting.done()

    def close(self) -> None:
        self._accepting.cancel()
        for task in list(self._handshakes):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        await asyncio.gather(self._accepting, *self._handshakes, return_exceptions=True)


async def create_server(factory: Callable[[], asyncio.BaseProtocol], host: str, port: int,
                        node_tls: NodeTls | None, *, logger: logging.Logger | None = None, what: str = "listener",
                        tell: Callable[[str], bytes] | None = None, reuse_port: bool | None = None,
                        backlog: int = 128, **kwargs: Any) -> Any:
    """``loop.create_server(factory, host, port)`` when ``node_tls`` is None, else a :class:`GatedServer`
    (mutual TLS). ``tell`` turns the line refusing an unpinned client into bytes of the listener's
    protocol, sent before closing."""
    loop = asyncio.get_running_loop()
    if node_tls is None:
        return await loop.create_server(factory, host, port, reuse_port=reuse_port, backlog=backlog, **kwargs)
    import socket

    infos = await loop.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    sock = socket.create_server(address, family=family, backlog=backlog, reuse_port=bool(reuse_port))
    sock.setblocking(False)
    return GatedServer(sock, factory, node_tls, logger or log, what, tell)


def http_refusal(line: str) -> bytes:
    """An HTTP 403 whose body is the refusal's one line."""
    body = (line + "\n").encode()
    return (b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def site(runner: Any, host: str, port: int, node_tls: NodeTls | None, *, what: str | None = None,
         logger: logging.Logger | None = None, **kwargs: Any) -> Any:
    """An aiohttp site for ``runner`` on ``host:port``: plain, or mutual TLS through the handshake gate."""
    from aiohttp import web

    if node_tls is None:
        return web.TCPSite(runner, host, port, **kwargs)
    what = what or f"HTTPS port {port}"

    class TlsSite(web.TCPSite):
        async def start(self) -> None:
            await web.BaseSite.start(self)
            self._server = await create_server(
                self._runner.server, self._host, self._port, node_tls, logger=logger, what=what,
                tell=http_refusal, reuse_port=self._reuse_port, backlog=self._backlog)

        @property
        def name(self) -> str:
            return f"https://{self._host}:{self._port}"

    return TlsSite(runner, host, port, **kwargs)


def connector(**kwargs: Any) -> Any:
    """An aiohttp connector presenting this node's certificate to https:// servers (and checking the pins)."""
    import aiohttp

    node_tls = _node
    if node_tls is None:
        return aiohttp.TCPConnector(**kwargs)

    class PinnedConnector(aiohttp.TCPConnector):
        async def _wrap_create_connection(self, *args: Any, req: Any, **kw: Any) -> Any:
            transport, proto = await super()._wrap_create_connection(*args, req=req, **kw)
            try:
                check_pins(transport.get_extra_info("ssl_object"), node_tls.pins,
                           f"server {req.url.host}:{req.url.port}")
            except PeerRefused as exc:
                transport.close()
                raise aiohttp.ClientConnectorError(req.connection_key, OSError(str(exc))) from exc
            return transport, proto

    return PinnedConnector(ssl=node_tls.client, **kwargs)


def connect_kwargs(host: str) -> dict[str, Any]:
    """Keyword arguments for ``loop.create_connection`` (or python-hl7's ``open_hl7_connection``) that make a
    client connection use this node's TLS when configured; nothing when the node speaks plain TCP."""
    node_tls = _node
    if node_tls is None:
        return {}
    return {"ssl": node_tls.client, "server_hostname": host, "ssl_handshake_timeout": HANDSHAKE_TIMEOUT}


def check_server(connection: Any, host: str, port: int) -> None:
    """After connecting (a transport or a stream writer): raise PeerRefused when the server is not pinned."""
    node_tls = _node
    if node_tls is not None:
        check_pins(connection.get_extra_info("ssl_object"), node_tls.pins, f"server {host}:{port}")


def dicom_tls_args(host: str) -> tuple[ssl.SSLContext, str] | None:
    """pynetdicom's ``tls_args`` for an association to ``host`` (None: plain TCP)."""
    return None if _node is None else (_node.client, host)


def check_association(assoc: Any, host: str, port: int) -> None:
    """After ``ae.associate``: raise PeerRefused when the SCP's certificate is not pinned."""
    if _node is None or not _node.pins or not assoc.is_established:
        return
    sock = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    try:
        check_pins(sock, _node.pins, f"DICOM server {host}:{port}")
    except PeerRefused:
        assoc.abort()
        raise
