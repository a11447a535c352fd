"""ITI-18 Registry Stored Query against the real registry database.

Data goes in through the real ITI-42 handler (registry.register) from NIST-shaped messages
(tests.messages, with pre-assigned entryUUIDs so the test knows every id); answers are read
back with the ebRIM reader, so the assertions are about the objects returned, not strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg
import pytest
from lxml import etree

from ihe.errors import STATUS_FAILURE, STATUS_SUCCESS, RegistryError, parse_registry_response
from ihe.metadata import vocabulary as v
from ihe.metadata.ebrim import object_fragment, read_object_refs, read_registry_objects
from ihe.metadata.model import (
    Association,
    DocumentEntry,
    Folder,
    Identifiable,
    RegistryObject,
    SubmissionSet,
)
from ihe.namespaces import ACTION_ITI18_RESPONSE, RS, qn
from ihe.soap import parse_envelope
from ihe.xml import parse_xml
from registry.app import Registry
from registry.patients import Demographics, record_patient
from registry.register import register_document_set
from registry.settings import RegistrySettings
from registry.stored_query import registry_stored_query
from tests import messages as m
from tests.messages import Code, in_list, quoted

APPROVED = v.STATUS_APPROVED
DEPRECATED = v.STATUS_DEPRECATED
BOTH = in_list(APPROVED, DEPRECATED)

CT = Code("CT", "1.2.840.10008.2.16.4", "Computed Tomography")
MR = Code("MR", "1.2.840.10008.2.16.4", "Magnetic Resonance")
CHEST = Code("T-D3000", "SNOMED-RT", "Chest")
HEAD = Code("T-D1000", "SNOMED-RT", "Head")
NORMAL = Code("N", "2.16.840.1.113883.5.25", "normal")
RESTRICTED = Code("R", "2.16.840.1.113883.5.25", "restricted")
PDF = Code("urn:ihe:iti:xds-sd:pdf:2008", "1.3.6.1.4.1.19376.1.2.3", "PDF")


# --- harness ------------------------------------------------------------------------------------------


@dataclass
class Answer:
    """A parsed AdhocQueryResponse."""

    status: str
    errors: list[RegistryError]
    objects: list[RegistryObject] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)
    root: etree._Element | None = None

    @property
    def codes(self) -> list[str]:
        return [e.code for e in self.errors]

    def ids(self, kind: type | None = None) -> set[str]:
        return {o.entry_uuid for o in self.objects if kind is None or isinstance(o, kind)}

    def of(self, kind: type) -> list:
        return [o for o in self.objects if isinstance(o, kind)]


def make_registry(pool, **settings) -> Registry:
    return Registry(settings=RegistrySettings(**settings), pool=pool)


@pytest.fixture(scope="module")
async def shared_pool(registry_database_url):
    """One pool for the module, without emptying the tables per test (every test uses fresh patients
    and ids, so tests cannot see each other's objects; emptying costs half a second per test)."""
    pool = await asyncpg.create_pool(registry_database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def registry(shared_pool) -> Registry:
    return make_registry(shared_pool, max_query_results=100)


async def new_patient(registry: Registry) -> str:
    """A fresh patient id, known to the registry as if fed by ITI-8."""
    pid = m.new_patient_id()
    async with registry.pool.acquire() as conn:
        await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics(family="Test"))
    return pid


async def submit(registry: Registry, patient_id: str, **kwargs) -> m.BuiltSubmission:
    """Register through the real ITI-42 handler; the submission must succeed."""
    envelope, built = m.register_request(patient_id, use_uuids=True, **kwargs)
    reply = await register_document_set(registry, parse_envelope(parse_xml(envelope)))
    status, errors = parse_registry_response(reply.body)
    assert status == STATUS_SUCCESS, errors
    return built


async def query(registry: Registry, query_id: str, params: dict, return_type: str = "LeafClass",
                home: str | None = None) -> Answer:
    xml = m.stored_query_request(query_id, params, return_type, home_community_id=home)
    request = parse_envelope(parse_xml(m.soap_envelope(m.ACTION_ITI18, xml)))
    reply = await registry_stored_query(registry, request)
    assert reply.action == ACTION_ITI18_RESPONSE
    assert isinstance(reply.body, bytes)
    return read_answer(parse_xml(reply.body))


def read_answer(root: etree._Element) -> Answer:
    assert root.tag == "{urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0}AdhocQueryResponse"
    status, errors = parse_registry_response(root)
    error_list = root.find(qn(RS, "RegistryErrorList"))
    if errors:
        assert error_list is not None
    # RegistryObjectList is required by the schema, even in a failure.
    assert root.find("{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}RegistryObjectList") is not None
    return Answer(status, errors, read_registry_objects(root), read_object_refs(root), root)


def failed(answer: Answer, code: str) -> None:
    assert answer.status == STATUS_FAILURE
    assert code in answer.codes, answer.errors
    assert answer.objects == [] and answer.refs == []
    assert "XDSRegistryMetadataError" not in answer.codes


def find_documents(pid: str, status: str = in_list(APPROVED), **extra) -> dict:
    return {"$XDSDocumentEntryPatientId": quoted(pid), "$XDSDocumentEntryStatus": status, **extra}


def assoc_ids(built: m.BuiltSubmission, atype: str = m.HAS_MEMBER, source: str | None = None,
              target: str | None = None) -> set[str]:
    return {aid for aid, (t, s, tg) in built.associations.items()
            if t == atype and (source is None or s == source) and (target is None or tg == target)}


# --- FindDocuments -------------------------------------------------------------------------------------


async def test_find_documents_returns_the_patients_entries_leaf_class_and_object_ref(registry):
    pid, other = await new_patient(registry), await new_patient(registry)
    first = await submit(registry, pid, documents=2)
    second = await submit(registry, pid)
    await submit(registry, other)

    answer = await query(registry, m.FIND_DOCUMENTS, find_documents(pid))
    assert answer.status == STATUS_SUCCESS and answer.errors == []
    expected = {*first.document_ids, *second.document_ids}
    assert answer.ids() == expected
    assert all(isinstance(o, DocumentEntry) for o in answer.objects)
    by_id = {o.entry_uuid: o for o in answer.objects}
    entry = by_id[second.document_id]
    assert entry.patient_id.to_cx() == pid
    assert entry.unique_id == second.document_unique_id
    assert entry.status == APPROVED
    assert {c.key for c in entry.event_codes} == {c.key for c in m.EVENT_CODES}

    refs = await query(registry, m.FIND_DOCUMENTS, find_documents(pid), "ObjectRef")
    assert refs.status == STATUS_SUCCESS
    assert refs.objects == [] and set(refs.refs) == expected and len(refs.refs) == 3


async def test_find_documents_unknown_patient_is_an_empty_success(registry):
    answer = await query(registry, m.FIND_DOCUMENTS, find_documents(m.new_patient_id()))
    assert answer.status == STATUS_SUCCESS and answer.objects == [] and answer.errors == []


async def test_find_documents_status_filter(registry):
    pid = await new_patient(registry)
    original = await submit(registry, pid)
    replacement = await submit(registry, pid, replaces=original.document_id)
    approved = await query(registry, m.FIND_DOCUMENTS, find_documents(pid))
    assert approved.ids() == {replacement.document_id}
    deprecated = await query(registry, m.FIND_DOCUMENTS, find_documents(pid, in_list(DEPRECATED)))
    assert deprecated.ids() == {original.document_id}
    assert deprecated.objects[0].status == DEPRECATED
    both = await query(registry, m.FIND_DOCUMENTS, find_documents(pid, BOTH))
    assert both.ids() == {original.document_id, replacement.document_id}
    # Several Value elements of one Slot are one OR list; a StatusType never stored matches nothing.
    split = await query(registry, m.FIND_DOCUMENTS, find_documents(
        pid, [in_list(APPROVED), in_list(DEPRECATED), in_list("urn:oasis:names:tc:ebxml-regrep:StatusType:Withdrawn")]))
    assert split.ids() == both.ids()


async def test_event_codes_and_or_semantics(registry):
    pid = await new_patient(registry)
    ct_chest = (await submit(registry, pid, event_codes=(CT, CHEST))).document_id
    mr_chest = (await submit(registry, pid, event_codes=(MR, CHEST))).document_id
    ct_head = (await submit(registry, pid, event_codes=(CT, HEAD))).document_id

    async def events(*groups: tuple[Code, ...]) -> set[str]:
        slots = [in_list(*(c.key for c in g)) for g in groups]
        answer = await query(registry, m.FIND_DOCUMENTS, find_documents(
            pid, **{"$XDSDocumentEntryEventCodeList": [[s] for s in slots]}))
        assert answer.status == STATUS_SUCCESS, answer.errors
        return answer.ids()

    assert await events((CT,)) == {ct_chest, ct_head}
    assert await events((CT, MR)) == {ct_chest, mr_chest, ct_head}  # one Slot: OR
    assert await events((CT,), (CHEST,)) == {ct_chest}  # two Slots: AND
    assert await events((CT, MR), (HEAD,)) == {ct_head}  # (CT OR MR) AND HEAD
    assert await events((MR,), (HEAD,)) == set()


async def test_confidentiality_codes_and_or_and_single_code_parameters_or(registry):
    pid = await new_patient(registry)
    normal = (await submit(registry, pid, confidentiality_codes=(NORMAL,))).document_id
    both = (await submit(registry, pid, confidentiality_codes=(NORMAL, RESTRICTED))).document_id
    pdf = (await submit(registry, pid, confidentiality_codes=(RESTRICTED,), format_code=PDF)).document_id

    async def ids(**params) -> set[str]:
        answer = await query(registry, m.FIND_DOCUMENTS, find_documents(pid, **params))
        assert answer.status == STATUS_SUCCESS, answer.errors
        return answer.ids()

    conf = "$XDSDocumentEntryConfidentialityCode"
    assert await ids(**{conf: in_list(NORMAL.key)}) == {normal, both}
    assert await ids(**{conf: in_list(NORMAL.key, RESTRICTED.key)}) == {normal, both, pdf}
    assert await ids(**{conf: [[in_list(NORMAL.key)], [in_list(RESTRICTED.key)]]}) == {both}
    assert await ids(**{"$XDSDocumentEntryFormatCode": in_list(PDF.key)}) == {pdf}
    assert await ids(**{"$XDSDocumentEntryFormatCode": in_list(PDF.key, m.FORMAT_CODE.key)}) == {normal, both, pdf}
    assert await ids(**{"$XDSDocumentEntryClassCode": in_list(m.CLASS_CODE.key),
                        "$XDSDocumentEntryTypeCode": in_list(m.TYPE_CODE.key),
                        "$XDSDocumentEntryPracticeSettingCode": in_list(m.PRACTICE_SETTING_CODE.key),
                        "$XDSDocumentEntryHealthcareFacilityTypeCode": in_list(m.HCFT_CODE.key)}) == {normal, both, pdf}
    assert await ids(**{"$XDSDocumentEntryClassCode": in_list("other^^^2.16.840.1.113883.6.1")}) == set()
    # The same code in another coding scheme is another code.
    assert await ids(**{conf: in_list("N^^^other-scheme")}) == set()


async def test_a_code_parameter_without_and_semantics_refuses_repeated_slots(registry):
    pid = await new_patient(registry)
    answer = await query(registry, m.FIND_DOCUMENTS, find_documents(pid, **{
        "$XDSDocumentEntryClassCode": [[in_list(m.CLASS_CODE.key)], [in_list(m.CLASS_CODE.key)]]}))
    failed(answer, "XDSStoredQueryParamNumber")


async def test_time_ranges_from_inclusive_to_exclusive(registry):
    pid = await new_patient(registry)
    doc = (await submit(registry, pid, creation_time="20240105083000", service_start_time="200401050800",
                        service_stop_time=None)).document_id

    async def ids(**params) -> set[str]:
        answer = await query(registry, m.FIND_DOCUMENTS, find_documents(pid, **params))
        assert answer.status == STATUS_SUCCESS, answer.errors
        return answer.ids()

    c_from, c_to = "$XDSDocumentEntryCreationTimeFrom", "$XDSDocumentEntryCreationTimeTo"
    assert await ids(**{c_from: "20240105083000"}) == {doc}  # From is inclusive
    assert await ids(**{c_from: "20240105083001"}) == set()
    assert await ids(**{c_to: "20240105083000"}) == set()  # To is exclusive
    assert await ids(**{c_to: "20240105083001"}) == {doc}
    assert await ids(**{c_from: "2024", c_to: "2025"}) == {doc}  # lower precision: earliest instant
    assert await ids(**{c_from: "202401050831"}) == set()
    assert await ids(**{c_to: "20240105"}) == set()
    assert await ids(**{"$XDSDocumentEntryServiceStartTimeFrom": "200401050800",
                        "$XDSDocumentEntryServiceStartTimeTo": "200401050801"}) == {doc}
    assert await ids(**{"$XDSDocumentEntryServiceStartTimeTo": "200401050800"}) == set()
    # No serviceStopTime: a range on it cannot match.
    assert await ids(**{"$XDSDocumentEntryServiceStopTimeFrom": "1900"}) == set()


async def test_author_person_like_wildcards(registry):
    pid = await new_patient(registry)
    smitty = (await submit(registry, pid)).document_id  # author ^Smitty^Gerald^^^
    other = (await submit(registry, pid, authors=(m.TestAuthor(person="^O'Neil^Anne^^^"),
                                                  m.TestAuthor(person="^Smith^John^^^")))).document_id

    async def ids(*patterns: str) -> set[str]:
        answer = await query(registry, m.FIND_DOCUMENTS, find_documents(
            pid, **{"$XDSDocumentEntryAuthorPerson": in_list(*patterns)}))
        assert answer.status == STATUS_SUCCESS, answer.errors
        return answer.ids()

    assert await ids("^Smitty^Gerald^^^") == {smitty}
    assert await ids("%Smitty%") == {smitty}
    assert await ids("Smitty") == set()  # no wildcard: the whole value must match
    assert await ids("^Smit__^%") == {smitty}  # _ is exactly one character
    assert await ids("^Smit_^%") == {other}  # any author of the entry may match
    assert await ids("^O'Neil%") == {other}
    assert await ids("%Gerald%", "%Anne%") == {smitty, other}


async def insert_document(registry: Registry, pid: str, object_type: str) -> str:
    """A DocumentEntry row written straight into the table (ITI-42 here takes Stable entries only)."""
    entry = DocumentEntry(entry_uuid=m.new_uuid(), status=v.STATUS_APPROVED, type=object_type,
                          unique_id=m.new_oid(), patient_id=Identifiable.parse_cx(pid), mime_type="text/plain")
    async with registry.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO document_entry (id, lid, status, object_type, patient_id, unique_id, ebrim)"
            " VALUES ($1, $1, $2, $3, $4, $5, $6)",
            entry.entry_uuid.removeprefix("urn:uuid:"), entry.status, object_type, pid, entry.unique_id,
            object_fragment(entry).decode())
    return entry.entry_uuid


