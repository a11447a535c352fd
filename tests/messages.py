"""Realistic test messages, shaped like the NIST XDS toolkit's (an independent Document Source's).

Everything here is written as XML text templates, NOT through :mod:`ihe.metadata.ebrim`, so
tests that read these messages with our own reader are not circular. The shapes follow the
NIST toolkit captures in ``shared/reference/messages`` (symbolic ids such as ``Document01``,
the SubmissionSet/Folder classification as a top-level sibling of the RegistryPackage, author
classifications with ``nodeRepresentation=""``, Name/Description LocalizedStrings).

Main entry points:

- :func:`submit_objects_request` -> :class:`BuiltSubmission` (``.xml`` is an lcm:SubmitObjectsRequest)
- :func:`register_request` -> the same wrapped in a SOAP 1.2 envelope for ITI-42
- :func:`provide_and_register_request` -> an xdsb:ProvideAndRegisterDocumentSetRequest (ITI-41, inline)
- :func:`soap_envelope`, :func:`stored_query_request`, :func:`new_oid`, :func:`patient_cx`,
  :func:`quoted`, :func:`in_list`
- :func:`reference_schema`: a published XSD from ``shared/reference/xsd`` beside the clone (as CI has it)
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape

from tests.shared import missing_message, reference_dir

# Literal namespace strings on purpose (no import from the code under test).
SOAP12_NS = "http://www.w3.org/2003/05/soap-envelope"
WSA_NS = "http://www.w3.org/2005/08/addressing"
RIM_NS = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
LCM_NS = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
QUERY_NS = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XDSB_NS = "urn:ihe:iti:xds-b:2007"

ACTION_ITI42 = "urn:ihe:iti:2007:RegisterDocumentSet-b"
ACTION_ITI41 = "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b"
ACTION_ITI18 = "urn:ihe:iti:2007:RegistryStoredQuery"
WSA_ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"

STABLE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
ON_DEMAND = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
OT_CLASSIFICATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
OT_EXTERNAL_IDENTIFIER = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"
OT_REGISTRY_PACKAGE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage"
OT_ASSOCIATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association"
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
FOLDER_NODE = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"

# Classification / identification schemes (ITI TF-3 4.2.5), spelled out literally here.
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY_CODE = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_EVENT_CODE = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_HCFT_CODE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING_CODE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE_CODE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"
FOL_CODE_LIST = "urn:uuid:1ba97051-7806-41a8-a48b-8fce7af683c5"
FOL_PATIENT_ID = "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a"
FOL_UNIQUE_ID = "urn:uuid:75df8f67-9973-4fbe-a900-df66cefecc5a"

RELATIONSHIP_TYPES = {
    "RPLC": "urn:ihe:iti:2007:AssociationType:RPLC",
    "APND": "urn:ihe:iti:2007:AssociationType:APND",
    "XFRM": "urn:ihe:iti:2007:AssociationType:XFRM",
    "XFRM_RPLC": "urn:ihe:iti:2007:AssociationType:XFRM_RPLC",
    "signs": "urn:ihe:iti:2007:AssociationType:signs",
    "IsSnapshotOf": "urn:ihe:iti:2010:AssociationType:IsSnapshotOf",
}

#: The assigning authority used by default for test patients (an affinity domain OID).
TEST_AUTHORITY_OID = "1.3.6.1.4.1.21367.13.20.1000"
#: Default repositoryUniqueId in ITI-42 requests (the repository registers on the source's behalf).
TEST_REPOSITORY_UNIQUE_ID = "1.3.6.1.4.1.21367.2010.1.2.1125"
#: Default SubmissionSet sourceId.
TEST_SOURCE_ID = "1.3.6.1.4.1.21367.2009.1.2.1"

# Names of the attributes that ``omit_document`` / ``omit_submission_set`` / ``omit_folder`` accept.
DOCUMENT_ATTRIBUTES = frozenset({
    "creationTime", "hash", "size", "languageCode", "legalAuthenticator", "serviceStartTime",
    "serviceStopTime", "sourcePatientId", "sourcePatientInfo", "repositoryUniqueId", "referenceIdList",
    "title", "comments", "author", "classCode", "confidentialityCode", "eventCodeList", "formatCode",
    "healthcareFacilityTypeCode", "practiceSettingCode", "typeCode", "patientId", "uniqueId", "mimeType",
    "objectType",
})
SUBMISSION_SET_ATTRIBUTES = frozenset({
    "submissionTime", "intendedRecipient", "title", "comments", "author", "contentTypeCode",
    "uniqueId", "sourceId", "patientId", "classification",
})
FOLDER_ATTRIBUTES = frozenset({"title", "comments", "codeList", "uniqueId", "patientId", "classification"})

_OID_ROOT = "1.3.6.1.4.1.21367.2024.99"
_oid_counter = itertools.count(1)


# --- small helpers ------------------------------------------------------------------------------


def new_oid() -> str:
    """A fresh OID (globally unique in practice: time, process-local counter, random part)."""
    return f"{_OID_ROOT}.{time.time_ns() // 1000}.{next(_oid_counter)}.{uuid.uuid4().int % 10**9}"


def new_uuid() -> str:
    """A fresh ``urn:uuid:`` (for pre-assigned entryUUIDs)."""
    return f"urn:uuid:{uuid.uuid4()}"


def patient_cx(id: str, oid: str = TEST_AUTHORITY_OID) -> str:
    """The XDS patient id form ``id^^^&oid&ISO``."""
    return f"{id}^^^&{oid}&ISO"


def new_patient_id(oid: str = TEST_AUTHORITY_OID) -> str:
    """A fresh patient CX in ``oid``."""
    return patient_cx(f"P{uuid.uuid4().hex[:12].upper()}", oid)


def quoted(value: str) -> str:
    """A stored query string parameter value: ``'value'`` (single quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def in_list(*values: str) -> str:
    """A stored query multi-valued parameter value: ``('a','b')``."""
    return "(" + ",".join(quoted(v) for v in values) + ")"


def _a(value: object) -> str:
    """Escape for an attribute value in double quotes."""
    return escape(str(value), quote=True)


def _t(value: object) -> str:
    return escape(str(value), quote=False)


def _strip_declaration(xml: bytes) -> bytes:
    return re.sub(rb"^\s*<\?xml[^>]*\?>\s*", b"", xml)


def _slot(name: str, values: Iterable[str]) -> str:
    vals = "".join(f"<rim:Value>{_t(v)}</rim:Value>" for v in values)
    return f'<rim:Slot name="{_a(name)}"><rim:ValueList>{vals}</rim:ValueList></rim:Slot>'


def _name(tag: str, value: str | None) -> str:
    if value is None:
        return ""
    return f'<rim:{tag}><rim:LocalizedString value="{_a(value)}"/></rim:{tag}>'


def _code(cid: str, owner: str, scheme: str, code: Code) -> str:
    return (
        f'<rim:Classification id="{_a(cid)}" classifiedObject="{_a(owner)}" classificationScheme="{scheme}"'
        f' nodeRepresentation="{_a(code.code)}" objectType="{OT_CLASSIFICATION}">'
        f"{_slot('codingScheme', [code.scheme])}{_name('Name', code.display)}</rim:Classification>"
    )


def _author(cid: str, owner: str, scheme: str, author: TestAuthor) -> str:
    slots = ""
    if author.person:
        slots += _slot("authorPerson", [author.person])
    if author.institutions:
        slots += _slot("authorInstitution", author.institutions)
    if author.roles:
        slots += _slot("authorRole", author.roles)
    if author.specialties:
        slots += _slot("authorSpecialty", author.specialties)
    if author.telecoms:
        slots += _slot("authorTelecommunication", author.telecoms)
    return (
        f'<rim:Classification id="{_a(cid)}" classifiedObject="{_a(owner)}" classificationScheme="{scheme}"'
        f' nodeRepresentation="" objectType="{OT_CLASSIFICATION}">{slots}</rim:Classification>'
    )


def _ext_id(eid: str, owner: str, scheme: str, value: str, name: str) -> str:
    return (
        f'<rim:ExternalIdentifier id="{_a(eid)}" registryObject="{_a(owner)}" identificationScheme="{scheme}"'
        f' value="{_a(value)}" objectType="{OT_EXTERNAL_IDENTIFIER}">{_name("Name", name)}</rim:ExternalIdentifier>'
    )


def _node_classification(cid: str, owner: str, node: str) -> str:
    return (
        f'<rim:Classification id="{_a(cid)}" classifiedObject="{_a(owner)}" classificationNode="{node}"'
        f' objectType="{OT_CLASSIFICATION}"/>'
    )


def _association(aid: str, atype: str, source: str, target: str, slots: Mapping[str, Sequence[str]] = {}) -> str:
    body = "".join(_slot(k, v) for k, v in slots.items())
    return (
        f'<rim:Association id="{_a(aid)}" associationType="{_a(atype)}" sourceObject="{_a(source)}"'
        f' targetObject="{_a(target)}" objectType="{OT_ASSOCIATION}">{body}</rim:Association>'
    )


# --- test values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Code:
    code: str
    scheme: str
    display: str | None = None

    @property
    def key(self) -> str:
        """The ``code^^^scheme`` form of stored query parameters."""
        return f"{self.code}^^^{self.scheme}"


@dataclass(frozen=True, slots=True)
class TestAuthor:
    person: str | None = None
    institutions: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    specialties: tuple[str, ...] = ()
    telecoms: tuple[str, ...] = ()


# Realistic defaults (radiology report / imaging study, LOINC and HL7 vocabularies).
CLASS_CODE = Code("18748-4", "2.16.840.1.113883.6.1", "Diagnostic imaging study")
TYPE_CODE = Code("18782-3", "2.16.840.1.113883.6.1", "Radiology Study observation (narrative)")
FORMAT_CODE = Code("urn:ihe:rad:TEXT", "1.3.6.1.4.1.19376.1.2.3", "Radiology report text")
HCFT_CODE = Code("22232009", "2.16.840.1.113883.6.96", "Hospital")
PRACTICE_SETTING_CODE = Code("394914008", "2.16.840.1.113883.6.96", "Radiology")
CONFIDENTIALITY_CODE = Code("N", "2.16.840.1.113883.5.25", "normal")
EVENT_CODES = (
    Code("CT", "1.2.840.10008.2.16.4", "Computed Tomography"),
    Code("T-D3000", "SNOMED-RT", "Chest"),
)
CONTENT_TYPE_CODE = Code("18748-4", "2.16.840.1.113883.6.1", "Diagnostic imaging study")
FOLDER_CODE = Code("ImagingEpisode", "1.3.6.1.4.1.21367.100.1", "Imaging episode")
DOCUMENT_AUTHOR = TestAuthor(
    person="^Smitty^Gerald^^^",
    institutions=("Cleveland Clinic^^^^^^^^^1.2.3.4.5.6.7.8.9.1789.45", "Parma Community"),
    roles=("Attending",),
    specialties=("Radiology",),
    telecoms=("^^Internet^gerald.smitty@example.org",),
)
SUBMISSION_SET_AUTHOR = TestAuthor(
    person="^Dopplemeyer^Sherry^^^",
    institutions=("Cleveland Clinic", "Berea Community"),
    roles=("Primary Surgeon",),
    specialties=("Orthopedic",),
)
CREATION_TIME = "20240105083000"
SERVICE_START_TIME = "200401050800"
SERVICE_STOP_TIME = "200401050830"
SOURCE_PATIENT_INFO = (
    "PID-3|pid1^^^&1.2.3&ISO",
    "PID-5|Doe^John^^^",
    "PID-7|19560527",
    "PID-8|M",
    "PID-11|100 Main St^^Metropolis^Il^44130^USA",
)


# --- SubmitObjectsRequest -----------------------------------------------------------------------


@dataclass(slots=True)
class BuiltSubmission:
    """A built SubmitObjectsRequest and what tests need to assert on it.

    Ids are as sent (symbolic like ``Document01`` unless pre-assigned ``urn:uuid:`` ids were asked for).
    """

    xml: bytes
    patient_id: str
    submission_set_id: str
    submission_set_unique_id: str
    source_id: str
    submission_time: str
    document_ids: list[str]
    document_unique_ids: list[str]
    document_hashes: list[str | None]
    document_sizes: list[int | None]
    repository_unique_id: str | None
    folder_id: str | None = None
    folder_unique_id: str | None = None
    #: id -> (associationType, sourceObject, targetObject) for every Association in the message.
    associations: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    #: Document contents by document id (ITI-41 builders, or when ``contents`` was given).
    contents: dict[str, bytes] = field(default_factory=dict)

    @property
    def document_id(self) -> str:
        return self.document_ids[0]

    @property
    def document_unique_id(self) -> str:
        return self.document_unique_ids[0]


def _relationship_type(value: str) -> str:
    return RELATIONSHIP_TYPES.get(value, value)


def _listify(value, n: int, what: str) -> list:
    if value is None:
        return [None] * n
    if isinstance(value, (str, bytes, int)):
        value = [value]
    value = list(value)
    if len(value) != n:
        raise ValueError(f"{what}: expected {n} values, got {len(value)}")
    return value


def submit_objects_request(
    patient_id: str,
    *,
    documents: int = 1,
    folder: bool = False,
    use_uuids: bool = False,
    document_ids: Sequence[str] | None = None,
    submission_set_id: str | None = None,
    folder_id: str | None = None,
    document_unique_ids: Sequence[str] | None = None,
    submission_set_unique_id: str | None = None,
    folder_unique_id: str | None = None,
    source_id: str = TEST_SOURCE_ID,
    submission_time: str | None = None,
    hashes: Sequence[str | None] | None = None,
    sizes: Sequence[int | None] | None = None,
    contents: Sequence[bytes] | None = None,
    repository_unique_id: str | None = TEST_REPOSITORY_UNIQUE_ID,
    mime_type: str = "text/plain",
    on_demand: bool = False,
    title: str = "Radiology report",
    comments: str | None = "Report of a chest CT",
    document_patient_id: str | None = None,
    folder_patient_id: str | None = None,
    source_patient_id: str | None = None,
    class_code: Code = CLASS_CODE,
    type_code: Code = TYPE_CODE,
    format_code: Code = FORMAT_CODE,
    healthcare_facility_type_code: Code = HCFT_CODE,
    practice_setting_code: Code = PRACTICE_SETTING_CODE,
    confidentiality_codes: Sequence[Code] = (CONFIDENTIALITY_CODE,),
    event_codes: Sequence[Code] = EVENT_CODES,
    content_type_code: Code = CONTENT_TYPE_CODE,
    folder_codes: Sequence[Code] = (FOLDER_CODE,),
    authors: Sequence[TestAuthor] = (DOCUMENT_AUTHOR,),
    submission_set_authors: Sequence[TestAuthor] = (SUBMISSION_SET_AUTHOR,),
    creation_time: str = CREATION_TIME,
    service_start_time: str | None = SERVICE_START_TIME,
    service_stop_time: str | None = SERVICE_STOP_TIME,
    language_code: str = "en-US",
    legal_authenticator: str | None = "^Welby^Marcus^^^Dr^MD",
    reference_ids: Sequence[str] = (),
    intended_recipients: Sequence[str] = (),
    replaces: str | None = None,
    relationship: str = "RPLC",
    existing_folder: str | None = None,
    extra_slots: Mapping[str, Sequence[str]] | None = None,
    submission_set_extra_slots: Mapping[str, Sequence[str]] | None = None,
    folder_extra_slots: Mapping[str, Sequence[str]] | None = None,
    omit_document: Iterable[str] = (),
    omit_submission_set: Iterable[str] = (),
    omit_folder: Iterable[str] = (),
    nested_classification: bool = False,
    submission_set_status: str = "Original",
) -> BuiltSubmission:
    """An ``lcm:SubmitObjectsRequest`` as a Document Source / Repository sends it in ITI-42.

    - ``documents`` stable (or ``on_demand``) DocumentEntries with every required attribute,
      ids ``Document01``.. (or fresh ``urn:uuid:`` ids with ``use_uuids``, or ``document_ids``);
      each with a SubmissionSet->Document HasMember (SubmissionSetStatus=Original).
    - ``folder``: a new Folder, SS->Folder, Folder->Document HasMember for every document and
      SS->(Folder->Document) HasMember.
    - ``replaces``: the entryUUID of an existing DocumentEntry; the FIRST new document gets a
      ``relationship`` association (RPLC, APND, XFRM, XFRM_RPLC, signs, or a full URN) to it.
    - ``existing_folder``: the entryUUID of an existing Folder; every new document is added to it
      (existingFolder->Document HasMember, SS->that association HasMember).
    - ``hashes`` / ``sizes``: per document; default is the SHA-1 and size of ``contents`` when given,
      else of a generated text. ``document_unique_ids``: per document (fresh OIDs by default).
    - ``extra_slots``: additional Slots on every DocumentEntry (``submission_set_extra_slots``,
      ``folder_extra_slots`` likewise).
    - ``omit_document`` / ``omit_submission_set`` / ``omit_folder``: attribute names (see
      :data:`DOCUMENT_ATTRIBUTES` ...) left out, for validation tests; ``classification`` drops the
      SubmissionSet/Folder node classification.
    - ``nested_classification``: put the SubmissionSet/Folder classification inside the package
      instead of as a top-level sibling (the NIST toolkit's form, the default).
    """
    n = documents
    omit_d, omit_s, omit_f = set(omit_document), set(omit_submission_set), set(omit_folder)
    for given, allowed, what in (
        (omit_d, DOCUMENT_ATTRIBUTES, "omit_document"),
        (omit_s, SUBMISSION_SET_ATTRIBUTES, "omit_submission_set"),
        (omit_f, FOLDER_ATTRIBUTES, "omit_folder"),
    ):
        if given - allowed:
            raise ValueError(f"{what}: unknown attribute(s) {sorted(given - allowed)}")

    def ident(symbolic: str) -> str:
        return new_uuid() if use_uuids else symbolic

    doc_ids = list(document_ids) if document_ids is not None else [ident(f"Document{i:02d}") for i in range(1, n + 1)]
    if len(doc_ids) != n:
        raise ValueError(f"document_ids: expected {n} values, got {len(doc_ids)}")
    ss_id = submission_set_id or ident("SubmissionSet01")
    fol_id = (folder_id or ident("Folder01")) if folder else None
    uids = list(document_unique_ids) if document_unique_ids is not None else [new_oid() for _ in range(n)]
    if len(uids) != n:
        raise ValueError(f"document_unique_ids: expected {n} values, got {len(uids)}")
    ss_uid = submission_set_unique_id or new_oid()
    fol_uid = (folder_unique_id or new_oid()) if folder else None
    sub_time = submission_time or datetime.now(UTC).strftime("%Y%m%d%H%M%S")

    bodies = list(contents) if contents is not None else [
        f"Radiology report {i} for {patient_id}: no acute findings.\n".encode() for i in range(1, n + 1)
    ]
    if len(bodies) != n:
        raise ValueError(f"contents: expected {n} values, got {len(bodies)}")
    hash_list = _listify(hashes, n, "hashes") if hashes is not None else [hashlib.sha1(b).hexdigest() for b in bodies]
    size_list = _listify(sizes, n, "sizes") if sizes is not None else [len(b) for b in bodies]
    if on_demand:
        hash_list = [None] * n if hashes is None else hash_list
        size_list = [None] * n if sizes is None else size_list

    doc_pid = document_patient_id or patient_id
    src_pid = source_patient_id or patient_cx("89765a87b", "1.3.4.5")
    counter = itertools.count(1)

    def sub_id() -> str:
        return ident(f"id_{next(counter)}")

    parts: list[str] = []
    # --- DocumentEntries
    for i, did in enumerate(doc_ids):
        attrs = f'id="{_a(did)}"'
        if "objectType" not in omit_d:
            attrs += f' objectType="{ON_DEMAND if on_demand else STABLE}"'
        if "mimeType" not in omit_d:
            attrs += f' mimeType="{_a(mime_type)}"'
        slots: list[str] = []

        def add(name: str, values, _slots=slots) -> None:
            if name in omit_d or values is None:
                return
            _slots.append(_slot(name, values if isinstance(values, (list, tuple)) else [str(values)]))

        add("creationTime", creation_time)
        if hash_list[i] is not None:
            add("hash", hash_list[i])
        if size_list[i] is not None:
            add("size", str(size_list[i]))
        add("languageCode", language_code)
        add("legalAuthenticator", legal_authenticator)
        add("serviceStartTime", service_start_time)
        add("serviceStopTime", service_stop_time)
        add("sourcePatientId", src_pid)
        add("sourcePatientInfo", list(SOURCE_PATIENT_INFO))
        add("repositoryUniqueId", repository_unique_id)
        if reference_ids and "referenceIdList" not in omit_d:
            slots.append(_slot("urn:ihe:iti:xds:2013:referenceIdList", list(reference_ids)))
        for k, vs in (extra_slots or {}).items():
            slots.append(_slot(k, list(vs)))
        inner = "".join(slots)
        inner += "" if "title" in omit_d else _name("Name", title if n == 1 else f"{title} {i + 1}")
        inner += "" if "comments" in omit_d or comments is None else _name("Description", comments)
        if "author" not in omit_d:
            inner += "".join(_author(sub_id(), did, DE_AUTHOR, a) for a in authors)
        for attr, scheme, codes in (
            ("classCode", DE_CLASS_CODE, [class_code]),
            ("confidentialityCode", DE_CONFIDENTIALITY_CODE, list(confidentiality_codes)),
            ("eventCodeList", DE_EVENT_CODE, list(event_codes)),
            ("formatCode", DE_FORMAT_CODE, [format_code]),
            ("healthcareFacilityTypeCode", DE_HCFT_CODE, [healthcare_facility_type_code]),
            ("practiceSettingCode", DE_PRACTICE_SETTING_CODE, [practice_setting_code]),
            ("typeCode", DE_TYPE_CODE, [type_code]),
        ):
            if attr not in omit_d:
                inner += "".join(_code(sub_id(), did, scheme, c) for c in codes)
        if "patientId" not in omit_d:
            inner += _ext_id(sub_id(), did, DE_PATIENT_ID, doc_pid, "XDSDocumentEntry.patientId")
        if "uniqueId" not in omit_d:
            inner += _ext_id(sub_id(), did, DE_UNIQUE_ID, uids[i], "XDSDocumentEntry.uniqueId")
        parts.append(f"<rim:ExtrinsicObject {attrs}>{inner}</rim:ExtrinsicObject>")

    # --- SubmissionSet
    ss_inner = "" if "submissionTime" in omit_s else _slot("submissionTime", [sub_time])
    if intended_recipients and "intendedRecipient" not in omit_s:
        ss_inner += _slot("intendedRecipient", list(intended_recipients))
    for k, vs in (submission_set_extra_slots or {}).items():
        ss_inner += _slot(k, list(vs))
    ss_inner += "" if "title" in omit_s else _name("Name", "Imaging submission")
    ss_inner += "" if "comments" in omit_s else _name("Description", "Submission of a radiology report")
    ss_class = "" if "classification" in omit_s else _node_classification(sub_id(), ss_id, SUBMISSION_SET_NODE)
    if nested_classification:
        ss_inner += ss_class
    if "author" not in omit_s:
        ss_inner += "".join(_author(sub_id(), ss_id, SS_AUTHOR, a) for a in submission_set_authors)
    if "contentTypeCode" not in omit_s:
        ss_inner += _code(sub_id(), ss_id, SS_CONTENT_TYPE_CODE, content_type_code)
    if "uniqueId" not in omit_s:
        ss_inner += _ext_id(sub_id(), ss_id, SS_UNIQUE_ID, ss_uid, "XDSSubmissionSet.uniqueId")
    if "sourceId" not in omit_s:
        ss_inner += _ext_id(sub_id(), ss_id, SS_SOURCE_ID, source_id, "XDSSubmissionSet.sourceId")
    if "patientId" not in omit_s:
        ss_inner += _ext_id(sub_id(), ss_id, SS_PATIENT_ID, patient_id, "XDSSubmissionSet.patientId")
    parts.append(f'<rim:RegistryPackage id="{_a(ss_id)}" objectType="{OT_REGISTRY_PACKAGE}">{ss_inner}'
                 "</rim:RegistryPackage>")
    if not nested_classification and ss_class:
        parts.append(ss_class)

    # --- Folder
    if folder:
        assert fol_id is not None and fol_uid is not None
        f_inner = "".join(_slot(k, list(vs)) for k, vs in (folder_extra_slots or {}).items())
        f_inner += "" if "title" in omit_f else _name("Name", "Imaging episode")
        f_inner += "" if "comments" in omit_f else _name("Description", "All imaging of this episode")
        f_class = "" if "classification" in omit_f else _node_classification(sub_id(), fol_id, FOLDER_NODE)
        if nested_classification:
            f_inner += f_class
        if "codeList" not in omit_f:
            f_inner += "".join(_code(sub_id(), fol_id, FOL_CODE_LIST, c) for c in folder_codes)
        if "patientId" not in omit_f:
            f_inner += _ext_id(sub_id(), fol_id, FOL_PATIENT_ID, folder_patient_id or patient_id,
                               "XDSFolder.patientId")
        if "uniqueId" not in omit_f:
            f_inner += _ext_id(sub_id(), fol_id, FOL_UNIQUE_ID, fol_uid, "XDSFolder.uniqueId")
        parts.append(f'<rim:RegistryPackage id="{_a(fol_id)}" objectType="{OT_REGISTRY_PACKAGE}">{f_inner}'
                     "</rim:RegistryPackage>")
        if not nested_classification and f_class:
            parts.append(f_class)

    # --- Associations
    associations: dict[str, tuple[str, str, str]] = {}
    acount = itertools.count(1)

    def assoc(atype: str, source: str, target: str, slots: Mapping[str, Sequence[str]] = {}) -> str:
        aid = ident(f"Association{next(acount):02d}")
        associations[aid] = (atype, source, target)
        parts.append(_association(aid, atype, source, target, slots))
        return aid

    for did in doc_ids:
        assoc(HAS_MEMBER, ss_id, did, {"SubmissionSetStatus": [submission_set_status]})
    if folder:
        assoc(HAS_MEMBER, ss_id, fol_id)
        for did in doc_ids:
            fd = assoc(HAS_MEMBER, fol_id, did)
            assoc(HAS_MEMBER, ss_id, fd)
    if existing_folder:
        for did in doc_ids:
            fd = assoc(HAS_MEMBER, existing_folder, did)
            assoc(HAS_MEMBER, ss_id, fd)
    if replaces:
        assoc(_relationship_type(relationship), doc_ids[0], replaces)

    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<lcm:SubmitObjectsRequest xmlns:lcm="{LCM_NS}">'
        f'<rim:RegistryObjectList xmlns:rim="{RIM_NS}">{"".join(parts)}</rim:RegistryObjectList>'
        f"</lcm:SubmitObjectsRequest>"
    ).encode()
    return BuiltSubmission(
        xml=xml,
        patient_id=patient_id,
        submission_set_id=ss_id,
        submission_set_unique_id=ss_uid,
        source_id=source_id,
        submission_time=sub_time,
        document_ids=doc_ids,
        document_unique_ids=uids,
        document_hashes=hash_list,
        document_sizes=size_list,
        repository_unique_id=repository_unique_id,
        folder_id=fol_id,
        folder_unique_id=fol_uid,
        associations=associations,
        contents=dict(zip(doc_ids, bodies, strict=True)),
    )


