"""ITI-42 Register Document Set-b: the Document Registry's side (ITI TF-2b 3.42).

The handler is thin: reading, validation, entryUUID assignment and every registry rule are pure
functions over the metadata model and what the store says about already registered objects;
the I/O is one database transaction (:func:`_store_package`) that writes all or nothing.

Rules that depend on registry state (ITI TF-2b 3.42.4.1.3):

- pre-assigned ``urn:uuid`` entryUUIDs must be new (XDSRegistryMetadataError naming the id);
- patient ids must be known to the identity feed and not merged away (XDSUnknownPatientId);
- associations to objects outside the submission must point at existing objects of the right
  kind: relationship (RPLC, XFRM_RPLC, APND, XFRM, signs, IsSnapshotOf) targets are existing
  DocumentEntries of the same patient (XDSPatientIdDoesNotMatch otherwise); RPLC, XFRM_RPLC,
  APND and XFRM targets must be Approved. A target that exists but is Deprecated gets
  XDSRegistryDeprecatedDocumentError ("an Association referencing a deprecated document", ITI
  TF-3 Table 4.2.4.1-2; that table marks XDSReplaceFailed deprecated in its favour, pointing at
  ITI TF-2b 3.42.4.1.3.5); a missing target or one of the wrong kind is XDSRegistryMetadataError.
- uniqueIds: a SubmissionSet's or Folder's uniqueId already in the registry is
  XDSDuplicateUniqueIdInRegistry; a DocumentEntry's is accepted when the registered document has
  the same hash (compared case-insensitively) and size, else XDSNonIdenticalHash / XDSNonIdenticalSize
  (each when it differs). "Accepted" means
  the new DocumentEntry is stored as an object of its own (its own entryUUID, member of its own
  SubmissionSet) sharing the uniqueId, as the NIST registry does: the submission's associations
  reference that entryUUID, so folding it into the old object would leave them dangling. A query
  by uniqueId then returns both entries. Which of two concurrent submissions of one uniqueId wins
  is decided by the primary key of ``unique_id_claim`` inside the transaction.
- a replacement (RPLC, XFRM_RPLC) of a document that is in Approved Folders joins those Folders:
  the registry adds Folder->replacement HasMember Associations (and the SubmissionSet's HasMember
  of each) to the submission, and the Folders' lastUpdateTime moves forward, as the NIST registry
  does (:func:`replacement_folder_memberships`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from lxml import etree

from ihe.database import rollback_or_discard
from ihe.errors import ErrorCode, RegistryError, XDSError, build_registry_response, error
from ihe.http import SoapReply
from ihe.metadata import vocabulary as v
from ihe.metadata.ebrim import object_fragment, read_submit_objects_request
from ihe.metadata.model import (
    Association,
    AssociationType,
    AvailabilityStatus,
    RegistryObject,
    SubmissionPackage,
    datetime_to_dtm,
)
from ihe.metadata.validate import validate_submission
from ihe.namespaces import ACTION_ITI42_RESPONSE, LCM, RIM, qn
from ihe.soap import FAULT_SENDER, SoapFault, SoapRequest
from ihe.xml import parse_xml
from registry import store
from registry.patients import IDENTITY_LOCK_KEY, PatientIdState, xds_patient_id_state
from registry.store import KIND_DOCUMENT_ENTRY, KIND_FOLDER, StoredObject, UniqueIdClaim, patient_id_column

log = logging.getLogger(__name__)

T_SUBMIT_OBJECTS_REQUEST = qn(LCM, "SubmitObjectsRequest")
_T_SLOT = qn(RIM, "Slot")
_T_VALUE_LIST = qn(RIM, "ValueList")
_T_VALUE = qn(RIM, "Value")

URN_UUID = "urn:uuid:"
SUBMISSION_SET_STATUS_REFERENCE = "Reference"

#: Relationship types whose target must be an Approved DocumentEntry.
APPROVED_TARGET_TYPES = frozenset({v.RPLC, v.XFRM_RPLC, v.APND, v.XFRM})
#: ITI TF-3 4.2.2.2.3 (Document Replacement): when a document is replaced, its addenda (APND)
#: and transformations (XFRM) are deprecated with it, since they describe a version that is no
#: longer current. We apply this recursively (an addendum's transformation goes too), through
#: APND/XFRM associations only, and to XFRM_RPLC (a transformation that replaces) alike.
FAMILY_TYPES = (v.APND, v.XFRM)

#: Attempts of one submission when PostgreSQL reports a deadlock or serialization failure.
ATTEMPTS = 4
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# One round trip opens the transaction and takes the identity lock in shared mode: patient
# merges and feeds (registry.patients) take it exclusively, so a patient cannot be merged away
# between our check of its id and our commit (its documents would stay under the retired id).
_BEGIN = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock_shared({IDENTITY_LOCK_KEY})"


# --- pure steps ----------------------------------------------------------------------------------


def read_submission(body: etree._Element, code_list=None) -> tuple[SubmissionPackage, list[RegistryError]]:
    """Read and validate a SubmitObjectsRequest: ``(package, warnings)`` or XDSError.

    Extra metadata (ITI TF-3 4.1.14) stays in the package: it is stored and returned by queries.
    """
    package = read_submit_objects_request(body)
    problems = validate_submission(package, code_list=code_list)
    if any(p.is_error for p in problems):
        raise XDSError(problems)
    return package, problems


def _is_uuid_ref(value: str) -> bool:
    return value[: len(URN_UUID)].lower() == URN_UUID


def _canonical_uuid(value: str) -> str | None:
    """``urn:uuid:`` + the lower-case canonical UUID, or None when the UUID is malformed."""
    try:
        return f"{URN_UUID}{uuid.UUID(value[len(URN_UUID):])}"
    except ValueError:
        return None


def preassigned_ids(package: SubmissionPackage) -> set[str]:
    """The (canonical) entryUUIDs the submitter assigned itself; they must be new to the registry."""
    return {c for o in package.objects() if _is_uuid_ref(o.entry_uuid) and (c := _canonical_uuid(o.entry_uuid))}


def assign_entry_uuids(
    package: SubmissionPackage, new_uuid: Callable[[], uuid.UUID] = uuid.uuid4
) -> SubmissionPackage:
    """The package as the registry stores it: symbolic ids replaced by fresh ``urn:uuid`` ids (and
    association references rewritten), pre-assigned ids in canonical form, and every object a first
    version: lid = entryUUID, version 1, status Approved.

    Raises XDSError (XDSRegistryMetadataError) for a malformed ``urn:uuid`` id or an association
    naming a symbolic id that no object of the submission has.
    """
    errors: list[RegistryError] = []
    ids: dict[str, str] = {}
    for obj in package.objects():
        old = obj.entry_uuid
        if _is_uuid_ref(old):
            canon = _canonical_uuid(old)
            if canon is None:
                errors.append(error(ErrorCode.REGISTRY_METADATA_ERROR, f"entryUUID {old!r} is not a valid urn:uuid",
                                    old))
                canon = old
            ids[old] = canon
        else:
            ids[old] = f"{URN_UUID}{new_uuid()}"

    def ref(assoc: Association, role: str, value: str) -> str:
        if value in ids:
            return ids[value]
        if _is_uuid_ref(value):
            canon = _canonical_uuid(value)
            if canon is not None:
                return canon
            problem = "is not a valid urn:uuid"
        else:
            problem = "is a symbolic id that no object of this submission has"
        errors.append(error(ErrorCode.REGISTRY_METADATA_ERROR,
                            f"Association {assoc.entry_uuid}: {role} {value!r} {problem}", assoc.entry_uuid))
        return value

    def first_version(obj, **changes):
        new_id = ids[obj.entry_uuid]
        return dataclasses.replace(obj, entry_uuid=new_id, logical_uuid=new_id, version="1",
                                   status=AvailabilityStatus.APPROVED, **changes)

    associations = [
        first_version(a, source_uuid=ref(a, "sourceObject", a.source_uuid),
                      target_uuid=ref(a, "targetObject", a.target_uuid))
        for a in package.associations
    ]
    if errors:
        raise XDSError(errors)
    return SubmissionPackage(
        submission_set=first_version(package.submission_set),
        documents=[first_version(d) for d in package.documents],
        folders=[first_version(f) for f in package.folders],
        associations=associations,
    )


def submitted_ids(submitted: SubmissionPackage, assigned: SubmissionPackage) -> dict[str, str]:
    """Assigned entryUUID -> the symbolic id it replaced (pre-assigned ids map to nothing)."""
    return {new.entry_uuid: old.entry_uuid for old, new in zip(submitted.objects(), assigned.objects(), strict=True)
            if not _is_uuid_ref(old.entry_uuid)}


def in_submitted_ids(errors: Iterable[RegistryError], names: Mapping[str, str]) -> list[RegistryError]:
    """Errors of a failed submission with assigned entryUUIDs replaced by the submitted symbolic ids.

    Nothing of a failed submission is stored, so its assigned UUIDs mean nothing to the submitter.
    """
    if not names:
        return list(errors)
    out = []
    for e in errors:
        context, location = e.context, e.location
        for new, old in names.items():
            if new in context:
                context = context.replace(new, old)
            if location == new:
                location = old
        out.append(dataclasses.replace(e, context=context, location=location))
    return out


def with_folder_times(package: SubmissionPackage, last_update_time: str) -> SubmissionPackage:
    """New Folders get lastUpdateTime = the submission's time (ITI TF-3 4.2.3.4: set by the registry)."""
    return dataclasses.replace(
        package, folders=[dataclasses.replace(f, last_update_time=last_update_time) for f in package.folders]
    )


