"""SOAP 1.2 envelopes with WS-Addressing: parse requests, build responses and faults.

Pure functions over lxml elements and bytes; the HTTP edge lives in :mod:`ihe.http`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from xml.sax.saxutils import escape as xml_escape

from lxml import etree

from ihe.namespaces import SOAP11, SOAP12, WSA, qn
from ihe.xml import text_of

# Headers whose mustUnderstand we honour: WS-Addressing, and WS-Security (XUA) which the
# trust layer reads; anything else marked mustUnderstand gets a MustUnderstand fault.
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
UNDERSTOOD_HEADER_NAMESPACES = frozenset({WSA, WSSE})

FAULT_SENDER = "Sender"
FAULT_RECEIVER = "Receiver"
FAULT_VERSION_MISMATCH = "VersionMismatch"
FAULT_MUST_UNDERSTAND = "MustUnderstand"

WSA_ACTION_NOT_SUPPORTED = qn(WSA, "ActionNotSupported")
WSA_HEADER_REQUIRED = qn(WSA, "MessageAddressingHeaderRequired")
WSA_INVALID_HEADER = qn(WSA, "InvalidAddressingHeader")
WSA_FAULT_ACTION = "http://www.w3.org/2005/08/addressing/soap/fault"
WSA_ANONYMOUS = "http://www.w3.org/2005/08/addressing/anonymous"


class SoapFault(Exception):
    """A SOAP 1.2 fault to send back; ``reason`` is written for the integration engineer."""

    def __init__(self, code: str, reason: str, subcode: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.subcode = subcode

    @property
    def http_status(self) -> int:
        # SOAP 1.2 HTTP binding: Sender faults are 400, everything else 500.
        return 400 if self.code == FAULT_SENDER else 500


@dataclass(slots=True)
class SoapRequest:
    """A parsed SOAP 1.2 request: WS-Addressing headers and the body's payload element."""

    action: str
    message_id: str | None
    body: etree._Element
    envelope: etree._Element
    to: str | None = None
    reply_to: str | None = None
    # MTOM attachments by Content-ID (without angle brackets), already resolved into the body
    # where xop:Include was used; kept here for actors that stream them instead.
    attachments: dict[str, object] = field(default_factory=dict)
    # The caller's validated XUA identity (ihe.xua.XuaIdentity) when the endpoint's policy checks one.
    identity: object | None = None
    # The caller's network address (the access policy's node identity when no XUA identity is given).
    remote: str | None = None
    # The caller's verified TLS client certificate (ihe.tls.PeerCertificate), None on plain TCP.
    peer: object | None = None


def parse_envelope(root: etree._Element) -> SoapRequest:
    """Check a SOAP 1.2 envelope with WS-Addressing and return its parts, or raise SoapFault."""
    if root.tag == qn(SOAP11, "Envelope"):
        raise SoapFault(
            FAULT_VERSION_MISMATCH, "SOAP 1.1 is not supported: IHE XDS.b requires SOAP 1.2"
        )
    if root.tag != qn(SOAP12, "Envelope"):
        raise SoapFault(FAULT_SENDER, f"the root element is {root.tag}, not a SOAP 1.2 Envelope")
    header = root.find(qn(SOAP12, "Header"))
    body = root.find(qn(SOAP12, "Body"))
    if body is None:
        raise SoapFault(FAULT_SENDER, "the SOAP Envelope has no Body")
    payload = next((c for c in body if isinstance(c.tag, str)), None)
    if payload is None:
        raise SoapFault(FAULT_SENDER, "the SOAP Body is empty")
    if header is None:
        raise SoapFault(FAULT_SENDER, "the SOAP Envelope has no Header: wsa:Action is required",
                        WSA_HEADER_REQUIRED)
    for h in header:
        if not isinstance(h.tag, str):
            continue
        must = h.get(qn(SOAP12, "mustUnderstand"))
        ns = etree.QName(h).namespace
        if must in ("true", "1") and ns not in UNDERSTOOD_HEADER_NAMESPACES:
            raise SoapFault(FAULT_MUST_UNDERSTAND, f"header {h.tag} is marked mustUnderstand but is not understood")
    action = text_of(header.find(qn(WSA, "Action")))
    if not action:
        raise SoapFault(FAULT_SENDER, "the WS-Addressing Action header is missing", WSA_HEADER_REQUIRED)
    reply_to = header.find(qn(WSA, "ReplyTo"))
    return SoapRequest(
        action=action,
        message_id=text_of(header.find(qn(WSA, "MessageID"))),
        body=payload,
        envelope=root,
        to=text_of(header.find(qn(WSA, "To"))),
        reply_to=text_of(reply_to.find(qn(WSA, "Address"))) if reply_to is not None else None,
    )