# --- SOAP ---------------------------------------------------------------------------------------


def soap_envelope(
    action: str,
    body: bytes,
    message_id: str | None = None,
    *,
    to: str | None = "http://localhost/registry",
    extra_headers: bytes = b"",
) -> bytes:
    """A SOAP 1.2 envelope with WS-Addressing headers (Action mustUnderstand, MessageID, To,
    ReplyTo anonymous) around ``body`` (an XML payload; its XML declaration is dropped)."""
    mid = message_id or new_uuid()
    to_header = f'<wsa:To soapenv:mustUnderstand="true">{_t(to)}</wsa:To>' if to else ""
    head = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP12_NS}" xmlns:wsa="{WSA_NS}">'
        f"<soapenv:Header>"
        f'<wsa:Action soapenv:mustUnderstand="true">{_t(action)}</wsa:Action>'
        f"<wsa:MessageID>{_t(mid)}</wsa:MessageID>"
        f"{to_header}"
        f"<wsa:ReplyTo><wsa:Address>{WSA_ANONYMOUS}</wsa:Address></wsa:ReplyTo>"
    ).encode()
    return head + extra_headers + b"</soapenv:Header><soapenv:Body>" + _strip_declaration(body) + (
        b"</soapenv:Body></soapenv:Envelope>"
    )


