"""Which audit event each IHE transaction gives, and the participant object ids its audit table asks for.

Pure functions from the parsed request (SOAP body, URL, HL7 message) to an :class:`AuditEvent`;
the middleware and hooks (I/O) call them. Element lookups go by local name so that the same
code reads ITI-43, ITI-86 and RAD-69 requests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lxml import etree

from ihe.audit.messages import (
    ACTION_CREATE,
    ACTION_DELETE,
    ACTION_EXECUTE,
    ACTION_READ,
    ACTION_UPDATE,
    EV_EXPORT,
    EV_IMPORT,
    EV_INSTANCES_TRANSFERRED,
    EV_PATIENT_RECORD,
    EV_QUERY,
    EV_SECURITY_ALERT,
    EV_USER_AUTHENTICATION,
    ID_REPORT_NUMBER,
    ID_STUDY_INSTANCE_UID,
    ID_SUBMISSION_SET,
    OUTCOME_MAJOR,
    OUTCOME_MINOR,
    OUTCOME_SERIOUS,
    OUTCOME_SUCCESS,
    ROLE_DESTINATION,
    ROLE_JOB,
    ROLE_QUERY,
    ROLE_REPORT,
    ROLE_SOURCE,
    TYPE_SYSTEM,
    AuditEvent,
    Code,
    Participant,
    ParticipantObject,
    patient,
    transaction_code,
)
from ihe.namespaces import (
    ACTION_ITI18,
    ACTION_ITI41,
    ACTION_ITI42,
    ACTION_ITI43,
    ACTION_ITI57,
    ACTION_ITI62,
    ACTION_ITI86,
    ACTION_RAD69,
)

SUBMISSION_SET_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
SUBMISSION_SET_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
DOCUMENT_ENTRY_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
QUERY_PATIENT_SLOTS = ("$XDSDocumentEntryPatientId", "$XDSFolderPatientId", "$XDSSubmissionSetPatientId",
                       "$patientId")
ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _all(root: etree._Element, name: str) -> Iterable[etree._Element]:
    return (el for el in root.iter() if _local(el) == name)


def _child_text(el: etree._Element, name: str) -> str | None:
    for c in el:
        if _local(c) == name and c.text and c.text.strip():
            return c.text.strip()
    return None


def _unquote(value: str) -> str:
    value = value.strip().strip("()").strip()
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == "'" else value


def query_objects(body: etree._Element) -> list[ParticipantObject]:
    """ITI-18: the patient(s) of the query and the query itself (AdhocQueryRequest, base64)."""
    objects: list[ParticipantObject] = []
    query_id = ""
    for q in _all(body, "AdhocQuery"):
        query_id = q.get("id", "")
        for slot in q:
            if _local(slot) == "Slot" and slot.get("name") in QUERY_PATIENT_SLOTS:
                for v in _all(slot, "Value"):
                    if v.text and v.text.strip():
                        objects.append(patient(_unquote(v.text)))
        break
    objects.append(ParticipantObject(query_id, transaction_code("ITI-18", "Registry Stored Query"), TYPE_SYSTEM,
                                     ROLE_QUERY, query=etree.tostring(body),
                                     details=(("QueryEncoding", b"UTF-8"),)))
    return objects


def submission_objects(body: etree._Element) -> list[ParticipantObject]:
    """ITI-41/42/57: the submission set's uniqueId and its patient."""
    objects: list[ParticipantObject] = []
    patients: list[str] = []
    for ext in _all(body, "ExternalIdentifier"):
        scheme, value = ext.get("identificationScheme"), ext.get("value")
        if not value:
            continue
        if scheme == SUBMISSION_SET_UNIQUE_ID:
            objects.append(ParticipantObject(value, ID_SUBMISSION_SET, TYPE_SYSTEM, ROLE_JOB))
        elif scheme in (SUBMISSION_SET_PATIENT_ID, DOCUMENT_ENTRY_PATIENT_ID) and value not in patients:
            patients.append(value)
    return [patient(p) for p in patients] + objects


