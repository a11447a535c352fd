"""The portal's DICOMweb endpoint (``/dicomweb/...``) the OHIF viewer talks to: QIDO-RS and WADO-RS
requests of a signed-in user, forwarded to the imaging source that holds the study.

Responses are streamed chunk by chunk (a whole study never sits in memory). The imaging source's
own absolute URLs in DICOM JSON (BulkDataURI, RetrieveURL) are rewritten on the fly to the portal's,
so the browser never needs to reach an imaging source directly (the CSP forbids it anyway). The user's
cookies and credentials are not forwarded.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from ihe import tls

log = logging.getLogger(__name__)

PREFIX = "/dicomweb"
CHUNK = 64 * 1024
UIDS_PER_SEARCH = 40  # UIDs per forwarded QIDO-RS search: keeps the request line under servers' 8 KiB limits

Locate = Callable[[str], Awaitable[str | None]]
RequireSession = Callable[[web.Request], Any]
PatientStudies = Callable[[web.Request], Awaitable[list[str]]]

# Request headers a DICOMweb server needs (media types, transfer syntaxes, ranges, validators); nothing else
# (no Cookie, no Authorization) leaves the portal.
_REQUEST_HEADERS = ("Accept", "Accept-Charset", "Range", "If-None-Match", "If-Modified-Since")
_RESPONSE_HEADERS = ("Content-Type", "Content-Range", "Accept-Ranges", "ETag", "Last-Modified", "Warning")
_UID = re.compile(r"^(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*$")
_JSON_TYPES = ("application/dicom+json", "application/json")
_TIMEOUT = aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10, sock_read=120)


def is_uid(value: str) -> bool:
    return len(value) <= 64 and _UID.match(value) is not None


def study_uids(value: str) -> list[str]:
    """The StudyInstanceUID query parameter's UIDs (PS3.18 allows a comma- or backslash-separated list)."""
    return [u.strip() for u in re.split(r"[,\\]", value) if u.strip()]


def upstream_url(base: str, raw_path: str, raw_query: str) -> URL:
    """``base`` + the request's path below /dicomweb + its query, kept percent-encoded as received."""
    url = base.rstrip("/") + raw_path[len(PREFIX):]
    if raw_query:
        url += "?" + raw_query
    return URL(url, encoded=True)


class StreamReplace:
    """Replace ``old`` by ``new`` in a byte stream cut anywhere: keeps back only the bytes that could start a
    match straddling the next chunk (fewer than len(old)), so memory stays at one chunk."""

    def __init__(self, old: bytes, new: bytes) -> None:
        self.old, self.new, self.tail = old, new, b""

    def feed(self, chunk: bytes) -> bytes:
        buf = self.tail + chunk
        out, i = [], 0
        while (j := buf.find(self.old, i)) >= 0:
            out += (buf[i:j], self.new)
            i = j + len(self.old)
        rest = buf[i:]
        keep = max(0, len(rest) - (len(self.old) - 1))
        out.append(rest[:keep])
        self.tail = rest[keep:]
        return b"".join(out)

    def flush(self) -> bytes:
        tail, self.tail = self.tail, b""
        return tail


def portal_root(request: web.Request) -> str:
    return str(request.url.origin()) + PREFIX


UpstreamHeaders = Callable[[web.Request], dict[str, str]]


def _forward_headers(request: web.Request, upstream_headers: UpstreamHeaders | None = None) -> dict[str, str]:
    headers = {h: request.headers[h] for h in _REQUEST_HEADERS if h in request.headers}
    # Bytes go through as the source sends them; no compression the client session might silently undo.
    headers["Accept-Encoding"] = "identity"
    if upstream_headers is not None:  # the portal's own credentials for the source: the user's XUA assertion
        headers.update(upstream_headers(request))
    return headers


def _bad_gateway(base: str, exc: BaseException) -> web.HTTPBadGateway:
    reason = str(exc) or type(exc).__name__
    log.warning("imaging source %s unreachable: %s", base, reason)
    return web.HTTPBadGateway(text=f"the imaging source holding this study ({base}) is unreachable: {reason}")


