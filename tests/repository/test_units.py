"""The repository's pure parts and its store, without processes: metadata checks, retrieve
planning and response, content-addressed storage."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from lxml import etree

from ihe.errors import XDSError
from ihe.metadata.ebrim import read_submit_objects_request
from repository.catalog import StoredDocument
from repository.provide_and_register import prepare_registration, read_request, set_slot
from repository.retrieve import DocumentRequest, build_retrieve_response, parse_retrieve_request, plan_retrieve
from repository.storage import BlobInfo, DocumentTooLarge, FileSystemStore, StorageLocked
from tests.messages import new_patient_id, provide_and_register_request

RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
XDSB = "urn:ihe:iti:xds-b:2007"
REPO = "1.2.3.4.5"


def blob(content: bytes) -> BlobInfo:
    return BlobInfo(hashlib.sha256(content).hexdigest(), hashlib.sha1(content).hexdigest(), len(content))


def slots(sor: etree._Element, doc_id: str) -> dict[str, list[str]]:
    eo = next(e for e in sor.iter(f"{{{RIM}}}ExtrinsicObject") if e.get("id") == doc_id)
    return {s.get("name"): [v.text for v in s.iter(f"{{{RIM}}}Value")] for s in eo.findall(f"{{{RIM}}}Slot")}


def parsed(built) -> tuple[etree._Element, list]:
    return read_request(etree.fromstring(built.xml))


# --- ITI-41 metadata ----------------------------------------------------------------------------


def test_hash_size_and_repository_id_are_added_and_slots_stay_first():
    contents = [b"alpha", b"beta!"]
    built = provide_and_register_request(new_patient_id(), documents=2, contents=contents,
                                         omit_document=("hash", "size"))
    sor, entries = parsed(built)
    stored = prepare_registration(sor, entries, {"Document01": blob(contents[0]), "Document02": blob(contents[1])},
                                  REPO)
    assert [(d.unique_id, d.sha1, d.size, d.mime_type) for d in stored] == [
        (u, hashlib.sha1(c).hexdigest(), len(c), "text/plain")
        for u, c in zip(built.document_unique_ids, contents, strict=True)]
    s = slots(sor, "Document01")
    assert (s["hash"], s["size"], s["repositoryUniqueId"]) == ([hashlib.sha1(b"alpha").hexdigest()], ["5"], [REPO])
    eo = next(iter(sor.iter(f"{{{RIM}}}ExtrinsicObject")))
    tags = [etree.QName(c).localname for c in eo]
    assert tags.index("Name") > max(i for i, t in enumerate(tags) if t == "Slot")
    again = read_submit_objects_request(sor).documents[0]  # still readable metadata, with our values
    assert (again.hash, again.size, again.repository_unique_id) == (hashlib.sha1(b"alpha").hexdigest(), 5, REPO)


def test_a_repository_id_sent_by_the_source_is_replaced():
    built = provide_and_register_request(new_patient_id(), contents=[b"x"], repository_unique_id="9.9.9")
    sor, entries = parsed(built)
    prepare_registration(sor, entries, {"Document01": blob(b"x")}, REPO)
    assert slots(sor, "Document01")["repositoryUniqueId"] == [REPO]


def test_matching_hash_in_upper_case_and_size_are_accepted():
    built = provide_and_register_request(new_patient_id(), contents=[b"x"],
                                         hashes=[hashlib.sha1(b"x").hexdigest().upper()])
    sor, entries = parsed(built)
    assert len(prepare_registration(sor, entries, {"Document01": blob(b"x")}, REPO)) == 1


@pytest.mark.parametrize(
    ("kwargs", "blobs", "codes"),
    [
        ({"hashes": ["1" * 40]}, {"Document01": b"x"}, ["XDSRepositoryMetadataError"]),
        ({"sizes": [2]}, {"Document01": b"x"}, ["XDSRepositoryMetadataError"]),
        ({"hashes": ["1" * 40], "sizes": [2]}, {"Document01": b"x"}, ["XDSRepositoryMetadataError"] * 2),
        ({}, {}, ["XDSMissingDocument"]),
        ({}, {"Document01": b"x", "Stray": b"y"}, ["XDSMissingDocumentMetadata"]),
        ({"documents": 2, "document_unique_ids": ["1.2.3", "1.2.3"]}, {"Document01": b"x", "Document02": b"x"},
         ["XDSRepositoryDuplicateUniqueIdInMessage"]),
        ({"omit_document": ("mimeType",)}, {"Document01": b"x"}, ["XDSRepositoryMetadataError"]),
    ],
)
def test_every_problem_is_reported_and_nothing_is_edited(kwargs, blobs, codes):
    kwargs.setdefault("contents", [b"x"] * kwargs.get("documents", 1))
    built = provide_and_register_request(new_patient_id(), **kwargs)
    sor, entries = parsed(built)
    before = etree.tostring(sor)
    with pytest.raises(XDSError) as caught:
        prepare_registration(sor, entries, {k: blob(v) for k, v in blobs.items()}, REPO)
    assert sorted(e.code for e in caught.value.errors) == sorted(codes)
    assert all(e.context for e in caught.value.errors)
    assert etree.tostring(sor) == before


def test_a_body_that_is_not_provide_and_register_is_a_fault():
    from ihe.soap import SoapFault

    with pytest.raises(SoapFault, match="not an xdsb:ProvideAndRegisterDocumentSetRequest"):
        read_request(etree.fromstring(b"<a/>"))
    with pytest.raises(XDSError) as caught:
        read_request(etree.fromstring(f'<x:ProvideAndRegisterDocumentSetRequest xmlns:x="{XDSB}"/>'.encode()))
    assert [e.code for e in caught.value.errors] == ["XDSRepositoryMetadataError"]


def test_set_slot_replaces_every_copy():
    eo = etree.fromstring(f'<rim:ExtrinsicObject xmlns:rim="{RIM}"><rim:Slot name="hash"><rim:ValueList>'
                          '<rim:Value>a</rim:Value></rim:ValueList></rim:Slot><rim:Slot name="hash"/><rim:Name/>'
                          "</rim:ExtrinsicObject>".encode())
    set_slot(eo, "hash", ["b"])
    assert [(c.get("name"), [v.text for v in c.iter(f"{{{RIM}}}Value")]) for c in eo.findall(f"{{{RIM}}}Slot")] == [
        ("hash", ["b"])]
    assert etree.QName(eo[-1]).localname == "Name"


# --- ITI-43 -------------------------------------------------------------------------------------


def _held(uid: str, content: bytes, mime: str = "application/pdf") -> StoredDocument:
    b = blob(content)
    return StoredDocument(uid, b.key, b.sha1, b.size, mime)


def test_plan_and_response_for_found_unknown_and_foreign_documents():
    request = etree.fromstring(
        f'<x:RetrieveDocumentSetRequest xmlns:x="{XDSB}">'
        f"<x:DocumentRequest><x:HomeCommunityId>urn:oid:1.2</x:HomeCommunityId><x:RepositoryUniqueId>{REPO}"
        "</x:RepositoryUniqueId><x:DocumentUniqueId>1.1</x:DocumentUniqueId></x:DocumentRequest>"
        f"<x:DocumentRequest><x:RepositoryUniqueId>{REPO}</x:RepositoryUniqueId>"
        "<x:DocumentUniqueId>1.2</x:DocumentUniqueId></x:DocumentRequest>"
        "<x:DocumentRequest><x:RepositoryUniqueId>7.7</x:RepositoryUniqueId>"
        "<x:DocumentUniqueId>1.1</x:DocumentUniqueId></x:DocumentRequest>"
        "</x:RetrieveDocumentSetRequest>".encode())
    requests = parse_retrieve_request(request)
    answers, errors = plan_retrieve(requests, REPO, {"1.1": _held("1.1", b"pdf")})
    assert [(e.code, e.location) for e in errors] == [("XDSDocumentUniqueIdError", "1.2"),
                                                        ("XDSUnknownRepositoryId", "7.7")]
    response = build_retrieve_response(answers, errors, REPO)
    status = response.find(f"{{{RS}}}RegistryResponse").get("status")
    assert status == "urn:ihe:iti:2007:ResponseStatusType:PartialSuccess"
    [dr] = response.findall(f"{{{XDSB}}}DocumentResponse")
    assert [etree.QName(c).localname for c in dr] == ["HomeCommunityId", "RepositoryUniqueId", "DocumentUniqueId",
                                                     "mimeType", "Document"]
    assert dr.findtext(f"{{{XDSB}}}mimeType") == "application/pdf"
    include = dr.find(f"{{{XDSB}}}Document/{{http://www.w3.org/2004/08/xop/include}}Include")
    assert include.get("href") == f"cid:{answers[0].content_id}"


def test_empty_request_fails_and_all_found_succeeds():
    answers, errors = plan_retrieve([], REPO, {})
    assert [e.code for e in errors] == ["XDSRepositoryError"]
    assert build_retrieve_response(answers, errors, REPO)[0].get("status").endswith(":Failure")
    answers, errors = plan_retrieve([DocumentRequest(REPO, "1.1")], REPO, {"1.1": _held("1.1", b"x")})
    assert errors == [] and build_retrieve_response(answers, errors, REPO)[0].get("status").endswith(":Success")


# --- storage ------------------------------------------------------------------------------------


async def test_store_hashes_places_once_and_removes(tmp_path):
    store = FileSystemStore(tmp_path / "s", durable=True)
    store.open()
    try:
        keys = set()
        for _ in range(2):
            upload = store.new_upload(content_id="c")
            for part in (b"hello ", b"world"):
                upload.write(part)
            upload.finish()
            assert upload.info == blob(b"hello world")
            async with store.lock(upload.info.key):
                await store.place(upload)
            upload.discard()  # a no-op once placed
            keys.add(upload.info.key)
        [key] = keys
        assert store.path_of(key).read_bytes() == b"hello world"
        assert [p.name for p in (tmp_path / "s" / "objects").rglob("*") if p.is_file()] == [key]
        assert list((tmp_path / "s" / "staging").iterdir()) == []
        await store.remove(key)
        assert not store.exists(key)
    finally:
        store.close()


async def test_store_limits_size_and_discards(tmp_path):
    store = FileSystemStore(tmp_path / "s", max_document_bytes=10)
    store.open()
    try:
        upload = store.new_upload(content_id="big@x")
        upload.write(b"0123456789")
        with pytest.raises(DocumentTooLarge, match="big@x"):
            upload.write(b"!")
        upload.discard()
        assert list((tmp_path / "s" / "staging").iterdir()) == []
    finally:
        store.close()


async def test_store_folder_belongs_to_one_process_and_staging_is_emptied(tmp_path):
    first = FileSystemStore(tmp_path / "s")
    first.open()
    leftover = first.new_upload()
    leftover.write(b"partial")
    second = FileSystemStore(tmp_path / "s")
    with pytest.raises(StorageLocked):
        second.open()
    first.close()
    second.open()
    try:
        assert list((tmp_path / "s" / "staging").iterdir()) == []
    finally:
        second.close()


async def test_key_locks_serialise_and_are_released(tmp_path):
    store = FileSystemStore(tmp_path / "s")
    order = []

    async def worker(n):
        async with store.lock("k"):
            order.append(("in", n))
            await asyncio.sleep(0.01)
            order.append(("out", n))

    await asyncio.gather(worker(1), worker(2), worker(3))
    assert all(order[i][0] == "in" and order[i + 1] == ("out", order[i][1]) for i in range(0, 6, 2))
    assert store._key_locks == {}
