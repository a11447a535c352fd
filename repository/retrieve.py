"""ITI-43 Retrieve Document Set: answer with one MTOM attachment per document, streamed from disk.

:func:`parse_retrieve_request` and :func:`build_retrieve_response` are pure; the handler looks
the documents up in the repository's table and hands the response element plus the file-backed
attachments to the HTTP edge, which streams them (see :mod:`repository.app`).
Unknown documents give XDSDocumentUniqueIdError, requests for another repository
XDSUnknownRepositoryId; with some documents found the status is PartialSuccess.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxml import etree

from ihe.errors import ErrorCode, RegistryError, build_registry_response, error, response_status
from ihe.mtom import Attachment, new_content_id, xop_include
from ihe.namespaces import XDSB, qn
from ihe.soap import FAULT_SENDER, SoapFault, SoapRequest
from ihe.xml import text_of
from repository import catalog
from repository.catalog import StoredDocument

if TYPE_CHECKING:
    from repository.app import Repository

log = logging.getLogger(__name__)

T_REQUEST = qn(XDSB, "RetrieveDocumentSetRequest")
T_DOCUMENT_REQUEST = qn(XDSB, "DocumentRequest")


@dataclass(frozen=True, slots=True)
class DocumentRequest:
    repository_unique_id: str | None
    document_unique_id: str | None
    home_community_id: str | None = None


@dataclass(frozen=True, slots=True)
class DocumentAnswer:
    request: DocumentRequest
    document: StoredDocument
    content_id: str


def parse_retrieve_request(body: etree._Element) -> list[DocumentRequest]:
    """The DocumentRequests of an ``xdsb:RetrieveDocumentSetRequest``, or a SOAP Fault."""
    if body.tag != T_REQUEST:
        raise SoapFault(FAULT_SENDER, f"the SOAP Body holds {body.tag}, not an xdsb:RetrieveDocumentSetRequest")
    return [
        DocumentRequest(
            repository_unique_id=text_of(dr.find(qn(XDSB, "RepositoryUniqueId"))),
            document_unique_id=text_of(dr.find(qn(XDSB, "DocumentUniqueId"))),
            home_community_id=text_of(dr.find(qn(XDSB, "HomeCommunityId"))),
        )
        for dr in body.iterfind(T_DOCUMENT_REQUEST)
    ]


def plan_retrieve(
    requests: Sequence[DocumentRequest], repository_unique_id: str, held: dict[str, StoredDocument]
) -> tuple[list[DocumentAnswer], list[RegistryError]]:
    """Which requests are answered with which document, and the errors for the others."""
    answers: list[DocumentAnswer] = []
    errors: list[RegistryError] = []
    if not requests:
        errors.append(error(ErrorCode.REPOSITORY_ERROR, "the RetrieveDocumentSetRequest has no DocumentRequest"))
    for r in requests:
        if not r.document_unique_id:
            errors.append(error(ErrorCode.DOCUMENT_UNIQUE_ID_ERROR, "a DocumentRequest has no DocumentUniqueId"))
        elif r.repository_unique_id != repository_unique_id:
            errors.append(error(
                ErrorCode.UNKNOWN_REPOSITORY_ID,
                f"document {r.document_unique_id} was requested from repository {r.repository_unique_id or '(none)'}; "
                f"this is repository {repository_unique_id}", r.repository_unique_id))
        elif r.document_unique_id not in held:
            errors.append(not_held(repository_unique_id, r.document_unique_id))
        else:
            answers.append(DocumentAnswer(r, held[r.document_unique_id], new_content_id()))
    return answers, errors


def build_retrieve_response(answers: Sequence[DocumentAnswer], errors: Sequence[RegistryError],
                            repository_unique_id: str) -> etree._Element:
    """``xdsb:RetrieveDocumentSetResponse``: RegistryResponse, then one DocumentResponse per answer."""
    status = response_status(errors, partial=bool(answers))
    response = etree.Element(qn(XDSB, "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB})
    response.append(build_registry_response(errors, status=status))
    for a in answers:
        dr = etree.SubElement(response, qn(XDSB, "DocumentResponse"))
        if a.request.home_community_id:
            etree.SubElement(dr, qn(XDSB, "HomeCommunityId")).text = a.request.home_community_id
        etree.SubElement(dr, qn(XDSB, "RepositoryUniqueId")).text = repository_unique_id
        etree.SubElement(dr, qn(XDSB, "DocumentUniqueId")).text = a.document.unique_id
        etree.SubElement(dr, qn(XDSB, "mimeType")).text = a.document.mime_type
        xop_include(etree.SubElement(dr, qn(XDSB, "Document")), a.content_id)
    return response


async def permitted(repo: Repository, soap: SoapRequest, answers: list[DocumentAnswer],
                    errors: list[RegistryError]) -> list[DocumentAnswer]:
    """The answers the registry's access policy permits; for the others the answer an unknown document gets (a
    denied one is not there for this requester)."""
    from ihe.policy.requester import requester_of_soap

    decisions, _ = await repo.policy.decide(requester_of_soap(soap),
                                            documents=[a.document.unique_id for a in answers])
    kept = []
    for a in answers:
        d = decisions[a.document.unique_id]
        if d.permit:
            kept.append(a)
        else:
            log.info("access policy: document %s refused: %s", a.document.unique_id, d.reason)
            errors.append(not_held(repo.settings.repository_unique_id, a.document.unique_id))
    return kept


def not_held(repository_unique_id: str, document_unique_id: str) -> RegistryError:
    """The answer for a document this repository does not hold, and for one the access policy refuses: the same,
    so that a uniqueId does not tell whether it exists (the refusal's reason goes to the log)."""
    return error(ErrorCode.DOCUMENT_UNIQUE_ID_ERROR,
                 f"repository {repository_unique_id} holds no document {document_unique_id}", document_unique_id)


async def retrieve_document_set(repo: Repository, soap: SoapRequest) -> tuple[etree._Element, list[Attachment]]:
    """The ITI-43 handler: the response element and the attachments to stream after it."""
    requests = parse_retrieve_request(soap.body)
    repo_id = repo.settings.repository_unique_id
    wanted = [r.document_unique_id for r in requests if r.document_unique_id and r.repository_unique_id == repo_id]
    held = await catalog.find_documents(repo.pool, repo_id, wanted) if wanted else {}
    answers, errors = plan_retrieve(requests, repo_id, held)
    if repo.policy is not None:  # the access policy: a denied document is an error, never content
        answers = await permitted(repo, soap, answers, errors)
    present = []
    for a in answers:
        if repo.store.exists(a.document.key):
            present.append(a)
        else:  # the table says we hold it but the bytes are gone: an operator must know
            log.error("document %s (blob %s) is recorded but its content is missing", a.document.unique_id,
                      a.document.key)
            errors.append(error(ErrorCode.REPOSITORY_ERROR,
                                f"document {a.document.unique_id} is registered here but its content is unavailable",
                                a.document.unique_id))
    attachments = [
        repo.store.attachment(a.document.key, content_id=a.content_id, content_type=a.document.mime_type,
                              size=a.document.size)
        for a in present
    ]
    return build_retrieve_response(present, errors, repo_id), attachments
