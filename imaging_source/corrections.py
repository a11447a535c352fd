"""Corrections at the hospital PACS: an instance sent again with changed attributes, or a study sent again
under another Patient ID.

Ingest indexes a copy of a known SOP instance under its new storage key and received_at but leaves the
study as it was. Each tracker pass looks at instances received since the previous pass (with a margin for
transactions still open) whose study did not change since: when the patient, study or series attributes
the manifest metadata is built from differ, the study takes them and is published again (RPLC). When the
hospital number changed, the published manifest is deprecated at once (ITI-57) and the study is
published anew, for the patient PIX then maps the new hospital number to.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import pydicom

from imaging_source.ingest import RejectedInstance, describe

if TYPE_CHECKING:
    import asyncpg

    from imaging_source.context import ImagingSource
    from imaging_source.ingest import InstanceInfo

log = logging.getLogger(__name__)

MARGIN = timedelta(seconds=10)  # longer than any ingest transaction; each pass reads this much again
MODALITY_TAG = "00080060"  # longer than any ingest transaction


async def resent_instances(conn: asyncpg.Connection, since: datetime | None, limit: int = 500) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT i.sop_instance_uid, i.study_uid, i.series_uid, i.storage_key, i.transfer_syntax_uid, i.received_at"
        " FROM imaging_instance i JOIN imaging_study s USING (study_uid)"
        " WHERE ($1::timestamptz IS NULL OR i.received_at > $1) AND i.received_at > s.last_received_at"
        " ORDER BY i.received_at LIMIT $2",
        since, limit,
    )


async def apply_correction(conn: asyncpg.Connection, info: InstanceInfo) -> bool:
    """Take the attributes of a re-sent instance into its study and series; True when anything the
    manifest metadata is built from changed (the study is then published again)."""
    async with conn.transaction():
        study = await conn.fetchrow(
            "SELECT patient_id, patient_issuer_oid, patient_issuer_ns, accession_number, header FROM imaging_study"
            " WHERE study_uid = $1 FOR UPDATE", info.study_uid)
        series = await conn.fetchrow(
            "SELECT modality, body_part, anatomic_region, series_number, series_description FROM imaging_series"
            " WHERE series_uid = $1", info.series_uid)
        if study is None:
            return False
        header = study["header"] if isinstance(study["header"], dict) else json.loads(study["header"])
        header.pop(MODALITY_TAG, None)  # differs between the series of one study by nature
        new_header = {k: v for k, v in info.header.items() if k != MODALITY_TAG}
        patient = (info.patient_id, info.patient_issuer_oid, info.patient_issuer_ns)
        new_patient = patient != (study["patient_id"], study["patient_issuer_oid"], study["patient_issuer_ns"])
        series_values = (info.modality, info.body_part, info.anatomic_region, info.series_number,
                         info.series_description)
        changed = (new_patient or header != new_header or info.accession_number != study["accession_number"]
                   or (series is not None and tuple(series.values()) != series_values))
        if not changed:
            return False
        await conn.execute(
            "UPDATE imaging_study SET patient_id = $2, patient_issuer_oid = $3, patient_issuer_ns = $4,"
            " accession_number = $5, header = $6::jsonb, changed = true, last_received_at = clock_timestamp(),"
            " state = 'receiving', affinity_patient_id = CASE WHEN $7 THEN NULL ELSE affinity_patient_id END"
            " WHERE study_uid = $1",
            info.study_uid, *patient, info.accession_number, json.dumps(info.header), new_patient)
        await conn.execute(
            "UPDATE imaging_series SET modality = $2, body_part = $3, anatomic_region = $4, series_number = $5,"
            " series_description = $6 WHERE series_uid = $1", info.series_uid, *series_values)
        if new_patient:
            # The images are no longer this patient's: withdraw them from the patient's list now (ITI-57, sent
            # by imaging_source.rejection.deprecate), before the new patient is even known; the study is then
            # published for the new patient as an original (RPLC cannot change the patient).
            await conn.execute(
                "UPDATE imaging_manifest SET state = 'deprecating', attempts = 0, last_error = NULL,"
                " next_attempt_at = clock_timestamp() WHERE study_uid = $1 AND state = 'published'",
                info.study_uid)
    log.info("study %s: instance %s sent again with changed attributes%s: publishing again", info.study_uid,
             info.sop_instance_uid, f" (now patient {info.patient_id})" if new_patient else "")
    return True


class Corrections:
    """Remembers how far the previous pass looked."""

    def __init__(self) -> None:
        self.since: datetime | None = None

    async def run(self, source: ImagingSource) -> None:
        settings = source.settings
        async with source.pool.acquire() as conn:
            started = await conn.fetchval("SELECT clock_timestamp()")
            rows = await resent_instances(conn, self.since)
        for row in rows:
            try:
                data = await asyncio.to_thread(source.storage.read, row["storage_key"])
                ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
                info = describe(ds, row["transfer_syntax_uid"], issuer_oid=settings.patient_id_issuer_oid,
                                issuer_ns=settings.patient_id_issuer_namespace)
            except (OSError, RejectedInstance, ValueError) as exc:
                log.warning("instance %s sent again could not be read: %s", row["sop_instance_uid"], exc)
                continue
            async with source.pool.acquire() as conn:
                await apply_correction(conn, info)
        if len(rows) < 500:
            self.since = started - MARGIN
