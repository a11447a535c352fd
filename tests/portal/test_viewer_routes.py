"""The OHIF routes at /viewer/: the dist moved under /viewer/, single-page-app fallback, the generated
app-config.js and the Content-Security-Policy of the viewer pages."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from consumer.portal import viewer

INDEX = ('<!doctype html><html><head><script>console.time("s"),window.PUBLIC_URL="/"</script>'
         '<link rel="manifest" href="/manifest.json"><script src="/app-config.js"></script>'
         '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
         '<script defer src="/app.bundle.0123456789abcdef.js"></script><link href="/app.bundle.css" rel="stylesheet">'
         '</head><body><div id="root"></div></body></html>')


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    """A dist/ laid out like @ohif/app's (built for the site root)."""
    d = tmp_path / "dist"
    d.mkdir()
    (d / "index.html").write_text(INDEX)
    (d / "app-config.js").write_text("window.config = {dataSources: [{configuration: {qidoRoot: 'https://x'}}]};")
    (d / "app.bundle.0123456789abcdef.js").write_text('(() => { __webpack_require__.p = "/"; })();')
    (d / "app.bundle.css").write_text("@font-face{src:url(/a34f9d1faa5f3315.woff2)}")
    (d / "0ddf166f7a343eda.wasm").write_bytes(b"\0asm\1\0\0\0")
    (d / "manifest.json").write_text('{"icons": [{"src": "/assets/x.png"}]}')
    (tmp_path / "secret.txt").write_text("outside the dist")
    return d


async def client_for(routes: list[web.RouteDef]) -> TestClient:
    app = web.Application()
    app.add_routes(routes)
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