def replacement_folder_memberships(
    package: SubmissionPackage, memberships: Iterable[tuple[str, str]],
    new_uuid: Callable[[], uuid.UUID] = uuid.uuid4,
) -> list[Association]:
    """The Associations that put each replacement into the Folders of the document it replaces.

    ITI TF-3 4.2.2.2.3 (and the NIST registry): when a document that is a member of Folders is
    replaced (RPLC or XFRM_RPLC), the registry adds the replacement to the same Folders with a
    Folder->replacement HasMember, itself made a member of the submission's SubmissionSet, so the
    change is registered with the submission. ``memberships`` are the registered ``(folder,
    document)`` pairs of the replaced documents; a membership the submission already states is
    not added twice. Returns new Associations (first versions, Approved), in a stable order.
    """
    replacements: dict[str, list[str]] = {}
    stated: set[tuple[str, str]] = set()
    for a in package.associations:
        if a.type in v.REPLACING_TYPES:
            replacements.setdefault(a.target_uuid, []).append(a.source_uuid)
        elif a.type == v.HAS_MEMBER:
            stated.add((a.source_uuid, a.target_uuid))
    ss = package.submission_set.entry_uuid
    added: list[Association] = []

    def association(source: str, target: str) -> Association:
        entry_uuid = f"{URN_UUID}{new_uuid()}"
        made = Association(entry_uuid=entry_uuid, logical_uuid=entry_uuid, version="1",
                           status=AvailabilityStatus.APPROVED, type=AssociationType.HAS_MEMBER,
                           source_uuid=source, target_uuid=target)
        added.append(made)
        return made

    for folder, original in sorted(set(memberships)):
        for replacement in replacements.get(original, ()):
            if (folder, replacement) in stated:
                continue
            stated.add((folder, replacement))
            association(ss, association(folder, replacement).entry_uuid)
    return added