async def test_document_entry_type_defaults_to_stable(registry):
    pid = await new_patient(registry)
    stable = (await submit(registry, pid)).document_id
    on_demand = await insert_document(registry, pid, v.DOCUMENT_ENTRY_ON_DEMAND)
    assert (await query(registry, m.FIND_DOCUMENTS, find_documents(pid))).ids() == {stable}
    asked = await query(registry, m.FIND_DOCUMENTS, find_documents(
        pid, **{"$XDSDocumentEntryType": in_list(m.ON_DEMAND)}))
    assert asked.ids() == {on_demand}
    assert asked.objects[0].type == v.DOCUMENT_ENTRY_ON_DEMAND
    both = await query(registry, m.FIND_DOCUMENTS, find_documents(
        pid, **{"$XDSDocumentEntryType": in_list(m.STABLE, m.ON_DEMAND)}))
    assert both.ids() == {stable, on_demand}


async def test_patient_id_with_a_namespace_id_matches_both_stored_forms(registry):
    pid = await new_patient(registry)  # id^^^&OID&ISO
    plain = (await submit(registry, pid)).document_id
    ident = Identifiable.parse_cx(pid)
    named = f"{ident.id}^^^NHS&{ident.authority_oid}&ISO"
    stored_named = await insert_document(registry, named, v.DOCUMENT_ENTRY_STABLE)
    answer = await query(registry, m.FIND_DOCUMENTS, find_documents(named))
    assert answer.status == STATUS_SUCCESS, answer.errors  # one patient, whatever the form
    assert answer.ids() == {plain, stored_named}
    assert (await query(registry, m.FIND_DOCUMENTS, find_documents(pid))).ids() == {plain}


