"""Permits of the access policy are reused for a few seconds, denials never: the shared cache
(ihe.policy.client.PermitCache) and the portal's guard in front of its DICOMweb proxy and reports, which
asks the registry once per user and study rather than once per frame."""

from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consumer.portal.access import ResourceAccess, guard
from consumer.portal.context import Portal
from consumer.portal.sessions import PortalSession
from consumer.portal.settings import PortalSettings
from ihe.policy.client import PermitCache


def test_a_permit_is_kept_for_its_seconds_only():
    cache = PermitCache(10)
    assert not cache.permitted(("u", "s", "1.2"), now=100.0)
    cache.remember([("u", "s", "1.2")], now=100.0)
    assert cache.permitted(("u", "s", "1.2"), now=109.9)
    assert not cache.permitted(("u", "s", "1.2"), now=110.0)
    assert not cache.permitted(("other user", "s", "1.2"), now=105.0)


def test_no_seconds_keeps_nothing_and_the_cache_stays_bounded():
    off = PermitCache(0)
    off.remember([("u", "s", "1")], now=1.0)
    assert not off.permitted(("u", "s", "1"), now=1.0)
    small = PermitCache(5, limit=3)
    small.remember([("u", "s", str(n)) for n in range(4)], now=0.0)
    small.remember([("u", "s", "new")], now=6.0)  # over the limit: the expired ones are dropped
    assert len(small._until) == 1 and small.permitted(("u", "s", "new"), now=6.0)


class PolicyEndpoint:
    """A stand-in registry /policy/decisions: permits study 1.2.3 to Hospital A, denies everything else, and
    counts the questions."""

    def __init__(self) -> None:
        self.asked: list[dict] = []
        app = web.Application()
        app.router.add_post("/policy/decisions", self.decisions)
        self.server = TestServer(app)

    async def decisions(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.asked.append(body)
        permit = body["requester"]["organisation"] == "Hospital A"
        return web.json_response({"documents": {}, "studies": {
            s: {"permit": permit and s == "1.2.3", "reason": "ok" if permit else "no care relationship"}
            for s in body["studies"]}})


async def portal_with_guard(policy: PolicyEndpoint, http: aiohttp.ClientSession, seconds: float):
    settings = PortalSettings(query_deadline=5, access_policy_url=str(policy.server.make_url("/policy")),
                              access_policy_cache=seconds)
    portal = Portal(settings=settings, pool=None, http=http, soap=None)
    sessions = {"a": PortalSession("dr a", "clinician", "Hospital A", "csrf", "sub-a"),
                "c": PortalSession("dr c", "clinician", "Hospital C", "csrf", "sub-c")}

    @web.middleware
    async def session(request: web.Request, handler):
        request["session"] = sessions.get(request.headers.get("X-User", ""))
        return await handler(request)

    app = web.Application(middlewares=[session, guard(ResourceAccess(portal))])

    async def study(request: web.Request) -> web.Response:
        return web.Response(text="study " + request.match_info["study"])

    app.router.add_get("/dicomweb/studies/{study}/{rest:.*}", study)
    return TestClient(TestServer(app))


@pytest.fixture
async def policy():
    endpoint = PolicyEndpoint()
    await endpoint.server.start_server()
    yield endpoint
    await endpoint.server.close()


async def test_the_portal_asks_once_per_user_and_study_and_every_time_it_was_denied(policy):
    async with aiohttp.ClientSession() as http, await portal_with_guard(policy, http, 10) as client:
        for frame in range(1, 6):  # a viewer's frames of one study: one question
            r = await client.get(f"/dicomweb/studies/1.2.3/frames/{frame}", headers={"X-User": "a"})
            assert r.status == 200 and await r.text() == "study 1.2.3"
        assert len(policy.asked) == 1
        for _ in range(3):  # denied: asked again each time, never served
            r = await client.get("/dicomweb/studies/1.2.3/frames/1", headers={"X-User": "c"})
            assert r.status == 403 and "no care relationship" in await r.text()
        assert len(policy.asked) == 4
        r = await client.get("/dicomweb/studies/9.9.9/metadata", headers={"X-User": "a"})  # another study
        assert r.status == 403 and len(policy.asked) == 5


async def test_with_no_cache_seconds_every_request_is_asked(policy):
    async with aiohttp.ClientSession() as http, await portal_with_guard(policy, http, 0) as client:
        for _ in range(3):
            r = await client.get("/dicomweb/studies/1.2.3/metadata", headers={"X-User": "a"})
            assert r.status == 200
        assert len(policy.asked) == 3
