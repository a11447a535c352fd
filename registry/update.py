"""ITI-57 Update Document Set: the Document Registry's side of the XDS Metadata Update option (ITI TF-2b 3.57).

One request (an ``lcm:SubmitObjectsRequest``, action ``urn:ihe:iti:2010:UpdateDocumentSet``) carries
a new SubmissionSet and any number of these operations, applied all or nothing:

- **new version of a DocumentEntry or Folder** (3.57.4.1.3.3.1 / .3): the object with the logicalID
  (``lid``) of a registered object and a new entryUUID, a member of the SubmissionSet by a HasMember
  whose ``PreviousVersion`` slot names the version it updates. It must be the latest version, and
  Approved; its uniqueId and (DocumentEntry) objectType cannot change, nor its patient id. The new
  version becomes the latest (version + 1, Approved), the previous one Deprecated. Unless the HasMember
  says ``AssociationPropagation`` = ``no``, the Approved Folder memberships of the previous version are
  copied to the new one (as the NIST toolkit's registry does) and those Folders' lastUpdateTime moves.
  A SubmissionSet is never versioned: each submission is a new one.
- **availabilityStatus change** (3.57.4.1.3.3.2 / .4 / .5): an Association of type
  ``urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus`` from the SubmissionSet to the latest
  version of a DocumentEntry or Folder, or to a Folder membership or relationship Association, with
  the ``OriginalStatus`` (must be the current one) and ``NewStatus`` slots (Approved or Deprecated).
  Deprecating a Folder->DocumentEntry HasMember removes the document from the Folder.
- **Folder membership** (submitted associations): a HasMember from a registered Folder to a registered
  (or newly versioned) DocumentEntry, both Approved and of the same patient.

Error codes (3.57.4.1.3.4): XDSMetadataVersionError when PreviousVersion is not the latest version;
XDSPatientIDReconciliationError when a new version or a membership would mix patients;
XDSMetadataUpdateOperationError for metadata that is none of the operations; XDSMetadataUpdateError
for every other refused operation. Metadata rules shared with ITI-42 are checked by the same
validator (:mod:`ihe.metadata.validate`) and give the same codes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import uuid
from collections.abc import Iterable, Mapping
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
    DocumentEntry,
    RegistryObject,
    SubmissionPackage,
    datetime_to_dtm,
)
from ihe.metadata.validate import validate_submission
from ihe.namespaces import ACTION_ITI57_RESPONSE
from ihe.soap import FAULT_SENDER, SoapFault, SoapRequest
from registry import store, update_store
from registry.patients import IDENTITY_LOCK_KEY, PatientIdState, xds_patient_id_state
from registry.register import (
    T_SUBMIT_OBJECTS_REQUEST,
    assign_entry_uuids,
    check_unique_ids,
    fragment_with_last_update_time,
    fragment_with_status,
    in_submitted_ids,
    submitted_ids,
    with_folder_times,
)
from registry.store import KIND_ASSOCIATION, KIND_DOCUMENT_ENTRY, KIND_FOLDER, patient_id_column
from registry.update_store import StoredAssociation, Version

log = logging.getLogger(__name__)

PREVIOUS_VERSION = "PreviousVersion"
ASSOCIATION_PROPAGATION = "AssociationPropagation"
STATUSES = frozenset({v.STATUS_APPROVED, v.STATUS_DEPRECATED})
URN_UUID = "urn:uuid:"

ATTEMPTS = 4
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_BEGIN = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock_shared({IDENTITY_LOCK_KEY})"

UPDATE_ERROR = ErrorCode.METADATA_UPDATE_ERROR
OPERATION_ERROR = ErrorCode.METADATA_UPDATE_OPERATION_ERROR


# --- the operations of a request (pure) ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NewVersion:
    """A new version of a registered DocumentEntry or Folder (ids as submitted, lid canonical)."""

    kind: str
    entry_uuid: str
    lid: str
    previous_version: int
    propagate: bool


@dataclass(frozen=True, slots=True)
class StatusChange:
    association: str  # the UpdateAvailabilityStatus association's id, as submitted
    target: str  # canonical urn:uuid
    original: str
    new: str


@dataclass(slots=True)
class Operations:
    versions: list[NewVersion] = field(default_factory=list)
    status_changes: list[StatusChange] = field(default_factory=list)
    memberships: list[Association] = field(default_factory=list)  # Folder->DocumentEntry HasMembers


def canonical_uuid(value: str | None) -> str | None:
    """``urn:uuid:`` + the canonical lower-case UUID, or None when ``value`` is not a urn:uuid."""
    if not value or value[: len(URN_UUID)].lower() != URN_UUID:
        return None
    try:
        return f"{URN_UUID}{uuid.UUID(value[len(URN_UUID):])}"
    except ValueError:
        return None


def _same_id(a: str, b: str) -> bool:
    return (canonical_uuid(a) or a) == (canonical_uuid(b) or b)


def _slot(assoc: Association, name: str) -> list[str] | None:
    for slot in assoc.extra_slots:
        if slot.name == name:
            return list(slot.values)
    return None


def _short(urn: str) -> str:
    return str(urn).rsplit(":", 1)[-1]


def read_update(body: etree._Element, code_list=None) -> tuple[SubmissionPackage, list[RegistryError]]:
    """Read and validate an update request: ``(package, warnings)`` or XDSError.

    The status-change associations are set aside while the rest goes through the ITI-42 validator
    (they are not ITI-42 metadata). Extra metadata stays in the package, as in ITI-42.
    """
    package = read_submit_objects_request(body)
    changes = [a for a in package.associations if a.type == AssociationType.UPDATE_AVAILABILITY_STATUS]
    ids = {a.entry_uuid for a in changes}  # a SubmissionSet's HasMember to a change is tolerated, and kept
    aside = [a for a in package.associations if a.entry_uuid in ids or a.target_uuid in ids]
    rest = dataclasses.replace(package, associations=[a for a in package.associations if a not in aside])
    problems = validate_submission(rest, code_list=code_list)
    if any(p.is_error for p in problems):
        raise XDSError(problems)
    return package, problems


def plan_operations(package: SubmissionPackage) -> Operations:
    """The operations a validated request asks for; XDSError listing every request that is none."""
    errors: list[RegistryError] = []
    ops = Operations()
    ss = package.submission_set

    def fail(code: str, context: str, location: str | None) -> None:
        errors.append(error(code, context, location))

    if ss.logical_uuid and not _same_id(ss.logical_uuid, ss.entry_uuid):
        fail(UPDATE_ERROR, f"SubmissionSet {ss.entry_uuid}: a SubmissionSet cannot be updated (its logicalID "
                           f"{ss.logical_uuid} differs from its entryUUID); every update is a new SubmissionSet",
             ss.entry_uuid)
    own = {o.entry_uuid for o in package.objects()}
    members = {a.target_uuid: a for a in package.associations
               if a.type == AssociationType.HAS_MEMBER and a.source_uuid == ss.entry_uuid}
    lids: set[str] = set()
    versioned: set[str] = set()
    for kind, obj in [*((KIND_DOCUMENT_ENTRY, d) for d in package.documents),
                      *((KIND_FOLDER, f) for f in package.folders)]:
        where = f"{kind} {obj.entry_uuid}"
        lid = canonical_uuid(obj.logical_uuid)
        if not obj.logical_uuid or _same_id(obj.logical_uuid, obj.entry_uuid):
            fail(UPDATE_ERROR, f"{where} is an initial version (no logicalID other than its entryUUID): Update "
                               "Document Set submits new versions of registered objects only; register new objects "
                               "with Register Document Set-b", obj.entry_uuid)
            continue
        if lid is None:
            fail(UPDATE_ERROR, f"{where}: logicalID {obj.logical_uuid!r} is not a urn:uuid", obj.entry_uuid)
            continue
        if lid in lids:
            fail(UPDATE_ERROR, f"{where}: two new versions of logicalID {lid} in one request", obj.entry_uuid)
            continue
        lids.add(lid)
        member = members.get(obj.entry_uuid)  # the validator made every object a member of the SubmissionSet
        previous = _slot(member, PREVIOUS_VERSION) if member is not None else None
        if not previous or len(previous) != 1:
            fail(UPDATE_ERROR, f"{where}: the SubmissionSet's HasMember to it needs a PreviousVersion slot with one "
                               "value, the version this one replaces", obj.entry_uuid)
            continue
        if not previous[0].strip().isdigit():
            fail(UPDATE_ERROR, f"{where}: PreviousVersion {previous[0]!r} is not a version number", obj.entry_uuid)
            continue
        propagation = _slot(member, ASSOCIATION_PROPAGATION)  # type: ignore[arg-type]
        if propagation is not None and (len(propagation) != 1 or propagation[0].lower() not in ("yes", "no")):
            fail(UPDATE_ERROR, f"{where}: AssociationPropagation must be yes or no, not {propagation}",
                 obj.entry_uuid)
            continue
        versioned.add(obj.entry_uuid)
        ops.versions.append(NewVersion(kind, obj.entry_uuid, lid, int(previous[0]),
                                       propagation is None or propagation[0].lower() == "yes"))

    for a in package.associations:
        where = f"Association {a.entry_uuid} ({_short(a.type)} {a.source_uuid} -> {a.target_uuid})"
        if a.type == AssociationType.UPDATE_AVAILABILITY_STATUS:
            change = _status_change(a, where, ss.entry_uuid, own, fail)
            if change is not None:
                ops.status_changes.append(change)
        elif a.type == AssociationType.HAS_MEMBER and a.source_uuid == ss.entry_uuid:
            if a.target_uuid not in own:
                fail(OPERATION_ERROR, f"{where}: a SubmissionSet of an update holds the new versions and submitted "
                                      "associations only; referencing a registered object is not an update "
                                      "operation", a.entry_uuid)
        elif a.type == AssociationType.HAS_MEMBER:
            if a.source_uuid in own or canonical_uuid(a.source_uuid) is None:
                fail(OPERATION_ERROR, f"{where}: a membership submitted in an update must come from a registered "
                                      "Folder (its urn:uuid entryUUID)", a.entry_uuid)
            else:
                ops.memberships.append(a)
        else:
            fail(OPERATION_ERROR, f"{where}: {_short(a.type)} associations are not an operation of Update Document "
                                  "Set; submit new documents and their relationships with Register Document Set-b",
                 a.entry_uuid)
    if errors:
        raise XDSError(errors)
    return ops


def _status_change(a: Association, where: str, ss_id: str, own: set[str], fail) -> StatusChange | None:
    if a.source_uuid != ss_id:
        fail(UPDATE_ERROR, f"{where}: the source of an UpdateAvailabilityStatus association must be the "
                           "SubmissionSet", a.entry_uuid)
        return None
    target = canonical_uuid(a.target_uuid)
    if a.target_uuid in own or target is None:
        fail(UPDATE_ERROR, f"{where}: the target must be the urn:uuid entryUUID of a registered object",
             a.entry_uuid)
        return None
    ok = True
    for name, value in (("OriginalStatus", a.original_status), ("NewStatus", a.new_status)):
        if value is None:
            fail(UPDATE_ERROR, f"{where}: the {name} slot is missing", a.entry_uuid)
            ok = False
        elif value not in STATUSES:
            fail(UPDATE_ERROR, f"{where}: {name} {value!r} is not {v.STATUS_APPROVED} or {v.STATUS_DEPRECATED}",
                 a.entry_uuid)
            ok = False
    if not ok:
        return None
    return StatusChange(a.entry_uuid, target, a.original_status, a.new_status)  # type: ignore[arg-type]


# --- checks against the registry (pure) ----------------------------------------------------------


def check_versions(package: SubmissionPackage, ops: Operations, latest: Mapping[str, Version]) -> list[RegistryError]:
    """Each new version against the latest registered version of its logical id."""
    errors: list[RegistryError] = []
    objects: dict[str, RegistryObject] = {o.entry_uuid: o for o in (*package.documents, *package.folders)}
    for op in ops.versions:
        obj = objects[op.entry_uuid]
        where = f"{op.kind} {op.entry_uuid} (logicalID {op.lid})"
        prev = latest.get(op.lid)
        if prev is None or prev.kind != op.kind:
            errors.append(error(UPDATE_ERROR, f"{where}: no {op.kind} with this logicalID is in the registry",
                                op.entry_uuid))
            continue
        if prev.status != v.STATUS_APPROVED:
            errors.append(error(UPDATE_ERROR, f"{where}: the latest version ({prev.version}, {prev.entry_uuid}) is "
                                              f"{_short(prev.status)}; only Approved objects can be updated",
                                op.entry_uuid))
        if prev.version != op.previous_version:
            errors.append(error(ErrorCode.METADATA_VERSION_ERROR,
                                f"{where}: PreviousVersion is {op.previous_version} but the latest version in the "
                                f"registry is {prev.version}", op.entry_uuid))
        if obj.unique_id != prev.unique_id:
            errors.append(error(UPDATE_ERROR, f"{where}: uniqueId {obj.unique_id} differs from {prev.unique_id}, "
                                              "the uniqueId of the previous version; it cannot change",
                                op.entry_uuid))
        if isinstance(obj, DocumentEntry) and str(obj.type) != prev.object_type:
            errors.append(error(UPDATE_ERROR, f"{where}: objectType {obj.type} differs from {prev.object_type}, "
                                              "the objectType of the previous version; it cannot change",
                                op.entry_uuid))
        if patient_id_column(obj.patient_id) != prev.patient_id:
            errors.append(error(ErrorCode.PATIENT_ID_RECONCILIATION_ERROR,
                                f"{where}: patient id {patient_id_column(obj.patient_id)} differs from "
                                f"{prev.patient_id}, the patient id of the previous version", op.entry_uuid))
    return errors


def check_status_changes(
    ops: Operations, objects: Mapping[str, Version], associations: Mapping[str, StoredAssociation],
    replaced: Mapping[str, str],
) -> tuple[list[RegistryError], list[StatusChange]]:
    """Each status change against its registered target; returns the errors and the changes to apply.

    ``replaced`` maps the previous latest version of an object updated in this request to the new
    version's (assigned) entryUUID: a status change of it applies to the new version (ITI TF-2b 3.57.4.1.3.1).
    """
    errors: list[RegistryError] = []
    apply: list[StatusChange] = []
    for c in ops.status_changes:
        where = f"Association {c.association} (UpdateAvailabilityStatus -> {c.target})"
        if c.target in objects:
            target = objects[c.target]
            current = target.status
            if not target.latest:
                errors.append(error(UPDATE_ERROR, f"{where}: {target.kind} {c.target} is version {target.version}, "
                                                  "not the latest version of its logicalID", c.association))
                continue
        elif c.target in associations:
            assoc = associations[c.target]
            current = assoc.status
            if assoc.type == v.HAS_MEMBER and assoc.source_kind != KIND_FOLDER:
                errors.append(error(UPDATE_ERROR, f"{where}: only Folder memberships and relationship associations "
                                                  "change status; a SubmissionSet's HasMember cannot",
                                    c.association))
                continue
            if assoc.type != v.HAS_MEMBER and assoc.type not in v.RELATIONSHIP_TYPES:
                errors.append(error(UPDATE_ERROR, f"{where}: a {_short(assoc.type)} association's status cannot "
                                                  "change", c.association))
                continue
        else:
            errors.append(error(UPDATE_ERROR, f"{where}: no DocumentEntry, Folder or Association {c.target} is in "
                                              "the registry", c.association))
            continue
        if current != c.original:
            errors.append(error(UPDATE_ERROR, f"{where}: OriginalStatus is {_short(c.original)} but the object is "
                                              f"{_short(current)}", c.association))
            continue
        apply.append(dataclasses.replace(c, target=replaced.get(c.target, c.target)))
    return errors, apply


def check_patients(package: SubmissionPackage, ops: Operations, objects: Mapping[str, Version]) -> list[RegistryError]:
    """The DocumentEntries and Folders an update changes belong to the SubmissionSet's patient."""
    expected = patient_id_column(package.submission_set.patient_id)
    errors = []
    for where, target in [*((f"Association {c.association}", c.target) for c in ops.status_changes),
                          *((f"Association {a.entry_uuid}", canonical_uuid(a.source_uuid)) for a in ops.memberships)]:
        obj = objects.get(target or "")
        if obj is not None and expected and obj.patient_id != expected:
            errors.append(error(ErrorCode.PATIENT_ID_RECONCILIATION_ERROR,
                                f"{where}: {obj.kind} {obj.entry_uuid} belongs to patient {obj.patient_id}, not to "
                                f"the SubmissionSet's patient {expected}", where.split()[-1]))
    return errors


