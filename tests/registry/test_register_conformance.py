"""ITI-42 behaviour that independent tools (the NIST XDS toolkit) check, end to end against a real
``xds-registry`` process: submissions are NIST-shaped SOAP messages (tests.messages) POSTed over HTTP,
and what the registry kept is read back with ITI-18 stored queries over HTTP, as a consumer would.

- a replacement (RPLC, XFRM_RPLC) joins every Folder of the document it replaces (ITI TF-3 4.2.2.2.3);
- Association Documentation on relationships is kept and returned, refused on HasMember;
- extra metadata (ITI TF-3 4.1.14) on every object type is kept and returned.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

import aiohttp
import pytest
from lxml import etree

from ihe.errors import STATUS_FAILURE, STATUS_SUCCESS, ErrorCode, parse_registry_response
from ihe.metadata import vocabulary as v
from ihe.metadata.ebrim import read_registry_objects
from ihe.metadata.model import (
    Association,
    Code,
    DocumentEntry,
    Folder,
    Identifiable,
    LocalizedString,
    Slot,
    SubmissionSet,
    dtm_to_datetime,
)
from ihe.namespaces import QUERY, RS, SOAP12, qn
from ihe.xml import parse_xml
from registry.patients import Demographics, record_patient
from registry.register import fragment_with_last_update_time
from tests import messages as m
from tests.conftest import start_registry_process
from tests.messages import in_list, quoted

SOAP = "application/soap+xml; charset=UTF-8"
TABLES = ("submission_set", "document_entry", "folder", "association", "unique_id_claim")
CORRECTION = Code("CORR", "1.3.6.1.4.1.21367.2026.9", LocalizedString("Correction of an error"))


@pytest.fixture(scope="module")
def registry_service(registry_database_url):
    service = start_registry_process(registry_database_url)
    yield service
    service.stop()


@pytest.fixture
async def http(registry_pool, registry_service):
    """(session, url) of the registry process, on emptied tables."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session, registry_service.url


@pytest.fixture
async def conn(registry_pool):
    async with registry_pool.acquire() as c:
        yield c


async def known_patient(conn) -> str:
    pid = m.new_patient_id()
    await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics("Test", "Patient"))
    return pid


async def post(http, envelope: bytes) -> etree._Element:
    session, url = http
    async with session.post(url, data=envelope, headers={"Content-Type": SOAP}) as resp:
        body = await resp.read()
        assert resp.status == 200, body[:2000]
    payload = parse_xml(body).find(qn(SOAP12, "Body"))[0]
    return payload


async def send(http, xml: bytes) -> tuple[str, list]:
    """ITI-42 with a SubmitObjectsRequest: (status, errors)."""
    response = await post(http, m.soap_envelope(m.ACTION_ITI42, xml))
    assert response.tag == qn(RS, "RegistryResponse")
    return parse_registry_response(response)


async def register_ok(http, pid: str, **kwargs) -> m.BuiltSubmission:
    built = m.submit_objects_request(pid, use_uuids=True, **kwargs)
    status, errors = await send(http, built.xml)
    assert (status, errors) == (STATUS_SUCCESS, []), errors
    return built


async def query(http, query_id: str, params: dict) -> list:
    """ITI-18 (LeafClass): the objects returned; the query must succeed."""
    response = await post(http, m.stored_query_envelope(query_id, params))
    assert response.tag == qn(QUERY, "AdhocQueryResponse")
    status, errors = parse_registry_response(response)
    assert (status, errors) == (STATUS_SUCCESS, []), errors
    return read_registry_objects(response)


def of(objects: list, kind: type) -> list:
    return [o for o in objects if isinstance(o, kind)]


def add_association(xml: bytes, aid: str, atype: str, source: str, target: str, inner: str = "") -> bytes:
    return with_top_level(xml, (f'<rim:Association id="{aid}" associationType="{atype}" sourceObject="{source}"'
                                f' targetObject="{target}" objectType="{v.ASSOCIATION}">{inner}</rim:Association>'
                                ).encode())


def with_top_level(xml: bytes, fragment: bytes) -> bytes:
    return xml.replace(b"</rim:RegistryObjectList>", fragment + b"</rim:RegistryObjectList>")


def documentation(owner: str, code: Code) -> bytes:
    """A top-level Association Documentation classification of ``owner`` (an Association id)."""
    return (f'<rim:Classification id="{m.new_uuid()}" classificationScheme="{v.ASSOCIATION_DOCUMENTATION}"'
            f' classifiedObject="{owner}" nodeRepresentation="{code.code}" objectType="{v.CLASSIFICATION}">'
            f'<rim:Slot name="codingScheme"><rim:ValueList><rim:Value>{code.scheme}</rim:Value></rim:ValueList>'
            f'</rim:Slot><rim:Name><rim:LocalizedString value="{code.display_name.value}"/></rim:Name>'
            "</rim:Classification>").encode()


