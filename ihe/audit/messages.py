"""DICOM PS3.15 A.5.1 AuditMessage XML from a typed :class:`AuditEvent`: pure functions.

The element order follows the schema: EventIdentification, ActiveParticipant+,
AuditSourceIdentification, ParticipantObjectIdentification*. Coded values are written as the
schema's ``csd-code`` / ``codeSystemName`` / ``originalText`` attributes.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import UTC, datetime

from lxml import etree


@dataclass(frozen=True, slots=True)
class Code:
    """A coded value: (code, codeSystemName, displayName)."""

    code: str
    system: str
    display: str


# EventID values (DICOM PS3.15 A.5.3, DCM coding scheme).
EV_APPLICATION_ACTIVITY = Code("110100", "DCM", "Application Activity")
EV_INSTANCES_TRANSFERRED = Code("110104", "DCM", "DICOM Instances Transferred")
EV_EXPORT = Code("110106", "DCM", "Export")
EV_IMPORT = Code("110107", "DCM", "Import")
EV_PATIENT_RECORD = Code("110110", "DCM", "Patient Record")
EV_QUERY = Code("110112", "DCM", "Query")
EV_SECURITY_ALERT = Code("110113", "DCM", "Security Alert")
EV_USER_AUTHENTICATION = Code("110114", "DCM", "User Authentication")

ROLE_SOURCE = Code("110153", "DCM", "Source Role ID")
ROLE_DESTINATION = Code("110152", "DCM", "Destination Role ID")

# ParticipantObjectIDTypeCode values.
ID_PATIENT_NUMBER = Code("2", "RFC-3881", "Patient Number")
ID_REPORT_NUMBER = Code("9", "RFC-3881", "Report Number")
ID_STUDY_INSTANCE_UID = Code("110180", "DCM", "Study Instance UID")
ID_SUBMISSION_SET = Code("urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd", "IHE XDS Metadata",
                         "submission set classificationNode")

# ParticipantObjectTypeCode and ...TypeCodeRole (PS3.15 A.5.1 / RFC 3881).
TYPE_PERSON, TYPE_SYSTEM = "1", "2"
ROLE_PATIENT, ROLE_REPORT, ROLE_JOB, ROLE_QUERY = "1", "3", "20", "24"

OUTCOME_SUCCESS, OUTCOME_MINOR, OUTCOME_SERIOUS, OUTCOME_MAJOR = "0", "4", "8", "12"
ACTION_CREATE, ACTION_READ, ACTION_UPDATE, ACTION_DELETE, ACTION_EXECUTE = "C", "R", "U", "D", "E"


@dataclass(frozen=True, slots=True)
class Participant:
    """An ActiveParticipant: a system (endpoint, AE title) or a person."""

    user_id: str
    is_requestor: bool
    role: Code | None = None
    network_access_point: str | None = None  # host name or IP address
    alt_user_id: str | None = None
    user_name: str | None = None

    @property
    def nap_type(self) -> str:
        """NetworkAccessPointTypeCode: 2 for an IP address, 1 for a machine name."""
        nap = self.network_access_point or ""
        return "2" if nap and (nap.replace(".", "").isdigit() or ":" in nap) else "1"


@dataclass(frozen=True, slots=True)
class ParticipantObject:
    """A ParticipantObjectIdentification: patient, document, study, query or submission set."""

    object_id: str
    id_type: Code
    type_code: str
    role: str | None = None
    name: str | None = None
    query: bytes | None = None  # written base64, as the schema's ParticipantObjectQuery
    details: tuple[tuple[str, bytes], ...] = ()  # (type, value) written base64

    @property
    def is_patient(self) -> bool:
        return self.type_code == TYPE_PERSON and self.role == ROLE_PATIENT


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One audited event: what happened, when, with what outcome, who took part, what it touched."""

    event_id: Code
    action: str
    outcome: str
    source_id: str  # AuditSourceID: the node (e.g. its host name or configured id)
    participants: tuple[Participant, ...]
    objects: tuple[ParticipantObject, ...] = ()
    event_types: tuple[Code, ...] = ()
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    outcome_description: str | None = None
    enterprise_site_id: str | None = None


def transaction_code(code: str, display: str) -> Code:
    """The EventTypeCode naming an IHE transaction, e.g. ("ITI-18", "IHE Transactions", "Registry Stored Query")."""
    return Code(code, "IHE Transactions", display)


def patient(cx: str) -> ParticipantObject:
    return ParticipantObject(cx, ID_PATIENT_NUMBER, TYPE_PERSON, ROLE_PATIENT)


def _coded(parent: etree._Element, tag: str, code: Code) -> etree._Element:
    return etree.SubElement(parent, tag, {"csd-code": code.code, "codeSystemName": code.system,
                                          "displayName": code.display, "originalText": code.display})


def _time(value: datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat(timespec="milliseconds")


def build_audit_message(event: AuditEvent) -> etree._Element:
    """The AuditMessage element of ``event``."""
    root = etree.Element("AuditMessage")
    ident = etree.SubElement(root, "EventIdentification", {
        "EventActionCode": event.action, "EventDateTime": _time(event.time),
        "EventOutcomeIndicator": event.outcome})
    _coded(ident, "EventID", event.event_id)
    for t in event.event_types:
        _coded(ident, "EventTypeCode", t)
    if event.outcome_description:
        etree.SubElement(ident, "EventOutcomeDescription").text = event.outcome_description
    for p in event.participants:
        attrs = {"UserID": p.user_id}
        if p.alt_user_id:
            attrs["AlternativeUserID"] = p.alt_user_id
        if p.user_name:
            attrs["UserName"] = p.user_name
        attrs["UserIsRequestor"] = "true" if p.is_requestor else "false"
        if p.network_access_point:
            attrs["NetworkAccessPointID"] = p.network_access_point
            attrs["NetworkAccessPointTypeCode"] = p.nap_type
        ap = etree.SubElement(root, "ActiveParticipant", attrs)
        if p.role is not None:
            _coded(ap, "RoleIDCode", p.role)
    source = etree.SubElement(root, "AuditSourceIdentification", {"AuditSourceID": event.source_id})
    if event.enterprise_site_id:
        source.set("AuditEnterpriseSiteID", event.enterprise_site_id)
    # AuditSourceTypeCode 4: application server process tier (PS3.15 A.5.1, RFC 3881)
    etree.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4", "codeSystemName": "DCM",
                                                     "originalText": "Application Server"})
    for o in event.objects:
        attrs = {"ParticipantObjectID": o.object_id, "ParticipantObjectTypeCode": o.type_code}
        if o.role:
            attrs["ParticipantObjectTypeCodeRole"] = o.role
        po = etree.SubElement(root, "ParticipantObjectIdentification", attrs)
        _coded(po, "ParticipantObjectIDTypeCode", o.id_type)
        if o.name:
            etree.SubElement(po, "ParticipantObjectName").text = o.name
        if o.query is not None:
            etree.SubElement(po, "ParticipantObjectQuery").text = base64.b64encode(o.query).decode("ascii")
        for kind, value in o.details:
            etree.SubElement(po, "ParticipantObjectDetail", {"type": kind,
                                                             "value": base64.b64encode(value).decode("ascii")})
    return root


def audit_message_bytes(event: AuditEvent) -> bytes:
    return etree.tostring(build_audit_message(event), xml_declaration=True, encoding="UTF-8")
