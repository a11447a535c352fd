"""Document Source side of ITI-41 Provide and Register Document Set-b.

Build the XDS metadata for new documents with sensible defaults (:func:`document_entry`,
:func:`submission_package`), then :func:`provide_and_register` sends it with the documents as
MTOM attachments streamed from files or bytes. The metadata goes through the shared ebRIM
writer (:mod:`ihe.metadata.ebrim`); nothing here knows ebRIM.
"""

from __future__ import annotations

import base64
import hashlib
import mimetypes
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from lxml import etree

from consumer.client.soap import SoapClient
from ihe.errors import RegistryError, parse_registry_response
from ihe.metadata.ebrim import write_submit_objects_request
from ihe.metadata.model import (
    Association,
    AssociationType,
    Author,
    Code,
    DocumentEntry,
    Identifiable,
    LocalizedString,
    SubmissionPackage,
    SubmissionSet,
)
from ihe.mtom import Attachment, new_content_id, xop_include
from ihe.namespaces import ACTION_ITI41, XDSB, qn

LOINC = "2.16.840.1.113883.6.1"
SNOMED = "2.16.840.1.113883.6.96"
CONFIDENTIALITY = "2.16.840.1.113883.5.25"
IHE_FORMAT_CODES = "1.3.6.1.4.1.19376.1.2.3"

# Defaults for an imaging network; every one can be overridden per document.
DEFAULT_CLASS_CODE = Code("18748-4", LOINC, LocalizedString("Diagnostic imaging study"))
DEFAULT_TYPE_CODE = Code("18782-3", LOINC, LocalizedString("Radiology Study observation (narrative)"))
DEFAULT_HEALTHCARE_FACILITY_TYPE_CODE = Code("22232009", SNOMED, LocalizedString("Hospital"))
DEFAULT_PRACTICE_SETTING_CODE = Code("394914008", SNOMED, LocalizedString("Radiology"))
DEFAULT_CONFIDENTIALITY_CODE = Code("N", CONFIDENTIALITY, LocalizedString("normal"))
FORMAT_CODES = {
    "application/pdf": Code("urn:ihe:iti:xds-sd:pdf:2008", IHE_FORMAT_CODES, LocalizedString("PDF")),
    "text/plain": Code("urn:ihe:iti:xds-sd:text:2008", IHE_FORMAT_CODES, LocalizedString("Text")),
}
MIME_TYPE_SUFFICIENT = Code("urn:ihe:iti:xds:2017:mimeTypeSufficient", IHE_FORMAT_CODES,
                            LocalizedString("mimeType Sufficient"))


def new_unique_id() -> str:
    """A fresh OID for a uniqueId: the UUID-derived arc 2.25 (ITU-T X.667), no registration needed."""
    return f"2.25.{uuid.uuid4().int}"


def new_entry_uuid() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def now_dtm() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S")


def guess_mime_type(path: Path) -> str:
    """The MIME type of ``path`` from its name; CDA documents are ``text/xml``."""
    if path.suffix.lower() == ".xml":
        return "text/xml"
    guessed, _ = mimetypes.guess_type(path.name)
    return guessed or "application/octet-stream"


def default_format_code(mime_type: str) -> Code:
    return FORMAT_CODES.get(mime_type, MIME_TYPE_SUFFICIENT)


def parse_code(value: str) -> Code:
    """``code^scheme[^display]`` (the form the CLI takes) as a Code."""
    parts = value.split("^")
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"code {value!r} is not of the form code^codingScheme[^display name]")
    display = LocalizedString(parts[2]) if len(parts) > 2 and parts[2] else None
    return Code(parts[0], parts[1], display)


def document_entry(
    patient_id: str,
    mime_type: str,
    *,
    unique_id: str | None = None,
    title: str | None = None,
    class_code: Code = DEFAULT_CLASS_CODE,
    type_code: Code = DEFAULT_TYPE_CODE,
    format_code: Code | None = None,
    healthcare_facility_type_code: Code = DEFAULT_HEALTHCARE_FACILITY_TYPE_CODE,
    practice_setting_code: Code = DEFAULT_PRACTICE_SETTING_CODE,
    confidentiality_codes: list[Code] | None = None,
    event_codes: list[Code] | None = None,
    creation_time: str | None = None,
    language_code: str = "en-GB",
    source_patient_id: str | None = None,
    author_person: str | None = None,
    author_institution: str | None = None,
) -> DocumentEntry:
    """A stable DocumentEntry for a new document of ``patient_id`` (an XDS CX ``id^^^&oid&ISO``)."""
    authors = []
    if author_person or author_institution:
        authors.append(Author(person=author_person, institutions=[author_institution] if author_institution else []))
    return DocumentEntry(
        entry_uuid=new_entry_uuid(),
        unique_id=unique_id or new_unique_id(),
        patient_id=Identifiable.parse_cx(patient_id),
        source_patient_id=Identifiable.parse_cx(source_patient_id or patient_id),
        mime_type=mime_type,
        title=LocalizedString(title) if title else None,
        class_code=class_code,
        type_code=type_code,
        format_code=format_code or default_format_code(mime_type),
        healthcare_facility_type_code=healthcare_facility_type_code,
        practice_setting_code=practice_setting_code,
        confidentiality_codes=list(confidentiality_codes or [DEFAULT_CONFIDENTIALITY_CODE]),
        event_codes=list(event_codes or []),
        creation_time=creation_time or now_dtm(),
        language_code=language_code,
        authors=authors,
    )


