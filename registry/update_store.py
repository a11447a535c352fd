"""PostgreSQL statements of ITI-57 Update Document Set (schema: schemas/registry/001 and 003).

Like :mod:`registry.store` (whose package insert ITI-57 reuses), every function takes an asyncpg
connection inside the caller's transaction and speaks in ``urn:uuid:`` entryUUIDs and plain values.
Versioned objects (DocumentEntries and Folders) share a logical id (``lid``); exactly one row per
lid has ``latest`` set, and a new version is written only after the previous one lost it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from ihe.metadata import vocabulary as v
from registry.store import KIND_ASSOCIATION, KIND_DOCUMENT_ENTRY, KIND_FOLDER, bare_uuid, urn_uuid

#: The table of each versioned kind (fixed names: never built from input).
TABLES = {KIND_DOCUMENT_ENTRY: "document_entry", KIND_FOLDER: "folder"}


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version of a DocumentEntry or Folder."""

    kind: str
    entry_uuid: str
    lid: str
    version: int
    latest: bool
    status: str
    patient_id: str
    unique_id: str
    object_type: str | None
    ebrim: str


@dataclass(frozen=True, slots=True)
class StoredAssociation:
    entry_uuid: str
    type: str
    source: str
    target: str
    status: str
    source_kind: str | None  # DocumentEntry, Folder, SubmissionSet or None (an association or unknown)
    ebrim: str


def _version(row: asyncpg.Record, kind: str) -> Version:
    return Version(kind, urn_uuid(row["id"]), urn_uuid(row["lid"]), row["version"], row["latest"], row["status"],
                   row["patient_id"], row["unique_id"], row.get("object_type"), row["ebrim"])


def _ids(entry_uuids: Iterable[str]) -> list[str]:
    return sorted({bare_uuid(i) for i in entry_uuids})


async def lock_latest(conn: asyncpg.Connection, kind: str, lids: Iterable[str]) -> dict[str, Version]:
    """The latest version of each logical id of ``kind``, locked for update; by lid."""
    ids = _ids(lids)
    if not ids:
        return {}
    extra = ", object_type" if kind == KIND_DOCUMENT_ENTRY else ""
    rows = await conn.fetch(
        f"SELECT id, lid, version, latest, status, patient_id, unique_id{extra}, ebrim FROM {TABLES[kind]}"
        " WHERE lid = ANY($1::uuid[]) AND latest ORDER BY id FOR UPDATE", ids)
    return {urn_uuid(r["lid"]): _version(r, kind) for r in rows}


async def find_versions(conn: asyncpg.Connection, entry_uuids: Iterable[str]) -> dict[str, Version]:
    """The DocumentEntries and Folders among ``entry_uuids`` (any version), locked for update; by entryUUID."""
    ids = _ids(entry_uuids)
    if not ids:
        return {}
    found: dict[str, Version] = {}
    for kind, table in TABLES.items():
        extra = ", object_type" if kind == KIND_DOCUMENT_ENTRY else ""
        rows = await conn.fetch(
            f"SELECT id, lid, version, latest, status, patient_id, unique_id{extra}, ebrim FROM {table}"
            " WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE", ids)
        found.update({urn_uuid(r["id"]): _version(r, kind) for r in rows})
    return found


_ASSOCIATIONS = (
    "SELECT a.id, a.type, a.source, a.target, a.status, a.ebrim,"
    " CASE WHEN EXISTS (SELECT 1 FROM document_entry d WHERE d.id = a.source) THEN 'DocumentEntry'"
    " WHEN EXISTS (SELECT 1 FROM folder f WHERE f.id = a.source) THEN 'Folder'"
    " WHEN EXISTS (SELECT 1 FROM submission_set s WHERE s.id = a.source) THEN 'SubmissionSet' END AS source_kind"
    " FROM association a"
)


def _association(row: asyncpg.Record) -> StoredAssociation:
    return StoredAssociation(urn_uuid(row["id"]), row["type"], urn_uuid(row["source"]), urn_uuid(row["target"]),
                             row["status"], row["source_kind"], row["ebrim"])


async def find_associations(conn: asyncpg.Connection, entry_uuids: Iterable[str]) -> dict[str, StoredAssociation]:
    """The Associations among ``entry_uuids``, locked for update, with the kind of their source."""
    ids = _ids(entry_uuids)
    if not ids:
        return {}
    rows = await conn.fetch(f"{_ASSOCIATIONS} WHERE a.id = ANY($1::uuid[]) ORDER BY a.id FOR UPDATE OF a", ids)
    return {urn_uuid(r["id"]): _association(r) for r in rows}


async def folder_memberships(conn: asyncpg.Connection, entry_uuids: Iterable[str]) -> list[StoredAssociation]:
    """The Approved HasMember associations between latest versions of a Folder and a DocumentEntry with any of
    ``entry_uuids`` at either end."""
    ids = _ids(entry_uuids)
    if not ids:
        return []
    rows = await conn.fetch(
        f"{_ASSOCIATIONS} WHERE a.type = $2 AND a.status = $3"
        " AND a.source IN (SELECT id FROM folder WHERE latest)"
        " AND a.target IN (SELECT id FROM document_entry WHERE latest)"
        " AND (a.source = ANY($1::uuid[]) OR a.target = ANY($1::uuid[])) ORDER BY a.seq",
        ids, v.HAS_MEMBER, v.STATUS_APPROVED)
    return [_association(r) for r in rows]


async def retire_versions(conn: asyncpg.Connection, kind: str, changes: Sequence[tuple[str, str]]) -> int:
    """Previous versions ``(entryUUID, ebrim)`` stop being the latest and become Deprecated."""
    if not changes:
        return 0
    result = await conn.execute(
        f"UPDATE {TABLES[kind]} t SET latest = false, status = $3, ebrim = c.ebrim"
        " FROM unnest($1::uuid[], $2::text[]) AS c(id, ebrim) WHERE t.id = c.id AND t.latest",
        [bare_uuid(i) for i, _ in changes], [e for _, e in changes], v.STATUS_DEPRECATED)
    return int(result.split()[-1])


async def set_status(conn: asyncpg.Connection, kind: str, entry_uuid: str, ebrim: str, status: str,
                     only_if: str) -> bool:
    """Compare-and-set the availabilityStatus (and fragment) of one object; False if it was not ``only_if``."""
    table = TABLES.get(kind) or ("association" if kind == KIND_ASSOCIATION else None)
    if table is None:
        raise ValueError(f"no status to set on a {kind}")
    result = await conn.execute(f"UPDATE {table} SET status = $2, ebrim = $3 WHERE id = $1 AND status = $4",
                                bare_uuid(entry_uuid), status, ebrim, only_if)
    return result.split()[-1] == "1"


async def insert_associations(conn: asyncpg.Connection, rows: Sequence[dict]) -> None:
    """Insert association rows of the :func:`registry.store.package_rows` form."""
    if not rows:
        return
    await conn.execute(
        "INSERT INTO association (id, type, source, target, status, home_community_id, ebrim)"
        " SELECT id, type, source, target, status, home_community_id, ebrim"
        " FROM jsonb_populate_recordset(NULL::association, $1::jsonb)",
        json.dumps(list(rows), separators=(",", ":")))