def check_memberships(
    package: SubmissionPackage, ops: Operations, objects: Mapping[str, Version],
    existing: set[tuple[str, str]],
) -> list[RegistryError]:
    """Folder->DocumentEntry HasMembers: both ends Approved latest versions of one patient, not yet linked."""
    errors: list[RegistryError] = []
    documents = {d.entry_uuid: d for d in package.documents}
    for a in ops.memberships:
        where = f"Association {a.entry_uuid} (HasMember {a.source_uuid} -> {a.target_uuid})"
        folder = objects.get(canonical_uuid(a.source_uuid) or "")
        if folder is None or folder.kind != KIND_FOLDER:
            errors.append(error(UPDATE_ERROR, f"{where}: {a.source_uuid} is not a Folder in the registry",
                                a.entry_uuid))
            continue
        if a.target_uuid in documents:
            member_patient = patient_id_column(documents[a.target_uuid].patient_id)
        else:
            member = objects.get(canonical_uuid(a.target_uuid) or "")
            if member is None or member.kind != KIND_DOCUMENT_ENTRY:
                errors.append(error(UPDATE_ERROR, f"{where}: {a.target_uuid} is not a DocumentEntry in the registry",
                                    a.entry_uuid))
                continue
            if member.status != v.STATUS_APPROVED or not member.latest:
                errors.append(error(UPDATE_ERROR, f"{where}: DocumentEntry {a.target_uuid} is not an Approved latest "
                                                  "version", a.entry_uuid))
                continue
            member_patient = member.patient_id
            if (folder.entry_uuid, member.entry_uuid) in existing:
                errors.append(error(UPDATE_ERROR, f"{where}: the DocumentEntry is already a member of the Folder",
                                    a.entry_uuid))
                continue
        if folder.status != v.STATUS_APPROVED or not folder.latest:
            errors.append(error(UPDATE_ERROR, f"{where}: Folder {a.source_uuid} is not an Approved latest version",
                                a.entry_uuid))
            continue
        if member_patient != folder.patient_id:
            errors.append(error(ErrorCode.PATIENT_ID_RECONCILIATION_ERROR,
                                f"{where}: the Folder's patient id {folder.patient_id} differs from the "
                                f"DocumentEntry's {member_patient}", a.entry_uuid))
    return errors


