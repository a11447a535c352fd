"""Validate an XUA assertion: the one place that decides whether a caller's identity is believed.

The checks follow the known ways of getting a forged identity past a SAML consumer: the assertion
is found by absolute path and must be the only one in the message (signature wrapping); its one
enveloped signature must reference exactly it, with only the enveloped-signature and exc-c14n
transforms (no XPath / XSLT); the key comes from the trust store by Issuer, never from KeyInfo;
comments are refused, so a value read is always the value signed. Every refusal says why.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

import xmlsec
from lxml import etree

from ihe.namespaces import SOAP12, qn
from ihe.xml import XMLRejected, parse_xml
from ihe.xua.model import (
    ALG_ENVELOPED,
    ALG_EXC_C14N,
    ALG_RSA_SHA256,
    ATTR_ORGANIZATION,
    ATTR_ORGANIZATION_ID,
    ATTR_PURPOSE_OF_USE,
    ATTR_RESOURCE_ID,
    ATTR_ROLE,
    ATTR_SUBJECT_ID,
    CONFIRMATION_METHODS,
    DIGESTS,
    DS,
    EC,
    FAILED_AUTHENTICATION,
    HL7,
    INVALID_SECURITY,
    INVALID_SECURITY_TOKEN,
    SAML,
    SNOMED_CT,
    WSSE,
    Code,
    XuaError,
    XuaIdentity,
)
from ihe.xua.policy import TrustedIssuer, XuaPolicy

ASSERTION = qn(SAML, "Assertion")
SECURITY = qn(WSSE, "Security")
SIGNATURE = qn(DS, "Signature")
_NCNAME = re.compile(r"^[A-Za-z_][\w.\-]*$")
_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")
_CX_ISO = re.compile(r"^[^\^&\s]+\^\^\^&[0-2](\.(0|[1-9]\d*))+&ISO$")
_SCTID = re.compile(r"^[1-9]\d{5,17}$")
_ALLOWED_TRANSFORMS = ([ALG_ENVELOPED], [ALG_ENVELOPED, ALG_EXC_C14N])
_STATEMENTS = frozenset({qn(SAML, "AuthnStatement"), qn(SAML, "AttributeStatement")})


def _refuse(reason: str) -> XuaError:
    return XuaError(INVALID_SECURITY, reason)


def _token(reason: str) -> XuaError:
    return XuaError(INVALID_SECURITY_TOKEN, reason)


def _elements(parent: etree._Element) -> list[etree._Element]:
    """Element children; any stray text between them is refused (nothing signed hides there)."""
    children = []
    if parent.text and parent.text.strip():
        raise _refuse(f"unexpected text inside {etree.QName(parent).localname}")
    for child in parent:
        if not isinstance(child.tag, str):
            raise _refuse("comments and processing instructions are not accepted in the assertion")
        if child.tail and child.tail.strip():
            raise _refuse(f"unexpected text after {etree.QName(child).localname}")
        children.append(child)
    return children


def _text(element: etree._Element, what: str) -> str:
    """The whole text of a simple element, which must have no child nodes at all."""
    if len(element):
        raise _token(f"{what} must be plain text")
    value = (element.text or "").strip()
    if not value:
        raise _token(f"{what} is empty")
    return value


def _datetime(value: str | None, what: str) -> datetime:
    if not value:
        raise _refuse(f"{what} is missing")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _refuse(f"{what} {value!r} is not an xs:dateTime") from None
    if moment.tzinfo is None:
        raise _refuse(f"{what} {value!r} has no time zone (SAML times are UTC)")
    return moment


def has_security_token(root: etree._Element) -> bool:
    """Whether a message carries anything XUA would have to look at (for ``optional`` endpoints)."""
    if root.tag == qn(SOAP12, "Envelope"):
        header = root.find(qn(SOAP12, "Header"))
        if header is not None and header.find(SECURITY) is not None:
            return True
    return next(root.iter(ASSERTION), None) is not None


def locate_assertion(root: etree._Element) -> etree._Element:
    """The assertion at /Envelope/Header/Security/Assertion (or /Security/Assertion, or /Assertion),
    which must be the only saml:Assertion in the whole document."""
    if root.getparent() is not None:
        raise _refuse("the assertion must be looked up from the document root")
    if root.tag == qn(SOAP12, "Envelope"):
        headers = root.findall(qn(SOAP12, "Header"))
        if len(headers) != 1:
            raise _refuse("the SOAP Envelope must have exactly one Header")
        securities = headers[0].findall(SECURITY)
        if len(securities) != 1:
            raise _refuse("the SOAP Header must carry exactly one wsse:Security header with the XUA assertion "
                          f"(found {len(securities)})")
        security = securities[0]
    elif root.tag == SECURITY:
        security = root
    elif root.tag == ASSERTION:
        security = None
    else:
        raise _refuse(f"expected a SOAP Envelope, wsse:Security or saml:Assertion, not {root.tag}")
    if security is not None:
        candidates = security.findall(ASSERTION)
        if len(candidates) != 1:
            raise _refuse(f"wsse:Security must hold exactly one saml:Assertion (found {len(candidates)})")
        assertion = candidates[0]
    else:
        assertion = root
    total = sum(1 for _ in root.iter(ASSERTION))
    if total != 1:
        raise _refuse(f"the message holds {total} saml:Assertion elements; exactly one, in wsse:Security, is accepted")
    return assertion


_SAME_ID = etree.XPath("//@*[local-name()='ID' or local-name()='Id' or local-name()='id'][normalize-space(.) = $v]")


def _check_unique_id(root: etree._Element, assertion: etree._Element, assertion_id: str) -> None:
    for attribute in _SAME_ID(root, v=assertion_id):
        owner = attribute.getparent()
        if owner is not assertion:
            raise _refuse(f"the assertion's ID {assertion_id!r} is used by another element "
                          f"({etree.QName(owner).localname}) too")


def _one(parent: etree._Element, tag: str, what: str) -> etree._Element:
    found = [c for c in parent if c.tag == tag]
    if len(found) != 1:
        raise _refuse(f"{what} must appear exactly once (found {len(found)})")
    return found[0]


def _check_signature_shape(signature: etree._Element, assertion_id: str) -> None:
    """One Reference to the assertion, exc-c14n, RSA-SHA256, SHA-2 digest, no other transforms."""
    children = _elements(signature)
    tags = [c.tag for c in children]
    if tags not in ([qn(DS, "SignedInfo"), qn(DS, "SignatureValue")],
                    [qn(DS, "SignedInfo"), qn(DS, "SignatureValue"), qn(DS, "KeyInfo")]):
        raise _refuse("ds:Signature must be SignedInfo, SignatureValue and an optional KeyInfo (no ds:Object)")
    signed_info = children[0]
    parts = _elements(signed_info)
    if [p.tag for p in parts[:2]] != [qn(DS, "CanonicalizationMethod"), qn(DS, "SignatureMethod")]:
        raise _refuse("ds:SignedInfo must start with CanonicalizationMethod and SignatureMethod")
    c14n, method, references = parts[0], parts[1], parts[2:]
    if c14n.get("Algorithm") != ALG_EXC_C14N:
        raise _refuse(f"the signature's canonicalization must be exclusive c14n, not {c14n.get('Algorithm')!r}")
    if any(c.tag != qn(EC, "InclusiveNamespaces") for c in _elements(c14n)):
        raise _refuse("unexpected content in ds:CanonicalizationMethod")
    if method.get("Algorithm") != ALG_RSA_SHA256 or _elements(method):
        raise _refuse(f"the signature method must be RSA-SHA256, not {method.get('Algorithm')!r}")
    if len(references) != 1 or references[0].tag != qn(DS, "Reference"):
        raise _refuse(f"the signature must have exactly one ds:Reference (found {len(references)})")
    reference = references[0]
    if reference.get("URI") != "#" + assertion_id:
        raise _refuse(f"the signature's Reference URI {reference.get('URI')!r} is not the assertion's ID "
                      f"'#{assertion_id}'")
    ref_parts = _elements(reference)
    if [p.tag for p in ref_parts] != [qn(DS, "Transforms"), qn(DS, "DigestMethod"), qn(DS, "DigestValue")]:
        raise _refuse("ds:Reference must be Transforms, DigestMethod and DigestValue")
    transforms = _elements(ref_parts[0])
    algorithms = [t.get("Algorithm") for t in transforms]
    if any(t.tag != qn(DS, "Transform") for t in transforms) or algorithms not in _ALLOWED_TRANSFORMS:
        raise _refuse("only the enveloped-signature and exclusive c14n transforms are accepted, found "
                      + ", ".join(str(a) for a in algorithms))
    for t in transforms:
        if any(c.tag != qn(EC, "InclusiveNamespaces") for c in _elements(t)) or (
                t.get("Algorithm") == ALG_ENVELOPED and len(t)):
            raise _refuse("unexpected content in ds:Transform")
    if ref_parts[1].get("Algorithm") not in DIGESTS or _elements(ref_parts[1]):
        raise _refuse(f"the digest must be SHA-256 or stronger, not {ref_parts[1].get('Algorithm')!r}")


def _verify(signature: etree._Element, assertion: etree._Element, issuer: TrustedIssuer) -> None:
    """Cryptographic check with the issuer's configured certificate; KeyInfo is never read."""
    ctx = xmlsec.SignatureContext()
    try:
        ctx.key = issuer.key  # copied into the context by xmlsec
        ctx.set_enabled_key_data([])
        for transform in (xmlsec.constants.TransformEnveloped, xmlsec.constants.TransformExclC14N,
                          xmlsec.constants.TransformSha256, xmlsec.constants.TransformSha384,
                          xmlsec.constants.TransformSha512):
            ctx.enable_reference_transform(transform)
        ctx.enable_signature_transform(xmlsec.constants.TransformExclC14N)
        ctx.enable_signature_transform(xmlsec.constants.TransformRsaSha256)
        ctx.register_id(assertion, "ID")
        ctx.verify(signature)
    except xmlsec.Error:
        raise XuaError(FAILED_AUTHENTICATION, f"the assertion's signature does not verify with the certificate "
                       f"trusted for issuer {issuer.name!r}") from None


