"""The XDS metadata model <-> ebRIM 3.0 on the wire (ITI TF-3 4.2.3, 4.3.1).

Readers turn ``lcm:SubmitObjectsRequest`` (ITI-42/41) and ``rim:RegistryObjectList`` (stored
query responses) into :mod:`ihe.metadata.model` objects; writers do the reverse.

Readers never crash: an absent attribute reads as None (or an empty list). What the model cannot
hold raises :class:`~ihe.errors.XDSError` with ``XDSRegistryMetadataError`` and a codeContext
naming the object and the fault: a missing RegistryObjectList, zero or several SubmissionSets,
an object without id, a RegistryPackage that is neither SubmissionSet nor Folder, an unknown
association type, two objects with one id, and (in submissions) a single-valued attribute sent
several times or with several values, or a size that is not an integer.

A value the model types as an enum but that is not one of its members (an unknown
``objectType`` of an ExtrinsicObject, an unknown ``status``) is kept as the raw string, so the
validator can name it; a missing ``objectType`` reads as None.

Writers generate the ids of Classifications and ExternalIdentifiers deterministically
(``urn:uuid:`` uuid5 of owner id, scheme and index), so rendering an object twice yields
identical bytes: :func:`object_fragment` is what the registry stores and splices into query
responses.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from lxml import etree

from ihe.errors import ErrorCode, XDSError
from ihe.metadata import vocabulary as v
from ihe.metadata.model import (
    Association,
    AssociationType,
    Author,
    AvailabilityStatus,
    Code,
    DocumentEntry,
    DocumentEntryType,
    Folder,
    Identifiable,
    LocalizedString,
    ReferenceId,
    RegistryObject,
    Slot,
    SubmissionPackage,
    SubmissionSet,
)
from ihe.namespaces import LCM, RIM, XDSB

XML_NS = "http://www.w3.org/XML/1998/namespace"
XML_LANG = f"{{{XML_NS}}}lang"

# Slot names (ITI TF-3 4.2.3).
S_CREATION_TIME = "creationTime"
S_HASH = "hash"
S_SIZE = "size"
S_LANGUAGE_CODE = "languageCode"
S_LEGAL_AUTHENTICATOR = "legalAuthenticator"
S_SERVICE_START_TIME = "serviceStartTime"
S_SERVICE_STOP_TIME = "serviceStopTime"
S_SOURCE_PATIENT_ID = "sourcePatientId"
S_SOURCE_PATIENT_INFO = "sourcePatientInfo"
S_REPOSITORY_UNIQUE_ID = "repositoryUniqueId"
S_URI = "URI"
S_REFERENCE_ID_LIST = "urn:ihe:iti:xds:2013:referenceIdList"
S_DOCUMENT_AVAILABILITY = "documentAvailability"
S_SUBMISSION_TIME = "submissionTime"
S_INTENDED_RECIPIENT = "intendedRecipient"
S_LAST_UPDATE_TIME = "lastUpdateTime"
S_CODING_SCHEME = "codingScheme"
S_SUBMISSION_SET_STATUS = "SubmissionSetStatus"
S_ORIGINAL_STATUS = "OriginalStatus"
S_NEW_STATUS = "NewStatus"
S_AUTHOR_PERSON = "authorPerson"
S_AUTHOR_INSTITUTION = "authorInstitution"
S_AUTHOR_ROLE = "authorRole"
S_AUTHOR_SPECIALTY = "authorSpecialty"
S_AUTHOR_TELECOM = "authorTelecommunication"

DOCUMENT_AVAILABILITY_ONLINE = "urn:ihe:iti:2010:DocumentAvailability:Online"
DOCUMENT_AVAILABILITY_OFFLINE = "urn:ihe:iti:2010:DocumentAvailability:Offline"

# Element names in Clark notation.
T_SOR = f"{{{LCM}}}SubmitObjectsRequest"
T_PNR = f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest"
T_ROL = f"{{{RIM}}}RegistryObjectList"
T_EO = f"{{{RIM}}}ExtrinsicObject"
T_RP = f"{{{RIM}}}RegistryPackage"
T_ASSOC = f"{{{RIM}}}Association"
T_CLASS = f"{{{RIM}}}Classification"
T_EXTID = f"{{{RIM}}}ExternalIdentifier"
T_OBJREF = f"{{{RIM}}}ObjectRef"
T_SLOT = f"{{{RIM}}}Slot"
T_VALUELIST = f"{{{RIM}}}ValueList"
T_VALUE = f"{{{RIM}}}Value"
T_NAME = f"{{{RIM}}}Name"
T_DESC = f"{{{RIM}}}Description"
T_LS = f"{{{RIM}}}LocalizedString"
T_VERSION = f"{{{RIM}}}VersionInfo"

# DocumentEntry slots that carry exactly one value.
_DE_SINGLE_SLOTS = {
    S_CREATION_TIME: "creation_time",
    S_HASH: "hash",
    S_LANGUAGE_CODE: "language_code",
    S_LEGAL_AUTHENTICATOR: "legal_authenticator",
    S_SERVICE_START_TIME: "service_start_time",
    S_SERVICE_STOP_TIME: "service_stop_time",
    S_REPOSITORY_UNIQUE_ID: "repository_unique_id",
    S_URI: "uri",
    S_DOCUMENT_AVAILABILITY: "document_availability",
}
# The DocumentEntry's single-valued coded attributes, by classification scheme.
_DE_SINGLE_CODES = {
    v.DE_CLASS_CODE: ("class_code", "classCode"),
    v.DE_TYPE_CODE: ("type_code", "typeCode"),
    v.DE_FORMAT_CODE: ("format_code", "formatCode"),
    v.DE_HEALTHCARE_FACILITY_TYPE_CODE: ("healthcare_facility_type_code", "healthcareFacilityTypeCode"),
    v.DE_PRACTICE_SETTING_CODE: ("practice_setting_code", "practiceSettingCode"),
}
_DE_MULTI_CODES = {
    v.DE_CONFIDENTIALITY_CODE: ("confidentiality_codes", "confidentialityCode"),
    v.DE_EVENT_CODE: ("event_codes", "eventCodeList"),
}
_ASSOCIATION_TYPES = {t.value: t for t in AssociationType}
_STATUSES = {s.value: s for s in AvailabilityStatus}
_DE_TYPES = {t.value: t for t in DocumentEntryType}


def _metadata_error(context: str, location: str | None = None) -> XDSError:
    return XDSError.of(ErrorCode.REGISTRY_METADATA_ERROR, context, location)


# ================================================================================================
# Reading
# ================================================================================================


def _slots(el: etree._Element) -> list[tuple[str | None, list[str]]]:
    """The element's own Slots as (name, values), in document order."""
    out = []
    for slot in el.iterchildren(T_SLOT):
        values = []
        for vl in slot.iterchildren(T_VALUELIST):
            for val in vl.iterchildren(T_VALUE):
                values.append((val.text or "").strip())
        out.append((slot.get("name"), values))
    return out


