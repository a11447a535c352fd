"""A RAD-69 request builder and response reader for the tests (the Imaging Document Consumer's side)."""

from __future__ import annotations

from lxml import etree

from ihe.errors import parse_registry_response
from ihe.mtom import XOP_INCLUDE, lookup_attachment
from ihe.namespaces import ACTION_RAD69, RS, XDSB, XDSI, qn


def rad69_request(documents: list[tuple[str, str, str, str]], syntaxes: list[str]) -> etree._Element:
    """documents: (study, series, repository unique id, SOP instance uid)."""
    root = etree.Element(qn(XDSI, "RetrieveImagingDocumentSetRequest"), nsmap={"iherad": XDSI, "xdsb": XDSB})
    for study, series, repo, uid in documents:
        st = etree.SubElement(root, qn(XDSI, "StudyRequest"), studyInstanceUID=study)
        se = etree.SubElement(st, qn(XDSI, "SeriesRequest"), seriesInstanceUID=series)
        doc = etree.SubElement(se, qn(XDSB, "DocumentRequest"))
        etree.SubElement(doc, qn(XDSB, "RepositoryUniqueId")).text = repo
        etree.SubElement(doc, qn(XDSB, "DocumentUniqueId")).text = uid
    tsl = etree.SubElement(root, qn(XDSI, "TransferSyntaxUIDList"))
    for ts in syntaxes:
        etree.SubElement(tsl, qn(XDSI, "TransferSyntaxUID")).text = ts
    return root


async def rad69(client, url: str, documents, syntaxes) -> tuple[str, list, dict[str, bytes]]:
    """(status, errors, {SOP instance uid: bytes}) of a RAD-69 call."""
    result = await client.call(url, ACTION_RAD69, rad69_request(documents, syntaxes), mtom=True)
    assert result.body.tag == qn(XDSB, "RetrieveDocumentSetResponse")
    status, errors = parse_registry_response(result.body.find(qn(RS, "RegistryResponse")))
    docs = {}
    for doc in result.body.findall(qn(XDSB, "DocumentResponse")):
        assert doc.findtext(qn(XDSB, "mimeType")) == "application/dicom"
        include = doc.find(f"{qn(XDSB, 'Document')}/{XOP_INCLUDE}")
        docs[doc.findtext(qn(XDSB, "DocumentUniqueId"))] = lookup_attachment(result.attachments,
                                                                             include.get("href")).data
    return status, errors, docs
