"""A SOAP 1.2 client over aiohttp: plain or MTOM requests, plain or MTOM responses, streamed.

Every client of the network (document source, consumer, the repository talking to the
registry) goes through :class:`SoapClient`, so WS-Addressing, MTOM and the difference
between "not delivered" and "outcome unknown" are handled once.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from lxml import etree

from ihe import tls
from ihe.mtom import (
    Attachment,
    MemorySink,
    MTOMError,
    SinkFactory,
    body_chunks,
    build_mtom,
    parse_content_type,
    read_mtom_stream,
)
from ihe.namespaces import SOAP12, qn
from ihe.soap import SoapFault, build_envelope_bytes, parse_fault
from ihe.xml import XMLRejected, parse_xml

DEFAULT_MAX_XML_BYTES = 64 * 1024 * 1024
READ_BUFSIZE = 1024 * 1024  # per-connection read buffer; aiohttp's 64 KiB default halves loopback throughput


class TransportError(Exception):
    """No SOAP answer. ``delivered`` is False only when the request certainly did not reach the
    service (connection refused, unknown host): then retrying or undoing is safe."""

    def __init__(self, message: str, *, delivered: bool) -> None:
        super().__init__(message)
        self.delivered = delivered


class SoapFaultError(Exception):
    """The service answered with a SOAP Fault."""

    def __init__(self, fault: SoapFault, status: int) -> None:
        super().__init__(f"SOAP Fault {fault.code}: {fault.reason}")
        self.fault = fault
        self.status = status


@dataclass(slots=True)
class SoapResult:
    """A SOAP answer: the envelope, its body payload and attachments by bare Content-ID.

    In an MTOM answer ``xop:Include`` elements are left in place (see ``attachments``).
    """

    envelope: etree._Element
    body: etree._Element
    attachments: dict[str, Any] = field(default_factory=dict)
    mtom: bool = False

    def discard(self) -> None:
        for sink in self.attachments.values():
            sink.discard()


def _memory_sink(content_id: str, headers: dict[str, str]) -> MemorySink:
    return MemorySink(content_id, headers)


# ``security_provider(url, action)``: the wsse:Security header of a request (the portal's XUA assertion for
# the user on whose behalf it calls), or None.
SecurityProvider = Callable[[str, str], bytes | None]
# ``on_exchange(url, action, request body, answer body or None, error or None)``: after every call, e.g.
# the requesting actor's ATNA audit record (``ihe.audit.client.ClientAudit``).
ExchangeHook = Callable[[str, str, "bytes | etree._Element", "etree._Element | None", "BaseException | None"],
                        Awaitable[None]]


class SoapClient:
    """Reusable SOAP 1.2 client; one per process (it pools connections)."""

    def __init__(self, *, timeout: float | None = 300.0, connect_timeout: float = 10.0,
                 max_xml_bytes: int = DEFAULT_MAX_XML_BYTES, session: aiohttp.ClientSession | None = None,
                 security_provider: SecurityProvider | None = None, on_exchange: ExchangeHook | None = None) -> None:
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout, sock_read=timeout)
        self.max_xml_bytes = max_xml_bytes
        self._session = session
        self._own_session = session is None
        self.security_provider = security_provider
        self.on_exchange = on_exchange

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout, read_bufsize=READ_BUFSIZE,
                                                  connector=tls.connector(limit=64))
        return self._session

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> SoapClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(
        self,
        url: str,
        action: str,
        body: bytes | etree._Element,
        *,
        attachments: Sequence[Attachment] = (),
        mtom: bool | None = None,
        open_sink: SinkFactory | None = None,
        security: bytes | None = None,
    ) -> SoapResult:
        """Send ``body`` (the SOAP Body payload) as ``action`` to ``url`` and return the answer.

        MTOM is used when there are attachments or ``mtom`` is True. Attachments of an MTOM
        answer go to ``open_sink`` (default: memory). Raises :class:`SoapFaultError` for a
        fault, :class:`TransportError` when no SOAP answer came back. ``security``: a wsse:Security
        header (XUA, ``ihe.xua.assertion.security_header``); without it the client's ``security_provider``
        is asked for one. The ``on_exchange`` hook hears of every call, answered or not.
        """
        if security is None and self.security_provider is not None:
            security = self.security_provider(url, action)
        if self.on_exchange is None:
            return await self._call(url, action, body, attachments, mtom, open_sink, security)
        try:
            result = await self._call(url, action, body, attachments, mtom, open_sink, security)
        except (SoapFaultError, TransportError) as exc:
            await self.on_exchange(url, action, body, None, exc)
            raise
        await self.on_exchange(url, action, body, result.body, None)
        return result

    async def _call(self, url: str, action: str, body: bytes | etree._Element, attachments: Sequence[Attachment],
                    mtom: bool | None, open_sink: SinkFactory | None, security: bytes | None) -> SoapResult:
        body_xml = body if isinstance(body, bytes) else etree.tostring(body)
        envelope = build_envelope_bytes(action, body_xml, to=url, security=security)
        if attachments or mtom:
            package = build_mtom(envelope, attachments, action=action)
            headers = {"Content-Type": package.content_type, "Content-Length": str(package.content_length)}
            data: Any = package.aiter_chunks()
        else:
            headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'}
            data = envelope
        try:
            async with self.session.post(url, data=data, headers=headers) as response:
                return await self._read_response(response, open_sink or _memory_sink)
        except aiohttp.ClientConnectorError as exc:
            why = tls.reason(exc)
            raise TransportError(tls.explain(exc, url) if why else f"cannot connect to {url}: {exc.os_error or exc}",
                                 delivered=False) from None
        except MTOMError as exc:
            raise TransportError(f"malformed MTOM answer from {url}: {exc}", delivered=True) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            if tls.reason(exc):  # TLS 1.3: a refused client certificate shows after the handshake, at the first read
                raise TransportError(tls.explain(exc, url), delivered=False) from None
            reset = isinstance(exc, aiohttp.ServerDisconnectedError) or getattr(exc, "errno", None) == errno.ECONNRESET
            if reset and url.startswith("https:"):
                # asyncio drops a TLS server's alert: after a TLS 1.3 handshake a refusal looks like this
                raise TransportError(f"TLS to {url}: {tls.CLOSED_AFTER_HANDSHAKE}", delivered=True) from None
            raise TransportError(f"no answer from {url}: {type(exc).__name__} {exc}".strip(), delivered=True) from None

    async def _read_response(self, response: aiohttp.ClientResponse, open_sink: SinkFactory) -> SoapResult:
        content_type = response.headers.get("Content-Type", "")
        media, _ = parse_content_type(content_type)
        attachments: dict[str, Any] = {}
        is_mtom = media == "multipart/related"
        if is_mtom:
            message = await read_mtom_stream(content_type, body_chunks(response.content), open_sink,
                                             max_root_bytes=self.max_xml_bytes)
            root_xml, attachments = message.root, message.attachments
        elif media in ("application/soap+xml", "text/xml", "application/xml"):
            root_xml = await _read_limited(response, self.max_xml_bytes)
        else:
            snippet = (await response.content.read(300)).decode("utf-8", "replace")
            raise TransportError(f"HTTP {response.status} {response.reason} with Content-Type {media or '(none)'}, "
                                 f"not SOAP: {snippet!r}", delivered=True)
        try:
            try:
                envelope = parse_xml(root_xml, max_bytes=self.max_xml_bytes)
            except XMLRejected as exc:
                raise TransportError(f"HTTP {response.status}: unreadable SOAP answer: {exc.reason}",
                                     delivered=True) from None
            fault = parse_fault(envelope)
            if fault is not None:
                raise SoapFaultError(fault, response.status)
            soap_body = envelope.find(qn(SOAP12, "Body"))
            payload = None if soap_body is None else next((c for c in soap_body if isinstance(c.tag, str)), None)
            if payload is None:
                raise TransportError(f"HTTP {response.status}: the SOAP answer has no Body payload", delivered=True)
        except BaseException:
            for sink in attachments.values():
                sink.discard()
            raise
        return SoapResult(envelope, payload, attachments, is_mtom)


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise TransportError(f"the SOAP answer exceeds {limit} bytes", delivered=True)
    return bytes(body)
