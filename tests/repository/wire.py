"""Raw ITI-41 messages as other implementations put them on the wire, built by hand.

Deliberately independent of :mod:`ihe.mtom`: the MIME framing is written here byte by byte,
in the shapes of an Axis2 (NIST toolkit) source and a .NET WCF source, so the repository is
tested against what those send, not against our own writer.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import quote

from lxml import etree

from tests.messages import ACTION_ITI41, BuiltSubmission, soap_envelope

XDSB = "urn:ihe:iti:xds-b:2007"
XOP = "http://www.w3.org/2004/08/xop/include"
AXIS2_ID = "b5b57d7287e4fa4b528a8f050c41f8ad829c20332f23b48d"


@dataclass
class WireMessage:
    content_type: str
    body: bytes


def _documents_to_includes(pnr_xml: bytes, cids: dict[str, str], *, encode_href: bool) -> bytes:
    root = etree.fromstring(pnr_xml)
    for doc in root.iter(f"{{{XDSB}}}Document"):
        cid = cids[doc.get("id")]
        doc.text = None
        href = "cid:" + (quote(cid, safe="") if encode_href else cid)
        etree.SubElement(doc, f"{{{XOP}}}Include", nsmap={"xop": XOP}, href=href)
    return etree.tostring(root)


def mtom_request(built: BuiltSubmission, style: str = "axis2", *, contents: dict[str, bytes] | None = None,
                 extra_parts: dict[str, bytes] | None = None, drop_parts: tuple[str, ...] = ()) -> WireMessage:
    """``built`` (an inline ITI-41 request from tests.messages) re-sent as MTOM.

    styles: ``axis2`` (CRLF, Content-ID in brackets, start given), ``lf`` (bare LF line ends),
    ``no-brackets`` (Content-ID without angle brackets, no start: root is the first part),
    ``percent`` (Content-IDs with ':' and '/', hrefs percent-encoded), ``dotnet`` (WCF: preamble,
    boundary ``uuid:...+id=N`` quoted, 8bit root, Content-ID first, root last in start param order),
    ``root-last`` (attachments before the root part, which ``start`` names).
    """
    contents = contents if contents is not None else built.contents
    nl = b"\n" if style == "lf" else b"\r\n"
    if style == "percent":
        cids = {d: f"urn:ihe:iti:xds-b:2007/{i}@{d}" for i, d in enumerate(contents)}
    elif style == "dotnet":
        cids = {d: f"http://tempuri.org/1/63724{i}" for i, d in enumerate(contents)}
    else:
        cids = {d: f"{i + 1}.{AXIS2_ID}@apache.org" for i, d in enumerate(contents)}
    pnr = _documents_to_includes(built.xml, cids, encode_href=style in ("percent", "dotnet"))
    envelope = soap_envelope(ACTION_ITI41, pnr, to="http://localhost/repository")
    root_cid = "http://tempuri.org/0" if style == "dotnet" else f"0.{AXIS2_ID}@apache.org"
    boundary = "uuid:376733a6-6a2d-4583-a687-04c08acf6a49+id=17" if style == "dotnet" else f"MIMEBoundary_{AXIS2_ID}"
    bracket = (lambda c: c) if style == "no-brackets" else (lambda c: f"<{c}>")

    def part(headers: list[tuple[str, str]], body: bytes) -> bytes:
        head = b"".join(f"{k}: {v}".encode() + nl for k, v in headers)
        return b"--" + boundary.encode() + nl + head + nl + body + nl

    if style == "dotnet":
        root_headers = [("Content-ID", bracket(root_cid)), ("Content-Transfer-Encoding", "8bit"),
                        ("Content-Type", 'application/xop+xml;charset=utf-8;type="application/soap+xml"')]
    else:
        root_headers = [("Content-Type", 'application/xop+xml; charset=UTF-8; type="application/soap+xml"'),
                        ("Content-Transfer-Encoding", "binary"), ("Content-ID", bracket(root_cid))]
    root_part = part(root_headers, envelope)
    attachment_parts = []
    all_parts = {cids[d]: c for d, c in contents.items()}
    all_parts.update(extra_parts or {})
    for cid, data in all_parts.items():
        if cid in drop_parts:
            continue
        if style == "dotnet":
            headers = [("Content-ID", bracket(cid)), ("Content-Transfer-Encoding", "binary"),
                       ("Content-Type", "application/octet-stream")]
        else:
            headers = [("Content-Type", "application/octet-stream"), ("Content-Transfer-Encoding", "binary"),
                       ("Content-ID", bracket(cid))]
        attachment_parts.append(part(headers, data))
    ordered = [*attachment_parts, root_part] if style == "root-last" else [root_part, *attachment_parts]
    preamble = nl if style == "dotnet" else b""
    body = preamble + b"".join(ordered) + b"--" + boundary.encode() + b"--" + nl
    if style == "dotnet":
        ct = (f'multipart/related; type="application/xop+xml"; start="<{root_cid}>"; boundary="{boundary}"; '
              'start-info="application/soap+xml"')
    elif style == "no-brackets":
        ct = f'multipart/related; boundary={boundary}; type="application/xop+xml"'
    else:
        ct = (f'multipart/related; boundary={boundary}; type="application/xop+xml"; start="<{root_cid}>"; '
              f'start-info="application/soap+xml"; action="{ACTION_ITI41}"')
    return WireMessage(ct, body)


def inline_request(built: BuiltSubmission) -> WireMessage:
    """``built`` as a plain SOAP 1.2 request, documents inline base64."""
    return WireMessage(f'application/soap+xml; charset=UTF-8; action="{ACTION_ITI41}"',
                       soap_envelope(ACTION_ITI41, built.xml, to="http://localhost/repository"))


def reference_message(raw: bytes, new_ids: dict[str, str]) -> WireMessage:
    """A captured message from shared/reference/messages, its uniqueIds replaced by fresh ones.

    The captures come without their HTTP headers; the Content-Type is rebuilt from the first
    delimiter and the root part's Content-ID, as the sender's header would have said.
    """
    for old, new in new_ids.items():
        raw = raw.replace(old.encode(), new.encode())
    first = raw.lstrip(b"\r\n").split(b"\n", 1)[0].rstrip(b"\r")
    boundary = first[2:].decode()
    root_cid = re.search(rb"Content-ID:\s*<([^>]*)>", raw, re.IGNORECASE).group(1).decode()
    return WireMessage(f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
                       f'start="<{root_cid}>"; start-info="application/soap+xml"', raw)


def inline_content(message: WireMessage) -> bytes:
    """The (first) inline Document's bytes of a message (for checks)."""
    m = re.search(rb"<(?:\w+:)?Document id=\"[^\"]*\"\s*>([^<]*)</", message.body)
    return base64.b64decode(m.group(1)) if m else b""
