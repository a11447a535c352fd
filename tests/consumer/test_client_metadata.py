"""The document source's metadata defaults, read back through the shared ebRIM reader and validator."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.client.source import (
    document_entry,
    guess_mime_type,
    parse_code,
    provide_and_register_request,
    submission_package,
)
from ihe.metadata.ebrim import read_submit_objects_request
from ihe.metadata.validate import validate_submission

PID = "NHS1234^^^&2.16.840.1.113883.2.1.4.1&ISO"


def test_defaults_make_a_valid_submission_with_xop_documents():
    entries = [document_entry(PID, "application/pdf", title="Report"), document_entry(PID, "text/xml")]
    package = submission_package(PID, entries, source_id="1.2.3.4")
    request, attachments = provide_and_register_request(package, {entries[0].entry_uuid: b"%PDF",
                                                                   entries[1].entry_uuid: b"<a/>"})
    read_back = read_submit_objects_request(request)
    assert validate_submission(read_back, require_repository_attributes=False) == []
    assert [d.mime_type for d in read_back.documents] == ["application/pdf", "text/xml"]
    assert read_back.documents[0].format_code.code == "urn:ihe:iti:xds-sd:pdf:2008"
    assert [a.content_type for a in attachments] == ["application/pdf", "text/xml"]
    includes = request.findall(".//{http://www.w3.org/2004/08/xop/include}Include")
    assert [i.get("href") for i in includes] == [f"cid:{a.content_id}" for a in attachments]


def test_inline_documents_are_base64():
    entry = document_entry(PID, "text/plain")
    package = submission_package(PID, [entry], source_id="1.2.3.4")
    request, attachments = provide_and_register_request(package, {entry.entry_uuid: b"hello"}, mtom=False)
    assert attachments == []
    assert request.find("{urn:ihe:iti:xds-b:2007}Document").text == "aGVsbG8="


def test_codes_and_mime_types_from_the_command_line():
    code = parse_code("11488-4^2.16.840.1.113883.6.1^Consult note")
    assert (code.code, code.scheme, code.display_name.value) == ("11488-4", "2.16.840.1.113883.6.1", "Consult note")
    assert parse_code("N^2.16.840.1.113883.5.25").display_name is None
    with pytest.raises(ValueError):
        parse_code("N")
    assert guess_mime_type(Path("a.PDF")) == "application/pdf"
    assert guess_mime_type(Path("cda.xml")) == "text/xml"
    assert guess_mime_type(Path("blob.unknownext")) == "application/octet-stream"