def document_objects(body: etree._Element) -> list[ParticipantObject]:
    """ITI-43/86/RAD-69: each document uniqueId with its repository (and community)."""
    objects = []
    for req in _all(body, "DocumentRequest"):
        doc = _child_text(req, "DocumentUniqueId")
        if not doc:
            continue
        details = []
        repo = _child_text(req, "RepositoryUniqueId")
        if repo:
            details.append(("Repository Unique Id", repo.encode()))
        home = _child_text(req, "HomeCommunityId")
        if home:
            details.append(("ihe:homeCommunityID", home.encode()))
        objects.append(ParticipantObject(doc, ID_REPORT_NUMBER, TYPE_SYSTEM, ROLE_REPORT, details=tuple(details)))
    return objects


def study_objects(body: etree._Element) -> list[ParticipantObject]:
    """RAD-69: the studies asked for (Study Instance UID), then the documents."""
    studies = []
    for s in _all(body, "StudyRequest"):
        uid = s.get("studyInstanceUID")
        if uid and uid not in studies:
            studies.append(uid)
    return [study(uid) for uid in studies] + document_objects(body)


def removal_objects(body: etree._Element) -> list[ParticipantObject]:
    """ITI-62: the entryUUIDs of the objects removed."""
    return [ParticipantObject(ref.get("id", ""), ID_REPORT_NUMBER, TYPE_SYSTEM, ROLE_REPORT)
            for ref in _all(body, "ObjectRef") if ref.get("id")]


def study(uid: str) -> ParticipantObject:
    return ParticipantObject(uid, ID_STUDY_INSTANCE_UID, TYPE_SYSTEM, ROLE_REPORT)


@dataclass(frozen=True, slots=True)
class Transaction:
    code: Code  # EventTypeCode
    event_id: Code
    action: str
    server_is_source: bool  # data flows from the server to the requestor (retrieve/export)
    objects: Callable[[etree._Element], list[ParticipantObject]]


SOAP_TRANSACTIONS: dict[str, Transaction] = {
    ACTION_ITI18: Transaction(transaction_code("ITI-18", "Registry Stored Query"), EV_QUERY, ACTION_EXECUTE, False,
                              query_objects),
    ACTION_ITI41: Transaction(transaction_code("ITI-41", "Provide and Register Document Set-b"), EV_IMPORT,
                              ACTION_CREATE, False, submission_objects),
    ACTION_ITI42: Transaction(transaction_code("ITI-42", "Register Document Set-b"), EV_IMPORT, ACTION_CREATE, False,
                              submission_objects),
    ACTION_ITI43: Transaction(transaction_code("ITI-43", "Retrieve Document Set"), EV_EXPORT, ACTION_READ, True,
                              document_objects),
    ACTION_ITI57: Transaction(transaction_code("ITI-57", "Update Document Set"), EV_IMPORT, ACTION_UPDATE, False,
                              submission_objects),
    ACTION_ITI62: Transaction(transaction_code("ITI-62", "Delete Document Set"), EV_PATIENT_RECORD, ACTION_DELETE,
                              False, removal_objects),
    ACTION_ITI86: Transaction(transaction_code("ITI-86", "Remove Documents"), EV_PATIENT_RECORD, ACTION_DELETE, False,
                              document_objects),
    ACTION_RAD69: Transaction(transaction_code("RAD-69", "Retrieve Imaging Document Set"), EV_EXPORT, ACTION_READ,
                              True, study_objects),
}
WADO_URI = transaction_code("RAD-55", "WADO Retrieve")
WADO_RS = transaction_code("RAD-107", "WADO-RS Retrieve")
CSTORE = Code("110104", "DCM", "DICOM Instances Transferred")


def outcome_of(status: int, body: bytes | None) -> str:
    """EventOutcomeIndicator from the HTTP status and, for SOAP, the RegistryResponse status."""
    if status >= 500:
        return OUTCOME_SERIOUS
    if status >= 400:
        return OUTCOME_MINOR
    if body and (b"ResponseStatusType:Failure" in body or b"ResponseStatusType:PartialSuccess" in body):
        return OUTCOME_MINOR
    return OUTCOME_SUCCESS


