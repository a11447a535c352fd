"""WADO-RS (RAD-107): studies, series and instances as multipart/related DICOM, metadata as DICOM
JSON, frames as octet-stream and rendered JPEG/PNG.

Instances go out as stored when the Accept header allows it (``transfer-syntax=*`` or the stored
syntax); otherwise they are transcoded to an uncompressed syntax. Responses are streamed: one
file read ahead of the one being written, so memory stays at two instances whatever the study size.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiohttp import web

from imaging_source import metadata_cache, store
from imaging_source.context import ImagingSource
from imaging_source.pixels import (
    EXPLICIT_LE,
    RENDERED_TYPES,
    PixelError,
    RenderOptions,
    can_supply,
    native_frames,
    render,
    transcode,
)
from imaging_source.storage import Storage, StorageError, is_uid

log = logging.getLogger(__name__)

PREFIX = "/dicomweb"
DICOM_JSON = "application/dicom+json"


# --- Accept header ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MediaRange:
    media: str
    params: dict[str, str] = field(default_factory=dict)
    q: float = 1.0


_RANGE_PARAM = re.compile(r'\s*;\s*([^=;,\s]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;,]*)')


def parse_accept(value: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header, highest q first (ties keep their order); */* when absent."""
    if not value or not value.strip():
        return [MediaRange("*/*")]
    ranges: list[MediaRange] = []
    pos = 0
    while pos < len(value):
        m = re.compile(r"\s*([^;,\s]+)").match(value, pos)
        if not m:
            break
        media, pos = m.group(1).lower(), m.end()
        params: dict[str, str] = {}
        while (p := _RANGE_PARAM.match(value, pos)) is not None:
            params[p.group(1).lower()] = p.group(2).strip().strip('"')
            pos = p.end()
        q = 1.0
        if "q" in params:
            try:
                q = float(params.pop("q"))
            except ValueError:
                q = 0.0
        if q > 0:
            ranges.append(MediaRange(media, params, q))
        comma = value.find(",", pos)
        if comma < 0:
            break
        pos = comma + 1
    return sorted(ranges, key=lambda r: -r.q)


def dicom_transfer_syntax(ranges: Sequence[MediaRange]) -> str | None:
    """The transfer syntax asked for instances ('*' = as stored), or None when nothing DICOM is acceptable.

    Without a transfer-syntax parameter PS3.18 makes Explicit VR Little Endian the default.
    """
    for r in ranges:
        if r.media in ("*/*", "multipart/*"):
            return EXPLICIT_LE
        if r.media == "multipart/related":
            kind = r.params.get("type", "application/dicom").lower()
            if kind not in ("application/dicom", "application/*", "*/*"):
                continue
            return r.params.get("transfer-syntax", EXPLICIT_LE)
        if r.media == "application/dicom":
            return r.params.get("transfer-syntax", EXPLICIT_LE)
    return None


def rendered_type(ranges: Sequence[MediaRange]) -> str | None:
    for r in ranges:
        if r.media in RENDERED_TYPES:
            return r.media
        if r.media in ("*/*", "image/*"):
            return "image/jpeg"
    return None


def accepts_octet_stream(ranges: Sequence[MediaRange]) -> bool:
    for r in ranges:
        if r.media in ("*/*", "multipart/*", "application/octet-stream"):
            return True
        if r.media == "multipart/related" and r.params.get("type", "application/octet-stream").lower() in (
                "application/octet-stream", "*/*"):
            ts = r.params.get("transfer-syntax", EXPLICIT_LE)
            return ts in ("*", EXPLICIT_LE)
    return False


def parse_frame_list(value: str) -> list[int]:
    try:
        frames = [int(x) for x in value.split(",")]
    except ValueError:
        raise web.HTTPBadRequest(text=f"frame list {value!r} is not a comma-separated list of numbers") from None
    if not frames or any(f < 1 for f in frames):
        raise web.HTTPBadRequest(text="frame numbers start at 1")
    return frames


# --- streaming ------------------------------------------------------------------------------------