def register_request(patient_id: str, *, message_id: str | None = None, **kwargs) -> tuple[bytes, BuiltSubmission]:
    """A complete ITI-42 SOAP request: ``(envelope bytes, BuiltSubmission)``; kwargs as
    :func:`submit_objects_request`."""
    built = submit_objects_request(patient_id, **kwargs)
    return soap_envelope(ACTION_ITI42, built.xml, message_id), built


def provide_and_register_request(patient_id: str, **kwargs) -> BuiltSubmission:
    """An ``xdsb:ProvideAndRegisterDocumentSetRequest`` (ITI-41) with the documents inline (base64).

    As a Document Source sends it: without repositoryUniqueId (the repository adds it), hash and
    size present (computed from the contents; pass ``hashes``/``sizes``/``omit_document`` to vary).
    ``.xml`` is the request element; wrap it with :func:`soap_envelope` (action :data:`ACTION_ITI41`).
    """
    kwargs.setdefault("repository_unique_id", None)
    built = submit_objects_request(patient_id, **kwargs)
    docs = "".join(
        f'<xdsb:Document id="{_a(did)}">{base64.b64encode(content).decode()}</xdsb:Document>'
        for did, content in built.contents.items()
    )
    built.xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<xdsb:ProvideAndRegisterDocumentSetRequest xmlns:xdsb="{XDSB_NS}">'
    ).encode() + _strip_declaration(built.xml) + docs.encode() + b"</xdsb:ProvideAndRegisterDocumentSetRequest>"
    return built


