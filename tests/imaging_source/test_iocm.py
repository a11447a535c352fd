"""IOCM at the imaging source: rejection notes (KOS with a rejection title, made with highdicom and sent by
dcmtk's storescu) take instances out of the published manifest (RPLC) and out of RAD-69/WADO; a study left
empty has its manifest deprecated by ITI-57 Update Document Set (ITI TF-2b 3.57)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import highdicom as hd
import pydicom
import pytest
from aiohttp import web
from lxml import etree

from consumer.client.query import get_documents
from consumer.client.retrieve import DocumentRequest, retrieve_document_set
from consumer.client.soap import SoapClient
from ihe.errors import STATUS_PARTIAL_SUCCESS, STATUS_SUCCESS, ErrorCode, RegistryError, build_registry_response
from ihe.metadata import vocabulary as v
from ihe.metadata.model import AvailabilityStatus, Identifiable
from ihe.soap import build_envelope_bytes
from ihe.xml import parse_xml
from imaging_source.manifest import referenced_instances
from imaging_source.publish import parse_code
from imaging_source.rejection import REJECTION_TITLES, deprecation_request, read_rejection_note
from tests.conftest import free_port, start_registry_process
from tests.imaging_source.conftest import start_imaging_source
from tests.imaging_source.rad69_client import rad69
from tests.imaging_source.test_failures import cli
from tests.imaging_source.test_xdsi_flow import (
    HOSPA_OID,
    NHS_OID,
    feed_patient,
    new_numbers,
    published_for,
    status_rows,
    storescu,
    wait_for,
)
from tests.messages import reference_schema
from tests.repository.conftest import start_repository_process

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
# ITI TF-2b 3.57 (written here, not taken from the code under test)
ACTION_ITI57 = "urn:ihe:iti:2010:UpdateDocumentSet"
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"


def study_files(sample: Path, folder: Path, patient_id: str, count: int) -> list[pydicom.Dataset]:
    """``count`` instances of one new study and series for ``patient_id``, written to ``folder``."""
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for number in range(1, count + 1):
        ds = pydicom.dcmread(sample)
        ds.PatientID, ds.IssuerOfPatientID = patient_id, "HOSPA"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = number
        ds.save_as(folder / f"{number}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def rejection_note(rejected: list[pydicom.Dataset], code: str, folder: Path) -> pydicom.Dataset:
    """A rejection note as a PACS makes it: a KOS titled with an IOCM rejection reason (highdicom)."""
    title = hd.sr.CodedConcept(code, "DCM", REJECTION_TITLES[code])
    content = hd.ko.KeyObjectSelection(document_title=title, referenced_objects=rejected)
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=rejected, content=content, series_instance_uid=hd.UID(), series_number=99,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="PACS")
    folder.mkdir(parents=True, exist_ok=True)
    kos.save_as(folder / "rejection.dcm", enforce_file_format=True)
    return kos


# --- pure ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(REJECTION_TITLES))
def test_rejection_titles_are_recognised(samples, tmp_path, code):
    [ds] = study_files(samples["CT"], tmp_path / "s", "A1", 1)
    note = read_rejection_note(rejection_note([ds], code, tmp_path / "k"))
    assert note is not None and note.code == code and note.meaning == REJECTION_TITLES[code]
    assert note.rejected == [(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)]


def test_an_ordinary_kos_rejects_nothing(samples, tmp_path):
    [ds] = study_files(samples["CT"], tmp_path / "s", "A1", 1)
    title = hd.sr.CodedConcept("113000", "DCM", "Of Interest")
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=[ds], content=hd.ko.KeyObjectSelection(document_title=title, referenced_objects=[ds]),
        series_instance_uid=hd.UID(), series_number=1, sop_instance_uid=hd.UID(), instance_number=1)
    assert read_rejection_note(kos) is None
    assert read_rejection_note(ds) is None


@pytest.mark.needs_shared("xsd")
def test_deprecation_request_is_iti57_and_schema_valid():
    request = deprecation_request("urn:uuid:0b1b3a0c-2f9e-4c55-8a55-0f6c1f6f3a11",
                                  Identifiable("9434765919", NHS_OID), source_id="1.2.3",
                                  content_type_code=parse_code("18748-4|2.16.840.1.113883.6.1|Imaging study"))
    reference_schema("lcm").assertValid(request)
    [package] = request.findall(f".//{{{RIM}}}RegistryPackage")
    [association] = request.findall(f".//{{{RIM}}}Association")
    assert association.get("associationType") == UPDATE_AVAILABILITY_STATUS
    assert association.get("sourceObject") == package.get("id")
    assert association.get("targetObject") == "urn:uuid:0b1b3a0c-2f9e-4c55-8a55-0f6c1f6f3a11"
    slots = {s.get("name"): [x.text for x in s.iter(f"{{{RIM}}}Value")] for s in association.iter(f"{{{RIM}}}Slot")}
    assert slots == {"OriginalStatus": [v.STATUS_APPROVED], "NewStatus": [v.STATUS_DEPRECATED]}
    assert not request.findall(f".//{{{RIM}}}ExtrinsicObject")


# --- real processes -----------------------------------------------------------------------------------


class CapturingRegistry:
    """Stands in for a registry with ITI-57 (another branch builds it) to see what the source sends."""

    def __init__(self, refusals: int = 0) -> None:
        self.requests: list[tuple[str, etree._Element]] = []
        self.port = free_port()
        self.refusals = refusals  # answer the first ones with a Failure, as a registry refusing the update

    async def handle(self, request: web.Request) -> web.Response:
        envelope = parse_xml(await request.read())
        action = envelope.findtext(".//{http://www.w3.org/2005/08/addressing}Action")
        body = envelope.find("{http://www.w3.org/2003/05/soap-envelope}Body")
        self.requests.append((action, next(iter(body))))
        errors = []
        if len(self.requests) <= self.refusals:
            errors = [RegistryError(ErrorCode.REGISTRY_METADATA_ERROR, "the entry is not Approved")]
        answer = build_envelope_bytes("urn:ihe:iti:2010:UpdateDocumentSetResponse",
                                      etree.tostring(build_registry_response(errors)))
        return web.Response(body=answer, content_type="application/soap+xml")


@pytest.fixture(scope="module")
def hospital(new_imaging_database, registry_database_url, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iocm")
    with contextlib.ExitStack() as running:  # whatever started is stopped, even when a later start fails
        registry = start_registry_process(registry_database_url, "--affinity-domain-oid", NHS_OID)
        running.callback(registry.stop)
        repository = start_repository_process(registry_database_url, registry.url, tmp / "repository")
        running.callback(repository.stop)
        database_url = new_imaging_database()
        source = start_imaging_source(
            database_url, tmp / "instances", "--repository-url", repository.url, "--registry-url", registry.url,
            "--pix-port", str(registry.mllp_port), "--affinity-domain-oid", NHS_OID, "--patient-id-issuer-oid",
            HOSPA_OID, "--quiet-period", "1", "--tracker-interval", "0.2", "--retry-initial", "0.5",
            "--retry-max", "1")
        running.callback(source.stop)
        source.database_url = database_url
        yield registry, repository, source


async def manifests(url: str, study_uid: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch("SELECT * FROM imaging_manifest WHERE study_uid = $1 ORDER BY created_at", study_uid)
    finally:
        await conn.close()


async def published_study(registry, source, samples, folder: Path, count: int):
    nhs, hospital_number = new_numbers()
    await feed_patient(registry.mllp_port, f"{nhs}^^^NHS&{NHS_OID}&ISO~{hospital_number}^^^HOSPA&{HOSPA_OID}&ISO")
    instances = study_files(samples["CT"], folder / "study", hospital_number, count)
    storescu(source.dicom_port, folder / "study")
    study_uid = instances[0].StudyInstanceUID
    await wait_for(lambda: published_for(registry, nhs, study_uid), what=lambda: f"publication: {status_rows(source)}")
    return nhs, instances


def wado_status(source, ds: pydicom.Dataset) -> int:
    url = (f"{source.url}/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/dicom"}),
                                    timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


async def test_rejected_instance_leaves_the_manifest_and_is_no_longer_served(hospital, samples, tmp_path):
    registry, repository, source = hospital
    nhs, (kept, rejected) = await published_study(registry, source, samples, tmp_path, 2)
    study_uid = kept.StudyInstanceUID
    assert wado_status(source, rejected) == 200

    rejection_note([rejected], "113001", tmp_path / "note")
    storescu(source.dicom_port, tmp_path / "note")

    async def replaced():
        rows = await manifests(source.database_url, study_uid)
        return rows if len(rows) == 2 and rows[1]["state"] == "published" else None

    first, second = await wait_for(replaced, what=lambda: f"the replacement: {status_rows(source)}")
    assert second["instance_count"] == 1 and second["replaces_entry_uuid"] == first["entry_uuid"]
    [listed] = await published_for(registry, nhs, study_uid)  # the aggregated list offers the new one only
    assert listed.unique_id == second["document_unique_id"]
    async with SoapClient(timeout=60) as client:
        [old] = await get_documents(client, registry.url, [first["document_unique_id"]])
        assert old.status == AvailabilityStatus.DEPRECATED
        result = await retrieve_document_set(client, repository.url, [
            DocumentRequest(repository.repository_unique_id, second["document_unique_id"])])
        assert result.status == STATUS_SUCCESS
        kos = pydicom.dcmread(io.BytesIO(result.documents[0].data))
        assert referenced_instances(kos) == [(study_uid, kept.SeriesInstanceUID, kept.SOPInstanceUID)]
        # RAD-69 and WADO-RS: the rejected instance is gone, the other one still there.
        status, errors, docs = await rad69(client, f"{source.url}/rad69", [
            (study_uid, rejected.SeriesInstanceUID, source.repository_unique_id, rejected.SOPInstanceUID),
            (study_uid, kept.SeriesInstanceUID, source.repository_unique_id, kept.SOPInstanceUID)],
            ["1.2.840.10008.1.2.1"])
        assert status == STATUS_PARTIAL_SUCCESS
        assert set(docs) == {kept.SOPInstanceUID} and len(errors) == 1 and rejected.SOPInstanceUID in str(errors)
    assert wado_status(source, rejected) == 404 and wado_status(source, kept) == 200

    # The PACS sends the rejected instance again: it stays rejected, and no new manifest goes out.
    again = tmp_path / "again"
    again.mkdir()
    rejected.save_as(again / "1.dcm", enforce_file_format=True)
    storescu(source.dicom_port, again)
    await asyncio.sleep(3)  # quiet period and a few passes
    assert wado_status(source, rejected) == 404
    rows = await manifests(source.database_url, study_uid)
    assert [r["instance_count"] for r in rows if r["state"] == "published"][-1] == 1
    assert not [r for r in status_rows(source) if r["study_uid"] == study_uid]


@pytest.mark.needs_shared("xsd")
@pytest.mark.parametrize("refusals", [0, 1])
async def test_withdrawn_study_sends_iti57_deprecation(new_imaging_database, registry_database_url, samples,
                                                       tmp_path, refusals, stops):
    """The sending side of ITI-57, seen by a capturing registry endpoint: every instance rejected (Data
    Retention Policy Expired), so the published manifest is to be set Deprecated. A refused deprecation
    needs action and is sent again by `xds-imaging-source retry`."""
    registry = start_registry_process(registry_database_url, "--affinity-domain-oid", NHS_OID)
    stops.append(registry)
    repository = start_repository_process(registry_database_url, registry.url, tmp_path / "repository")
    stops.append(repository)
    capture = CapturingRegistry(refusals)
    app = web.Application()
    app.router.add_post("/registry", capture.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", capture.port).start()
    database_url = await asyncio.to_thread(new_imaging_database)
    source = start_imaging_source(
        database_url, tmp_path / "instances", "--repository-url", repository.url,
        "--registry-url", f"http://127.0.0.1:{capture.port}/registry", "--pix-port", str(registry.mllp_port),
        "--affinity-domain-oid", NHS_OID, "--patient-id-issuer-oid", HOSPA_OID, "--quiet-period", "1",
        "--tracker-interval", "0.2", "--retry-initial", "0.5", "--retry-max", "1")
    try:
        nhs, instances = await published_study(registry, source, samples, tmp_path, 2)
        study_uid = instances[0].StudyInstanceUID
        [published] = await manifests(database_url, study_uid)
        rejection_note(instances, "113039", tmp_path / "note")
        storescu(source.dicom_port, tmp_path / "note")
        await wait_for(lambda: capture.requests, what=lambda: f"ITI-57: {status_rows(source)}")
        if refusals:
            [row] = await wait_for(lambda: [r for r in status_rows(source) if r["study_uid"] == study_uid
                                            and r["needs_action"]], what=lambda: f"needs action: {status_rows(source)}")
            assert "XDSRegistryMetadataError" in row["last_error"]
            await asyncio.sleep(2)
            assert len(capture.requests) == 1  # not retried by itself
            retried = cli("retry", study_uid, "--database-url", database_url)
            assert retried.returncode == 0, retried.stderr
            await wait_for(lambda: len(capture.requests) == 2, what=lambda: f"ITI-57 again: {status_rows(source)}")
            assert etree.tostring(capture.requests[0][1]) != etree.tostring(capture.requests[1][1])  # new set
        action, request = capture.requests[-1]
        assert action == ACTION_ITI57
        reference_schema("lcm").assertValid(request)
        [association] = request.findall(f".//{{{RIM}}}Association")
        assert association.get("associationType") == UPDATE_AVAILABILITY_STATUS
        assert association.get("targetObject") == published["entry_uuid"]
        [package] = request.findall(f".//{{{RIM}}}RegistryPackage")
        assert association.get("sourceObject") == package.get("id")
        patient = [e.get("value") for e in package.iter(f"{{{RIM}}}ExternalIdentifier")
                   if e.get("identificationScheme") == v.SS_PATIENT_ID]
        assert patient == [f"{nhs}^^^&{NHS_OID}&ISO"]

        async def deprecated():
            rows = await manifests(database_url, study_uid)
            return rows[-1]["state"] == "deprecated"

        await wait_for(deprecated, what="the manifest marked deprecated")
        assert not [r for r in status_rows(source) if r["study_uid"] == study_uid]
        for ds in instances:
            assert wado_status(source, ds) == 404
    finally:
        source.stop()
        await runner.cleanup()
        repository.stop()
        registry.stop()


async def test_withdrawn_study_is_deprecated_at_the_registry(hospital, samples, tmp_path):
    registry, _repository, source = hospital
    nhs, instances = await published_study(registry, source, samples, tmp_path, 1)
    study_uid = instances[0].StudyInstanceUID
    [published] = await manifests(source.database_url, study_uid)
    rejection_note(instances, "113037", tmp_path / "note")
    storescu(source.dicom_port, tmp_path / "note")

    async def deprecated():
        rows = await manifests(source.database_url, study_uid)
        return rows[-1]["state"] == "deprecated" or [r for r in status_rows(source) if r["needs_action"]
                                                      and r["study_uid"] == study_uid]

    await wait_for(deprecated, what=lambda: f"the deprecation: {status_rows(source)}")
    assert (await manifests(source.database_url, study_uid))[-1]["state"] == "deprecated", \
        [r["last_error"] for r in status_rows(source)]
    assert await published_for(registry, nhs, study_uid) == []  # FindDocuments (Approved) no longer lists it
    async with SoapClient(timeout=60) as client:
        [entry] = await get_documents(client, registry.url, [published["document_unique_id"]])
    assert entry.status == AvailabilityStatus.DEPRECATED


# --- corrections: an instance sent again with other attributes, a study moved to another patient -----------


async def test_resent_instance_with_corrected_attributes_is_published_again(hospital, samples, tmp_path):
    registry, _repository, source = hospital
    nhs, [ds] = await published_study(registry, source, samples, tmp_path, 1)
    study_uid = ds.StudyInstanceUID
    [first] = await manifests(source.database_url, study_uid)

    # The same instance, identical: nothing to publish.
    same = tmp_path / "same"
    same.mkdir()
    ds.save_as(same / "1.dcm", enforce_file_format=True)
    storescu(source.dicom_port, same)
    await asyncio.sleep(3)
    assert len(await manifests(source.database_url, study_uid)) == 1

    # The PACS corrects the study description and the patient's name: the manifest is replaced (RPLC).
    ds.StudyDescription = "CT chest corrected"
    ds.PatientName = "Smith^Janet"
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    ds.save_as(fixed / "1.dcm", enforce_file_format=True)
    storescu(source.dicom_port, fixed)

    async def replaced():
        rows = await manifests(source.database_url, study_uid)
        return rows if len(rows) == 2 and rows[1]["state"] == "published" else None

    _, second = await wait_for(replaced, what=lambda: f"the replacement: {status_rows(source)}")
    assert second["replaces_entry_uuid"] == first["entry_uuid"]
    [entry] = await published_for(registry, nhs, study_uid)
    assert entry.unique_id == second["document_unique_id"]
    assert entry.title.value == "CT chest corrected"
    assert "PID-5|Smith^Janet" in entry.source_patient_info


async def test_study_moved_to_another_patient(new_imaging_database, registry_database_url, samples, tmp_path,
                                             stops):
    """The hospital re-sends a study under another Patient ID: a new manifest for the new patient (an original:
    RPLC cannot change the patient), and the old patient's manifest is deprecated by ITI-57 (seen by a
    capturing registry endpoint, since this branch's registry has no ITI-57 yet)."""
    registry = start_registry_process(registry_database_url, "--affinity-domain-oid", NHS_OID)
    stops.append(registry)
    repository = start_repository_process(registry_database_url, registry.url, tmp_path / "repository")
    stops.append(repository)
    capture = CapturingRegistry()
    app = web.Application()
    app.router.add_post("/registry", capture.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", capture.port).start()
    database_url = await asyncio.to_thread(new_imaging_database)
    source = start_imaging_source(
        database_url, tmp_path / "instances", "--repository-url", repository.url,
        "--registry-url", f"http://127.0.0.1:{capture.port}/registry", "--pix-port", str(registry.mllp_port),
        "--affinity-domain-oid", NHS_OID, "--patient-id-issuer-oid", HOSPA_OID, "--quiet-period", "1",
        "--tracker-interval", "0.2", "--retry-initial", "0.5", "--retry-max", "1")
    try:
        old_nhs, [ds] = await published_study(registry, source, samples, tmp_path, 1)
        study_uid = ds.StudyInstanceUID
        [first] = await manifests(database_url, study_uid)
        new_nhs, new_number = new_numbers()
        await feed_patient(registry.mllp_port, f"{new_nhs}^^^NHS&{NHS_OID}&ISO~{new_number}^^^HOSPA&{HOSPA_OID}&ISO",
                           name="Jones^Ann")
        ds.PatientID, ds.PatientName = new_number, "Jones^Ann"
        moved = tmp_path / "moved"
        moved.mkdir()
        ds.save_as(moved / "1.dcm", enforce_file_format=True)
        storescu(source.dicom_port, moved)

        [entry] = await wait_for(lambda: published_for(registry, new_nhs, study_uid),
                                 what=lambda: f"publication for the new patient: {status_rows(source)}")
        assert entry.source_patient_id == Identifiable(new_number, HOSPA_OID)
        rows = await manifests(database_url, study_uid)
        assert rows[-1]["document_unique_id"] == entry.unique_id and rows[-1]["replaces_entry_uuid"] is None
        await wait_for(lambda: capture.requests, what=lambda: f"ITI-57: {status_rows(source)}")
        [(action, request)] = capture.requests
        assert action == ACTION_ITI57
        [association] = request.findall(f".//{{{RIM}}}Association")
        assert association.get("targetObject") == first["entry_uuid"]
        [package] = request.findall(f".//{{{RIM}}}RegistryPackage")
        patient = [e.get("value") for e in package.iter(f"{{{RIM}}}ExternalIdentifier")
                   if e.get("identificationScheme") == v.SS_PATIENT_ID]
        assert patient == [f"{old_nhs}^^^&{NHS_OID}&ISO"]  # the entry's own patient
        async def states():
            return [r["state"] for r in await manifests(database_url, study_uid)] == ["deprecated", "published"]

        await wait_for(states, what="the old manifest deprecated, the new one published")
    finally:
        source.stop()
        await runner.cleanup()
        repository.stop()
        registry.stop()


async def test_rejection_note_before_the_instances(hospital, samples, tmp_path):
    """A PACS may send the rejection note first: the instances it rejects are never served nor published."""
    registry, _repository, source = hospital
    nhs, hospital_number = new_numbers()
    await feed_patient(registry.mllp_port, f"{nhs}^^^NHS&{NHS_OID}&ISO~{hospital_number}^^^HOSPA&{HOSPA_OID}&ISO")
    instances = study_files(samples["CT"], tmp_path / "study", hospital_number, 2)
    kept, rejected = instances
    rejection_note([rejected], "113038", tmp_path / "note")
    storescu(source.dicom_port, tmp_path / "note")
    await asyncio.sleep(1)
    storescu(source.dicom_port, tmp_path / "study")
    [entry] = await wait_for(lambda: published_for(registry, nhs, kept.StudyInstanceUID),
                             what=lambda: f"publication: {status_rows(source)}")
    async def recorded():
        rows = await manifests(source.database_url, kept.StudyInstanceUID)
        return rows if rows[-1]["state"] == "published" else None

    rows = await wait_for(recorded, what="the repository's answer recorded")
    assert [r["instance_count"] for r in rows if r["state"] == "published"] == [1]
    assert wado_status(source, rejected) == 404 and wado_status(source, kept) == 200
    assert entry.unique_id == rows[-1]["document_unique_id"]


async def test_a_rejected_instance_is_not_served_even_before_the_tracker_runs(imaging_pool, samples, tmp_path):
    from imaging_source import store
    from imaging_source.ingest import ingest
    from imaging_source.storage import FileStorage

    info, _ = await ingest(samples["CT"].read_bytes(), FileStorage(tmp_path), imaging_pool, issuer_oid=HOSPA_OID)
    async with imaging_pool.acquire() as conn:
        assert await store.find_instance(conn, info.sop_instance_uid) is not None
        await conn.execute("INSERT INTO imaging_rejected_instance (sop_instance_uid, study_uid, reason_code, reason,"
                           " note_uid) VALUES ($1, $2, '113001', 'Rejected for Quality Reasons', '1.2.3')",
                           info.sop_instance_uid, info.study_uid)
        assert await store.find_instance(conn, info.sop_instance_uid) is None
        assert await store.find_instances(conn, [info.sop_instance_uid]) == {}
        assert await store.instances_of(conn, info.study_uid) == []
