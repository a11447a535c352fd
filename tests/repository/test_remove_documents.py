"""ITI-86 Remove Documents against real repository processes (with a real registry and PostgreSQL).

Documents go in with ITI-41 (NIST-style inline messages), are removed with hand-written
RemoveDocumentsRequests, and the catalog rows and the blob files are checked directly.
"""

from __future__ import annotations

import hashlib
import os
import signal

import aiohttp
import asyncpg
import pytest
from lxml import etree

from consumer.client import DocumentRequest, SoapClient, retrieve_document_set
from repository import catalog
from tests.messages import provide_and_register_request, soap_envelope
from tests.remove_messages import ACTION_ITI86, ACTION_ITI86_RESPONSE, remove_documents_envelope
from tests.repository.conftest import (
    Network,
    blobs,
    journal_and_documents,
    new_patient,
    start_repository_process,
    wait_until,
)
from tests.repository.wire import inline_request

RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
WSA = "http://www.w3.org/2005/08/addressing"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
SOAP = "application/soap+xml; charset=UTF-8"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def post(url: str, envelope: bytes) -> tuple[int, etree._Element]:
    async with aiohttp.ClientSession() as session, session.post(
            url, data=envelope, headers={"Content-Type": SOAP}) as resp:
        return resp.status, etree.fromstring(await resp.read())


async def submit(network: Network, url: str, contents: list[bytes]) -> list[str]:
    """ITI-41 of ``contents`` (one submission); their document uniqueIds."""
    pid = await new_patient(network.database_url)
    built = provide_and_register_request(pid, documents=len(contents), contents=contents)
    message = inline_request(built)
    async with aiohttp.ClientSession() as session, session.post(
            url, data=message.body, headers={"Content-Type": message.content_type}) as resp:
        root = etree.fromstring(await resp.read())
    assert root.find(f".//{{{RS}}}RegistryResponse").get("status") == SUCCESS, etree.tostring(root)[:3000]
    return built.document_unique_ids


async def remove(url: str, documents: list[tuple[str, str]]) -> tuple[str, list[tuple[str, str | None]]]:
    status, root = await post(url, remove_documents_envelope(documents))
    assert status == 200, etree.tostring(root)[:3000]
    assert root.findtext(f"{{{SOAP12}}}Header/{{{WSA}}}Action") == ACTION_ITI86_RESPONSE
    response = root.find(f"{{{SOAP12}}}Body/{{{RS}}}RegistryResponse")
    assert response is not None, etree.tostring(root)[:3000]
    return response.get("status"), [(e.get("errorCode"), e.get("location"))
                                    for e in response.iter(f"{{{RS}}}RegistryError")]


async def retrieve(repo, unique_ids: list[str]):
    async with SoapClient() as client:
        return await retrieve_document_set(client, repo.url, [DocumentRequest(repo.repository_unique_id, u)
                                                              for u in unique_ids])


async def releases(database_url: str, repository_unique_id: str) -> set[str]:
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT content_key FROM repository_blob_release WHERE repository_unique_id = $1",
                                repository_unique_id)
    finally:
        await conn.close()
    return {r["content_key"] for r in rows}


async def test_a_blob_shared_by_another_document_stays_until_its_last_document_goes(network):
    repo = network.repository
    shared, own = os.urandom(3000), os.urandom(2000)
    [a] = await submit(network, repo.url, [shared])
    [b, c] = await submit(network, repo.url, [shared, own])
    assert {sha256(shared), sha256(own)} <= blobs(repo.storage_dir)

    assert await remove(repo.url, [(repo.repository_unique_id, a)]) == (SUCCESS, [])

    assert sha256(shared) in blobs(repo.storage_dir)
    got = await retrieve(repo, [a, b])
    assert got.status == PARTIAL and [d.data for d in got.documents] == [shared]
    assert [(e.code, e.location) for e in got.errors] == [("XDSDocumentUniqueIdError", a)]

    assert await remove(repo.url, [(repo.repository_unique_id, b), (repo.repository_unique_id, c)]) == (SUCCESS, [])

    assert not {sha256(shared), sha256(own)} & blobs(repo.storage_dir)
    _, held = await journal_and_documents(network.database_url, repo.repository_unique_id)
    assert not {a, b, c} & held
    assert await releases(network.database_url, repo.repository_unique_id) == set()


async def test_some_removed_some_not_is_partial_success(network):
    repo = network.repository
    content = os.urandom(1000)
    [held] = await submit(network, repo.url, [content])

    status, errors = await remove(repo.url, [(repo.repository_unique_id, held), (repo.repository_unique_id, "1.2.3.99"),
                                             ("1.2.3.4.5", held)])

    assert status == PARTIAL
    assert errors == [("XDSUnknownRepositoryId", "1.2.3.4.5"), ("XDSDocumentUniqueIdError", "1.2.3.99")]
    assert sha256(content) not in blobs(repo.storage_dir)
    assert held not in (await journal_and_documents(network.database_url, repo.repository_unique_id))[1]


