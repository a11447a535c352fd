"""PostgreSQL storage of registry objects (schema: schemas/registry/001_registry.sql).

Every SQL statement of ITI-42 lives here, behind functions that take an asyncpg connection
and speak in entryUUIDs (``urn:uuid:...``) and plain values, so that another engine could
replace this module without touching the transaction logic. The caller owns the transaction.

Writes are few and batched because registering is the registry's hot path: a whole package
(uniqueId claims, SubmissionSet, DocumentEntries, Folders, Associations) goes in ONE statement
of data-modifying CTEs fed by a single jsonb parameter (``jsonb_populate_recordset`` maps
JSON arrays onto the ``text[]`` code columns, which ``unnest`` of 2-D arrays cannot).

Conventions of the stored columns (shared with the stored-query engine):
- ``id``/``lid``/``source``/``target``: the UUID without its ``urn:uuid:`` prefix;
- ``status``: the full ebRIM status URN; ``patient_id``: the canonical CX ``id^^^&OID&ISO`` (see ``patient_id_column``);
- codes: ``code^^^codingScheme``; times: the earliest UTC instant of the HL7 DTM;
- ``hash``: lower case, in both ``document_entry`` and ``unique_id_claim``.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from ihe.errors import ErrorCode, XDSError
from ihe.metadata import vocabulary as v
from ihe.metadata.model import Association, Author, Code, Identifiable, SubmissionPackage, dtm_to_datetime

KIND_DOCUMENT_ENTRY = "DocumentEntry"
KIND_SUBMISSION_SET = "SubmissionSet"
KIND_FOLDER = "Folder"
KIND_ASSOCIATION = "Association"

URN_UUID = "urn:uuid:"


def bare_uuid(entry_uuid: str) -> str:
    """``urn:uuid:x`` -> ``x`` (the form of the uuid columns)."""
    return entry_uuid[len(URN_UUID):] if entry_uuid[: len(URN_UUID)].lower() == URN_UUID else entry_uuid


def urn_uuid(value: uuid.UUID | str) -> str:
    return f"{URN_UUID}{value}"


@dataclass(frozen=True, slots=True)
class StoredObject:
    """What the registry logic needs to know about an object already in the registry."""

    entry_uuid: str
    kind: str
    status: str
    patient_id: str | None = None
    unique_id: str | None = None
    ebrim: str = ""


@dataclass(frozen=True, slots=True)
class UniqueIdClaim:
    """The object holding a uniqueId, and its hash and size for DocumentEntries."""

    unique_id: str
    entry_uuid: str
    kind: str
    hash: str | None
    size: int | None = None


class EntryUUIDInUse(Exception):
    """An insert hit an entryUUID that is already stored (a concurrent submission took it)."""

    def __init__(self, entry_uuid: str | None) -> None:
        super().__init__(f"entryUUID {entry_uuid or '(unknown)'} is already used in the registry")
        self.entry_uuid = entry_uuid


# --- rows of a package (pure) --------------------------------------------------------------------


def _codes(codes: Iterable[Code | None]) -> list[str]:
    return [c.key for c in codes if c is not None]


def _persons(authors: Iterable[Author]) -> list[str]:
    return [a.person for a in authors if a.person]


def _time(value: str | None, owner: str, attribute: str) -> str | None:
    if not value:
        return None
    try:
        return dtm_to_datetime(value).isoformat()
    except ValueError:
        raise XDSError.of(ErrorCode.REGISTRY_METADATA_ERROR,
                          f"{owner}: {attribute} {value!r} is not an HL7 DTM (YYYY[MM[DD[hh[mm[ss]]]]])") from None


def patient_id_column(identifiable) -> str | None:
    """The patient id column's form: ``id^^^&OID&ISO`` (a namespace id sent beside the OID is dropped,
    so one patient is one value whatever the source put in CX-4's first component)."""
    if identifiable is None:
        return None
    if identifiable.authority_oid:
        return Identifiable(identifiable.id, identifiable.authority_oid).to_cx()
    return identifiable.to_cx()