def participants(*, requestor_id: str, requestor_nap: str | None, server_id: str, server_nap: str | None,
                 server_is_source: bool, user: str | None = None,
                 user_role: Code | None = None) -> tuple[Participant, ...]:
    """The requesting system, the serving system (with their Source/Destination roles) and a human user
    (``user_role``: the user's role, e.g. the SNOMED CT role of an XUA assertion)."""
    req_role, srv_role = (ROLE_DESTINATION, ROLE_SOURCE) if server_is_source else (ROLE_SOURCE, ROLE_DESTINATION)
    out = [Participant(requestor_id or ANONYMOUS, True, req_role, requestor_nap),
           Participant(server_id, False, srv_role, server_nap)]
    if user:
        out.append(Participant(user, True, user_role, requestor_nap))
    return tuple(out)


def xua_user(identity: Any) -> tuple[str | None, Code | None]:
    """The human requestor of a validated XUA assertion (:class:`ihe.xua.XuaIdentity`), as ITI-40 asks the
    audit to name it: ``alias<user@issuer>`` (alias: the subject-id, user: the NameID); and the user's role."""
    if identity is None:
        return None, None
    alias = identity.subject_id or ""
    role = identity.role
    code = Code(role.code, role.code_system_name or "SNOMED_CT", role.display_name or role.code) if role else None
    return f"{alias}<{identity.name_id}@{identity.issuer}>", code


def soap_event(action: str, body: etree._Element, *, source_id: str, requestor_id: str | None,
               requestor_nap: str | None, server_id: str, server_nap: str | None, outcome: str,
               extra_objects: Iterable[ParticipantObject] = (), user: str | None = None,
               user_role: Code | None = None) -> AuditEvent | None:
    """The audit event of one SOAP transaction, or None for an action no IHE transaction names."""
    t = SOAP_TRANSACTIONS.get(action)
    if t is None:
        return None
    objects = _dedup([*t.objects(body), *extra_objects])
    return AuditEvent(t.event_id, t.action, outcome, source_id,
                      participants(requestor_id=requestor_id or ANONYMOUS, requestor_nap=requestor_nap,
                                   server_id=server_id, server_nap=server_nap, server_is_source=t.server_is_source,
                                   user=user, user_role=user_role),
                      tuple(objects), (t.code,))


def web_retrieve_event(path: str, query: dict[str, str], match: dict[str, str], *, source_id: str,
                       requestor_nap: str | None, server_id: str, server_nap: str | None, outcome: str,
                       extra_objects: Iterable[ParticipantObject] = (), user: str | None = None,
                       user_role: Code | None = None) -> AuditEvent | None:
    """WADO-URI (``studyUID`` parameter) and WADO-RS (``/studies/{study}``) retrievals; QIDO-RS searches
    (paths ending in ``/studies``, ``/series`` or ``/instances``) are Query events (RAD-129)."""
    if is_qido(path):
        return qido_event(path, query, match, source_id=source_id, requestor_nap=requestor_nap, server_id=server_id,
                          server_nap=server_nap, outcome=outcome, user=user, user_role=user_role)
    if "study" in match:
        code, uid = WADO_RS, match["study"]
    elif "studyUID" in query:
        code, uid = WADO_URI, query["studyUID"]
    else:
        return None
    objects = _dedup([study(uid), *extra_objects])
    return AuditEvent(EV_EXPORT, ACTION_READ, outcome, source_id,
                      participants(requestor_id=requestor_nap or ANONYMOUS, requestor_nap=requestor_nap,
                                   server_id=server_id, server_nap=server_nap, server_is_source=True, user=user,
                                   user_role=user_role),
                      tuple(objects), (code,))


QIDO_RS = transaction_code("RAD-129", "QIDO-RS Query")
QIDO_PATIENT_KEYS = ("PatientID", "00100020")


def is_qido(path: str) -> bool:
    """A QIDO-RS search resource (PS3.18 10.6): ``.../studies``, ``.../series`` or ``.../instances``."""
    return path.rstrip("/").rsplit("/", 1)[-1] in ("studies", "series", "instances")