def external_references(package: SubmissionPackage) -> set[str]:
    """Association ends that are not objects of the package: they must be in the registry."""
    own = {o.entry_uuid for o in package.objects()}
    return {end for a in package.associations for end in (a.source_uuid, a.target_uuid) if end not in own}


def unique_ids(package: SubmissionPackage) -> set[str]:
    objects = [package.submission_set, *package.documents, *package.folders]
    return {o.unique_id for o in objects if o.unique_id}


def _last(urn: str | None) -> str:
    return str(urn).rsplit(":", 1)[-1]


@dataclass(slots=True)
class ReferencePlan:
    """What the accepted submission changes in registered objects."""

    replaced: list[str] = field(default_factory=list)  # DocumentEntries to deprecate (RPLC, XFRM_RPLC)
    folders: list[str] = field(default_factory=list)  # existing Folders gaining members (lastUpdateTime moves)


def check_references(
    package: SubmissionPackage, existing: Mapping[str, StoredObject], preassigned: Iterable[str] = ()
) -> tuple[list[RegistryError], ReferencePlan]:
    """The errors of a package's references to registered objects, and what it will change.

    ``existing`` holds the registered objects among the package's pre-assigned ids and its
    association ends outside the package. Rules within the package are the validator's.
    """
    errors: list[RegistryError] = []
    plan = ReferencePlan()
    ss = package.submission_set
    documents = {d.entry_uuid: d for d in package.documents}
    folders = {f.entry_uuid: f for f in package.folders}
    own = {o.entry_uuid for o in package.objects()}

    def fail(code: str, context: str, location: str) -> None:
        errors.append(error(code, context, location))

    for entry_uuid in sorted(preassigned):
        if (found := existing.get(entry_uuid)) is not None:
            fail(ErrorCode.REGISTRY_METADATA_ERROR,
                 f"entryUUID {entry_uuid} is already used in the registry (by a {found.kind}); "
                 "a new object needs a new entryUUID", entry_uuid)

    for a in package.associations:
        where = f"Association {a.entry_uuid} ({_last(a.type)} {a.source_uuid} -> {a.target_uuid})"
        missing = [end for end in (a.source_uuid, a.target_uuid) if end not in own and end not in existing]
        if missing:
            fail(ErrorCode.REGISTRY_METADATA_ERROR,
                 f"{where}: {' and '.join(missing)} is neither in this submission nor in the registry", a.entry_uuid)
            continue
        if a.type in v.RELATIONSHIP_TYPES:
            _check_relationship(a, where, documents, own, existing, plan, fail)
        elif a.type == v.HAS_MEMBER and not (a.source_uuid in own and a.target_uuid in own):
            _check_has_member(a, where, ss, documents, folders, existing, plan, fail)
    return errors, plan


