"""The clinician's story in a real browser against a real region (issue 11): Debian's Chromium, driven by
Playwright for Python with ``executable_path`` (no browser download), at a region started by ``xds-local``
(registry, three hospitals, canaille as OpenID Connect provider, the portal, demo data).

Sign in at the provider by typing the demo login into its forms; find the first demo patient by NHS
number; see documents from all three hospitals in one list; open a PDF report; open the CT study in OHIF
and check pixels are drawn; stop one hospital (its repository and imaging source processes are frozen
with SIGSTOP: they hold their ports and never answer, as a hung server does) and see its rows marked
"source unreachable" while the others stay available, and its study's viewer link explain why nothing can
be shown; sign out. Screenshots of every step are kept under pytest's tmp path and in
``test-artifacts/portal-story/`` (git-ignored); the path is printed.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest
from pypdf import PdfReader

from consumer.client.query import find_documents
from consumer.client.soap import SoapClient
from consumer.portal.viewer import DEFAULT_OHIF_DIR
from ihe import tls
from local_network.cli import HOSPITALS
from local_network.demo_data import demo_patients
from tests.conftest import ROOT
from tests.deploy.helpers import Output, drop_databases, region_port_offset
from tests.deploy.test_local_network import READY, portal_assertions, xds_local
from tests.portal.test_viewer_browser import CANVAS_STATS, CHROMIUM
from tests.tls_support import use_region

NHS_OID = "2.16.840.1.113883.2.1.4.1"
ARTIFACTS = ROOT / "test-artifacts" / "portal-story"
STOPPED = "hospital-b"  # the hospital stopped in the story (the CT is at hospital-a)


@pytest.fixture(scope="module")
def region(postgres_admin_url, tmp_path_factory):
    """xds-local as a subprocess on ports of its own; stopped (and its databases dropped) at the end."""
    for need, what in ((CHROMIUM, "chromium"), (shutil.which("echoscu"), "dcmtk")):
        assert need and Path(need).exists(), f"{what} is missing: install scripts/debian-packages.txt"
    if not (DEFAULT_OHIF_DIR / "index.html").is_file():
        pytest.fail("the OHIF viewer is not installed: run scripts/install-ohif.sh")
    prefix = f"xdsstory_{uuid.uuid4().hex[:8]}_"
    offset = region_port_offset()  # every port moves by this much; free, below the ephemeral range
    data_dir = tmp_path_factory.mktemp("xds-local-story")
    proc = xds_local(postgres_admin_url, data_dir, offset, prefix)
    output = Output(proc)
    children: list[psutil.Process] = []
    try:
        output.wait_for(READY, 300)
        use_region(data_dir)  # the region runs on mutual TLS: this test is one of its nodes
        children = psutil.Process(proc.pid).children(recursive=True)
        yield {"proc": proc, "output": output, "offset": offset, "data_dir": data_dir, "children": children}
    finally:
        tls.reset()
        for child in children:  # a frozen hospital must be able to hear the stop
            if child.is_running():
                child.send_signal(signal.SIGCONT)
        if proc.poll() is None:
            children = children or psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for child in children:
            if child.is_running():
                child.kill()
        asyncio.run(drop_databases(postgres_admin_url, prefix))


def hospital_processes(region: dict, name: str) -> list[psutil.Process]:
    """The processes (and their children) of one hospital's repository and imaging source."""
    hospital = next(h for h in HOSPITALS if h.name == name)
    ports = {str(hospital.repository_port + region["offset"]), str(hospital.imaging_port + region["offset"])}
    found = []
    for child in psutil.Process(region["proc"].pid).children():
        cmd = child.cmdline()
        if any(a == "--port" and b in ports for a, b in itertools.pairwise(cmd)):
            found += [child, *child.children(recursive=True)]
    assert len([p for p in found if p.ppid() == region["proc"].pid]) == 2, [p.cmdline() for p in found]
    return found


async def wait_for_documents(registry_url: str, nhs: str, count: int, data_dir: Path,
                             timeout: float = 180.0) -> None:
    """Until the registry lists ``count`` documents of ``nhs`` (manifests come after the quiet period); asked as
    the region's portal asks (its XUA assertion: the region requires one on ITI-18)."""
    deadline = time.monotonic() + timeout
    async with SoapClient(timeout=30, security_provider=portal_assertions(data_dir)) as client:
        while len(await find_documents(client, registry_url, f"{nhs}^^^&{NHS_OID}&ISO")) < count:
            assert time.monotonic() < deadline, f"the demo patient's {count} documents were not all registered"
            await asyncio.sleep(1)


