"""Import (issue 11) against real processes: a registry with PIX, hospital A's repository and imaging
source publishing CT studies, the portal process, and hospital B's PACS (a pynetdicom storage SCP in
this process that keeps what it receives). A clinician of hospital B imports a study: the PACS holds
every instance under hospital B's number; the failures (no hospital B number, PACS down then Retry,
imaging source down) show on the row with their reason; a job running when the portal stops is
finished by the next portal process.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pydicom
import pytest
import requests
from pydicom.uid import generate_uid
from pynetdicom import AE, AllStoragePresentationContexts, evt

from ihe.metadata.model import Identifiable
from tests.conftest import RunningService, free_port, start_registry_process
from tests.imaging_source.conftest import sample_path, send_with_pynetdicom, start_imaging_source
from tests.portal.conftest import new_user, sign_in, start_portal_process, valid_nhs_number
from tests.portal.test_portal_http import _record_patient, _wait_for_manifest
from tests.repository.conftest import start_repository_process

NHS_OID = "2.16.840.1.113883.2.1.4.1"
HOSPITAL_A_OID = "1.2.826.0.1.99"  # the test imaging source's --patient-id-issuer-oid
HOSPITAL_B_OID = "1.2.826.0.1.97"
PACS_AE = "PACS_B"
SLICES = 3
# A client of its own at the (session-wide) provider: the other portal tests register theirs with other
# redirect URLs under their own id.
CLIENT_ID = "xds-portal-import-test"
CLIENT_SECRET = "portal-import-test-secret"


def register_client(iam_server, redirect_uri: str):
    with iam_server.app.app_context():
        client = iam_server.models.Client(
            client_id=CLIENT_ID, client_secret=CLIENT_SECRET, client_name="XDS portal (import tests)",
            client_uri=redirect_uri.rsplit("/auth/", 1)[0], redirect_uris=[redirect_uri],
            grant_types=["authorization_code"], response_types=["code"],
            token_endpoint_auth_method="client_secret_basic", scope=["openid", "profile", "email", "groups"])
        iam_server.backend.save(client)
        client.audience = [client]
        iam_server.backend.save(client)
    return client


class StorageSCP:
    """Hospital B's PACS: a pynetdicom storage SCP keeping every dataset it is sent, by SOP Instance UID."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.received: dict[str, pydicom.Dataset] = {}
        self.calling: set[str] = set()
        self.lock = threading.Lock()
        self.server = None

    def _store(self, event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received[str(ds.SOPInstanceUID)] = ds
            self.calling.add(event.assoc.requestor.ae_title)
        return 0x0000

    def start(self) -> None:
        ae = AE(ae_title=PACS_AE)
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._store)])

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server = None


@dataclass
class Patient:
    nhs: str
    numbers: dict[str, str]
    study_uid: str
    sop_uids: list[str]


@dataclass
class ImportRegion:
    registry: RunningService
    repository: RunningService
    source: RunningService
    portal: RunningService
    pacs: StorageSCP
    database_url: str
    patients: dict[str, Patient]
    portal_args: list[str]
    log_path: Path
    iam: object = None
    client: object = None
    user: object = None
    extra: dict = field(default_factory=dict)


def ct_study(folder: Path, patient_id: str) -> tuple[str, list[Path]]:
    """A CT study of SLICES slices (pydicom's CT_small) for ``patient_id``."""
    original = pydicom.dcmread(sample_path("CT_small.dcm"))
    study, series = generate_uid(), generate_uid()
    paths = []
    for n in range(SLICES):
        ds = original.copy()
        ds.PatientID = patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        path = folder / f"{patient_id}-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return study, paths


