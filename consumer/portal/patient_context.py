"""The patient a signed-in browser has open: remembered with its session when a patient list is shown,
so that the DICOMweb proxy can bound a study search without StudyInstanceUID to that patient's studies
(:func:`consumer.portal.dicomweb_proxy.build_routes`, ``patient_studies``)."""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web

from consumer.portal.aggregate import Row
from consumer.portal.context import Portal
from consumer.portal.sessions import COOKIE, token_hash


def study_uids(rows: Iterable[Row]) -> list[str]:
    """The distinct Study Instance UIDs of a list's imaging rows (known from their manifests), in list order."""
    return list(dict.fromkeys(r.study_uid for r in rows if r.kind == "imaging" and r.study_uid))


async def remember(portal: Portal, request: web.Request, patient_id: str, rows: Iterable[Row]) -> None:
    """Keep ``patient_id`` and its studies as the session's open patient (browser sessions only: an access
    token of the JSON twin has no session row)."""
    token = request.cookies.get(COOKIE)
    if not token or request.get("session") is None:
        return
    async with portal.pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO portal_session_patient (token_hash, patient_id, study_uids) "
            "SELECT $1, $2, $3 WHERE EXISTS (SELECT 1 FROM portal_session WHERE token_hash = $1) "
            "ON CONFLICT (token_hash) DO UPDATE SET patient_id = EXCLUDED.patient_id, "
            "study_uids = EXCLUDED.study_uids, opened_at = now()",
            token_hash(token), patient_id, study_uids(rows))


async def open_patient(portal: Portal, request: web.Request) -> tuple[str, list[str]] | None:
    """(patient id, study UIDs) the session has open, or None."""
    token = request.cookies.get(COOKIE)
    if not token or request.get("session") is None:
        return None
    async with portal.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT patient_id, study_uids FROM portal_session_patient WHERE token_hash = $1",
                                  token_hash(token))
    return (row["patient_id"], list(row["study_uids"])) if row else None


async def patient_studies(portal: Portal, request: web.Request) -> list[str]:
    opened = await open_patient(portal, request)
    return opened[1] if opened else []
