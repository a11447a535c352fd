"""ITI-8 Patient Identity Feed (HL7 v2.3.1 / 2.5 ADT) into the registry, and the MLLP listener wiring.

ADT A01/A04/A05/A08 create or update one patient with every PID-3 identifier as a
cross-reference; A40 merges MRG-1 into PID-3 (ITI TF-2a 3.8.4.2.3; see registry.patients).
The answer is an original-mode ACK: AA, AE (content: missing or unknown identifiers...,
with an ERR saying what and where) or AR (message type, event, version, processing id;
internal errors). The same listener answers ITI-9 PIX queries (registry.pix_query),
dispatched on MSH-9.

Parsing a message into a command is pure (:func:`parse_feed`); :func:`handle_feed` is the
thin I/O edge that applies it in one transaction.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import hl7

from ihe.hl7 import (
    DATA_TYPE_ERROR,
    DUPLICATE_KEY_IDENTIFIER,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    UNSUPPORTED_EVENT_CODE,
    UNSUPPORTED_MESSAGE_TYPE,
    ErrorLocation,
    HL7Error,
    build_ack,
    check_header,
    cx_at,
    get,
    has_segment,
    message_type,
    repetition_count,
)
from ihe.metadata.model import Identifiable
from ihe.nhs import NHS_NUMBER_OID, nhs_number_problem
from registry.patients import (
    Demographics,
    IdentifierConflict,
    PatientIdentityError,
    UnknownPatient,
    merge_patients,
    record_patient,
)

if TYPE_CHECKING:
    import asyncio

    from registry.app import Registry

log = logging.getLogger(__name__)

RECORD_EVENTS = frozenset({"A01", "A03", "A04", "A05", "A08"})  # A03 discharge: for the access policy
MERGE_EVENT = "A40"
SEX_CODES = frozenset({"A", "F", "M", "N", "O", "U"})  # HL7 table 0001
HL7_NULL = '""'  # an explicit "delete this value"


@dataclass(frozen=True, slots=True)
class RecordPatient:
    """A01/A04/A05/A08: these identifiers name one patient with these demographics."""

    identifiers: tuple[Identifiable, ...]
    demographics: Demographics
    event: str = "A01"
    facility: tuple[str | None, ...] = ()  # MSH-4 namespace id and universal id: whose feed (access policy)


@dataclass(frozen=True, slots=True)
class MergePatients:
    """A40: each (surviving, merged) pair is merged; then PID-3 and demographics are recorded."""

    pairs: tuple[tuple[Identifiable, Identifiable], ...]
    identifiers: tuple[Identifiable, ...]
    demographics: Demographics


def _ae(reason: str, code: str, segment: str, field: int = 0, repetition: int = 0, component: int = 0) -> HL7Error:
    return HL7Error("AE", reason, code, ErrorLocation(segment, 1, field, repetition, component))


def identifiers_of(message: hl7.Message, segment: str, field: int) -> tuple[Identifiable, ...]:
    """Every CX of ``segment``-``field``; each must have an id (CX-1) and an assigning authority (CX-4).

    An NHS number (assigning authority the NHS number OID) must pass its check digit: a wrong
    one is a typo at the source, and recording it would file documents under someone else's id.
    """
    found: list[Identifiable] = []
    for rep in range(1, repetition_count(message, segment, field) + 1):
        cx = cx_at(message, segment, field, rep)
        if cx is None:
            continue
        if not cx.id:
            raise _ae(f"{segment}-{field} repetition {rep} has no ID number (CX-1)", REQUIRED_FIELD_MISSING,
                      segment, field, rep, 1)
        if not (cx.authority_oid or cx.authority_namespace):
            raise _ae(f"{segment}-{field} identifier {cx.id!r} has no assigning authority (CX-4)",
                      REQUIRED_FIELD_MISSING, segment, field, rep, 4)
        if cx.authority_oid == NHS_NUMBER_OID and (problem := nhs_number_problem(cx.id)):
            raise _ae(f"{segment}-{field} repetition {rep}: {problem}", DATA_TYPE_ERROR, segment, field, rep, 1)
        if cx not in found:
            found.append(cx)
    if not found:
        raise _ae(f"{segment}-{field} carries no patient identifier", REQUIRED_FIELD_MISSING, segment, field)
    return tuple(found)


def _value(message: hl7.Message, key: str) -> str | None:
    """None when not sent (keep what is known), "" for the HL7 null "" (clear it)."""
    value = get(message, key)
    if value == HL7_NULL:
        return ""
    return value or None


def demographics_of(message: hl7.Message) -> Demographics:
    """PID-5 (first name repetition: family, given), PID-7 (date part) and PID-8."""
    birth = _value(message, "PID.F7.R1.C1")
    if birth:
        date = birth[:8]
        formats = {4: "%Y", 6: "%Y%m", 8: "%Y%m%d"}
        try:
            if not re.fullmatch(r"\d+", date) or len(date) not in formats:
                raise ValueError(date)
            datetime.strptime(date, formats[len(date)])
        except ValueError:
            raise _ae(f"PID-7 date of birth {birth!r} is not an HL7 date (YYYY[MM[DD]])", DATA_TYPE_ERROR,
                      "PID", 7) from None
        birth = date
    sex = _value(message, "PID.F8")
    if sex:
        sex = sex.upper()
        if sex not in SEX_CODES:
            raise _ae(f"PID-8 administrative sex {sex!r} is not in HL7 table 0001 ({', '.join(sorted(SEX_CODES))})",
                      TABLE_VALUE_NOT_FOUND, "PID", 8)
    return Demographics(_value(message, "PID.F5.R1.C1"), _value(message, "PID.F5.R1.C2"), birth, sex)


def _same_domain(a: Identifiable, b: Identifiable) -> bool:
    if a.authority_oid and b.authority_oid:
        return a.authority_oid == b.authority_oid
    return bool(a.authority_namespace) and a.authority_namespace == b.authority_namespace


def parse_feed(message: hl7.Message) -> RecordPatient | MergePatients:
    """The command an ADT message asks for, or HL7Error (AR: not ours to take; AE: bad content)."""
    check_header(message)
    code, event = message_type(message)
    if code != "ADT":
        raise HL7Error("AR", f"message type {code or '(none)'} is not supported: this listener takes ADT "
                       "(ITI-8) and QBP^Q23 (ITI-9)", UNSUPPORTED_MESSAGE_TYPE, ErrorLocation("MSH", 1, 9))
    if event not in RECORD_EVENTS and event != MERGE_EVENT:
        raise HL7Error("AR", f"ADT event {event or '(none)'} is not supported; use A01, A03, A04, A05, A08 or A40",
                       UNSUPPORTED_EVENT_CODE, ErrorLocation("MSH", 1, 9))
    if not has_segment(message, "PID"):
        raise _ae("the message has no PID segment", REQUIRED_FIELD_MISSING, "PID")
    identifiers = identifiers_of(message, "PID", 3)
    demographics = demographics_of(message)
    if event in RECORD_EVENTS:
        facility = (get(message, "MSH.F4.R1.C1") or None, get(message, "MSH.F4.R1.C2") or None)
        return RecordPatient(identifiers, demographics, event, facility)
    if not has_segment(message, "MRG"):
        raise _ae("A40 needs an MRG segment naming the merged patient", REQUIRED_FIELD_MISSING, "MRG")
    merged_ids = identifiers_of(message, "MRG", 1)
    pairs = []
    for merged in merged_ids:
        surviving = next((s for s in identifiers if _same_domain(s, merged) and s.id != merged.id), None)
        if surviving is None:
            raise _ae(f"PID-3 has no identifier in the assigning authority of MRG-1 {merged.to_cx()} to merge it "
                      "into", REQUIRED_FIELD_MISSING, "PID", 3)
        pairs.append((surviving, merged))
    keep = tuple(i for i in identifiers if i not in merged_ids)
    return MergePatients(tuple(pairs), keep, demographics)


async def apply_feed(conn, command: RecordPatient | MergePatients) -> int:
    """Apply one command in one transaction; PatientIdentityError when it contradicts the registry.
    Returns the patient's row id."""
    if isinstance(command, RecordPatient):
        return await record_patient(conn, list(command.identifiers), command.demographics)
    async with conn.transaction():
        for surviving, merged in command.pairs:
            result = await merge_patients(conn, surviving, merged)
            log.info("merged patient id %s into %s: %d document entries, %d submission sets, %d folders moved%s",
                     merged.to_cx(), surviving.to_cx(), result.document_entries, result.submission_sets,
                     result.folders, " (already merged)" if result.already_merged else "")
        return await record_patient(conn, list(command.identifiers), command.demographics)


