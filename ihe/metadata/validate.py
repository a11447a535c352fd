"""Validation of XDS submission metadata (ITI TF-3 4.1-4.3) over :mod:`ihe.metadata.model`.

Pure functions: each returns a list of :class:`~ihe.errors.RegistryError` (never raises), every
finding mapped to ONE IHE error code, with a codeContext that names the object (entryUUID and
uniqueId) and the attribute, and the object's entryUUID as location. The transaction handlers
decide what to do with the list (ITI-42 fails on any error; warnings travel in a Success).

Typical use in a Register Document Set-b handler::

    notes = validate_submission(package, code_list=registry.code_list)

Extra metadata (ITI TF-3 4.1.14: ``urn:`` slots XDS does not define) is legal and kept: the
registry stores it and returns it in query responses, so no XDSExtraMetadataNotSaved is due.

A Document Repository validating ITI-41 input passes ``require_repository_attributes=False``: a
Document Source may leave hash, size and repositoryUniqueId to the repository.

What this module cannot know is left to the registry, which checks against its database: that a
``urn:uuid:`` target of a relationship or of a Reference exists and is Approved, that the patient is
known, that uniqueIds are new.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ihe.errors import ErrorCode, RegistryError
from ihe.metadata import vocabulary as v
from ihe.metadata.codes import CodeList
from ihe.metadata.model import (
    Association,
    Author,
    Code,
    DocumentEntry,
    DocumentEntryType,
    Folder,
    Identifiable,
    RegistryObject,
    SubmissionPackage,
    SubmissionSet,
    is_valid_dtm,
)

METADATA_ERROR = ErrorCode.REGISTRY_METADATA_ERROR.value
PATIENT_ID_DOES_NOT_MATCH = ErrorCode.PATIENT_ID_DOES_NOT_MATCH.value

SUBMISSION_SET_STATUS_ORIGINAL = "Original"
SUBMISSION_SET_STATUS_REFERENCE = "Reference"

# --- formats (compiled once; [0-9] rather than \d, which also matches non-ASCII digits) ---------

_OID_RE = re.compile(r"[0-2](?:\.(?:0|[1-9][0-9]*))+")
OID_MAX_LENGTH = 64  # ITI TF-3: OIDs in XDS metadata are limited to 64 characters
DOCUMENT_UNIQUE_ID_MAX_LENGTH = 128  # OID plus optional ^extension
TITLE_MAX_LENGTH = 128
_HASH_RE = re.compile(r"[0-9a-fA-F]{40}")
_UUID_URN_RE = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_RESTRICTED_NAME = r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"  # RFC 6838 section 4.2
_MIME_RE = re.compile(rf"{_RESTRICTED_NAME}/{_RESTRICTED_NAME}")
_LANGUAGE_RE = re.compile(r"[A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*")  # RFC 3066 / RFC 5646 tag syntax
_CX_RE = re.compile(r"(?P<id>[^\s^&~|\\](?:[^^&~|\\]*[^\s^&~|\\])?)\^\^\^&(?P<oid>[^&^]*)&ISO")
_SOURCE_PATIENT_INFO_RE = re.compile(r"PID-[0-9]+\|.*", re.DOTALL)
_WHITESPACE_RE = re.compile(r"\s")

_STABLE = DocumentEntryType.STABLE.value
_ON_DEMAND = DocumentEntryType.ON_DEMAND.value
_DOCUMENT_ENTRY_TYPES = frozenset({_STABLE, _ON_DEMAND})
_HAS_MEMBER = v.HAS_MEMBER
_INTERNET_TYPES = frozenset({"Internet", "X.400"})

# Slot names the standard defines per object type (anything else is extra metadata, ITI TF-3 4.1.14
# in TF 8 numbering). Names not starting with "urn:" must be one of these.
DEFINED_SLOTS: dict[type, frozenset[str]] = {
    DocumentEntry: frozenset({
        "creationTime", "hash", "languageCode", "legalAuthenticator", "serviceStartTime", "serviceStopTime",
        "size", "sourcePatientId", "sourcePatientInfo", "URI", "repositoryUniqueId", "documentAvailability",
        "urn:ihe:iti:xds:2013:referenceIdList",
    }),
    SubmissionSet: frozenset({"submissionTime", "intendedRecipient"}),
    Folder: frozenset({"lastUpdateTime"}),
    Association: frozenset({
        "SubmissionSetStatus", "PreviousVersion", "OriginalStatus", "NewStatus", "AssociationPropagation",
    }),
}
#: ITI TF-3 4.1.14: the "urn:ihe:" namespace is IHE's own; a name in it that XDS does not define is
#: not extra metadata but an error (as the NIST registry simulator answers it).
IHE_SLOT_PREFIX = "urn:ihe:"
#: ebRIM 3.0 (rim.xsd): a Slot's name and each of its Values are LongName, at most 256 characters.
SLOT_NAME_MAX_LENGTH = 256
SLOT_VALUE_MAX_LENGTH = 256
_KIND = {DocumentEntry: "DocumentEntry", SubmissionSet: "SubmissionSet", Folder: "Folder", Association: "Association"}


# --- small pure predicates (public: the ebRIM reader and the repository reuse them) --------------


def is_oid(value: str | None) -> bool:
    """An ISO OID in dotted-decimal form (no leading zeros), at most 64 characters."""
    return bool(value) and len(value) <= OID_MAX_LENGTH and _OID_RE.fullmatch(value) is not None


def is_dtm(value: str | None) -> bool:
    """An HL7 DTM (year..second precision) with no surrounding whitespace."""
    return bool(value) and value.isascii() and value.strip() == value and is_valid_dtm(value)


def cx_problem(value: str) -> str | None:
    """Why ``value`` is not an XDS patient id ``id^^^&OID&ISO``, or None when it is one."""
    m = _CX_RE.fullmatch(value)
    if m is None:
        return "expected the form id^^^&OID&ISO (an id and an ISO OID assigning authority, nothing else)"
    if not is_oid(m["oid"]):
        return f"assigning authority '{m['oid']}' is not an OID"
    return None


def document_unique_id_problem(value: str) -> str | None:
    """Why ``value`` is not a DocumentEntry.uniqueId (OID[^extension], <= 128 chars), or None."""
    if len(value) > DOCUMENT_UNIQUE_ID_MAX_LENGTH:
        return f"is longer than {DOCUMENT_UNIQUE_ID_MAX_LENGTH} characters"
    root, sep, extension = value.partition("^")
    if not is_oid(root):
        return f"root '{root}' is not an OID (at most {OID_MAX_LENGTH} characters)"
    if sep and (not extension or "^" in extension or _WHITESPACE_RE.search(extension)):
        return "extension after '^' must be non-empty, without '^' or whitespace"
    return None


def xcn_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable XCN (authorPerson, legalAuthenticator), or None."""
    parts = value.split("^")
    if len(parts) > 23:
        return "has more than 23 components"
    family = parts[1].split("&", 1)[0] if len(parts) > 1 else ""
    if not parts[0].strip() and not family.strip():
        return "needs an id (component 1) or a family name (component 2)"
    if len(parts) > 8 and parts[8]:
        problem = _hd_problem(parts[8])
        if problem:
            return f"assigning authority (component 9) {problem}"
    return None


