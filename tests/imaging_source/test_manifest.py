"""The KOS manifest and its XDS-I.b metadata as pure functions: many series, accession number and
procedure code present, replacement (RPLC); the KOS passes dciodvfy."""

from __future__ import annotations

import subprocess

import pydicom
from pydicom.dataset import Dataset

from ihe.metadata.model import AssociationType, Identifiable
from imaging_source.ingest import describe, read_header
from imaging_source.manifest import ReferencedInstance, RetrieveInfo, build_manifest, header_from_json
from imaging_source.publish import ManifestCodes, ManifestDocument, manifest_submission, parse_code, service_start_time
from tests.imaging_source.conftest import require_tool

RETRIEVE = RetrieveInfo("XDSI_TEST", "1.3.6.1.4.1.21367.2017.2.4.99", "https://pacs.example.org/dicomweb")
CODES = ManifestCodes(parse_code("DI|1.2.840.10008.2.16.4|Diagnostic Imaging"),
                      parse_code("18748-4|2.16.840.1.113883.6.1|Diagnostic imaging study"),
                      parse_code("22232009|2.16.840.1.113883.6.96|Hospital"),
                      parse_code("394914008|2.16.840.1.113883.6.96|Radiology"),
                      parse_code("N|2.16.840.1.113883.5.25|normal"),
                      parse_code("18748-4|2.16.840.1.113883.6.1|Diagnostic imaging study"))


def _study_header(samples) -> Dataset:
    ds, ts = read_header(samples["CT"].read_bytes())
    ds.AccessionNumber = "ACC-42"
    ds.TimezoneOffsetFromUTC = "+0100"
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "RPID16", "RADLEX", "CT Chest"
    ds.ProcedureCodeSequence = [code]
    return header_from_json(describe(ds, ts, issuer_oid="1.2.826.0.1.99").header)


def test_manifest_over_two_series_validates(samples, tmp_path):
    dciodvfy = require_tool("dciodvfy", "dicom3tools")
    header = _study_header(samples)
    refs = [ReferencedInstance("1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", f"1.2.3.1.{n}") for n in range(3)]
    refs += [ReferencedInstance("1.2.3.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.3.2.1")]
    manifest = build_manifest(header, refs, RETRIEVE)
    (tmp_path / "kos.dcm").write_bytes(manifest.encoded)
    check = subprocess.run([dciodvfy, str(tmp_path / "kos.dcm")], capture_output=True, text=True)
    assert "Error" not in check.stdout + check.stderr, check.stdout + check.stderr
    kos = pydicom.dcmread(tmp_path / "kos.dcm")
    [study] = kos.CurrentRequestedProcedureEvidenceSequence
    assert [s.SeriesInstanceUID for s in study.ReferencedSeriesSequence] == ["1.2.3.1", "1.2.3.2"]
    assert [len(s.ReferencedSOPSequence) for s in study.ReferencedSeriesSequence] == [3, 1]
    for series in study.ReferencedSeriesSequence:
        assert (series.RetrieveAETitle, series.RetrieveLocationUID, series.RetrieveURL) == (
            RETRIEVE.ae_title, RETRIEVE.location_uid, RETRIEVE.wado_rs_url)
    [request] = kos.ReferencedRequestSequence
    assert (request.AccessionNumber, request.StudyInstanceUID) == ("ACC-42", header.StudyInstanceUID)
    assert request.RequestedProcedureCodeSequence[0].CodeValue == "RPID16"
    assert kos.SeriesInstanceUID not in ("1.2.3.1", "1.2.3.2") and kos.Modality == "KO"
    assert kos.OtherPatientIDsSequence == header.OtherPatientIDsSequence  # copied unchanged
    assert manifest.size == len(manifest.encoded) and len(manifest.sha1) == 40


def test_metadata_of_a_replacement(samples):
    header = _study_header(samples)
    series = [{"modality": "CT", "body_part": "CHEST", "anatomic_region": None},
              {"modality": "CT", "body_part": None, "anatomic_region": "T-D3000^^^SRT^Chest"},
              {"modality": "SR", "body_part": None, "anatomic_region": None}]
    document = ManifestDocument("1.2.3.9", "urn:uuid:00000000-0000-4000-8000-000000000002", "ab" * 20, 1234,
                                replaces_entry_uuid="urn:uuid:00000000-0000-4000-8000-000000000001")
    package = manifest_submission(header, series, document, patient_id=Identifiable("9990001112", "2.16.840.1.1"),
                                  source_patient_id=Identifiable("1CT1", "1.2.826.0.1.99"), source_id="1.2.3.4",
                                  codes=CODES, accession_issuer_oid="1.2.826.0.1.98")
    [entry] = package.documents
    assert [(c.code, c.scheme) for c in entry.event_codes] == [
        ("CT", "1.2.840.10008.2.16.4"), ("SR", "1.2.840.10008.2.16.4"), ("51185008", "2.16.840.1.113883.6.96"),
        ("T-D3000", "SNOMED-RT")]
    assert [r.value for r in entry.reference_ids] == [
        "ACC-42^^^&1.2.826.0.1.98&ISO^urn:ihe:iti:xds:2013:accession",
        f"{header.StudyInstanceUID}^^^^urn:ihe:iti:xds:2016:studyInstanceUID"]
    assert (entry.type_code.code, entry.type_code.scheme) == ("RPID16", "RADLEX")
    assert entry.service_start_time == "20040119062730"  # 07:27:30 at +0100
    assert entry.source_patient_info[0] == "PID-3|1CT1^^^&1.2.826.0.1.99&ISO"
    assert (entry.hash, entry.size, entry.mime_type) == ("ab" * 20, 1234, "application/dicom")
    rplc = [a for a in package.associations if a.type == AssociationType.RPLC]
    assert [(a.source_uuid, a.target_uuid) for a in rplc] == [(document.entry_uuid, document.replaces_entry_uuid)]
    assert package.submission_set.patient_id == entry.patient_id


