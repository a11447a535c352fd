"""HL7 v2 for the identity transactions (ITI-8, ITI-9): reading fields, building answers, PIX client.

Parsing and MLLP framing are python-hl7's (``hl7.parse``, ``hl7.mllp``); this module adds what
IHE needs on top: lenient field access (absent means empty, never an IndexError), CX <->
:class:`Identifiable`, and the answer segments (MSH with sender/receiver swapped, MSA, ERR in
the form of the request's version), so that the registry's listener and the imaging source's
PIX client share one implementation.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import ssl
from dataclasses import dataclass
from datetime import UTC, datetime

import hl7
from hl7.mllp import open_hl7_connection

from ihe import tls
from ihe.metadata.model import Identifiable

SUPPORTED_VERSIONS = frozenset({"2.3.1", "2.5", "2.5.1"})
PIX_QUERY_VERSIONS = frozenset({"2.5", "2.5.1"})
PIX_QUERY_NAME = "IHE PIX Query"
MAX_MESSAGE_BYTES = 1024 * 1024

# HL7 table 0357 (message error condition codes) used here.
REQUIRED_FIELD_MISSING = "101"
DATA_TYPE_ERROR = "102"
TABLE_VALUE_NOT_FOUND = "103"
UNSUPPORTED_MESSAGE_TYPE = "200"
UNSUPPORTED_EVENT_CODE = "201"
UNSUPPORTED_PROCESSING_ID = "202"
UNSUPPORTED_VERSION_ID = "203"
UNKNOWN_KEY_IDENTIFIER = "204"
DUPLICATE_KEY_IDENTIFIER = "205"
APPLICATION_INTERNAL_ERROR = "207"
ERROR_TEXT = {
    "100": "Segment sequence error",
    REQUIRED_FIELD_MISSING: "Required field missing",
    DATA_TYPE_ERROR: "Data type error",
    TABLE_VALUE_NOT_FOUND: "Table value not found",
    UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    UNSUPPORTED_EVENT_CODE: "Unsupported event code",
    UNSUPPORTED_PROCESSING_ID: "Unsupported processing id",
    UNSUPPORTED_VERSION_ID: "Unsupported version id",
    UNKNOWN_KEY_IDENTIFIER: "Unknown key identifier",
    DUPLICATE_KEY_IDENTIFIER: "Duplicate key identifier",
    APPLICATION_INTERNAL_ERROR: "Application internal error",
}

_DEFAULT_HEADER = "MSH|^~\\&|"


@dataclass(frozen=True, slots=True)
class ErrorLocation:
    """ERR-2 (2.5 ERL) / ERR-1 (2.3.1): where in the request the fault is; 0 means "not given"."""

    segment: str
    sequence: int = 1
    field: int = 0
    repetition: int = 0
    component: int = 0


class HL7Error(Exception):
    """A request answered with MSA-1 ``ack_code`` (AE or AR), an HL7 table 0357 code and a reason.

    ``reason`` is for the sender's integration engineer: it says what is wrong and where.
    """

    def __init__(self, ack_code: str, reason: str, code: str, location: ErrorLocation | None = None) -> None:
        super().__init__(reason)
        self.ack_code = ack_code
        self.reason = reason
        self.code = code
        self.location = location


# --- reading --------------------------------------------------------------------------------


def decode(block: bytes) -> str:
    """The text of one MLLP block: UTF-8 (ASCII included), else ISO 8859-1, which never fails."""
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("latin-1")


def parse_message(text: str) -> hl7.Message:
    """Parse one HL7 v2 message (segments separated by CR, LF or CRLF) or raise an AR HL7Error."""
    text = text.replace("\r\n", "\r").replace("\n", "\r").strip()
    if not text.startswith("MSH") or len(text) < 8:
        raise HL7Error("AR", "not an HL7 v2 message: it must start with an MSH segment", REQUIRED_FIELD_MISSING,
                       ErrorLocation("MSH"))
    try:
        message = hl7.parse(text)
    except Exception as exc:  # python-hl7 raises assorted errors on garbage; all mean the same here
        raise HL7Error("AR", f"unparseable HL7 v2 message: {exc}", REQUIRED_FIELD_MISSING,
                       ErrorLocation("MSH")) from None
    return message


def get(message: hl7.Message, key: str) -> str:
    """The unescaped value at accessor ``key`` (e.g. ``PID.F3.R2.C4.S2``), "" when absent."""
    try:
        value = message[key]
    except (KeyError, IndexError, ValueError):
        return ""
    return "" if value is None else str(value).strip()


def raw(message: hl7.Message, segment: str, field: int) -> str:
    """The field exactly as received (escapes kept), for echoing it back; "" when absent."""
    try:
        return str(message.segment(segment)(field))
    except (KeyError, IndexError):
        return ""


def has_segment(message: hl7.Message, segment: str) -> bool:
    try:
        message.segment(segment)
    except KeyError:
        return False
    return True


def repetition_count(message: hl7.Message, segment: str, field: int) -> int:
    try:
        return len(message.segment(segment)(field))
    except (KeyError, IndexError):
        return 0


def cx_at(message: hl7.Message, segment: str, field: int, repetition: int) -> Identifiable | None:
    """The CX at ``segment``-``field`` repetition ``repetition`` (1-based); None when it is empty.

    CX-4 is the assigning authority ``namespace&universal id&type``; the universal id is kept
    as the OID (XDS requires type ISO, other feeds rarely send another type).
    """
    base = f"{segment}.F{field}.R{repetition}"
    ident = get(message, f"{base}.C1")
    namespace = get(message, f"{base}.C4.S1")
    oid = get(message, f"{base}.C4.S2")
    if not (ident or namespace or oid):
        return None
    return Identifiable(ident, oid or None, namespace or None)


def message_type(message: hl7.Message) -> tuple[str, str]:
    """MSH-9 message code and trigger event, upper case."""
    return get(message, "MSH.F9.R1.C1").upper(), get(message, "MSH.F9.R1.C2").upper()


def version(message: hl7.Message) -> str:
    return get(message, "MSH.F12.R1.C1") or get(message, "MSH.F12")


def check_header(message: hl7.Message, versions: frozenset[str] = SUPPORTED_VERSIONS) -> None:
    """Reject (AR) what no handler can take: no control id, unknown processing id or version."""
    if not get(message, "MSH.F10"):
        raise HL7Error("AR", "MSH-10 (message control id) is empty", REQUIRED_FIELD_MISSING,
                       ErrorLocation("MSH", 1, 10))
    processing = get(message, "MSH.F11.R1.C1")
    if processing and processing.upper() not in {"P", "T", "D"}:
        raise HL7Error("AR", f"MSH-11 processing id {processing!r} is not supported (P, T or D)",
                       UNSUPPORTED_PROCESSING_ID, ErrorLocation("MSH", 1, 11))
    ver = version(message)
    if ver not in versions:
        raise HL7Error("AR", f"HL7 version {ver or '(none)'} in MSH-12 is not supported; use one of "
                       f"{', '.join(sorted(versions))}", UNSUPPORTED_VERSION_ID, ErrorLocation("MSH", 1, 12))


# --- building -------------------------------------------------------------------------------

_counter = itertools.count(1)


def new_control_id() -> str:
    """A message control id unique for this process (ST, at most 20 characters)."""
    return f"{datetime.now(UTC):%y%m%d%H%M%S}{next(_counter) % 10**8:08d}"


class Writer:
    """Builds segments with the separators of the message being answered, escaping values."""

    def __init__(self, message: hl7.Message | None = None) -> None:
        self.message = message if message is not None else hl7.parse(_DEFAULT_HEADER)
        seps = self.message.separators  # segment, field, repetition, component, subcomponent
        self.field, self.repetition, self.component, self.subcomponent = seps[1], seps[2], seps[3], seps[4]
        self.escape_char = self.message.esc

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape_char + self.subcomponent

    def text(self, value: str | None) -> str:
        """``value`` escaped so that no separator in it is taken for structure."""
        return hl7.util.escape(self.message, value) if value else ""

    def components(self, *values: str | None) -> str:
        return self.component.join(self.text(v) for v in values).rstrip(self.component)

    def cx(self, identifier: Identifiable) -> str:
        """``id^^^namespace&oid&ISO`` (only what is known)."""
        authority = self.text(identifier.authority_namespace)
        if identifier.authority_oid:
            authority += self.subcomponent + self.text(identifier.authority_oid) + self.subcomponent + "ISO"
        return self.component.join([self.text(identifier.id), "", "", authority]).rstrip(self.component)

    def segment(self, name: str, *fields: str) -> str:
        return self.field.join([name, *fields]).rstrip(self.field)

    def header(self, request: hl7.Message | None, message_type: str, ver: str | None = None) -> str:
        """MSH of an answer: sending and receiving application/facility of the request swapped."""
        swap = [raw(request, "MSH", n) for n in (5, 6, 3, 4)] if request is not None else ["", "", "", ""]
        processing = (raw(request, "MSH", 11) if request is not None else "") or "P"
        ver = ver or (raw(request, "MSH", 12) if request is not None else "") or "2.5"
        stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
        return self.field.join(["MSH", self.encoding_characters, *swap, stamp, "", message_type, new_control_id(),
                                processing, ver])

    def err(self, error: HL7Error, ver: str) -> str:
        """ERR in the form of ``ver``: 2.3.1 has only ERR-1 (CM_ELD); 2.5 has ERR-2/3/4/8."""
        loc = error.location or ErrorLocation("")
        text = ERROR_TEXT.get(error.code, "")
        if ver.startswith("2.3"):
            code = self.subcomponent.join([error.code, self.text(text), "HL70357"])
            eld = self.component.join([loc.segment, str(loc.sequence) if loc.segment else "",
                                       str(loc.field or ""), code])
            return self.segment("ERR", eld)
        erl = self.component.join(
            [loc.segment, str(loc.sequence) if loc.segment else ""]
            + [str(n) if n else "" for n in (loc.field, loc.repetition, loc.component)]
        ).rstrip(self.component)
        hl7_code = self.component.join([error.code, self.text(text), "HL70357"])
        return self.segment("ERR", "", erl, hl7_code, "E", "", "", "", self.text(error.reason))


def encode(segments: list[str]) -> str:
    return "\r".join(segments) + "\r"


def build_ack(request: hl7.Message | None, code: str = "AA", error: HL7Error | None = None) -> str:
    """The original-mode ACK of ``request``: ACK^<event>^ACK, MSA-2 = its MSH-10, ERR when ``error``.

    Without a parseable request (garbage on the wire) the ACK still goes out, with empty
    addressing, so that the sender learns why instead of waiting for a timeout.
    """
    w = Writer(request)
    event = get(request, "MSH.F9.R1.C2") if request is not None else ""
    ver = (version(request) if request is not None else "") or "2.5"
    segments = [
        w.header(request, w.components("ACK", event, "ACK") if event else "ACK", ver),
        w.segment("MSA", code, raw(request, "MSH", 10) if request is not None else "",
                  w.text(error.reason) if error else ""),
    ]
    if error is not None:
        segments.append(w.err(error, ver))
    return encode(segments)


# --- ITI-9 PIX query client ---------------------------------------------------------------------


class PixQueryError(Exception):
    """The PIX manager refused the query (AE/AR other than "identifier unknown") or did not answer."""


_OID = re.compile(r"^[0-2](\.(0|[1-9]\d*))+$")


def domain_cx(domain: str, w: Writer) -> str:
    """QPD-4 "what domains returned" repetition: only CX-4, by OID (ISO) or namespace id."""
    if _OID.match(domain):
        return w.component * 3 + w.subcomponent + w.text(domain) + w.subcomponent + "ISO"
    return w.component * 3 + w.text(domain)


def build_pix_query(identifier: Identifiable, domains: list[str] | None, *, query_tag: str,
                    sending_application: str = "XDS-I", sending_facility: str = "",
                    receiving_application: str = "XDS-REGISTRY", receiving_facility: str = "") -> str:
    """A QBP^Q23 (HL7 2.5) asking for the other identifiers of ``identifier``."""
    w = Writer()
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    msh = w.field.join(["MSH", w.encoding_characters, w.text(sending_application), w.text(sending_facility),
                        w.text(receiving_application), w.text(receiving_facility), stamp, "",
                        w.components("QBP", "Q23", "QBP_Q21"), new_control_id(), "P", "2.5"])
    qpd = w.segment("QPD", w.text(PIX_QUERY_NAME), w.text(query_tag), w.cx(identifier),
                    w.repetition.join(domain_cx(d, w) for d in domains or []))
    return encode([msh, qpd, w.segment("RCP", "I")])


def read_pix_response(text: str) -> list[Identifiable]:
    """The identifiers of an RSP^K23; [] for "not found" and for an identifier the manager does not know."""
    message = parse_message(text)
    ack = get(message, "MSA.F1")
    status = get(message, "QAK.F2")
    if ack == "AA":
        if status == "NF" or not has_segment(message, "PID"):
            return []
        return [i for n in range(1, repetition_count(message, "PID", 3) + 1)
                if (i := cx_at(message, "PID", 3, n)) is not None]
    location = get(message, "ERR.F2.R1.C1"), get(message, "ERR.F2.R1.C3")
    if ack == "AE" and location == ("QPD", "3"):
        return []  # ITI-9 case 3/4: the queried identifier (or its domain) is not known
    reason = get(message, "ERR.F8") or get(message, "MSA.F3") or get(message, "ERR.F3.R1.C2")
    raise PixQueryError(f"PIX query answered {ack or '(no MSA-1)'}/{status or '-'}: {reason or 'no reason given'}")


async def mllp_request(host: str, port: int, message: str, timeout: float) -> bytes:
    """Send one HL7 message over MLLP and return the answer's block; the caller maps the failures
    (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) to its transaction's error."""
    async with asyncio.timeout(timeout):
        try:
            reader, writer = await open_hl7_connection(host, port, limit=MAX_MESSAGE_BYTES,
                                                       **tls.connect_kwargs(host))
            tls.check_server(writer, host, port)
        except (ssl.SSLError, tls.PeerRefused) as exc:
            raise ConnectionError(tls.explain(exc, f"{host}:{port}")) from None
        try:
            writer.writeblock(message.encode("utf-8"))
            await writer.drain()
            return await reader.readblock()
        except ssl.SSLError as exc:  # TLS 1.3: a refused client certificate shows on the first read
            raise ConnectionError(tls.explain(exc, f"{host}:{port}")) from None
        finally:
            writer.close()


