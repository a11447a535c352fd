"""Permanent and transient publication failures, with real processes (registry, repository, imaging source).

A manifest the registry refuses for its metadata (here XDSUnknownPatientId) is not retried: the study is
listed as needing action by ``GET /status`` and ``xds-imaging-source status``, logged at ERROR once, and
published again after the operator fixed the cause and ran ``xds-imaging-source retry``, or by itself once
PIX maps the patient to another id (a merge). A busy or unreachable peer (XDSRegistryNotAvailable) is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
import urllib.request

import asyncpg
import pytest

from tests.conftest import ROOT, free_port, start_registry_process
from tests.imaging_source.conftest import start_imaging_source
from tests.imaging_source.test_xdsi_flow import (
    HOSPA_OID,
    NHS_OID,
    feed_patient,
    new_numbers,
    published_for,
    status_rows,
    storescu,
    study_copy,
    wait_for,
)
from tests.repository.conftest import start_repository_process

FAST = ("--quiet-period", "0.5", "--tracker-interval", "0.2", "--retry-initial", "0.3", "--retry-max", "0.6")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "imaging_source.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)


async def manifest_states(url: str, study_uid: str) -> list[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT state FROM imaging_manifest WHERE study_uid = $1 ORDER BY created_at",
                                study_uid)
    finally:
        await conn.close()
    return [r["state"] for r in rows]


@pytest.fixture
def peers(registry_database_url, tmp_path):
    with contextlib.ExitStack() as running:
        registry = start_registry_process(registry_database_url, "--affinity-domain-oid", NHS_OID)
        running.callback(registry.stop)
        repository = start_repository_process(registry_database_url, registry.url, tmp_path / "repository")
        running.callback(repository.stop)
        yield registry, repository


async def test_refused_manifest_needs_action_then_retry(peers, new_imaging_database, samples, tmp_path):
    registry, repository = peers
    database_url = await asyncio.to_thread(new_imaging_database)
    nhs, hospital_number = new_numbers()
    await feed_patient(registry.mllp_port, f"{nhs}^^^NHS&{NHS_OID}&ISO~{hospital_number}^^^HOSPA&{HOSPA_OID}&ISO")
    ds = study_copy(samples["CT"], tmp_path / "study", hospital_number, IssuerOfPatientID="HOSPA")
    # Misconfigured: no affinity domain, so the hospital number goes out as the XDS patient id.
    common = (database_url, tmp_path / "instances", "--repository-url", repository.url,
              "--patient-id-issuer-oid", HOSPA_OID, *FAST)
    source = start_imaging_source(*common)
    try:
        storescu(source.dicom_port, tmp_path / "study")
        [row] = await wait_for(lambda: [r for r in status_rows(source) if r["study_uid"] == ds.StudyInstanceUID
                                        and r["needs_action"]], what=lambda: f"needs action: {status_rows(source)}")
        assert row["state"] == "failed" and "XDSUnknownPatientId" in row["last_error"]
        await asyncio.sleep(2.5)  # several retry intervals: nothing is sent again
        assert await manifest_states(database_url, ds.StudyInstanceUID) == ["failed"]
        [row] = [r for r in status_rows(source) if r["study_uid"] == ds.StudyInstanceUID]
        assert row["needs_action"] and row["attempts"] == 0
        page = urllib.request.urlopen(f"{source.url}/status", timeout=10).read().decode()
        assert "NEEDS ACTION" in page and "XDSUnknownPatientId" in page and "retry" in page
        listed = cli("status", "--database-url", database_url)
        assert listed.returncode == 0, listed.stderr
        line = next(x for x in listed.stdout.splitlines() if x.startswith(ds.StudyInstanceUID))
        assert "NEEDS ACTION" in line and "XDSUnknownPatientId" in line
        assert "xds-imaging-source retry" in listed.stdout
    finally:
        source.stop()
    log = source.proc.stdout.read()
    errors = [x for x in log.splitlines() if " ERROR " in x and ds.StudyInstanceUID in x]
    assert len(errors) == 1 and "XDSUnknownPatientId" in errors[0], log

    # The operator fixes the configuration (the NHS number by PIX) and restarts: PIX now gives another
    # affinity-domain id than the one refused, so the study is published again without further ado.
    source = start_imaging_source(*common, "--affinity-domain-oid", NHS_OID, "--pix-port", str(registry.mllp_port))
    try:
        [entry] = await wait_for(lambda: published_for(registry, nhs, ds.StudyInstanceUID),
                                 what=lambda: f"publication after the fix: {status_rows(source)}")
        assert entry.source_patient_id.id == hospital_number
        await wait_for(lambda: not [r for r in status_rows(source) if r["study_uid"] == ds.StudyInstanceUID],
                       what=lambda: f"the study to leave the status list: {status_rows(source)}")
        assert await manifest_states(database_url, ds.StudyInstanceUID) == ["superseded", "published"]
    finally:
        source.stop()


async def test_refused_metadata_is_published_again_by_retry(registry_database_url, new_imaging_database, samples,
                                                            tmp_path, stops):
    registry = start_registry_process(registry_database_url, "--affinity-domain-oid", NHS_OID,
                                      "--code-list", str(ROOT / "docs/examples/codes.toml"))
    stops.append(registry)
    repository = start_repository_process(registry_database_url, registry.url, tmp_path / "repository")
    stops.append(repository)
    database_url = await asyncio.to_thread(new_imaging_database)
    nhs, hospital_number = new_numbers()
    await feed_patient(registry.mllp_port, f"{nhs}^^^NHS&{NHS_OID}&ISO~{hospital_number}^^^HOSPA&{HOSPA_OID}&ISO")
    common = (database_url, tmp_path / "instances", "--repository-url", repository.url, "--patient-id-issuer-oid",
              HOSPA_OID, "--affinity-domain-oid", NHS_OID, "--pix-port", str(registry.mllp_port), *FAST)
    # A practice setting the affinity domain does not list: XDSRegistryMetadataError.
    source = start_imaging_source(*common, "--practice-setting-code", "408455009|2.16.840.1.113883.6.96|Intervention")
    try:
        ds = study_copy(samples["CT"], tmp_path / "study", hospital_number, IssuerOfPatientID="HOSPA")
        storescu(source.dicom_port, tmp_path / "study")
        [row] = await wait_for(lambda: [r for r in status_rows(source) if r["study_uid"] == ds.StudyInstanceUID
                                        and r["needs_action"]], what=lambda: f"needs action: {status_rows(source)}")
        assert "XDSRegistryMetadataError" in row["last_error"] and "408455009" in row["last_error"]
        await asyncio.sleep(2)  # the PIX re-check finds the same patient: still refused, not retried
        assert await manifest_states(database_url, ds.StudyInstanceUID) == ["failed"]
    finally:
        source.stop()
    source = start_imaging_source(*common)  # the operator corrects the code and restarts ...
    try:
        await asyncio.sleep(1.5)
        assert await manifest_states(database_url, ds.StudyInstanceUID) == ["failed"]  # ... nothing by itself
        unknown = cli("retry", "1.2.3.999", "--database-url", database_url)
        assert unknown.returncode == 1 and "nothing to retry" in unknown.stderr
        retried = cli("retry", ds.StudyInstanceUID, "--database-url", database_url)  # ... and asks for a retry
        assert retried.returncode == 0, retried.stderr
        [entry] = await wait_for(lambda: published_for(registry, nhs, ds.StudyInstanceUID),
                                 what=lambda: f"publication after retry: {status_rows(source)}")
        assert entry.practice_setting_code.code == "394914008"
        await wait_for(lambda: not [r for r in status_rows(source) if r["study_uid"] == ds.StudyInstanceUID],
                       what=lambda: f"the study to leave the status list: {status_rows(source)}")
        assert await manifest_states(database_url, ds.StudyInstanceUID) == ["superseded", "published"]
        again = cli("retry", ds.StudyInstanceUID, "--database-url", database_url)
        assert again.returncode == 1  # published: nothing to retry
    finally:
        source.stop()
        repository.stop()
        registry.stop()


async def test_unavailable_registry_is_retried_not_refused(new_imaging_database, registry_database_url, samples,
                                                          tmp_path, stops):
    # The repository is up, its registry is not: XDSRegistryNotAvailable is transient.
    repository = start_repository_process(registry_database_url, f"http://127.0.0.1:{free_port()}/registry",
                                          tmp_path / "repository")
    stops.append(repository)
    database_url = await asyncio.to_thread(new_imaging_database)
    source = start_imaging_source(database_url, tmp_path / "instances", "--repository-url", repository.url, *FAST)
    try:
        _nhs, hospital_number = new_numbers()
        ds = study_copy(samples["CT"], tmp_path / "study", hospital_number)
        storescu(source.dicom_port, tmp_path / "study")
        [row] = await wait_for(lambda: [r for r in status_rows(source) if r["study_uid"] == ds.StudyInstanceUID
                                        and (r["attempts"] or 0) >= 3], what="three attempts")
        assert not row["needs_action"] and row["state"] == "publishing"
        assert "XDSRegistryNotAvailable" in row["last_error"]
        assert await manifest_states(database_url, ds.StudyInstanceUID) == ["pending"]
    finally:
        source.stop()
        repository.stop()


async def test_patient_merge_heals_a_refused_replacement(peers, new_imaging_database, samples, tmp_path):
    """Published under NHS X; the registry merges X into Y; new instances: the replacement still names X and
    is refused (the entry it replaces is Y's now); PIX maps the hospital number to Y: published again."""
    registry, repository = peers
    database_url = await asyncio.to_thread(new_imaging_database)
    old_nhs, hospital_number = new_numbers()
    new_nhs, _ = new_numbers()
    await feed_patient(registry.mllp_port, f"{old_nhs}^^^NHS&{NHS_OID}&ISO~{hospital_number}^^^HOSPA&{HOSPA_OID}&ISO")
    await feed_patient(registry.mllp_port, f"{new_nhs}^^^NHS&{NHS_OID}&ISO")
    source = start_imaging_source(database_url, tmp_path / "instances", "--repository-url", repository.url,
                                  "--patient-id-issuer-oid", HOSPA_OID, "--affinity-domain-oid", NHS_OID,
                                  "--pix-port", str(registry.mllp_port), *FAST)
    try:
        ds = study_copy(samples["CT"], tmp_path / "first", hospital_number, IssuerOfPatientID="HOSPA")
        storescu(source.dicom_port, tmp_path / "first")
        await wait_for(lambda: published_for(registry, old_nhs, ds.StudyInstanceUID), what="first publication")
        await feed_patient(registry.mllp_port, f"{new_nhs}^^^NHS&{NHS_OID}&ISO~{hospital_number}^^^HOSPA&{HOSPA_OID}"
                           f"&ISO", event="A40", mrg=f"{old_nhs}^^^NHS&{NHS_OID}&ISO")
        extra = study_copy(samples["CT"], tmp_path / "second", hospital_number, IssuerOfPatientID="HOSPA",
                           StudyInstanceUID=ds.StudyInstanceUID, SeriesInstanceUID=ds.SeriesInstanceUID)
        assert extra.StudyInstanceUID == ds.StudyInstanceUID
        storescu(source.dicom_port, tmp_path / "second")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            states = await manifest_states(database_url, ds.StudyInstanceUID)
            entries = await published_for(registry, new_nhs, ds.StudyInstanceUID)  # after: registered by then
            if states[-1:] == ["published"] and len(states) >= 3:
                break
            await asyncio.sleep(0.2)
        # first manifest (replaced); the replacement naming X, refused and superseded; the one naming Y
        assert states == ["replaced", "superseded", "published"], states
        [entry] = entries
        assert entry.patient_id.id == new_nhs
    finally:
        source.stop()
