"""The registry down, silent, or answering only after the repository died: nothing orphaned.

A stand-in registry endpoint runs in the test process (an aiohttp server) to control *when*
answers come: never (black hole), or after forwarding to the real registry (the registration
happened, the answer is lost). The repository process is killed with SIGKILL in between and
restarted on the same repositoryUniqueId and storage folder; its recovery must settle the journal.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal

import aiohttp
import pytest
from aiohttp import web

from consumer.client import DocumentRequest, SoapClient, SoapFaultError, provide_and_register, retrieve_document_set
from consumer.client.query import get_documents
from consumer.client.source import document_entry, submission_package
from tests.conftest import free_port
from tests.messages import TEST_SOURCE_ID
from tests.repository.conftest import (
    blobs,
    journal_and_documents,
    new_patient,
    staging_files,
    start_repository_process,
    wait_until,
)


class StandInRegistry:
    """An HTTP endpoint posing as the registry: forwards to ``target`` or not, then never answers."""

    def __init__(self, target: str | None) -> None:
        self.target = target
        self.received = asyncio.Event()
        self.forwarded = asyncio.Event()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/registry"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.received.set()
        if self.target:
            async with aiohttp.ClientSession() as session, session.post(
                self.target, data=body, headers={"Content-Type": request.headers["Content-Type"]}
            ) as response:
                await response.read()
            self.forwarded.set()
        await asyncio.sleep(3600)  # the answer never comes
        return web.Response(status=500)

    async def __aenter__(self) -> StandInRegistry:
        app = web.Application()
        app.router.add_post("/registry", self.handle)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


def _submission(pid: str, content: bytes):
    entry = document_entry(pid, "application/pdf", title="crash test")
    return entry, submission_package(pid, [entry], source_id=TEST_SOURCE_ID)


async def test_registry_down_answers_registry_not_available_and_keeps_nothing(registry_database_url, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/registry"
    repo = start_repository_process(registry_database_url, dead, tmp_path / "storage")
    try:
        pid = await new_patient(registry_database_url)
        entry, package = _submission(pid, b"")
        async with SoapClient(timeout=30) as client:
            result = await provide_and_register(client, repo.url, package, {entry.entry_uuid: os.urandom(50_000)})
        assert result.status.endswith(":Failure")
        assert [e.code for e in result.errors] == ["XDSRegistryNotAvailable"]
        assert blobs(repo.storage_dir) == set() and staging_files(repo.storage_dir) == []
        assert await journal_and_documents(registry_database_url, repo.repository_unique_id) == (0, set())
    finally:
        repo.stop()


async def _kill_during_registration(registry_database_url, tmp_path, stand_in_target):
    """Submit through a stand-in registry, SIGKILL the repository while it waits; return its state."""
    async with StandInRegistry(stand_in_target) as stand_in:
        repo = start_repository_process(registry_database_url, stand_in.url, tmp_path / "storage")
        pid = await new_patient(registry_database_url)
        content = os.urandom(200_000)
        entry, package = _submission(pid, content)
        async with SoapClient(timeout=60) as client:
            submit = asyncio.create_task(provide_and_register(client, repo.url, package, {entry.entry_uuid: content}))
            try:
                await asyncio.wait_for((stand_in.forwarded if stand_in_target else stand_in.received).wait(), 20)
                os.kill(repo.proc.pid, signal.SIGKILL)
                repo.proc.wait(10)
            finally:
                submit.cancel()
                await asyncio.gather(submit, return_exceptions=True)
    key = hashlib.sha256(content).hexdigest()
    assert key in blobs(repo.storage_dir), "the document was stored before registration"
    journal, held = await journal_and_documents(registry_database_url, repo.repository_unique_id)
    assert (journal, held) == (1, set()), "the crash left the submission in the journal"
    return repo, entry, content, key


async def test_crash_before_registration_is_cleaned_up_at_restart(network, tmp_path):
    db = network.database_url
    crashed, entry, _, key = await _kill_during_registration(db, tmp_path, stand_in_target=None)
    (crashed.storage_dir / "staging" / "leftover.part").write_bytes(b"partial upload")  # as if mid-upload

    repo = start_repository_process(db, network.registry.url, crashed.storage_dir,
                                    repository_unique_id=crashed.repository_unique_id)
    try:
        async def settled():
            return (await journal_and_documents(db, repo.repository_unique_id))[0] == 0
        await wait_until(settled)
        assert key not in blobs(repo.storage_dir)
        assert staging_files(repo.storage_dir) == []
        assert await journal_and_documents(db, repo.repository_unique_id) == (0, set())
        async with SoapClient() as client:
            assert await get_documents(client, network.registry.url, [entry.unique_id]) == []
    finally:
        repo.stop()


async def test_crash_after_registration_keeps_the_document_at_restart(network, tmp_path):
    db = network.database_url
    crashed, entry, content, key = await _kill_during_registration(db, tmp_path, stand_in_target=network.registry.url)
    async with SoapClient() as client:
        [registered] = await get_documents(client, network.registry.url, [entry.unique_id])
    assert registered.repository_unique_id == crashed.repository_unique_id

    repo = start_repository_process(db, network.registry.url, crashed.storage_dir,
                                    repository_unique_id=crashed.repository_unique_id)
    try:
        async def settled():
            return (await journal_and_documents(db, repo.repository_unique_id))[0] == 0
        await wait_until(settled)
        assert key in blobs(repo.storage_dir)
        async with SoapClient() as client:
            got = await retrieve_document_set(client, repo.url, [DocumentRequest(repo.repository_unique_id,
                                                                                 entry.unique_id)])
        assert got.status.endswith(":Success") and [d.data for d in got.documents] == [content]
    finally:
        repo.stop()


async def test_a_second_process_cannot_serve_the_same_repository(network, tmp_path):
    repo = network.repository
    with pytest.raises(RuntimeError, match="already served by another process"):
        start_repository_process(network.database_url, network.registry.url, tmp_path / "other",
                                 repository_unique_id=repo.repository_unique_id)
    with pytest.raises(RuntimeError, match="in use by another repository process"):
        start_repository_process(network.database_url, network.registry.url, repo.storage_dir)


async def test_limits_and_a_client_vanishing_mid_upload_leave_nothing(registry_database_url, tmp_path):
    repo = start_repository_process(registry_database_url, "http://127.0.0.1:9/registry", tmp_path / "storage",
                                    extra=("--max-document-bytes", "100000"))
    try:
        pid = await new_patient(registry_database_url)
        entry, package = _submission(pid, b"")
        async with SoapClient(timeout=30) as client:
            with pytest.raises(SoapFaultError, match="exceeds the limit of 100000 bytes") as caught:
                await provide_and_register(client, repo.url, package, {entry.entry_uuid: os.urandom(100_001)})
        assert caught.value.status == 400
        assert staging_files(repo.storage_dir) == []

        # Half a message, then the connection drops.
        from tests.messages import provide_and_register_request
        from tests.repository.wire import mtom_request

        message = mtom_request(provide_and_register_request(pid, contents=[os.urandom(90_000)]))
        _, writer = await asyncio.open_connection("127.0.0.1", repo.port)
        writer.write(f"POST /repository HTTP/1.1\r\nHost: x\r\nContent-Type: {message.content_type}\r\n"
                     f"Content-Length: {len(message.body)}\r\n\r\n".encode() + message.body[:60_000])
        await writer.drain()
        async def staged():
            return staging_files(repo.storage_dir) != []
        await wait_until(staged, timeout=10, interval=0.02)
        writer.close()

        async def cleaned():
            return staging_files(repo.storage_dir) == []
        await wait_until(cleaned, timeout=10)
        assert blobs(repo.storage_dir) == set()
        assert repo.proc.poll() is None
    finally:
        repo.stop()
