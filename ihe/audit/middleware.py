"""Audit in one place per service: an aiohttp middleware and hooks for MLLP and DICOM C-STORE.

The middleware audits every SOAP transaction (the parsed request is left in
``request[ihe.http.SOAP_REQUEST]`` by :class:`ihe.http.SoapService` and the repository's endpoint)
and every WADO-URI / WADO-RS retrieval, after the handler has answered and before the answer leaves (a response that was
streamed by the handler is audited right after). Handlers may add participant objects they
alone know (e.g. the patient of a retrieved document) with :func:`add_participant_object`.
When the audit spool is full, new requests are refused (SOAP Receiver fault / HTTP 503).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ihe.audit.auditor import Auditor
from ihe.audit.events import (
    cstore_event,
    hl7_event,
    is_qido,
    outcome_of,
    soap_event,
    web_retrieve_event,
    xua_user,
)
from ihe.audit.messages import ParticipantObject

log = logging.getLogger(__name__)

_EXTRA: contextvars.ContextVar[list[ParticipantObject] | None] = contextvars.ContextVar("audit_extra", default=None)
MLLP_PEER: contextvars.ContextVar[str | None] = contextvars.ContextVar("mllp_peer", default=None)
# A layer that knows the human user (XUA, the portal's session) sets ``request[AUDIT_USER]``.
AUDIT_USER = web.RequestKey("audit_user", str) if hasattr(web, "RequestKey") else "audit_user"
REFUSED = "the audit trail is unavailable (audit spool full): request refused, try again later"


def add_participant_object(obj: ParticipantObject) -> None:
    """Add ``obj`` to the audit record of the request being handled (no-op outside one)."""
    extra = _EXTRA.get()
    if extra is not None:
        extra.append(obj)


def audit_middlewares(auditor: Auditor | None) -> list:
    """``[audit_middleware(auditor)]``, or no middleware when auditing is off."""
    return [] if auditor is None else [audit_middleware(auditor)]


def _audited(request: web.Request) -> bool:
    """Requests that carry a transaction: SOAP POSTs, WADO-URI and WADO-RS retrievals, QIDO-RS searches."""
    if request.method == "POST":
        return True
    return "study" in request.match_info or "studyUID" in request.query or (
        request.method in ("GET", "HEAD") and is_qido(request.path))


def _refusal(request: web.Request) -> web.Response:
    if request.method == "POST":
        from ihe.http import soap_response
        from ihe.soap import FAULT_RECEIVER, SoapFault, build_fault

        return soap_response(build_fault(SoapFault(FAULT_RECEIVER, REFUSED)), status=503)
    return web.Response(status=503, text=REFUSED + "\n")


def audit_middleware(auditor: Auditor):
    """The middleware to put in ``web.Application(middlewares=[...])``."""

    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        if not _audited(request):  # health, status and WSDL pages: nothing to audit, always served
            return await handler(request)
        if not auditor.accepting():
            return _refusal(request)
        extra: list[ParticipantObject] = []
        token = _EXTRA.set(extra)
        status, body = 500, None  # an exception other than an HTTP answer becomes a 500
        try:
            response = await handler(request)
            status = response.status
            body = response.body if isinstance(response, web.Response) and isinstance(response.body, bytes) else None
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            _EXTRA.reset(token)
            await _record(auditor, request, status, body, extra)

    return middleware


async def _record(auditor: Auditor, request: web.Request, status: int, body: bytes | None,
                  extra: list[ParticipantObject]) -> None:
    try:
        event = request_event(auditor, request, status, body, extra)
        if event is not None:
            await auditor.arecord(event)
    except Exception:  # the spool is on local disk: this is a disk failure, say so loudly
        log.exception("ALARM: the audit record of %s %s could not be written", request.method, request.path)


def request_event(auditor: Auditor, request: web.Request, status: int, body: bytes | None,
                  extra: list[ParticipantObject]) -> Any:
    outcome = outcome_of(status, body)
    server_id = str(request.url.with_query(None))
    from ihe.http import SOAP_REQUEST
    from ihe.xua.web import identity_of

    user, role = xua_user(identity_of(request))  # the assertion's user, when XUA validated one
    user = request.get(AUDIT_USER) or user
    soap = request.get(SOAP_REQUEST)
    if soap is not None:
        return soap_event(soap.action, soap.body, source_id=auditor.source_id, requestor_id=soap.reply_to,
                          requestor_nap=request.remote, server_id=server_id, server_nap=request.url.host,
                          outcome=outcome, extra_objects=extra, user=user, user_role=role)
    if request.method in ("GET", "HEAD"):
        return web_retrieve_event(request.path, dict(request.query), dict(request.match_info),
                                  source_id=auditor.source_id, requestor_nap=request.remote, server_id=server_id,
                                  server_nap=request.url.host, outcome=outcome, extra_objects=extra, user=user,
                                  user_role=role)
    return None


def audited_hl7(handler, auditor: Auditor | None, *, receiver: str, server_nap: str | None):
    """Wrap an MLLP message handler (ITI-8 / ITI-9) so that each message is audited with its answer."""
    if auditor is None:
        return handler
    from ihe.hl7 import APPLICATION_INTERNAL_ERROR, HL7Error, build_ack, get, message_type, raw

    def first_cx(message, segment: str, field: int) -> str:
        """The field's first repetition, whole (CX with its components), as sent."""
        return raw(message, segment, field).split("~")[0].strip()

    async def audited(message):
        code, trigger = message_type(message)
        if code == "ACK":
            return await handler(message)
        if not auditor.accepting():
            return build_ack(message, "AR", HL7Error("AR", REFUSED, APPLICATION_INTERNAL_ERROR))
        answer = await handler(message)
        ack_code = ""
        if answer:
            for segment in answer.split("\r"):
                if segment.startswith("MSA|"):
                    ack_code = segment.split("|")[1][:2]
        patients = [p for p in (first_cx(message, "PID", 3), first_cx(message, "MRG", 1)) if p]
        query = None
        if code == "QBP":
            qpd = next((s for s in str(message).split("\r") if s.startswith("QPD|")), "")
            query = qpd.encode("utf-8")
            patients = [p for p in (first_cx(message, "QPD", 3),) if p]
        event = hl7_event(message_code=code, trigger=trigger, control_id=get(message, "MSH.F10"), patients=patients,
                          query=query, sender="|".join(filter(None, (get(message, "MSH.F3"), get(message, "MSH.F4")))),
                          peer=MLLP_PEER.get(), receiver=receiver, server_nap=server_nap,
                          source_id=auditor.source_id, ack_code=ack_code)
        if event is not None:
            try:
                await auditor.arecord(event)
            except Exception:
                log.exception("ALARM: the audit record of HL7 message %s could not be written", get(message, "MSH.F10"))
        return answer

    return audited


