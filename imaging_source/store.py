"""PostgreSQL index of the imaging source: studies, series, instances and their manifests.

Small functions over an asyncpg connection; each write that must be all-or-nothing runs in
one transaction here, so callers never see half an instance or half a manifest.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import asyncpg

if TYPE_CHECKING:
    from imaging_source.ingest import InstanceInfo

TABLES = ("imaging_manifest, imaging_instance, imaging_series, imaging_study, imaging_rejected_instance,"
          " imaging_kos_examined")


async def record_instance(conn: asyncpg.Connection, info: InstanceInfo, key: str, size: int) -> tuple[bool, str | None]:
    """Index one stored instance: (True when it was not known before, so the study changed; the
    storage key the index pointed at before, for a copy sent again)."""
    async with conn.transaction():
        previous_key = await conn.fetchval(
            "SELECT storage_key FROM imaging_instance WHERE sop_instance_uid = $1 FOR UPDATE", info.sop_instance_uid)
        await conn.execute(
            "INSERT INTO imaging_study (study_uid, patient_id, patient_issuer_oid, patient_issuer_ns,"
            " accession_number, header) VALUES ($1, $2, $3, $4, $5, $6::jsonb) ON CONFLICT (study_uid) DO NOTHING",
            info.study_uid, info.patient_id, info.patient_issuer_oid, info.patient_issuer_ns,
            info.accession_number, json.dumps(info.header),
        )
        await conn.execute(
            "INSERT INTO imaging_series (series_uid, study_uid, modality, body_part, anatomic_region, series_number,"
            " series_description) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (series_uid) DO NOTHING",
            info.series_uid, info.study_uid, info.modality, info.body_part, info.anatomic_region,
            info.series_number, info.series_description,
        )
        inserted = await conn.fetchval(
            "INSERT INTO imaging_instance (sop_instance_uid, series_uid, study_uid, sop_class_uid,"
            " transfer_syntax_uid, storage_key, size, instance_number, number_of_frames)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
            " ON CONFLICT (sop_instance_uid) DO UPDATE SET series_uid = EXCLUDED.series_uid,"
            " study_uid = EXCLUDED.study_uid, sop_class_uid = EXCLUDED.sop_class_uid,"
            " transfer_syntax_uid = EXCLUDED.transfer_syntax_uid, storage_key = EXCLUDED.storage_key,"
            " size = EXCLUDED.size, instance_number = EXCLUDED.instance_number,"
            " number_of_frames = EXCLUDED.number_of_frames, received_at = now(),"
            # the kept WADO-RS metadata is of the old file when the bytes changed (metadata_cache)
            " metadata_json = CASE WHEN imaging_instance.storage_key = EXCLUDED.storage_key"
            " THEN imaging_instance.metadata_json END"
            " RETURNING (xmax = 0)",
            info.sop_instance_uid, info.series_uid, info.study_uid, info.sop_class_uid, info.transfer_syntax_uid,
            key, size, info.instance_number, info.number_of_frames,
        )
        if inserted:
            await conn.execute(
                "UPDATE imaging_study SET changed = true, last_received_at = clock_timestamp(),"
                " state = 'receiving' WHERE study_uid = $1",
                info.study_uid,
            )
    return bool(inserted), previous_key


# --- retrieval ---------------------------------------------------------------------------------

INSTANCE_COLUMNS = (
    "i.sop_instance_uid, i.series_uid, i.study_uid, i.sop_class_uid, i.transfer_syntax_uid, i.storage_key, i.size,"
    " i.instance_number, i.number_of_frames, s.modality"
)
# An instance rejected by IOCM is never served, not even in the moment before the tracker takes it out of
# the index (e.g. when the PACS sends it again after its rejection).
NOT_REJECTED = (" AND NOT EXISTS (SELECT 1 FROM imaging_rejected_instance r"
                " WHERE r.sop_instance_uid = i.sop_instance_uid)")


async def find_instance(conn: asyncpg.Connection, sop_instance_uid: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {INSTANCE_COLUMNS} FROM imaging_instance i JOIN imaging_series s USING (series_uid)"
        " WHERE i.sop_instance_uid = $1" + NOT_REJECTED,
        sop_instance_uid,
    )


async def find_instances(conn: asyncpg.Connection, sop_instance_uids: list[str]) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        f"SELECT {INSTANCE_COLUMNS} FROM imaging_instance i JOIN imaging_series s USING (series_uid)"
        " WHERE i.sop_instance_uid = ANY($1::text[])" + NOT_REJECTED,
        sop_instance_uids,
    )
    return {r["sop_instance_uid"]: r for r in rows}


async def instances_of(conn: asyncpg.Connection, study_uid: str, series_uid: str | None = None,
                       sop_instance_uid: str | None = None) -> list[asyncpg.Record]:
    """Instances of a study (optionally one series or one instance), in series then instance order."""
    return await conn.fetch(
        f"SELECT {INSTANCE_COLUMNS} FROM imaging_instance i JOIN imaging_series s USING (series_uid)"
        " WHERE i.study_uid = $1 AND ($2::text IS NULL OR i.series_uid = $2)"
        " AND ($3::text IS NULL OR i.sop_instance_uid = $3)" + NOT_REJECTED +
        " ORDER BY s.series_number NULLS LAST, i.series_uid, i.instance_number NULLS LAST, i.sop_instance_uid",
        study_uid, series_uid, sop_instance_uid,
    )


async def get_study(conn: asyncpg.Connection, study_uid: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM imaging_study WHERE study_uid = $1", study_uid)


async def series_of(conn: asyncpg.Connection, study_uid: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM imaging_series WHERE study_uid = $1 ORDER BY series_number NULLS LAST, series_uid", study_uid
    )


# --- study completion and publication ---------------------------------------------------------


async def complete_studies(conn: asyncpg.Connection, quiet_seconds: float, limit: int = 20) -> list[asyncpg.Record]:
    """Studies with instances not yet in a manifest, quiet for ``quiet_seconds``, and not waiting for a retry."""
    return await conn.fetch(
        "SELECT * FROM imaging_study WHERE changed"
        " AND last_received_at <= clock_timestamp() - make_interval(secs => $1)"
        " AND (next_attempt_at IS NULL OR next_attempt_at <= clock_timestamp() OR needs_action)"
        " ORDER BY last_received_at LIMIT $2",
        quiet_seconds, limit,
    )


async def set_affinity_patient(conn: asyncpg.Connection, study_uid: str, cx: str) -> None:
    await conn.execute(
        "UPDATE imaging_study SET affinity_patient_id = $2, attempts = 0, last_error = NULL, next_attempt_at = NULL"
        " WHERE study_uid = $1",
        study_uid, cx,
    )


async def mark_waiting_patient(conn: asyncpg.Connection, study_uid: str, error: str, delay: float) -> None:
    await conn.execute(
        "UPDATE imaging_study SET state = 'waiting_patient', attempts = attempts + 1, last_error = $2,"
        " next_attempt_at = clock_timestamp() + make_interval(secs => $3) WHERE study_uid = $1",
        study_uid, error, delay,
    )


async def mark_study_failed(conn: asyncpg.Connection, study_uid: str, error: str, delay: float) -> None:
    """The study's manifest could not be built: listed as failed, tried again after ``delay`` seconds."""
    await conn.execute(
        "UPDATE imaging_study SET state = 'failed', attempts = attempts + 1, last_error = $2,"
        " next_attempt_at = clock_timestamp() + make_interval(secs => $3) WHERE study_uid = $1",
        study_uid, error, delay,
    )


