"""The README's run command starts a whole region: xds-local brings it up (three hospitals, the registry,
an OpenID Connect provider), on mutual TLS with certificates from its own CA, loads the demo data once, and
brings it down. The tests talk to it as a node of the region (tests/tls_support.py).

One network is started for the module; the tests run in order: a restart keeps the data and loads
nothing twice, and the last test stops it.
"""

import asyncio
import io
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from urllib.parse import parse_qs, urljoin, urlparse

import psutil
import pytest
import requests
from lxml import html

from consumer.client.query import find_documents
from consumer.client.soap import SoapClient
from ihe import tls
from tests.conftest import ROOT
from tests.deploy.helpers import Output, drop_databases, region_port_offset
from tests.tls_support import RegionClient, make_test_pki, use_region

HOSPITALS = {  # name: (AE title, DICOM port, repositoryUniqueId)
    "hospital-a": ("HOSPA_XDSI", 11112, "1.3.6.1.4.1.21367.2026.1.1"),
    "hospital-b": ("HOSPB_XDSI", 11113, "1.3.6.1.4.1.21367.2026.2.1"),
    "hospital-c": ("HOSPC_XDSI", 11114, "1.3.6.1.4.1.21367.2026.3.1"),
}
READY = "Ctrl-C stops everything"
NHS_OID = "2.16.840.1.113883.2.1.4.1"


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5, context=tls.client_ssl()) as resp:
        return resp.status, resp.read()


def ready(network) -> RegionClient:
    """Wait for the ready line, then be a node of the region (its CA, xds-local's certificate)."""
    network["output"].wait_for(READY, 300)
    network["tls"] = use_region(network["data_dir"])
    return network["tls"]


