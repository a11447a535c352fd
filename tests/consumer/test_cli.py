"""``xds-consumer submit`` / ``retrieve`` as an integration engineer runs them, against real processes."""

from __future__ import annotations

import re
import subprocess
import sys

from consumer.client import SoapClient
from consumer.client.query import get_documents
from tests.conftest import ROOT
from tests.messages import TEST_AUTHORITY_OID
from tests.repository.conftest import new_patient

CDA = b"""<?xml version="1.0" encoding="UTF-8"?>
<ClinicalDocument xmlns="urn:hl7-org:v3"><title>Discharge summary</title></ClinicalDocument>
"""
PDF = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n" + bytes(range(256)) * 100


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "consumer.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


async def test_submit_files_then_retrieve_them(network, tmp_path):
    repo = network.repository
    pid = await new_patient(network.database_url)
    (tmp_path / "scan.pdf").write_bytes(PDF)
    (tmp_path / "summary.xml").write_bytes(CDA)

    done = run("submit", "--repository", repo.url, "--patient-id", pid, "--source-id", "1.3.6.1.4.1.21367.2009.1.2.1",
               "--author", "^Smith^John", str(tmp_path / "scan.pdf"), str(tmp_path / "summary.xml"))

    assert done.returncode == 0, done.stdout + done.stderr
    assert "status: Success" in done.stdout
    uids = re.findall(r"uniqueId (\S+) entryUUID", done.stdout)
    assert len(uids) == 2
    async with SoapClient() as client:
        registered = {e.unique_id: e for e in await get_documents(client, network.registry.url, uids)}
    assert (registered[uids[0]].mime_type, registered[uids[0]].format_code.code) == (
        "application/pdf", "urn:ihe:iti:xds-sd:pdf:2008")
    assert registered[uids[1]].mime_type == "text/xml"
    assert registered[uids[0]].title.value == "scan.pdf"
    assert registered[uids[0]].authors[0].person == "^Smith^John"

    done = run("find", "--registry", network.registry.url, "--patient-id", pid,
               "--affinity-domain-oid", TEST_AUTHORITY_OID)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 document(s)" in done.stdout
    for uid in uids:
        assert f"{uid}  repository {repo.repository_unique_id}" in done.stdout
    assert "application/pdf" in done.stdout and "scan.pdf" in done.stdout

    out = tmp_path / "out"
    done = run("retrieve", "--repository", repo.url, "--repository-id", repo.repository_unique_id, *uids,
               "--output-dir", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / uids[0]).read_bytes() == PDF and (out / uids[1]).read_bytes() == CDA
    assert "mimeType application/pdf" in done.stdout


async def test_failures_exit_non_zero_with_the_ihe_error(network, tmp_path):
    repo = network.repository
    (tmp_path / "a.txt").write_text("hello")
    done = run("submit", "--repository", repo.url, "--patient-id", "nobody^^^&1.3.6.1.4.1.21367.13.20.1000&ISO",
               str(tmp_path / "a.txt"))
    assert done.returncode == 1 and "XDSUnknownPatientId" in done.stdout
    done = run("find", "--registry", network.registry.url, "--patient-id", "")
    assert done.returncode == 1 and "has no ID number" in done.stderr

    done = run("retrieve", "--repository", repo.url, "--repository-id", repo.repository_unique_id, "1.2.3.999",
               "--output-dir", str(tmp_path))
    assert done.returncode == 1 and "XDSDocumentUniqueIdError" in done.stdout

    done = run("submit", "--repository", "http://127.0.0.1:9/repository", "--patient-id", "x^^^&1.2&ISO",
               str(tmp_path / "a.txt"))
    assert done.returncode == 1 and "cannot connect" in done.stderr

    done = run("submit", "--patient-id", "x^^^&1.2&ISO", "--class-code", "nocode", str(tmp_path / "a.txt"),
               "--repository", repo.url)
    assert done.returncode == 2 and "code^codingScheme" in done.stderr

    (tmp_path / "not-a-folder").write_text("")
    done = run("retrieve", "--repository", repo.url, "--repository-id", repo.repository_unique_id, "1.2.3.999",
               "--output-dir", str(tmp_path / "not-a-folder" / "out"))
    assert done.returncode == 1 and "Not a directory" in done.stderr and "Traceback" not in done.stderr


def test_help_of_both_commands():
    for module, words in (("consumer.cli", ("submit", "retrieve", "find")),
                          ("repository.cli", ("--repository-unique-id", "--storage-dir"))):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0 and all(w in done.stdout for w in words)
    done = subprocess.run([sys.executable, "-m", "repository.cli"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "--repository-unique-id is required" in done.stderr
