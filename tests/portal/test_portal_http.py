"""The portal over HTTP, as a browser and an EPR see it, against real processes: a registry, two
hospitals' repositories, an imaging source publishing a CT study, a third repository that is
stopped, a registry that never answers, and a real OpenID Connect provider (canaille, pytest-iam).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from dataclasses import dataclass

import asyncpg
import pydicom
import pytest
import requests

from consumer.client.query import find_documents
from consumer.client.soap import SoapClient
from consumer.client.source import document_entry, provide_and_register, submission_package
from consumer.portal import manifests
from consumer.portal.sessions import token_hash
from ihe.metadata.model import Identifiable, ReferenceId
from tests.conftest import RunningService, free_port, start_registry_process
from tests.imaging_source.conftest import sample_path, send_with_pynetdicom, start_imaging_source
from tests.messages import register_request
from tests.portal.conftest import (
    CLIENT_ID,
    CLIENT_SECRET,
    new_user,
    provider_round_trip,
    register_client,
    sign_in,
    start_portal_process,
    valid_nhs_number,
)
from tests.repository.conftest import start_repository_process

NHS_OID = "2.16.840.1.113883.2.1.4.1"
HOSPITAL_A_OID = "1.2.826.0.1.99"  # the test imaging source's --patient-id-issuer-oid
HOSPITAL_B_OID = "1.2.826.0.1.97"
HOSPITAL_C_OID = "1.2.826.0.1.96"
PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n"
       b"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 200 200]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
TEXT = "Discharge letter\nNo acute findings. <b>not markup</b> & nothing else.\n"
CDA = b"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3">
  <title>Clinic letter</title>
  <effectiveTime value="20220505101010"/>
  <recordTarget><patientRole><patient><name><given>Test</given><family>Portal</family></name></patient></patientRole>
  </recordTarget>
  <component><structuredBody>
    <component><section><title>Findings</title>
      <text><paragraph>Normal <content>heart</content> size.</paragraph><list><item>one</item><item>two</item></list>
      <paragraph>&lt;script&gt;alert(1)&lt;/script&gt;</paragraph><script>alert(2)</script></text>
    </section></component>
  </structuredBody></component>
</ClinicalDocument>
"""
SILENT = "Silent registry"
HOSPITAL_D_REPOSITORY = "1.2.826.0.1.95.1"


@dataclass
class Region:
    registry: RunningService
    repo_a: RunningService
    repo_b: RunningService
    repo_c: RunningService
    source: RunningService
    portal: RunningService
    database_url: str
    nhs: str
    numbers: dict[str, str]
    study_uid: str
    docs: dict[str, str]  # name -> document uniqueId
    client: object
    user: object
    iam: object
    family: str


def _cx(value: str, oid: str) -> str:
    return f"{value}^^^&{oid}&ISO"


async def _record_patient(url: str, identifiers: list[Identifiable], family: str) -> None:
    from registry.patients import Demographics, record_patient

    conn = await asyncpg.connect(url)
    try:
        await record_patient(conn, identifiers, Demographics(family=family, given="Test", birth_date="19700101"))
    finally:
        await conn.close()


async def _submit(repository: RunningService, nhs: str, source_patient: str, content: bytes, mime: str, title: str,
                  created: str, refs: list[str] = ()) -> str:
    entry = document_entry(_cx(nhs, NHS_OID), mime, title=title, creation_time=created,
                           source_patient_id=source_patient)
    entry.reference_ids = [ReferenceId(r) for r in refs]
    package = submission_package(_cx(nhs, NHS_OID), [entry], source_id="1.3.6.1.4.1.21367.2026.9.1")
    async with SoapClient(timeout=60) as client:
        result = await provide_and_register(client, repository.url, package, {entry.entry_uuid: content})
    assert result.status.endswith(":Success"), result.errors
    return entry.unique_id


