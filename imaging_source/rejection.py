"""Imaging lifecycle (IHE RAD IOCM) at the imaging source: rejection notes and withdrawn manifests.

The hospital PACS rejects instances by sending a rejection note: a Key Object Selection Document
whose Concept Name Code is one of the IOCM rejection titles (DCM 113001, 113037, 113038, 113039),
listing the rejected instances in its Current Requested Procedure Evidence Sequence. Rejected
instances are taken out of the index (RAD-69 and WADO stop serving them, and the next manifest no
longer lists them) and stay out if sent again; the rejection note itself is not part of the study.
The study then publishes a replacement manifest (RPLC), or, when nothing remains, its published
manifest is deprecated with ITI-57 Update Document Set (ITI TF-2b 3.57: a SubmissionSet and an
UpdateAvailabilityStatus association Approved -> Deprecated to the DocumentEntry).

:func:`read_rejection_note` and :func:`deprecation_request` are pure; the rest is database and
network I/O run by the tracker on each pass.
"""

from __future__ import annotations

import asyncio
import io
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pydicom
from lxml import etree
from pydicom.dataset import Dataset

from ihe.errors import STATUS_SUCCESS, parse_registry_response
from ihe.metadata import vocabulary as v
from ihe.metadata.ebrim import write_submit_objects_request
from ihe.metadata.model import (
    Association,
    AssociationType,
    Code,
    Identifiable,
    LocalizedString,
    SubmissionPackage,
    SubmissionSet,
    datetime_to_dtm,
)
from ihe.namespaces import ACTION_ITI57
from imaging_source.manifest import KOS_SOP_CLASS_UID, referenced_instances
from imaging_source.publish import PublishError, is_permanent_failure, is_permanent_fault, new_oid

if TYPE_CHECKING:
    import asyncpg

    from imaging_source.context import ImagingSource

log = logging.getLogger(__name__)

# IOCM rejection titles (DICOM CID 7011 "Rejected for" reasons), coding scheme DCM.
REJECTION_TITLES = {
    "113001": "Rejected for Quality Reasons",
    "113037": "Rejected for Patient Safety Reasons",
    "113038": "Incorrect Modality Worklist Entry",
    "113039": "Data Retention Policy Expired",
}


@dataclass(frozen=True, slots=True)
class RejectionNote:
    note_uid: str
    code: str
    meaning: str
    rejected: list[tuple[str, str, str]]  # (study, series, SOP instance) UIDs


def read_rejection_note(ds: Dataset) -> RejectionNote | None:
    """The rejection a KOS carries, or None for an ordinary KOS (key images, a manifest...)."""
    if str(ds.get("SOPClassUID") or "") != KOS_SOP_CLASS_UID:
        return None
    title = next(iter(ds.get("ConceptNameCodeSequence") or []), None)
    if title is None or str(title.get("CodingSchemeDesignator") or "") != "DCM":
        return None
    code = str(title.get("CodeValue") or "")
    if code not in REJECTION_TITLES:
        return None
    try:
        rejected = referenced_instances(ds)
    except AttributeError:  # no evidence sequence: it rejects nothing
        rejected = []
    return RejectionNote(str(ds.SOPInstanceUID), code, REJECTION_TITLES[code], rejected)


# --- rejection notes -------------------------------------------------------------------------------


async def unexamined_kos(conn: asyncpg.Connection, limit: int = 50) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT i.sop_instance_uid, i.study_uid, i.storage_key FROM imaging_instance i"
        " WHERE i.sop_class_uid = $1 AND NOT EXISTS (SELECT 1 FROM imaging_kos_examined e"
        "   WHERE e.sop_instance_uid = i.sop_instance_uid AND e.storage_key = i.storage_key) LIMIT $2",
        KOS_SOP_CLASS_UID, limit,
    )


async def record_examined(conn: asyncpg.Connection, row, note: RejectionNote | None) -> None:
    """Remember a KOS was looked at; for a rejection note, the instances it rejects (all in one transaction)."""
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO imaging_kos_examined (sop_instance_uid, storage_key, rejection_code) VALUES ($1, $2, $3)"
            " ON CONFLICT (sop_instance_uid) DO UPDATE SET storage_key = EXCLUDED.storage_key,"
            " rejection_code = EXCLUDED.rejection_code, examined_at = now()",
            row["sop_instance_uid"], row["storage_key"], note.code if note else None,
        )
        if note is None:
            return
        await conn.executemany(
            "INSERT INTO imaging_rejected_instance (sop_instance_uid, study_uid, reason_code, reason, note_uid)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (sop_instance_uid) DO NOTHING",
            [(sop, study, note.code, note.meaning, note.note_uid) for study, _series, sop in note.rejected],
        )
        # The note is no clinical object of the study: it is neither listed in manifests nor served.
        series_uid = await conn.fetchval(
            "DELETE FROM imaging_instance WHERE sop_instance_uid = $1 RETURNING series_uid", note.note_uid)
        await conn.execute("DELETE FROM imaging_series s WHERE series_uid = $1 AND NOT EXISTS"
                           " (SELECT 1 FROM imaging_instance i WHERE i.series_uid = s.series_uid)", series_uid)
        # A study the note alone made (a note kept in a study of its own) is no study to publish.
        await conn.execute(
            "DELETE FROM imaging_study s WHERE study_uid = $1"
            " AND NOT EXISTS (SELECT 1 FROM imaging_instance i WHERE i.study_uid = s.study_uid)"
            " AND NOT EXISTS (SELECT 1 FROM imaging_manifest m WHERE m.study_uid = s.study_uid)"
            " AND NOT EXISTS (SELECT 1 FROM imaging_rejected_instance r WHERE r.study_uid = s.study_uid)",
            row["study_uid"])
        await conn.execute(
            "UPDATE imaging_study SET changed = true, last_received_at = clock_timestamp(), state = 'receiving'"
            " WHERE study_uid = $1", row["study_uid"])