def as_new_versions(assigned: SubmissionPackage, submitted: SubmissionPackage, ops: Operations,
                    latest: Mapping[str, Version]) -> SubmissionPackage:
    """The assigned package with each new version's lid and version number (assignment made them firsts)."""
    numbers = {op.entry_uuid: (op.lid, latest[op.lid].version + 1) for op in ops.versions}
    by_assigned = {new.entry_uuid: old.entry_uuid for old, new in zip(submitted.objects(), assigned.objects(),
                                                                      strict=True)}

    def version(obj):
        lid_number = numbers.get(by_assigned[obj.entry_uuid])
        if lid_number is None:
            return obj
        return dataclasses.replace(obj, logical_uuid=lid_number[0], version=str(lid_number[1]))

    return dataclasses.replace(assigned, documents=[version(d) for d in assigned.documents],
                               folders=[version(f) for f in assigned.folders])


def propagated_memberships(memberships: Iterable[StoredAssociation], new_ids: Mapping[str, str],
                           new_uuid=uuid.uuid4) -> list[Association]:
    """Copies of the previous versions' Folder memberships for the new versions (``new_ids``: old -> new)."""
    out = []
    for m in memberships:
        source, target = new_ids.get(m.source, m.source), new_ids.get(m.target, m.target)
        if (source, target) == (m.source, m.target):
            continue
        entry = f"{URN_UUID}{new_uuid()}"
        out.append(Association(entry_uuid=entry, logical_uuid=entry, version="1", status=AvailabilityStatus.APPROVED,
                               type=AssociationType.HAS_MEMBER, source_uuid=source, target_uuid=target))
    return out