async def latest_published_manifest(conn: asyncpg.Connection, study_uid: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM imaging_manifest WHERE study_uid = $1 AND state = 'published'"
        " ORDER BY published_at DESC LIMIT 1",
        study_uid,
    )


async def add_manifest(conn: asyncpg.Connection, *, study_uid: str, document_unique_id: str, entry_uuid: str,
                       storage_key: str, size: int, hash: str, instance_count: int,
                       replaces_entry_uuid: str | None, snapshot: object) -> bool:
    """Queue a new manifest unless instances arrived after ``snapshot`` (the study's last_received_at).

    Earlier manifests of the study that never got published are superseded: only the newest goes out.
    """
    async with conn.transaction():
        taken = await conn.fetchval(
            "UPDATE imaging_study SET changed = false, state = 'publishing', attempts = 0, last_error = NULL,"
            " next_attempt_at = NULL, needs_action = false"
            " WHERE study_uid = $1 AND changed AND last_received_at = $2 RETURNING true",
            study_uid, snapshot,
        )
        if not taken:
            return False
        await conn.execute(
            "UPDATE imaging_manifest SET state = 'superseded' WHERE study_uid = $1 AND state IN ('pending', 'failed')",
            study_uid
        )
        await conn.execute(
            "INSERT INTO imaging_manifest (document_unique_id, study_uid, entry_uuid, storage_key, size, hash,"
            " instance_count, replaces_entry_uuid) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            document_unique_id, study_uid, entry_uuid, storage_key, size, hash, instance_count, replaces_entry_uuid,
        )
    return True


async def due_manifests(conn: asyncpg.Connection, limit: int = 10) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT m.*, s.affinity_patient_id FROM imaging_manifest m JOIN imaging_study s USING (study_uid)"
        " WHERE m.state = 'pending' AND m.next_attempt_at <= clock_timestamp() ORDER BY m.next_attempt_at LIMIT $1",
        limit,
    )


async def manifest_published(conn: asyncpg.Connection, document_unique_id: str) -> None:
    async with conn.transaction():
        study_uid = await conn.fetchval(
            "UPDATE imaging_manifest m SET state = 'published', published_at = clock_timestamp(), last_error = NULL,"
            " attempts = attempts + 1, patient_cx = (SELECT affinity_patient_id FROM imaging_study s"
            " WHERE s.study_uid = m.study_uid)"
            " WHERE document_unique_id = $1 AND state = 'pending' RETURNING study_uid",
            document_unique_id,
        )
        if study_uid:
            await conn.execute(  # the registry deprecated the one it replaces (RPLC)
                "UPDATE imaging_manifest SET state = 'replaced' WHERE state = 'published' AND entry_uuid ="
                " (SELECT replaces_entry_uuid FROM imaging_manifest WHERE document_unique_id = $1)",
                document_unique_id)
            await conn.execute(
                "UPDATE imaging_study SET state = 'published' WHERE study_uid = $1 AND state = 'publishing'",
                study_uid,
            )


