"""Every service audits what it handles, with no code of the handlers' own: a registry, a repository and an
imaging source with audit enabled, sending to a real ``xds-audit`` over TLS; ITI-8, ITI-41 (and the ITI-42
it makes), ITI-43, ITI-18, C-STORE and WADO-RS are each found in the audit record repository.
Also: a full spool makes the services refuse new work, and says so."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pydicom
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from pydicom.data import get_testdata_file

from consumer.client import DocumentRequest, SoapClient, retrieve_document_set
from ihe.audit.auditor import Auditor
from ihe.audit.middleware import audit_middleware
from ihe.audit.spool import Spool
from ihe.http import SoapReply, SoapService
from ihe.namespaces import ACTION_ITI18
from tests.audit.support import fetch, make_certificates, migrate_audit, start_audit_process
from tests.conftest import start_registry_process
from tests.imaging_source.conftest import (
    new_imaging_database,  # noqa: F401  (fixtures)
    send_with_pynetdicom,
    start_imaging_source,
)
from tests.imaging_source.test_xdsi_flow import feed_patient
from tests.messages import FIND_DOCUMENTS, new_patient_id, provide_and_register_request, quoted, stored_query_envelope
from tests.repository.conftest import start_repository_process
from tests.repository.wire import inline_request


def _rows(database_url: str, node: str):
    return fetch(database_url, "SELECT event_type, event_id, event_action, outcome, user_id, user_address, "
                               "patient_ids, object_ids FROM audit_record WHERE source_id = $1", node)


def _wait_rows(database_url: str, node: str, n: int, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while True:
        rows = _rows(database_url, node)
        if len(rows) >= n or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)



def test_every_service_audits_what_it_handles(registry_database_url, new_imaging_database, tmp_path):  # noqa: F811
    certs = make_certificates(tmp_path / "certs")
    migrate_audit(registry_database_url)
    audit = start_audit_process(registry_database_url, certs)
    tag = str(time.monotonic_ns())

    def audit_args(node: str) -> tuple[str, ...]:
        return ("--audit-repository", audit.url, "--audit-ca-file", str(certs.ca), "--audit-spool-dir",
                str(tmp_path / f"spool-{node}"), "--audit-source-id", f"{node}-{tag}")

    registry = start_registry_process(registry_database_url, *audit_args("registry"))
    repository = start_repository_process(registry_database_url, registry.url, tmp_path / "docs",
                                          extra=audit_args("repository"))
    # its own index: CT_small.dcm's UIDs are fixed, and other tests' copies in a shared index point at their files
    imaging = start_imaging_source(new_imaging_database(), tmp_path / "instances", "--quiet-period", "3600",
                                   *audit_args("imaging"))
    try:
        cx = new_patient_id()
        asyncio.run(feed_patient(registry.mllp_port, cx))  # accepted (MSA-1 AA), or it fails
        built = provide_and_register_request(cx)
        message = inline_request(built)

        async def soap_traffic():
            async with aiohttp.ClientSession() as session:
                async with session.post(repository.url, data=message.body,
                                        headers={"Content-Type": message.content_type}) as resp:
                    assert resp.status == 200 and b"ResponseStatusType:Success" in await resp.read()
                async with session.post(registry.url, data=stored_query_envelope(FIND_DOCUMENTS, {
                        "$XDSDocumentEntryPatientId": quoted(cx),
                        "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"}),
                        headers={"Content-Type": "application/soap+xml"}) as resp:
                    assert resp.status == 200
            async with SoapClient(timeout=60) as client:
                docs = await retrieve_document_set(client, repository.url, [
                    DocumentRequest(repository.repository_unique_id, built.document_unique_ids[0])])
                assert docs

        asyncio.run(soap_traffic())
        sample = get_testdata_file("CT_small.dcm")
        study = str(pydicom.dcmread(sample).StudyInstanceUID)
        assert send_with_pynetdicom(imaging.dicom_port, [sample]) == [0]

        async def wado():
            async with aiohttp.ClientSession() as session, session.get(
                    f"{imaging.url}/dicomweb/studies/{study}", headers={"Accept": "multipart/related; "
                                                                        'type="application/dicom"'}) as resp:
                assert resp.status == 200
                await resp.read()

        asyncio.run(wado())

        reg = _wait_rows(registry_database_url, f"registry-{tag}", 3)
        by_type = {r["event_type"]: r for r in reg}
        assert set(by_type) == {"ITI-8", "ITI-42", "ITI-18"}, reg
        assert by_type["ITI-8"]["patient_ids"] == [cx] and by_type["ITI-8"]["user_id"] == "PAS|HOSPA"
        assert by_type["ITI-8"]["user_address"] == "127.0.0.1" and by_type["ITI-8"]["outcome"] == "0"
        assert built.submission_set_unique_id in by_type["ITI-42"]["object_ids"]
        assert by_type["ITI-18"]["patient_ids"] == [cx] and by_type["ITI-18"]["event_id"] == "110112"

        repo = _wait_rows(registry_database_url, f"repository-{tag}", 3)
        by_type = {r["event_type"]: r for r in repo}
        assert set(by_type) == {"ITI-41", "ITI-42", "ITI-43"}, repo  # ITI-42: its own record as the sender
        assert by_type["ITI-41"]["patient_ids"] == [cx]
        assert built.submission_set_unique_id in by_type["ITI-41"]["object_ids"]
        assert by_type["ITI-43"]["object_ids"] == [built.document_unique_ids[0]]
        assert by_type["ITI-43"]["event_action"] == "R" and by_type["ITI-43"]["outcome"] == "0"

        img = _wait_rows(registry_database_url, f"imaging-{tag}", 2)
        by_event = {r["event_type"] or r["event_id"]: r for r in img}
        assert set(by_event) == {"110104", "RAD-107"}, img
        assert study in by_event["110104"]["object_ids"] and by_event["110104"]["user_id"] == "TEST_SCU"
        assert by_event["110104"]["patient_ids"][0].endswith("^^^&1.2.826.0.1.99&ISO")
        assert by_event["RAD-107"]["object_ids"] == [study]
    finally:
        imaging.stop()
        repository.stop()
        registry.stop()
        audit.stop()


@pytest.mark.asyncio
async def test_a_full_spool_refuses_new_work(tmp_path, caplog):
    spool = Spool.open_slot(tmp_path / "spool", max_bytes=2000)
    auditor = Auditor(spool, None, source_id="n", app_name="t")
    handled = []

    async def iti18(soap):
        handled.append(soap.action)
        return SoapReply("urn:ihe:iti:2007:RegistryStoredQueryResponse", b"<ok/>")

    service = SoapService({ACTION_ITI18: iti18})
    app = web.Application(middlewares=[audit_middleware(auditor)])
    app.router.add_post("/registry", service.handle)
    async def health(request):
        return web.Response(text="ok")

    app.router.add_get("/health", health)
    body = stored_query_envelope(FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": quoted(new_patient_id())})
    async with TestClient(TestServer(app)) as client:
        statuses = []
        while len(statuses) < 20:
            resp = await client.post("/registry", data=body, headers={"Content-Type": "application/soap+xml"})
            statuses.append(resp.status)
            text = await resp.text()
            if resp.status != 200:
                break
        assert statuses[-1] == 503 and "audit" in text and "Fault" in text
        assert len(handled) == len(statuses) - 1 == len(spool)  # every request served was audited
        assert (await client.get("/health")).status == 200
        spool.ack(spool.next_seq - 1)  # the repository caught up
        resp = await client.post("/registry", data=body, headers={"Content-Type": "application/soap+xml"})
        assert resp.status == 200
    assert any("ALARM" in r.message for r in caplog.records)
    auditor.close()


def test_a_full_spool_refuses_c_store_and_wado_at_the_imaging_source(new_imaging_database, tmp_path):  # noqa: F811
    from tests.conftest import free_port

    unreachable = free_port()  # nothing listens: records stay in the spool
    # its own index: CT_small.dcm's UIDs are fixed, and other tests' copies in a shared index point at their files
    imaging = start_imaging_source(new_imaging_database(), tmp_path / "instances", "--quiet-period", "3600",
                                   "--audit-repository", f"tcp://127.0.0.1:{unreachable}", "--audit-spool-dir",
                                   str(tmp_path / "spool"), "--audit-spool-max-bytes", "100")
    try:
        sample = get_testdata_file("CT_small.dcm")
        study = str(pydicom.dcmread(sample).StudyInstanceUID)
        assert send_with_pynetdicom(imaging.dicom_port, [sample]) == [0]
        deadline = time.monotonic() + 20  # the association's record is written when it is released
        while not list((tmp_path / "spool").rglob("*.seg")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        assert send_with_pynetdicom(imaging.dicom_port, [sample]) == [0xA700]

        async def wado() -> tuple[int, str]:
            async with aiohttp.ClientSession() as session, session.get(
                    f"{imaging.url}/dicomweb/studies/{study}/metadata") as resp:
                return resp.status, await resp.text()

        status, text = asyncio.run(wado())
        assert status == 503 and "audit" in text
    finally:
        imaging.stop()
