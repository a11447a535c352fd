"""The cost of auditing an ITI-18 query: FindDocuments at a registry without and with ATNA audit.

    python -m bench.audit [--database-url postgresql://postgres@127.0.0.1:5432/test] [--queries 400]

Starts a real ``xds-audit`` (TLS, certificates made here) and registry processes on a fresh
database (dropped afterwards), alternating plain and audited runs; prints p50/p95 and throughput
at concurrency 1 and 8. The audited answer waits for the record's fsync in the local spool.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import asyncpg

from tests.audit.support import make_certificates, migrate_audit, start_audit_process
from tests.conftest import start_registry_process
from tests.messages import FIND_DOCUMENTS, new_patient_id, quoted, stored_query_envelope


async def _load(url: str, n: int, concurrency: int) -> tuple[float, float, float]:
    body = stored_query_envelope(FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": quoted(new_patient_id()),
        "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"})
    latencies: list[float] = []
    async with aiohttp.ClientSession() as session:
        async def one() -> None:
            t = time.perf_counter()
            async with session.post(url, data=body, headers={"Content-Type": "application/soap+xml"}) as r:
                await r.read()
                assert r.status == 200
            latencies.append((time.perf_counter() - t) * 1000)

        for _ in range(50):
            await one()
        latencies.clear()
        sem = asyncio.Semaphore(concurrency)

        async def guarded() -> None:
            async with sem:
                await one()

        start = time.perf_counter()
        await asyncio.gather(*(guarded() for _ in range(n)))
        elapsed = time.perf_counter() - start
    latencies.sort()
    return statistics.median(latencies), latencies[int(len(latencies) * 0.95)], n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    name = f"bench_audit_{uuid.uuid4().hex[:8]}"
    base = args.database_url.rsplit("/", 1)[0]

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(args.database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = f"{base}/{name}"
    work = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    try:
        certs = make_certificates(work / "certs")
        migrate_audit(url)
        audit = start_audit_process(url, certs)
        try:
            for round_ in range(args.rounds):
                for label in ("plain", "audit"):
                    extra = () if label == "plain" else (
                        "--audit-repository", audit.url, "--audit-ca-file", str(certs.ca),
                        "--audit-spool-dir", str(work / f"spool-{round_}"))
                    registry = start_registry_process(url, "--log-level", "WARNING", *extra)
                    try:
                        for concurrency in (1, 8):
                            p50, p95, rps = asyncio.run(_load(registry.url, args.queries, concurrency))
                            print(f"{label:5s} concurrency {concurrency}: p50 {p50:.2f} ms, p95 {p95:.2f} ms, "
                                  f"{rps:.0f} queries/s", flush=True)
                    finally:
                        registry.stop()
        finally:
            audit.stop()
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
