"""Pure parts of Import: the RAD-69 client against the imaging source's own parser and response
builder, reading a KOS manifest built by the imaging source, IRWF.b patient reconciliation, PACS
settings and the row status text."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from consumer.client.imaging import InstanceRequest, rad69_request, read_rad69_response
from consumer.portal.import_study import ImportFailed, manifest_instances, rad69_url, reconcile, row_status
from consumer.portal.settings import Pacs, PortalSettings, parse_pacs
from ihe.errors import ErrorCode, error
from imaging_source import rad69
from imaging_source.manifest import ReferencedInstance, RetrieveInfo, build_manifest, encode
from tests.imaging_source.conftest import sample_path

REPO = "1.3.6.1.4.1.21367.2017.2.4.99"


def test_rad69_request_is_read_by_the_imaging_source_as_sent():
    asked = [InstanceRequest("1.2.3", "1.2.3.1", "1.2.3.1.1", REPO),
             InstanceRequest("1.2.3", "1.2.3.1", "1.2.3.1.2", REPO),
             InstanceRequest("1.2.3", "1.2.3.2", "1.2.3.2.1", REPO)]
    parsed = rad69.parse_request(rad69_request(asked, ["1.2.840.10008.1.2.1"]))
    assert [(d.study_uid, d.series_uid, d.document_unique_id, d.repository_unique_id) for d in parsed.documents] == [
        (a.study_uid, a.series_uid, a.sop_instance_uid, a.repository_unique_id) for a in asked]
    assert parsed.transfer_syntaxes == ["1.2.840.10008.1.2.1"]


def test_rad69_response_of_the_imaging_source_gives_instances_and_errors():
    ok = rad69.DocumentAnswer(rad69.DocumentRequest("1.2.3", "1.2.3.1", REPO, "1.2.3.1.1"), "1.2.840.10008.1.2.1",
                              "key", 4)
    refused = error(ErrorCode.DOCUMENT_UNIQUE_ID_ERROR, "SOP instance 1.2.3.1.2 is not known here", "1.2.3.1.2")
    body = rad69.build_response([ok], [refused], REPO, ["cid-1@x"])
    result = read_rad69_response(body, {"cid-1@x": b"DICM"})
    assert result.status.endswith(":PartialSuccess")
    assert result.instances == {"1.2.3.1.1": b"DICM"}
    assert [e.context for e in result.errors] == ["SOP instance 1.2.3.1.2 is not known here"]
    with pytest.raises(ValueError):
        read_rad69_response(rad69_request([], []), {})  # a request is not an answer


def _kos(wado_rs_url: str) -> bytes:
    ct = pydicom.dcmread(sample_path("CT_small.dcm"))
    instances = [ReferencedInstance(str(ct.SeriesInstanceUID), str(ct.SOPClassUID), f"{ct.SOPInstanceUID}.{n}")
                 for n in range(3)]
    return encode(build_manifest(ct, instances, RetrieveInfo("SRC_AE", REPO, wado_rs_url)).dataset)


def test_manifest_instances_of_the_imaging_source_manifest():
    ct = pydicom.dcmread(sample_path("CT_small.dcm"))
    study = manifest_instances(_kos("http://127.0.0.1:8031/dicomweb"))
    assert study.study_uid == str(ct.StudyInstanceUID)
    assert study.rad69_url == "http://127.0.0.1:8031/rad69"
    assert [i.sop_instance_uid for i in study.instances] == [f"{ct.SOPInstanceUID}.{n}" for n in range(3)]
    assert {(i.series_uid, i.repository_unique_id) for i in study.instances} == {(str(ct.SeriesInstanceUID), REPO)}


def test_manifest_without_a_rad69_source_is_refused_with_a_reason():
    with pytest.raises(ImportFailed, match="no Retrieve URL"):
        manifest_instances(_kos("https://elsewhere.example/wado"))
    with pytest.raises(ImportFailed, match="not a DICOM file"):
        manifest_instances(b"not dicom")


def test_rad69_url():
    assert rad69_url("http://h:1/dicomweb/studies/1.2") == "http://h:1/rad69"
    assert rad69_url("http://h:1/dicomweb") == "http://h:1/rad69"
    assert rad69_url("http://h:1/wado") is None
    assert rad69_url(None) is None


def test_reconcile_keeps_the_original_ids_in_other_patient_ids():
    ds = Dataset()
    ds.PatientID = "A123"
    ds.IssuerOfPatientID = "1.2.826.0.1.99"
    earlier = Dataset()
    earlier.PatientID = "X9"
    earlier.TypeOfPatientID = "TEXT"
    ds.OtherPatientIDsSequence = Sequence([earlier])
    out = reconcile(ds, "B456", "1.2.826.0.1.97")
    assert out.PatientID == "B456"
    assert out.IssuerOfPatientID == "1.2.826.0.1.97"
    assert out.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityID == "1.2.826.0.1.97"
    assert out.IssuerOfPatientIDQualifiersSequence[0].UniversalEntityIDType == "ISO"
    assert [(o.PatientID, o.get("IssuerOfPatientID")) for o in out.OtherPatientIDsSequence] == [
        ("A123", "1.2.826.0.1.99"), ("X9", None)]
    again = reconcile(out, "B456", "1.2.826.0.1.97")  # importing twice adds nothing
    assert [o.PatientID for o in again.OtherPatientIDsSequence] == ["A123", "X9"]


def test_pacs_settings():
    assert parse_pacs("Hospital B|pacs.b|104|PACS_B; Hospital C|10.0.0.3|11112|ORTHANC") == [
        Pacs("Hospital B", "pacs.b", 104, "PACS_B"), Pacs("Hospital C", "10.0.0.3", 11112, "ORTHANC")]
    assert PortalSettings.from_dict({"pacs": ["Hospital B|h|104|AE"]}).pacs_of("Hospital B") == Pacs(
        "Hospital B", "h", 104, "AE")
    for bad in ("Hospital B|h|port|AE", "Hospital B|h|104"):
        with pytest.raises(ValueError, match="HOSPITAL\\|HOST\\|PORT\\|AE_TITLE"):
            parse_pacs(bad)


def test_row_status_text():
    assert row_status({"state": "queued", "done_count": 0, "total_count": None, "reason": None}) == "being imported"
    assert row_status({"state": "running", "done_count": 2, "total_count": 5, "reason": None}) == \
        "being imported 2/5"
    assert row_status({"state": "imported", "done_count": 5, "total_count": 5, "reason": None}) == "imported"
    assert row_status({"state": "failed", "done_count": 0, "total_count": 5, "reason": "PACS down"}) == \
        "failed: PACS down"


def test_c_store_names_what_the_pacs_does_not_accept():
    """A real storage SCP accepting MR only: sending CT fails with the SOP class named, not a stack trace."""
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import MRImageStorage

    from consumer.portal.import_study import c_store
    from tests.conftest import free_port

    ae = AE(ae_title="ONLY_MR")
    ae.add_supported_context(MRImageStorage, "1.2.840.10008.1.2.1")
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda event: 0)])
    try:
        mr = pydicom.dcmread(sample_path("MR_small.dcm"))
        mr.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        ct = pydicom.dcmread(sample_path("CT_small.dcm"))
        with pytest.raises(ImportFailed, match="does not accept CT Image Storage in Explicit VR Little Endian"):
            c_store(Pacs("Hospital B", "127.0.0.1", port, "ONLY_MR"), "PORTAL", [mr, ct])
    finally:
        server.shutdown()
