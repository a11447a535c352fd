"""The registry as the access policy's information and decision point.

The policy's data (care relationships, opt-outs, break-glass grants) lives here in PostgreSQL beside
the patients, and the registry is the one party that knows every document's patient and codes. So:

- ITI-18 answers are filtered here (:func:`filter_objects`) before they leave;
- the retrieval points (repositories: ITI-43; imaging sources: RAD-69, WADO, DICOMweb) ask
  ``POST /policy/decisions`` with the requester and the document uniqueIds or study UIDs they are
  asked for. We chose a decision endpoint over a GetDocuments query by the retrieval point because a
  study UID is not a stored query parameter (it is in referenceIdList), the retrieval point would
  need the policy's data as well as the document's, and one call answers a whole RAD-69 request;
  the decision itself is still :func:`ihe.policy.decide.decide`, the same code the registry runs.
- ADT feeds (ITI-8) from a member's own MSH-4 create and end relationships (:func:`record_adt`).

Every change to the data is a row in ``policy_event`` and a log line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from ihe.metadata.model import Identifiable
from ihe.policy.decide import decide
from ihe.policy.model import (
    BreakGlass,
    Decision,
    DocumentFacts,
    PatientFacts,
    PolicyConfig,
    Relationship,
    Requester,
)

log = logging.getLogger(__name__)

STUDY_UID_TYPE = "urn:ihe:iti:xds:2016:studyInstanceUID"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
# ADT events that start (or renew) a care relationship, and the one that starts its expiry.
RELATIONSHIP_EVENTS = {"A01": "admission", "A04": "registration", "A05": "pre-admission", "A08": "update"}
DISCHARGE_EVENT = "A03"


def now_utc() -> datetime:
    return datetime.now(UTC)


# --- patients and their facts ---------------------------------------------------------------------

async def patient_row(conn: asyncpg.Connection, cx: str | None) -> int | None:
    """The surviving patient row a CX names (following A40 merges), None when the registry does not know it."""
    if not cx:
        return None
    ident = Identifiable.parse_cx(cx)
    key = ident.authority_oid or ident.authority_namespace
    if not ident.id or not key:
        return None
    return await conn.fetchval(
        "WITH RECURSIVE chain(id, merged_into) AS ("
        " SELECT p.id, p.merged_into FROM patient_identifier i JOIN patient p ON p.id = i.patient"
        " WHERE i.id_value = $1 AND i.authority = $2"
        " UNION SELECT p.id, p.merged_into FROM patient p JOIN chain c ON p.id = c.merged_into)"
        " SELECT id FROM chain WHERE merged_into IS NULL LIMIT 1", ident.id, key)


_FAMILY = ("WITH RECURSIVE fam(id) AS (SELECT $1::bigint UNION SELECT p.id FROM patient p JOIN fam f"
           " ON p.merged_into = f.id) ")


async def patient_facts(conn: asyncpg.Connection, config: PolicyConfig, patient: int | None,
                        now: datetime) -> PatientFacts:
    """Relationships (with their expiry worked out), opt-out and current grants of ``patient`` and those merged
    into it."""
    if patient is None:
        return PatientFacts()
    rows = await conn.fetch(_FAMILY + "SELECT organisation, origin, discharged_at, expires_at FROM care_relationship"
                            " WHERE patient IN (SELECT id FROM fam)", patient)
    relationships = []
    for r in rows:
        ends = [t for t in (r["expires_at"], r["discharged_at"] and r["discharged_at"]
                            + config.relationship_after_discharge) if t is not None]
        relationships.append(Relationship(r["organisation"], r["origin"], min(ends) if ends else None))
    opted_out = await conn.fetchval("SELECT opted_out FROM patient_consent WHERE patient = $1", patient)
    grants = await conn.fetch(_FAMILY + "SELECT organisation, user_id, expires_at FROM break_glass"
                              " WHERE patient IN (SELECT id FROM fam) AND expires_at > $2", patient, now)
    return PatientFacts(tuple(relationships), bool(opted_out),
                        tuple(BreakGlass(g["organisation"], g["user_id"], g["expires_at"]) for g in grants))


@dataclass
class FactCache:
    """Patient facts per patient id string, read once per request."""

    conn: asyncpg.Connection
    config: PolicyConfig
    now: datetime
    by_cx: dict[str, PatientFacts] = field(default_factory=dict)

    async def facts(self, cx: str | None) -> PatientFacts:
        key = cx or ""
        if key not in self.by_cx:
            self.by_cx[key] = await patient_facts(self.conn, self.config, await patient_row(self.conn, cx), self.now)
        return self.by_cx[key]


def document_facts(config: PolicyConfig, row: asyncpg.Record) -> DocumentFacts:
    return DocumentFacts(owner=config.owner_of_repository(row["repository_unique_id"]),
                         confidentiality=tuple(row["confidentiality_code"]), class_code=tuple(row["class_code"]),
                         type_code=tuple(row["type_code"]))


# --- ITI-18: filter an answer ---------------------------------------------------------------------

async def filter_objects(pool: asyncpg.Pool, config: PolicyConfig, requester: Requester, objects: Sequence,
                         now: datetime | None = None) -> tuple[list, list[Decision]]:
    """The objects ``requester`` may see, and the denials (for the log).

    DocumentEntries are decided with their owner and codes, SubmissionSets by their sourceId's owner,
    Folders for the patient; an Association goes with either end denied, including ends not in the answer
    (GetAssociations, GetRelatedDocuments), so a denied document's id never appears in it.
    """
    now = now or now_utc()
    if not objects:
        return [], []
    ids = [o.id.removeprefix("urn:uuid:") for o in objects]
    async with pool.acquire() as conn:
        assoc = {str(r["id"]): (str(r["source"]), str(r["target"])) for r in await conn.fetch(
            "SELECT id, source, target FROM association WHERE id = ANY($1::uuid[])",
            [i for o, i in zip(objects, ids, strict=True) if o.kind == "Association"])}
        wanted = set(ids) | {end for ends in assoc.values() for end in ends}
        wanted_list = list(wanted)
        docs = {str(r["id"]): r for r in await conn.fetch(
            "SELECT id, patient_id, repository_unique_id, confidentiality_code, class_code, type_code"
            " FROM document_entry WHERE id = ANY($1::uuid[])", wanted_list)}
        # A SubmissionSet's owner: its sourceId's organisation, else the one holding its first document.
        sets = {str(r["id"]): r for r in await conn.fetch(
            "SELECT s.id, s.patient_id, s.source_id, (SELECT d.repository_unique_id FROM association a"
            " JOIN document_entry d ON d.id = a.target WHERE a.source = s.id LIMIT 1) AS member_repository"
            " FROM submission_set s WHERE s.id = ANY($1::uuid[])", wanted_list)}
        folders = {str(r["id"]): r for r in await conn.fetch(
            "SELECT id, patient_id FROM folder WHERE id = ANY($1::uuid[])", wanted_list)}
        cache = FactCache(conn, config, now)
        verdict: dict[str, Decision] = {}
        for oid in wanted:
            if oid in docs:
                row = docs[oid]
                verdict[oid] = decide(config, requester, await cache.facts(row["patient_id"]),
                                      document_facts(config, row), now)
            elif oid in sets:
                row = sets[oid]
                owner = config.owner_of_source(row["source_id"]) or config.owner_of_repository(
                    row["member_repository"])
                verdict[oid] = decide(config, requester, await cache.facts(row["patient_id"]),
                                      DocumentFacts(owner=owner), now)
            elif oid in folders:
                verdict[oid] = decide(config, requester, await cache.facts(folders[oid]["patient_id"]), None, now)
    kept, denied = [], []
    for obj, oid in zip(objects, ids, strict=True):
        if obj.kind == "Association":
            ends = [verdict.get(e) for e in assoc.get(oid, ())]
            refusal = next((d for d in ends if d is not None and not d.permit), None)
        else:
            d = verdict.get(oid)
            refusal = d if d is not None and not d.permit else None
        if refusal is None:
            kept.append(obj)
        else:
            denied.append(refusal)
    return kept, denied


# --- the decision endpoint for retrieval points ----------------------------------------------------

async def decide_documents(conn: asyncpg.Connection, config: PolicyConfig, requester: Requester,
                           unique_ids: Iterable[str], repository: str | None, now: datetime) -> dict[str, Decision]:
    """A decision per document uniqueId. A document the registry does not know is only for the organisation
    holding ``repository`` (the retrieval point asking: its own, not yet or no longer registered, documents)."""
    unique_ids = list(dict.fromkeys(unique_ids))
    rows = await conn.fetch(
        "SELECT DISTINCT ON (unique_id) unique_id, patient_id, repository_unique_id, confidentiality_code,"
        " class_code, type_code FROM document_entry WHERE unique_id = ANY($1::text[])"
        " ORDER BY unique_id, latest DESC, version DESC", unique_ids)
    cache = FactCache(conn, config, now)
    result = {}
    by_uid = {r["unique_id"]: r for r in rows}
    for uid in unique_ids:
        row = by_uid.get(uid)
        if row is None:
            result[uid] = unregistered(config, requester, repository, f"document {uid}", now)
        else:
            result[uid] = decide(config, requester, await cache.facts(row["patient_id"]),
                                 document_facts(config, row), now)
    return result


async def decide_studies(conn: asyncpg.Connection, config: PolicyConfig, requester: Requester,
                         study_uids: Iterable[str], repository: str | None, now: datetime) -> dict[str, Decision]:
    """A decision per study: permitted when some current manifest of the study (its referenceIdList names the
    study) is; a study no manifest names is only for the organisation holding ``repository``."""
    study_uids = list(dict.fromkeys(study_uids))
    refs = {f"{s}^^^^{STUDY_UID_TYPE}": s for s in study_uids}
    rows = await conn.fetch(
        "SELECT patient_id, repository_unique_id, confidentiality_code, class_code, type_code, reference_id"
        " FROM document_entry WHERE reference_id && $1::text[] AND latest AND status = $2",
        list(refs), APPROVED)
    cache = FactCache(conn, config, now)
    result: dict[str, Decision] = {}
    for row in rows:
        for ref in row["reference_id"]:
            study = refs.get(ref)
            if study is None or (study in result and result[study].permit):
                continue
            result[study] = decide(config, requester, await cache.facts(row["patient_id"]),
                                   document_facts(config, row), now)
    for study in study_uids:
        if study not in result:
            result[study] = unregistered(config, requester, repository, f"study {study}", now)
    return result


def unregistered(config: PolicyConfig, requester: Requester, repository: str | None, what: str,
                 now: datetime) -> Decision:
    owner = config.owner_of_repository(repository)
    if owner is None:
        return Decision(False, f"{what} is not registered in the region", "unregistered")
    return decide(config, requester, PatientFacts(), DocumentFacts(owner=owner), now)


# --- changes to the policy's data (ADT, administrator, consent documents) ------------------------

async def log_event(conn: asyncpg.Connection, kind: str, patient: int | None, organisation: str | None,
                    actor: str | None, detail: str) -> None:
    await conn.execute("INSERT INTO policy_event (kind, patient, organisation, actor, detail)"
                       " VALUES ($1, $2, $3, $4, $5)", kind, patient, organisation, actor, detail)
    log.info("access policy: %s patient %s organisation %s by %s: %s", kind, patient, organisation, actor, detail)


async def record_adt(conn: asyncpg.Connection, config: PolicyConfig, patient: int, event: str,
                     facility: tuple[str | None, ...]) -> str | None:
    """An ADT event from a member's own feed (MSH-4) starts, renews or (A03) ends its relationship with the
    patient; feeds of non-members change nothing. Returns the organisation, if any."""
    organisation = config.organisation_of_feed(*facility)
    if organisation is None:
        return None
    if event == DISCHARGE_EVENT:
        done = await conn.fetchval(
            "UPDATE care_relationship SET discharged_at = now(), updated_at = now()"
            " WHERE patient = $1 AND organisation = $2 AND discharged_at IS NULL RETURNING 1", patient, organisation)
        if done:
            await log_event(conn, "discharge", patient, organisation, f"ADT {event}",
                            f"relationship ends {config.relationship_after_discharge} after discharge")
        return organisation
    if event not in RELATIONSHIP_EVENTS:
        return None
    if event == "A08" and not await conn.fetchval(
            "SELECT 1 FROM care_relationship WHERE patient = $1 AND organisation = $2", patient, organisation):
        return None  # a demographics update alone does not start a relationship
    await conn.execute(
        "INSERT INTO care_relationship (patient, organisation, origin) VALUES ($1, $2, $3)"
        " ON CONFLICT (patient, organisation) DO UPDATE SET discharged_at = NULL, expires_at = NULL,"
        " origin = EXCLUDED.origin, updated_at = now()", patient, organisation, f"ADT {event}")
    await log_event(conn, "relationship", patient, organisation, f"ADT {event}",
                    f"{RELATIONSHIP_EVENTS[event]} starts or renews the care relationship")
    return organisation


async def refer(conn: asyncpg.Connection, config: PolicyConfig, patient: int, organisation: str, actor: str,
                days: float | None = None) -> datetime:
    """An explicit referral entry: ``organisation`` may see the patient's documents until the returned time."""
    expires = now_utc() + (timedelta(days=days) if days is not None else config.referral_lifetime)
    await conn.execute(
        "INSERT INTO care_relationship (patient, organisation, origin, expires_at) VALUES ($1, $2, 'referral', $3)"
        " ON CONFLICT (patient, organisation) DO UPDATE SET origin = 'referral', expires_at = $3,"
        " discharged_at = NULL, updated_at = now()", patient, organisation, expires)
    await log_event(conn, "referral", patient, organisation, actor, f"referral until {expires.isoformat()}")
    return expires


