"""RAD-68 end to end with real processes: registry (ITI-42/18, PIX ITI-9), the hospital's repository
(ITI-41/43) and the imaging source. An unmapped study waits, visibly; once PIX maps its patient the
manifest is registered with XDS-I.b metadata; the KOS (read back by ITI-43) passes dciodvfy and
every instance it references comes back by RAD-69 and WADO-RS byte-identical; new instances publish
a replacement (RPLC); an unreachable repository is retried and listed, never silently dropped."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import asyncpg
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient

from consumer.client.query import get_documents
from consumer.client.retrieve import DocumentRequest, retrieve_document_set
from consumer.client.soap import SoapClient
from ihe.errors import STATUS_SUCCESS
from ihe.metadata.model import AvailabilityStatus, Identifiable
from imaging_source.manifest import KOS_SOP_CLASS_UID, referenced_instances
from tests.conftest import ROOT, free_port, start_registry_process
from tests.imaging_source.conftest import require_tool, send_with_pynetdicom, start_imaging_source
from tests.imaging_source.rad69_client import rad69
from tests.repository.conftest import start_repository_process

HOSPITAL_OID = "1.2.826.0.1.99"       # the imaging source's --patient-id-issuer-oid
AFFINITY_OID = "2.16.840.1.113883.2.1.4.1"  # NHS number


def _status(source) -> list[dict]:
    with urllib.request.urlopen(f"{source.url}/status?format=json", timeout=10) as response:
        return json.loads(response.read())


async def _wait(predicate, timeout: float = 30.0, what: str = "condition"):
    """Poll ``predicate`` (plain or async) until it gives something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def _manifests(url: str, study_uid: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch("SELECT * FROM imaging_manifest WHERE study_uid = $1 ORDER BY created_at", study_uid)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def network(new_imaging_database, registry_database_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xdsi")
    imaging_database_url = new_imaging_database()
    registry = start_registry_process(registry_database_url)
    repository = start_repository_process(registry_database_url, registry.url, tmp / "repository")
    source = start_imaging_source(
        imaging_database_url, tmp / "instances", "--repository-url", repository.url,
        "--pix-port", str(registry.mllp_port), "--affinity-domain-oid", AFFINITY_OID,
        "--quiet-period", "1", "--tracker-interval", "0.2", "--retry-initial", "0.5", "--retry-max", "1",
        "--accession-issuer-oid", "1.2.826.0.1.98")
    source.database_url = imaging_database_url
    yield registry, repository, source
    source.stop()
    repository.stop()
    registry.stop()


async def test_publication_end_to_end(network, registry_database_url, samples, tmp_path):
    registry, repository, source = network
    imaging_database_url = source.database_url
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    original = pydicom.dcmread(samples["MR"])
    study_uid = original.StudyInstanceUID
    assert send_with_pynetdicom(source.dicom_port, [samples["MR"]]) == [0]

    # 1. The patient is not known to PIX yet: the study waits, and says so.
    waiting = await _wait(lambda: [r for r in _status(source) if r["study_uid"] == study_uid
                             and r["state"] == "waiting_patient"], what="the study to wait for its patient")
    assert "PIX" in waiting[0]["last_error"] and waiting[0]["attempts"] >= 1

    # 2. The identity feed links the hospital number with an NHS number: the manifest goes out.
    nhs = f"9{uuid.uuid4().int % 10**9:09d}"
    from registry.patients import Demographics, record_patient

    conn = await asyncpg.connect(registry_database_url)
    try:
        await record_patient(conn, [Identifiable(original.PatientID, HOSPITAL_OID), Identifiable(nhs, AFFINITY_OID)],
                             Demographics(family="Test"))
    finally:
        await conn.close()
    await _wait(lambda: not [r for r in _status(source) if r["study_uid"] == study_uid], what="publication")
    [manifest] = await _manifests(imaging_database_url, study_uid)
    assert manifest["state"] == "published" and manifest["instance_count"] == 1

    async with SoapClient(timeout=60) as client:
        [entry] = await get_documents(client, registry.url, [manifest["document_unique_id"]])
        assert entry.patient_id == Identifiable(nhs, AFFINITY_OID)
        assert entry.source_patient_id == Identifiable(original.PatientID, HOSPITAL_OID)
        assert entry.mime_type == "application/dicom"
        assert (entry.format_code.code, entry.format_code.scheme) == (KOS_SOP_CLASS_UID, "1.2.840.10008.2.6.1")
        assert ("MR", "1.2.840.10008.2.16.4") in {(c.code, c.scheme) for c in entry.event_codes}
        assert f"{study_uid}^^^^urn:ihe:iti:xds:2016:studyInstanceUID" in {r.value for r in entry.reference_ids}
        assert entry.service_start_time and entry.service_start_time.startswith(original.StudyDate[:6])
        assert entry.repository_unique_id == repository.repository_unique_id
        assert f"PID-5|{original.PatientName}" in entry.source_patient_info

        # 3. The KOS as the repository keeps it: valid, and every instance it names comes back.
        result = await retrieve_document_set(client, repository.url, [
            DocumentRequest(repository.repository_unique_id, manifest["document_unique_id"])])
        assert result.status == STATUS_SUCCESS
        kos_bytes = result.documents[0].data
        (tmp_path / "kos.dcm").write_bytes(kos_bytes)
        check = subprocess.run([dciodvfy, str(tmp_path / "kos.dcm")], capture_output=True, text=True)
        assert "Error" not in check.stdout + check.stderr, check.stdout + check.stderr
        kos = pydicom.dcmread(io.BytesIO(kos_bytes))
        assert kos.SOPClassUID == KOS_SOP_CLASS_UID and kos.Modality == "KO"
        assert kos.ConceptNameCodeSequence[0].CodeValue == "113030"
        assert (kos.PatientID, kos.PatientName, kos.StudyDate) == (
            original.PatientID, original.PatientName, original.StudyDate)
        series_item = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert series_item.RetrieveAETitle == "XDSI_TEST"
        assert series_item.RetrieveLocationUID == source.repository_unique_id
        assert series_item.RetrieveURL == f"{source.url}/dicomweb"
        refs = referenced_instances(kos)
        assert refs == [(study_uid, original.SeriesInstanceUID, original.SOPInstanceUID)]
        status, errors, docs = await rad69(client, f"{source.url}/rad69",
                                           [(st, se, series_item.RetrieveLocationUID, sop) for st, se, sop in refs],
                                           ["1.2.840.10008.1.2.1"])
        assert status == STATUS_SUCCESS and errors == []
        assert pydicom.dcmread(io.BytesIO(docs[original.SOPInstanceUID])).PixelData == original.PixelData
    web = DICOMwebClient(series_item.RetrieveURL)
    got = web.retrieve_instance(*refs[0], media_types=(("application/dicom", "*"),))
    assert got.PixelData == original.PixelData

    # 4. A new instance of the published study: a replacement manifest (RPLC) over both instances.
    extra = pydicom.dcmread(samples["MR"])
    extra.SOPInstanceUID = extra.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    extra.InstanceNumber = 2
    extra.save_as(tmp_path / "extra.dcm", enforce_file_format=True)
    assert send_with_pynetdicom(source.dicom_port, [tmp_path / "extra.dcm"]) == [0]
    async def replaced() -> bool:
        manifests = await _manifests(imaging_database_url, study_uid)
        return len(manifests) == 2 and manifests[1]["state"] == "published"

    await _wait(replaced, what="the replacement")
    first, second = await _manifests(imaging_database_url, study_uid)
    assert second["state"] == "published" and second["instance_count"] == 2
    assert second["replaces_entry_uuid"] == first["entry_uuid"]
    async with SoapClient(timeout=60) as client:
        old, new = (await get_documents(client, registry.url, [first["document_unique_id"]]))[0], \
            (await get_documents(client, registry.url, [second["document_unique_id"]]))[0]
    assert old.status == AvailabilityStatus.DEPRECATED and new.status == AvailabilityStatus.APPROVED


async def test_unreachable_repository_is_retried_and_listed(new_imaging_database, samples, tmp_path):
    imaging_database_url = await asyncio.to_thread(new_imaging_database)
    closed = free_port()
    source = start_imaging_source(imaging_database_url, tmp_path / "instances",
                                  "--repository-url", f"http://127.0.0.1:{closed}/repository",
                                  "--quiet-period", "0.5", "--tracker-interval", "0.2",
                                  "--retry-initial", "0.3", "--retry-max", "0.6")
    try:
        ct = pydicom.dcmread(samples["CT"])
        assert send_with_pynetdicom(source.dicom_port, [samples["CT"]]) == [0]
        row = (await _wait(lambda: [r for r in _status(source) if r["study_uid"] == ct.StudyInstanceUID
                             and (r["attempts"] or 0) >= 2], what="two failed attempts"))[0]
        assert row["state"] == "publishing" and "cannot connect" in row["last_error"]
        page = urllib.request.urlopen(f"{source.url}/status", timeout=10).read().decode()
        assert ct.StudyInstanceUID in page and "cannot connect" in page
        cli = subprocess.run([sys.executable, "-m", "imaging_source.cli", "status", "--database-url",
                              imaging_database_url, "--storage-dir", str(tmp_path / "instances")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert ct.StudyInstanceUID in cli.stdout and "cannot connect" in cli.stdout
    finally:
        source.stop()


def test_import_folder_cli(new_imaging_database, samples, tmp_path):
    imaging_database_url = new_imaging_database()
    folder = tmp_path / "incoming"
    folder.mkdir()
    for key in ("CT", "US"):
        (folder / samples[key].name).write_bytes(samples[key].read_bytes())
    (folder / "notes.txt").write_text("not DICOM")
    cli = subprocess.run([sys.executable, "-m", "imaging_source.cli", "import", str(folder), "--database-url",
                          imaging_database_url, "--storage-dir", str(tmp_path / "store")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 1  # one file refused
    assert "2 instances stored" in cli.stdout and "notes.txt" in cli.stdout
    for key in ("CT", "US"):
        ds = pydicom.dcmread(samples[key])
        folder = Path(tmp_path / "store") / ds.StudyInstanceUID / ds.SeriesInstanceUID
        [stored] = folder.glob(f"{ds.SOPInstanceUID}.*.dcm")  # content-versioned key
        assert stored.read_bytes() == samples[key].read_bytes()