ROWS = """() => Array.from(document.querySelectorAll('table.documents tbody tr')).map(tr => ({
  document: tr.dataset.document, kind: tr.className.split(' ')[0], hospital: tr.cells[1].textContent.trim(),
  type: tr.cells[2].textContent.trim(), description: tr.cells[3].textContent.trim(),
  status: tr.querySelector('td.status').firstChild.textContent.trim(),
  reason: (tr.querySelector('td.status small.reason') || {}).textContent || '',
  images: (tr.querySelector('a[href^="/viewer/"]') || {}).href || null}))"""


async def test_a_clinician_signs_in_finds_a_patient_reads_a_report_views_a_ct_and_sees_a_hospital_go_down(
        region, tmp_path):
    from playwright.async_api import async_playwright

    offset = region["offset"]
    portal = f"https://127.0.0.1:{8090 + offset}"
    password = region["output"].wait_for("demo login ", 5).split()[4]
    patient = demo_patients(region["data_dir"])[0]
    nhs = patient["nhs_number"]
    plan = json.loads((region["data_dir"] / "demo" / "plan.json").read_text())
    studies = [s for s in plan["studies"] if s["patient"] == 0]
    assert {s["hospital"] for s in studies} == {"hospital-a", "hospital-b", "hospital-c"}, studies
    ct = next(s for s in studies if s["kind"] == "CT")
    await wait_for_documents(f"https://127.0.0.1:{8010 + offset}/registry", nhs, 3 * len(studies),
                             region["data_dir"])

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    shots: list[str] = []
    print(f"\nscreenshots: {tmp_path} and {ARTIFACTS}")

    async def shot(page, name: str) -> None:
        path = tmp_path / f"{len(shots) + 1:02d}-{name}.png"
        await page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, ARTIFACTS / path.name)
        shots.append(path.name)

    frozen: list[psutil.Process] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM,
                                           args=["--use-angle=swiftshader", "--enable-unsafe-swiftshader"])
        try:
            # the clinician's browser certificate from the region's CA (the portal requires one); the CA is
            # not in Chromium's trust store, hence ignore_https_errors
            certs = region["data_dir"] / "tls"
            context = await browser.new_context(viewport={"width": 1400, "height": 900}, ignore_https_errors=True,
                                                client_certificates=[{"origin": portal,
                                                                      "certPath": str(certs / "browser.crt"),
                                                                      "keyPath": str(certs / "browser.key")}])
            page = await context.new_page()
            try:
                # --- sign in at the provider, typing the demo login -----------------------------------------
                await page.goto(portal + "/")
                await shot(page, "front-page")
                await page.click("#sign-in")
                await page.wait_for_url(f"http://127.0.0.1:{8070 + offset}/**")
                await page.fill("input[name=login]", "demo")
                await shot(page, "provider-login")
                await page.click("button[type=submit].primary")
                await page.fill("input[name=password]", password)
                await page.click("button[type=submit].primary")
                deadline = time.monotonic() + 60
                while not page.url.startswith(portal):  # back at the portal, after consent the first time
                    assert time.monotonic() < deadline, f"sign-in stuck at {page.url}"
                    if await page.locator("#accept").count():
                        await shot(page, "provider-consent")
                        await page.click("#accept")
                        await page.wait_for_url(portal + "/**")
                    await asyncio.sleep(0.2)
                await page.wait_for_load_state()
                if await page.get_by_text("Sign-in failed").count():
                    # canaille 0.3.6 refuses a second token for the same user and client within one second
                    # (no unique id in its JWT access tokens): wait past it and go round once more.
                    await asyncio.sleep(1.5)
                    await page.goto(portal + "/login")
                    await page.wait_for_url(portal + "/**")
                await shot(page, "signed-in")
                assert await page.get_by_text("Find a patient").count() == 1, await page.content()
                assert "demo" in await page.locator("header .user").inner_text()

                # --- search by NHS number: one list from all three hospitals --------------------------------
                await page.fill("input[name=nhs_number]", nhs)
                await page.click("form.search:has(input[name=nhs_number]) button[type=submit]")
                await page.wait_for_url(f"{portal}/patients/{nhs}")
                rows = await page.evaluate(ROWS)
                await shot(page, "patient-list")
                assert len(rows) == 3 * len(studies), rows
                assert {r["hospital"] for r in rows} == {"hospital-a", "hospital-b", "hospital-c"}
                assert {r["status"] for r in rows} == {"available"}, rows
                assert sorted(r["kind"] for r in rows).count("imaging") == len(studies)

                # --- a PDF report -------------------------------------------------------------------------
                pdf_row = next(r for r in rows if r["description"].endswith("(PDF)") and r["hospital"] == "hospital-c")
                link = page.locator(f'tr[data-document="{pdf_row["document"]}"] a:has-text("Open report")')
                href = await link.get_attribute("href")
                await link.click()
                await page.wait_for_url(portal + href)
                # Chromium shows it in its PDF viewer (a download would leave the list page)
                assert await page.evaluate("document.contentType") == "application/pdf"
                await asyncio.sleep(2)  # let the viewer draw the page before the screenshot
                await shot(page, "pdf-report")
                fetched = await context.request.get(portal + href)  # the same bytes, with the browser's cookies
                assert fetched.status == 200 and fetched.headers["content-type"] == "application/pdf"
                assert fetched.headers["content-disposition"].startswith("inline")
                text = PdfReader(io.BytesIO(await fetched.body())).pages[0].extract_text()
                assert f"NHS number {nhs}" in text and "hospital-c: radiology report" in text, text
                await page.goto(f"{portal}/patients/{nhs}")

                # --- the CT study in OHIF: pixels drawn -----------------------------------------------------
                ct_row = next(r for r in rows if r["kind"] == "imaging" and "CT" in r["type"])
                assert ct_row["hospital"] == "hospital-a" and ct["study_uid"] in ct_row["images"], ct_row
                await page.click(f'tr[data-document="{ct_row["document"]}"] a:has-text("Open images")')
                try:
                    stats = await (await page.wait_for_function(
                        f"(() => {{ const s = ({CANVAS_STATS})(); return s && s.lit > 1000 && s.levels > 16 && s; }})",
                        timeout=120_000, polling=500)).json_value()
                finally:
                    await shot(page, "ohif-ct")
                assert stats["lit"] > 0.1 * stats["width"] * stats["height"] / 4, stats

                # --- one hospital stops: its rows are marked, the others still show -------------------------
                frozen = hospital_processes(region, STOPPED)
                for process in frozen:
                    process.send_signal(signal.SIGSTOP)
                await page.goto(f"{portal}/patients/{nhs}", timeout=60_000)
                down = await page.evaluate(ROWS)
                await shot(page, f"{STOPPED}-stopped")
                assert len(down) == len(rows), down
                for row in down:
                    expected = "source unreachable" if row["hospital"] == STOPPED else "available"
                    assert row["status"] == expected, (row, down)
                    assert (STOPPED in row["reason"]) == (row["hospital"] == STOPPED), row  # the reason, on the row
                assert await page.locator("p.source-down").filter(has_text=STOPPED).count() == 1

                # --- its study cannot be shown: the viewer link says why --------------------------------------
                gone = next(r for r in down if r["kind"] == "imaging" and r["hospital"] == STOPPED)
                await page.click(f'tr[data-document="{gone["document"]}"] a:has-text("Open images")', timeout=60_000)
                await page.wait_for_selector("section.study-unavailable", timeout=60_000)
                await shot(page, f"{STOPPED}-study-unreachable")
                assert await page.locator('section[data-state="source unreachable"]').count() == 1
                said = await page.locator("section.study-unavailable").inner_text()
                assert STOPPED in said and "imaging source" in said, said
                assert await page.locator("canvas").count() == 0

                # --- sign out -----------------------------------------------------------------------------
                await page.goto(f"{portal}/")
                await page.click("header form button[type=submit]")
                await page.wait_for_url(f"{portal}/?signed_out=1")
                await shot(page, "signed-out")
                assert await page.get_by_text("You have signed out.").count() == 1
                after = await context.request.get(f"{portal}/api/patients/{nhs}/documents")
                assert after.status == 401
            except BaseException:
                await shot(page, "failure")
                raise
        finally:
            await browser.close()
            for process in frozen:
                if process.is_running():
                    process.send_signal(signal.SIGCONT)
    print("screenshots taken:", ", ".join(shots))
    assert len(list(ARTIFACTS.glob("*.png"))) == len(shots) >= 9
    assert os.path.getsize(ARTIFACTS / shots[-1]) > 1000
