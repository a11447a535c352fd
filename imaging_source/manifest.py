"""The XDS-I.b imaging manifest: a Key Object Selection Document (TID 2010, title 113030 "Manifest").

Pure: a study's patient/study header and its instance list in, the encoded KOS out. highdicom
builds the document; this module then adds what XDS-I.b asks beyond a plain KOS: the retrieve
information in every Referenced Series item, the patient/study attributes copied unchanged, and
the Referenced Request Sequence when an accession number exists.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from imaging_source.ingest import PATIENT_STUDY_KEYWORDS

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"
MANIFEST_TITLE = hd.sr.CodedConcept("113030", "DCM", "Manifest")
KOS_SERIES_NUMBER = 9901
MANUFACTURER = "xds-network"

# Attributes highdicom insists on reading from the first evidence instance (type 2 when absent).
_EVIDENCE_REQUIRED = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID",
                      "StudyDate", "StudyTime", "ReferringPhysicianName")


@dataclass(frozen=True, slots=True)
class ReferencedInstance:
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class RetrieveInfo:
    ae_title: str
    location_uid: str  # the source's repository unique id, answered in RAD-69
    wado_rs_url: str   # the WADO-RS base URL


@dataclass(slots=True)
class Manifest:
    dataset: Dataset
    encoded: bytes
    sop_instance_uid: str
    series_instance_uid: str

    @property
    def sha1(self) -> str:
        return hashlib.sha1(self.encoded).hexdigest()

    @property
    def size(self) -> int:
        return len(self.encoded)


def header_from_json(header_json: dict) -> Dataset:
    return Dataset.from_json(header_json)


def _conformant(keyword: str, value: object) -> object:
    """``value`` when highdicom will accept it, else empty (type 2).

    Modalities do send a Patient Sex of "X" or a two-digit Study Time; highdicom refuses such values
    outright, and one refused study must not stop its manifest. The original values are copied into
    the KOS afterwards, unchanged, as XDS-I.b asks.
    """
    if value in (None, ""):
        return ""
    try:
        if keyword == "PatientSex":
            return value if str(value) in ("M", "F", "O") else ""
        if keyword in ("StudyDate", "PatientBirthDate"):
            DA(str(value))
        elif keyword == "StudyTime":
            TM(str(value))
    except ValueError:
        return ""
    return value


def _evidence(header: Dataset, instances: Sequence[ReferencedInstance]) -> list[Dataset]:
    study_uid = header.StudyInstanceUID
    evidence = []
    for n, ref in enumerate(instances):
        ds = Dataset()
        if n == 0:
            for keyword in _EVIDENCE_REQUIRED:
                setattr(ds, keyword, _conformant(keyword, header.get(keyword, "")))
            if "SpecificCharacterSet" in header:
                ds.SpecificCharacterSet = header.SpecificCharacterSet
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = ref.series_uid
        ds.SOPClassUID = ref.sop_class_uid
        ds.SOPInstanceUID = ref.sop_instance_uid
        evidence.append(ds)
    return evidence


def _requested_procedure(header: Dataset) -> Dataset:
    """One Referenced Request Sequence item, from the study's request attributes where known."""
    request = next(iter(header.get("RequestAttributesSequence") or []), Dataset())
    item = Dataset()
    item.StudyInstanceUID = header.StudyInstanceUID
    item.ReferencedStudySequence = []
    item.AccessionNumber = header.AccessionNumber
    if header.get("IssuerOfAccessionNumberSequence"):  # type 3: absent rather than empty
        item.IssuerOfAccessionNumberSequence = header.IssuerOfAccessionNumberSequence
    item.PlacerOrderNumberImagingServiceRequest = request.get("PlacerOrderNumberImagingServiceRequest", "")
    item.FillerOrderNumberImagingServiceRequest = request.get("FillerOrderNumberImagingServiceRequest", "")
    item.RequestedProcedureID = request.get("RequestedProcedureID", "")
    item.RequestedProcedureDescription = request.get("RequestedProcedureDescription", "")
    item.RequestedProcedureCodeSequence = (
        request.get("RequestedProcedureCodeSequence") or header.get("ProcedureCodeSequence") or []
    )
    return item


def build_manifest(header: Dataset, instances: Sequence[ReferencedInstance], retrieve: RetrieveInfo, *,
                   sop_instance_uid: str | None = None, series_instance_uid: str | None = None,
                   instance_number: int = 1, institution_name: str | None = None) -> Manifest:
    """The KOS manifest for every instance in ``instances`` (all of one study, described by ``header``)."""
    if not instances:
        raise ValueError("a manifest needs at least one instance")
    sop_instance_uid = sop_instance_uid or hd.UID()
    series_instance_uid = series_instance_uid or hd.UID()
    evidence = _evidence(header, instances)
    content = hd.ko.KeyObjectSelection(
        document_title=MANIFEST_TITLE,
        referenced_objects=evidence,
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=retrieve.location_uid, name=retrieve.ae_title),
        ),
    )
    accession = str(header.get("AccessionNumber") or "").strip()
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence,
        content=content,
        series_instance_uid=series_instance_uid,
        series_number=KOS_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        institution_name=institution_name,
        requested_procedures=[_requested_procedure(header)] if accession else None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    # Patient and study attributes exactly as the modality sent them.
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword == "Modality" or keyword not in header:
            continue
        if keyword in ("RequestAttributesSequence", "ReferencedStudySequence"):
            continue  # series-level / not part of the KOS study modules
        kos[keyword] = header[keyword]
    for study_item in kos.CurrentRequestedProcedureEvidenceSequence:
        for series_item in study_item.ReferencedSeriesSequence:
            series_item.RetrieveAETitle = retrieve.ae_title
            series_item.RetrieveLocationUID = retrieve.location_uid
            # The WADO-RS base URL: the consumer appends /studies/{study}/series/{series} (RAD-107).
            series_item.RetrieveURL = retrieve.wado_rs_url
    return Manifest(kos, encode(kos), str(sop_instance_uid), str(series_instance_uid))


def encode(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def referenced_instances(kos: Dataset) -> list[tuple[str, str, str]]:
    """(study, series, SOP instance) of every instance the manifest's evidence references."""
    refs = []
    for study_item in kos.CurrentRequestedProcedureEvidenceSequence:
        for series_item in study_item.ReferencedSeriesSequence:
            for sop_item in series_item.ReferencedSOPSequence:
                refs.append((study_item.StudyInstanceUID, series_item.SeriesInstanceUID,
                             sop_item.ReferencedSOPInstanceUID))
    return refs