# --- the handler ---------------------------------------------------------------------------------


async def update_document_set(registry, request: SoapRequest) -> SoapReply:
    """ITI-57: apply every operation of the request or none; reply with a RegistryResponse."""
    body = request.body
    if body.tag != T_SUBMIT_OBJECTS_REQUEST:
        raise SoapFault(FAULT_SENDER, f"the body of an Update Document Set request must be "
                                      f"lcm:SubmitObjectsRequest, not {body.tag}")
    warnings: list[RegistryError] = []
    try:
        package, warnings = read_update(body, registry.code_list)
        ops = plan_operations(package)
        assigned = assign_entry_uuids(package)
        now = datetime.now(UTC).replace(microsecond=0)
        errors = await _run(registry, package, assigned, ops, now)
        if errors:
            errors = in_submitted_ids(errors, submitted_ids(package, assigned))
    except XDSError as exc:
        errors = exc.errors
    except Exception:
        log.exception("ITI-57: unexpected failure; nothing was changed")
        errors = [error(ErrorCode.REGISTRY_ERROR,
                        "internal error of the registry while updating; nothing was changed (see the registry log)")]
    return SoapReply(ACTION_ITI57_RESPONSE, build_registry_response([*errors, *warnings]))


async def _run(registry, submitted, assigned, ops, now) -> list[RegistryError]:
    """The checks and writes in one transaction; retried on deadlock/serialization failure."""
    for attempt in range(1, ATTEMPTS + 1):
        async with registry.pool.acquire() as conn:
            try:
                await conn.execute(_BEGIN)
                errors = await _update(conn, registry, submitted, assigned, ops, now)
                await conn.execute("ROLLBACK" if errors else "COMMIT")
                return errors
            except _RETRYABLE as exc:
                await rollback_or_discard(conn, "ITI-57")
                log.info("ITI-57: %s on attempt %d, retrying", type(exc).__name__, attempt)
            except asyncpg.UniqueViolationError as exc:
                await rollback_or_discard(conn, "ITI-57")
                if exc.constraint_name and "lid" in exc.constraint_name:
                    return [error(ErrorCode.METADATA_VERSION_ERROR, "another update of the same object was "
                                  "committed while this one was processed; nothing was changed, query the latest "
                                  "version and retry")]
                raise
            except BaseException:
                await rollback_or_discard(conn, "ITI-57")
                raise
        await asyncio.sleep(random.uniform(0.002, 0.01) * attempt)
    return [error(ErrorCode.REGISTRY_BUSY, f"the update conflicted with concurrent submissions {ATTEMPTS} times; "
                                           "nothing was changed, please retry")]


