"""Portal benchmark (issue 11): one patient's list, a 500-image CT in OHIF, and QIDO-RS through the portal.

    python -m bench.portal [--database-url ADMIN_URL] [--documents 200] [--ct-instances 500] [--quick]

Everything runs as real processes on loopback: ``xds-local`` (the registry, three hospitals each with a
repository and an imaging source, the canaille OpenID Connect provider and the portal; no demo data),
Debian's Orthanc with its DICOMweb plugin, and Debian's Chromium driven by Playwright. The database is
--database-url, else PostgreSQL at 127.0.0.1:5432 when it answers, else xds-local's embedded one.

1. One patient is fed by ADT^A01 (ITI-8) with an NHS number and a hospital number at each hospital; then
   ``--documents`` documents spread over the three hospitals: a quarter imaging studies (C-STORE to the
   imaging sources, which publish the manifests by RAD-68; one of them is the CT below) and the rest reports
   (ITI-41 to the repositories). The benchmark waits until ITI-18 finds them all.
2. Sign-in at canaille through the portal's /login (authorization code flow), giving a session cookie.
3. Search to full list over HTTP (POST /search, the 303 followed, the HTML list read to its end): the first
   searches with the portal's manifest cache emptied, then warm ones; and in Chromium, from the click on
   Search to the list's rows in the DOM.
4. Opening the CT study's viewer URL in Chromium to the first frame drawn (the OHIF viewport canvas holds
   an image: enough lit pixels in many grey levels), the first open with an empty browser cache, then warm.
5. QIDO-RS Search for Series of the CT study through the portal's proxy, directly at the imaging source and
   at Orthanc holding the same study, interleaved in one run.

Prints a Markdown block for docs/benchmarks.md and writes JSON to bench/results/. Ctrl-C (or SIGTERM) stops
every process it started and drops its databases.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urljoin

import asyncpg
import psutil
import pydicom

from bench.imaging.__main__ import ORTHANC_DICOMWEB, load, machine, make_study, orthanc_version, send, start_orthanc
from bench.load import percentile

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
# Chromium on a machine without a GPU, as Chrome runs where it has none (chrome://gpu: "Compositing: Software
# only", "WebGL: Software only"): WebGL in SwiftShader, the page composited by the software compositor. Forcing
# SwiftShader alone would also composite every frame through it, which no real browser does (about 200 ms more to
# the viewer's first frame here; docs/benchmarks.md).
CHROMIUM_ARGS = ["--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-gpu-compositing"]
DEFAULT_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"
READY = "xds-local: ready"
TARGETS = {"list_ms": 300.0, "first_frame_ms": 1500.0, "qido_ratio": 2.0}

# The first frame: cornerstone (OHIF's renderer) fires CORNERSTONE_IMAGE_RENDERED on the viewport element after
# drawing into its canvas; the canvas is then checked (enough of it lit, in enough grey levels, to be an image)
# and the first time it passes is kept, in milliseconds since the navigation started.
PIXELS_HOLD_IMAGE = """(d, width, height) => {
  let lit = 0; const levels = new Set();
  for (let i = 0; i < d.length; i += 28) { if (d[i] | d[i + 1] | d[i + 2]) { lit++; levels.add(d[i]); } }
  return lit * 7 > 0.05 * width * height && levels.size > 16;
}"""
CANVAS_HAS_IMAGE = f"""() => {{
  const c = document.querySelector('canvas.cornerstone-canvas');
  if (!c || !c.width || !c.height) return false;
  const d = c.getContext('2d', {{willReadFrequently: true}}).getImageData(0, 0, c.width, c.height).data;
  return ({PIXELS_HOLD_IMAGE})(d, c.width, c.height);
}}"""
# The canvas is checked only when cornerstone says it has drawn (its IMAGE_RENDERED event for the viewport holding
# that canvas, not a thumbnail's, with a viewport status other than "no data" or "loading"), and not on the page's
# main thread: a readback of a WebGL-fed canvas takes 25 to 65 ms there in software rendering, which would be added
# to the figure it measures. The event takes a snapshot (createImageBitmap, a GPU copy) and a worker reads its
# pixels; the first frame is the time of the event whose snapshot holds the image. Should the snapshot fail, the
# canvas is read on the main thread once a second instead.
FIRST_FRAME_WATCH = f"""(() => {{
  const drawn = {CANVAS_HAS_IMAGE};
  window.__firstFrame = null;
  let lastRead = performance.now(), reader = null;
  try {{
    reader = new Worker(URL.createObjectURL(new Blob([`const holds = {PIXELS_HOLD_IMAGE};
    onmessage = (m) => {{
      const b = m.data.bitmap, c = new OffscreenCanvas(b.width, b.height), g = c.getContext('2d');
      g.drawImage(b, 0, 0);
      postMessage({{at: m.data.at, drawn: holds(g.getImageData(0, 0, b.width, b.height).data, b.width, b.height)}});
    }};`], {{type: 'text/javascript'}})));
    reader.onmessage = (m) => {{
      const f = window.__firstFrame;
      if (m.data.drawn && (f === null || m.data.at < f)) window.__firstFrame = m.data.at;
    }};
  }} catch (e) {{ reader = null; }}
  const look = () => {{
    lastRead = performance.now();
    if (window.__firstFrame === null && drawn()) window.__firstFrame = performance.now();
  }};
  document.addEventListener('CORNERSTONE_IMAGE_RENDERED', (e) => {{
    const d = e.detail || {{}}, c = document.querySelector('canvas.cornerstone-canvas');
    if (window.__firstFrame !== null || !c || !c.width || !c.height || (d.element && !d.element.contains(c))
        || d.viewportStatus === 'noData' || d.viewportStatus === 'loading') return;
    const at = performance.now();
    if (reader === null) return look();
    lastRead = at;
    createImageBitmap(c).then((bitmap) => reader.postMessage({{at, bitmap}}, [bitmap]), look);
  }}, true);
  window.__checkFrame = () => {{
    if (window.__firstFrame === null && performance.now() - lastRead > 1000) look();
    return window.__firstFrame;
  }};
}})();"""
# The list page's rows rendered: after DOMContentLoaded (the table parsed), the next animation frame and a task
# after it (the frame painted), in milliseconds since the navigation started, i.e. since the search form was
# submitted (the POST, its 303 and the list's GET are one navigation).
LIST_RENDERED_WATCH = """document.addEventListener('DOMContentLoaded', () => requestAnimationFrame(() =>
  setTimeout(() => { window.__rendered = performance.now(); })));"""


@dataclass(slots=True)
class Sizes:
    documents: int
    ct_instances: int
    http_runs: int
    cold_runs: int
    browser_runs: int
    viewer_runs: int
    qido_runs: int


@dataclass(slots=True)
class Run:
    """Everything started, so that it can all be stopped, whatever happened."""

    work: Path
    server_url: str | None  # None: xds-local's embedded PostgreSQL (under work/)
    prefix: str
    offset: int
    procs: list[subprocess.Popen] = field(default_factory=list)
    children: list[psutil.Process] = field(default_factory=list)
    region: subprocess.Popen | None = None

    def port(self, base: int) -> int:
        return base + self.offset

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        if self.region is not None and self.region.poll() is None:
            with contextlib.suppress(psutil.Error):
                self.children += psutil.Process(self.region.pid).children(recursive=True)
            self.region.send_signal(signal.SIGINT)  # xds-local stops its services in order
            try:
                self.region.wait(90)
            except subprocess.TimeoutExpired:
                self.region.kill()
                self.region.wait()
        for p in self.procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for child in self.children:
            with contextlib.suppress(psutil.Error):
                if child.is_running() and child.status() != psutil.STATUS_ZOMBIE:
                    child.kill()
        if self.server_url:
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                asyncio.run(drop_databases(self.server_url, self.prefix))
        shutil.rmtree(self.work, ignore_errors=True)


async def drop_databases(server_url: str, prefix: str) -> None:
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        for row in await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", prefix + "%"):
            await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
    finally:
        await conn.close()


def choose_server(given: str | None) -> str | None:
    """--database-url, else the local PostgreSQL if it answers, else None (embedded)."""
    if given:
        return given

    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(DEFAULT_SERVER, timeout=3)
        except (OSError, asyncpg.PostgresError, TimeoutError):
            return False
        await conn.close()
        return True

    return DEFAULT_SERVER if asyncio.run(probe()) else None


def log_tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def free_offset() -> int:
    """A --port-offset keeping every port of the region (2575 to 11114 before the offset) below Linux's
    ephemeral range (32768 and up), where any outgoing connection may take a port first."""
    return 12000 + random.randrange(960) * 10


def start_region(run: Run, attempts: int = 5) -> None:
    """xds-local without demo data, in its own process group (a Ctrl-C reaches only us; we stop it); on
    other ports when one of its ports is taken meanwhile."""
    for _ in range(attempts - 1):
        try:
            return start_region_once(run)
        except RuntimeError:
            if run.region is None or "already in use" not in (run.work / "xds-local.log").read_text(errors="replace"):
                raise
            run.offset = free_offset()
            print(f"a port was taken: xds-local again with port offset {run.offset}", flush=True)
    return start_region_once(run)


def start_region_once(run: Run) -> None:
    log = run.work / "xds-local.log"
    cmd = [sys.executable, "-m", "local_network.cli", "--data-dir", str(run.work / "region"), "--port-offset",
           str(run.offset), "--database-prefix", run.prefix, "--quiet-period", "1", "--no-demo-data",
           # plain transport, as these figures were first measured (its clients speak http://); the cost of
           # mutual TLS per request is measured apart: python -m bench.tls
           "--insecure",
           *(["--database-url", run.server_url] if run.server_url else [])]
    with open(log, "wb") as fh:
        run.region = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, process_group=0)
    deadline = time.monotonic() + 300
    while READY not in log.read_text(errors="replace"):
        if run.region.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"xds-local did not become ready:\n{log_tail(log)}")
        time.sleep(0.3)
    run.children = psutil.Process(run.region.pid).children(recursive=True)


def portal_database_url(run: Run) -> str:
    """The portal's database URL (the server is named in xds-local's ready block)."""
    for line in (run.work / "xds-local.log").read_text().splitlines():
        if line.startswith("xds-local: database server "):
            server = line.split("xds-local: database server ", 1)[1].strip()
            from local_network.cli import database_url

            return database_url(server, f"{run.prefix}portal")
    raise RuntimeError("xds-local did not name its database server")


# --- the patient and the documents -------------------------------------------------------------------


def hospitals(run: Run) -> list:
    from local_network.cli import HOSPITALS
    from local_network.demo_data import DemoHospital

    return [DemoHospital(h.name, h.namespace, h.hospital_number_oid,
                         f"http://127.0.0.1:{run.port(h.repository_port)}/repository", h.repository_unique_id,
                         "127.0.0.1", run.port(h.dicom_port), h.ae_title) for h in HOSPITALS]


def make_patient(region: list) -> dict:
    from local_network.demo_data import nhs_numbers

    rng = random.Random()
    return {"nhs_number": nhs_numbers(rng, 1)[0], "family": "Benchmark", "given": "Portal",
            "birth_date": "19600101", "sex": "F",
            "hospital_numbers": {h.name: f"{h.namespace[-1]}{rng.randrange(10**5, 10**6)}" for h in region}}


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def small_study(n: int) -> dict:
    return {"study_uid": new_uid(), "series": [{"uid": new_uid(), "instances": [new_uid()]}],
            "date": f"20{10 + n % 15:02d}{n % 12 + 1:02d}{n % 28 + 1:02d}", "description": f"CT study {n}",
            "accession": f"BENCH{n:06d}"}


def send_small_studies(folder: Path, patient: dict, hospital, studies: list[dict]) -> None:
    """One single-image study per entry (pydicom's CT_small re-identified), in one association."""
    from pydicom.data import get_testdata_file

    from local_network.demo_data import c_store, reidentify

    if not studies:
        return
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    files = []
    for n, study in enumerate(studies):
        path = folder / f"{hospital.name}-{n}.dcm"
        reidentify(source, patient=patient, hospital=hospital, study=study, series_index=0,
                   instance_index=0).save_as(path, enforce_file_format=True)
        files.append(path)
    c_store(files, hospital)


async def submit_reports(patient: dict, hospital, count: int, batch: int = 10) -> None:
    """``count`` reports (text and PDF by turns) by ITI-41 to the hospital's repository, ``batch`` at a time."""
    from consumer.client.soap import SoapClient
    from consumer.client.source import document_entry, provide_and_register, submission_package
    from ihe.nhs import NHS_NUMBER_OID
    from local_network.demo_data import pdf_report

    patient_cx = f"{patient['nhs_number']}^^^&{NHS_NUMBER_OID}&ISO"
    local_cx = f"{patient['hospital_numbers'][hospital.name]}^^^&{hospital.hospital_number_oid}&ISO"
    async with SoapClient(timeout=120) as client:
        for start in range(0, count, batch):
            entries, data = [], {}
            for n in range(start, min(count, start + batch)):
                lines = [f"{hospital.name}: report {n}", "Findings: none (benchmark data)."]
                mime, content = (("application/pdf", pdf_report(lines)) if n % 2 else
                                 ("text/plain", "\n".join(lines).encode()))
                entry = document_entry(patient_cx, mime, title=f"Report {n} ({hospital.name})",
                                       creation_time=f"20{10 + n % 15:02d}{n % 12 + 1:02d}{n % 28 + 1:02d}120000",
                                       source_patient_id=local_cx, author_institution=hospital.name)
                entries.append(entry)
                data[entry.entry_uuid] = content
            package = submission_package(patient_cx, entries, source_id=hospital.repository_unique_id,
                                         title="Benchmark reports")
            result = await provide_and_register(client, hospital.repository_url, package, data)
            if not result.ok:
                raise RuntimeError(f"{hospital.name} refused reports: "
                                   + "; ".join(f"{e.code}: {e.context}" for e in result.errors))


def write_ct(folder: Path, patient: dict, hospital, count: int) -> tuple[str, list[Path]]:
    """bench/imaging's 512x512 16-bit CT series, belonging to the patient at ``hospital``, slices 1 mm apart."""
    from pydicom.dataset import Dataset

    def edit(ds: pydicom.Dataset, n: int) -> None:
        ds.PatientName = f"{patient['family']}^{patient['given']}"
        ds.PatientID = patient["hospital_numbers"][hospital.name]
        ds.IssuerOfPatientID = hospital.namespace
        qualifiers = Dataset()
        qualifiers.UniversalEntityID, qualifiers.UniversalEntityIDType = hospital.hospital_number_oid, "ISO"
        ds.IssuerOfPatientIDQualifiersSequence = [qualifiers]
        ds.PatientBirthDate, ds.PatientSex = patient["birth_date"], patient["sex"]
        for tag in ("OtherPatientIDs", "OtherPatientIDsSequence"):
            if tag in ds:
                delattr(ds, tag)
        ds.AccessionNumber, ds.StudyDescription, ds.StudyDate = "BENCHCT", "CT benchmark", "20260101"
        ds.ImagePositionPatient = [-125.0, -125.0, float(n)]
        ds.SliceLocation, ds.SliceThickness = float(n), 1.0
        ds.PixelSpacing = [0.5, 0.5]

    folder.mkdir(parents=True, exist_ok=True)
    study_uid, _ = make_study(folder, count, edit)
    return study_uid, sorted(folder.glob("*.dcm"))


def portal_assertion(run: Run):
    """A function making the XUA assertion the region's portal would send for a clinician (xds-local requires
    one on ITI-18 and DICOMweb; its key is in the region's data folder), or None when the region has none."""
    from consumer.portal.sessions import PortalSession
    from consumer.portal.settings import PortalSettings
    from consumer.portal.xua import Caller, PortalXua
    from local_network.cli import HOSPITALS
    from local_network.security import PORTAL_ISSUER

    folder = run.work / "region" / "security"
    if not (folder / "portal-xua.key").exists():
        return None
    xua = PortalXua.from_settings(PortalSettings.from_dict({
        "xua_signing_key": str(folder / "portal-xua.key"), "xua_signing_cert": str(folder / "portal-xua.pem"),
        "xua_issuer": PORTAL_ISSUER,
        # as xds-local's portal: each hospital's organisation id is its hospital-number OID's arc
        "xua_organisation_ids": ";".join(f"{h.name}={h.hospital_number_oid.rsplit('.', 1)[0]}" for h in HOSPITALS)}))
    caller = Caller(PortalSession("bench.portal", "clinician", "hospital-a", "", "bench-portal"))
    return lambda: xua.assertion(caller)


def soap_security(run: Run):
    from ihe.xua.assertion import security_header

    make = portal_assertion(run)
    return None if make is None else (lambda url, action: security_header(make()))


def http_authorization(run: Run) -> dict[str, str]:
    from ihe.xua.assertion import authorization_header

    make = portal_assertion(run)
    return {} if make is None else authorization_header(make())


async def registered(registry_url: str, patient: dict, security=None) -> int:
    from consumer.client.query import find_documents
    from consumer.client.soap import SoapClient
    from ihe.nhs import NHS_NUMBER_OID

    async with SoapClient(timeout=60, security_provider=security) as client:
        return len(await find_documents(client, registry_url, f"{patient['nhs_number']}^^^&{NHS_NUMBER_OID}&ISO"))


def load_patient(run: Run, sizes: Sizes, storescu: str) -> tuple[dict, str, list[Path]]:
    """ADT, then reports and imaging over the three hospitals; (patient, CT study UID, CT files)."""
    from local_network.demo_data import adt_a01, feed_patient, hospital_adt_a01

    region = hospitals(run)
    patient = make_patient(region)
    asyncio.run(feed_patient("127.0.0.1", run.port(2575), adt_a01(patient, region)))
    # admitted at hospital-a, the clinician's hospital: the care relationship under which the access policy
    # lets hospital-a see the other hospitals' documents
    asyncio.run(feed_patient("127.0.0.1", run.port(2575), hospital_adt_a01(patient, region[0])))
    imaging = max(2, sizes.documents // 4)  # including the CT
    reports = sizes.documents - imaging
    print(f"loading {reports} reports and {imaging} imaging studies for NHS {patient['nhs_number']}", flush=True)

    async def all_reports() -> None:
        await asyncio.gather(*(submit_reports(patient, h, reports // 3 + (i < reports % 3))
                               for i, h in enumerate(region)))

    asyncio.run(all_reports())
    small = [small_study(n) for n in range(imaging - 1)]
    (run.work / "small").mkdir()
    for i, h in enumerate(region):
        send_small_studies(run.work / "small", patient, h, small[i::3])
    print(f"writing the {sizes.ct_instances}-image CT", flush=True)
    ct_uid, files = write_ct(run.work / "ct", patient, region[0], sizes.ct_instances)
    sent = send(storescu, region[0].ae_title, region[0].dicom_port, files, 2)
    print(f"CT sent to {region[0].name} at {sent['rate']:.0f} images/s", flush=True)
    registry = f"http://127.0.0.1:{run.port(8010)}/registry"
    wait = 60 + 2 * sizes.documents
    deadline = time.monotonic() + wait
    security = soap_security(run)
    while (found := asyncio.run(registered(registry, patient, security))) < sizes.documents:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {found} of {sizes.documents} documents registered after {wait} s (for the "
                               "bench's clinician at hospital-a, under the region's access policy)")
        time.sleep(1)
    print(f"{found} documents registered", flush=True)
    return patient, ct_uid, files


# --- sign-in and the list over HTTP ------------------------------------------------------------------


def sign_in(run: Run):
    """A requests session signed in at the portal through canaille (login, password, consent)."""
    import requests
    from lxml import html

    state = json.loads((run.work / "region" / "oidc" / "state.json").read_text())
    portal = f"http://127.0.0.1:{run.port(8090)}"
    browser = requests.Session()
    page = browser.get(portal + "/login", timeout=30)
    for name, value in (("login", "demo"), ("password", state["demo_password"])):
        form = html.fromstring(page.text).forms[0]
        page = browser.post(urljoin(page.url, form.action or page.url), data={**dict(form.fields), name: value},
                            timeout=30)
    if not page.url.startswith(portal):  # consent
        form = html.fromstring(page.text).forms[0]
        page = browser.post(urljoin(page.url, form.action), data={**dict(form.fields), "answer": "accept"},
                            timeout=30)
    if page.status_code != 200 or not page.url.startswith(portal):
        raise RuntimeError(f"sign-in failed: HTTP {page.status_code} at {page.url}")
    return browser


def search_over_http(browser, portal: str, nhs: str, expected: int) -> float:
    """POST /search by NHS number, follow the 303, read the whole HTML list; milliseconds."""
    from lxml import html

    csrf = html.fromstring(browser.get(portal + "/", timeout=30).text).forms[0].fields["csrf_token"]
    t0 = time.perf_counter()
    answer = browser.post(portal + "/search", data={"csrf_token": csrf, "by": "nhs", "nhs_number": nhs}, timeout=120)
    elapsed = (time.perf_counter() - t0) * 1000
    rows = answer.text.count('data-document="')
    available = answer.text.count('<td class="status" title="">available</td>')
    if answer.status_code != 200 or rows != expected or available != expected:
        raise RuntimeError(f"the list has {rows} rows ({available} available), HTTP {answer.status_code}; "
                           f"expected {expected}")
    return elapsed


def empty_manifest_cache(portal_db: str) -> None:
    async def go() -> None:
        conn = await asyncpg.connect(portal_db)
        try:
            await conn.execute("TRUNCATE portal_manifest")
        finally:
            await conn.close()

    asyncio.run(go())


# --- Chromium ----------------------------------------------------------------------------------------


async def search_in_chromium(page, portal: str, nhs: str, expected: int, runs: int) -> list[float]:
    """From submitting the search (the click on Search) to the list's ``expected`` rows rendered, ``runs``
    times, as the page itself times it (Playwright's own latency is not counted)."""
    await page.add_init_script(LIST_RENDERED_WATCH)
    found = []
    for _ in range(runs):
        await page.goto(portal + "/")
        await page.fill("input[name=nhs_number]", nhs)
        await page.click("form.search button[type=submit]")
        await page.wait_for_url("**/patients/**", wait_until="commit")
        handle = await page.wait_for_function(
            f"() => window.__rendered && document.querySelectorAll('tr[data-document]').length === {expected} "
            "&& window.__rendered", polling=50, timeout=120_000)
        found.append(float(await handle.json_value()))
    return found


async def open_in_viewer(page, url: str, runs: int, shots: Path) -> list[float]:
    """From the navigation to ``url`` to the first frame drawn, ``runs`` times (the first with the page's cache
    as it is); the last open's requests go to viewer-timeline.txt, to see where the time goes."""
    await page.add_init_script(FIRST_FRAME_WATCH)
    found: list[float] = []
    for _ in range(runs):
        await page.goto("about:blank")
        await page.goto(url, wait_until="commit")
        try:
            handle = await page.wait_for_function("() => window.__checkFrame && window.__checkFrame()", polling=250,
                                                  timeout=180_000)
        except Exception:
            await page.screenshot(path=str(shots / "viewer-timeout.png"))
            raise
        found.append(float(await handle.json_value()))
    await page.screenshot(path=str(shots / "viewer.png"))
    timeline = await page.evaluate(
        "performance.getEntriesByType('resource').map(e => `${Math.round(e.startTime)} ms to "
        "${Math.round(e.responseEnd)} ms  ${e.initiatorType}  ${e.name}`)")
    (shots / "viewer-timeline.txt").write_text("\n".join(timeline) + "\n")
    return found


async def browser_runs(portal: str, cookies: list[dict], nhs: str, ct_uid: str, sizes: Sizes,
                       shots: Path) -> dict[str, list[float]]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                           args=CHROMIUM_ARGS)
        try:
            contexts = []
            for _ in range(2):  # one for the list, a fresh one (empty cache) for the viewer
                contexts.append(await browser.new_context(viewport={"width": 1280, "height": 900}))
                await contexts[-1].add_cookies(cookies)
            search = await search_in_chromium(await contexts[0].new_page(), portal, nhs, sizes.documents,
                                              sizes.browser_runs)
            opens = await open_in_viewer(await contexts[1].new_page(),
                                         f"{portal}/viewer/viewer?StudyInstanceUIDs={ct_uid}", sizes.viewer_runs + 1,
                                         shots)
        finally:
            await browser.close()
    return {"search": search, "viewer_cold": opens[:1], "viewer_warm": opens[1:]}


# --- QIDO-RS side by side ----------------------------------------------------------------------------


def timed_qido(url: str, more: dict[str, str]) -> float:
    headers = {"Accept": "application/dicom+json", **more}
    t0 = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=60) as response:
        body = response.read()
    elapsed = (time.perf_counter() - t0) * 1000
    if response.status != 200 or not json.loads(body):
        raise RuntimeError(f"{url} answered {response.status} with no series")
    return elapsed


# --- report ------------------------------------------------------------------------------------------


def stats(values: list[float]) -> dict:
    return {"p50": percentile(values, 50), "p90": percentile(values, 90), "runs": values}


def markdown(report: dict) -> str:
    r, s = report["results"], report["sizes"]
    t = TARGETS

    def verdict(value: float, limit: float) -> str:
        return "met" if value <= limit else "**missed**"

    http_warm, http_cold, chromium = r["http_search_warm_ms"], r["http_search_cold_ms"], r["chromium_search_ms"]
    warm, cold = r["viewer_first_frame_warm_ms"], r["viewer_first_frame_cold_ms"]
    q = r["qido_series_ms"]
    ratio = q["portal proxy"]["p50"] / q["Orthanc"]["p50"]
    lines = [
        f"### {report['date'][:16].replace('T', ' ')} UTC, {report['machine']}",
        "",
        f"One patient with {s['documents']} documents at 3 hospitals ({report['imaging']} imaging manifests, "
        f"{s['documents'] - report['imaging']} reports), a {s['ct_instances']}-image CT (512x512, 16 bit); every "
        f"service a real process on loopback (xds-local: registry, 3 repositories, 3 imaging sources, canaille, "
        f"the portal), PostgreSQL {report['database']}, Chromium {report['chromium']} headless (no GPU: WebGL "
        f"in SwiftShader, software compositing), Orthanc {orthanc_version()}. Load average at start / end: "
        f"{report['load_start']} / {report['load_end']}"
        f"{' (a shared, loaded machine)' if report['shared'] else ''}.",
        "",
        "| measure | p50 | p90 | runs | target |",
        "| --- | --- | --- | --- | --- |",
        f"| search to full list, HTTP (POST /search, 303, HTML list), manifest cache empty | "
        f"{http_cold['p50']:.0f} ms | {http_cold['p90']:.0f} ms | {len(http_cold['runs'])} | — |",
        f"| search to full list, HTTP, warm | {http_warm['p50']:.0f} ms | {http_warm['p90']:.0f} ms | "
        f"{len(http_warm['runs'])} | ≤ {t['list_ms']:.0f} ms: {verdict(http_warm['p50'], t['list_ms'])} |",
        f"| search to full list, Chromium (form submitted to {s['documents']} rows rendered) | "
        f"{chromium['p50']:.0f} ms | {chromium['p90']:.0f} ms | {len(chromium['runs'])} | "
        f"≤ {t['list_ms']:.0f} ms: {verdict(chromium['p50'], t['list_ms'])} |",
        f"| CT viewer URL to first frame drawn in OHIF, browser cache empty | {cold['p50']:.0f} ms | — | 1 | — |",
        f"| CT viewer URL to first frame drawn in OHIF, viewer code cached | {warm['p50']:.0f} ms | "
        f"{warm['p90']:.0f} ms | {len(warm['runs'])} | ≤ {t['first_frame_ms']:.0f} ms: "
        f"{verdict(warm['p50'], t['first_frame_ms'])} |",
    ]
    for who, v in q.items():
        target = (f"≤ {t['qido_ratio']:g}× Orthanc: {ratio:.2f}× {verdict(ratio, t['qido_ratio'])}"
                  if who == "portal proxy" else "—")
        lines.append(f"| QIDO-RS series of the CT study, {who} | {v['p50']:.1f} ms | {v['p90']:.1f} ms | "
                     f"{len(v['runs'])} | {target} |")
    return "\n".join(lines)


def chromium_version() -> str:
    try:
        return subprocess.run([CHROMIUM, "--version"], capture_output=True, text=True, timeout=30).stdout.split()[1]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def check_tools() -> tuple[str, str]:
    problems = []
    storescu = shutil.which("storescu")
    orthanc = shutil.which("Orthanc") or shutil.which("Orthanc", path="/usr/sbin:/usr/bin")
    if not storescu:
        problems.append("dcmtk's storescu (apt-get install dcmtk)")
    if not orthanc or not Path(ORTHANC_DICOMWEB).exists():
        problems.append("Orthanc and its DICOMweb plugin (apt-get install orthanc orthanc-dicomweb)")
    if not Path(CHROMIUM).exists():
        problems.append(f"Chromium at {CHROMIUM} (apt-get install chromium)")
    from consumer.portal.viewer import DEFAULT_OHIF_DIR

    if not (DEFAULT_OHIF_DIR / "index.html").is_file():
        problems.append("the OHIF viewer (scripts/install-ohif.sh)")
    try:
        import playwright  # noqa: F401
    except ImportError:
        problems.append("Playwright (pip install -e '.[test]')")
    if problems:
        sys.exit("bench.portal needs " + "; ".join(problems))
    return storescu, orthanc


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, Sizes]:
    parser = argparse.ArgumentParser(prog="python -m bench.portal", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("XDS_BENCH_DATABASE_URL"),
                        help="PostgreSQL server URL allowed to create databases [env XDS_BENCH_DATABASE_URL]; "
                             f"default {DEFAULT_SERVER} when it answers, else an embedded server")
    parser.add_argument("--documents", type=int, help="documents of the patient (default 200)")
    parser.add_argument("--ct-instances", type=int, help="images of the CT study (default 500)")
    parser.add_argument("--runs", type=int, help="warm HTTP searches (default 30)")
    parser.add_argument("--browser-runs", type=int, help="searches in Chromium (default 10)")
    parser.add_argument("--viewer-runs", type=int, help="warm viewer opens (default 7)")
    parser.add_argument("--qido-runs", type=int, help="QIDO-RS requests per server (default 30)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 12 documents, a 10-image CT, 2 runs of everything")
    parser.add_argument("--hold", action="store_true",
                        help="after loading and signing in, print the addresses and keep everything running until "
                             "Ctrl-C instead of measuring (to profile by hand)")
    parser.add_argument("--quiet-machine", action="store_true",
                        help="do not call the machine shared and loaded in the Markdown block")
    parser.add_argument("--json", type=Path, help="also write the results here (default bench/results/)")
    args = parser.parse_args(argv)
    base = Sizes(12, 10, 2, 1, 2, 2, 2) if args.quick else Sizes(200, 500, 30, 3, 10, 7, 30)
    sizes = Sizes(args.documents or base.documents, args.ct_instances or base.ct_instances, args.runs or base.http_runs,
                  base.cold_runs, args.browser_runs or base.browser_runs, args.viewer_runs or base.viewer_runs,
                  args.qido_runs or base.qido_runs)
    if sizes.documents < 3:
        parser.error("--documents must be at least 3")
    return args, sizes