def echoscu(ae_title: str, port: int, client: RegionClient) -> subprocess.CompletedProcess:
    """C-ECHO over TLS with dcmtk, a client we did not write; one try, no retries."""
    return subprocess.run(["echoscu", "-to", "5", *client.dcmtk_args(), "-aec", ae_title, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=30)


def xds_local(postgres_admin_url, data_dir, offset, prefix) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "local_network.cli", "--database-url", postgres_admin_url, "--data-dir",
         str(data_dir), "--port-offset", str(offset), "--database-prefix", prefix, "--quiet-period", "1"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def portal_assertions(data_dir, organisation: str = "hospital-a"):
    """A SOAP client's ``security_provider`` acting as the region's portal (its XUA key, made by xds-local) for
    a test user: the registry requires an assertion on ITI-18."""
    from consumer.portal.sessions import PortalSession
    from consumer.portal.settings import PortalSettings
    from consumer.portal.xua import Caller, PortalXua
    from ihe.xua.assertion import security_header
    from local_network.security import PORTAL_ISSUER

    folder = data_dir / "security"
    xua = PortalXua.from_settings(PortalSettings.from_dict({
        "xua_signing_key": str(folder / "portal-xua.key"), "xua_signing_cert": str(folder / "portal-xua.pem"),
        "xua_issuer": PORTAL_ISSUER}))
    caller = Caller(PortalSession("xds-local test", "clinician", organisation, "", "xds-local-test"))
    return lambda url, action: security_header(xua.assertion(caller))


def documents_by_patient(registry_url: str, patients: list[dict], data_dir,
                         organisations: tuple[str, ...] = ("hospital-a", "hospital-b", "hospital-c")
                         ) -> dict[str, list]:
    """ITI-18 FindDocuments (Approved) for each demo patient's NHS number, as the portal asks (XUA) for a clinician
    of each of ``organisations``: the access policy shows a hospital only the patients it cares for, so the
    region's whole holding is the union of the three hospitals' answers."""
    async def run():
        found: dict[str, dict] = {p["nhs_number"]: {} for p in patients}
        for organisation in organisations:
            async with SoapClient(timeout=30, security_provider=portal_assertions(data_dir, organisation)) as client:
                for p in patients:
                    for e in await find_documents(client, registry_url, f"{p['nhs_number']}^^^&{NHS_OID}&ISO"):
                        found[p["nhs_number"]][e.unique_id] = e
        return {nhs: list(entries.values()) for nhs, entries in found.items()}
    return asyncio.run(run())


@pytest.fixture(scope="module")
def network(postgres_admin_url, tmp_path_factory):
    assert shutil.which("echoscu"), "dcmtk's echoscu is missing: install the packages in scripts/debian-packages.txt"
    prefix = f"xdslocal_{uuid.uuid4().hex[:8]}_"
    offset = region_port_offset()  # every port moves by this much; free, below the ephemeral range
    data_dir = tmp_path_factory.mktemp("xds-local")
    proc = xds_local(postgres_admin_url, data_dir, offset, prefix)
    net = {"proc": proc, "output": Output(proc), "offset": offset, "prefix": prefix, "url": postgres_admin_url,
           "data_dir": data_dir, "registry": f"https://127.0.0.1:{8010 + offset}/registry"}
    yield net
    tls.reset()
    for p in (net["proc"], proc):
        if p.poll() is None:
            # its children run in process groups of their own: find them before it goes, so none is left
            net.setdefault("children", []).extend(psutil.Process(p.pid).children(recursive=True))
            p.send_signal(signal.SIGINT)
            try:
                p.wait(60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    for child in net.get("children", []):
        if child.is_running():
            child.kill()
    asyncio.run(drop_databases(postgres_admin_url, prefix))


def test_ready_is_announced_once_every_listener_answers(network):
    """The moment "ready" is printed, DICOM C-ECHO (dcmtk) at all three hospitals, MLLP, every HTTP service and
    the OpenID Connect provider already work, and the block names the portal and the demo login."""
    client = ready(network)
    offset = network["offset"]
    for ae_title, port, _ in HOSPITALS.values():
        echo = echoscu(ae_title, port + offset, client)
        assert echo.returncode == 0, f"C-ECHO to {ae_title} failed right after ready: {echo.stdout}{echo.stderr}"
    with socket.create_connection(("127.0.0.1", 2575 + offset), timeout=5) as sock, \
            client.context.wrap_socket(sock, server_hostname="127.0.0.1") as mllp:
        assert mllp.version() in ("TLSv1.2", "TLSv1.3")
    assert get(f"https://127.0.0.1:{8010 + offset}/health") == (200, b'{"status": "ok"}')
    status, body = get(f"https://127.0.0.1:{8010 + offset}/registry?wsdl")
    assert status == 200 and b"DocumentRegistry_Service" in body
    for port in (8040 + offset, 8041 + offset, 8042 + offset):
        status, body = get(f"https://127.0.0.1:{port}/status?format=json")
        assert status == 200 and isinstance(json.loads(body), list)
    for port in (8020 + offset, 8021 + offset, 8022 + offset):
        assert get(f"https://127.0.0.1:{port}/repository")[0] == 200
    lines = network["output"].lines
    assert len([line for line in lines if line.startswith("xds-local: ready")]) == 1, lines
    assert any(line.startswith("portal ") and f":{8090 + offset}/" in line for line in lines), lines
    assert any(line.startswith("demo login          demo / ") for line in lines), lines
    assert any("demo data loaded: 4 patients, 9 studies" in line for line in lines), lines


def test_demo_reports_and_manifests_are_found_by_nhs_number_at_the_right_hospitals(network):
    ready(network)
    plan = json.loads((network["data_dir"] / "demo" / "plan.json").read_text())
    assert len(plan["patients"]) == 4
    for patient in plan["patients"]:
        assert len(set(patient["hospital_numbers"].values())) == 3, "a different hospital number per hospital"
    expected = {}  # NHS number -> sorted (mime type, repositoryUniqueId) of every document it must have
    for study in plan["studies"]:
        nhs = plan["patients"][study["patient"]]["nhs_number"]
        repo = HOSPITALS[study["hospital"]][2]
        expected.setdefault(nhs, []).extend([("application/pdf", repo), ("text/plain", repo),
                                             ("application/dicom", repo)])
    deadline = time.monotonic() + 120  # the manifests come after the imaging sources' quiet period
    while True:
        found = documents_by_patient(network["registry"], plan["patients"], network["data_dir"])
        got = {nhs: sorted((e.mime_type, e.repository_unique_id) for e in entries) for nhs, entries in found.items()}
        if got == {nhs: sorted(v) for nhs, v in expected.items()} or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert got == {nhs: sorted(v) for nhs, v in expected.items()}
    reports = {e.unique_id for entries in found.values() for e in entries if e.mime_type != "application/dicom"}
    assert reports == {u for s in plan["studies"] for u in s["reports"].values()}
    network["documents"] = {nhs: len(entries) for nhs, entries in found.items()}
    # The access policy: hospital A sees a patient's documents only when it admitted them (the demo data admits
    # each patient at the hospitals holding their studies), and a patient it never saw not at all.
    at_a = documents_by_patient(network["registry"], plan["patients"], network["data_dir"], ("hospital-a",))
    for p, patient in enumerate(plan["patients"]):
        admitted = any(s["patient"] == p and s["hospital"] == "hospital-a" for s in plan["studies"])
        assert len(at_a[patient["nhs_number"]]) == (len(found[patient["nhs_number"]]) if admitted else 0), p
    assert not all(at_a.values()), "the demo data should have a patient hospital A has no relationship with"


def test_a_load_interrupted_after_sending_but_before_journaling_resumes_without_duplicates(network):
    """The worst moment to stop: everything was sent but neither the journal nor the marker says so. The
    resumed load sends the images again (the same bytes: no new manifest) and skips the registered reports."""
    from local_network.cli import HOSPITALS as REGION
    from local_network.demo_data import DemoHospital, load

    ready(network)
    assert "documents" in network, "the demo data test must have passed first"
    demo = network["data_dir"] / "demo"
    (demo / "loaded.json").unlink()
    (demo / "journal").write_text("")
    o = network["offset"]
    hospitals = [DemoHospital(h.name, h.namespace, h.hospital_number_oid,
                              f"https://127.0.0.1:{h.repository_port + o}/repository", h.repository_unique_id,
                              "127.0.0.1", h.dicom_port + o, h.ae_title) for h in REGION]
    logged = []
    assert asyncio.run(load(network["data_dir"], hospitals, network["registry"], ("127.0.0.1", 2575 + o),
                            log=logged.append))
    assert (demo / "loaded.json").exists() and logged
    time.sleep(4)  # past the quiet period: a new manifest would be published now
    plan = json.loads((demo / "plan.json").read_text())
    found = documents_by_patient(network["registry"], plan["patients"], network["data_dir"])
    assert {nhs: len(entries) for nhs, entries in found.items()} == network["documents"]


def test_the_demo_pdf_report_is_a_real_pdf():
    from local_network.demo_data import pdf_report

    pdf = pdf_report(["Findings: (none)", "Conclusion: normal"])
    assert pdf.startswith(b"%PDF-1.4") and pdf.rstrip().endswith(b"%%EOF")
    from pypdf import PdfReader

    reader = PdfReader(io.BytesIO(pdf), strict=True)  # strict: a wrong xref offset or length is an error
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    assert "Findings: (none)" in text and "Conclusion: normal" in text


def test_the_oidc_provider_signs_in_the_demo_user_by_the_authorization_code_flow(network):
    """Discovery, then a real browser-like sign-in at canaille (login, password, consent), then the portal's
    client exchanges the code for tokens with its secret and reads the user's claims."""
    ready(network)
    password = next(line for line in network["output"].lines if line.startswith("demo login")).split()[4]
    client = json.loads((network["data_dir"] / "oidc" / "portal-client.json").read_text())
    issuer = f"http://127.0.0.1:{8070 + network['offset']}"
    assert client["issuer"] == issuer
    discovery = requests.get(issuer + "/.well-known/openid-configuration", timeout=10).json()
    assert discovery["issuer"] == issuer and "authorization_code" in discovery["grant_types_supported"]
    browser = requests.Session()
    page = browser.get(discovery["authorization_endpoint"], timeout=10, params={
        "response_type": "code", "client_id": client["client_id"], "redirect_uri": client["redirect_uri"],
        "scope": "openid profile email groups", "state": "s1", "nonce": "n1"})
    for field, value in (("login", "demo"), ("password", password)):
        form = html.fromstring(page.text).forms[0]
        page = browser.post(urljoin(page.url, form.action or page.url), data={**dict(form.fields), field: value},
                            timeout=10)
    form = html.fromstring(page.text).forms[0]  # consent
    answer = browser.post(urljoin(page.url, form.action), data={**dict(form.fields), "answer": "accept"},
                          allow_redirects=False, timeout=10)
    assert answer.status_code == 302, answer.text[:500]
    location = answer.headers["location"]
    assert location.startswith(client["redirect_uri"])
    query = parse_qs(urlparse(location).query)
    assert query["state"] == ["s1"]
    token = requests.post(discovery["token_endpoint"], timeout=10, auth=(client["client_id"], client["client_secret"]),
                          data={"grant_type": "authorization_code", "code": query["code"][0],
                                "redirect_uri": client["redirect_uri"]})
    assert token.status_code == 200, token.text
    assert token.json()["id_token"]
    userinfo = requests.get(discovery["userinfo_endpoint"], timeout=10,
                            headers={"Authorization": f"Bearer {token.json()['access_token']}"}).json()
    assert userinfo["sub"] == "demo"
    assert sorted(userinfo["groups"]) == ["clinician", "org-hospital-a"]  # role and organisation for the portal
    wrong = requests.post(discovery["token_endpoint"], timeout=10, auth=(client["client_id"], "wrong"),
                          data={"grant_type": "authorization_code", "code": query["code"][0],
                                "redirect_uri": client["redirect_uri"]})
    assert wrong.status_code in (400, 401)


def test_the_portal_signs_in_the_demo_user_and_lists_a_patients_documents_from_every_hospital(network):
    """The region's portal: sign-in at the embedded provider with the demo login (a real authorization code
    flow through the portal's /login), then one patient's list (JSON twin) with the documents the registry
    holds for the NHS number, rows naming the hospitals that hold them, and signing out ends the session."""
    ready(network)
    password = next(line for line in network["output"].lines if line.startswith("demo login")).split()[4]
    portal = f"https://127.0.0.1:{8090 + network['offset']}"
    assert requests.get(portal + "/api/patients/9434765919/documents", timeout=10,
                        **network["tls"].requests_args()).status_code == 401
    # canaille 0.3.6 issues JWT access tokens without a unique id: a second token for the same user and client
    # within the same second is refused (HTTP 500, UNIQUE constraint). The previous test just had one.
    time.sleep(1.5)
    browser = requests.Session()
    browser.trust_env = False  # else REQUESTS_CA_BUNDLE from the environment overrides the session's verify
    browser.cert, browser.verify = network["tls"].requests_args()["cert"], network["tls"].requests_args()["verify"]
    page = browser.get(portal + "/login", timeout=30)  # -> the provider's login page
    for field, value in (("login", "demo"), ("password", password)):
        form = html.fromstring(page.text).forms[0]
        page = browser.post(urljoin(page.url, form.action or page.url), data={**dict(form.fields), field: value},
                            timeout=30)
    if not page.url.startswith(portal):  # consent, the first time
        form = html.fromstring(page.text).forms[0]
        page = browser.post(urljoin(page.url, form.action), data={**dict(form.fields), "answer": "accept"},
                            timeout=30)
    if page.status_code != 200:
        time.sleep(1)  # let the portal's log line about the refusal reach the output
    assert page.status_code == 200 and page.url.startswith(portal), (
        page.status_code, html.fromstring(page.text).text_content().split(), [
            line for line in network["output"].lines if "consumer.portal" in line and "WARNING" in line])
    from local_network.demo_data import demo_patients

    patient = demo_patients(network["data_dir"])[0]
    nhs = patient["nhs_number"]
    [entries] = documents_by_patient(network["registry"], [patient], network["data_dir"]).values()
    deadline = time.monotonic() + 60
    while True:
        answer = browser.get(f"{portal}/api/patients/{nhs}/documents", timeout=60)
        assert answer.status_code == 200, answer.text[:500]
        rows = answer.json()["rows"]
        if len(rows) >= len(entries) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert {r["document_unique_id"] for r in rows} >= {e.unique_id for e in entries}
    names = {h: uid for h, (_, _, uid) in HOSPITALS.items()}
    for row in rows:
        assert names[row["hospital"]] == row["repository_unique_id"] and row["status"] == "available", row
    csrf = html.fromstring(browser.get(f"{portal}/patients/{nhs}", timeout=60).text).forms[0].fields.get("csrf_token")
    assert browser.post(portal + "/logout", data={"csrf_token": csrf}, timeout=30).status_code == 200
    assert browser.get(f"{portal}/api/patients/{nhs}/documents", timeout=10).status_code == 401


def test_c_store_over_tls_with_dcmtk_and_pynetdicom_and_plain_dicom_is_refused(network, tmp_path):
    """DICOM over TLS (ITI-19): storescu +tls (dcmtk) and pynetdicom store at hospital-b with the region's
    certificates; a plain storescu, one without a certificate and one with another CA's get no association,
    and the imaging source logs why in one line each."""
    from pynetdicom import AE

    client = ready(network)
    ae_title, port, _ = HOSPITALS["hospital-b"]
    port += network["offset"]
    plan = json.loads((network["data_dir"] / "demo" / "plan.json").read_text())
    study = next(s for s in plan["studies"] if s["hospital"] == "hospital-b")  # resent: the same bytes, no new manifest
    files = sorted((network["data_dir"] / "demo" / "dicom" / study["study_uid"]).glob("*.dcm"))
    assert len(files) >= 2, "the demo data wrote no DICOM files for hospital-b"
    sent = subprocess.run(["storescu", "-to", "10", *client.dcmtk_args(), "-aec", ae_title, "127.0.0.1", str(port),
                           str(files[0])], capture_output=True, text=True, timeout=60)
    assert sent.returncode == 0 and "E:" not in sent.stderr, sent.stderr
    plain = subprocess.run(["storescu", "-to", "10", "-aec", ae_title, "127.0.0.1", str(port), str(files[0])],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0, "a plain association must be refused"
    logged = network["output"].wait_for(f"DICOM {ae_title}: TLS connection from 127.0.0.1:", 10)
    assert logged.endswith("refused: the peer does not speak TLS (a plain-TCP service or client?)"), logged
    anonymous = subprocess.run(["storescu", "-to", "10", "+tla", "+cf", str(client.ca), "-aec", ae_title, "127.0.0.1",
                                str(port), str(files[0])], capture_output=True, text=True, timeout=60)
    assert anonymous.returncode != 0, "TLS without a client certificate must be refused"
    network["output"].wait_for("presented no certificate; a certificate of the affinity domain is required", 10)
    stranger = make_test_pki(tmp_path, []).other_ca_node  # a certificate of another CA
    foreign = subprocess.run(["storescu", "-to", "10", "+tls", str(stranger.key), str(stranger.cert), "+cf",
                              str(client.ca), "-aec", ae_title, "127.0.0.1", str(port), str(files[0])],
                             capture_output=True, text=True, timeout=60)
    assert foreign.returncode != 0, "a certificate of another CA must be refused"
    logged = network["output"].wait_for("the client's certificate is not issued by the affinity domain's CA", 10)
    assert f"DICOM {ae_title}: TLS connection from 127.0.0.1:" in logged, logged
    import pydicom

    ds = pydicom.dcmread(files[1])
    ae = AE(ae_title="TLS_TEST")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title, tls_args=tls.dicom_tls_args("127.0.0.1"))
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        assert status and status.Status == 0x0000
    finally:
        assoc.release()


def test_insecure_says_so_at_start(postgres_admin_url, tmp_path):
    """--insecure keeps plain transport for experiments, and says so before anything else starts."""
    proc = subprocess.run(
        [sys.executable, "-m", "local_network.cli", "--insecure", "--database-url", "postgresql://postgres@127.0.0.1:9/x",
         "--data-dir", str(tmp_path), "--port-offset", str(region_port_offset())],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "xds-local: --insecure: every service speaks plain HTTP, MLLP and DICOM" in proc.stderr, proc.stderr
    assert not (tmp_path / "tls").exists(), "no certificates are made for an insecure region"


def test_the_region_requires_xua_on_queries_and_allows_the_hospitals_nodes(network):
    """ITI-18 without the portal's assertion gets a WS-Security fault; the demo data's ITI-41/ITI-42 went in
    without one (node to node); the imaging sources' DICOMweb wants an assertion too."""
    from consumer.client.soap import SoapFaultError

    ready(network)
    nhs = json.loads((network["data_dir"] / "demo" / "plan.json").read_text())["patients"][0]["nhs_number"]

    async def bare_query():
        async with SoapClient(timeout=30) as client:
            await find_documents(client, network["registry"], f"{nhs}^^^&{NHS_OID}&ISO")

    with pytest.raises(SoapFaultError) as refused:
        asyncio.run(bare_query())
    assert refused.value.fault.subcode.endswith("InvalidSecurity")
    answer = requests.get(f"https://127.0.0.1:{8040 + network['offset']}/dicomweb/studies", timeout=10,
                          **network["tls"].requests_args(browser=False))
    assert answer.status_code == 401 and answer.headers["WWW-Authenticate"].startswith("SAML")


def test_every_service_audits_to_the_regions_repository_and_xds_audit_search_finds_who_saw_whom(network):
    """xds-local runs xds-audit (syslog over TLS) and points every service at it: the demo load's C-STORE,
    RAD-68, ITI-41 and ITI-42, the portal's sign-in and queries are there, and `xds-audit search` lists them."""
    ready(network)
    assert any(line.startswith("audit repository") and "tls://" in line for line in network["output"].lines)
    nhs = json.loads((network["data_dir"] / "demo" / "plan.json").read_text())["patients"][0]["nhs_number"]
    database = network["url"].rsplit("/", 1)[0] + f"/{network['prefix']}audit"

    def search(*args: str) -> list[str]:
        out = subprocess.run([sys.executable, "-m", "ihe.audit.cli", "search", "--database-url", database, *args],
                             cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout.splitlines()

    deadline = time.monotonic() + 60
    while True:
        nodes = {line.split("node=")[1].split()[0] + " " + line.split()[1] for line in search("--limit", "5000")}
        wanted = {"hospital-a-imaging 110104", "hospital-a-imaging RAD-68", "hospital-a-repository ITI-41",
                  "hospital-a-repository ITI-42", "registry ITI-42", "registry ITI-8", "portal 110122",
                  "registry ITI-18", "portal ITI-18"}
        if wanted <= nodes or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert wanted <= nodes, sorted(wanted - nodes)
    seen = search("--patient", nhs, "--event", "ITI-18", "--node", "registry")
    assert seen and all("ITI-18" in line and f"{nhs}^^^&{NHS_OID}&ISO" in line for line in seen)
    assert any("user=" in line and "<" in line for line in seen)  # the assertion's user, alias<user@issuer>


def test_a_second_copy_on_the_same_ports_says_so_in_one_line(network, tmp_path):
    ready(network)
    second = xds_local(network["url"], tmp_path, network["offset"], network["prefix"])
    try:
        out, _ = second.communicate(timeout=60)
    finally:
        if second.poll() is None:
            second.kill()
            second.wait()
    lines = [line for line in out.splitlines() if line.strip()]
    assert second.returncode != 0, out
    assert len(lines) == 1, out
    assert "--port-offset" in lines[0] and "in use" in lines[0]
    assert network["proc"].poll() is None, "the first network must keep running"
    assert get(f"https://127.0.0.1:{8010 + network['offset']}/health")[0] == 200


def stop(network) -> list[str]:
    proc = network["proc"]
    network["children"] = children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 0
    lines = network["output"].rest()
    psutil.wait_procs(children, timeout=10)
    return lines


def test_a_restart_keeps_the_data_and_loads_nothing_twice(network):
    ready(network)
    assert "documents" in network, "the demo data test must have passed first"
    stop(network)
    proc = xds_local(network["url"], network["data_dir"], network["offset"], network["prefix"])
    network["proc"], network["output"] = proc, Output(proc)
    ready(network)
    assert any("demo data already loaded" in line for line in network["output"].lines), network["output"].lines
    plan = json.loads((network["data_dir"] / "demo" / "plan.json").read_text())
    time.sleep(3)  # longer than the quiet period: a republished manifest would show now
    found = documents_by_patient(network["registry"], plan["patients"], network["data_dir"])
    assert {nhs: len(entries) for nhs, entries in found.items()} == network["documents"]


def test_ctrl_c_stops_every_service_and_says_stopped(network):
    ready(network)
    children = psutil.Process(network["proc"].pid).children(recursive=True)
    assert len(children) >= 10, ("registry, three repositories, three imaging sources, the OpenID Connect provider, "
                                 "the portal, the audit record repository")
    lines = stop(network)
    assert lines[-1] == "xds-local: stopped", lines[-5:]
    assert sum(line.startswith("xds-local: stopped") for line in lines) == 1
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
