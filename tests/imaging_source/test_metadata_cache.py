"""WADO-RS metadata kept in the index (imaging_source/metadata_cache.py): the same DICOM JSON as computed from
the file, computed once, never stale when an instance's bytes change, and precomputed by the tracker."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time

import asyncpg
import pydicom
import pytest
from pydicom.uid import generate_uid

from imaging_source import metadata_cache, store
from imaging_source.context import ImagingSource
from imaging_source.ingest import ingest
from imaging_source.settings import ImagingSourceSettings
from imaging_source.storage import FileStorage
from imaging_source.tracker import Tracker

HOSPITAL_OID = "1.2.826.0.1.99"
BASE = "http://images.example/dicomweb"


@pytest.fixture
async def source(new_imaging_database, tmp_path):
    url = await asyncio.to_thread(new_imaging_database)
    pool = await asyncpg.create_pool(url, min_size=1, max_size=4)
    settings = ImagingSourceSettings(storage_dir=tmp_path / "store", quiet_period=0, retry_initial=60,
                                     retry_max=60, patient_id_issuer_oid=HOSPITAL_OID,
                                     repository_url="http://127.0.0.1:9/repository")  # nothing listens there
    yield ImagingSource(settings=settings, pool=pool, storage=FileStorage(tmp_path / "store"))
    await pool.close()


def copy_of(path, comments: str, sop_uid: str | None = None) -> bytes:
    ds = pydicom.dcmread(path)
    ds.ImageComments = comments
    if sop_uid:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def expected_item(data: bytes) -> dict:
    """What the metadata of these bytes must say (pydicom on the file, as before the cache)."""
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    item = ds.to_json_dict(bulk_data_threshold=metadata_cache.BULK_THRESHOLD)
    item["00020010"] = {"vr": "UI", "Value": [str(ds.file_meta.TransferSyntaxUID)]}
    item["7FE00010"] = {"vr": "OW", "BulkDataURI": f"{BASE}/studies/{ds.StudyInstanceUID}/series/"
                                                   f"{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}/frames/1"}
    return item


async def rows_of(source: ImagingSource, study_uid: str):
    async with source.pool.acquire() as conn:
        return await store.instances_of(conn, study_uid)


async def kept(source: ImagingSource) -> dict[str, str | None]:
    async with source.pool.acquire() as conn:
        return {r["sop_instance_uid"]: r["metadata_json"]
                for r in await conn.fetch("SELECT sop_instance_uid, metadata_json FROM imaging_instance")}


async def test_metadata_is_the_files_dicom_json_computed_once(source, samples):
    study = pydicom.dcmread(samples["CT"]).StudyInstanceUID
    sent = [copy_of(samples["CT"], f"slice {n}", generate_uid()) for n in range(3)]
    for data in sent:
        await ingest(data, source.storage, source.pool, issuer_oid=HOSPITAL_OID)
    rows = await rows_of(source, study)
    assert set((await kept(source)).values()) == {None}
    first = await metadata_cache.metadata_body(source, rows, BASE)
    by_uid = {i["00080018"]["Value"][0]: i for i in json.loads(first)}
    assert by_uid == {pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID: expected_item(d) for d in sent}
    assert None not in (await kept(source)).values()
    # The stored files gone: the answer comes from the index alone, unchanged.
    shutil.rmtree(source.settings.storage_dir)
    assert await metadata_cache.metadata_body(source, rows, BASE) == first


async def test_an_instance_sent_again_with_other_bytes_is_not_served_stale(source, samples):
    uid = generate_uid()
    await ingest(copy_of(samples["CT"], "first reading", uid), source.storage, source.pool, issuer_oid=HOSPITAL_OID)
    study = pydicom.dcmread(samples["CT"]).StudyInstanceUID
    before = json.loads(await metadata_cache.metadata_body(source, await rows_of(source, study), BASE))
    assert before[0]["00204000"]["Value"] == ["first reading"]
    await ingest(copy_of(samples["CT"], "corrected", uid), source.storage, source.pool, issuer_oid=HOSPITAL_OID)
    assert (await kept(source))[uid] is None  # the new file's metadata is not known yet
    after = json.loads(await metadata_cache.metadata_body(source, await rows_of(source, study), BASE))
    assert after[0]["00204000"]["Value"] == ["corrected"]


async def test_the_tracker_precomputes_a_complete_studys_metadata(source, samples):
    await ingest(samples["CT"].read_bytes(), source.storage, source.pool, issuer_oid=HOSPITAL_OID)
    tracker = Tracker(source)
    try:
        await tracker.run_once()  # builds the manifest (its RAD-68 fails: nothing listens) and starts warming
    finally:
        if tracker.client is not None:
            await tracker.client.close()
    deadline = time.monotonic() + 30
    while None in (await kept(source)).values():
        assert time.monotonic() < deadline, "the metadata was not precomputed"
        await asyncio.sleep(0.1)
    [text] = (await kept(source)).values()
    assert json.loads(text) == {k: v for k, v in expected_item(samples["CT"].read_bytes()).items()
                                if k not in ("00020010", "7FE00010")}


@pytest.mark.parametrize("cached", ["{}", '{"00100010": {"vr": "PN"}}'])
def test_item_json_adds_transfer_syntax_and_bulk_data(cached):
    row = {"transfer_syntax_uid": "1.2.840.10008.1.2.1", "modality": "CT", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
           "number_of_frames": 2, "study_uid": "1.2", "series_uid": "1.3", "sop_instance_uid": "1.4"}
    item = json.loads(metadata_cache.item_json(cached, row, BASE))
    assert item == {**json.loads(cached), "00020010": {"vr": "UI", "Value": ["1.2.840.10008.1.2.1"]},
                    "7FE00010": {"vr": "OW", "BulkDataURI": f"{BASE}/studies/1.2/series/1.3/instances/1.4/frames/1,2"}}
    sr = json.loads(metadata_cache.item_json(cached, {**row, "modality": "SR"}, BASE))
    assert "7FE00010" not in sr
