"""Issue 12's reliability requirement, with real processes: the audit record repository is killed (SIGKILL)
in the middle of a load of ITI-18 queries and started again; afterwards every query of the load has its
audit record in the repository, exactly once (the services' spools resend what was not acknowledged, the
repository drops what it had already stored)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import aiohttp

from tests.audit.support import fetch, make_certificates, migrate_audit, start_audit_process
from tests.conftest import free_port, start_registry_process
from tests.messages import FIND_DOCUMENTS, new_patient_id, quoted, stored_query_envelope

QUERIES = 600
CONCURRENCY = 8


def test_killing_the_audit_repository_mid_load_loses_and_doubles_nothing(registry_database_url, tmp_path):
    certs = make_certificates(tmp_path / "certs")
    migrate_audit(registry_database_url)
    port = free_port()
    audit = start_audit_process(registry_database_url, certs, port=port)
    node = f"reliability-{time.monotonic_ns()}"
    registry = start_registry_process(registry_database_url, "--audit-repository", audit.url, "--audit-ca-file",
                                      str(certs.ca), "--audit-spool-dir", str(tmp_path / "spool"),
                                      "--audit-source-id", node)
    patients = [new_patient_id() for _ in range(QUERIES)]
    answered: list[int] = []
    events = {"killed": threading.Event(), "restarted": threading.Event()}
    try:
        async def load() -> None:
            queue: asyncio.Queue[str] = asyncio.Queue()
            for p in patients:
                queue.put_nowait(p)

            async def worker(http: aiohttp.ClientSession) -> None:
                while not queue.empty():
                    cx = queue.get_nowait()
                    body = stored_query_envelope(FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": quoted(cx)})
                    async with http.post(registry.url, data=body,
                                         headers={"Content-Type": "application/soap+xml"}) as resp:
                        assert resp.status == 200, await resp.text()
                        await resp.read()
                    answered.append(1)
                    if len(answered) == QUERIES // 3 and not events["killed"].is_set():
                        os.kill(audit.proc.pid, signal.SIGKILL)  # mid-load, no goodbye
                        audit.proc.wait()
                        events["killed"].set()
                    elif len(answered) == 2 * QUERIES // 3 and not events["restarted"].is_set():
                        events["restarted"].set()

            async with aiohttp.ClientSession() as http:
                await asyncio.gather(*(worker(http) for _ in range(CONCURRENCY)))

        loader = threading.Thread(target=lambda: asyncio.run(load()))
        loader.start()
        assert events["restarted"].wait(300), "the load stalled while the audit repository was down"
        before = fetch(registry_database_url, "SELECT count(*) AS n FROM audit_record WHERE source_id = $1", node)
        assert before[0]["n"] < 2 * QUERIES // 3  # records of queries served meanwhile wait in the spool
        audit = start_audit_process(registry_database_url, certs, port=port)  # back, on the same port
        loader.join(300)
        assert len(answered) == QUERIES  # the registry served everything while the repository was down

        deadline = time.monotonic() + 120
        while True:
            rows = fetch(registry_database_url, "SELECT patient_ids, origin, seq FROM audit_record "
                                                "WHERE source_id = $1 AND event_type = 'ITI-18'", node)
            if len(rows) >= QUERIES or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        recorded = [p for r in rows for p in r["patient_ids"]]
        assert len(rows) == QUERIES, f"{len(rows)} audit records for {QUERIES} queries"
        assert sorted(recorded) == sorted(patients)  # each query's record, none twice, none missing
        assert len({(r["origin"], r["seq"]) for r in rows}) == QUERIES
        time.sleep(2)  # nothing more arrives later either (no duplicate delivered after the count was reached)
        again = fetch(registry_database_url, "SELECT count(*) AS n FROM audit_record WHERE source_id = $1", node)
        assert again[0]["n"] == QUERIES
    finally:
        registry.stop()
        audit.stop()
