"""The durable-write part of ingest alone: per-instance fsync + commit against the group-commit writer.

    python -m bench.imaging.durable_writes [--database-url ADMIN_URL] [--instances 400] [--threads 1,4,16]

No DICOM network: ``--threads`` threads (as many associations' handler threads) take prepared CT
instances (512x512, 16 bit) and keep them the way the Storage SCP does, either one by one as before
(``ingest.store_file``: file and folder fsync'd, then ``ingest.index_stored``: one committed transaction)
or through ``group_commit.GroupCommitWriter`` (staged unsynced; the batch's fsyncs and one statement
shared). Each measurement on emptied tables and an empty folder; instances/s printed per mode.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from bench.imaging.__main__ import admin_sql, db_url, make_study
from imaging_source.group_commit import GroupCommitWriter
from imaging_source.ingest import StoredInstance, index_stored, prepare, store_file
from imaging_source.storage import FileStorage
from imaging_source.store import TABLES


def run_threads(datas: list[bytes], threads: int, keep: Callable[[bytes], None]) -> float:
    """Instances/s of ``keep`` over ``datas`` dealt to ``threads`` threads."""
    def work(part: list[bytes]) -> None:
        for data in part:
            keep(data)

    workers = [threading.Thread(target=work, args=(datas[i::threads],)) for i in range(threads)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return len(datas) / (time.perf_counter() - t0)


async def measure(url: str, datas: list[bytes], threads: int, folder: Path) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    pool = await asyncpg.create_pool(url, min_size=1, max_size=threads + 2)
    rates = {}
    try:
        for mode in ("one by one", "group commit"):
            await admin_sql(url, f"TRUNCATE {TABLES} CASCADE")
            shutil.rmtree(folder, ignore_errors=True)
            storage = FileStorage(folder)
            writer = GroupCommitWriter(storage, pool, loop)
            writer.start()

            def one_by_one(data: bytes, storage: FileStorage = storage) -> None:
                stored = store_file(data, storage, issuer_oid="1.2.826.0.1.99")
                asyncio.run_coroutine_threadsafe(index_stored(stored, storage, pool), loop).result(60)

            def grouped(data: bytes, storage: FileStorage = storage, writer: GroupCommitWriter = writer) -> None:
                info, key = prepare(data, issuer_oid="1.2.826.0.1.99")
                stored = StoredInstance(info, key, len(data), False)
                writer.submit(stored, storage.stage(key, data)).result(60)

            rates[mode] = await asyncio.to_thread(run_threads, datas, threads,
                                                  one_by_one if mode == "one by one" else grouped)
            if mode == "group commit":
                rates["instances per batch"] = writer.flushed / max(1, writer.batches)
            writer.stop()
    finally:
        await pool.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default=os.environ.get("XDS_TEST_DATABASE_URL",
                                                                 "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--instances", type=int, default=400)
    parser.add_argument("--threads", default="1,4,16")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-durable-"))
    name = "xds_bench_durable"
    try:
        (work / "study").mkdir()
        make_study(work / "study", args.instances)
        datas = [p.read_bytes() for p in sorted((work / "study").glob("*.dcm"))]
        asyncio.run(admin_sql(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(admin_sql(args.database_url, f'CREATE DATABASE "{name}"'))
        url = db_url(args.database_url, name)

        async def migrate_it() -> None:
            from schemas import migrate

            conn = await asyncpg.connect(url)
            try:
                await migrate(conn, "imaging_source")
            finally:
                await conn.close()

        asyncio.run(migrate_it())
        print(f"load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
        print("| threads | one by one (fsync + commit each) | group commit | instances per batch |")
        print("| --- | --- | --- | --- |")
        for threads in (int(t) for t in args.threads.split(",")):
            r = asyncio.run(measure(url, datas, threads, work / "store"))
            print(f"| {threads} | {r['one by one']:.0f}/s | {r['group commit']:.0f}/s | "
                  f"{r['instances per batch']:.1f} |", flush=True)
        print(f"load average {'/'.join(f'{x:.1f}' for x in os.getloadavg())}")
    finally:
        asyncio.run(admin_sql(args.database_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