def _localized(el: etree._Element, tag: str) -> LocalizedString | None:
    holder = el.find(tag)
    if holder is None:
        return None
    ls = holder.find(T_LS)
    if ls is None:
        return None
    value = ls.get("value")
    if value is None:
        return None
    return LocalizedString(value, ls.get(XML_LANG), ls.get("charset"))


def _version(el: etree._Element) -> str | None:
    vi = el.find(T_VERSION)
    return vi.get("versionName") if vi is not None else None


def _status(value: str | None) -> Any:
    if value is None:
        return None
    return _STATUSES.get(value, value)


class _Reader:
    """Reads one message; ``strict`` (submissions) refuses what the model would silently lose."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        # Top-level Classifications and ExternalIdentifiers by the id of the object they belong to.
        self.loose_classifications: dict[str, list[etree._Element]] = {}
        self.loose_identifiers: dict[str, list[etree._Element]] = {}

    # --- helpers

    def collect_loose(self, children: Sequence[etree._Element]) -> None:
        for child in children:
            if child.tag == T_CLASS:
                owner = child.get("classifiedObject")
                if owner is not None:
                    self.loose_classifications.setdefault(owner, []).append(child)
            elif child.tag == T_EXTID:
                owner = child.get("registryObject")
                if owner is not None:
                    self.loose_identifiers.setdefault(owner, []).append(child)

    def classifications(self, el: etree._Element, oid: str) -> list[etree._Element]:
        return [*el.iterchildren(T_CLASS), *self.loose_classifications.get(oid, ())]

    def identifiers(self, el: etree._Element, oid: str) -> list[etree._Element]:
        return [*el.iterchildren(T_EXTID), *self.loose_identifiers.get(oid, ())]

    def single(self, values: list[str], what: str, kind: str, oid: str) -> str | None:
        if not values:
            return None
        if len(values) > 1 and self.strict:
            raise _metadata_error(f"{kind} {oid}: {what} must have exactly one value, has {len(values)}", oid)
        return values[0]

    def once(self, seen: set[str], what: str, kind: str, oid: str) -> None:
        if what in seen and self.strict:
            raise _metadata_error(f"{kind} {oid}: {what} is given more than once", oid)
        seen.add(what)

    def object_id(self, el: etree._Element, kind: str, index: int) -> str:
        oid = el.get("id")
        if not oid:
            hint = ""
            for c in el.iterchildren(T_EXTID):
                if c.get("value"):
                    hint = f" (an ExternalIdentifier of it has value {c.get('value')!r})"
                    break
            raise _metadata_error(f"{kind} number {index} in the RegistryObjectList has no id attribute{hint}")
        return oid

    def base(self, el: etree._Element, oid: str) -> dict[str, Any]:
        return {
            "entry_uuid": oid,
            "logical_uuid": el.get("lid"),
            "version": _version(el),
            "status": _status(el.get("status")),
            "home_community_id": el.get("home"),
        }

    def author(self, c: etree._Element, kind: str, oid: str) -> Author:
        author = Author()
        for name, values in _slots(c):
            if name == S_AUTHOR_PERSON:
                author.person = self.single(values, "authorPerson", kind, oid)
            elif name == S_AUTHOR_INSTITUTION:
                author.institutions.extend(values)
            elif name == S_AUTHOR_ROLE:
                author.roles.extend(values)
            elif name == S_AUTHOR_SPECIALTY:
                author.specialties.extend(values)
            elif name == S_AUTHOR_TELECOM:
                author.telecoms.extend(values)
        return author

    def code(self, c: etree._Element, kind: str, oid: str, what: str) -> Code:
        scheme = None
        for name, values in _slots(c):
            if name == S_CODING_SCHEME:
                scheme = self.single(values, f"the codingScheme of {what}", kind, oid)
        return Code(c.get("nodeRepresentation"), scheme, _localized(c, T_NAME))  # type: ignore[arg-type]

    # --- objects

    def document_entry(self, el: etree._Element, index: int) -> DocumentEntry:
        kind = "DocumentEntry"
        oid = self.object_id(el, "ExtrinsicObject", index)
        object_type = el.get("objectType")
        entry = DocumentEntry(
            **self.base(el, oid),
            type=_DE_TYPES.get(object_type, object_type),  # type: ignore[arg-type]
            mime_type=el.get("mimeType"),
            title=_localized(el, T_NAME),
            comments=_localized(el, T_DESC),
        )
        seen: set[str] = set()
        for name, values in _slots(el):
            if name is None:
                continue
            if name in _DE_SINGLE_SLOTS:
                self.once(seen, name, kind, oid)
                setattr(entry, _DE_SINGLE_SLOTS[name], self.single(values, name, kind, oid))
            elif name == S_SIZE:
                self.once(seen, name, kind, oid)
                entry.size = self.integer(self.single(values, name, kind, oid), name, kind, oid)
            elif name == S_SOURCE_PATIENT_ID:
                self.once(seen, name, kind, oid)
                value = self.single(values, name, kind, oid)
                entry.source_patient_id = Identifiable.parse_cx(value) if value is not None else None
            elif name == S_SOURCE_PATIENT_INFO:
                self.once(seen, name, kind, oid)
                entry.source_patient_info = values
            elif name == S_REFERENCE_ID_LIST:
                self.once(seen, name, kind, oid)
                entry.reference_ids = [ReferenceId(x) for x in values]
            else:
                entry.extra_slots.append(Slot(name, values))
        for c in self.classifications(el, oid):
            scheme = c.get("classificationScheme")
            node = c.get("classificationNode")
            if scheme == v.DE_AUTHOR:
                entry.authors.append(self.author(c, kind, oid))
            elif scheme in _DE_SINGLE_CODES:
                attr, wire = _DE_SINGLE_CODES[scheme]
                self.once(seen, wire, kind, oid)
                setattr(entry, attr, self.code(c, kind, oid, wire))
            elif scheme in _DE_MULTI_CODES:
                attr, wire = _DE_MULTI_CODES[scheme]
                getattr(entry, attr).append(self.code(c, kind, oid, wire))
            elif v.DE_LIMITED_METADATA in (node, scheme):
                entry.limited_metadata = True
        for x in self.identifiers(el, oid):
            scheme = x.get("identificationScheme")
            if scheme == v.DE_PATIENT_ID:
                self.once(seen, "patientId", kind, oid)
                value = x.get("value")
                entry.patient_id = Identifiable.parse_cx(value) if value is not None else None
            elif scheme == v.DE_UNIQUE_ID:
                self.once(seen, "uniqueId", kind, oid)
                entry.unique_id = x.get("value")
        return entry

    def integer(self, value: str | None, what: str, kind: str, oid: str) -> int | None:
        if value is None:
            return None
        try:
            return int(value)
        except ValueError:
            if self.strict:
                raise _metadata_error(f"{kind} {oid}: {what} {value!r} is not an integer", oid) from None
            return None

    def package_kind(self, el: etree._Element, oid: str) -> str:
        nodes = {c.get("classificationNode") for c in self.classifications(el, oid)}
        is_ss = v.SUBMISSION_SET_NODE in nodes
        is_folder = v.FOLDER_NODE in nodes
        if is_ss and is_folder:
            raise _metadata_error(
                f"RegistryPackage {oid} is classified both as SubmissionSet ({v.SUBMISSION_SET_NODE}) "
                f"and as Folder ({v.FOLDER_NODE})",
                oid,
            )
        if not is_ss and not is_folder:
            raise _metadata_error(
                f"RegistryPackage {oid} is neither a SubmissionSet nor a Folder: it has no Classification "
                f"with classificationNode {v.SUBMISSION_SET_NODE} (SubmissionSet) or {v.FOLDER_NODE} (Folder)",
                oid,
            )
        return "SubmissionSet" if is_ss else "Folder"

    def submission_set(self, el: etree._Element, oid: str) -> SubmissionSet:
        kind = "SubmissionSet"
        ss = SubmissionSet(**self.base(el, oid), title=_localized(el, T_NAME), comments=_localized(el, T_DESC))
        seen: set[str] = set()
        for name, values in _slots(el):
            if name is None:
                continue
            if name == S_SUBMISSION_TIME:
                self.once(seen, name, kind, oid)
                ss.submission_time = self.single(values, name, kind, oid)
            elif name == S_INTENDED_RECIPIENT:
                self.once(seen, name, kind, oid)
                ss.intended_recipients = values
            else:
                ss.extra_slots.append(Slot(name, values))
        for c in self.classifications(el, oid):
            scheme = c.get("classificationScheme")
            node = c.get("classificationNode")
            if scheme == v.SS_AUTHOR:
                ss.authors.append(self.author(c, kind, oid))
            elif scheme == v.SS_CONTENT_TYPE_CODE:
                self.once(seen, "contentTypeCode", kind, oid)
                ss.content_type_code = self.code(c, kind, oid, "contentTypeCode")
            elif v.SS_LIMITED_METADATA in (node, scheme):
                ss.limited_metadata = True
        for x in self.identifiers(el, oid):
            scheme = x.get("identificationScheme")
            value = x.get("value")
            if scheme == v.SS_UNIQUE_ID:
                self.once(seen, "uniqueId", kind, oid)
                ss.unique_id = value
            elif scheme == v.SS_SOURCE_ID:
                self.once(seen, "sourceId", kind, oid)
                ss.source_id = value
            elif scheme == v.SS_PATIENT_ID:
                self.once(seen, "patientId", kind, oid)
                ss.patient_id = Identifiable.parse_cx(value) if value is not None else None
        return ss

    def folder(self, el: etree._Element, oid: str) -> Folder:
        kind = "Folder"
        folder = Folder(**self.base(el, oid), title=_localized(el, T_NAME), comments=_localized(el, T_DESC))
        seen: set[str] = set()
        for name, values in _slots(el):
            if name is None:
                continue
            if name == S_LAST_UPDATE_TIME:
                self.once(seen, name, kind, oid)
                folder.last_update_time = self.single(values, name, kind, oid)
            else:
                folder.extra_slots.append(Slot(name, values))
        for c in self.classifications(el, oid):
            scheme = c.get("classificationScheme")
            node = c.get("classificationNode")
            if scheme == v.FOL_CODE_LIST:
                folder.codes.append(self.code(c, kind, oid, "codeList"))
            elif v.FOL_LIMITED_METADATA in (node, scheme):
                folder.limited_metadata = True
        for x in self.identifiers(el, oid):
            scheme = x.get("identificationScheme")
            value = x.get("value")
            if scheme == v.FOL_UNIQUE_ID:
                self.once(seen, "uniqueId", kind, oid)
                folder.unique_id = value
            elif scheme == v.FOL_PATIENT_ID:
                self.once(seen, "patientId", kind, oid)
                folder.patient_id = Identifiable.parse_cx(value) if value is not None else None
        return folder

    def association(self, el: etree._Element, index: int) -> Association:
        kind = "Association"
        oid = self.object_id(el, kind, index)
        atype = el.get("associationType")
        known = _ASSOCIATION_TYPES.get(atype) if atype is not None else None
        if known is None:
            what = "has no associationType" if atype is None else f"has an unknown associationType {atype!r}"
            raise _metadata_error(
                f"Association {oid} {what} (from {el.get('sourceObject')} to {el.get('targetObject')})", oid
            )
        assoc = Association(
            **self.base(el, oid),
            type=known,
            source_uuid=el.get("sourceObject"),  # type: ignore[arg-type]
            target_uuid=el.get("targetObject"),  # type: ignore[arg-type]
        )
        seen: set[str] = set()
        for name, values in _slots(el):
            if name is None:
                continue
            if name == S_SUBMISSION_SET_STATUS:
                self.once(seen, name, kind, oid)
                assoc.submission_set_status = self.single(values, name, kind, oid)
            elif name == S_ORIGINAL_STATUS:
                self.once(seen, name, kind, oid)
                assoc.original_status = self.single(values, name, kind, oid)
            elif name == S_NEW_STATUS:
                self.once(seen, name, kind, oid)
                assoc.new_status = self.single(values, name, kind, oid)
            else:
                assoc.extra_slots.append(Slot(name, values))
        for c in self.classifications(el, oid):
            if c.get("classificationScheme") == v.ASSOCIATION_DOCUMENTATION:
                assoc.documentation.append(self.code(c, kind, oid, "associationDocumentation"))
        return assoc

    def objects(self, rol: etree._Element) -> list[RegistryObject]:
        children = [c for c in rol if isinstance(c.tag, str)]
        self.collect_loose(children)
        out: list[RegistryObject] = []
        ids: set[str] = set()
        counts = {T_EO: 0, T_RP: 0, T_ASSOC: 0}
        for child in children:
            tag = child.tag
            if tag not in counts:
                continue
            counts[tag] += 1
            obj: RegistryObject
            if tag == T_EO:
                obj = self.document_entry(child, counts[tag])
            elif tag == T_RP:
                oid = self.object_id(child, "RegistryPackage", counts[tag])
                if self.package_kind(child, oid) == "SubmissionSet":
                    obj = self.submission_set(child, oid)
                else:
                    obj = self.folder(child, oid)
            else:
                obj = self.association(child, counts[tag])
            if self.strict and obj.entry_uuid in ids:
                raise _metadata_error(f"two objects in the RegistryObjectList have the id {obj.entry_uuid}",
                                      obj.entry_uuid)
            ids.add(obj.entry_uuid)
            out.append(obj)
        return out


def _registry_object_list(element: etree._Element) -> etree._Element | None:
    if element.tag == T_ROL:
        return element
    return element.find(T_ROL)


def read_submit_objects_request(element: etree._Element) -> SubmissionPackage:
    """The content of an ``lcm:SubmitObjectsRequest`` (an ITI-41 request element is accepted too).

    Raises :class:`XDSError` (XDSRegistryMetadataError) for what cannot be a submission.
    """
    if element.tag == T_PNR:
        sor = element.find(T_SOR)
        if sor is None:
            raise _metadata_error("the ProvideAndRegisterDocumentSetRequest has no lcm:SubmitObjectsRequest")
        element = sor
    rol = element.find(T_ROL)
    if rol is None:
        raise _metadata_error(f"the {etree.QName(element).localname} has no rim:RegistryObjectList")
    objects = _Reader(strict=True).objects(rol)
    sets = [o for o in objects if isinstance(o, SubmissionSet)]
    if len(sets) != 1:
        if not sets:
            raise _metadata_error(
                "the submission has no SubmissionSet: no RegistryPackage is classified with "
                f"classificationNode {v.SUBMISSION_SET_NODE}"
            )
        raise _metadata_error(
            f"the submission has {len(sets)} SubmissionSets ({', '.join(s.entry_uuid for s in sets)}): "
            "exactly one is allowed"
        )
    return SubmissionPackage(
        submission_set=sets[0],
        documents=[o for o in objects if isinstance(o, DocumentEntry)],
        folders=[o for o in objects if isinstance(o, Folder)],
        associations=[o for o in objects if isinstance(o, Association)],
    )


def read_registry_objects(element: etree._Element) -> list[RegistryObject]:
    """The objects of a ``rim:RegistryObjectList`` (or of an element holding one, such as a
    ``query:AdhocQueryResponse``), in document order. ObjectRefs are skipped: see
    :func:`read_object_refs`."""
    rol = _registry_object_list(element)
    if rol is None:
        return []
    return _Reader(strict=False).objects(rol)


def read_object_refs(element: etree._Element) -> list[str]:
    """The ids of the ``rim:ObjectRef`` children of a RegistryObjectList (or of the one inside ``element``)."""
    rol = _registry_object_list(element)
    if rol is None:
        return []
    return [ref.get("id") for ref in rol.iterchildren(T_OBJREF) if ref.get("id")]


# ================================================================================================
# Writing
# ================================================================================================

# The writer builds the XML text directly (it is on the registry's hot path: every stored object
# keeps its fragment, rewritten on every state change); write_object parses those bytes, so the
# element and the fragment forms can never disagree.

# Namespace of the deterministic ids of Classifications and ExternalIdentifiers.
_ID_NAMESPACE = uuid.UUID("6f1c8f3e-2a47-5b1e-9c55-0d8e4c1b7a21")
_RIM_DECL = f' xmlns:rim="{RIM}"'
_FRAGMENT_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=True)
_ID_PREFIX = _ID_NAMESPACE.bytes
# What needs escaping in an attribute value / a text node, and what XML 1.0 cannot carry at all.
_ATTR_SPECIAL = re.compile('[&<>"\t\n\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')
_TEXT_SPECIAL = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    try:
        return _ESCAPES[ch]
    except KeyError:
        raise ValueError(f"a metadata value holds {ch!r}, a character XML cannot carry") from None


def _attr(value: object) -> str:
    text = value if type(value) is str else str(value)
    return _ATTR_SPECIAL.sub(_escape_char, text) if _ATTR_SPECIAL.search(text) else text


def _text(value: object) -> str:
    text = value if type(value) is str else str(value)
    return _TEXT_SPECIAL.sub(_escape_char, text) if _TEXT_SPECIAL.search(text) else text


@functools.lru_cache(maxsize=16384)
def sub_id(owner: str, scheme: str, index: int = 0) -> str:
    """The deterministic id of the ``index``-th Classification/ExternalIdentifier of ``owner`` in ``scheme``:
    ``urn:uuid:`` + uuid5(namespace, "owner|scheme|index") (computed inline, equal to :func:`uuid.uuid5`)."""
    digest = bytearray(hashlib.sha1(_ID_PREFIX + f"{owner}|{scheme}|{index}".encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50
    digest[8] = (digest[8] & 0x3F) | 0x80
    h = digest.hex()
    return f"urn:uuid:{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class _Writer:
    __slots__ = ("open_at", "out")

    def __init__(self) -> None:
        self.out: list[str] = []
        self.open_at: list[int] = []

    def open(self, tag: str, attrs: Sequence[tuple[str, object | None]], decl: str = "") -> None:
        a = "".join(f' {k}="{_attr(val)}"' for k, val in attrs if val is not None)
        self.open_at.append(len(self.out))
        self.out.append(f"<rim:{tag}{decl}{a}>")

    def empty(self, tag: str, attrs: Sequence[tuple[str, object | None]]) -> None:
        a = "".join(f' {k}="{_attr(val)}"' for k, val in attrs if val is not None)
        self.out.append(f"<rim:{tag}{a}/>")

    def close(self, tag: str) -> None:
        # An element that got no content is written self-closing, as lxml would serialize it.
        if self.open_at.pop() == len(self.out) - 1:
            self.out[-1] = self.out[-1][:-1] + "/>"
        else:
            self.out.append(f"</rim:{tag}>")

    def slot(self, name: str, values: Iterable[str]) -> None:
        vals = "".join(f"<rim:Value>{_text(x)}</rim:Value>" for x in values)
        vl = f"<rim:ValueList>{vals}</rim:ValueList>" if vals else "<rim:ValueList/>"
        self.out.append(f'<rim:Slot name="{_attr(name)}">{vl}</rim:Slot>')

    def localized(self, tag: str, ls: LocalizedString | None) -> None:
        if ls is None:
            return
        self.out.append(f"<rim:{tag}>")
        self.empty("LocalizedString", (("xml:lang", ls.lang), ("charset", ls.charset), ("value", ls.value)))
        self.out.append(f"</rim:{tag}>")

    def names_and_version(self, title: LocalizedString | None, comments: LocalizedString | None,
                          version: str | None) -> None:
        self.localized("Name", title)
        self.localized("Description", comments)
        if version is not None:
            self.empty("VersionInfo", (("versionName", version),))

    def extra_slots(self, slots: Iterable[Slot]) -> None:
        for s in slots:
            self.slot(s.name, s.values)

    def node(self, owner: str, node: str) -> None:
        self.empty("Classification", (
            ("id", sub_id(owner, node)),
            ("objectType", v.CLASSIFICATION),
            ("classifiedObject", owner),
            ("classificationNode", node),
        ))

    def author(self, owner: str, scheme: str, index: int, author: Author) -> None:
        self.open("Classification", (
            ("id", sub_id(owner, scheme, index)),
            ("objectType", v.CLASSIFICATION),
            ("classificationScheme", scheme),
            ("classifiedObject", owner),
            ("nodeRepresentation", ""),
        ))
        if author.person is not None:
            self.slot(S_AUTHOR_PERSON, (author.person,))
        if author.institutions:
            self.slot(S_AUTHOR_INSTITUTION, author.institutions)
        if author.roles:
            self.slot(S_AUTHOR_ROLE, author.roles)
        if author.specialties:
            self.slot(S_AUTHOR_SPECIALTY, author.specialties)
        if author.telecoms:
            self.slot(S_AUTHOR_TELECOM, author.telecoms)
        self.close("Classification")

    def code(self, owner: str, scheme: str, index: int, code: Code | None) -> None:
        if code is None:
            return
        self.open("Classification", (
            ("id", sub_id(owner, scheme, index)),
            ("objectType", v.CLASSIFICATION),
            ("classificationScheme", scheme),
            ("classifiedObject", owner),
            ("nodeRepresentation", code.code),
        ))
        if code.scheme is not None:
            self.slot(S_CODING_SCHEME, (code.scheme,))
        self.localized("Name", code.display_name)
        self.close("Classification")

    def ext_id(self, owner: str, scheme: str, value: str | None, name: str) -> None:
        if value is None:
            return
        self.open("ExternalIdentifier", (
            ("id", sub_id(owner, scheme)),
            ("objectType", v.EXTERNAL_IDENTIFIER),
            ("registryObject", owner),
            ("identificationScheme", scheme),
            ("value", value),
        ))
        self.out.append(f'<rim:Name><rim:LocalizedString value="{name}"/></rim:Name>')
        self.close("ExternalIdentifier")

    def root(self, tag: str, obj: RegistryObject, object_type: str | None,
             extra: Sequence[tuple[str, object | None]] = ()) -> None:
        self.open(tag, (
            ("id", obj.entry_uuid),
            ("lid", obj.logical_uuid),
            ("objectType", object_type),
            ("status", obj.status),
            *extra,
            ("home", obj.home_community_id),
        ), _RIM_DECL)

    # --- objects

    def document_entry(self, entry: DocumentEntry) -> None:
        oid = entry.entry_uuid
        self.root("ExtrinsicObject", entry, entry.type, (("mimeType", entry.mime_type),))
        for name, value in (
            (S_CREATION_TIME, entry.creation_time),
            (S_HASH, entry.hash),
            (S_SIZE, entry.size),
            (S_LANGUAGE_CODE, entry.language_code),
            (S_LEGAL_AUTHENTICATOR, entry.legal_authenticator),
            (S_SERVICE_START_TIME, entry.service_start_time),
            (S_SERVICE_STOP_TIME, entry.service_stop_time),
            (S_SOURCE_PATIENT_ID, entry.source_patient_id.to_cx() if entry.source_patient_id else None),
            (S_REPOSITORY_UNIQUE_ID, entry.repository_unique_id),
            (S_URI, entry.uri),
            (S_DOCUMENT_AVAILABILITY, entry.document_availability),
        ):
            if value is not None:
                self.slot(name, (value,))
        if entry.source_patient_info:
            self.slot(S_SOURCE_PATIENT_INFO, entry.source_patient_info)
        if entry.reference_ids:
            self.slot(S_REFERENCE_ID_LIST, [r.value for r in entry.reference_ids])
        self.extra_slots(entry.extra_slots)
        self.names_and_version(entry.title, entry.comments, entry.version)
        for i, author in enumerate(entry.authors):
            self.author(oid, v.DE_AUTHOR, i, author)
        self.code(oid, v.DE_CLASS_CODE, 0, entry.class_code)
        for i, code in enumerate(entry.confidentiality_codes):
            self.code(oid, v.DE_CONFIDENTIALITY_CODE, i, code)
        for i, code in enumerate(entry.event_codes):
            self.code(oid, v.DE_EVENT_CODE, i, code)
        self.code(oid, v.DE_FORMAT_CODE, 0, entry.format_code)
        self.code(oid, v.DE_HEALTHCARE_FACILITY_TYPE_CODE, 0, entry.healthcare_facility_type_code)
        self.code(oid, v.DE_PRACTICE_SETTING_CODE, 0, entry.practice_setting_code)
        self.code(oid, v.DE_TYPE_CODE, 0, entry.type_code)
        if entry.limited_metadata:
            self.node(oid, v.DE_LIMITED_METADATA)
        self.ext_id(oid, v.DE_PATIENT_ID, entry.patient_id.to_cx() if entry.patient_id else None,
                    "XDSDocumentEntry.patientId")
        self.ext_id(oid, v.DE_UNIQUE_ID, entry.unique_id, "XDSDocumentEntry.uniqueId")
        self.close("ExtrinsicObject")

    def submission_set(self, ss: SubmissionSet) -> None:
        oid = ss.entry_uuid
        self.root("RegistryPackage", ss, v.REGISTRY_PACKAGE)
        if ss.submission_time is not None:
            self.slot(S_SUBMISSION_TIME, (ss.submission_time,))
        if ss.intended_recipients:
            self.slot(S_INTENDED_RECIPIENT, ss.intended_recipients)
        self.extra_slots(ss.extra_slots)
        self.names_and_version(ss.title, ss.comments, ss.version)
        self.node(oid, v.SUBMISSION_SET_NODE)
        for i, author in enumerate(ss.authors):
            self.author(oid, v.SS_AUTHOR, i, author)
        self.code(oid, v.SS_CONTENT_TYPE_CODE, 0, ss.content_type_code)
        if ss.limited_metadata:
            self.node(oid, v.SS_LIMITED_METADATA)
        self.ext_id(oid, v.SS_UNIQUE_ID, ss.unique_id, "XDSSubmissionSet.uniqueId")
        self.ext_id(oid, v.SS_SOURCE_ID, ss.source_id, "XDSSubmissionSet.sourceId")
        self.ext_id(oid, v.SS_PATIENT_ID, ss.patient_id.to_cx() if ss.patient_id else None,
                    "XDSSubmissionSet.patientId")
        self.close("RegistryPackage")

    def folder(self, folder: Folder) -> None:
        oid = folder.entry_uuid
        self.root("RegistryPackage", folder, v.REGISTRY_PACKAGE)
        if folder.last_update_time is not None:
            self.slot(S_LAST_UPDATE_TIME, (folder.last_update_time,))
        self.extra_slots(folder.extra_slots)
        self.names_and_version(folder.title, folder.comments, folder.version)
        self.node(oid, v.FOLDER_NODE)
        for i, code in enumerate(folder.codes):
            self.code(oid, v.FOL_CODE_LIST, i, code)
        if folder.limited_metadata:
            self.node(oid, v.FOL_LIMITED_METADATA)
        self.ext_id(oid, v.FOL_PATIENT_ID, folder.patient_id.to_cx() if folder.patient_id else None,
                    "XDSFolder.patientId")
        self.ext_id(oid, v.FOL_UNIQUE_ID, folder.unique_id, "XDSFolder.uniqueId")
        self.close("RegistryPackage")

    def association(self, assoc: Association) -> None:
        self.root("Association", assoc, v.ASSOCIATION, (
            ("associationType", assoc.type),
            ("sourceObject", assoc.source_uuid),
            ("targetObject", assoc.target_uuid),
        ))
        for name, value in (
            (S_SUBMISSION_SET_STATUS, assoc.submission_set_status),
            (S_ORIGINAL_STATUS, assoc.original_status),
            (S_NEW_STATUS, assoc.new_status),
        ):
            if value is not None:
                self.slot(name, (value,))
        self.extra_slots(assoc.extra_slots)
        if assoc.version is not None:
            self.empty("VersionInfo", (("versionName", assoc.version),))
        for i, code in enumerate(assoc.documentation):
            self.code(assoc.entry_uuid, v.ASSOCIATION_DOCUMENTATION, i, code)
        self.close("Association")

    def object(self, obj: RegistryObject) -> None:
        if isinstance(obj, DocumentEntry):
            self.document_entry(obj)
        elif isinstance(obj, SubmissionSet):
            self.submission_set(obj)
        elif isinstance(obj, Folder):
            self.folder(obj)
        elif isinstance(obj, Association):
            self.association(obj)
        else:
            raise TypeError(f"not an XDS registry object: {type(obj).__name__}")

    def result(self) -> bytes:
        return "".join(self.out).encode("utf-8")


def object_fragment(obj: RegistryObject) -> bytes:
    """The object's standalone UTF-8 serialization: no XML declaration, ``xmlns:rim`` declared on
    its root, identical bytes for equal objects. Valid where spliced inside a rim:RegistryObjectList.

    Raises ValueError when a value holds a character XML cannot carry (e.g. a NUL).
    """
    w = _Writer()
    w.object(obj)
    return w.result()


def write_object(obj: RegistryObject) -> etree._Element:
    """The ebRIM element for any model object (a new element, ``rim`` declared on it)."""
    return etree.fromstring(object_fragment(obj), _FRAGMENT_PARSER)


def write_document_entry(entry: DocumentEntry) -> etree._Element:
    """``rim:ExtrinsicObject`` for a DocumentEntry."""
    return write_object(entry)


def write_submission_set(ss: SubmissionSet) -> etree._Element:
    """``rim:RegistryPackage`` for a SubmissionSet (its node classification nested)."""
    return write_object(ss)


def write_folder(folder: Folder) -> etree._Element:
    """``rim:RegistryPackage`` for a Folder (its node classification nested)."""
    return write_object(folder)


def write_association(assoc: Association) -> etree._Element:
    """``rim:Association``."""
    return write_object(assoc)


def registry_object_list_bytes(fragments: Iterable[bytes]) -> bytes:
    """A ``rim:RegistryObjectList`` (no XML declaration) around stored :func:`object_fragment` bytes."""
    return b"".join((f"<rim:RegistryObjectList{_RIM_DECL}>".encode(), *fragments, b"</rim:RegistryObjectList>"))


def write_registry_object_list(objects: Iterable[RegistryObject]) -> etree._Element:
    """``rim:RegistryObjectList`` holding ``objects`` in order."""
    rol = etree.fromstring(registry_object_list_bytes(object_fragment(o) for o in objects), _FRAGMENT_PARSER)
    etree.cleanup_namespaces(rol)
    return rol


def write_submit_objects_request(package: SubmissionPackage) -> etree._Element:
    """``lcm:SubmitObjectsRequest`` for a submission (what a client sends in ITI-42)."""
    body = registry_object_list_bytes(object_fragment(o) for o in package.objects())
    sor = etree.fromstring(b"".join((f'<lcm:SubmitObjectsRequest xmlns:lcm="{LCM}">'.encode(), body,
                                     b"</lcm:SubmitObjectsRequest>")), _FRAGMENT_PARSER)
    etree.cleanup_namespaces(sor)
    return sor