@pytest.mark.parametrize(("params", "code"), [
    ({"$XDSDocumentEntryStatus": in_list(APPROVED)}, "XDSStoredQueryMissingParam"),
    ({"$XDSDocumentEntryPatientId": quoted("P^^^&1.2.3&ISO")}, "XDSStoredQueryMissingParam"),
    ({"$XDSDocumentEntryPatientId": in_list("P1^^^&1.2.3&ISO", "P2^^^&1.2.3&ISO"),
      "$XDSDocumentEntryStatus": in_list(APPROVED)}, "XDSStoredQueryParamNumber"),
    ({"$XDSDocumentEntryPatientId": quoted("P^^^&1.2.3&ISO"), "$XDSDocumentEntryStatus": in_list(APPROVED),
      "$XDSDocumentEntryCreationTimeFrom": ["2004", "2005"]}, "XDSStoredQueryParamNumber"),
    ({"$XDSDocumentEntryPatientId": "P^^^&1.2.3&ISO", "$XDSDocumentEntryStatus": in_list(APPROVED)},
     "XDSRegistryError"),
    ({"$XDSDocumentEntryPatientId": quoted("P^^^&1.2.3&ISO"), "$XDSDocumentEntryStatus": in_list(APPROVED),
      "$XDSDocumentEntryCreationTimeFrom": "'yesterday'"}, "XDSRegistryError"),
    ({"$XDSDocumentEntryPatientId": quoted("P^^^&1.2.3&ISO"), "$XDSDocumentEntryStatus": in_list(APPROVED),
      "$XDSDocumentEntryClassCode": in_list("18748-4")}, "XDSRegistryError"),
])
async def test_find_documents_parameter_errors(registry, params, code):
    failed(await query(registry, m.FIND_DOCUMENTS, params), code)


