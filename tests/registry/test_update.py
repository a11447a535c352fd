"""ITI-57 Update Document Set against a real ``xds-registry`` process.

Documents are registered with ITI-42 and updated with ITI-57 over HTTP, both as NIST-style text
messages (tests/messages.py, tests/update_messages.py); answers are read from ITI-18 over HTTP and
the tables themselves, so "nothing changed" after a refused request is checked, not assumed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import aiohttp
import pytest

from ihe.errors import STATUS_FAILURE, STATUS_SUCCESS, RegistryError, parse_registry_response
from ihe.metadata.ebrim import read_registry_objects
from ihe.metadata.model import Association, DocumentEntry, Folder, Identifiable
from ihe.namespaces import SOAP12, WSA, qn
from ihe.xml import parse_xml
from registry.patients import Demographics, record_patient
from tests import messages as m
from tests import update_messages as u
from tests.conftest import start_registry_process

APPROVED, DEPRECATED = u.APPROVED, u.DEPRECATED
ITI57_RESPONSE = "urn:ihe:iti:2010:UpdateDocumentSetResponse"
TABLES = ("submission_set", "document_entry", "folder", "association", "unique_id_claim")


@dataclass(slots=True)
class Outcome:
    status: str
    errors: list[RegistryError]

    @property
    def codes(self) -> list[str]:
        return [e.code for e in self.errors if e.is_error]


@pytest.fixture(scope="module")
def registry_service(registry_database_url):
    service = start_registry_process(registry_database_url)
    yield service
    service.stop()


class Client:
    def __init__(self, url: str, session: aiohttp.ClientSession, pool) -> None:
        self.url, self.session, self.pool = url, session, pool

    async def post(self, envelope: bytes) -> tuple[str, object]:
        async with self.session.post(self.url, data=envelope,
                                     headers={"Content-Type": "application/soap+xml; charset=UTF-8"}) as resp:
            body = await resp.read()
            assert resp.status == 200, body[:2000]
        root = parse_xml(body)
        return root.findtext(f"{qn(SOAP12, 'Header')}/{qn(WSA, 'Action')}"), root.find(qn(SOAP12, "Body"))[0]

    async def register(self, pid: str, **kwargs) -> m.BuiltSubmission:
        envelope, built = m.register_request(pid, **kwargs)
        _, response = await self.post(envelope)
        status, errors = parse_registry_response(response)
        assert status == STATUS_SUCCESS, errors
        return built

    async def update(self, envelope: bytes) -> Outcome:
        action, response = await self.post(envelope)
        assert action == ITI57_RESPONSE
        return Outcome(*parse_registry_response(response))

    async def query(self, query_id: str, params: dict, *, ok: bool = True) -> list:
        _, response = await self.post(m.soap_envelope(m.ACTION_ITI18, m.stored_query_request(query_id, params)))
        status, errors = parse_registry_response(response)
        if ok:
            assert status == STATUS_SUCCESS, errors
        return read_registry_objects(response)

    async def patient(self) -> str:
        pid = m.new_patient_id()
        async with self.pool.acquire() as conn:
            await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics("Update", "Test"))
        return pid

    async def rows(self, table: str, unique_id: str) -> list:
        async with self.pool.acquire() as conn:
            return await conn.fetch(f"SELECT * FROM {table} WHERE unique_id = $1 ORDER BY version", unique_id)

    async def snapshot(self) -> dict:
        """Every row of the registry objects' tables (to show a refused request changed nothing)."""
        async with self.pool.acquire() as conn:
            return {t: sorted(tuple(r.values()) for r in await conn.fetch(f"SELECT * FROM {t}")) for t in TABLES}


@pytest.fixture
async def client(registry_service, registry_pool):
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Client(registry_service.url, session, registry_pool)


async def registered_document(client: Client, **kwargs) -> tuple[str, m.BuiltSubmission, DocumentEntry]:
    pid = await client.patient()
    built = await client.register(pid, **kwargs)
    [entry] = [e for e in await client.query(m.GET_DOCUMENTS, {
        "$XDSDocumentEntryUniqueId": m.in_list(built.document_unique_id)}) if isinstance(e, DocumentEntry)]
    return pid, built, entry