async def manifest_failed(conn: asyncpg.Connection, document_unique_id: str, error: str, delay: float) -> None:
    await conn.execute(
        "UPDATE imaging_manifest SET attempts = attempts + 1, last_error = $2,"
        " next_attempt_at = clock_timestamp() + make_interval(secs => $3) WHERE document_unique_id = $1",
        document_unique_id, error, delay,
    )


async def manifest_refused(conn: asyncpg.Connection, document_unique_id: str, error: str,
                           recheck_delay: float) -> None:
    """The manifest was refused for good: not retried; its study needs action (the patient mapping is
    looked at again after ``recheck_delay`` seconds, see Tracker.recheck)."""
    async with conn.transaction():
        study_uid = await conn.fetchval(
            "UPDATE imaging_manifest SET state = 'failed', attempts = attempts + 1, last_error = $2"
            " WHERE document_unique_id = $1 AND state = 'pending' RETURNING study_uid",
            document_unique_id, error,
        )
        if study_uid:
            await conn.execute(
                "UPDATE imaging_study SET state = 'failed', needs_action = true, last_error = $2, attempts = 0,"
                " next_attempt_at = clock_timestamp() + make_interval(secs => $3)"
                " WHERE study_uid = $1 AND NOT changed",
                study_uid, error, recheck_delay,
            )


async def retry_study(conn: asyncpg.Connection, study_uid: str) -> bool:
    """Build and send the study's manifest again (its patient asked of PIX again): after an operator fixed
    what made it fail. False when the study is unknown or has nothing to retry."""
    async with conn.transaction():
        retried = await conn.fetchval(
            "UPDATE imaging_study SET changed = true, state = 'receiving', needs_action = false,"
            " affinity_patient_id = NULL, attempts = 0, last_error = NULL, next_attempt_at = NULL"
            " WHERE study_uid = $1 AND (needs_action OR state IN ('failed', 'waiting_patient')) RETURNING true",
            study_uid,
        )
        if retried:
            await conn.execute(
                "UPDATE imaging_manifest SET state = 'superseded' WHERE study_uid = $1 AND state = 'failed'",
                study_uid)
            await conn.execute(  # a refused deprecation (ITI-57) is sent again too
                "UPDATE imaging_manifest SET attempts = 0, next_attempt_at = clock_timestamp()"
                " WHERE study_uid = $1 AND state = 'deprecating'", study_uid)
    return bool(retried)


async def due_rechecks(conn: asyncpg.Connection, limit: int = 10) -> list[asyncpg.Record]:
    """Studies needing action whose patient mapping is due to be looked at again."""
    return await conn.fetch(
        "SELECT * FROM imaging_study WHERE needs_action AND NOT changed AND next_attempt_at <= clock_timestamp()"
        " ORDER BY next_attempt_at LIMIT $1",
        limit,
    )


async def postpone_recheck(conn: asyncpg.Connection, study_uid: str, delay: float) -> None:
    await conn.execute(
        "UPDATE imaging_study SET next_attempt_at = clock_timestamp() + make_interval(secs => $2)"
        " WHERE study_uid = $1 AND needs_action",
        study_uid, delay,
    )


async def publication_status(conn: asyncpg.Connection, *, problems_only: bool = True) -> list[dict]:
    """Every study not (yet) transferred: waiting for its patient, with a manifest still to be sent, or
    refused for good and needing an operator (``needs_action``, listed first).

    With ``problems_only`` false, published studies are listed too.
    """
    rows = await conn.fetch(
        "SELECT s.study_uid, s.patient_id, s.patient_issuer_oid, s.affinity_patient_id, s.state, s.needs_action,"
        " s.last_received_at, s.changed,"
        " (SELECT count(*) FROM imaging_instance i WHERE i.study_uid = s.study_uid) AS instances,"
        " COALESCE(m.attempts, s.attempts) AS attempts, COALESCE(m.last_error, s.last_error) AS last_error,"
        " COALESCE(m.next_attempt_at, s.next_attempt_at) AS next_attempt_at, m.document_unique_id AS manifest_uid"
        " FROM imaging_study s LEFT JOIN LATERAL (SELECT * FROM imaging_manifest x WHERE x.study_uid = s.study_uid"
        "   AND x.state IN ('pending', 'deprecating') ORDER BY x.created_at DESC LIMIT 1) m ON true"
        " WHERE NOT $1 OR s.state NOT IN ('published', 'withdrawn') OR s.changed OR m.document_unique_id IS NOT NULL"
        " ORDER BY s.needs_action DESC, s.last_received_at",
        problems_only,
    )
    return [dict(r) for r in rows]
