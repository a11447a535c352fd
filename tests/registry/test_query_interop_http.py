"""ITI-18 as independent consumers send it (issue 10): codes in the HL7 CE form ``code^^scheme``
(NIST toolkit, document consumers) and ObjectRef answers over several patients.

A real ``xds-registry`` process, documents registered with ITI-42 over HTTP, NIST-style queries."""

from __future__ import annotations

import aiohttp
import pytest

from ihe.errors import STATUS_FAILURE, STATUS_SUCCESS, parse_registry_response
from ihe.metadata.ebrim import read_object_refs, read_registry_objects
from ihe.metadata.model import Identifiable
from ihe.xml import parse_xml
from registry.patients import Demographics, record_patient
from tests import messages as m

APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"


def ce(code: m.Code) -> str:
    """The HL7 CE form of a code (code, empty text, coding system) as the NIST toolkit sends it."""
    return f"{code.code}^^{code.scheme}"


async def post(session: aiohttp.ClientSession, url: str, envelope: bytes):
    headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{m.ACTION_ITI18}"'}
    async with session.post(url, data=envelope, headers=headers) as response:
        assert response.status == 200
        body = parse_xml(await response.read())
    return body[-1][0]  # Envelope / Body / payload


async def query(session, url, query_id, params, return_type="LeafClass"):
    """(status, error codes, entry UUIDs of the objects or refs returned)."""
    response = await post(session, url, m.stored_query_envelope(query_id, params, return_type))
    status, errors = parse_registry_response(response)
    if return_type == "ObjectRef":
        ids = read_object_refs(response)
    else:
        ids = [o.entry_uuid for o in read_registry_objects(response)]
    return status, [e.code for e in errors], ids


async def register(session, url, pool, pid, **kwargs) -> m.BuiltSubmission:
    async with pool.acquire() as conn:
        await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics(family="Interop"))
    envelope, built = m.register_request(pid, use_uuids=True, **kwargs)
    headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{m.ACTION_ITI42}"'}
    async with session.post(url, data=envelope, headers=headers) as response:
        body = parse_xml(await response.read())
    assert parse_registry_response(body[-1][0])[0] == STATUS_SUCCESS
    return built


FIND_DOCUMENT_CODES = [
    ("$XDSDocumentEntryClassCode", m.CLASS_CODE),
    ("$XDSDocumentEntryTypeCode", m.TYPE_CODE),
    ("$XDSDocumentEntryPracticeSettingCode", m.PRACTICE_SETTING_CODE),
    ("$XDSDocumentEntryHealthcareFacilityTypeCode", m.HCFT_CODE),
    ("$XDSDocumentEntryEventCodeList", m.EVENT_CODES[0]),
    ("$XDSDocumentEntryConfidentialityCode", m.CONFIDENTIALITY_CODE),
    ("$XDSDocumentEntryFormatCode", m.FORMAT_CODE),
]
OTHER = m.Code("no-such-code", "1.2.3.4.5")