def _check_conditions(conditions: etree._Element, policy: XuaPolicy, now: datetime) -> datetime:
    not_before = _datetime(conditions.get("NotBefore"), "Conditions/@NotBefore")
    not_on_or_after = _datetime(conditions.get("NotOnOrAfter"), "Conditions/@NotOnOrAfter")
    if not_on_or_after - not_before > policy.max_lifetime:
        raise _token(f"the assertion is valid for {not_on_or_after - not_before}, longer than the "
                     f"{policy.max_lifetime} accepted")
    if now + policy.clock_skew < not_before:
        raise _token(f"the assertion is not valid before {conditions.get('NotBefore')}")
    if now - policy.clock_skew >= not_on_or_after:
        raise _token(f"the assertion expired at {conditions.get('NotOnOrAfter')}")
    restrictions = 0
    for condition in _elements(conditions):
        if condition.tag == qn(SAML, "AudienceRestriction"):
            restrictions += 1
            audiences = [_text(a, "Audience") for a in _elements(condition) if a.tag == qn(SAML, "Audience")]
            if policy.audience not in audiences:
                raise XuaError(INVALID_SECURITY_TOKEN, f"the assertion's audience {', '.join(audiences) or '(none)'} "
                               f"is not this affinity domain {policy.audience}", http_status=403)
        elif condition.tag not in (qn(SAML, "OneTimeUse"), qn(SAML, "ProxyRestriction")):
            raise _token(f"unsupported condition {etree.QName(condition).localname}")
    if not restrictions:
        raise _token(f"the assertion has no AudienceRestriction; this affinity domain is {policy.audience}")
    return not_on_or_after


