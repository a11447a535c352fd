"""The portal as X-Service User (XUA, ITI-40): a signed SAML assertion for the signed-in user on every
ITI-18, ITI-43 and RAD-69 it makes, and on the DICOMweb requests its proxy forwards.

Who the user is (name, role, organisation) comes from the OpenID Connect sign-in (the session); the
role is translated to SNOMED CT (``--xua-roles``), the organisation to its OID (``--xua-organisation-ids``).
The patient of the request in progress, when the handler knows it, is the assertion's resource-id.

The user of the request in progress travels in a context variable (:data:`CALLER`), set once per
request by :func:`caller_middleware` and by the import worker for the user who queued a job; the SOAP
client asks :meth:`PortalXua.security` for each call, so no transaction function needs a new argument.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from consumer.client.soap import TransportError
from consumer.portal.sessions import PortalSession
from ihe.audit.messages import Code as AuditCode
from ihe.audit.messages import ParticipantObject, patient
from ihe.config import Option
from ihe.xua.assertion import NodeSigner, authorization_header, build_assertion, security_header
from ihe.xua.model import HL7_PURPOSE_OF_USE, SNOMED_CT, Code, XuaSubject

log = logging.getLogger(__name__)

XUA_OPTIONS: list[Option] = [
    Option("xua-signing-key", "PEM private key (RSA, 2048 bits or more) the portal signs its users' XUA assertions "
           "with; when absent (with --xua-signing-cert) requests carry no assertion"),
    Option("xua-signing-cert", "PEM certificate of --xua-signing-key; the services' XUA trust files name it"),
    Option("xua-issuer", "SAML Issuer of the portal's assertions, as the services' trust files name it; default "
           "the public URL"),
    Option("xua-audience", "audience of the assertions (the affinity domain); default urn:oid:AFFINITY-DOMAIN-OID"),
    Option("xua-lifetime", "seconds an assertion is valid (a new one is made well before it ends)", 300, int),
    Option("xua-roles", "the identity provider's role names as SNOMED CT codes, ROLE=CODE|DISPLAY separated by ';' "
           "(added to the built-in clinician/physician/doctor, radiologist, nurse, radiographer)"),
    Option("xua-organisation-ids", "organisation names (the sign-in's organisation claim) as OIDs, NAME=OID "
           "separated by ';'; an organisation not listed is sent with the portal's issuer as its id"),
    Option("xua-purpose-of-use", "purpose of use of the portal's requests (HL7 PurposeOfUse code)", "TREATMENT"),
]

DEFAULT_ROLES: dict[str, Code] = {
    "clinician": Code("309343006", SNOMED_CT, "Physician", "SNOMED_CT"),
    "physician": Code("309343006", SNOMED_CT, "Physician", "SNOMED_CT"),
    "doctor": Code("309343006", SNOMED_CT, "Physician", "SNOMED_CT"),
    "radiologist": Code("66862007", SNOMED_CT, "Radiologist", "SNOMED_CT"),
    "nurse": Code("106292003", SNOMED_CT, "Professional nurse", "SNOMED_CT"),
    "radiographer": Code("159016003", SNOMED_CT, "Diagnostic radiographer", "SNOMED_CT"),
}
PURPOSES = {"TREATMENT": "Treatment", "EMERGENCY": "Emergency Treatment", "OPERATIONS": "Healthcare Operations",
            "COVERAGE": "Coverage", "PUBLICHEALTH": "Public Health", "REQUEST": "Request of the individual"}


class XuaUnavailable(TransportError):
    """No assertion can be made for this user, so the request is not sent; the message says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message, delivered=False)


@dataclass(frozen=True, slots=True)
class Caller:
    """On whose behalf the portal is calling: the signed-in user, and the patient when known (a CX)."""

    session: PortalSession
    patient_cx: str | None = None


CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("portal_caller", default=None)


def for_patient(patient_cx: str) -> None:
    """The requests that follow in this task (and the tasks it starts) are about ``patient_cx``."""
    caller = CALLER.get()
    if caller is not None:
        CALLER.set(replace(caller, patient_cx=patient_cx))


def parse_roles(value: str | None) -> dict[str, Code]:
    """``ROLE=CODE|DISPLAY;...`` as SNOMED CT codes (role names compared case-insensitively)."""
    roles: dict[str, Code] = {}
    for item in (value or "").split(";"):
        if not item.strip():
            continue
        name, sep, rest = item.partition("=")
        code, _, display = rest.partition("|")
        if not sep or not name.strip() or not code.strip().isdigit():
            raise ValueError(f"--xua-roles entry {item.strip()!r} is not ROLE=SNOMEDCODE|DISPLAY")
        roles[name.strip().lower()] = Code(code.strip(), SNOMED_CT, display.strip() or name.strip(), "SNOMED_CT")
    return roles


