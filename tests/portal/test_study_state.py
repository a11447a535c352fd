"""Opening a study whose images are gone shows why, and OHIF's study search without a UID covers the
patient opened in the session: real processes (registry, two hospitals' repositories and imaging sources,
the portal) and a real OpenID Connect provider (canaille, pytest-iam).

The patient has four studies: one that stays available, one its source withdraws (IOCM rejection note ->
ITI-57 deprecation), one whose instances are deleted at the source, and one at a second hospital whose
imaging source is stopped. Another patient's study at the same source must never leak into a search.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pydicom
import pytest
import requests

from consumer.client.query import find_documents, get_documents
from consumer.client.soap import SoapClient
from consumer.portal.viewer import DEFAULT_OHIF_DIR
from ihe.metadata.model import AvailabilityStatus, Identifiable
from tests.conftest import RunningService, free_port, start_registry_process
from tests.imaging_source.conftest import sample_path, send_with_pynetdicom, start_imaging_source
from tests.imaging_source.test_iocm import rejection_note
from tests.portal.conftest import (
    CLIENT_SECRET,
    new_user,
    register_client,
    sign_in,
    start_portal_process,
    valid_nhs_number,
)
from tests.portal.test_portal_http import _record_patient
from tests.repository.conftest import start_repository_process

NHS_OID = "2.16.840.1.113883.2.1.4.1"
HOSPITAL_A_OID = "1.2.826.0.1.99"
HOSPITAL_B_OID = "1.2.826.0.1.97"


@dataclass
class Region:
    registry: RunningService
    source_a: RunningService
    source_b: RunningService
    source_a_database: str
    portal: RunningService
    nhs: str
    other_nhs: str
    studies: dict[str, list[pydicom.Dataset]]  # name -> the instances sent
    manifests: dict[str, str]  # name -> the manifest's document uniqueId
    client: object
    user: object
    iam: object

    def uid(self, name: str) -> str:
        return str(self.studies[name][0].StudyInstanceUID)


def _study(folder: Path, patient_id: str, count: int = 2) -> list[pydicom.Dataset]:
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    folder.mkdir(parents=True)
    out = []
    for n in range(count):
        ds = pydicom.dcmread(sample_path("CT_small.dcm"))
        ds.PatientID = patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.InstanceNumber = n + 1
        ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
        out.append(ds)
    return out


def _send(source: RunningService, folder: Path) -> None:
    files = sorted(folder.glob("*.dcm"))
    assert send_with_pynetdicom(source.dicom_port, files) == [0] * len(files)


async def _manifests_for(registry_url: str, nhs: str, count: int, timeout: float = 120.0) -> dict[str, str]:
    """Study UID -> manifest uniqueId once ``count`` manifests of ``nhs`` are registered."""
    deadline = time.monotonic() + timeout
    async with SoapClient(timeout=30) as client:
        while True:
            entries = [e for e in await find_documents(client, registry_url, f"{nhs}^^^&{NHS_OID}&ISO")
                       if e.mime_type == "application/dicom"]
            if len(entries) >= count:
                return {r.value.split("^")[0]: e.unique_id for e in entries for r in e.reference_ids
                        if r.value.endswith("urn:ihe:iti:xds:2016:studyInstanceUID")}
            assert time.monotonic() < deadline, f"only {len(entries)} of {count} manifests were published"
            await asyncio.sleep(0.5)


@pytest.fixture(scope="module")
def region(registry_database_url, new_imaging_database, iam_server, tmp_path_factory) -> Region:
    if not (DEFAULT_OHIF_DIR / "index.html").is_file():
        pytest.fail("the OHIF viewer is not installed: run scripts/install-ohif.sh")
    tmp = tmp_path_factory.mktemp("study-state")
    started: list[RunningService] = []
    try:
        registry = start_registry_process(registry_database_url)
        started.append(registry)
        repo_a = start_repository_process(registry_database_url, registry.url, tmp / "repo_a")
        repo_b = start_repository_process(registry_database_url, registry.url, tmp / "repo_b")
        started += [repo_a, repo_b]
        common = ("--pix-port", str(registry.mllp_port), "--affinity-domain-oid", NHS_OID, "--registry-url",
                  registry.url, "--quiet-period", "1", "--tracker-interval", "0.2", "--retry-initial", "0.5",
                  "--retry-max", "1")
        source_a_database = new_imaging_database()
        source_a = start_imaging_source(source_a_database, tmp / "instances_a", "--repository-url", repo_a.url,
                                        *common)
        source_b = start_imaging_source(new_imaging_database(), tmp / "instances_b", "--repository-url", repo_b.url,
                                        "--patient-id-issuer-oid", HOSPITAL_B_OID, *common)
        started += [source_a, source_b]

        nhs, other_nhs = valid_nhs_number(), valid_nhs_number()
        numbers = {"A": f"A{uuid.uuid4().hex[:8]}", "B": f"B{uuid.uuid4().hex[:8]}", "Q": f"Q{uuid.uuid4().hex[:8]}"}
        asyncio.run(_record_patient(registry_database_url, [
            Identifiable(nhs, NHS_OID), Identifiable(numbers["A"], HOSPITAL_A_OID),
            Identifiable(numbers["B"], HOSPITAL_B_OID)], "Gone"))
        asyncio.run(_record_patient(registry_database_url, [
            Identifiable(other_nhs, NHS_OID), Identifiable(numbers["Q"], HOSPITAL_A_OID)], "Other"))
        studies = {name: _study(tmp / name, numbers[key]) for name, key in (
            ("kept", "A"), ("withdrawn", "A"), ("deleted", "A"), ("far", "B"), ("other", "Q"))}
        for name in ("kept", "withdrawn", "deleted", "other"):
            _send(source_a, tmp / name)
        _send(source_b, tmp / "far")
        found = asyncio.run(_manifests_for(registry.url, nhs, 4))
        found |= asyncio.run(_manifests_for(registry.url, other_nhs, 1))
        manifests = {name: found[str(ds[0].StudyInstanceUID)] for name, ds in studies.items()}

        port = free_port()
        client = register_client(iam_server, f"http://127.0.0.1:{port}/auth/callback", client_id=f"study-{port}")
        user = new_user(iam_server, "Dr Grace Hopper", ["role-clinician", "org-Hospital A"])
        portal = start_portal_process(
            registry_database_url, port, tmp / "portal.log",
            "--registries", f"Region|{registry.url}",
            "--hospitals", f"Hospital A|{repo_a.repository_unique_id}|{repo_a.url}|{HOSPITAL_A_OID};"
                           f"Hospital B|{repo_b.repository_unique_id}|{repo_b.url}|{HOSPITAL_B_OID}",
            "--oidc-issuer", iam_server.url, "--oidc-client-id", client.client_id,
            "--oidc-client-secret", CLIENT_SECRET, "--oidc-role-claim", "groups:role-",
            "--oidc-organisation-claim", "groups:org-", "--query-deadline", "3")
        started.append(portal)
        region = Region(registry, source_a, source_b, source_a_database, portal, nhs, other_nhs, studies, manifests,
                        client, user, iam_server)
        # The portal learns the studies (and where their images are) from the manifests of the lists shown.
        browser = sign_in(iam_server, client, user, portal.url)
        for patient, count in ((other_nhs, 1), (nhs, 4)):
            rows = browser.get(f"{portal.url}/api/patients/{patient}/documents", timeout=60).json()["rows"]
            assert len([r for r in rows if r["kind"] == "imaging" and r["image_count"] == 2]) == count, rows
        yield region
    finally:
        for service in reversed(started):
            service.stop()


@pytest.fixture
def browser(region) -> requests.Session:
    return sign_in(region.iam, region.client, region.user, region.portal.url)


def viewer(region: Region, browser: requests.Session, *uids: str) -> requests.Response:
    return browser.get(f"{region.portal.url}/viewer/viewer", params={"StudyInstanceUIDs": ",".join(uids)},
                       timeout=60)


def test_an_available_study_opens_the_viewer(region, browser):
    page = viewer(region, browser, region.uid("kept"))
    assert page.status_code == 200 and "app-config.js" in page.text, page.text[:500]
    state = browser.get(f"{region.portal.url}/api/studies/{region.uid('kept')}", timeout=60)
    assert state.status_code == 200
    assert state.json() == {"study_uid": region.uid("kept"), "state": "available", "title": "Images available",
                            "hospital": "Hospital A", "reason": "", "manifest": region.manifests["kept"]}


def test_the_viewer_needs_a_session_for_a_study(region):
    page = requests.get(f"{region.portal.url}/viewer/viewer", params={"StudyInstanceUIDs": region.uid("kept")},
                        allow_redirects=False, timeout=30)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=")
    assert "/viewer/viewer" in page.headers["Location"] and region.uid("kept") in page.headers["Location"]
    assert requests.get(f"{region.portal.url}/api/studies/{region.uid('kept')}", timeout=30).status_code == 401


def test_an_unknown_study_says_no_source_has_it(region, browser):
    unknown = f"2.25.{uuid.uuid4().int}"
    page = viewer(region, browser, unknown)
    assert page.status_code == 404
    assert 'data-state="unknown"' in page.text and "no imaging source of this region" in page.text
    assert unknown in page.text and "app-config.js" not in page.text
    lower = browser.get(f"{region.portal.url}/viewer/viewer", params={"studyInstanceUIDs": unknown}, timeout=60)
    assert lower.status_code == 404 and 'data-state="unknown"' in lower.text  # OHIF reads this spelling too
    assert browser.get(f"{region.portal.url}/api/studies/{unknown}", timeout=30).json()["state"] == "unknown"
    bad = viewer(region, browser, "1.2.x")
    assert bad.status_code == 400 and "not a valid Study Instance UID" in bad.text


def test_a_study_search_without_uid_covers_the_open_patients_studies_only(region, browser):
    qido = f"{region.portal.url}/dicomweb/studies"
    before = browser.get(qido, timeout=60)  # a new session has no patient open
    assert before.status_code == 204 and "covers only the patient opened" in before.headers["Warning"]
    assert browser.get(f"{region.portal.url}/patients/{region.nhs}", timeout=60).status_code == 200
    found = browser.get(qido, headers={"Accept": "application/dicom+json"}, timeout=60)
    assert found.status_code == 200, found.text[:500]
    uids = {s["0020000D"]["Value"][0] for s in found.json()}
    assert uids == {region.uid(n) for n in ("kept", "withdrawn", "deleted", "far")}  # from both sources
    assert region.uid("other") not in found.text
    # The sources apply the other matching keys (no study of the patient is from 1900).
    assert browser.get(qido, params={"StudyDate": "19000101"}, timeout=60).status_code == 204
    # Opening another patient moves the context.
    browser.get(f"{region.portal.url}/api/patients/{region.other_nhs}/documents", timeout=60)
    other = browser.get(qido, headers={"Accept": "application/dicom+json"}, timeout=60)
    assert {s["0020000D"]["Value"][0] for s in other.json()} == {region.uid("other")}
    # A named study is still fetched as asked (OHIF's own study search).
    named = browser.get(qido, params={"StudyInstanceUID": region.uid("kept")}, timeout=60)
    assert named.status_code == 200 and region.uid("kept") in named.text


def rows_of(region: Region, browser: requests.Session, **filters) -> dict[str, dict]:
    """The patient's list (JSON twin) by study name."""
    answer = browser.get(f"{region.portal.url}/api/patients/{region.nhs}/documents", params=filters, timeout=60)
    assert answer.status_code == 200, answer.text[:500]
    names = {region.uid(n): n for n in region.studies}
    return {names[r["study_uid"]]: r for r in answer.json()["rows"]}