async def stream_instances(request: web.Request, storage: Storage, rows: Sequence, wanted: str) -> web.StreamResponse:
    """Send ``rows`` as multipart/related application/dicom in ``wanted`` ('*' = as stored)."""
    for r in rows:
        if not can_supply(r["transfer_syntax_uid"], wanted):
            raise web.HTTPNotAcceptable(
                text=f"instance {r['sop_instance_uid']} is stored as {r['transfer_syntax_uid']} and cannot be "
                f"supplied as {wanted}; accept transfer-syntax=* or {EXPLICIT_LE}")
    boundary = uuid.uuid4().hex
    response = web.StreamResponse(headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    await response.prepare(request)

    def load(row) -> tuple[str, bytes]:
        data = storage.read(row["storage_key"])
        ts = row["transfer_syntax_uid"]
        if wanted not in ("*", ts):
            data, ts = transcode(data, wanted), wanted
        return ts, data

    pending = asyncio.ensure_future(asyncio.to_thread(load, rows[0])) if rows else None
    try:
        for i, _row in enumerate(rows):
            ts, data = await pending
            pending = asyncio.ensure_future(asyncio.to_thread(load, rows[i + 1])) if i + 1 < len(rows) else None
            head = (f"--{boundary}\r\nContent-Type: application/dicom; transfer-syntax={ts}\r\n"
                    f"Content-Length: {len(data)}\r\n\r\n").encode("ascii")
            await response.write(head)
            await response.write(data)
            await response.write(b"\r\n")
        await response.write(f"--{boundary}--\r\n".encode("ascii"))
    except (StorageError, PixelError) as exc:
        # Headers are gone already: the only honest signal left is to break the connection.
        log.error("WADO-RS %s aborted: %s", request.path, exc)
        raise
    finally:
        if pending is not None:
            pending.cancel()
    await response.write_eof()
    return response


def _check_uids(*uids: str | None) -> None:
    for uid in uids:
        if uid is not None and not is_uid(uid):
            raise web.HTTPBadRequest(text=f"{uid!r} is not a valid DICOM UID")


async def _rows(source: ImagingSource, study: str, series: str | None = None, instance: str | None = None):
    _check_uids(study, series, instance)
    async with source.pool.acquire() as conn:
        rows = await store.instances_of(conn, study, series, instance)
    if not rows:
        what = f"instance {instance}" if instance else f"series {series}" if series else f"study {study}"
        raise web.HTTPNotFound(text=f"{what} is not known here" + (" in that study/series" if series else ""))
    return rows


def _render_options(request: web.Request, media: str) -> RenderOptions:
    q = request.query
    try:
        quality = int(q.get("quality", "90"))
        center = width = rows = columns = None
        if "window" in q:
            parts = q["window"].split(",")
            center, width = float(parts[0]), float(parts[1])
        if "viewport" in q:
            # PS3.18 8.3.5.1.3: viewport=vw,vh[,sx,sy,sw,sh], width first.
            parts = q["viewport"].split(",")
            columns, rows = int(parts[0]), int(parts[1])
    except (ValueError, IndexError):
        raise web.HTTPBadRequest(text="quality, window (center,width[,function]) or viewport (width,height) "
                                 "is malformed") from None
    return RenderOptions(media, quality, center, width, rows, columns)


def build_routes(source: ImagingSource) -> web.RouteTableDef:
    routes = web.RouteTableDef()
    base_of = lambda: f"{source.settings.wado_rs_url}"  # noqa: E731

    async def retrieve(request: web.Request, study: str, series: str | None = None,
                       instance: str | None = None) -> web.StreamResponse:
        wanted = dicom_transfer_syntax(parse_accept(request.headers.get("Accept")))
        if wanted is None:
            raise web.HTTPNotAcceptable(text='instances are sent as multipart/related; type="application/dicom"')
        rows = await _rows(source, study, series, instance)
        return await stream_instances(request, source.storage, rows, wanted)

    async def metadata(request: web.Request, study: str, series: str | None = None,
                       instance: str | None = None) -> web.Response:
        ranges = parse_accept(request.headers.get("Accept"))
        if not any(r.media in (DICOM_JSON, "application/json", "*/*", "application/*") for r in ranges):
            raise web.HTTPNotAcceptable(text=f"metadata is available as {DICOM_JSON}")
        rows = await _rows(source, study, series, instance)
        try:
            body = await metadata_cache.metadata_body(source, rows, base_of())
        except (StorageError, OSError) as exc:
            log.error("metadata of %s: %s", request.path, exc)
            raise web.HTTPInternalServerError(text="a stored instance could not be read") from None
        return web.Response(body=body, content_type=DICOM_JSON)

    @routes.get(PREFIX + "/studies/{study}")
    async def study(request: web.Request) -> web.StreamResponse:
        return await retrieve(request, request.match_info["study"])

    @routes.get(PREFIX + "/studies/{study}/series/{series}")
    async def series(request: web.Request) -> web.StreamResponse:
        return await retrieve(request, request.match_info["study"], request.match_info["series"])

    @routes.get(PREFIX + "/studies/{study}/series/{series}/instances/{instance}")
    async def instance(request: web.Request) -> web.StreamResponse:
        m = request.match_info
        return await retrieve(request, m["study"], m["series"], m["instance"])

    @routes.get(PREFIX + "/studies/{study}/metadata")
    async def study_metadata(request: web.Request) -> web.Response:
        return await metadata(request, request.match_info["study"])

    @routes.get(PREFIX + "/studies/{study}/series/{series}/metadata")
    async def series_metadata(request: web.Request) -> web.Response:
        return await metadata(request, request.match_info["study"], request.match_info["series"])

    @routes.get(PREFIX + "/studies/{study}/series/{series}/instances/{instance}/metadata")
    async def instance_metadata_route(request: web.Request) -> web.Response:
        m = request.match_info
        return await metadata(request, m["study"], m["series"], m["instance"])

    async def rendered(request: web.Request, frame: int) -> web.Response:
        media = rendered_type(parse_accept(request.headers.get("Accept")))
        if media is None:
            raise web.HTTPNotAcceptable(text="rendered images are available as image/jpeg and image/png")
        m = request.match_info
        row = (await _rows(source, m["study"], m["series"], m["instance"]))[0]
        try:
            data = await asyncio.to_thread(source.storage.read, row["storage_key"])
            body = await asyncio.to_thread(render, data, frame, _render_options(request, media))
        except PixelError as exc:
            raise web.HTTPBadRequest(text=exc.reason) from None
        except StorageError as exc:
            log.error("rendering %s: %s", request.path, exc)
            raise web.HTTPInternalServerError(text="the stored instance could not be read") from None
        return web.Response(body=body, content_type=media)

    @routes.get(PREFIX + "/studies/{study}/series/{series}/instances/{instance}/rendered")
    async def instance_rendered(request: web.Request) -> web.Response:
        return await rendered(request, 1)

    @routes.get(PREFIX + "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}/rendered")
    async def frame_rendered(request: web.Request) -> web.Response:
        frames = parse_frame_list(request.match_info["frames"])
        if len(frames) != 1:
            raise web.HTTPBadRequest(text="a rendered JPEG/PNG holds one frame: ask for one frame number")
        return await rendered(request, frames[0])

    @routes.get(PREFIX + "/studies/{study}/series/{series}/instances/{instance}/frames/{frames}")
    async def frames(request: web.Request) -> web.StreamResponse:
        if not accepts_octet_stream(parse_accept(request.headers.get("Accept"))):
            raise web.HTTPNotAcceptable(
                text='frames are available as multipart/related; type="application/octet-stream"')
        numbers = parse_frame_list(request.match_info["frames"])
        m = request.match_info
        row = (await _rows(source, m["study"], m["series"], m["instance"]))[0]
        try:
            data = await asyncio.to_thread(source.storage.read, row["storage_key"])
            parts = await asyncio.to_thread(native_frames, data, numbers)
        except PixelError as exc:
            raise web.HTTPBadRequest(text=exc.reason) from None
        except StorageError as exc:
            log.error("frames %s: %s", request.path, exc)
            raise web.HTTPInternalServerError(text="the stored instance could not be read") from None
        boundary = uuid.uuid4().hex
        body = b"".join(
            f"--{boundary}\r\nContent-Type: application/octet-stream; transfer-syntax={EXPLICIT_LE}\r\n\r\n"
            .encode("ascii") + part + b"\r\n" for part in parts) + f"--{boundary}--\r\n".encode("ascii")
        return web.Response(body=body, headers={
            "Content-Type": f'multipart/related; type="application/octet-stream"; boundary={boundary}'})

    return routes
