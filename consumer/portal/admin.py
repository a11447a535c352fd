"""Registry browser for integration engineers (``/admin``, JSON twin under ``/api/admin``).

Only sessions whose role is the configured ``--admin-role`` may open it. Everything is read through
the standard transactions: patients and their cross-referenced ids by PDQ (ITI-21) at the
registry's MLLP port, submission sets (FindSubmissionSets, GetSubmissionSetAndContents) and
documents of every status (FindDocuments) by ITI-18 at each configured registry, and each imaging
source's publishing status from its ``/status`` JSON. A source that fails is reported on the page;
it never fails the page.

The registry's PDQ answers at most 100 patients and offers no continuation, so the list pages
over those and tells the user to narrow the search (family name prefix with ``*``) when the cap is hit.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp
from aiohttp import web

from consumer.client.browse import find_documents_any_status, find_submission_sets, get_submission_set_and_contents
from consumer.client.query import QueryFailed
from consumer.client.soap import SoapFaultError, TransportError
from consumer.portal import search
from consumer.portal.context import Portal
from consumer.portal.sessions import PortalSession, require_session
from consumer.portal.xua import for_patient
from ihe.metadata.model import DocumentEntry, Identifiable
from ihe.pdq import PdqPatient, PdqQueryError, pdq_query

log = logging.getLogger(__name__)

PAGE_SIZE = 20
PDQ_CAP = 100  # what the registry's PDQ returns at most


def require_admin(request: web.Request, portal: Portal) -> PortalSession:
    """The session, if its role is the admin role; 403 with the reason otherwise."""
    session = require_session(request)
    wanted = portal.settings.admin_role
    if not wanted:
        raise web.HTTPForbidden(text="the registry browser is disabled on this portal: no admin role is configured "
                                     "(--admin-role)")
    if session.role != wanted:
        raise web.HTTPForbidden(text=f"the registry browser is for the {wanted} role; you are signed in as "
                                     f"{session.role or 'no role'}")
    return session


def _cx(i: Identifiable) -> str:
    return f"{i.id}^^^{i.authority_namespace or ''}&{i.authority_oid}&ISO" if i.authority_oid else \
        f"{i.id}^^^{i.authority_namespace or ''}"


def patient_json(p: PdqPatient, affinity_oid: str) -> dict[str, Any]:
    main = p.identifier_in(affinity_oid)
    return {"patient_id": main.id if main else None, "family": p.family, "given": p.given,
            "birth_date": p.birth_date, "sex": p.sex,
            "identifiers": [{"id": i.id, "authority_oid": i.authority_oid, "authority_namespace": i.authority_namespace,
                             "cx": _cx(i)} for i in p.identifiers]}


def _status(value: Any) -> str:
    return str(value or "").rsplit(":", 1)[-1]


def document_json(e: DocumentEntry) -> dict[str, Any]:
    return {"entry_uuid": e.entry_uuid, "logical_uuid": e.logical_uuid, "version": e.version,
            "status": _status(e.status), "unique_id": e.unique_id, "repository_unique_id": e.repository_unique_id,
            "mime_type": e.mime_type, "title": e.title.value if e.title else "", "creation_time": e.creation_time,
            "reference_ids": [r.value for r in e.reference_ids]}


@dataclass(slots=True)
class RegistryView:
    name: str
    ok: bool = True
    reason: str = ""
    submission_sets: list[dict[str, Any]] = field(default_factory=list)
    documents: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class SourceStatus:
    hospital: str
    url: str
    ok: bool = True
    reason: str = ""
    studies: list[dict[str, Any]] = field(default_factory=list)


async def _registry_view(portal: Portal, name: str, url: str, cx: str) -> RegistryView:
    view = RegistryView(name)
    try:
        async with asyncio.timeout(portal.settings.query_deadline * 2):
            sets = await find_submission_sets(portal.soap, url, cx)
            contents = await asyncio.gather(*(get_submission_set_and_contents(portal.soap, url, s.entry_uuid)
                                              for s in sets))
            documents = await find_documents_any_status(portal.soap, url, cx)
    except (TransportError, SoapFaultError, TimeoutError, OSError, aiohttp.ClientError) as exc:
        return RegistryView(name, ok=False, reason=str(exc) or "no answer within the deadline")
    except QueryFailed as exc:  # the registry's own Failure answer
        return RegistryView(name, ok=False, reason=f"the registry answered Failure: {exc}")
    for s, c in sorted(zip(sets, contents, strict=True), key=lambda sc: sc[0].submission_time or "", reverse=True):
        view.submission_sets.append({
            "entry_uuid": s.entry_uuid, "unique_id": s.unique_id, "source_id": s.source_id,
            "submission_time": s.submission_time, "status": _status(s.status),
            "title": s.title.value if s.title else "",
            "documents": [document_json(d) for d in (c.documents if c else [])],
            "folders": len(c.folders) if c else 0})
    view.documents = [document_json(d) for d in sorted(documents, key=lambda d: (d.creation_time or "",
                                                                                  d.version or ""), reverse=True)]
    return view


def _json_safe(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v if isinstance(v, (str, int, float, bool, type(None))) else str(v) for k, v in row.items()}


async def imaging_status(portal: Portal) -> list[SourceStatus]:
    """Every configured imaging source's publishing status (every study, ``/status?all=1``)."""

    async def one(hospital: str, base: str) -> SourceStatus:
        url = f"{base.rstrip('/')}/status?all=1&format=json"
        try:
            async with asyncio.timeout(portal.settings.query_deadline):
                async with portal.http.get(url, headers={"Accept": "application/json"}) as response:
                    if response.status != 200:
                        return SourceStatus(hospital, base, False, f"HTTP {response.status}")
                    rows = await response.json()
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            return SourceStatus(hospital, base, False, str(exc) or "no answer within the deadline")
        return SourceStatus(hospital, base, studies=[_json_safe(r) for r in rows if isinstance(r, dict)])

    return list(await asyncio.gather(*(one(s.name, s.url) for s in portal.settings.imaging_sources)))


