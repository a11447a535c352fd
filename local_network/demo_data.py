"""Demo data for the one-machine region: a few patients, their studies and reports, loaded once.

The plan (patients, studies, every UID) is drawn once and kept in ``DATA_DIR/demo/plan.json``;
the re-identified DICOM files are written from it once. Loading then goes through the
standard transactions only: ADT^A01 (ITI-8) to the registry's MLLP listener, C-STORE to each
hospital's imaging source, ITI-41 of a PDF and a text report per study to the hospital's
repository. Every finished step is appended to a journal, a report already registered
(ITI-18 GetDocuments by its uniqueId) is not sent again, and a resent DICOM instance is the
same bytes, so an interrupted load resumes safely; ``loaded.json`` marks the end.
The imaging sources publish the manifests themselves after their quiet period.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import random
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pydicom
from hl7.mllp import open_hl7_connection
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from ihe import tls
from ihe.hl7 import decode, encode, new_control_id
from ihe.nhs import NHS_NUMBER_OID, nhs_check_digit

# Real images nobody here made: pydicom's own test files and pydicom-data's (uncompressed).
SOURCE_FILES = {
    "CT": ("CT_small.dcm", "CT chest"),
    "MR": ("MR_small.dcm", "MR head"),
    "US": ("US1_UNCR.dcm", "US abdomen"),
    "MR2": ("MR2_UNCR.dcm", "MR knee"),
}
INSTANCES_PER_SERIES = 3
FAMILY_NAMES = ("Smith", "Jones", "Taylor", "Brown")
GIVEN_NAMES = ("Alice", "Brian", "Chloe", "David")
# (patient index, hospital index, kind): every patient at two hospitals or more, every hospital used, and
# the first patient at all three with a CT (the portal's story: one list from every hospital, a CT to open).
STUDIES = ((0, 0, "CT"), (0, 1, "MR"), (1, 1, "US"), (1, 2, "CT"), (2, 2, "MR2"), (2, 0, "US"),
           (3, 0, "MR"), (3, 2, "CT"), (0, 2, "US"))


@dataclass(frozen=True, slots=True)
class DemoHospital:
    """What the loader needs of a hospital (from local_network.cli.Hospital)."""

    name: str
    namespace: str
    hospital_number_oid: str
    repository_url: str
    repository_unique_id: str
    dicom_host: str
    dicom_port: int
    ae_title: str


def nhs_numbers(rng: random.Random, count: int) -> list[str]:
    """``count`` valid NHS numbers (a 999 prefix, as test numbers are) with their check digit."""
    found: list[str] = []
    while len(found) < count:
        first = "999" + "".join(str(rng.randrange(10)) for _ in range(6))
        check = nhs_check_digit(first)
        if check is not None and first + str(check) not in found:
            found.append(first + str(check))
    return found


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def make_plan(hospitals: list[DemoHospital]) -> dict:
    """Patients with an NHS number and a hospital number per hospital, and their studies with all UIDs."""
    rng = random.Random()
    numbers = nhs_numbers(rng, len(FAMILY_NAMES))
    patients = []
    for i, nhs in enumerate(numbers):
        patients.append({
            "nhs_number": nhs, "family": FAMILY_NAMES[i], "given": GIVEN_NAMES[i],
            "birth_date": f"19{50 + 7 * i}{(i % 12) + 1:02d}{10 + i:02d}", "sex": "F" if i % 2 == 0 else "M",
            "hospital_numbers": {h.name: f"{h.namespace[-1]}{rng.randrange(10**5, 10**6)}" for h in hospitals}})
    studies = []
    for n, (p, h, kind) in enumerate(STUDIES):
        studies.append({
            "patient": p, "hospital": hospitals[h % len(hospitals)].name, "kind": kind,
            "description": SOURCE_FILES[kind][1], "date": f"2025{(n % 12) + 1:02d}{(3 * n) % 28 + 1:02d}",
            "accession": f"ACC{rng.randrange(10**6, 10**7)}", "study_uid": new_uid(),
            "series": [{"uid": new_uid(), "instances": [new_uid() for _ in range(INSTANCES_PER_SERIES)]}
                       for _ in range(2)],
            "reports": {"pdf": new_uid(), "text": new_uid()}})
    return {"patients": patients, "studies": studies}


def reidentify(source: Dataset, *, patient: dict, hospital: DemoHospital, study: dict, series_index: int,
               instance_index: int) -> Dataset:
    """A copy of ``source`` belonging to the demo patient, with the plan's Study/Series/SOP Instance UIDs."""
    ds = copy.deepcopy(source)  # Dataset.copy() is shallow: the source's elements would change too
    ds.PatientName = f"{patient['family']}^{patient['given']}"
    ds.PatientID = patient["hospital_numbers"][hospital.name]
    ds.IssuerOfPatientID = hospital.namespace
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = hospital.hospital_number_oid
    qualifiers.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
    ds.PatientBirthDate = patient["birth_date"]
    ds.PatientSex = patient["sex"]
    for tag in ("OtherPatientIDs", "OtherPatientIDsSequence", "PatientAddress", "ReferringPhysicianName"):
        if tag in ds:
            delattr(ds, tag)
    ds.StudyInstanceUID = study["study_uid"]
    ds.SeriesInstanceUID = study["series"][series_index]["uid"]
    ds.SOPInstanceUID = study["series"][series_index]["instances"][instance_index]
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study["date"]
    ds.StudyDescription = study["description"]
    ds.AccessionNumber = study["accession"]
    ds.StudyID = study["accession"][-4:]
    ds.SeriesNumber = series_index + 1
    ds.InstanceNumber = instance_index + 1
    ds.InstitutionName = hospital.name
    return ds