def _check_relationship(a, where, documents, own, existing, plan, fail) -> None:
    name = _last(a.type)
    source = documents.get(a.source_uuid)
    if source is None:
        fail(ErrorCode.REGISTRY_METADATA_ERROR,
             f"{where}: the source of a {name} association must be a DocumentEntry of this submission",
             a.entry_uuid)
    if a.target_uuid in own:
        if a.type in v.REPLACING_TYPES:
            fail(ErrorCode.REGISTRY_METADATA_ERROR,
                 f"{where}: the document a {name} association replaces must be a DocumentEntry already in the "
                 "registry, not an object of this submission", a.entry_uuid)
        elif a.target_uuid not in documents:
            fail(ErrorCode.REGISTRY_METADATA_ERROR,
                 f"{where}: the target of a {name} association must be a DocumentEntry", a.entry_uuid)
        return
    target = existing[a.target_uuid]
    if target.kind != KIND_DOCUMENT_ENTRY:
        fail(ErrorCode.REGISTRY_METADATA_ERROR,
             f"{where}: the target of a {name} association must be a DocumentEntry; {a.target_uuid} is a "
             f"{target.kind}", a.entry_uuid)
        return
    if a.type in APPROVED_TARGET_TYPES and target.status != v.STATUS_APPROVED:
        fail(ErrorCode.REGISTRY_DEPRECATED_DOCUMENT,
             f"{where}: the target DocumentEntry {a.target_uuid} (uniqueId {target.unique_id}) is "
             f"{_last(target.status)}; a {name} association needs an Approved document", a.entry_uuid)
    source_patient = patient_id_column(source.patient_id) if source is not None else None
    if source_patient and target.patient_id != source_patient:
        fail(ErrorCode.PATIENT_ID_DOES_NOT_MATCH,
             f"{where}: the new DocumentEntry's patient id {source_patient} differs from {target.patient_id}, "
             f"the patient id of the target DocumentEntry {a.target_uuid}", a.entry_uuid)
    if a.type in v.REPLACING_TYPES and a.target_uuid not in plan.replaced:
        plan.replaced.append(a.target_uuid)


