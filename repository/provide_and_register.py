"""ITI-41 Provide and Register Document Set-b: store the documents, then register them (ITI-42).

1. :func:`collect_documents` pairs each ``xdsb:Document`` with its bytes: an MTOM attachment
   already streamed to a staging file, or inline base64 decoded into one.
2. :func:`prepare_registration` (pure) checks documents against DocumentEntries
   (XDSMissingDocument, XDSMissingDocumentMetadata, XDSRepositoryMetadataError for a hash or
   size that differs from the bytes) and adds hash, size and repositoryUniqueId to the metadata.
3. :func:`store_and_register` journals the submission, places the blobs, sends ITI-42 and then
   commits or undoes; the registry's RegistryResponse goes back to the source unchanged.

The metadata is read with the shared ebRIM reader but edited in place, so the registry gets
everything the source sent (ids, extra slots) plus the three attributes the repository owns.
"""

from __future__ import annotations

import base64
import binascii
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lxml import etree

from consumer.client.soap import SoapFaultError, TransportError
from ihe.errors import (
    STATUS_SUCCESS,
    ErrorCode,
    RegistryError,
    XDSError,
    build_registry_response,
    error,
)
from ihe.metadata.ebrim import read_submit_objects_request
from ihe.metadata.model import DocumentEntry, DocumentEntryType
from ihe.metadata.validate import document_unique_id_problem
from ihe.mtom import XOP_INCLUDE, MTOMError, lookup_attachment
from ihe.namespaces import ACTION_ITI42, LCM, RIM, XDSB, qn
from ihe.soap import FAULT_SENDER, SoapFault, SoapRequest
from repository import catalog
from repository.catalog import StoredDocument
from repository.storage import BlobInfo, Upload

if TYPE_CHECKING:
    from repository.app import Repository

log = logging.getLogger(__name__)

T_PNR = qn(XDSB, "ProvideAndRegisterDocumentSetRequest")
T_SOR = qn(LCM, "SubmitObjectsRequest")
T_DOCUMENT = qn(XDSB, "Document")
T_EO = qn(RIM, "ExtrinsicObject")
T_SLOT = qn(RIM, "Slot")
T_VALUE_LIST = qn(RIM, "ValueList")
T_VALUE = qn(RIM, "Value")



# --- pure parts -------------------------------------------------------------------------------


def set_slot(obj: etree._Element, name: str, values: Sequence[str]) -> None:
    """Give ``obj`` the slot ``name`` with exactly ``values`` (slots come first in ebRIM)."""
    for slot in obj.findall(T_SLOT):
        if slot.get("name") == name:
            obj.remove(slot)
    slot = etree.Element(T_SLOT, name=name)
    value_list = etree.SubElement(slot, T_VALUE_LIST)
    for value in values:
        etree.SubElement(value_list, T_VALUE).text = value
    existing = obj.findall(T_SLOT)
    if existing:
        existing[-1].addnext(slot)
    else:
        obj.insert(0, slot)
    slot.tail = None


def _label(entry: DocumentEntry) -> str:
    uid = f" (uniqueId {entry.unique_id})" if entry.unique_id else ""
    return f"DocumentEntry {entry.entry_uuid}{uid}"


