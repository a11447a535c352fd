"""Test keys and XUA assertions: node certificates made with ``cryptography`` when a fixture asks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from ihe.xua.assertion import NodeSigner
from ihe.xua.model import HL7_PURPOSE_OF_USE, SNOMED_CT, Code, XuaSubject

AUDIENCE = "urn:oid:2.16.840.1.113883.2.1.4.1"
PORTAL_ISSUER = "urn:oid:1.3.6.1.4.1.21367.2026.9.1"
PATIENT = "9434765919^^^&2.16.840.1.113883.2.1.4.1&ISO"
CLINICIAN = XuaSubject(
    name_id="dr.grey@hospa.example",
    subject_id="Meredith Grey",
    organization="Hospital A",
    organization_id="urn:oid:1.3.6.1.4.1.21367.2026.1.2",
    role=Code("309343006", SNOMED_CT, "Physician", "SNOMED_CT"),
    purpose_of_use=Code("TREATMENT", HL7_PURPOSE_OF_USE, "Treatment", "nhin-purpose"),
    resource_id=PATIENT,
)


def make_signer(issuer: str, common_name: str = "xua test node") -> NodeSigner:
    """A fresh RSA-2048 key and a self-signed certificate for ``issuer``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return NodeSigner(issuer, key_pem, cert.public_bytes(serialization.Encoding.PEM))


def write_trust_file(folder: Path, signers: list[NodeSigner], audience: str = AUDIENCE) -> Path:
    """A ``--xua-trust`` TOML file trusting ``signers``."""
    lines = [f'audience = "{audience}"', "clock_skew_seconds = 60", "[issuers]"]
    for i, signer in enumerate(signers):
        (folder / f"issuer{i}.pem").write_bytes(signer.cert_pem)
        lines.append(f'"{signer.issuer}" = "issuer{i}.pem"')
    path = folder / "xua-trust.toml"
    path.write_text("\n".join(lines) + "\n")
    return path
