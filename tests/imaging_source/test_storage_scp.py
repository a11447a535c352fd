"""DICOM in: the Storage SCP process receives real instances (pynetdicom and dcmtk's storescu), keeps them
byte-identical on disk, indexes them in PostgreSQL, and refuses bad input with a failure status."""

from __future__ import annotations

import copy
import subprocess
import uuid
from pathlib import Path

import asyncpg
import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.imaging_source.conftest import require_tool, send_with_pynetdicom


async def _instance_rows(url: str) -> dict[str, asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT i.*, s.patient_id, s.patient_issuer_oid, s.changed, s.state "
                                "FROM imaging_instance i JOIN imaging_study s USING (study_uid)")
    finally:
        await conn.close()
    return {r["sop_instance_uid"]: r for r in rows}


def test_c_echo(imaging_source):
    ae = AE(ae_title="TEST_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", imaging_source.dicom_port, ae_title="XDSI_TEST")
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000


async def test_pynetdicom_c_store_keeps_and_indexes(imaging_source, imaging_database_url, samples):
    paths = [samples["CT"], samples["MR"], samples["US"], samples["CR"]]
    assert send_with_pynetdicom(imaging_source.dicom_port, paths) == [0, 0, 0, 0]
    rows = await _instance_rows(imaging_database_url)
    for path in paths:
        original = pydicom.dcmread(path)
        row = rows[original.SOPInstanceUID]
        assert row["study_uid"] == original.StudyInstanceUID
        assert row["series_uid"] == original.SeriesInstanceUID
        assert row["transfer_syntax_uid"] == original.file_meta.TransferSyntaxUID
        assert row["patient_id"] == original.PatientID
        assert row["patient_issuer_oid"] == "1.2.826.0.1.99"  # configured: the files carry no issuer
        assert row["changed"] and row["state"] == "receiving"
        stored = pydicom.dcmread(Path(imaging_source.storage_dir) / row["storage_key"])
        assert stored.PixelData == original.PixelData
        assert stored.PatientName == original.PatientName
    leftovers = [p for p in Path(imaging_source.storage_dir).rglob(".incoming-*")]
    assert leftovers == []