async def test_find_documents_by_reference_id(registry):
    pid = await new_patient(registry)
    acc1 = "A1^^^&1.2.3.4&ISO^urn:ihe:iti:xds:2013:accession"
    acc2 = "A2^^^&1.2.3.4&ISO^urn:ihe:iti:xds:2013:accession"
    order = "O7^^^&1.2.3.5&ISO^urn:ihe:iti:xds:2013:order"
    doc1 = (await submit(registry, pid, reference_ids=(acc1, order))).document_id
    doc2 = (await submit(registry, pid, reference_ids=(acc2,))).document_id
    await submit(registry, pid)

    async def ids(*refs: str, **extra) -> set[str]:
        answer = await query(registry, m.FIND_DOCUMENTS_BY_REFERENCE_ID, find_documents(
            pid, **{"$XDSDocumentEntryReferenceIdList": in_list(*refs)}, **extra))
        assert answer.status == STATUS_SUCCESS, answer.errors
        return answer.ids()

    assert await ids(acc1) == {doc1}
    assert await ids(order) == {doc1}
    assert await ids(acc1, acc2) == {doc1, doc2}
    assert await ids("A1^^^&1.2.3.4&ISO") == set()  # the whole CXi value must match
    assert await ids(acc1, **{"$XDSDocumentEntryFormatCode": in_list(PDF.key)}) == set()
    failed(await query(registry, m.FIND_DOCUMENTS_BY_REFERENCE_ID, find_documents(pid)),
           "XDSStoredQueryMissingParam")


# --- FindSubmissionSets / FindFolders ------------------------------------------------------------------


