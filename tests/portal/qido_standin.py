"""TEST-ONLY QIDO-RS stand-in, until imaging_source/qido_rs.py (backend helper) is merged: the branch
merger replaces it by the imaging source's own QIDO-RS.

It answers the three QIDO-RS searches OHIF makes (studies by StudyInstanceUID, a study's series, a
series' instances) from the headers of the DICOM files the test sent, and passes every other request
(WADO-RS) to the real imaging source process through the portal's proxy code."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
from aiohttp import web

from consumer.portal import dicomweb_proxy

STUDY_TAGS = ("00080020", "00080030", "00080050", "00081030", "00100010", "00100020", "00100030", "00100040",
              "0020000D", "00200010")
SERIES_TAGS = ("0020000D", "0020000E", "00080060", "00200011", "0008103E", "00080021")
INSTANCE_TAGS = ("0020000D", "0020000E", "00080016", "00080018", "00200013", "00280010", "00280011")


def _pick(ds: pydicom.Dataset, tags: tuple[str, ...]) -> dict:
    full = ds.to_json_dict()
    return {t: full[t] for t in tags if t in full}


def build_qido_standin_app(files: list[Path], wado_rs_root: str) -> web.Application:
    datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]

    def json_response(items: list[dict]) -> web.Response:
        if not items:
            return web.Response(status=204)
        return web.Response(body=json.dumps(items).encode(), content_type="application/dicom+json")

    async def studies(request: web.Request) -> web.Response:
        wanted = set(dicomweb_proxy.study_uids(request.query.get("StudyInstanceUID", "")))
        items = []
        for uid in sorted({ds.StudyInstanceUID for ds in datasets} & wanted):
            members = [ds for ds in datasets if ds.StudyInstanceUID == uid]
            item = _pick(members[0], STUDY_TAGS)
            item["00080061"] = {"vr": "CS", "Value": sorted({ds.Modality for ds in members})}
            item["00201206"] = {"vr": "IS", "Value": [len({ds.SeriesInstanceUID for ds in members})]}
            item["00201208"] = {"vr": "IS", "Value": [len(members)]}
            items.append(item)
        return json_response(items)

    async def series(request: web.Request) -> web.Response:
        members = [ds for ds in datasets if ds.StudyInstanceUID == request.match_info["study"]]
        items = []
        for uid in sorted({ds.SeriesInstanceUID for ds in members}):
            in_series = [ds for ds in members if ds.SeriesInstanceUID == uid]
            item = _pick(in_series[0], SERIES_TAGS)
            item["00201209"] = {"vr": "IS", "Value": [len(in_series)]}
            items.append(item)
        return json_response(items)

    async def instances(request: web.Request) -> web.Response:
        m = request.match_info
        return json_response([_pick(ds, INSTANCE_TAGS) for ds in datasets
                              if ds.StudyInstanceUID == m["study"] and ds.SeriesInstanceUID == m["series"]])

    async def locate(study_uid: str) -> str | None:
        return wado_rs_root

    app = web.Application()
    app.router.add_get("/dicomweb/studies", studies)
    app.router.add_get("/dicomweb/studies/{study}/series", series)
    app.router.add_get("/dicomweb/studies/{study}/series/{series}/instances", instances)
    app.add_routes(dicomweb_proxy.build_routes(locate, lambda request: None))
    return app