class DicomAudit:
    """C-STORE ingest: one audit record per association, naming each study and patient received.

    The Storage SCP keeps a ``received`` dict per association, fills it with :meth:`received` for each
    instance stored, and calls :meth:`ended` when the association is released or aborted; while the
    audit spool is full (:meth:`accepting` false) it refuses C-STOREs with Out of Resources (A700).
    """

    def __init__(self, auditor: Auditor, ae_title: str, host: str | None) -> None:
        self.auditor = auditor
        self.ae_title = ae_title
        self.host = host

    def accepting(self) -> bool:
        return self.auditor.accepting()

    @staticmethod
    def received(received: dict[str, Any], info: Any) -> None:
        """Note one stored instance (an InstanceInfo) in the association's ``received`` dict."""
        pid = info.patient_id
        if info.patient_issuer_oid or info.patient_issuer_ns:
            pid = f"{pid}^^^{info.patient_issuer_ns or ''}&{info.patient_issuer_oid or ''}&ISO"
        received.setdefault("studies", {})[info.study_uid] = pid
        received["count"] = received.get("count", 0) + 1

    def ended(self, received: dict[str, Any], calling_ae: str, peer: str | None) -> None:
        """Record the association's C-STOREs, if it stored anything."""
        studies = received.get("studies")
        if not studies:
            return
        record = cstore_event(calling_ae=calling_ae, peer=peer, called_ae=self.ae_title, server_nap=self.host,
                              source_id=self.auditor.source_id, studies=studies, count=received.get("count", 0))
        try:
            self.auditor.record(record)
        except Exception:
            log.exception("ALARM: the audit record of a C-STORE association could not be written")