async def test_find_submission_sets(registry):
    pid = await new_patient(registry)
    early = await submit(registry, pid, submission_time="20240101120000")
    late = await submit(registry, pid, submission_time="20240301120000", source_id="1.2.3.4.99",
                        content_type_code=Code("57133-1", "2.16.840.1.113883.6.1", "Referral note"),
                        submission_set_authors=(m.TestAuthor(person="^Who^Else^^^"),))
    await submit(registry, await new_patient(registry))

    async def ids(**extra) -> set[str]:
        answer = await query(registry, m.FIND_SUBMISSION_SETS, {
            "$XDSSubmissionSetPatientId": quoted(pid), "$XDSSubmissionSetStatus": in_list(APPROVED), **extra})
        assert answer.status == STATUS_SUCCESS, answer.errors
        assert all(isinstance(o, SubmissionSet) for o in answer.objects)
        return answer.ids()

    assert await ids() == {early.submission_set_id, late.submission_set_id}
    assert await ids(**{"$XDSSubmissionSetSourceId": in_list("1.2.3.4.99")}) == {late.submission_set_id}
    assert await ids(**{"$XDSSubmissionSetSubmissionTimeFrom": "20240201",
                        "$XDSSubmissionSetSubmissionTimeTo": "20240301120000"}) == set()
    assert await ids(**{"$XDSSubmissionSetSubmissionTimeFrom": "20240201",
                        "$XDSSubmissionSetSubmissionTimeTo": "20240301120001"}) == {late.submission_set_id}
    assert await ids(**{"$XDSSubmissionSetAuthorPerson": quoted("%Dopplemeyer%")}) == {early.submission_set_id}
    assert await ids(**{"$XDSSubmissionSetContentType": in_list("57133-1^^^2.16.840.1.113883.6.1")}) == {
        late.submission_set_id}
    # authorPerson is single-valued for SubmissionSets.
    failed(await query(registry, m.FIND_SUBMISSION_SETS, {
        "$XDSSubmissionSetPatientId": quoted(pid), "$XDSSubmissionSetStatus": in_list(APPROVED),
        "$XDSSubmissionSetAuthorPerson": in_list("%a%", "%b%")}), "XDSStoredQueryParamNumber")
    failed(await query(registry, m.FIND_SUBMISSION_SETS, {"$XDSSubmissionSetPatientId": quoted(pid)}),
           "XDSStoredQueryMissingParam")


async def test_find_folders(registry):
    pid = await new_patient(registry)
    episode = Code("ImagingEpisode", "1.3.6.1.4.1.21367.100.1", "Imaging episode")
    urgent = Code("Urgent", "1.3.6.1.4.1.21367.100.1", "Urgent")
    f1 = (await submit(registry, pid, folder=True, folder_codes=(episode,))).folder_id
    f2 = (await submit(registry, pid, folder=True, folder_codes=(episode, urgent))).folder_id

    async def ids(**extra) -> set[str]:
        answer = await query(registry, m.FIND_FOLDERS, {
            "$XDSFolderPatientId": quoted(pid), "$XDSFolderStatus": in_list(APPROVED), **extra})
        assert answer.status == STATUS_SUCCESS, answer.errors
        assert all(isinstance(o, Folder) for o in answer.objects)
        return answer.ids()

    assert await ids() == {f1, f2}
    assert await ids(**{"$XDSFolderCodeList": in_list(urgent.key)}) == {f2}
    assert await ids(**{"$XDSFolderCodeList": in_list(urgent.key, episode.key)}) == {f1, f2}
    assert await ids(**{"$XDSFolderCodeList": [[in_list(episode.key)], [in_list(urgent.key)]]}) == {f2}
    # lastUpdateTime is set by the registry at registration: now.
    assert await ids(**{"$XDSFolderLastUpdateTimeFrom": "2000", "$XDSFolderLastUpdateTimeTo": "2999"}) == {f1, f2}
    assert await ids(**{"$XDSFolderLastUpdateTimeTo": "2000"}) == set()
    failed(await query(registry, m.FIND_FOLDERS, {"$XDSFolderPatientId": quoted(pid)}), "XDSStoredQueryMissingParam")


# --- GetAll ---------------------------------------------------------------------------------------------


async def test_get_all(registry):
    pid = await new_patient(registry)
    first = await submit(registry, pid, documents=2, folder=True)
    second = await submit(registry, pid, replaces=first.document_ids[0])
    await submit(registry, await new_patient(registry))
    params = {"$patientId": quoted(pid), "$XDSDocumentEntryStatus": BOTH,
              "$XDSSubmissionSetStatus": in_list(APPROVED), "$XDSFolderStatus": in_list(APPROVED)}
    answer = await query(registry, m.GET_ALL, params)
    assert answer.status == STATUS_SUCCESS, answer.errors
    assert answer.ids(DocumentEntry) == {*first.document_ids, *second.document_ids}
    assert answer.ids(SubmissionSet) == {first.submission_set_id, second.submission_set_id}
    assert answer.ids(Folder) == {first.folder_id}
    # Every association of both submissions: HasMembers (also SS -> (Folder -> Document)) and the RPLC,
    # and the two the registry added because the replaced document was in the folder (ITI TF-3 4.2.2.2.3).
    sent = set(first.associations) | set(second.associations)
    assert answer.ids(Association) >= sent
    made = {(a.source_uuid, a.target_uuid) for a in answer.of(Association) if a.entry_uuid not in sent}
    folder_link = next(a.entry_uuid for a in answer.of(Association) if (a.source_uuid, a.target_uuid) == (
        first.folder_id, second.document_id))
    assert made == {(first.folder_id, second.document_id), (second.submission_set_id, folder_link)}

    approved_only = await query(registry, m.GET_ALL, {**params, "$XDSDocumentEntryStatus": in_list(APPROVED)})
    replaced = first.document_ids[0]
    assert replaced not in approved_only.ids()
    # No association pointing at an object left out of the answer.
    returned = approved_only.ids()
    for a in approved_only.of(Association):
        assert a.source_uuid in returned and a.target_uuid in returned

    refs = await query(registry, m.GET_ALL, params, "ObjectRef")
    assert set(refs.refs) == answer.ids()
    failed(await query(registry, m.GET_ALL, {"$patientId": quoted(pid), "$XDSDocumentEntryStatus": BOTH}),
           "XDSStoredQueryMissingParam")


