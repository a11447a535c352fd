"""Import (Insignia-style): a study of the patient's list copied into the signed-in user's hospital PACS.

A job per (hospital, study manifest), kept in PostgreSQL (``portal_import``) and run in the portal's
background: the manifest (ITI-43) names the instances and the imaging source; the hospital's own
patient number is found by PIX (ITI-9); the instances come by RAD-69 in batches, get the hospital's
Patient ID / Issuer (the source's identifiers kept in Other Patient IDs Sequence, as IRWF.b import
reconciliation does) and go to the hospital's PACS by C-STORE. A portal restart puts running jobs
back in the queue (sending the same SOP instances again is harmless); a failure keeps its reason
until Retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import pydicom
from aiohttp import web
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence

from consumer.client.imaging import InstanceRequest, retrieve_imaging_document_set
from consumer.client.query import get_documents
from consumer.client.retrieve import DocumentRequest, retrieve_document_set
from consumer.client.soap import SoapFaultError, TransportError
from consumer.portal import manifests
from consumer.portal.aggregate import Row
from consumer.portal.context import Portal
from consumer.portal.search import SearchError, normalise_patient_id, patient_cx
from consumer.portal.sessions import PortalSession, require_session
from consumer.portal.settings import Pacs, PortalSettings
from consumer.portal.xua import CALLER, Caller
from ihe import hl7, tls
from ihe.metadata.model import Identifiable

log = logging.getLogger(__name__)

BATCH = 16  # instances per RAD-69 request: bounds the memory a job holds
WORKERS = 2
POLL_SECONDS = 5.0
LOCK_SPACE = 0x494D50  # advisory lock namespace of import jobs ("IMP")
MLLP_TIMEOUT = 10.0
STORE_OK = {0x0000, 0xB000, 0xB006, 0xB007}  # success and the C-STORE warnings (stored)


class ImportFailed(Exception):
    """The job cannot go on; the message is the reason shown on the row."""


@dataclass(frozen=True, slots=True)
class StudyInstances:
    study_uid: str
    instances: list[InstanceRequest]
    rad69_url: str


# --- pure ---------------------------------------------------------------------------------------------


def rad69_url(retrieve_url: str | None) -> str | None:
    """The imaging source's RAD-69 endpoint next to its WADO-RS root (``.../dicomweb`` -> ``.../rad69``)."""
    root = manifests.dicomweb_root(retrieve_url)
    if root is None or not root.endswith("/dicomweb"):
        return None
    return root[: -len("/dicomweb")] + "/rad69"


