"""XUA end to end: a real ``xds-registry`` process started with ``--xua required`` answers ITI-42 and
ITI-18 only to requests carrying a valid assertion, and refuses the rest with a WS-Security fault."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from ihe.errors import STATUS_SUCCESS, parse_registry_response
from ihe.metadata.ebrim import read_registry_objects
from ihe.metadata.model import Identifiable
from ihe.soap import parse_fault
from ihe.xml import parse_xml
from ihe.xua.assertion import build_assertion, security_header
from registry.patients import Demographics, record_patient
from tests import messages as m
from tests.conftest import start_registry_process
from tests.xua_keys import AUDIENCE, CLINICIAN, PORTAL_ISSUER, make_signer, write_trust_file

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"


@pytest.fixture(scope="module")
def portal():
    return make_signer(PORTAL_ISSUER, "portal")


@pytest.fixture
def xua_registry(registry_database_url, registry_pool, portal, tmp_path):
    service = start_registry_process(registry_database_url, "--xua", "required", "--xua-trust",
                                     str(write_trust_file(tmp_path, [portal])))
    yield service
    service.stop()


async def post(session, url, action, envelope):
    headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'}
    async with session.post(url, data=envelope, headers=headers) as response:
        return response.status, parse_xml(await response.read())


def find_documents(pid: str, security: bytes | None) -> bytes:
    body = m.stored_query_request(m.FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": m.quoted(pid),
                                                     "$XDSDocumentEntryStatus": m.in_list(APPROVED)})
    return m.soap_envelope(m.ACTION_ITI18, body, extra_headers=security or b"")


async def test_registry_with_xua_required(xua_registry, registry_pool, portal):
    url = xua_registry.url
    pid = m.new_patient_id()
    async with registry_pool.acquire() as conn:
        await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics(family="Xua"))
    valid = security_header(build_assertion(CLINICIAN, portal, audience=AUDIENCE))
    async with aiohttp.ClientSession() as session:
        # ITI-42 without an assertion is refused and registers nothing; with one it is registered.
        envelope, built = m.register_request(pid, use_uuids=True)
        status, root = await post(session, url, m.ACTION_ITI42, envelope)
        fault = parse_fault(root)
        assert status == 400 and fault is not None and fault.subcode == "wsse:InvalidSecurity"
        status, root = await post(session, url, m.ACTION_ITI18, find_documents(pid, valid))
        assert status == 200 and read_registry_objects(root[-1][0]) == []
        built = m.submit_objects_request(pid, use_uuids=True)
        envelope = m.soap_envelope(m.ACTION_ITI42, built.xml, extra_headers=valid)
        status, root = await post(session, url, m.ACTION_ITI42, envelope)
        assert status == 200 and parse_registry_response(root[-1][0])[0] == STATUS_SUCCESS

        # ITI-18 with a valid assertion finds the document.
        status, root = await post(session, url, m.ACTION_ITI18, find_documents(pid, valid))
        assert status == 200
        response = root[-1][0]
        assert parse_registry_response(response)[0] == STATUS_SUCCESS
        assert [o.entry_uuid for o in read_registry_objects(response)] == built.document_ids

        # Refused: no assertion, an expired one, one signed by a key the registry does not trust.
        expired = security_header(build_assertion(CLINICIAN, portal, audience=AUDIENCE,
                                                  now=datetime.now(UTC) - timedelta(minutes=30)))
        stranger = security_header(build_assertion(CLINICIAN, make_signer(PORTAL_ISSUER), audience=AUDIENCE))
        for security, subcode, words in [(None, "wsse:InvalidSecurity", "wsse:Security"),
                                         (expired, "wsse:InvalidSecurityToken", "expired"),
                                         (stranger, "wsse:FailedAuthentication", "does not verify")]:
            status, root = await post(session, url, m.ACTION_ITI18, find_documents(pid, security))
            fault = parse_fault(root)
            assert status == 400 and fault is not None, security
            assert fault.code == "Sender" and fault.subcode == subcode and words in fault.reason
