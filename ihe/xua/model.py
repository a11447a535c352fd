"""XUA vocabulary (SAML 2.0, XSPA / XACML attribute names, WS-Security fault codes) and plain data types."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ihe.namespaces import qn

SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
EC = "http://www.w3.org/2001/10/xml-exc-c14n#"
HL7 = "urn:hl7-org:v3"
XS = "http://www.w3.org/2001/XMLSchema"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"

# Attribute names of the IHE XUA profile (XSPA SAML profile and XACML 2.0).
ATTR_SUBJECT_ID = "urn:oasis:names:tc:xspa:1.0:subject:subject-id"
ATTR_ORGANIZATION = "urn:oasis:names:tc:xspa:1.0:subject:organization"
ATTR_ORGANIZATION_ID = "urn:oasis:names:tc:xspa:1.0:subject:organization-id"
ATTR_ROLE = "urn:oasis:names:tc:xacml:2.0:subject:role"
ATTR_PURPOSE_OF_USE = "urn:oasis:names:tc:xspa:1.0:subject:purposeofuse"
ATTR_RESOURCE_ID = "urn:oasis:names:tc:xacml:2.0:resource:resource-id"
ATTRNAME_FORMAT_URI = "urn:oasis:names:tc:SAML:2.0:attrname-format:uri"

SNOMED_CT = "2.16.840.1.113883.6.96"
HL7_PURPOSE_OF_USE = "2.16.840.1.113883.3.18.7.1"

NAMEID_UNSPECIFIED = "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified"
CONFIRMATION_BEARER = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
CONFIRMATION_METHODS = frozenset({
    CONFIRMATION_BEARER,
    "urn:oasis:names:tc:SAML:2.0:cm:sender-vouches",
    "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key",
})
AC_PASSWORD_PROTECTED_TRANSPORT = "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport"

# XML Signature algorithms: the only ones a valid assertion may use.
ALG_EXC_C14N = "http://www.w3.org/2001/10/xml-exc-c14n#"
ALG_ENVELOPED = "http://www.w3.org/2000/09/xmldsig#enveloped-signature"
ALG_RSA_SHA256 = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"
DIGESTS = frozenset({
    "http://www.w3.org/2001/04/xmlenc#sha256",
    "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512",
})

# WS-Security 1.0 fault subcodes (SOAP Message Security 1.0, section 12).
INVALID_SECURITY = qn(WSSE, "InvalidSecurity")  # the Security header is missing, malformed or ambiguous
INVALID_SECURITY_TOKEN = qn(WSSE, "InvalidSecurityToken")  # a well-formed, signed token whose content is refused
FAILED_AUTHENTICATION = qn(WSSE, "FailedAuthentication")  # the signature or its signer is not trusted


@dataclass(frozen=True, slots=True)
class Code:
    """An HL7 v3 CE coded value (Role, PurposeOfUse)."""

    code: str
    code_system: str
    display_name: str | None = None
    code_system_name: str | None = None


@dataclass(frozen=True, slots=True)
class XuaSubject:
    """What an assertion says about a signed-in user (the input of the portal's builder)."""

    name_id: str  # the user's login at the issuing node
    subject_id: str  # the user's name, as people read it
    organization: str
    organization_id: str  # urn:oid:...
    role: Code  # SNOMED CT
    purpose_of_use: Code
    resource_id: str | None = None  # the patient, CX with an ISO assigning authority


@dataclass(frozen=True, slots=True)
class XuaIdentity:
    """A validated assertion: who is asking, for whom, why; handlers and the audit read this."""

    issuer: str
    assertion_id: str
    name_id: str
    subject_id: str
    organization: str
    organization_id: str
    role: Code | None  # None only when a policy does not require the attribute
    purpose_of_use: Code | None
    resource_id: str | None
    authn_context: str
    not_on_or_after: datetime


class XuaError(Exception):
    """An assertion is refused; ``reason`` is safe to send back, ``code`` is the WS-Security subcode."""

    def __init__(self, code: str, reason: str, *, http_status: int = 401) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.http_status = http_status  # on DICOMweb / WADO: 401 not authenticated, 403 not for this domain


@dataclass(frozen=True, slots=True)
class XuaFailure:
    """What failure hooks (the audit's security alert) are told about a refused request."""

    reason: str
    code: str  # WS-Security subcode in Clark notation
    endpoint: str  # request path
    remote: str | None  # peer address
    issuer: str | None = None  # as claimed by the refused assertion, if readable
    subject: str | None = None