def package_rows(package: SubmissionPackage, fragments: Mapping[str, str]) -> dict[str, list[dict]]:
    """The table rows of a package whose ids are all assigned ``urn:uuid`` entryUUIDs.

    ``fragments`` maps each entryUUID to its ebRIM fragment (the ``ebrim`` column). A uniqueId
    used twice within the package is refused here: the claim table could not tell them apart.
    """
    claims: dict[str, dict] = {}

    def claim(unique_id: str | None, entry_uuid: str, kind: str, hash_: str | None = None,
              size: int | None = None) -> None:
        if not unique_id:
            return
        if unique_id in claims:
            raise XDSError.of(ErrorCode.REGISTRY_METADATA_ERROR,
                              f"uniqueId {unique_id} is used by more than one object of this submission "
                              f"({claims[unique_id]['object_kind']} and {kind} {entry_uuid})")
        claims[unique_id] = {"unique_id": unique_id, "object_id": bare_uuid(entry_uuid), "object_kind": kind,
                             "hash": hash_, "size": size}

    ss = package.submission_set
    owner = f"SubmissionSet {ss.entry_uuid}"
    claim(ss.unique_id, ss.entry_uuid, KIND_SUBMISSION_SET)
    submission_sets = [{
        "id": bare_uuid(ss.entry_uuid),
        "lid": bare_uuid(ss.logical_uuid or ss.entry_uuid),
        "status": ss.status or v.STATUS_APPROVED,
        "patient_id": patient_id_column(ss.patient_id),
        "unique_id": ss.unique_id,
        "source_id": ss.source_id,
        "submission_time": _time(ss.submission_time, owner, "submissionTime"),
        "author_person": _persons(ss.authors),
        "content_type_code": _codes([ss.content_type_code]),
        "home_community_id": ss.home_community_id,
        "ebrim": fragments[ss.entry_uuid],
    }]
    documents = []
    for d in package.documents:
        owner = f"DocumentEntry {d.entry_uuid}"
        hash_ = d.hash.lower() if d.hash else None
        claim(d.unique_id, d.entry_uuid, KIND_DOCUMENT_ENTRY, hash_, d.size)
        documents.append({
            "id": bare_uuid(d.entry_uuid),
            "lid": bare_uuid(d.logical_uuid or d.entry_uuid),
            "version": 1,
            "status": d.status or v.STATUS_APPROVED,
            "object_type": str(d.type),
            "patient_id": patient_id_column(d.patient_id),
            "unique_id": d.unique_id,
            "hash": hash_,
            "size": d.size,
            "repository_unique_id": d.repository_unique_id,
            "class_code": _codes([d.class_code]),
            "type_code": _codes([d.type_code]),
            "format_code": _codes([d.format_code]),
            "practice_setting_code": _codes([d.practice_setting_code]),
            "healthcare_facility_type_code": _codes([d.healthcare_facility_type_code]),
            "confidentiality_code": _codes(d.confidentiality_codes),
            "event_code": _codes(d.event_codes),
            "creation_time": _time(d.creation_time, owner, "creationTime"),
            "service_start_time": _time(d.service_start_time, owner, "serviceStartTime"),
            "service_stop_time": _time(d.service_stop_time, owner, "serviceStopTime"),
            "author_person": _persons(d.authors),
            "reference_id": [r.value for r in d.reference_ids],
            "home_community_id": d.home_community_id,
            "ebrim": fragments[d.entry_uuid],
        })
    folders = []
    for f in package.folders:
        claim(f.unique_id, f.entry_uuid, KIND_FOLDER)
        folders.append({
            "id": bare_uuid(f.entry_uuid),
            "lid": bare_uuid(f.logical_uuid or f.entry_uuid),
            "version": 1,
            "status": f.status or v.STATUS_APPROVED,
            "patient_id": patient_id_column(f.patient_id),
            "unique_id": f.unique_id,
            "last_update_time": _time(f.last_update_time, f"Folder {f.entry_uuid}", "lastUpdateTime"),
            "code": _codes(f.codes),
            "home_community_id": f.home_community_id,
            "ebrim": fragments[f.entry_uuid],
        })
    associations = association_rows(package.associations, fragments)
    return {
        # Sorted so that concurrent submissions claim shared uniqueIds in one order (no deadlock).
        "claims": sorted(claims.values(), key=lambda c: c["unique_id"]),
        "submission_sets": submission_sets,
        "documents": documents,
        "folders": folders,
        "associations": associations,
    }


def association_rows(associations: Iterable[Association], fragments: Mapping[str, str]) -> list[dict]:
    """The ``association`` rows of Associations with assigned ids (``fragments`` as for :func:`package_rows`)."""
    return [{
        "id": bare_uuid(a.entry_uuid),
        "type": str(a.type),
        "source": bare_uuid(a.source_uuid),
        "target": bare_uuid(a.target_uuid),
        "status": a.status or v.STATUS_APPROVED,
        "home_community_id": a.home_community_id,
        "ebrim": fragments[a.entry_uuid],
    } for a in associations]


# --- writes --------------------------------------------------------------------------------------

_SS_COLUMNS = ("id, lid, status, patient_id, unique_id, source_id, submission_time, author_person, "
               "content_type_code, home_community_id, ebrim")
_DE_COLUMNS = ("id, lid, version, status, object_type, patient_id, unique_id, hash, size, repository_unique_id, "
               "class_code, type_code, format_code, practice_setting_code, healthcare_facility_type_code, "
               "confidentiality_code, event_code, creation_time, service_start_time, service_stop_time, "
               "author_person, reference_id, home_community_id, ebrim")