# --- Get* by id -----------------------------------------------------------------------------------------


async def test_get_documents_by_uuid_unique_id_and_logical_id(registry):
    pid = await new_patient(registry)
    built = await submit(registry, pid, documents=3)
    two = built.document_ids[:2]
    by_uuid = await query(registry, m.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": in_list(*two)})
    assert by_uuid.ids() == set(two)
    by_uid = await query(registry, m.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": in_list(*built.document_unique_ids)})
    assert by_uid.ids() == set(built.document_ids)
    assert {o.unique_id for o in by_uid.objects} == set(built.document_unique_ids)
    by_lid = await query(registry, m.GET_DOCUMENTS, {"$XDSDocumentEntryLogicalID": in_list(two[0])})
    assert by_lid.ids() == {two[0]}
    unknown = await query(registry, m.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": in_list(m.new_uuid())})
    assert unknown.status == STATUS_SUCCESS and unknown.objects == []


async def test_get_documents_parameter_errors(registry):
    pid = await new_patient(registry)
    built = await submit(registry, pid)
    failed(await query(registry, m.GET_DOCUMENTS, {}), "XDSStoredQueryMissingParam")
    failed(await query(registry, m.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": in_list(built.document_id),
                                                   "$XDSDocumentEntryUniqueId": in_list(built.document_unique_id)}),
           "XDSStoredQueryParamNumber")
    failed(await query(registry, m.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": in_list("Document01")}),
           "XDSRegistryError")


async def test_get_documents_of_two_patients_is_not_single_patient(registry):
    a = await submit(registry, await new_patient(registry))
    b = await submit(registry, await new_patient(registry))
    answer = await query(registry, m.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": in_list(a.document_id,
                                                                                           b.document_id)})
    failed(answer, "XDSResultNotSinglePatient")
    # The error names no patient id: the consumer may not learn whose the other document is.
    assert all(a.patient_id not in e.context and b.patient_id not in e.context for e in answer.errors)


async def test_get_folders(registry):
    pid = await new_patient(registry)
    built = await submit(registry, pid, folder=True)
    for params in ({"$XDSFolderEntryUUID": in_list(built.folder_id)},
                   {"$XDSFolderUniqueId": in_list(built.folder_unique_id)},
                   {"$XDSFolderLogicalID": in_list(built.folder_id)}):
        answer = await query(registry, m.GET_FOLDERS, params)
        assert answer.status == STATUS_SUCCESS, answer.errors
        assert answer.ids() == {built.folder_id}
        folder = answer.objects[0]
        assert isinstance(folder, Folder) and folder.unique_id == built.folder_unique_id
        assert folder.last_update_time  # set by the registry
    failed(await query(registry, m.GET_FOLDERS, {}), "XDSStoredQueryMissingParam")


async def test_get_associations(registry):
    pid = await new_patient(registry)
    built = await submit(registry, pid, folder=True)
    doc = built.document_id
    answer = await query(registry, m.GET_ASSOCIATIONS, {"$uuid": in_list(doc)})
    assert answer.status == STATUS_SUCCESS, answer.errors
    # SS -> Document and Folder -> Document.
    assert answer.ids() == assoc_ids(built, target=doc)
    assert len(answer.ids()) == 2
    assert all(isinstance(o, Association) for o in answer.objects)
    around_folder = await query(registry, m.GET_ASSOCIATIONS, {"$uuid": in_list(built.folder_id, doc)})
    assert around_folder.ids() == assoc_ids(built, target=doc) | assoc_ids(built, source=built.folder_id) | \
        assoc_ids(built, target=built.folder_id)
    failed(await query(registry, m.GET_ASSOCIATIONS, {}), "XDSStoredQueryMissingParam")


async def test_get_documents_and_associations(registry):
    pid = await new_patient(registry)
    built = await submit(registry, pid, documents=2, folder=True)
    doc = built.document_ids[0]
    answer = await query(registry, m.GET_DOCUMENTS_AND_ASSOCIATIONS,
                         {"$XDSDocumentEntryUniqueId": in_list(built.document_unique_ids[0])})
    assert answer.status == STATUS_SUCCESS, answer.errors
    assert answer.ids(DocumentEntry) == {doc}
    assert answer.ids(Association) == assoc_ids(built, target=doc)
    failed(await query(registry, m.GET_DOCUMENTS_AND_ASSOCIATIONS, {}), "XDSStoredQueryMissingParam")


async def test_get_submission_sets(registry):
    pid = await new_patient(registry)
    first = await submit(registry, pid, folder=True)
    second = await submit(registry, pid, existing_folder=first.folder_id)
    answer = await query(registry, m.GET_SUBMISSION_SETS, {"$uuid": in_list(first.document_id, second.document_id)})
    assert answer.status == STATUS_SUCCESS, answer.errors
    assert answer.ids(SubmissionSet) == {first.submission_set_id, second.submission_set_id}
    assert answer.ids(Association) == assoc_ids(first, source=first.submission_set_id, target=first.document_id) | \
        assoc_ids(second, source=second.submission_set_id, target=second.document_id)
    # The folder is a member of the first SubmissionSet only.
    of_folder = await query(registry, m.GET_SUBMISSION_SETS, {"$uuid": in_list(first.folder_id)})
    assert of_folder.ids(SubmissionSet) == {first.submission_set_id}


async def test_get_submission_set_and_contents(registry):
    pid = await new_patient(registry)
    built = await submit(registry, pid, documents=2, folder=True)
    everything = set(built.associations) | {built.submission_set_id, built.folder_id, *built.document_ids}
    for params in ({"$XDSSubmissionSetEntryUUID": quoted(built.submission_set_id)},
                   {"$XDSSubmissionSetUniqueId": quoted(built.submission_set_unique_id)}):
        answer = await query(registry, m.GET_SUBMISSION_SET_AND_CONTENTS, params)
        assert answer.status == STATUS_SUCCESS, answer.errors
        assert answer.ids() == everything
        assert answer.ids(SubmissionSet) == {built.submission_set_id}

    # A format code no document has: documents go, and every association that names them.
    filtered = await query(registry, m.GET_SUBMISSION_SET_AND_CONTENTS, {
        "$XDSSubmissionSetEntryUUID": quoted(built.submission_set_id),
        "$XDSDocumentEntryFormatCode": in_list(PDF.key)})
    assert filtered.ids() == {built.submission_set_id, built.folder_id} | assoc_ids(
        built, source=built.submission_set_id, target=built.folder_id)
    failed(await query(registry, m.GET_SUBMISSION_SET_AND_CONTENTS, {
        "$XDSSubmissionSetEntryUUID": in_list(built.submission_set_id, m.new_uuid())}), "XDSStoredQueryParamNumber")
    failed(await query(registry, m.GET_SUBMISSION_SET_AND_CONTENTS, {}), "XDSStoredQueryMissingParam")


async def test_get_folder_and_contents(registry):
    pid = await new_patient(registry)
    first = await submit(registry, pid, documents=2, folder=True)
    later = await submit(registry, pid, existing_folder=first.folder_id, confidentiality_codes=(RESTRICTED,))
    docs = {*first.document_ids, later.document_id}
    folder_links = assoc_ids(first, source=first.folder_id) | assoc_ids(later, source=first.folder_id)
    assert len(folder_links) == 3
    answer = await query(registry, m.GET_FOLDER_AND_CONTENTS, {"$XDSFolderUniqueId": quoted(first.folder_unique_id)})
    assert answer.status == STATUS_SUCCESS, answer.errors
    assert answer.ids(Folder) == {first.folder_id}
    assert answer.ids(DocumentEntry) == docs
    assert answer.ids(Association) == folder_links
    assert answer.ids(SubmissionSet) == set()

    restricted = await query(registry, m.GET_FOLDER_AND_CONTENTS, {
        "$XDSFolderEntryUUID": quoted(first.folder_id),
        "$XDSDocumentEntryConfidentialityCode": in_list(RESTRICTED.key)})
    assert restricted.ids(DocumentEntry) == {later.document_id}
    assert restricted.ids(Association) == assoc_ids(later, source=first.folder_id)


async def test_get_folders_for_document(registry):
    pid = await new_patient(registry)
    first = await submit(registry, pid, folder=True)
    second = await submit(registry, pid, folder=True, document_ids=[m.new_uuid()])
    answer = await query(registry, m.GET_FOLDERS_FOR_DOCUMENT,
                         {"$XDSDocumentEntryEntryUUID": quoted(first.document_id)})
    assert answer.status == STATUS_SUCCESS, answer.errors
    assert answer.ids() == {first.folder_id}
    by_uid = await query(registry, m.GET_FOLDERS_FOR_DOCUMENT, {"$XDSDocumentEntryUniqueId": quoted(
        second.document_unique_id)})
    assert by_uid.ids() == {second.folder_id}
    alone = await submit(registry, pid)
    empty = await query(registry, m.GET_FOLDERS_FOR_DOCUMENT, {"$XDSDocumentEntryEntryUUID": quoted(alone.document_id)})
    assert empty.status == STATUS_SUCCESS and empty.objects == []
    failed(await query(registry, m.GET_FOLDERS_FOR_DOCUMENT, {}), "XDSStoredQueryMissingParam")


async def test_get_related_documents(registry):
    pid = await new_patient(registry)
    original = await submit(registry, pid)
    replacement = await submit(registry, pid, replaces=original.document_id)
    addendum = await submit(registry, pid, replaces=replacement.document_id, relationship="APND")
    rplc = assoc_ids(replacement, atype=m.RELATIONSHIP_TYPES["RPLC"])
    apnd = assoc_ids(addendum, atype=m.RELATIONSHIP_TYPES["APND"])

    async def related(doc: str, *types: str) -> Answer:
        answer = await query(registry, m.GET_RELATED_DOCUMENTS, {
            "$XDSDocumentEntryEntryUUID": quoted(doc), "$AssociationTypes": in_list(*types)})
        assert answer.status == STATUS_SUCCESS, answer.errors
        return answer

    rplc_type, apnd_type = m.RELATIONSHIP_TYPES["RPLC"], m.RELATIONSHIP_TYPES["APND"]
    answer = await related(replacement.document_id, rplc_type, apnd_type)
    assert answer.ids(DocumentEntry) == {original.document_id, replacement.document_id, addendum.document_id}
    assert answer.ids(Association) == rplc | apnd
    only_rplc = await related(replacement.document_id, rplc_type)
    assert only_rplc.ids() == {original.document_id, replacement.document_id} | rplc
    # By uniqueId, from the other end of the relationship.
    by_uid = await query(registry, m.GET_RELATED_DOCUMENTS, {
        "$XDSDocumentEntryUniqueId": quoted(original.document_unique_id), "$AssociationTypes": in_list(rplc_type)})
    assert by_uid.ids() == only_rplc.ids()
    # Nothing related: nothing at all, not even the document itself (HasMember is no relationship).
    nothing = await related(original.document_id, apnd_type, m.HAS_MEMBER)
    assert nothing.objects == []
    failed(await query(registry, m.GET_RELATED_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": quoted(
        original.document_id)}), "XDSStoredQueryMissingParam")


