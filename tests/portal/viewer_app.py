"""A small portal stand-in for the viewer tests: the real OHIF routes and DICOMweb proxy, with a test
session check (a cookie) instead of portal-core's sessions, and a fixed study -> imaging source map."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from consumer.portal import dicomweb_proxy, viewer

SESSION_COOKIE = "portal_test_session"


def require_test_session(request: web.Request) -> str:
    """Stand-in for consumer.portal.sessions.require_session: 401 unless the test cookie is there."""
    if request.cookies.get(SESSION_COOKIE) != "signed-in":
        raise web.HTTPUnauthorized(text="sign in to the portal first")
    return "test-user"


def build_test_app(ohif_dir: Path, studies: dict[str, str]) -> web.Application:
    async def locate(study_uid: str) -> str | None:
        return studies.get(study_uid)

    app = web.Application()
    app.add_routes(viewer.build_routes(ohif_dir, "/dicomweb"))
    app.add_routes(dicomweb_proxy.build_routes(locate, require_test_session))
    return app


async def serve(app: web.Application, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner
