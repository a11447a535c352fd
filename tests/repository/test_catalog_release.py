"""ITI-86 at the catalog (real PostgreSQL, real files): removed documents' blobs are released only
when nothing else uses them, and a release interrupted by a crash is finished later."""

from __future__ import annotations

from repository import catalog
from tests.repository.test_catalog import pool, put, repo_id, store  # noqa: F401 - fixtures


async def release_rows(pool, rid: str) -> set[str]:  # noqa: F811 - pool is the fixture's value
    async with pool.acquire() as conn:
        return {r["content_key"] for r in await conn.fetch(
            "SELECT content_key FROM repository_blob_release WHERE repository_unique_id = $1", rid)}


async def hold(pool, store, rid, doc) -> None:  # noqa: F811
    """Record ``doc`` as held, the way ITI-41 does (journal, then settle keeping it)."""
    sub = await catalog.journal_submission(pool, rid, [doc])
    await catalog.settle_submission(pool, store, rid, sub, keep=[doc], drop=[])


async def test_remove_then_release(pool, store):  # noqa: F811
    rid = repo_id()
    doc = await put(store, b"to be removed")
    await hold(pool, store, rid, doc)

    removed = await catalog.remove_documents(pool, rid, [doc.unique_id, "1.2.3.404"])

    assert removed == {doc.unique_id: doc}
    assert await catalog.find_documents(pool, rid, [doc.unique_id]) == {}
    assert await release_rows(pool, rid) == {doc.key} and store.exists(doc.key)  # the file goes after the commit
    assert await catalog.release_blobs(pool, store, rid) == 1
    assert not store.exists(doc.key) and await release_rows(pool, rid) == set()
    assert await catalog.release_blobs(pool, store, rid) == 0  # idempotent


async def test_a_blob_a_journaled_submission_uses_stays(pool, store):  # noqa: F811
    rid = repo_id()
    doc = await put(store, b"same bytes")
    await hold(pool, store, rid, doc)
    await catalog.remove_documents(pool, rid, [doc.unique_id])
    incoming = await put(store, b"same bytes", "2.25.77")  # a new submission of the same content, in flight
    sub = await catalog.journal_submission(pool, rid, [incoming])

    await catalog.release_blobs(pool, store, rid)

    assert store.exists(doc.key) and await release_rows(pool, rid) == set()
    await catalog.settle_submission(pool, store, rid, sub, keep=[incoming], drop=[])
    assert store.exists(doc.key)


async def test_another_repository_sharing_the_database_is_not_touched(pool, store):  # noqa: F811
    rid, other = repo_id(), repo_id()
    doc = await put(store, b"shared database")
    await hold(pool, store, rid, doc)
    await hold(pool, store, other, doc)

    assert await catalog.remove_documents(pool, other, [doc.unique_id]) == {doc.unique_id: doc}

    assert await catalog.find_documents(pool, rid, [doc.unique_id]) == {doc.unique_id: doc}
    assert await release_rows(pool, rid) == set()