def qido_event(path: str, query: dict[str, str], match: dict[str, str], *, source_id: str,
               requestor_nap: str | None, server_id: str, server_nap: str | None, outcome: str,
               user: str | None = None, user_role: Code | None = None) -> AuditEvent:
    """A QIDO-RS search: Query (110112), Execute; the study it is confined to, the patient it names
    (``PatientID`` with ``IssuerOfPatientID`` when given) and the query itself (path and parameters)."""
    from urllib.parse import urlencode

    objects: list[ParticipantObject] = []
    if match.get("study"):
        objects.append(study(match["study"]))
    for key in QIDO_PATIENT_KEYS:
        if query.get(key):
            issuer = query.get("IssuerOfPatientID") or query.get("00100021")
            objects.append(patient(f"{query[key]}^^^{issuer}" if issuer else query[key]))
            break
    text = path + ("?" + urlencode(sorted(query.items())) if query else "")
    objects.append(ParticipantObject(path, QIDO_RS, TYPE_SYSTEM, ROLE_QUERY, query=text.encode("utf-8")))
    return AuditEvent(EV_QUERY, ACTION_EXECUTE, outcome, source_id,
                      participants(requestor_id=requestor_nap or ANONYMOUS, requestor_nap=requestor_nap,
                                   server_id=server_id, server_nap=server_nap, server_is_source=False, user=user,
                                   user_role=user_role),
                      tuple(_dedup(objects)), (QIDO_RS,))


def cstore_event(*, calling_ae: str, peer: str | None, called_ae: str, server_nap: str | None, source_id: str,
                 studies: dict[str, str | None], count: int, failures: int = 0) -> AuditEvent:
    """C-STORE ingest of one association: DICOM Instances Transferred, Create, per study and patient."""
    objects: list[ParticipantObject] = []
    for uid, pid in studies.items():
        objects.append(study(uid))
        if pid:
            objects.append(patient(pid))
    outcome = OUTCOME_SUCCESS if not failures else (OUTCOME_MINOR if count else OUTCOME_SERIOUS)
    return AuditEvent(EV_INSTANCES_TRANSFERRED, ACTION_CREATE, outcome, source_id,
                      participants(requestor_id=calling_ae, requestor_nap=peer, server_id=called_ae,
                                   server_nap=server_nap, server_is_source=False),
                      tuple(_dedup(objects)), outcome_description=f"{count} instances stored, {failures} refused"
                      if failures else None)


def hl7_event(*, message_code: str, trigger: str, control_id: str, patients: list[str], query: bytes | None,
              sender: str, peer: str | None, receiver: str, server_nap: str | None, source_id: str,
              ack_code: str) -> AuditEvent | None:
    """ITI-8 Patient Identity Feed (Patient Record) and ITI-9 PIX Query (Query)."""
    outcome = {"AA": OUTCOME_SUCCESS, "CA": OUTCOME_SUCCESS, "AE": OUTCOME_MINOR, "CE": OUTCOME_MINOR}.get(
        ack_code, OUTCOME_SERIOUS if ack_code in ("AR", "CR") else OUTCOME_MAJOR)
    detail = (("MSH-10", control_id.encode()),)
    objects = [ParticipantObject(p, patient(p).id_type, patient(p).type_code, patient(p).role, details=detail)
               for p in patients]
    if message_code == "QBP":
        code, event_id, action = transaction_code("ITI-9", "PIX Query"), EV_QUERY, ACTION_EXECUTE
        objects.append(ParticipantObject(control_id, code, TYPE_SYSTEM, ROLE_QUERY, query=query or b"",
                                         details=detail))
    elif message_code == "ADT":
        code, event_id = transaction_code("ITI-8", "Patient Identity Feed"), EV_PATIENT_RECORD
        action = ACTION_CREATE if trigger in ("A01", "A04", "A05") else ACTION_UPDATE
    else:
        return None
    return AuditEvent(event_id, action, outcome, source_id,
                      participants(requestor_id=sender, requestor_nap=peer, server_id=receiver,
                                   server_nap=server_nap, server_is_source=False),
                      tuple(objects), (code,))


