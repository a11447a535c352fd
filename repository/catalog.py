"""The repository's own tables: documents it holds, and the journal of submissions in flight.

Keeps the database and the blob store consistent: a blob is only placed after the journal
names it, and only removed (under the store's per-key lock) when neither a held document nor
a journaled submission references it. See schemas/repository/001_repository.sql.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import asyncpg

from repository.storage import DocumentStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """One document as the repository records it."""

    unique_id: str
    key: str  # SHA-256, the storage address
    sha1: str
    size: int
    mime_type: str


@dataclass(frozen=True, slots=True)
class PendingSubmission:
    id: uuid.UUID
    documents: list[StoredDocument]


def _doc(row: asyncpg.Record) -> StoredDocument:
    return StoredDocument(row["document_unique_id"], row["content_key"], row["sha1"], row["size"], row["mime_type"])


async def journal_submission(pool: asyncpg.Pool, repository_id: str, documents: Sequence[StoredDocument],
                             submission: uuid.UUID | None = None) -> uuid.UUID:
    """Record a submission before its blobs are placed; returns its journal id (one statement).

    The caller may choose the id, to mark it as its own before the row becomes visible.
    """
    submission = submission or uuid.uuid4()
    async with pool.acquire() as conn:
        await conn.execute(
            "WITH s AS (INSERT INTO repository_submission (id, repository_unique_id) VALUES ($1, $2))"
            " INSERT INTO repository_submission_document (submission, document_unique_id, content_key, sha1, size,"
            " mime_type) SELECT $1, * FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[])",
            submission, repository_id, *_columns(documents),
        )
    return submission


def _columns(documents: Sequence[StoredDocument]) -> tuple[list, list, list, list, list]:
    return ([d.unique_id for d in documents], [d.key for d in documents], [d.sha1 for d in documents],
            [d.size for d in documents], [d.mime_type for d in documents])


async def _is_referenced(conn: asyncpg.Connection, repository_id: str, key: str,
                         exclude: uuid.UUID | None = None) -> bool:
    """Whether a held document or a journaled submission (other than ``exclude``) uses ``key``."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM repository_document WHERE repository_unique_id = $1 AND content_key = $2)"
        " OR EXISTS (SELECT 1 FROM repository_submission_document d JOIN repository_submission s"
        " ON s.id = d.submission WHERE s.repository_unique_id = $1 AND d.content_key = $2"
        " AND ($3::uuid IS NULL OR d.submission <> $3))",
        repository_id, key, exclude,
    ))


async def collect_garbage(pool: asyncpg.Pool, store: DocumentStore, repository_id: str, keys: Iterable[str]) -> None:
    """Remove each blob in ``keys`` that nothing references any more."""
    for key in sorted(set(keys)):
        async with store.lock(key):
            async with pool.acquire() as conn:
                referenced = await _is_referenced(conn, repository_id, key)
            if not referenced:
                await store.remove(key)


async def settle_submission(pool: asyncpg.Pool, store: DocumentStore, repository_id: str, submission: uuid.UUID,
                            *, keep: Sequence[StoredDocument], drop: Sequence[StoredDocument]) -> None:
    """Close a journal entry: hold the ``keep`` documents (registered) and forget the ``drop`` ones.

    Blobs only ``drop`` used go first, then one transaction records ``keep`` (a uniqueId held
    already, i.e. a resubmission the registry accepted, is updated) and deletes the journal
    entry. A crash in between leaves the entry, and recovery repeats this; it is idempotent.
    """
    kept_keys = {d.key for d in keep}
    for key in sorted({d.key for d in drop} - kept_keys):
        async with store.lock(key):
            async with pool.acquire() as conn:
                referenced = await _is_referenced(conn, repository_id, key, submission)
            if not referenced:
                await store.remove(key)
    async with pool.acquire() as conn:
        # One statement, so atomic: the CTEs all see the rows as they were before it ("old").
        replaced = await conn.fetch(
            "WITH old AS (SELECT content_key FROM repository_document WHERE repository_unique_id = $1"
            "   AND document_unique_id = ANY($3::text[])),"
            " upsert AS (INSERT INTO repository_document (repository_unique_id, document_unique_id, content_key, sha1,"
            "   size, mime_type) SELECT $1, * FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::text[])"
            "   ON CONFLICT (repository_unique_id, document_unique_id) DO UPDATE SET"
            "   content_key = EXCLUDED.content_key, sha1 = EXCLUDED.sha1, size = EXCLUDED.size,"
            "   mime_type = EXCLUDED.mime_type, stored_at = now()),"
            " closed AS (DELETE FROM repository_submission WHERE id = $2)"
            " SELECT content_key FROM old",
            repository_id, submission, *_columns(keep),
        )
    await collect_garbage(pool, store, repository_id, {r["content_key"] for r in replaced} - kept_keys)


