"""The portal's side of XUA without processes: who the assertion says the user is, and that every service's
validator believes it (the same ihe.xua.validate the registry, repositories and imaging sources run)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from consumer.client.soap import TransportError
from consumer.portal.sessions import PortalSession
from consumer.portal.settings import PortalSettings
from consumer.portal.xua import (
    CALLER,
    Caller,
    PortalXua,
    XuaUnavailable,
    caller_objects,
    for_patient,
    parse_organisation_ids,
    parse_roles,
)
from ihe.xua import XuaMode, load_policy, validate_assertion
from ihe.xua.model import SNOMED_CT
from tests.xua_keys import AUDIENCE, PATIENT, PORTAL_ISSUER, make_signer, write_trust_file

DOCTOR = PortalSession("Dr Ada Lovelace", "clinician", "Hospital A", "csrf", subject="ada-sub")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    signer = make_signer(PORTAL_ISSUER, "portal")
    folder = tmp_path_factory.mktemp("portal-xua")
    (folder / "portal.key").write_bytes(signer.key_pem)
    (folder / "portal.pem").write_bytes(signer.cert_pem)
    return signer, folder


def portal_xua(folder, **extra) -> PortalXua:
    settings = PortalSettings.from_dict({
        "xua_signing_key": str(folder / "portal.key"), "xua_signing_cert": str(folder / "portal.pem"),
        "xua_issuer": PORTAL_ISSUER, "xua_organisation_ids": "Hospital A=1.3.6.1.4.1.21367.2026.1", **extra})
    xua = PortalXua.from_settings(settings)
    assert xua is not None
    return xua


def test_the_assertion_names_the_signed_in_user_and_the_patient_and_every_service_believes_it(keys, tmp_path):
    signer, folder = keys
    xua = portal_xua(folder)
    policy = load_policy(XuaMode.REQUIRED, write_trust_file(tmp_path, [signer]))
    identity = validate_assertion(xua.assertion(Caller(DOCTOR, PATIENT)), policy)
    assert identity.issuer == PORTAL_ISSUER
    assert identity.name_id == "ada-sub"
    assert identity.subject_id == "Dr Ada Lovelace"
    assert identity.organization == "Hospital A"
    assert identity.organization_id == "urn:oid:1.3.6.1.4.1.21367.2026.1"
    assert (identity.role.code, identity.role.code_system) == ("309343006", SNOMED_CT)
    assert identity.purpose_of_use.code == "TREATMENT"
    assert identity.resource_id == PATIENT
    assert 0 < (identity.not_on_or_after - datetime.now(UTC)).total_seconds() <= 300


def test_the_audience_is_the_affinity_domain_by_default(keys):
    _signer, folder = keys
    assert portal_xua(folder).audience == AUDIENCE


def test_an_assertion_is_reused_briefly_and_differs_per_patient(keys):
    _signer, folder = keys
    xua = portal_xua(folder)
    first = xua.assertion(Caller(DOCTOR, PATIENT))
    assert xua.assertion(Caller(DOCTOR, PATIENT)) == first
    assert xua.assertion(Caller(DOCTOR, None)) != first


def test_a_role_without_a_snomed_code_is_refused_before_anything_is_sent(keys):
    _signer, folder = keys
    xua = portal_xua(folder)
    with pytest.raises(XuaUnavailable, match="--xua-roles") as caught:
        xua.assertion(Caller(PortalSession("Eve", "visitor", "Hospital A", "csrf", "eve")))
    assert isinstance(caught.value, TransportError) and caught.value.delivered is False
    custom = portal_xua(folder, xua_roles="visitor=224608005|Administrative healthcare staff")
    assert b"224608005" in custom.assertion(Caller(PortalSession("Eve", "visitor", "Hospital A", "csrf", "eve")))


def test_the_soap_header_and_http_header_follow_the_request_in_progress(keys):
    _signer, folder = keys
    xua = portal_xua(folder)
    assert xua.security("http://registry", "urn:ihe:iti:2007:RegistryStoredQuery") is None  # no user: nothing
    token = CALLER.set(Caller(DOCTOR))
    try:
        for_patient(PATIENT)
        header = xua.security("http://registry", "urn:ihe:iti:2007:RegistryStoredQuery")
        assert header.startswith(b"<wsse:Security") and PATIENT.replace("&", "&amp;").encode() in header
        assert [o.object_id for o in caller_objects()] == [PATIENT]
    finally:
        CALLER.reset(token)


@pytest.mark.parametrize("value", ["clinician", "clinician=abc|x", "=1234567"])
def test_bad_role_mappings_say_what_is_wrong(value):
    with pytest.raises(ValueError, match="ROLE=SNOMEDCODE"):
        parse_roles(value)


def test_organisation_ids_are_urn_oids():
    assert parse_organisation_ids("A=1.2.3; B=urn:oid:1.2.4") == {"A": "urn:oid:1.2.3", "B": "urn:oid:1.2.4"}
    with pytest.raises(ValueError, match="NAME=OID"):
        parse_organisation_ids("A=hospital")


def test_a_signing_key_that_cannot_sign_is_refused_at_start(keys, tmp_path):
    from consumer.portal.xua import xua_problem

    _signer, folder = keys
    good = PortalSettings.from_dict({"xua_signing_key": str(folder / "portal.key"),
                                     "xua_signing_cert": str(folder / "portal.pem")})
    assert xua_problem(good) is None
    (tmp_path / "bad.pem").write_text("not a key\n")
    bad = PortalSettings.from_dict({"xua_signing_key": str(tmp_path / "bad.pem"),
                                    "xua_signing_cert": str(folder / "portal.pem")})
    assert "cannot sign" in xua_problem(bad)
    alone = PortalSettings.from_dict({"xua_signing_key": str(folder / "portal.key")})
    assert "go together" in xua_problem(alone)