async def _update(conn, registry, submitted: SubmissionPackage, assigned: SubmissionPackage, ops: Operations,
                  now: datetime) -> list[RegistryError]:
    errors = await _patient_errors(conn, registry, assigned)
    latest: dict[str, Version] = {}
    for kind in (KIND_DOCUMENT_ENTRY, KIND_FOLDER):
        lids = [op.lid for op in ops.versions if op.kind == kind]
        found = await update_store.lock_latest(conn, kind, lids)
        if len(found) < len(lids):  # a concurrent update may have committed a newer version while we waited:
            found |= await update_store.lock_latest(conn, kind, set(lids) - set(found))  # a new statement sees it
        latest.update(found)
    errors += check_versions(submitted, ops, latest)

    referenced = {c.target for c in ops.status_changes}
    referenced |= {c for a in ops.memberships for x in (a.source_uuid, a.target_uuid) if (c := canonical_uuid(x))}
    objects = await update_store.find_versions(conn, referenced)
    associations = await update_store.find_associations(conn, referenced - set(objects))
    id_of = {old.entry_uuid: new.entry_uuid for old, new in zip(submitted.objects(), assigned.objects(), strict=True)}
    replaced = {latest[op.lid].entry_uuid: id_of[op.entry_uuid] for op in ops.versions if op.lid in latest}
    status_errors, changes = check_status_changes(ops, objects, associations, replaced)
    status_errors += check_patients(assigned, ops, objects)
    errors += status_errors
    pairs = {(canonical_uuid(a.source_uuid), canonical_uuid(a.target_uuid)) for a in ops.memberships}
    existing = {(m.source, m.target) for m in await update_store.folder_memberships(conn, {p[0] for p in pairs if p[0]})
                if (m.source, m.target) in pairs}
    errors += check_memberships(submitted, ops, objects, existing)
    if errors:
        return errors

    package = with_folder_times(as_new_versions(assigned, submitted, ops, latest), datetime_to_dtm(now))
    # memberships to carry over, read while the previous versions are still the latest
    propagating = {latest[op.lid].entry_uuid: id_of[op.entry_uuid] for op in ops.versions if op.propagate}
    to_copy = await update_store.folder_memberships(conn, propagating)
    # the previous versions step aside first: one latest row per lid (unique index)
    for kind in (KIND_DOCUMENT_ENTRY, KIND_FOLDER):
        retiring = [latest[op.lid] for op in ops.versions if op.kind == kind]
        await update_store.retire_versions(conn, kind, [(p.entry_uuid, fragment_with_status(p.ebrim,
                                                                                             v.STATUS_DEPRECATED))
                                                        for p in retiring])
    rows = store.package_rows(package, {o.entry_uuid: object_fragment(o).decode("utf-8") for o in package.objects()})
    numbers = {store.bare_uuid(o.entry_uuid): int(o.version) for o in (*package.documents, *package.folders)}
    for row in (*rows["documents"], *rows["folders"]):
        row["version"] = numbers[row["id"]]
    versioned_ids = set(numbers)
    rows["claims"] = [c for c in rows["claims"] if c["object_id"] not in versioned_ids]  # uniqueIds stay claimed
    try:
        held = await store.insert_package(conn, rows)
    except store.EntryUUIDInUse as exc:
        return [error(ErrorCode.REGISTRY_METADATA_ERROR, f"{exc}; a new version or object needs a new entryUUID",
                      exc.entry_uuid)]
    if held:
        errors = check_unique_ids(SubmissionPackage(submission_set=package.submission_set),
                                  await store.find_claims(conn, held))
        if errors:
            return errors

    touched: set[str] = {canonical_uuid(a.source_uuid) for a in ops.memberships}  # type: ignore[misc]
    copies = propagated_memberships(to_copy, propagating)
    if copies:
        await update_store.insert_associations(conn, [{
            "id": store.bare_uuid(a.entry_uuid), "type": str(a.type), "source": store.bare_uuid(a.source_uuid),
            "target": store.bare_uuid(a.target_uuid), "status": str(a.status), "home_community_id": None,
            "ebrim": object_fragment(a).decode("utf-8")} for a in copies])
        touched |= {a.source_uuid for a in copies}

    for c in changes:
        errors += await _change_status(conn, c)
    if errors:
        return errors
    if touched:
        await _touch_folders(conn, sorted(touched), now)
    return []


