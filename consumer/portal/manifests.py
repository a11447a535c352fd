"""Imaging rows: what a study's KOS manifest says (series, images, where the images are), read once
by ITI-43 and kept in PostgreSQL, and :func:`locate` for the DICOMweb proxy."""

from __future__ import annotations

import io
from dataclasses import dataclass

import asyncpg
import pydicom
from pydicom.errors import InvalidDicomError

from consumer.client.retrieve import DocumentRequest, retrieve_document_set
from consumer.client.soap import SoapClient, SoapFaultError

KOS_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.59"


class ManifestError(Exception):
    """The manifest could not be retrieved or read."""


@dataclass(frozen=True, slots=True)
class ManifestInfo:
    study_uid: str
    series_count: int
    image_count: int
    retrieve_url: str | None
    retrieve_location_uid: str | None
    retrieve_ae_title: str | None


def read_manifest(data: bytes) -> ManifestInfo:
    """Counts and retrieve addresses of a KOS manifest (XDS-I.b: Retrieve URL, Location UID and AE
    title are at series level of the Current Requested Procedure Evidence Sequence)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise ManifestError(f"the manifest is not a DICOM file: {exc}") from None
    if str(ds.get("SOPClassUID", "")) != KOS_SOP_CLASS_UID:
        raise ManifestError(f"the manifest is not a Key Object Selection (SOP class {ds.get('SOPClassUID')})")
    studies = list(ds.get("CurrentRequestedProcedureEvidenceSequence") or [])
    if not studies:
        raise ManifestError("the manifest references no study")
    series_uids: set[str] = set()
    images = 0
    url = location = ae = None
    for study in studies:
        for series in study.get("ReferencedSeriesSequence") or []:
            series_uids.add(str(series.get("SeriesInstanceUID", "")))
            images += len(series.get("ReferencedSOPSequence") or [])
            url = url or (str(series.RetrieveURL) if series.get("RetrieveURL") else None)
            location = location or (str(series.RetrieveLocationUID) if series.get("RetrieveLocationUID") else None)
            ae = ae or (str(series.RetrieveAETitle) if series.get("RetrieveAETitle") else None)
    return ManifestInfo(str(studies[0].StudyInstanceUID), len(series_uids), images, url, location, ae)


def dicomweb_root(retrieve_url: str | None) -> str | None:
    """The DICOMweb service root of a Retrieve URL, which may be the root itself or point into it
    (``.../studies/{uid}[/series/{uid}]``)."""
    if not retrieve_url:
        return None
    url = retrieve_url.strip()
    if not url.startswith(("http://", "https://")):
        return None
    cut = url.find("/studies")
    return (url[:cut] if cut > 0 else url).rstrip("/")


async def cached(conn: asyncpg.Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], ManifestInfo]:
    """The cached manifests among ``keys`` (repository uniqueId, document uniqueId)."""
    if not keys:
        return {}
    rows = await conn.fetch(
        "SELECT m.* FROM portal_manifest m JOIN unnest($1::text[], $2::text[]) AS k(r, d) "
        "ON m.repository_unique_id = k.r AND m.document_unique_id = k.d",
        [k[0] for k in keys], [k[1] for k in keys])
    return {(r["repository_unique_id"], r["document_unique_id"]): ManifestInfo(
        r["study_uid"], r["series_count"], r["image_count"], r["retrieve_url"], r["retrieve_location_uid"],
        r["retrieve_ae_title"]) for r in rows}


async def store(conn: asyncpg.Connection, repository_unique_id: str, document_unique_id: str,
                info: ManifestInfo) -> None:
    await conn.execute(
        "INSERT INTO portal_manifest (repository_unique_id, document_unique_id, study_uid, series_count, image_count, "
        "retrieve_url, retrieve_location_uid, retrieve_ae_title) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
        "ON CONFLICT (repository_unique_id, document_unique_id) DO NOTHING",
        repository_unique_id, document_unique_id, info.study_uid, info.series_count, info.image_count,
        info.retrieve_url, info.retrieve_location_uid, info.retrieve_ae_title)


async def store_many(conn: asyncpg.Connection, repository_unique_id: str, found: dict[str, ManifestInfo]) -> None:
    """:func:`store` of several manifests of one repository (document uniqueId -> info), pipelined."""
    if found:
        await conn.executemany(
            "INSERT INTO portal_manifest (repository_unique_id, document_unique_id, study_uid, series_count, "
            "image_count, retrieve_url, retrieve_location_uid, retrieve_ae_title) VALUES ($1, $2, $3, $4, $5, $6, "
            "$7, $8) ON CONFLICT (repository_unique_id, document_unique_id) DO NOTHING",
            [(repository_unique_id, uid, i.study_uid, i.series_count, i.image_count, i.retrieve_url,
              i.retrieve_location_uid, i.retrieve_ae_title) for uid, i in found.items()])


async def fetch_many(client: SoapClient, repository_url: str, repository_unique_id: str,
                     document_unique_ids: list[str]) -> dict[str, ManifestInfo | ManifestError]:
    """ITI-43 of several manifests of one repository in one request (one round trip for a patient's
    studies there, not one per row), each read; a manifest missing from the answer or unreadable gets
    its ManifestError, the others are kept."""
    try:
        result = await retrieve_document_set(client, repository_url, [
            DocumentRequest(repository_unique_id, uid) for uid in document_unique_ids])
    except SoapFaultError as exc:  # an answer, so the repository is up; these manifests are not to be had
        refused = ManifestError(f"the repository refused to return the manifest: {exc}")
        return dict.fromkeys(document_unique_ids, refused)
    documents = {d.document_unique_id: d for d in result.documents}
    found: dict[str, ManifestInfo | ManifestError] = {}
    for uid in document_unique_ids:
        doc = documents.get(uid)
        if doc is None or doc.data is None:
            reason = "; ".join(f"{e.code}: {e.context}" for e in result.errors
                               if e.location in (None, "", uid) or uid in (e.context or "")) or result.status
            found[uid] = ManifestError(f"the repository did not return the manifest ({reason})")
            continue
        try:
            found[uid] = read_manifest(doc.data)
        except ManifestError as exc:
            found[uid] = exc
    return found


async def fetch(client: SoapClient, repository_url: str, repository_unique_id: str,
                document_unique_id: str) -> ManifestInfo:
    """ITI-43 one manifest and read it (ManifestError when it cannot be had)."""
    info = (await fetch_many(client, repository_url, repository_unique_id, [document_unique_id]))[document_unique_id]
    if isinstance(info, ManifestError):
        raise info
    return info


async def locate(pool: asyncpg.Pool, study_uid: str) -> str | None:
    """The DICOMweb root of the imaging source holding ``study_uid``, from its newest known manifest."""
    async with pool.acquire() as conn:
        url = await conn.fetchval(
            "SELECT retrieve_url FROM portal_manifest WHERE study_uid = $1 AND retrieve_url IS NOT NULL "
            "ORDER BY fetched_at DESC LIMIT 1", study_uid)
    return dicomweb_root(url)
