"""Issue 12 end to end, with real processes: a region run as xds-local runs it (XUA required on ITI-18, ITI-43,
RAD-69 and DICOMweb; node-to-node ITI-41/ITI-42 allowed without an assertion; keys and trust files made by
local_network.security), every service and the portal auditing to a real ``xds-audit`` over TLS.

A clinician signs in (OpenID Connect), opens a patient, a report and the study's images through the portal;
the portal's requests carry its signed assertion for her. Requests without a valid assertion get a
WS-Security fault or HTTP 401 and raise a security alert. Every event type is then found in the audit
record repository with the participant objects its IHE transaction asks for, and the portal's admin audit
search finds who saw the patient.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass

import aiohttp
import pydicom
import pytest
import requests

from consumer.client.imaging import InstanceRequest, retrieve_imaging_document_set
from consumer.client.query import find_documents
from consumer.client.soap import SoapClient, SoapFaultError
from consumer.client.source import document_entry, provide_and_register, submission_package
from consumer.portal.sessions import PortalSession
from consumer.portal.settings import PortalSettings
from consumer.portal.xua import Caller, PortalXua
from ihe.metadata.model import Identifiable, ReferenceId
from ihe.xua.assertion import build_assertion, security_header
from local_network import security
from tests.audit.support import fetch, make_certificates, migrate_audit, start_audit_process
from tests.conftest import RunningService, free_port, start_registry_process
from tests.imaging_source.conftest import sample_path, send_with_pynetdicom, start_imaging_source
from tests.imaging_source.test_xdsi_flow import feed_patient
from tests.messages import FIND_DOCUMENTS, quoted, stored_query_envelope
from tests.portal.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    new_user,
    register_client,
    sign_in,
    start_portal_process,
    valid_nhs_number,
)
from tests.portal.test_import import PACS_AE, StorageSCP
from tests.portal.test_portal_http import PDF, _record_patient
from tests.repository.conftest import start_repository_process
from tests.xua_keys import CLINICIAN, make_signer

NHS_OID = "2.16.840.1.113883.2.1.4.1"
AUDIENCE = f"urn:oid:{NHS_OID}"
HOSPITAL_A_OID = "1.2.826.0.1.99"  # the test imaging source's --patient-id-issuer-oid


@dataclass
class Region:
    tag: str
    database_url: str
    creds: security.RegionCredentials
    registry: RunningService
    repository: RunningService
    imaging: RunningService
    portal: RunningService
    browser: requests.Session
    nhs: str
    hospital_number: str
    pdf: str
    study_uid: str
    ct: pydicom.Dataset
    adt_patient: str
    pacs: StorageSCP


def _cx(value: str, oid: str) -> str:
    return f"{value}^^^&{oid}&ISO"


def portal_xua(creds: security.RegionCredentials) -> PortalXua:
    """The portal's assertion maker with the region's portal key (the tests act as the portal with it)."""
    xua = PortalXua.from_settings(PortalSettings.from_dict({
        "xua_signing_key": str(creds.xua_key), "xua_signing_cert": str(creds.xua_cert),
        "xua_issuer": creds.xua_issuer, "xua_audience": AUDIENCE}))
    assert xua is not None
    return xua


def rows(database_url: str, node: str):
    return fetch(database_url, "SELECT event_type, event_id, event_action, outcome, user_id, user_address, "
                               "patient_ids, object_ids, message FROM audit_record WHERE source_id = $1", node)


def wait_for(database_url: str, node: str, wanted: set[str], timeout: float = 60.0):
    """The node's records once every wanted event type (or EventID) is among them."""
    deadline = time.monotonic() + timeout
    while True:
        found = rows(database_url, node)
        have = {r["event_type"] or r["event_id"] for r in found}
        if wanted <= have or time.monotonic() > deadline:
            assert wanted <= have, f"{node}: missing {wanted - have}; have {sorted(have)}"
            return found


def of_type(found, kind: str):
    return [r for r in found if (r["event_type"] or r["event_id"]) == kind]



