"""The HTTP edge of every SOAP actor: content-type and size checks, dispatch by WS-Addressing action.

A service registers one coroutine per action; everything about turning bytes into a
:class:`~ihe.soap.SoapRequest` and a reply or fault back into bytes happens here, once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from lxml import etree

from ihe import tls
from ihe.soap import (
    FAULT_RECEIVER,
    FAULT_SENDER,
    FAULT_VERSION_MISMATCH,
    WSA_ACTION_NOT_SUPPORTED,
    SoapFault,
    SoapRequest,
    build_envelope,
    build_envelope_bytes,
    build_fault,
    parse_envelope,
)
from ihe.xml import XMLRejected, parse_xml
from ihe.xua.web import enforce_soap

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY_BYTES = 50 * 1024 * 1024
# Where the parsed request is left for request-scoped layers (the audit middleware, ihe.audit).
SOAP_REQUEST = web.RequestKey("soap", SoapRequest) if hasattr(web, "RequestKey") else "soap"


@dataclass(slots=True)
class SoapReply:
    """What a handler returns: the response action and its body payload (element or bytes)."""

    action: str
    body: etree._Element | bytes


SoapHandler = Callable[[SoapRequest], Awaitable[SoapReply]]


def _media_type(content_type: str) -> tuple[str, dict[str, str]]:
    """Split a Content-Type header into its media type and (unquoted) parameters."""
    parts = [p.strip() for p in content_type.split(";")]
    params: dict[str, str] = {}
    for p in parts[1:]:
        if "=" in p:
            k, _, val = p.partition("=")
            params[k.strip().lower()] = val.strip().strip('"')
    return parts[0].lower(), params


def unpack_soap_body(content_type: str, body: bytes, max_bytes: int) -> tuple[etree._Element, dict]:
    """Parse a SOAP 1.2 request body, plain or MTOM-packaged, into (envelope root, attachments).

    Raises SoapFault for wrong content types, SOAP 1.1 and malformed or hostile XML.
    """
    media, _params = _media_type(content_type)
    attachments: dict = {}
    if media == "text/xml":
        raise SoapFault(FAULT_VERSION_MISMATCH, "Content-Type text/xml is SOAP 1.1; IHE XDS.b requires SOAP 1.2 "
                        "(application/soap+xml)")
    if media == "multipart/related":
        from ihe import mtom

        try:
            root_xml, attachments = mtom.unpack_mtom_bytes(content_type, body)
        except mtom.MTOMError as exc:
            raise SoapFault(FAULT_SENDER, f"malformed MTOM/XOP message: {exc}") from None
    elif media == "application/soap+xml":
        root_xml = body
    else:
        raise SoapFault(
            FAULT_SENDER,
            f"unsupported Content-Type {media or '(none)'}: expected application/soap+xml or "
            "multipart/related (MTOM/XOP)",
        )
    try:
        root = parse_xml(root_xml, max_bytes=max_bytes)
    except XMLRejected as exc:
        raise SoapFault(FAULT_SENDER, exc.reason) from None
    return root, attachments


class SoapService:
    """An aiohttp handler serving several SOAP actions on one endpoint."""

    def __init__(self, handlers: dict[str, SoapHandler], *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.handlers = handlers
        self.max_body_bytes = max_body_bytes

    async def read_request(self, request: web.Request) -> SoapRequest:
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            raise SoapFault(FAULT_SENDER, f"request body of {request.content_length} bytes exceeds the limit of "
                            f"{self.max_body_bytes} bytes")
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > self.max_body_bytes:
                raise SoapFault(FAULT_SENDER, f"request body exceeds the limit of {self.max_body_bytes} bytes")
        root, attachments = unpack_soap_body(request.headers.get("Content-Type", ""), bytes(body),
                                             self.max_body_bytes)
        soap = parse_envelope(root)
        soap.attachments = attachments
        soap.remote = request.remote
        soap.peer = tls.peer_certificate(request.transport)
        request[SOAP_REQUEST] = soap
        soap.identity = enforce_soap(request, root, soap.action)  # XUA, per the app's policy (ihe.xua.web.install)
        return soap

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The aiohttp handler: register ``service.handle`` as the route's handler."""
        relates_to = None
        try:
            soap = await self.read_request(request)
            relates_to = soap.message_id
            handler = self.handlers.get(soap.action)
            if handler is None:
                raise SoapFault(
                    FAULT_SENDER,
                    f"WS-Addressing Action {soap.action!r} is not supported at this endpoint; supported: "
                    + ", ".join(sorted(self.handlers)),
                    WSA_ACTION_NOT_SUPPORTED,
                )
            reply = await handler(soap)
        except SoapFault as fault:
            return soap_response(build_fault(fault, relates_to=relates_to), status=fault.http_status)
        except Exception:  # a fault of ours: log it, never send a stack trace
            log.exception("internal error handling SOAP request")
            fault = SoapFault(FAULT_RECEIVER, "internal error in the service; see its log")
            return soap_response(build_fault(fault, relates_to=relates_to), status=500)
        if isinstance(reply.body, bytes):
            payload = build_envelope_bytes(reply.action, reply.body, relates_to=relates_to)
        else:
            payload = build_envelope(reply.action, reply.body, relates_to=relates_to)
        return soap_response(payload, action=reply.action)


def soap_response(payload: bytes, *, status: int = 200, action: str | None = None) -> web.Response:
    content_type = "application/soap+xml; charset=UTF-8"
    if action:
        content_type += f'; action="{action}"'
    return web.Response(body=payload, status=status, headers={"Content-Type": content_type})


def database_health(pool: Any, **extra: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A ``/health`` handler: 200 with ``{"status": "ok", **extra}`` when the database answers, else 503."""

    async def health(request: web.Request) -> web.Response:
        try:
            async with pool.acquire() as conn:
                await conn.fetchval("SELECT 1")
        except Exception as exc:  # report, do not raise: this is the health probe
            return web.json_response({"status": "unhealthy", "database": str(exc)}, status=503)
        return web.json_response({"status": "ok", **extra})

    return health