def _check_has_member(a, where, ss, documents, folders, existing, plan, fail) -> None:
    if a.source_uuid == ss.entry_uuid:
        target = existing[a.target_uuid]  # the target is registered (both ends new was filtered out)
        if target.kind != KIND_DOCUMENT_ENTRY:
            fail(ErrorCode.REGISTRY_METADATA_ERROR,
                 f"{where}: a SubmissionSet may reference registered DocumentEntries only; {a.target_uuid} is a "
                 f"{target.kind}", a.entry_uuid)
        elif a.submission_set_status not in (None, SUBMISSION_SET_STATUS_REFERENCE):
            fail(ErrorCode.REGISTRY_METADATA_ERROR,
                 f"{where}: {a.target_uuid} is a DocumentEntry already in the registry, so its SubmissionSetStatus "
                 f"must be Reference, not {a.submission_set_status}", a.entry_uuid)
        elif ss.patient_id is not None and target.patient_id != patient_id_column(ss.patient_id):
            fail(ErrorCode.PATIENT_ID_DOES_NOT_MATCH,
                 f"{where}: the referenced DocumentEntry's patient id {target.patient_id} differs from the "
                 f"SubmissionSet's patient id {patient_id_column(ss.patient_id)}", a.entry_uuid)
        return
    if a.source_uuid in folders:
        folder_patient = patient_id_column(folders[a.source_uuid].patient_id)
    elif a.source_uuid in existing:
        source = existing[a.source_uuid]
        if source.kind != KIND_FOLDER:
            fail(ErrorCode.REGISTRY_METADATA_ERROR,
                 f"{where}: a registered {source.kind} cannot gain members; only Folders can", a.entry_uuid)
            return
        if source.status != v.STATUS_APPROVED:
            fail(ErrorCode.REGISTRY_METADATA_ERROR,
                 f"{where}: Folder {a.source_uuid} is {_last(source.status)}; documents can be added to Approved "
                 "Folders only", a.entry_uuid)
            return
        folder_patient = source.patient_id
        if a.source_uuid not in plan.folders:
            plan.folders.append(a.source_uuid)
    else:
        return  # HasMember from another new object: the validator's business
    if a.target_uuid in documents:
        member_patient = patient_id_column(documents[a.target_uuid].patient_id)
    elif a.target_uuid in existing and existing[a.target_uuid].kind == KIND_DOCUMENT_ENTRY:
        member_patient = existing[a.target_uuid].patient_id
    else:
        kind = existing[a.target_uuid].kind if a.target_uuid in existing else "object of this submission"
        fail(ErrorCode.REGISTRY_METADATA_ERROR,
             f"{where}: a Folder's members are DocumentEntries; {a.target_uuid} is a {kind}", a.entry_uuid)
        return
    if folder_patient and member_patient and folder_patient != member_patient:
        fail(ErrorCode.PATIENT_ID_DOES_NOT_MATCH,
             f"{where}: the Folder's patient id {folder_patient} differs from the DocumentEntry's patient id "
             f"{member_patient}", a.entry_uuid)


def check_unique_ids(package: SubmissionPackage, claims: Mapping[str, UniqueIdClaim]) -> list[RegistryError]:
    """The errors of the package's uniqueIds that ``claims`` says the registry already holds."""
    errors: list[RegistryError] = []
    for kind, obj in [("SubmissionSet", package.submission_set), *(("Folder", f) for f in package.folders)]:
        held = claims.get(obj.unique_id) if obj.unique_id else None
        if held is not None:
            errors.append(error(ErrorCode.DUPLICATE_UNIQUE_ID_IN_REGISTRY,
                                f"{kind} {obj.entry_uuid}: uniqueId {obj.unique_id} is already in the registry "
                                f"({held.kind} {held.entry_uuid})", obj.entry_uuid))
    for d in package.documents:
        held = claims.get(d.unique_id) if d.unique_id else None
        if held is None:
            continue
        if held.kind != KIND_DOCUMENT_ENTRY:
            errors.append(error(ErrorCode.DUPLICATE_UNIQUE_ID_IN_REGISTRY,
                                f"DocumentEntry {d.entry_uuid}: uniqueId {d.unique_id} is already in the registry "
                                f"as the uniqueId of {held.kind} {held.entry_uuid}", d.entry_uuid))
        else:
            if (held.hash or "").lower() != (d.hash or "").lower():
                errors.append(error(ErrorCode.NON_IDENTICAL_HASH,
                                    f"DocumentEntry {d.entry_uuid}: uniqueId {d.unique_id} is already registered "
                                    f"(DocumentEntry {held.entry_uuid}) with hash {held.hash}; this submission has "
                                    f"hash {d.hash}", d.entry_uuid))
            if held.size is not None and d.size is not None and held.size != d.size:
                errors.append(error(ErrorCode.NON_IDENTICAL_SIZE,
                                    f"DocumentEntry {d.entry_uuid}: uniqueId {d.unique_id} is already registered "
                                    f"(DocumentEntry {held.entry_uuid}) with size {held.size}; this submission has "
                                    f"size {d.size}", d.entry_uuid))
    return errors


def fragment_with_status(fragment: str, status: str) -> str:
    """A stored ebRIM fragment with a new availability status (the root's ``status`` attribute)."""
    root = parse_xml(fragment.encode("utf-8"))
    root.set("status", status)
    return etree.tostring(root, encoding="unicode")


