"""registry.store against the real registry database: rows, claims, locks and guarded updates."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from ihe.errors import ErrorCode, XDSError
from ihe.metadata import vocabulary as v
from ihe.metadata.ebrim import object_fragment, read_submit_objects_request
from ihe.metadata.model import Identifiable
from ihe.xml import parse_xml
from registry import store
from registry.register import assign_entry_uuids
from tests import messages as m


def package(patient_id: str | None = None, **kwargs):
    """A package as the registry stores it (ids assigned), with its fragments and rows."""
    built = m.submit_objects_request(patient_id or m.new_patient_id(), **kwargs)
    pkg = assign_entry_uuids(read_submit_objects_request(parse_xml(built.xml)))
    fragments = {o.entry_uuid: object_fragment(o).decode() for o in pkg.objects()}
    return built, pkg, store.package_rows(pkg, fragments)


def test_package_rows_fill_every_query_column():
    reference = "A1^^^&1.2.3&ISO^urn:ihe:iti:xds:2013:accession"
    built, pkg, rows = package(documents=2, folder=True, reference_ids=[reference],
                               hashes=["ABCDEF0123456789ABCDEF0123456789ABCDEF01", None])
    ss = rows["submission_sets"][0]
    assert ss["id"] == store.bare_uuid(pkg.submission_set.entry_uuid) == ss["lid"]
    assert ss["patient_id"] == Identifiable.parse_cx(built.patient_id).to_cx()
    assert ss["unique_id"] == built.submission_set_unique_id and ss["source_id"] == built.source_id
    assert ss["content_type_code"] == [m.CONTENT_TYPE_CODE.key]
    assert ss["author_person"] == [m.SUBMISSION_SET_AUTHOR.person]
    assert ss["submission_time"].startswith(f"{built.submission_time[:4]}-")
    d = rows["documents"][0]
    assert d["status"] == v.STATUS_APPROVED and d["version"] == 1 and d["object_type"] == v.DOCUMENT_ENTRY_STABLE
    assert d["class_code"] == [m.CLASS_CODE.key] and d["type_code"] == [m.TYPE_CODE.key]
    assert d["format_code"] == [m.FORMAT_CODE.key] and d["practice_setting_code"] == [m.PRACTICE_SETTING_CODE.key]
    assert d["healthcare_facility_type_code"] == [m.HCFT_CODE.key]
    assert d["confidentiality_code"] == [m.CONFIDENTIALITY_CODE.key]
    assert d["event_code"] == [c.key for c in m.EVENT_CODES]
    assert d["creation_time"] == "2024-01-05T08:30:00+00:00"
    assert d["service_start_time"] == "2004-01-05T08:00:00+00:00"
    assert d["author_person"] == [m.DOCUMENT_AUTHOR.person]
    assert d["reference_id"] == [reference]
    assert d["hash"] == "abcdef0123456789abcdef0123456789abcdef01"  # stored lower case
    assert d["repository_unique_id"] == m.TEST_REPOSITORY_UNIQUE_ID and d["size"] == built.document_sizes[0]
    assert d["ebrim"].startswith("<rim:ExtrinsicObject")
    assert rows["folders"][0]["code"] == [m.FOLDER_CODE.key]
    assert {a["type"] for a in rows["associations"]} == {v.HAS_MEMBER}
    claims = rows["claims"]
    assert [c["unique_id"] for c in claims] == sorted(c["unique_id"] for c in claims)  # one order for all
    assert {c["object_kind"] for c in claims} == {"SubmissionSet", "DocumentEntry", "Folder"}
    by_uid = {c["unique_id"]: c for c in claims}
    assert by_uid[built.document_unique_ids[0]]["hash"] == "abcdef0123456789abcdef0123456789abcdef01"
    assert by_uid[built.document_unique_ids[1]]["hash"] is None


def test_package_rows_refuse_a_bad_time_and_a_shared_unique_id():
    _, pkg, _ = package()
    pkg.documents[0].creation_time = "2024-01-05"
    fragments = {o.entry_uuid: "<x/>" for o in pkg.objects()}
    with pytest.raises(XDSError) as exc:
        store.package_rows(pkg, fragments)
    assert exc.value.errors[0].code == ErrorCode.REGISTRY_METADATA_ERROR
    assert "creationTime '2024-01-05'" in exc.value.errors[0].context
    _, pkg, _ = package(documents=2)
    pkg.documents[1].unique_id = pkg.documents[0].unique_id
    with pytest.raises(XDSError, match="used by more than one object"):
        store.package_rows(pkg, {o.entry_uuid: "<x/>" for o in pkg.objects()})


async def count(conn, table: str) -> int:
    return await conn.fetchval(f"SELECT count(*) FROM {table}")


async def test_insert_package_writes_all_tables_and_reports_held_unique_ids(registry_pool):
    built, pkg, rows = package(documents=2, folder=True)
    async with registry_pool.acquire() as conn:
        assert await store.insert_package(conn, rows) == set()
        assert [await count(conn, t) for t in ("submission_set", "document_entry", "folder", "association",
                                                "unique_id_claim")] == [1, 2, 1, 7, 4]
        row = await conn.fetchrow("SELECT * FROM document_entry WHERE unique_id = $1", built.document_unique_ids[0])
        assert row["event_code"] == [c.key for c in m.EVENT_CODES]
        assert row["creation_time"] == datetime(2024, 1, 5, 8, 30, tzinfo=UTC)
        assert row["ebrim"] == object_fragment(pkg.documents[0]).decode()

        # The same uniqueIds again (new entryUUIDs): rows go in, the held uniqueIds come back.
        _, _, rows2 = package(documents=2, folder=True, document_unique_ids=built.document_unique_ids,
                                  submission_set_unique_id=built.submission_set_unique_id)
        async with conn.transaction():
            held = await store.insert_package(conn, rows2)
            assert held == {*built.document_unique_ids, built.submission_set_unique_id}
            claims = await store.find_claims(conn, held)
            assert claims[built.submission_set_unique_id].kind == "SubmissionSet"
            assert claims[built.submission_set_unique_id].entry_uuid == pkg.submission_set.entry_uuid
            assert claims[built.document_unique_ids[0]].hash == built.document_hashes[0]
            assert len(await store.documents_by_unique_id(conn, built.document_unique_ids[0])) == 2


async def test_an_entry_uuid_in_use_is_reported_by_id(registry_pool):
    _, pkg, rows = package()
    async with registry_pool.acquire() as conn:
        await store.insert_package(conn, rows)
        rows2 = package()[2]
        rows2["documents"][0]["id"] = rows["documents"][0]["id"]
        with pytest.raises(store.EntryUUIDInUse) as exc:
            async with conn.transaction():
                await store.insert_package(conn, rows2)
        assert exc.value.entry_uuid == pkg.documents[0].entry_uuid
        assert await count(conn, "submission_set") == 1  # the failed statement left nothing


async def test_find_objects_tells_kind_status_and_patient(registry_pool):
    built, pkg, rows = package(folder=True)
    async with registry_pool.acquire() as conn:
        await store.insert_package(conn, rows)
        wanted = [o.entry_uuid for o in pkg.objects()] + [f"urn:uuid:{uuid.uuid4()}"]
        found = await store.find_objects(conn, wanted)
    assert set(found) == {o.entry_uuid for o in pkg.objects()}
    doc = found[pkg.documents[0].entry_uuid]
    assert (doc.kind, doc.status, doc.unique_id) == ("DocumentEntry", v.STATUS_APPROVED, built.document_unique_id)
    assert doc.patient_id == Identifiable.parse_cx(built.patient_id).to_cx()
    assert found[pkg.folders[0].entry_uuid].kind == "Folder"
    assert found[pkg.submission_set.entry_uuid].kind == "SubmissionSet"
    assert {found[a.entry_uuid].kind for a in pkg.associations} == {"Association"}
    assert await store.find_objects(conn, []) == {}


async def insert_related(conn, pid: str, target: str, relationship: str):
    """Register a document related to ``target`` and return its entryUUID."""
    _, pkg, rows = package(pid, replaces=target, relationship=relationship)
    await store.insert_package(conn, rows)
    return pkg.documents[0].entry_uuid


async def test_replacement_family_follows_addenda_and_transformations_recursively(registry_pool):
    pid = m.new_patient_id()
    _, pkg, rows = package(pid)
    original = pkg.documents[0].entry_uuid
    async with registry_pool.acquire() as conn:
        await store.insert_package(conn, rows)
        addendum = await insert_related(conn, pid, original, "APND")
        transform = await insert_related(conn, pid, original, "XFRM")
        transform_of_addendum = await insert_related(conn, pid, addendum, "XFRM")
        signature = await insert_related(conn, pid, original, "signs")
        async with conn.transaction():
            family = await store.lock_replacement_family(conn, [original], (v.APND, v.XFRM))
            assert {o.entry_uuid for o in family} == {original, addendum, transform, transform_of_addendum}
            assert signature not in {o.entry_uuid for o in family}
            changed = await store.set_document_status(
                conn, [(o.entry_uuid, o.ebrim.replace(v.STATUS_APPROVED, v.STATUS_DEPRECATED)) for o in family],
                v.STATUS_DEPRECATED, only_if=v.STATUS_APPROVED)
            assert changed == {o.entry_uuid for o in family}
        statuses = dict(await conn.fetch("SELECT 'urn:uuid:' || id, status FROM document_entry"))
        assert statuses[original] == statuses[addendum] == statuses[transform_of_addendum] == v.STATUS_DEPRECATED
        assert statuses[signature] == v.STATUS_APPROVED
        deprecated = await conn.fetchval("SELECT ebrim FROM document_entry WHERE id = $1", store.bare_uuid(original))
        assert f'status="{v.STATUS_DEPRECATED}"' in deprecated
        # Deprecated documents are no longer a family to lock, and a guarded update changes nothing.
        async with conn.transaction():
            assert await store.lock_replacement_family(conn, [original], (v.APND, v.XFRM)) == []
            assert await store.set_document_status(conn, [(original, "<x/>")], v.STATUS_APPROVED,
                                                   only_if=v.STATUS_APPROVED) == set()


async def test_folder_last_update_is_set_in_column_and_fragment(registry_pool):
    _, pkg, rows = package(folder=True)
    folder = pkg.folders[0].entry_uuid
    when = datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    async with registry_pool.acquire() as conn:
        await store.insert_package(conn, rows)
        async with conn.transaction():
            [locked] = await store.lock_folders(conn, [folder, f"urn:uuid:{uuid.uuid4()}"])
            assert locked.kind == "Folder" and locked.entry_uuid == folder
            assert await store.set_folder_last_update(conn, [(folder, "<new/>")], when) == {folder}
        row = await conn.fetchrow("SELECT last_update_time, ebrim FROM folder WHERE id = $1", store.bare_uuid(folder))
    assert row["last_update_time"] == when and row["ebrim"] == "<new/>"


async def test_concurrent_claims_of_one_unique_id_let_exactly_one_in(registry_pool):
    uid = m.new_oid()
    packages = [package(document_unique_ids=[uid])[2] for _ in range(4)]

    async def claim(rows) -> set[str]:
        async with registry_pool.acquire() as conn, conn.transaction():
            return await store.insert_package(conn, rows)

    results = await asyncio.gather(*(claim(r) for r in packages))
    assert sorted(len(r) for r in results) == [0, 1, 1, 1]
    async with registry_pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM unique_id_claim WHERE unique_id = $1", uid) == 1


async def test_other_constraint_failures_stay_database_errors(registry_pool):
    rows = package()[2]
    rows["documents"][0]["patient_id"] = None
    async with registry_pool.acquire() as conn:
        # Only a primary-key clash means "entryUUID in use"; anything else is the database's error.
        with pytest.raises(asyncpg.NotNullViolationError):
            await store.insert_package(conn, rows)
        assert await count(conn, "submission_set") == 0


def test_patient_id_column_drops_a_namespace_sent_beside_the_oid():
    from ihe.metadata.model import Identifiable
    from registry.store import patient_id_column as _cx

    assert _cx(Identifiable("123", "1.2.3", "NHS")) == "123^^^&1.2.3&ISO"
    assert _cx(Identifiable("123", "1.2.3")) == "123^^^&1.2.3&ISO"
    assert _cx(Identifiable("123", None, "HOSP")) == "123^^^HOSP"