# --- Stored queries -----------------------------------------------------------------------------

# Stored query ids (ITI TF-2a 3.18.4.1.2.3.7).
FIND_DOCUMENTS = "urn:uuid:14d4debf-8f97-4251-9a74-a90016b0af0d"
FIND_SUBMISSION_SETS = "urn:uuid:f26abbcb-ac74-4422-8a30-edb644bbc1a9"
FIND_FOLDERS = "urn:uuid:958f3006-baad-4929-a4de-ff1114824431"
GET_ALL = "urn:uuid:10b545ea-725c-446d-9b95-8aeb444eddf3"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"
GET_FOLDERS = "urn:uuid:5737b14c-8a1a-4539-b659-e03a34a5e1e4"
GET_ASSOCIATIONS = "urn:uuid:a7ae438b-4bc2-4642-93e9-be891f7bb155"
GET_DOCUMENTS_AND_ASSOCIATIONS = "urn:uuid:bab9529a-4a10-40b3-a01f-f68a615d247a"
GET_SUBMISSION_SETS = "urn:uuid:51224314-5390-4169-9b91-b1980040715a"
GET_SUBMISSION_SET_AND_CONTENTS = "urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b83"
GET_FOLDER_AND_CONTENTS = "urn:uuid:b909a503-523d-4517-8acf-8e5834dfc4c7"
GET_FOLDERS_FOR_DOCUMENT = "urn:uuid:10cae35a-c7f9-4cf5-b61e-fc3278ffb578"
GET_RELATED_DOCUMENTS = "urn:uuid:d90e5407-b356-4d91-a89f-873917b4b0e6"
FIND_DOCUMENTS_BY_REFERENCE_ID = "urn:uuid:12941a89-e02e-4be5-967c-ce4bfc8fe492"