# --- response rules --------------------------------------------------------------------------------------


async def test_too_many_results(shared_pool):
    registry = make_registry(shared_pool, max_query_results=3)
    pid = await new_patient(registry)
    await submit(registry, pid, documents=3)
    assert len((await query(registry, m.FIND_DOCUMENTS, find_documents(pid))).objects) == 3
    await submit(registry, pid)
    answer = await query(registry, m.FIND_DOCUMENTS, find_documents(pid), "ObjectRef")
    failed(answer, "XDSTooManyResults")
    # GetAll counts every object: 4 documents are already too many.
    failed(await query(registry, m.GET_ALL, {
        "$patientId": quoted(pid), "$XDSDocumentEntryStatus": BOTH, "$XDSSubmissionSetStatus": BOTH,
        "$XDSFolderStatus": BOTH}), "XDSTooManyResults")


async def test_unknown_stored_query(registry):
    answer = await query(registry, m.new_uuid(), {})
    failed(answer, "XDSUnknownStoredQuery")
    assert answer.errors[0].severity == "urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:Error"


async def test_unknown_parameter_is_answered_with_a_warning(registry):
    pid = await new_patient(registry)
    built = await submit(registry, pid)
    answer = await query(registry, m.FIND_DOCUMENTS, find_documents(pid, **{"$XDSDocumentEntryColour": quoted("red")}))
    assert answer.status == STATUS_SUCCESS
    assert answer.ids() == {built.document_id}
    assert [(e.code, e.is_error) for e in answer.errors] == [("XDSRegistryError", False)]
    assert "$XDSDocumentEntryColour" in answer.errors[0].context


