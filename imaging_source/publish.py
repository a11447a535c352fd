"""RAD-68 Provide and Register Imaging Document Set: the KOS manifest and its XDS-I.b metadata.

:func:`manifest_submission` (metadata from the study) is pure; :func:`send_manifest` is the I/O:
ITI-41 over MTOM to the hospital's repository with the shared document source client.
Failures raise :class:`PublishError`; the tracker retries with back-off.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

from pydicom.dataset import Dataset

from ihe.errors import STATUS_SUCCESS
from ihe.metadata.model import (
    Association,
    AssociationType,
    Code,
    DocumentEntry,
    Identifiable,
    LocalizedString,
    ReferenceId,
    SubmissionPackage,
    SubmissionSet,
    datetime_to_dtm,
)

KOS_FORMAT = Code("1.2.840.10008.5.1.4.1.1.88.59", "1.2.840.10008.2.6.1",
                  LocalizedString("Key Object Selection Document"))
DICOM_MIME = "application/dicom"
DCM_SCHEME = "1.2.840.10008.2.16.4"
ACCESSION_TYPE = "urn:ihe:iti:xds:2013:accession"
STUDY_UID_TYPE = "urn:ihe:iti:xds:2016:studyInstanceUID"

# DICOM coding scheme designators -> the OIDs XDS metadata names schemes by.
SCHEME_OIDS = {
    "DCM": DCM_SCHEME,
    "SCT": "2.16.840.1.113883.6.96",
    "LN": "2.16.840.1.113883.6.1",
    "SRT": "SNOMED-RT",
    "99SDM": "SNOMED-RT",
}
# Body Part Examined defined terms (PS3.16 Annex L) -> SNOMED CT, for the commonest ones.
BODY_PARTS = {
    "CHEST": ("51185008", "Thoracic structure"),
    "THORAX": ("51185008", "Thoracic structure"),
    "HEAD": ("69536005", "Head structure"),
    "BRAIN": ("12738006", "Brain structure"),
    "ABDOMEN": ("818981001", "Abdomen"),
    "PELVIS": ("816092008", "Pelvis"),
    "NECK": ("45048000", "Neck structure"),
    "KNEE": ("72696002", "Knee region structure"),
    "SPINE": ("421060004", "Spinal structure"),
    "BREAST": ("76752008", "Breast structure"),
    "HEART": ("80891009", "Heart structure"),
}
MODALITY_NAMES = {
    "CR": "Computed Radiography", "CT": "Computed Tomography", "DX": "Digital Radiography", "MG": "Mammography",
    "MR": "Magnetic Resonance", "NM": "Nuclear Medicine", "PT": "Positron emission tomography", "US": "Ultrasound",
    "XA": "X-Ray Angiography", "RF": "Radio Fluoroscopy", "OT": "Other", "SC": "Secondary Capture",
}


class PublishError(Exception):
    """RAD-68 did not succeed; the message says why (network, SOAP fault or the repository's errors)."""


def parse_code(value: str) -> Code:
    """A ``code|scheme|display`` setting as a Code."""
    parts = value.split("|")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"code {value!r} is not code|scheme|display")
    return Code(parts[0], parts[1], LocalizedString(parts[2]) if len(parts) > 2 and parts[2] else None)


def _coded(item: Dataset) -> Code | None:
    if not item.get("CodeValue") or not item.get("CodingSchemeDesignator"):
        return None
    designator = str(item.CodingSchemeDesignator)
    meaning = str(item.get("CodeMeaning") or "") or None
    return Code(str(item.CodeValue), SCHEME_OIDS.get(designator, designator),
                LocalizedString(meaning) if meaning else None)


def event_codes(series: list[dict]) -> list[Code]:
    """eventCodeList: every modality of the study, then the body parts when known."""
    codes: list[Code] = []
    seen: set[str] = set()

    def add(code: Code) -> None:
        if code.key not in seen:
            seen.add(code.key)
            codes.append(code)

    for s in series:
        modality = (s.get("modality") or "").strip()
        if modality and modality != "KO":
            add(Code(modality, DCM_SCHEME, LocalizedString(MODALITY_NAMES.get(modality, modality))))
    for s in series:
        if s.get("anatomic_region"):
            code, _, _, scheme, meaning = (s["anatomic_region"].split("^") + [""] * 5)[:5]
            add(Code(code, SCHEME_OIDS.get(scheme, scheme), LocalizedString(meaning) if meaning else None))
        elif (s.get("body_part") or "").upper() in BODY_PARTS:
            code, meaning = BODY_PARTS[s["body_part"].upper()]
            add(Code(code, SCHEME_OIDS["SCT"], LocalizedString(meaning)))
    return codes


def service_start_time(header: Dataset) -> str | None:
    """StudyDate/StudyTime as a UTC HL7 DTM; local time unless Timezone Offset From UTC says otherwise."""
    date = str(header.get("StudyDate") or "").strip()
    if len(date) != 8 or not date.isdigit():
        return None
    time = str(header.get("StudyTime") or "").strip().split(".")[0].replace(":", "")
    if not time.isdigit():
        return date
    time = (time + "0000")[:6] if len(time) >= 2 else ""
    try:
        local = datetime.strptime(date + time, "%Y%m%d%H%M%S")
    except ValueError:
        return date
    offset = str(header.get("TimezoneOffsetFromUTC") or "").strip()
    if len(offset) == 5 and offset[0] in "+-" and offset[1:].isdigit():
        sign = 1 if offset[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5])))
        aware = local.replace(tzinfo=tz)
    else:
        aware = local.astimezone()  # the source's own time zone
    return datetime_to_dtm(aware)