def fragment_with_last_update_time(fragment: str, last_update_time: str) -> str:
    """A stored Folder fragment whose lastUpdateTime Slot holds ``last_update_time`` (added if absent)."""
    root = parse_xml(fragment.encode("utf-8"))
    slot = next((s for s in root.iterchildren(_T_SLOT) if s.get("name") == "lastUpdateTime"), None)
    if slot is None:
        slot = etree.Element(_T_SLOT, name="lastUpdateTime")
        root.insert(0, slot)  # Slots come first in an ebRIM RegistryObject
    for child in list(slot):
        slot.remove(child)
    etree.SubElement(etree.SubElement(slot, _T_VALUE_LIST), _T_VALUE).text = last_update_time
    return etree.tostring(root, encoding="unicode")


# --- the handler ---------------------------------------------------------------------------------


async def register_document_set(registry, request: SoapRequest) -> SoapReply:
    """ITI-42: register the submission all or nothing; reply with a RegistryResponse."""
    body = request.body
    if body.tag != T_SUBMIT_OBJECTS_REQUEST:
        raise SoapFault(FAULT_SENDER, f"the body of a Register Document Set-b request must be "
                                      f"lcm:SubmitObjectsRequest, not {body.tag}")
    warnings: list[RegistryError] = []
    try:
        package, warnings = read_submission(body, registry.code_list)
        preassigned = preassigned_ids(package)
        now = datetime.now(UTC).replace(microsecond=0)
        assigned = with_folder_times(assign_entry_uuids(package), datetime_to_dtm(now))
        errors = await _store_package(registry, assigned, preassigned, now)
        if errors:  # nothing was stored: name objects by the ids the submitter knows
            errors = in_submitted_ids(errors, submitted_ids(package, assigned))
    except XDSError as exc:
        errors = exc.errors
    except Exception:
        log.exception("ITI-42: unexpected failure; nothing was stored")
        errors = [error(ErrorCode.REGISTRY_ERROR,
                        "internal error of the registry while registering; nothing was stored (see the registry log)")]
    return SoapReply(ACTION_ITI42_RESPONSE, build_registry_response([*errors, *warnings]))


def _fragments(objects: Iterable[RegistryObject]) -> dict[str, str]:
    return {o.entry_uuid: object_fragment(o).decode("utf-8") for o in objects}


async def _store_package(registry, package: SubmissionPackage, preassigned: set[str], now: datetime
                         ) -> list[RegistryError]:
    """Run the registry rules and the writes in one transaction; retried on deadlock/serialization failure."""
    rows = store.package_rows(package, _fragments(package.objects()))
    for attempt in range(1, ATTEMPTS + 1):
        async with registry.pool.acquire() as conn:
            try:
                await conn.execute(_BEGIN)
                errors = await _register(conn, registry, package, preassigned, rows, now)
                await conn.execute("ROLLBACK" if errors else "COMMIT")
                return errors
            except _RETRYABLE as exc:
                await rollback_or_discard(conn, "ITI-42")
                log.info("ITI-42: %s on attempt %d, retrying", type(exc).__name__, attempt)
            except BaseException:
                await rollback_or_discard(conn, "ITI-42")
                raise
        await asyncio.sleep(random.uniform(0.002, 0.01) * attempt)
    return [error(ErrorCode.REGISTRY_BUSY, f"the submission conflicted with concurrent submissions {ATTEMPTS} "
                                           "times; nothing was stored, please retry")]


