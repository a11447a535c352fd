"""Which affinity-domain patient id to query with, when a user gives a hospital number.

Stored queries take the XDS (affinity domain) patient id only: a hospital number finds nothing.
The registry is also the PIX manager (ITI-9 on its MLLP port), so a hospital number is turned
into the affinity domain id by a PIX query, and the user is told which id was used, or which one
to give when there is none. Parsing and deciding are pure; :func:`resolve_patient_id` does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from ihe.hl7 import PixQueryError, pix_query
from ihe.metadata.model import Identifiable
from ihe.nhs import NHS_NUMBER_OID, is_nhs_number

DEFAULT_MLLP_PORT = 2575  # the registry's default --mllp-port (ITI-8 feed and ITI-9 PIX query)


class PatientIdUnresolved(Exception):
    """No affinity-domain id can be found for the given id; the message says which id to give instead."""


@dataclass(frozen=True, slots=True)
class ResolvedPatientId:
    cx: str  # the affinity-domain id to query with, 'id^^^&OID&ISO'
    note: str | None  # how it was found, when it is not the id the user gave


def affinity_cx(ident: str, affinity_oid: str) -> str:
    return f"{ident}^^^&{affinity_oid}&ISO"


def default_mllp_address(registry_url: str) -> tuple[str, int]:
    """The registry's MLLP listener: the host of its ITI-18 URL, port 2575."""
    host = urlsplit(registry_url).hostname
    if not host:
        raise ValueError(f"{registry_url!r} is not an http(s) URL with a host")
    return host, DEFAULT_MLLP_PORT


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as given to --pix-address."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


def _hint(affinity_oid: str) -> str:
    return f"give the patient's affinity domain id, e.g. '<id>^^^&{affinity_oid}&ISO'"


def local_decision(patient_id: str, affinity_oid: str) -> ResolvedPatientId | Identifiable:
    """The answer when no PIX query is needed, else the identifier to ask the PIX manager about."""
    ident = Identifiable.parse_cx(patient_id.strip())
    if not ident.id:
        raise PatientIdUnresolved(f"the patient id {patient_id!r} has no ID number; {_hint(affinity_oid)}")
    if ident.authority_oid == affinity_oid:
        return ResolvedPatientId(affinity_cx(ident.id, affinity_oid), None)
    if not ident.authority_oid and not ident.authority_namespace:
        if affinity_oid == NHS_NUMBER_OID and is_nhs_number(ident.id):
            cx = affinity_cx(ident.id, affinity_oid)
            return ResolvedPatientId(cx, f"{ident.id} is an NHS number: querying with {cx}")
        raise PatientIdUnresolved(
            f"the patient id {patient_id!r} names no assigning authority; {_hint(affinity_oid)}, or a hospital "
            "number with its authority, e.g. '<id>^^^&<hospital OID>&ISO'")
    return ident


async def resolve_patient_id(patient_id: str, affinity_oid: str, mllp: tuple[str, int], *,
                             timeout: float = 10.0) -> ResolvedPatientId:
    """The affinity-domain id for ``patient_id``: itself, or its cross-reference by PIX Query (ITI-9)."""
    decision = local_decision(patient_id, affinity_oid)
    if isinstance(decision, ResolvedPatientId):
        return decision
    host, port = mllp
    try:
        found = await pix_query(host, port, decision, [affinity_oid], timeout=timeout,
                                sending_application="XDS-CONSUMER")
    except PixQueryError as exc:
        raise PatientIdUnresolved(f"{patient_id} is not an affinity domain ({affinity_oid}) id and the PIX query "
                                  f"at {host}:{port} to resolve it failed ({exc}); {_hint(affinity_oid)}") from None
    ids = sorted({i.id for i in found if i.authority_oid == affinity_oid})
    if not ids:
        raise PatientIdUnresolved(f"{patient_id} has no cross-reference to affinity domain {affinity_oid} at the "
                                  f"registry ({host}:{port}); {_hint(affinity_oid)}")
    if len(ids) > 1:
        raise PatientIdUnresolved(f"{patient_id} is cross-referenced to several affinity domain ids: "
                                  f"{', '.join(affinity_cx(i, affinity_oid) for i in ids)}; give one of them")
    cx = affinity_cx(ids[0], affinity_oid)
    return ResolvedPatientId(cx, f"{patient_id} resolved by PIX query at {host}:{port}: querying with {cx}")