def identity_error(exc: PatientIdentityError) -> HL7Error:
    """The AE for a feed that contradicts what the registry knows."""
    if isinstance(exc, UnknownPatient):
        if exc.role == "merged":
            return _ae(exc.reason, UNKNOWN_KEY_IDENTIFIER, "MRG", 1)
        return _ae(exc.reason, UNKNOWN_KEY_IDENTIFIER, "PID", 3)
    if isinstance(exc, IdentifierConflict):
        return _ae(exc.reason, DUPLICATE_KEY_IDENTIFIER, "PID", 3)
    return _ae(exc.reason, DUPLICATE_KEY_IDENTIFIER, "MRG", 1)


async def handle_feed(registry: Registry, message: hl7.Message) -> str:
    """ITI-8: apply an ADT message and answer its ACK."""
    try:
        command = parse_feed(message)
    except HL7Error as exc:
        return build_ack(message, exc.ack_code, exc)
    try:
        async with registry.pool.acquire() as conn, conn.transaction():
            patient = await apply_feed(conn, command)
            if registry.policy is not None and isinstance(command, RecordPatient):
                from registry.access_policy import record_adt

                await record_adt(conn, registry.policy, patient, command.event, command.facility)
    except PatientIdentityError as exc:
        return build_ack(message, "AE", identity_error(exc))
    return build_ack(message, "AA")


async def start_patient_feed(registry: Registry) -> asyncio.Server:
    """The MLLP listener on ``mllp_host:mllp_port``: ADT -> ITI-8, QBP^Q23 -> ITI-9."""
    from ihe.audit.middleware import audited_hl7
    from registry.mllp import start_mllp_server
    from registry.pdq_query import handle_qbp

    async def route(message: hl7.Message) -> str | None:
        code, _ = message_type(message)
        if code == "ACK":
            return None  # never acknowledge an acknowledgement
        if code == "QBP":
            return await handle_qbp(registry, message)  # ITI-9 PIX or ITI-21 PDQ
        return await handle_feed(registry, message)

    route = audited_hl7(route, registry.auditor, receiver="xds-registry", server_nap=registry.settings.mllp_host)
    from ihe import tls

    return await start_mllp_server(registry.settings.mllp_host, registry.settings.mllp_port, route, tls.node())