def test_the_list_as_a_clinician_reads_it(region, browser):
    rows = rows_of(region, browser)
    assert set(rows) == {"kept", "withdrawn", "deleted", "far"}
    assert {r["status"] for r in rows.values()} == {"available"}  # every imaging source holds its study
    assert "images_at" not in rows["kept"]  # where the images are stays inside the portal
    page = browser.get(f"{region.portal.url}/patients/{region.nhs}", params={"hospital": "Hospital B"}, timeout=60)
    assert "1 of 4 documents match these filters." in page.text
    assert f'<a href="/patients/{region.nhs}" class="clear">Clear filters</a>' in page.text
    # This portal has no PACS for the user's hospital: no Import button that could only fail.
    assert 'action="/imports"' not in browser.get(f"{region.portal.url}/patients/{region.nhs}", timeout=60).text
    empty = browser.get(f"{region.portal.url}/api/patients/{region.nhs}/documents",
                        params={"from": "2024-02-01", "to": "2024-01-01"}, timeout=60)
    assert empty.status_code == 400 and "the date range is empty" in empty.text


async def _registry_status(registry_url: str, unique_id: str) -> str | None:
    async with SoapClient(timeout=30) as client:
        entries = await get_documents(client, registry_url, [unique_id])
    return str(entries[0].status) if entries else None


