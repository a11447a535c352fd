"""Patient identity in the registry: who is known, by which identifiers, and merges.

The identity feed (ITI-8), the PIX query (ITI-9), the submission check of ITI-42 and the
imaging source's hospital-number -> NHS-number mapping all go through these functions, so the
rules about identifiers live in one place:

- An identifier is keyed by (id value, assigning authority), the authority being its OID when
  given, else its namespace id (``authority_key``). XDS patient ids always carry the OID.
- A patient is one row of ``patient``; every identifier naming it is one ``patient_identifier``
  row: these are the cross-references.
- A merged identifier stays on a "tombstone" patient row whose ``merged_into`` points at the
  surviving patient: it is then MERGED (refused for new submissions), never silently re-used.

Writes take one transaction-scoped advisory lock: identity feeds are rare and ordered, and
serializing them makes "two feeds create the same patient twice" impossible without retries.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import asyncpg
from lxml import etree

from ihe.metadata import vocabulary as v
from ihe.metadata.model import Identifiable
from ihe.xml import parse_xml

# Advisory lock of patient identity: feeds and merges take it exclusively (transaction scope);
# ITI-42 takes it shared around its patient id check and commit, so no merge slips in between.
IDENTITY_LOCK_KEY = 0x584453_5049  # "XDS" "PI"


class PatientIdState(StrEnum):
    KNOWN = "known"
    UNKNOWN = "unknown"
    MERGED = "merged"


@dataclass(frozen=True, slots=True)
class Demographics:
    """What the feed tells about a patient (PID-5, PID-7, PID-8); None means "not sent"."""

    family: str | None = None
    given: str | None = None
    birth_date: str | None = None  # HL7 DTM as received, YYYY[MM[DD]]
    sex: str | None = None


@dataclass(frozen=True, slots=True)
class PatientRecord:
    """One (surviving) patient and its identifiers, as demographic search returns it."""

    patient: int
    demographics: Demographics
    identifiers: tuple[Identifiable, ...]


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What a merge did: the surviving patient, and how many registry objects changed patient id."""

    surviving_patient: int
    document_entries: int = 0
    submission_sets: int = 0
    folders: int = 0
    already_merged: bool = False