async def test_nothing_removable_is_failure_and_changes_nothing(network):
    repo = network.repository
    content = os.urandom(1000)
    [held] = await submit(network, repo.url, [content])
    before = (blobs(repo.storage_dir), await journal_and_documents(network.database_url, repo.repository_unique_id))

    status, errors = await remove(repo.url, [(repo.repository_unique_id, "1.2.3.98"), ("1.2.3.4.6", held)])

    assert status == FAILURE
    assert errors == [("XDSUnknownRepositoryId", "1.2.3.4.6"), ("XDSDocumentUniqueIdError", "1.2.3.98")]
    assert (blobs(repo.storage_dir),
            await journal_and_documents(network.database_url, repo.repository_unique_id)) == before
    got = await retrieve(repo, [held])
    assert got.status == SUCCESS and [d.data for d in got.documents] == [content]


async def test_another_body_is_a_soap_fault(network):
    body = (b'<xds:RetrieveDocumentSetRequest xmlns:xds="urn:ihe:iti:xds-b:2007"><xds:DocumentRequest>'
            b"<xds:RepositoryUniqueId>1.2</xds:RepositoryUniqueId><xds:DocumentUniqueId>1.3</xds:DocumentUniqueId>"
            b"</xds:DocumentRequest></xds:RetrieveDocumentSetRequest>")
    status, root = await post(network.repository.url, soap_envelope(ACTION_ITI86, body))
    assert status == 400 and root.find(f".//{{{SOAP12}}}Fault") is not None
    assert "RemoveDocumentsRequest" in etree.tostring(root).decode()


@pytest.mark.parametrize("reused", [False, True], ids=["unreferenced", "reused-before-restart"])
async def test_a_crash_after_the_commit_leaves_the_file_for_recovery(network, tmp_path, reused):
    """The rows go in a transaction and the file after it: killed in between, the restarted repository
    deletes the file, unless a document stored meanwhile uses the same content."""
    db = network.database_url
    repo = start_repository_process(db, network.registry.url, tmp_path / "storage")
    content = os.urandom(1500)
    key = sha256(content)
    try:
        [uid] = await submit(network, repo.url, [content])
    finally:
        os.kill(repo.proc.pid, signal.SIGKILL)
        repo.proc.wait(10)
    conn = await asyncpg.connect(db)
    pool = await asyncpg.create_pool(db, min_size=1, max_size=2)
    try:  # the transaction of ITI-86 committed, then the process died before deleting the file
        assert list(await catalog.remove_documents(pool, repo.repository_unique_id, [uid])) == [uid]
        if reused:
            await conn.execute(
                "INSERT INTO repository_document (repository_unique_id, document_unique_id, content_key, sha1, size,"
                " mime_type) VALUES ($1, $2, $3, $4, $5, 'text/plain')",
                repo.repository_unique_id, f"{uid}.9", key, hashlib.sha1(content).hexdigest(), len(content))
    finally:
        await pool.close()
        await conn.close()
    assert key in blobs(repo.storage_dir)
    assert await releases(db, repo.repository_unique_id) == {key}

    restarted = start_repository_process(db, network.registry.url, repo.storage_dir,
                                         repository_unique_id=repo.repository_unique_id)
    try:
        async def released():
            return await releases(db, repo.repository_unique_id) == set()
        await wait_until(released)
        if reused:
            assert key in blobs(repo.storage_dir)
            got = await retrieve(restarted, [f"{uid}.9"])
            assert [d.data for d in got.documents] == [content]
        else:
            assert key not in blobs(repo.storage_dir)
    finally:
        restarted.stop()


async def test_a_removal_racing_a_submission_of_the_same_content_keeps_the_new_document(network):
    """The blob of the removed document is the blob of a document being stored at the same moment:
    the new one must stay retrievable whichever finishes first."""
    import asyncio

    repo = network.repository
    for _ in range(6):
        content = os.urandom(4000)
        [old] = await submit(network, repo.url, [content])
        (status, _), [new] = await asyncio.gather(remove(repo.url, [(repo.repository_unique_id, old)]),
                                                  submit(network, repo.url, [content]))
        assert status == SUCCESS
        got = await retrieve(repo, [new])
        assert got.status == SUCCESS and [d.data for d in got.documents] == [content]
        assert sha256(content) in blobs(repo.storage_dir)
    assert await releases(network.database_url, repo.repository_unique_id) == set()