def submission_package(
    patient_id: str,
    entries: list[DocumentEntry],
    *,
    source_id: str,
    content_type_code: Code | None = None,
    title: str | None = None,
    author_person: str | None = None,
    author_institution: str | None = None,
) -> SubmissionPackage:
    """A SubmissionSet holding ``entries`` (HasMember, SubmissionSetStatus Original)."""
    authors = []
    if author_person or author_institution:
        authors.append(Author(person=author_person, institutions=[author_institution] if author_institution else []))
    ss = SubmissionSet(
        entry_uuid=new_entry_uuid(),
        unique_id=new_unique_id(),
        source_id=source_id,
        patient_id=Identifiable.parse_cx(patient_id),
        submission_time=now_dtm(),
        title=LocalizedString(title) if title else None,
        content_type_code=content_type_code or (entries[0].class_code if entries else DEFAULT_CLASS_CODE),
        authors=authors,
    )
    associations = [
        Association(entry_uuid=new_entry_uuid(), type=AssociationType.HAS_MEMBER, source_uuid=ss.entry_uuid,
                    target_uuid=e.entry_uuid, submission_set_status="Original")
        for e in entries
    ]
    return SubmissionPackage(submission_set=ss, documents=list(entries), associations=associations)


def hash_and_size(content: bytes | Path) -> tuple[str, int]:
    """SHA-1 (hex) and size of ``content``, reading a file in chunks."""
    if isinstance(content, bytes):
        return hashlib.sha1(content, usedforsecurity=False).hexdigest(), len(content)
    digest = hashlib.sha1(usedforsecurity=False)
    size = 0
    with open(content, "rb") as fh:
        while block := fh.read(1024 * 1024):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


@dataclass(slots=True)
class SubmitResult:
    status: str
    errors: list[RegistryError]
    response: etree._Element
    package: SubmissionPackage
    document_unique_ids: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status.endswith(":Success")


def provide_and_register_request(
    package: SubmissionPackage, contents: Mapping[str, bytes | Path], *, mtom: bool = True
) -> tuple[etree._Element, list[Attachment]]:
    """The ``xdsb:ProvideAndRegisterDocumentSetRequest`` and its attachments.

    ``contents`` maps each DocumentEntry's entryUUID to its bytes or file. With ``mtom`` the
    documents are ``xop:Include`` references to attachments, else inline base64.
    """
    request = etree.Element(qn(XDSB, "ProvideAndRegisterDocumentSetRequest"), nsmap={"xdsb": XDSB})
    request.append(write_submit_objects_request(package))
    attachments: list[Attachment] = []
    mime_types = {e.entry_uuid: e.mime_type or "application/octet-stream" for e in package.documents}
    for entry_uuid, content in contents.items():
        doc = etree.SubElement(request, qn(XDSB, "Document"), id=entry_uuid)
        if mtom:
            cid = new_content_id()
            xop_include(doc, cid)
            mime = mime_types.get(entry_uuid, "application/octet-stream")
            if isinstance(content, bytes):
                attachments.append(Attachment(cid, mime, data=content))
            else:
                attachments.append(Attachment(cid, mime, path=Path(content), size=Path(content).stat().st_size))
        else:
            data = content if isinstance(content, bytes) else Path(content).read_bytes()
            doc.text = base64.b64encode(data).decode("ascii")
    return request, attachments


async def provide_and_register(
    client: SoapClient,
    repository_url: str,
    package: SubmissionPackage,
    contents: Mapping[str, bytes | Path],
    *,
    compute_hash: bool = True,
    mtom: bool = True,
) -> SubmitResult:
    """Send ITI-41 and return the repository's RegistryResponse status and errors.

    With ``compute_hash`` the DocumentEntries carry hash and size (read from the files first),
    so the repository verifies what it received end to end.
    """
    if compute_hash:
        for entry in package.documents:
            if entry.entry_uuid in contents and (entry.hash is None or entry.size is None):
                entry.hash, entry.size = hash_and_size(contents[entry.entry_uuid])
    request, attachments = provide_and_register_request(package, contents, mtom=mtom)
    result = await client.call(repository_url, ACTION_ITI41, request, attachments=attachments, mtom=mtom)
    status, errors = parse_registry_response(result.body)
    return SubmitResult(status, errors, result.body, package, [e.unique_id or "" for e in package.documents])