def new_message_id() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _header_xml(action: str, relates_to: str | None, to: str | None = None, security: bytes | None = None) -> bytes:
    """The response's SOAP Header, written as text: it sits on every response's hot path, and
    building it as an lxml tree cost more than the rest of a small query's reply."""
    parts = [
        '<soap:Header><wsa:Action soap:mustUnderstand="true">', xml_escape(action), "</wsa:Action>",
        "<wsa:MessageID>", new_message_id(), "</wsa:MessageID>",
    ]
    if relates_to:
        parts += ["<wsa:RelatesTo>", xml_escape(relates_to), "</wsa:RelatesTo>"]
    if to:
        parts += ['<wsa:To soap:mustUnderstand="true">', xml_escape(to), "</wsa:To>"]
    head = "".join(parts).encode("utf-8")
    return head + (security or b"") + b"</soap:Header>"


_ENVELOPE_OPEN = (
    f'<?xml version="1.0" encoding="UTF-8"?><soap:Envelope xmlns:soap="{SOAP12}" xmlns:wsa="{WSA}">'
).encode()
_ENVELOPE_CLOSE = b"</soap:Envelope>"


def build_envelope_bytes(
    action: str, body_xml: bytes, *, relates_to: str | None = None, to: str | None = None,
    security: bytes | None = None,
) -> bytes:
    """A SOAP 1.2 envelope around an already serialized body payload.

    Splicing bytes lets the registry return stored ebRIM fragments without re-parsing them.
    ``security`` is a serialized wsse:Security header (``ihe.xua.assertion.security_header``).
    """
    return b"".join(
        (_ENVELOPE_OPEN, _header_xml(action, relates_to, to, security), b"<soap:Body>", body_xml, b"</soap:Body>",
         _ENVELOPE_CLOSE)
    )


def build_envelope(
    action: str, body: etree._Element, *, relates_to: str | None = None, to: str | None = None,
    security: bytes | None = None,
) -> bytes:
    return build_envelope_bytes(action, etree.tostring(body), relates_to=relates_to, to=to, security=security)


def build_fault(fault: SoapFault, *, relates_to: str | None = None) -> bytes:
    """A SOAP 1.2 Fault envelope (WS-Addressing fault action)."""
    f = etree.Element(qn(SOAP12, "Fault"), nsmap={"soap": SOAP12, "wsa": WSA, "wsse": WSSE})
    code = etree.SubElement(f, qn(SOAP12, "Code"))
    etree.SubElement(code, qn(SOAP12, "Value")).text = f"soap:{fault.code}"
    if fault.subcode:
        sub = etree.SubElement(code, qn(SOAP12, "Subcode"))
        name = etree.QName(fault.subcode)
        prefix = "wsse" if name.namespace == WSSE else "wsa"  # WS-Security faults (XUA) or WS-Addressing
        etree.SubElement(sub, qn(SOAP12, "Value")).text = f"{prefix}:{name.localname}"
    reason = etree.SubElement(f, qn(SOAP12, "Reason"))
    text = etree.SubElement(reason, qn(SOAP12, "Text"))
    text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
    text.text = fault.reason
    return build_envelope(WSA_FAULT_ACTION, f, relates_to=relates_to)


def parse_fault(root: etree._Element) -> SoapFault | None:
    """The fault in a response envelope, if any (used by our clients)."""
    fault = root.find(f"{qn(SOAP12, 'Body')}/{qn(SOAP12, 'Fault')}")
    if fault is None:
        return None
    value = text_of(fault.find(f"{qn(SOAP12, 'Code')}/{qn(SOAP12, 'Value')}")) or "soap:Receiver"
    reason = text_of(fault.find(f"{qn(SOAP12, 'Reason')}/{qn(SOAP12, 'Text')}")) or ""
    sub = text_of(fault.find(f"{qn(SOAP12, 'Code')}/{qn(SOAP12, 'Subcode')}/{qn(SOAP12, 'Value')}"))
    return SoapFault(value.split(":")[-1], reason, sub)
