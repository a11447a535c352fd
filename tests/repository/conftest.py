"""Fixtures for the repository: real ``xds-repository`` processes beside a real registry.

``network`` (one per test module) is a registry and a repository on free ports sharing the
session database; ``repository_process`` is its repository. Tests needing another setup
(registry down, crash and restart) start their own with :func:`start_repository_process`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ROOT, RunningService, free_port, start_registry_process, wait_for_port
from tests.messages import new_patient_id

_repository_ids = itertools.count(1)
REPOSITORY_OID_ROOT = f"1.3.6.1.4.1.21367.2024.98.{os.getpid()}"


def new_repository_unique_id() -> str:
    return f"{REPOSITORY_OID_ROOT}.{next(_repository_ids)}"


def start_repository_process(
    database_url: str,
    registry_url: str,
    storage_dir: Path,
    *,
    repository_unique_id: str | None = None,
    port: int | None = None,
    extra: tuple[str, ...] = (),
) -> RunningService:
    """Start ``xds-repository`` as a real process; its output goes to ``<storage_dir>.log``."""
    repository_unique_id = repository_unique_id or new_repository_unique_id()
    port = port or free_port()
    log_path = storage_dir.with_suffix(".log")
    log = open(log_path, "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [sys.executable, "-m", "repository.cli", "--port", str(port), "--repository-unique-id", repository_unique_id,
         "--registry-url", registry_url, "--database-url", database_url, "--storage-dir", str(storage_dir),
         "--log-level", "WARNING", *extra],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_for_port(port, proc)
    except Exception as exc:
        proc.kill()
        raise RuntimeError(f"{exc}\nrepository log:\n{log_path.read_text(errors='replace')[-4000:]}") from None
    return RunningService(proc, url=f"http://127.0.0.1:{port}/repository", port=port,
                          repository_unique_id=repository_unique_id, storage_dir=storage_dir, log_path=log_path,
                          database_url=database_url)


@dataclass
class Network:
    registry: RunningService
    repository: RunningService
    database_url: str
    tmp: Path


@pytest.fixture(scope="module")
def network(registry_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """A registry and one repository, real processes, for the tests of one module."""
    tmp = tmp_path_factory.mktemp("network")
    registry = start_registry_process(registry_database_url)
    try:
        repository = start_repository_process(registry_database_url, registry.url, tmp / "storage")
    except Exception:
        registry.stop()
        raise
    yield Network(registry, repository, registry_database_url, tmp)
    repository.stop()
    registry.stop()


@pytest.fixture(scope="module")
def repository_process(network: Network) -> RunningService:
    return network.repository


# --- helpers ------------------------------------------------------------------------------------


async def new_patient(database_url: str) -> str:
    """A patient known to the registry (as the identity feed would record it); its XDS CX."""
    from ihe.metadata.model import Identifiable
    from registry.patients import Demographics, record_patient

    cx = new_patient_id()
    conn = await asyncpg.connect(database_url)
    try:
        await record_patient(conn, [Identifiable.parse_cx(cx)], Demographics(family="Test", given="Pat"))
    finally:
        await conn.close()
    return cx


async def record_patient_cx(database_url: str, cx: str) -> None:
    """Make the patient ``cx`` known (idempotent), e.g. the reference messages' patients."""
    from ihe.metadata.model import Identifiable
    from registry.patients import Demographics, record_patient

    conn = await asyncpg.connect(database_url)
    try:
        await record_patient(conn, [Identifiable.parse_cx(cx)], Demographics())
    finally:
        await conn.close()


def blobs(storage_dir: Path) -> set[str]:
    """Names of the stored blobs (SHA-256 keys)."""
    objects = storage_dir / "objects"
    return {p.name for p in objects.rglob("*") if p.is_file()} if objects.exists() else set()


def staging_files(storage_dir: Path) -> list[Path]:
    staging = storage_dir / "staging"
    return list(staging.iterdir()) if staging.exists() else []


async def journal_and_documents(database_url: str, repository_unique_id: str) -> tuple[int, set[str]]:
    """(journal entries, uniqueIds held) of one repository."""
    conn = await asyncpg.connect(database_url)
    try:
        journal = await conn.fetchval("SELECT count(*) FROM repository_submission WHERE repository_unique_id = $1",
                                      repository_unique_id)
        held = await conn.fetch("SELECT document_unique_id FROM repository_document WHERE repository_unique_id = $1",
                                repository_unique_id)
    finally:
        await conn.close()
    return journal, {r["document_unique_id"] for r in held}


async def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1) -> None:
    """Poll an async predicate (for effects of a background process)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not reached within {timeout}s")
        await asyncio.sleep(interval)