_FOL_COLUMNS = "id, lid, version, status, patient_id, unique_id, last_update_time, code, home_community_id, ebrim"
_AS_COLUMNS = "id, type, source, target, status, home_community_id, ebrim"


def _insert(cte: str, table: str, columns: str, key: str) -> str:
    return (f"{cte} AS (INSERT INTO {table} ({columns}) SELECT {columns} "
            f"FROM jsonb_populate_recordset(NULL::{table}, $1::jsonb -> '{key}'))")


_INSERT_PACKAGE = (
    "WITH claimed AS (INSERT INTO unique_id_claim (unique_id, object_id, object_kind, hash, size)"
    " SELECT unique_id, object_id, object_kind, hash, size"
    " FROM jsonb_populate_recordset(NULL::unique_id_claim, $1::jsonb -> 'claims') ORDER BY unique_id"
    " ON CONFLICT (unique_id) DO NOTHING RETURNING unique_id), "
    + ", ".join((
        _insert("ss", "submission_set", _SS_COLUMNS, "submission_sets"),
        _insert("de", "document_entry", _DE_COLUMNS, "documents"),
        _insert("fol", "folder", _FOL_COLUMNS, "folders"),
        _insert("assoc", "association", _AS_COLUMNS, "associations"),
    ))
    + " SELECT coalesce(array_agg(unique_id), '{}') FROM claimed"
)


def _uuid_from_detail(detail: str | None) -> str | None:
    """The key of a primary-key violation's detail, ``Key (id)=(<uuid>) already exists.``"""
    if not detail or "=(" not in detail:
        return None
    value = detail.split("=(", 1)[1].split(")", 1)[0]
    return urn_uuid(value)


async def insert_package(conn: asyncpg.Connection, rows: Mapping[str, list[dict]]) -> set[str]:
    """Insert a package's rows (from :func:`package_rows`) in one statement.

    Returns the uniqueIds that were NOT claimed because the registry already holds them (their
    objects' rows are inserted all the same: the caller decides, from :func:`find_claims`, whether
    that is an accepted resubmission or an error, and rolls back if it is an error). Raises
    :class:`EntryUUIDInUse` when an entryUUID is taken; the transaction is then aborted.
    """
    try:
        claimed = await conn.fetchval(_INSERT_PACKAGE, json.dumps(rows, separators=(",", ":")))
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name and exc.constraint_name.endswith("_pkey"):
            raise EntryUUIDInUse(_uuid_from_detail(exc.detail)) from None
        raise
    return {c["unique_id"] for c in rows["claims"]} - set(claimed)


async def set_document_status(
    conn: asyncpg.Connection, changes: Sequence[tuple[str, str]], status: str, *, only_if: str
) -> set[str]:
    """Set ``status`` and the rewritten fragment of DocumentEntries ``(entryUUID, ebrim)``.

    Only rows still in status ``only_if`` change; returns the entryUUIDs that did, so the caller
    notices a concurrent change.
    """
    if not changes:
        return set()
    rows = await conn.fetch(
        "UPDATE document_entry d SET status = $3, ebrim = c.ebrim"
        " FROM unnest($1::uuid[], $2::text[]) AS c(id, ebrim) WHERE d.id = c.id AND d.status = $4 RETURNING d.id",
        [bare_uuid(i) for i, _ in changes], [e for _, e in changes], status, only_if,
    )
    return {urn_uuid(r["id"]) for r in rows}


async def set_folder_last_update(
    conn: asyncpg.Connection, changes: Sequence[tuple[str, str]], last_update_time: datetime
) -> set[str]:
    """Set lastUpdateTime (column) and the rewritten fragment of Approved Folders ``(entryUUID, ebrim)``."""
    if not changes:
        return set()
    rows = await conn.fetch(
        "UPDATE folder f SET last_update_time = $3, ebrim = c.ebrim"
        " FROM unnest($1::uuid[], $2::text[]) AS c(id, ebrim) WHERE f.id = c.id AND f.status = $4 RETURNING f.id",
        [bare_uuid(i) for i, _ in changes], [e for _, e in changes], last_update_time, v.STATUS_APPROVED,
    )
    return {urn_uuid(r["id"]) for r in rows}


# --- reads ---------------------------------------------------------------------------------------

_FIND_OBJECTS = (
    "SELECT id, 'DocumentEntry' AS kind, status, patient_id, unique_id, ebrim FROM document_entry"
    " WHERE id = ANY($1::uuid[])"
    " UNION ALL SELECT id, 'SubmissionSet', status, patient_id, unique_id, ebrim FROM submission_set"
    " WHERE id = ANY($1::uuid[])"
    " UNION ALL SELECT id, 'Folder', status, patient_id, unique_id, ebrim FROM folder WHERE id = ANY($1::uuid[])"
    " UNION ALL SELECT id, 'Association', status, NULL, NULL, ebrim FROM association WHERE id = ANY($1::uuid[])"
)


