"""The shared test message builders produce what the published schemas and our SOAP layer accept."""

from __future__ import annotations

import base64
import hashlib

import pytest
from lxml import etree

from ihe.soap import parse_envelope
from ihe.xml import parse_xml
from tests import messages as m

PID = m.new_patient_id()

VARIANTS = {
    "one document": {},
    "three documents and a folder": {"documents": 3, "folder": True},
    "uuids, replacement": {"use_uuids": True, "replaces": m.new_uuid(), "relationship": "XFRM_RPLC"},
    "existing folder, reference ids": {"existing_folder": m.new_uuid(), "intended_recipients": ["H^^^^^^^^^1.2"],
                                       "reference_ids": ["A^^^&1.2&ISO^urn:ihe:iti:xds:2013:accession"]},
    "nested classification, on-demand, extra slots": {"nested_classification": True, "folder": True,
                                                       "on_demand": True, "extra_slots": {"urn:x": ["a&b<c"]}},
    "omissions": {"omit_document": {"classCode", "hash"}, "omit_submission_set": {"classification"}},
}


@pytest.mark.needs_shared("xsd")
@pytest.mark.parametrize("kwargs", VARIANTS.values(), ids=VARIANTS.keys())
def test_submit_objects_request_is_schema_valid(kwargs):
    built = m.submit_objects_request(PID, **kwargs)
    m.reference_schema("lcm").assertValid(parse_xml(built.xml))
    assert len(built.document_ids) == len(built.document_unique_ids) == kwargs.get("documents", 1)


def test_ids_and_values_are_reported():
    built = m.submit_objects_request(PID, documents=2, folder=True, document_unique_ids=["1.2.1", "1.2.2"],
                                     hashes=["a" * 40, "b" * 40], sizes=[1, 2], submission_set_unique_id="1.2.3")
    assert built.document_ids == ["Document01", "Document02"]
    assert built.document_unique_ids == ["1.2.1", "1.2.2"]
    assert built.document_hashes == ["a" * 40, "b" * 40] and built.document_sizes == [1, 2]
    assert built.submission_set_unique_id == "1.2.3" and built.folder_id == "Folder01"
    kinds = sorted((s, t) for _, s, t in built.associations.values())
    assert ("SubmissionSet01", "Folder01") in kinds and ("Folder01", "Document02") in kinds
    # Default hashes/sizes are those of the generated contents.
    plain = m.submit_objects_request(PID)
    content = plain.contents[plain.document_id]
    assert plain.document_hashes == [hashlib.sha1(content).hexdigest()] and plain.document_sizes == [len(content)]


def test_fresh_unique_ids():
    ids = {m.new_oid() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) <= 64 for i in ids)  # the XDS limit for OID unique ids
    assert all(all(part.isdigit() and (part == "0" or not part.startswith("0")) for part in i.split(".")) for i in ids)


def test_unknown_omission_is_refused():
    with pytest.raises(ValueError, match="omit_document"):
        m.submit_objects_request(PID, omit_document={"nonsense"})


def test_register_request_envelope_parses():
    envelope, built = m.register_request(PID, message_id="urn:uuid:1")
    request = parse_envelope(parse_xml(envelope))
    assert request.action == m.ACTION_ITI42 and request.message_id == "urn:uuid:1"
    assert request.reply_to == m.WSA_ANONYMOUS
    assert etree.QName(request.body).localname == "SubmitObjectsRequest"
    assert built.document_id == "Document01"


@pytest.mark.needs_shared("xsd")
def test_provide_and_register_request_is_schema_valid():
    built = m.provide_and_register_request(PID, documents=2, contents=[b"one", b"two"])
    root = parse_xml(built.xml)
    m.reference_schema("XDS.b_DocumentRepository").assertValid(root)
    docs = root.findall(f"{{{m.XDSB_NS}}}Document")
    assert [(d.get("id"), base64.b64decode(d.text)) for d in docs] == [("Document01", b"one"), ("Document02", b"two")]
    assert built.document_hashes == [hashlib.sha1(b"one").hexdigest(), hashlib.sha1(b"two").hexdigest()]
    assert b"repositoryUniqueId" not in built.xml


@pytest.mark.needs_shared("xsd")
def test_stored_query_request():
    xml = m.stored_query_request(m.FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": m.quoted(PID),
        "$XDSDocumentEntryStatus": [m.in_list("urn:oasis:names:tc:ebxml-regrep:StatusType:Approved")],
        "$XDSDocumentEntryEventCodeList": [[m.in_list("CT^^^1.2")], [m.in_list("MR^^^1.2", "US^^^1.2")]],
        "$XDSDocumentEntryCreationTimeFrom": "20040101",
    }, return_type="ObjectRef")
    root = parse_xml(xml)
    m.reference_schema("query").assertValid(root)
    rim = m.RIM_NS
    query = root.find(f"{{{rim}}}AdhocQuery")
    assert query.get("id") == m.FIND_DOCUMENTS
    slots = [(s.get("name"), [x.text for x in s.iter(f"{{{rim}}}Value")]) for s in query.iter(f"{{{rim}}}Slot")]
    assert slots == [
        ("$XDSDocumentEntryPatientId", [f"'{PID}'"]),
        ("$XDSDocumentEntryStatus", ["('urn:oasis:names:tc:ebxml-regrep:StatusType:Approved')"]),
        ("$XDSDocumentEntryEventCodeList", ["('CT^^^1.2')"]),
        ("$XDSDocumentEntryEventCodeList", ["('MR^^^1.2','US^^^1.2')"]),
        ("$XDSDocumentEntryCreationTimeFrom", ["20040101"]),
    ]
    assert root.find(f"{{{m.QUERY_NS}}}ResponseOption").get("returnType") == "ObjectRef"
    envelope = parse_envelope(parse_xml(m.stored_query_envelope(m.GET_ALL, {"$patientId": m.quoted(PID)})))
    assert envelope.action == m.ACTION_ITI18


def test_quoting():
    assert m.quoted("O'Brien") == "'O''Brien'"
    assert m.in_list("a", "b") == "('a','b')"
    assert m.patient_cx("X", "1.2") == "X^^^&1.2&ISO"
