"""WADO-URI (RAD-55): one instance by ``requestType=WADO&studyUID&seriesUID&objectUID``.

``contentType=application/dicom`` streams the instance (as stored with ``transferSyntax=*`` or the
stored syntax, else transcoded, Explicit VR Little Endian by default as PS3.18 says);
``image/jpeg`` (the default for images) and ``image/png`` render one frame.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from imaging_source import store
from imaging_source.context import ImagingSource
from imaging_source.pixels import EXPLICIT_LE, RENDERED_TYPES, PixelError, RenderOptions, can_supply, render, transcode
from imaging_source.storage import StorageError, is_uid

log = logging.getLogger(__name__)

PATH = "/wado"
DICOM = "application/dicom"


def parse_request(query) -> dict:
    """The checked parameters of a WADO-URI request, or HTTPBadRequest naming the one at fault."""
    if query.get("requestType") != "WADO":
        raise web.HTTPBadRequest(text="requestType must be WADO")
    params = {}
    for name in ("studyUID", "seriesUID", "objectUID"):
        value = query.get(name, "")
        if not is_uid(value):
            raise web.HTTPBadRequest(text=f"{name} is missing or not a valid DICOM UID")
        params[name] = value
    content_types = [c.strip().lower() for c in query.get("contentType", "").split(",") if c.strip()]
    params["contentTypes"] = content_types
    params["transferSyntax"] = query.get("transferSyntax") or EXPLICIT_LE
    try:
        params["frameNumber"] = int(query.get("frameNumber", "1"))
        params["quality"] = int(query.get("imageQuality", "90"))
        params["rows"] = int(query["rows"]) if "rows" in query else None
        params["columns"] = int(query["columns"]) if "columns" in query else None
        wc, ww = query.get("windowCenter"), query.get("windowWidth")
        params["window"] = (float(wc), float(ww)) if wc is not None and ww is not None else None
    except ValueError:
        raise web.HTTPBadRequest(text="frameNumber, imageQuality, rows, columns, windowCenter and windowWidth "
                                 "must be numbers") from None
    return params


def choose_content_type(requested: list[str], accept: str | None) -> str | None:
    """The first requested type we can produce; image/jpeg when none was named (PS3.18 default)."""
    if not requested:
        if accept and DICOM in accept and "image/" not in accept and "*/*" not in accept:
            return DICOM
        return "image/jpeg"
    for media in requested:
        if media == DICOM or media in RENDERED_TYPES:
            return media
        if media in ("*/*", "image/*"):
            return "image/jpeg"
    return None


# SOP class families without pixel data (PS3.4 annex B): structured reports and key objects
# (88.x), encapsulated documents (104.x), presentation states (11.x), waveforms (9.x), raw data,
# spatial registration and fiducials (66.x), real-world value maps (67), surface/segmentation
# meshes (68.x). For these the PS3.18 default content type is application/dicom, not image/jpeg.
_NON_IMAGE_SOP_CLASS_PREFIXES = tuple(f"1.2.840.10008.5.1.4.1.1.{n}." for n in ("88", "104", "11", "9", "66", "68"))
_NON_IMAGE_SOP_CLASSES = frozenset({"1.2.840.10008.5.1.4.1.1.67"})


def is_non_image(sop_class_uid: str) -> bool:
    return sop_class_uid in _NON_IMAGE_SOP_CLASSES or sop_class_uid.startswith(_NON_IMAGE_SOP_CLASS_PREFIXES)


def build_routes(source: ImagingSource) -> web.RouteTableDef:
    routes = web.RouteTableDef()

    @routes.get(PATH)
    async def wado(request: web.Request) -> web.StreamResponse:
        params = parse_request(request.query)
        media = choose_content_type(params["contentTypes"], request.headers.get("Accept"))
        if media is None:
            raise web.HTTPNotAcceptable(text="contentType must be application/dicom, image/jpeg or image/png")
        async with source.pool.acquire() as conn:
            row = await store.find_instance(conn, params["objectUID"])
        if row is None or row["series_uid"] != params["seriesUID"] or row["study_uid"] != params["studyUID"]:
            raise web.HTTPNotFound(text="no such object in that study and series")
        if not params["contentTypes"] and is_non_image(row["sop_class_uid"]):
            media = DICOM
        try:
            data = await asyncio.to_thread(source.storage.read, row["storage_key"])
            if media == DICOM:
                wanted = params["transferSyntax"]
                stored = row["transfer_syntax_uid"]
                if not can_supply(stored, wanted):
                    raise web.HTTPNotAcceptable(text=f"the object is stored as {stored} and cannot be supplied "
                                                f"as {wanted}; ask for {stored}, * or {EXPLICIT_LE}")
                if wanted not in ("*", stored):
                    data = await asyncio.to_thread(transcode, data, wanted)
                return web.Response(body=data, content_type=DICOM, headers={
                    "Content-Disposition": f'attachment; filename="{row["sop_instance_uid"]}.dcm"'})
            window = params["window"]
            options = RenderOptions(media, params["quality"], window[0] if window else None,
                                    window[1] if window else None, params["rows"], params["columns"])
            body = await asyncio.to_thread(render, data, params["frameNumber"], options)
        except PixelError as exc:
            raise web.HTTPBadRequest(text=exc.reason) from None
        except StorageError as exc:
            log.error("WADO-URI %s: %s", params["objectUID"], exc)
            raise web.HTTPInternalServerError(text="the stored object could not be read") from None
        return web.Response(body=body, content_type=media)

    return routes
