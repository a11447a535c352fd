"""ITI-9 PIX Query (HL7 2.5 QBP^Q23 -> RSP^K23) answered from the registry's cross-references.

The answers follow ITI TF-2a 3.9.4.2.2.6:
- identifier and domains recognised, other identifiers found: AA, QAK-2 OK, one PID whose PID-3
  lists them (never the queried one) and whose PID-5 is an empty name then a name of type S
  (pseudo-name), so that no demographics are disclosed;
- recognised but nothing in the requested domains: AA, QAK-2 NF, no PID, no ERR;
- identifier not known (case 3) or its assigning authority not known (case 4): AE, QAK-2 AE,
  ERR 204 (unknown key identifier) at QPD-3 component 1 or 4;
- a requested domain (QPD-4 repetition n) not known (case 5): AE, ERR 204 at QPD-4 rep n comp 4.
A merged identifier names nobody any more, so it is answered as not known.

A domain is "recognised" when it is the affinity domain or assigns some identifier the registry
holds. The client side (``pix_query``) is :func:`ihe.hl7.pix_query`, shared with the imaging source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import hl7

from ihe.hl7 import (
    PIX_QUERY_VERSIONS,
    REQUIRED_FIELD_MISSING,
    UNKNOWN_KEY_IDENTIFIER,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    ErrorLocation,
    HL7Error,
    Writer,
    check_header,
    cx_at,
    encode,
    has_segment,
    message_type,
    pix_query,
    raw,
    repetition_count,
    version,
)
from ihe.metadata.model import Identifiable
from registry.patients import PatientIdState, cross_references, known_authority, patient_of

if TYPE_CHECKING:
    import asyncpg

    from registry.app import Registry

__all__ = ["PixQuery", "build_pix_response", "handle_pix_query", "parse_pix_query", "pix_query"]


@dataclass(frozen=True, slots=True)
class PixQuery:
    identifier: Identifiable
    # QPD-4 "what domains returned": only the assigning authority of each is set; empty means all.
    domains: tuple[Identifiable, ...] = ()


def qpd_error(reason: str, code: str, field: int, repetition: int = 0, component: int = 0) -> HL7Error:
    return HL7Error("AE", reason, code, ErrorLocation("QPD", 1, field, repetition, component))


def check_qbp(message: hl7.Message, event_wanted: str, query: str) -> None:
    """A QBP of ``event_wanted`` (Q23 PIX, Q22 PDQ) with a QPD segment, or HL7Error (AR: wrong version,
    type or event; AE: no QPD). The PIX and PDQ queries share this frame."""
    check_header(message, PIX_QUERY_VERSIONS)
    code, event = message_type(message)
    if code != "QBP":
        raise HL7Error("AR", f"message type {code} is not a {query} query", UNSUPPORTED_MESSAGE_TYPE,
                       ErrorLocation("MSH", 1, 9))
    if event != event_wanted:
        raise HL7Error("AR", f"QBP event {event or '(none)'} is not supported here; the {query} query is "
                             f"QBP^{event_wanted}", UNSUPPORTED_EVENT_CODE, ErrorLocation("MSH", 1, 9))
    if not has_segment(message, "QPD"):
        raise HL7Error("AE", "the query has no QPD segment", REQUIRED_FIELD_MISSING, ErrorLocation("QPD"))


def parse_pix_query(message: hl7.Message) -> PixQuery:
    """The query of a QBP^Q23, or HL7Error (AR: wrong type/version; AE: QPD content)."""
    check_qbp(message, "Q23", "PIX")
    identifier = cx_at(message, "QPD", 3, 1)
    if identifier is None or not identifier.id:
        raise qpd_error("QPD-3 has no patient identifier (CX-1)", REQUIRED_FIELD_MISSING, 3, 1, 1)
    if not (identifier.authority_oid or identifier.authority_namespace):
        raise qpd_error(f"QPD-3 identifier {identifier.id!r} has no assigning authority (CX-4)",
                         REQUIRED_FIELD_MISSING, 3, 1, 4)
    domains = []
    for rep in range(1, repetition_count(message, "QPD", 4) + 1):
        domain = cx_at(message, "QPD", 4, rep)
        if domain is None:
            continue
        if not (domain.authority_oid or domain.authority_namespace):
            raise qpd_error(f"QPD-4 repetition {rep} names no assigning authority (CX-4)",
                             REQUIRED_FIELD_MISSING, 4, rep, 4)
        domains.append(domain)
    return PixQuery(identifier, tuple(domains))


def build_pix_response(request: hl7.Message, ack_code: str, status: str,
                       identifiers: list[Identifiable] | None = None, error: HL7Error | None = None) -> str:
    """RSP^K23: MSH, MSA, [ERR], QAK (query tag, status), QPD echoed, [PID with the identifiers]."""
    w = Writer(request)
    ver = version(request) or "2.5"
    segments = [w.header(request, w.components("RSP", "K23", "RSP_K23"), ver),
                w.segment("MSA", ack_code, raw(request, "MSH", 10))]
    if error is not None:
        segments.append(w.err(error, ver))
    segments.append(w.segment("QAK", raw(request, "QPD", 2), status))
    if has_segment(request, "QPD"):
        segments.append(str(request.segment("QPD")))
    if identifiers:
        pseudo_name = w.repetition + w.component * 6 + "S"
        segments.append(w.segment("PID", "", "", w.repetition.join(w.cx(i) for i in identifiers), "", pseudo_name))
    return encode(segments)


async def _recognised(conn: asyncpg.Connection, registry: Registry, domain: Identifiable) -> bool:
    if domain.authority_oid and domain.authority_oid == registry.settings.affinity_domain_oid:
        return True
    return any([await known_authority(conn, d) for d in (domain.authority_oid, domain.authority_namespace) if d])


async def answer_pix_query(conn: asyncpg.Connection, registry: Registry, query: PixQuery) -> list[Identifiable]:
    """The other identifiers of the queried patient in the requested domains; HL7Error for cases 3-5."""
    if not await _recognised(conn, registry, query.identifier):
        raise qpd_error(f"assigning authority of {query.identifier.to_cx()} is not known to this PIX manager",
                         UNKNOWN_KEY_IDENTIFIER, 3, 1, 4)
    for rep, domain in enumerate(query.domains, start=1):
        if not await _recognised(conn, registry, domain):
            name = domain.authority_oid or domain.authority_namespace
            raise qpd_error(f"requested domain {name} (QPD-4 repetition {rep}) is not known to this PIX manager",
                             UNKNOWN_KEY_IDENTIFIER, 4, rep, 4)
    _, state = await patient_of(conn, query.identifier)
    if state is not PatientIdState.KNOWN:
        why = "was merged into another patient" if state is PatientIdState.MERGED else "is not known"
        raise qpd_error(f"patient identifier {query.identifier.to_cx()} {why}", UNKNOWN_KEY_IDENTIFIER, 3, 1, 1)
    wanted = [d for domain in query.domains for d in (domain.authority_oid, domain.authority_namespace) if d]
    return await cross_references(conn, query.identifier, wanted or None)


async def handle_pix_query(registry: Registry, message: hl7.Message) -> str:
    """ITI-9: answer a QBP^Q23 with an RSP^K23."""
    try:
        query = parse_pix_query(message)
        async with registry.pool.acquire() as conn:
            identifiers = await answer_pix_query(conn, registry, query)
    except HL7Error as exc:
        return build_pix_response(message, exc.ack_code, exc.ack_code, error=exc)
    if not identifiers:
        return build_pix_response(message, "AA", "NF")
    return build_pix_response(message, "AA", "OK", identifiers)