def prepare_registration(
    sor: etree._Element,
    entries: Sequence[DocumentEntry],
    blobs: Mapping[str, BlobInfo],
    repository_unique_id: str,
) -> list[StoredDocument]:
    """Match Documents to DocumentEntries, check hash and size, and complete the metadata.

    ``blobs`` maps each ``xdsb:Document/@id`` to what was received. Every problem is
    collected, then raised together as :class:`XDSError`; on success the DocumentEntries in
    ``sor`` carry hash, size and our repositoryUniqueId, and the documents to store are returned.
    """
    errors: list[RegistryError] = []
    extrinsic = {eo.get("id"): eo for eo in sor.iter(T_EO)}
    stable = [e for e in entries if e.type != DocumentEntryType.ON_DEMAND]
    entry_ids = {e.entry_uuid for e in stable}
    for doc_id in blobs:
        if doc_id not in entry_ids:
            errors.append(error(ErrorCode.MISSING_DOCUMENT_METADATA,
                                f"Document {doc_id} has no DocumentEntry (no ExtrinsicObject with id {doc_id})",
                                doc_id))
    accepted: list[tuple[DocumentEntry, BlobInfo]] = []
    seen_unique_ids: dict[str, str] = {}
    for entry in stable:
        label = _label(entry)
        blob = blobs.get(entry.entry_uuid)
        if blob is None:
            errors.append(error(ErrorCode.MISSING_DOCUMENT,
                                f"{label} has no Document in the request (no xdsb:Document with id "
                                f"{entry.entry_uuid})", entry.entry_uuid))
            continue
        before = len(errors)
        if not entry.unique_id:
            errors.append(error(ErrorCode.REPOSITORY_METADATA_ERROR, f"{label}: uniqueId is missing",
                                entry.entry_uuid))
        else:
            problem = document_unique_id_problem(entry.unique_id)
            if problem:
                errors.append(error(ErrorCode.REPOSITORY_METADATA_ERROR,
                                    f"{label}: uniqueId '{entry.unique_id}' {problem}", entry.entry_uuid))
            elif entry.unique_id in seen_unique_ids:
                errors.append(error(ErrorCode.REPOSITORY_DUPLICATE_UNIQUE_ID_IN_MESSAGE,
                                    f"{label}: uniqueId {entry.unique_id} is also the uniqueId of DocumentEntry "
                                    f"{seen_unique_ids[entry.unique_id]} in this request", entry.entry_uuid))
            seen_unique_ids.setdefault(entry.unique_id, entry.entry_uuid)
        if not entry.mime_type:
            errors.append(error(ErrorCode.REPOSITORY_METADATA_ERROR, f"{label}: mimeType is missing",
                                entry.entry_uuid))
        if entry.hash is not None and entry.hash.strip().lower() != blob.sha1:
            errors.append(error(ErrorCode.REPOSITORY_METADATA_ERROR,
                                f"{label}: hash {entry.hash} does not match the SHA-1 of the document received "
                                f"({blob.sha1})", entry.entry_uuid))
        if entry.size is not None and entry.size != blob.size:
            errors.append(error(ErrorCode.REPOSITORY_METADATA_ERROR,
                                f"{label}: size {entry.size} does not match the size of the document received "
                                f"({blob.size} bytes)", entry.entry_uuid))
        if len(errors) == before:
            accepted.append((entry, blob))
    if errors:
        raise XDSError(errors)
    stored: list[StoredDocument] = []
    for entry, blob in accepted:  # only now, all checks passed: complete the metadata
        eo = extrinsic.get(entry.entry_uuid)
        if eo is None:  # the reader found it, so this cannot happen
            raise XDSError.of(ErrorCode.REPOSITORY_ERROR, f"{_label(entry)}: ExtrinsicObject not found")
        set_slot(eo, "hash", [blob.sha1])
        set_slot(eo, "size", [str(blob.size)])
        set_slot(eo, "repositoryUniqueId", [repository_unique_id])
        stored.append(StoredDocument(entry.unique_id or "", blob.key, blob.sha1, blob.size, entry.mime_type or ""))
    return stored


def read_request(body: etree._Element) -> tuple[etree._Element, list[DocumentEntry]]:
    """The SubmitObjectsRequest of an ITI-41 body and its DocumentEntries, or a fault/XDSError."""
    if body.tag != T_PNR:
        raise SoapFault(FAULT_SENDER,
                        f"the SOAP Body holds {body.tag}, not an xdsb:ProvideAndRegisterDocumentSetRequest")
    sor = body.find(T_SOR)
    if sor is None:
        raise XDSError.of(ErrorCode.REPOSITORY_METADATA_ERROR,
                          "the ProvideAndRegisterDocumentSetRequest has no lcm:SubmitObjectsRequest")
    try:
        package = read_submit_objects_request(sor)
    except XDSError as exc:  # the reader speaks for a registry; here the repository found it
        raise XDSError([
            RegistryError(ErrorCode.REPOSITORY_METADATA_ERROR if e.code == ErrorCode.REGISTRY_METADATA_ERROR
                          else e.code, e.context, e.location, e.severity)
            for e in exc.errors
        ]) from None
    return sor, package.documents


# --- I/O ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class ReceivedDocuments:
    """The uploads of one request by Document id; all of them are discarded unless placed."""

    by_document: dict[str, Upload]
    owned: list[Upload]

    def discard(self) -> None:
        for upload in self.owned:
            upload.discard()