async def test_home_community_id(shared_pool):
    home = "urn:oid:1.3.6.1.4.1.21367.13.70.1"
    registry = make_registry(shared_pool, home_community_id=home)
    pid = await new_patient(registry)
    built = await submit(registry, pid)
    refs = await query(registry, m.FIND_DOCUMENTS, find_documents(pid), "ObjectRef")
    rol = refs.root.find("{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}RegistryObjectList")
    assert [(r.get("id"), r.get("home")) for r in rol] == [(built.document_id, home)]
    leaf = await query(registry, m.FIND_DOCUMENTS, find_documents(pid), home=home)
    assert [(o.entry_uuid, o.home_community_id) for o in leaf.objects] == [(built.document_id, home)]
    by_param = await query(registry, m.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": in_list(built.document_id),
                                                       "$homeCommunityId": quoted(home)})
    assert by_param.ids() == {built.document_id}
    failed(await query(registry, m.FIND_DOCUMENTS, find_documents(pid), home="urn:oid:1.2.3.999"),
           "XDSUnknownCommunity")

    # Without a configured community, the query's home is echoed on ObjectRefs.
    plain = make_registry(shared_pool)
    echoed = await query(plain, m.FIND_DOCUMENTS, find_documents(pid), "ObjectRef", home="urn:oid:1.2.3")
    rol = echoed.root.find("{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}RegistryObjectList")
    assert [r.get("home") for r in rol] == ["urn:oid:1.2.3"]


async def test_internal_fault_is_a_registry_error_without_details(registry_database_url):
    pool = await asyncpg.create_pool(registry_database_url, min_size=1, max_size=1)
    await pool.close()  # every acquire now fails inside the handler
    answer = await query(make_registry(pool), m.FIND_DOCUMENTS, find_documents(m.new_patient_id()))
    failed(answer, "XDSRegistryError")
    assert "Traceback" not in answer.errors[0].context and "asyncpg" not in answer.errors[0].context


async def test_a_malformed_request_is_a_failure_response(registry):
    envelope = m.soap_envelope(m.ACTION_ITI18, m.stored_query_request(m.FIND_DOCUMENTS, {}, "Everything"))
    reply = await registry_stored_query(registry, parse_envelope(parse_xml(envelope)))
    failed(read_answer(parse_xml(reply.body)), "XDSRegistryError")
