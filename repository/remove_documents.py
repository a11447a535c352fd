"""ITI-86 Remove Documents: the Document Repository's side (ITI TF-2b 3.86).

A Document Administrator names documents (RepositoryUniqueId + DocumentUniqueId in
``xdsb:DocumentRequest`` elements of an ``rmd:RemoveDocumentsRequest``) whose content the
repository is to delete; their metadata is the registry's business (ITI-62). Each document is
answered on its own: a request for another repository is XDSUnknownRepositoryId, a document
this repository does not hold XDSDocumentUniqueIdError; the RegistryResponse is Success when
all are removed, PartialSuccess when some are, Failure when none is.

Documents are stored once per content (SHA-256), so a blob another document (or a submission
in flight) uses stays. The catalog rows go in one transaction that also records the blobs to
release; the files are deleted after the commit, and a crash in between leaves the release
record for the recovery round (:func:`repository.catalog.release_blobs`), so a catalog row never
points at a missing file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxml import etree

from ihe.errors import ErrorCode, RegistryError, build_registry_response, error, response_status
from ihe.namespaces import RMD, XDSB, qn
from ihe.soap import FAULT_SENDER, SoapFault, SoapRequest
from ihe.xml import text_of
from repository import catalog

if TYPE_CHECKING:
    from repository.app import Repository

log = logging.getLogger(__name__)

T_REQUEST = qn(RMD, "RemoveDocumentsRequest")
T_DOCUMENT_REQUEST = qn(XDSB, "DocumentRequest")


@dataclass(frozen=True, slots=True)
class RemoveRequest:
    repository_unique_id: str | None
    document_unique_id: str | None


def parse_remove_request(body: etree._Element) -> list[RemoveRequest]:
    """The DocumentRequests of an ``rmd:RemoveDocumentsRequest``, or a SOAP Fault for another body."""
    if body.tag != T_REQUEST:
        raise SoapFault(FAULT_SENDER, f"the body of a Remove Documents request must be rmd:RemoveDocumentsRequest "
                                      f"({RMD}), not {body.tag}")
    return [RemoveRequest(text_of(dr.find(qn(XDSB, "RepositoryUniqueId"))),
                          text_of(dr.find(qn(XDSB, "DocumentUniqueId"))))
            for dr in body.iterfind(T_DOCUMENT_REQUEST)]


def check_requests(requests: Sequence[RemoveRequest], repository_unique_id: str
                   ) -> tuple[list[str], list[RegistryError]]:
    """The uniqueIds to remove here (without repeats), and the errors of the other requests."""
    wanted: list[str] = []
    errors: list[RegistryError] = []
    if not requests:
        errors.append(error(ErrorCode.REPOSITORY_ERROR, "the RemoveDocumentsRequest has no DocumentRequest"))
    for r in requests:
        if not r.document_unique_id:
            errors.append(error(ErrorCode.DOCUMENT_UNIQUE_ID_ERROR, "a DocumentRequest has no DocumentUniqueId"))
        elif r.repository_unique_id != repository_unique_id:
            errors.append(error(
                ErrorCode.UNKNOWN_REPOSITORY_ID,
                f"document {r.document_unique_id} was to be removed from repository "
                f"{r.repository_unique_id or '(none)'}; this is repository {repository_unique_id}",
                r.repository_unique_id))
        elif r.document_unique_id not in wanted:
            wanted.append(r.document_unique_id)
    return wanted, errors


def build_remove_response(wanted: Sequence[str], removed: Sequence[str], errors: Sequence[RegistryError],
                          repository_unique_id: str) -> etree._Element:
    """``rs:RegistryResponse``: an XDSDocumentUniqueIdError per wanted document that was not held."""
    errors = list(errors) + [
        error(ErrorCode.DOCUMENT_UNIQUE_ID_ERROR, f"repository {repository_unique_id} holds no document {uid}", uid)
        for uid in wanted if uid not in removed]
    return build_registry_response(errors, status=response_status(errors, partial=bool(removed)))


async def remove_documents(repo: Repository, soap: SoapRequest) -> etree._Element:
    """The ITI-86 handler: the RegistryResponse element."""
    repo_id = repo.settings.repository_unique_id
    wanted, errors = check_requests(parse_remove_request(soap.body), repo_id)
    removed = await catalog.remove_documents(repo.pool, repo_id, wanted) if wanted else {}
    if removed:
        log.info("ITI-86: removed document(s) %s", ", ".join(sorted(removed)))
        try:
            await catalog.release_blobs(repo.pool, repo.store, repo_id, {d.key for d in removed.values()})
        except Exception:  # the removal is committed; the recovery round deletes the files
            log.exception("ITI-86: releasing the blobs of removed documents failed; will retry")
    return build_remove_response(wanted, list(removed), errors, repo_id)