def xon_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable XON (authorInstitution), or None.

    ITI TF-3 allows only XON.1 (name), XON.6 (assigning authority, ``&OID&ISO``) and XON.10
    (organization identifier, an OID when XON.6 is absent).
    """
    parts = value.split("^")
    if len(parts) > 10:
        return "has more than 10 components"
    if not parts[0].strip():
        return "needs an organization name (component 1)"
    for i in (1, 2, 3, 4, 6, 7, 8):
        if i < len(parts) and parts[i]:
            return f"component {i + 1} is valued; only components 1, 6 and 10 may be"
    authority = parts[5] if len(parts) > 5 else ""
    identifier = parts[9] if len(parts) > 9 else ""
    if authority:
        problem = _hd_problem(authority, allow_namespace=False)
        if problem:
            return f"assigning authority (component 6) {problem}"
    elif identifier and not is_oid(identifier):
        return f"organization identifier (component 10) '{identifier}' is not an OID"
    return None


def xtn_problem(value: str) -> str | None:
    """Why ``value`` is not an acceptable XTN (authorTelecommunication), or None."""
    parts = value.split("^")
    equipment = parts[2] if len(parts) > 2 else ""
    if not equipment:
        return "needs a telecommunication equipment type (component 3), e.g. Internet or PH"
    if equipment in _INTERNET_TYPES:
        if len(parts) < 4 or not parts[3].strip():
            return f"equipment type {equipment} needs the address in component 4"
        if parts[1] not in ("", "NET"):
            return f"use code (component 2) '{parts[1]}' must be NET for an {equipment} address"
    elif not ((len(parts) > 6 and parts[6].strip()) or (len(parts) > 11 and parts[11].strip())):
        return f"equipment type {equipment} needs a local number (component 7) or unformatted number (component 12)"
    return None


def _hd_problem(value: str, *, allow_namespace: bool = True) -> str | None:
    sub = value.split("&")
    if len(sub) != 3 or sub[2] != "ISO" or not is_oid(sub[1]):
        return f"'{value}' must be &OID&ISO"
    if sub[0] and not allow_namespace:
        return f"'{value}' must not have a namespace id (expected &OID&ISO)"
    return None


# --- reporting -------------------------------------------------------------------------------------


def describe(obj: RegistryObject) -> str:
    """How codeContexts name an object: kind, entryUUID and (when known) uniqueId."""
    kind = _KIND.get(type(obj), type(obj).__name__)
    if isinstance(obj, Association):
        return f"Association {obj.entry_uuid} ({_short_type(obj.type)} {obj.source_uuid} -> {obj.target_uuid})"
    unique_id = getattr(obj, "unique_id", None)
    if unique_id:
        return f"{kind} {obj.entry_uuid} (uniqueId {unique_id})"
    return f"{kind} {obj.entry_uuid}"


def _short_type(association_type: str) -> str:
    return str(association_type).rsplit(":", 1)[-1]


class _Report:
    """Collects findings about one object, prefixing each with the object's description.

    The description is built only when there is something to report: valid objects cost nothing.
    """

    __slots__ = ("errors", "obj")

    def __init__(self, errors: list[RegistryError], obj: RegistryObject) -> None:
        self.errors = errors
        self.obj = obj

    def add(self, message: str, code: str = METADATA_ERROR) -> None:
        obj = self.obj
        self.errors.append(RegistryError(code, f"{describe(obj)}: {message}", obj.entry_uuid or None))


# --- per-attribute checks --------------------------------------------------------------------------


def _check_entry_uuid(r: _Report, entry_uuid: str) -> None:
    if not entry_uuid:
        r.add("entryUUID (the id attribute) is missing")
    elif entry_uuid.startswith("urn:uuid:"):
        if _UUID_URN_RE.fullmatch(entry_uuid) is None:
            r.add(f"entryUUID '{entry_uuid}' is not a valid urn:uuid")
    elif _WHITESPACE_RE.search(entry_uuid):
        r.add(f"entryUUID '{entry_uuid}' contains whitespace")


def _check_required(r: _Report, attribute: str, value: object) -> bool:
    """Report a missing required attribute; True when the value is present."""
    if value is None or value == "" or value == []:
        r.add(f"required attribute {attribute} is missing")
        return False
    return True


def _check_oid(r: _Report, attribute: str, value: str | None, *, required: bool = True) -> None:
    if value is None or value == "":
        if required:
            r.add(f"required attribute {attribute} is missing")
    elif not is_oid(value):
        r.add(f"{attribute} '{value}' is not an OID (dotted digits, no leading zeros, at most {OID_MAX_LENGTH} chars)")


def _check_dtm(r: _Report, attribute: str, value: str | None, *, required: bool = False) -> None:
    if value is None or value == "":
        if required:
            r.add(f"required attribute {attribute} is missing")
    elif not is_dtm(value):
        r.add(f"{attribute} '{value}' is not a valid DTM (YYYY[MM[DD[hh[mm[ss]]]]], UTC)")


def _check_patient(r: _Report, attribute: str, pid: Identifiable | None) -> None:
    if pid is None:
        r.add(f"required attribute {attribute} is missing")
        return
    cx = pid.to_cx()
    problem = cx_problem(cx)
    if problem:
        r.add(f"{attribute} '{cx}' is not a valid patient id: {problem}")


def _check_code(r: _Report, attribute: str, code: Code, code_list: CodeList | None, list_attribute: str) -> None:
    if not code.code or not code.code.strip():
        r.add(f"{attribute} has an empty code (nodeRepresentation)")
        return
    if not code.scheme or not code.scheme.strip():
        r.add(f"{attribute} '{code.code}' has no codingScheme")
        return
    if code.display_name is None or not (code.display_name.value or "").strip():
        r.add(f"{attribute} '{code.code}' (scheme {code.scheme}) has no display name (Name)")
    if code_list is not None and not code_list.allows(list_attribute, code):
        r.add(f"{attribute} '{code.code}' in scheme '{code.scheme}' is not in the affinity domain code list")


def _check_single_code(
    r: _Report, attribute: str, code: Code | None, code_list: CodeList | None, list_attribute: str | None = None
) -> None:
    if code is None:
        r.add(f"required attribute {attribute} is missing")
    else:
        _check_code(r, attribute, code, code_list, list_attribute or attribute)


def _check_authors(r: _Report, authors: Iterable[Author]) -> None:
    for n, author in enumerate(authors, start=1):
        which = f"author #{n}"
        if not author.person and not author.institutions and not author.telecoms:
            r.add(f"{which} has none of authorPerson, authorInstitution, authorTelecommunication")
        if author.person:
            problem = xcn_problem(author.person)
            if problem:
                r.add(f"{which} authorPerson '{author.person}' is not a valid XCN: {problem}")
        for value in author.institutions:
            problem = xon_problem(value)
            if problem:
                r.add(f"{which} authorInstitution '{value}' is not a valid XON: {problem}")
        for value in author.telecoms:
            problem = xtn_problem(value)
            if problem:
                r.add(f"{which} authorTelecommunication '{value}' is not a valid XTN: {problem}")
        for attribute, values in (("authorRole", author.roles), ("authorSpecialty", author.specialties)):
            if any(not value.strip() for value in values):
                r.add(f"{which} {attribute} has an empty value")


def _check_home_community(r: _Report, value: str | None) -> None:
    if value and not (value.startswith("urn:oid:") and is_oid(value[8:])):
        r.add(f"homeCommunityId '{value}' is not of the form urn:oid:<OID>")


# --- objects ---------------------------------------------------------------------------------------


def validate_document_entry(
    de: DocumentEntry,
    *,
    require_repository_attributes: bool = True,
    allow_on_demand: bool = False,
    code_list: CodeList | None = None,
) -> list[RegistryError]:
    """Attribute rules for one DocumentEntry (ITI TF-3 Table 4.3.1-3, 4.2.3.2).

    ``require_repository_attributes``: hash, size and repositoryUniqueId are required (ITI-42);
    False for ITI-41 input, where the repository computes/adds them (their format is still checked).
    ``allow_on_demand``: On-Demand entries are registered by ITI-61, never by ITI-41/ITI-42.
    """
    errors: list[RegistryError] = []
    r = _Report(errors, de)
    _check_entry_uuid(r, de.entry_uuid)

    if de.type is None:
        r.add("required attribute objectType is missing")
    elif de.type not in _DOCUMENT_ENTRY_TYPES:
        r.add(f"objectType '{de.type}' is not a DocumentEntry type")
    elif de.type == _ON_DEMAND and not allow_on_demand:
        r.add("objectType is On-Demand; only Stable DocumentEntries can be submitted here")

    if _check_required(r, "uniqueId", de.unique_id):
        problem = document_unique_id_problem(de.unique_id)
        if problem:
            r.add(f"uniqueId '{de.unique_id}' {problem}")
    _check_patient(r, "patientId", de.patient_id)
    _check_patient(r, "sourcePatientId", de.source_patient_id)
    if _check_required(r, "mimeType", de.mime_type) and _MIME_RE.fullmatch(de.mime_type) is None:
        r.add(f"mimeType '{de.mime_type}' is not a MIME type (type/subtype)")
    _check_dtm(r, "creationTime", de.creation_time, required=True)
    _check_dtm(r, "serviceStartTime", de.service_start_time)
    _check_dtm(r, "serviceStopTime", de.service_stop_time)
    if _check_required(r, "languageCode", de.language_code) and _LANGUAGE_RE.fullmatch(de.language_code) is None:
        r.add(f"languageCode '{de.language_code}' is not a language tag (RFC 5646, e.g. en-GB)")

    if de.hash is None or de.hash == "":
        if require_repository_attributes:
            r.add("required attribute hash is missing")
    elif _HASH_RE.fullmatch(de.hash) is None:
        r.add(f"hash '{de.hash}' is not a SHA-1 (40 hexadecimal characters)")
    if de.size is None:
        if require_repository_attributes:
            r.add("required attribute size is missing")
    elif isinstance(de.size, bool) or not isinstance(de.size, int) or de.size < 0:
        r.add(f"size '{de.size}' is not a non-negative integer")
    _check_oid(r, "repositoryUniqueId", de.repository_unique_id, required=require_repository_attributes)

    _check_single_code(r, "classCode", de.class_code, code_list)
    _check_single_code(r, "typeCode", de.type_code, code_list)
    _check_single_code(r, "formatCode", de.format_code, code_list)
    _check_single_code(r, "healthcareFacilityTypeCode", de.healthcare_facility_type_code, code_list)
    _check_single_code(r, "practiceSettingCode", de.practice_setting_code, code_list)
    if not de.confidentiality_codes:
        r.add("required attribute confidentialityCode is missing")
    for code in de.confidentiality_codes:
        _check_code(r, "confidentialityCode", code, code_list, "confidentialityCode")
    for code in de.event_codes:
        _check_code(r, "eventCodeList", code, code_list, "eventCodeList")

    _check_authors(r, de.authors)
    if de.legal_authenticator:
        problem = xcn_problem(de.legal_authenticator)
        if problem:
            r.add(f"legalAuthenticator '{de.legal_authenticator}' is not a valid XCN: {problem}")
    for value in de.source_patient_info:
        if _SOURCE_PATIENT_INFO_RE.fullmatch(value) is None:
            r.add(f"sourcePatientInfo value '{value}' is not of the form PID-<field>|<value>")
    if de.title is not None and len(de.title.value or "") > TITLE_MAX_LENGTH:
        r.add(f"title is longer than {TITLE_MAX_LENGTH} characters")
    for ref in de.reference_ids:
        parts = ref.value.split("^")
        if not parts[0].strip() or len(parts) < 5 or not parts[4].strip():
            r.add(f"referenceIdList value '{ref.value}' is not a CXi with an id and an identifier type (component 5)")
    _check_home_community(r, de.home_community_id)
    return errors


def validate_submission_set(ss: SubmissionSet, *, code_list: CodeList | None = None) -> list[RegistryError]:
    """Attribute rules for the SubmissionSet (ITI TF-3 4.2.3.3).

    author is R2 in XDS ("required if known"), so only its form is checked, as for intendedRecipient.
    """
    errors: list[RegistryError] = []
    r = _Report(errors, ss)
    _check_entry_uuid(r, ss.entry_uuid)
    _check_oid(r, "uniqueId", ss.unique_id)
    _check_oid(r, "sourceId", ss.source_id)
    _check_patient(r, "patientId", ss.patient_id)
    _check_dtm(r, "submissionTime", ss.submission_time, required=True)
    _check_single_code(r, "contentTypeCode", ss.content_type_code, code_list)
    _check_authors(r, ss.authors)
    for value in ss.intended_recipients:
        problem = _intended_recipient_problem(value)
        if problem:
            r.add(f"intendedRecipient '{value}' {problem}")
    _check_home_community(r, ss.home_community_id)
    return errors


def _intended_recipient_problem(value: str) -> str | None:
    parts = value.split("|")
    if len(parts) > 3 or not any(p.strip() for p in parts):
        return "is not of the form XON|XCN|XTN with at least one part valued"
    for part, check, name in zip(parts, (xon_problem, xcn_problem, xtn_problem), ("XON", "XCN", "XTN"), strict=False):
        if part:
            problem = check(part)
            if problem:
                return f"has an invalid {name} part: {problem}"
    return None


def validate_folder(folder: Folder, *, code_list: CodeList | None = None) -> list[RegistryError]:
    """Attribute rules for a Folder (ITI TF-3 4.2.3.4)."""
    errors: list[RegistryError] = []
    r = _Report(errors, folder)
    _check_entry_uuid(r, folder.entry_uuid)
    _check_oid(r, "uniqueId", folder.unique_id)
    _check_patient(r, "patientId", folder.patient_id)
    if folder.title is None or not (folder.title.value or "").strip():
        r.add("required attribute title is missing")
    if not folder.codes:
        r.add("required attribute codeList is missing")
    for code in folder.codes:
        _check_code(r, "codeList", code, code_list, "folderCodeList")
    _check_dtm(r, "lastUpdateTime", folder.last_update_time)
    _check_home_community(r, folder.home_community_id)
    return errors


def validate_association(association: Association, *, code_list: CodeList | None = None) -> list[RegistryError]:
    """Attribute rules for one Association: its entryUUID and its Association Documentation.

    ITI TF-3 4.2.2: a relationship (RPLC, APND, XFRM, XFRM_RPLC, signs, IsSnapshotOf) may document
    its reason with coded values (classification scheme ASSOCIATION_DOCUMENTATION); a HasMember
    association may not.
    """
    errors: list[RegistryError] = []
    r = _Report(errors, association)
    _check_entry_uuid(r, association.entry_uuid)
    if association.documentation and association.type == _HAS_MEMBER:
        r.add(f"a HasMember association cannot carry Association Documentation (classificationScheme "
              f"{v.ASSOCIATION_DOCUMENTATION}); only document relationships can")
    else:
        for code in association.documentation:
            _check_code(r, "associationDocumentation", code, code_list, "associationDocumentation")
    return errors


# --- package-level rules ---------------------------------------------------------------------------


def validate_submission(
    package: SubmissionPackage,
    *,
    code_list: CodeList | None = None,
    require_repository_attributes: bool = True,
) -> list[RegistryError]:
    """All errors and warnings of one submission (ITI-42, or ITI-41 with the flag off); never raises.

    Extra metadata slots (names starting with ``urn:`` but not ``urn:ihe:``) are legal and kept;
    slots with other names the standard does not define are errors (:func:`validate_slot_names`).
    """
    errors: list[RegistryError] = []
    ss = package.submission_set
    if ss is None:
        return [RegistryError(METADATA_ERROR, "SubmitObjectsRequest: no SubmissionSet in the submission")]
    errors += validate_submission_set(ss, code_list=code_list)
    for de in package.documents:
        errors += validate_document_entry(
            de, require_repository_attributes=require_repository_attributes, code_list=code_list
        )
    for folder in package.folders:
        errors += validate_folder(folder, code_list=code_list)
    for association in package.associations:
        errors += validate_association(association, code_list=code_list)
    errors += validate_uniqueness(package)
    errors += validate_associations(package)
    errors += validate_patient_ids(package)
    errors += validate_slot_names(package)
    return errors


def validate_uniqueness(package: SubmissionPackage) -> list[RegistryError]:
    """No entryUUID used twice in the message, no uniqueId shared by two of its objects."""
    errors: list[RegistryError] = []
    seen_ids: dict[str, RegistryObject] = {}
    for obj in package.objects():
        if not obj.entry_uuid:
            continue
        first = seen_ids.setdefault(obj.entry_uuid, obj)
        if first is not obj:
            _Report(errors, obj).add(f"entryUUID '{obj.entry_uuid}' is also used by {describe(first)}")
    seen_unique: dict[str, RegistryObject] = {}
    for obj in (package.submission_set, *package.documents, *package.folders):
        if not obj.unique_id:
            continue
        first = seen_unique.setdefault(obj.unique_id, obj)
        if first is not obj:
            _Report(errors, obj).add(f"uniqueId '{obj.unique_id}' is also used by {describe(first)}")
    return errors


def validate_patient_ids(package: SubmissionPackage) -> list[RegistryError]:
    """Every DocumentEntry and Folder has the SubmissionSet's patientId (XDSPatientIdDoesNotMatch)."""
    errors: list[RegistryError] = []
    expected = package.submission_set.patient_id
    if expected is None:
        return errors  # reported as a missing attribute
    for obj in (*package.documents, *package.folders):
        if obj.patient_id is not None and obj.patient_id != expected:
            _Report(errors, obj).add(
                f"patientId '{obj.patient_id.to_cx()}' does not match the SubmissionSet's patientId "
                f"'{expected.to_cx()}'",
                PATIENT_ID_DOES_NOT_MATCH,
            )
    return errors


