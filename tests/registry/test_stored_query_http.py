"""ITI-18 end to end: a real ``xds-registry`` process, documents registered with ITI-42 over HTTP,
then queried over HTTP (SOAP 1.2), the answer read as a consumer reads it."""

from __future__ import annotations

import aiohttp

from ihe.errors import STATUS_FAILURE, STATUS_SUCCESS, parse_registry_response
from ihe.metadata.ebrim import read_object_refs, read_registry_objects
from ihe.metadata.model import DocumentEntry, Identifiable
from ihe.namespaces import QUERY, SOAP12, WSA, qn
from ihe.xml import parse_xml
from registry.patients import Demographics, record_patient
from tests import messages as m

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
ITI18_RESPONSE = "urn:ihe:iti:2007:RegistryStoredQueryResponse"


async def post(session: aiohttp.ClientSession, url: str, action: str, envelope: bytes):
    headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'}
    async with session.post(url, data=envelope, headers=headers) as response:
        return response.status, response.headers.get("Content-Type", ""), await response.read()


def payload(body: bytes):
    envelope = parse_xml(body)
    assert envelope.tag == qn(SOAP12, "Envelope")
    return envelope, envelope.find(qn(SOAP12, "Body"))[0]


async def test_find_and_get_documents_over_http(registry_process, registry_pool):
    pid = m.new_patient_id()
    async with registry_pool.acquire() as conn:
        await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics(family="Http"))
    async with aiohttp.ClientSession() as session:
        envelope, built = m.register_request(pid, documents=2, folder=True)
        status, _, body = await post(session, registry_process.url, m.ACTION_ITI42, envelope)
        assert status == 200
        assert parse_registry_response(payload(body)[1])[0] == STATUS_SUCCESS

        message_id = m.new_uuid()
        query = m.soap_envelope(m.ACTION_ITI18, m.stored_query_request(m.FIND_DOCUMENTS, {
            "$XDSDocumentEntryPatientId": m.quoted(pid), "$XDSDocumentEntryStatus": m.in_list(APPROVED)}),
            message_id)
        status, content_type, body = await post(session, registry_process.url, m.ACTION_ITI18, query)
        assert status == 200
        assert content_type.startswith("application/soap+xml") and ITI18_RESPONSE in content_type
        envelope, response = payload(body)
        header = envelope.find(qn(SOAP12, "Header"))
        assert header.findtext(qn(WSA, "Action")) == ITI18_RESPONSE
        assert header.findtext(qn(WSA, "RelatesTo")) == message_id
        assert response.tag == qn(QUERY, "AdhocQueryResponse")
        assert response.get("status") == STATUS_SUCCESS
        entries = read_registry_objects(response)
        assert len(entries) == 2 and all(isinstance(e, DocumentEntry) for e in entries)
        assert {e.unique_id for e in entries} == set(built.document_unique_ids)
        assert {e.patient_id.to_cx() for e in entries} == {pid}
        ids = [e.entry_uuid for e in entries]

        # ObjectRef then GetDocuments with those ids: the consumer's usual two steps.
        query = m.soap_envelope(m.ACTION_ITI18, m.stored_query_request(m.GET_DOCUMENTS, {
            "$XDSDocumentEntryEntryUUID": m.in_list(*ids)}, "ObjectRef"))
        _, _, body = await post(session, registry_process.url, m.ACTION_ITI18, query)
        assert sorted(read_object_refs(payload(body)[1])) == sorted(ids)

        # An unknown query is an AdhocQueryResponse Failure, not a SOAP Fault.
        query = m.soap_envelope(m.ACTION_ITI18, m.stored_query_request(m.new_uuid(), {}))
        status, _, body = await post(session, registry_process.url, m.ACTION_ITI18, query)
        assert status == 200
        response = payload(body)[1]
        result_status, errors = parse_registry_response(response)
        assert result_status == STATUS_FAILURE
        assert [e.code for e in errors] == ["XDSUnknownStoredQuery"]

        # A body that is no AdhocQueryRequest is a SOAP Sender fault (HTTP 400).
        wrong = m.soap_envelope(m.ACTION_ITI18, built.xml)
        status, _, body = await post(session, registry_process.url, m.ACTION_ITI18, wrong)
        assert status == 400
        assert payload(body)[1].tag == qn(SOAP12, "Fault")
