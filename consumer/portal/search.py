"""Patient search: every way of naming a patient ends in the affinity-domain patient id (the NHS
number) that ITI-18 is asked about.

- NHS number: checked (modulus 11) and used as it is.
- Hospital number at a chosen hospital: PIX Query (ITI-9) at the registry, asking for the affinity
  domain's identifier only.
- Family name + birth date: PDQ (ITI-21) at the registry; every match with an NHS number is offered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any

from consumer.portal.settings import Hospital, PortalSettings
from ihe import hl7
from ihe.metadata.model import Identifiable
from ihe.nhs import NHS_NUMBER_OID, is_nhs_number

MLLP_TIMEOUT = 10.0


class SearchError(Exception):
    """A search that cannot be answered; the message is shown to the user."""


@dataclass(frozen=True, slots=True)
class Candidate:
    """A patient found by a search: the affinity-domain id and what is known to tell them apart."""

    patient_id: str
    name: str = ""
    birth_date: str = ""


def normalise_patient_id(value: str, settings: PortalSettings) -> str:
    """The affinity-domain id typed by a user (spaces and dashes allowed), or SearchError."""
    number = re.sub(r"[\s-]", "", value or "")
    if not number:
        raise SearchError("enter an NHS number")
    if settings.affinity_domain_oid == NHS_NUMBER_OID:
        if not is_nhs_number(number):
            raise SearchError(f"{value.strip()!r} is not a valid NHS number (10 digits with a correct check digit)")
    elif not re.fullmatch(r"[A-Za-z0-9.\-]{1,64}", number):
        raise SearchError(f"{value.strip()!r} is not a patient id")
    return number


def patient_cx(patient_id: str, settings: PortalSettings) -> str:
    """The XDS patient id (CX) of an affinity-domain id."""
    return f"{patient_id}^^^&{settings.affinity_domain_oid}&ISO"


def _mllp(settings: PortalSettings) -> tuple[str, int]:
    address = settings.mllp_address
    if address is None:
        raise SearchError("this portal has no registry MLLP address configured (--registry-mllp)")
    return address


async def by_hospital_number(settings: PortalSettings, hospital: Hospital | None, number: str) -> str:
    """ITI-9: the affinity-domain id cross-referenced with ``number`` at ``hospital``."""
    number = (number or "").strip()
    if hospital is None:
        raise SearchError("choose the hospital whose number this is")
    if not number:
        raise SearchError("enter the hospital number")
    if not hospital.patient_id_oid:
        raise SearchError(f"{hospital.name}'s patient numbers are not configured in this portal")
    host, port = _mllp(settings)
    try:
        found = await hl7.pix_query(host, port, Identifiable(number, hospital.patient_id_oid),
                                    [settings.affinity_domain_oid], timeout=MLLP_TIMEOUT,
                                    sending_application="XDS-PORTAL")
    except hl7.PixQueryError as exc:
        raise SearchError(f"the registry could not be asked (PIX): {exc}") from None
    ids = sorted({i.id for i in found if i.authority_oid == settings.affinity_domain_oid})
    if not ids:
        raise SearchError(f"no patient with number {number} at {hospital.name} is known to the registry")
    if len(ids) > 1:
        raise SearchError(f"number {number} at {hospital.name} is linked to several patients; ask the records team")
    return ids[0]


def parse_birth_date(value: str) -> date:
    try:
        return date.fromisoformat((value or "").strip())
    except ValueError:
        raise SearchError("enter the birth date as YYYY-MM-DD") from None


def _identifiers(match: Any) -> list[Identifiable]:
    for name in ("identifiers", "patient_ids", "ids"):
        value = getattr(match, name, None)
        if value is None and isinstance(match, dict):
            value = match.get(name)
        if value:
            return list(value)
    return []


def _text(match: Any, *names: str) -> str:
    for name in names:
        value = match.get(name) if isinstance(match, dict) else getattr(match, name, None)
        if value:
            return str(value)
    return ""


def candidates_from_pdq(matches: list[Any], settings: PortalSettings) -> list[Candidate]:
    """The PDQ matches that carry an affinity-domain id, one per id."""
    found: dict[str, Candidate] = {}
    for match in matches:
        for ident in _identifiers(match):
            if ident.authority_oid == settings.affinity_domain_oid and ident.id not in found:
                name = " ".join(p for p in (_text(match, "given", "given_name"), _text(match, "family",
                                                                                      "family_name")) if p)
                found[ident.id] = Candidate(ident.id, name, _text(match, "birth_date", "birth_time"))
    return list(found.values())


async def by_name_and_birth_date(settings: PortalSettings, family: str, birth_date: str) -> list[Candidate]:
    """ITI-21 at the registry: the patients called ``family`` born on ``birth_date``."""
    family = (family or "").strip()
    if not family:
        raise SearchError("enter the family name")
    born = parse_birth_date(birth_date)
    pdq_query = getattr(hl7, "pdq_query", None)
    if pdq_query is None:
        raise SearchError("search by name and birth date needs PDQ (ITI-21), which this installation lacks")
    host, port = _mllp(settings)
    try:
        matches = await pdq_query(host, port, family=family, birth_date=born.strftime("%Y%m%d"),
                                  domains=[settings.affinity_domain_oid], timeout=MLLP_TIMEOUT)
    except Exception as exc:  # the client's own error types; any means the registry gave no answer
        raise SearchError(f"the registry could not be asked (PDQ): {exc}") from None
    candidates = candidates_from_pdq(list(matches), settings)
    if not candidates:
        raise SearchError(f"no patient called {family} born on {born.isoformat()} is known to the registry")
    return candidates