def validate_associations(package: SubmissionPackage) -> list[RegistryError]:
    """Association rules of ITI TF-3 4.1.4/4.2.2 for a submission (HasMember and relationships).

    A reference that is not an object of the message must be a ``urn:uuid:`` (an existing entry,
    whose existence and type the registry checks against its database).
    """
    errors: list[RegistryError] = []
    ss = package.submission_set
    kinds: dict[str, str] = {ss.entry_uuid: "SubmissionSet"}
    for de in package.documents:
        kinds.setdefault(de.entry_uuid, "DocumentEntry")
    for folder in package.folders:
        kinds.setdefault(folder.entry_uuid, "Folder")
    associations: dict[str, Association] = {}
    for a in package.associations:
        kinds.setdefault(a.entry_uuid, "Association")
        associations.setdefault(a.entry_uuid, a)

    members: set[str] = set()
    for a in package.associations:
        r = _Report(errors, a)
        if a.type not in v.ASSOCIATION_TYPES:
            r.add(f"associationType '{a.type}' is not an XDS association type")
            continue
        source = _resolve(r, "sourceObject", a.source_uuid, kinds)
        target = _resolve(r, "targetObject", a.target_uuid, kinds)
        if source is None or target is None:
            continue
        if a.type == _HAS_MEMBER:
            if source == "SubmissionSet":
                members.add(a.target_uuid)
                _check_submission_set_member(r, a, target, associations, ss.entry_uuid)
            elif source in ("Folder", "external"):
                if target not in ("DocumentEntry", "external"):
                    r.add(f"a Folder's HasMember must target a DocumentEntry, not {_article(target)}")
            else:
                r.add(f"HasMember source must be the SubmissionSet or a Folder, not {_article(source)}")
        else:
            if source != "DocumentEntry":
                what = "an entry outside this submission" if source == "external" else _article(source)
                r.add(f"{_short_type(a.type)} source must be a DocumentEntry of this submission, not {what}")
            if target != "external":
                r.add(f"{_short_type(a.type)} target must be an existing DocumentEntry (urn:uuid), "
                      f"not {_article(target)} of this submission")

    for obj in (*package.documents, *package.folders):
        if obj.entry_uuid and obj.entry_uuid not in members:
            _Report(errors, obj).add(f"is not a member of the SubmissionSet (no HasMember from {ss.entry_uuid})")
    return errors