class PatientIdentityError(Exception):
    """A feed or merge that contradicts what the registry knows; ``reason`` is safe to send back."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class IdentifierConflict(PatientIdentityError):
    """The identifiers of one message belong to different patients (a merge is needed, not a feed)."""


class UnknownPatient(PatientIdentityError):
    """An identifier the operation needs is not known; ``role`` says which ("surviving" or "merged")."""

    def __init__(self, reason: str, role: str) -> None:
        super().__init__(reason)
        self.role = role


def authority_key(identifier: Identifiable) -> str:
    """The assigning authority an identifier is keyed by: its OID, else its namespace id."""
    key = identifier.authority_oid or identifier.authority_namespace
    if not key:
        raise ValueError(f"identifier {identifier.id!r} has no assigning authority")
    return key


def _from_row(row: asyncpg.Record) -> Identifiable:
    return Identifiable(row["id_value"], row["authority_oid"], row["authority_namespace"])


# --- ITI-42: is this XDS patient id usable? ---------------------------------------------------


async def xds_patient_id_state(
    conn: asyncpg.Connection, patient_id: Identifiable, affinity_domain_oid: str | None
) -> PatientIdState:
    """KNOWN, UNKNOWN or MERGED for a submission's patient id (one primary-key lookup).

    With an affinity domain configured, an id from another assigning authority is UNKNOWN
    whatever the feed said: only affinity-domain ids may index documents.
    """
    if affinity_domain_oid and patient_id.authority_oid != affinity_domain_oid:
        return PatientIdState.UNKNOWN
    key = patient_id.authority_oid or patient_id.authority_namespace
    if not key or not patient_id.id:
        return PatientIdState.UNKNOWN
    merged = await conn.fetchval(
        "SELECT p.merged_into IS NOT NULL FROM patient_identifier i JOIN patient p ON p.id = i.patient"
        " WHERE i.id_value = $1 AND i.authority = $2",
        patient_id.id, key,
    )
    if merged is None:
        return PatientIdState.UNKNOWN
    return PatientIdState.MERGED if merged else PatientIdState.KNOWN


# --- ITI-8 A01/A04/A05/A08: create or update ----------------------------------------------------


async def record_patient(conn: asyncpg.Connection, identifiers: list[Identifiable], demographics: Demographics) -> int:
    """Create or update the one patient these identifiers name; return its patient row id.

    Semantics (ITI-8 admit/register/update; PID-3 lists identifiers of ONE patient):
    - none known: a new patient with all of them as cross-references;
    - all known ones on the same patient: its demographics are updated (fields not sent are
      kept) and the new identifiers are added to it; identifiers it has but the message omits
      are kept (a feed from one hospital does not know the others' numbers);
    - known ones on different patients, or one that was merged away: IdentifierConflict and no
      change. Linking two existing patients is what A40 (merge) is for; silently moving an
      identifier would re-home its documents without any merge having been asked for.
    """
    if not identifiers:
        raise ValueError("a patient needs at least one identifier")
    keys = [authority_key(i) for i in identifiers]
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK_KEY)
        rows = await conn.fetch(
            "SELECT i.id_value, i.authority, i.patient, p.merged_into FROM patient_identifier i"
            " JOIN patient p ON p.id = i.patient"
            " JOIN unnest($1::text[], $2::text[]) AS q(id_value, authority)"
            "   ON q.id_value = i.id_value AND q.authority = i.authority",
            [i.id for i in identifiers], keys,
        )
        retired = [f"{r['id_value']} ({r['authority']})" for r in rows if r["merged_into"] is not None]
        if retired:
            raise IdentifierConflict(
                f"identifier {', '.join(retired)} was merged into another patient and can no longer be used"
            )
        owners = {r["patient"] for r in rows}
        if len(owners) > 1:
            listing = "; ".join(f"{r['id_value']} ({r['authority']}) -> patient {r['patient']}" for r in rows)
            raise IdentifierConflict(
                f"the identifiers belong to {len(owners)} different patients ({listing}); merge them with A40"
            )
        if owners:
            patient = owners.pop()
            await conn.execute(
                "UPDATE patient SET family_name = COALESCE($2, family_name), given_name = COALESCE($3, given_name),"
                " birth_date = COALESCE($4, birth_date), sex = COALESCE($5, sex), updated_at = now() WHERE id = $1",
                patient, demographics.family, demographics.given, demographics.birth_date, demographics.sex,
            )
        else:
            patient = await conn.fetchval(
                "INSERT INTO patient (family_name, given_name, birth_date, sex) VALUES ($1, $2, $3, $4) RETURNING id",
                demographics.family, demographics.given, demographics.birth_date, demographics.sex,
            )
        await _add_identifiers(conn, patient, identifiers)
    return patient


async def _add_identifiers(conn: asyncpg.Connection, patient: int, identifiers: list[Identifiable]) -> None:
    await conn.executemany(
        "INSERT INTO patient_identifier (id_value, authority, authority_namespace, authority_oid, patient)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id_value, authority) DO UPDATE SET"
        " authority_namespace = COALESCE(EXCLUDED.authority_namespace, patient_identifier.authority_namespace),"
        " authority_oid = COALESCE(EXCLUDED.authority_oid, patient_identifier.authority_oid)",
        [(i.id, authority_key(i), i.authority_namespace, i.authority_oid, patient) for i in identifiers],
    )


# --- ITI-8 A40: merge ---------------------------------------------------------------------------


async def _owner(conn: asyncpg.Connection, identifier: Identifiable) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT p.id, p.merged_into FROM patient_identifier i JOIN patient p ON p.id = i.patient"
        " WHERE i.id_value = $1 AND i.authority = $2",
        identifier.id, authority_key(identifier),
    )


async def merge_patients(conn: asyncpg.Connection, surviving: Identifiable, merged: Identifiable) -> MergeResult:
    """Merge the patient identified by ``merged`` (MRG-1) into ``surviving`` (PID-3), in one transaction.

    ITI TF-2a 3.8.4.2.3 (Document Registry expected actions on merge): the merged (subsumed) id
    is retired, so new submissions with it are refused, and the documents already registered
    under it are from then on registered under the surviving id: DocumentEntry, SubmissionSet
    and Folder rows change patient id (column and stored ebRIM fragment) so that a query on the
    surviving id finds them and none is left behind under an id nobody may use.
    sourcePatientId is left alone: it records what the source said.

    Identity side: the merged id moves to a tombstone row (``merged_into`` = surviving patient);
    the merged patient's other identifiers (e.g. hospital numbers) now name the surviving
    patient; earlier tombstones pointing at the merged patient are re-pointed (no chains).
    Both ids must be known and the surviving one must not itself be merged (UnknownPatient /
    PatientIdentityError). Receiving the same A40 again is accepted and changes nothing.
    """
    if (surviving.id, authority_key(surviving)) == (merged.id, authority_key(merged)):
        raise PatientIdentityError("the merged identifier (MRG-1) is the surviving identifier (PID-3)")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", IDENTITY_LOCK_KEY)
        survivor = await _owner(conn, surviving)
        if survivor is None:
            raise UnknownPatient(f"surviving patient identifier {surviving.to_cx()} is not known", "surviving")
        if survivor["merged_into"] is not None:
            raise PatientIdentityError(
                f"surviving patient identifier {surviving.to_cx()} was itself merged into another patient"
            )
        survivor_id: int = survivor["id"]
        victim = await _owner(conn, merged)
        if victim is None:
            raise UnknownPatient(f"merged patient identifier {merged.to_cx()} (MRG-1) is not known", "merged")
        if victim["merged_into"] is not None:
            if victim["merged_into"] == survivor_id:
                return MergeResult(survivor_id, already_merged=True)
            raise PatientIdentityError(f"patient identifier {merged.to_cx()} was already merged into another patient")
        victim_id: int = victim["id"]
        tombstone = await conn.fetchval(
            "INSERT INTO patient (merged_into, family_name, given_name, birth_date, sex)"
            " SELECT $1, family_name, given_name, birth_date, sex FROM patient WHERE id = $2 RETURNING id",
            survivor_id, victim_id,
        )
        await conn.execute(
            "UPDATE patient_identifier SET patient = $1 WHERE id_value = $2 AND authority = $3",
            tombstone, merged.id, authority_key(merged),
        )
        if victim_id != survivor_id:
            await conn.execute("UPDATE patient_identifier SET patient = $1 WHERE patient = $2", survivor_id, victim_id)
            await conn.execute("UPDATE patient SET merged_into = $1, updated_at = now() WHERE merged_into = $2",
                               survivor_id, victim_id)
            await conn.execute("UPDATE patient SET merged_into = $1, updated_at = now() WHERE id = $2",
                               survivor_id, victim_id)
        counts = await _move_registry_objects(conn, merged, surviving)
    return MergeResult(survivor_id, *counts)


# ebRIM ExternalIdentifier schemes that carry an object's XDS patient id.
_PATIENT_ID_SCHEMES = frozenset({v.DE_PATIENT_ID, v.SS_PATIENT_ID, v.FOL_PATIENT_ID})


def rewrite_patient_id(fragment: str, new_patient_id: str) -> str:
    """The ebRIM fragment with its XDS patientId ExternalIdentifier set to ``new_patient_id``.

    Only the patientId identifier changes (not sourcePatientId, which is a Slot): the fragment
    must stay the object's exact wire form, as the store's read path serves it verbatim.
    """
    root = parse_xml(fragment.encode("utf-8"))
    found = False
    for element in root.iter("{*}ExternalIdentifier"):
        if element.get("identificationScheme") in _PATIENT_ID_SCHEMES:
            element.set("value", new_patient_id)
            found = True
    if not found:
        raise ValueError("ebRIM fragment has no patientId ExternalIdentifier")
    return etree.tostring(root, encoding="unicode")


async def _move_registry_objects(
    conn: asyncpg.Connection, merged: Identifiable, surviving: Identifiable
) -> tuple[int, int, int]:
    """Re-register every object of the merged XDS patient id under the surviving one.

    The store keeps patient ids as submitted, canonicalised by ``Identifiable.to_cx()``; XDS ids
    are ``id^^^&oid&ISO`` (no namespace), while the feed may add one: match both forms, and
    write the XDS form.
    """
    old = sorted({merged.to_cx(), _xds_form(merged)})
    new = _xds_form(surviving)
    counts = []
    for table in ("document_entry", "submission_set", "folder"):
        rows = await conn.fetch(f"SELECT id, ebrim FROM {table} WHERE patient_id = ANY($1::text[]) FOR UPDATE", old)
        if rows:
            await conn.executemany(
                f"UPDATE {table} SET patient_id = $2, ebrim = $3 WHERE id = $1",
                [(r["id"], new, rewrite_patient_id(r["ebrim"], new)) for r in rows],
            )
        counts.append(len(rows))
    return counts[0], counts[1], counts[2]


def _xds_form(identifier: Identifiable) -> str:
    if identifier.authority_oid:
        return Identifiable(identifier.id, identifier.authority_oid).to_cx()
    return identifier.to_cx()


# --- ITI-9 and the imaging source: cross-references --------------------------------------------


async def patient_of(conn: asyncpg.Connection, identifier: Identifiable) -> tuple[int, PatientIdState]:
    """The patient row an identifier names and its state (0 and UNKNOWN when not known)."""
    key = identifier.authority_oid or identifier.authority_namespace
    if not key:
        return 0, PatientIdState.UNKNOWN
    row = await conn.fetchrow(
        "SELECT p.id, p.merged_into FROM patient_identifier i JOIN patient p ON p.id = i.patient"
        " WHERE i.id_value = $1 AND i.authority = $2",
        identifier.id, key,
    )
    if row is None:
        return 0, PatientIdState.UNKNOWN
    return row["id"], PatientIdState.MERGED if row["merged_into"] is not None else PatientIdState.KNOWN


async def cross_references(
    conn: asyncpg.Connection, identifier: Identifiable, domains: list[str] | None = None
) -> list[Identifiable]:
    """The other identifiers of the patient ``identifier`` names, optionally only in ``domains``.

    ``domains`` are assigning authorities given by OID or namespace id. The queried identifier
    itself is not returned (ITI-9 returns the patient's ids in the *other* domains). An unknown
    or merged identifier has no cross-references: a merged id names nobody any more.
    """
    patient, state = await patient_of(conn, identifier)
    if state is not PatientIdState.KNOWN:
        return []
    rows = await conn.fetch(
        "SELECT id_value, authority, authority_namespace, authority_oid FROM patient_identifier"
        " WHERE patient = $1 AND NOT (id_value = $2 AND authority = $3)"
        " AND ($4::text[] IS NULL OR authority_oid = ANY($4) OR authority_namespace = ANY($4))"
        " ORDER BY authority, id_value",
        patient, identifier.id, authority_key(identifier), domains,
    )
    return [_from_row(r) for r in rows]


async def known_authority(conn: asyncpg.Connection, domain: str) -> bool:
    """True when some identifier of the registry is assigned by ``domain`` (OID or namespace id)."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM patient_identifier WHERE authority = $1 OR authority_namespace = $1)",
        domain,
    ))