def stored_query_request(
    query_id: str,
    params: Mapping[str, str | Sequence[str] | Sequence[Sequence[str]]],
    return_type: str = "LeafClass",
    *,
    home_community_id: str | None = None,
) -> bytes:
    """A ``query:AdhocQueryRequest`` for the stored query ``query_id``.

    Each parameter value goes verbatim into ``rim:Value`` (format it yourself: :func:`quoted`,
    :func:`in_list`, or bare numbers/times). A ``str`` gives one Slot with one Value; a list of
    strings one Slot with several Values (an OR list split over Values); a list of lists one Slot
    per inner list, with the same name (AND semantics of repeated slots, e.g. $XDSDocumentEntryEventCodeList).
    """
    slots = []
    for name, value in params.items():
        if isinstance(value, str):
            groups = [[value]]
        elif value and not isinstance(value[0], str):
            groups = [list(g) for g in value]
        else:
            groups = [list(value)]  # type: ignore[arg-type]
        slots.extend(_slot(name, g) for g in groups)
    home = f' home="{_a(home_community_id)}"' if home_community_id else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<query:AdhocQueryRequest xmlns:query="{QUERY_NS}" xmlns:rim="{RIM_NS}">'
        f'<query:ResponseOption returnComposedObjects="true" returnType="{_a(return_type)}"/>'
        f'<rim:AdhocQuery id="{_a(query_id)}"{home}>{"".join(slots)}</rim:AdhocQuery>'
        f"</query:AdhocQueryRequest>"
    ).encode()


