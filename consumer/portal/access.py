"""The portal's side of the access policy: it asks the registry (``--access-policy-url``), never decides itself.

Before a patient's list is shown the portal asks ``POST /policy/patient`` whether the signed-in user's
organisation may see the patient; when not, the page says why and, where the policy allows, offers
break-glass: a reason from the policy's coded list plus free text, granted by ``POST /policy/break-glass``
for the policy's time (a security alert in the registry's audit trail). The admin page lists the grants
for review (``/policy/grants``). The user is named as the portal's XUA assertions name it (the session's
subject, else its user name), so a grant made here is the one the registry finds for the assertion.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from consumer.portal.context import Portal
from consumer.portal.sessions import PortalSession
from ihe.policy.client import PermitCache
from ihe.policy.model import OBJECT_BASES

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PatientAccess:
    permit: bool
    reason: str
    break_glass: bool = False
    reasons: tuple[tuple[str, str], ...] = ()
    opted_out: bool = False


def requester(session: PortalSession) -> dict[str, Any]:
    return {"organisation": session.organisation, "user": session.subject or session.user, "role": session.role,
            "source": "session"}


async def _post(portal: Portal, path: str, body: dict) -> tuple[int, Any]:
    url = portal.settings.access_policy_url.rstrip("/") + path
    async with portal.http.post(url, json=body, timeout=aiohttp.ClientTimeout(total=portal.settings.query_deadline)
                                ) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, (await response.text()).strip()


async def patient_access(portal: Portal, session: PortalSession, patient_cx: str) -> PatientAccess | None:
    """The registry's patient-level decision for this user; None when the portal has no access policy."""
    if not portal.settings.access_policy_url:
        return None
    try:
        status, answer = await _post(portal, "/patient", {"requester": requester(session), "patient": patient_cx})
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.error("access policy unreachable: %s", exc)
        return PatientAccess(False, f"the access policy could not be asked ({exc}); nothing is shown")
    if status != 200 or not isinstance(answer, dict):
        return PatientAccess(False, f"the access policy refused the question: {answer}")
    return PatientAccess(bool(answer.get("permit")), str(answer.get("reason") or ""),
                         bool(answer.get("break_glass")),
                         tuple((r["code"], r["display"]) for r in answer.get("reasons", [])),
                         bool(answer.get("opted_out")))


async def break_glass(portal: Portal, session: PortalSession, patient_cx: str, code: str, text: str) -> str | None:
    """Ask for break-glass access; None when granted, else the registry's reason."""
    try:
        status, answer = await _post(portal, "/break-glass", {"requester": requester(session), "patient": patient_cx,
                                                              "reason_code": code, "reason_text": text})
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"the access policy could not be asked ({exc})"
    return None if status == 200 else str(answer)


async def grants(portal: Portal) -> list[dict] | str:
    """Break-glass grants to review, or why they cannot be listed."""
    if not portal.settings.access_policy_url:
        return []
    url = portal.settings.access_policy_url.rstrip("/") + "/grants"
    try:
        async with portal.http.get(url, timeout=aiohttp.ClientTimeout(total=portal.settings.query_deadline)) as r:
            if r.status != 200:
                return f"HTTP {r.status}: {(await r.text()).strip()}"
            return await r.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"the access policy could not be asked ({exc})"


async def review(portal: Portal, grant: int, by: str) -> str | None:
    try:
        status, answer = await _post(portal, "/grants", {"grant": grant, "by": by})
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"the access policy could not be asked ({exc})"
    return None if status == 200 else str(answer)


def off_trusted_network(portal: Portal, request: web.Request) -> bool:
    """True when ``--trusted-networks`` is set and the user's address is in none of them."""
    networks = portal.settings.trusted_network_list
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return True
    return not any(address in n for n in networks)


def needs_second_factor(portal: Portal, request: web.Request, acr: str | None) -> bool:
    """True when the user connects from outside ``--trusted-networks`` and the sign-in's acr is not one of
    ``--mfa-acr`` (the provider's multi-factor authentication contexts)."""
    return off_trusted_network(portal, request) and acr not in portal.settings.mfa_acr_list


GUARDED = ("/dicomweb/studies/{study}", "/documents/{repository_unique_id}/{document_unique_id}")
# A report or study that is not registered and one the user may not see get the same answer, whatever the rule
# (ihe.policy.model.OBJECT_BASES), so that a link or a guessed uniqueId does not tell which exist (the reason is
# logged; the patient's page, which the user reached by a search, says why and offers break-glass).
UNSEEN_REASON = ("not available to you: it is not registered in the region, or the region's access policy does not "
                 "let you see it, e.g. without a care relationship with its patient (the patient's page says why, "
                 "and offers break-glass where the policy allows)")


class ResourceAccess:
    """Whether the signed-in user may open one report or study, as the registry's policy decides; permits are
    reused for ``--access-policy-cache`` seconds per user and resource, as the retrieval points reuse theirs
    (ihe.policy.client.PermitCache): a study opened in the viewer is hundreds of requests."""

    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.permits = PermitCache(portal.settings.access_policy_cache)

    @property
    def on(self) -> bool:
        return bool(self.portal.settings.access_policy_url)

    async def refusal(self, session: PortalSession, *, study: str | None = None,
                      document: str | None = None) -> str | None:
        """None when the user may open it (or there is no policy); else what to tell the user. Raises
        HTTPServiceUnavailable when the registry cannot be asked."""
        if not self.on:
            return None
        kind, uid = ("studies", study) if study else ("documents", document or "")
        key = (tuple(sorted(requester(session).items())), kind, uid)
        if self.permits.permitted(key):
            return None
        try:
            status, answer = await _post(self.portal, "/decisions", {
                "requester": requester(session), "documents": [] if study else [uid],
                "studies": [uid] if study else []})
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise web.HTTPServiceUnavailable(text=f"the access policy could not be asked ({exc})") from None
        decision = answer.get(kind, {}).get(uid) if status == 200 and isinstance(answer, dict) else None
        if isinstance(decision, dict) and decision.get("permit") is True:
            self.permits.remember([key])
            return None
        reason = decision.get("reason") if isinstance(decision, dict) else f"HTTP {status}: {answer}"
        if isinstance(decision, dict) and decision.get("basis") in OBJECT_BASES:
            log.info("access policy: %s %s refused to %s: %s", kind, uid, session.user, reason)
            return UNSEEN_REASON
        return str(reason)


def guard(checks: ResourceAccess):
    """Middleware: a report (``/documents/..``) or a study through the DICOMweb proxy is opened only when the
    registry's policy permits it for the signed-in user (403 with the reason otherwise), so a link or a guessed
    uniqueId does not get around the patient page's answer."""

    @web.middleware
    async def access(request: web.Request, handler):
        session = request.get("session")
        resource = request.match_info.route.resource
        canonical = resource.canonical if resource is not None else ""
        if checks.on and session is not None and canonical.startswith(GUARDED):
            refused = await checks.refusal(session, study=request.match_info.get("study"),
                                           document=request.match_info.get("document_unique_id"))
            if refused is not None:
                raise web.HTTPForbidden(text=f"access policy: {refused}")
        return await handler(request)

    return access