def measure(run: Run, sizes: Sizes, storescu: str, orthanc: str, hold: bool = False) -> dict:
    load_start = load()
    patient, ct_uid, ct_files = load_patient(run, sizes, storescu)
    nhs = patient["nhs_number"]
    portal = f"http://127.0.0.1:{run.port(8090)}"
    browser = sign_in(run)
    cookie = browser.cookies.get("xds_portal_session")
    if hold:
        print(f"holding (Ctrl-C stops): portal {portal} (cookie xds_portal_session={cookie}), patient {nhs}, "
              f"CT study {ct_uid} at http://127.0.0.1:{run.port(8040)}/dicomweb; logs in {run.work}", flush=True)
        while True:
            time.sleep(3600)
    portal_db = portal_database_url(run)
    results: dict = {}

    cold = []
    for _ in range(sizes.cold_runs):
        empty_manifest_cache(portal_db)
        cold.append(search_over_http(browser, portal, nhs, sizes.documents))
    search_over_http(browser, portal, nhs, sizes.documents)  # warm-up
    warm = [search_over_http(browser, portal, nhs, sizes.documents) for _ in range(sizes.http_runs)]
    results["http_search_cold_ms"], results["http_search_warm_ms"] = stats(cold), stats(warm)
    print(f"HTTP search to list: cold p50 {stats(cold)['p50']:.0f} ms, warm p50 {stats(warm)['p50']:.0f} ms "
          f"(load {load()})", flush=True)

    cookies = [{"name": "xds_portal_session", "value": cookie, "url": portal}]
    seen = asyncio.run(browser_runs(portal, cookies, nhs, ct_uid, sizes, run.work.parent))
    results["chromium_search_ms"] = stats(seen["search"])
    results["viewer_first_frame_cold_ms"] = stats(seen["viewer_cold"])
    results["viewer_first_frame_warm_ms"] = stats(seen["viewer_warm"])
    print(f"Chromium: list p50 {stats(seen['search'])['p50']:.0f} ms; first frame cold "
          f"{seen['viewer_cold'][0]:.0f} ms, warm p50 {stats(seen['viewer_warm'])['p50']:.0f} ms (load {load()})",
          flush=True)

    o_http, o_dicom, proc = start_orthanc(orthanc, run.work, "orthanc")
    run.procs.append(proc)
    send(storescu, "ORTHANC", o_dicom, ct_files, 2)
    # The portal's cookie; directly at our imaging source, the XUA assertion the portal would add (made before
    # each request, as the proxy makes one per request; the time is the request's only); Orthanc: nothing.
    urls = {"portal proxy": (f"{portal}/dicomweb/studies/{ct_uid}/series",
                             lambda: {"Cookie": f"xds_portal_session={cookie}"}),
            "xds-imaging-source": (f"http://127.0.0.1:{run.port(8040)}/dicomweb/studies/{ct_uid}/series",
                                   lambda: http_authorization(run)),
            "Orthanc": (f"http://127.0.0.1:{o_http}/dicom-web/studies/{ct_uid}/series", dict)}
    qido: dict[str, list[float]] = {who: [] for who in urls}
    for url, headers in urls.values():
        timed_qido(url, headers())  # warm-up
    for _ in range(sizes.qido_runs):
        for who, (url, headers) in urls.items():
            qido[who].append(timed_qido(url, headers()))
    results["qido_series_ms"] = {who: stats(v) for who, v in qido.items()}
    print("QIDO-RS series p50: " + ", ".join(f"{w} {stats(v)['p50']:.1f} ms" for w, v in qido.items()), flush=True)
    return {"results": results, "load_start": load_start, "load_end": load(),
            "imaging": max(2, sizes.documents // 4)}


def main(argv: list[str] | None = None) -> int:
    args, sizes = parse_args(argv)
    storescu, orthanc = check_tools()
    server = choose_server(args.database_url)
    outer = Path(tempfile.mkdtemp(prefix="bench-portal-"))
    run = Run(work=outer / "work", server_url=server, prefix=f"xds_bench_portal_{uuid.uuid4().hex[:8]}_",
              offset=free_offset())
    run.work.mkdir()
    # SIGTERM as Ctrl-C, so that the clean-up below runs either way.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    status = 1
    measured = None
    try:
        print(f"starting xds-local (port offset {run.offset}, databases {run.prefix}* on "
              f"{server or 'an embedded server'}) in {run.work}", flush=True)
        start_region(run)
        measured = measure(run, sizes, storescu, orthanc, args.hold)
        status = 0
    except KeyboardInterrupt:
        print("bench.portal: interrupted; stopping everything", file=sys.stderr, flush=True)
        status = 130
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"bench.portal: {exc}", file=sys.stderr, flush=True)
        print(log_tail(run.work / "xds-local.log"), file=sys.stderr, flush=True)
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not stop the clean-up
        try:
            run.stop()
        finally:
            signal.signal(signal.SIGINT, previous)
    if measured is None:
        shutil.rmtree(outer, ignore_errors=True)
        return status
    report = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine(),
              "sizes": asdict(sizes),
              "database": "server given" if args.database_url else ("at 127.0.0.1:5432" if server else "embedded"),
              "chromium": chromium_version(), "shared": not args.quiet_machine, **measured}
    text = markdown(report)
    print("\n" + text + "\n")
    out = args.json or ROOT / "bench" / "results" / f"portal-{report['date'].replace(':', '')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"results: {out}; screenshots in {outer}")
    return status


if __name__ == "__main__":
    sys.exit(main())
