"""Mutual TLS (ATNA Secure Node, ITI-19) on a real registry process: SOAP over HTTPS and MLLP over TLS
work with a certificate from the affinity domain's CA; a client without a certificate, with another CA's,
with an expired one, or one that is not pinned is refused with one clear line on both sides; a service
with a bad certificate of its own does not start; a storm of hanging handshakes and a restart in the
middle of it leave the service serving. (The whole region on TLS: tests/deploy/test_local_network.py.)
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from consumer.client.query import find_documents
from consumer.client.soap import SoapClient, TransportError
from ihe import hl7, tls
from ihe.metadata.model import Identifiable
from tests.conftest import ROOT, free_port
from tests.deploy.helpers import Output
from tests.tls_support import PkiForTests, make_test_pki

NHS_OID = "2.16.840.1.113883.2.1.4.1"
PATIENT = f"9434765919^^^&{NHS_OID}&ISO"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> PkiForTests:
    return make_test_pki(tmp_path_factory.mktemp("pki"), ["registry", "client", "other-client"])


class Registry:
    def __init__(self, database_url: str, files, *extra: str, port: int | None = None,
                 mllp_port: int | None = None) -> None:
        self.port, self.mllp_port = port or free_port(), mllp_port or free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "registry.cli", "--port", str(self.port), "--mllp-port", str(self.mllp_port),
             "--database-url", database_url, *files.args(), *extra],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.output = Output(self.proc)
        self.url = f"https://127.0.0.1:{self.port}/registry"

    def started(self) -> Registry:
        self.output.wait_for("ITI-8/ITI-9/ITI-21", 60)
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("the registry did not stop within 20 s of SIGTERM") from None

    def log_line(self, text: str, timeout: float = 10) -> str:
        return self.output.wait_for(text, timeout)


@pytest.fixture(scope="module")
def registry(registry_database_url, certs):
    service = Registry(registry_database_url, certs.nodes["registry"]).started()
    yield service
    service.stop()


@pytest.fixture
def as_node(certs):
    """This test process as a node of the domain (the ``client`` certificate); plain again afterwards."""
    def use(name: str = "client", pin: str | None = None):
        return tls.configure(PkiForTests.settings(certs.nodes[name], pin))
    yield use
    tls.reset()


def raw_context(ca: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context that skips our own checks (to present what a careless client would)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


def find(url: str, ctx: ssl.SSLContext | None = None) -> list:
    async def run():
        session = None if ctx is None else aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx))
        async with SoapClient(timeout=20, session=session) as client:
            try:
                return await find_documents(client, url, PATIENT)
            finally:
                if session is not None:
                    await session.close()
    return asyncio.run(run())


def refused(url: str, ctx: ssl.SSLContext) -> str:
    with pytest.raises(TransportError) as caught:
        find(url, ctx)
    line = str(caught.value)
    assert "\n" not in line
    return line


def test_soap_and_mllp_work_over_mutual_tls_with_a_certificate_of_the_domain(registry, as_node):
    as_node("client")
    assert find(registry.url) == []
    assert asyncio.run(hl7.pix_query("127.0.0.1", registry.mllp_port, Identifiable("A1", "1.2.3.4"))) == []
    assert registry.log_line("ITI-8/ITI-9/ITI-21", 1).endswith(" over mutual TLS")


def test_plain_clients_are_refused_and_the_endpoint_is_https(registry):
    with pytest.raises(TransportError) as caught:
        find(registry.url.replace("https:", "http:"))
    assert "no answer" in str(caught.value) or "Server disconnected" in str(caught.value)
    line = registry.log_line("refused: the peer sent plain HTTP to a TLS port")
    assert f"HTTPS port {registry.port}" in line


def test_a_client_without_certificate_is_refused_with_one_line_on_both_sides(registry, certs):
    line = refused(registry.url, raw_context(certs.ca))  # told in HTTP, after the handshake
    assert "HTTP 403" in line and "presented no certificate; a certificate of the affinity domain is required" in line
    logged = registry.log_line("presented no certificate")
    assert f"HTTPS port {registry.port}: TLS connection from 127.0.0.1:" in logged


def test_a_certificate_of_another_ca_is_refused_with_one_line_on_both_sides(registry, certs):
    stranger = certs.other_ca_node
    line = refused(registry.url, raw_context(certs.ca, stranger.cert, stranger.key))
    assert line == f"TLS to {registry.url}: {tls.CLOSED_AFTER_HANDSHAKE}", line
    logged = registry.log_line("is not issued by the affinity domain's CA")
    assert "the client's certificate is not issued by the affinity domain's CA" in logged


def test_an_expired_certificate_is_refused_with_one_line_on_both_sides(registry, certs):
    line = refused(registry.url, raw_context(certs.ca, certs.expired.cert, certs.expired.key))
    assert line == f"TLS to {registry.url}: {tls.CLOSED_AFTER_HANDSHAKE}", line
    assert "the client's certificate has expired" in registry.log_line("certificate has expired")


def test_a_server_certificate_of_another_ca_is_refused_by_the_client(registry, certs, as_node):
    """The other direction: our client does not accept a server outside the domain."""
    as_node("client")
    ctx = raw_context(certs.other_ca, certs.nodes["client"].cert, certs.nodes["client"].key)
    line = refused(registry.url, ctx)
    assert "its certificate is not issued by the affinity domain's CA" in line, line


def test_mllp_without_a_client_certificate_is_refused(registry, certs):
    ctx = raw_context(certs.ca)

    async def feed():
        reader, writer = await asyncio.open_connection("127.0.0.1", registry.mllp_port, ssl=ctx,
                                                       server_hostname="127.0.0.1")
        writer.write(b"\x0bMSH|^~\\&|A|B|C|D|20260101||ADT^A01|1|P|2.5\r\x1c\r")
        await writer.drain()
        return await reader.read()

    assert asyncio.run(feed()) == b"", "no answer without a certificate"
    logged = registry.log_line(f"MLLP port {registry.mllp_port}: TLS connection")
    assert "presented no certificate" in logged, logged


def test_pins_refuse_a_valid_certificate_that_is_not_pinned(registry_database_url, certs, as_node):
    pinned = tls.fingerprint(ssl.PEM_cert_to_DER_cert(certs.nodes["client"].cert.read_text()))
    service = Registry(registry_database_url, certs.nodes["registry"], "--tls-pin", pinned).started()
    try:
        as_node("client")
        assert find(service.url) == []
        as_node("other-client")  # same CA, valid, not pinned: the server says why, in HTTP
        with pytest.raises(TransportError) as caught:
            find(service.url)
        assert "HTTP 403" in str(caught.value) and "is not one of the pinned certificates" in str(caught.value)
        assert "is not one of the pinned certificates" in service.log_line("pinned certificates")
        with pytest.raises(asyncio.IncompleteReadError):  # MLLP: closed after the handshake without an answer
            asyncio.run(hl7.mllp_request("127.0.0.1", service.mllp_port, "MSH|^~\\&|A\r", 5))
        assert "MLLP port" in service.log_line(f"MLLP port {service.mllp_port}: TLS connection from")
        # and the client side pins the server: a client pinning another certificate refuses the registry
        as_node("client", pin=pinned)
        with pytest.raises(TransportError) as caught:
            find(service.url)
        assert "is not one of the pinned certificates" in str(caught.value), caught.value
    finally:
        service.stop()


@pytest.mark.parametrize("problem,expected", [
    ("expired", "expired on"),
    ("missing", "does not exist"),
    ("half", "TLS needs --tls-cert, --tls-key and --tls-ca together"),
    ("stranger", "is not issued by the CA in"),
])
def test_a_service_with_a_bad_certificate_of_its_own_does_not_start(registry_database_url, certs, tmp_path,
                                                                      problem, expected):
    files = {"expired": certs.expired, "stranger": certs.other_ca_node}.get(problem, certs.nodes["registry"])
    args = files.args()
    if problem == "missing":
        args[1] = str(tmp_path / "nowhere.crt")
    if problem == "half":
        args = args[:2]
    proc = subprocess.run([sys.executable, "-m", "registry.cli", "--port", str(free_port()), "--mllp-port",
                           str(free_port()), "--database-url", registry_database_url, *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xds-registry: ") and expected in lines[0], proc.stderr


def _storm(port: int, stop: threading.Event, opened: list[int]) -> None:
    """Connections that start a handshake and never finish it (a ClientHello cut short), bounded."""
    held: list[socket.socket] = []
    deadline = time.monotonic() + 60
    try:
        while not stop.is_set() and time.monotonic() < deadline and len(held) < 400:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=1)
                s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS record header, then nothing
                held.append(s)
                opened[0] += 1
            except OSError:
                time.sleep(0.05)  # the service is restarting
    finally:
        stop.wait(60)
        for s in held:
            s.close()


def test_a_restart_in_the_middle_of_a_handshake_storm_keeps_serving(registry_database_url, certs, as_node):
    """Hundreds of half-open handshakes do not stop good clients, nor a restart on the same ports."""
    as_node("client")
    service = Registry(registry_database_url, certs.nodes["registry"]).started()
    stop, opened = threading.Event(), [0]
    storm = threading.Thread(target=_storm, args=(service.port, stop, opened), daemon=True)
    storm.start()
    try:
        while opened[0] < 150:
            time.sleep(0.05)
        started = time.monotonic()
        assert find(service.url) == []  # served while 150+ handshakes hang
        assert time.monotonic() - started < 5
        service.stop()  # SIGTERM in the middle of the storm: it stops promptly (checked in stop)
        service = Registry(registry_database_url, certs.nodes["registry"], port=service.port,
                           mllp_port=service.mllp_port).started()
        before = opened[0]
        while opened[0] < before + 100:
            time.sleep(0.05)
        assert find(service.url) == []
        assert asyncio.run(hl7.pix_query("127.0.0.1", service.mllp_port, Identifiable("A1", "1.2.3.4"))) == []
        assert service.proc.poll() is None
    finally:
        stop.set()
        storm.join(10)
        service.stop()
    time.sleep(0.1)
    assert not any("Traceback" in line for line in service.output.lines), "\n".join(service.output.lines)