def _article(kind: str) -> str:
    return f"an {kind}" if kind[:1] in "AEIOU" else f"a {kind}"


def _resolve(r: _Report, end: str, ref: str, kinds: dict[str, str]) -> str | None:
    """The kind of object ``ref`` names: a kind of this message, "external", or None (reported)."""
    kind = kinds.get(ref)
    if kind is not None:
        return kind
    if ref and _UUID_URN_RE.fullmatch(ref):
        return "external"
    r.add(f"{end} '{ref}' is neither an object of this submission nor a urn:uuid entryUUID")
    return None


def _check_submission_set_member(
    r: _Report, a: Association, target: str, associations: dict[str, Association], ss_id: str
) -> None:
    status = a.submission_set_status
    if target == "DocumentEntry":
        if status != SUBMISSION_SET_STATUS_ORIGINAL:
            r.add(f"SubmissionSetStatus must be {SUBMISSION_SET_STATUS_ORIGINAL} for a DocumentEntry of this "
                  f"submission (found {status or 'none'})")
    elif target == "external":
        if status != SUBMISSION_SET_STATUS_REFERENCE:
            r.add(f"SubmissionSetStatus must be {SUBMISSION_SET_STATUS_REFERENCE} for an existing entry "
                  f"(found {status or 'none'})")
    elif target == "Association":
        inner = associations[a.target_uuid]
        if inner.type != _HAS_MEMBER or inner.source_uuid == ss_id:
            r.add("a SubmissionSet may only hold a Folder's HasMember association (Folder -> DocumentEntry), "
                  f"not {_short_type(inner.type)} {inner.source_uuid} -> {inner.target_uuid}")
    elif target == "SubmissionSet":
        r.add("the SubmissionSet cannot be a member of itself")


