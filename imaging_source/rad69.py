"""RAD-69 Retrieve Imaging Document Set: the instances a manifest references, over MTOM/XOP.

:func:`parse_request` and :func:`build_response` are pure; :func:`handle` is the thin aiohttp
edge. Each DocumentRequest is answered on its own: an unknown repository
(XDSUnknownRepositoryId), an unknown instance or one not in the named series/study
(XDSDocumentUniqueIdError), or no requested transfer syntax possible (XDSRepositoryError) fail
that document only, and the response is PartialSuccess when others succeed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from aiohttp import web
from lxml import etree

from ihe import mtom
from ihe.errors import (
    STATUS_FAILURE,
    STATUS_PARTIAL_SUCCESS,
    STATUS_SUCCESS,
    ErrorCode,
    RegistryError,
    build_registry_response,
    error,
)
from ihe.http import SoapService, soap_response
from ihe.namespaces import ACTION_RAD69, ACTION_RAD69_RESPONSE, XDSB, XDSI, qn
from ihe.soap import FAULT_RECEIVER, FAULT_SENDER, WSA_ACTION_NOT_SUPPORTED, SoapFault, build_envelope, build_fault
from ihe.xml import text_of
from imaging_source import store
from imaging_source.access import policy_of, study_decisions
from imaging_source.context import ImagingSource
from imaging_source.pixels import PixelError, can_supply, transcode
from imaging_source.storage import StorageError

log = logging.getLogger(__name__)

PATH = "/rad69"
DICOM = "application/dicom"


@dataclass(frozen=True, slots=True)
class DocumentRequest:
    study_uid: str
    series_uid: str
    repository_unique_id: str
    document_unique_id: str
    home_community_id: str | None = None


@dataclass(frozen=True, slots=True)
class ImagingRequest:
    documents: list[DocumentRequest]
    transfer_syntaxes: list[str]


@dataclass(slots=True)
class DocumentAnswer:
    request: DocumentRequest
    transfer_syntax: str
    storage_key: str
    size: int
    data: bytes | None = None  # set when transcoded; else streamed from storage


def parse_request(body: etree._Element) -> ImagingRequest:
    """The documents and transfer syntaxes of a RetrieveImagingDocumentSetRequest, or a Sender SoapFault."""
    if body.tag != qn(XDSI, "RetrieveImagingDocumentSetRequest"):
        raise SoapFault(FAULT_SENDER, f"the SOAP Body holds {body.tag}, not iherad:RetrieveImagingDocumentSetRequest")
    documents = []
    for study in body.findall(qn(XDSI, "StudyRequest")):
        study_uid = (study.get("studyInstanceUID") or "").strip()
        if not study_uid:
            raise SoapFault(FAULT_SENDER, "a StudyRequest has no studyInstanceUID attribute")
        for series in study.findall(qn(XDSI, "SeriesRequest")):
            series_uid = (series.get("seriesInstanceUID") or "").strip()
            if not series_uid:
                raise SoapFault(FAULT_SENDER, "a SeriesRequest has no seriesInstanceUID attribute")
            for doc in series.findall(qn(XDSB, "DocumentRequest")):
                repo = text_of(doc.find(qn(XDSB, "RepositoryUniqueId")))
                uid = text_of(doc.find(qn(XDSB, "DocumentUniqueId")))
                if not repo or not uid:
                    raise SoapFault(FAULT_SENDER, "a DocumentRequest lacks RepositoryUniqueId or DocumentUniqueId")
                documents.append(DocumentRequest(study_uid, series_uid, repo, uid,
                                                 text_of(doc.find(qn(XDSB, "HomeCommunityId")))))
    if not documents:
        raise SoapFault(FAULT_SENDER, "the request names no DocumentRequest (StudyRequest/SeriesRequest/"
                        "DocumentRequest)")
    syntaxes = [t for t in (text_of(e) for e in body.iter(qn(XDSI, "TransferSyntaxUID"))) if t]
    if not syntaxes:
        raise SoapFault(FAULT_SENDER, "the request has no TransferSyntaxUIDList/TransferSyntaxUID")
    return ImagingRequest(documents, syntaxes)


def choose_syntax(stored: str, accepted: list[str]) -> str | None:
    """The stored syntax when the consumer accepts it (no transcoding), else the first we can make."""
    if stored in accepted:
        return stored
    return next((ts for ts in accepted if can_supply(stored, ts)), None)


def resolve(request: ImagingRequest, rows: dict, repository_unique_id: str
            ) -> tuple[list[DocumentAnswer], list[RegistryError]]:
    """Match each DocumentRequest to a stored instance; pure, given the index rows by SOP Instance UID."""
    answers, errors = [], []
    for doc in request.documents:
        if doc.repository_unique_id != repository_unique_id:
            errors.append(error(ErrorCode.UNKNOWN_REPOSITORY_ID,
                                f"repository {doc.repository_unique_id} is not this Imaging Document Source "
                                f"({repository_unique_id})", doc.document_unique_id))
            continue
        row = rows.get(doc.document_unique_id)
        if row is None:
            errors.append(error(ErrorCode.DOCUMENT_UNIQUE_ID_ERROR,
                                f"SOP instance {doc.document_unique_id} is not known here", doc.document_unique_id))
            continue
        if row["series_uid"] != doc.series_uid or row["study_uid"] != doc.study_uid:
            errors.append(error(ErrorCode.DOCUMENT_UNIQUE_ID_ERROR,
                                f"SOP instance {doc.document_unique_id} is not in series {doc.series_uid} of study "
                                f"{doc.study_uid}", doc.document_unique_id))
            continue
        ts = choose_syntax(row["transfer_syntax_uid"], request.transfer_syntaxes)
        if ts is None:
            errors.append(error(ErrorCode.REPOSITORY_ERROR,
                                f"SOP instance {doc.document_unique_id} is stored as {row['transfer_syntax_uid']} "
                                f"and cannot be supplied in any of {', '.join(request.transfer_syntaxes)}",
                                doc.document_unique_id))
            continue
        answers.append(DocumentAnswer(doc, ts, row["storage_key"], row["size"]))
    return answers, errors


def build_response(answers: list[DocumentAnswer], errors: list[RegistryError], repository_unique_id: str,
                   content_ids: list[str]) -> etree._Element:
    """xdsb:RetrieveDocumentSetResponse with one DocumentResponse (xop:Include) per answer."""
    status = STATUS_PARTIAL_SUCCESS if errors and answers else STATUS_FAILURE if errors else STATUS_SUCCESS
    root = etree.Element(qn(XDSB, "RetrieveDocumentSetResponse"), nsmap={"xdsb": XDSB})
    root.append(build_registry_response(errors, status=status))
    for answer, cid in zip(answers, content_ids, strict=True):
        doc = etree.SubElement(root, qn(XDSB, "DocumentResponse"))
        if answer.request.home_community_id:
            etree.SubElement(doc, qn(XDSB, "HomeCommunityId")).text = answer.request.home_community_id
        etree.SubElement(doc, qn(XDSB, "RepositoryUniqueId")).text = repository_unique_id
        etree.SubElement(doc, qn(XDSB, "DocumentUniqueId")).text = answer.request.document_unique_id
        etree.SubElement(doc, qn(XDSB, "mimeType")).text = DICOM
        mtom.xop_include(etree.SubElement(doc, qn(XDSB, "Document")), cid)
    return root


def build_handler(source: ImagingSource):
    reader = SoapService({ACTION_RAD69: None}, max_body_bytes=source.settings.max_body_bytes)  # type: ignore[dict-item]
    repository_id = source.settings.repository_unique_id

    async def handle(request: web.Request) -> web.StreamResponse:
        relates_to = None
        try:
            soap = await reader.read_request(request)
            relates_to = soap.message_id
            if soap.action != ACTION_RAD69:
                raise SoapFault(FAULT_SENDER, f"WS-Addressing Action {soap.action!r} is not supported at this "
                                f"endpoint; supported: {ACTION_RAD69}", WSA_ACTION_NOT_SUPPORTED)
            imaging_request = parse_request(soap.body)
            async with source.pool.acquire() as conn:
                rows = await store.find_instances(conn, [d.document_unique_id for d in imaging_request.documents])
            if policy_of(source) is not None and rows:
                # The access policy, by each instance's own study, before anything else is said of it: an instance
                # the requester may not see is answered as one not held here (the reason goes to the log).
                decisions = await study_decisions(source, request, sorted({r["study_uid"] for r in rows.values()}))
                for uid, row in list(rows.items()):
                    if not decisions[row["study_uid"]].permit:
                        log.info("access policy: SOP instance %s refused: %s", uid,
                                 decisions[row["study_uid"]].reason)
                        del rows[uid]
            answers, errors = resolve(imaging_request, rows, repository_id)
            ok = []
            for answer in answers:
                stored_ts = rows[answer.request.document_unique_id]["transfer_syntax_uid"]
                if answer.transfer_syntax == stored_ts:
                    ok.append(answer)
                    continue
                try:
                    raw = await asyncio.to_thread(source.storage.read, answer.storage_key)
                    answer.data = await asyncio.to_thread(transcode, raw, answer.transfer_syntax)
                    answer.size = len(answer.data)
                    ok.append(answer)
                except (PixelError, StorageError) as exc:
                    errors.append(error(ErrorCode.REPOSITORY_ERROR, f"SOP instance "
                                        f"{answer.request.document_unique_id} could not be transcoded: {exc}",
                                        answer.request.document_unique_id))
            content_ids = [mtom.new_content_id() for _ in ok]
            body = build_response(ok, errors, repository_id, content_ids)
            attachments = [
                mtom.Attachment(cid, DICOM, data=a.data, size=a.size,
                                path=None if a.data is not None else source.storage.path(a.storage_key))
                for a, cid in zip(ok, content_ids, strict=True)
            ]
        except SoapFault as fault:
            return soap_response(build_fault(fault, relates_to=relates_to), status=fault.http_status)
        except Exception:
            log.exception("internal error in RAD-69")
            fault = SoapFault(FAULT_RECEIVER, "internal error in the Imaging Document Source; see its log")
            return soap_response(build_fault(fault, relates_to=relates_to), status=500)
        envelope = build_envelope(ACTION_RAD69_RESPONSE, body, relates_to=relates_to)
        package = mtom.build_mtom(envelope, attachments, action=ACTION_RAD69_RESPONSE)
        response = web.StreamResponse(headers={"Content-Type": package.content_type})
        response.content_length = package.content_length
        await response.prepare(request)
        for chunk in package.iter_chunks():
            await response.write(chunk)
        await response.write_eof()
        return response

    return handle