def manifest_instances(data: bytes) -> StudyInstances:
    """Every instance a KOS manifest references, with the RAD-69 address of its source."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except (InvalidDicomError, ValueError, EOFError, OSError) as exc:
        raise ImportFailed(f"the study's manifest is not a DICOM file: {exc}") from None
    instances = []
    url = None
    for study in ds.get("CurrentRequestedProcedureEvidenceSequence") or []:
        for series in study.get("ReferencedSeriesSequence") or []:
            location = str(series.get("RetrieveLocationUID", "") or "")
            url = url or rad69_url(str(series.get("RetrieveURL", "") or ""))
            if not location:
                raise ImportFailed(f"the manifest gives no Retrieve Location UID for series {series.SeriesInstanceUID}")
            for sop in series.get("ReferencedSOPSequence") or []:
                instances.append(InstanceRequest(str(study.StudyInstanceUID), str(series.SeriesInstanceUID),
                                                 str(sop.ReferencedSOPInstanceUID), location))
    if not instances:
        raise ImportFailed("the study's manifest references no instances")
    if url is None:
        raise ImportFailed("the manifest gives no Retrieve URL of an imaging source answering RAD-69")
    return StudyInstances(instances[0].study_uid, instances, url)


def reconcile(ds: Dataset, local_id: str, issuer_oid: str) -> Dataset:
    """``ds`` with the importing hospital's Patient ID and Issuer; the identifiers it came with are kept
    first in Other Patient IDs Sequence (IHE RAD IRWF.b import reconciliation)."""
    original = Dataset()
    original.PatientID = ds.get("PatientID", "") or ""
    if ds.get("IssuerOfPatientID"):
        original.IssuerOfPatientID = ds.IssuerOfPatientID
    if ds.get("IssuerOfPatientIDQualifiersSequence"):
        original.IssuerOfPatientIDQualifiersSequence = ds.IssuerOfPatientIDQualifiersSequence
    original.TypeOfPatientID = "TEXT"
    others = [item for item in (ds.get("OtherPatientIDsSequence") or [])
              if item.get("PatientID") != local_id]
    if original.PatientID and original.PatientID != local_id:
        others.insert(0, original)
    ds.PatientID = local_id
    ds.IssuerOfPatientID = issuer_oid
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = issuer_oid
    qualifiers.UniversalEntityIDType = "ISO"
    ds.IssuerOfPatientIDQualifiersSequence = Sequence([qualifiers])
    ds.OtherPatientIDsSequence = Sequence(others)
    return ds


def row_status(job: asyncpg.Record | dict) -> str:
    if job["state"] == "imported":
        return "imported"
    if job["state"] == "failed":
        return f"failed: {job['reason']}"
    total = job["total_count"]
    return f"being imported {job['done_count']}/{total}" if total is not None else "being imported"


def job_json(job: asyncpg.Record | dict) -> dict:
    return {"id": job["id"], "hospital": job["hospital"], "state": job["state"], "done": job["done_count"],
            "total": job["total_count"], "reason": job["reason"], "study_uid": job["study_uid"],
            "local_patient_id": job["local_patient_id"], "attempts": job["attempts"],
            "repository_unique_id": job["repository_unique_id"], "document_unique_id": job["document_unique_id"],
            "updated_at": job["updated_at"].isoformat()}


# --- the job ------------------------------------------------------------------------------------------


async def _set(pool: asyncpg.Pool, job_id: int, **values) -> None:
    names = list(values)
    sets = ", ".join(f"{n} = ${i + 2}" for i, n in enumerate(names))
    async with pool.acquire() as conn:
        await conn.execute(f"UPDATE portal_import SET {sets}, updated_at = now() WHERE id = $1",
                           job_id, *values.values())


async def _manifest(portal: Portal, repository_unique_id: str, document_unique_id: str) -> StudyInstances:
    hospital = portal.settings.hospital_by_repository(repository_unique_id)
    if hospital is None:
        raise ImportFailed(f"repository {repository_unique_id} is not configured in this portal")
    try:
        result = await retrieve_document_set(portal.soap, hospital.repository_url,
                                             [DocumentRequest(repository_unique_id, document_unique_id)])
    except (TransportError, SoapFaultError, TimeoutError) as exc:
        raise ImportFailed(f"{hospital.name}'s repository could not give the study's manifest: {exc}") from None
    doc = next((d for d in result.documents if d.document_unique_id == document_unique_id), None)
    if doc is None or doc.data is None:
        reason = "; ".join(e.context or e.code for e in result.errors) or result.status
        raise ImportFailed(f"{hospital.name}'s repository did not return the study's manifest ({reason})")
    return manifest_instances(doc.data)


async def check_document_of_patient(portal: Portal, patient_id: str, repository_unique_id: str,
                                    document_unique_id: str) -> None:
    """The manifest must be a document of ``patient_id`` at a registry (GetDocuments), so a form naming
    someone else's study cannot put it under this patient's number."""
    settings = portal.settings
    reasons = []
    for registry in settings.registries:
        try:
            entries = await get_documents(portal.soap, registry.url, [document_unique_id])
        except Exception as exc:  # transport errors, faults, failure responses: ask the next registry
            reasons.append(f"{registry.name}: {exc}"[:200])
            continue
        for entry in entries:
            if entry.unique_id == document_unique_id and entry.repository_unique_id == repository_unique_id:
                if (entry.patient_id and entry.patient_id.id == patient_id
                        and entry.patient_id.authority_oid == settings.affinity_domain_oid):
                    return
                raise ImportFailed(f"the study is not a document of patient {patient_id}")
    if reasons:
        raise ImportFailed(f"the registry could not confirm the study's patient: {'; '.join(reasons)}")
    raise ImportFailed("the study's manifest is not known to any registry of this portal")


async def local_patient_id(settings: PortalSettings, hospital: str, patient_id: str) -> tuple[str, str]:
    """(the hospital's own number for ``patient_id``, its assigning authority OID) by PIX ITI-9."""
    config = settings.hospital_by_name(hospital)
    oid = config.patient_id_oid if config else None
    if not oid:
        raise ImportFailed(f"{hospital}'s patient numbers (assigning authority) are not configured in this portal")
    address = settings.mllp_address
    if address is None:
        raise ImportFailed("this portal has no registry MLLP address configured (--registry-mllp) for PIX")
    try:
        found = await hl7.pix_query(address[0], address[1], Identifiable(patient_id, settings.affinity_domain_oid),
                                    [oid], timeout=MLLP_TIMEOUT, sending_application="XDS-PORTAL")
    except hl7.PixQueryError as exc:
        raise ImportFailed(f"the registry could not be asked for {hospital}'s number (PIX): {exc}") from None
    ids = sorted({i.id for i in found if i.authority_oid == oid})
    if not ids:
        raise ImportFailed(f"{hospital} has no patient number for NHS number {patient_id} (PIX found none)")
    if len(ids) > 1:
        raise ImportFailed(f"NHS number {patient_id} is linked to several {hospital} numbers ({', '.join(ids)})")
    return ids[0], oid


def c_store(pacs: Pacs, calling_ae: str, datasets: list[Dataset]) -> None:
    """Send ``datasets`` to ``pacs`` over one association (blocking: run in a thread)."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, syntax)
    where = f"PACS {pacs.ae_title} at {pacs.host}:{pacs.port}"
    assoc = ae.associate(pacs.host, pacs.port, ae_title=pacs.ae_title, tls_args=tls.dicom_tls_args(pacs.host))
    if not assoc.is_established:
        raise ImportFailed(f"{where} could not be reached or refused the association"
                           + (" (over TLS: see the log for the reason)" if tls.node() else ""))
    try:
        tls.check_association(assoc, pacs.host, pacs.port)
    except tls.PeerRefused as exc:
        raise ImportFailed(f"{where}: {exc}") from None
    try:
        for ds in datasets:
            try:
                status = assoc.send_c_store(ds)
            except ValueError:  # no presentation context of this SOP class and transfer syntax was accepted
                raise ImportFailed(f"{where} does not accept {ds.SOPClassUID.name} in "
                                   f"{ds.file_meta.TransferSyntaxUID.name}") from None
            code = status.Status if status and "Status" in status else None
            if code is None:
                raise ImportFailed(f"{where} gave no answer to C-STORE of {ds.SOPInstanceUID}")
            if code not in STORE_OK:
                raise ImportFailed(f"{where} refused {ds.SOPInstanceUID} (C-STORE status 0x{code:04X})")
    finally:
        if assoc.is_established:
            assoc.release()


async def run_job(portal: Portal, job: asyncpg.Record) -> None:
    """One attempt at a job; its row ends 'imported' or 'failed' with the reason."""
    job_id = job["id"]
    settings = portal.settings
    # RAD-69 and ITI-43 go out on behalf of the user who queued the job (their XUA assertion and audit).
    requester = PortalSession(job["requested_by"], job["requester_role"], job["requester_organisation"], "",
                              job["requester_subject"] or "")
    token = CALLER.set(Caller(requester, patient_cx(job["patient_id"], settings)))
    try:
        pacs = settings.pacs_of(job["hospital"])
        if pacs is None:
            raise ImportFailed(f"{job['hospital']} has no PACS configured in this portal (--pacs)")
        await check_document_of_patient(portal, job["patient_id"], job["repository_unique_id"],
                                        job["document_unique_id"])
        study = await _manifest(portal, job["repository_unique_id"], job["document_unique_id"])
        await _set(portal.pool, job_id, study_uid=study.study_uid, total_count=len(study.instances), done_count=0)
        local_id, issuer = await local_patient_id(settings, job["hospital"], job["patient_id"])
        await _set(portal.pool, job_id, local_patient_id=local_id)
        done = 0
        for start in range(0, len(study.instances), BATCH):
            batch = study.instances[start:start + BATCH]
            try:
                result = await retrieve_imaging_document_set(portal.soap, study.rad69_url, batch)
            except (TransportError, TimeoutError) as exc:
                raise ImportFailed(f"the imaging source could not be reached (RAD-69 {study.rad69_url}): "
                                   f"{exc}"[:500]) from None
            except (SoapFaultError, ValueError) as exc:
                raise ImportFailed(f"the imaging source refused RAD-69 ({study.rad69_url}): {exc}"[:500]) from None
            missing = [i.sop_instance_uid for i in batch if i.sop_instance_uid not in result.instances]
            if missing:
                said = "; ".join(e.context or e.code for e in result.errors)[:300]
                raise ImportFailed(f"the imaging source did not return {len(missing)} instance(s): {said}")
            datasets = [reconcile(pydicom.dcmread(io.BytesIO(result.instances[i.sop_instance_uid])), local_id,
                                  issuer) for i in batch]
            await asyncio.to_thread(c_store, pacs, settings.import_ae_title, datasets)
            done += len(batch)
            await _set(portal.pool, job_id, done_count=done)
        await _set(portal.pool, job_id, state="imported", reason=None)
        log.info("import %s: %d instances of study %s into %s as patient %s", job_id, done, study.study_uid,
                 pacs.ae_title, local_id)
    except ImportFailed as exc:
        log.warning("import %s failed: %s", job_id, exc)
        await _set(portal.pool, job_id, state="failed", reason=str(exc))
    except Exception as exc:  # anything unexpected still ends the job with a reason, never leaves it running
        log.exception("import %s failed", job_id)
        await _set(portal.pool, job_id, state="failed", reason=f"internal error: {type(exc).__name__}: {exc}"[:500])
    finally:
        CALLER.reset(token)


async def _claim(conn: asyncpg.Connection) -> asyncpg.Record | None:
    """The oldest queued job, now running and locked by ``conn``'s session (an advisory lock that
    PostgreSQL drops when the process holding it dies, which is how :func:`resume` tells a job whose
    portal is gone from one another portal process is working on)."""
    return await conn.fetchrow(
        "UPDATE portal_import SET state = 'running', attempts = attempts + 1, updated_at = now() WHERE id = ("
        " SELECT id FROM portal_import WHERE state = 'queued' ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED)"
        " RETURNING *, pg_advisory_lock($1, id::integer)", LOCK_SPACE)


async def worker(portal: Portal, wake: asyncio.Event) -> None:
    while True:
        job = None
        try:
            async with portal.pool.acquire() as conn:
                job = await _claim(conn)
                if job is not None:
                    try:
                        await run_job(portal, job)
                    finally:
                        await conn.execute("SELECT pg_advisory_unlock($1, $2::integer)", LOCK_SPACE, job["id"])
        except Exception as exc:  # the database may be restarting
            log.warning("import queue unavailable: %s", exc)
        if job is not None:
            continue
        wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake.wait(), POLL_SECONDS)
        with contextlib.suppress(Exception):
            if await resume(portal.pool):
                wake.set()


async def resume(pool: asyncpg.Pool) -> list[int]:
    """Running jobs whose portal process is gone (no one holds their lock) go back to the queue; their ids."""
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(
            "UPDATE portal_import SET state = 'queued', updated_at = now() "
            "WHERE state = 'running' AND pg_try_advisory_xact_lock($1, id::integer) RETURNING id", LOCK_SPACE)
    return [r["id"] for r in rows]


# --- the list's rows and the routes ----------------------------------------------------------------------


def user_hospital(portal: Portal, session: PortalSession) -> str:
    """The hospital the signed-in user imports into: the session's organisation, when a configured hospital."""
    organisation = (session.organisation or "").strip()
    if not organisation or portal.settings.hospital_by_name(organisation) is None:
        raise web.HTTPForbidden(text=f"your organisation ({organisation or 'none'}) is not one of this portal's "
                                     "hospitals, so there is no PACS to import into")
    return organisation


