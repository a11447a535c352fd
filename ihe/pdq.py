"""ITI-21 Patient Demographics Query client (HL7 2.5 QBP^Q22 -> RSP^K22), re-exported by :mod:`ihe.hl7`.

The portal finds a patient by family name and birth date (or any of the demographics the
supplier indexes) at the registry's MLLP port; each answer carries every identifier of the patient,
so the caller picks the affinity-domain id (NHS number) from them.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime

from ihe.hl7 import (
    HL7Error,
    Writer,
    cx_at,
    decode,
    domain_cx,
    encode,
    get,
    mllp_request,
    new_control_id,
    parse_message,
    repetition_count,
)
from ihe.metadata.model import Identifiable

PDQ_QUERY_NAME = "IHE PDQ Query"


class PdqQueryError(Exception):
    """The supplier refused the query (AE/AR), answered something else, or did not answer."""


@dataclass(frozen=True, slots=True)
class PdqPatient:
    """One patient of an RSP^K22: its identifiers (PID-3) and demographics (PID-5, PID-7, PID-8)."""

    identifiers: tuple[Identifiable, ...]
    family: str | None = None
    given: str | None = None
    birth_date: str | None = None  # YYYYMMDD as the feed gave it
    sex: str | None = None

    def identifier_in(self, authority_oid: str) -> Identifiable | None:
        """The patient's identifier assigned by ``authority_oid`` (e.g. the NHS number), if any."""
        return next((i for i in self.identifiers if i.authority_oid == authority_oid), None)


def build_pdq_query(*, query_tag: str, family: str | None = None, given: str | None = None,
                    birth_date: str | None = None, sex: str | None = None, identifier: Identifiable | None = None,
                    domains: list[str] | None = None, limit: int | None = None, sending_application: str = "XDS-PORTAL",
                    receiving_application: str = "XDS-REGISTRY") -> str:
    """A QBP^Q22 (HL7 2.5) with one QPD-3 repetition per given trait and QPD-8 from ``domains``."""
    w = Writer()
    fields = [("@PID.5.1.1", family), ("@PID.5.2", given), ("@PID.7", birth_date), ("@PID.8", sex)]
    if identifier is not None:
        fields += [("@PID.3.1", identifier.id), ("@PID.3.4.1", identifier.authority_namespace),
                   ("@PID.3.4.2", identifier.authority_oid),
                   ("@PID.3.4.3", "ISO" if identifier.authority_oid else None)]
    qpd3 = w.repetition.join(w.components(name, value) for name, value in fields if value)
    if not qpd3:
        raise ValueError("a PDQ query needs at least one trait (family, given, birth_date, sex or identifier)")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    msh = w.field.join(["MSH", w.encoding_characters, w.text(sending_application), "",
                        w.text(receiving_application), "", stamp, "", w.components("QBP", "Q22", "QBP_Q21"),
                        new_control_id(), "P", "2.5"])
    qpd = w.segment("QPD", w.text(PDQ_QUERY_NAME), w.text(query_tag), qpd3, "", "", "", "",
                    w.repetition.join(domain_cx(d, w) for d in domains or []))
    rcp = w.segment("RCP", "I", w.components(str(limit), "RD") if limit else "")
    return encode([msh, qpd, rcp])


def read_pdq_response(text: str) -> list[PdqPatient]:
    """The patients of an RSP^K22: [] for NF; PdqQueryError for AE/AR (with the supplier's reason)."""
    try:
        message = parse_message(text)
    except HL7Error as exc:
        raise PdqQueryError(f"PDQ answer is not HL7: {exc.reason}") from None
    ack, status = get(message, "MSA.F1"), get(message, "QAK.F2")
    if ack != "AA":
        reason = get(message, "ERR.F8") or get(message, "MSA.F3") or get(message, "ERR.F3.R1.C2")
        raise PdqQueryError(f"PDQ query answered {ack or '(no MSA-1)'}/{status or '-'}: "
                            f"{reason or 'no reason given'}")
    if status == "NF":
        return []
    patients = []
    for segment in message.segments("PID") if status == "OK" else []:
        one = parse_message(f"{message.segment('MSH')}\r{segment}")  # address this PID's fields by accessor
        identifiers = tuple(i for n in range(1, repetition_count(one, "PID", 3) + 1)
                            if (i := cx_at(one, "PID", 3, n)) is not None)
        patients.append(PdqPatient(identifiers, get(one, "PID.F5.R1.C1") or None, get(one, "PID.F5.R1.C2") or None,
                                   get(one, "PID.F7.R1.C1") or None, get(one, "PID.F8") or None))
    return patients


async def pdq_query(host: str, port: int, *, family: str | None = None, given: str | None = None,
                    birth_date: str | None = None, sex: str | None = None, identifier: Identifiable | None = None,
                    domains: list[str] | None = None, limit: int | None = None, timeout: float = 10.0,
                    sending_application: str = "XDS-PORTAL") -> list[PdqPatient]:
    """ITI-21: the patients the supplier at ``host:port`` holds with all the given traits.

    Names are matched case-insensitively and may end in ``*``; ``birth_date`` is YYYYMMDD.
    ``domains`` (OIDs or namespace ids) limit the identifiers returned, and the patients to those
    having one. [] when no one matches; PdqQueryError when the supplier refuses the query or does
    not answer within ``timeout``.
    """
    request = build_pdq_query(query_tag=new_control_id(), family=family, given=given, birth_date=birth_date,
                              sex=sex, identifier=identifier, domains=domains, limit=limit,
                              sending_application=sending_application)
    try:
        block = await mllp_request(host, port, request, timeout)
    except TimeoutError:
        raise PdqQueryError(f"no PDQ answer from {host}:{port} within {timeout}s") from None
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        raise PdqQueryError(f"PDQ query to {host}:{port} failed: {exc}") from None
    return read_pdq_response(decode(block))