def _dedup(objects: list[ParticipantObject]) -> list[ParticipantObject]:
    seen: set[tuple[str, str, str | None]] = set()
    out = []
    for o in objects:
        key = (o.object_id, o.id_type.code, o.role)
        if key not in seen:
            seen.add(key)
            out.append(o)
    return out


def user_authentication_event(*, login: bool, user: str, user_nap: str | None, node: str, node_nap: str | None,
                              source_id: str, success: bool, reason: str | None = None) -> AuditEvent:
    """Portal sign-in / sign-out (PS3.15 A.5.3.11 User Authentication, 110122 Login / 110123 Logout)."""
    kind = Code("110122", "DCM", "Login") if login else Code("110123", "DCM", "Logout")
    return AuditEvent(EV_USER_AUTHENTICATION, ACTION_EXECUTE, OUTCOME_SUCCESS if success else OUTCOME_MINOR,
                      source_id, (Participant(user, True, None, user_nap), Participant(node, False, None, node_nap)),
                      (), (kind,), outcome_description=reason)


def security_alert_event(*, alert: Code, reason: str, requestor: str | None, requestor_nap: str | None, node: str,
                         node_nap: str | None, source_id: str, serious: bool = False) -> AuditEvent:
    """A security alert, e.g. a refused certificate or assertion (PS3.15 A.5.3.12 Security Alert).

    ``alert`` is one of the DCM alert types, e.g. :data:`ALERT_NODE_AUTHENTICATION` or
    :data:`ALERT_USE_OF_RESTRICTED_FUNCTION`; ``reason`` says what was refused and why.
    """
    return AuditEvent(EV_SECURITY_ALERT, ACTION_EXECUTE, OUTCOME_SERIOUS if serious else OUTCOME_MINOR, source_id,
                      (Participant(requestor or requestor_nap or "unknown", True, None, requestor_nap),
                       Participant(node, False, None, node_nap)),
                      (), (alert,), outcome_description=reason)


ALERT_NODE_AUTHENTICATION = Code("110126", "DCM", "Node Authentication")
ALERT_USE_OF_RESTRICTED_FUNCTION = Code("110132", "DCM", "Use of Restricted Function")
ALERT_SECURITY_CONFIGURATION = Code("110129", "DCM", "Security Configuration")


@dataclass(frozen=True, slots=True)
class ClientTransaction:
    code: Code
    event_id: Code
    action: str
    client_is_source: bool  # data flows from the client (query, export) rather than to it (retrieve, import)
    objects: Callable[[etree._Element], list[ParticipantObject]]


# The requesting actor's own audit record (ITI TF-2 per transaction, "Security Considerations"): the
# Document Consumer's Query / Import, the Document Source's and Repository's Export, the Imaging
# Document Consumer's Import.
CLIENT_TRANSACTIONS: dict[str, ClientTransaction] = {
    ACTION_ITI18: ClientTransaction(transaction_code("ITI-18", "Registry Stored Query"), EV_QUERY, ACTION_EXECUTE,
                                    True, query_objects),
    ACTION_ITI41: ClientTransaction(transaction_code("ITI-41", "Provide and Register Document Set-b"), EV_EXPORT,
                                    ACTION_READ, True, submission_objects),
    ACTION_ITI42: ClientTransaction(transaction_code("ITI-42", "Register Document Set-b"), EV_EXPORT, ACTION_READ,
                                    True, submission_objects),
    ACTION_ITI43: ClientTransaction(transaction_code("ITI-43", "Retrieve Document Set"), EV_IMPORT, ACTION_CREATE,
                                    False, document_objects),
    ACTION_ITI57: ClientTransaction(transaction_code("ITI-57", "Update Document Set"), EV_PATIENT_RECORD,
                                    ACTION_UPDATE, True, submission_objects),
    ACTION_RAD69: ClientTransaction(transaction_code("RAD-69", "Retrieve Imaging Document Set"), EV_IMPORT,
                                    ACTION_CREATE, False, study_objects),
}
RAD68 = transaction_code("RAD-68", "Provide and Register Imaging Document Set - MTOM/XOP")


