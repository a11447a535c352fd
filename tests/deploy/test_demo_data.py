"""The demo data's pure parts: valid NHS numbers, a plan spread over the hospitals, re-identified DICOM,
the ADT^A01 that feeds the patients, and the journal an interrupted load resumes from."""

import random

import pydicom
from pydicom.data import get_testdata_file

from ihe.hl7 import cx_at, parse_message, repetition_count
from ihe.nhs import NHS_NUMBER_OID, is_nhs_number
from local_network.demo_data import (
    DemoHospital,
    Journal,
    adt_a01,
    make_plan,
    nhs_numbers,
    reidentify,
)

HOSPITALS = [DemoHospital(f"hospital-{c}", f"HOSP{c.upper()}", f"1.3.6.1.4.1.21367.2026.{n}.2",
                          f"http://127.0.0.1:802{n}/repository", f"1.3.6.1.4.1.21367.2026.{n}.1", "127.0.0.1",
                          11111 + n, f"HOSP{c.upper()}_XDSI") for n, c in enumerate("abc", start=1)]


def test_nhs_numbers_are_valid_and_distinct():
    numbers = nhs_numbers(random.Random(7), 50)
    assert len(set(numbers)) == 50
    assert all(is_nhs_number(n) for n in numbers)


def test_the_plan_spreads_patients_over_every_hospital_with_a_number_each():
    plan = make_plan(HOSPITALS)
    assert len(plan["patients"]) == 4
    assert {s["hospital"] for s in plan["studies"]} == {h.name for h in HOSPITALS}
    for p, patient in enumerate(plan["patients"]):
        assert is_nhs_number(patient["nhs_number"])
        assert len(set(patient["hospital_numbers"].values())) == len(HOSPITALS)
        assert len({s["hospital"] for s in plan["studies"] if s["patient"] == p}) >= 2
    uids = [u for s in plan["studies"] for u in [s["study_uid"], *s["reports"].values(),
                                                  *(x["uid"] for x in s["series"]),
                                                  *(i for x in s["series"] for i in x["instances"])]]
    assert len(uids) == len(set(uids))


def test_reidentified_instance_belongs_to_the_demo_patient_at_the_hospital():
    plan = make_plan(HOSPITALS)
    study = plan["studies"][0]
    patient = plan["patients"][study["patient"]]
    hospital = next(h for h in HOSPITALS if h.name == study["hospital"])
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds = reidentify(source, patient=patient, hospital=hospital, study=study, series_index=1, instance_index=2)
    assert ds.PatientID == patient["hospital_numbers"][hospital.name] != source.PatientID
    assert ds.IssuerOfPatientID == hospital.namespace
    assert ds.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == hospital.hospital_number_oid
    assert str(ds.PatientName) == f"{patient['family']}^{patient['given']}"
    assert (ds.PatientBirthDate, ds.PatientSex) == (patient["birth_date"], patient["sex"])
    assert ds.StudyInstanceUID == study["study_uid"]
    assert ds.SeriesInstanceUID == study["series"][1]["uid"]
    assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID == study["series"][1]["instances"][2]
    assert source.StudyInstanceUID != ds.StudyInstanceUID, "the source dataset is left untouched"


def test_adt_a01_carries_the_nhs_number_and_every_hospital_number_in_pid_3():
    patient = make_plan(HOSPITALS)["patients"][0]
    message = parse_message(adt_a01(patient, HOSPITALS))
    ids = [cx_at(message, "PID", 3, n) for n in range(1, repetition_count(message, "PID", 3) + 1)]
    assert [(i.id, i.authority_oid) for i in ids] == [(patient["nhs_number"], NHS_NUMBER_OID)] + [
        (patient["hospital_numbers"][h.name], h.hospital_number_oid) for h in HOSPITALS]


def test_the_journal_remembers_finished_steps_across_a_restart(tmp_path):
    journal = Journal(tmp_path / "journal")
    journal.add("adt-0")
    journal.add("images-0")
    again = Journal(tmp_path / "journal")
    assert "adt-0" in again and "images-0" in again and "reports-0" not in again


def test_the_first_patient_has_studies_at_every_hospital_and_a_ct():
    """The portal's story test opens one patient's list with rows from all three hospitals and a CT study."""
    plan = make_plan(HOSPITALS)
    first = [s for s in plan["studies"] if s["patient"] == 0]
    assert {s["hospital"] for s in first} == {h.name for h in HOSPITALS}
    assert "CT" in {s["kind"] for s in first}
