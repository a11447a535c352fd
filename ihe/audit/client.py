"""Audit of the requests a node makes (the requesting actor's record) and of refused XUA assertions.

The serving side is audited by :mod:`ihe.audit.middleware`; IHE asks both ends of a transaction to
record it, so every SOAP client of the network (the portal as Document Consumer, a repository
forwarding ITI-42, an imaging source publishing with RAD-68) hands its exchanges to a
:class:`ClientAudit` (``consumer.client.soap.SoapClient(on_exchange=...)``); and each refused
assertion becomes a Security Alert (:func:`install_xua_alerts` hooks ``ihe.xua.web.FAILURE_HOOKS``).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from lxml import etree

from ihe.audit.auditor import Auditor
from ihe.audit.events import client_soap_event, xua_alert_event
from ihe.audit.messages import (
    OUTCOME_MINOR,
    OUTCOME_SERIOUS,
    OUTCOME_SUCCESS,
    Code,
    ParticipantObject,
)
from ihe.xml import XMLRejected, parse_xml

log = logging.getLogger(__name__)

UserOf = Callable[[], tuple[str | None, Code | None]]
ExtraObjects = Callable[[], Iterable[ParticipantObject]]


def exchange_outcome(result_body: etree._Element | None, error: BaseException | None) -> str:
    """A SOAP exchange's EventOutcomeIndicator: no answer is a serious failure, a fault or a Failure /
    PartialSuccess RegistryResponse a minor one."""
    if error is not None:  # a SOAP Fault (consumer.client.soap.SoapFaultError carries it) is an answer
        return OUTCOME_MINOR if getattr(error, "fault", None) is not None else OUTCOME_SERIOUS
    status = result_body.get("status", "") if result_body is not None else ""
    return OUTCOME_MINOR if status.endswith((":Failure", ":PartialSuccess")) else OUTCOME_SUCCESS


class ClientAudit:
    """``on_exchange`` hook of :class:`consumer.client.soap.SoapClient`: one audit record per exchange.

    ``client_id`` names this node as the requesting system (its endpoint or AE title); ``user`` gives the
    human requestor of the exchange in progress (the portal's signed-in user) and ``extra`` objects only the
    caller knows (the patient of a retrieve); ``event_types`` renames transactions by action (RAD-68).
    """

    def __init__(self, auditor: Auditor, client_id: str, *, user: UserOf | None = None,
                 extra: ExtraObjects | None = None, event_types: dict[str, Code] | None = None) -> None:
        self.auditor = auditor
        self.client_id = client_id
        self.user = user
        self.extra = extra
        self.event_types = event_types or {}
        self.hostname = socket.gethostname()

    def event(self, url: str, action: str, request_body: bytes | etree._Element,
              result_body: etree._Element | None, error: BaseException | None) -> Any:
        try:
            body = request_body if isinstance(request_body, etree._Element) else parse_xml(request_body)
        except XMLRejected:
            return None
        user, role = self.user() if self.user is not None else (None, None)
        return client_soap_event(action, body, source_id=self.auditor.source_id, client_id=self.client_id,
                                 client_nap=self.hostname, server_id=url, server_nap=urlsplit(url).hostname,
                                 outcome=exchange_outcome(result_body, error), user=user, user_role=role,
                                 event_type=self.event_types.get(action),
                                 extra_objects=list(self.extra()) if self.extra is not None else ())

    async def __call__(self, url: str, action: str, request_body: bytes | etree._Element,
                       result_body: etree._Element | None, error: BaseException | None) -> None:
        try:
            event = self.event(url, action, request_body, result_body, error)
            if event is not None:
                await self.auditor.arecord(event)
        except Exception:  # the spool is local: a disk failure; the exchange itself has happened
            log.exception("ALARM: the audit record of %s to %s could not be written", action, url)


def xua_alert_hook(auditor: Auditor, node: str, node_nap: str | None = None) -> Callable[[Any], None]:
    """A hook for :data:`ihe.xua.web.FAILURE_HOOKS`: each refused assertion becomes a Security Alert."""

    def alert(failure: Any) -> None:
        event = xua_alert_event(reason=failure.reason, code=failure.code, endpoint=failure.endpoint,
                                remote=failure.remote, issuer=failure.issuer, subject=failure.subject, node=node,
                                node_nap=node_nap, source_id=auditor.source_id)
        auditor.record(event)

    return alert


def install_xua_alerts(auditor: Auditor | None, node: str, node_nap: str | None = None) -> Callable[[], None]:
    """Send this process's XUA refusals to ``auditor`` as security alerts; returns the undo (for shutdown)."""
    from ihe.xua.web import FAILURE_HOOKS

    if auditor is None:
        return lambda: None
    hook = xua_alert_hook(auditor, node, node_nap)
    FAILURE_HOOKS.append(hook)

    def remove() -> None:
        if hook in FAILURE_HOOKS:
            FAILURE_HOOKS.remove(hook)

    return remove
