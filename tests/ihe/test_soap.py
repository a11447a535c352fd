"""SOAP 1.2 / WS-Addressing envelopes: parsing requests, building responses and faults."""

import pytest
from lxml import etree

from ihe.namespaces import RS, SOAP12, WSA, qn
from ihe.soap import (
    FAULT_MUST_UNDERSTAND,
    FAULT_SENDER,
    FAULT_VERSION_MISMATCH,
    WSA_HEADER_REQUIRED,
    SoapFault,
    build_envelope,
    build_envelope_bytes,
    build_fault,
    parse_envelope,
    parse_fault,
)
from ihe.xml import parse_xml


def envelope(header: str, body: str = '<x:Ping xmlns:x="urn:test"/>', ns: str = SOAP12) -> bytes:
    return (
        f'<s:Envelope xmlns:s="{ns}" xmlns:a="{WSA}"><s:Header>{header}</s:Header>'
        f"<s:Body>{body}</s:Body></s:Envelope>"
    ).encode()


def test_parses_action_message_id_and_payload():
    req = parse_envelope(parse_xml(envelope(
        '<a:Action s:mustUnderstand="true">urn:test:Ping</a:Action><a:MessageID>urn:uuid:1</a:MessageID>'
        '<a:ReplyTo><a:Address>http://www.w3.org/2005/08/addressing/anonymous</a:Address></a:ReplyTo>'
    )))
    assert req.action == "urn:test:Ping"
    assert req.message_id == "urn:uuid:1"
    assert req.body.tag == "{urn:test}Ping"
    assert req.reply_to.endswith("anonymous")


def test_soap11_envelope_is_a_version_mismatch():
    with pytest.raises(SoapFault) as err:
        parse_envelope(parse_xml(envelope("<a:Action>x</a:Action>", ns="http://schemas.xmlsoap.org/soap/envelope/")))
    assert err.value.code == FAULT_VERSION_MISMATCH
    assert "SOAP 1.1" in err.value.reason


@pytest.mark.parametrize("header", ["", "<a:MessageID>urn:uuid:1</a:MessageID>", "<a:Action>  </a:Action>"])
def test_missing_action_is_a_sender_fault(header):
    with pytest.raises(SoapFault) as err:
        parse_envelope(parse_xml(envelope(header)))
    assert err.value.code == FAULT_SENDER
    assert err.value.subcode == WSA_HEADER_REQUIRED
    assert err.value.http_status == 400


def test_empty_body_is_a_sender_fault():
    with pytest.raises(SoapFault, match="Body is empty"):
        parse_envelope(parse_xml(envelope("<a:Action>x</a:Action>", body="")))


def test_unknown_must_understand_header_is_refused():
    header = '<a:Action>x</a:Action><z:Secret xmlns:z="urn:z" s:mustUnderstand="1"/>'
    with pytest.raises(SoapFault) as err:
        parse_envelope(parse_xml(envelope(header)))
    assert err.value.code == FAULT_MUST_UNDERSTAND


def test_response_envelope_carries_action_and_relates_to():
    body = etree.Element(qn(RS, "RegistryResponse"), status="ok")
    root = parse_xml(build_envelope("urn:test:PingResponse", body, relates_to="urn:uuid:1"))
    assert root.findtext(f"{qn(SOAP12, 'Header')}/{qn(WSA, 'Action')}") == "urn:test:PingResponse"
    assert root.findtext(f"{qn(SOAP12, 'Header')}/{qn(WSA, 'RelatesTo')}") == "urn:uuid:1"
    assert root.find(f"{qn(SOAP12, 'Body')}/{qn(RS, 'RegistryResponse')}").get("status") == "ok"


def test_spliced_body_bytes_make_a_well_formed_envelope():
    root = parse_xml(build_envelope_bytes("urn:a", b'<p:x xmlns:p="urn:p"><p:y/></p:x>'))
    assert root.find(f"{qn(SOAP12, 'Body')}/{{urn:p}}x/{{urn:p}}y") is not None


def test_fault_round_trips_code_subcode_and_reason():
    fault = SoapFault(FAULT_SENDER, "the WS-Addressing Action header is missing", WSA_HEADER_REQUIRED)
    parsed = parse_fault(parse_xml(build_fault(fault, relates_to="urn:uuid:9")))
    assert parsed is not None
    assert parsed.code == FAULT_SENDER
    assert parsed.reason == fault.reason
    assert parsed.subcode == "wsa:MessageAddressingHeaderRequired"


def test_header_values_are_escaped():
    root = parse_xml(build_envelope_bytes("urn:a&b<c>", b"<x/>", relates_to="urn:uuid:1&2", to="http://h/?a=1&b=2"))
    header = root.find(qn(SOAP12, "Header"))
    assert header.findtext(qn(WSA, "Action")) == "urn:a&b<c>"
    assert header.findtext(qn(WSA, "RelatesTo")) == "urn:uuid:1&2"
    assert header.findtext(qn(WSA, "To")) == "http://h/?a=1&b=2"
    assert header.find(qn(WSA, "MessageID")).text.startswith("urn:uuid:")