def pdf_report(lines: list[str]) -> bytes:
    """A small valid PDF 1.4 (one A4 page of Helvetica text), with a correct cross-reference table."""
    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    content = "BT /F1 12 Tf 56 780 Td 16 TL " + " ".join(f"({esc(line)}) '" for line in lines) + " ET"
    stream = content.encode("latin-1", "replace")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


def report_lines(patient: dict, hospital: DemoHospital, study: dict) -> list[str]:
    return [f"{hospital.name}: radiology report", "",
            f"Patient: {patient['given']} {patient['family']}  NHS number {patient['nhs_number']}",
            f"Examination: {study['description']} on {study['date']}  accession {study['accession']}",
            "", "Findings: no acute abnormality (demo data).", "Conclusion: normal study."]


def adt_a01(patient: dict, hospitals: list[DemoHospital]) -> str:
    """ITI-8 ADT^A01 (HL7 2.5) whose PID-3 carries the NHS number and every hospital number."""
    return _a01(patient, hospitals, "DEMO-PAS|REGION", "O")


def hospital_adt_a01(patient: dict, hospital: DemoHospital) -> str:
    """ITI-8 ADT^A01 from the hospital's own PAS (MSH-4 its namespace): the admission that gives the hospital a care
    relationship with the patient under the access policy."""
    return _a01(patient, [hospital], f"PAS|{hospital.namespace}", "I")


def _a01(patient: dict, hospitals: list[DemoHospital], sender: str, patient_class: str) -> str:
    """An ADT^A01 from ``sender`` (MSH-3|MSH-4), PID-3 the NHS number and ``hospitals``' numbers."""
    ids = [f"{patient['nhs_number']}^^^NHS&{NHS_NUMBER_OID}&ISO"] + [
        f"{patient['hospital_numbers'][h.name]}^^^{h.namespace}&{h.hospital_number_oid}&ISO" for h in hospitals]
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    return encode([
        f"MSH|^~\\&|{sender}|XDS-REGISTRY|REGION|{stamp}||ADT^A01^ADT_A01|{new_control_id()}|P|2.5",
        f"EVN|A01|{stamp}",
        f"PID|||{'~'.join(ids)}||{patient['family']}^{patient['given']}||{patient['birth_date']}|{patient['sex']}",
        f"PV1||{patient_class}"])


