"""The journal and the blob store kept consistent (real PostgreSQL, real files): what is kept,
what is removed, and never a blob that something still references."""

from __future__ import annotations

import hashlib
import uuid

import asyncpg
import pytest

from repository import catalog
from repository.catalog import StoredDocument
from repository.storage import FileSystemStore
from schemas import migrate


@pytest.fixture
async def pool(registry_database_url):
    conn = await asyncpg.connect(registry_database_url)
    try:
        await migrate(conn, "repository")
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(registry_database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def store(tmp_path):
    s = FileSystemStore(tmp_path / "storage", durable=False)
    s.open()
    yield s
    s.close()


async def put(store: FileSystemStore, content: bytes, uid: str | None = None) -> StoredDocument:
    upload = store.new_upload()
    upload.write(content)
    upload.finish()
    async with store.lock(upload.info.key):
        await store.place(upload)
    return StoredDocument(uid or f"2.25.{uuid.uuid4().int}", upload.info.key, upload.info.sha1, upload.info.size,
                          "text/plain")


def repo_id() -> str:
    return f"1.2.999.{uuid.uuid4().int % 10**9}"


async def test_journal_then_keep(pool, store):
    rid = repo_id()
    doc = await put(store, b"kept")
    sub = await catalog.journal_submission(pool, rid, [doc])
    [pending] = await catalog.pending_submissions(pool, rid)
    assert (pending.id, pending.documents) == (sub, [doc])
    await catalog.settle_submission(pool, store, rid, sub, keep=[doc], drop=[])
    assert await catalog.pending_submissions(pool, rid) == []
    assert await catalog.find_documents(pool, rid, [doc.unique_id, "1.2.3"]) == {doc.unique_id: doc}
    assert store.exists(doc.key)


async def test_drop_removes_only_unreferenced_blobs(pool, store):
    rid = repo_id()
    held = await put(store, b"shared bytes")
    first = await catalog.journal_submission(pool, rid, [held])
    await catalog.settle_submission(pool, store, rid, first, keep=[held], drop=[])

    same_bytes = await put(store, b"shared bytes")  # another uniqueId, identical content: one blob
    pending_other = await put(store, b"in flight elsewhere")
    alone = await put(store, b"only here")
    other = await catalog.journal_submission(pool, rid, [pending_other])
    failed = await catalog.journal_submission(pool, rid, [same_bytes, alone, pending_other])

    await catalog.settle_submission(pool, store, rid, failed, keep=[], drop=[same_bytes, alone, pending_other])

    assert store.exists(held.key), "a held document uses it"
    assert store.exists(pending_other.key), "another journaled submission uses it"
    assert not store.exists(alone.key)
    assert [p.id for p in await catalog.pending_submissions(pool, rid)] == [other]


async def test_a_resubmission_replaces_the_row_and_collects_the_old_blob(pool, store):
    rid = repo_id()
    old = await put(store, b"version one")
    sub = await catalog.journal_submission(pool, rid, [old])
    await catalog.settle_submission(pool, store, rid, sub, keep=[old], drop=[])
    new = await put(store, b"version two", uid=old.unique_id)
    sub = await catalog.journal_submission(pool, rid, [new])
    await catalog.settle_submission(pool, store, rid, sub, keep=[new], drop=[])
    assert await catalog.find_documents(pool, rid, [old.unique_id]) == {old.unique_id: new}
    assert store.exists(new.key) and not store.exists(old.key)
    assert new.sha1 == hashlib.sha1(b"version two").hexdigest()


async def test_repository_ids_are_claimed_once(registry_database_url):
    rid = repo_id()
    owner = await catalog.claim_repository_id(registry_database_url, rid)
    try:
        assert owner is not None
        assert await catalog.claim_repository_id(registry_database_url, rid) is None
    finally:
        await owner.close()
    again = await catalog.claim_repository_id(registry_database_url, rid)
    assert again is not None
    await again.close()


async def test_recovery_never_settles_a_submission_this_process_is_working_on(pool, store, monkeypatch):
    """The recovery loop may read the journal right after a row is written, before the ITI-41
    handler resumes: the submission must already be known as in flight then."""
    from consumer.client import SoapClient
    from repository.app import Repository
    from repository.provide_and_register import store_and_register
    from repository.recovery import settle_pending
    from repository.settings import RepositorySettings
    from tests.conftest import free_port

    settings = RepositorySettings(repository_unique_id=repo_id(),
                                  registry_url=f"http://127.0.0.1:{free_port()}/registry")
    async with SoapClient(timeout=5) as client:
        repo = Repository(settings=settings, pool=pool, store=store, soap_client=client)
        rounds = []
        journal = catalog.journal_submission

        async def journal_then_recovery_round(*args, **kwargs):
            submission = await journal(*args, **kwargs)
            rounds.append(await settle_pending(repo))  # as if the recovery loop ran just now
            return submission

        monkeypatch.setattr(catalog, "journal_submission", journal_then_recovery_round)
        upload = store.new_upload()
        upload.write(b"in flight")
        upload.finish()
        doc = StoredDocument(f"2.25.{uuid.uuid4().int}", upload.info.key, upload.info.sha1, upload.info.size,
                             "text/plain")
        response = await store_and_register(repo, b"<unused/>", [doc], {doc.key: upload})

    assert rounds == [(0, 0)], "the recovery round took up the submission being registered"
    assert response.get("status").endswith(":Failure")  # the registry is down: refused and undone
    assert await catalog.pending_submissions(pool, settings.repository_unique_id) == []
    assert not store.exists(doc.key) and repo.in_flight == set()