def test_a_study_withdrawn_by_its_source_says_so(region, browser, tmp_path):
    rejection_note(region.studies["withdrawn"], "113001", tmp_path / "note")
    _send(region.source_a, tmp_path / "note")
    deadline = time.monotonic() + 60
    while asyncio.run(_registry_status(region.registry.url, region.manifests["withdrawn"])) != \
            AvailabilityStatus.DEPRECATED:
        assert time.monotonic() < deadline, "the imaging source did not deprecate the manifest (ITI-57)"
        time.sleep(0.5)
    page = viewer(region, browser, region.uid("withdrawn"))
    assert page.status_code == 410, page.text[:500]
    assert 'data-state="withdrawn"' in page.text and "Study withdrawn by its source" in page.text
    assert "Hospital A withdrew this study" in page.text and region.manifests["withdrawn"] in page.text
    assert "withdrawn" not in rows_of(region, browser)  # a deprecated manifest leaves the list
    # Opened together with an available one: the page names the one that cannot be shown.
    both = viewer(region, browser, region.uid("kept"), region.uid("withdrawn"))
    assert both.status_code == 410 and region.uid("withdrawn") in both.text and "app-config.js" not in both.text


def test_a_study_whose_instances_were_deleted_at_the_source_says_so(region, browser):
    async def delete() -> None:
        conn = await asyncpg.connect(region.source_a_database)
        try:
            await conn.execute("DELETE FROM imaging_instance WHERE study_uid = $1", region.uid("deleted"))
        finally:
            await conn.close()

    asyncio.run(delete())
    page = viewer(region, browser, region.uid("deleted"))
    assert page.status_code == 410, page.text[:500]
    assert 'data-state="deleted"' in page.text and "Images no longer available" in page.text
    assert "deleted at the source" in page.text and "lists 2 images and is still approved" in page.text
    state = browser.get(f"{region.portal.url}/api/studies/{region.uid('deleted')}", timeout=30)
    assert state.status_code == 410 and state.json()["state"] == "deleted"
    rows = rows_of(region, browser)
    assert rows["deleted"]["status"] == "images unavailable", rows["deleted"]
    assert "Hospital A's imaging source no longer holds this study" in rows["deleted"]["status_reason"]
    assert rows["kept"]["status"] == "available"


