"""ITI-21 Patient Demographics Query (HL7 2.5 QBP^Q22 -> RSP^K22) answered from the identity feed.

The registry is the Patient Demographics Supplier of the region: the demographics ITI-8 stored
(PID-5 family and given name, PID-7 birth date, PID-8 sex) and every cross-referenced identifier.
The query (ITI TF-2a 3.21.4.1) names fields in QPD-3 as ``@PID.n[.c[.s]]^value`` repetitions:

- ``@PID.5.1`` / ``@PID.5.1.1`` family name, ``@PID.5.2`` given name: case-insensitive, ``*`` as
  wildcard (a trailing ``*`` is a prefix search);
- ``@PID.7`` / ``@PID.7.1`` birth date (YYYYMMDD; a time part is ignored), ``@PID.8`` sex (table 0001);
- ``@PID.3.1`` identifier, with ``@PID.3.4.1`` / ``@PID.3.4.2`` its assigning authority (namespace, OID),
  or ``@PID.3.4^namespace&OID&ISO``.

All given fields must match. QPD-8 "what domains returned" keeps only identifiers of those
assigning authorities, and only patients that have one (ITI TF-2a 3.21.4.2.2.5). RCP-2 (quantity
limited request, RD) caps the number of patients returned; continuation is not offered.

Answers (ITI TF-2a 3.21.4.2.2): AA/OK with one PID per patient (QAK-4..6 hit counts), AA/NF when no
one matches, AE/AE with ERR for a field it cannot search on, a malformed value or an unknown domain
(HL7 204 at QPD-8 rep n comp 4), AR for a wrong message type, event or version. Merged identifiers
name nobody any more and are not returned.

:func:`parse_pdq_query` and :func:`build_pdq_response` are pure; :func:`handle_pdq_query` is the
I/O edge. The client is :func:`ihe.hl7.pdq_query`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import hl7

from ihe.hl7 import (
    DATA_TYPE_ERROR,
    REQUIRED_FIELD_MISSING,
    TABLE_VALUE_NOT_FOUND,
    UNKNOWN_KEY_IDENTIFIER,
    ErrorLocation,
    HL7Error,
    Writer,
    cx_at,
    encode,
    get,
    has_segment,
    message_type,
    raw,
    repetition_count,
    version,
)
from ihe.metadata.model import Identifiable
from registry.patients import Demographics, PatientRecord, _like, known_authority
from registry.pix_query import check_qbp, qpd_error

if TYPE_CHECKING:
    import asyncpg

    from registry.app import Registry

PDQ_QUERY_NAME = "IHE PDQ Query"
MAX_PATIENTS = 100
SEX_CODES = frozenset({"A", "F", "M", "N", "O", "U"})

# QPD-3 field names (as sent, dots after "@PID.") -> the criterion they set.
_FIELDS = {
    "5": "family", "5.1": "family", "5.1.1": "family",
    "5.2": "given",
    "7": "birth_date", "7.1": "birth_date",
    "8": "sex",
    "3": "identifier", "3.1": "identifier",
    "3.4": "authority", "3.4.1": "namespace", "3.4.2": "oid", "3.4.3": "oid_type",
}


@dataclass(frozen=True, slots=True)
class PdqQuery:
    """The criteria of a QBP^Q22 (None: not given) and the domains of QPD-8 (empty: all)."""

    family: str | None = None
    given: str | None = None
    birth_date: str | None = None
    sex: str | None = None
    identifier: str | None = None
    namespace: str | None = None
    oid: str | None = None
    domains: tuple[Identifiable, ...] = ()
    limit: int = MAX_PATIENTS


def parse_pdq_query(message: hl7.Message) -> PdqQuery:
    """The query of a QBP^Q22, or HL7Error (AR: wrong type/event/version; AE: QPD/RCP content)."""
    check_qbp(message, "Q22", "PDQ")
    criteria: dict[str, str] = {}
    for rep in range(1, repetition_count(message, "QPD", 3) + 1):
        name = get(message, f"QPD.F3.R{rep}.C1")
        value = get(message, f"QPD.F3.R{rep}.C2")
        if not name and not value:
            continue
        m = re.fullmatch(r"@?PID\.(\d+(?:\.\d+){0,2})", name.strip(), re.IGNORECASE)
        key = _FIELDS.get(m.group(1)) if m else None
        if key is None:
            raise qpd_error(f"QPD-3 repetition {rep}: cannot search on {name or '(no field name)'}; supported are "
                             "@PID.3.1, @PID.3.4(.1/.2), @PID.5.1, @PID.5.2, @PID.7 and @PID.8",
                             TABLE_VALUE_NOT_FOUND, 3, rep, 1)
        if not value:
            continue
        if key == "authority":  # @PID.3.4^namespace&oid&ISO: the HD with its subcomponents
            for part, sub in (("namespace", 1), ("oid", 2)):
                if text := get(message, f"QPD.F3.R{rep}.C2.S{sub}"):
                    criteria[part] = text
            continue
        if key in criteria and criteria[key] != value:
            raise qpd_error(f"QPD-3 gives {name} twice", DATA_TYPE_ERROR, 3, rep, 2)
        criteria[key] = value
        if key == "birth_date":
            date = value[:8]
            try:
                if not re.fullmatch(r"\d{8}", date):
                    raise ValueError(date)
                datetime.strptime(date, "%Y%m%d")
            except ValueError:
                raise qpd_error(f"QPD-3 repetition {rep}: birth date {value!r} is not YYYYMMDD", DATA_TYPE_ERROR,
                                 3, rep, 2) from None
            criteria[key] = date
        elif key == "sex":
            criteria[key] = value.upper()
            if criteria[key] not in SEX_CODES:
                raise qpd_error(f"QPD-3 repetition {rep}: sex {value!r} is not in HL7 table 0001 "
                                 f"({', '.join(sorted(SEX_CODES))})", TABLE_VALUE_NOT_FOUND, 3, rep, 2)
    criteria.pop("oid_type", None)
    if not criteria.keys() - {"namespace", "oid"}:
        raise qpd_error("QPD-3 names no search field with a value (e.g. @PID.5.1^SMITH)", REQUIRED_FIELD_MISSING, 3)
    domains = []
    for rep in range(1, repetition_count(message, "QPD", 8) + 1):
        domain = cx_at(message, "QPD", 8, rep)
        if domain is None:
            continue
        if not (domain.authority_oid or domain.authority_namespace):
            raise qpd_error(f"QPD-8 repetition {rep} names no assigning authority (CX-4)", REQUIRED_FIELD_MISSING,
                             8, rep, 4)
        domains.append(domain)
    limit = MAX_PATIENTS
    quantity = get(message, "RCP.F2.R1.C1") if has_segment(message, "RCP") else ""
    if quantity:
        if not quantity.isdigit() or int(quantity) < 1:
            raise HL7Error("AE", f"RCP-2 quantity {quantity!r} is not a positive number", DATA_TYPE_ERROR,
                           ErrorLocation("RCP", 1, 2, 1, 1))
        limit = min(int(quantity), MAX_PATIENTS)
    return PdqQuery(domains=tuple(domains), limit=limit, **criteria)


def build_pdq_response(request: hl7.Message, ack_code: str, status: str, patients: list[PatientRecord] | None = None,
                       error: HL7Error | None = None, total: int | None = None) -> str:
    """RSP^K22: MSH, MSA, [ERR], QAK (tag, status, name, hits), QPD echoed, one PID per patient."""
    w = Writer(request)
    ver = version(request) or "2.5"
    segments = [w.header(request, w.components("RSP", "K22", "RSP_K21"), ver),
                w.segment("MSA", ack_code, raw(request, "MSH", 10))]
    if error is not None:
        segments.append(w.err(error, ver))
    patients = patients or []
    hits = [] if status != "OK" else [str(total if total is not None else len(patients)), str(len(patients)),
                                      str(max((total or len(patients)) - len(patients), 0))]
    segments.append(w.segment("QAK", raw(request, "QPD", 2), status, raw(request, "QPD", 1), *hits))
    if has_segment(request, "QPD"):
        segments.append(str(request.segment("QPD")))
    for n, patient in enumerate(patients, start=1):
        d = patient.demographics
        segments.append(w.segment(
            "PID", str(n), "", w.repetition.join(w.cx(i) for i in patient.identifiers), "",
            w.components(d.family, d.given), "", w.text(d.birth_date), w.text(d.sex)))
    return encode(segments)


async def _recognised(conn: asyncpg.Connection, registry: Registry, domain: Identifiable) -> bool:
    if domain.authority_oid and domain.authority_oid == registry.settings.affinity_domain_oid:
        return True
    return any([await known_authority(conn, d) for d in (domain.authority_oid, domain.authority_namespace) if d])


_SEARCH_SQL = """
SELECT p.id, p.family_name, p.given_name, p.birth_date, p.sex,
       array_agg(i.id_value ORDER BY i.authority, i.id_value) AS ids,
       array_agg(i.authority_oid ORDER BY i.authority, i.id_value) AS oids,
       array_agg(i.authority_namespace ORDER BY i.authority, i.id_value) AS namespaces,
       count(*) OVER () AS total