def collect_documents(repo: Repository, body: etree._Element, attachments: Mapping[str, Any]) -> ReceivedDocuments:
    """Pair each ``xdsb:Document`` with its bytes (attachment, or inline base64 staged now)."""
    received = ReceivedDocuments({}, list(attachments.values()))
    errors: list[RegistryError] = []
    for doc in body.iterfind(T_DOCUMENT):
        doc_id = doc.get("id") or ""
        if not doc_id:
            errors.append(error(ErrorCode.REPOSITORY_METADATA_ERROR, "an xdsb:Document has no id attribute"))
            continue
        if doc_id in received.by_document:
            errors.append(error(ErrorCode.REPOSITORY_METADATA_ERROR, f"two xdsb:Document elements have id {doc_id}",
                                doc_id))
            continue
        include = doc.find(XOP_INCLUDE)
        if include is not None:
            href = include.get("href") or ""
            try:
                received.by_document[doc_id] = lookup_attachment(attachments, href)
            except (KeyError, MTOMError):
                errors.append(error(ErrorCode.MISSING_DOCUMENT,
                                    f"Document {doc_id} references {href!r}, but no MIME part of the request has "
                                    "that Content-ID", doc_id))
            continue
        text = "".join((doc.text or "").split())
        try:
            data = base64.b64decode(text, validate=True)
        except binascii.Error:
            errors.append(error(ErrorCode.REPOSITORY_ERROR,
                                f"Document {doc_id}: the inline content is not valid base64", doc_id))
            continue
        upload = repo.store.new_upload(content_id=doc_id)
        received.owned.append(upload)
        upload.write(data)
        upload.finish()
        received.by_document[doc_id] = upload
    if errors:
        received.discard()
        raise XDSError(errors)
    return received


async def provide_and_register(repo: Repository, soap: SoapRequest) -> etree._Element:
    """The ITI-41 handler: returns the RegistryResponse for the source."""
    received: ReceivedDocuments | None = None
    try:
        sor, entries = read_request(soap.body)
        received = collect_documents(repo, soap.body, soap.attachments)
        blobs: dict[str, BlobInfo] = {}
        for doc_id, upload in received.by_document.items():
            if upload.info is None:
                upload.finish()
            blobs[doc_id] = upload.info  # type: ignore[assignment]
        documents = prepare_registration(sor, entries, blobs, repo.settings.repository_unique_id)
        uploads = {u.info.key: u for u in received.by_document.values() if u.info is not None}
        return await store_and_register(repo, etree.tostring(sor), documents, uploads)
    except XDSError as exc:
        return build_registry_response(exc.errors)
    finally:
        if received is not None:
            received.discard()


async def store_and_register(repo: Repository, sor_xml: bytes, documents: list[StoredDocument],
                             uploads: Mapping[str, Upload]) -> etree._Element:
    """Journal, place, register (ITI-42), then commit or undo; see schemas/repository/001."""
    pool, store, repo_id = repo.pool, repo.store, repo.settings.repository_unique_id
    # In flight before the journal row exists: the recovery loop, which may read the journal at
    # any moment, must never take this submission for one abandoned by a crash and settle it.
    submission = uuid.uuid4()
    repo.in_flight.add(submission)
    try:
        await catalog.journal_submission(pool, repo_id, documents, submission)
    except BaseException:
        repo.in_flight.discard(submission)
        raise
    phase = "placing"  # -> registering -> accepted | rejected -> settled
    try:
        for key, upload in uploads.items():
            async with store.lock(key):
                await store.place(upload)
        phase = "registering"
        try:
            result = await repo.soap_client.call(repo.settings.registry_url, ACTION_ITI42, sor_xml)
        except TransportError as exc:
            if exc.delivered:
                # The registry may have registered: the journal entry stays for recovery to settle.
                log.warning("ITI-42 outcome unknown for submission %s (%s); recovery will settle it", submission, exc)
                return build_registry_response([error(
                    ErrorCode.REGISTRY_NOT_AVAILABLE,
                    f"the registry did not answer ({exc}); whether the documents were registered is being checked; "
                    "query the registry before resubmitting")])
            log.warning("registry unreachable for submission %s: %s", submission, exc)
            response = build_registry_response(
                [error(ErrorCode.REGISTRY_NOT_AVAILABLE, f"the registry is unreachable: {exc}")])
        except SoapFaultError as exc:
            response = build_registry_response([error(
                ErrorCode.REGISTRY_ERROR, f"the registry answered ITI-42 with a SOAP Fault ({exc.fault.code}): "
                f"{exc.fault.reason}")])
        else:
            response = result.body
        if response.get("status") == STATUS_SUCCESS:
            phase = "accepted"
            await catalog.settle_submission(pool, store, repo_id, submission, keep=documents, drop=[])
        else:
            phase = "rejected"
            await catalog.settle_submission(pool, store, repo_id, submission, keep=[], drop=documents)
        phase = "settled"
        return response
    finally:
        if phase in ("placing", "rejected"):  # certainly not registered: undo now
            try:
                await catalog.settle_submission(pool, store, repo_id, submission, keep=[], drop=documents)
            except Exception:
                log.exception("could not undo submission %s; recovery will settle it", submission)
        elif phase != "settled":
            log.error("submission %s left in the journal (%s); recovery will settle it", submission, phase)
        repo.in_flight.discard(submission)
