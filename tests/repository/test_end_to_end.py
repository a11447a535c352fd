"""ITI-41 and ITI-43 end to end: real registry and repository processes, real HTTP, real PostgreSQL.

Every failure case also checks that nothing was kept: no new blob, no journal entry, no
held document, nothing staged, and nothing registered.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid

import aiohttp
import pytest
from lxml import etree

from consumer.client import (
    DocumentRequest,
    SoapClient,
    document_entry,
    provide_and_register,
    retrieve_document_set,
    submission_package,
)
from consumer.client.query import get_documents
from ihe.mtom import parse_content_type, unpack_mtom_bytes
from tests.messages import TEST_SOURCE_ID, new_oid, provide_and_register_request
from tests.repository.conftest import (
    Network,
    blobs,
    journal_and_documents,
    new_patient,
    record_patient_cx,
    staging_files,
)
from tests.repository.wire import WireMessage, inline_request, mtom_request, reference_message
from tests.shared import reference_dir

SHARED_MESSAGES = reference_dir("messages")
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
SOAP = "http://www.w3.org/2003/05/soap-envelope"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
PARTIAL = "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def post(url: str, message: WireMessage) -> tuple[int, etree._Element]:
    """POST a raw message; return the HTTP status and the response envelope."""
    async with aiohttp.ClientSession() as session, session.post(
        url, data=message.body, headers={"Content-Type": message.content_type}
    ) as response:
        body = await response.read()
        content_type = response.headers.get("Content-Type", "")
    if parse_content_type(content_type)[0] == "multipart/related":
        body, _ = unpack_mtom_bytes(content_type, body)
    return response.status, etree.fromstring(body)


def registry_response(envelope: etree._Element) -> tuple[str, list[tuple[str, str]]]:
    rr = envelope.find(f".//{{{RS}}}RegistryResponse")
    assert rr is not None, etree.tostring(envelope)[:2000]
    return rr.get("status"), [(e.get("errorCode"), e.get("codeContext")) for e in rr.iter(f"{{{RS}}}RegistryError")]


def fault_reason(envelope: etree._Element) -> str:
    text = envelope.find(f".//{{{SOAP}}}Fault/{{{SOAP}}}Reason/{{{SOAP}}}Text")
    assert text is not None, etree.tostring(envelope)[:2000]
    return text.text


@pytest.fixture
async def client():
    async with SoapClient(timeout=60) as c:
        yield c


class NothingKept:
    """Snapshot of a repository's state, to assert a failed request left no trace."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.repo = network.repository

    async def __aenter__(self) -> NothingKept:
        self.blobs = blobs(self.repo.storage_dir)
        self.journal, self.held = await journal_and_documents(self.network.database_url,
                                                               self.repo.repository_unique_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        assert blobs(self.repo.storage_dir) == self.blobs
        assert await journal_and_documents(self.network.database_url, self.repo.repository_unique_id) == (
            self.journal, self.held)
        assert staging_files(self.repo.storage_dir) == []


async def assert_not_registered(client: SoapClient, network: Network, unique_ids: list[str]) -> None:
    assert await get_documents(client, network.registry.url, unique_ids) == []


async def retrieve_all(client, network, unique_ids):
    repo = network.repository
    return await retrieve_document_set(client, repo.url,
                                       [DocumentRequest(repo.repository_unique_id, u) for u in unique_ids])


# --- success paths ------------------------------------------------------------------------------


async def test_client_submits_a_file_and_retrieves_it(network, client, tmp_path):
    repo = network.repository
    pid = await new_patient(network.database_url)
    content = os.urandom(300_000)
    path = tmp_path / "scan.pdf"
    path.write_bytes(content)
    entry = document_entry(pid, "application/pdf", title="Scan")
    package = submission_package(pid, [entry], source_id=TEST_SOURCE_ID)

    result = await provide_and_register(client, repo.url, package, {entry.entry_uuid: path})

    assert (result.status, result.errors) == (SUCCESS, [])
    [registered] = await get_documents(client, network.registry.url, [entry.unique_id])
    assert (registered.hash, registered.size, registered.repository_unique_id) == (
        sha1(content), len(content), repo.repository_unique_id)
    assert sha256(content) in blobs(repo.storage_dir)
    got = await retrieve_all(client, network, [entry.unique_id])
    assert got.status == SUCCESS and got.errors == []
    [doc] = got.documents
    assert (doc.data, doc.mime_type, doc.document_unique_id, doc.repository_unique_id) == (
        content, "application/pdf", entry.unique_id, repo.repository_unique_id)


async def test_repository_adds_hash_and_size_when_the_source_omits_them(network, client):
    pid = await new_patient(network.database_url)
    contents = [b"first report\n", b"second report, longer\n"]
    built = provide_and_register_request(pid, documents=2, contents=contents, omit_document=("hash", "size"))
    assert b'name="hash"' not in built.xml

    status, envelope = await post(network.repository.url, mtom_request(built))

    assert status == 200 and registry_response(envelope) == (SUCCESS, [])
    registered = {e.unique_id: e for e in await get_documents(client, network.registry.url, built.document_unique_ids)}
    for uid, content in zip(built.document_unique_ids, contents, strict=True):
        assert (registered[uid].hash, registered[uid].size) == (sha1(content), len(content))


@pytest.mark.parametrize("style", ["axis2", "lf", "no-brackets", "percent", "dotnet", "root-last"])
async def test_raw_mtom_as_other_sources_send_it(network, client, style):
    pid = await new_patient(network.database_url)
    contents = [os.urandom(70_000) + b"\r\n--MIMEBoundary_95b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48\r\n",
                b"plain text\r\n"]
    built = provide_and_register_request(pid, documents=2, contents=contents)

    status, envelope = await post(network.repository.url, mtom_request(built, style))

    assert status == 200 and registry_response(envelope) == (SUCCESS, [])
    got = await retrieve_all(client, network, built.document_unique_ids)
    assert got.status == SUCCESS
    assert {d.document_unique_id: d.data for d in got.documents} == dict(
        zip(built.document_unique_ids, contents, strict=True))


async def test_inline_base64_documents(network, client):
    pid = await new_patient(network.database_url)
    content = "Befund: unauffällig\n".encode()
    built = provide_and_register_request(pid, contents=[content], mime_type="text/plain")

    status, envelope = await post(network.repository.url, inline_request(built))

    assert status == 200 and registry_response(envelope) == (SUCCESS, [])
    assert envelope.find(f".//{{{SOAP}}}Body") is not None
    got = await retrieve_all(client, network, built.document_unique_ids)
    assert [d.data for d in got.documents] == [content]


DE_UNIQUE_ID = b"urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"
SS_UNIQUE_ID = b"urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"


def _fresh_ids(raw: bytes) -> tuple[dict[str, str], list[str]]:
    """uniqueIds and entryUUIDs of a captured message mapped to fresh ones (so it can be sent again),
    and the new document uniqueIds."""
    mapping: dict[str, str] = {}
    documents: list[str] = []
    for tag in re.findall(rb"<(?:\w+:)?ExternalIdentifier\b[^>]*>", raw):
        scheme = re.search(rb'identificationScheme="([^"]*)"', tag).group(1)
        value = re.search(rb'value="([^"]*)"', tag).group(1).decode()
        if scheme in (DE_UNIQUE_ID, SS_UNIQUE_ID):
            mapping[value] = new_oid()
            if scheme == DE_UNIQUE_ID:
                documents.append(mapping[value])
    for tag in re.findall(rb"<(?:\w+:)?(?:ExtrinsicObject|RegistryPackage|Association|Classification|"
                          rb"ExternalIdentifier)\b[^>]*>", raw):
        m = re.search(rb'\bid="(urn:uuid:[^"]*)"', tag)
        if m:
            mapping[m.group(1).decode()] = f"urn:uuid:{uuid.uuid4()}"
    return mapping, documents


REFERENCE_PATIENTS = {
    "iti41-Xop.txt": "SR7^^^&1.2.260&ISO",
    "iti41-encodedURL.txt": "SR7^^^&1.2.260&ISO",
    "iti41-NoXop.txt": "SR7^^^&1.2.260&ISO",
    "iti41-dicom.txt": "IDS-AD027-a^^^&1.3.6.1.4.1.21367.2005.13.20.1000&ISO",
}


@pytest.mark.needs_shared("messages")
@pytest.mark.parametrize("name", sorted(REFERENCE_PATIENTS))
async def test_reference_messages_are_accepted(network, client, name):
    path = SHARED_MESSAGES / name
    assert path.is_file(), f"reference message {path} is missing from the shared folder"
    raw = path.read_bytes()
    await record_patient_cx(network.database_url, REFERENCE_PATIENTS[name])
    ids, [doc_uid] = _fresh_ids(raw)
    message = reference_message(raw, ids)

    status, envelope = await post(network.repository.url, message)

    assert status == 200
    result, notes = registry_response(envelope)
    # The dicom capture carries vendor slots: the registry's warnings reach the source unchanged.
    assert result == SUCCESS and {code for code, _ in notes} <= {"XDSExtraMetadataNotSaved"}
    got = await retrieve_all(client, network, [doc_uid])
    [doc] = got.documents
    expected = {"iti41-Xop.txt": b"This is my document.\n\nIt is great!\n\n",
                "iti41-encodedURL.txt": b"This is my document.\n\nIt is great!\n\n",
                "iti41-NoXop.txt": b"This is my document.\r\n\r\nIt is great!\r\n"}
    if name in expected:
        assert (doc.data, doc.mime_type) == (expected[name], "text/plain")
    else:
        assert doc.mime_type == "application/dicom" and doc.data[128:132] == b"DICM"


async def test_identical_bytes_are_stored_once(network, client):
    repo = network.repository
    pid = await new_patient(network.database_url)
    content = os.urandom(10_000)
    first = provide_and_register_request(pid, contents=[content])
    second = provide_and_register_request(pid, documents=2, contents=[content, content])
    for built in (first, second):
        _, envelope = await post(repo.url, mtom_request(built))
        assert registry_response(envelope) == (SUCCESS, [])
    stored = [p for p in (repo.storage_dir / "objects").rglob(sha256(content))]
    assert len(stored) == 1 and stored[0].read_bytes() == content
    uids = first.document_unique_ids + second.document_unique_ids
    got = await retrieve_all(client, network, uids)
    assert got.status == SUCCESS and [d.data for d in got.documents] == [content] * 3


async def test_retrieve_several_documents_and_partial_success(network, client):
    repo = network.repository
    pid = await new_patient(network.database_url)
    contents = [b"one", os.urandom(1_000_000), b"three\n"]
    built = provide_and_register_request(pid, documents=3, contents=contents,
                                         mime_type="application/octet-stream")
    _, envelope = await post(repo.url, mtom_request(built))
    assert registry_response(envelope) == (SUCCESS, [])

    got = await retrieve_all(client, network, built.document_unique_ids)
    assert got.status == SUCCESS
    assert [(d.document_unique_id, d.data, d.mime_type) for d in got.documents] == [
        (u, c, "application/octet-stream") for u, c in zip(built.document_unique_ids, contents, strict=True)]

    unknown, elsewhere = new_oid(), "1.2.3.4.5.6.7"
    got = await retrieve_document_set(client, repo.url, [
        DocumentRequest(repo.repository_unique_id, built.document_unique_ids[1]),
        DocumentRequest(repo.repository_unique_id, unknown),
        DocumentRequest(elsewhere, built.document_unique_ids[0]),
    ])
    assert got.status == PARTIAL
    assert [d.data for d in got.documents] == [contents[1]]
    assert sorted((e.code, e.location) for e in got.errors) == [
        ("XDSDocumentUniqueIdError", unknown), ("XDSUnknownRepositoryId", elsewhere)]

    got = await retrieve_document_set(client, repo.url, [DocumentRequest(repo.repository_unique_id, unknown)])
    assert got.status == FAILURE and got.documents == []
    assert [e.code for e in got.errors] == ["XDSDocumentUniqueIdError"]


async def test_retrieve_to_files_streams_each_document(network, client, tmp_path):
    pid = await new_patient(network.database_url)
    contents = [os.urandom(2_000_000), b"small"]
    built = provide_and_register_request(pid, documents=2, contents=contents)
    _, envelope = await post(network.repository.url, mtom_request(built))
    assert registry_response(envelope) == (SUCCESS, [])
    repo = network.repository
    got = await retrieve_document_set(client, repo.url, [DocumentRequest(repo.repository_unique_id, u)
                                                        for u in built.document_unique_ids], dest_dir=tmp_path)
    assert [d.path.read_bytes() for d in got.documents] == contents
    assert [d.sha1 for d in got.documents] == [sha1(c) for c in contents]
    assert not list(tmp_path.glob(".partial-*"))


# --- failures: nothing kept ------------------------------------------------------------------------


async def test_bad_hash_is_refused_and_nothing_kept(network, client):
    pid = await new_patient(network.database_url)
    built = provide_and_register_request(pid, contents=[b"the real content"], hashes=["0" * 40])
    async with NothingKept(network):
        _, envelope = await post(network.repository.url, mtom_request(built))
        status, errors = registry_response(envelope)
    assert status == FAILURE and [c for c, _ in errors] == ["XDSRepositoryMetadataError"]
    assert "hash" in errors[0][1] and sha1(b"the real content") in errors[0][1]
    await assert_not_registered(client, network, built.document_unique_ids)


async def test_hash_is_compared_case_insensitively(network):
    pid = await new_patient(network.database_url)
    content = b"upper-case hash from a .NET source"
    built = provide_and_register_request(pid, contents=[content], hashes=[sha1(content).upper()])
    _, envelope = await post(network.repository.url, mtom_request(built, "dotnet"))
    assert registry_response(envelope) == (SUCCESS, [])


async def test_bad_size_is_refused_and_nothing_kept(network, client):
    pid = await new_patient(network.database_url)
    built = provide_and_register_request(pid, contents=[b"12345"], sizes=[6])
    async with NothingKept(network):
        _, envelope = await post(network.repository.url, inline_request(built))
        status, errors = registry_response(envelope)
    assert status == FAILURE and [c for c, _ in errors] == ["XDSRepositoryMetadataError"]
    assert "size 6" in errors[0][1]
    await assert_not_registered(client, network, built.document_unique_ids)


async def test_document_entry_without_its_document(network, client):
    pid = await new_patient(network.database_url)
    built = provide_and_register_request(pid, documents=2, contents=[b"a", b"b"])
    built.xml = re.sub(rb'<xdsb:Document id="Document02">[^<]*</xdsb:Document>', b"", built.xml)
    async with NothingKept(network):
        _, envelope = await post(network.repository.url, inline_request(built))
        status, errors = registry_response(envelope)
    assert status == FAILURE and [c for c, _ in errors] == ["XDSMissingDocument"]
    assert "Document02" in errors[0][1]
    await assert_not_registered(client, network, built.document_unique_ids)


async def test_xop_include_of_an_absent_part_is_a_missing_document(network):
    pid = await new_patient(network.database_url)
    built = provide_and_register_request(pid, contents=[b"a"])
    message = mtom_request(built, drop_parts=("1.b5b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d@apache.org",))
    async with NothingKept(network):
        _, envelope = await post(network.repository.url, message)
    status, errors = registry_response(envelope)
    assert status == FAILURE and [c for c, _ in errors] == ["XDSMissingDocument"]


async def test_document_without_its_document_entry(network, client):
    pid = await new_patient(network.database_url)
    built = provide_and_register_request(pid, contents=[b"a"])
    built.xml = built.xml.replace(b"</xdsb:ProvideAndRegisterDocumentSetRequest>",
                                  b'<xdsb:Document id="Document77">b3JwaGFu</xdsb:Document>'
                                  b"</xdsb:ProvideAndRegisterDocumentSetRequest>")
    async with NothingKept(network):
        _, envelope = await post(network.repository.url, mtom_request(built, contents={
            "Document01": b"a", "Document77": b"orphan"}))
        status, errors = registry_response(envelope)
    assert status == FAILURE and [c for c, _ in errors] == ["XDSMissingDocumentMetadata"]
    assert "Document77" in errors[0][1]
    await assert_not_registered(client, network, built.document_unique_ids)


async def test_registry_errors_are_returned_unchanged_and_nothing_kept(network, client):
    unknown_patient = f"{uuid.uuid4().hex[:10]}^^^&1.3.6.1.4.1.21367.13.20.1000&ISO"
    built = provide_and_register_request(unknown_patient, contents=[os.urandom(5000)])
    async with NothingKept(network):
        _, envelope = await post(network.repository.url, mtom_request(built))
        status, errors = registry_response(envelope)
    assert status == FAILURE and [c for c, _ in errors] == ["XDSUnknownPatientId"]
    await assert_not_registered(client, network, built.document_unique_ids)


# --- faults ------------------------------------------------------------------------------------------


async def test_soap_faults_for_what_is_not_a_valid_request(network):
    repo = network.repository
    pid = await new_patient(network.database_url)
    built = provide_and_register_request(pid, contents=[b"x" * 100_000])
    good = mtom_request(built)

    status, envelope = await post(repo.url, WireMessage(good.content_type, good.body[:-60_000]))
    assert status == 400 and "malformed MTOM/XOP message" in fault_reason(envelope)
    assert staging_files(repo.storage_dir) == []

    status, envelope = await post(repo.url, WireMessage("text/xml; charset=utf-8", b"<a/>"))
    assert status == 500 and "SOAP 1.1" in fault_reason(envelope)

    wrong_action = WireMessage(good.content_type, good.body.replace(b"ProvideAndRegisterDocumentSet-b</",
                                                                    b"SomethingElse</", 1))
    status, envelope = await post(repo.url, wrong_action)
    assert status == 400 and "not supported" in fault_reason(envelope)

    status, envelope = await post(repo.url, WireMessage("application/soap+xml", b"<not-xml"))
    assert status == 400 and "malformed XML" in fault_reason(envelope)


async def test_lost_or_damaged_blobs_are_never_served_as_documents(network, client):
    from consumer.client import TransportError

    repo = network.repository
    pid = await new_patient(network.database_url)
    contents = [os.urandom(30_000), os.urandom(40_000)]
    built = provide_and_register_request(pid, documents=2, contents=contents)
    _, envelope = await post(repo.url, mtom_request(built))
    assert registry_response(envelope) == (SUCCESS, [])
    lost, damaged = (next((repo.storage_dir / "objects").rglob(sha256(c))) for c in contents)

    lost.unlink()
    got = await retrieve_all(client, network, built.document_unique_ids)
    assert got.status == PARTIAL and [d.data for d in got.documents] == [contents[1]]
    assert [(e.code, e.location) for e in got.errors] == [("XDSRepositoryError", built.document_unique_ids[0])]

    damaged.write_bytes(contents[1][:1000])  # shorter than recorded: the answer must break, not lie
    with pytest.raises(TransportError):
        await retrieve_all(client, network, built.document_unique_ids[1:])


async def test_two_hospitals_side_by_side(network, client, tmp_path):
    from tests.repository.conftest import start_repository_process

    first = network.repository
    second = start_repository_process(network.database_url, network.registry.url, tmp_path / "second")
    try:
        pid = await new_patient(network.database_url)
        built = [provide_and_register_request(pid, contents=[f"report of hospital {i}".encode()]) for i in (1, 2)]
        for repo, b in zip((first, second), built, strict=True):
            _, envelope = await post(repo.url, mtom_request(b))
            assert registry_response(envelope) == (SUCCESS, [])
        registered = await get_documents(client, network.registry.url,
                                         [b.document_unique_id for b in built])
        assert {e.unique_id: e.repository_unique_id for e in registered} == {
            built[0].document_unique_id: first.repository_unique_id,
            built[1].document_unique_id: second.repository_unique_id}
        got = await retrieve_document_set(client, second.url, [
            DocumentRequest(second.repository_unique_id, built[1].document_unique_id),
            DocumentRequest(first.repository_unique_id, built[0].document_unique_id),
            DocumentRequest(second.repository_unique_id, built[0].document_unique_id)])
        assert got.status == PARTIAL and [d.data for d in got.documents] == [b"report of hospital 2"]
        assert [e.code for e in got.errors] == ["XDSUnknownRepositoryId", "XDSDocumentUniqueIdError"]
        assert sha256(b"report of hospital 2") not in blobs(first.storage_dir)
    finally:
        second.stop()
