"""Plain XDS metadata model (ITI TF-3 4.2.3), free of any wire format.

Field names follow the IHE attribute names. Values stay as the HL7 v2 strings the
standard defines (CX, XCN, XON, XTN, DTM) so that nothing is lost in transit; the
helpers here parse them where the registry needs structure (patient id, times).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum

from ihe.metadata import vocabulary as v


class AvailabilityStatus(StrEnum):
    APPROVED = v.STATUS_APPROVED
    DEPRECATED = v.STATUS_DEPRECATED
    SUBMITTED = v.STATUS_SUBMITTED


class AssociationType(StrEnum):
    HAS_MEMBER = v.HAS_MEMBER
    RPLC = v.RPLC
    APND = v.APND
    XFRM = v.XFRM
    XFRM_RPLC = v.XFRM_RPLC
    SIGNS = v.SIGNS
    IS_SNAPSHOT_OF = v.IS_SNAPSHOT_OF
    UPDATE_AVAILABILITY_STATUS = v.UPDATE_AVAILABILITY_STATUS


class DocumentEntryType(StrEnum):
    STABLE = v.DOCUMENT_ENTRY_STABLE
    ON_DEMAND = v.DOCUMENT_ENTRY_ON_DEMAND


@dataclass(slots=True)
class Slot:
    """An ebRIM Slot: a name and its string values (kept for metadata we do not model)."""

    name: str
    values: list[str] = field(default_factory=list)


@dataclass(slots=True)
class LocalizedString:
    value: str
    lang: str | None = None
    charset: str | None = None


@dataclass(slots=True)
class Code:
    """A coded value: ``code`` in ``scheme`` (the codingScheme slot), with a display name."""

    code: str
    scheme: str
    display_name: LocalizedString | None = None

    @property
    def key(self) -> str:
        """The ``code^^^scheme`` form used by stored query parameters."""
        return f"{self.code}^^^{self.scheme}"


@dataclass(frozen=True, slots=True)
class Identifiable:
    """An HL7 v2 CX identifier restricted as XDS requires: ``id^^^&oid&ISO``."""

    id: str
    authority_oid: str | None = None
    authority_namespace: str | None = None

    @classmethod
    def parse_cx(cls, value: str) -> Identifiable:
        """Parse a CX string; components beyond the assigning authority are ignored."""
        parts = value.split("^")
        ident = parts[0]
        authority = parts[3] if len(parts) > 3 else ""
        sub = authority.split("&")
        namespace = sub[0] or None
        oid = sub[1] if len(sub) > 1 and sub[1] else None
        return cls(ident, oid, namespace)

    def to_cx(self) -> str:
        if not self.authority_oid and not self.authority_namespace:
            return self.id
        ns = self.authority_namespace or ""
        if self.authority_oid:
            return f"{self.id}^^^{ns}&{self.authority_oid}&ISO"
        return f"{self.id}^^^{ns}"


@dataclass(slots=True)
class Author:
    """XDS author: person (XCN), institutions (XON), roles, specialties, telecoms (XTN)."""

    person: str | None = None
    institutions: list[str] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)
    specialties: list[str] = field(default_factory=list)
    telecoms: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ReferenceId:
    """One value of referenceIdList (CXi); ``value`` kept verbatim as on the wire."""

    value: str


@dataclass(slots=True, kw_only=True)
class RegistryObject:
    """What every XDS object has: entryUUID, logical id/version, status, home community.

    ``entry_uuid`` may be a symbolic id (not ``urn:uuid:``) until the registry assigns one.
    ``extra_slots`` keeps slots the model does not name, so they survive the round trip.
    """

    entry_uuid: str
    logical_uuid: str | None = None
    version: str | None = None
    status: AvailabilityStatus | None = None
    home_community_id: str | None = None
    extra_slots: list[Slot] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class DocumentEntry(RegistryObject):
    unique_id: str | None = None
    patient_id: Identifiable | None = None
    type: DocumentEntryType = DocumentEntryType.STABLE
    mime_type: str | None = None
    title: LocalizedString | None = None
    comments: LocalizedString | None = None
    class_code: Code | None = None
    type_code: Code | None = None
    format_code: Code | None = None
    healthcare_facility_type_code: Code | None = None
    practice_setting_code: Code | None = None
    confidentiality_codes: list[Code] = field(default_factory=list)
    event_codes: list[Code] = field(default_factory=list)
    authors: list[Author] = field(default_factory=list)
    creation_time: str | None = None
    service_start_time: str | None = None
    service_stop_time: str | None = None
    hash: str | None = None
    size: int | None = None
    language_code: str | None = None
    legal_authenticator: str | None = None
    source_patient_id: Identifiable | None = None
    source_patient_info: list[str] = field(default_factory=list)
    repository_unique_id: str | None = None
    uri: str | None = None
    reference_ids: list[ReferenceId] = field(default_factory=list)
    document_availability: str | None = None
    # Metadata-Limited Document Source marker (classification node DE_LIMITED_METADATA).
    limited_metadata: bool = False


@dataclass(slots=True, kw_only=True)
class SubmissionSet(RegistryObject):
    unique_id: str | None = None
    source_id: str | None = None
    patient_id: Identifiable | None = None
    submission_time: str | None = None
    title: LocalizedString | None = None
    comments: LocalizedString | None = None
    content_type_code: Code | None = None
    authors: list[Author] = field(default_factory=list)
    intended_recipients: list[str] = field(default_factory=list)
    limited_metadata: bool = False


@dataclass(slots=True, kw_only=True)
class Folder(RegistryObject):
    unique_id: str | None = None
    patient_id: Identifiable | None = None
    title: LocalizedString | None = None
    comments: LocalizedString | None = None
    codes: list[Code] = field(default_factory=list)
    last_update_time: str | None = None
    limited_metadata: bool = False


@dataclass(slots=True, kw_only=True)
class Association(RegistryObject):
    type: AssociationType
    source_uuid: str
    target_uuid: str
    # SubmissionSetStatus slot on SubmissionSet->DocumentEntry HasMember: "Original" or "Reference".
    submission_set_status: str | None = None
    # Slots of ITI-57 status-change associations, kept for later.
    original_status: str | None = None
    new_status: str | None = None
    # Association Documentation (classification scheme ASSOCIATION_DOCUMENTATION): coded reasons for a
    # document relationship (RPLC, APND, XFRM, XFRM_RPLC, signs, IsSnapshotOf); never on HasMember.
    documentation: list[Code] = field(default_factory=list)


@dataclass(slots=True)
class SubmissionPackage:
    """The content of one SubmitObjectsRequest: exactly one SubmissionSet and its members."""

    submission_set: SubmissionSet
    documents: list[DocumentEntry] = field(default_factory=list)
    folders: list[Folder] = field(default_factory=list)
    associations: list[Association] = field(default_factory=list)

    def objects(self) -> list[RegistryObject]:
        return [self.submission_set, *self.documents, *self.folders, *self.associations]


# --- HL7 DTM ----------------------------------------------------------------------------------

_DTM = re.compile(r"^(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(?:\.\d{1,4})?([+-]\d{4})?$")


def is_valid_dtm(value: str) -> bool:
    """True for an HL7 DTM of precision year..second (UTC, as XDS requires)."""
    m = _DTM.match(value)
    if not m:
        return False
    try:
        dtm_to_datetime(value)
    except ValueError:
        return False
    return True


def dtm_to_datetime(value: str) -> datetime:
    """The earliest instant a DTM denotes, in UTC (missing parts take their minimum).

    XDS times are UTC; a stray offset suffix is honoured so that nothing is silently shifted.
    """
    m = _DTM.match(value.strip())
    if not m:
        raise ValueError(f"not an HL7 DTM: {value!r}")
    year, month, day, hour, minute, second, offset = m.groups()
    dt = datetime(
        int(year),
        int(month or 1),
        int(day or 1),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        tzinfo=UTC,
    )
    if offset:
        sign = 1 if offset[0] == "+" else -1
        from datetime import timedelta

        dt -= sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[3:5]))
    return dt


def datetime_to_dtm(value: datetime) -> str:
    """A second-precision UTC DTM, the form the registry writes (e.g. folder lastUpdateTime)."""
    return value.astimezone(UTC).strftime("%Y%m%d%H%M%S")