async def _change_status(conn, c: StatusChange) -> list[RegistryError]:
    objects = await update_store.find_versions(conn, [c.target])
    if c.target in objects:
        kind, fragment = objects[c.target].kind, objects[c.target].ebrim
    else:
        assoc = (await update_store.find_associations(conn, [c.target]))[c.target]
        kind, fragment = KIND_ASSOCIATION, assoc.ebrim
    if await update_store.set_status(conn, kind, c.target, fragment_with_status(fragment, c.new), c.new,
                                     only_if=c.original):
        return []
    return [error(UPDATE_ERROR, f"Association {c.association}: {c.target} is no longer {_short(c.original)}",
                  c.association)]


async def _touch_folders(conn, folders: list[str], now: datetime) -> None:
    """Folders that gained (or whose members gained) versions get lastUpdateTime = now (ITI TF-3 4.2.3.4)."""
    locked = await store.lock_folders(conn, folders)
    dtm = datetime_to_dtm(now)
    await store.set_folder_last_update(conn, [(o.entry_uuid, fragment_with_last_update_time(o.ebrim, dtm))
                                              for o in locked], now)


async def _patient_errors(conn, registry, package: SubmissionPackage) -> list[RegistryError]:
    """The SubmissionSet's patient must be known and not merged away (objects share it: validator)."""
    ss = package.submission_set
    if ss.patient_id is None:
        return []
    state = await xds_patient_id_state(conn, ss.patient_id, registry.settings.affinity_domain_oid)
    if state is PatientIdState.KNOWN:
        return []
    why = ("was merged into another patient; use the surviving patient id" if state is PatientIdState.MERGED
           else "is not known to the registry")
    return [error(ErrorCode.UNKNOWN_PATIENT_ID, f"patient id {ss.patient_id.to_cx()} of SubmissionSet "
                                                f"{ss.entry_uuid} {why}", ss.entry_uuid)]