async def set_opt_out(conn: asyncpg.Connection, patient: int, opted_out: bool, origin: str, actor: str | None,
                      reason: str | None) -> None:
    async with conn.transaction():
        await write_opt_out(conn, patient, opted_out, origin, actor, reason)


async def write_opt_out(conn: asyncpg.Connection, patient: int, opted_out: bool, origin: str, actor: str | None,
                        reason: str | None) -> None:
    """The change and its policy_event, in the caller's transaction."""
    await conn.execute(
        "INSERT INTO patient_consent (patient, opted_out, origin, changed_by, reason) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (patient) DO UPDATE SET opted_out = $2, origin = $3, changed_by = $4, reason = $5,"
        " changed_at = now()", patient, opted_out, origin, actor, reason)
    await log_event(conn, "opt-out" if opted_out else "opt-in", patient, None, actor,
                    f"{origin}: {reason or 'no reason given'}")


def consent_choice(config: PolicyConfig, format_code: str | None, event_codes: Iterable[str]) -> bool | None:
    """True (opt out), False (opt in) or None for a DocumentEntry: a consent document (BPPC formatCode) naming an
    opt-out or opt-in policy in its eventCodeList. Opt-out wins when a document names both."""
    if format_code not in config.consent_format_codes:
        return None
    codes = set(event_codes)
    if codes & config.opt_out_policies:
        return True
    if codes & config.opt_in_policies:
        return False
    return None