def test_a_study_whose_source_is_stopped_says_it_is_unreachable(region, browser):
    assert viewer(region, browser, region.uid("far")).status_code == 200
    browser.get(f"{region.portal.url}/patients/{region.nhs}", timeout=60)
    region.source_b.stop()
    page = viewer(region, browser, region.uid("far"))
    assert page.status_code == 502, page.text[:500]
    assert 'data-state="source unreachable"' in page.text and "Hospital B" in page.text
    assert "cannot be reached" in page.text
    assert f'href="/patients/{region.nhs}"' in page.text  # back to the list it was opened from
    # The list marks it too (its repository is up: only its images are out of reach), counts still shown.
    answer = browser.get(f"{region.portal.url}/api/patients/{region.nhs}/documents", timeout=60).json()
    far = next(r for r in answer["rows"] if r["study_uid"] == region.uid("far"))
    assert far["status"] == "source unreachable" and "Hospital B's imaging source" in far["status_reason"], far
    assert (far["series_count"], far["image_count"]) == (1, 2)
    assert {(s["name"], s["kind"], s["ok"]) for s in answer["sources"]} >= {
        ("Hospital B", "imaging source", False), ("Hospital A", "imaging source", True)}
    listed = browser.get(f"{region.portal.url}/patients/{region.nhs}", timeout=60).text
    assert "Imaging source Hospital B could not be reached" in listed
    assert '<small class="reason">Hospital B&#39;s imaging source: ' in listed