def find_documents(pid: str, *statuses: str) -> dict:
    return {"$XDSDocumentEntryPatientId": m.quoted(pid),
            "$XDSDocumentEntryStatus": m.in_list(*(statuses or (APPROVED,)))}


# --- new versions ------------------------------------------------------------------------------------


async def test_new_version_of_a_document_entry(client):
    pid, built, v1 = await registered_document(client)
    assert v1.logical_uuid == v1.entry_uuid and v1.version == "1"
    outcome = await client.update(u.new_document_version(
        pid, v1.entry_uuid, "1", built.document_unique_id, hashes=[built.document_hashes[0]],
        sizes=[built.document_sizes[0]], title="Radiology report (corrected)"))
    assert (outcome.status, outcome.errors) == (STATUS_SUCCESS, [])

    [latest] = await client.query(m.FIND_DOCUMENTS, find_documents(pid))
    assert latest.logical_uuid == v1.entry_uuid and latest.entry_uuid != v1.entry_uuid
    assert latest.version == "2" and latest.status == APPROVED
    assert latest.title.value == "Radiology report (corrected)"
    # FindDocuments for Deprecated entries does not bring back the old version either
    assert await client.query(m.FIND_DOCUMENTS, find_documents(pid, DEPRECATED)) == []
    # by uniqueId (shared by the versions): the latest only
    by_uid = await client.query(m.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": m.in_list(built.document_unique_id)})
    assert [e.entry_uuid for e in by_uid] == [latest.entry_uuid]
    # by logicalID with $MetadataLevel 2: every version, the old one Deprecated
    every = await client.query(m.GET_DOCUMENTS, {"$XDSDocumentEntryLogicalID": m.in_list(v1.entry_uuid),
                                                 "$MetadataLevel": "2"})
    assert {(e.version, e.status) for e in every} == {("1", DEPRECATED), ("2", APPROVED)}
    # by logicalID without level 2: the latest version
    plain = await client.query(m.GET_DOCUMENTS, {"$XDSDocumentEntryLogicalID": m.in_list(v1.entry_uuid)})
    assert [e.entry_uuid for e in plain] == [latest.entry_uuid]
    # the old version is still there by its entryUUID
    [old] = await client.query(m.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": m.in_list(v1.entry_uuid)})
    assert (old.version, old.status) == ("1", DEPRECATED)
    rows = await client.rows("document_entry", built.document_unique_id)
    assert [(r["version"], r["latest"], r["status"]) for r in rows] == [(1, False, DEPRECATED), (2, True, APPROVED)]

    # and a third version, from the second
    outcome = await client.update(u.new_document_version(
        pid, v1.entry_uuid, "2", built.document_unique_id, hashes=[built.document_hashes[0]],
        sizes=[built.document_sizes[0]], title="Third"))
    assert outcome.status == STATUS_SUCCESS, outcome.errors
    [third] = await client.query(m.FIND_DOCUMENTS, find_documents(pid))
    assert (third.version, third.title.value) == ("3", "Third")


async def test_new_version_keeps_folder_membership_unless_told_not_to(client):
    pid, built, v1 = await registered_document(client, folder=True)
    [folder] = [f for f in await client.query(m.GET_FOLDERS, {
        "$XDSFolderUniqueId": m.in_list(built.folder_unique_id)}) if isinstance(f, Folder)]
    before = (await client.rows("folder", built.folder_unique_id))[0]["last_update_time"]
    outcome = await client.update(u.new_document_version(pid, v1.entry_uuid, "1", built.document_unique_id,
                                                         hashes=[built.document_hashes[0]],
                                                         sizes=[built.document_sizes[0]]))
    assert outcome.status == STATUS_SUCCESS, outcome.errors
    contents = await client.query(m.GET_FOLDER_AND_CONTENTS, {"$XDSFolderEntryUUID": m.quoted(folder.entry_uuid)})
    [member] = [e for e in contents if isinstance(e, DocumentEntry)]
    assert member.version == "2" and member.logical_uuid == v1.entry_uuid
    assert (await client.rows("folder", built.folder_unique_id))[0]["last_update_time"] >= before

    outcome = await client.update(u.new_document_version(pid, v1.entry_uuid, "2", built.document_unique_id,
                                                         hashes=[built.document_hashes[0]],
                                                         sizes=[built.document_sizes[0]], propagation="no"))
    assert outcome.status == STATUS_SUCCESS, outcome.errors
    contents = await client.query(m.GET_FOLDER_AND_CONTENTS, {"$XDSFolderEntryUUID": m.quoted(folder.entry_uuid)})
    assert [e for e in contents if isinstance(e, DocumentEntry)] == []


async def test_new_version_of_a_folder(client):
    pid = await client.patient()
    built = await client.register(pid, folder=True)
    [v1] = await client.query(m.FIND_FOLDERS, {"$XDSFolderPatientId": m.quoted(pid),
                                               "$XDSFolderStatus": m.in_list(APPROVED)})
    outcome = await client.update(u.new_folder_version(pid, v1.entry_uuid, "1", built.folder_unique_id))
    assert outcome.status == STATUS_SUCCESS, outcome.errors
    [v2] = await client.query(m.FIND_FOLDERS, {"$XDSFolderPatientId": m.quoted(pid),
                                               "$XDSFolderStatus": m.in_list(APPROVED, DEPRECATED)})
    assert (v2.logical_uuid, v2.version, v2.status) == (v1.entry_uuid, "2", APPROVED)
    by_uid = await client.query(m.GET_FOLDERS, {"$XDSFolderUniqueId": m.in_list(built.folder_unique_id)})
    assert [f.entry_uuid for f in by_uid] == [v2.entry_uuid]
    # its document came along
    contents = await client.query(m.GET_FOLDER_AND_CONTENTS, {"$XDSFolderEntryUUID": m.quoted(v2.entry_uuid)})
    assert {e.unique_id for e in contents if isinstance(e, DocumentEntry)} == set(built.document_unique_ids)
    every = await client.query(m.GET_FOLDERS, {"$XDSFolderLogicalID": m.in_list(v1.entry_uuid), "$MetadataLevel": "2"})
    assert {(f.version, f.status) for f in every} == {("1", DEPRECATED), ("2", APPROVED)}
    rows = await client.rows("folder", built.folder_unique_id)
    assert [(r["version"], r["latest"], r["status"]) for r in rows] == [(1, False, DEPRECATED), (2, True, APPROVED)]


# --- status changes ----------------------------------------------------------------------------------


async def test_deprecate_and_approve_a_document_entry(client):
    pid, _built, entry = await registered_document(client)
    outcome = await client.update(u.status_change(pid, entry.entry_uuid, APPROVED, DEPRECATED))
    assert (outcome.status, outcome.errors) == (STATUS_SUCCESS, [])
    assert await client.query(m.FIND_DOCUMENTS, find_documents(pid)) == []
    [deprecated] = await client.query(m.FIND_DOCUMENTS, find_documents(pid, DEPRECATED))
    assert deprecated.entry_uuid == entry.entry_uuid and deprecated.status == DEPRECATED

    outcome = await client.update(u.status_change(pid, entry.entry_uuid, DEPRECATED, APPROVED))
    assert outcome.status == STATUS_SUCCESS, outcome.errors
    [approved] = await client.query(m.FIND_DOCUMENTS, find_documents(pid))
    assert approved.entry_uuid == entry.entry_uuid and approved.status == APPROVED
    # the request's association is kept, as the NIST registry keeps it
    assocs = await client.query(m.GET_ASSOCIATIONS, {"$uuid": m.in_list(entry.entry_uuid)})
    changes = [a for a in assocs if isinstance(a, Association) and a.type == u.UPDATE_AVAILABILITY_STATUS]
    assert {(a.original_status, a.new_status) for a in changes} == {(APPROVED, DEPRECATED), (DEPRECATED, APPROVED)}


async def test_deprecate_a_folder(client):
    pid = await client.patient()
    await client.register(pid, folder=True)
    params = {"$XDSFolderPatientId": m.quoted(pid), "$XDSFolderStatus": m.in_list(APPROVED)}
    [folder] = await client.query(m.FIND_FOLDERS, params)
    outcome = await client.update(u.status_change(pid, folder.entry_uuid, APPROVED, DEPRECATED))
    assert outcome.status == STATUS_SUCCESS, outcome.errors
    assert await client.query(m.FIND_FOLDERS, params) == []


# --- folder membership -------------------------------------------------------------------------------


async def test_add_a_document_to_a_folder_and_remove_it(client):
    pid = await client.patient()
    with_folder = await client.register(pid, folder=True, documents=0)
    _, _built, entry = await registered_document_for(client, pid)
    [folder] = await client.query(m.GET_FOLDERS, {"$XDSFolderUniqueId": m.in_list(with_folder.folder_unique_id)})
    outcome = await client.update(u.add_to_folder(pid, folder.entry_uuid, entry.entry_uuid))
    assert (outcome.status, outcome.errors) == (STATUS_SUCCESS, [])
    contents = await client.query(m.GET_FOLDER_AND_CONTENTS, {"$XDSFolderEntryUUID": m.quoted(folder.entry_uuid)})
    assert [e.entry_uuid for e in contents if isinstance(e, DocumentEntry)] == [entry.entry_uuid]
    [membership] = [a for a in contents if isinstance(a, Association) and a.source_uuid == folder.entry_uuid]

    # twice is refused
    again = await client.update(u.add_to_folder(pid, folder.entry_uuid, entry.entry_uuid))
    assert again.codes == ["XDSMetadataUpdateError"]

    # removal: the membership association becomes Deprecated
    outcome = await client.update(u.status_change(pid, membership.entry_uuid, APPROVED, DEPRECATED))
    assert outcome.status == STATUS_SUCCESS, outcome.errors
    contents = await client.query(m.GET_FOLDER_AND_CONTENTS, {"$XDSFolderEntryUUID": m.quoted(folder.entry_uuid)})
    assert [e for e in contents if isinstance(e, DocumentEntry)] == []
    assert await client.query(m.GET_FOLDERS_FOR_DOCUMENT, {
        "$XDSDocumentEntryEntryUUID": m.quoted(entry.entry_uuid)}) == []


async def registered_document_for(client: Client, pid: str, **kwargs):
    built = await client.register(pid, **kwargs)
    [entry] = [e for e in await client.query(m.GET_DOCUMENTS, {
        "$XDSDocumentEntryUniqueId": m.in_list(built.document_unique_id)}) if isinstance(e, DocumentEntry)]
    return pid, built, entry


# --- refused requests: one per error code, nothing changed -------------------------------------------


async def refused(client: Client, envelope: bytes, code: str) -> Outcome:
    before = await client.snapshot()
    outcome = await client.update(envelope)
    assert outcome.status == STATUS_FAILURE
    assert code in outcome.codes, outcome.errors
    assert await client.snapshot() == before
    return outcome


async def test_previous_version_not_the_latest_is_a_version_error(client):
    pid, built, v1 = await registered_document(client)
    same = {"hashes": [built.document_hashes[0]], "sizes": [built.document_sizes[0]]}
    assert (await client.update(u.new_document_version(pid, v1.entry_uuid, "1", built.document_unique_id,
                                                       **same))).status == STATUS_SUCCESS
    outcome = await refused(client, u.new_document_version(pid, v1.entry_uuid, "1", built.document_unique_id,
                                                           **same), "XDSMetadataVersionError")
    assert outcome.errors[0].location == "Document01"  # named as the submitter named it


async def test_changing_the_patient_is_a_reconciliation_error(client):
    _pid, built, v1 = await registered_document(client)
    other = await client.patient()
    await refused(client, u.new_document_version(other, v1.entry_uuid, "1", built.document_unique_id),
                  "XDSPatientIDReconciliationError")


async def test_folder_membership_across_patients_is_a_reconciliation_error(client):
    pid = await client.patient()
    with_folder = await client.register(pid, folder=True, documents=0)
    [folder] = await client.query(m.GET_FOLDERS, {"$XDSFolderUniqueId": m.in_list(with_folder.folder_unique_id)})
    _, _, other_entry = await registered_document(client)
    await refused(client, u.add_to_folder(pid, folder.entry_uuid, other_entry.entry_uuid),
                  "XDSPatientIDReconciliationError")


@pytest.mark.parametrize("case", ["unknown lid", "changed uniqueId", "deprecated", "no PreviousVersion",
                                  "initial version", "status mismatch", "status of old version",
                                  "status not from the SubmissionSet", "status of a SubmissionSet membership"])
async def test_metadata_update_errors(client, case):
    pid, built, v1 = await registered_document(client)
    uid = built.document_unique_id
    if case == "unknown lid":
        envelope = u.new_document_version(pid, m.new_uuid(), "1", uid)
    elif case == "changed uniqueId":
        envelope = u.new_document_version(pid, v1.entry_uuid, "1", m.new_oid())
    elif case == "deprecated":
        assert (await client.update(u.status_change(pid, v1.entry_uuid, APPROVED, DEPRECATED))).status \
            == STATUS_SUCCESS
        envelope = u.new_document_version(pid, v1.entry_uuid, "1", uid)
    elif case == "no PreviousVersion":
        envelope = u.new_document_version(pid, v1.entry_uuid, None, uid)
    elif case == "initial version":
        envelope = u.envelope(m.submit_objects_request(pid).xml)
    elif case == "status mismatch":
        envelope = u.status_change(pid, v1.entry_uuid, DEPRECATED, APPROVED)
    elif case == "status of old version":
        assert (await client.update(u.new_document_version(pid, v1.entry_uuid, "1", uid))).status == STATUS_SUCCESS
        envelope = u.status_change(pid, v1.entry_uuid, DEPRECATED, APPROVED)
    elif case == "status not from the SubmissionSet":
        envelope = u.status_change(pid, v1.entry_uuid, APPROVED, DEPRECATED, source=v1.entry_uuid)
    else:
        assocs = await client.query(m.GET_ASSOCIATIONS, {"$uuid": m.in_list(v1.entry_uuid)})
        [ss_member] = [a for a in assocs if isinstance(a, Association) and a.type == m.HAS_MEMBER]
        envelope = u.status_change(pid, ss_member.entry_uuid, APPROVED, DEPRECATED)
    await refused(client, envelope, "XDSMetadataUpdateError")


async def test_metadata_that_is_no_update_operation(client):
    pid, _, v1 = await registered_document(client)
    # an RPLC in an update request: replacing is ITI-42's business
    built = m.submit_objects_request(pid, replaces=v1.entry_uuid)
    await refused(client, u.envelope(built.xml.decode().replace(
        '<rim:ExtrinsicObject id="Document01"', f'<rim:ExtrinsicObject id="Document01" lid="{m.new_uuid()}"')
        .replace('targetObject="Document01" objectType="urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:'
                 'Association">', 'targetObject="Document01" objectType="urn:oasis:names:tc:ebxml-regrep:ObjectType:'
                 'RegistryObject:Association"><rim:Slot name="PreviousVersion"><rim:ValueList><rim:Value>1'
                 '</rim:Value></rim:ValueList></rim:Slot>')), "XDSMetadataUpdateOperationError")


async def test_update_request_metadata_errors_and_unknown_patient(client):
    pid, built, v1 = await registered_document(client)
    # a status value that is no availabilityStatus
    await refused(client, u.status_change(pid, v1.entry_uuid, APPROVED, "urn:oasis:names:tc:ebxml-regrep:"
                                                                        "StatusType:Submitted"),
                  "XDSMetadataUpdateError")
    # the ITI-42 validator's rules hold: a DocumentEntry without a mimeType
    await refused(client, u.new_document_version(pid, v1.entry_uuid, "1", built.document_unique_id,
                                                 omit_document=["mimeType"]), "XDSRegistryMetadataError")
    # an unknown patient
    await refused(client, u.status_change(m.new_patient_id(), v1.entry_uuid, APPROVED, DEPRECATED),
                  "XDSUnknownPatientId")


async def test_a_status_change_and_a_new_version_of_one_object_together(client):
    """ITI TF-2b 3.57.4.1.3.1: the new version is created, then the status applies to it."""
    pid, built, v1 = await registered_document(client)
    envelope = u.new_document_version(pid, v1.entry_uuid, "1", built.document_unique_id)
    status = u.status_change(pid, v1.entry_uuid, APPROVED, DEPRECATED)
    change = status[status.index(b'<rim:Association id="StatusChange01"'):status.index(b"</rim:RegistryObjectList>")]
    outcome = await client.update(envelope.replace(b"</rim:RegistryObjectList>", change + b"</rim:RegistryObjectList>"))
    assert outcome.status == STATUS_SUCCESS, outcome.errors
    rows = await client.rows("document_entry", built.document_unique_id)
    assert [(r["version"], r["latest"], r["status"]) for r in rows] == [(1, False, DEPRECATED), (2, True, DEPRECATED)]


async def test_concurrent_updates_of_one_version_let_one_in(client):
    pid, built, v1 = await registered_document(client)
    requests = [u.new_document_version(pid, v1.entry_uuid, "1", built.document_unique_id, title=f"Edit {i}")
                for i in range(4)]
    outcomes = await asyncio.gather(*(client.update(r) for r in requests))
    assert sorted(o.status for o in outcomes).count(STATUS_SUCCESS) == 1, [o.errors for o in outcomes]
    assert all(o.codes == ["XDSMetadataVersionError"] for o in outcomes if o.status != STATUS_SUCCESS), \
        [o.errors for o in outcomes]
    rows = await client.rows("document_entry", built.document_unique_id)
    assert [(r["version"], r["latest"]) for r in rows] == [(1, False), (2, True)]


async def test_status_change_for_another_patients_document_is_a_reconciliation_error(client):
    _, _, entry = await registered_document(client)
    other = await client.patient()
    await refused(client, u.status_change(other, entry.entry_uuid, APPROVED, DEPRECATED),
                  "XDSPatientIDReconciliationError")


async def test_a_new_version_with_an_entry_uuid_already_used_is_refused(client):
    pid, built, v1 = await registered_document(client)
    second = await client.register(pid)
    [taken] = await client.query(m.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": m.in_list(second.document_unique_id)})
    envelope = u.new_document_version(pid, v1.entry_uuid, "1", built.document_unique_id)
    outcome = await refused(client, envelope.replace(b'"Document01"', f'"{taken.entry_uuid}"'.encode()),
                            "XDSRegistryMetadataError")
    assert outcome.errors[0].location == taken.entry_uuid


async def test_a_submission_set_member_pointing_at_the_status_change_is_tolerated(client):
    pid, _, entry = await registered_document(client)
    outcome = await client.update(u.status_change(pid, entry.entry_uuid, APPROVED, DEPRECATED, member=True))
    assert (outcome.status, outcome.errors) == (STATUS_SUCCESS, [])
    assert await client.query(m.FIND_DOCUMENTS, find_documents(pid)) == []


async def test_propagation_links_latest_versions_only(client):
    pid = await client.patient()
    built = await client.register(pid, folder=True)
    [folder] = await client.query(m.GET_FOLDERS, {"$XDSFolderUniqueId": m.in_list(built.folder_unique_id)})
    [entry] = await client.query(m.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": m.in_list(built.document_unique_id)})
    assert (await client.update(u.new_folder_version(pid, folder.entry_uuid, "1", built.folder_unique_id))).status \
        == STATUS_SUCCESS
    assert (await client.update(u.new_document_version(pid, entry.entry_uuid, "1", built.document_unique_id))).status \
        == STATUS_SUCCESS
    async with client.pool.acquire() as conn:
        links = await conn.fetch(
            "SELECT f.version AS folder, d.version AS document FROM association a"
            " JOIN folder f ON f.id = a.source JOIN document_entry d ON d.id = a.target"
            " WHERE f.lid = $1::uuid AND a.type = $2 ORDER BY 1, 2", folder.entry_uuid[9:], m.HAS_MEMBER)
    assert [(r["folder"], r["document"]) for r in links] == [(1, 1), (2, 1), (2, 2)]
    [v2] = await client.query(m.GET_FOLDERS, {"$XDSFolderUniqueId": m.in_list(built.folder_unique_id)})
    contents = await client.query(m.GET_FOLDER_AND_CONTENTS, {"$XDSFolderEntryUUID": m.quoted(v2.entry_uuid)})
    assert [e.version for e in contents if isinstance(e, DocumentEntry)] == ["2"]
