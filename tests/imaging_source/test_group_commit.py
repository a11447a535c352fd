"""Group commit of C-STOREs: instances from many associations share fsyncs and one commit, yet each is
durable before its success status, a refused one fails alone and leaves nothing, and a crash right after
a success loses nothing that was acknowledged."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from pathlib import Path

import asyncpg
import pydicom
import pytest
from pynetdicom import AE

from imaging_source.group_commit import GroupCommitWriter
from imaging_source.ingest import StoredInstance, prepare
from imaging_source.storage import FileStorage, StorageError
from tests.imaging_source.conftest import start_imaging_source


def listeners(port: int) -> int:
    """How many sockets listen on this TCP port (all processes: /proc/net/tcp, state 0A)."""
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(1 for line in lines if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A")


async def wait_for_listeners(port: int, count: int, timeout: float = 30) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and listeners(port) != count:
        await asyncio.sleep(0.1)
    return listeners(port)


def same_instance(stored: Path, sent: Path) -> bool:
    """The stored file holds the dataset sent (the SCP writes its own preamble and file meta)."""
    a, b = pydicom.dcmread(stored), pydicom.dcmread(sent)
    return a == b and a.PixelData == b.PixelData and a.file_meta.TransferSyntaxUID == b.file_meta.TransferSyntaxUID


def make_instances(template: Path, folder: Path, count: int, study_uid: str | None = None) -> list[Path]:
    """``count`` copies of a sample with new SOP Instance UIDs (one new study), as Part 10 files."""
    ds = pydicom.dcmread(template)
    ds.StudyInstanceUID = study_uid or pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for n in range(count):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"1.2.826.0.1.97.{uuid.uuid4().int % 10**20}"
        ds.InstanceNumber = n + 1
        path = folder / f"{n:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def staged(storage: FileStorage, path: Path) -> tuple[StoredInstance, object]:
    data = path.read_bytes()
    info, key = prepare(data, issuer_oid="1.2.826.0.1.99")
    return StoredInstance(info, key, len(data), False), storage.stage(key, data)


async def test_one_refused_instance_fails_alone_in_its_batch(imaging_pool, fresh_imaging_database_url, samples,
                                                          tmp_path):
    """Five instances in one batch; PostgreSQL refuses one (a CHECK constraint), the disk loses another's
    staged file: those two answer failure and leave neither row nor file, the other three are kept."""
    storage = FileStorage(tmp_path / "store")
    paths = make_instances(samples["CT"], tmp_path / "in", 5)
    items = [staged(storage, p) for p in paths]
    refused_uid = items[1][0].info.sop_instance_uid
    os.unlink(items[3][1].tmp)  # the staged bytes are gone before the flush: the rename fails
    writer = GroupCommitWriter(storage, imaging_pool, asyncio.get_running_loop())
    futures = [writer.submit(stored, stage) for stored, stage in items]  # all queued before the flusher runs
    conn = await asyncpg.connect(fresh_imaging_database_url)
    await conn.execute(f"ALTER TABLE imaging_instance ADD CONSTRAINT test_refuse_one CHECK "
                       f"(sop_instance_uid <> '{refused_uid}')")
    try:
        writer.start()
        results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)
    finally:
        writer.stop()
        await conn.execute("ALTER TABLE imaging_instance DROP CONSTRAINT test_refuse_one")
    rows = {r["sop_instance_uid"]: r for r in await conn.fetch("SELECT * FROM imaging_instance")}
    await conn.close()

    assert writer.batches == 1 and writer.flushed == 5
    assert isinstance(results[1], StorageError) and isinstance(results[3], StorageError)
    assert [results[i] for i in (0, 2, 4)] == [True, True, True]
    for i, (stored, _) in enumerate(items):
        file = storage.root / stored.key
        if i in (1, 3):
            assert stored.info.sop_instance_uid not in rows and not file.exists()
        else:
            assert rows[stored.info.sop_instance_uid]["storage_key"] == stored.key
            assert file.read_bytes() == paths[i].read_bytes()
    assert not list(storage.root.rglob(".incoming-*"))


async def test_an_instance_twice_in_one_batch(imaging_pool, samples, tmp_path):
    """The same SOP instance twice in a batch (a resend while the first copy waits): the batch statement
    cannot take it, one savepoint per instance can; both are acknowledged and the row is the last copy."""
    storage = FileStorage(tmp_path / "store")
    [path] = make_instances(samples["CT"], tmp_path / "in", 1)
    ds = pydicom.dcmread(path)
    ds.ImageComments = "second copy"
    second = tmp_path / "second.dcm"
    ds.save_as(second, enforce_file_format=True)
    items = [staged(storage, path), staged(storage, second)]
    writer = GroupCommitWriter(storage, imaging_pool, asyncio.get_running_loop())
    futures = [writer.submit(stored, stage) for stored, stage in items]
    writer.start()
    results = await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))
    writer.stop()
    assert results == [True, False] and writer.batches == 1
    async with imaging_pool.acquire() as conn:
        key = await conn.fetchval("SELECT storage_key FROM imaging_instance WHERE sop_instance_uid = $1",
                                  ds.SOPInstanceUID)
    assert key == items[1][0].key
    assert [p.name for p in storage.root.rglob(f"{ds.SOPInstanceUID}*")] == [Path(key).name]


def send_in_parallel(port: int, batches: list[list[Path]], statuses: dict[str, int],
                     stop_after: int | None = None, on_stop=None) -> None:
    """One association per batch, all at once; ``statuses`` gets each SOP instance's answer as it comes.
    With ``stop_after``, ``on_stop`` is called (once) as soon as that many successes came back."""
    lock = threading.Lock()
    stopped = threading.Event()

    def run(paths: list[Path]) -> None:
        datasets = [pydicom.dcmread(p) for p in paths]
        ae = AE(ae_title="TEST_SCU")
        ae.add_requested_context(datasets[0].SOPClassUID, datasets[0].file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", port, ae_title="XDSI_TEST")
        if not assoc.is_established:
            return
        try:
            for ds in datasets:
                if stopped.is_set():
                    break
                status = assoc.send_c_store(ds)
                with lock:
                    statuses[ds.SOPInstanceUID] = int(status.Status) if "Status" in status else -1
                    successes = sum(1 for s in statuses.values() if s == 0)
                    if stop_after is not None and successes >= stop_after and not stopped.is_set():
                        stopped.set()
                        on_stop()
        finally:
            if assoc.is_established:
                assoc.release()

    threads = [threading.Thread(target=run, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)


async def test_concurrent_associations(imaging_source, imaging_database_url, samples, tmp_path):
    paths = make_instances(samples["CT"], tmp_path, 60)
    statuses: dict[str, int] = {}
    await asyncio.to_thread(send_in_parallel, imaging_source.dicom_port, [paths[i::4] for i in range(4)], statuses)
    assert len(statuses) == 60 and set(statuses.values()) == {0}
    conn = await asyncpg.connect(imaging_database_url)
    try:
        rows = {r["sop_instance_uid"]: r["storage_key"] for r in await conn.fetch(
            "SELECT sop_instance_uid, storage_key FROM imaging_instance WHERE sop_instance_uid = ANY($1::text[])",
            list(statuses))}
    finally:
        await conn.close()
    for path in paths:
        uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
        assert same_instance(Path(imaging_source.storage_dir) / rows[uid], path)


@pytest.mark.parametrize("workers", [1, 2])
async def test_kill_9_right_after_a_success_loses_nothing_acknowledged(new_imaging_database, samples, tmp_path,
                                                                       workers):
    """Four associations send; as soon as 25 successes came back the service is killed with SIGKILL. Every
    acknowledged instance is indexed with its exact bytes on disk, and no index row lacks its file; the
    restarted service takes the unacknowledged ones again."""
    database_url = await asyncio.to_thread(new_imaging_database)
    storage_dir = tmp_path / "store"
    paths = make_instances(samples["CT"], tmp_path / "in", 80)
    service = start_imaging_source(database_url, storage_dir, "--quiet-period", "3600",
                                   "--dicom-workers", str(workers))
    statuses: dict[str, int] = {}
    try:
        assert await wait_for_listeners(service.dicom_port, workers) == workers  # every worker takes associations
        await asyncio.to_thread(send_in_parallel, service.dicom_port, [paths[i::4] for i in range(4)], statuses,
                                25, service.proc.kill)
        service.proc.wait(30)
        # No process of the killed service keeps the port (DICOM workers follow their main process).
        assert await wait_for_listeners(service.dicom_port, 0, timeout=10) == 0
    finally:
        service.stop()
    acknowledged = {uid for uid, status in statuses.items() if status == 0}
    assert len(acknowledged) >= 25 and len(acknowledged) < 80  # killed mid-way

    conn = await asyncpg.connect(database_url)
    try:
        rows = {r["sop_instance_uid"]: r for r in await conn.fetch("SELECT * FROM imaging_instance")}
    finally:
        await conn.close()
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in paths}
    assert acknowledged <= set(rows)
    for uid, row in rows.items():  # acknowledged or not: a row always has its whole file
        file = storage_dir / row["storage_key"]
        assert same_instance(file, by_uid[uid]) and row["size"] == file.stat().st_size

    service = start_imaging_source(database_url, storage_dir, "--quiet-period", "3600")
    try:
        rest = [by_uid[uid] for uid in by_uid if uid not in acknowledged]
        again: dict[str, int] = {}
        await asyncio.to_thread(send_in_parallel, service.dicom_port, [rest], again)
        assert set(again.values()) == {0} and len(again) == len(rest)
    finally:
        service.stop()
