"""XUA (ITI-40): a signed assertion for a signed-in user is accepted; every known way of forging
or stretching one is refused with a WS-Security fault code and a reason."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from lxml import etree

from ihe.http import SoapReply, SoapService
from ihe.namespaces import SOAP12, qn
from ihe.soap import parse_fault
from ihe.xml import parse_xml
from ihe.xua import XuaError, XuaMode, load_policy, validate_assertion
from ihe.xua import web as xua_web
from ihe.xua.assertion import authorization_header, build_assertion, build_unsigned, security_header, sign_assertion
from ihe.xua.model import (
    ATTR_ORGANIZATION,
    ATTR_SUBJECT_ID,
    DS,
    FAILED_AUTHENTICATION,
    INVALID_SECURITY,
    INVALID_SECURITY_TOKEN,
    SAML,
    WSSE,
)
from ihe.xua.policy import XuaConfigError
from tests.messages import ACTION_ITI18, FIND_DOCUMENTS, _strip_declaration, quoted, soap_envelope, stored_query_request
from tests.xua_keys import AUDIENCE, CLINICIAN, PATIENT, PORTAL_ISSUER, make_signer, write_trust_file

OTHER_ISSUER = "urn:oid:1.3.6.1.4.1.21367.2026.9.2"
QUERY = _strip_declaration(stored_query_request(FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": quoted(PATIENT),
                                              "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:"
                                              "StatusType:Approved')"}))


@pytest.fixture(scope="module")
def portal():
    return make_signer(PORTAL_ISSUER, "portal")


@pytest.fixture(scope="module")
def other_node():
    return make_signer(OTHER_ISSUER, "other node")


@pytest.fixture(scope="module")
def attacker():
    """Claims to be the portal, with its own key (and a certificate in KeyInfo)."""
    return make_signer(PORTAL_ISSUER, "portal")


@pytest.fixture(scope="module")
def policy(portal, other_node, tmp_path_factory):
    return load_policy("required", write_trust_file(tmp_path_factory.mktemp("xua"), [portal, other_node]))


def signed(signer, *, mutate=None, issuer=None, **kwargs) -> bytes:
    """A signed assertion; ``mutate`` changes the unsigned tree first."""
    assertion = build_unsigned(CLINICIAN, issuer=issuer or signer.issuer, audience=kwargs.pop("audience", AUDIENCE),
                               **kwargs)
    if mutate:
        mutate(assertion)
    return etree.tostring(sign_assertion(assertion, signer))


def envelope(assertion: bytes | None, *, extra_headers: bytes = b"", body: bytes = QUERY) -> bytes:
    security = security_header(assertion) if assertion is not None else b""
    return soap_envelope(ACTION_ITI18, body, extra_headers=security + extra_headers)


def check(data: bytes, policy, **kwargs):
    """Validate the way the services do: parse with the hardened parser, then look at the envelope."""
    return validate_assertion(parse_xml(data), policy, **kwargs)


def refused(data: bytes, policy, code: str, words: str, **kwargs) -> XuaError:
    with pytest.raises(XuaError) as info:
        check(data, policy, **kwargs)
    assert info.value.code == code, info.value.reason
    assert words in info.value.reason
    return info.value


def test_a_valid_assertion_gives_the_callers_identity(portal, policy):
    identity = check(envelope(build_assertion(CLINICIAN, portal, audience=AUDIENCE)), policy)
    assert identity.issuer == PORTAL_ISSUER
    assert identity.name_id == "dr.grey@hospa.example"
    assert identity.subject_id == "Meredith Grey"
    assert (identity.organization, identity.organization_id) == ("Hospital A", "urn:oid:1.3.6.1.4.1.21367.2026.1.2")
    assert (identity.role.code, identity.role.code_system) == ("309343006", "2.16.840.1.113883.6.96")
    assert identity.purpose_of_use.code == "TREATMENT"
    assert identity.resource_id == PATIENT
    assert identity.not_on_or_after > datetime.now(UTC)


def test_the_same_assertion_is_accepted_bare_and_in_a_security_header(portal, policy):
    assertion = build_assertion(CLINICIAN, portal, audience=AUDIENCE)
    assert validate_assertion(assertion, policy).name_id == CLINICIAN.name_id
    assert validate_assertion(security_header(assertion), policy).name_id == CLINICIAN.name_id


# --- signature wrapping -------------------------------------------------------------------------


def test_a_second_assertion_elsewhere_is_refused(portal, policy):
    good = build_assertion(CLINICIAN, portal, audience=AUDIENCE)
    evil = etree.tostring(build_unsigned(CLINICIAN, issuer=PORTAL_ISSUER, audience=AUDIENCE))
    refused(envelope(good, body=b"<x:Wrap xmlns:x='urn:x'>" + evil + QUERY + b"</x:Wrap>"), policy,
            INVALID_SECURITY, "2 saml:Assertion")
    refused(envelope(good, extra_headers=b"<x:Other xmlns:x='urn:x'>" + evil + b"</x:Other>"), policy,
            INVALID_SECURITY, "2 saml:Assertion")
    two = security_header(good)[:-len(b"</wsse:Security>")] + evil + b"</wsse:Security>"
    refused(soap_envelope(ACTION_ITI18, QUERY, extra_headers=two), policy, INVALID_SECURITY, "exactly one")
    refused(envelope(good, extra_headers=security_header(evil)), policy, INVALID_SECURITY, "exactly one wsse:Security")


def _evil_with_moved_original(good: bytes, where: str) -> bytes:
    """The classic wrapping attack: a forged assertion (another patient) at the expected path, carrying
    the genuine signature, with the genuine signed assertion moved into ds:Object or an Extensions element."""
    original = etree.fromstring(good)
    evil = etree.fromstring(good)
    evil.find(f"{{{SAML}}}Issuer").text = PORTAL_ISSUER
    for value in evil.iter(f"{{{SAML}}}AttributeValue"):
        if value.text == PATIENT:
            value.text = "9999999999^^^&2.16.840.1.113883.2.1.4.1&ISO"
    signature = evil.find(f"{{{DS}}}Signature")
    if where == "object":
        obj = etree.SubElement(signature, f"{{{DS}}}Object")
        obj.append(original)
    else:
        ext = etree.SubElement(evil, "{urn:oasis:names:tc:SAML:2.0:protocol}Extensions")
        ext.append(original)
    return etree.tostring(evil)


@pytest.mark.parametrize("where", ["object", "extensions"])
def test_the_signed_assertion_moved_under_a_forged_one_is_refused(portal, policy, where):
    forged = _evil_with_moved_original(build_assertion(CLINICIAN, portal, audience=AUDIENCE), where)
    error = refused(envelope(forged), policy, INVALID_SECURITY, "saml:Assertion")
    assert "2 saml:Assertion" in error.reason


def test_the_signed_assertion_moved_into_the_body_and_a_forged_one_in_its_place_is_refused(portal, policy):
    good = build_assertion(CLINICIAN, portal, audience=AUDIENCE)
    forged = etree.fromstring(good)
    forged.set("ID", "_forged")
    data = envelope(etree.tostring(forged), body=b"<x:Extensions xmlns:x='urn:x'>" + good + b"</x:Extensions>" + QUERY)
    refused(data, policy, INVALID_SECURITY, "2 saml:Assertion")
    # Alone (no second copy): the genuine signature's Reference names another ID.
    refused(envelope(etree.tostring(forged)), policy, INVALID_SECURITY, "is not the assertion's ID")


def test_a_reference_to_another_id_is_refused(portal, policy):
    good = etree.fromstring(build_assertion(CLINICIAN, portal, audience=AUDIENCE))
    good.find(f".//{{{DS}}}Reference").set("URI", "#_somewhere_else")
    refused(envelope(etree.tostring(good)), policy, INVALID_SECURITY, "Reference URI '#_somewhere_else'")
    good.find(f".//{{{DS}}}Reference").set("URI", "")  # the whole document
    refused(envelope(etree.tostring(good)), policy, INVALID_SECURITY, "Reference URI ''")


@pytest.mark.parametrize("attribute", ["ID", "Id", "{http://www.w3.org/XML/1998/namespace}id",
                                       "{http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-"
                                       "utility-1.0.xsd}Id"])
def test_a_duplicate_id_elsewhere_is_refused(portal, policy, attribute):
    good = build_assertion(CLINICIAN, portal, audience=AUDIENCE)
    assertion_id = etree.fromstring(good).get("ID")
    decoy = etree.Element("{urn:x}Decoy")
    decoy.set(attribute, assertion_id)
    refused(envelope(good, body=etree.tostring(decoy) + QUERY), policy, INVALID_SECURITY, "used by another element")


def test_two_signatures_or_a_signature_with_an_object_are_refused(portal, policy):
    good = etree.fromstring(build_assertion(CLINICIAN, portal, audience=AUDIENCE))
    copy = etree.fromstring(etree.tostring(good.find(f"{{{DS}}}Signature")))
    good.append(copy)
    refused(envelope(etree.tostring(good)), policy, INVALID_SECURITY, "AuthnStatement and AttributeStatement")
    good.remove(copy)
    good.find(f"{{{SAML}}}Subject").append(copy)
    refused(envelope(etree.tostring(good)), policy, INVALID_SECURITY, "exactly one ds:Signature")
    copy.getparent().remove(copy)
    etree.SubElement(good.find(f"{{{DS}}}Signature"), f"{{{DS}}}Object")
    refused(envelope(etree.tostring(good)), policy, INVALID_SECURITY, "no ds:Object")


# --- signature and signer ---------------------------------------------------------------------------


def test_an_unsigned_assertion_is_refused(policy):
    unsigned = etree.tostring(build_unsigned(CLINICIAN, issuer=PORTAL_ISSUER, audience=AUDIENCE))
    refused(envelope(unsigned), policy, INVALID_SECURITY, "not signed")


def test_an_assertion_signed_by_an_unknown_key_is_refused_whatever_its_keyinfo_says(attacker, policy):
    forged = build_assertion(CLINICIAN, attacker, audience=AUDIENCE)
    assert b"X509Certificate" in forged  # the attacker's certificate travels in KeyInfo, and is not used
    refused(envelope(forged), policy, FAILED_AUTHENTICATION, "does not verify")


def test_an_assertion_altered_after_signing_is_refused(portal, policy):
    good = build_assertion(CLINICIAN, portal, audience=AUDIENCE)
    assert b"Meredith Grey" in good
    refused(envelope(good.replace(b"Meredith Grey", b"Chief Admin")), policy, FAILED_AUTHENTICATION,
            "does not verify")
    refused(envelope(good.replace(PATIENT.replace("&", "&amp;").encode(),
                                  b"9999999999^^^&amp;2.16.840.1.113883.2.1.4.1&amp;ISO")),
            policy, FAILED_AUTHENTICATION, "does not verify")


def test_an_unknown_or_mismatched_issuer_is_refused(portal, policy):
    unknown = signed(portal, issuer="urn:oid:1.2.3.4")
    refused(envelope(unknown), policy, FAILED_AUTHENTICATION, "not in this service's XUA trust store")
    # Signed with the portal's key but naming another trusted node as Issuer: the key is the Issuer's only.
    impostor = signed(portal, issuer=OTHER_ISSUER)
    refused(envelope(impostor), policy, FAILED_AUTHENTICATION, f"issuer {OTHER_ISSUER!r}")


# --- time, audience, context, attributes --------------------------------------------------------------


def test_an_expired_assertion_is_refused_after_the_clock_skew(portal, policy):
    issued = datetime.now(UTC) - timedelta(minutes=5, seconds=30)  # expired 30 s ago: within the 60 s skew
    check(envelope(build_assertion(CLINICIAN, portal, audience=AUDIENCE, now=issued)), policy)
    issued = datetime.now(UTC) - timedelta(minutes=7)
    refused(envelope(build_assertion(CLINICIAN, portal, audience=AUDIENCE, now=issued)), policy,
            INVALID_SECURITY_TOKEN, "expired")


def test_a_not_yet_valid_assertion_is_refused(portal, policy):
    future = datetime.now(UTC) + timedelta(minutes=3)
    refused(envelope(signed(portal, now=future, authn_instant=datetime.now(UTC))), policy, INVALID_SECURITY_TOKEN,
            "not valid before")


def test_an_assertion_issued_in_the_future_is_refused(portal, policy):
    def backdate(assertion):  # valid window now, but IssueInstant an hour ahead
        assertion.set("IssueInstant", (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    refused(envelope(signed(portal, mutate=backdate)), policy, INVALID_SECURITY_TOKEN, "issued in the future")


def test_an_overlong_validity_is_refused(portal, policy):
    refused(envelope(signed(portal, lifetime=timedelta(days=1))), policy, INVALID_SECURITY_TOKEN, "longer than")


def test_a_wrong_audience_is_refused(portal, policy):
    error = refused(envelope(signed(portal, audience="urn:oid:1.2.826.0.1.99")), policy, INVALID_SECURITY_TOKEN,
                    "is not this affinity domain")
    assert error.http_status == 403


def test_an_authentication_context_outside_the_allow_list_is_refused(portal, policy):
    weak = signed(portal, authn_context="urn:oasis:names:tc:SAML:2.0:ac:classes:Password")
    refused(envelope(weak), policy, INVALID_SECURITY_TOKEN, "authentication context")


def _drop_attribute(name):
    def mutate(assertion):
        for attr in assertion.iter(f"{{{SAML}}}Attribute"):
            if attr.get("Name") == name:
                attr.getparent().remove(attr)
    return mutate


def _set_role(code, system):
    def mutate(assertion):
        role = next(assertion.iter("{urn:hl7-org:v3}Role"))
        role.set("code", code)
        role.set("codeSystem", system)
    return mutate


def _duplicate_attribute(name):
    def mutate(assertion):
        for attr in list(assertion.iter(f"{{{SAML}}}Attribute")):
            if attr.get("Name") == name:
                attr.addnext(etree.fromstring(etree.tostring(attr)))
    return mutate


@pytest.mark.parametrize("mutate, words", [
    (_drop_attribute(ATTR_SUBJECT_ID), "required attributes missing"),
    (_drop_attribute(ATTR_ORGANIZATION), "required attributes missing"),
    (_set_role("Doctor", "2.16.840.1.113883.6.96"), "SNOMED CT"),
    (_set_role("309343006", "2.16.840.1.113883.5.110"), "SNOMED CT"),
    (_duplicate_attribute(ATTR_SUBJECT_ID), "more than once"),
])
def test_missing_or_malformed_attributes_are_refused(portal, policy, mutate, words):
    refused(envelope(signed(portal, mutate=mutate)), policy, INVALID_SECURITY_TOKEN, words)


def test_a_patient_id_that_is_not_a_cx_is_refused(portal, policy):
    def mutate(assertion):
        for value in assertion.iter(f"{{{SAML}}}AttributeValue"):
            if value.text == PATIENT:
                value.text = "9434765919"
    refused(envelope(signed(portal, mutate=mutate)), policy, INVALID_SECURITY_TOKEN, "not a patient id")


# --- XML-level attacks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm, content", [
    ("http://www.w3.org/TR/1999/REC-xpath-19991116", "<ds:XPath>not(ancestor-or-self::ds:Signature)</ds:XPath>"),
    ("http://www.w3.org/TR/1999/REC-xslt-19991116",
     '<xsl:stylesheet xmlns:xsl="http://www.w3.org/1999/XSL/Transform" version="1.0">'
     '<xsl:template match="/"><xsl:value-of select="document(\'http://attacker.example/\')"/></xsl:template>'
     "</xsl:stylesheet>"),
    ("http://www.w3.org/2002/06/xmldsig-filter2", '<dsig2:XPath xmlns:dsig2="http://www.w3.org/2002/06/xmldsig-'
     'filter2" Filter="intersect">//saml:Issuer</dsig2:XPath>'),
])
def test_xpath_and_xslt_transforms_are_refused(portal, policy, algorithm, content):
    good = build_assertion(CLINICIAN, portal, audience=AUDIENCE)
    marker = b'<ds:Transform Algorithm="http://www.w3.org/2000/09/xmldsig#enveloped-signature"/>'
    assert marker in good
    extra = f'<ds:Transform Algorithm="{algorithm}">{content}</ds:Transform>'.encode()
    refused(envelope(good.replace(marker, marker + extra)), policy, INVALID_SECURITY,
            "only the enveloped-signature and exclusive c14n transforms")


def test_a_doctype_is_refused(portal, policy):
    good = build_assertion(CLINICIAN, portal, audience=AUDIENCE)
    doctype = b'<!DOCTYPE saml:Assertion [<!ENTITY who "admin">]>'
    with pytest.raises(XuaError) as info:
        validate_assertion(doctype + good, policy)
    assert info.value.code == INVALID_SECURITY and "DOCTYPE" in info.value.reason


def test_a_comment_inside_a_signed_value_cannot_change_what_is_read(portal, policy):
    """The comment-truncation attack: c14n drops comments, so a signature over
    'dr.grey@hospa.example.evil.example' also covers 'dr.grey@hospa.example<!---->.evil.example'. A consumer
    reading only the first text node would see another user. Our parser drops comments and joins the text,
    so the value read is the value signed; a tree that still holds comments is refused."""
    def rename(assertion):
        assertion.find(f"{{{SAML}}}Subject/{{{SAML}}}NameID").text = "dr.grey@hospa.example.evil.example"
    good = signed(portal, mutate=rename)
    tampered = good.replace(b"dr.grey@hospa.example.evil.example", b"dr.grey@hospa.example<!---->.evil.example")
    assert tampered != good
    assert check(envelope(tampered), policy).name_id == "dr.grey@hospa.example.evil.example"
    with_comments = etree.fromstring(envelope(tampered), etree.XMLParser(remove_comments=False))
    with pytest.raises(XuaError) as info:
        validate_assertion(with_comments, policy)
    assert info.value.code == INVALID_SECURITY and "comments" in info.value.reason


def test_an_oversized_assertion_is_refused(portal, policy):
    def pad(assertion):
        for attr in assertion.iter(f"{{{SAML}}}Attribute"):
            if attr.get("Name") == ATTR_ORGANIZATION:
                attr[0].text = "Hospital A " + "x" * policy.max_assertion_bytes
    refused(envelope(signed(portal, mutate=pad)), policy, INVALID_SECURITY, "exceeds the limit")
    with pytest.raises(XuaError, match="exceeds the limit"):
        validate_assertion(b" " * (policy.max_assertion_bytes + 1), policy)


def test_no_security_header_is_refused(policy):
    refused(envelope(None), policy, INVALID_SECURITY, "exactly one wsse:Security")


# --- configuration ---------------------------------------------------------------------------------------


def test_configuration(tmp_path, portal):
    assert load_policy("off", None) is None
    with pytest.raises(XuaConfigError, match="needs --xua-trust"):
        load_policy("required", None)
    with pytest.raises(ValueError, match="required, optional or off"):
        load_policy("sometimes", None)
    (tmp_path / "bad.toml").write_text('audience = "urn:oid:1.2"\n[issuers]\n"x" = "missing.pem"\n')
    with pytest.raises(XuaConfigError, match="certificate of issuer 'x'"):
        load_policy("required", tmp_path / "bad.toml")
    assert load_policy("optional", write_trust_file(tmp_path, [portal])).mode is XuaMode.OPTIONAL


# --- the HTTP edge: every SOAP handler and DICOMweb route is covered without code of its own --------------


@pytest.fixture
async def service(policy):
    seen = {}
    failures = []

    async def echo(request):
        seen["identity"] = request.identity
        return SoapReply("urn:test:EchoResponse", etree.Element("{urn:x}Ok"))

    async def studies(request):
        return web.Response(text=f"studies for {request[xua_web.XUA_IDENTITY].name_id}")

    async def health(request):
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/soap", SoapService({ACTION_ITI18: echo}).handle)
    app.router.add_get("/dicomweb/studies/{study}", studies)
    app.router.add_get("/health", health)
    policy.on_failure.append(failures.append)
    xua_web.install(app, policy, http_prefixes=("/dicomweb",))
    async with TestClient(TestServer(app)) as client:
        yield client, seen, failures
    policy.on_failure.remove(failures.append)


SOAP = {"Content-Type": "application/soap+xml; charset=UTF-8"}


async def test_soap_service_requires_a_valid_assertion(service, portal, attacker):
    client, seen, failures = service
    resp = await client.post("/soap", data=envelope(build_assertion(CLINICIAN, portal, audience=AUDIENCE)),
                             headers=SOAP)
    assert resp.status == 200
    assert seen["identity"].name_id == CLINICIAN.name_id
    resp = await client.post("/soap", data=envelope(None), headers=SOAP)
    fault = parse_fault(parse_xml(await resp.read()))
    assert resp.status == 400
    assert (fault.code, fault.subcode) == ("Sender", "wsse:InvalidSecurity")
    assert fault.reason.startswith("XUA: ")
    resp = await client.post("/soap", data=envelope(build_assertion(CLINICIAN, attacker, audience=AUDIENCE)),
                             headers=SOAP)
    fault = parse_fault(parse_xml(await resp.read()))
    assert fault.subcode == "wsse:FailedAuthentication"
    assert [f.code for f in failures] == [f"{{{WSSE}}}InvalidSecurity", f"{{{WSSE}}}FailedAuthentication"]
    assert failures[1].issuer == PORTAL_ISSUER and failures[1].endpoint == "/soap"
    # The fault names its wsse prefix.
    resp = await client.post("/soap", data=envelope(None), headers=SOAP)
    root = parse_xml(await resp.read())
    value = root.find(f".//{qn(SOAP12, 'Subcode')}/{qn(SOAP12, 'Value')}")
    assert value.nsmap["wsse"] == WSSE


async def test_optional_mode_checks_only_what_is_sent(service, policy, attacker):
    client, seen, _ = service
    policy.mode = XuaMode.OPTIONAL
    try:
        resp = await client.post("/soap", data=envelope(None), headers=SOAP)
        assert resp.status == 200 and seen["identity"] is None
        resp = await client.post("/soap", data=envelope(build_assertion(CLINICIAN, attacker, audience=AUDIENCE)),
                                 headers=SOAP)
        assert resp.status == 400
    finally:
        policy.mode = XuaMode.REQUIRED


async def test_exempt_actions_and_process_wide_hooks(service, policy, attacker):
    client, seen, failures = service
    process_wide = []
    xua_web.FAILURE_HOOKS.append(process_wide.append)
    policy.exempt_actions = frozenset({ACTION_ITI18})
    try:
        resp = await client.post("/soap", data=envelope(None), headers=SOAP)
        assert resp.status == 200 and seen["identity"] is None
        # An assertion sent to an exempt action is still checked.
        resp = await client.post("/soap", data=envelope(build_assertion(CLINICIAN, attacker, audience=AUDIENCE)),
                                 headers=SOAP)
        assert resp.status == 400
    finally:
        policy.exempt_actions = frozenset()
        xua_web.FAILURE_HOOKS.remove(process_wide.append)
    assert len(process_wide) == 1 and process_wide == failures
    assert process_wide[0].code == FAILED_AUTHENTICATION


async def test_dicomweb_routes_answer_401_or_403_with_a_reason(service, portal):
    client, _, failures = service
    resp = await client.get("/dicomweb/studies/1.2.3")
    assert resp.status == 401 and "requires an XUA assertion" in await resp.text()
    assert resp.headers["WWW-Authenticate"].startswith("SAML")
    good = build_assertion(CLINICIAN, portal, audience=AUDIENCE)
    resp = await client.get("/dicomweb/studies/1.2.3", headers=authorization_header(good))
    assert resp.status == 200 and await resp.text() == f"studies for {CLINICIAN.name_id}"
    # Standard base64 is accepted too.
    resp = await client.get("/dicomweb/studies/1.2.3",
                            headers={"Authorization": "SAML " + base64.b64encode(good).decode()})
    assert resp.status == 200
    resp = await client.get("/dicomweb/studies/1.2.3",
                            headers=authorization_header(signed(portal, audience="urn:oid:1.2.3")))
    assert resp.status == 403 and "affinity domain" in await resp.text()
    resp = await client.get("/dicomweb/studies/1.2.3", headers=authorization_header(good.replace(b"Grey", b"Gray")))
    assert resp.status == 401 and "does not verify" in await resp.text()
    resp = await client.get("/dicomweb/studies/1.2.3", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert resp.status == 401
    # A spelling of the path that still reaches the route is still guarded; other routes are not.
    resp = await client.get("/dicomweb/%73tudies/1.2.3")
    assert resp.status == 401
    assert (await client.get("/health")).status == 200
    assert len(failures) == 5


@pytest.mark.parametrize("service, argv", [
    ("registry", ["--xua", "required"]),
    ("repository", ["--repository-unique-id", "1.2.3", "--xua", "required"]),
    ("imaging_source", ["serve", "--xua", "required"]),
])
def test_services_refuse_to_start_with_an_unusable_xua_configuration(capsys, tmp_path, service, argv):
    import importlib

    main = importlib.import_module(f"{service}.cli").main
    assert main(argv) == 2
    assert "--xua required needs --xua-trust" in capsys.readouterr().err
    (tmp_path / "t.toml").write_text('audience = "urn:oid:1.2"\n')
    assert main([*argv, "--xua-trust", str(tmp_path / "t.toml")]) == 2
    assert "an [issuers] table" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*argv[:-1], "sometimes"])
    assert "required, optional or off" in capsys.readouterr().err