async def find_patients(portal: Portal, family: str) -> list[PdqPatient]:
    address = portal.settings.mllp_address
    if address is None:
        raise search.SearchError("this portal has no registry MLLP address configured (--registry-mllp)")
    try:
        return await pdq_query(*address, family=family or "*", limit=PDQ_CAP, timeout=search.MLLP_TIMEOUT)
    except PdqQueryError as exc:
        raise search.SearchError(f"the registry could not be asked (PDQ): {exc}") from None


async def patient_details(portal: Portal, patient_id: str) -> dict[str, Any]:
    settings = portal.settings
    address = settings.mllp_address
    if address is None:
        raise search.SearchError("this portal has no registry MLLP address configured (--registry-mllp)")
    cx = search.patient_cx(patient_id, settings)
    for_patient(cx)  # the resource-id of the XUA assertions of the ITI-18 that follow
    try:
        found = await pdq_query(*address, identifier=Identifiable(patient_id, settings.affinity_domain_oid),
                                timeout=search.MLLP_TIMEOUT)
    except PdqQueryError as exc:
        raise search.SearchError(f"the registry could not be asked (PDQ): {exc}") from None
    registries, sources = await asyncio.gather(
        asyncio.gather(*(_registry_view(portal, r.name, r.url, cx) for r in settings.registries)),
        imaging_status(portal))
    for source in sources:  # this patient's studies only
        source.studies = [s for s in source.studies if s.get("affinity_patient_id") in (patient_id, cx)]
    return {"patient_id": patient_id, "cx": cx,
            "patient": patient_json(found[0], settings.affinity_domain_oid) if found else None,
            "registries": [asdict(r) for r in registries], "imaging_sources": [asdict(s) for s in sources]}


def build_routes(portal: Portal) -> list[web.RouteDef]:
    from consumer.portal.app import render

    async def listing(request: web.Request) -> tuple[dict[str, Any], int]:
        query = request.query.get("family", "").strip()
        try:
            page = max(1, int(request.query.get("page", "1")))
        except ValueError:
            raise web.HTTPBadRequest(text="page must be a number") from None
        try:
            patients = await find_patients(portal, query)
        except search.SearchError as exc:
            return {"family": query, "error": str(exc), "patients": [], "page": page, "pages": 0, "total": 0}, 502
        pages = max(1, -(-len(patients) // PAGE_SIZE))
        shown = patients[(page - 1) * PAGE_SIZE: page * PAGE_SIZE]
        return {"family": query, "error": None, "page": page, "pages": pages, "total": len(patients),
                "capped": len(patients) >= PDQ_CAP,
                "patients": [patient_json(p, portal.settings.affinity_domain_oid) for p in shown]}, 200

    async def admin_page(request: web.Request) -> web.Response:
        require_admin(request, portal)
        result, status = await listing(request)
        sources = await imaging_status(portal)

        def page_link(n: int) -> str:
            return "/admin?" + urlencode({"family": result["family"], "page": n})

        from consumer.portal import access

        grants = await access.grants(portal) if portal.settings.access_policy_url else None
        return render(request, "admin.html", status=status, result=result, sources=sources, page_link=page_link,
                      grants=grants)

    async def reviewed(request: web.Request) -> web.StreamResponse:
        from consumer.portal import access
        from consumer.portal.sessions import check_csrf

        session = require_admin(request, portal)
        await check_csrf(request, session)
        try:
            grant = int(request.match_info["grant"])
        except ValueError:
            raise web.HTTPBadRequest(text="the grant is a number") from None
        refused = await access.review(portal, grant, session.subject or session.user)
        if refused is not None:
            raise web.HTTPBadGateway(text=f"the review was not recorded: {refused}")
        raise web.HTTPSeeOther("/admin")

    async def admin_json(request: web.Request) -> web.Response:
        require_admin(request, portal)
        result, status = await listing(request)
        result["imaging_sources"] = [asdict(s) for s in await imaging_status(portal)]
        return web.json_response(result, status=status)

    async def details(request: web.Request) -> dict[str, Any]:
        try:
            patient = search.normalise_patient_id(request.match_info["patient_id"], portal.settings)
            return await patient_details(portal, patient)
        except search.SearchError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None

    async def patient_page(request: web.Request) -> web.Response:
        require_admin(request, portal)
        return render(request, "admin_patient.html", d=await details(request))

    async def patient_json_route(request: web.Request) -> web.Response:
        require_admin(request, portal)
        return web.json_response(await details(request))

    return [web.get("/admin", admin_page), web.get("/api/admin/patients", admin_json),
            web.post("/admin/break-glass/{grant}/reviewed", reviewed),
            web.get("/admin/patients/{patient_id}", patient_page),
            web.get("/api/admin/patients/{patient_id}", patient_json_route)]