async def purge_rejected(conn: asyncpg.Connection) -> list[str]:
    """Take every rejected instance out of the index (also one sent again after its rejection); mark their
    studies changed. Returns the storage keys no longer indexed (their files are to be removed)."""
    async with conn.transaction():
        rows = await conn.fetch(
            "DELETE FROM imaging_instance i USING imaging_rejected_instance r"
            " WHERE i.sop_instance_uid = r.sop_instance_uid RETURNING i.study_uid, i.series_uid, i.storage_key")
        if not rows:
            return []
        studies = sorted({r["study_uid"] for r in rows})
        await conn.execute(
            "DELETE FROM imaging_series s WHERE s.series_uid = ANY($1::text[])"
            " AND NOT EXISTS (SELECT 1 FROM imaging_instance i WHERE i.series_uid = s.series_uid)",
            sorted({r["series_uid"] for r in rows}))
        await conn.execute(
            "UPDATE imaging_study SET changed = true, last_received_at = clock_timestamp(), state = 'receiving'"
            " WHERE study_uid = ANY($1::text[])", studies)
    log.info("IOCM: %d rejected instances taken out of studies %s", len(rows), ", ".join(studies))
    return [r["storage_key"] for r in rows]


async def process_rejections(source: ImagingSource) -> None:
    """Look at every newly received KOS for a rejection title, then apply all rejections."""
    async with source.pool.acquire() as conn:
        rows = await unexamined_kos(conn)
    for row in rows:
        try:
            data = await asyncio.to_thread(source.storage.read, row["storage_key"])
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            note = read_rejection_note(ds)
        except Exception as exc:  # an unreadable KOS is an ordinary instance; never block the pass
            log.warning("KOS %s could not be read for IOCM: %s", row["sop_instance_uid"], exc)
            note = None
        async with source.pool.acquire() as conn:
            await record_examined(conn, row, note)
        if note is not None:
            log.info("IOCM rejection note %s (%s %s): %d instances rejected", note.note_uid, note.code, note.meaning,
                     len(note.rejected))
            await asyncio.to_thread(source.storage.delete, row["storage_key"])
    async with source.pool.acquire() as conn:
        keys = await purge_rejected(conn)
    for key in keys:
        await asyncio.to_thread(source.storage.delete, key)


# --- withdrawal: nothing of the study remains -------------------------------------------------------


async def withdraw_study(conn: asyncpg.Connection, study) -> bool:
    """Every instance of the study was rejected: queue the deprecation of its published manifest (if any).

    False when the study never had a rejected instance nor a published manifest (then an empty study is an
    error for the caller to report, not a withdrawal).
    """
    study_uid = study["study_uid"]
    async with conn.transaction():
        published = await conn.fetchrow(
            "SELECT document_unique_id FROM imaging_manifest WHERE study_uid = $1 AND state = 'published'"
            " ORDER BY published_at DESC LIMIT 1", study_uid)
        rejected = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM imaging_rejected_instance WHERE study_uid = $1)",
                                       study_uid)
        if published is None and not rejected:
            return False
        taken = await conn.fetchval(
            "UPDATE imaging_study SET changed = false, state = 'withdrawn', needs_action = false, attempts = 0,"
            " last_error = NULL, next_attempt_at = NULL WHERE study_uid = $1 AND changed AND last_received_at = $2"
            " RETURNING true", study_uid, study["last_received_at"])
        if not taken:
            return True  # instances arrived meanwhile: the next pass looks again
        await conn.execute("UPDATE imaging_manifest SET state = 'superseded' WHERE study_uid = $1"
                           " AND state IN ('pending', 'failed')", study_uid)
        if published is not None:
            await conn.execute(
                "UPDATE imaging_manifest SET state = 'deprecating', attempts = 0, last_error = NULL,"
                " next_attempt_at = clock_timestamp() WHERE document_unique_id = $1",
                published["document_unique_id"])
    log.info("study %s: every instance was rejected; %s", study_uid,
             "its manifest will be deprecated" if published else "nothing was published")
    return True