async def record_consents(conn: asyncpg.Connection, config: PolicyConfig, documents: Iterable) -> None:
    """ITI-42: the consent documents of a submission record the patient's choice, in its transaction."""
    for d in documents:
        fmt = f"{d.format_code.code}^^^{d.format_code.scheme}" if d.format_code is not None else None
        choice = consent_choice(config, fmt, [f"{c.code}^^^{c.scheme}" for c in d.event_codes])
        if choice is None:
            continue
        patient = await patient_row(conn, d.patient_id.to_cx() if d.patient_id is not None else None)
        if patient is not None:
            await write_opt_out(conn, patient, choice, f"consent document {d.unique_id}", "ITI-42",
                                "registered consent acknowledgement")


async def grant_break_glass(conn: asyncpg.Connection, config: PolicyConfig, patient: int, requester: Requester,
                            reason_code: str, reason_text: str) -> datetime:
    """Time-limited access of one user to one patient; the caller checked the reason against the coded list."""
    org = config.organisation_of(requester)
    if org is None or not requester.user:
        raise ValueError("break-glass needs a user of a member organisation")
    expires = now_utc() + config.break_glass_lifetime
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO break_glass (patient, organisation, user_id, role, reason_code, reason_text, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)", patient, org.id, requester.user, requester.role, reason_code,
            reason_text, expires)
        await log_event(conn, "break-glass", patient, org.id, requester.user, f"{reason_code}: {reason_text}")
    return expires


async def break_glass_list(conn: asyncpg.Connection, *, everything: bool = False) -> list[dict]:
    """Break-glass grants for the administrator's review, newest first (unreviewed only unless ``everything``)."""
    rows = await conn.fetch(
        "SELECT b.id, b.granted_at, b.expires_at, b.organisation, b.user_id, b.role, b.reason_code, b.reason_text,"
        " b.reviewed_at, b.reviewed_by, (SELECT string_agg(i.id_value || '^^^&' || i.authority || '&ISO', '~')"
        " FROM patient_identifier i WHERE i.patient = b.patient) AS patient"
        " FROM break_glass b WHERE $1 OR b.reviewed_at IS NULL ORDER BY b.granted_at DESC LIMIT 500", everything)
    return [dict(r) for r in rows]


async def review_break_glass(conn: asyncpg.Connection, grant: int, actor: str) -> bool:
    async with conn.transaction():
        row = await conn.fetchrow("UPDATE break_glass SET reviewed_at = now(), reviewed_by = $2 WHERE id = $1"
                                  " RETURNING patient, organisation", grant, actor)
        if row is None:
            return False
        await log_event(conn, "break-glass-review", row["patient"], row["organisation"], actor,
                        f"grant {grant} reviewed")
    return True