def stored_query_envelope(query_id: str, params, return_type: str = "LeafClass", **kwargs) -> bytes:
    """:func:`stored_query_request` in a SOAP envelope with the ITI-18 action."""
    return soap_envelope(ACTION_ITI18, stored_query_request(query_id, params, return_type), **kwargs)


# --- Published schemas --------------------------------------------------------------------------

#: Where the published XSDs are: $XDS_SHARED_DIR/reference/xsd, else shared/ beside the clone (as CI has it).
REFERENCE_XSD_DIR = reference_dir("xsd")
_schemas: dict[str, object] = {}


def reference_schema(name: str):
    """The published XML schema ``name`` (e.g. ``"lcm"``, ``"query"``, ``"rs"``,
    ``"XDS.b_DocumentRepository"``) as an ``lxml.etree.XMLSchema``, cached.

    Tests that call this are marked ``@pytest.mark.needs_shared("xsd")`` (deselected without the
    folder, see tests/shared.py); an unmarked one is skipped, saying what to set.
    Parsing is local only: no network, no entities; imports between the schemas are relative
    paths resolved beside each file.
    """
    if name not in _schemas:
        import pytest
        from lxml import etree

        path = REFERENCE_XSD_DIR / f"{name}.xsd"
        if not path.is_file():
            pytest.skip(f"{path.name}: tests that {missing_message(['xsd'])}; mark them needs_shared('xsd')")
        parser = etree.XMLParser(no_network=True, resolve_entities=False, load_dtd=False)
        _schemas[name] = etree.XMLSchema(etree.parse(str(path), parser))
    return _schemas[name]


def valid_nhs_number() -> str:
    """A random NHS number with a correct modulus 11 check digit (NHS Data Dictionary), written here
    independently of ihe.nhs, for tests that feed patients through ITI-8 (which refuses wrong ones)."""
    while True:
        digits = [random.randint(1, 9)] + [random.randint(0, 9) for _ in range(8)]
        check = 11 - sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True)) % 11
        check = 0 if check == 11 else check
        if check != 10:
            return "".join(map(str, digits)) + str(check)
