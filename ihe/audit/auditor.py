"""One service's audit trail: build the AuditMessage, frame it, spool it; the sender delivers it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
from pathlib import Path

from ihe import tls
from ihe.audit.messages import AuditEvent, audit_message_bytes
from ihe.audit.sender import Destination, Sender
from ihe.audit.spool import Spool
from ihe.audit.syslog import build_syslog
from ihe.config import Option

log = logging.getLogger(__name__)

AUDIT_OPTIONS: list[Option] = [
    Option("audit-repository", "ATNA audit record repository: tls://HOST:PORT (RFC 5425), udp://HOST:PORT "
           "(RFC 5426) or tcp://HOST:PORT (plain, experiments only); when absent nothing is audited"),
    Option("audit-spool-dir", "folder of the durable audit spool (records wait here until the repository has "
           "them)", None, Path),
    Option("audit-spool-max-bytes", "most bytes of undelivered audit records; when reached, new requests are "
           "refused (every access is audited or not served)", 256 * 1024 * 1024, int),
    Option("audit-ca-file", "CA certificates (PEM) the audit repository's TLS certificate must chain to; "
           "default: this node's --tls-ca, else the system's"),
    Option("audit-tls-cert", "this node's certificate (PEM) presented to the audit repository (RFC 5425 is mutual "
           "TLS); default: this node's --tls-cert"),
    Option("audit-tls-key", "the private key (PEM) of --audit-tls-cert; default: this node's --tls-key"),
    Option("audit-source-id", "AuditSourceID of this node; default: the host name"),
    Option("audit-ack", "'repository' (wait for xds-audit's acknowledgement: nothing lost, nothing twice) or "
           "'none' (third-party repositories)", "repository"),
]


class Auditor:
    """Records audit events durably; thread-safe (asyncio handlers and DICOM association threads)."""

    def __init__(self, spool: Spool, sender: Sender | None, *, source_id: str, app_name: str) -> None:
        self.spool = spool
        self.sender = sender
        self.source_id = source_id
        self.app_name = app_name
        self.hostname = socket.gethostname()

    def accepting(self) -> bool:
        """False when the spool is full: the caller must refuse the work it was asked to do."""
        return self.spool.has_room()

    def record(self, event: AuditEvent) -> int:
        payload = audit_message_bytes(event)
        return self.spool.append(lambda origin, seq: build_syslog(
            payload, hostname=self.hostname, app_name=self.app_name, procid=str(os.getpid()), origin=origin,
            seq=seq, timestamp=event.time))

    async def arecord(self, event: AuditEvent) -> int:
        """:meth:`record` off the event loop (the append is fsync'd)."""
        return await asyncio.to_thread(self.record, event)

    def start(self) -> None:
        if self.sender is not None:
            self.sender.start()

    def close(self) -> None:
        if self.sender is not None:
            self.sender.stop()
        self.spool.close()


def client_ssl_context(ca_file: str | None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """TLS 1.2+ client context verifying the repository and, given ``cert``/``key``, presenting this node's
    certificate (RFC 5425 section 5: both ends authenticate)."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(tls.STRONG_CIPHERS)
    if cert:
        try:
            ctx.load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            raise tls.TlsSetupError(f"audit: cannot load the certificate {cert} / key {key} presented to the audit "
                                    f"repository: {exc}") from None
    return ctx


def sender_identity(settings: object) -> tuple[str | None, str | None, str | None]:
    """(CA file, certificate, key) of the audit link: the --audit-* options, else the node's own --tls-* (the
    node has one identity in the affinity domain, on every link)."""
    def pick(own: str, node: str) -> str | None:
        return getattr(settings, own, None) or getattr(settings, node, None)

    return pick("audit_ca_file", "tls_ca"), pick("audit_tls_cert", "tls_cert"), pick("audit_tls_key", "tls_key")


def open_auditor(settings: object, app_name: str, *, ssl_context: ssl.SSLContext | None = None) -> Auditor | None:
    """The auditor configured by a service's ``audit_*`` settings, started; None when auditing is off."""
    url = getattr(settings, "audit_repository", None)
    if not url:
        log.warning("audit: no --audit-repository configured; this %s emits no ATNA audit records", app_name)
        return None
    destination = Destination.parse(url)
    spool_dir = getattr(settings, "audit_spool_dir", None) or Path(getattr(settings, "data_dir", "data")) / "audit"
    spool = Spool.open_slot(Path(spool_dir), max_bytes=getattr(settings, "audit_spool_max_bytes", 256 << 20))
    if destination.scheme == "tls" and ssl_context is None:
        ca_file, cert, key = sender_identity(settings)
        ssl_context = client_ssl_context(ca_file, cert, key)
        if cert is None:
            log.warning("audit: no certificate to present to %s (no --audit-tls-cert or --tls-cert): a repository "
                        "requiring mutual TLS (RFC 5425, xds-audit --tls-client-ca) will refuse this node", url)
    ack = getattr(settings, "audit_ack", "repository") or "repository"
    if destination.scheme == "udp" or ack == "none":
        log.warning("audit: records to %s are forgotten once sent (no acknowledgement): a repository crash can "
                    "lose some", url)
    if destination.scheme == "tcp":
        log.warning("audit: plain TCP to %s: audit records travel unencrypted", url)
    sender = Sender(spool, destination, ssl_context=ssl_context, ack=ack)
    auditor = Auditor(spool, sender, source_id=getattr(settings, "audit_source_id", None) or socket.gethostname(),
                      app_name=app_name)
    auditor.start()
    log.info("audit: records to %s, spool %s (%d waiting)", url, spool.folder, len(spool))
    return auditor