def validate_slot_names(package: SubmissionPackage) -> list[RegistryError]:
    """Slots the model does not name must be defined for the object or be extra metadata.

    ITI TF-3 4.1.14: extra metadata is a Slot whose name begins with ``urn:``; names in IHE's own
    ``urn:ihe:`` namespace that XDS does not define are refused, as are other undefined names.
    Extra metadata must fit ebRIM's Slot (name and each value at most 256 characters), and one
    object has one Slot of a name.
    """
    errors: list[RegistryError] = []
    for obj in package.objects():
        if not obj.extra_slots:
            continue
        defined = DEFINED_SLOTS.get(type(obj), frozenset())
        kind = _KIND.get(type(obj), type(obj).__name__)
        seen: set[str] = set()
        for slot in obj.extra_slots:
            r = _Report(errors, obj)
            if not slot.name:
                r.add("has a Slot without a name")
                continue
            if slot.name in seen:
                r.add(f"has more than one Slot named '{slot.name}' (a Slot name is unique within its object)")
                continue
            seen.add(slot.name)
            if slot.name in defined:
                continue
            if not slot.name.startswith("urn:"):
                r.add(f"slot '{slot.name}' is not defined for a {kind}; extra metadata slot names must begin "
                      "with 'urn:'")
            elif slot.name.startswith(IHE_SLOT_PREFIX):
                r.add(f"slot '{slot.name}' is not defined for a {kind}: names beginning with '{IHE_SLOT_PREFIX}' "
                      "are reserved to IHE and cannot be extra metadata (ITI TF-3 4.1.14)")
            elif len(slot.name) > SLOT_NAME_MAX_LENGTH:
                r.add(f"extra metadata slot name '{slot.name[:40]}...' is longer than {SLOT_NAME_MAX_LENGTH} "
                      "characters")
            else:
                for n, value in enumerate(slot.values, start=1):
                    if len(value) > SLOT_VALUE_MAX_LENGTH:
                        r.add(f"extra metadata slot '{slot.name}' value #{n} is {len(value)} characters long; "
                              f"a Slot value holds at most {SLOT_VALUE_MAX_LENGTH}")
    return errors