def _check_subject(subject: etree._Element, policy: XuaPolicy, now: datetime) -> str:
    children = _elements(subject)
    name_ids = [c for c in children if c.tag == qn(SAML, "NameID")]
    if len(name_ids) != 1:
        raise _refuse("saml:Subject must hold exactly one NameID")
    confirmations = [c for c in children if c.tag == qn(SAML, "SubjectConfirmation")]
    if not confirmations or len(confirmations) + 1 != len(children):
        raise _refuse("saml:Subject must be a NameID and SubjectConfirmation elements")
    for confirmation in confirmations:
        if confirmation.get("Method") not in CONFIRMATION_METHODS:
            raise _token(f"unsupported SubjectConfirmation Method {confirmation.get('Method')!r}")
        for data in confirmation.findall(qn(SAML, "SubjectConfirmationData")):
            if data.get("NotOnOrAfter") and now - policy.clock_skew >= _datetime(
                    data.get("NotOnOrAfter"), "SubjectConfirmationData/@NotOnOrAfter"):
                raise _token(f"the subject confirmation expired at {data.get('NotOnOrAfter')}")
    return _text(name_ids[0], "saml:NameID")


def _check_authn(statement: etree._Element, policy: XuaPolicy, now: datetime) -> str:
    instant = _datetime(statement.get("AuthnInstant"), "AuthnStatement/@AuthnInstant")
    if instant > now + policy.clock_skew:
        raise _token("the user's authentication instant is in the future")
    context = [c for c in _elements(statement) if c.tag == qn(SAML, "AuthnContext")]
    refs = [r for c in context for r in _elements(c) if r.tag == qn(SAML, "AuthnContextClassRef")]
    if len(refs) != 1:
        raise _refuse("AuthnStatement must name exactly one AuthnContextClassRef")
    value = _text(refs[0], "AuthnContextClassRef")
    if value not in policy.authn_contexts:
        raise _token(f"authentication context {value!r} is not accepted here")
    return value


