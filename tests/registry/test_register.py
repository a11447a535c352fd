"""ITI-42 Register Document Set-b against the real database, both through the handler and end to end.

Every scenario runs twice: calling ``register_document_set`` with a parsed SoapRequest, and POSTing
the same SOAP 1.2 message to a real ``xds-registry`` process (started once for this module). Each
scenario then checks the tables themselves, so "nothing stored" is checked, not assumed.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest

from ihe.errors import (
    STATUS_FAILURE,
    STATUS_SUCCESS,
    ErrorCode,
    RegistryError,
    parse_registry_response,
)
from ihe.metadata import vocabulary as v
from ihe.metadata.model import Identifiable, datetime_to_dtm
from ihe.namespaces import ACTION_ITI42_RESPONSE, RIM, RS, SOAP12, WSA, qn
from ihe.soap import SoapFault, parse_envelope, parse_fault
from ihe.xml import parse_xml
from registry import register, store
from registry.app import Registry
from registry.patients import Demographics, merge_patients, record_patient
from registry.settings import RegistrySettings
from tests import messages as m
from tests.conftest import start_registry_process

TABLES = ("submission_set", "document_entry", "folder", "association", "unique_id_claim")
SOAP = "application/soap+xml; charset=UTF-8"
ACCESSION = "ACC1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"


@dataclass(slots=True)
class Outcome:
    status: str
    errors: list[RegistryError]

    @property
    def codes(self) -> list[str]:
        return [e.code for e in self.errors if e.is_error]

    def error(self, code: str) -> RegistryError:
        found = [e for e in self.errors if e.code == code]
        assert found, f"no {code} in {self.errors}"
        return found[0]


class Transport:
    """Sends an ITI-42 SOAP envelope to the handler (in process) or to the registry process (HTTP)."""

    def __init__(self, name: str, registry: Registry, url: str | None, session: aiohttp.ClientSession | None):
        self.name, self.registry, self.url, self.session = name, registry, url, session

    async def send(self, envelope: bytes) -> Outcome:
        if self.session is None:
            reply = await register.register_document_set(self.registry, parse_envelope(parse_xml(envelope)))
            assert reply.action == ACTION_ITI42_RESPONSE
            return Outcome(*parse_registry_response(reply.body))
        async with self.session.post(self.url, data=envelope, headers={"Content-Type": SOAP}) as resp:
            body = await resp.read()
            assert resp.status == 200, body[:2000]
            assert f'action="{ACTION_ITI42_RESPONSE}"' in resp.headers["Content-Type"]
        root = parse_xml(body)
        assert root.findtext(f"{qn(SOAP12, 'Header')}/{qn(WSA, 'Action')}") == ACTION_ITI42_RESPONSE
        response = root.find(f"{qn(SOAP12, 'Body')}/{qn(RS, 'RegistryResponse')}")
        assert response is not None, body[:2000]
        return Outcome(*parse_registry_response(response))

    async def register(self, patient_id: str, **kwargs) -> tuple[Outcome, m.BuiltSubmission]:
        envelope, built = m.register_request(patient_id, **kwargs)
        return await self.send(envelope), built


@pytest.fixture(scope="module")
def registry_service(registry_database_url):
    service = start_registry_process(registry_database_url)
    yield service
    service.stop()


@pytest.fixture(params=["handler", "http"])
async def client(request, registry_pool):
    registry = Registry(settings=RegistrySettings(), pool=registry_pool)
    if request.param == "handler":
        yield Transport("handler", registry, None, None)
        return
    service = request.getfixturevalue("registry_service")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        yield Transport("http", registry, service.url, session)


@pytest.fixture
async def conn(registry_pool):
    async with registry_pool.acquire() as c:
        yield c


async def known_patient(conn, patient_id: str | None = None) -> str:
    """A patient id the registry knows (recorded as the identity feed would)."""
    patient_id = patient_id or m.new_patient_id()
    await record_patient(conn, [Identifiable.parse_cx(patient_id)], Demographics("Test", "Patient"))
    return patient_id


async def counts(conn) -> dict[str, int]:
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}


async def entry(conn, unique_id: str) -> asyncpg.Record:
    rows = await conn.fetch("SELECT * FROM document_entry WHERE unique_id = $1 ORDER BY seq", unique_id)
    assert len(rows) == 1, f"{len(rows)} DocumentEntries with uniqueId {unique_id}"
    return rows[0]


def urn(value: uuid.UUID) -> str:
    return f"urn:uuid:{value}"


def add_association(xml: bytes, atype: str, source: str, target: str, slots: dict[str, str] | None = None) -> bytes:
    """``xml`` (a SubmitObjectsRequest) with one more Association."""
    body = "".join(f'<rim:Slot name="{k}"><rim:ValueList><rim:Value>{val}</rim:Value></rim:ValueList></rim:Slot>'
                   for k, val in (slots or {}).items())
    extra = (f'<rim:Association id="ExtraAssociation" associationType="{atype}" sourceObject="{source}"'
             f' targetObject="{target}" objectType="{v.ASSOCIATION}">{body}</rim:Association>').encode()
    return xml.replace(b"</rim:RegistryObjectList>", extra + b"</rim:RegistryObjectList>")


# --- success -----------------------------------------------------------------------------------


async def test_submission_is_stored_with_every_query_column(client, conn):
    pid = await known_patient(conn)
    before = datetime.now(UTC).replace(microsecond=0)
    outcome, built = await client.register(pid, documents=2, folder=True, reference_ids=[ACCESSION])
    assert (outcome.status, outcome.errors) == (STATUS_SUCCESS, [])
    assert await counts(conn) == {"submission_set": 1, "document_entry": 2, "folder": 1, "association": 7,
                                  "unique_id_claim": 4}
    cx = Identifiable.parse_cx(pid).to_cx()
    doc = await entry(conn, built.document_unique_ids[0])
    assert (doc["status"], doc["version"], doc["lid"]) == (v.STATUS_APPROVED, 1, doc["id"])
    assert doc["patient_id"] == cx and doc["hash"] == built.document_hashes[0]
    assert doc["class_code"] == [m.CLASS_CODE.key] and doc["event_code"] == [c.key for c in m.EVENT_CODES]
    assert doc["confidentiality_code"] == [m.CONFIDENTIALITY_CODE.key]
    assert doc["creation_time"] == datetime(2024, 1, 5, 8, 30, tzinfo=UTC)
    assert doc["service_stop_time"] == datetime(2004, 1, 5, 8, 30, tzinfo=UTC)
    assert doc["author_person"] == [m.DOCUMENT_AUTHOR.person] and doc["reference_id"] == [ACCESSION]
    assert doc["repository_unique_id"] == m.TEST_REPOSITORY_UNIQUE_ID
    # The stored fragment is the object's wire form with the registry's id, lid and status.
    fragment = parse_xml(doc["ebrim"].encode())
    assert fragment.get("id") == fragment.get("lid") == urn(doc["id"])
    assert fragment.get("status") == v.STATUS_APPROVED
    assert built.document_unique_ids[0] in doc["ebrim"] and "Document01" not in doc["ebrim"]
    ss = await conn.fetchrow("SELECT * FROM submission_set")
    assert (ss["unique_id"], ss["source_id"], ss["patient_id"]) == (built.submission_set_unique_id, built.source_id,
                                                                    cx)
    assert ss["submission_time"] == datetime.strptime(built.submission_time, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    assert ss["content_type_code"] == [m.CONTENT_TYPE_CODE.key]
    folder = await conn.fetchrow("SELECT * FROM folder")
    assert folder["code"] == [m.FOLDER_CODE.key] and folder["status"] == v.STATUS_APPROVED
    assert before <= folder["last_update_time"] <= datetime.now(UTC)
    assert f"<rim:Value>{datetime_to_dtm(folder['last_update_time'])}</rim:Value>" in folder["ebrim"]
    # Association ends were rewritten to the assigned entryUUIDs.
    ids = {r["id"] for r in await conn.fetch("SELECT id FROM document_entry UNION ALL SELECT id FROM folder"
                                             " UNION ALL SELECT id FROM submission_set UNION ALL SELECT id FROM"
                                             " association")}
    for a in await conn.fetch("SELECT source, target FROM association"):
        assert a["source"] in ids and a["target"] in ids


async def test_pre_assigned_entry_uuids_are_kept(client, conn):
    pid = await known_patient(conn)
    outcome, built = await client.register(pid, use_uuids=True)
    assert outcome.status == STATUS_SUCCESS
    assert urn((await entry(conn, built.document_unique_id))["id"]) == built.document_id


async def test_extra_metadata_is_saved_without_a_warning(client, conn):
    pid = await known_patient(conn)
    outcome, built = await client.register(pid, extra_slots={"urn:example:hospital:ward": ["Radiology 2"]})
    assert (outcome.status, outcome.errors) == (STATUS_SUCCESS, [])
    stored = parse_xml((await entry(conn, built.document_unique_id))["ebrim"].encode())
    slots = {s.get("name"): [x.text for x in s.iter(f"{{{RIM}}}Value")] for s in stored.iter(f"{{{RIM}}}Slot")}
    assert slots["urn:example:hospital:ward"] == ["Radiology 2"]


async def test_undefined_urn_ihe_slots_are_refused_and_nothing_stored(client, conn):
    pid = await known_patient(conn)
    outcome, _ = await client.register(pid, extra_slots={"urn:ihe:iti:xds:2099:ward": ["Radiology 2"]})
    assert outcome.status == STATUS_FAILURE and outcome.codes == [ErrorCode.REGISTRY_METADATA_ERROR]
    assert "urn:ihe:iti:xds:2099:ward" in outcome.errors[0].context
    assert set((await counts(conn)).values()) == {0}


# --- patients ----------------------------------------------------------------------------------


async def test_unknown_patient_is_refused_and_nothing_stored(client, conn):
    pid = m.new_patient_id()
    outcome, _ = await client.register(pid, folder=True)
    assert outcome.status == STATUS_FAILURE and outcome.codes == [ErrorCode.UNKNOWN_PATIENT_ID]
    assert Identifiable.parse_cx(pid).to_cx() in outcome.errors[0].context
    assert set((await counts(conn)).values()) == {0}


async def test_merged_patient_is_refused_saying_so(client, conn):
    survivor, merged = await known_patient(conn), await known_patient(conn)
    await merge_patients(conn, Identifiable.parse_cx(survivor), Identifiable.parse_cx(merged))
    outcome, _ = await client.register(merged)
    assert outcome.codes == [ErrorCode.UNKNOWN_PATIENT_ID]
    assert "merged" in outcome.errors[0].context and Identifiable.parse_cx(merged).to_cx() in outcome.errors[0].context
    assert (await client.register(survivor))[0].status == STATUS_SUCCESS


async def test_affinity_domain_restricts_patient_ids(registry_pool, conn):
    domain = "1.2.826.0.1.3680043.99"
    registry = Registry(settings=RegistrySettings(affinity_domain_oid=domain), pool=registry_pool)
    client = Transport("handler", registry, None, None)
    outside = await known_patient(conn)  # known, but assigned by the test authority, not the domain
    outcome, _ = await client.register(outside)
    assert outcome.codes == [ErrorCode.UNKNOWN_PATIENT_ID] and domain in outcome.errors[0].context
    inside = await known_patient(conn, m.new_patient_id(domain))
    assert (await client.register(inside))[0].status == STATUS_SUCCESS


# --- uniqueIds ---------------------------------------------------------------------------------


async def test_same_document_again_with_the_same_hash_is_accepted_as_a_new_entry(client, conn):
    pid = await known_patient(conn)
    first, built = await client.register(pid)
    again, _ = await client.register(pid, document_unique_ids=[built.document_unique_id],
                                     hashes=[built.document_hashes[0].upper()])
    assert first.status == again.status == STATUS_SUCCESS
    rows = await conn.fetch("SELECT id, status FROM document_entry WHERE unique_id = $1", built.document_unique_id)
    assert len(rows) == 2 and {r["status"] for r in rows} == {v.STATUS_APPROVED}
    assert await conn.fetchval("SELECT count(*) FROM unique_id_claim WHERE unique_id = $1",
                               built.document_unique_id) == 1
    assert await conn.fetchval("SELECT count(*) FROM submission_set") == 2


async def test_same_document_unique_id_with_another_hash_is_refused(client, conn):
    pid = await known_patient(conn)
    _, built = await client.register(pid)
    stored_before = await counts(conn)
    outcome, _ = await client.register(pid, documents=2, document_unique_ids=[m.new_oid(), built.document_unique_id],
                                       hashes=["11" * 20, "22" * 20])
    assert outcome.status == STATUS_FAILURE and outcome.codes == [ErrorCode.NON_IDENTICAL_HASH]
    assert built.document_unique_id in outcome.errors[0].context
    assert "Document02" in outcome.errors[0].context  # named as the submitter named it
    assert await counts(conn) == stored_before  # the other document was not stored either


async def test_same_document_unique_id_and_hash_with_another_size_is_refused(client, conn):
    pid = await known_patient(conn)
    _, built = await client.register(pid)
    stored_before = await counts(conn)
    outcome, _ = await client.register(pid, document_unique_ids=[built.document_unique_id],
                                       hashes=[built.document_hashes[0]], sizes=[built.document_sizes[0] + 1])
    assert outcome.status == STATUS_FAILURE and outcome.codes == [ErrorCode.NON_IDENTICAL_SIZE]
    context = outcome.errors[0].context
    assert built.document_unique_id in context and f"size {built.document_sizes[0]}" in context
    assert await counts(conn) == stored_before
    assert await conn.fetchval("SELECT size FROM unique_id_claim WHERE unique_id = $1",
                               built.document_unique_id) == built.document_sizes[0]


async def test_reused_submission_set_and_folder_unique_ids_are_duplicates(client, conn):
    pid = await known_patient(conn)
    _, built = await client.register(pid, folder=True)
    stored_before = await counts(conn)
    outcome, _ = await client.register(pid, folder=True, submission_set_unique_id=built.submission_set_unique_id,
                                       folder_unique_id=built.folder_unique_id)
    assert outcome.codes == [ErrorCode.DUPLICATE_UNIQUE_ID_IN_REGISTRY] * 2
    contexts = " ".join(e.context for e in outcome.errors)
    assert built.submission_set_unique_id in contexts and built.folder_unique_id in contexts
    outcome, _ = await client.register(pid, document_unique_ids=[built.submission_set_unique_id])
    assert outcome.codes == [ErrorCode.DUPLICATE_UNIQUE_ID_IN_REGISTRY]
    assert "SubmissionSet" in outcome.errors[0].context
    assert await counts(conn) == stored_before


async def test_pre_assigned_entry_uuid_already_used_is_refused(client, conn):
    pid = await known_patient(conn)
    _, built = await client.register(pid, use_uuids=True)
    stored_before = await counts(conn)
    outcome, _ = await client.register(pid, document_ids=[built.document_id])
    assert outcome.codes == [ErrorCode.REGISTRY_METADATA_ERROR]
    assert f"entryUUID {built.document_id} is already used" in outcome.errors[0].context
    assert await counts(conn) == stored_before


async def test_all_errors_of_a_submission_are_reported_together(client, conn):
    pid = await known_patient(conn)
    _, built = await client.register(pid)
    outcome, _ = await client.register(m.new_patient_id(), submission_set_unique_id=built.submission_set_unique_id,
                                       replaces=urn(uuid.uuid4()))
    assert sorted(outcome.codes) == sorted([ErrorCode.UNKNOWN_PATIENT_ID, ErrorCode.REGISTRY_METADATA_ERROR,
                                            ErrorCode.DUPLICATE_UNIQUE_ID_IN_REGISTRY])


async def test_validation_errors_store_nothing(client, conn):
    pid = await known_patient(conn)
    outcome, _ = await client.register(pid, documents=3, omit_document=["creationTime"])
    assert outcome.status == STATUS_FAILURE and set(outcome.codes) == {ErrorCode.REGISTRY_METADATA_ERROR}
    assert set((await counts(conn)).values()) == {0}


# --- document relationships ---------------------------------------------------------------------


async def register_ok(client, pid: str, **kwargs) -> tuple[m.BuiltSubmission, str]:
    outcome, built = await client.register(pid, **kwargs)
    assert (outcome.status, outcome.errors) == (STATUS_SUCCESS, []), outcome.errors
    return built, built.document_unique_id


async def status_of(conn, unique_id: str) -> str:
    row = await entry(conn, unique_id)
    assert parse_xml(row["ebrim"].encode()).get("status") == row["status"], "fragment and column disagree"
    return row["status"]


async def entry_uuid(conn, unique_id: str) -> str:
    return urn((await entry(conn, unique_id))["id"])


async def test_replacement_deprecates_the_original_and_its_family(client, conn):
    pid = await known_patient(conn)
    _, original = await register_ok(client, pid)
    original_id = await entry_uuid(conn, original)
    _, addendum = await register_ok(client, pid, replaces=original_id, relationship="APND")
    _, transform = await register_ok(client, pid, replaces=original_id, relationship="XFRM")
    _, addendum_transform = await register_ok(client, pid, replaces=await entry_uuid(conn, addendum),
                                              relationship="XFRM")
    _, signature = await register_ok(client, pid, replaces=original_id, relationship="signs")
    _, replacement = await register_ok(client, pid, replaces=original_id)
    for uid in (original, addendum, transform, addendum_transform):
        assert await status_of(conn, uid) == v.STATUS_DEPRECATED
    assert await status_of(conn, signature) == v.STATUS_APPROVED
    assert await status_of(conn, replacement) == v.STATUS_APPROVED
    rplc = await conn.fetchrow("SELECT * FROM association WHERE type = $1", v.RPLC)
    assert urn(rplc["target"]) == original_id and urn(rplc["source"]) == await entry_uuid(conn, replacement)
    # The original is no longer current: another replacement, or an addendum to it, is refused.
    for relationship in ("RPLC", "APND"):
        stored_before = await counts(conn)
        outcome, _ = await client.register(pid, replaces=original_id, relationship=relationship)
        assert outcome.codes == [ErrorCode.REGISTRY_DEPRECATED_DOCUMENT]
        assert original_id in outcome.errors[0].context and original in outcome.errors[0].context
        assert await counts(conn) == stored_before


async def test_transform_replace_deprecates_the_original(client, conn):
    pid = await known_patient(conn)
    _, original = await register_ok(client, pid)
    _, replacement = await register_ok(client, pid, replaces=await entry_uuid(conn, original),
                                       relationship="XFRM_RPLC")
    assert await status_of(conn, original) == v.STATUS_DEPRECATED
    assert await status_of(conn, replacement) == v.STATUS_APPROVED


async def test_replacement_targets_must_be_documents_of_the_same_patient(client, conn):
    pid, other = await known_patient(conn), await known_patient(conn)
    _, original = await register_ok(client, other, folder=True)
    stored_before = await counts(conn)
    outcome, _ = await client.register(pid, replaces=await entry_uuid(conn, original))
    assert outcome.codes == [ErrorCode.PATIENT_ID_DOES_NOT_MATCH]
    assert Identifiable.parse_cx(other).to_cx() in outcome.errors[0].context
    missing = urn(uuid.uuid4())
    outcome, _ = await client.register(pid, replaces=missing)
    assert outcome.codes == [ErrorCode.REGISTRY_METADATA_ERROR] and missing in outcome.errors[0].context
    folder_id = urn(await conn.fetchval("SELECT id FROM folder"))
    outcome, _ = await client.register(other, replaces=folder_id)
    assert outcome.codes == [ErrorCode.REGISTRY_METADATA_ERROR] and "is a Folder" in outcome.errors[0].context
    assert await counts(conn) == stored_before
    assert await status_of(conn, original) == v.STATUS_APPROVED


# --- folders and references ---------------------------------------------------------------------


async def test_adding_to_an_existing_folder_updates_its_last_update_time(client, conn):
    pid = await known_patient(conn)
    await register_ok(client, pid, folder=True)
    folder = await conn.fetchrow("SELECT * FROM folder")
    folder_id = urn(folder["id"])
    old = datetime(2001, 1, 1, tzinfo=UTC)
    await conn.execute("UPDATE folder SET last_update_time = $1, ebrim = replace(ebrim, $2, '20010101000000')",
                       old, datetime_to_dtm(folder["last_update_time"]))
    before = datetime.now(UTC).replace(microsecond=0)
    _, added = await register_ok(client, pid, existing_folder=folder_id)
    after = await conn.fetchrow("SELECT * FROM folder WHERE id = $1", folder["id"])
    assert before <= after["last_update_time"] <= datetime.now(UTC) + timedelta(seconds=1)
    slot = re.search(r'name="lastUpdateTime"><rim:ValueList><rim:Value>(\d+)<', after["ebrim"])
    assert slot and slot.group(1) == datetime_to_dtm(after["last_update_time"])
    member = await conn.fetchval("SELECT count(*) FROM association WHERE source = $1 AND target = $2 AND type = $3",
                                 folder["id"], (await entry(conn, added))["id"], v.HAS_MEMBER)
    assert member == 1


async def test_existing_folder_must_exist_and_belong_to_the_patient(client, conn):
    pid, other = await known_patient(conn), await known_patient(conn)
    await register_ok(client, other, folder=True)
    folder_id = urn(await conn.fetchval("SELECT id FROM folder"))
    stored_before = await counts(conn)
    outcome, _ = await client.register(pid, existing_folder=folder_id)
    assert outcome.codes == [ErrorCode.PATIENT_ID_DOES_NOT_MATCH]
    missing = urn(uuid.uuid4())
    outcome, _ = await client.register(pid, existing_folder=missing)
    assert outcome.codes == [ErrorCode.REGISTRY_METADATA_ERROR] and missing in outcome.errors[0].context
    assert await counts(conn) == stored_before


async def test_submission_set_may_reference_an_existing_document(client, conn):
    pid, other = await known_patient(conn), await known_patient(conn)
    _, existing = await register_ok(client, pid)
    _, foreign = await register_ok(client, other)
    for target_uid, code in ((existing, None), (foreign, ErrorCode.PATIENT_ID_DOES_NOT_MATCH)):
        built = m.submit_objects_request(pid)
        xml = add_association(built.xml, v.HAS_MEMBER, built.submission_set_id, await entry_uuid(conn, target_uid),
                              {"SubmissionSetStatus": "Reference"})
        outcome = await client.send(m.soap_envelope(m.ACTION_ITI42, xml))
        assert outcome.codes == ([code] if code else []), outcome.errors
    ss_members = await conn.fetchval("SELECT count(*) FROM association a JOIN document_entry d ON d.id = a.target"
                                     " WHERE d.unique_id = $1", existing)
    assert ss_members == 2  # its original submission set's and the referencing one's


# --- concurrency ---------------------------------------------------------------------------------


async def test_concurrent_submissions_of_one_unique_id_with_different_hashes_let_one_in(client, conn):
    pid = await known_patient(conn)
    uid = m.new_oid()
    envelopes = [m.register_request(pid, document_unique_ids=[uid], hashes=[f"{i:040x}"])[0] for i in range(8)]
    outcomes = await asyncio.gather(*(client.send(e) for e in envelopes))
    assert sorted(o.status for o in outcomes) == [STATUS_FAILURE] * 7 + [STATUS_SUCCESS]
    assert all(o.codes == [ErrorCode.NON_IDENTICAL_HASH] for o in outcomes if o.status == STATUS_FAILURE)
    assert await counts(conn) == {"submission_set": 1, "document_entry": 1, "folder": 0, "association": 1,
                                  "unique_id_claim": 2}


async def test_concurrent_replacements_of_one_document_let_one_in(client, conn):
    pid = await known_patient(conn)
    _, original = await register_ok(client, pid)
    original_id = await entry_uuid(conn, original)
    envelopes = [m.register_request(pid, replaces=original_id)[0] for _ in range(6)]
    outcomes = await asyncio.gather(*(client.send(e) for e in envelopes))
    assert sorted(o.status for o in outcomes) == [STATUS_FAILURE] * 5 + [STATUS_SUCCESS]
    assert all(o.codes == [ErrorCode.REGISTRY_DEPRECATED_DOCUMENT] for o in outcomes if o.status == STATUS_FAILURE)
    assert await conn.fetchval("SELECT count(*) FROM document_entry WHERE status = $1", v.STATUS_APPROVED) == 1
    assert await conn.fetchval("SELECT count(*) FROM association WHERE type = $1", v.RPLC) == 1


# --- failures inside the registry (handler only: they need an injected fault) -------------------


@pytest.fixture
def handler(registry_pool):
    return Transport("handler", Registry(settings=RegistrySettings(), pool=registry_pool), None, None)


async def test_unexpected_failure_after_writing_is_a_registry_error_and_rolls_back(handler, conn, monkeypatch):
    pid = await known_patient(conn)
    _, original = await register_ok(handler, pid)
    stored_before = await counts(conn)

    async def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(store, "set_document_status", broken)
    outcome, _ = await handler.register(pid, replaces=await entry_uuid(conn, original))
    assert outcome.status == STATUS_FAILURE and outcome.codes == [ErrorCode.REGISTRY_ERROR]
    assert "disk on fire" not in outcome.errors[0].context and "nothing was stored" in outcome.errors[0].context
    assert await counts(conn) == stored_before
    assert await status_of(conn, original) == v.STATUS_APPROVED


async def test_deadlocks_are_retried(handler, conn, monkeypatch):
    pid = await known_patient(conn)
    real, calls = store.insert_package, []

    async def deadlocking(conn, rows):
        calls.append(1)
        if len(calls) < 3:
            raise asyncpg.DeadlockDetectedError("deadlock detected")
        return await real(conn, rows)

    monkeypatch.setattr(store, "insert_package", deadlocking)
    outcome, _ = await handler.register(pid)
    assert outcome.status == STATUS_SUCCESS and len(calls) == 3
    assert (await counts(conn))["document_entry"] == 1


async def test_endless_deadlocks_end_in_registry_busy(handler, conn, monkeypatch):
    pid = await known_patient(conn)

    async def deadlocking(conn, rows):
        raise asyncpg.DeadlockDetectedError("deadlock detected")

    monkeypatch.setattr(store, "insert_package", deadlocking)
    outcome, _ = await handler.register(pid)
    assert outcome.codes == [ErrorCode.REGISTRY_BUSY]
    assert set((await counts(conn)).values()) == {0}


async def test_a_body_other_than_submit_objects_request_is_a_sender_fault(handler):
    envelope = m.soap_envelope(m.ACTION_ITI42, m.stored_query_request(m.GET_DOCUMENTS, {}))
    with pytest.raises(SoapFault) as exc:
        await handler.send(envelope)
    assert exc.value.code == "Sender" and "SubmitObjectsRequest" in exc.value.reason


# --- the HTTP edge: faults, and nothing stored -----------------------------------------------------


def soap11(body: bytes) -> bytes:
    return (b'<s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header/><s:Body>' + body
            + b"</s:Body></s:Envelope>")


@pytest.mark.parametrize("case", ["malformed", "doctype", "soap11", "text/xml", "no action", "query body"])
async def test_bad_requests_get_a_soap_fault_and_store_nothing(case, registry_service, conn):
    pid = await known_patient(conn)
    envelope, built = m.register_request(pid)
    content_type = SOAP
    if case == "malformed":
        envelope = envelope[:-40]
    elif case == "doctype":
        envelope = envelope.replace(b"?>", b'?><!DOCTYPE x [<!ENTITY e "boom">]>', 1)
    elif case == "soap11":
        envelope = soap11(built.xml.split(b"?>", 1)[1])
    elif case == "text/xml":
        content_type = "text/xml; charset=UTF-8"
    elif case == "no action":
        envelope = re.sub(rb"<wsa:Action[^>]*>[^<]*</wsa:Action>", b"", envelope)
    elif case == "query body":
        envelope = m.soap_envelope(m.ACTION_ITI42, m.stored_query_request(m.GET_DOCUMENTS, {}))
    async with aiohttp.ClientSession() as session, session.post(
        registry_service.url, data=envelope, headers={"Content-Type": content_type}
    ) as resp:
        body = await resp.read()
        assert resp.status in (400, 500)
    fault = parse_fault(parse_xml(body))
    assert fault is not None and fault.reason, body[:1000]
    assert b"Traceback" not in body
    assert set((await counts(conn)).values()) == {0}
