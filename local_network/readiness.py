"""Is a started service ready? Each of its listeners must be open *by that process* and answer.

A port that merely accepts connections proves nothing: another copy of the network may hold it.
So a listener counts as ready only when the child process we started (or one of its own
children) is the one listening on the port, and it answers its protocol: HTTP ``/health`` with
200 (which also checks the database; for the OpenID Connect provider its discovery document),
MLLP by accepting a connection, DICOM by a C-ECHO. When this process has a TLS identity
(``ihe.tls.configure``, as xds-local does), every probe is over mutual TLS with it.
"""

from __future__ import annotations

import errno
import logging
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

import psutil

from ihe import tls


@dataclass(frozen=True, slots=True)
class Listener:
    kind: str  # "HTTP", "MLLP" or "DICOM"
    port: int
    ae_title: str | None = None  # DICOM only
    path: str = "/health"  # HTTP only: answered with 200 once the service works
    plain: bool = False  # HTTP only: never over TLS (the OpenID Connect provider)

    def describe(self, host: str) -> str:
        where = f"{self.ae_title}@{host}:{self.port}" if self.ae_title else f"{host}:{self.port}"
        return f"{self.kind} {where}"


def probe_host(host: str) -> str:
    """Where to connect to reach a listener bound to ``host`` (a wildcard address is reached locally)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def port_in_use(host: str, port: int) -> bool:
    """Whether binding ``host:port`` fails because something listens there (as the service would bind it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio/aiohttp do: TIME_WAIT is no obstacle
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            raise
    return False


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process ``pid`` or any of its descendants listens on."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return set()
    ports: set[int] = set()
    for p in processes:
        try:
            ports.update(c.laddr.port for c in p.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return ports


def answers(host: str, listener: Listener, timeout: float = 3.0) -> bool:
    """Whether the listener answers its protocol now."""
    host = probe_host(host)
    if listener.kind == "HTTP":
        url_host = f"[{host}]" if ":" in host else host
        scheme = "http" if listener.plain or tls.node() is None else "https"
        context = None if scheme == "http" else tls.client_ssl()
        try:
            with urllib.request.urlopen(f"{scheme}://{url_host}:{listener.port}{listener.path}", timeout=timeout,
                                        context=context) as resp:
                return resp.status == 200
        except (OSError, urllib.error.URLError):
            return False
    if listener.kind == "DICOM":
        return c_echo(host, listener.port, listener.ae_title or "ANY-SCP", timeout)
    try:
        with socket.create_connection((host, listener.port), timeout=timeout) as sock:
            context = tls.client_ssl() if listener.kind == "MLLP" else None
            if context is not None:  # MLLP over TLS: the handshake must succeed
                with context.wrap_socket(sock, server_hostname=host) as wrapped:
                    tls.check_pins(wrapped, tls.node().pins, f"{host}:{listener.port}")
            return True
    except OSError:
        return False


def c_echo(host: str, port: int, ae_title: str, timeout: float = 3.0) -> bool:
    """A DICOM Verification (C-ECHO) to ``ae_title``; True when it is answered with Success."""
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)  # a refused try is expected while starting
    ae = AE(ae_title="XDS_LOCAL")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    assoc = ae.associate(host, port, ae_title=ae_title, tls_args=tls.dicom_tls_args(host))
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def ready(pid: int, host: str, listener: Listener) -> bool:
    """The listener is open by process ``pid`` (or its children) and answers its protocol."""
    return listener.port in listening_ports(pid) and answers(host, listener)