async def pending_submissions(pool: asyncpg.Pool, repository_id: str) -> list[PendingSubmission]:
    """Journal entries of this repository, oldest first."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT s.id, d.document_unique_id, d.content_key, d.sha1, d.size, d.mime_type"
            " FROM repository_submission s JOIN repository_submission_document d ON d.submission = s.id"
            " WHERE s.repository_unique_id = $1 ORDER BY s.created_at, s.id, d.document_unique_id",
            repository_id,
        )
        empty = await conn.fetch(
            "SELECT id FROM repository_submission s WHERE repository_unique_id = $1 AND NOT EXISTS"
            " (SELECT 1 FROM repository_submission_document d WHERE d.submission = s.id)", repository_id)
    result: dict[uuid.UUID, PendingSubmission] = {r["id"]: PendingSubmission(r["id"], []) for r in empty}
    for row in rows:
        result.setdefault(row["id"], PendingSubmission(row["id"], [])).documents.append(_doc(row))
    return list(result.values())


async def find_documents(pool: asyncpg.Pool, repository_id: str,
                         unique_ids: Sequence[str]) -> dict[str, StoredDocument]:
    """The held documents among ``unique_ids``, by uniqueId."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT document_unique_id, content_key, sha1, size, mime_type FROM repository_document"
            " WHERE repository_unique_id = $1 AND document_unique_id = ANY($2::text[])",
            repository_id, list(unique_ids),
        )
    return {r["document_unique_id"]: _doc(r) for r in rows}


def _lock_key(repository_id: str) -> int:
    return int.from_bytes(hashlib.sha256(b"xds-repository:" + repository_id.encode()).digest()[:8], "big",
                          signed=True)


async def claim_repository_id(database_url: str, repository_id: str) -> asyncpg.Connection | None:
    """Hold a session advisory lock naming ``repository_id``; None if another process holds it.

    With it, journal entries of this repository found at start belong to dead processes only.
    """
    conn = await asyncpg.connect(database_url)
    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", _lock_key(repository_id)):
        return conn
    await conn.close()
    return None


# --- ITI-86 Remove Documents ------------------------------------------------------------------------


async def remove_documents(pool: asyncpg.Pool, repository_id: str,
                           unique_ids: Sequence[str]) -> dict[str, StoredDocument]:
    """Forget the held documents among ``unique_ids``; returns those removed, by uniqueId.

    One statement (so one transaction) deletes the rows and records their blobs in
    ``repository_blob_release``; the files go afterwards (:func:`release_blobs`).
    """
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "WITH gone AS (DELETE FROM repository_document WHERE repository_unique_id = $1"
            "   AND document_unique_id = ANY($2::text[])"
            "   RETURNING document_unique_id, content_key, sha1, size, mime_type),"
            " released AS (INSERT INTO repository_blob_release (repository_unique_id, content_key)"
            "   SELECT DISTINCT $1, content_key FROM gone ON CONFLICT DO NOTHING)"
            " SELECT * FROM gone",
            repository_id, sorted(set(unique_ids)),
        )
    return {r["document_unique_id"]: _doc(r) for r in rows}


async def release_blobs(pool: asyncpg.Pool, store: DocumentStore, repository_id: str,
                        keys: Iterable[str] | None = None) -> int:
    """Delete released blobs (``keys``, default: every one recorded) that nothing references any more.

    Under the store's per-key lock, as in :func:`collect_garbage`: a blob another document or a
    journaled submission uses stays. The release row goes only after the file, so a crash leaves
    work for the next round, never a row without its file. Returns the number of files deleted.
    """
    async with pool.acquire() as conn:
        recorded = {r["content_key"] for r in await conn.fetch(
            "SELECT content_key FROM repository_blob_release WHERE repository_unique_id = $1", repository_id)}
    deleted = 0
    for key in sorted(recorded if keys is None else set(keys) & recorded):
        async with store.lock(key):
            async with pool.acquire() as conn:
                referenced = await _is_referenced(conn, repository_id, key)
            if not referenced:
                await store.remove(key)
                deleted += 1
            async with pool.acquire() as conn:
                await conn.execute("DELETE FROM repository_blob_release WHERE repository_unique_id = $1"
                                   " AND content_key = $2", repository_id, key)
    return deleted