def _single_value(attribute: etree._Element, name: str) -> etree._Element:
    values = _elements(attribute)
    if len(values) != 1 or values[0].tag != qn(SAML, "AttributeValue"):
        raise _token(f"attribute {name} must have exactly one AttributeValue")
    return values[0]


def _code(attribute: etree._Element, name: str, element: str) -> Code:
    value = _single_value(attribute, name)
    inner = _elements(value)
    if len(inner) != 1 or inner[0].tag != qn(HL7, element):
        raise _token(f"attribute {name} must hold one hl7:{element} (CE)")
    ce = inner[0]
    code, system = ce.get("code", "").strip(), ce.get("codeSystem", "").strip()
    if not code or not _OID.match(system):
        raise _token(f"hl7:{element} in {name} needs a code and a codeSystem OID")
    return Code(code, system, ce.get("displayName"), ce.get("codeSystemName"))


def _check_attributes(statement: etree._Element, policy: XuaPolicy) -> dict[str, object]:
    attributes: dict[str, etree._Element] = {}
    for attribute in _elements(statement):
        if attribute.tag != qn(SAML, "Attribute"):
            raise _token(f"unexpected {etree.QName(attribute).localname} in AttributeStatement")
        name = attribute.get("Name", "")
        if name in attributes:
            raise _token(f"attribute {name} appears more than once")
        attributes[name] = attribute
    missing = [n for n in policy.required_attributes if n not in attributes]
    if missing:
        raise _token("required attributes missing: " + ", ".join(missing))
    found: dict[str, object] = {}
    for name in (ATTR_SUBJECT_ID, ATTR_ORGANIZATION, ATTR_ORGANIZATION_ID, ATTR_RESOURCE_ID):
        if name in attributes:
            found[name] = _text(_single_value(attributes[name], name), name)
    org_id = found.get(ATTR_ORGANIZATION_ID)
    if isinstance(org_id, str) and org_id.startswith("urn:oid:") and not _OID.match(org_id[8:]):
        raise _token(f"{ATTR_ORGANIZATION_ID} {org_id!r} is not a valid urn:oid")
    resource = found.get(ATTR_RESOURCE_ID)
    if isinstance(resource, str) and not _CX_ISO.match(resource):
        raise _token(f"{ATTR_RESOURCE_ID} {resource!r} is not a patient id (CX) with an ISO assigning authority")
    if ATTR_ROLE in attributes:
        role = _code(attributes[ATTR_ROLE], ATTR_ROLE, "Role")
        if role.code_system != SNOMED_CT or not _SCTID.match(role.code):
            raise _token(f"the role must be a SNOMED CT code (codeSystem {SNOMED_CT}), not {role.code}@"
                         f"{role.code_system}")
        found[ATTR_ROLE] = role
    if ATTR_PURPOSE_OF_USE in attributes:
        found[ATTR_PURPOSE_OF_USE] = _code(attributes[ATTR_PURPOSE_OF_USE], ATTR_PURPOSE_OF_USE, "PurposeOfUse")
    return found


def _root(source: etree._Element | bytes, policy: XuaPolicy) -> etree._Element:
    if isinstance(source, bytes | bytearray):
        try:
            return parse_xml(bytes(source), max_bytes=policy.max_assertion_bytes)
        except XMLRejected as exc:
            raise _refuse(f"the assertion is not acceptable XML: {exc.reason}") from None
    return source.getroottree().getroot()