@pytest.fixture(scope="module")
def region(registry_database_url, new_imaging_database, iam_server, tmp_path_factory) -> ImportRegion:
    tmp = tmp_path_factory.mktemp("import")
    started: list[RunningService] = []
    pacs = StorageSCP(free_port())
    pacs.start()
    try:
        registry = start_registry_process(registry_database_url)
        started.append(registry)
        repository = start_repository_process(registry_database_url, registry.url, tmp / "repo_a")
        started.append(repository)
        source = start_imaging_source(
            new_imaging_database(), tmp / "instances", "--repository-url", repository.url,
            "--pix-port", str(registry.mllp_port), "--affinity-domain-oid", NHS_OID, "--quiet-period", "1",
            "--tracker-interval", "0.2", "--retry-initial", "0.5", "--retry-max", "1")
        started.append(source)
        patients: dict[str, Patient] = {}
        # "both": numbers at A and B; "a_only": no hospital B number; "later": for the PACS-down and restart cases
        for name, hospitals in (("both", "AB"), ("a_only", "A"), ("later", "AB"), ("restart", "AB")):
            nhs = valid_nhs_number()
            numbers = {h: f"{h}{uuid.uuid4().hex[:8]}" for h in hospitals}
            ids = [Identifiable(nhs, NHS_OID)] + [
                Identifiable(numbers[h], {"A": HOSPITAL_A_OID, "B": HOSPITAL_B_OID}[h]) for h in hospitals]
            asyncio.run(_record_patient(registry_database_url, ids, f"Import{uuid.uuid4().hex[:6]}"))
            study, paths = ct_study(tmp, numbers["A"])
            assert send_with_pynetdicom(source.dicom_port, paths) == [0] * SLICES
            patients[name] = Patient(nhs, numbers, study, [str(pydicom.dcmread(p).SOPInstanceUID) for p in paths])
        for patient in patients.values():
            asyncio.run(_wait_for_manifest(registry.url, patient.nhs))

        port = free_port()
        client = register_client(iam_server, f"http://127.0.0.1:{port}/auth/callback")
        user = new_user(iam_server, "Dr Grace Hopper", ["role-radiologist", "org-Hospital B"])
        args = [
            "--registries", f"Region|{registry.url}",
            "--hospitals", f"Hospital A|{repository.repository_unique_id}|{repository.url}|{HOSPITAL_A_OID};"
                           f"Hospital B|1.2.826.0.1.97.1|http://127.0.0.1:9/unused|{HOSPITAL_B_OID}",
            "--pacs", f"Hospital B|127.0.0.1|{pacs.port}|{PACS_AE}", "--import-ae-title", "PORTAL_IMPORT",
            "--registry-mllp", f"127.0.0.1:{registry.mllp_port}", "--oidc-issuer", iam_server.url,
            "--oidc-client-id", CLIENT_ID, "--oidc-client-secret", CLIENT_SECRET,
            "--oidc-role-claim", "groups:role-", "--oidc-organisation-claim", "groups:org-", "--query-deadline", "5"]
        log_path = tmp / "portal.log"
        portal = start_portal_process(registry_database_url, port, log_path, *args)
        started.append(portal)
        yield ImportRegion(registry, repository, source, portal, pacs, registry_database_url, patients, args,
                           log_path, iam_server, client, user)
    finally:
        for service in reversed(started):
            service.stop()
        pacs.stop()


def _browser(region: ImportRegion) -> requests.Session:
    return sign_in(region.iam, region.client, region.user, region.portal.url)


def _row(region: ImportRegion, browser: requests.Session, patient: Patient) -> dict:
    answer = browser.get(f"{region.portal.url}/api/patients/{patient.nhs}/documents", timeout=60)
    assert answer.status_code == 200, answer.text
    rows = [r for r in answer.json()["rows"] if r["kind"] == "imaging" and r["study_uid"] == patient.study_uid]
    assert len(rows) == 1, answer.json()
    return rows[0]


def _import(region: ImportRegion, browser: requests.Session, patient: Patient) -> requests.Response:
    """Press the row's Import button as the page renders it (its hidden fields and CSRF token)."""
    return browser.post(f"{region.portal.url}/imports", data=_import_form(region, browser, patient),
                        allow_redirects=False, timeout=60)


def _import_form(region: ImportRegion, browser: requests.Session, patient: Patient) -> dict[str, str]:
    """The fields of the row's Import form as the page renders it (its hidden fields and CSRF token)."""
    page = browser.get(f"{region.portal.url}/patients/{patient.nhs}", timeout=60)
    assert page.status_code == 200, page.text
    row = _row(region, browser, patient)
    form = re.search(r'<form method="post" action="/imports" class="import">(.*?)</form>',
                     page.text.split(f'data-document="{row["document_unique_id"]}"', 1)[1], re.S)
    assert form, page.text
    fields = dict(re.findall(r'name="([^"]+)" value="([^"]*)"', form.group(1)))
    assert fields["document_unique_id"] == row["document_unique_id"]
    return fields


