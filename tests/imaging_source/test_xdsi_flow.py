"""The README's XDS-I.b walk-through with real processes: a registry (ITI-8 over MLLP, PIX, ITI-18), the
hospital's repository and its imaging source. The patient is fed by ADT with the NHS number and the HOSPA
hospital number; images carrying Issuer of Patient ID ``HOSPA`` arrive by dcmtk's storescu; the manifest
is registered and FindDocuments for the NHS number lists it, with sourcePatientId in the XDS form."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pydicom
import pytest
from hl7.mllp import open_hl7_connection

from consumer.client.query import find_documents
from consumer.client.soap import SoapClient
from ihe.hl7 import parse_message
from ihe.metadata.model import Identifiable
from tests.conftest import start_registry_process
from tests.imaging_source.conftest import require_tool, start_imaging_source
from tests.messages import valid_nhs_number
from tests.repository.conftest import start_repository_process

NHS_OID = "2.16.840.1.113883.2.1.4.1"
HOSPA_OID = "1.3.6.1.4.1.21367.2026.1.2"


def status_rows(source) -> list[dict]:
    with urllib.request.urlopen(f"{source.url}/status?format=json", timeout=10) as response:
        return json.loads(response.read())


async def wait_for(predicate, timeout: float = 40.0, what="condition"):
    """Poll ``predicate`` (plain or async) until it gives something true."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what() if callable(what) else what}")


async def feed_patient(mllp_port: int, pid3: str, name: str = "Smith^Jane", *, event: str = "A01",
                       mrg: str | None = None, facility: str = "HOSPA", patient_class: str = "O") -> None:
    """ITI-8: an ADT (A01, or A40 merging ``mrg``) over MLLP as the PAS of ``facility`` (MSH-4) sends it; must be
    accepted."""
    structure = "ADT_A39" if event == "A40" else "ADT_A01"
    message = "\r".join([
        f"MSH|^~\\&|PAS|{facility}|XDS-REG|NETWORK|20260105120000||ADT^{event}^{structure}|{uuid.uuid4().hex[:20]}"
        "|P|2.5",
        f"EVN|{event}|20260105120000",
        f"PID|||{pid3}||{name}||19800102|F",
        f"MRG|{mrg}" if mrg else f"PV1||{patient_class}",
    ]) + "\r"
    reader, writer = await open_hl7_connection("127.0.0.1", mllp_port)
    try:
        writer.writemessage(message)
        await writer.drain()
        ack = parse_message(str(await asyncio.wait_for(reader.readmessage(), 10)))
    finally:
        writer.close()
    assert str(ack.segment("MSA")[1]) == "AA", str(ack)


def study_copy(sample: Path, folder: Path, patient_id: str, **attributes) -> pydicom.Dataset:
    """A fresh study (new UIDs) from a sample file, for ``patient_id`` with the given patient attributes."""
    ds = pydicom.dcmread(sample)
    ds.PatientID = patient_id
    ds.StudyInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    folder.mkdir(parents=True, exist_ok=True)
    ds.save_as(folder / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    return ds


def storescu(port: int, folder: Path, ae_title: str = "XDSI_TEST") -> None:
    tool = require_tool("storescu", "dcmtk")
    done = subprocess.run([tool, "-aec", ae_title, "+sd", "127.0.0.1", str(port), str(folder)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def hospital(new_imaging_database, registry_database_url, tmp_path_factory):
    """Registry (affinity domain: NHS numbers), hospital A's repository and imaging source, real processes."""
    tmp = tmp_path_factory.mktemp("readme")
    with contextlib.ExitStack() as running:  # whatever started is stopped, even when a later start fails
        registry = start_registry_process(registry_database_url, "--affinity-domain-oid", NHS_OID)
        running.callback(registry.stop)
        repository = start_repository_process(registry_database_url, registry.url, tmp / "repository")
        running.callback(repository.stop)
        source = start_imaging_source(
            new_imaging_database(), tmp / "instances", "--repository-url", repository.url,
            "--pix-port", str(registry.mllp_port), "--affinity-domain-oid", NHS_OID,
            "--patient-id-issuer-oid", HOSPA_OID, "--quiet-period", "1", "--tracker-interval", "0.2",
            "--retry-initial", "0.5", "--retry-max", "1")
        running.callback(source.stop)
        yield registry, repository, source


def new_numbers() -> tuple[str, str]:
    return valid_nhs_number(), f"A{uuid.uuid4().int % 10**7:07d}"


async def published_for(registry, nhs: str, study_uid: str):
    async with SoapClient(timeout=60) as client:
        entries = await find_documents(client, registry.url, f"{nhs}^^^&{NHS_OID}&ISO")
    return [e for e in entries if f"{study_uid}^^^^urn:ihe:iti:xds:2016:studyInstanceUID"
            in {r.value for r in e.reference_ids}]


# Issuer of Patient ID as images carry it: the namespace, the OID in the qualifiers, both, or neither
# (then the source's configured hospital OID is the assigning authority).
ISSUERS = {
    "namespace": {"IssuerOfPatientID": "HOSPA"},
    "oid": {"IssuerOfPatientIDQualifiersSequence": [("ISO", HOSPA_OID)]},
    "both": {"IssuerOfPatientID": "HOSPA", "IssuerOfPatientIDQualifiersSequence": [("ISO", HOSPA_OID)]},
    "neither": {},
}


def _issuer_attributes(case: str) -> dict:
    attributes = dict(ISSUERS[case])
    if "IssuerOfPatientIDQualifiersSequence" in attributes:
        items = []
        for kind, oid in attributes["IssuerOfPatientIDQualifiersSequence"]:
            item = pydicom.Dataset()
            item.UniversalEntityID = oid
            item.UniversalEntityIDType = kind
            items.append(item)
        attributes["IssuerOfPatientIDQualifiersSequence"] = pydicom.Sequence(items)
    return attributes


@pytest.mark.parametrize("case", list(ISSUERS))
async def test_readme_walk_through(hospital, samples, tmp_path, case):
    registry, _repository, source = hospital
    nhs, hospital_number = new_numbers()
    await feed_patient(registry.mllp_port, f"{nhs}^^^NHS&{NHS_OID}&ISO~{hospital_number}^^^HOSPA&{HOSPA_OID}&ISO")
    ds = study_copy(samples["CT"], tmp_path / "study", hospital_number, **_issuer_attributes(case))
    storescu(source.dicom_port, tmp_path / "study")

    [entry] = await wait_for(lambda: published_for(registry, nhs, ds.StudyInstanceUID),
                             what=lambda: f"the manifest; status: {status_rows(source)}")
    assert entry.patient_id == Identifiable(nhs, NHS_OID)
    assert entry.source_patient_id == Identifiable(hospital_number, HOSPA_OID)
    assert f"PID-3|{hospital_number}^^^&{HOSPA_OID}&ISO" in entry.source_patient_info
    # The registry lists it a moment before the source has the repository's answer: then nothing is left to do.
    await wait_for(lambda: not [r for r in status_rows(source) if r["study_uid"] == ds.StudyInstanceUID],
                   what=lambda: f"the study to leave the status list: {status_rows(source)}")
