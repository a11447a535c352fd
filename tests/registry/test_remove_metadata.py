"""ITI-62 Delete Document Set against a real ``xds-registry`` process and the real database.

Objects are registered with ITI-42 (NIST-style text messages, pre-assigned entryUUIDs so the test
knows every id), removed with hand-written RemoveObjectsRequests, and the tables are checked
directly: a refused request must leave every row exactly as it was.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from lxml import etree

from ihe.metadata.model import Identifiable, datetime_to_dtm
from registry.patients import Demographics, record_patient
from tests import messages as m
from tests import update_messages as u
from tests.conftest import start_registry_process
from tests.remove_messages import ACTION_ITI62_RESPONSE, delete_document_set_envelope

SOAP = "application/soap+xml; charset=UTF-8"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
TABLES = ("submission_set", "document_entry", "folder", "association", "unique_id_claim")
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"


@pytest.fixture(scope="module")
def registry_service(registry_database_url):
    service = start_registry_process(registry_database_url)
    yield service
    service.stop()


@pytest.fixture
async def conn(registry_pool):
    async with registry_pool.acquire() as c:
        yield c


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield session


async def post(http, url: str, envelope: bytes) -> tuple[int, etree._Element]:
    async with http.post(url, data=envelope, headers={"Content-Type": SOAP}) as resp:
        return resp.status, etree.fromstring(await resp.read())


async def register(http, url: str, patient_id: str, **kwargs) -> m.BuiltSubmission:
    envelope, built = m.register_request(patient_id, use_uuids=True, **kwargs)
    status, root = await post(http, url, envelope)
    response = root.find(f".//{{{RS}}}RegistryResponse")
    assert status == 200 and response is not None and response.get("status") == SUCCESS, etree.tostring(root)[:3000]
    return built


async def remove(http, url: str, ids, **kwargs) -> tuple[str, list[tuple[str, str, str | None]]]:
    """Send ITI-62; (status, [(errorCode, codeContext, location)])."""
    status, root = await post(http, url, delete_document_set_envelope(ids, **kwargs))
    assert status == 200, etree.tostring(root)[:3000]
    assert root.findtext(f"{{{SOAP12}}}Header/{{{WSA}}}Action") == ACTION_ITI62_RESPONSE
    response = root.find(f"{{{SOAP12}}}Body/{{{RS}}}RegistryResponse")
    assert response is not None, etree.tostring(root)[:3000]
    return response.get("status"), [(e.get("errorCode"), e.get("codeContext"), e.get("location"))
                                    for e in response.iter(f"{{{RS}}}RegistryError")]


async def known_patient(conn) -> str:
    pid = m.new_patient_id()
    await record_patient(conn, [Identifiable.parse_cx(pid)], Demographics("Test", "Patient"))
    return pid


async def snapshot(conn) -> dict[str, list]:
    return {t: [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t} ORDER BY 1")] for t in TABLES}


async def ids_in(conn, table: str) -> set[str]:
    return {f"urn:uuid:{r['id']}" for r in await conn.fetch(f"SELECT id FROM {table}")}


def everything(built: m.BuiltSubmission) -> list[str]:
    return [built.submission_set_id, *built.document_ids, *([built.folder_id] if built.folder_id else []),
            *built.associations]


def folder_members(built: m.BuiltSubmission, document_id: str) -> list[str]:
    """The Folder->document HasMember and the SubmissionSet HasMember recording it."""
    fd = next(a for a, (_, s, t) in built.associations.items() if s == built.folder_id and t == document_id)
    ss_fd = next(a for a, (_, s, t) in built.associations.items() if t == fd)
    return [fd, ss_fd]


def ss_member(built: m.BuiltSubmission, document_id: str) -> str:
    return next(a for a, (_, s, t) in built.associations.items() if s == built.submission_set_id and t == document_id)


# --- success -----------------------------------------------------------------------------------


async def test_removing_a_whole_submission_frees_its_unique_ids(registry_service, conn, http):
    pid = await known_patient(conn)
    built = await register(http, registry_service.url, pid, documents=2, folder=True)
    other = await register(http, registry_service.url, pid)
    other_rows = {t: [r for r in rows if f"urn:uuid:{r[0]}" in everything(other) or r[0] in other.document_unique_ids
                      or r[0] == other.submission_set_unique_id]
                  for t, rows in (await snapshot(conn)).items()}

    status, errors = await remove(http, registry_service.url, everything(built))

    assert (status, errors) == (SUCCESS, [])
    for table in ("submission_set", "document_entry", "folder", "association"):
        assert not (await ids_in(conn, table)) & set(everything(built)), table
    claims = {r["unique_id"] for r in await conn.fetch("SELECT unique_id FROM unique_id_claim")}
    assert not claims & {*built.document_unique_ids, built.submission_set_unique_id, built.folder_unique_id}
    # the other submission of the patient is untouched, and is all that is left
    assert await snapshot(conn) == other_rows
    # the uniqueIds are free again: the same ones register with other content
    again = await register(http, registry_service.url, pid, documents=2, folder=True,
                           document_unique_ids=built.document_unique_ids, hashes=["0" * 40, "1" * 40],
                           submission_set_unique_id=built.submission_set_unique_id,
                           folder_unique_id=built.folder_unique_id)
    assert len(again.document_ids) == 2


async def test_removing_a_document_from_a_folder_keeps_the_folder_and_updates_it(registry_service, conn, http):
    pid = await known_patient(conn)
    built = await register(http, registry_service.url, pid, documents=2, folder=True)
    old = datetime.now(UTC).replace(microsecond=0) - timedelta(days=30)
    folder_row = await conn.fetchrow("SELECT last_update_time, ebrim FROM folder")
    await conn.execute("UPDATE folder SET last_update_time = $1, ebrim = replace(ebrim, $2, $3)",
                       old, datetime_to_dtm(folder_row["last_update_time"]), datetime_to_dtm(old))
    gone = built.document_ids[0]

    status, errors = await remove(http, registry_service.url,
                                  [gone, ss_member(built, gone), *folder_members(built, gone)])

    assert (status, errors) == (SUCCESS, [])
    assert await ids_in(conn, "document_entry") == {built.document_ids[1]}
    folder = await conn.fetchrow("SELECT last_update_time, ebrim FROM folder")
    assert folder["last_update_time"] > old
    assert f"<rim:Value>{datetime_to_dtm(folder['last_update_time'])}</rim:Value>" in folder["ebrim"]
    assert datetime_to_dtm(old) not in folder["ebrim"]
    rows = await conn.fetch("SELECT source::text, target::text FROM association")
    members = {(r["source"], r["target"]) for r in rows}
    assert (built.folder_id[9:], built.document_ids[1][9:]) in members
    assert not any(gone[9:] in pair for pair in members)


async def test_removing_only_a_folder_membership(registry_service, conn, http):
    pid = await known_patient(conn)
    built = await register(http, registry_service.url, pid, folder=True)
    doc = built.document_id

    status, errors = await remove(http, registry_service.url, folder_members(built, doc))

    assert (status, errors) == (SUCCESS, [])
    assert await ids_in(conn, "document_entry") == {doc}
    assert await ids_in(conn, "folder") == {built.folder_id}
    assert set(folder_members(built, doc)).isdisjoint(await ids_in(conn, "association"))


async def test_a_resubmitted_unique_id_stays_claimed_by_the_remaining_entry(registry_service, conn, http):
    """Two DocumentEntries share a uniqueId (an accepted resubmission); removing the first must keep the
    uniqueId claimed with its hash, else a different document could take it (XDSNonIdenticalHash)."""
    pid = await known_patient(conn)
    first = await register(http, registry_service.url, pid)
    second = await register(http, registry_service.url, pid, document_unique_ids=first.document_unique_ids)

    status, errors = await remove(http, registry_service.url, everything(first))

    assert (status, errors) == (SUCCESS, [])
    claim = await conn.fetchrow("SELECT object_id::text, hash FROM unique_id_claim WHERE unique_id = $1",
                                first.document_unique_id)
    assert claim is not None and f"urn:uuid:{claim['object_id']}" == second.document_id
    assert claim["hash"] == first.document_hashes[0].lower()
    claim_size = await conn.fetchval("SELECT size FROM unique_id_claim WHERE unique_id = $1", first.document_unique_id)
    assert claim_size == first.document_sizes[0]  # the handed-on claim still guards the size (XDSNonIdenticalSize)
    envelope, _ = m.register_request(pid, document_unique_ids=first.document_unique_ids, hashes=["2" * 40])
    _, root = await post(http, registry_service.url, envelope)
    codes = [e.get("errorCode") for e in root.iter(f"{{{RS}}}RegistryError")]
    assert codes == ["XDSNonIdenticalHash"]


async def test_removing_the_latest_version_makes_the_newest_remaining_one_latest(registry_service, conn, http):
    """ITI-57 left version 1 (Deprecated) and version 2 (latest); removing version 2 with its update
    SubmissionSet leaves version 1 as the one stored queries answer for the logical document."""
    pid = await known_patient(conn)
    first = await register(http, registry_service.url, pid)
    update = u.new_document_version(pid, first.document_id, "1", first.document_unique_id,
                                    hashes=[first.document_hashes[0]], sizes=[first.document_sizes[0]])
    status, root = await post(http, registry_service.url, update)
    assert status == 200 and root.find(f".//{{{RS}}}RegistryResponse").get("status") == SUCCESS
    rows = await conn.fetch("SELECT id::text, version, latest FROM document_entry WHERE unique_id = $1"
                            " ORDER BY version", first.document_unique_id)
    assert [(r["version"], r["latest"]) for r in rows] == [(1, False), (2, True)]
    v2 = rows[1]["id"]
    ss2 = await conn.fetchval("SELECT source::text FROM association WHERE target = $1::uuid", v2)
    links = await conn.fetch("SELECT id::text FROM association WHERE source = $1::uuid OR target = $1::uuid"
                             " OR source = $2::uuid", v2, ss2)

    status, errors = await remove(http, registry_service.url,
                                  [f"urn:uuid:{i}" for i in (v2, ss2, *(r["id"] for r in links))])

    assert (status, errors) == (SUCCESS, [])
    rows = await conn.fetch("SELECT version, latest FROM document_entry WHERE unique_id = $1",
                            first.document_unique_id)
    assert [(r["version"], r["latest"]) for r in rows] == [(1, True)]


async def test_object_ref_ids_are_matched_whatever_their_case(registry_service, conn, http):
    pid = await known_patient(conn)
    built = await register(http, registry_service.url, pid)
    ids = ["urn:uuid:" + i[9:].upper() for i in everything(built)]

    assert await remove(http, registry_service.url, ids) == (SUCCESS, [])
    assert await ids_in(conn, "document_entry") == set()


# --- refusals: nothing changes --------------------------------------------------------------------


async def test_a_document_still_in_a_folder_is_refused_with_references_exist(registry_service, conn, http):
    pid = await known_patient(conn)
    built = await register(http, registry_service.url, pid, documents=2, folder=True)
    doc = built.document_ids[0]
    fd, ss_fd = folder_members(built, doc)
    before = await snapshot(conn)

    status, errors = await remove(http, registry_service.url, [doc, ss_member(built, doc)])

    assert status == FAILURE
    assert [(code, location) for code, _, location in errors] == [("ReferencesExistException", doc)]
    assert fd in errors[0][1] and "targetObject" in errors[0][1]
    assert await snapshot(conn) == before
    # the Folder membership alone: the SubmissionSet's HasMember still references it
    status, errors = await remove(http, registry_service.url, [fd])
    assert status == FAILURE and [(c, loc) for c, _, loc in errors] == [("ReferencesExistException", fd)]
    assert ss_fd in errors[0][1]
    assert await snapshot(conn) == before


async def test_a_submission_set_without_its_members_is_refused(registry_service, conn, http):
    pid = await known_patient(conn)
    built = await register(http, registry_service.url, pid, documents=2)
    before = await snapshot(conn)

    status, errors = await remove(http, registry_service.url, [built.submission_set_id])

    assert status == FAILURE
    assert sorted(c for c, _, _ in errors) == ["ReferencesExistException"] * 2
    assert all(loc == built.submission_set_id and "sourceObject" in ctx for _, ctx, loc in errors)
    assert await snapshot(conn) == before


async def test_a_replaced_document_cannot_go_without_its_rplc(registry_service, conn, http):
    pid = await known_patient(conn)
    original = await register(http, registry_service.url, pid)
    replacement = await register(http, registry_service.url, pid, replaces=original.document_id)
    rplc = next(a for a, (t, _, _) in replacement.associations.items() if t == RPLC)
    before = await snapshot(conn)

    status, errors = await remove(http, registry_service.url, everything(original))

    assert status == FAILURE
    assert [(c, loc) for c, _, loc in errors] == [("ReferencesExistException", original.document_id)]
    assert rplc in errors[0][1] and "RPLC" in errors[0][1]
    assert await snapshot(conn) == before
    # with the RPLC association in the request, both go
    assert await remove(http, registry_service.url, [*everything(original), rplc]) == (SUCCESS, [])
    assert await ids_in(conn, "document_entry") == {replacement.document_id}


async def test_unknown_and_symbolic_references_are_refused_and_nothing_is_removed(registry_service, conn, http):
    pid = await known_patient(conn)
    built = await register(http, registry_service.url, pid)
    before = await snapshot(conn)
    unknown = m.new_uuid()

    status, errors = await remove(http, registry_service.url, [*everything(built), unknown, "Document01",
                                                               "urn:uuid:not-a-uuid"])

    assert status == FAILURE
    assert [(c, loc) for c, _, loc in errors] == [("UnresolvedReferenceException", unknown),
                                                  ("UnresolvedReferenceException", "Document01"),
                                                  ("UnresolvedReferenceException", "urn:uuid:not-a-uuid")]
    assert await snapshot(conn) == before


@pytest.mark.parametrize("kwargs", [
    {"adhoc_query": True},
    {"deletion_scope": "urn:oasis:names:tc:ebxml-regrep:DeletionScopeType:DeleteRepositoryItemOnly"},
    {"object_ref_list": False},
])
async def test_requests_itI62_forbids_are_refused(registry_service, conn, http, kwargs):
    pid = await known_patient(conn)
    built = await register(http, registry_service.url, pid)
    before = await snapshot(conn)

    status, errors = await remove(http, registry_service.url, everything(built), **kwargs)

    assert status == FAILURE and [c for c, _, _ in errors] == ["XDSRegistryError"]
    assert await snapshot(conn) == before


async def test_the_default_deletion_scope_is_accepted(registry_service, conn, http):
    pid = await known_patient(conn)
    built = await register(http, registry_service.url, pid)
    result = await remove(http, registry_service.url, everything(built),
                          deletion_scope="urn:oasis:names:tc:ebxml-regrep:DeletionScopeType:DeleteAll")
    assert result == (SUCCESS, [])


async def test_another_body_is_a_soap_fault(registry_service, http):
    envelope = m.soap_envelope("urn:ihe:iti:2010:DeleteDocumentSet", m.stored_query_request(
        m.GET_DOCUMENTS, {"$XDSDocumentEntryUniqueId": m.in_list("1.2.3")}))
    status, root = await post(http, registry_service.url, envelope)
    assert status in (400, 500) and root.find(f".//{{{SOAP12}}}Fault") is not None
    assert "RemoveObjectsRequest" in etree.tostring(root).decode()


# --- concurrency ---------------------------------------------------------------------------------


async def dangling(conn) -> list:
    """Associations whose source or target is no registry object."""
    return await conn.fetch(
        "SELECT a.id, a.type FROM association a WHERE NOT EXISTS (SELECT 1 FROM ("
        " SELECT id FROM document_entry UNION ALL SELECT id FROM submission_set UNION ALL SELECT id FROM folder"
        " UNION ALL SELECT id FROM association) o WHERE o.id = a.source)"
        " OR NOT EXISTS (SELECT 1 FROM (SELECT id FROM document_entry UNION ALL SELECT id FROM submission_set"
        " UNION ALL SELECT id FROM folder UNION ALL SELECT id FROM association) o WHERE o.id = a.target)")


async def test_a_removal_racing_submissions_that_reference_the_document_never_leaves_one_dangling(
        registry_service, conn, http):
    """An addendum (APND: no row of the original is locked by ITI-42) registered while the original is
    removed: either the removal sees the addendum's Association (ReferencesExistException) or the
    addendum sees no original (XDSRegistryMetadataError); never both succeed."""
    import asyncio

    pid = await known_patient(conn)
    outcomes = set()
    for _ in range(12):
        original = await register(http, registry_service.url, pid)
        addendum_envelope, _ = m.register_request(pid, use_uuids=True, replaces=original.document_id,
                                                  relationship="APND")
        removal, (_, addendum) = await asyncio.gather(
            remove(http, registry_service.url, everything(original)),
            post(http, registry_service.url, addendum_envelope))
        added = addendum.find(f".//{{{RS}}}RegistryResponse").get("status") == SUCCESS
        removed = removal[0] == SUCCESS
        assert not (added and removed), "both the removal and the addendum succeeded"
        outcomes.add((added, removed))
        assert await dangling(conn) == []
    assert outcomes  # at least one round ran; which side wins each round is up to timing