def _wait_done(region: ImportRegion, browser: requests.Session, patient: Patient, timeout: float = 90.0
               ) -> tuple[dict, list[str]]:
    """The row once its import has ended, and every status seen on the way."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = _row(region, browser, patient)
        if not seen or seen[-1] != row["status"]:
            seen.append(row["status"])
        if row["status"] == "imported" or row["status"].startswith("failed"):
            return row, seen
        time.sleep(0.2)
    raise AssertionError(f"the import did not end in time; statuses seen: {seen}\n"
                         f"{region.log_path.read_text(errors='replace')[-3000:]}")


def test_import_without_csrf_token_is_refused(region):
    browser = _browser(region)
    patient = region.patients["both"]
    row = _row(region, browser, patient)
    answer = browser.post(f"{region.portal.url}/imports", data={
        "patient_id": patient.nhs, "repository_unique_id": row["repository_unique_id"],
        "document_unique_id": row["document_unique_id"]}, allow_redirects=False, timeout=30)
    assert answer.status_code == 403
    assert _row(region, browser, patient)["status"] == "available"
    assert not region.pacs.received.keys() & set(patient.sop_uids)


def test_import_puts_every_instance_in_the_pacs_under_the_hospital_number(region):
    browser = _browser(region)
    patient = region.patients["both"]
    answer = _import(region, browser, patient)
    assert answer.status_code == 303, answer.text
    row, seen = _wait_done(region, browser, patient)
    assert row["status"] == "imported", (row, region.log_path.read_text(errors="replace")[-3000:])
    assert row["import_job"]["done"] == row["import_job"]["total"] == SLICES
    assert row["import_job"]["local_patient_id"] == patient.numbers["B"]
    assert all(s == "imported" or s.startswith("being imported") for s in seen), seen
    for uid in patient.sop_uids:
        ds = region.pacs.received[uid]
        assert ds.PatientID == patient.numbers["B"]
        assert ds.IssuerOfPatientID == HOSPITAL_B_OID
        assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == HOSPITAL_B_OID
        assert ds.OtherPatientIDsSequence[0].PatientID == patient.numbers["A"]
        assert ds.StudyInstanceUID == patient.study_uid
        assert ds.pixel_array.shape == (128, 128)
    assert region.pacs.calling == {"PORTAL_IMPORT"}
    page = browser.get(f"{region.portal.url}/patients/{patient.nhs}", timeout=60)
    assert '<td class="status" title="">imported</td>' in page.text


def test_no_hospital_number_fails_with_that_reason(region):
    browser = _browser(region)
    patient = region.patients["a_only"]
    assert _import(region, browser, patient).status_code == 303
    row, _ = _wait_done(region, browser, patient)
    assert row["status"].startswith("failed: Hospital B has no patient number"), row
    assert "PIX found none" in row["status"]
    assert not region.pacs.received.keys() & set(patient.sop_uids)
    failed = browser.get(f"{region.portal.url}/api/imports", params={"state": "failed"}, timeout=30).json()
    assert row["import_job"]["id"] in [j["id"] for j in failed["imports"]]
    page = browser.get(f"{region.portal.url}/imports?state=failed", timeout=30)
    assert page.status_code == 200 and "PIX found none" in page.text and "Retry</button>" in page.text


def test_a_form_naming_another_patients_study_fails_and_sends_nothing(region):
    browser = _browser(region)
    victim, other = region.patients["later"], region.patients["both"]
    row = _row(region, browser, victim)
    page = browser.get(f"{region.portal.url}/patients/{other.nhs}", timeout=60)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    before = set(region.pacs.received)
    answer = browser.post(f"{region.portal.url}/imports", allow_redirects=False, timeout=30, data={
        "csrf_token": csrf, "patient_id": other.nhs, "repository_unique_id": row["repository_unique_id"],
        "document_unique_id": row["document_unique_id"]})
    assert answer.status_code == 303
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        jobs = browser.get(f"{region.portal.url}/api/imports", timeout=30).json()["imports"]
        job = next(j for j in jobs if j["document_unique_id"] == row["document_unique_id"])
        if job["state"] == "failed":
            break
        time.sleep(0.2)
    assert job["state"] == "failed" and job["reason"] == f"the study is not a document of patient {other.nhs}", job
    assert set(region.pacs.received) == before
    assert _row(region, browser, victim)["status"] == "available"  # the victim's row is not touched
    # (the next test imports this study for its own patient: the failed job is taken over, not in the way)


def test_pacs_down_fails_then_retry_succeeds(region):
    browser = _browser(region)
    patient = region.patients["later"]
    region.pacs.stop()
    try:
        assert _import(region, browser, patient).status_code == 303
        row, _ = _wait_done(region, browser, patient)
    finally:
        region.pacs.start()
    assert row["status"].startswith(f"failed: PACS {PACS_AE} at 127.0.0.1:{region.pacs.port} could not be reached"), row
    page = browser.get(f"{region.portal.url}/patients/{patient.nhs}", timeout=60)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
    retry_path = f"/imports/{row['import_job']['id']}/retry"
    assert f'action="{retry_path}"' in page.text
    answer = browser.post(region.portal.url + retry_path, data={"csrf_token": csrf}, allow_redirects=False,
                          timeout=30)
    assert answer.status_code == 303, answer.text
    row, _ = _wait_done(region, browser, patient)
    assert row["status"] == "imported", row
    assert row["import_job"]["attempts"] == 2
    assert {region.pacs.received[u].PatientID for u in patient.sop_uids} == {patient.numbers["B"]}
    again = browser.post(region.portal.url + retry_path, data={"csrf_token": csrf}, allow_redirects=False, timeout=30)
    assert again.status_code == 409  # nothing to retry once imported


def test_job_running_when_the_portal_stops_is_finished_after_restart(region):
    browser = _browser(region)
    patient = region.patients["restart"]
    row = _row(region, browser, patient)

    async def interrupted() -> None:  # as a portal killed mid-job leaves it
        conn = await asyncpg.connect(region.database_url)
        try:
            await conn.execute(
                "INSERT INTO portal_import (hospital, patient_id, repository_unique_id, document_unique_id, state, "
                "done_count, total_count, attempts, requested_by) VALUES ('Hospital B', $1, $2, $3, 'running', 1, $4,"
                " 1, 'test')", patient.nhs, row["repository_unique_id"], row["document_unique_id"], SLICES)
        finally:
            await conn.close()

    region.portal.stop()
    asyncio.run(interrupted())
    region.portal = start_portal_process(region.database_url, region.portal.port, region.log_path,
                                         *region.portal_args)
    browser = _browser(region)
    row, _ = _wait_done(region, browser, patient)
    assert row["status"] == "imported", row
    assert {region.pacs.received[u].PatientID for u in patient.sop_uids} == {patient.numbers["B"]}


def test_source_down_fails_with_that_reason(region):
    browser = _browser(region)
    patient = region.patients["both"]
    form = _import_form(region, browser, patient)  # "Import again" on an imported study, shown while it was up
    region.source.stop()
    listed = _row(region, browser, patient)  # the list says so now, and offers no Import
    assert listed["status"] == "source unreachable" and "imaging source" in listed["status_reason"], listed
    answer = browser.post(f"{region.portal.url}/imports", data=form, allow_redirects=False, timeout=60)
    assert answer.status_code == 303
    deadline = time.monotonic() + 90
    while (job := _row(region, browser, patient)["import_job"])["state"] not in ("failed", "imported"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    assert job["state"] == "failed" and job["reason"].startswith("the imaging source could not be reached (RAD-69"), job
    assert job["done"] == 0
    page = browser.get(f"{region.portal.url}/patients/{patient.nhs}", timeout=60).text
    assert f'action="/imports/{job["id"]}/retry"' in page  # Retry stays at hand


def test_resume_leaves_a_job_another_portal_process_is_running(region):
    """Two portals on one database: a job whose worker still holds its lock is not queued again; one whose
    process is gone (no lock) is."""
    from consumer.portal.import_study import LOCK_SPACE, resume

    async def scenario() -> tuple[list[int], list[int]]:
        pool = await asyncpg.create_pool(region.database_url, min_size=1, max_size=3)
        holder = await asyncpg.connect(region.database_url)
        try:
            ids = []
            for _ in range(2):
                ids.append(await holder.fetchval(
                    "INSERT INTO portal_import (hospital, patient_id, repository_unique_id, document_unique_id, "
                    "state, requested_by) VALUES ('Hospital Z', '0', 'r', $1, 'running', 'test') RETURNING id",
                    generate_uid()))
            await holder.execute("SELECT pg_advisory_lock($1, $2::integer)", LOCK_SPACE, ids[0])
            requeued = await resume(pool)
            await holder.execute("DELETE FROM portal_import WHERE id = ANY($1::bigint[])", ids)
            return ids, requeued
        finally:
            await holder.close()
            await pool.close()

    (held, orphan), requeued = asyncio.run(scenario())
    assert orphan in requeued
    assert held not in requeued