def parse_organisation_ids(value: str | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for item in (value or "").split(";"):
        if not item.strip():
            continue
        name, sep, oid = item.partition("=")
        oid = oid.strip().removeprefix("urn:oid:")
        if not sep or not name.strip() or not oid.replace(".", "").isdigit():
            raise ValueError(f"--xua-organisation-ids entry {item.strip()!r} is not NAME=OID")
        found[name.strip()] = f"urn:oid:{oid}"
    return found


def subject_for(caller: Caller, *, issuer: str, roles: dict[str, Code], organisation_ids: dict[str, str],
                purpose: Code) -> XuaSubject:
    """What the assertion says about ``caller``: pure, so the mapping is tested without keys."""
    session = caller.session
    role = roles.get((session.role or "").strip().lower())
    if role is None:
        raise XuaUnavailable(f"your role ({session.role or 'none'}) has no SNOMED CT code in this portal's "
                             "configuration (--xua-roles), so the region's services cannot be asked on your behalf")
    organisation = (session.organisation or "").strip() or "unknown organisation"
    return XuaSubject(name_id=session.subject or session.user, subject_id=session.user, organization=organisation,
                      organization_id=organisation_ids.get(organisation, issuer), role=role, purpose_of_use=purpose,
                      resource_id=caller.patient_cx)


class PortalXua:
    """Makes (and briefly reuses) the signed assertions of the portal's users."""

    def __init__(self, signer: NodeSigner, *, audience: str, lifetime: int, roles: dict[str, Code],
                 organisation_ids: dict[str, str], purpose: Code) -> None:
        self.signer = signer
        self.audience = audience
        self.lifetime = timedelta(seconds=lifetime)
        self.roles = roles
        self.organisation_ids = organisation_ids
        self.purpose = purpose
        self._cache: dict[XuaSubject, tuple[float, bytes]] = {}

    @classmethod
    def from_settings(cls, settings) -> PortalXua | None:
        """None when no signing key is configured (requests then carry no assertion)."""
        if not settings.xua_signing_key and not settings.xua_signing_cert:
            return None
        if not (settings.xua_signing_key and settings.xua_signing_cert):
            raise ValueError("--xua-signing-key and --xua-signing-cert go together")
        signer = NodeSigner(settings.xua_issuer or settings.base_url, Path(settings.xua_signing_key).read_bytes(),
                            Path(settings.xua_signing_cert).read_bytes())
        purpose = settings.xua_purpose_of_use.strip().upper()
        return cls(signer, audience=settings.xua_audience or f"urn:oid:{settings.affinity_domain_oid}",
                   lifetime=settings.xua_lifetime, roles={**DEFAULT_ROLES, **parse_roles(settings.xua_roles)},
                   organisation_ids=parse_organisation_ids(settings.xua_organisation_ids),
                   purpose=Code(purpose, HL7_PURPOSE_OF_USE, PURPOSES.get(purpose, purpose), "nhin-purpose"))

    def assertion(self, caller: Caller) -> bytes:
        """The signed assertion of ``caller``; one is reused for half its lifetime (signing costs a few ms)."""
        subject = subject_for(caller, issuer=self.signer.issuer, roles=self.roles,
                              organisation_ids=self.organisation_ids, purpose=self.purpose)
        now = time.monotonic()
        hit = self._cache.get(subject)
        if hit is not None and now < hit[0]:
            return hit[1]
        assertion = build_assertion(subject, self.signer, audience=self.audience, lifetime=self.lifetime)
        if len(self._cache) > 10000:
            self._cache.clear()
        self._cache[subject] = (now + self.lifetime.total_seconds() / 2, assertion)
        return assertion

    def security(self, url: str, action: str) -> bytes | None:
        """``SoapClient.security_provider``: the wsse:Security header for the current caller."""
        caller = CALLER.get()
        if caller is None:
            return None
        return security_header(self.assertion(caller))

    def current_headers(self) -> dict[str, str]:
        """The Authorization header of the current caller for a DICOMweb request (QIDO-RS checks of the list,
        the proxy); none without a caller. Raises :class:`XuaUnavailable` for a role without a code."""
        caller = CALLER.get()
        if caller is None:
            return {}
        return authorization_header(self.assertion(caller))

    def http_headers(self, request: web.Request) -> dict[str, str]:
        """The Authorization header the DICOMweb proxy adds for the request's user."""
        try:
            return self.current_headers()
        except XuaUnavailable as exc:
            raise web.HTTPForbidden(text=str(exc)) from None


def xua_problem(settings) -> str | None:
    """Why the ``--xua-*`` options cannot be used (checked at start, one line), or None. A trial assertion is
    signed, so a key that does not match its certificate or is no RSA key is found now, not at the first user."""
    try:
        xua = PortalXua.from_settings(settings)
        if xua is not None:
            xua.assertion(Caller(PortalSession("start-up check", next(iter(xua.roles)), "check", "", "check")))
    except (OSError, ValueError) as exc:
        return f"XUA signing: {exc}"
    except Exception as exc:  # xmlsec's errors: a key it cannot load or use
        return f"XUA signing: the key or certificate cannot sign ({type(exc).__name__}: {exc})"
    return None


def caller_middleware() -> Callable:
    """Sets :data:`CALLER` to the request's signed-in user for everything the handler calls."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        session = request.get("session")
        token = CALLER.set(Caller(session) if session is not None else None)
        try:
            return await handler(request)
        finally:
            CALLER.reset(token)

    return middleware


def caller_user() -> tuple[str | None, AuditCode | None]:
    """The human requestor of the current call, for the portal's own audit records (ClientAudit)."""
    caller = CALLER.get()
    if caller is None:
        return None, None
    session = caller.session
    who = f"{session.user}<{session.subject or session.user}>"
    role = AuditCode(session.role, "xds-portal role", session.role) if session.role else None
    return who, role


def caller_objects() -> list[ParticipantObject]:
    """The patient of the current call, when the handler said which (:func:`for_patient`)."""
    caller = CALLER.get()
    return [patient(caller.patient_cx)] if caller is not None and caller.patient_cx else []