def validate_assertion(source: etree._Element | bytes, policy: XuaPolicy, *,
                       now: datetime | None = None) -> XuaIdentity:
    """Check the XUA assertion of a SOAP envelope, a wsse:Security header or a bare assertion
    (element, or bytes parsed here by the hardened parser); raise :class:`XuaError` on any doubt."""
    now = now or datetime.now(UTC)
    root = _root(source, policy)
    assertion = locate_assertion(root)
    if any(True for _ in assertion.iter(etree.Comment, etree.ProcessingInstruction)):
        raise _refuse("comments and processing instructions are not accepted in the assertion")
    size = len(etree.tostring(assertion))
    if size > policy.max_assertion_bytes:
        raise _refuse(f"the assertion of {size} bytes exceeds the limit of {policy.max_assertion_bytes} bytes")
    if assertion.get("Version") != "2.0":
        raise _refuse(f"saml:Assertion Version must be 2.0, not {assertion.get('Version')!r}")
    assertion_id = assertion.get("ID") or ""
    if not _NCNAME.match(assertion_id):
        raise _refuse(f"saml:Assertion ID {assertion_id!r} is not an xs:ID")
    issued = _datetime(assertion.get("IssueInstant"), "Assertion/@IssueInstant")
    children = _elements(assertion)
    head = [c.tag for c in children[:4]]
    if head != [qn(SAML, "Issuer"), SIGNATURE, qn(SAML, "Subject"), qn(SAML, "Conditions")]:
        if next(assertion.iter(SIGNATURE), None) is None:
            raise _refuse("the assertion is not signed")
        raise _refuse("saml:Assertion must be Issuer, ds:Signature, Subject, Conditions, then its statements")
    statements = children[4:]
    if any(s.tag not in _STATEMENTS for s in statements):
        raise _refuse("saml:Assertion may hold only AuthnStatement and AttributeStatement after Conditions")
    authn = [s for s in statements if s.tag == qn(SAML, "AuthnStatement")]
    attrs = [s for s in statements if s.tag == qn(SAML, "AttributeStatement")]
    if len(authn) != 1 or len(attrs) != 1:
        raise _refuse("saml:Assertion must hold exactly one AuthnStatement and one AttributeStatement")
    signature = children[1]
    if sum(1 for _ in assertion.iter(SIGNATURE)) != 1:
        raise _refuse("the assertion must hold exactly one ds:Signature")
    _check_unique_id(root, assertion, assertion_id)
    _check_signature_shape(signature, assertion_id)
    issuer_name = _text(children[0], "saml:Issuer")
    issuer = policy.issuers.get(issuer_name)
    if issuer is None:
        raise XuaError(FAILED_AUTHENTICATION, f"issuer {issuer_name!r} is not in this service's XUA trust store")
    if issuer.not_after < now:
        raise XuaError(FAILED_AUTHENTICATION, f"the certificate trusted for issuer {issuer_name!r} has expired")
    _verify(signature, assertion, issuer)
    # From here on every value read is covered by the verified signature.
    not_on_or_after = _check_conditions(children[3], policy, now)
    if issued > now + policy.clock_skew:
        raise _token(f"the assertion was issued in the future ({assertion.get('IssueInstant')})")
    name_id = _check_subject(children[2], policy, now)
    authn_context = _check_authn(authn[0], policy, now)
    found = _check_attributes(attrs[0], policy)
    return XuaIdentity(
        issuer=issuer_name,
        assertion_id=assertion_id,
        name_id=name_id,
        subject_id=str(found.get(ATTR_SUBJECT_ID, "")),
        organization=str(found.get(ATTR_ORGANIZATION, "")),
        organization_id=str(found.get(ATTR_ORGANIZATION_ID, "")),
        role=found.get(ATTR_ROLE),  # type: ignore[arg-type]
        purpose_of_use=found.get(ATTR_PURPOSE_OF_USE),  # type: ignore[arg-type]
        resource_id=found.get(ATTR_RESOURCE_ID),  # type: ignore[arg-type]
        authn_context=authn_context,
        not_on_or_after=not_on_or_after,
    )
