"""The publication tracker against a real database: a study whose manifest cannot be built, or a manifest
that fails unexpectedly, is listed with its error and retried, and never blocks the studies behind it."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pydicom
import pytest

from imaging_source import store
from imaging_source.context import ImagingSource
from imaging_source.ingest import ingest
from imaging_source.settings import ImagingSourceSettings
from imaging_source.storage import FileStorage
from imaging_source.tracker import Tracker

HOSPITAL_OID = "1.2.826.0.1.99"


@pytest.fixture
async def source(new_imaging_database, tmp_path):
    url = await asyncio.to_thread(new_imaging_database)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    settings = ImagingSourceSettings(storage_dir=tmp_path, quiet_period=0, retry_initial=60, retry_max=60,
                                     patient_id_issuer_oid=HOSPITAL_OID,
                                     repository_url="http://127.0.0.1:9/repository")  # nothing listens there
    yield ImagingSource(settings=settings, pool=pool, storage=FileStorage(tmp_path))
    await pool.close()


async def _run_once(source: ImagingSource) -> None:
    tracker = Tracker(source)
    try:
        await tracker.run_once()
    finally:
        if tracker.client is not None:
            await tracker.client.close()


async def _add_study(conn, study_uid: str, header: dict, **columns) -> None:
    """A study row as an operator or an older release may leave it (here: without instances)."""
    await conn.execute(
        "INSERT INTO imaging_study (study_uid, patient_id, patient_issuer_oid, header, affinity_patient_id,"
        " last_received_at) VALUES ($1, 'H1', $2, $3::jsonb, $4, now() - interval '1 hour')",
        study_uid, HOSPITAL_OID, json.dumps(header), columns.get("affinity_patient_id"))


async def test_a_study_that_cannot_be_built_is_listed_and_does_not_block_others(source, samples):
    ct = pydicom.dcmread(samples["CT"])
    await ingest(samples["CT"].read_bytes(), source.storage, source.pool, issuer_oid=HOSPITAL_OID)
    async with source.pool.acquire() as conn:
        # Older than the CT study, so first in line: it has no instances left, so no manifest can be built.
        await _add_study(conn, "1.2.3.4.5", {"0020000D": {"vr": "UI", "Value": ["1.2.3.4.5"]}})
    await _run_once(source)
    async with source.pool.acquire() as conn:
        rows = {r["study_uid"]: r for r in await store.publication_status(conn)}
        queued = await conn.fetchval("SELECT count(*) FROM imaging_manifest WHERE study_uid = $1",
                                     ct.StudyInstanceUID)
    assert queued == 1  # the good study went on regardless
    bad = rows["1.2.3.4.5"]
    assert bad["state"] == "failed" and bad["attempts"] == 1
    assert "manifest could not be built" in bad["last_error"] and "at least one instance" in bad["last_error"]
    assert rows[ct.StudyInstanceUID]["attempts"] == 1  # its RAD-68 attempt failed (nothing listens) and counted


async def test_a_manifest_failing_unexpectedly_is_recorded_and_retried(source):
    async with source.pool.acquire() as conn:
        await _add_study(conn, "1.2.3.4.6", {}, affinity_patient_id=f"H1^^^&{HOSPITAL_OID}&ISO")
        await conn.execute(
            "INSERT INTO imaging_manifest (document_unique_id, study_uid, entry_uuid, storage_key, size, hash,"
            " instance_count) VALUES ('1.2.3.4.6.1', '1.2.3.4.6', 'urn:uuid:1', 'manifests/x.dcm', 1, 'ab', 1)")
    source.storage.put("manifests/x.dcm", b"x")
    await _run_once(source)  # the header lacks the Study Instance UID the metadata needs
    async with source.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT * FROM imaging_manifest WHERE document_unique_id = '1.2.3.4.6.1'")
        [listed] = await store.publication_status(conn)
    assert row["state"] == "pending" and row["attempts"] == 1 and row["next_attempt_at"] is not None
    assert row["last_error"].startswith("internal error: AttributeError")
    assert listed["study_uid"] == "1.2.3.4.6" and listed["last_error"] == row["last_error"]
