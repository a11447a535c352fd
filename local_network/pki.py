"""The local region's certificate authority: one CA and one certificate per node, made with ``cryptography``.

xds-local calls :func:`ensure_region_pki` at start (never at import): the first start writes the CA
and every node's key and certificate under ``DATA_DIR/tls``; later starts reuse them, and only
remake a node certificate that is missing, expires within :data:`RENEW_BEFORE` or does not name
the hosts asked for. Node certificates name ``localhost``, ``127.0.0.1``, ``::1`` and the address
the services listen on, so clients can check the host name as they would in a real deployment.
Private keys are written readable by their owner only.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_DAYS = 3650
NODE_DAYS = 825
RENEW_BEFORE = dt.timedelta(days=30)
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True, slots=True)
class NodeFiles:
    """A node's certificate and key, and the CA file it trusts (its ``--tls-*`` options)."""

    cert: Path
    key: Path
    ca: Path

    def args(self) -> list[str]:
        return ["--tls-cert", str(self.cert), "--tls-key", str(self.key), "--tls-ca", str(self.ca)]

    def as_dict(self) -> dict[str, str]:
        return {"tls_cert": str(self.cert), "tls_key": str(self.key), "tls_ca": str(self.ca)}


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _write_public(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(common_name: str, *, not_before: dt.datetime | None = None,
            days: int = CA_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A self-signed CA certificate (path length 0: it signs node certificates only)."""
    key = _new_key()
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _san(hosts: tuple[str, ...]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def make_node_cert(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
                   hosts: tuple[str, ...] = LOCAL_NAMES, *, not_before: dt.datetime | None = None,
                   days: int = NODE_DAYS) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A node certificate for both TLS server and client use (a node listens and connects)."""
    key = _new_key()
    start = not_before or dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_agreement=True,
                                         content_commitment=False, data_encipherment=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(_san(hosts), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def write_node(folder: Path, name: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate,
               ca_file: Path) -> NodeFiles:
    files = NodeFiles(folder / f"{name}.crt", folder / f"{name}.key", ca_file)
    _write_private(files.key, _key_pem(key))
    _write_public(files.cert, cert.public_bytes(serialization.Encoding.PEM))
    return files


def _usable(cert_file: Path, key_file: Path, hosts: tuple[str, ...], ca_cert: x509.Certificate) -> bool:
    if not (cert_file.is_file() and key_file.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return False
    return (cert.issuer == ca_cert.subject and cert.not_valid_after_utc - RENEW_BEFORE > dt.datetime.now(dt.UTC)
            and set(_san(hosts)) <= set(names))


@dataclass(frozen=True, slots=True)
class RegionPki:
    folder: Path
    ca_file: Path
    nodes: dict[str, NodeFiles]
    browser_p12: Path  # a clinician's browser certificate (PKCS#12) for the portal
    browser_password: str
    created: list[str]  # what this start made (empty when everything was reused)


def common_name(node: str) -> str:
    """The subject CN of a node's certificate (the access policy's [[nodes]] name nodes by it)."""
    return f"{node} (xds-local)"


def ensure_region_pki(data_dir: Path, nodes: list[str], hosts: tuple[str, ...] = LOCAL_NAMES) -> RegionPki:
    """The region's CA and a certificate per node under ``data_dir/tls``: made on first use, then reused."""
    folder = data_dir / "tls"
    folder.mkdir(parents=True, exist_ok=True)
    ca_file, ca_key_file = folder / "ca.crt", folder / "ca.key"
    created: list[str] = []
    if ca_file.is_file() and ca_key_file.is_file():
        ca_cert = x509.load_pem_x509_certificate(ca_file.read_bytes())
        loaded = serialization.load_pem_private_key(ca_key_file.read_bytes(), password=None)
        assert isinstance(loaded, ec.EllipticCurvePrivateKey)
        ca_key = loaded
    else:
        ca_key, ca_cert = make_ca("xds-local affinity domain CA")
        _write_private(ca_key_file, _key_pem(ca_key))
        _write_public(ca_file, ca_cert.public_bytes(serialization.Encoding.PEM))
        created.append("CA")
    hosts = tuple(dict.fromkeys((*LOCAL_NAMES, *hosts)))
    files: dict[str, NodeFiles] = {}
    for name in [*nodes, "browser"]:
        cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
        if _usable(cert_file, key_file, hosts, ca_cert):
            files[name] = NodeFiles(cert_file, key_file, ca_file)
            continue
        key, cert = make_node_cert(ca_key, ca_cert, common_name(name), hosts)
        files[name] = write_node(folder, name, key, cert, ca_file)
        created.append(name)
    browser = files.pop("browser")
    p12, password = folder / "browser.p12", "xds-local"
    if "browser" in created or not p12.is_file():
        key = serialization.load_pem_private_key(browser.key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(browser.cert.read_bytes())
        _write_private(p12, pkcs12.serialize_key_and_certificates(
            b"xds-local clinician", key, cert, [ca_cert],  # type: ignore[arg-type]
            serialization.BestAvailableEncryption(password.encode())))
    return RegionPki(folder, ca_file, files, p12, password, created)
