"""Per-endpoint XUA policy: whether an assertion is required, and whom and what to trust.

The trust store is a TOML file, so every service reads the same kind of file::

    audience = "urn:oid:2.16.840.1.113883.2.1.4.1"      # the affinity domain
    clock_skew_seconds = 60
    exempt_actions = ["urn:ihe:iti:2007:RegisterDocumentSet-b"]  # node-to-node, mutual TLS only
    authn_contexts = ["urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"]
    [issuers]                                           # SAML Issuer -> its signing certificate (PEM)
    "urn:oid:1.3.6.1.4.1.21367.2026.9.1" = "portal.pem" # relative to this file

Only the certificates named here verify signatures; a certificate inside the assertion's KeyInfo
is never used, so an attacker's self-made certificate gets nowhere.
"""

from __future__ import annotations

import argparse
import enum
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import xmlsec
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding

from ihe.xua.model import (
    AC_PASSWORD_PROTECTED_TRANSPORT,
    ATTR_ORGANIZATION,
    ATTR_ORGANIZATION_ID,
    ATTR_PURPOSE_OF_USE,
    ATTR_ROLE,
    ATTR_SUBJECT_ID,
    XuaFailure,
)

DEFAULT_AUTHN_CONTEXTS = frozenset({
    AC_PASSWORD_PROTECTED_TRANSPORT,
    "urn:oasis:names:tc:SAML:2.0:ac:classes:X509",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:TLSClient",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:SmartcardPKI",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:MobileTwoFactorContract",
    "urn:oasis:names:tc:SAML:2.0:ac:classes:TimeSyncToken",
})
DEFAULT_REQUIRED_ATTRIBUTES = (ATTR_SUBJECT_ID, ATTR_ORGANIZATION, ATTR_ORGANIZATION_ID, ATTR_ROLE,
                               ATTR_PURPOSE_OF_USE)
DEFAULT_MAX_ASSERTION_BYTES = 32 * 1024
MIN_RSA_BITS = 2048


class XuaMode(enum.StrEnum):
    OFF = "off"  # assertions are not looked at (mutual TLS alone, an explicit choice)
    OPTIONAL = "optional"  # an assertion, when sent, must be valid
    REQUIRED = "required"  # every request carries a valid assertion


class XuaConfigError(ValueError):
    """The XUA configuration cannot be used; the message says what to fix."""


class XuaModeError(argparse.ArgumentTypeError, ValueError):
    """An unknown ``--xua`` value (argparse shows this message)."""


def xua_mode(value: str) -> XuaMode:
    """argparse type of ``--xua``."""
    try:
        return XuaMode(str(value).strip().lower())
    except ValueError:
        raise XuaModeError(f"--xua must be required, optional or off, not {value!r}") from None


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    name: str
    cert_pem: bytes
    not_after: datetime
    key: xmlsec.Key  # the certificate's public key, loaded once


@dataclass(slots=True)
class XuaPolicy:
    mode: XuaMode
    audience: str
    issuers: dict[str, TrustedIssuer]
    authn_contexts: frozenset[str] = DEFAULT_AUTHN_CONTEXTS
    required_attributes: tuple[str, ...] = DEFAULT_REQUIRED_ATTRIBUTES
    clock_skew: timedelta = timedelta(seconds=60)
    max_lifetime: timedelta = timedelta(hours=1)
    max_assertion_bytes: int = DEFAULT_MAX_ASSERTION_BYTES
    # SOAP actions answered without an assertion even when required, e.g. ITI-42 from repositories that
    # authenticate as nodes by mutual TLS (an explicit choice in the trust file, ``exempt_actions``).
    exempt_actions: frozenset[str] = frozenset()
    # Called with every refusal; the ATNA audit wires its security alert here.
    on_failure: list[Callable[[XuaFailure], None]] = field(default_factory=list)


def trusted_issuer(name: str, cert_pem: bytes) -> TrustedIssuer:
    """Check a trust-store certificate once, at start: an RSA key of at least 2048 bits."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise XuaConfigError(f"the certificate of XUA issuer {name!r} is not a PEM certificate: {exc}") from None
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        raise XuaConfigError(f"the certificate of XUA issuer {name!r} must hold an RSA key of at least "
                             f"{MIN_RSA_BITS} bits")
    pem = cert.public_bytes(Encoding.PEM)
    return TrustedIssuer(name, pem, cert.not_valid_after_utc,
                         xmlsec.Key.from_memory(pem, xmlsec.constants.KeyDataFormatCertPem))


def policy_problem(mode: XuaMode | str | None, trust_file: Path | None) -> str | None:
    """Why ``--xua`` / ``--xua-trust`` cannot be used (checked at start, one line), or None."""
    try:
        load_policy(mode, trust_file)
    except (XuaConfigError, ValueError) as exc:
        return str(exc)
    return None


def load_policy(mode: XuaMode | str | None, trust_file: Path | None) -> XuaPolicy | None:
    """The policy of a service from its ``--xua`` and ``--xua-trust`` options; None when off."""
    mode = xua_mode(mode or XuaMode.OFF)
    if mode is XuaMode.OFF:
        return None
    if trust_file is None:
        raise XuaConfigError(f"--xua {mode} needs --xua-trust: a TOML file naming the audience and the trusted "
                             "issuers' certificates")
    try:
        with open(trust_file, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise XuaConfigError(f"cannot read the XUA trust file {trust_file}: {exc}") from None
    audience = data.get("audience")
    issuers = data.get("issuers")
    if not isinstance(audience, str) or not audience:
        raise XuaConfigError(f"{trust_file}: 'audience' (the affinity domain, e.g. urn:oid:...) is required")
    if not isinstance(issuers, dict) or not issuers:
        raise XuaConfigError(f"{trust_file}: an [issuers] table (SAML Issuer = certificate PEM file) is required")
    trusted = {}
    for name, cert_path in issuers.items():
        path = Path(trust_file).parent / str(cert_path)
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise XuaConfigError(f"{trust_file}: the certificate of issuer {name!r}: {exc}") from None
        trusted[name] = trusted_issuer(name, pem)
        if trusted[name].not_after < datetime.now(UTC):
            raise XuaConfigError(f"{trust_file}: the certificate of issuer {name!r} expired on "
                                 f"{trusted[name].not_after:%Y-%m-%d}")
    policy = XuaPolicy(mode=mode, audience=audience, issuers=trusted)
    if "authn_contexts" in data:
        policy.authn_contexts = frozenset(str(c) for c in data["authn_contexts"])
    if "required_attributes" in data:
        policy.required_attributes = tuple(str(a) for a in data["required_attributes"])
    if "clock_skew_seconds" in data:
        policy.clock_skew = timedelta(seconds=int(data["clock_skew_seconds"]))
    if "exempt_actions" in data:
        policy.exempt_actions = frozenset(str(a) for a in data["exempt_actions"])
    if "max_assertion_bytes" in data:
        policy.max_assertion_bytes = int(data["max_assertion_bytes"])
    return policy
