"""Wiring of the registry process: database pool, migrations, HTTP endpoint and MLLP listener.

The transaction modules (``register``, ``stored_query``, ``patient_feed``) are thin handlers
that receive the :class:`Registry` context; nothing else here knows about XDS.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web

from ihe import tls
from ihe.audit.auditor import open_auditor
from ihe.audit.client import install_xua_alerts
from ihe.audit.middleware import audit_middlewares
from ihe.database import create_pool
from ihe.http import SoapService, database_health
from ihe.namespaces import ACTION_ITI18, ACTION_ITI42, ACTION_ITI57, ACTION_ITI62
from ihe.xua import load_policy
from ihe.xua import web as xua
from registry.settings import RegistrySettings
from schemas import migrate

log = logging.getLogger(__name__)

REGISTRY_PATH = "/registry"


@dataclass(slots=True)
class Registry:
    """What every registry handler needs: settings, the database pool and the code list."""

    settings: RegistrySettings
    pool: asyncpg.Pool
    code_list: Any = None  # ihe.metadata.codes.CodeList when configured
    servers: list[Any] = field(default_factory=list)
    auditor: Any = None  # ihe.audit.auditor.Auditor when --audit-repository is set
    policy: Any = None  # ihe.policy.model.PolicyConfig when --access-policy is set


async def open_registry(settings: RegistrySettings, database_url: str) -> Registry:
    pool = await create_pool(database_url, max_size=settings.pool_size)
    async with pool.acquire() as conn:
        applied = await migrate(conn, "registry")
    if applied:
        log.info("applied registry migrations: %s", ", ".join(applied))
    code_list = None
    if settings.code_list is not None:
        from ihe.metadata.codes import load_code_list

        code_list = load_code_list(settings.code_list)
    policy = None
    if settings.access_policy is not None:
        from ihe.policy.config import load_policy_file

        policy = load_policy_file(settings.access_policy)
        log.info("access policy %s: %d organisations, %d restriction rules", settings.access_policy,
                 len(policy.organisations), len(policy.restrictions))
    return Registry(settings=settings, pool=pool, code_list=code_list, policy=policy)


def build_app(registry: Registry) -> web.Application:
    from registry.register import register_document_set
    from registry.remove_metadata import delete_document_set
    from registry.stored_query import registry_stored_query
    from registry.update import update_document_set

    async def iti42(request):
        return await register_document_set(registry, request)

    async def iti18(request):
        return await registry_stored_query(registry, request)

    async def iti57(request):
        return await update_document_set(registry, request)

    async def iti62(request):
        return await delete_document_set(registry, request)

    service = SoapService({ACTION_ITI42: iti42, ACTION_ITI18: iti18, ACTION_ITI57: iti57, ACTION_ITI62: iti62},
                          max_body_bytes=registry.settings.max_body_bytes)
    app = web.Application(client_max_size=registry.settings.max_body_bytes,
                          middlewares=audit_middlewares(registry.auditor))
    xua.install(app, load_policy(registry.settings.xua, registry.settings.xua_trust))
    app.router.add_post(REGISTRY_PATH, service.handle)
    app.router.add_get(REGISTRY_PATH, _wsdl_or_info)
    app.router.add_get("/health", database_health(registry.pool))
    if registry.policy is not None:
        from registry.policy_endpoint import add_policy_routes

        add_policy_routes(app, registry)
    return app


async def _wsdl_or_info(request: web.Request) -> web.StreamResponse:
    if "wsdl" in request.query or "WSDL" in request.query:
        from registry.wsdl import registry_wsdl

        base = f"{request.scheme}://{request.host}{REGISTRY_PATH}"
        return web.Response(body=registry_wsdl(base), content_type="text/xml")
    return web.Response(text="XDS.b Document Registry: POST SOAP 1.2 ITI-42, ITI-57, ITI-18 and ITI-62 here; "
                             "?wsdl for the WSDL\n")


async def serve(settings: RegistrySettings, database_url: str, *, with_mllp: bool = True) -> None:
    """Run the registry until cancelled or sent SIGINT/SIGTERM.

    Several processes may serve the same HTTP port (SO_REUSEPORT): the registry keeps no state
    outside PostgreSQL. Only one of them (``with_mllp``) listens for HL7.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    registry = await open_registry(settings, database_url)
    registry.auditor = open_auditor(settings, "xds-registry")
    remove_alerts = install_xua_alerts(registry.auditor, f"http://{settings.host}:{settings.port}{REGISTRY_PATH}")
    runner = web.AppRunner(build_app(registry), access_log=None)
    await runner.setup()
    site = tls.site(runner, settings.host, settings.port, tls.node(), reuse_port=True)
    await site.start()
    mllp = None
    if with_mllp:
        from registry.patient_feed import start_patient_feed

        mllp = await start_patient_feed(registry)
        print(f"registry: ITI-42/ITI-18 at {tls.scheme()}://{settings.host}:{settings.port}{REGISTRY_PATH}", flush=True)
        print(f"registry: ITI-8/ITI-9/ITI-21 (HL7 v2 MLLP) at {settings.mllp_host}:{settings.mllp_port}"
              f"{' over mutual TLS' if tls.node() else ''}", flush=True)
    try:
        await stop.wait()
    finally:
        if mllp is not None:
            mllp.close()
        await runner.cleanup()
        await registry.pool.close()
        remove_alerts()
        if registry.auditor is not None:
            registry.auditor.close()