class Journal:
    """Finished steps, one line each, appended and fsync'd: what a resumed load skips."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done = set(path.read_text().split()) if path.exists() else set()

    def __contains__(self, step: str) -> bool:
        return step in self.done

    def add(self, step: str) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(step + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.done.add(step)


def write_json_atomically(path: Path, value: object) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


async def feed_patient(host: str, port: int, message: str) -> None:
    reader, writer = await open_hl7_connection(host, port, **tls.connect_kwargs(host))
    try:
        writer.writeblock(message.encode("utf-8"))
        await writer.drain()
        answer = decode(await asyncio.wait_for(reader.readblock(), 30))
    finally:
        writer.close()
    msa = next((s for s in answer.split("\r") if s.startswith("MSA|")), "")
    if msa.split("|")[1:2] != ["AA"]:
        raise RuntimeError(f"the registry refused the demo patient feed: {msa or answer!r}")


def c_store(files: list[Path], hospital: DemoHospital) -> None:
    """Send ``files`` to the hospital's imaging source in one association (pynetdicom)."""
    from pynetdicom import AE

    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    ae = AE(ae_title="DEMO_LOADER")
    for pair in {(str(h.SOPClassUID), str(h.file_meta.TransferSyntaxUID)) for h in headers}:
        ae.add_requested_context(pair[0], [pair[1]])
    assoc = ae.associate(hospital.dicom_host, hospital.dicom_port, ae_title=hospital.ae_title,
                         tls_args=tls.dicom_tls_args(hospital.dicom_host))
    if not assoc.is_established:
        raise RuntimeError(f"{hospital.ae_title} refused the association for the demo images")
    try:
        for path in files:
            status = assoc.send_c_store(path)
            if not status or status.Status != 0x0000:
                raise RuntimeError(f"C-STORE of {path.name} to {hospital.ae_title} failed: {status}")
    finally:
        assoc.release()


def write_study_files(folder: Path, plan: dict, study: dict, hospital: DemoHospital) -> list[Path]:
    """The study's re-identified files, written once (same bytes on every resend)."""
    target = folder / study["study_uid"]
    if (target / "complete").exists():
        return sorted(target.glob("*.dcm"))
    target.mkdir(parents=True, exist_ok=True)
    path = get_testdata_file(SOURCE_FILES[study["kind"]][0])
    if path is None:
        raise RuntimeError(f"DICOM test file {SOURCE_FILES[study['kind']][0]} is missing (pip install pydicom-data)")
    source = pydicom.dcmread(path)
    patient = plan["patients"][study["patient"]]
    for s, series in enumerate(study["series"]):
        for i, _ in enumerate(series["instances"]):
            ds = reidentify(source, patient=patient, hospital=hospital, study=study, series_index=s, instance_index=i)
            ds.save_as(target / f"{s}-{i}.dcm", enforce_file_format=True)
    (target / "complete").touch()
    return sorted(target.glob("*.dcm"))


async def submit_reports(registry_url: str, hospital: DemoHospital, patient: dict, study: dict,
                         data_dir: Path | None = None) -> int:
    """ITI-41 of the study's PDF and text reports, unless the registry already has them; how many were sent.
    The registry is asked with the loader's XUA assertion when the region made one (``data_dir/security``)."""
    from consumer.client.query import get_documents
    from consumer.client.soap import SoapClient
    from consumer.client.source import document_entry, provide_and_register, submission_package
    from ihe.metadata.model import ReferenceId
    from local_network.security import loader_security

    patient_cx = f"{patient['nhs_number']}^^^&{NHS_NUMBER_OID}&ISO"
    # sourcePatientId is the hospital number (the registry wants the bare id^^^&OID&ISO form).
    local_cx = f"{patient['hospital_numbers'][hospital.name]}^^^&{hospital.hospital_number_oid}&ISO"
    lines = report_lines(patient, hospital, study)
    contents = {"pdf": ("application/pdf", pdf_report(lines)), "text": ("text/plain", "\n".join(lines).encode())}
    provider = loader_security(data_dir, f"urn:oid:{NHS_NUMBER_OID}", hospital.name) if data_dir else None
    async with SoapClient(timeout=60, security_provider=provider) as client:
        known = {e.unique_id for e in await get_documents(client, registry_url, list(study["reports"].values()))}
        entries, data = [], {}
        for kind, (mime, content) in contents.items():
            if study["reports"][kind] in known:
                continue
            entry = document_entry(patient_cx, mime, unique_id=study["reports"][kind],
                                   title=f"{study['description']} report ({kind.upper()})",
                                   creation_time=study["date"] + "120000", source_patient_id=local_cx,
                                   author_institution=hospital.name)
            # The report names its study (referenceIdList), so the portal's list shows "report: yes" on the images.
            entry.reference_ids = [ReferenceId(f"{study['study_uid']}^^^^urn:ihe:iti:xds:2016:studyInstanceUID")]
            entries.append(entry)
            data[entry.entry_uuid] = content
        if not entries:
            return 0
        package = submission_package(patient_cx, entries, source_id=hospital.repository_unique_id,
                                     title=f"{study['description']} reports")
        result = await provide_and_register(client, hospital.repository_url, package, data)
        if not result.ok:
            raise RuntimeError(f"{hospital.name} repository refused the demo reports: "
                               + "; ".join(f"{e.code}: {e.context}" for e in result.errors))
    return len(entries)


