"""Fixtures of the imaging source tests: real DICOM files nobody here wrote, the schema on the session
database, and a real ``xds-imaging-source`` process on free ports."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import ROOT, RunningService, free_port, wait_for_port

# (file, modality) from pydicom's own test files and the pydicom-data package.
SAMPLES = {
    "CT": "CT_small.dcm",              # CT, Explicit VR Little Endian
    "MR": "MR_small.dcm",              # MR, Explicit VR Little Endian
    "US": "US1_J2KR.dcm",              # US, JPEG 2000 lossless, RGB
    "CR": "RG3_J2KR.dcm",              # CR, JPEG 2000 lossless
    "US_RLE": "OBXXXX1A_rle.dcm",      # US palette colour, RLE lossless
}


def sample_path(name: str) -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"DICOM test file {name} is missing: install the test extra (pydicom, pydicom-data)")
    return Path(path)


@pytest.fixture(scope="session")
def samples() -> dict[str, Path]:
    return {key: sample_path(name) for key, name in SAMPLES.items()}


def require_tool(tool: str, package: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed: apt-get install {package} (listed in scripts/debian-packages.txt)")
    return path


@pytest.fixture(scope="session")
def imaging_database_url(database_url: str) -> str:
    from schemas import migrate

    async def apply() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await migrate(conn, "imaging_source")
        finally:
            await conn.close()

    asyncio.run(apply())
    return database_url


@pytest.fixture(scope="session")
def new_imaging_database(postgres_admin_url: str):
    """A factory of fresh databases with the imaging source schema, one per imaging source process, so that
    no two processes' trackers ever work on the same studies. All are dropped at the end of the session."""
    import uuid

    from schemas import migrate
    from tests.conftest import _with_database

    created: list[str] = []

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(postgres_admin_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def create() -> str:
        name = f"xds_test_img_{uuid.uuid4().hex[:10]}"
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
        created.append(name)
        url = _with_database(postgres_admin_url, name)

        async def apply() -> None:
            conn = await asyncpg.connect(url)
            try:
                await migrate(conn, "imaging_source")
            finally:
                await conn.close()

        asyncio.run(apply())
        return url

    yield create
    for name in created:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def empty_tables(url: str) -> None:
    from imaging_source.store import TABLES

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"TRUNCATE {TABLES} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
async def fresh_imaging_database_url(new_imaging_database) -> str:
    """A database of the test's own: what it writes (a rejected sample instance, a test constraint) never
    reaches the session's shared imaging source, whose database other tests read."""
    return await asyncio.to_thread(new_imaging_database)


@pytest.fixture
async def imaging_pool(fresh_imaging_database_url: str):
    """An asyncpg pool on an imaging source database of the test's own."""
    pool = await asyncpg.create_pool(fresh_imaging_database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


@pytest.fixture
def stops() -> Iterator[list[RunningService]]:
    """Services a test started, stopped at its end even when a later start or step fails."""
    services: list[RunningService] = []
    yield services
    for service in reversed(services):
        service.stop()


def start_imaging_source(database_url: str, storage_dir: Path, *extra: str) -> RunningService:
    port, dicom_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "imaging_source.cli", "serve", "--port", str(port), "--dicom-port", str(dicom_port),
         "--ae-title", "XDSI_TEST", "--database-url", database_url, "--storage-dir", str(storage_dir),
         "--repository-unique-id", "1.3.6.1.4.1.21367.2017.2.4.99", "--patient-id-issuer-oid", "1.2.826.0.1.99",
         *extra],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_port(port, proc)
        wait_for_port(dicom_port, proc)
    except Exception:
        proc.kill()
        raise
    return RunningService(proc, url=f"http://127.0.0.1:{port}", port=port, dicom_port=dicom_port,
                          storage_dir=storage_dir, repository_unique_id="1.3.6.1.4.1.21367.2017.2.4.99")


@pytest.fixture(scope="session")
def imaging_source(imaging_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningService]:
    """A running imaging source (shared by the modules: tests use their own instances), with a quiet period too
    long to publish anything meanwhile."""
    asyncio.run(empty_tables(imaging_database_url))
    service = start_imaging_source(imaging_database_url, tmp_path_factory.mktemp("instances"),
                                   "--quiet-period", "3600")
    yield service
    service.stop()


def send_with_pynetdicom(port: int, paths: list[Path], ae_title: str = "XDSI_TEST") -> list[int]:
    """C-STORE each file over one association; the status of each."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title="TEST_SCU")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established, "association with the Storage SCP was not established"
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


@pytest.fixture(scope="session")
def stored_samples(imaging_source, samples) -> dict[str, Path]:
    """Every sample sent to the running imaging source by C-STORE."""
    statuses = send_with_pynetdicom(imaging_source.dicom_port, list(samples.values()))
    assert statuses == [0] * len(samples), f"C-STORE statuses {statuses}"
    return samples