def _stored(row: asyncpg.Record, kind: str | None = None) -> StoredObject:
    return StoredObject(urn_uuid(row["id"]), kind or row["kind"], row["status"], row["patient_id"],
                        row["unique_id"], row["ebrim"])


async def find_objects(conn: asyncpg.Connection, entry_uuids: Iterable[str]) -> dict[str, StoredObject]:
    """The stored objects among ``entry_uuids`` (any kind), by entryUUID; absent ones are left out."""
    ids = sorted({bare_uuid(i) for i in entry_uuids})
    if not ids:
        return {}
    return {o.entry_uuid: o for o in map(_stored, await conn.fetch(_FIND_OBJECTS, ids))}


async def find_claims(conn: asyncpg.Connection, unique_ids: Iterable[str]) -> dict[str, UniqueIdClaim]:
    """Who holds each of ``unique_ids`` in the registry (absent ones are left out)."""
    ids = sorted(set(unique_ids))
    if not ids:
        return {}
    rows = await conn.fetch(
        "SELECT unique_id, object_id, object_kind, hash, size FROM unique_id_claim WHERE unique_id = ANY($1::text[])",
        ids,
    )
    return {r["unique_id"]: UniqueIdClaim(r["unique_id"], urn_uuid(r["object_id"]), r["object_kind"], r["hash"],
                                          r["size"])
            for r in rows}


async def lock_replacement_family(
    conn: asyncpg.Connection, entry_uuids: Iterable[str], family_types: Iterable[str]
) -> list[StoredObject]:
    """The Approved DocumentEntries among ``entry_uuids`` and their family, locked for update.

    The family are the documents whose association of one of ``family_types`` (e.g. APND, XFRM)
    targets a member, recursively: an addendum's transformation belongs to the original's family.
    """
    ids = sorted({bare_uuid(i) for i in entry_uuids})
    if not ids:
        return []
    rows = await conn.fetch(
        "WITH RECURSIVE family(id) AS (SELECT unnest($1::uuid[])"
        " UNION SELECT a.source FROM association a JOIN family f ON a.target = f.id WHERE a.type = ANY($2::text[]))"
        " SELECT d.id, d.status, d.patient_id, d.unique_id, d.ebrim FROM document_entry d JOIN family f ON d.id = f.id"
        " WHERE d.status = $3 ORDER BY d.id FOR UPDATE OF d",
        ids, sorted(family_types), v.STATUS_APPROVED,
    )
    return [_stored(r, KIND_DOCUMENT_ENTRY) for r in rows]


async def lock_folders(conn: asyncpg.Connection, entry_uuids: Iterable[str]) -> list[StoredObject]:
    """The Approved Folders among ``entry_uuids``, locked for update (to rewrite their fragment)."""
    ids = sorted({bare_uuid(i) for i in entry_uuids})
    if not ids:
        return []
    rows = await conn.fetch(
        "SELECT id, status, patient_id, unique_id, ebrim FROM folder WHERE id = ANY($1::uuid[]) AND status = $2"
        " ORDER BY id FOR UPDATE",
        ids, v.STATUS_APPROVED,
    )
    return [_stored(r, KIND_FOLDER) for r in rows]


async def documents_by_unique_id(conn: asyncpg.Connection, unique_id: str) -> list[StoredObject]:
    """Every DocumentEntry registered with ``unique_id`` (several after accepted resubmissions), oldest first."""
    rows = await conn.fetch(
        "SELECT id, status, patient_id, unique_id, ebrim FROM document_entry WHERE unique_id = $1 ORDER BY seq",
        unique_id,
    )
    return [_stored(r, KIND_DOCUMENT_ENTRY) for r in rows]


async def folders_holding(conn: asyncpg.Connection, entry_uuids: Iterable[str]) -> list[tuple[str, str]]:
    """``(folder, document)`` entryUUID pairs: the Approved Folders whose HasMember holds one of the
    DocumentEntries ``entry_uuids`` (what a replacement of those documents joins, ITI TF-3 4.2.2.2.3)."""
    ids = sorted({bare_uuid(i) for i in entry_uuids})
    if not ids:
        return []
    rows = await conn.fetch(
        "SELECT DISTINCT a.source, a.target FROM association a JOIN folder f ON f.id = a.source"
        " WHERE a.type = $2 AND a.target = ANY($1::uuid[]) AND f.status = $3 ORDER BY a.source, a.target",
        ids, v.HAS_MEMBER, v.STATUS_APPROVED,
    )
    return [(urn_uuid(r["source"]), urn_uuid(r["target"])) for r in rows]
