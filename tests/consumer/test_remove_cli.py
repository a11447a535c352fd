"""``xds-consumer remove-metadata`` / ``remove-documents`` as an integration engineer runs them, against real
registry and repository processes."""

from __future__ import annotations

import hashlib
import re

from consumer.client import SoapClient
from consumer.client.query import get_documents
from tests.consumer.test_cli import run
from tests.messages import TEST_AUTHORITY_OID
from tests.repository.conftest import blobs, new_patient


def submit(network, tmp_path, pid: str, contents: dict[str, bytes]) -> dict[str, tuple[str, str]]:
    """Submit files through the CLI; file name -> (uniqueId, entryUUID)."""
    for name, data in contents.items():
        (tmp_path / name).write_bytes(data)
    done = run("submit", "--repository", network.repository.url, "--patient-id", pid,
               "--source-id", "1.3.6.1.4.1.21367.2009.1.2.1", *(str(tmp_path / n) for n in contents))
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.findall(r"document \S+/([^/\s]+): uniqueId (\S+) entryUUID (\S+)", done.stdout)
    return {name: (uid, entry) for name, uid, entry in found}


async def test_remove_a_document_completely(network, tmp_path):
    repo, registry = network.repository, network.registry
    pid = await new_patient(network.database_url)
    docs = submit(network, tmp_path, pid, {"a.txt": b"first report\n" * 50, "b.txt": b"second report\n" * 50})
    (uid_a, entry_a), (uid_b, _) = docs["a.txt"], docs["b.txt"]

    done = run("remove-metadata", "--registry", registry.url, "--document", uid_a, "--dry-run")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "would remove:" in done.stdout and entry_a in done.stdout
    assert len(re.findall(r"urn:uuid:\S+", done.stdout)) == 2  # the entry and its SubmissionSet HasMember

    done = run("remove-metadata", "--registry", registry.url, "--document", uid_a)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status: Success" in done.stdout and f"removed {entry_a}" in done.stdout
    async with SoapClient() as client:
        assert await get_documents(client, registry.url, [uid_a]) == []
        assert [e.unique_id for e in await get_documents(client, registry.url, [uid_b])] == [uid_b]
    done = run("find", "--registry", registry.url, "--patient-id", pid, "--affinity-domain-oid", TEST_AUTHORITY_OID)
    assert "1 document(s)" in done.stdout and uid_b in done.stdout and uid_a not in done.stdout

    key = hashlib.sha256(b"first report\n" * 50).hexdigest()
    assert key in blobs(repo.storage_dir)
    done = run("remove-documents", "--repository", repo.url, "--repository-id", repo.repository_unique_id, uid_a)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "status: Success" in done.stdout and f"removed {uid_a}" in done.stdout
    assert key not in blobs(repo.storage_dir)
    done = run("retrieve", "--repository", repo.url, "--repository-id", repo.repository_unique_id, uid_a, uid_b,
               "--output-dir", str(tmp_path / "out"))
    assert done.returncode == 1 and "status: PartialSuccess" in done.stdout
    assert "XDSDocumentUniqueIdError" in done.stdout
    assert (tmp_path / "out" / uid_b).read_bytes() == b"second report\n" * 50


async def test_refusals_exit_non_zero_with_the_ihe_error(network, tmp_path):
    repo, registry = network.repository, network.registry
    pid = await new_patient(network.database_url)
    (uid, entry), = submit(network, tmp_path, pid, {"c.txt": b"third report\n"}).values()

    done = run("remove-metadata", "--registry", registry.url, entry)  # without its SubmissionSet's HasMember
    assert done.returncode == 1, done.stdout + done.stderr
    assert "status: Failure" in done.stdout and "ReferencesExistException" in done.stdout
    done = run("remove-metadata", "--registry", registry.url, "--document", "1.2.3.404")
    assert done.returncode == 1 and "holds no document 1.2.3.404" in done.stderr
    async with SoapClient() as client:
        assert [e.entry_uuid for e in await get_documents(client, registry.url, [uid])] == [entry]

    done = run("remove-documents", "--repository", repo.url, "--repository-id", repo.repository_unique_id,
               "1.2.3.404", uid)
    assert done.returncode == 1 and "status: PartialSuccess" in done.stdout
    assert "XDSDocumentUniqueIdError" in done.stdout and f"removed {uid}" in done.stdout
    assert "removed 1.2.3.404" not in done.stdout

    done = run("remove-metadata", "--document", uid)
    assert done.returncode == 2 and "--registry" in done.stderr
    done = run("remove-documents", "--repository", "http://127.0.0.1:9/repository", "--repository-id", "1.2", uid)
    assert done.returncode == 1 and "cannot connect" in done.stderr
