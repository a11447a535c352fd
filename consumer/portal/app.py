"""The portal's HTTP application: sign-in, patient search, the aggregated list (HTML and JSON) and
the report view. Everything but ``/``, the sign-in round trip, static files and ``/health`` needs
a session (see :mod:`consumer.portal.sessions`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from urllib.parse import quote, urlencode

import aiohttp
import jinja2
from aiohttp import web

from consumer.client.retrieve import DocumentRequest, retrieve_document_set
from consumer.client.soap import SoapClient, SoapFaultError, TransportError
from consumer.portal import (
    admin,
    aggregate,
    audit_search,
    cda,
    dicomweb_proxy,
    import_study,
    manifests,
    patient_context,
    search,
    study_state,
    viewer,
)
from consumer.portal.context import Portal
from consumer.portal.oidc import OidcClient, SignInError
from consumer.portal.sessions import (
    COOKIE,
    PortalSession,
    check_csrf,
    clear_session_cookie,
    create_session,
    delete_session,
    is_api,
    purge_expired,
    require_session,
    security_headers,
    session_middleware,
    set_session_cookie,
)
from consumer.portal.settings import PortalSettings
from consumer.portal.xua import PortalXua, caller_middleware, caller_objects, caller_user, for_patient
from ihe import tls
from ihe.audit.auditor import open_auditor
from ihe.audit.client import ClientAudit
from ihe.audit.events import user_authentication_event
from ihe.database import create_pool
from ihe.http import database_health
from schemas import migrate

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
LOGIN_COOKIE = "xds_portal_login"  # binds a sign-in's state to the browser that started it
PDF_CSP = "default-src 'none'; object-src 'self'; base-uri 'none'; frame-ancestors 'self'"
DOWNLOAD_CSP = "default-src 'none'; sandbox"
TEXT_TYPES = ("text/plain",)
MAX_VIEWER_STUDIES = 20
XML_TYPES = ("text/xml", "application/xml", "application/hl7-v3+xml", "application/cda+xml")


def templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True)


def render(request: web.Request, name: str, status: int = 200, **values) -> web.Response:
    env: jinja2.Environment = request.app["templates"]
    text = env.get_template(name).render(session=request.get("session"), **values)
    return web.Response(text=text, content_type="text/html", charset="utf-8", status=status)


def message(request: web.Request, title: str, text: str, status: int, css: str = "error") -> web.Response:
    return render(request, "message.html", status=status, title=title, message=text, css=css)


def safe_return_path(value: str | None) -> str:
    """A local path to go back to after sign-in; anything else (other sites, ``//host``) gives ``/``."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def _patient_or_400(request: web.Request, portal: Portal) -> str:
    try:
        return search.normalise_patient_id(request.match_info["patient_id"], portal.settings)
    except search.SearchError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


def _can_import(settings: PortalSettings, session: PortalSession | None) -> bool:
    """Import buttons only for a user whose hospital has a PACS to import into (and never of its own rows)."""
    return bool(session and session.organisation and settings.pacs_of(session.organisation))


def build_app(portal: Portal) -> web.Application:
    settings = portal.settings

    async def bearer(access_token: str) -> PortalSession | None:
        if portal.oidc is None:
            return None
        try:
            identity = await portal.oidc.userinfo(access_token)
        except (aiohttp.ClientError, OSError, SignInError, ValueError, KeyError, TimeoutError) as exc:
            log.warning("identity provider unavailable for a bearer token: %s", exc)
            raise web.HTTPServiceUnavailable(text="the identity provider cannot be reached to check the access "
                                                  "token") from None
        if identity is None:
            return None
        return PortalSession(identity.user_name, identity.role, identity.organisation, csrf_token="",
                             subject=identity.subject)

    app = web.Application(middlewares=[session_middleware(
        portal.pool, settings.session_idle, settings.session_lifetime, settings.secure_cookies, bearer=bearer),
        caller_middleware()], client_max_size=64 * 1024)
    from consumer.portal.access import ResourceAccess, guard

    resource_access = ResourceAccess(portal)
    app.middlewares.append(guard(resource_access))  # after the session middleware: the user is known
    app["portal"] = portal
    app["templates"] = templates()
    app.on_response_prepare.append(security_headers)
    routes = web.RouteTableDef()

    @routes.get("/")
    async def index(request: web.Request) -> web.Response:
        return render(request, "index.html", hospitals=settings.hospitals, form={}, candidates=[], error=None,
                      signed_out=request.query.get("signed_out") == "1")

    @routes.get("/login")
    async def login(request: web.Request) -> web.StreamResponse:
        if portal.oidc is None:
            return message(request, "Sign-in unavailable", "no identity provider is configured (--oidc-issuer)", 503)
        return_to = safe_return_path(request.query.get("next"))
        from consumer.portal.access import off_trusted_network

        acr_values = settings.mfa_acr_list if off_trusted_network(portal, request) else None
        try:
            async with portal.pool.acquire() as conn:
                url, state = await portal.oidc.start(conn, return_to, acr_values)
        except (aiohttp.ClientError, OSError, SignInError, ValueError, KeyError) as exc:
            log.warning("identity provider unavailable: %s", exc)
            return message(request, "Sign-in unavailable", "the identity provider cannot be reached; try again "
                           "in a moment", 503)
        response = web.HTTPFound(url)
        response.set_cookie(LOGIN_COOKIE, state, httponly=True, secure=settings.secure_cookies, samesite="Lax",
                            path="/auth/", max_age=600)
        return response

    @routes.get("/auth/callback")
    async def callback(request: web.Request) -> web.StreamResponse:
        if portal.oidc is None:
            raise web.HTTPNotFound()
        if "error" in request.query:
            said = request.query.get("error_description") or request.query["error"]
            await audit_sign_in(request, portal, None, f"the identity provider refused: {said}"[:300])
            return message(request, "Sign-in refused", f"the identity provider says: {said}", 403)
        state, code = request.query.get("state", ""), request.query.get("code", "")
        if not state or not code or request.cookies.get(LOGIN_COOKIE) != state:
            await audit_sign_in(request, portal, None, "sign-in answer without its state (another browser, or "
                                "forged)")
            return message(request, "Sign-in failed", "this sign-in was not started in this browser; please sign "
                           "in again", 400)
        try:
            async with portal.pool.acquire() as conn:
                identity, return_to = await portal.oidc.finish(conn, state, code, request.query.get("iss"))
                from consumer.portal.access import needs_second_factor

                if needs_second_factor(portal, request, identity.acr):
                    log.warning("sign-in of %s from %s refused: acr %s is not multi-factor", identity.subject,
                                request.remote, identity.acr)
                    raise SignInError("you are connecting from outside the hospitals' networks: sign in with your "
                                      "second factor (multi-factor authentication is required here; the identity "
                                      f"provider reported {identity.acr or 'no authentication context'})")
                old = request.cookies.get(COOKIE)
                if old:
                    await delete_session(conn, old)
                token, _ = await create_session(conn, identity.subject, identity.user_name, identity.role,
                                                identity.organisation)
        except SignInError as exc:
            await audit_sign_in(request, portal, None, str(exc))
            return message(request, "Sign-in failed", str(exc), 403)
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("identity provider unavailable: %s", exc)
            return message(request, "Sign-in failed", "the identity provider cannot be reached", 503)
        log.info("signed in: %s (%s, %s)", identity.subject, identity.role, identity.organisation)
        await audit_sign_in(request, portal, f"{identity.user_name}<{identity.subject}>", None)
        response = web.HTTPFound(return_to)
        set_session_cookie(response, token, secure=settings.secure_cookies, max_age=settings.session_lifetime)
        response.del_cookie(LOGIN_COOKIE, path="/auth/")
        return response

    @routes.post("/logout")
    async def logout(request: web.Request) -> web.StreamResponse:
        session = require_session(request)
        async with portal.pool.acquire() as conn:
            await delete_session(conn, request.cookies[COOKIE])
        await audit_sign_in(request, portal, f"{session.user}<{session.subject or session.user}>", None, login=False)
        response = web.HTTPFound("/?signed_out=1")
        clear_session_cookie(response, secure=settings.secure_cookies)
        return response

    @routes.post("/search")
    async def do_search(request: web.Request) -> web.StreamResponse:
        require_session(request)
        form = await request.post()
        values = {k: str(form.get(k, "")) for k in ("by", "nhs_number", "hospital", "hospital_number", "family",
                                                     "birth_date")}
        candidates: list[search.Candidate] = []
        try:
            if values["by"] == "hospital":
                patient = await search.by_hospital_number(settings, settings.hospital_by_name(values["hospital"]),
                                                          values["hospital_number"])
            elif values["by"] == "name":
                candidates = await search.by_name_and_birth_date(settings, values["family"], values["birth_date"])
                patient = candidates[0].patient_id if len(candidates) == 1 else None
            else:
                patient = search.normalise_patient_id(values["nhs_number"], settings)
        except search.SearchError as exc:
            return render(request, "index.html", status=422, hospitals=settings.hospitals, form=values,
                          candidates=[], error=str(exc), signed_out=False)
        if patient is None:
            return render(request, "index.html", hospitals=settings.hospitals, form=values, candidates=candidates,
                          error=None, signed_out=False)
        raise web.HTTPSeeOther(f"/patients/{quote(patient, safe='')}")

    async def documents(request: web.Request) -> tuple[aggregate.PatientDocuments, aggregate.PatientDocuments,
                                                        aggregate.Filters | None, str | None]:
        patient = _patient_or_400(request, portal)
        filter_error = None
        try:
            filters: aggregate.Filters | None = aggregate.Filters.from_query(dict(request.query))
        except ValueError as exc:
            filters, filter_error = None, str(exc)
        for_patient(search.patient_cx(patient, settings))  # the resource-id of the XUA assertions that follow
        everything = await aggregate.patient_documents(portal, patient)
        await import_study.mark_rows(portal, request.get("session"), patient, everything.rows)
        await patient_context.remember(portal, request, patient, everything.rows)
        shown = aggregate.apply_filters(everything, filters) if filters else everything
        return everything, shown, filters, filter_error

    async def gate(request: web.Request) -> web.Response | None:
        """The access policy's patient-level answer: None to go on, else the page saying why (with break-glass)."""
        from consumer.portal.access import patient_access

        session = require_session(request)
        patient = _patient_or_400(request, portal)
        access = await patient_access(portal, session, search.patient_cx(patient, settings))
        if access is None or access.permit:
            return None
        if is_api(request):
            return web.json_response({"error": "access denied", "reason": access.reason,
                                      "break_glass": access.break_glass}, status=403)
        return render(request, "access.html", status=403, patient_id=patient, access=access, error=None)

    @routes.post("/patients/{patient_id}/break-glass")
    async def break_glass(request: web.Request) -> web.StreamResponse:
        from consumer.portal.access import break_glass as ask
        from consumer.portal.access import patient_access

        session = require_session(request)
        await check_csrf(request, session)
        patient = _patient_or_400(request, portal)
        form = await request.post()
        code, text = str(form.get("reason_code", "")), str(form.get("reason_text", "")).strip()
        cx = search.patient_cx(patient, settings)
        refused = "a reason from the list and a free-text explanation are both required" \
            if not code or not text else await ask(portal, session, cx, code, text)
        if refused is None:
            log.warning("break-glass: %s (%s) for patient %s: %s %s", session.user, session.organisation, patient,
                        code, text)
            raise web.HTTPSeeOther(f"/patients/{quote(patient, safe='')}")
        access = await patient_access(portal, session, cx)
        return render(request, "access.html", status=403, patient_id=patient, access=access, error=refused)

    @routes.get("/patients/{patient_id}")
    async def patient_page(request: web.Request) -> web.Response:
        require_session(request)
        if (refusal := await gate(request)) is not None:
            return refusal
        everything, shown, filters, filter_error = await documents(request)
        choices = {name: sorted({v for r in everything.rows for v in (getattr(r, name).split(", ")
                                                                        if name == "modality"
                                                                        else [getattr(r, name)]) if v})
                   for name in ("hospital", "modality", "type")}
        query = urlencode({k: v for k, v in request.query.items() if v})
        return render(request, "patient.html", status=400 if filter_error else 200, result=shown, rows=shown.rows,
                      filters=filters or aggregate.Filters(), filter_error=filter_error, choices=choices,
                      query=query, filtered=bool(query), total=len(everything.rows),
                      can_import=_can_import(settings, request.get("session")))

    @routes.get("/api/patients/{patient_id}/documents")
    async def patient_json(request: web.Request) -> web.Response:
        require_session(request)
        if (refusal := await gate(request)) is not None:
            return refusal
        _everything, shown, _filters, filter_error = await documents(request)
        if filter_error:
            raise web.HTTPBadRequest(text=filter_error)
        return web.json_response(shown.to_json())

    @routes.get("/documents/{repository_unique_id}/{document_unique_id}")
    async def report(request: web.Request) -> web.StreamResponse:
        require_session(request)
        return await view_document(request, portal)

    @routes.get("/api/studies/{study_uid}")
    async def study_json(request: web.Request) -> web.Response:
        """Whether a study's images can be shown now, and if not why (what the viewer page checks)."""
        session = require_session(request)
        uid = request.match_info["study_uid"]
        if not dicomweb_proxy.is_uid(uid):
            raise web.HTTPBadRequest(text=f"{uid!r} is not a valid Study Instance UID")
        state = await state_for(session, uid)
        return web.json_response(state.to_json(), status=state.http_status)

    async def state_for(session, uid: str) -> study_state.StudyState:
        """The study's state for this user: the access policy first, so that a study the user may not see and
        one that does not exist look alike; then whether its images can be shown."""
        refused = await resource_access.refusal(session, study=uid)
        if refused is not None:
            return study_state.StudyState(uid, study_state.NOT_AVAILABLE, reason=refused)
        return await study_state.study_state(portal, uid)

    async def study_guard(request: web.Request) -> web.StreamResponse | None:
        """The viewer opened on studies: a page saying why, instead of an empty viewer, when one cannot be shown."""
        session = require_session(request)
        uids = viewer.requested_studies(request)
        wrong = [u for u in uids if not dicomweb_proxy.is_uid(u)]
        if not uids or wrong or len(uids) > MAX_VIEWER_STUDIES:
            said = (f"{', '.join(repr(u) for u in wrong[:3])} is not a valid Study Instance UID" if wrong else
                    f"open between 1 and {MAX_VIEWER_STUDIES} studies at a time")
            return message(request, "Cannot open the viewer", said, 400)
        states = await asyncio.gather(*(state_for(session, u) for u in uids))
        refused = [s for s in states if not s.ok]
        if not refused:
            return None
        opened = await patient_context.open_patient(portal, request)
        return render(request, "study_unavailable.html", status=refused[0].http_status, states=refused,
                      patient_id=opened[0] if opened else None)

    @routes.get("/health")
    async def health(request: web.Request) -> web.StreamResponse:
        return await database_health(portal.pool)(request)

    routes.static("/static", HERE / "static")
    app.add_routes(routes)
    app.add_routes(dicomweb_proxy.build_routes(
        portal.locate, require_session, client=lambda: portal.http,
        patient_studies=lambda request: patient_context.patient_studies(portal, request),
        upstream_headers=portal.xua.http_headers if portal.xua else None))
    app.add_routes(viewer_routes(viewer.DEFAULT_OHIF_DIR, study_guard))
    import_study.install(app, portal)
    app.add_routes(admin.build_routes(portal))
    app.add_routes(audit_search.build_routes(portal))
    return app


async def audit_sign_in(request: web.Request, portal: Portal, user: str | None, failure: str | None, *,
                        login: bool = True) -> None:
    """The ATNA User Authentication record of a sign-in (failed when ``failure`` says why) or sign-out."""
    if portal.auditor is None:
        return
    event = user_authentication_event(login=login, user=user or "unknown user", user_nap=request.remote,
                                      node=portal.settings.base_url, node_nap=request.url.host,
                                      source_id=portal.auditor.source_id, success=failure is None, reason=failure)
    try:
        await portal.auditor.arecord(event)
    except Exception:
        log.exception("ALARM: the audit record of a sign-in could not be written")


def viewer_routes(ohif_dir: Path, guard: viewer.Guard | None = None) -> list[web.RouteDef]:
    """OHIF at /viewer/ reading the portal's own /dicomweb proxy; without the installed viewer, /viewer/
    answers 503 saying how to install it (the rest of the portal works without it)."""
    try:
        return viewer.build_routes(ohif_dir, "/dicomweb", guard)
    except FileNotFoundError as exc:
        log.warning("the OHIF viewer is not installed (%s): run scripts/install-ohif.sh", exc)
        reason = "the image viewer is not installed on this portal: run scripts/install-ohif.sh"

        async def missing(request: web.Request) -> web.Response:
            raise web.HTTPServiceUnavailable(text=reason)

        return [web.get("/viewer", missing), web.get("/viewer/{tail:.*}", missing)]


async def view_document(request: web.Request, portal: Portal) -> web.StreamResponse:
    """ITI-43 and show: PDF inline, text as text, CDA as its narrative, anything else as a download."""
    repository_unique_id = request.match_info["repository_unique_id"]
    document_unique_id = request.match_info["document_unique_id"]
    hospital = portal.settings.hospital_by_repository(repository_unique_id)
    if hospital is None:
        return message(request, "Unknown repository", f"repository {repository_unique_id} is not one of this "
                       "region's hospitals", 404)
    try:
        async with asyncio.timeout(max(30.0, portal.settings.query_deadline)):
            result = await retrieve_document_set(portal.soap, hospital.repository_url,
                                                 [DocumentRequest(repository_unique_id, document_unique_id)])
    except (TransportError, SoapFaultError, TimeoutError) as exc:
        log.warning("ITI-43 to %s failed: %s", hospital.name, exc)
        return message(request, "Source unreachable", f"{hospital.name} could not be reached to fetch this document; "
                       "try again later", 502)
    doc = next((d for d in result.documents if d.document_unique_id == document_unique_id), None)
    if doc is None or doc.data is None:
        reason = "; ".join(e.context or e.code for e in result.errors) or "no document in the answer"
        return message(request, "Document not available", f"{hospital.name} did not return the document: {reason}",
                       404)
    mime = doc.mime_type.split(";")[0].strip().lower()
    data = doc.data
    if mime == "application/pdf":
        return web.Response(body=data, content_type="application/pdf", headers={
            "Content-Disposition": f'inline; filename="{_file_name(document_unique_id)}.pdf"',
            "Content-Security-Policy": PDF_CSP})
    if mime in TEXT_TYPES:
        return web.Response(text=data.decode("utf-8", "replace"), content_type="text/plain", charset="utf-8",
                            headers={"Content-Disposition": "inline", "Content-Security-Policy": DOWNLOAD_CSP})
    if mime in XML_TYPES:
        try:
            doc_view = cda.read_cda(data)
        except cda.NotCDA:
            pass
        else:
            return render(request, "cda.html", doc=doc_view)
    if mime == "application/dicom":
        try:
            info = manifests.read_manifest(data)
        except manifests.ManifestError as exc:
            return message(request, "Imaging manifest", str(exc), 422)
        return message(request, "Imaging manifest", f"This is the manifest of study {info.study_uid}: "
                       f"{info.series_count} series, {info.image_count} images. Open it from the patient's list.",
                       200, "note")
    return web.Response(body=data, content_type="application/octet-stream", headers={
        "Content-Disposition": f'attachment; filename="{_file_name(document_unique_id)}"',
        "Content-Security-Policy": DOWNLOAD_CSP})


def _file_name(unique_id: str) -> str:
    return "".join(c if c.isalnum() or c in ".-_" else "_" for c in unique_id)[:120] or "document"


async def open_portal(settings: PortalSettings, database_url: str) -> Portal:
    pool = await create_pool(database_url, min_size=1, max_size=settings.pool_size)
    async with pool.acquire() as conn:
        applied = await migrate(conn, "portal")
    if applied:
        log.info("applied portal migrations: %s", ", ".join(applied))
    http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=300),
                                 connector=tls.connector())
    signer = PortalXua.from_settings(settings)
    auditor = open_auditor(settings, "xds-portal")
    # Every ITI-18 / ITI-43 / RAD-69 carries the current user's assertion, and is audited as its requester.
    soap = SoapClient(timeout=300, connect_timeout=10, security_provider=signer.security if signer else None,
                      on_exchange=ClientAudit(auditor, settings.base_url, user=caller_user, extra=caller_objects)
                      if auditor is not None else None)
    oidc = OidcClient(settings) if settings.oidc_issuer else None
    if signer is None:
        log.warning("no --xua-signing-key: the portal's requests carry no XUA assertion (services that require "
                    "one will refuse them)")
    return Portal(settings=settings, pool=pool, http=http, soap=soap, oidc=oidc, xua=signer, auditor=auditor)


async def _purge_sessions(portal: Portal, every: float = 300.0) -> None:
    while True:
        try:
            async with portal.pool.acquire() as conn:
                await purge_expired(conn, portal.settings.session_idle, portal.settings.session_lifetime)
        except Exception as exc:  # the database may be restarting: try again later
            log.warning("purging expired sessions failed: %s", exc)
        await asyncio.sleep(every)


async def serve(settings: PortalSettings, database_url: str, ready: asyncio.Event | None = None) -> None:
    portal = await open_portal(settings, database_url)
    runner = web.AppRunner(build_app(portal), access_log=None)
    await runner.setup()
    site = tls.site(runner, settings.host, settings.port, tls.node(), reuse_port=True)
    await site.start()
    portal.extras["purge"] = asyncio.create_task(_purge_sessions(portal))
    print(f"portal: {settings.base_url}/ (sign-in via {settings.oidc_issuer or 'no identity provider'}; "
          f"{len(settings.registries)} registries, {len(settings.hospitals)} hospitals)", flush=True)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        await portal.close()