def sha256_source(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


async def test_index_is_moved_under_viewer_and_its_inline_scripts_are_allowed_by_hash(dist: Path) -> None:
    client = await client_for(viewer.build_routes(dist, "/dicomweb"))
    try:
        r = await client.get("/viewer", allow_redirects=False)
        assert r.status == 301 and r.headers["Location"] == "/viewer/"
        r = await client.get("/viewer/")
        text = await r.text()
        assert r.status == 200 and r.content_type == "text/html"
        assert 'window.PUBLIC_URL="/viewer/"' in text and 'window.PUBLIC_URL="/"' not in text
        assert 'src="/viewer/app.bundle.0123456789abcdef.js"' in text and 'href="/viewer/app.bundle.css"' in text
        assert re.findall(r'(?:src|href)="(/[^"]*)"', text) == [
            "/viewer/manifest.json", "/viewer/app-config.js", "/viewer/app.bundle.0123456789abcdef.js",
            "/viewer/app.bundle.css"]
        csp = r.headers["Content-Security-Policy"]
        assert csp == viewer.viewer_content_security_policy(dist)
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        inline = re.findall(r"<script>(.*?)</script>", text)
        assert len(inline) == 2
        assert directives["script-src"].split() == ["'self'", "'wasm-unsafe-eval'", *map(sha256_source, inline)]
        assert "'unsafe-eval'" not in csp and "'unsafe-inline'" not in directives["script-src"]
        assert directives["worker-src"] == "'self' blob:" and directives["object-src"] == "'none'"
        assert directives["connect-src"].split()[0] == "'self'" and "http" not in csp
    finally:
        await client.close()


async def test_client_side_routes_get_the_app_and_missing_files_get_404(dist: Path) -> None:
    client = await client_for(viewer.build_routes(dist, "/dicomweb"))
    try:
        for path in ("/viewer/viewer?StudyInstanceUIDs=1.2.3", "/viewer/segmentation?StudyInstanceUIDs=1.2",
                     "/viewer/index.html"):
            r = await client.get(path)
            assert r.status == 200 and 'window.PUBLIC_URL="/viewer/"' in await r.text(), path
            assert "Content-Security-Policy" in r.headers
        r = await client.get("/viewer/9999.bundle.0000000000000000.js")
        assert r.status == 404 and "not part of the viewer" in await r.text()
        r = await client.get("/viewer/%2e%2e/secret.txt")
        assert r.status == 404 and "outside" not in await r.text()
    finally:
        await client.close()


async def test_assets_naming_the_site_root_are_rewritten_and_typed(dist: Path) -> None:
    client = await client_for(viewer.build_routes(dist, "/dicomweb"))
    try:
        r = await client.get("/viewer/app.bundle.0123456789abcdef.js")
        assert await r.text() == '(() => { __webpack_require__.p = "/viewer/"; })();'
        assert r.headers["Content-Type"].startswith("text/javascript")
        assert "immutable" in r.headers["Cache-Control"]
        r = await client.get("/viewer/app.bundle.css")
        assert await r.text() == "@font-face{src:url(/viewer/a34f9d1faa5f3315.woff2)}"
        assert r.headers["Cache-Control"] == "no-cache"
        r = await client.get("/viewer/manifest.json")
        assert json.loads(await r.text()) == {"icons": [{"src": "/viewer/assets/x.png"}]}
        r = await client.get("/viewer/0ddf166f7a343eda.wasm")
        assert r.headers["Content-Type"] == "application/wasm" and await r.read() == b"\0asm\1\0\0\0"
    finally:
        await client.close()


async def test_app_config_is_ours_not_the_published_one(dist: Path) -> None:
    client = await client_for(viewer.build_routes(dist, "/dicomweb"))
    try:
        r = await client.get("/viewer/app-config.js")
        text = await r.text()
    finally:
        await client.close()
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
    assert "https://x" not in text and "http" not in text
    config = evaluate_config(text, "https://portal.example.org")
    assert config["routerBasename"] == "/viewer"
    assert config["defaultDataSourceName"] == "dicomweb"
    (source,) = config["dataSources"]
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    c = source["configuration"]
    assert c["qidoRoot"] == c["wadoRoot"] == c["wadoUriRoot"] == "https://portal.example.org/dicomweb"
    assert config.get("dangerouslyUseDynamicConfig") is None and "customizationUrlPrefixes" not in config
    assert f"webGlContextCount: {viewer.WEBGL_CONTEXTS}" in text


def evaluate_config(script: str, origin: str) -> dict:
    """Run app-config.js as a browser would (node with a window whose origin is ``origin``)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed (it comes with npm, which scripts/install-ohif.sh installs)")
    window = "const window = {location: {origin: " + json.dumps(origin) + "}};"
    program = f"{window}\n{script}\nprocess.stdout.write(JSON.stringify(window.config));"
    out = subprocess.run([node, "-e", program], capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_missing_install_is_named() -> None:
    with pytest.raises(FileNotFoundError, match=r"install-ohif\.sh"):
        viewer.build_routes(Path("/nonexistent/dist"), "/dicomweb")


async def test_the_installed_ohif_dist_is_served_under_viewer() -> None:
    """The real @ohif/app dist: every file its index.html links and the chunk loader's path are under /viewer/."""
    if not (viewer.DEFAULT_OHIF_DIR / "index.html").is_file():
        pytest.fail("the OHIF viewer is not installed: run scripts/install-ohif.sh")
    client = await client_for(viewer.build_routes(viewer.DEFAULT_OHIF_DIR, "/dicomweb"))
    try:
        text = await (await client.get("/viewer/")).text()
        links = re.findall(r'\s(?:src|href)="([^"]*)"', text)
        assert links and all(link.startswith("/viewer/") for link in links), links
        bundle = next(link for link in links if re.search(r"/app\.bundle\.[0-9a-f]+\.js$", link))
        for link in {bundle, "/viewer/app.bundle.css", "/viewer/app-config.js"}:
            r = await client.get(link)
            assert r.status == 200, link
        js = await (await client.get(bundle)).text()
        assert '__webpack_require__.p = "/viewer/"' in js and '__webpack_require__.p = "/"' not in js
    finally:
        await client.close()


async def test_viewer_code_goes_out_gzipped_to_browsers_accepting_it(dist: Path) -> None:
    """The rewritten bundle compressed by the portal, an unchanged file by its .gz copy (made by
    scripts/install-ohif.sh); both as they are to a client not accepting gzip."""
    import gzip

    (dist / "0ddf166f7a343eda.wasm.gz").write_bytes(gzip.compress(b"\0asm\1\0\0\0"))
    client = await client_for(viewer.build_routes(dist, "/dicomweb"))
    try:
        for name, wanted in (("app.bundle.0123456789abcdef.js", b'__webpack_require__.p = "/viewer/";'),
                             ("0ddf166f7a343eda.wasm", b"\0asm\1\0\0\0")):
            r = await client.get(f"/viewer/{name}", headers={"Accept-Encoding": "gzip"}, auto_decompress=False)
            raw = await r.read()
            assert r.status == 200 and r.headers["Content-Encoding"] == "gzip", name
            assert wanted in gzip.decompress(raw) and "Accept-Encoding" in r.headers["Vary"]
            r = await client.get(f"/viewer/{name}", headers={"Accept-Encoding": "identity"})
            assert "Content-Encoding" not in r.headers and wanted in await r.read()
    finally:
        await client.close()
