"""Delivery end to end, against real processes: nothing lost, nothing stored twice.

- the sending process is killed (-9) mid-load and restarted;
- the audit record repository is killed (-9) mid-load of ITI-18 queries at a registry with
  audit enabled, and started again;
- UDP delivery; `xds-audit search`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter

import aiohttp
import pytest

from ihe.audit.auditor import Auditor
from ihe.audit.messages import ACTION_READ, EV_EXPORT, OUTCOME_SUCCESS, AuditEvent, Participant, patient
from ihe.audit.sender import Destination, Sender
from ihe.audit.spool import Spool
from tests.audit.support import fetch, make_certificates, migrate_audit, start_audit_process
from tests.conftest import ROOT, free_port, start_registry_process
from tests.messages import FIND_DOCUMENTS, new_patient_id, quoted, stored_query_envelope


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def audit_db(database_url):
    migrate_audit(database_url)
    return database_url


def _records_of(database_url: str, run: str) -> Counter:
    rows = fetch(database_url, "SELECT object_ids FROM audit_record WHERE $1 = ANY(patient_ids)", run)
    return Counter(o for r in rows for o in r["object_ids"])


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _emitter(spool, url, ca, run, first, last) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.audit.emitter", str(spool), url, str(ca), run, str(first),
                             str(last)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sender_killed_mid_load_delivers_every_record_once(audit_db, certs, tmp_path):
    repository = start_audit_process(audit_db, certs)
    run, total = f"RUN{uuid.uuid4().hex[:8]}^^^&1.2.3&ISO", 1500
    try:
        first = _emitter(tmp_path / "spool", repository.url, certs.ca, run, 1, total)
        last_appended = 0
        for line in first.stdout:
            if line.startswith("appended "):
                last_appended = int(line.split()[1])
                if last_appended >= 400:
                    break
        os.kill(first.pid, signal.SIGKILL)
        rest, _ = first.communicate(timeout=30)
        for line in rest.splitlines():
            if line.startswith("appended "):
                last_appended = int(line.split()[1])
        assert last_appended < total, "the load ended before the kill: make it larger"
        # Record last_appended + 1 may or may not have reached the disk before the kill: skip it.
        second = _emitter(tmp_path / "spool", repository.url, certs.ca, run, last_appended + 2, total)
        out, _ = second.communicate(timeout=180)
        assert "drained" in out, out[-2000:]
        counts = _records_of(audit_db, run)
        expected = [f"rec-{i}" for i in range(1, total + 1) if i != last_appended + 1]
        assert [r for r in expected if counts[r] != 1] == []
        assert counts[f"rec-{last_appended + 1}"] <= 1
    finally:
        repository.stop()


async def _queries(url: str, patients: list[str], progress: list[int]) -> list[int]:
    statuses = []
    async with aiohttp.ClientSession() as session:
        for pid in patients:
            body = stored_query_envelope(FIND_DOCUMENTS, {
                "$XDSDocumentEntryPatientId": quoted(pid),
                "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"})
            async with session.post(url, data=body, headers={"Content-Type": "application/soap+xml"}) as resp:
                await resp.read()
                statuses.append(resp.status)
            progress[0] += 1
    return statuses


def test_audit_repository_killed_mid_load_keeps_every_record_once(audit_db, registry_database_url, certs,
                                                                   tmp_path):
    audit_port = free_port()
    repository = start_audit_process(audit_db, certs, port=audit_port)
    registry = start_registry_process(
        registry_database_url, "--audit-repository", f"tls://127.0.0.1:{audit_port}", "--audit-ca-file",
        str(certs.ca), "--audit-spool-dir", str(tmp_path / "registry-spool"), "--audit-source-id", "registry-test")
    patients = [new_patient_id() for _ in range(300)]
    progress = [0]
    result: list = []
    load = threading.Thread(target=lambda: result.append(asyncio.run(_queries(registry.url, patients, progress))))
    try:
        load.start()
        _wait_for(lambda: progress[0] >= 80, 120, "the first queries")
        os.kill(repository.proc.pid, signal.SIGKILL)
        repository.proc.wait()
        _wait_for(lambda: progress[0] >= 200, 120, "queries while the audit repository is down")
        repository = start_audit_process(audit_db, certs, port=audit_port)
        load.join(120)
        assert result and all(s == 200 for s in result[0])

        def all_there() -> bool:
            rows = fetch(audit_db, "SELECT count(*) AS n FROM audit_record WHERE patient_ids && $1::text[]",
                         patients)
            return rows[0]["n"] >= len(patients)

        _wait_for(all_there, 90, "every audit record to reach the repository")
        rows = fetch(audit_db, "SELECT patient_ids, event_type, event_id, user_address, source_id, object_ids "
                               "FROM audit_record WHERE patient_ids && $1::text[]", patients)
        seen = Counter(p for r in rows for p in r["patient_ids"])
        assert [p for p in patients if seen[p] != 1] == []
        assert {(r["event_type"], r["event_id"], r["user_address"], r["source_id"]) for r in rows} == {
            ("ITI-18", "110112", "127.0.0.1", "registry-test")}
        assert all(FIND_DOCUMENTS in r["object_ids"] for r in rows)

        # who saw which patient, when, from where
        out = subprocess.run([sys.executable, "-m", "ihe.audit.cli", "search", "--patient", patients[123],
                              "--database-url", audit_db], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 1
        assert "ITI-18" in lines[0] and "from=127.0.0.1" in lines[0] and "node=registry-test" in lines[0]
        assert f"patient={patients[123]}" in lines[0]
        bare = patients[5].split("^")[0]
        out = subprocess.run([sys.executable, "-m", "ihe.audit.cli", "search", "--patient", bare, "--event",
                              "ITI-18", "--since", "2000-01-01", "--node", "registry-test", "--database-url",
                              audit_db], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and len(out.stdout.splitlines()) == 1 and patients[5] in out.stdout
        out = subprocess.run([sys.executable, "-m", "ihe.audit.cli", "search", "--patient", bare, "--until",
                              "2000-01-01", "--database-url", audit_db], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and out.stdout == ""
    finally:
        registry.stop()
        repository.stop()


def test_udp_delivery(audit_db, certs, tmp_path):
    udp_port = free_port()
    repository = start_audit_process(audit_db, certs, udp_port=udp_port)
    run = f"UDP{uuid.uuid4().hex[:8]}^^^&1.2.3&ISO"
    spool = Spool.open_slot(tmp_path / "spool", max_bytes=1 << 20)
    auditor = Auditor(spool, Sender(spool, Destination.parse(f"udp://127.0.0.1:{udp_port}")), source_id="u",
                      app_name="t")
    try:
        auditor.start()
        for _ in range(20):
            auditor.record(AuditEvent(EV_EXPORT, ACTION_READ, OUTCOME_SUCCESS, "u", (Participant("x", True),),
                                      (patient(run),)))
        assert auditor.sender.drain(30)
        _wait_for(lambda: fetch(audit_db, "SELECT count(*) AS n FROM audit_record WHERE $1 = ANY(patient_ids)",
                                run)[0]["n"] == 20, 30, "the UDP records")
    finally:
        auditor.close()
        repository.stop()