FROM patient p JOIN patient_identifier i ON i.patient = p.id
WHERE p.merged_into IS NULL
  AND ($1::text IS NULL OR p.family_name ILIKE $1) AND ($2::text IS NULL OR p.given_name ILIKE $2)
  AND ($3::text IS NULL OR p.birth_date = $3) AND ($4::text IS NULL OR p.sex = $4)
  AND ($5::text IS NULL OR EXISTS (SELECT 1 FROM patient_identifier q WHERE q.patient = p.id AND q.id_value = $5
       AND ($6::text IS NULL OR q.authority_namespace = $6) AND ($7::text IS NULL OR q.authority_oid = $7)))
  AND ($8::text[] IS NULL OR i.authority_oid = ANY($8) OR i.authority_namespace = ANY($8))
GROUP BY p.id
ORDER BY lower(p.family_name), lower(p.given_name), p.id
LIMIT $9
"""


async def find_pdq_patients(conn: asyncpg.Connection, registry: Registry,
                            query: PdqQuery) -> tuple[list[PatientRecord], int]:
    """The surviving patients matching every criterion (identifiers limited to the domains) and the total."""
    for rep, domain in enumerate(query.domains, start=1):
        if not await _recognised(conn, registry, domain):
            name = domain.authority_oid or domain.authority_namespace
            raise qpd_error(f"requested domain {name} (QPD-8 repetition {rep}) is not known to this supplier",
                             UNKNOWN_KEY_IDENTIFIER, 8, rep, 4)
    wanted = [d for domain in query.domains for d in (domain.authority_oid, domain.authority_namespace) if d]
    rows = await conn.fetch(
        _SEARCH_SQL, _like(query.family), _like(query.given), query.birth_date, query.sex, query.identifier,
        query.namespace, query.oid, wanted or None, query.limit)
    patients = [
        PatientRecord(
            r["id"], Demographics(r["family_name"], r["given_name"], r["birth_date"], r["sex"]),
            tuple(Identifiable(i, o, n) for i, o, n in zip(r["ids"], r["oids"], r["namespaces"], strict=True)))
        for r in rows
    ]
    return patients, (rows[0]["total"] if rows else 0)


async def handle_pdq_query(registry: Registry, message: hl7.Message) -> str:
    """ITI-21: answer a QBP^Q22 with an RSP^K22."""
    try:
        query = parse_pdq_query(message)
        async with registry.pool.acquire() as conn:
            patients, total = await find_pdq_patients(conn, registry, query)
    except HL7Error as exc:
        return build_pdq_response(message, exc.ack_code, exc.ack_code, error=exc)
    if not patients:
        return build_pdq_response(message, "AA", "NF")
    return build_pdq_response(message, "AA", "OK", patients, total=total)


async def handle_qbp(registry: Registry, message: hl7.Message) -> str:
    """A QBP on the registry's listener: Q22 is ITI-21 (PDQ), anything else goes to ITI-9 (PIX), which says why."""
    from registry.pix_query import handle_pix_query

    if message_type(message)[1] == "Q22":
        return await handle_pdq_query(registry, message)
    return await handle_pix_query(registry, message)