async def _wait_for_manifest(registry_url: str, nhs: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    async with SoapClient(timeout=30) as client:
        while time.monotonic() < deadline:
            entries = await find_documents(client, registry_url, _cx(nhs, NHS_OID))
            if any(e.mime_type == "application/dicom" for e in entries):
                return
            await asyncio.sleep(0.5)
    raise AssertionError("the imaging source did not publish the study's manifest in time")


@pytest.fixture(scope="module")
def region(registry_database_url, new_imaging_database, iam_server, tmp_path_factory) -> Region:
    tmp = tmp_path_factory.mktemp("portal")
    started: list[RunningService] = []
    silent = socket.socket()  # a "registry" that accepts connections and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    try:
        registry = start_registry_process(registry_database_url)
        started.append(registry)
        repos = []
        for name in ("a", "b", "c"):
            repos.append(start_repository_process(registry_database_url, registry.url, tmp / f"repo_{name}"))
            started.append(repos[-1])
        repo_a, repo_b, repo_c = repos
        source = start_imaging_source(
            new_imaging_database(), tmp / "instances", "--repository-url", repo_a.url,
            "--pix-port", str(registry.mllp_port), "--affinity-domain-oid", NHS_OID, "--quiet-period", "1",
            "--tracker-interval", "0.2", "--retry-initial", "0.5", "--retry-max", "1")
        started.append(source)

        nhs = valid_nhs_number()
        family = f"Portal{uuid.uuid4().hex[:6]}"
        numbers = {"A": f"A{uuid.uuid4().hex[:8]}", "B": f"B{uuid.uuid4().hex[:8]}", "C": f"C{uuid.uuid4().hex[:8]}"}
        asyncio.run(_record_patient(registry_database_url, [
            Identifiable(nhs, NHS_OID), Identifiable(numbers["A"], HOSPITAL_A_OID),
            Identifiable(numbers["B"], HOSPITAL_B_OID), Identifiable(numbers["C"], HOSPITAL_C_OID)], family))

        ct = pydicom.dcmread(sample_path("CT_small.dcm"))
        ct.PatientID = numbers["A"]
        ct.StudyInstanceUID = pydicom.uid.generate_uid()
        ct.SeriesInstanceUID = pydicom.uid.generate_uid()
        ct.SOPInstanceUID = pydicom.uid.generate_uid()
        ct.file_meta.MediaStorageSOPInstanceUID = ct.SOPInstanceUID
        ct_path = tmp / "ct.dcm"
        ct.save_as(ct_path, enforce_file_format=True)
        assert send_with_pynetdicom(source.dicom_port, [ct_path]) == [0]
        study_ref = f"{ct.StudyInstanceUID}^^^^urn:ihe:iti:xds:2016:studyInstanceUID"
        docs = {
            "pdf": asyncio.run(_submit(repo_a, nhs, _cx(numbers["A"], HOSPITAL_A_OID), PDF, "application/pdf",
                                       "CT chest report", "20240301120000", [study_ref])),
            "text": asyncio.run(_submit(repo_b, nhs, _cx(numbers["B"], HOSPITAL_B_OID), TEXT.encode(), "text/plain",
                                        "Discharge letter", "20230101090000")),
            "cda": asyncio.run(_submit(repo_b, nhs, _cx(numbers["B"], HOSPITAL_B_OID), CDA, "text/xml",
                                       "Clinic letter", "20220505101010")),
            "c": asyncio.run(_submit(repo_c, nhs, _cx(numbers["C"], HOSPITAL_C_OID), b"from C", "text/plain",
                                     "Letter from C", "20210101000000")),
        }
        # Hospital D's repository accepts connections and never answers: its row must be marked, in time.
        envelope, built = register_request(_cx(nhs, NHS_OID), repository_unique_id=HOSPITAL_D_REPOSITORY,
                                           title="Letter from D", mime_type="text/plain", event_codes=())
        registered = requests.post(registry.url, data=envelope, timeout=30, headers={
            "Content-Type": 'application/soap+xml; charset=UTF-8; action="urn:ihe:iti:2007:RegisterDocumentSet-b"'})
        assert "ResponseStatusType:Success" in registered.text, registered.text[:2000]
        docs["d"] = built.document_unique_id
        asyncio.run(_wait_for_manifest(registry.url, nhs))

        port = free_port()
        client = register_client(iam_server, f"http://127.0.0.1:{port}/auth/callback")
        user = new_user(iam_server, "Dr Ada Lovelace", ["role-clinician", "org-Hospital A"])
        hospitals = ";".join([
            f"Hospital A|{repo_a.repository_unique_id}|{repo_a.url}|{HOSPITAL_A_OID}",
            f"Hospital B|{repo_b.repository_unique_id}|{repo_b.url}|{HOSPITAL_B_OID}",
            f"Hospital C|{repo_c.repository_unique_id}|{repo_c.url}|{HOSPITAL_C_OID}",
            f"Hospital D|{HOSPITAL_D_REPOSITORY}|http://127.0.0.1:{silent.getsockname()[1]}/repository"])
        portal = start_portal_process(
            registry_database_url, port, tmp / "portal.log",
            "--registries", f"Region|{registry.url};{SILENT}|http://127.0.0.1:{silent.getsockname()[1]}/registry",
            "--hospitals", hospitals, "--registry-mllp", f"127.0.0.1:{registry.mllp_port}",
            "--oidc-issuer", iam_server.url, "--oidc-client-id", CLIENT_ID,
            "--oidc-client-secret", CLIENT_SECRET, "--oidc-role-claim", "groups:role-",
            "--oidc-organisation-claim", "groups:org-", "--query-deadline", "2")
        started.append(portal)
        yield Region(registry, repo_a, repo_b, repo_c, source, portal, registry_database_url, nhs, numbers,
                     str(ct.StudyInstanceUID), docs, client, user, iam_server, family)
    finally:
        for service in reversed(started):
            service.stop()
        silent.close()


@pytest.fixture
def browser(region) -> requests.Session:
    return sign_in(region.iam, region.client, region.user, region.portal.url)


def _csrf(browser: requests.Session, url: str) -> str:
    page = browser.get(url, timeout=30)
    marker = 'name="csrf_token" value="'
    start = page.text.index(marker) + len(marker)
    return page.text[start:page.text.index('"', start)]


def _sessions(url: str, sql: str, *args):
    async def run():
        conn = await asyncpg.connect(url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


# --- the front page and signing in -----------------------------------------------------------------


def test_front_page_is_a_sign_in_page_with_strict_headers(region):
    page = requests.get(f"{region.portal.url}/", timeout=30)
    assert page.status_code == 200 and 'href="/login"' in page.text
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    style = requests.get(f"{region.portal.url}/static/portal.css", timeout=30)
    assert style.status_code == 200 and style.headers["Content-Type"].startswith("text/css")
    assert style.headers["Content-Security-Policy"] == csp and "no-store" not in style.headers.get("Cache-Control", "")
    assert page.headers["Cache-Control"] == "no-store"


def test_sign_in_at_the_provider_gives_a_server_side_session(region, browser):
    assert browser.landing == "/"
    cookie = browser.set_cookie_header
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http in the test; https public URLs get Secure
    page = browser.get(f"{region.portal.url}/", timeout=30)
    assert "Dr Ada Lovelace" in page.text and "clinician" in page.text and "Hospital A" in page.text
    assert "Find a patient" in page.text
    token = browser.cookies["xds_portal_session"]
    rows = _sessions(region.database_url, "SELECT token_hash, role, organisation FROM portal_session "
                     "WHERE token_hash = $1", token_hash(token))
    assert [(r["role"], r["organisation"]) for r in rows] == [("clinician", "Hospital A")]
    assert not _sessions(region.database_url, "SELECT 1 FROM portal_session WHERE token_hash = $1", token.encode())


def test_sign_in_returns_to_the_page_asked_for(region):
    browser = sign_in(region.iam, region.client, region.user, region.portal.url, f"/patients/{region.nhs}")
    assert browser.landing == f"/patients/{region.nhs}"
    other = sign_in(region.iam, region.client, region.user, region.portal.url, "//evil.example/")
    assert other.landing == "/"


def test_an_id_token_for_another_client_is_refused(region):
    iam = region.iam
    with iam.app.app_context():
        other = iam.models.Client(client_id="someone-else", client_secret="x", client_name="other",
                                  redirect_uris=["http://127.0.0.1:1/cb"], grant_types=["authorization_code"],
                                  response_types=["code"], token_endpoint_auth_method="client_secret_basic",
                                  scope=["openid"])
        iam.backend.save(other)
        region.client.audience = [other]
        iam.backend.save(region.client)
    try:
        browser, answer = provider_round_trip(iam, region.client, region.user, region.portal.url)
    finally:
        with iam.app.app_context():
            region.client.audience = [region.client]
            iam.backend.save(region.client)
    assert answer.status_code == 403 and "ID token is not valid" in answer.text
    assert "xds_portal_session" not in browser.cookies


def test_callback_without_the_browsers_login_state_is_refused(region):
    answer = requests.get(f"{region.portal.url}/auth/callback", params={"state": "x", "code": "y"}, timeout=30)
    assert answer.status_code == 400 and "xds_portal_session" not in answer.cookies


def test_nothing_without_a_session(region):
    url = region.portal.url
    page = requests.get(f"{url}/patients/{region.nhs}", allow_redirects=False, timeout=30)
    assert page.status_code == 302 and page.headers["Location"] == f"/login?next=/patients/{region.nhs}"
    assert requests.get(f"{url}/api/patients/{region.nhs}/documents", timeout=30).status_code == 401
    doc = requests.get(f"{url}/documents/{region.repo_a.repository_unique_id}/{region.docs['pdf']}",
                       allow_redirects=False, timeout=30)
    assert doc.status_code == 302
    forged = requests.get(f"{url}/api/patients/{region.nhs}/documents", cookies={"xds_portal_session": "forged"},
                          timeout=30)
    assert forged.status_code == 401
    search = requests.post(f"{url}/search", data={"by": "nhs", "nhs_number": region.nhs}, allow_redirects=False,
                           timeout=30)
    assert search.status_code == 302 and search.headers["Location"] == "/login?next=/"


def test_forms_without_the_csrf_token_are_refused(region, browser):
    url = region.portal.url
    for data in ({"by": "nhs", "nhs_number": region.nhs}, {"by": "nhs", "nhs_number": region.nhs, "csrf_token": "no"}):
        answer = browser.post(f"{url}/search", data=data, allow_redirects=False, timeout=30)
        assert answer.status_code == 403 and "CSRF" in answer.text
    assert browser.post(f"{url}/logout", allow_redirects=False, timeout=30).status_code == 403
    assert browser.get(f"{url}/api/patients/{region.nhs}/documents", timeout=30).status_code == 200  # still signed in
    token = _csrf(browser, f"{url}/")
    answer = browser.post(f"{url}/search", data={"by": "nhs", "nhs_number": region.nhs, "csrf_token": token},
                          allow_redirects=False, timeout=30)
    assert answer.status_code == 303


def test_sign_out_ends_the_session(region, browser):
    url = region.portal.url
    token = _csrf(browser, f"{url}/")
    cookie = browser.cookies["xds_portal_session"]
    answer = browser.post(f"{url}/logout", data={"csrf_token": token}, allow_redirects=False, timeout=30)
    assert answer.status_code == 302
    assert requests.get(f"{url}/api/patients/{region.nhs}/documents", cookies={"xds_portal_session": cookie},
                        timeout=30).status_code == 401
    assert not _sessions(region.database_url, "SELECT 1 FROM portal_session WHERE token_hash = $1", token_hash(cookie))


@pytest.mark.parametrize("column, seconds", [("last_seen_at", 1800 + 5), ("created_at", 43200 + 5)])
def test_sessions_expire_when_idle_and_after_their_lifetime(region, browser, column, seconds):
    url = region.portal.url
    cookie = browser.cookies["xds_portal_session"]
    assert browser.get(f"{url}/api/patients/{region.nhs}/documents", timeout=30).status_code == 200
    # Idle: last request longer ago than --session-idle. Lifetime: signed in longer ago than --session-lifetime
    # (the idle clock is fresh then, as the request above just moved it).
    _sessions(region.database_url, f"UPDATE portal_session SET {column} = now() - make_interval(secs => $2) "
              "WHERE token_hash = $1", token_hash(cookie), float(seconds))
    answer = browser.get(f"{url}/api/patients/{region.nhs}/documents", timeout=30)
    assert answer.status_code == 401
    assert "xds_portal_session=" in answer.headers.get("Set-Cookie", "")  # the browser is told to forget it
    assert not _sessions(region.database_url, "SELECT 1 FROM portal_session WHERE token_hash = $1", token_hash(cookie))
    page = requests.get(f"{url}/", cookies={"xds_portal_session": cookie}, timeout=30)
    assert 'href="/login"' in page.text


# --- search ------------------------------------------------------------------------------------------


def _search(browser: requests.Session, url: str, **data) -> requests.Response:
    data["csrf_token"] = _csrf(browser, f"{url}/")
    return browser.post(f"{url}/search", data=data, allow_redirects=False, timeout=30)


def test_search_by_nhs_number(region, browser):
    spaced = f"{region.nhs[:3]} {region.nhs[3:6]} {region.nhs[6:]}"
    answer = _search(browser, region.portal.url, by="nhs", nhs_number=spaced)
    assert answer.status_code == 303 and answer.headers["Location"] == f"/patients/{region.nhs}"
    wrong = region.nhs[:9] + str((int(region.nhs[9]) + 1) % 10)
    refused = _search(browser, region.portal.url, by="nhs", nhs_number=wrong)
    assert refused.status_code == 422 and "not a valid NHS number" in refused.text


def test_search_by_hospital_number_goes_through_pix(region, browser):
    for hospital, key in (("Hospital B", "B"), ("Hospital A", "A")):
        answer = _search(browser, region.portal.url, by="hospital", hospital=hospital,
                         hospital_number=region.numbers[key])
        assert answer.status_code == 303 and answer.headers["Location"] == f"/patients/{region.nhs}"
    # B's number is not A's: the registry knows no such patient at Hospital A.
    unknown = _search(browser, region.portal.url, by="hospital", hospital="Hospital A",
                      hospital_number=region.numbers["B"])
    assert unknown.status_code == 422 and "no patient with number" in unknown.text


def test_search_by_family_name_and_birth_date_goes_through_pdq(region, browser):
    answer = _search(browser, region.portal.url, by="name", family=region.family, birth_date="1970-01-01")
    assert answer.status_code == 303 and answer.headers["Location"] == f"/patients/{region.nhs}", answer.text
    nobody = _search(browser, region.portal.url, by="name", family=f"Nobody{uuid.uuid4().hex[:6]}",
                     birth_date="1970-01-01")
    assert nobody.status_code == 422 and "no patient called" in nobody.text


# --- the list ----------------------------------------------------------------------------------------


def test_the_list_has_every_hospitals_rows_newest_first(region, browser):
    started = time.monotonic()
    answer = browser.get(f"{region.portal.url}/api/patients/{region.nhs}/documents", timeout=30)
    elapsed = time.monotonic() - started
    assert answer.status_code == 200
    body = answer.json()
    rows = body["rows"]
    by_doc = {r["document_unique_id"]: r for r in rows}
    assert {by_doc[region.docs[k]]["hospital"] for k in ("pdf",)} == {"Hospital A"}
    assert by_doc[region.docs["text"]]["hospital"] == by_doc[region.docs["cda"]]["hospital"] == "Hospital B"
    dates = [r["date"] for r in rows]
    assert dates == sorted(dates, reverse=True) and len(rows) == 6
    [imaging] = [r for r in rows if r["kind"] == "imaging"]
    assert imaging["hospital"] == "Hospital A" and imaging["study_uid"] == region.study_uid
    assert (imaging["series_count"], imaging["image_count"]) == (1, 1)
    assert imaging["modality"] == "CT" and imaging["report_present"] is True
    assert imaging["status"] == "available"
    pdf = by_doc[region.docs["pdf"]]
    assert pdf["date"] == "2024-03-01 12:00" and pdf["description"] == "CT chest report"
    assert pdf["status"] == "available" and pdf["mime_type"] == "application/pdf"
    # The silent registry is marked and cost no more than the deadline (2 s).
    silent = [s for s in body["sources"] if s["name"] == SILENT]
    assert silent and not silent[0]["ok"] and "no answer within 2 s" in silent[0]["reason"]
    # So is the silent repository's row, and only its row.
    assert by_doc[region.docs["d"]]["status"] == "source unreachable"
    assert "Hospital D: no answer within 2 s" in by_doc[region.docs["d"]]["status_reason"]
    assert elapsed < 10
    # The manifest was read once and kept; the proxy's locate() finds the imaging source's DICOMweb root.
    locate = asyncio.run(_locate(region.database_url, region.study_uid))
    assert locate == f"{region.source.url}/dicomweb"
    assert asyncio.run(_locate(region.database_url, "1.2.3.4.5.404")) is None

    page = browser.get(f"{region.portal.url}/patients/{region.nhs}", timeout=30)
    assert page.status_code == 200
    for text in ("Hospital A", "Hospital B", "CT chest report", "Discharge letter", SILENT, "could not be reached"):
        assert text in page.text
    assert f"StudyInstanceUIDs={region.study_uid}" in page.text


async def _locate(url: str, study_uid: str) -> str | None:
    pool = await asyncpg.create_pool(url, min_size=1, max_size=1)
    try:
        return await manifests.locate(pool, study_uid)
    finally:
        await pool.close()


def test_an_epr_reads_the_json_twin_with_an_access_token_of_the_provider(region):
    with region.iam.app.app_context():
        token = region.iam.random_token(region.user, region.client)
    api = f"{region.portal.url}/api/patients/{region.nhs}/documents"
    answer = requests.get(api, headers={"Authorization": f"Bearer {token.access_token}"}, timeout=30)
    assert answer.status_code == 200
    assert region.docs["text"] in {r["document_unique_id"] for r in answer.json()["rows"]}
    refused = requests.get(api, headers={"Authorization": "Bearer not-a-token"}, timeout=30)
    assert refused.status_code == 401 and "invalid_token" in refused.headers["WWW-Authenticate"]
    # Only the JSON twin, and only to read: pages and forms still need a signed-in browser.
    page = requests.get(f"{region.portal.url}/patients/{region.nhs}", allow_redirects=False,
                        headers={"Authorization": f"Bearer {token.access_token}"}, timeout=30)
    assert page.status_code == 302


def test_filters_apply_to_the_page_and_its_json_twin(region, browser):
    api = f"{region.portal.url}/api/patients/{region.nhs}/documents"
    only_b = browser.get(api, params={"hospital": "Hospital B"}, timeout=30).json()["rows"]
    assert {r["document_unique_id"] for r in only_b} == {region.docs["text"], region.docs["cda"]}
    ct = browser.get(api, params={"modality": "CT"}, timeout=30).json()["rows"]
    assert [r["kind"] for r in ct] == ["imaging"]
    dated = browser.get(api, params={"from": "2022-01-01", "to": "2023-12-31"}, timeout=30).json()["rows"]
    assert {r["document_unique_id"] for r in dated} == {region.docs["text"], region.docs["cda"]}
    assert browser.get(api, params={"from": "yesterday"}, timeout=30).status_code == 400
    page = browser.get(f"{region.portal.url}/patients/{region.nhs}", params={"hospital": "Hospital B"}, timeout=30)
    assert "Discharge letter" in page.text and "CT chest report" not in page.text


def test_a_stopped_repository_marks_its_rows_and_never_fails_the_page(region, browser):
    region.repo_c.stop()
    answer = browser.get(f"{region.portal.url}/api/patients/{region.nhs}/documents", timeout=30)
    assert answer.status_code == 200
    rows = {r["document_unique_id"]: r for r in answer.json()["rows"]}
    assert rows[region.docs["c"]]["status"] == "source unreachable"
    assert "Hospital C" in rows[region.docs["c"]]["status_reason"]
    assert {rows[region.docs[k]]["status"] for k in ("pdf", "text", "cda")} == {"available"}
    sources = {s["name"]: s for s in answer.json()["sources"]}
    assert sources["Hospital C"]["ok"] is False and sources["Hospital A"]["ok"] is True
    page = browser.get(f"{region.portal.url}/patients/{region.nhs}", timeout=30)
    assert page.status_code == 200 and "source unreachable" in page.text and "Letter from C" in page.text


# --- reports -----------------------------------------------------------------------------------------


def test_pdf_report_is_shown_inline(region, browser):
    answer = browser.get(f"{region.portal.url}/documents/{region.repo_a.repository_unique_id}/{region.docs['pdf']}",
                         timeout=30)
    assert answer.status_code == 200 and answer.content == PDF
    assert answer.headers["Content-Type"] == "application/pdf"
    assert answer.headers["Content-Disposition"].startswith("inline")


def test_text_report_is_shown_as_text(region, browser):
    answer = browser.get(f"{region.portal.url}/documents/{region.repo_b.repository_unique_id}/{region.docs['text']}",
                         timeout=30)
    assert answer.status_code == 200 and answer.text == TEXT
    assert answer.headers["Content-Type"].startswith("text/plain")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_cda_report_is_its_narrative_escaped(region, browser):
    answer = browser.get(f"{region.portal.url}/documents/{region.repo_b.repository_unique_id}/{region.docs['cda']}",
                         timeout=30)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("text/html")
    assert "<h1>Clinic letter</h1>" in answer.text and "<h2>Findings</h2>" in answer.text
    assert "<p>Normal <span>heart</span> size.</p>" in answer.text and "<li>two</li>" in answer.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in answer.text
    assert "<script" not in answer.text


def test_unknown_repository_and_document_are_answered_plainly(region, browser):
    url = region.portal.url
    assert browser.get(f"{url}/documents/1.2.3.999/1.2.3", timeout=30).status_code == 404
    missing = browser.get(f"{url}/documents/{region.repo_a.repository_unique_id}/1.2.3.404", timeout=30)
    assert missing.status_code == 404 and "did not return the document" in missing.text


# --- manifests read several per ITI-43 request (manifests.fetch_many) ---------------------------------------


@pytest.fixture(scope="module")
def manifest_uid(region) -> str:
    async def find() -> str:
        async with SoapClient(timeout=30) as client:
            entries = await find_documents(client, region.registry.url, _cx(region.nhs, NHS_OID))
        [kos] = [e for e in entries if e.mime_type == "application/dicom"]
        return kos.unique_id

    return asyncio.run(find())


def test_several_manifests_in_one_request_each_read_or_refused(region, manifest_uid):
    repo = region.repo_a
    missing = "1.2.826.0.1.3680043.10.404.1"

    async def run():
        async with SoapClient(timeout=30) as client:
            return await manifests.fetch_many(client, repo.url, repo.repository_unique_id,
                                              [manifest_uid, missing, manifest_uid + ".9"])

    found = asyncio.run(run())
    assert set(found) == {manifest_uid, missing, manifest_uid + ".9"}
    info = found[manifest_uid]
    assert isinstance(info, manifests.ManifestInfo), info
    assert (info.study_uid, info.series_count, info.image_count) == (region.study_uid, 1, 1)
    assert manifests.dicomweb_root(info.retrieve_url) == f"{region.source.url}/dicomweb"
    for uid in (missing, manifest_uid + ".9"):
        assert isinstance(found[uid], manifests.ManifestError)
        assert "did not return the manifest" in str(found[uid])


def test_one_manifest_alone_is_read_the_same(region, manifest_uid):
    async def run():
        async with SoapClient(timeout=30) as client:
            one = await manifests.fetch(client, region.repo_a.url, region.repo_a.repository_unique_id, manifest_uid)
            with pytest.raises(manifests.ManifestError):
                await manifests.fetch(client, region.repo_a.url, region.repo_a.repository_unique_id, "1.2.3.404")
            return one

    assert asyncio.run(run()).study_uid == region.study_uid