def association_id(built: m.BuiltSubmission, atype: str) -> str:
    return next(aid for aid, (t, _, _) in built.associations.items() if t == atype)


async def counts(conn) -> dict[str, int]:
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


# --- replacement and folders ------------------------------------------------------------------------------


@pytest.mark.parametrize("relationship", ["RPLC", "XFRM_RPLC"])
async def test_a_replacement_joins_every_folder_of_the_original(http, conn, relationship):
    pid = await known_patient(conn)
    first = await register_ok(http, pid, folder=True)  # Folder A holding the original
    second = await register_ok(http, pid, folder=True)  # Folder B
    original, folder_a, folder_b = first.document_id, first.folder_id, second.folder_id
    # A third submission puts the original into Folder B too.
    third = m.submit_objects_request(pid, use_uuids=True)
    link = m.new_uuid()
    xml = add_association(third.xml, link, v.HAS_MEMBER, folder_b, original)
    xml = add_association(xml, m.new_uuid(), v.HAS_MEMBER, third.submission_set_id, link)
    assert await send(http, xml) == (STATUS_SUCCESS, [])
    # Age both folders, so that their lastUpdateTime visibly moves.
    for folder in (folder_a, folder_b):
        row = await conn.fetchrow("SELECT ebrim FROM folder WHERE id = $1", uuid.UUID(folder[9:]))
        await conn.execute("UPDATE folder SET last_update_time = $2, ebrim = $3 WHERE id = $1",
                           uuid.UUID(folder[9:]), datetime(2001, 1, 1, tzinfo=UTC),
                           fragment_with_last_update_time(row["ebrim"], "20010101000000"))
    before = datetime.now(UTC).replace(microsecond=0)

    # The replacement states its membership of Folder A itself; the registry adds it to Folder B.
    replacement = await register_ok(http, pid, replaces=original, relationship=relationship,
                                    existing_folder=folder_a)
    new_doc, new_ss = replacement.document_id, replacement.submission_set_id

    folders = await query(http, m.GET_FOLDERS_FOR_DOCUMENT, {"$XDSDocumentEntryEntryUUID": quoted(new_doc)})
    assert {f.entry_uuid for f in of(folders, Folder)} == {folder_a, folder_b}
    for f in of(folders, Folder):
        assert dtm_to_datetime(f.last_update_time) >= before, f"{f.entry_uuid} lastUpdateTime did not move"

    contents = await query(http, m.GET_FOLDER_AND_CONTENTS, {"$XDSFolderEntryUUID": quoted(folder_b)})
    assert new_doc in {d.entry_uuid for d in of(contents, DocumentEntry)}
    [made] = [a for a in of(contents, Association) if (a.source_uuid, a.target_uuid) == (folder_b, new_doc)]
    assert made.type == v.HAS_MEMBER and made.status == v.STATUS_APPROVED
    assert made.entry_uuid not in replacement.associations  # the registry made it

    around = await query(http, m.GET_ASSOCIATIONS, {"$uuid": in_list(new_doc)})
    ends = sorted((a.type, a.source_uuid) for a in of(around, Association))
    assert ends == sorted([(v.HAS_MEMBER, folder_a), (v.HAS_MEMBER, folder_b), (v.HAS_MEMBER, new_ss),
                           (m.RELATIONSHIP_TYPES[relationship], new_doc)])

    # Registered with the submission: its SubmissionSet holds the new Folder membership.
    package = await query(http, m.GET_SUBMISSION_SET_AND_CONTENTS, {"$XDSSubmissionSetEntryUUID": quoted(new_ss)})
    held = {a.target_uuid for a in of(package, Association) if a.source_uuid == new_ss}
    assert made.entry_uuid in held and made.entry_uuid in {a.entry_uuid for a in of(package, Association)}

    # Folder A got the replacement once (from the submission), not twice.
    assert await conn.fetchval("SELECT count(*) FROM association WHERE source = $1 AND target = $2 AND type = $3",
                               uuid.UUID(folder_a[9:]), uuid.UUID(new_doc[9:]), v.HAS_MEMBER) == 1


async def test_an_addendum_does_not_join_the_folders_of_the_original(http, conn):
    pid = await known_patient(conn)
    first = await register_ok(http, pid, folder=True)
    addendum = await register_ok(http, pid, replaces=first.document_id, relationship="APND")
    folders = await query(http, m.GET_FOLDERS_FOR_DOCUMENT,
                          {"$XDSDocumentEntryEntryUUID": quoted(addendum.document_id)})
    assert folders == []


# --- association documentation ----------------------------------------------------------------------------