def deprecation_request(entry_uuid: str, patient_id: Identifiable, *, source_id: str, content_type_code: Code,
                        now: datetime | None = None) -> etree._Element:
    """ITI-57 SubmitObjectsRequest setting one DocumentEntry Approved -> Deprecated (ITI TF-2b 3.57.4.1.3.3)."""
    now = now or datetime.now(UTC)
    submission_set = SubmissionSet(
        entry_uuid=f"urn:uuid:{uuid.uuid4()}",
        unique_id=new_oid(),
        source_id=source_id,
        patient_id=patient_id,
        submission_time=datetime_to_dtm(now),
        title=LocalizedString("Imaging study withdrawn"),
        content_type_code=content_type_code,
    )
    # The model's AssociationType does not list the ITI-57 types (yet); the writer takes the URN as is.
    update = Association(entry_uuid=f"urn:uuid:{uuid.uuid4()}", type=AssociationType.UPDATE_AVAILABILITY_STATUS,
                         source_uuid=submission_set.entry_uuid, target_uuid=entry_uuid,
                         original_status=v.STATUS_APPROVED, new_status=v.STATUS_DEPRECATED)
    return write_submit_objects_request(SubmissionPackage(submission_set, [], [], [update]))


async def due_deprecations(conn: asyncpg.Connection, limit: int = 10) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT m.*, COALESCE(m.patient_cx, s.affinity_patient_id) AS deprecated_patient_cx"
        " FROM imaging_manifest m JOIN imaging_study s USING (study_uid)"
        " WHERE m.state = 'deprecating' AND m.next_attempt_at <= clock_timestamp()"
        " ORDER BY m.next_attempt_at LIMIT $1", limit)


async def send_deprecation(client, registry_url: str, request: etree._Element) -> None:
    """ITI-57 to the registry; PublishError (permanent when the registry refused the update) unless Success."""
    from consumer.client.soap import SoapFaultError, TransportError

    try:
        result = await client.call(registry_url, ACTION_ITI57, request)
    except TransportError as exc:
        raise PublishError(str(exc)) from None
    except SoapFaultError as exc:
        raise PublishError(f"SOAP Fault ({exc.fault.code}) from the registry: {exc.fault.reason}",
                           permanent=is_permanent_fault(exc.fault.code, exc.status)) from None
    status, errors = parse_registry_response(result.body)
    if status != STATUS_SUCCESS:
        detail = "; ".join(f"{e.code}: {e.context}" for e in errors) or "no error list"
        raise PublishError(f"the registry answered ITI-57 with {status.rsplit(':', 1)[-1]}: {detail}",
                           permanent=is_permanent_failure([e.code for e in errors]))


async def deprecate(tracker, manifest) -> bool:
    """One ITI-57 attempt for a manifest whose study was withdrawn; records the outcome like RAD-68."""
    from imaging_source import store

    source, settings = tracker.source, tracker.settings
    uid, study_uid = manifest["document_unique_id"], manifest["study_uid"]
    try:
        if not settings.registry_url:
            raise PublishError("no registry configured (registry-url): the manifest cannot be deprecated (ITI-57)")
        request = deprecation_request(manifest["entry_uuid"], Identifiable.parse_cx(manifest["deprecated_patient_cx"]),
                                      source_id=settings.source_id, content_type_code=tracker.codes.content_type_code)
        await send_deprecation(tracker.soap_client(), settings.registry_url, request)
    except PublishError as exc:
        async with source.pool.acquire() as conn:
            if exc.permanent:
                # Kept queued but not due: `xds-imaging-source retry` makes it due again (store.retry_study).
                await conn.execute(
                    "UPDATE imaging_manifest SET attempts = attempts + 1, last_error = $2,"
                    " next_attempt_at = clock_timestamp() + interval '100 years' WHERE document_unique_id = $1",
                    uid, str(exc))
                await conn.execute(
                    "UPDATE imaging_study SET state = 'failed', needs_action = true, last_error = $2,"
                    " next_attempt_at = clock_timestamp() + make_interval(secs => $3) WHERE study_uid = $1",
                    study_uid, f"deprecation refused: {exc}", settings.retry_max)
                log.error("manifest %s of withdrawn study %s: deprecation refused, not retried: %s. Fix the cause, "
                          "then run `xds-imaging-source retry %s`", uid, study_uid, exc, study_uid)
            else:
                delay = tracker._delay(manifest["attempts"] + 1)
                await store.manifest_failed(conn, uid, str(exc), delay)
                log.warning("manifest %s of study %s not deprecated (attempt %d, next in %.0fs): %s", uid, study_uid,
                            manifest["attempts"] + 1, delay, exc)
        return False
    async with source.pool.acquire() as conn:
        await conn.execute("UPDATE imaging_manifest SET state = 'deprecated', last_error = NULL,"
                           " attempts = attempts + 1 WHERE document_unique_id = $1", uid)
    log.info("manifest %s of withdrawn study %s deprecated", uid, study_uid)
    return True
