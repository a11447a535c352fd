"""Audit message builders, transaction extractors and syslog framing: pure functions."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from lxml import etree

from ihe.audit import events
from ihe.audit.messages import (
    ACTION_EXECUTE,
    EV_QUERY,
    ID_PATIENT_NUMBER,
    OUTCOME_SUCCESS,
    ROLE_DESTINATION,
    ROLE_SOURCE,
    AuditEvent,
    Participant,
    audit_message_bytes,
    build_audit_message,
    patient,
    transaction_code,
)
from ihe.audit.repository import parse_record
from ihe.audit.syslog import BOM, MSGID, PRI, FrameReader, SyslogError, build_syslog, frame, parse_syslog
from ihe.namespaces import ACTION_ITI18, ACTION_ITI41, ACTION_ITI43, ACTION_RAD69
from ihe.xml import parse_xml
from tests.messages import (
    FIND_DOCUMENTS,
    new_patient_id,
    provide_and_register_request,
    quoted,
    stored_query_request,
)

# The element order PS3.15 A.5.1 requires of an AuditMessage and of its parts.
TOP_ORDER = ["EventIdentification", "ActiveParticipant", "AuditSourceIdentification",
             "ParticipantObjectIdentification"]
PO_ORDER = ["ParticipantObjectIDTypeCode", "ParticipantObjectName", "ParticipantObjectQuery",
            "ParticipantObjectDetail"]


def check_structure(root: etree._Element) -> None:
    """Structural checks of PS3.15 A.5.1 (the DICOM RELAX NG schema is not available here)."""
    assert root.tag == "AuditMessage"
    tags = [c.tag for c in root]
    assert tags == sorted(tags, key=TOP_ORDER.index), tags
    assert tags.count("EventIdentification") == 1 and tags.count("AuditSourceIdentification") == 1
    assert tags.count("ActiveParticipant") >= 1
    ident = root.find("EventIdentification")
    assert ident.get("EventActionCode") in ("C", "R", "U", "D", "E")
    assert ident.get("EventOutcomeIndicator") in ("0", "4", "8", "12")
    datetime.fromisoformat(ident.get("EventDateTime"))
    for coded in root.iter("EventID", "EventTypeCode", "RoleIDCode", "ParticipantObjectIDTypeCode",
                           "AuditSourceTypeCode"):
        assert coded.get("csd-code") and coded.get("codeSystemName") and coded.get("originalText"), coded.attrib
    for ap in root.iter("ActiveParticipant"):
        assert ap.get("UserID") and ap.get("UserIsRequestor") in ("true", "false")
        if ap.get("NetworkAccessPointID"):
            assert ap.get("NetworkAccessPointTypeCode") in ("1", "2")
    for po in root.iter("ParticipantObjectIdentification"):
        assert po.get("ParticipantObjectID") and po.get("ParticipantObjectTypeCode") in ("1", "2", "3", "4")
        parts = [c.tag for c in po]
        assert parts[0] == "ParticipantObjectIDTypeCode"
        assert parts == sorted(parts, key=PO_ORDER.index)
        for d in po.iter("ParticipantObjectDetail"):
            assert d.get("type")
            base64.b64decode(d.get("value"), validate=True)


def test_query_event_has_every_part():
    event = AuditEvent(EV_QUERY, ACTION_EXECUTE, OUTCOME_SUCCESS, "node-a",
                       (Participant("http://consumer/reply", True, ROLE_SOURCE, "10.0.0.7"),
                        Participant("http://registry/registry", False, ROLE_DESTINATION, "registry.example")),
                       (patient("9434765919^^^&2.16.840.1.113883.2.1.4.1&ISO"),),
                       (transaction_code("ITI-18", "Registry Stored Query"),),
                       time=datetime(2026, 12, 6, 10, 0, tzinfo=UTC))
    root = parse_xml(audit_message_bytes(event))
    check_structure(root)
    assert root.find("EventIdentification/EventID").get("csd-code") == "110112"
    t = root.find("EventIdentification/EventTypeCode")
    assert (t.get("csd-code"), t.get("codeSystemName"), t.get("originalText")) == (
        "ITI-18", "IHE Transactions", "Registry Stored Query")
    src, dst = root.findall("ActiveParticipant")
    assert src.get("UserIsRequestor") == "true" and src.find("RoleIDCode").get("csd-code") == "110153"
    assert src.get("NetworkAccessPointTypeCode") == "2"
    assert dst.get("UserIsRequestor") == "false" and dst.find("RoleIDCode").get("csd-code") == "110152"
    assert dst.get("NetworkAccessPointTypeCode") == "1"
    po = root.find("ParticipantObjectIdentification")
    assert po.get("ParticipantObjectTypeCode") == "1" and po.get("ParticipantObjectTypeCodeRole") == "1"
    assert po.find("ParticipantObjectIDTypeCode").get("csd-code") == ID_PATIENT_NUMBER.code
    assert root.find("EventIdentification").get("EventDateTime").startswith("2026-12-06T10:00:00.000+00:00")


def test_iti18_event_names_patient_and_base64_query():
    pid = new_patient_id()
    body = parse_xml(stored_query_request(FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": quoted(pid),
                                                           "$XDSDocumentEntryStatus": "('urn:oasis:names:tc:"
                                                           "ebxml-regrep:StatusType:Approved')"}))
    event = events.soap_event(ACTION_ITI18, body, source_id="reg", requestor_id=None, requestor_nap="127.0.0.1",
                              server_id="http://h/registry", server_nap="h", outcome="0")
    root = build_audit_message(event)
    check_structure(root)
    objects = root.findall("ParticipantObjectIdentification")
    assert objects[0].get("ParticipantObjectID") == pid
    query = objects[1]
    assert query.get("ParticipantObjectID") == FIND_DOCUMENTS
    assert query.get("ParticipantObjectTypeCodeRole") == "24"
    assert query.find("ParticipantObjectIDTypeCode").get("csd-code") == "ITI-18"
    sent = base64.b64decode(query.find("ParticipantObjectQuery").text)
    sent_root = parse_xml(sent)
    assert sent_root.tag.endswith("AdhocQueryRequest") and f"'{pid}'" in "".join(sent_root.itertext())
    assert root.find("ActiveParticipant").get("UserID") == events.ANONYMOUS  # no ReplyTo: anonymous


def test_iti41_event_names_submission_set_and_patient():
    pid = new_patient_id()
    built = provide_and_register_request(pid)
    event = events.soap_event(ACTION_ITI41, parse_xml(built.xml), source_id="repo", requestor_id="http://src",
                              requestor_nap="10.1.1.1", server_id="http://repo", server_nap="repo", outcome="0")
    root = build_audit_message(event)
    check_structure(root)
    assert root.find("EventIdentification/EventID").get("csd-code") == "110107"
    ids = {(po.get("ParticipantObjectTypeCodeRole"), po.get("ParticipantObjectID"))
           for po in root.iter("ParticipantObjectIdentification")}
    assert ("1", pid) in ids
    assert ("20", built.submission_set_unique_id) in ids


def _retrieve_body(kind: str) -> bytes:
    if kind == "iti43":
        return (b'<xdsb:RetrieveDocumentSetRequest xmlns:xdsb="urn:ihe:iti:xds-b:2007"><xdsb:DocumentRequest>'
                b"<xdsb:HomeCommunityId>urn:oid:1.2.3</xdsb:HomeCommunityId>"
                b"<xdsb:RepositoryUniqueId>1.2.3.4</xdsb:RepositoryUniqueId>"
                b"<xdsb:DocumentUniqueId>2.25.77</xdsb:DocumentUniqueId></xdsb:DocumentRequest>"
                b"</xdsb:RetrieveDocumentSetRequest>")
    return (b'<xdsi:RetrieveImagingDocumentSetRequest xmlns:xdsi="urn:ihe:rad:xdsi-b:2009" '
            b'xmlns:xdsb="urn:ihe:iti:xds-b:2007"><xdsi:StudyRequest studyInstanceUID="1.2.840.99.1">'
            b'<xdsi:SeriesRequest seriesInstanceUID="1.2.840.99.2"><xdsb:DocumentRequest>'
            b"<xdsb:RepositoryUniqueId>1.2.3.4</xdsb:RepositoryUniqueId>"
            b"<xdsb:DocumentUniqueId>1.2.840.99.3</xdsb:DocumentUniqueId></xdsb:DocumentRequest>"
            b"</xdsi:SeriesRequest></xdsi:StudyRequest></xdsi:RetrieveImagingDocumentSetRequest>")


@pytest.mark.parametrize(("action", "kind", "first_id", "first_type"), [
    (ACTION_ITI43, "iti43", "2.25.77", "9"),
    (ACTION_RAD69, "rad69", "1.2.840.99.1", "110180"),
])
def test_retrieve_events_name_documents_with_repository(action, kind, first_id, first_type):
    event = events.soap_event(action, parse_xml(_retrieve_body(kind)), source_id="n", requestor_id=None,
                              requestor_nap="10.0.0.9", server_id="http://n", server_nap="n", outcome="0")
    root = build_audit_message(event)
    check_structure(root)
    assert root.find("EventIdentification/EventID").get("csd-code") == "110106"
    # The server exports: it is the Source, the requesting consumer the Destination.
    requestor = next(a for a in root.iter("ActiveParticipant") if a.get("UserIsRequestor") == "true")
    assert requestor.find("RoleIDCode").get("csd-code") == "110152"
    first = root.find("ParticipantObjectIdentification")
    assert first.get("ParticipantObjectID") == first_id
    assert first.find("ParticipantObjectIDTypeCode").get("csd-code") == first_type
    doc = root.findall("ParticipantObjectIdentification")[-1]
    detail = doc.find("ParticipantObjectDetail")
    assert detail.get("type") == "Repository Unique Id" and base64.b64decode(detail.get("value")) == b"1.2.3.4"


def test_unknown_action_gives_no_event():
    assert events.soap_event("urn:x", parse_xml(b"<a/>"), source_id="n", requestor_id=None, requestor_nap=None,
                             server_id="s", server_nap=None, outcome="0") is None


def test_wado_and_cstore_and_hl7_events():
    wado = events.web_retrieve_event("/wado", {"studyUID": "1.2.3"}, {}, source_id="n", requestor_nap="1.1.1.1",
                                     server_id="http://n/wado", server_nap="n", outcome="0")
    rs = events.web_retrieve_event("/dicomweb/studies/1.2.4", {}, {"study": "1.2.4"}, source_id="n",
                                   requestor_nap="1.1.1.1", server_id="http://n", server_nap="n", outcome="0")
    store = events.cstore_event(calling_ae="MODALITY", peer="10.0.0.3", called_ae="XDSI", server_nap="n",
                                source_id="n", studies={"1.2.5": "A1^^^&1.2&ISO"}, count=3)
    feed = events.hl7_event(message_code="ADT", trigger="A01", control_id="MSG1", patients=["P1^^^&1.2&ISO"],
                            query=None, sender="APP|FAC", peer="10.0.0.4", receiver="reg", server_nap="r",
                            source_id="r", ack_code="AA")
    pix = events.hl7_event(message_code="QBP", trigger="Q23", control_id="Q1", patients=["P1^^^&1.2&ISO"],
                           query=b"QPD|IHE PIX Query|Q1|P1^^^&1.2&ISO", sender="APP", peer=None, receiver="reg",
                           server_nap="r", source_id="r", ack_code="AE")
    for event, event_type, first_object in [(wado, "RAD-55", "1.2.3"), (rs, "RAD-107", "1.2.4"),
                                            (store, None, "1.2.5"), (feed, "ITI-8", "P1^^^&1.2&ISO"),
                                            (pix, "ITI-9", "P1^^^&1.2&ISO")]:
        root = build_audit_message(event)
        check_structure(root)
        if event_type:
            assert root.find("EventIdentification/EventTypeCode").get("csd-code") == event_type
        assert root.find("ParticipantObjectIdentification").get("ParticipantObjectID") == first_object
    assert build_audit_message(pix).find("EventIdentification").get("EventOutcomeIndicator") == "4"
    assert events.web_retrieve_event("/status", {}, {}, source_id="n", requestor_nap=None, server_id="s",
                                     server_nap=None, outcome="0") is None


def test_syslog_message_round_trip_and_repository_row():
    pid = new_patient_id()
    event = events.soap_event(ACTION_ITI18, parse_xml(stored_query_request(
        FIND_DOCUMENTS, {"$XDSDocumentEntryPatientId": quoted(pid)})), source_id="node-a",
        requestor_id="http://consumer", requestor_nap="10.2.3.4", server_id="http://r", server_nap="r", outcome="0")
    payload = audit_message_bytes(event)
    message = build_syslog(payload, hostname="host a", app_name="xds-registry", procid="42",
                           origin='sp"ool]', seq=17)
    assert message.startswith(f"<{PRI}>1 ".encode())
    assert f" {MSGID} ".encode() in message and BOM + payload in message
    parsed = parse_syslog(message)
    assert (parsed.hostname, parsed.origin, parsed.seq, parsed.payload) == ("hosta", 'sp"ool]', 17, payload)
    row = parse_record(message, "127.0.0.1")
    assert row.parse_error is None
    assert (row.event_id, row.event_type, row.source_id, row.user_id, row.user_address) == (
        "110112", "ITI-18", "node-a", "http://consumer", "10.2.3.4")
    assert row.patient_ids == [pid] and row.object_ids == [FIND_DOCUMENTS]


def test_unreadable_records_are_kept_with_the_reason():
    assert parse_record(b"hello", None).parse_error
    bad = build_syslog(b"<!DOCTYPE x><x/>", hostname="h", app_name="a", procid="1", origin="o", seq=1)
    row = parse_record(bad, None)
    assert row.seq == 1 and "DOCTYPE" in row.parse_error


def test_octet_counting_frames_across_reads():
    messages = [b"<85>1 - - - - - - a", b"<85>1 - - - - - - " + b"x" * 5000]
    stream = b"".join(frame(m) for m in messages)
    reader = FrameReader()
    got = []
    for i in range(0, len(stream), 7):
        got += reader.feed(stream[i:i + 7])
    assert got == messages
    with pytest.raises(SyslogError):
        FrameReader().feed(b"abc <85>1")
    with pytest.raises(SyslogError):
        FrameReader(max_frame=10).feed(b"11 ")


def test_authentication_and_security_alert_events():
    login = events.user_authentication_event(login=True, user="dr.jones", user_nap="10.0.0.5", node="portal",
                                             node_nap="portal.example", source_id="portal", success=False,
                                             reason="wrong password")
    alert = events.security_alert_event(alert=events.ALERT_NODE_AUTHENTICATION, reason="certificate expired",
                                        requestor=None, requestor_nap="10.0.0.6", node="registry", node_nap="r",
                                        source_id="registry")
    for event, event_id, type_code, outcome in [(login, "110114", "110122", "4"), (alert, "110113", "110126", "4")]:
        root = build_audit_message(event)
        check_structure(root)
        assert root.find("EventIdentification/EventID").get("csd-code") == event_id
        assert root.find("EventIdentification/EventTypeCode").get("csd-code") == type_code
        assert root.find("EventIdentification").get("EventOutcomeIndicator") == outcome
        assert root.find("EventIdentification/EventOutcomeDescription").text
