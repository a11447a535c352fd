"""The background sender: delivers spooled records to the audit record repository, in order.

A daemon thread (it serves asyncio handlers and pynetdicom's association threads alike) takes
the oldest unacknowledged records, sends them, and removes them from the spool once delivered:

- ``tls`` / ``tcp`` with ``ack="repository"`` (our ``xds-audit``): the repository answers each
  batch with an octet-counted ``ACK <origin> <seq>`` after storing it; only then are the
  records removed. A lost connection or acknowledgement means resending from the first
  unacknowledged record; the repository drops the duplicates (origin, seq). Nothing is lost,
  nothing is stored twice.
- ``ack="none"`` (a third-party RFC 5425 repository, which never answers) and ``udp`` (RFC 5426):
  records are removed once written to the socket; a repository crash can lose what it had not
  yet stored. Said at start.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from ihe import tls
from ihe.audit.spool import Spool
from ihe.audit.syslog import FrameReader, SyslogError, frame

log = logging.getLogger(__name__)

BATCH = 200
ACK_TIMEOUT = 15.0
MAX_UDP_BYTES = 65000


@dataclass(frozen=True, slots=True)
class Destination:
    scheme: str  # tls, tcp or udp
    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Destination:
        parts = urlsplit(url)
        if parts.scheme not in ("tls", "tcp", "udp") or not parts.hostname or not parts.port:
            raise ValueError(f"audit repository {url!r} must be tls://HOST:PORT, udp://HOST:PORT or tcp://HOST:PORT")
        return cls(parts.scheme, parts.hostname, parts.port)


def ack_frame(origin: str, seq: int) -> bytes:
    return frame(f"ACK {origin} {seq}".encode("ascii"))


def parse_ack(message: bytes) -> tuple[str, int]:
    parts = message.split(b" ")
    if len(parts) != 3 or parts[0] != b"ACK" or not parts[2].isdigit():
        raise SyslogError(f"not an acknowledgement: {message[:60]!r}")
    return parts[1].decode("ascii"), int(parts[2])


class Sender:
    """Sends ``spool``'s records to ``destination`` until stopped."""

    def __init__(self, spool: Spool, destination: Destination, *, ssl_context: ssl.SSLContext | None = None,
                 ack: str = "repository", retry_max: float = 5.0) -> None:
        if destination.scheme == "tls" and ssl_context is None:
            raise ValueError("an audit repository over TLS needs an ssl context")
        self.spool = spool
        self.destination = destination
        self.ssl_context = ssl_context
        self.wait_for_ack = ack == "repository" and destination.scheme != "udp"
        self.retry_max = retry_max
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="audit-sender", daemon=True)
        self.connected_once = False
        self._acked_here = False  # an acknowledgement came on the current connection

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._close()

    def drain(self, timeout: float) -> bool:
        """Wait until every record is delivered (for shutdown and tests)."""
        deadline = time.monotonic() + timeout
        while len(self.spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        return not len(self.spool)

    def _connect(self) -> socket.socket:
        d = self.destination
        if d.scheme == "udp":
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect((d.host, d.port))
            return sock
        sock = socket.create_connection((d.host, d.port), timeout=10)
        if d.scheme == "tls":
            assert self.ssl_context is not None
            sock = self.ssl_context.wrap_socket(sock, server_hostname=d.host)
        sock.settimeout(ACK_TIMEOUT)
        return sock

    def _close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _run(self) -> None:
        delay = 0.2
        while not self._stop.is_set():
            batch = self.spool.pending(BATCH)
            if not batch:
                self.spool.persist_ack()
                self.spool.wait(0.5)
                continue
            try:
                if self._sock is None:
                    self._sock = self._connect()
                    self._acked_here = False
                    if not self.connected_once or delay > 0.2:
                        log.info("audit: connected to %s://%s:%d", *self._destination_parts())
                    self.connected_once = True
                self._send(batch)
                delay = 0.2
            except (OSError, SyslogError) as exc:
                self._close()
                why = tls.reason(exc)  # a refused certificate, in words (not "[SSL] ..." codes)
                log.warning("audit: %d records wait, repository %s://%s:%d not reachable: %s", len(self.spool),
                            *self._destination_parts(), f"TLS refused: {why}" if why else exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max)

    def _destination_parts(self) -> tuple[str, str, int]:
        d = self.destination
        return d.scheme, d.host, d.port

    def _send(self, batch: list[tuple[int, bytes]]) -> None:
        assert self._sock is not None
        if self.destination.scheme == "udp":
            for seq, message in batch:
                if len(message) > MAX_UDP_BYTES:
                    log.error("audit record %d (%d bytes) is too large for UDP; it is not sent", seq, len(message))
                else:
                    self._sock.send(message)
                self.spool.ack(seq)
            return
        self._sock.sendall(b"".join(frame(m) for _, m in batch))
        last = batch[-1][0]
        if not self.wait_for_ack:
            self.spool.ack(last)
            return
        reader = FrameReader(max_frame=1024)
        while True:
            data = self._sock.recv(65536)
            if not data:
                hint = ""
                if self.destination.scheme == "tls" and not self._acked_here:  # TLS 1.3: a refused client
                    hint = f" ({tls.CLOSED_AFTER_HANDSHAKE})"  # certificate shows only as this close
                raise ConnectionError(f"the repository closed the connection before acknowledging{hint}")
            for message in reader.feed(data):
                origin, seq = parse_ack(message)
                if origin != self.spool.origin:
                    raise SyslogError(f"acknowledgement for another spool ({origin})")
                self.spool.ack(seq)
                self._acked_here = True
                if seq >= last:
                    return