async def mark_rows(portal: Portal, session: PortalSession | None, patient_id: str, rows: Iterable[Row]) -> None:
    """Imaging rows imported (or being imported) into the user's hospital show that as their status."""
    if session is None or not session.organisation:
        return
    rows = [r for r in rows if r.kind == "imaging"]
    if not rows:
        return
    async with portal.pool.acquire() as conn:
        jobs = await conn.fetch("SELECT * FROM portal_import WHERE patient_id = $1 AND hospital = $2",
                                patient_id, session.organisation)
    by_key = {(j["repository_unique_id"], j["document_unique_id"]): j for j in jobs}
    for row in rows:
        job = by_key.get((row.repository_unique_id, row.document_unique_id))
        if job is None:
            continue
        row.import_job = job_json(job)  # also on a row whose source is down now (its Retry stays at hand)
        if row.status == "available":
            row.status = row_status(job)
            row.status_reason = job["reason"] or ""


def install(app: web.Application, portal: Portal) -> None:
    """The import routes, and the background workers started and stopped with ``app``."""
    wake = asyncio.Event()

    async def start(_app: web.Application) -> None:
        resumed = await resume(portal.pool)
        if resumed:
            log.info("import: %d job(s) interrupted by the last stop are queued again", len(resumed))
        for n in range(WORKERS):
            portal.extras[f"import-worker-{n}"] = asyncio.create_task(worker(portal, wake))

    app.on_startup.append(start)

    def back(request: web.Request, patient_id: str) -> web.StreamResponse:
        if request.headers.get("Accept", "").startswith("application/json"):
            raise web.HTTPAccepted(text="queued")
        from urllib.parse import quote

        raise web.HTTPSeeOther(f"/patients/{quote(patient_id, safe='')}")

    async def start_import(request: web.Request) -> web.StreamResponse:
        session = require_session(request)
        hospital = user_hospital(portal, session)
        form = await request.post()
        try:
            patient_id = normalise_patient_id(str(form.get("patient_id", "")), portal.settings)
        except SearchError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        repository, document = str(form.get("repository_unique_id", "")), str(form.get("document_unique_id", ""))
        if not repository or not document:
            raise web.HTTPBadRequest(text="repository_unique_id and document_unique_id name the study's manifest")
        async with portal.pool.acquire() as conn:
            await conn.execute(
                "INSERT INTO portal_import (hospital, patient_id, repository_unique_id, document_unique_id, "
                "requested_by, requester_subject, requester_role, requester_organisation) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8) "
                "ON CONFLICT (hospital, repository_unique_id, document_unique_id) DO UPDATE"
                " SET state = 'queued', reason = NULL, done_count = 0, attempts = 0, patient_id = EXCLUDED.patient_id,"
                " requested_by = EXCLUDED.requested_by, requester_subject = EXCLUDED.requester_subject,"
                " requester_role = EXCLUDED.requester_role, requester_organisation = EXCLUDED.requester_organisation,"
                " updated_at = now() WHERE portal_import.state IN ('failed', 'imported')",
                hospital, patient_id, repository, document, session.user, session.subject, session.role,
                session.organisation)
        wake.set()
        return back(request, patient_id)

    async def retry(request: web.Request) -> web.StreamResponse:
        session = require_session(request)
        hospital = user_hospital(portal, session)
        try:
            job_id = int(request.match_info["job_id"])
        except ValueError:
            raise web.HTTPNotFound(text="no such import") from None
        async with portal.pool.acquire() as conn:
            job = await conn.fetchrow(
                "UPDATE portal_import SET state = 'queued', reason = NULL, done_count = 0, requested_by = $3, "
                "requester_subject = $4, requester_role = $5, requester_organisation = $6, "
                "updated_at = now() WHERE id = $1 AND hospital = $2 AND state = 'failed' RETURNING patient_id",
                job_id, hospital, session.user, session.subject, session.role, session.organisation)
            if job is None:
                exists = await conn.fetchval("SELECT state FROM portal_import WHERE id = $1 AND hospital = $2",
                                             job_id, hospital)
                if exists is None:
                    raise web.HTTPNotFound(text="no such import for your hospital")
                raise web.HTTPConflict(text=f"this import is {exists}, not failed: nothing to retry")
        wake.set()
        return back(request, job["patient_id"])

    async def list_imports(request: web.Request) -> web.StreamResponse:
        session = require_session(request)
        hospital = user_hospital(portal, session)
        state = request.query.get("state")
        async with portal.pool.acquire() as conn:
            jobs = await conn.fetch(
                "SELECT * FROM portal_import WHERE hospital = $1 AND ($2::text IS NULL OR state = $2) "
                "ORDER BY updated_at DESC LIMIT 500", hospital, state)
        if request.path.startswith("/api/"):
            return web.json_response({"hospital": hospital, "imports": [job_json(j) for j in jobs]})
        env = request.app["templates"]
        text = env.get_template("imports.html").render(session=session, hospital=hospital, jobs=jobs,
                                                      status=row_status)
        return web.Response(text=text, content_type="text/html", charset="utf-8")

    app.add_routes([web.post("/imports", start_import), web.post("/imports/{job_id}/retry", retry),
                    web.get("/imports", list_imports), web.get("/api/imports", list_imports)])