def build_routes(locate: Locate, require_session: RequireSession, *,
                 client: Callable[[], aiohttp.ClientSession] | None = None,
                 patient_studies: PatientStudies | None = None,
                 upstream_headers: UpstreamHeaders | None = None) -> list[web.RouteDef]:
    """Routes of ``/dicomweb``. ``locate(study_uid)`` gives the DICOMweb root of the imaging source holding
    the study (or None); ``require_session(request)`` (sync or async) raises 401 without a session;
    ``client()`` gives the portal's shared aiohttp session (default: one session per request);
    ``patient_studies(request)`` the Study Instance UIDs of the patient in the session's context, which
    bound a study search without StudyInstanceUID (OHIF's search for the patient's other studies):
    without it such a search finds nothing, and says so in a Warning header. ``upstream_headers(request)``
    gives headers added to what goes to the source (the XUA ``Authorization`` of the signed-in user)."""

    async def check_session(request: web.Request) -> None:
        result = require_session(request)
        if inspect.isawaitable(result):
            await result

    async def session_for() -> tuple[aiohttp.ClientSession, bool]:
        if client is not None:
            return client(), False
        return aiohttp.ClientSession(timeout=_TIMEOUT, auto_decompress=False, connector=tls.connector()), True

    async def located(study: str) -> str:
        if not is_uid(study):
            raise web.HTTPBadRequest(text=f"{study!r} is not a valid Study Instance UID")
        base = await locate(study)
        if base is None:
            raise web.HTTPNotFound(text=f"study {study} is not known to the network (no imaging source holds it)")
        return base.rstrip("/")

    async def forward(request: web.Request, base: str, url: URL) -> web.StreamResponse:
        http, own = await session_for()
        try:
            try:
                upstream = await http.request(request.method, url, headers=_forward_headers(request, upstream_headers),
                                              allow_redirects=False, timeout=_TIMEOUT)
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise _bad_gateway(base, exc) from None
            async with upstream:
                return await relay(request, upstream, base, raw_body=not http.auto_decompress)
        finally:
            if own:
                await http.close()

    async def relay(request: web.Request, upstream: aiohttp.ClientResponse, base: str,
                    raw_body: bool) -> web.StreamResponse:
        """Copy ``upstream`` chunk by chunk. ``raw_body``: the client session passes content-coded bodies
        as sent (else it decodes them, and the coding and length headers no longer apply)."""
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for h in _RESPONSE_HEADERS:
            if h in upstream.headers:
                response.headers[h] = upstream.headers[h]
        response.headers["Cache-Control"] = "private, no-store"
        media = upstream.headers.get("Content-Type", "").split(";")[0].strip().lower()
        encoded = upstream.headers.get("Content-Encoding", "identity").lower() != "identity" and raw_body
        rewrite = StreamReplace(base.encode(), portal_root(request).encode()) \
            if media in _JSON_TYPES and not encoded else None
        if encoded:
            response.headers["Content-Encoding"] = upstream.headers["Content-Encoding"]
        if rewrite is not None and request.method != "HEAD":
            # DICOM JSON compresses 10 to 70 times (a 500-image series' metadata: 7.5 MB, 0.1 MB gzipped);
            # aiohttp compresses chunk by chunk as they are relayed, when the client accepts gzip or deflate.
            # Only JSON: pixel data barely compresses, and the proxy's pages carry no secrets next to input
            # an attacker controls (BREACH).
            response.enable_compression()
        if rewrite is None and upstream.content_length is not None and (raw_body or "Content-Encoding" not in
                                                                        upstream.headers):
            response.content_length = upstream.content_length
        await response.prepare(request)
        if request.method == "HEAD":
            await response.write_eof()
            return response
        try:
            async for chunk in upstream.content.iter_chunked(CHUNK):
                await response.write(rewrite.feed(chunk) if rewrite else chunk)
        except (TimeoutError, aiohttp.ClientError) as exc:
            # The status line is gone: breaking the connection is the only way to say the body is incomplete.
            log.error("relaying %s from %s broke off: %s", request.path, base, exc)
            if request.transport is not None:
                request.transport.close()
            raise
        if rewrite:
            await response.write(rewrite.flush())
        await response.write_eof()
        return response

    async def study_resource(request: web.Request) -> web.StreamResponse:
        await check_session(request)
        raw = request.rel_url.raw_path
        # Also when percent-encoded: the source would decode them and could serve something outside the study.
        if any(seg in (".", "..") for seg in (*raw.split("/"), *request.path.split("/"))):
            raise web.HTTPBadRequest(text="path segments '.' and '..' are not allowed")
        base = await located(request.match_info["study"])
        return await forward(request, base, upstream_url(base, raw, request.rel_url.raw_query_string))

    async def study_search(request: web.Request) -> web.StreamResponse:
        """QIDO-RS study search, only ever over named studies: those of StudyInstanceUID, or else those of
        the patient in the session's context. The sources apply the other matching keys."""
        await check_session(request)
        uids = study_uids(",".join(request.query.getall("StudyInstanceUID", [])))
        named = bool(uids)
        if not named:
            uids = await patient_studies(request) if patient_studies is not None else []
            if not uids:
                return web.Response(status=204, headers={
                    "Cache-Control": "private, no-store",
                    "Warning": '299 portal "a study search without StudyInstanceUID covers only the patient '
                               'opened in the portal"'})
        by_source: dict[str, list[str]] = {}
        for uid in uids:
            try:
                by_source.setdefault(await located(uid), []).append(uid)
            except web.HTTPNotFound:
                if named and len(uids) == 1:
                    raise
        if not by_source:
            if not named:
                return web.Response(status=204, headers={"Cache-Control": "private, no-store"})
            raise web.HTTPNotFound(text=f"none of the studies {', '.join(uids)} is known to the network")
        if named and len(by_source) == 1:
            ((base, _),) = by_source.items()
            return await forward(request, base, upstream_url(base, request.rel_url.raw_path,
                                                             request.rel_url.raw_query_string))
        return await merged_search(request, by_source)

    async def merged_search(request: web.Request, by_source: dict[str, list[str]]) -> web.Response:
        """Studies held by several sources: ask each for its own, join the (small) JSON result lists."""
        rest = [(k, v) for k, v in request.query.items() if k != "StudyInstanceUID"]
        http, own = await session_for()
        try:
            async def one(base: str, uids: list[str]) -> list[Any]:
                if len(uids) > UIDS_PER_SEARCH:  # a patient with many studies: several searches
                    parts = await asyncio.gather(*(one(base, uids[i:i + UIDS_PER_SEARCH])
                                                   for i in range(0, len(uids), UIDS_PER_SEARCH)))
                    return [item for part in parts for item in part]
                url = URL(base + "/studies").with_query([*rest, ("StudyInstanceUID", ",".join(uids))])
                try:
                    async with http.get(url, headers=_forward_headers(request, upstream_headers),
                                        timeout=_TIMEOUT) as up:
                        if up.status == 204:
                            return []
                        if up.status != 200:
                            raise web.HTTPBadGateway(
                                text=f"the imaging source {base} answered {up.status}: {(await up.text())[:200]}")
                        body = (await up.read()).replace(base.encode(), portal_root(request).encode())
                        return json.loads(body)
                except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                    raise _bad_gateway(base, exc) from None

            parts = await asyncio.gather(*(one(b, u) for b, u in by_source.items()))
        finally:
            if own:
                await http.close()
        items = [item for part in parts for item in part]
        if not items:
            return web.Response(status=204, headers={"Cache-Control": "private, no-store"})
        return web.Response(body=json.dumps(items).encode(), content_type="application/dicom+json",
                            headers={"Cache-Control": "private, no-store"})

    return [
        web.get(PREFIX + "/studies", study_search),
        web.get(PREFIX + "/studies/{study}", study_resource),
        web.get(PREFIX + "/studies/{study}/{tail:.*}", study_resource),
    ]
