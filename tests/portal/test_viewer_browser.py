"""OHIF in a real browser (Debian's Chromium driven by Playwright, no browser download) showing a CT study
held by a real imaging source process, through the portal's viewer routes and DICOMweb proxy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import pytest

from consumer.portal import viewer
from consumer.portal.viewer import DEFAULT_OHIF_DIR
from tests.conftest import free_port
from tests.imaging_source.conftest import new_imaging_database  # noqa: F401  (fixtures)
from tests.portal.imaging_fixtures import ct_source  # noqa: F401
from tests.portal.viewer_app import SESSION_COOKIE, build_test_app, serve

CHROMIUM = "/usr/bin/chromium"

# The viewport canvas: how many pixels are not black and how many grey levels they have.
CANVAS_STATS = """() => {
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width || !c.height) return null;
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let lit = 0; const levels = new Set();
  for (let i = 0; i < d.length; i += 4) {
    if (d[i] | d[i + 1] | d[i + 2]) { lit++; levels.add(d[i]); }
  }
  return {width: c.width, height: c.height, lit: lit, levels: levels.size};
}"""


async def test_ohif_draws_a_ct_study_through_the_proxy(ct_source, tmp_path: Path) -> None:  # noqa: F811
    if not (DEFAULT_OHIF_DIR / "index.html").is_file():
        pytest.fail("the OHIF viewer is not installed: run scripts/install-ohif.sh")
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed: apt-get install chromium (scripts/debian-packages.txt)")
    from playwright.async_api import async_playwright

    service, files = ct_source
    study = pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID
    portal_port = free_port()
    # the imaging source answers OHIF's QIDO-RS and WADO-RS itself
    portal = await serve(build_test_app(DEFAULT_OHIF_DIR, {study: f"{service.url}/dicomweb"}), portal_port)
    origin = f"http://127.0.0.1:{portal_port}"
    requests: list[str] = []
    asked: list[str] = []  # the DICOMweb requests, with their Accept header (kept as an artifact)
    failures: list[str] = []
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path=CHROMIUM, args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                await context.add_cookies([{"name": SESSION_COOKIE, "value": "signed-in", "url": origin}])
                page = await context.new_page()
                await page.add_init_script(
                    "window.__csp = []; document.addEventListener('securitypolicyviolation', "
                    "e => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));")
                page.on("request", lambda r: requests.append(f"{r.method} {r.url}"))
                page.on("request", lambda r: asked.append(f"{r.method} {r.url}  Accept: {r.headers.get('accept')}")
                        if "/dicomweb/" in r.url else None)
                page.on("response", lambda r: failures.append(f"{r.status} {r.url}") if r.status >= 400 else None)
                await page.goto(f"{origin}/viewer/viewer?StudyInstanceUIDs={study}")
                try:
                    stats = await (await page.wait_for_function(
                        f"(() => {{ const s = ({CANVAS_STATS})(); return s && s.lit > 1000 && s.levels > 16 && s; }})",
                        timeout=120_000, polling=500)).json_value()
                finally:
                    await page.screenshot(path=str(tmp_path / "ohif-ct.png"))
                    (tmp_path / "requests.txt").write_text("\n".join(requests))
                    (tmp_path / "dicomweb-requests.txt").write_text("\n".join(asked))
                csp = await page.evaluate("window.__csp")
                # app-config.js set cornerstone's WebGL context pool before OHIF initialised it (viewer.py)
                contexts = await page.evaluate("window.cornerstone.getConfiguration().rendering.webGlContextCount")
            finally:
                await browser.close()
    finally:
        await portal.cleanup()

    dicomweb = [r for r in requests if "/dicomweb/" in r]
    print("OHIF asked:", json.dumps(sorted({r.split("?")[0].replace(study, "{study}") for r in dicomweb}), indent=1))
    assert stats["lit"] > 0.1 * stats["width"] * stats["height"] / 4, stats
    # Nothing left the portal's origin (no telemetry, fonts or CDNs), nothing was refused by the CSP.
    outside = [r for r in requests if urlsplit(r.split(" ", 1)[1]).scheme in ("http", "https")
               and not r.split(" ", 1)[1].startswith(origin + "/")]
    assert outside == []
    assert csp == []
    assert contexts == viewer.WEBGL_CONTEXTS
    assert [f for f in failures if "/dicomweb/" in f] == []
    assert any(f"/dicomweb/studies/{study}/series" in r for r in dicomweb)
    assert any("/frames/" in r for r in dicomweb), dicomweb
