"""Test support for the audit tests: certificates (made here, by `cryptography`), xds-audit processes."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from tests.conftest import ROOT, RunningService, free_port, wait_for_port


@dataclass(frozen=True)
class Certificates:
    ca: Path
    cert: Path
    key: Path


def make_certificates(folder: Path) -> Certificates:
    """A CA and a server certificate for 127.0.0.1 / localhost, signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test affinity domain CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit repository")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    out = Certificates(folder / "ca.pem", folder / "audit.pem", folder / "audit.key")
    out.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return out


def start_audit_process(database_url: str, certs: Certificates, port: int | None = None,
                        udp_port: int | None = None, client_ca: Path | None = None) -> RunningService:
    """``xds-audit`` as a real process with a TLS listener (and UDP when asked; mutual TLS with ``client_ca``)."""
    port = port or free_port()
    extra = ["--udp-port", str(udp_port)] if udp_port else []
    if client_ca is not None:
        extra += ["--tls-client-ca", str(client_ca)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ihe.audit.cli", "--tls-port", str(port), "--tls-cert", str(certs.cert),
         "--tls-key", str(certs.key), "--database-url", database_url, *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for_port(port, proc)
    except Exception:
        proc.kill()
        raise
    return RunningService(proc, port=port, url=f"tls://127.0.0.1:{port}")


def fetch(database_url: str, sql: str, *args):
    async def run():
        conn = await asyncpg.connect(database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def migrate_audit(database_url: str) -> None:
    from schemas import migrate

    async def run():
        conn = await asyncpg.connect(database_url)
        try:
            await migrate(conn, "audit")
        finally:
            await conn.close()

    asyncio.run(run())