@pytest.fixture(scope="module")
def region(registry_database_url, new_imaging_database, iam_server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("xua-audit")
    creds = security.prepare(tmp, audience=AUDIENCE)
    audit_certs = make_certificates(tmp / "audit-tls")
    migrate_audit(registry_database_url)
    started: list[RunningService] = []
    tag = uuid.uuid4().hex[:8]
    pacs = StorageSCP(free_port())  # Hospital A's PACS, for the portal's import (RAD-69 as the user)
    pacs.start()

    def audit_args(node: str) -> tuple[str, ...]:
        return ("--audit-repository", audit.url, "--audit-ca-file", str(audit_certs.ca), "--audit-spool-dir",
                str(tmp / f"spool-{node}"), "--audit-source-id", f"{node}-{tag}")

    def xua_args(kind: str) -> tuple[str, ...]:
        return ("--xua", "required", "--xua-trust", str(creds.trust_files[kind]))

    try:
        audit = start_audit_process(registry_database_url, audit_certs)
        started.append(audit)
        registry = start_registry_process(registry_database_url, *xua_args("registry"), *audit_args("registry"))
        started.append(registry)
        repository = start_repository_process(registry_database_url, registry.url, tmp / "docs",
                                              extra=(*xua_args("repository"), *audit_args("repository")))
        started.append(repository)
        imaging = start_imaging_source(
            new_imaging_database(), tmp / "instances", "--repository-url", repository.url,
            "--pix-port", str(registry.mllp_port), "--affinity-domain-oid", NHS_OID, "--quiet-period", "1",
            "--tracker-interval", "0.2", "--retry-initial", "0.5", "--retry-max", "1",
            *xua_args("imaging"), *audit_args("imaging"))
        started.append(imaging)

        nhs, number = valid_nhs_number(), f"A{uuid.uuid4().hex[:8]}"
        asyncio.run(_record_patient(registry_database_url, [Identifiable(nhs, NHS_OID),
                                                            Identifiable(number, HOSPITAL_A_OID)], "Xua"))
        adt_patient = _cx(f"ADT{uuid.uuid4().hex[:8]}", HOSPITAL_A_OID)
        asyncio.run(feed_patient(registry.mllp_port, adt_patient))  # accepted (MSA-1 AA), or it fails

        ct = pydicom.dcmread(sample_path("CT_small.dcm"))
        ct.PatientID = number
        ct.StudyInstanceUID = pydicom.uid.generate_uid()
        ct.SeriesInstanceUID = pydicom.uid.generate_uid()
        ct.SOPInstanceUID = pydicom.uid.generate_uid()
        ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
        ct.save_as(tmp / "ct.dcm", enforce_file_format=True)
        assert send_with_pynetdicom(imaging.dicom_port, [tmp / "ct.dcm"]) == [0]

        # ITI-41 from a hospital's document source: a node, no user, allowed without an assertion.
        entry = document_entry(_cx(nhs, NHS_OID), "application/pdf", title="CT report", creation_time="20240301120000",
                               source_patient_id=_cx(number, HOSPITAL_A_OID))
        entry.reference_ids = [ReferenceId(f"{ct.StudyInstanceUID}^^^^urn:ihe:iti:xds:2016:studyInstanceUID")]
        package = submission_package(_cx(nhs, NHS_OID), [entry], source_id="1.3.6.1.4.1.21367.2026.9.1")

        async def submit_and_wait() -> None:
            async with SoapClient(timeout=60) as client:
                result = await provide_and_register(client, repository.url, package, {entry.entry_uuid: PDF})
                assert result.status.endswith(":Success"), result.errors
            caller = Caller(PortalSession("Test harness", "clinician", "Hospital A", "", "harness"))
            xua = portal_xua(creds)
            async with SoapClient(timeout=30, security_provider=lambda u, a: security_header(xua.assertion(caller))
                                  ) as client:
                deadline = time.monotonic() + 90
                while time.monotonic() < deadline:
                    found = await find_documents(client, registry.url, _cx(nhs, NHS_OID))
                    if any(e.mime_type == "application/dicom" for e in found):
                        return
                    await asyncio.sleep(0.5)
            raise AssertionError("the imaging source did not publish the study's manifest (RAD-68) in time")

        asyncio.run(submit_and_wait())

        port = free_port()
        client = register_client(iam_server, f"http://127.0.0.1:{port}/auth/callback", client_id=f"xua-{tag}")
        user = new_user(iam_server, "Dr Ada Lovelace", ["role-clinician", "org-Hospital A"])
        portal = start_portal_process(
            registry_database_url, port, tmp / "portal.log",
            "--registries", f"Region|{registry.url}",
            "--hospitals", f"Hospital A|{repository.repository_unique_id}|{repository.url}|{HOSPITAL_A_OID}",
            "--registry-mllp", f"127.0.0.1:{registry.mllp_port}", "--oidc-issuer", iam_server.url,
            "--oidc-client-id", f"xua-{tag}", "--oidc-client-secret", CLIENT_SECRET,
            "--oidc-role-claim", "groups:role-", "--oidc-organisation-claim", "groups:org-",
            "--admin-role", "clinician", "--query-deadline", "20",
            "--pacs", f"Hospital A|127.0.0.1|{pacs.port}|{PACS_AE}",
            "--xua-signing-key", str(creds.xua_key), "--xua-signing-cert", str(creds.xua_cert),
            "--xua-issuer", creds.xua_issuer, "--xua-organisation-ids", "Hospital A=1.2.826.0.1.99",
            *audit_args("portal"), "--audit-database-url", registry_database_url)
        started.append(portal)
        assert CLIENT_ID  # the module's own client id (xua-TAG) keeps it apart from the other portal tests
        browser = sign_in(iam_server, client, user, portal.url)
        yield Region(tag, registry_database_url, creds, registry, repository, imaging, portal, browser, nhs, number,
                     entry.unique_id, str(ct.StudyInstanceUID), ct, adt_patient, pacs)
    finally:
        for service in reversed(started):
            service.stop()
        pacs.stop()


@pytest.fixture(scope="module")
def used(region):
    """What a clinician does in the portal, and a few callers without a (valid) assertion; done once."""
    b, p = region.browser, region.portal.url
    page = b.get(f"{p}/patients/{region.nhs}", timeout=60)
    assert page.status_code == 200, page.text[:2000]
    listing = b.get(f"{p}/api/patients/{region.nhs}/documents", timeout=60).json()
    assert all(s["ok"] for s in listing["sources"]), listing["sources"]
    assert {r["kind"] for r in listing["rows"]} == {"imaging", "document"}, listing["rows"]
    report = b.get(f"{p}/documents/{region.repository.repository_unique_id}/{region.pdf}", timeout=60)
    assert report.status_code == 200 and report.content == PDF
    qido = b.get(f"{p}/dicomweb/studies", params={"StudyInstanceUID": region.study_uid}, timeout=60)
    assert qido.status_code == 200, qido.text[:500]
    metadata = b.get(f"{p}/dicomweb/studies/{region.study_uid}/metadata", timeout=60)
    assert metadata.status_code == 200, metadata.text[:500]
    csrf = b.get(f"{p}/", timeout=30).text.split('name="csrf_token" value="')[1].split('"')[0]
    by_number = b.post(f"{p}/search", data={"by": "hospital", "hospital": "Hospital A",
                                            "hospital_number": region.hospital_number, "csrf_token": csrf},
                       allow_redirects=False, timeout=60)
    assert by_number.status_code == 303, by_number.text[:500]  # PIX (ITI-9) found the NHS number
    manifest = next(r for r in listing["rows"] if r["kind"] == "imaging")
    queued = b.post(f"{p}/imports", data={"patient_id": region.nhs, "csrf_token": csrf,
                                          "repository_unique_id": manifest["repository_unique_id"],
                                          "document_unique_id": manifest["document_unique_id"]},
                    allow_redirects=False, timeout=60)
    assert queued.status_code == 303, queued.text[:500]
    deadline = time.monotonic() + 90
    while True:  # the import runs in the portal's background, as the user who queued it
        jobs = b.get(f"{p}/api/imports", timeout=30).json()["imports"]
        if (jobs and jobs[0]["state"] in ("imported", "failed")) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert jobs[0]["state"] == "imported", jobs
    assert str(region.ct.SOPInstanceUID) in region.pacs.received

    # RAD-69 as the portal's import makes it: the user's assertion from the portal's key.
    xua = portal_xua(region.creds)
    caller = Caller(PortalSession("Dr Ada Lovelace", "clinician", "Hospital A", "", "ada"),
                    _cx(region.nhs, NHS_OID))
    instance = InstanceRequest(region.study_uid, str(region.ct.SeriesInstanceUID), str(region.ct.SOPInstanceUID),
                               region.imaging.repository_unique_id)

    async def rad69_and_refusals() -> dict[str, object]:
        out: dict[str, object] = {}
        async with SoapClient(timeout=60, security_provider=lambda u, a: security_header(xua.assertion(caller))
                              ) as client:
            result = await retrieve_imaging_document_set(client, f"{region.imaging.url}/rad69", [instance])
            out["rad69"] = set(result.instances)
        async with SoapClient(timeout=60) as client:
            with pytest.raises(SoapFaultError) as refused:
                await find_documents(client, region.registry.url, _cx(region.nhs, NHS_OID))
            out["no assertion"] = refused.value.fault
        forged = build_assertion(CLINICIAN, make_signer(region.creds.xua_issuer, "attacker"), audience=AUDIENCE)
        async with aiohttp.ClientSession() as http:
            async with http.post(region.registry.url, data=stored_query_envelope(
                    FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": quoted(_cx(region.nhs, NHS_OID))},
                    extra_headers=security_header(forged)),
                    headers={"Content-Type": "application/soap+xml"}) as resp:
                out["forged"] = (resp.status, await resp.text())
            async with http.get(f"{region.imaging.url}/dicomweb/studies/{region.study_uid}/metadata") as resp:
                out["dicomweb"] = (resp.status, resp.headers.get("WWW-Authenticate"), await resp.text())
        return out

    out = asyncio.run(rad69_and_refusals())
    logout = b.post(f"{p}/logout", data={"csrf_token": csrf}, allow_redirects=False, timeout=30)
    assert logout.status_code == 302
    forged_callback = requests.get(f"{p}/auth/callback", params={"state": "x", "code": "y"}, timeout=30)
    assert forged_callback.status_code == 400
    return out


def test_the_portals_requests_carry_its_users_assertion_and_are_served(region, used):
    assert used["rad69"] == {str(region.ct.SOPInstanceUID)}
    found = wait_for(region.database_url, f"registry-{region.tag}", {"ITI-18"})
    portal_queries = [r for r in of_type(found, "ITI-18") if "Dr Ada Lovelace<" in (r["user_id"] or "")]
    assert portal_queries, [r["user_id"] for r in of_type(found, "ITI-18")]
    assert all(r["outcome"] == "0" for r in portal_queries)
    assert f"@{security.PORTAL_ISSUER}>" in portal_queries[0]["user_id"]
    assert b'csd-code="309343006"' in portal_queries[0]["message"]  # the SNOMED CT role of the assertion


def test_callers_without_a_valid_assertion_get_a_ws_security_fault_or_401(used):
    fault = used["no assertion"]
    assert fault.subcode.endswith("InvalidSecurity") and "XUA" in fault.reason
    status, text = used["forged"]
    assert status >= 400 and "FailedAuthentication" in text
    status, challenge, text = used["dicomweb"]
    assert status == 401 and challenge.startswith("SAML") and "XUA" in text


def test_every_event_type_is_in_the_audit_repository_with_its_participant_objects(region, used):
    cx, url, tag = _cx(region.nhs, NHS_OID), region.database_url, region.tag
    portal = wait_for(url, f"portal-{tag}", {"110122", "110123", "ITI-18", "ITI-43"})
    sign_ins, sign_outs = of_type(portal, "110122"), of_type(portal, "110123")
    assert all(r["event_id"] == "110114" for r in sign_ins + sign_outs)  # User Authentication: Login / Logout
    assert any("Dr Ada Lovelace" in r["user_id"] and r["outcome"] == "0" for r in sign_ins)
    assert "Dr Ada Lovelace" in sign_outs[0]["user_id"]
    assert any(r["outcome"] == "4" for r in sign_ins)  # the forged callback: a failed sign-in
    assert any(cx in r["patient_ids"] for r in of_type(portal, "ITI-18"))  # the consumer's own record
    retrieved = of_type(portal, "ITI-43")
    assert any(region.pdf in r["object_ids"] for r in retrieved)
    assert all(r["event_id"] == "110107" for r in retrieved)  # Import, at the consumer
    portal = wait_for(url, f"portal-{tag}", {"RAD-69"})
    imported = of_type(portal, "RAD-69")[0]  # the import job's retrieve, as the user who queued it
    assert imported["event_id"] == "110107" and region.study_uid in imported["object_ids"]
    assert "Dr Ada Lovelace" in imported["user_id"] and cx in imported["patient_ids"]

    registry = wait_for(url, f"registry-{tag}", {"ITI-8", "ITI-9", "ITI-18", "ITI-42", "110126", "110132"})
    assert of_type(registry, "ITI-8")[0]["patient_ids"] == [region.adt_patient]
    assert any(_cx(region.hospital_number, HOSPITAL_A_OID) in r["patient_ids"] for r in of_type(registry, "ITI-9"))
    assert all(cx in r["patient_ids"] for r in of_type(registry, "ITI-18"))
    # Security Alerts: no assertion (Use of Restricted Function), an untrusted signature (Node Authentication).
    alerts = [r for r in registry if r["event_id"] == "110113"]
    assert {r["event_type"] for r in alerts} == {"110132", "110126"}
    assert all(r["object_ids"] == ["/registry"] for r in alerts)

    repository = wait_for(url, f"repository-{tag}", {"ITI-41", "ITI-42", "ITI-43"})
    assert any(cx in r["patient_ids"] for r in of_type(repository, "ITI-41"))
    assert all(r["event_id"] == "110106" for r in of_type(repository, "ITI-42"))  # its own Export to the registry
    served = [r for r in of_type(repository, "ITI-43") if region.pdf in r["object_ids"]]
    assert served and "Dr Ada Lovelace<" in served[0]["user_id"]

    imaging = wait_for(url, f"imaging-{tag}", {"110104", "RAD-68", "RAD-69", "RAD-107", "RAD-129", "110132"})
    assert region.study_uid in of_type(imaging, "110104")[0]["object_ids"]
    rad68 = of_type(imaging, "RAD-68")[0]
    assert rad68["event_id"] == "110106" and cx in rad68["patient_ids"]
    assert region.study_uid in of_type(imaging, "RAD-69")[0]["object_ids"]
    assert sum("Dr Ada Lovelace<" in (r["user_id"] or "") for r in of_type(imaging, "RAD-69")) == 2  # import, test
    assert all(region.study_uid in r["object_ids"] for r in of_type(imaging, "RAD-107"))
    assert any("Dr Ada Lovelace<" in (r["user_id"] or "") for r in of_type(imaging, "RAD-107"))
    assert any("Dr Ada Lovelace<" in (r["user_id"] or "") for r in of_type(imaging, "RAD-129"))
    alert = of_type(imaging, "110132")[0]
    assert alert["event_id"] == "110113" and alert["object_ids"] == [f"/dicomweb/studies/{region.study_uid}/metadata"]


def test_the_admin_audit_search_says_who_saw_the_patient(region, used, iam_server):
    wait_for(region.database_url, f"registry-{region.tag}", {"ITI-18"})
    client = register_client(iam_server, f"{region.portal.url}/auth/callback", client_id=f"xua-{region.tag}")
    admin = new_user(iam_server, "Ms Admin", ["role-clinician", "org-Hospital A"])
    browser = sign_in(iam_server, client, admin, region.portal.url)
    answer = browser.get(f"{region.portal.url}/api/admin/audit", params={"patient": region.nhs}, timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    found = answer.json()["rows"]
    seen = {(r["node"], r["event_type"]) for r in found if "Dr Ada Lovelace" in (r["user"] or "")}
    assert (f"registry-{region.tag}", "ITI-18") in seen and (f"portal-{region.tag}", "ITI-18") in seen
    page = browser.get(f"{region.portal.url}/admin/audit", params={"patient": region.nhs, "event": "ITI-18"},
                       timeout=30)
    assert page.status_code == 200 and "Dr Ada Lovelace" in page.text
    bad = browser.get(f"{region.portal.url}/api/admin/audit", params={"since": "yesterday"}, timeout=30)
    assert bad.status_code == 400 and "since" in bad.json()["error"]