def client_soap_event(action: str, body: etree._Element, *, source_id: str, client_id: str, client_nap: str | None,
                      server_id: str, server_nap: str | None, outcome: str, user: str | None = None,
                      user_role: Code | None = None, event_type: Code | None = None,
                      extra_objects: Iterable[ParticipantObject] = ()) -> AuditEvent | None:
    """The audit event the *requesting* actor records for one SOAP transaction it made, or None for an
    action it need not audit. ``event_type`` renames the transaction (an imaging source's ITI-41 is RAD-68)."""
    t = CLIENT_TRANSACTIONS.get(action)
    if t is None:
        return None
    objects = _dedup([*t.objects(body), *extra_objects])
    return AuditEvent(t.event_id, t.action, outcome, source_id,
                      participants(requestor_id=client_id, requestor_nap=client_nap, server_id=server_id,
                                   server_nap=server_nap, server_is_source=not t.client_is_source, user=user,
                                   user_role=user_role),
                      tuple(objects), (event_type or t.code,))


def web_client_event(path: str, query: dict[str, str], match: dict[str, str], *, source_id: str, client_id: str,
                     client_nap: str | None, server_id: str, server_nap: str | None, outcome: str,
                     user: str | None = None, user_role: Code | None = None,
                     extra_objects: Iterable[ParticipantObject] = ()) -> AuditEvent | None:
    """The requesting side of a DICOMweb request (a proxy or viewer back end): QIDO-RS is a Query it made,
    WADO-RS an Import of the study's data."""
    if is_qido(path):
        event = qido_event(path, query, match, source_id=source_id, requestor_nap=client_nap, server_id=server_id,
                           server_nap=server_nap, outcome=outcome, user=user, user_role=user_role)
        objects = _dedup([*event.objects, *extra_objects])
        return AuditEvent(event.event_id, event.action, outcome, source_id,
                          participants(requestor_id=client_id, requestor_nap=client_nap, server_id=server_id,
                                       server_nap=server_nap, server_is_source=False, user=user, user_role=user_role),
                          tuple(objects), event.event_types)
    if not match.get("study"):
        return None
    return AuditEvent(EV_IMPORT, ACTION_CREATE, outcome, source_id,
                      participants(requestor_id=client_id, requestor_nap=client_nap, server_id=server_id,
                                   server_nap=server_nap, server_is_source=True, user=user, user_role=user_role),
                      tuple(_dedup([study(match["study"]), *extra_objects])), (WADO_RS,))


ALERT_OBJECT_URI = Code("12", "RFC-3881", "URI")
ROLE_SECURITY_RESOURCE = "13"


def xua_alert_event(*, reason: str, code: str, endpoint: str, remote: str | None, issuer: str | None,
                    subject: str | None, node: str, node_nap: str | None, source_id: str) -> AuditEvent:
    """A refused XUA assertion: a Security Alert naming the claimed user and issuer, the endpoint and why.
    An untrusted or bad signature (WS-Security FailedAuthentication) is a Node Authentication alert and a
    serious failure; any other refusal (expired, wrong audience, missing attributes) a Use of Restricted
    Function by someone not shown to be entitled to it."""
    failed_authentication = code.endswith("}FailedAuthentication")
    alert = ALERT_NODE_AUTHENTICATION if failed_authentication else ALERT_USE_OF_RESTRICTED_FUNCTION
    claimed = f"{subject}@{issuer}" if subject and issuer else (subject or issuer)
    event = security_alert_event(alert=alert, reason=f"XUA assertion refused: {reason}", requestor=claimed,
                                 requestor_nap=remote, node=node, node_nap=node_nap, source_id=source_id,
                                 serious=failed_authentication)
    resource = ParticipantObject(endpoint, ALERT_OBJECT_URI, TYPE_SYSTEM, ROLE_SECURITY_RESOURCE,
                                 details=(("Alert Description", reason.encode("utf-8")),
                                          ("WS-Security fault", code.encode("utf-8"))))
    return AuditEvent(event.event_id, event.action, event.outcome, event.source_id, event.participants,
                      (resource,), event.event_types, outcome_description=event.outcome_description)
