"""The portal's /dicomweb proxy: routing to the imaging source holding a study, refusal without a session,
reasons for unknown studies and unreachable sources, streaming without buffering, URL rewriting."""

from __future__ import annotations

import asyncio
import json
import tracemalloc

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from yarl import URL

from consumer.portal import dicomweb_proxy
from consumer.portal.dicomweb_proxy import StreamReplace
from tests.conftest import free_port
from tests.portal.viewer_app import SESSION_COOKIE, require_test_session

STUDY_A, STUDY_B, SERIES = "1.2.826.0.1.3680043.8.1055.1.1", "1.2.826.0.1.3680043.8.1055.1.2", "1.2.3.4"
SIGNED_IN = {"Cookie": f"{SESSION_COOKIE}=signed-in"}


class FakeSource:
    """An imaging source's DICOMweb side that records what it was asked."""

    def __init__(self, name: str) -> None:
        self.name, self.seen = name, []
        self.app = web.Application()
        self.app.router.add_get("/dicomweb/studies", self.studies)
        self.app.router.add_get("/dicomweb/{tail:.*}", self.anything)
        self.server = TestServer(self.app)

    @property
    def root(self) -> str:
        return str(self.server.make_url("/dicomweb"))

    async def studies(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        uids = dicomweb_proxy.study_uids(request.query.get("StudyInstanceUID", ""))
        return web.json_response([{"0020000D": {"vr": "UI", "Value": [u]},
                                   "00081190": {"vr": "UR", "Value": [f"{self.root}/studies/{u}"]}} for u in uids],
                                 content_type="application/dicom+json")

    async def anything(self, request: web.Request) -> web.Response:
        self.seen.append(request)
        if request.match_info["tail"].endswith("/missing"):
            raise web.HTTPNotFound(text="series 9.9 is not known here")
        body = json.dumps({"source": self.name, "path": request.path_qs, "bulk": f"{self.root}/studies/x/frames/1"})
        return web.Response(text=body, content_type="application/dicom+json", headers={"Warning": "299 src \"w\""})


@pytest.fixture
async def sources():
    a, b = FakeSource("A"), FakeSource("B")
    await a.server.start_server()
    await b.server.start_server()
    yield a, b
    await a.server.close()
    await b.server.close()


async def portal_client(located: dict[str, str], **options) -> TestClient:
    async def locate(uid: str) -> str | None:
        return located.get(uid)

    app = web.Application()
    app.add_routes(dicomweb_proxy.build_routes(locate, require_test_session, **options))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


async def test_study_resources_go_to_the_source_holding_the_study(sources) -> None:
    a, b = sources
    client = await portal_client({STUDY_A: a.root, STUDY_B: b.root})
    try:
        r = await client.get(f"/dicomweb/studies/{STUDY_B}/series?includefield=0008103E&SeriesNumber=1",
                             headers={**SIGNED_IN, "Accept": "application/dicom+json",
                                      "Authorization": "Bearer secret"})
        assert r.status == 200 and r.headers["Content-Type"].startswith("application/dicom+json")
        body = await r.json(content_type=None)
        assert body["source"] == "B"
        assert body["path"] == f"/dicomweb/studies/{STUDY_B}/series?includefield=0008103E&SeriesNumber=1"
        # The source's own URLs are turned into the portal's; its Warning header comes through.
        assert body["bulk"] == f"{client.make_url('/dicomweb')}/studies/x/frames/1"
        assert r.headers["Warning"] == '299 src "w"' and r.headers["Cache-Control"] == "private, no-store"
        (seen,) = b.seen
        assert a.seen == []
        assert seen.headers["Accept"] == "application/dicom+json"
        # The user's credentials never leave the portal.
        assert "Cookie" not in seen.headers and "Authorization" not in seen.headers

        accept = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
        r = await client.get(f"/dicomweb/studies/{STUDY_A}/series/{SERIES}/instances/1.2.5/frames/1",
                             headers={**SIGNED_IN, "Accept": accept})
        assert r.status == 200 and (await r.json(content_type=None))["source"] == "A"
        assert a.seen[-1].headers["Accept"] == accept
    finally:
        await client.close()


async def test_study_search_by_uid_goes_to_the_holding_source_and_merges_several(sources) -> None:
    a, b = sources
    client = await portal_client({STUDY_A: a.root, STUDY_B: b.root})
    try:
        r = await client.get(f"/dicomweb/studies?StudyInstanceUID={STUDY_A}&includefield=00081030", headers=SIGNED_IN)
        assert r.status == 200
        (item,) = await r.json(content_type=None)
        assert item["0020000D"]["Value"] == [STUDY_A]
        assert item["00081190"]["Value"] == [f"{client.make_url('/dicomweb')}/studies/{STUDY_A}"]
        assert a.seen[-1].query["includefield"] == "00081030" and b.seen == []

        r = await client.get(f"/dicomweb/studies?StudyInstanceUID={STUDY_A},{STUDY_B}", headers=SIGNED_IN)
        assert r.status == 200
        assert sorted(i["0020000D"]["Value"][0] for i in await r.json(content_type=None)) == [STUDY_A, STUDY_B]
        assert b.seen[-1].query["StudyInstanceUID"] == STUDY_B and a.seen[-1].query["StudyInstanceUID"] == STUDY_A
    finally:
        await client.close()


async def test_study_search_without_uid_covers_only_the_patient_in_context(sources) -> None:
    a, _ = sources
    client = await portal_client({STUDY_A: a.root})
    try:
        r = await client.get("/dicomweb/studies?00100020=1CT1&limit=101", headers=SIGNED_IN)
        assert r.status == 204 and "patient opened in the portal" in r.headers["Warning"]
        assert a.seen == []
    finally:
        await client.close()

    async def patient_studies(request: web.Request) -> list[str]:
        return [STUDY_A, "1.2.999"]  # the second is no longer held anywhere

    client = await portal_client({STUDY_A: a.root}, patient_studies=patient_studies)
    try:
        r = await client.get("/dicomweb/studies?00100020=1CT1&limit=101", headers=SIGNED_IN)
        assert r.status == 200
        assert [i["0020000D"]["Value"][0] for i in await r.json(content_type=None)] == [STUDY_A]
        assert a.seen[-1].query["00100020"] == "1CT1" and a.seen[-1].query["StudyInstanceUID"] == STUDY_A
    finally:
        await client.close()


async def test_a_patient_with_many_studies_is_searched_in_batches(sources) -> None:
    """UID lists are cut so no request line passes the 8 KiB servers (aiohttp among them) accept."""
    a, _ = sources
    many = [f"{STUDY_A}.{n}" for n in range(95)]

    async def patient_studies(request: web.Request) -> list[str]:
        return many

    client = await portal_client(dict.fromkeys(many, a.root), patient_studies=patient_studies)
    try:
        r = await client.get("/dicomweb/studies", headers=SIGNED_IN)
        assert r.status == 200
        assert sorted(i["0020000D"]["Value"][0] for i in await r.json(content_type=None)) == sorted(many)
        asked = [dicomweb_proxy.study_uids(q.query["StudyInstanceUID"]) for q in a.seen]
        assert sorted(len(b) for b in asked) == [15, 40, 40] and sorted(u for b in asked for u in b) == sorted(many)
    finally:
        await client.close()


async def test_refusals_carry_a_reason(sources) -> None:
    a, _ = sources
    closed = f"http://127.0.0.1:{free_port()}/dicomweb"
    client = await portal_client({STUDY_A: a.root, STUDY_B: closed})
    try:
        # No session: 401 and the source is never asked.
        for path in (f"/dicomweb/studies/{STUDY_A}/series", f"/dicomweb/studies?StudyInstanceUID={STUDY_A}"):
            r = await client.get(path)
            assert r.status == 401 and "sign in" in await r.text()
        r = await client.get(f"/dicomweb/studies/{STUDY_A}/series", headers={"Cookie": f"{SESSION_COOKIE}=forged"})
        assert r.status == 401
        assert a.seen == []
        # Unknown study: 404 saying so, at every level.
        for path in ("/dicomweb/studies/1.2.3.999/series", "/dicomweb/studies/1.2.3.999",
                     "/dicomweb/studies?StudyInstanceUID=1.2.3.999"):
            r = await client.get(path, headers=SIGNED_IN)
            assert r.status == 404 and "study 1.2.3.999 is not known to the network" in await r.text(), path
        # Not a UID: 400.
        r = await client.get("/dicomweb/studies/1.2.abc/series", headers=SIGNED_IN)
        assert r.status == 400 and "not a valid Study Instance UID" in await r.text()
        # The source is down: 502 naming it.
        r = await client.get(f"/dicomweb/studies/{STUDY_B}/series", headers=SIGNED_IN)
        assert r.status == 502 and f"({closed}) is unreachable" in await r.text()
        # The source's own refusals come through as they are.
        r = await client.get(f"/dicomweb/studies/{STUDY_A}/series/9.9/missing", headers=SIGNED_IN)
        assert r.status == 404 and await r.text() == "series 9.9 is not known here"
        # Only reads: no STOW-RS or other writes through the portal.
        r = await client.post(f"/dicomweb/studies/{STUDY_A}", headers=SIGNED_IN, data=b"x")
        assert r.status == 405
    finally:
        await client.close()


async def test_async_require_session_is_awaited(sources) -> None:
    a, _ = sources

    async def require(request: web.Request) -> None:
        await asyncio.sleep(0)
        raise web.HTTPUnauthorized(text="async check refused")

    async def locate(uid: str) -> str | None:
        return a.root

    app = web.Application()
    app.add_routes(dicomweb_proxy.build_routes(locate, require))
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        r = await client.get(f"/dicomweb/studies/{STUDY_A}/series", headers=SIGNED_IN)
        assert r.status == 401 and await r.text() == "async check refused" and a.seen == []
    finally:
        await client.close()


async def test_a_large_multipart_study_is_streamed_not_buffered() -> None:
    """The source sends 64 MiB of multipart parts and holds back the end until the viewer has read the start:
    a proxy that buffered the study would never let the viewer read anything (the test would time out).
    Memory allocated meanwhile stays far below the size of the study."""
    part = b"\x5a" * (1 << 20)
    parts, boundary = 64, "b0undary"
    first_part_read = asyncio.Event()

    async def study(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
        await response.prepare(request)
        for i in range(parts):
            await response.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
            await response.write(part)
            await response.write(b"\r\n")
            if i == 0:
                await asyncio.wait_for(first_part_read.wait(), 30)
        await response.write(f"--{boundary}--\r\n".encode())
        await response.write_eof()
        return response

    source_app = web.Application()
    source_app.router.add_get("/dicomweb/studies/{study}", study)
    source = TestServer(source_app)
    await source.start_server()
    client = await portal_client({STUDY_A: str(source.make_url("/dicomweb"))})
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        received = 0
        r = await client.get(f"/dicomweb/studies/{STUDY_A}",
                             headers={**SIGNED_IN, "Accept": 'multipart/related; type="application/dicom"'})
        assert r.status == 200 and r.headers["Content-Type"].endswith(f"boundary={boundary}")
        assert r.headers.get("Transfer-Encoding") == "chunked"
        async for chunk in r.content.iter_chunked(1 << 16):
            received += len(chunk)
            if received > len(part):
                first_part_read.set()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await client.close()
        await source.close()
    assert received == parts * (len(part) + len(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n") + 2) \
        + len(f"--{boundary}--\r\n")
    assert peak < 16 * (1 << 20), f"peak allocation {peak / (1 << 20):.1f} MiB while relaying 64 MiB"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_stream_replace_finds_matches_cut_anywhere(size: int) -> None:
    old, new = b"http://10.0.0.7:8031/dicomweb", b"https://portal/dicomweb"
    text = b'[{"a":"' + old + b'/studies/1"},{"b":"' + old + b'"}, "http://10.0.0.7:8031/dicom"]' + old[:5]
    s = StreamReplace(old, new)
    out = b"".join(s.feed(text[i:i + size]) for i in range(0, len(text), size)) + s.flush()
    assert out == text.replace(old, new)


async def test_dot_segments_never_reach_the_source(sources) -> None:
    a, _ = sources
    client = await portal_client({STUDY_A: a.root})
    try:
        for path in (f"/dicomweb/studies/{STUDY_A}/%2e%2e/%2E%2E/status", f"/dicomweb/studies/{STUDY_A}/series/%2e"):
            # Sent as written (a browser or yarl would resolve the dot segments before sending).
            url = URL(str(client.make_url("/")).rstrip("/") + path, encoded=True)
            async with client.session.get(url, headers=SIGNED_IN) as r:
                assert r.url.raw_path == path
                assert r.status == 400 and "'..' are not allowed" in await r.text(), path
        assert a.seen == []
    finally:
        await client.close()


async def test_a_compressed_answer_stays_consistent_with_its_headers() -> None:
    """A source that compresses although asked for identity: passed through coded by the proxy's own client,
    or decoded (and its URLs rewritten) by a shared client session that decompresses."""
    import gzip

    async def metadata(request: web.Request) -> web.Response:
        root = str(request.url.origin()) + "/dicomweb"
        body = gzip.compress(json.dumps([{"7FE00010": {"vr": "OW", "BulkDataURI": f"{root}/studies/1/x"}}]).encode())
        return web.Response(body=body, headers={"Content-Type": "application/dicom+json",
                                                "Content-Encoding": "gzip"})

    source_app = web.Application()
    source_app.router.add_get("/dicomweb/studies/{study}/metadata", metadata)
    source = TestServer(source_app)
    await source.start_server()
    root = str(source.make_url("/dicomweb"))
    import aiohttp

    shared = aiohttp.ClientSession()
    try:
        for options, expected_root in (({}, root), ({"client": lambda: shared}, None)):
            client = await portal_client({STUDY_A: root}, **options)
            try:
                r = await client.get(f"/dicomweb/studies/{STUDY_A}/metadata", headers=SIGNED_IN)
                assert r.status == 200
                (item,) = await r.json(content_type=None)
                want = expected_root or str(client.make_url("/dicomweb"))
                assert item["7FE00010"]["BulkDataURI"] == f"{want}/studies/1/x", options
            finally:
                await client.close()
    finally:
        await shared.close()
        await source.close()


async def test_a_source_breaking_off_mid_study_is_not_passed_on_as_a_complete_answer() -> None:
    async def study(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": 'multipart/related; type="application/dicom"; '
                                                               "boundary=b"})
        await response.prepare(request)
        await response.write(b"--b\r\nContent-Type: application/dicom\r\n\r\n" + b"\0" * 100_000)
        request.transport.close()  # the source dies mid-study
        return response

    source_app = web.Application()
    source_app.router.add_get("/dicomweb/studies/{study}", study)
    source = TestServer(source_app)
    await source.start_server()
    client = await portal_client({STUDY_A: str(source.make_url("/dicomweb"))})
    try:
        r = await client.get(f"/dicomweb/studies/{STUDY_A}", headers=SIGNED_IN)
        assert r.status == 200
        import aiohttp

        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    finally:
        await client.close()
        await source.close()


async def test_dicom_json_is_compressed_for_clients_that_accept_it(sources) -> None:
    """DICOM JSON (series metadata: 7.5 MB for 500 CT images, ~0.1 MB compressed) goes out compressed, with its
    URLs rewritten, to a client accepting gzip; as is to one that does not."""
    a, _ = sources
    client = await portal_client({STUDY_A: a.root})
    try:
        url = f"/dicomweb/studies/{STUDY_A}/series/1.2.3/metadata"
        r = await client.get(url, headers={**SIGNED_IN, "Accept-Encoding": "gzip, deflate"})
        assert r.status == 200 and r.headers.get("Content-Encoding") in ("gzip", "deflate")
        body = await r.json(content_type=None)  # decoded by the test client
        assert body["bulk"] == str(client.make_url("/dicomweb")) + "/studies/x/frames/1"
        r = await client.get(url, headers={**SIGNED_IN, "Accept-Encoding": "identity"})
        assert r.status == 200 and "Content-Encoding" not in r.headers
        assert (await r.json(content_type=None))["source"] == "A"
    finally:
        await client.close()
