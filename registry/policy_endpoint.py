"""``POST /policy/decisions``: the registry's decisions for the retrieval points (repositories, imaging sources).

Request (JSON)::

    {"requester": {"organisation": "urn:oid:...", "user": "...", "role": "...", "purpose": "...",
                   "source": "xua", "node": "10.1.2.3"},
     "repository": "1.3.6...",            # the asking retrieval point's repositoryUniqueId
     "documents": ["2.25...."],           # document uniqueIds (ITI-43, RAD-69 SOP Instance UIDs are not these)
     "studies": ["1.2.840...."]}          # Study Instance UIDs (RAD-69, WADO-URI, WADO-RS, QIDO-RS)

Answer: ``{"documents": {uid: {"permit", "reason", "basis"}}, "studies": {...}}``.

For the portal: ``POST /policy/patient`` ``{"requester", "patient": CX}`` answers the patient-level decision
(may this requester see this patient's record at all, and may it break the glass), and
``POST /policy/break-glass`` ``{"requester", "patient", "reason_code", "reason_text"}`` grants a
time-limited access (a security alert in the audit trail, listed for review).

Who may ask: the answers tell whether a document exists, and the caller vouches for the requester it sends.
Over mutual TLS only nodes whose verified client certificate the access policy's ``[[nodes]]`` lists with
``policy-endpoints = ["decisions"]`` (the retrieval points) may ask ``/policy/decisions``, and only those with
``"portal"`` the portal's endpoints; 403 otherwise. On plain TCP (or when the policy names no such node)
callers from ``--policy-decision-clients`` networks are answered.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from ihe import tls
from ihe.policy.decide import decide, effective
from ihe.policy.model import Requester
from registry.access_policy import (
    break_glass_list,
    decide_documents,
    decide_studies,
    grant_break_glass,
    now_utc,
    patient_facts,
    patient_row,
    review_break_glass,
)

if TYPE_CHECKING:
    from registry.app import Registry

log = logging.getLogger(__name__)

PATH = "/policy/decisions"
MAX_ITEMS = 10_000
MAX_BODY = 2 * 1024 * 1024


def parse_networks(value: str) -> list:
    return [ipaddress.ip_network(v.strip(), strict=False) for v in value.split(",") if v.strip()]


def _uids(value: object, key: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 128 for v in value):
        raise web.HTTPBadRequest(text=f"{key} must be a list of identifiers (strings of at most 128 characters)\n")
    if len(value) > MAX_ITEMS:
        raise web.HTTPBadRequest(text=f"{key}: at most {MAX_ITEMS} per request\n")
    return value


def add_policy_routes(app: web.Application, registry: Registry) -> None:
    clients = parse_networks(registry.settings.policy_decision_clients)

    async def decisions(request: web.Request) -> web.Response:
        body = await read_body(request, "decisions")
        requester = Requester.from_json(body.get("requester") or {})
        repository = body.get("repository") if isinstance(body.get("repository"), str) else None
        documents = _uids(body.get("documents"), "documents")
        studies = _uids(body.get("studies"), "studies")
        now = now_utc()
        async with registry.pool.acquire() as conn:
            docs = await decide_documents(conn, registry.policy, requester, documents, repository, now)
            found = await decide_studies(conn, registry.policy, requester, studies, repository, now)
        for what, answer in (("document", docs), ("study", found)):
            for uid, d in answer.items():
                if not d.permit:
                    log.info("access policy: %s %s denied to %s at %s: %s", what, uid,
                             requester.organisation or requester.certificate or requester.node, repository, d.reason)
        return web.json_response({"documents": {k: v.as_json() for k, v in docs.items()},
                                  "studies": {k: v.as_json() for k, v in found.items()}})

    def allowed(request: web.Request, endpoint: str) -> None:
        """403 unless the caller may use ``endpoint`` (decisions | portal): by certificate over mutual TLS."""
        by_certificate = [n for n in registry.policy.nodes if endpoint in n.policy_endpoints
                          and (n.certificate_cn or n.certificate_sha256)]
        if tls.node() is not None and by_certificate:
            peer = tls.peer_certificate(request.transport)
            caller = Requester(certificate=peer.common_name if peer else None,
                               certificate_sha256=peer.sha256 if peer else None)
            if not any(n.names_certificate(caller) for n in by_certificate):
                who = (f"certificate {peer.common_name!r} (SHA-256 {peer.sha256})" if peer
                       else "a caller without a certificate")
                raise web.HTTPForbidden(text=f"{who} may not use the access policy's {endpoint} endpoints (not a "
                                             f"[[nodes]] entry with policy-endpoints = [\"{endpoint}\"])\n")
            return
        try:
            ip = ipaddress.ip_address(request.remote or "")
        except ValueError:
            ip = None
        if ip is None or not any(ip in n for n in clients):
            raise web.HTTPForbidden(text="this address may not use the access policy's endpoints "
                                         "(--policy-decision-clients)\n")

    async def read_body(request: web.Request, endpoint: str = "portal") -> dict:
        allowed(request, endpoint)
        if request.content_length is not None and request.content_length > MAX_BODY:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=request.content_length)
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict) or not isinstance(body.get("requester") or {}, dict):
                raise ValueError("the body must be an object with a requester object")
        except (ValueError, UnicodeDecodeError) as exc:
            raise web.HTTPBadRequest(text=f"not a policy request: {exc}\n") from None
        return body

    def patient_of(body: dict) -> str:
        patient = body.get("patient")
        if not isinstance(patient, str) or not patient.strip() or len(patient) > 256:
            raise web.HTTPBadRequest(text="patient (a CX) is required\n")
        return patient

    async def patient_decision(request: web.Request) -> web.Response:
        body = await read_body(request)
        requester, cx = Requester.from_json(body.get("requester") or {}), patient_of(body)
        now = now_utc()
        async with registry.pool.acquire() as conn:
            patient = await patient_row(conn, cx)
            facts = await patient_facts(conn, registry.policy, patient, now)
        decision = decide(registry.policy, requester, facts, None, now)
        org = registry.policy.organisation_of(effective(registry.policy, requester))
        can_break = (not decision.permit and patient is not None and org is not None and bool(requester.user)
                     and (not facts.opted_out or registry.policy.break_glass_when_opted_out))
        reasons = [{"code": c, "display": d} for c, d in registry.policy.break_glass_reasons]
        return web.json_response({**decision.as_json(), "known": patient is not None, "opted_out": facts.opted_out,
                                  "break_glass": can_break, "reasons": reasons})

    async def break_glass(request: web.Request) -> web.Response:
        body = await read_body(request)
        requester, cx = effective(registry.policy, Requester.from_json(body.get("requester") or {})), patient_of(body)
        code, text = body.get("reason_code"), body.get("reason_text")
        codes = dict(registry.policy.break_glass_reasons)
        if code not in codes:
            raise web.HTTPBadRequest(text=f"reason_code must be one of {', '.join(codes)}\n")
        if not isinstance(text, str) or not text.strip() or len(text) > 2000:
            raise web.HTTPBadRequest(text="reason_text (free text, at most 2000 characters) is required\n")
        if registry.policy.organisation_of(requester) is None or not requester.user:
            raise web.HTTPForbidden(text="break-glass needs a signed-in user of a member organisation\n")
        async with registry.pool.acquire() as conn:
            patient = await patient_row(conn, cx)
            if patient is None:
                raise web.HTTPNotFound(text=f"patient {cx} is not known to the registry\n")
            facts = await patient_facts(conn, registry.policy, patient, now_utc())
            if facts.opted_out and not registry.policy.break_glass_when_opted_out:
                raise web.HTTPForbidden(text="the patient has opted out of sharing; the policy does not allow "
                                             "break-glass for this patient\n")
            expires = await grant_break_glass(conn, registry.policy, patient, requester, code, text.strip())
        reason = (f"break-glass: {requester.user} of {requester.organisation} for patient {cx} until "
                  f"{expires.isoformat()}: {code} ({codes[code]}): {text.strip()}")
        log.warning("access policy: %s", reason)
        await security_alert(registry, reason, requester.user, request.remote)
        return web.json_response({"granted": True, "expires": expires.isoformat()})

    async def grants(request: web.Request) -> web.Response:
        """GET: break-glass grants for review (``?all=1``: reviewed ones too); POST {"grant", "by"}: reviewed."""
        if request.method == "GET":
            await read_body_check(request)
            async with registry.pool.acquire() as conn:
                rows = await break_glass_list(conn, everything=request.query.get("all") in ("1", "true"))
            return web.json_response([{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in r.items()}
                                      for r in rows])
        body = await read_body(request)
        grant, by = body.get("grant"), body.get("by")
        if not isinstance(grant, int) or not isinstance(by, str) or not by.strip():
            raise web.HTTPBadRequest(text="grant (a number) and by (who reviewed it) are required\n")
        async with registry.pool.acquire() as conn:
            if not await review_break_glass(conn, grant, by.strip()):
                raise web.HTTPNotFound(text=f"no break-glass grant {grant}\n")
        return web.json_response({"reviewed": grant})

    async def read_body_check(request: web.Request) -> None:
        allowed(request, "portal")

    app.router.add_get("/policy/grants", grants)
    app.router.add_post("/policy/grants", grants)
    app.router.add_post(PATH, decisions)
    app.router.add_post("/policy/patient", patient_decision)
    app.router.add_post("/policy/break-glass", break_glass)


async def security_alert(registry: Registry, reason: str, requestor: str | None, remote: str | None) -> None:
    """An ATNA security alert (Use of Restricted Function) when the registry audits."""
    if registry.auditor is None:
        return
    from ihe.audit.events import ALERT_USE_OF_RESTRICTED_FUNCTION, security_alert_event

    settings = registry.settings
    event = security_alert_event(alert=ALERT_USE_OF_RESTRICTED_FUNCTION, reason=reason, requestor=requestor,
                                 requestor_nap=remote, node=f"http://{settings.host}:{settings.port}/policy",
                                 node_nap=settings.host, source_id=registry.auditor.source_id)
    await registry.auditor.arecord(event)