async def test_codes_in_the_ce_form_are_accepted_everywhere(registry_process, registry_pool):
    url = registry_process.url
    pid = m.new_patient_id()
    async with aiohttp.ClientSession() as session:
        built = await register(session, url, registry_pool, pid, folder=True)
        base = {"$XDSDocumentEntryPatientId": m.quoted(pid), "$XDSDocumentEntryStatus": m.in_list(APPROVED)}
        ((doc,),) = [(await query(session, url, m.FIND_DOCUMENTS, base))[2]]
        for name, code in FIND_DOCUMENT_CODES:
            for form in (ce(code), code.key):
                assert await query(session, url, m.FIND_DOCUMENTS, {**base, name: m.in_list(form)}) == (
                    STATUS_SUCCESS, [], [doc]), (name, form)
            # An OR list mixing both forms, and a code that matches nothing in the CE form.
            assert (await query(session, url, m.FIND_DOCUMENTS,
                                {**base, name: m.in_list(ce(OTHER), code.key)}))[2] == [doc]
            assert await query(session, url, m.FIND_DOCUMENTS, {**base, name: m.in_list(ce(OTHER))}) == (
                STATUS_SUCCESS, [], []), name

        # AND of ORs: both event codes (one per Slot), in the CE form.
        events = [[m.in_list(ce(m.EVENT_CODES[0]))], [m.in_list(ce(OTHER), ce(m.EVENT_CODES[1]))]]
        assert (await query(session, url, m.FIND_DOCUMENTS, {**base, "$XDSDocumentEntryEventCodeList": events}))[2] \
            == [doc]
        events = [[m.in_list(ce(m.EVENT_CODES[0]))], [m.in_list(ce(OTHER))]]
        assert (await query(session, url, m.FIND_DOCUMENTS, {**base, "$XDSDocumentEntryEventCodeList": events}))[2] \
            == []

        ss_base = {"$XDSSubmissionSetPatientId": m.quoted(pid), "$XDSSubmissionSetStatus": m.in_list(APPROVED)}
        status, errors, found = await query(session, url, m.FIND_SUBMISSION_SETS, {
            **ss_base, "$XDSSubmissionSetContentType": m.in_list(ce(m.CONTENT_TYPE_CODE))})
        assert (status, errors, len(found)) == (STATUS_SUCCESS, [], 1)
        assert (await query(session, url, m.FIND_SUBMISSION_SETS, {
            **ss_base, "$XDSSubmissionSetContentType": m.in_list(ce(OTHER))}))[2] == []

        fol_base = {"$XDSFolderPatientId": m.quoted(pid), "$XDSFolderStatus": m.in_list(APPROVED)}
        status, errors, found = await query(session, url, m.FIND_FOLDERS, {
            **fol_base, "$XDSFolderCodeList": [[m.in_list(ce(m.FOLDER_CODE))]]})
        assert (status, errors, len(found)) == (STATUS_SUCCESS, [], 1)
        assert (await query(session, url, m.FIND_FOLDERS, {
            **fol_base, "$XDSFolderCodeList": m.in_list(ce(OTHER))}))[2] == []

        for query_id, key, value in (
            (m.GET_SUBMISSION_SET_AND_CONTENTS, "$XDSSubmissionSetUniqueId", built.submission_set_unique_id),
            (m.GET_FOLDER_AND_CONTENTS, "$XDSFolderUniqueId", built.folder_unique_id),
        ):
            for name, code in (("$XDSDocumentEntryFormatCode", m.FORMAT_CODE),
                               ("$XDSDocumentEntryConfidentialityCode", m.CONFIDENTIALITY_CODE)):
                status, errors, found = await query(session, url, query_id,
                                                    {key: m.quoted(value), name: m.in_list(ce(code))})
                assert (status, errors) == (STATUS_SUCCESS, []) and doc in found, (query_id, name)
                status, errors, found = await query(session, url, query_id,
                                                    {key: m.quoted(value), name: m.in_list(ce(OTHER))})
                assert (status, errors) == (STATUS_SUCCESS, []) and doc not in found, (query_id, name)

        status, errors, found = await query(session, url, m.GET_ALL, {
            "$patientId": m.quoted(pid), "$XDSDocumentEntryStatus": m.in_list(APPROVED),
            "$XDSSubmissionSetStatus": m.in_list(APPROVED), "$XDSFolderStatus": m.in_list(APPROVED),
            "$XDSDocumentEntryFormatCode": m.in_list(ce(m.FORMAT_CODE))})
        assert (status, errors) == (STATUS_SUCCESS, []) and doc in found


@pytest.mark.parametrize("form", ["code^^", "^^scheme", "a^b^c^d", "code^^^", "code"])
async def test_malformed_codes_are_still_refused(registry_process, registry_pool, form):
    pid = m.new_patient_id()
    async with aiohttp.ClientSession() as session:
        status, errors, _ = await query(session, registry_process.url, m.FIND_DOCUMENTS, {
            "$XDSDocumentEntryPatientId": m.quoted(pid), "$XDSDocumentEntryStatus": m.in_list(APPROVED),
            "$XDSDocumentEntryClassCode": m.in_list(form)})
    assert (status, errors) == (STATUS_FAILURE, ["XDSRegistryError"])


async def test_object_refs_over_several_patients(registry_process, registry_pool):
    """ObjectRef answers carry no patient: several patients are fine; LeafClass is refused."""
    url = registry_process.url
    async with aiohttp.ClientSession() as session:
        one = await register(session, url, registry_pool, m.new_patient_id(), folder=True)
        two = await register(session, url, registry_pool, m.new_patient_id(), folder=True)
        docs = {one.document_id, two.document_id}
        folders = {one.folder_id, two.folder_id}
        sets = {one.submission_set_id, two.submission_set_id}
        # (query, parameters, the objects the answer must hold, whether it holds nothing else)
        cases = [
            (m.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": m.in_list(*docs)}, docs, True),
            (m.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": m.in_list(one.document_unique_id,
                                                                      two.document_unique_id)}, docs, True),
            (m.GET_FOLDERS, {"$XDSFolderEntryUUID": m.in_list(*folders)}, folders, True),
            (m.GET_FOLDERS, {"$XDSFolderUniqueId": m.in_list(one.folder_unique_id, two.folder_unique_id)},
             folders, True),
            (m.GET_DOCUMENTS_AND_ASSOCIATIONS, {"$XDSDocumentEntryEntryUUID": m.in_list(*docs)}, docs, False),
            (m.GET_SUBMISSION_SETS, {"$uuid": m.in_list(*docs)}, sets, False),
        ]
        for query_id, params, expected, exact in cases:
            status, errors, refs = await query(session, url, query_id, params, "ObjectRef")
            assert (status, errors) == (STATUS_SUCCESS, []), (query_id, params)
            assert expected <= set(refs) and (not exact or len(refs) == len(expected)), (query_id, refs)
            status, errors, _ = await query(session, url, query_id, params, "LeafClass")
            assert (status, errors) == (STATUS_FAILURE, ["XDSResultNotSinglePatient"]), (query_id, params)
