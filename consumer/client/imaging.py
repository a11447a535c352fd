"""Imaging Document Consumer side of RAD-69 Retrieve Imaging Document Set.

:func:`rad69_request` and :func:`read_rad69_response` are pure; :func:`retrieve_imaging_document_set`
sends the request with MTOM and returns the instances (bytes) by SOP Instance UID, with the
RegistryResponse status and errors, so a caller can tell which instances were refused and why.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field

from lxml import etree

from consumer.client.soap import SoapClient
from ihe.errors import RegistryError, parse_registry_response
from ihe.mtom import XOP_INCLUDE, lookup_attachment
from ihe.namespaces import ACTION_RAD69, RS, XDSB, XDSI, qn

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
# What a consumer storing instances as they are can take: the usual compressed syntaxes first, so the
# source sends what it holds without transcoding, then the uncompressed ones every source can make.
PASS_THROUGH_SYNTAXES = [
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5", EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
]


@dataclass(frozen=True, slots=True)
class InstanceRequest:
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    repository_unique_id: str  # the imaging source's Retrieve Location UID
    home_community_id: str | None = None


@dataclass(slots=True)
class ImagingResult:
    status: str
    errors: list[RegistryError]
    instances: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> DICOM file bytes


def rad69_request(instances: list[InstanceRequest], transfer_syntaxes: list[str]) -> etree._Element:
    """iherad:RetrieveImagingDocumentSetRequest, one StudyRequest/SeriesRequest per study/series."""
    root = etree.Element(qn(XDSI, "RetrieveImagingDocumentSetRequest"), nsmap={"iherad": XDSI, "xdsb": XDSB})
    studies: dict[str, etree._Element] = {}
    series: dict[tuple[str, str], etree._Element] = {}
    for inst in instances:
        study = studies.get(inst.study_uid)
        if study is None:
            study = studies[inst.study_uid] = etree.SubElement(root, qn(XDSI, "StudyRequest"),
                                                               studyInstanceUID=inst.study_uid)
        key = (inst.study_uid, inst.series_uid)
        parent = series.get(key)
        if parent is None:
            parent = series[key] = etree.SubElement(study, qn(XDSI, "SeriesRequest"), seriesInstanceUID=inst.series_uid)
        doc = etree.SubElement(parent, qn(XDSB, "DocumentRequest"))
        if inst.home_community_id:
            etree.SubElement(doc, qn(XDSB, "HomeCommunityId")).text = inst.home_community_id
        etree.SubElement(doc, qn(XDSB, "RepositoryUniqueId")).text = inst.repository_unique_id
        etree.SubElement(doc, qn(XDSB, "DocumentUniqueId")).text = inst.sop_instance_uid
    syntaxes = etree.SubElement(root, qn(XDSI, "TransferSyntaxUIDList"))
    for uid in transfer_syntaxes:
        etree.SubElement(syntaxes, qn(XDSI, "TransferSyntaxUID")).text = uid
    return root


def read_rad69_response(body: etree._Element, attachments: dict) -> ImagingResult:
    """Status, errors and the instances of an xdsb:RetrieveDocumentSetResponse (MTOM attachments)."""
    if body.tag != qn(XDSB, "RetrieveDocumentSetResponse"):
        raise ValueError(f"the answer is {body.tag}, not xdsb:RetrieveDocumentSetResponse")
    registry_response = body.find(qn(RS, "RegistryResponse"))
    if registry_response is None:
        raise ValueError("the answer has no RegistryResponse")
    status, errors = parse_registry_response(registry_response)
    result = ImagingResult(status, errors)
    for doc in body.findall(qn(XDSB, "DocumentResponse")):
        uid = (doc.findtext(qn(XDSB, "DocumentUniqueId")) or "").strip()
        document = doc.find(qn(XDSB, "Document"))
        if not uid or document is None:
            continue
        include = document.find(XOP_INCLUDE)
        if include is not None:
            sink = lookup_attachment(attachments, include.get("href") or "")
            data = sink if isinstance(sink, bytes) else sink.data
        else:
            data = base64.b64decode(document.text or "")
        result.instances[uid] = data
    return result


async def retrieve_imaging_document_set(client: SoapClient, url: str, instances: list[InstanceRequest],
                                        transfer_syntaxes: list[str] | None = None) -> ImagingResult:
    """RAD-69 to the imaging source at ``url``; raises TransportError / SoapFaultError as the SOAP client does."""
    request = rad69_request(instances, transfer_syntaxes or PASS_THROUGH_SYNTAXES)
    answer = await client.call(url, ACTION_RAD69, request, mtom=True)
    return read_rad69_response(answer.body, answer.attachments)
