"""Document Consumer side of ITI-43 Retrieve Document Set.

Documents arrive as MTOM attachments; with ``dest_dir`` they are streamed to files (any size,
bounded memory), else kept in memory. Inline base64 answers are accepted too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxml import etree

from consumer.client.soap import SoapClient, TransportError
from ihe.errors import RegistryError, parse_registry_response
from ihe.mtom import XOP_INCLUDE, HashingFileWriter, MemorySink, lookup_attachment
from ihe.namespaces import ACTION_ITI43, RS, XDSB, qn
from ihe.xml import text_of


@dataclass(frozen=True, slots=True)
class DocumentRequest:
    repository_unique_id: str
    document_unique_id: str
    home_community_id: str | None = None


@dataclass(slots=True)
class RetrievedDocument:
    repository_unique_id: str
    document_unique_id: str
    mime_type: str
    home_community_id: str | None = None
    data: bytes | None = None  # when kept in memory
    path: Path | None = None  # when streamed to a file
    size: int = 0
    sha1: str = ""


@dataclass(slots=True)
class RetrieveResult:
    status: str
    errors: list[RegistryError]
    documents: list[RetrievedDocument]

    @property
    def ok(self) -> bool:
        return self.status.endswith(":Success")


def retrieve_request(requests: Sequence[DocumentRequest]) -> etree._Element:
    root = etree.Element(qn(XDSB, "RetrieveDocumentSetRequest"), nsmap={"xdsb": XDSB})
    for r in requests:
        dr = etree.SubElement(root, qn(XDSB, "DocumentRequest"))
        if r.home_community_id:
            etree.SubElement(dr, qn(XDSB, "HomeCommunityId")).text = r.home_community_id
        etree.SubElement(dr, qn(XDSB, "RepositoryUniqueId")).text = r.repository_unique_id
        etree.SubElement(dr, qn(XDSB, "DocumentUniqueId")).text = r.document_unique_id
    return root


class FileSink:
    """An attachment streamed to a file, hashed on the way (big ones on a writer thread)."""

    def __init__(self, folder: Path, content_id: str = "") -> None:
        self.content_id = content_id
        self.path = folder / f".partial-{uuid.uuid4().hex}"
        self._writer = HashingFileWriter(self.path, ("sha1",))
        self.sha1 = ""

    @property
    def size(self) -> int:
        return self._writer.size

    def write(self, data: bytes | memoryview) -> None:
        self._writer.write(data)

    def finish(self) -> None:
        self.sha1 = self._writer.finish()["sha1"]
        self._writer.close()

    def discard(self) -> None:
        self._writer.close()
        self.path.unlink(missing_ok=True)


_UNSAFE = re.compile(r"[^A-Za-z0-9._^-]")


def safe_file_name(unique_id: str) -> str:
    """A file name for a document uniqueId (OIDs are safe; anything else is replaced)."""
    name = _UNSAFE.sub("_", unique_id).lstrip(".") or "document"
    return name[:200]


def _document_content(doc: etree._Element, attachments: Mapping[str, Any]) -> Any:
    include = doc.find(XOP_INCLUDE)
    if include is not None:
        try:
            return lookup_attachment(attachments, include.get("href") or "")
        except (KeyError, ValueError):
            raise TransportError(f"the answer references {include.get('href')!r}, which is not attached",
                                 delivered=True) from None
    try:
        return base64.b64decode("".join((doc.text or "").split()), validate=True)
    except binascii.Error as exc:
        raise TransportError(f"an inline Document is not valid base64: {exc}", delivered=True) from None


async def retrieve_document_set(
    client: SoapClient,
    repository_url: str,
    requests: Sequence[DocumentRequest],
    *,
    dest_dir: Path | None = None,
) -> RetrieveResult:
    """ITI-43: fetch documents; with ``dest_dir`` each is written to ``dest_dir/<uniqueId>``."""
    if dest_dir is not None:
        dest_dir.mkdir(parents=True, exist_ok=True)

        def open_sink(content_id: str, headers: dict[str, str]) -> Any:
            return FileSink(dest_dir, content_id)
    else:
        def open_sink(content_id: str, headers: dict[str, str]) -> Any:
            return MemorySink(content_id, headers)

    result = await client.call(repository_url, ACTION_ITI43, retrieve_request(requests), mtom=True,
                               open_sink=open_sink)
    used: set[int] = set()
    try:
        response = result.body
        registry_response = response.find(qn(RS, "RegistryResponse"))
        if registry_response is None:
            raise TransportError("the RetrieveDocumentSetResponse has no RegistryResponse", delivered=True)
        status, errors = parse_registry_response(registry_response)
        documents = []
        for dr in response.iterfind(qn(XDSB, "DocumentResponse")):
            doc_el = dr.find(qn(XDSB, "Document"))
            if doc_el is None:
                raise TransportError("a DocumentResponse has no Document", delivered=True)
            got = RetrievedDocument(
                repository_unique_id=text_of(dr.find(qn(XDSB, "RepositoryUniqueId"))) or "",
                document_unique_id=text_of(dr.find(qn(XDSB, "DocumentUniqueId"))) or "",
                mime_type=text_of(dr.find(qn(XDSB, "mimeType"))) or "application/octet-stream",
                home_community_id=text_of(dr.find(qn(XDSB, "HomeCommunityId"))),
            )
            content = _document_content(doc_el, result.attachments)
            if isinstance(content, bytes | MemorySink):
                data = content if isinstance(content, bytes) else content.data
                got.size, got.sha1 = len(data), hashlib.sha1(data, usedforsecurity=False).hexdigest()
                if dest_dir is not None:
                    got.path = dest_dir / safe_file_name(got.document_unique_id)
                    got.path.write_bytes(data)
                else:
                    got.data = data
            else:  # a FileSink
                got.size, got.sha1 = content.size, content.sha1
                got.path = dest_dir / safe_file_name(got.document_unique_id)  # type: ignore[operator]
                content.path.replace(got.path)
            used.add(id(content))
            documents.append(got)
    finally:
        for sink in result.attachments.values():
            if id(sink) not in used:
                sink.discard()
    return RetrieveResult(status, errors, documents)