async def pix_query(host: str, port: int, identifier: Identifiable, domains: list[str] | None = None, *,
                    timeout: float = 10.0, sending_application: str = "XDS-I") -> list[Identifiable]:
    """ITI-9: the identifiers the PIX manager at ``host:port`` cross-references with ``identifier``.

    ``domains`` (OIDs or namespace ids) limit the answer; e.g. the imaging source asks for the
    NHS number of a hospital number with ``domains=[nhs_oid]``. An unknown identifier gives [].
    Raises PixQueryError when the manager refuses the query or does not answer in ``timeout``.
    """
    request = build_pix_query(identifier, domains, query_tag=new_control_id(),
                              sending_application=sending_application)
    try:
        block = await mllp_request(host, port, request, timeout)
    except TimeoutError:
        raise PixQueryError(f"no PIX query answer from {host}:{port} within {timeout}s") from None
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise PixQueryError(f"PIX query to {host}:{port} failed: {exc}") from None
    try:
        return read_pix_response(decode(block))
    except HL7Error as exc:
        raise PixQueryError(f"PIX query answer is not HL7: {exc.reason}") from None


# ITI-21 PDQ client: its own module (ihe.pdq), importable from here beside the PIX client. Resolved
# lazily (PEP 562) because ihe.pdq builds on this module.
_PDQ_NAMES = frozenset({"PdqPatient", "PdqQueryError", "pdq_query", "build_pdq_query", "read_pdq_response"})


def __getattr__(name: str):
    if name in _PDQ_NAMES:
        from ihe import pdq

        return getattr(pdq, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
