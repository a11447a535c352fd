"""The registry browser and the integration engineers' xds-consumer commands, against real processes: a
registry, a repository, an imaging source that publishes a CT study, the portal, and a real OpenID Connect
provider (pytest-iam)."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import uuid
from dataclasses import dataclass

import pydicom
import pytest
import requests
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.uid import generate_uid

from ihe.metadata.model import Identifiable
from tests.conftest import ROOT, RunningService, free_port, start_registry_process
from tests.imaging_source.conftest import sample_path, send_with_pynetdicom, start_imaging_source
from tests.portal.conftest import (
    CLIENT_SECRET,
    new_user,
    register_client,
    sign_in,
    start_portal_process,
    valid_nhs_number,
)
from tests.portal.test_portal_http import (
    HOSPITAL_A_OID,
    NHS_OID,
    PDF,
    _cx,
    _record_patient,
    _submit,
    _wait_for_manifest,
)
from tests.repository.conftest import start_repository_process

SLICES = 3
CLIENT_ID = "xds-portal-admin-test"  # not the other portal tests' client: the provider is shared by the session


@dataclass
class Region:
    registry: RunningService
    repo: RunningService
    source: RunningService
    portal: RunningService
    nhs: str
    number: str
    family: str
    study_uid: str
    sent: dict[str, bytes]  # SOP instance UID -> the file sent by C-STORE
    pdf_uid: str
    admin: object
    clinician: object
    client: object
    iam: object


@pytest.fixture(scope="module")
def region(registry_database_url, new_imaging_database, iam_server, tmp_path_factory) -> Region:
    tmp = tmp_path_factory.mktemp("admin")
    started: list[RunningService] = []
    try:
        registry = start_registry_process(registry_database_url)
        started.append(registry)
        repo = start_repository_process(registry_database_url, registry.url, tmp / "repo")
        started.append(repo)
        source = start_imaging_source(
            new_imaging_database(), tmp / "instances", "--repository-url", repo.url,
            "--pix-port", str(registry.mllp_port), "--affinity-domain-oid", NHS_OID, "--quiet-period", "1",
            "--tracker-interval", "0.2", "--retry-initial", "0.5", "--retry-max", "1")
        started.append(source)
        nhs, number, family = valid_nhs_number(), f"A{uuid.uuid4().hex[:8]}", f"Admin{uuid.uuid4().hex[:6]}"
        asyncio.run(_record_patient(registry_database_url, [Identifiable(nhs, NHS_OID),
                                                            Identifiable(number, HOSPITAL_A_OID)], family))
        original = pydicom.dcmread(sample_path("CT_small.dcm"))
        study, series = generate_uid(), generate_uid()
        paths, sent = [], {}
        for n in range(SLICES):
            ds = original.copy()
            ds.PatientID = number
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = n + 1
            path = tmp / f"ct{n}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
            sent[str(ds.SOPInstanceUID)] = path.read_bytes()
        assert send_with_pynetdicom(source.dicom_port, paths) == [0] * SLICES
        pdf_uid = asyncio.run(_submit(repo, nhs, _cx(number, HOSPITAL_A_OID), PDF, "application/pdf",
                                      "CT head report", "20240301120000"))
        asyncio.run(_wait_for_manifest(registry.url, nhs))

        port = free_port()
        client = register_client(iam_server, f"http://127.0.0.1:{port}/auth/callback", CLIENT_ID)
        admin = new_user(iam_server, "Ian Integrator", ["role-integration", "org-Region"])
        clinician = new_user(iam_server, "Dr Grace Hopper", ["role-clinician", "org-Hospital A"])
        portal = start_portal_process(
            registry_database_url, port, tmp / "portal.log",
            "--registries", f"Region|{registry.url}",
            "--hospitals", f"Hospital A|{repo.repository_unique_id}|{repo.url}|{HOSPITAL_A_OID}",
            "--imaging-sources", f"Hospital A|{source.url}",
            "--registry-mllp", f"127.0.0.1:{registry.mllp_port}", "--admin-role", "integration",
            "--oidc-issuer", iam_server.url, "--oidc-client-id", CLIENT_ID, "--oidc-client-secret", CLIENT_SECRET,
            "--oidc-role-claim", "groups:role-", "--oidc-organisation-claim", "groups:org-", "--query-deadline", "5")
        started.append(portal)
        yield Region(registry, repo, source, portal, nhs, number, family, study, sent, pdf_uid, admin, clinician,
                     client, iam_server)
    finally:
        for service in reversed(started):
            service.stop()


# --- the admin page ----------------------------------------------------------------------------


def test_admin_page_is_refused_to_other_roles(region):
    browser = sign_in(region.iam, region.client, region.clinician, region.portal.url)
    for path in ("/admin", f"/admin/patients/{region.nhs}", "/api/admin/patients",
                 f"/api/admin/patients/{region.nhs}"):
        answer = browser.get(f"{region.portal.url}{path}", timeout=30, allow_redirects=False)
        assert answer.status_code == 403, (path, answer.status_code)
        assert "integration role" in answer.text and "clinician" in answer.text
    assert requests.get(f"{region.portal.url}/api/admin/patients", timeout=30).status_code == 401


def test_admin_page_lists_patients_with_their_ids(region):
    browser = sign_in(region.iam, region.client, region.admin, region.portal.url)
    page = browser.get(f"{region.portal.url}/admin", params={"family": region.family[:8] + "*"}, timeout=30)
    assert page.status_code == 200, page.text[:2000]
    assert region.family in page.text
    assert f"{region.nhs}^^^&amp;{NHS_OID}&amp;ISO" in page.text
    assert f"{region.number}^^^&amp;{HOSPITAL_A_OID}&amp;ISO" in page.text
    assert f'href="/admin/patients/{region.nhs}"' in page.text
    assert "Hospital A" in page.text and "published 1" in page.text
    everyone = browser.get(f"{region.portal.url}/api/admin/patients", timeout=30).json()
    assert everyone["total"] >= 1 and len(everyone["patients"]) <= 20 and everyone["page"] == 1
    nobody = browser.get(f"{region.portal.url}/api/admin/patients", params={"family": "Nobody" + uuid.uuid4().hex},
                         timeout=30).json()
    assert nobody["patients"] == [] and nobody["total"] == 0


def test_admin_patient_page_and_its_json_twin(region):
    browser = sign_in(region.iam, region.client, region.admin, region.portal.url)
    data = browser.get(f"{region.portal.url}/api/admin/patients/{region.nhs}", timeout=30).json()
    ids = {(i["id"], i["authority_oid"]) for i in data["patient"]["identifiers"]}
    assert ids == {(region.nhs, NHS_OID), (region.number, HOSPITAL_A_OID)}
    (registry,) = data["registries"]
    assert registry["ok"], registry
    assert len(registry["submission_sets"]) == 2  # the report's and the study manifest's
    contents = sorted(d["mime_type"] for s in registry["submission_sets"] for d in s["documents"])
    assert contents == ["application/dicom", "application/pdf"]
    docs = {d["unique_id"]: d for d in registry["documents"]}
    assert docs[region.pdf_uid]["status"] == "Approved" and docs[region.pdf_uid]["version"]
    manifest = next(d for d in docs.values() if d["mime_type"] == "application/dicom")
    assert f"{region.study_uid}^^^^urn:ihe:iti:xds:2016:studyInstanceUID" in manifest["reference_ids"]
    (source,) = data["imaging_sources"]
    assert source["ok"] and [(s["study_uid"], s["state"], s["instances"]) for s in source["studies"]] == [
        (region.study_uid, "published", SLICES)]
    page = browser.get(f"{region.portal.url}/admin/patients/{region.nhs}", timeout=30)
    assert page.status_code == 200
    for text in (region.family, f"{region.number}^^^&amp;{HOSPITAL_A_OID}&amp;ISO", "CT head report", region.pdf_uid,
                 "Approved", region.study_uid, "published"):
        assert text in page.text, text
    assert browser.get(f"{region.portal.url}/api/admin/patients/not-a-number", timeout=30).status_code == 400


# --- xds-consumer ------------------------------------------------------------------------------


def consumer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "consumer.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_patients_finds_the_fed_patient_with_both_ids(region):
    done = consumer("patients", "--pix-address", f"127.0.0.1:{region.registry.mllp_port}", "--family", region.family,
                    "--birth-date", "1970-01-01")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "1 patient(s)"
    assert region.family in lines[1]
    assert f"{region.nhs}^^^&{NHS_OID}&ISO" in lines[1] and f"{region.number}^^^&{HOSPITAL_A_OID}&ISO" in lines[1]
    by_id = consumer("patients", "--pix-address", f"127.0.0.1:{region.registry.mllp_port}",
                     "--identifier", f"{region.number}^^^&{HOSPITAL_A_OID}&ISO")
    assert by_id.returncode == 0 and region.nhs in by_id.stdout, by_id.stderr


def _study_args(region, study_uid: str) -> list[str]:
    return [study_uid, "--registry", region.registry.url, "--pix-address", f"127.0.0.1:{region.registry.mllp_port}",
            "--patient-id", _cx(region.nhs, NHS_OID),
            "--repository", f"{region.repo.repository_unique_id}={region.repo.url}"]


def test_show_study_prints_links_that_work(region):
    done = consumer("show-study", *_study_args(region, region.study_uid), "--portal", region.portal.url)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert f"{region.portal.url}/viewer/viewer?StudyInstanceUIDs={region.study_uid}" in out
    wado_rs = [line.split("WADO-RS:", 1)[1].strip() for line in out.splitlines() if "WADO-RS:" in line]
    wado_uri = [line.split("WADO-URI:", 1)[1].strip() for line in out.splitlines() if "WADO-URI:" in line]
    assert len(wado_rs) == len(wado_uri) == SLICES
    answer = requests.get(wado_rs[0], headers={"Accept": 'multipart/related; type="application/dicom"'}, timeout=30)
    assert answer.status_code == 200, answer.text[:500]
    uid = wado_rs[0].rsplit("/", 1)[1]
    assert uid in region.sent and uid.encode() in answer.content
    boundary = answer.headers["Content-Type"].split("boundary=")[1].split(";")[0].strip('"')
    part = answer.content.split(f"--{boundary}".encode())[1].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    assert pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID == uid
    single = requests.get(wado_uri[0], timeout=30)
    assert single.status_code == 200 and pydicom.dcmread(io.BytesIO(single.content)).SOPInstanceUID in region.sent


def _dataset_bytes(data: bytes) -> bytes:
    """The data set after the File Meta Information group (which each writer fills in itself)."""
    fp = io.BytesIO(data)
    read_preamble(fp, False)
    _read_file_meta_info(fp)
    return data[fp.tell():]


def test_retrieve_images_writes_what_was_sent(region, tmp_path):
    out = tmp_path / "images"
    done = consumer("retrieve-images", *_study_args(region, region.study_uid), "--out", str(out))
    assert done.returncode == 0, done.stderr
    files = sorted(out.rglob("*.dcm"))
    assert {f.stem for f in files} == set(region.sent)
    for f in files:
        assert _dataset_bytes(f.read_bytes()) == _dataset_bytes(region.sent[f.stem])


@pytest.mark.parametrize("command", ["show-study", "retrieve-images"])
def test_an_unknown_study_is_one_line_and_exit_1(region, command, tmp_path):
    extra = ["--out", str(tmp_path / "x")] if command == "retrieve-images" else []
    done = consumer(command, *_study_args(region, generate_uid()), *extra)
    assert done.returncode == 1
    assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "no manifest of study" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


def test_an_unreachable_registry_is_one_line_and_exit_1(region):
    done = consumer("patients", "--pix-address", f"127.0.0.1:{free_port()}", "--family", "*", timeout=60)
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    missing = consumer("show-study", region.study_uid, "--registry", f"http://127.0.0.1:{free_port()}/registry",
                       "--pix-address", f"127.0.0.1:{region.registry.mllp_port}",
                       "--patient-id", _cx(region.nhs, NHS_OID))
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    assert "Traceback" not in missing.stderr


def test_the_manifest_repository_must_be_named(region):
    done = consumer("show-study", region.study_uid, "--registry", region.registry.url,
                    "--pix-address", f"127.0.0.1:{region.registry.mllp_port}", "--patient-id", _cx(region.nhs, NHS_OID))
    assert done.returncode == 1 and f"--repository {region.repo.repository_unique_id}=URL" in done.stderr


