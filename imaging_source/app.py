"""Wiring of the imaging source process: database, storage, HTTP (RAD-69, WADO-URI, WADO-RS, status),
the DICOM Storage SCP and the publication tracker."""

from __future__ import annotations

import asyncio
import html
import logging
from datetime import datetime

from aiohttp import web

from ihe import tls
from ihe.audit.auditor import open_auditor
from ihe.audit.client import install_xua_alerts
from ihe.audit.middleware import DicomAudit, audit_middlewares
from ihe.database import create_pool
from ihe.http import database_health
from ihe.xua import load_policy
from ihe.xua import web as xua
from imaging_source import qido_rs, rad69, store, wado_rs, wado_uri
from imaging_source.context import ImagingSource
from imaging_source.settings import ImagingSourceSettings
from imaging_source.storage import FileStorage
from schemas import migrate

log = logging.getLogger(__name__)


async def open_source(settings: ImagingSourceSettings, database_url: str) -> ImagingSource:
    pool = await create_pool(database_url, min_size=1, max_size=settings.pool_size)
    async with pool.acquire() as conn:
        applied = await migrate(conn, "imaging_source")
    if applied:
        log.info("applied imaging source migrations: %s", ", ".join(applied))
    storage = FileStorage(settings.storage_dir)
    swept = await asyncio.to_thread(storage.sweep_incoming)
    if swept:
        log.warning("removed %d half-received instance files left by an earlier stop", swept)
    source = ImagingSource(settings=settings, pool=pool, storage=storage)
    from imaging_source.access import open_policy

    open_policy(source)
    return source


def _json_safe(row: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row.items()}


def render_status_html(rows: list[dict]) -> str:
    """The status page: every study not (yet) transferred, with its attempts and last error."""
    head = ("<tr><th>study</th><th>patient</th><th>state</th><th>instances</th><th>attempts</th>"
            "<th>last error</th><th>next attempt</th></tr>")
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v) if v is not None else '')}</td>" for v in (
            r["study_uid"], r["affinity_patient_id"] or r["patient_id"],
            "NEEDS ACTION (refused, not retried)" if r.get("needs_action") else r["state"],
            r["instances"], r["attempts"],
            r["last_error"], r["next_attempt_at"])) + "</tr>"
        for r in rows)
    summary = "every received study is published" if not rows else f"{len(rows)} studies not (yet) transferred"
    refused = sum(1 for r in rows if r.get("needs_action"))
    if refused:
        summary += (f"; {refused} refused and not retried: fix the cause, then send new instances or run "
                    "xds-imaging-source retry STUDY_UID")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Imaging source publication status</title>"
            f"</head><body><h1>Publication status</h1><p>{summary}</p>"
            f"<table border='1'>{head}{body}</table></body></html>")


def build_app(source: ImagingSource) -> web.Application:
    app = web.Application(client_max_size=source.settings.max_body_bytes,
                          middlewares=audit_middlewares(source.extras.get("auditor")))
    xua.install(app, load_policy(source.settings.xua, source.settings.xua_trust),
                http_prefixes=(wado_uri.PATH, wado_rs.PREFIX))
    from imaging_source.access import guard, policy_of

    app.middlewares.append(guard(source, (wado_uri.PATH, wado_rs.PREFIX)))  # after XUA: the identity is known

    async def close_policy(_app: web.Application) -> None:
        if (policy := policy_of(source)) is not None:
            await policy.close()

    app.on_cleanup.append(close_policy)
    app.router.add_post(rad69.PATH, rad69.build_handler(source))
    app.router.add_routes(wado_uri.build_routes(source))
    app.router.add_routes(wado_rs.build_routes(source))
    app.router.add_routes(qido_rs.build_routes(source))

    async def status(request: web.Request) -> web.Response:
        everything = request.query.get("all") in ("1", "true", "yes")
        async with source.pool.acquire() as conn:
            rows = await store.publication_status(conn, problems_only=not everything)
        if request.query.get("format") == "json" or "application/json" in request.headers.get("Accept", ""):
            return web.json_response([_json_safe(r) for r in rows])
        return web.Response(text=render_status_html(rows), content_type="text/html")

    app.router.add_get("/status", status)
    app.router.add_get("/health", database_health(source.pool))
    return app


async def serve(settings: ImagingSourceSettings, database_url: str, ready: asyncio.Event | None = None) -> None:
    """Run HTTP, the Storage SCP and the tracker until cancelled."""
    from imaging_source.scp_workers import scp_config, start_workers, stop_workers
    from imaging_source.storage_scp import start_storage_scp
    from imaging_source.tracker import Tracker

    source = await open_source(settings, database_url)
    auditor = source.extras["auditor"] = open_auditor(settings, "xds-imaging-source")
    remove_alerts = install_xua_alerts(auditor, f"http://{settings.host}:{settings.port}")
    dicom_audit = DicomAudit(auditor, settings.ae_title, settings.dicom_host) if auditor is not None else None
    runner = web.AppRunner(build_app(source), access_log=None)
    await runner.setup()
    site = tls.site(runner, settings.host, settings.port, tls.node(), reuse_port=True)
    await site.start()
    tracker = Tracker(source)
    # C-STORE ingest: one audit record per association
    scp = await start_storage_scp(source.storage, source.pool, scp_config(settings), audit=dicom_audit,
                                  shared_port=settings.dicom_workers > 1, node_tls=tls.node())
    workers = start_workers(settings, database_url) if settings.dicom_workers > 1 else []
    task = asyncio.create_task(tracker.run())
    print(f"imaging source: HTTP (RAD-69 {rad69.PATH}, WADO-URI {wado_uri.PATH}, WADO-RS {wado_rs.PREFIX}, /status) "
          f"at {tls.scheme()}://{settings.host}:{settings.port}", flush=True)
    print(f"imaging source: DICOM Storage SCP {settings.ae_title} at {settings.dicom_host}:{settings.dicom_port}"
          f"{' over mutual TLS' if tls.node() else ''}", flush=True)
    if ready is not None:
        ready.set()
    try:
        await asyncio.Event().wait()
    finally:
        task.cancel()
        await asyncio.to_thread(stop_workers, workers)
        await scp.stop()
        await runner.cleanup()
        if tracker.client is not None:
            await tracker.client.close()
        await source.pool.close()
        remove_alerts()
        if auditor is not None:
            auditor.close()