# --- demographic search -----------------------------------------------------------------------


async def find_patients(
    conn: asyncpg.Connection,
    family: str | None = None,
    given: str | None = None,
    birth_date: str | None = None,
    sex: str | None = None,
    limit: int = 100,
) -> list[PatientRecord]:
    """Surviving patients matching all the given traits (names case-insensitive, ``*`` as wildcard)."""
    rows = await conn.fetch(
        "SELECT p.id, p.family_name, p.given_name, p.birth_date, p.sex,"
        " array_agg(i.id_value ORDER BY i.authority, i.id_value) AS ids,"
        " array_agg(i.authority_oid ORDER BY i.authority, i.id_value) AS oids,"
        " array_agg(i.authority_namespace ORDER BY i.authority, i.id_value) AS namespaces"
        " FROM patient p JOIN patient_identifier i ON i.patient = p.id"
        " WHERE p.merged_into IS NULL"
        " AND ($1::text IS NULL OR p.family_name ILIKE $1) AND ($2::text IS NULL OR p.given_name ILIKE $2)"
        " AND ($3::text IS NULL OR p.birth_date = $3) AND ($4::text IS NULL OR p.sex = $4)"
        " GROUP BY p.id ORDER BY p.family_name, p.given_name, p.id LIMIT $5",
        _like(family), _like(given), birth_date, sex, limit,
    )
    return [
        PatientRecord(
            r["id"],
            Demographics(r["family_name"], r["given_name"], r["birth_date"], r["sex"]),
            tuple(Identifiable(i, o, n) for i, o, n in zip(r["ids"], r["oids"], r["namespaces"], strict=True)),
        )
        for r in rows
    ]


def _like(pattern: str | None) -> str | None:
    if pattern is None:
        return None
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")