def _person_name(header: Dataset) -> str:
    # DICOM PN and HL7 XPN both order family^given^middle^prefix^suffix.
    return str(header.get("PatientName") or "").split("=")[0]


def source_patient_info(header: Dataset, source_id: Identifiable) -> list[str]:
    info = [f"PID-3|{source_id.to_cx()}"]
    name = _person_name(header)
    if name:
        info.append(f"PID-5|{name}")
    birth = str(header.get("PatientBirthDate") or "").strip()
    if birth:
        info.append(f"PID-7|{birth}")
    sex = str(header.get("PatientSex") or "").strip().upper()
    if sex in ("M", "F", "O", "U"):
        info.append(f"PID-8|{sex}")
    return info


def accession_issuer(header: Dataset, default_oid: str | None) -> str | None:
    for item in header.get("IssuerOfAccessionNumberSequence") or []:
        if item.get("UniversalEntityIDType") == "ISO" and item.get("UniversalEntityID"):
            return str(item.UniversalEntityID)
    return default_oid


def new_oid() -> str:
    return f"2.25.{uuid.uuid4().int}"


@dataclass(frozen=True, slots=True)
class ManifestCodes:
    class_code: Code
    default_type_code: Code
    facility_type_code: Code
    practice_setting_code: Code
    confidentiality_code: Code
    content_type_code: Code
    language_code: str = "en-GB"


@dataclass(frozen=True, slots=True)
class ManifestDocument:
    """What the submission says about the KOS: its ids, hash and size, and what it replaces."""

    document_unique_id: str
    entry_uuid: str
    sha1: str
    size: int
    replaces_entry_uuid: str | None = None


def manifest_submission(header: Dataset, series: list[dict], document: ManifestDocument, *,
                        patient_id: Identifiable, source_patient_id: Identifiable, source_id: str,
                        codes: ManifestCodes, accession_issuer_oid: str | None = None,
                        now: datetime | None = None) -> SubmissionPackage:
    """The XDS-I.b submission set for one manifest (and its RPLC association when it replaces one)."""
    now = now or datetime.now(UTC)
    procedure = next(iter(header.get("ProcedureCodeSequence") or []), None)
    type_code = (_coded(procedure) if procedure is not None else None) or codes.default_type_code
    references = []
    accession = str(header.get("AccessionNumber") or "").strip()
    if accession:
        issuer = accession_issuer(header, accession_issuer_oid)
        authority = f"&{issuer}&ISO" if issuer else ""
        references.append(ReferenceId(f"{accession}^^^{authority}^{ACCESSION_TYPE}"))
    references.append(ReferenceId(f"{header.StudyInstanceUID}^^^^{STUDY_UID_TYPE}"))
    description = str(header.get("StudyDescription") or "").strip()
    # sourcePatientId is id^^^&OID&ISO only (ITI TF-3 4.2.3.2.23); a namespace stays in sourcePatientInfo PID-3.
    xds_source_id = (Identifiable(source_patient_id.id, source_patient_id.authority_oid)
                     if source_patient_id.authority_oid else source_patient_id)
    entry = DocumentEntry(
        entry_uuid=document.entry_uuid,
        unique_id=document.document_unique_id,
        patient_id=patient_id,
        mime_type=DICOM_MIME,
        title=LocalizedString(description or "Imaging study manifest"),
        class_code=codes.class_code,
        type_code=type_code,
        format_code=KOS_FORMAT,
        healthcare_facility_type_code=codes.facility_type_code,
        practice_setting_code=codes.practice_setting_code,
        confidentiality_codes=[codes.confidentiality_code],
        event_codes=event_codes(series),
        creation_time=datetime_to_dtm(now),
        service_start_time=service_start_time(header),
        hash=document.sha1,
        size=document.size,
        language_code=codes.language_code,
        source_patient_id=xds_source_id,
        source_patient_info=source_patient_info(header, source_patient_id),
        reference_ids=references,
    )
    submission_set = SubmissionSet(
        entry_uuid=f"urn:uuid:{uuid.uuid4()}",
        unique_id=new_oid(),
        source_id=source_id,
        patient_id=patient_id,
        submission_time=datetime_to_dtm(now),
        title=LocalizedString("Imaging study manifest"),
        content_type_code=codes.content_type_code,
    )
    associations = [Association(entry_uuid=f"urn:uuid:{uuid.uuid4()}", type=AssociationType.HAS_MEMBER,
                                source_uuid=submission_set.entry_uuid, target_uuid=entry.entry_uuid,
                                submission_set_status="Original")]
    if document.replaces_entry_uuid:
        associations.append(Association(entry_uuid=f"urn:uuid:{uuid.uuid4()}", type=AssociationType.RPLC,
                                        source_uuid=entry.entry_uuid, target_uuid=document.replaces_entry_uuid))
    return SubmissionPackage(submission_set, [entry], [], associations)


async def send_manifest(client, repository_url: str, package: SubmissionPackage, kos: bytes) -> None:
    """RAD-68 (ITI-41 with the KOS as application/dicom over MTOM); PublishError unless Success."""
    from consumer.client.soap import SoapFaultError, TransportError
    from consumer.client.source import provide_and_register

    entry = package.documents[0]
    try:
        result = await provide_and_register(client, repository_url, package, {entry.entry_uuid: kos})
    except TransportError as exc:
        raise PublishError(str(exc)) from None
    except SoapFaultError as exc:
        raise PublishError(f"SOAP Fault from the repository: {exc.fault.reason}") from None
    if result.status != STATUS_SUCCESS:
        detail = "; ".join(f"{e.code}: {e.context}" for e in result.errors) or "no error list"
        raise PublishError(f"the repository answered {result.status.rsplit(':', 1)[-1]}: {detail}")