async def _register(conn, registry, package, preassigned, rows, now) -> list[RegistryError]:
    """The registry rules and writes; returns the errors (the caller then rolls back)."""
    errors = await _patient_errors(conn, registry, package)
    plan = ReferencePlan()
    lookups = preassigned | external_references(package)
    if lookups:  # without ids from outside the package there is nothing to check against the registry
        reference_errors, plan = check_references(package, await store.find_objects(conn, lookups), preassigned)
        errors += reference_errors
    if errors:  # report uniqueId problems as well, without writing anything
        return errors + check_unique_ids(package, await store.find_claims(conn, unique_ids(package)))
    if plan.replaced:
        rows, folders = await _add_replacements_to_folders(conn, package, plan.replaced, rows)
        plan.folders.extend(f for f in folders if f not in plan.folders)
    try:
        held = await store.insert_package(conn, rows)
    except store.EntryUUIDInUse as exc:  # a concurrent submission took a pre-assigned id
        return [error(ErrorCode.REGISTRY_METADATA_ERROR, f"{exc}; a new object needs a new entryUUID",
                      exc.entry_uuid)]
    if held:
        claims = await store.find_claims(conn, held)
        if set(claims) != held:
            raise RuntimeError(f"uniqueIds {sorted(held - set(claims))} conflicted but have no claim")
        errors = check_unique_ids(package, claims)
        if errors:
            return errors
    if plan.replaced:
        errors = await _deprecate_replaced(conn, plan.replaced)
        if errors:
            return errors
    if plan.folders:
        errors = await _touch_folders(conn, plan.folders, now)
    if not errors and registry.policy is not None:  # a consent document records the patient's choice with it
        from registry.access_policy import record_consents

        await record_consents(conn, registry.policy, package.documents)
    return errors


async def _add_replacements_to_folders(conn, package: SubmissionPackage, replaced: list[str], rows: dict
                                       ) -> tuple[dict, list[str]]:
    """``rows`` with the HasMember Associations that put replacements into their originals' Folders,
    and those Folders (their lastUpdateTime moves forward like any Folder gaining a member)."""
    added = replacement_folder_memberships(package, await store.folders_holding(conn, replaced))
    if not added:
        return rows, []
    new_rows = store.association_rows(added, _fragments(added))
    folders = list(dict.fromkeys(a.source_uuid for a in added if a.source_uuid != package.submission_set.entry_uuid))
    return {**rows, "associations": [*rows["associations"], *new_rows]}, folders


async def _patient_errors(conn, registry, package: SubmissionPackage) -> list[RegistryError]:
    owners: dict[str, tuple] = {}
    for kind, obj in [("SubmissionSet", package.submission_set), *(("DocumentEntry", d) for d in package.documents),
                      *(("Folder", f) for f in package.folders)]:
        if obj.patient_id is not None:
            owners.setdefault(obj.patient_id.to_cx(), (obj.patient_id, f"{kind} {obj.entry_uuid}"))
    errors = []
    domain = registry.settings.affinity_domain_oid
    for cx, (patient_id, owner) in owners.items():
        state = await xds_patient_id_state(conn, patient_id, domain)
        if state is PatientIdState.UNKNOWN:
            where = f" in the affinity domain {domain}" if domain else ""
            errors.append(error(ErrorCode.UNKNOWN_PATIENT_ID,
                                f"patient id {cx} ({owner}) is not known to the registry{where}: it must come "
                                "through the patient identity feed first", owner.split()[-1]))
        elif state is PatientIdState.MERGED:
            errors.append(error(ErrorCode.UNKNOWN_PATIENT_ID,
                                f"patient id {cx} ({owner}) was merged into another patient and is no longer "
                                "accepted; submit under the surviving patient id", owner.split()[-1]))
    return errors


async def _deprecate_replaced(conn, replaced: list[str]) -> list[RegistryError]:
    locked = await store.lock_replacement_family(conn, replaced, FAMILY_TYPES)
    approved = {o.entry_uuid for o in locked}
    gone = [t for t in replaced if t not in approved]
    if gone:  # deprecated by a concurrent submission since we looked
        return [error(ErrorCode.REGISTRY_DEPRECATED_DOCUMENT,
                      f"DocumentEntry {t} was deprecated by another submission while this one was processed", t)
                for t in gone]
    changes = [(o.entry_uuid, fragment_with_status(o.ebrim, v.STATUS_DEPRECATED)) for o in locked]
    await store.set_document_status(conn, changes, v.STATUS_DEPRECATED, only_if=v.STATUS_APPROVED)
    return []


async def _touch_folders(conn, folders: list[str], now: datetime) -> list[RegistryError]:
    locked = await store.lock_folders(conn, folders)
    approved = {o.entry_uuid for o in locked}
    errors = [error(ErrorCode.REGISTRY_METADATA_ERROR,
                    f"Folder {f} stopped being Approved while this submission was processed", f)
              for f in folders if f not in approved]
    if errors:
        return errors
    dtm = datetime_to_dtm(now)
    await store.set_folder_last_update(conn, [(o.entry_uuid, fragment_with_last_update_time(o.ebrim, dtm))
                                              for o in locked], now)
    return []

