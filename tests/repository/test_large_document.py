"""A 1 GB document through ITI-41 and back through ITI-43 with the repository's memory bounded.

The repository's peak resident set (VmHWM of its process) must stay under 200 MB: the upload
is streamed to disk as it arrives and the answer is streamed from the file. The data is
generated and checked in chunks, never held whole in this process either.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from consumer.client import DocumentRequest, SoapClient, provide_and_register, retrieve_document_set
from consumer.client.source import document_entry, submission_package
from tests.messages import TEST_SOURCE_ID
from tests.repository.conftest import blobs, new_patient, start_repository_process

SIZE = 1024 * 1024 * 1024
PEAK_RSS_LIMIT = 200 * 1024 * 1024


def write_document(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes to ``path`` 1 MiB at a time; return their SHA-1."""
    block = bytearray(os.urandom(1024 * 1024))
    digest = hashlib.sha1()
    with open(path, "wb") as fh:
        for i in range(size // len(block)):
            block[:8] = i.to_bytes(8, "big")  # every block differs
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


def file_sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def peak_rss(pid: int) -> int:
    """VmHWM (peak resident set size) of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


async def test_one_gigabyte_document_in_and_out_within_the_memory_bound(network, tmp_path):
    db = network.database_url
    repo = start_repository_process(db, network.registry.url, tmp_path / "storage")
    try:
        source = tmp_path / "big.bin"
        expected_sha1 = write_document(source, SIZE)
        pid = await new_patient(db)
        entry = document_entry(pid, "application/octet-stream", title="1 GB")
        package = submission_package(pid, [entry], source_id=TEST_SOURCE_ID)
        async with SoapClient(timeout=300) as client:
            result = await provide_and_register(client, repo.url, package, {entry.entry_uuid: source})
            assert (result.status, result.errors) == ("urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success",
                                                      [])
            assert entry.hash == expected_sha1 and entry.size == SIZE
            source.unlink()
            assert len(blobs(repo.storage_dir)) == 1
            got = await retrieve_document_set(client, repo.url, [DocumentRequest(repo.repository_unique_id,
                                                                                 entry.unique_id)],
                                              dest_dir=tmp_path / "out")
        [doc] = got.documents
        assert (doc.size, doc.sha1) == (SIZE, expected_sha1)
        assert file_sha1(doc.path) == expected_sha1
        peak = peak_rss(repo.proc.pid)
        assert peak < PEAK_RSS_LIMIT, f"repository peak RSS {peak / 2**20:.0f} MiB exceeds 200 MiB"
        print(f"repository peak RSS: {peak / 2**20:.0f} MiB")
    finally:
        repo.stop()