def test_service_start_time_without_time():
    header = Dataset()
    header.StudyDate = "20240229"
    assert service_start_time(header) == "20240229"
    header.StudyDate = "garbage"
    assert service_start_time(header) is None


def test_non_conformant_header_values_still_give_a_manifest_and_are_copied_unchanged(samples, tmp_path):
    """Modalities send values highdicom refuses (Patient Sex "X", a two-digit Study Time): the manifest is
    still built, and carries them as received."""
    ds, ts = read_header(samples["CT"].read_bytes())
    ds.PatientSex, ds.StudyTime, ds.PatientBirthDate = "X", "99", "1970"
    header = header_from_json(describe(ds, ts, issuer_oid="1.2.826.0.1.99").header)
    manifest = build_manifest(header, [ReferencedInstance("1.2.3.1", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.1.1")],
                              RETRIEVE)
    (tmp_path / "kos.dcm").write_bytes(manifest.encoded)
    kos = pydicom.dcmread(tmp_path / "kos.dcm")
    assert (kos.PatientSex, kos.StudyTime, kos.PatientBirthDate) == ("X", "99", "1970")
    assert kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].RetrieveURL == \
        RETRIEVE.wado_rs_url


def test_accession_reference_id_takes_the_issuer_from_the_header_first(samples):
    """CXi: accession^^^&issuer&ISO^urn:ihe:iti:xds:2013:accession; Issuer of Accession Number beats the setting,
    and with neither the assigning authority is left empty rather than invented."""
    header = _study_header(samples)
    issuer = Dataset()
    issuer.UniversalEntityID, issuer.UniversalEntityIDType = "1.2.826.0.1.77", "ISO"
    header.IssuerOfAccessionNumberSequence = [issuer]
    document = ManifestDocument("1.2.3.9", "urn:uuid:00000000-0000-4000-8000-000000000002", "ab" * 20, 1)
    kwargs = dict(patient_id=Identifiable("9990001112", "2.16.840.1.1"),
                  source_patient_id=Identifiable("1CT1", "1.2.826.0.1.99"), source_id="1.2.3.4", codes=CODES)
    package = manifest_submission(header, [], document, accession_issuer_oid="1.2.826.0.1.98", **kwargs)
    assert package.documents[0].reference_ids[0].value == \
        "ACC-42^^^&1.2.826.0.1.77&ISO^urn:ihe:iti:xds:2013:accession"
    del header.IssuerOfAccessionNumberSequence
    package = manifest_submission(header, [], document, **kwargs)
    assert package.documents[0].reference_ids[0].value == "ACC-42^^^^urn:ihe:iti:xds:2013:accession"
    assert not [a for a in package.associations if a.type == AssociationType.RPLC]
    header.AccessionNumber = ""
    package = manifest_submission(header, [], document, **kwargs)
    assert [r.value for r in package.documents[0].reference_ids] == [
        f"{header.StudyInstanceUID}^^^^urn:ihe:iti:xds:2016:studyInstanceUID"]


def test_source_patient_id_of_a_hospital_number_with_namespace_and_oid_is_what_the_registry_accepts(samples):
    """A header with Issuer of Patient ID (namespace) and its OID qualifier: sourcePatientId is the XDS form
    id^^^&OID&ISO (the registry refuses a namespace there); sourcePatientInfo PID-3 names the patient alike."""
    from ihe.metadata.validate import validate_document_entry

    header = _study_header(samples)
    document = ManifestDocument("1.2.3.9", "urn:uuid:00000000-0000-4000-8000-000000000002", "ab" * 20, 1)
    package = manifest_submission(header, [], document, patient_id=Identifiable("9990001112", "2.16.840.1.1"),
                                  source_patient_id=Identifiable("A1", "1.2.826.0.1.99", "HOSPA"),
                                  source_id="1.2.3.4", codes=CODES)
    [entry] = package.documents
    assert entry.source_patient_id == Identifiable("A1", "1.2.826.0.1.99")
    assert entry.source_patient_info[0] == "PID-3|A1^^^&1.2.826.0.1.99&ISO"
    assert [e for e in validate_document_entry(entry) if "sourcePatientId" in e.context] == []