@pytest.mark.parametrize("relationship", ["RPLC", "APND", "XFRM", "XFRM_RPLC", "signs"])
async def test_association_documentation_is_kept_and_returned(http, conn, relationship):
    pid = await known_patient(conn)
    first = await register_ok(http, pid)
    atype = m.RELATIONSHIP_TYPES[relationship]
    built = m.submit_objects_request(pid, use_uuids=True, replaces=first.document_id, relationship=relationship)
    aid = association_id(built, atype)
    xml = with_top_level(built.xml, documentation(aid, CORRECTION))
    assert await send(http, xml) == (STATUS_SUCCESS, [])
    returned = await query(http, m.GET_ASSOCIATIONS, {"$uuid": in_list(built.document_id)})
    [found] = [a for a in of(returned, Association) if a.entry_uuid == aid]
    assert found.documentation == [CORRECTION]
    related = await query(http, m.GET_RELATED_DOCUMENTS, {
        "$XDSDocumentEntryEntryUUID": quoted(first.document_id), "$AssociationTypes": in_list(atype)})
    assert [a.documentation for a in of(related, Association)] == [[CORRECTION]]


async def test_association_documentation_on_has_member_is_refused(http, conn):
    pid = await known_patient(conn)
    built = m.submit_objects_request(pid, use_uuids=True)
    member = association_id(built, v.HAS_MEMBER)
    xml = with_top_level(built.xml, documentation(member, CORRECTION))
    status, errors = await send(http, xml)
    assert status == STATUS_FAILURE and [e.code for e in errors] == [ErrorCode.REGISTRY_METADATA_ERROR]
    assert member in errors[0].context and "Association Documentation" in errors[0].context
    assert set((await counts(conn)).values()) == {0}


# --- extra metadata ---------------------------------------------------------------------------------------


async def test_extra_metadata_of_every_object_is_kept_and_returned(http, conn):
    pid = await known_patient(conn)
    built = m.submit_objects_request(
        pid, use_uuids=True, folder=True,
        extra_slots={"urn:nhs:ward": ["Radiology 2"], "urn:acme:empty": []},
        submission_set_extra_slots={"urn:acme:batch": ["b-1", "b-2"]},
        folder_extra_slots={"urn:acme:episode": ["ep & 7"]},
    )
    # ... and on the SubmissionSet -> DocumentEntry HasMember.
    xml = built.xml.replace(
        b'<rim:Slot name="SubmissionSetStatus">',
        b'<rim:Slot name="urn:acme:routing"><rim:ValueList><rim:Value>fast</rim:Value></rim:ValueList></rim:Slot>'
        b'<rim:Slot name="SubmissionSetStatus">', 1)
    status, errors = await send(http, xml)
    assert (status, errors) == (STATUS_SUCCESS, [])  # saved: no XDSExtraMetadataNotSaved

    objects = await query(http, m.GET_SUBMISSION_SET_AND_CONTENTS,
                          {"$XDSSubmissionSetEntryUUID": quoted(built.submission_set_id)})

    def extras(obj) -> list[Slot]:
        return [s for s in obj.extra_slots if s.name.startswith("urn:") and not s.name.startswith("urn:ihe:")]

    [doc], [ss], [folder] = of(objects, DocumentEntry), of(objects, SubmissionSet), of(objects, Folder)
    assert extras(doc) == [Slot("urn:nhs:ward", ["Radiology 2"]), Slot("urn:acme:empty", [])]
    assert extras(ss) == [Slot("urn:acme:batch", ["b-1", "b-2"])]
    assert extras(folder) == [Slot("urn:acme:episode", ["ep & 7"])]
    [member] = [a for a in of(objects, Association) if a.target_uuid == built.document_id
                and a.source_uuid == built.submission_set_id]
    assert extras(member) == [Slot("urn:acme:routing", ["fast"])] and member.submission_set_status == "Original"
    found = await query(http, m.FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": quoted(pid),
                                                 "$XDSDocumentEntryStatus": in_list(v.STATUS_APPROVED)})
    assert extras(of(found, DocumentEntry)[0]) == extras(doc)


@pytest.mark.parametrize(("slots", "problem"), [
    ({"urn:ihe:iti:xds:2099:ward": ["x"]}, "reserved to IHE"),
    ({"urn:acme:big": ["v" * 257]}, "at most 256"),
    ({"ward": ["x"]}, "must begin with 'urn:'"),
])
async def test_extra_metadata_the_registry_refuses(http, conn, slots, problem):
    pid = await known_patient(conn)
    built = m.submit_objects_request(pid, use_uuids=True, folder_extra_slots=slots, folder=True)
    status, errors = await send(http, built.xml)
    assert status == STATUS_FAILURE and [e.code for e in errors] == [ErrorCode.REGISTRY_METADATA_ERROR]
    assert problem in errors[0].context and re.search(r"Folder urn:uuid:", errors[0].context)
    assert set((await counts(conn)).values()) == {0}