async def load(data_dir: Path, hospitals: list[DemoHospital], registry_url: str, mllp: tuple[str, int],
               log=print) -> bool:
    """Load the demo data unless already loaded; True when this call loaded (some of) it."""
    folder = data_dir / "demo"
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "loaded.json"
    if marker.exists():
        log(f"xds-local: demo data already loaded ({json.loads(marker.read_text())['summary']})")
        return False
    plan_file = folder / "plan.json"
    if not plan_file.exists():
        write_json_atomically(plan_file, make_plan(hospitals))
    plan = json.loads(plan_file.read_text())
    journal = Journal(folder / "journal")
    by_name = {h.name: h for h in hospitals}
    for p, patient in enumerate(plan["patients"]):
        if f"adt-{p}" not in journal:
            await feed_patient(*mllp, adt_a01(patient, hospitals))
            journal.add(f"adt-{p}")
        # Each hospital that has a study of the patient admitted them (its own feed): its care relationship.
        for name in sorted({s["hospital"] for s in plan["studies"] if s["patient"] == p}):
            if f"adt-{p}-{name}" not in journal:
                await feed_patient(*mllp, hospital_adt_a01(patient, by_name[name]))
                journal.add(f"adt-{p}-{name}")
    reports = 0
    for n, study in enumerate(plan["studies"]):
        hospital = by_name[study["hospital"]]
        if f"images-{n}" not in journal:
            files = write_study_files(folder / "dicom", plan, study, hospital)
            await asyncio.to_thread(c_store, files, hospital)
            journal.add(f"images-{n}")
        if f"reports-{n}" not in journal:
            reports += await submit_reports(registry_url, hospital, plan["patients"][study["patient"]], study,
                                            data_dir)
            journal.add(f"reports-{n}")
    summary = (f"{len(plan['patients'])} patients, {len(plan['studies'])} studies with a PDF and a text report each, "
               f"over {len({s['hospital'] for s in plan['studies']})} hospitals")
    write_json_atomically(marker, {"summary": summary, "loaded": datetime.now(UTC).isoformat()})
    log(f"xds-local: demo data loaded: {summary}")
    return True


def demo_patients(data_dir: Path) -> list[dict]:
    """The planned demo patients (NHS number, names, hospital numbers), for printing and tests."""
    plan_file = data_dir / "demo" / "plan.json"
    return json.loads(plan_file.read_text())["patients"] if plan_file.exists() else []


def main(argv: list[str] | None = None) -> int:
    """Run by xds-local as a child once every listener answers (arguments: a JSON description)."""
    parser = argparse.ArgumentParser(prog="python -m local_network.demo_data")
    parser.add_argument("spec", help="JSON: data_dir, registry_url, mllp [host, port], hospitals [...]")
    spec = json.loads(parser.parse_args(argv).spec)
    hospitals = [DemoHospital(**h) for h in spec["hospitals"]]
    try:
        tls.configure(SimpleNamespace(**spec.get("tls", {})))  # xds-local's own certificate (None: plain)
        asyncio.run(load(Path(spec["data_dir"]), hospitals, spec["registry_url"], tuple(spec["mllp"])))
    except (OSError, RuntimeError, TimeoutError, tls.TlsSetupError) as exc:
        print(f"xds-local: demo data not loaded ({exc}); the next start resumes where this one stopped",
              file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
