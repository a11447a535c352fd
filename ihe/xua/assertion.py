"""Build and sign a SAML 2.0 assertion for a signed-in user (the X-Service User side of ITI-40).

The assertion is signed with the node's key: enveloped signature, exclusive c14n, RSA-SHA256,
SHA-256 digest, so it stays valid when copied into another message (a SOAP header, an HTTP header).
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import xmlsec
from lxml import etree

from ihe.namespaces import SOAP12, XSI, qn
from ihe.xua.model import (
    AC_PASSWORD_PROTECTED_TRANSPORT,
    ATTR_ORGANIZATION,
    ATTR_ORGANIZATION_ID,
    ATTR_PURPOSE_OF_USE,
    ATTR_RESOURCE_ID,
    ATTR_ROLE,
    ATTR_SUBJECT_ID,
    ATTRNAME_FORMAT_URI,
    CONFIRMATION_BEARER,
    HL7,
    NAMEID_UNSPECIFIED,
    SAML,
    WSSE,
    XS,
    Code,
    XuaSubject,
)

DEFAULT_LIFETIME = timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class NodeSigner:
    """The issuing node: its SAML Issuer name, private key and certificate (PEM)."""

    issuer: str
    key_pem: bytes
    cert_pem: bytes


def xml_datetime(moment: datetime) -> str:
    """xs:dateTime in UTC with a Z, as SAML requires."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _attribute(statement: etree._Element, name: str) -> etree._Element:
    attr = etree.SubElement(statement, qn(SAML, "Attribute"), Name=name, NameFormat=ATTRNAME_FORMAT_URI)
    return etree.SubElement(attr, qn(SAML, "AttributeValue"))


def _string_attribute(statement: etree._Element, name: str, value: str) -> None:
    element = _attribute(statement, name)
    element.set(qn(XSI, "type"), "xs:string")
    element.text = value


def _code_attribute(statement: etree._Element, name: str, element: str, code: Code) -> None:
    ce = etree.SubElement(_attribute(statement, name), qn(HL7, element), nsmap={"hl7": HL7})
    ce.set(qn(XSI, "type"), "CE")
    ce.set("code", code.code)
    ce.set("codeSystem", code.code_system)
    if code.code_system_name:
        ce.set("codeSystemName", code.code_system_name)
    if code.display_name:
        ce.set("displayName", code.display_name)


def build_unsigned(subject: XuaSubject, *, issuer: str, audience: str, lifetime: timedelta = DEFAULT_LIFETIME,
                   now: datetime | None = None, authn_context: str = AC_PASSWORD_PROTECTED_TRANSPORT,
                   authn_instant: datetime | None = None) -> etree._Element:
    """The assertion without its signature (tests alter it before signing)."""
    now = now or datetime.now(UTC)
    assertion = etree.Element(qn(SAML, "Assertion"), nsmap={"saml": SAML, "xs": XS, "xsi": XSI},
                              ID=f"_{uuid.uuid4().hex}", Version="2.0", IssueInstant=xml_datetime(now))
    etree.SubElement(assertion, qn(SAML, "Issuer")).text = issuer
    subj = etree.SubElement(assertion, qn(SAML, "Subject"))
    name_id = etree.SubElement(subj, qn(SAML, "NameID"), Format=NAMEID_UNSPECIFIED)
    name_id.text = subject.name_id
    confirmation = etree.SubElement(subj, qn(SAML, "SubjectConfirmation"), Method=CONFIRMATION_BEARER)
    etree.SubElement(confirmation, qn(SAML, "SubjectConfirmationData"), NotOnOrAfter=xml_datetime(now + lifetime))
    conditions = etree.SubElement(assertion, qn(SAML, "Conditions"), NotBefore=xml_datetime(now),
                                  NotOnOrAfter=xml_datetime(now + lifetime))
    restriction = etree.SubElement(conditions, qn(SAML, "AudienceRestriction"))
    etree.SubElement(restriction, qn(SAML, "Audience")).text = audience
    authn = etree.SubElement(assertion, qn(SAML, "AuthnStatement"), AuthnInstant=xml_datetime(authn_instant or now))
    context = etree.SubElement(authn, qn(SAML, "AuthnContext"))
    etree.SubElement(context, qn(SAML, "AuthnContextClassRef")).text = authn_context
    statement = etree.SubElement(assertion, qn(SAML, "AttributeStatement"))
    _string_attribute(statement, ATTR_SUBJECT_ID, subject.subject_id)
    _string_attribute(statement, ATTR_ORGANIZATION, subject.organization)
    _string_attribute(statement, ATTR_ORGANIZATION_ID, subject.organization_id)
    _code_attribute(statement, ATTR_ROLE, "Role", subject.role)
    _code_attribute(statement, ATTR_PURPOSE_OF_USE, "PurposeOfUse", subject.purpose_of_use)
    if subject.resource_id:
        _string_attribute(statement, ATTR_RESOURCE_ID, subject.resource_id)
    return assertion


def sign_assertion(assertion: etree._Element, signer: NodeSigner) -> etree._Element:
    """Add an enveloped ds:Signature after the Issuer (where the schema puts it) and sign in place."""
    signature = xmlsec.template.create(assertion, xmlsec.constants.TransformExclC14N,
                                       xmlsec.constants.TransformRsaSha256, ns="ds")
    assertion.insert(1, signature)
    ref = xmlsec.template.add_reference(signature, xmlsec.constants.TransformSha256, uri="#" + assertion.get("ID"))
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformEnveloped)
    xmlsec.template.add_transform(ref, xmlsec.constants.TransformExclC14N)
    xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
    ctx = xmlsec.SignatureContext()
    key = xmlsec.Key.from_memory(signer.key_pem, xmlsec.constants.KeyDataFormatPem)
    key.load_cert_from_memory(signer.cert_pem, xmlsec.constants.KeyDataFormatCertPem)
    ctx.key = key
    ctx.register_id(assertion, "ID")
    ctx.sign(signature)
    return assertion


def build_assertion(subject: XuaSubject, signer: NodeSigner, *, audience: str,
                    lifetime: timedelta = DEFAULT_LIFETIME, now: datetime | None = None,
                    authn_context: str = AC_PASSWORD_PROTECTED_TRANSPORT) -> bytes:
    """A signed assertion, serialized (serialize once: the bytes are what was signed)."""
    assertion = build_unsigned(subject, issuer=signer.issuer, audience=audience, lifetime=lifetime, now=now,
                               authn_context=authn_context)
    return etree.tostring(sign_assertion(assertion, signer))


def security_header(assertion: bytes) -> bytes:
    """The wsse:Security SOAP header carrying ``assertion`` (for :func:`ihe.soap.build_envelope_bytes`)."""
    return (f'<wsse:Security xmlns:wsse="{WSSE}" xmlns:soap="{SOAP12}" soap:mustUnderstand="true">'.encode()
            + assertion + b"</wsse:Security>")


def authorization_header(assertion: bytes) -> dict[str, str]:
    """The HTTP header carrying ``assertion`` on DICOMweb / WADO requests (IUA-style ``SAML`` scheme)."""
    return {"Authorization": "SAML " + base64.urlsafe_b64encode(assertion).decode("ascii")}
