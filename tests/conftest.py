"""Shared test fixtures: a real PostgreSQL database and real service processes.

The database comes from XDS_TEST_DATABASE_URL (or DATABASE_URL) when set, else the local
server on 127.0.0.1:5432, else an embedded one (pgserver). Each test session gets a fresh
database of its own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from tests.shared import (  # noqa: F401  (pytest hooks: tests needing ../shared, see tests/shared.py)
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_terminal_summary,
)

ROOT = Path(__file__).resolve().parent.parent
LOCAL_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _can_connect(url: str) -> bool:
    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@pytest.fixture(scope="session")
def postgres_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL with the right to create databases."""
    url = os.environ.get("XDS_TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    if _can_connect(LOCAL_SERVER_URL):
        yield LOCAL_SERVER_URL
        return
    import pgserver

    data = tmp_path_factory.mktemp("pgserver")
    server = pgserver.get_server(str(data), cleanup_mode="stop")
    yield server.get_uri()
    server.cleanup()


@pytest.fixture(scope="session")
def database_url(postgres_admin_url: str) -> Iterator[str]:
    """A fresh, empty database for this test session."""
    name = f"xds_test_{uuid.uuid4().hex[:10]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(postgres_admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield _with_database(postgres_admin_url, name)
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def registry_database_url(database_url: str) -> str:
    """The session database with the registry schema applied."""
    from schemas import migrate

    async def apply() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await migrate(conn, "registry")
        finally:
            await conn.close()

    asyncio.run(apply())
    return database_url


REGISTRY_TABLES = (
    "association, document_entry, folder, submission_set, unique_id_claim, patient_identifier, patient"
)


@pytest.fixture
async def registry_pool(registry_database_url: str):
    """An asyncpg pool on an emptied registry database."""
    pool = await asyncpg.create_pool(registry_database_url, min_size=1, max_size=8)
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {REGISTRY_TABLES} RESTART IDENTITY CASCADE")
    yield pool
    await pool.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise RuntimeError(f"service exited with {proc.returncode} before listening:\n{out}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"service did not listen on port {port} within {timeout}s")


class RunningService:
    def __init__(self, proc: subprocess.Popen, **endpoints: object) -> None:
        self.proc = proc
        self.__dict__.update(endpoints)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_registry_process(database_url: str, *extra: str) -> RunningService:
    """Start ``xds-registry`` as a real process on free ports."""
    port, mllp_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry.cli", "--port", str(port), "--mllp-port", str(mllp_port),
         "--database-url", database_url, *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, proc)
        wait_for_port(mllp_port, proc)
    except Exception:
        proc.kill()
        raise
    return RunningService(proc, url=f"http://127.0.0.1:{port}/registry", port=port, mllp_port=mllp_port)


@pytest.fixture
def registry_process(registry_database_url: str, registry_pool) -> Iterator[RunningService]:
    """A running registry process on an emptied database."""
    service = start_registry_process(registry_database_url)
    yield service
    service.stop()