async def test_storescu_c_store(imaging_source, imaging_database_url, samples):
    storescu = require_tool("storescu", "dcmtk")
    path = samples["US_RLE"]
    result = subprocess.run([storescu, "--propose-rle", "-aet", "DCMTK_SCU", "-aec", "XDSI_TEST", "127.0.0.1",
                             str(imaging_source.dicom_port), str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    original = pydicom.dcmread(path)
    row = (await _instance_rows(imaging_database_url))[original.SOPInstanceUID]
    stored = pydicom.dcmread(Path(imaging_source.storage_dir) / row["storage_key"])
    # storescu proposes the file's own transfer syntax: the RLE pixel data arrives untouched.
    assert row["transfer_syntax_uid"] == original.file_meta.TransferSyntaxUID
    assert stored.PixelData == original.PixelData


async def test_instance_without_patient_id_is_refused_and_not_kept(imaging_source, imaging_database_url, samples,
                                                                   tmp_path):
    ds = pydicom.dcmread(samples["CT"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    del ds.PatientID
    path = tmp_path / "no_patient.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert send_with_pynetdicom(imaging_source.dicom_port, [path]) == [0xA900]
    assert ds.SOPInstanceUID not in await _instance_rows(imaging_database_url)
    assert not list(Path(imaging_source.storage_dir).rglob(f"{ds.SOPInstanceUID}*.dcm"))


async def test_index_failure_answers_failure_and_keeps_no_file(imaging_source, imaging_database_url, samples,
                                                               tmp_path):
    """A real PostgreSQL refusal (a CHECK constraint) must give a failure status and leave no file behind."""
    ds = pydicom.dcmread(samples["CT"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.99.{uuid.uuid4().int % 10**20}.999"
    path = tmp_path / "refused.dcm"
    ds.save_as(path, enforce_file_format=True)
    conn = await asyncpg.connect(imaging_database_url)
    await conn.execute("ALTER TABLE imaging_instance ADD CONSTRAINT test_refuse CHECK (sop_instance_uid NOT LIKE "
                       "'%.999')")
    try:
        statuses = send_with_pynetdicom(imaging_source.dicom_port, [path])
    finally:
        await conn.execute("ALTER TABLE imaging_instance DROP CONSTRAINT test_refuse")
        await conn.close()
    assert statuses == [0xA700]
    assert ds.SOPInstanceUID not in await _instance_rows(imaging_database_url)
    assert not list(Path(imaging_source.storage_dir).rglob(f"{ds.SOPInstanceUID}*.dcm"))


async def test_resending_an_instance_is_not_a_change(imaging_source, imaging_database_url, samples):
    assert send_with_pynetdicom(imaging_source.dicom_port, [samples["CT"]]) == [0]
    conn = await asyncpg.connect(imaging_database_url)
    try:
        uid = pydicom.dcmread(samples["CT"]).StudyInstanceUID
        await conn.execute("UPDATE imaging_study SET changed = false WHERE study_uid = $1", uid)
        assert send_with_pynetdicom(imaging_source.dicom_port, [samples["CT"]]) == [0]
        assert await conn.fetchval("SELECT changed FROM imaging_study WHERE study_uid = $1", uid) is False
        assert await conn.fetchval("SELECT count(*) FROM imaging_instance WHERE study_uid = $1", uid) == 1
    finally:
        await conn.close()


@pytest.mark.parametrize("bad", ["1.2.3..4", "../etc", ""])
def test_storage_keys_refuse_unsafe_uids(bad, tmp_path):
    from imaging_source.storage import FileStorage, StorageError, instance_key

    with pytest.raises(StorageError):
        instance_key("1.2.3", "1.2.3.4", bad)
    storage = FileStorage(tmp_path)
    with pytest.raises(StorageError):
        storage.put(f"../{bad or 'x'}", b"data")


async def test_a_different_copy_never_overwrites_the_indexed_one(imaging_source, imaging_database_url, samples,
                                                                 tmp_path):
    """The same SOP instance sent again with other bytes: if indexing the new copy fails, the copy already
    acknowledged is intact and still what the index describes; once it succeeds, only the new copy remains."""
    ds = pydicom.dcmread(samples["CT"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.98.{uuid.uuid4().int % 10**20}"
    first, second = tmp_path / "first.dcm", tmp_path / "second.dcm"
    ds.save_as(first, enforce_file_format=True)
    ds.InstanceNumber = 99
    ds.ImageComments = "a corrected copy"
    ds.save_as(second, enforce_file_format=True)
    assert send_with_pynetdicom(imaging_source.dicom_port, [first]) == [0]
    root = Path(imaging_source.storage_dir)

    conn = await asyncpg.connect(imaging_database_url)
    await conn.execute("ALTER TABLE imaging_instance ADD CONSTRAINT test_refuse_99 CHECK (instance_number <> 99)")
    try:
        assert send_with_pynetdicom(imaging_source.dicom_port, [second]) == [0xA700]
    finally:
        await conn.execute("ALTER TABLE imaging_instance DROP CONSTRAINT test_refuse_99")
        await conn.close()
    row = (await _instance_rows(imaging_database_url))[ds.SOPInstanceUID]
    [kept] = root.rglob(f"{ds.SOPInstanceUID}*.dcm")
    assert kept == root / row["storage_key"] and row["size"] == kept.stat().st_size
    assert pydicom.dcmread(kept).get("ImageComments") != "a corrected copy" and row["instance_number"] != 99

    assert send_with_pynetdicom(imaging_source.dicom_port, [second]) == [0]
    row = (await _instance_rows(imaging_database_url))[ds.SOPInstanceUID]
    [kept] = root.rglob(f"{ds.SOPInstanceUID}*.dcm")
    assert kept == root / row["storage_key"] and row["size"] == kept.stat().st_size
    assert pydicom.dcmread(kept).ImageComments == "a corrected copy" and row["instance_number"] == 99


def test_echoscu(imaging_source):
    echoscu = require_tool("echoscu", "dcmtk")
    result = subprocess.run([echoscu, "-aet", "DCMTK_SCU", "-aec", "XDSI_TEST", "127.0.0.1",
                             str(imaging_source.dicom_port)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_storescu_small_pdus_deflated_and_several_datasets(imaging_source, imaging_database_url, samples,
                                                                 tmp_path):
    """4 KiB PDUs both ways (each dataset in many P-DATA fragments), three datasets on one association, one of
    them re-encoded by storescu as Deflated Explicit VR Little Endian: every one kept and indexed whole."""
    storescu = require_tool("storescu", "dcmtk")
    paths = []
    study_uid = pydicom.uid.generate_uid()  # a study of its own: other tests retrieve the sample's study
    for n in range(3):
        ds = pydicom.dcmread(samples["CT"])
        ds.StudyInstanceUID = study_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.96.{uuid.uuid4().int % 10**20}"
        paths.append(tmp_path / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    for args, files in ((["--max-send-pdu", "4096", "-pdu", "4096"], paths[:2]),
                        (["-xd", "--max-send-pdu", "4096", "-pdu", "4096"], paths[2:])):
        result = subprocess.run([storescu, *args, "-aet", "DCMTK_SCU", "-aec", "XDSI_TEST", "127.0.0.1",
                                 str(imaging_source.dicom_port), *map(str, files)],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    rows = await _instance_rows(imaging_database_url)
    for path in paths:
        original = pydicom.dcmread(path)
        row = rows[original.SOPInstanceUID]
        stored = pydicom.dcmread(Path(imaging_source.storage_dir) / row["storage_key"])
        assert stored.PixelData == original.PixelData and stored.PatientID == original.PatientID
        assert row["size"] == (Path(imaging_source.storage_dir) / row["storage_key"]).stat().st_size
    assert rows[pydicom.dcmread(paths[2]).SOPInstanceUID]["transfer_syntax_uid"] == "1.2.840.10008.1.2.1.99"


async def test_a_header_longer_than_the_first_fragments_is_read_from_the_file(imaging_source, imaging_database_url,
                                                                              samples, tmp_path):
    """200 KB of private data before the patient module: the index facts come from the staged file."""
    ds = pydicom.dcmread(samples["CT"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.95.{uuid.uuid4().int % 10**20}"
    ds.StudyInstanceUID = pydicom.uid.generate_uid()  # a study of its own: the patient is the study's
    ds.add_new(0x00090010, "LO", "XDS TEST")
    ds.add_new(0x00091001, "OB", bytes(200_000))
    ds.PatientID = "LONGHEADER1"
    path = tmp_path / "long_header.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert send_with_pynetdicom(imaging_source.dicom_port, [path]) == [0]  # one fragment: read from it
    row = (await _instance_rows(imaging_database_url))[ds.SOPInstanceUID]
    assert row["patient_id"] == "LONGHEADER1" and row["instance_number"] == ds.InstanceNumber
    # 4 KiB fragments: the first 64 KiB end inside the private element, so the header is read from the file
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.95.{uuid.uuid4().int % 10**20}"
    ds.InstanceNumber = 7
    ds.save_as(path, enforce_file_format=True)
    result = subprocess.run([require_tool("storescu", "dcmtk"), "--max-send-pdu", "4096", "-aec", "XDSI_TEST",
                             "127.0.0.1", str(imaging_source.dicom_port), str(path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    row = (await _instance_rows(imaging_database_url))[ds.SOPInstanceUID]
    assert row["patient_id"] == "LONGHEADER1" and row["instance_number"] == 7


def test_pynetdicom_scu_with_a_small_max_pdu_gets_its_statuses(imaging_source, samples):
    """The SCU accepts only 4 KiB PDUs: the responses fit; an instance without Patient ID is refused (A900)
    with the reason in the Error Comment, and the association goes on."""
    from pynetdicom import AE

    ds = pydicom.dcmread(samples["CT"])
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = f"1.2.826.0.1.94.{uuid.uuid4().int % 10**20}"
    anonymous = copy.deepcopy(ds)
    anonymous.SOPInstanceUID = f"1.2.826.0.1.94.{uuid.uuid4().int % 10**20}"
    del anonymous.PatientID
    ae = AE(ae_title="TEST_SCU")
    ae.maximum_pdu_size = 4096
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", imaging_source.dicom_port, ae_title="XDSI_TEST")
    assert assoc.is_established
    try:
        refused = assoc.send_c_store(anonymous)
        ok = assoc.send_c_store(ds)
    finally:
        assoc.release()
    assert refused.Status == 0xA900 and "Patient ID" in str(refused.ErrorComment)
    assert ok.Status == 0
