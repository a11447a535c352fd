"""ITI-62 Delete Document Set (Remove Metadata): the Document Registry's side (ITI TF-2b 3.62).

A Document Administrator names registry objects by entryUUID in an ``lcm:RemoveObjectsRequest``
(an ``rim:ObjectRefList``; no AdhocQuery, no deletionScope). DocumentEntries, SubmissionSets,
Folders and Associations may be removed. The request is all or nothing:

- an ObjectRef that names nothing in the registry (or is not a ``urn:uuid``, so cannot) is
  UnresolvedReferenceException;
- an object that an Association outside the request still references (as sourceObject or
  targetObject) is ReferencesExistException, naming that Association: removing the object
  alone would leave it dangling. This covers a SubmissionSet's or Folder's members, a
  document's RPLC/APND/XFRM relations, and the SubmissionSet HasMember that records a Folder
  membership (it references the Folder-DocumentEntry Association);
- anything else unexpected is XDSRegistryError; in every failure nothing is removed.

What the registry derives from the removed objects is kept consistent in the same transaction:
their uniqueId claims go (a DocumentEntry's uniqueId passes to the oldest remaining
DocumentEntry sharing it, an accepted resubmission, so the hash rule of ITI-42 still holds),
and Folders that lose a member get a new lastUpdateTime. Patients (the identity feed's) stay.

The transaction takes the patient-identity advisory lock exclusively: every ITI-42 holds it
shared from its reference checks to its commit, so no submission can attach an Association to
an object between our reference check and our commit (removals are rare, and short).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
from lxml import etree

from ihe.errors import ErrorCode, RegistryError, XDSError, build_registry_response, error
from ihe.http import SoapReply
from ihe.metadata import vocabulary as v
from ihe.metadata.model import datetime_to_dtm
from ihe.namespaces import ACTION_ITI62_RESPONSE, LCM, RIM, qn
from ihe.soap import FAULT_SENDER, SoapFault, SoapRequest
from registry import store
from registry.patients import IDENTITY_LOCK_KEY
from registry.register import fragment_with_last_update_time
from registry.store import KIND_ASSOCIATION, KIND_DOCUMENT_ENTRY, StoredObject, bare_uuid, urn_uuid

log = logging.getLogger(__name__)

T_REMOVE_OBJECTS_REQUEST = qn(LCM, "RemoveObjectsRequest")
T_OBJECT_REF_LIST = qn(RIM, "ObjectRefList")
T_OBJECT_REF = qn(RIM, "ObjectRef")
T_ADHOC_QUERY = qn(RIM, "AdhocQuery")
#: ebRS 3.0's default deletionScope; ITI-62 says the attribute is not sent, so only the default is accepted.
DELETE_ALL = "urn:oasis:names:tc:ebxml-regrep:DeletionScopeType:DeleteAll"

_BEGIN = f"BEGIN ISOLATION LEVEL READ COMMITTED; SELECT pg_advisory_xact_lock({IDENTITY_LOCK_KEY})"


# --- pure steps ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AssociationRef:
    """An Association as far as the reference rule needs it."""

    entry_uuid: str
    type: str
    source: str
    target: str


def read_remove_request(body: etree._Element) -> list[str]:
    """The ObjectRef ids of an ``lcm:RemoveObjectsRequest``, in order, without repeats.

    Raises SoapFault for another body and XDSError (XDSRegistryError) for a request ITI-62 does
    not allow: no ObjectRefList or an empty one, an AdhocQuery, a deletionScope other than DeleteAll.
    """
    if body.tag != T_REMOVE_OBJECTS_REQUEST:
        raise SoapFault(FAULT_SENDER, f"the body of a Delete Document Set request must be lcm:RemoveObjectsRequest, "
                                      f"not {body.tag}")
    problems = []
    if body.find(T_ADHOC_QUERY) is not None:
        problems.append("an AdhocQuery selecting the objects is not allowed (ITI TF-2b 3.62.4.1.2); name each "
                        "object in an rim:ObjectRefList")
    scope = body.get("deletionScope")
    if scope is not None and scope != DELETE_ALL:
        problems.append(f"deletionScope {scope!r} is not supported; ITI-62 removes the objects (send no "
                        "deletionScope)")
    ref_list = body.find(T_OBJECT_REF_LIST)
    ids = [] if ref_list is None else [(ref.get("id") or "").strip() for ref in ref_list.iterfind(T_OBJECT_REF)]
    if not ids:
        problems.append("the request names no object: it needs an rim:ObjectRefList with at least one rim:ObjectRef")
    if "" in ids:
        problems.append("an rim:ObjectRef has no id")
    if problems:
        raise XDSError([error(ErrorCode.REGISTRY_ERROR, p) for p in problems])
    return list(dict.fromkeys(ids))


def canonical_entry_uuid(ref: str) -> str | None:
    """``urn:uuid:`` + the lower-case UUID of an ObjectRef id, or None when it is not a ``urn:uuid``."""
    if ref[:9].lower() != "urn:uuid:":
        return None
    try:
        return urn_uuid(uuid.UUID(ref[9:]))
    except ValueError:
        return None


def check_removal(
    refs: Sequence[str], found: Mapping[str, StoredObject], referencing: Iterable[AssociationRef]
) -> list[RegistryError]:
    """The errors of removing ``refs`` (ObjectRef ids as sent) from the registry.

    ``found`` holds the registry's objects among the canonical ids; ``referencing`` the stored
    Associations (outside the request or not) whose source or target is one of them.
    """
    errors: list[RegistryError] = []
    removed: set[str] = set()
    for ref in refs:
        canon = canonical_entry_uuid(ref)
        if canon is None:
            errors.append(error(ErrorCode.UNRESOLVED_REFERENCE,
                                f"ObjectRef {ref!r} is not a urn:uuid entryUUID, so it names no object in the registry "
                                "(symbolic ids only exist within a submission)", ref))
        elif canon not in found:
            errors.append(error(ErrorCode.UNRESOLVED_REFERENCE,
                                f"ObjectRef {ref}: the registry holds no DocumentEntry, SubmissionSet, Folder or "
                                "Association with this entryUUID", ref))
        else:
            removed.add(canon)
    for a in sorted(referencing, key=lambda a: a.entry_uuid):
        if a.entry_uuid in removed:
            continue
        for role, end in (("sourceObject", a.source), ("targetObject", a.target)):
            if end in removed:
                errors.append(error(
                    ErrorCode.REFERENCES_EXIST,
                    f"{found[end].kind} {end} is the {role} of {_last(a.type)} Association {a.entry_uuid}, which this "
                    f"request does not remove; remove the Association in the same request", end))
    return errors


def touched_folders(removed: Mapping[str, StoredObject], associations: Iterable[AssociationRef]) -> list[str]:
    """Sources of removed HasMember Associations that stay: Folders (or SubmissionSets) losing a member."""
    return sorted({a.source for a in associations
                   if a.entry_uuid in removed and a.type == v.HAS_MEMBER and a.source not in removed})


def _last(urn: str) -> str:
    return urn.rsplit(":", 1)[-1]


# --- the handler ---------------------------------------------------------------------------------


async def delete_document_set(registry, request: SoapRequest) -> SoapReply:
    """ITI-62: remove the named objects all or nothing; reply with a RegistryResponse."""
    try:
        refs = read_remove_request(request.body)
        errors = await _remove(registry, refs)
    except XDSError as exc:
        errors = exc.errors
    except SoapFault:
        raise
    except Exception:
        log.exception("ITI-62: unexpected failure; nothing was removed")
        errors = [error(ErrorCode.REGISTRY_ERROR,
                        "internal error of the registry while removing; nothing was removed (see the registry log)")]
    return SoapReply(ACTION_ITI62_RESPONSE, build_registry_response(errors))


async def _remove(registry, refs: Sequence[str]) -> list[RegistryError]:
    async with registry.pool.acquire() as conn:
        try:
            await conn.execute(_BEGIN)
            errors = await _remove_in_transaction(conn, refs, datetime.now(UTC).replace(microsecond=0))
            await conn.execute("ROLLBACK" if errors else "COMMIT")
            if not errors:
                log.info("ITI-62: removed %d object(s): %s", len(refs), ", ".join(refs))
            return errors
        except BaseException:
            if not conn.is_closed() and conn.is_in_transaction():
                try:
                    await conn.execute("ROLLBACK")
                except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
                    conn.terminate()
            raise


async def _remove_in_transaction(conn: asyncpg.Connection, refs: Sequence[str], now: datetime
                                 ) -> list[RegistryError]:
    ids = sorted({c for r in refs if (c := canonical_entry_uuid(r)) is not None})
    found = await lock_objects(conn, ids)
    referencing = await associations_of(conn, found)
    errors = check_removal(refs, found, referencing)
    if errors:
        return errors
    removed_associations = await _associations_by_id(conn, [i for i, o in found.items() if o.kind == KIND_ASSOCIATION])
    folders = touched_folders(found, removed_associations)
    await delete_objects(conn, found)
    if folders:
        await _touch_folders(conn, folders, now)
    return []


# --- storage -------------------------------------------------------------------------------------

_TABLES = {"DocumentEntry": "document_entry", "SubmissionSet": "submission_set", "Folder": "folder",
           "Association": "association"}


async def lock_objects(conn: asyncpg.Connection, entry_uuids: Sequence[str]) -> dict[str, StoredObject]:
    """The registry objects among ``entry_uuids``, their rows locked until the transaction ends."""
    if not entry_uuids:
        return {}
    ids = [bare_uuid(i) for i in entry_uuids]
    found: dict[str, StoredObject] = {}
    for kind, table in _TABLES.items():
        patient = "NULL" if kind == KIND_ASSOCIATION else "patient_id"
        unique_id = "NULL" if kind == KIND_ASSOCIATION else "unique_id"
        rows = await conn.fetch(
            f"SELECT id, status, {patient} AS patient_id, {unique_id} AS unique_id, ebrim FROM {table}"
            " WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ids)
        for r in rows:
            found[urn_uuid(r["id"])] = StoredObject(urn_uuid(r["id"]), kind, r["status"], r["patient_id"],
                                                    r["unique_id"], r["ebrim"])
    return found


def _association(row: asyncpg.Record) -> AssociationRef:
    return AssociationRef(urn_uuid(row["id"]), row["type"], urn_uuid(row["source"]), urn_uuid(row["target"]))


async def associations_of(conn: asyncpg.Connection, objects: Iterable[str]) -> list[AssociationRef]:
    """Every stored Association whose sourceObject or targetObject is one of ``objects``."""
    ids = sorted({bare_uuid(i) for i in objects})
    if not ids:
        return []
    rows = await conn.fetch(
        "SELECT id, type, source, target FROM association WHERE source = ANY($1::uuid[])"
        " UNION SELECT id, type, source, target FROM association WHERE target = ANY($1::uuid[])", ids)
    return [_association(r) for r in rows]


async def _associations_by_id(conn: asyncpg.Connection, entry_uuids: Sequence[str]) -> list[AssociationRef]:
    if not entry_uuids:
        return []
    rows = await conn.fetch("SELECT id, type, source, target FROM association WHERE id = ANY($1::uuid[])",
                            [bare_uuid(i) for i in entry_uuids])
    return [_association(r) for r in rows]


async def delete_objects(conn: asyncpg.Connection, objects: Mapping[str, StoredObject]) -> None:
    """Delete the rows of ``objects`` and their uniqueId claims (one statement), then hand the claim of a
    removed DocumentEntry's uniqueId to the oldest DocumentEntry still holding that uniqueId, if any."""
    by_kind: dict[str, list[str]] = {kind: [] for kind in _TABLES}
    for o in objects.values():
        by_kind[o.kind].append(bare_uuid(o.entry_uuid))
    # ITI-57 versions: when the latest version of a logical object is removed, the newest remaining
    # version becomes the one stored queries answer by default.
    orphaned = {table: await conn.fetch(f"SELECT lid FROM {table} WHERE id = ANY($1::uuid[]) AND latest", ids)
                for table, ids in (("document_entry", by_kind["DocumentEntry"]), ("folder", by_kind["Folder"]))
                if ids}
    released = await conn.fetch(
        "WITH de AS (DELETE FROM document_entry WHERE id = ANY($1::uuid[])),"
        " ss AS (DELETE FROM submission_set WHERE id = ANY($2::uuid[])),"
        " fol AS (DELETE FROM folder WHERE id = ANY($3::uuid[])),"
        " assoc AS (DELETE FROM association WHERE id = ANY($4::uuid[]))"
        " DELETE FROM unique_id_claim WHERE object_id = ANY($1::uuid[] || $2::uuid[] || $3::uuid[])"
        " RETURNING unique_id, object_kind",
        by_kind["DocumentEntry"], by_kind["SubmissionSet"], by_kind["Folder"], by_kind["Association"],
    )
    for table, rows in orphaned.items():
        if rows:
            await conn.execute(
                f"UPDATE {table} t SET latest = true FROM (SELECT DISTINCT ON (lid) id FROM {table}"
                " WHERE lid = ANY($1::uuid[]) ORDER BY lid, version DESC) newest WHERE t.id = newest.id",
                [r["lid"] for r in rows])
    documents = sorted(r["unique_id"] for r in released if r["object_kind"] == KIND_DOCUMENT_ENTRY)
    if documents:
        await conn.execute(
            "INSERT INTO unique_id_claim (unique_id, object_id, object_kind, hash, size)"
            " SELECT DISTINCT ON (unique_id) unique_id, id, $2, lower(hash), size FROM document_entry"
            " WHERE unique_id = ANY($1::text[]) ORDER BY unique_id, seq"
            " ON CONFLICT (unique_id) DO NOTHING",
            documents, KIND_DOCUMENT_ENTRY,
        )


async def _touch_folders(conn: asyncpg.Connection, folders: Sequence[str], now: datetime) -> None:
    """Folders that lost a member were modified: a new lastUpdateTime (column and fragment)."""
    locked = await store.lock_folders(conn, folders)  # the Approved Folders among them
    dtm = datetime_to_dtm(now)
    await store.set_folder_last_update(conn, [(o.entry_uuid, fragment_with_last_update_time(o.ebrim, dtm))
                                              for o in locked], now)
