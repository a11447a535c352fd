"""The region's XUA credentials, made at first start with ``cryptography`` and kept in the data folder:
the portal's XUA signing key and certificate (RSA-2048, self-signed: an assertion is trusted because its
issuer's certificate is named in each service's trust file, not by a chain), and one XUA trust file per
kind of service, naming the portal and the actions the hospitals' own nodes send without an assertion.

The audit link's certificates are TLS node certificates from the region's CA (local_network/pki.py).
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from ihe.namespaces import ACTION_ITI18, ACTION_ITI41, ACTION_ITI42, ACTION_ITI57

PORTAL_ISSUER = "urn:oid:1.3.6.1.4.1.21367.2026.9.1"  # the portal node's SAML Issuer
# The demo data loader asks the registry (ITI-18 GetDocuments) whether its reports are in already: a system
# user of its own, trusted by the registry only.
LOADER_ISSUER = "urn:oid:1.3.6.1.4.1.21367.2026.9.2"
VALID_DAYS = 825

# Per kind of service, the SOAP actions its peers send as nodes (no user behind them), allowed without an
# assertion even under --xua required: ITI-42 from repositories and ITI-57 from imaging sources (IOCM) at the
# registry, ITI-41 (RAD-68) from imaging sources and document sources at the repositories. ITI-18, ITI-43,
# RAD-69 and DICOMweb/WADO, which the portal makes for a user, are never exempt.
EXEMPT_ACTIONS: dict[str, tuple[str, ...]] = {
    "registry": (ACTION_ITI42, ACTION_ITI57),
    "repository": (ACTION_ITI41,),
    "imaging": (),
}


@dataclass(frozen=True, slots=True)
class RegionCredentials:
    xua_key: Path
    xua_cert: Path
    xua_issuer: str
    trust_files: dict[str, Path]  # kind of service -> its --xua-trust file


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _self_signed(common_name: str, key) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=VALID_DAYS)).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def trust_file_text(audience: str, issuers: dict[str, str], exempt: tuple[str, ...]) -> str:
    """A ``--xua-trust`` TOML file (ihe.xua.policy) trusting ``issuers`` (name -> certificate file), with the
    exempt actions."""
    lines = [f'audience = "{audience}"', "clock_skew_seconds = 60",
             "exempt_actions = [" + ", ".join(f'"{a}"' for a in exempt) + "]", "", "[issuers]",
             *(f'"{name}" = "{cert}"' for name, cert in issuers.items())]
    return "\n".join(lines) + "\n"


def _rsa_pair(key_path: Path, cert_path: Path, common_name: str) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    if key_path.exists() and cert_path.exists():
        return
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_private(key_path, _key_pem(key))
    cert_path.write_bytes(_self_signed(common_name, key))


def prepare(data_dir: Path, *, audience: str) -> RegionCredentials:
    """The credentials under ``data_dir/security``, made the first time (kept across restarts)."""
    folder = data_dir / "security"
    folder.mkdir(parents=True, exist_ok=True)
    xua_key, xua_cert = folder / "portal-xua.key", folder / "portal-xua.pem"
    _rsa_pair(xua_key, xua_cert, "xds-local portal (XUA signing)")
    _rsa_pair(folder / "loader-xua.key", folder / "loader-xua.pem", "xds-local demo data loader (XUA signing)")
    trust_files = {}
    for kind, exempt in EXEMPT_ACTIONS.items():
        issuers = {PORTAL_ISSUER: xua_cert.name}
        if kind == "registry":
            issuers[LOADER_ISSUER] = "loader-xua.pem"
        path = folder / f"xua-trust-{kind}.toml"
        path.write_text(trust_file_text(audience, issuers, exempt), encoding="utf-8")
        trust_files[kind] = path
    return RegionCredentials(xua_key, xua_cert, PORTAL_ISSUER, trust_files)


def loader_security(data_dir: Path, audience: str, organisation: str):
    """``SoapClient.security_provider`` of the demo data loader (a system user of ``organisation``), or None
    when the region has no credentials (started without them)."""
    from ihe.xua.assertion import NodeSigner, build_assertion, security_header
    from ihe.xua.model import HL7_PURPOSE_OF_USE, SNOMED_CT, Code, XuaSubject

    folder = data_dir / "security"
    key, cert = folder / "loader-xua.key", folder / "loader-xua.pem"
    if not (key.exists() and cert.exists()):
        return None
    signer = NodeSigner(LOADER_ISSUER, key.read_bytes(), cert.read_bytes())
    subject = XuaSubject(name_id="demo-data-loader", subject_id="xds-local demo data loader",
                         organization=organisation, organization_id=LOADER_ISSUER,
                         role=Code("224608005", SNOMED_CT, "Administrative healthcare staff", "SNOMED_CT"),
                         purpose_of_use=Code("OPERATIONS", HL7_PURPOSE_OF_USE, "Healthcare Operations",
                                             "nhin-purpose"))

    def provide(url: str, action: str) -> bytes | None:
        """Only its registry queries: its ITI-41 goes as a node's (exempt at the repositories)."""
        if action != ACTION_ITI18:
            return None
        return security_header(build_assertion(subject, signer, audience=audience))

    return provide
